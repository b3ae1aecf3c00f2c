"""The first take after a start: its time to first frame, with and without DraftModel.warm_take.

Each sample is a fresh process, as `previz serve` is: it loads the pack, runs
DraftModel.warmup (the engines' first runs), then, in the "warm" arm, a warm
take (what `previz serve` now does before it reports ready), then times the
first frame of 4 takes.  The timed prompt is encoded before the first take in
both arms, so the difference is the take loop's own one-off costs, not text.
The arms alternate, each round in the other order.  Prints markdown.

    python tools/bench_first_take.py                 # embedded pack, default backend, 4 rounds
    python tools/bench_first_take.py --backend torch --rounds 6
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from previz.recipe import DEFAULT_PACK

SHOT = "two red boxes left of a tall blue pillar on sand at dusk"
CAMERAS = ("orbit_left", "dolly_in", "pan_left", "orbit_right")


def child(pack_ref: str, backend: str, warm: bool) -> dict[str, float]:
    from previz.cli import _quiet_libraries, freeze_start_up_heap, open_pack
    from previz.recipe import Recipe
    from previz.take import DraftModel, TakeStats

    _quiet_libraries()
    model = DraftModel(open_pack(pack_ref, lambda _m: None), backend)
    model.warmup()
    if warm:
        model.warm_take()
    model.text(SHOT)
    freeze_start_up_heap()  # as `previz serve` does before it serves, in both arms
    firsts = []
    for i, camera in enumerate(CAMERAS):
        stats = TakeStats()
        frames = model.generate(Recipe(prompt=SHOT, seed=i, seconds=1.0, camera={"preset": camera}), stats=stats)
        next(frames)
        frames.close()
        firsts.append(1000 * (stats.first_frame_s or 0.0))
    return {"first": firsts[0], "later": statistics.median(firsts[1:])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pack", default=DEFAULT_PACK)
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--child", choices=("warm", "cold"), help=argparse.SUPPRESS)
    args = parser.parse_args()

    from engines import resolve_backend

    backend = resolve_backend(args.backend)
    if args.child:
        print(json.dumps(child(args.pack, backend, args.child == "warm")))
        return
    results: dict[str, list[dict[str, float]]] = {"cold": [], "warm": []}
    for r in range(args.rounds):
        for arm in ("cold", "warm") if r % 2 == 0 else ("warm", "cold"):
            out = subprocess.run([sys.executable, __file__, "--pack", args.pack, "--backend", backend,
                                  "--child", arm], capture_output=True, text=True, check=True,
                                 env={**os.environ, "PYTHONPATH": os.pathsep.join(
                                     [str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")])})
            results[arm].append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"backend {backend}; pack {args.pack}; {os.cpu_count()} cores; {args.rounds} fresh processes per arm\n")
    print("| arm | first take's first frame | later takes' (median) | first minus later, each process | median |")
    print("|---|---|---|---|---|")
    for arm, label in (("cold", "warmup only"), ("warm", "warmup + warm take")):
        rows = results[arm]
        extra = [row["first"] - row["later"] for row in rows]
        print(f"| {label} | {statistics.median(r['first'] for r in rows):.0f} ms | "
              f"{statistics.median(r['later'] for r in rows):.0f} ms | "
              f"{', '.join(f'{x:.0f}' for x in extra)} ms | {statistics.median(extra):.0f} ms |")


if __name__ == "__main__":
    main()
