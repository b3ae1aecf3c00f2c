"""A full garbage collection in a process loaded as `previz serve` is, before and after its start-up heap is frozen.

A full collection scans every object the collector tracks, with the GIL held, so
while it runs no frame is denoised, encoded or sent.  The process here loads what
`previz serve` loads before it serves (the pack, the engines' warm-up, the warm
take, the draft store, the server module), times 3 full collections, freezes the
heap with the same function `previz serve` calls, and times 3 more.  Prints markdown.

    python tools/bench_gc.py                       # the shipped pack, the default backend
    python tools/bench_gc.py --backend torch
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from previz.recipe import DEFAULT_PACK


def full_collections(n: int = 3) -> list[float]:
    """Milliseconds of ``n`` full collections, one after another."""
    times = []
    for _ in range(n):
        start = time.perf_counter()
        gc.collect()
        times.append(1000 * (time.perf_counter() - start))
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pack", default=DEFAULT_PACK)
    parser.add_argument("--backend", default="auto")
    args = parser.parse_args(argv)

    from machine import cpu_model

    from engines import resolve_backend
    from previz import server  # noqa: F401  (loaded as serve loads it: its imports are tracked too)
    from previz.cli import _quiet_libraries, freeze_start_up_heap, open_pack
    from previz.drafts import DraftStore
    from previz.take import DraftModel

    _quiet_libraries()
    model = DraftModel(open_pack(args.pack, lambda _m: None), resolve_backend(args.backend))
    model.warmup()
    model.warm_take()
    with tempfile.TemporaryDirectory() as tmp, DraftStore(Path(tmp) / "drafts"):
        before, tracked = full_collections(), len(gc.get_objects())
        freeze_start_up_heap()
        after, frozen = full_collections(), gc.get_freeze_count()
        gc.unfreeze()
    print(f"# A full garbage collection in a served process ({cpu_model()}, {os.cpu_count()} cores, "
          f"Python {sys.version.split()[0]})\n")
    print(f"- pack {model.pack.id}, backend {model.backend}; {tracked:,} objects tracked after start-up, "
          f"{frozen:,} frozen.\n")
    print("| heap | full collection, median of 3 | each |")
    print("|---|---|---|")
    for name, times in (("as loaded", before), ("start-up frozen", after)):
        print(f"| {name} | {statistics.median(times):.1f} ms | {', '.join(f'{t:.1f}' for t in times)} ms |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
