"""The embedded pack: deterministic, small, honest about being untrained."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from previz.packs import load_pack

ROOT = Path(__file__).parent.parent


def test_make_tiny_pack_is_deterministic_small_and_labelled(tmp_path):
    for name in ("a", "b"):
        subprocess.run([sys.executable, str(ROOT / "tools" / "make_tiny_pack.py"), "--out", str(tmp_path / name)],
                       check=True, capture_output=True, timeout=300)
    a, b = load_pack(str(tmp_path / "a")), load_pack(str(tmp_path / "b"))
    assert {n: c.sha256 for n, c in a.components.items()} == {n: c.sha256 for n, c in b.components.items()}
    assert a.label == "untrained" and not a.trained
    assert a.draft.width >= 256 and a.draft.height >= 144 and a.draft.fps == 30
    size = sum(p.stat().st_size for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert size < 50e6
