"""The host's work for one draft window, which comes before the first frame: its camera maps and its noise.

A take's first window cannot start on the device until the host has built these (later windows are
built while the device denoises the one before), so they count in full towards the time to first frame.
Times the functions a take calls (``previz.camera.plucker_latent``, ``previz.sampler.chunk_noise``) for
the first window of a 2 s take, at the latent layouts of ``tools/bench_gpu.py``'s students, and prints
the medians.

    python tools/bench_window_inputs.py                     # 832x480, both students' layouts
    python tools/bench_window_inputs.py --width 1280 --height 720 --repeats 50
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from bench_gpu import FPS, STUDENTS
from machine import cpu_model

TEMPORAL, WINDOW = 4, 4  # bench_gpu.py's students: 4 video frames a latent frame (the first alone), windows of 4


def median_ms(fn: Callable[[], object], repeats: int) -> float:
    fn()  # first call: imports and caches
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--width", type=int, default=832)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--camera", default="orbit_left", help="a camera preset")
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args(argv)

    from previz.camera import camera_path, plucker_latent
    from previz.sampler import chunk_noise

    frames = round(args.seconds * FPS)
    path = camera_path({"preset": args.camera}, args.seconds)
    print(f"# bench_window_inputs: {cpu_model()}, torch {torch.__version__} ({torch.get_num_threads()} threads)\n")
    print(f"- {args.width}x{args.height}, the first window ({WINDOW} latent frames) of a {args.seconds:g} s "
          f"{args.camera} take; median of {args.repeats}.\n")
    print("| layout | camera maps | noise | both |")
    print("|---|---|---|---|")
    for name, student in STUDENTS.items():
        spatial = student.spatial
        shape = (1, student.channels, WINDOW, args.height // spatial, args.width // spatial)

        def camera(spatial: int = spatial) -> object:
            return plucker_latent(path, fps=FPS, frames=frames, width=args.width, height=args.height,
                                  temporal=TEMPORAL, spatial=spatial, causal_first_frame=True,
                                  latents=range(WINDOW))

        def noise(shape: tuple[int, ...] = shape) -> object:
            return chunk_noise(1, 0, shape)

        maps, drawn = median_ms(camera, args.repeats), median_ms(noise, args.repeats)
        print(f"| {name} | {maps:.2f} ms | {drawn:.2f} ms | {maps + drawn:.2f} ms |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
