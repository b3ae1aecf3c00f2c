"""WebSocket conformance in CI: Autobahn's fast sections (kosoku, fuzzingclient mode) against an echo
handler served with the live server's websocket settings.  tools/autobahn_conformance.py runs every section."""

from __future__ import annotations

import asyncio
import importlib.util
from pathlib import Path

import pytest

pytest.importorskip("kosoku")
# The tool by path: tools/ is not a package, and kosoku's case files import a package named autobahn.
_spec = importlib.util.spec_from_file_location(
    "autobahn_conformance", Path(__file__).resolve().parents[1] / "tools" / "autobahn_conformance.py")
assert _spec is not None and _spec.loader is not None
autobahn_conformance = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(autobahn_conformance)
run_cases, summary = autobahn_conformance.run_cases, autobahn_conformance.summary

FAST_SECTIONS = ["1.*", "2.*", "3.*", "4.*", "5.*", "6.*", "7.*", "10.*"]
# websockets fails a connection whose close frame interrupts a fragmented message with 1002, where
# Autobahn wants 1000 (websockets' protocol.py: "incomplete fragmented message"); documented.
KNOWN_DIVERGENCES = {"7.1.5"}


def test_the_fast_autobahn_sections_pass():
    results = asyncio.run(run_cases(FAST_SECTIONS, None))
    assert len(results) > 200
    failed = {r.case_id for r in results if r.behavior.value in ("FAILED", "ERROR", "UNIMPLEMENTED")}
    assert failed <= KNOWN_DIVERGENCES, summary(results)[1]
    unclean = {r.case_id for r in results if r.behavior_close.value in ("UNCLEAN", "FAILED", "FAILED BY CLIENT")}
    assert not unclean, unclean
