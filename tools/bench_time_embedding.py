"""One denoiser call of a draft student: the time embedding and the blocks' modulation per token (stock
diffusers) against once a latent frame (``previz.frame_timesteps``), alternated in one process so that a
shared machine's drift falls on all of them.

Three kinds: stock (both per token); the embedding once a frame with its modulation spread back to every
token (what the blocks read before they took it per frame); both once a frame (previz's).  The student is
``tools/bench_gpu.py``'s (random weights, built into an ordinary draft pack), run by the ``DraftModel`` a
server runs, eager, on one whole window with its context frame at timestep 0.  Prints each call, the
medians and their ratios; the outputs are checked to agree.

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
from typing import Any

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
        kinds = {"per token (stock)": per_frame.embedder, "embedding once a frame": SpreadModulation(per_frame),
                 "both once a frame": per_frame}
        times: dict[str, list[float]] = {name: [] for name in kinds}
        outputs: dict[str, torch.Tensor] = {}
        print(f"# bench_time_embedding: {machine(device)}\n")
        print(f"- {args.student}, {transformer.config.num_layers} layers, {args.width}x{args.height}, "
              f"{inputs['timesteps'].shape[1]} tokens, {model.engine_info()['denoiser']['precision']}, eager\n")
        for i in range(args.repeats + 1):  # the first round warms up and is not counted
            # Each round reverses the order, so that no kind always runs after the same one.
            for name in (list(kinds) if i % 2 else list(reversed(kinds))):
                transformer.condition_embedder = kinds[name]
                sync(device)
                start = time.perf_counter()
                outputs[name] = model.denoiser.run(inputs)["velocity"].float()
                sync(device)
                if i:
                    times[name].append(time.perf_counter() - start)
                    print(f"- call {i}, {name}: {1000 * times[name][-1]:.1f} ms", flush=True)
        transformer.condition_embedder = per_frame
        medians = {name: statistics.median(times[name]) for name in kinds}
        stock = outputs["per token (stock)"]
        print("\n| time embedding and modulation | median call | against stock |\n|---|---|---|")
        for name, median in medians.items():
            print(f"| {name} | {1000 * median:.1f} ms | {median / medians['per token (stock)']:.2f} |")
        difference = max(float((stock - out).abs().max()) for out in outputs.values())
        print(f"\nlargest difference from the stock output: {difference:.3g}")
        # fp32 agrees to float rounding; at bf16 a 4-row and a 6,240-row matmul round differently.
        tolerance = 1e-3 if model.engine_info()["denoiser"]["precision"] == "fp32" else 0.03
        return 0 if difference <= tolerance * float(stock.abs().max()) else 1


class SpreadModulation(torch.nn.Module):
    """The time embedding once a frame, its modulation spread back over every token: the blocks then read
    per-token modulation through diffusers' own forward, as before ``FrameModulatedBlock``."""

    def __init__(self, per_frame: torch.nn.Module) -> None:
        super().__init__()
        self.per_frame = per_frame

    def forward(self, *args: Any, **kwargs: Any) -> tuple[Any, ...]:
        temb, projection, *rest = self.per_frame(*args, **kwargs)
        if projection.ndim != 3 or projection.shape[1] == temb.shape[1]:  # per sample, or already per token
            return (temb, projection, *rest)
        return (temb, self.per_frame.spread(projection), *rest)


if __name__ == "__main__":
    sys.exit(main())
