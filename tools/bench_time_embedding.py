"""One denoiser call of a draft student: the time embedding and the blocks' modulation per token (stock
diffusers) against once a latent frame (``previz.frame_timesteps``), alternated in one process so that a
shared machine's drift falls on both.

The student is ``tools/bench_gpu.py``'s (random weights, built into an ordinary draft pack), run by the
``DraftModel`` a server runs, eager, on one whole window with its context frame at timestep 0.  Prints
each call, the medians and their ratio; the outputs of the two are checked to agree.

    python tools/bench_time_embedding.py --device cpu --layers 1        # full width, 1 of 30 layers
    python tools/bench_time_embedding.py --device cuda --precision bf16  # the whole student on a GPU
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from bench_gpu import STUDENTS, build_pack, machine, sync


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--student", default="wan21-1.3b", choices=list(STUDENTS))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", default=None, help="fp32, bf16 or fp16 (default: the engine's)")
    parser.add_argument("--layers", type=int, default=None, help="blocks (default: the real model's 30)")
    parser.add_argument("--width", type=int, default=832)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--repeats", type=int, default=4, help="calls of each, alternated")
    parser.add_argument("--packs", type=Path, default=None,
                        help="where the random student is built and kept (bench_gpu.py's --packs; default: a "
                             "temporary directory)")
    args = parser.parse_args(argv)

    from previz.sampler import token_timesteps
    from previz.take import DraftModel
    from previz.text import TextEncoder

    device = torch.device(args.device)
    student = STUDENTS[args.student]
    if args.layers:
        student = dataclasses.replace(student, transformer={**student.transformer, "num_layers": args.layers})
    with tempfile.TemporaryDirectory(prefix="previz-bench-temb-") as tmp:
        pack = build_pack(student, args.packs or Path(tmp), args.width, args.height, 512, 64)
        model = DraftModel(pack, "torch", cache_dir=Path(tmp) / "cache", text=TextEncoder(pack, device=device),
                           device=str(device), compile=False,
                           **({"precision": args.precision} if args.precision else {}))
        graph = model.denoiser_graph
        transformer = graph.module.transformer
        per_frame = transformer.condition_embedder
        inputs = graph.example_inputs(device=device)
        frames = inputs["latents"].shape[2]
        inputs["timesteps"] = token_timesteps(torch.tensor([0.0] + [0.7] * (frames - 1)),
                                              inputs["timesteps"].shape[1] // frames).to(device)
        kinds = {"per token": per_frame.embedder, "once a frame": per_frame}
        times: dict[str, list[float]] = {name: [] for name in kinds}
        outputs: dict[str, torch.Tensor] = {}
        print(f"# bench_time_embedding: {machine(device)}\n")
        print(f"- {args.student}, {transformer.config.num_layers} layers, {args.width}x{args.height}, "
              f"{inputs['timesteps'].shape[1]} tokens, {model.engine_info()['denoiser']['precision']}, eager\n")
        for i in range(args.repeats + 1):  # the first round warms up and is not counted
            for name, embedder in kinds.items():
                transformer.condition_embedder = embedder
                sync(device)
                start = time.perf_counter()
                outputs[name] = model.denoiser.run(inputs)["velocity"].float()
                sync(device)
                if i:
                    times[name].append(time.perf_counter() - start)
                    print(f"- call {i}, {name}: {1000 * times[name][-1]:.1f} ms", flush=True)
        token, frame = (statistics.median(times[name]) for name in kinds)
        difference = float((outputs["per token"] - outputs["once a frame"]).abs().max())
        print("\n| time embedding | median call | against per token |\n|---|---|---|")
        print(f"| per token (stock) | {1000 * token:.1f} ms | 1.00 |")
        print(f"| once a frame | {1000 * frame:.1f} ms | {frame / token:.2f} |")
        print(f"\nlargest difference between the two outputs: {difference:.3g}")
        # fp32 agrees to float rounding; at bf16 a 4-row and a 6,240-row matmul round differently.
        tolerance = 1e-3 if model.engine_info()["denoiser"]["precision"] == "fp32" else 0.03
        return 0 if difference <= tolerance * float(outputs["per token"].abs().max()) else 1


if __name__ == "__main__":
    sys.exit(main())
