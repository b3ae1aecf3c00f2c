"""WebSocket conformance: the Autobahn TestSuite cases, offline, against the server's websocket layer.

    python tools/autobahn_conformance.py                  # every section (9, 12 and 13 take minutes)
    python tools/autobahn_conformance.py --cases '1.*' '2.*'

kosoku (PyPI) runs Autobahn's own case files in fuzzingclient mode against an echo handler served
with exactly the live server's websocket settings (`previz.server.websocket_options`: no
compression, 2 MiB messages, write limit, keepalive).  Prints a summary for BENCHMARKS.md; the
fast sections also run in CI (tests/test_autobahn.py).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import time
from typing import Any

from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from previz.server import ServeConfig, websocket_options

# What the server's settings make expected, and why (docs/protocol.md says the same):
EXPECTED = {
    "9.*": "messages over 2 MiB are refused with 1009 (the server's max_size); the rest of 9 is throughput",
    "12.*": "permessage-deflate is off by design (compression=None): unimplemented",
    "13.*": "permessage-deflate is off by design (compression=None): unimplemented",
}


async def echo(ws: ServerConnection) -> None:
    try:
        async for message in ws:
            await ws.send(message)
    except ConnectionClosed:
        pass


async def run_cases(cases: list[str] | None, exclude: list[str] | None, concurrency: int = 4) -> list[Any]:
    from kosoku import FailureError, run_fuzzingclient

    async with serve(echo, "127.0.0.1", 0, **websocket_options(ServeConfig())) as server:
        port = server.sockets[0].getsockname()[1]
        try:
            return list(await run_fuzzingclient(f"ws://127.0.0.1:{port}", cases=cases, exclude_cases=exclude,
                                                concurrency=concurrency))
        except FailureError as exc:  # raised when any case is not OK; its results are all we need
            return list(exc.results)


def summary(results: list[Any]) -> tuple[collections.Counter[str], list[str]]:
    counts: collections.Counter[str] = collections.Counter()
    notes = []
    for r in results:
        verdict = f"{r.behavior.value} / close {r.behavior_close.value}"
        counts[verdict] += 1
        if r.behavior.value not in ("OK", "INFORMATIONAL"):
            notes.append(f"{r.case_id}: {verdict}")
    return counts, notes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="*", default=None, help="case ids or globs (default: all)")
    parser.add_argument("--exclude", nargs="*", default=None)
    parser.add_argument("--concurrency", type=int, default=4)
    args = parser.parse_args()
    start = time.perf_counter()
    results = asyncio.run(run_cases(args.cases, args.exclude, args.concurrency))
    counts, notes = summary(results)
    print(f"## Autobahn (kosoku fuzzingclient): {len(results)} cases in {time.perf_counter() - start:.0f} s")
    for verdict, n in sorted(counts.items()):
        print(f"- {verdict}: {n}")
    by_section = collections.Counter(n.split(".")[0] for n in notes)
    if notes:
        print(f"- not OK, by section: {dict(sorted(by_section.items(), key=lambda kv: int(kv[0])))}")
        print("  " + "; ".join(notes[:40]) + (" ..." if len(notes) > 40 else ""))
    for section, why in EXPECTED.items():
        print(f"- expected in {section}: {why}")


if __name__ == "__main__":
    main()
