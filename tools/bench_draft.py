"""Draft engine benchmark: throughput, latency, FLOPs, and stock diffusers for comparison.

Everything is measured in one run on this machine, so the ratios compare like
with like.  Prints markdown for BENCHMARKS.md.

    python tools/bench_draft.py                     # the default (backlot) pack, 4 s takes
    python tools/bench_draft.py --stock-frames 0    # skip the (slow) stock WanPipeline run

What is measured
- fps and realtime factor (fps / 30) for whole takes (text, camera
  conditioning, denoise, decode, uint8 conversion; no file writing), median of
  --repeats takes, each with a new prompt so text encoding is included as in
  live use, all with an orbit_left camera move.
- time to first frame: from the take's start to the first frame in hand.
- GFLOP per video frame of the denoiser and decoder (torch's FlopCounterMode:
  matmuls, convolutions, attention), beside the GEMM GFLOP/s this machine
  reaches, so the distance to the physical limit is visible.
- stock diffusers WanPipeline with the same denoiser weights, steps and size,
  decoding with its own (real-config) Wan VAE as a stock user would: time to
  last frame for a take of the same length, and denoiser-only time (the
  pipeline with output_type="latent" against our time inside the denoiser).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
import warnings
from typing import Any

import torch
from machine import cpu_model
from torch.utils.flop_counter import FlopCounterMode

from previz.recipe import DEFAULT_PACK

warnings.filterwarnings("ignore")


def machine() -> str:
    threads = torch.get_num_threads()
    return f"{cpu_model()}, {os.cpu_count()} cores, torch threads {threads}, {platform.python_version()}"


def gemm_gflops(n: int = 1024, repeats: int = 10, trials: int = 5) -> float:
    """The machine's fp32 GEMM rate: best of a few trials, since a shared machine only ever slows it."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    best = 0.0
    for _ in range(trials):
        start = time.perf_counter()
        for _ in range(repeats):
            a @ b
        best = max(best, 2 * n**3 * repeats / (time.perf_counter() - start) / 1e9)
    return best


def graph_gflop(graph: Any) -> float:
    args = list(graph.example_inputs().values())
    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        graph.module(*args)
    return counter.get_total_flops() / 1e9


def bench_backend(pack: Any, backend: str, seconds: float, repeats: int) -> dict[str, float]:
    from previz.recipe import Recipe
    from previz.take import DraftModel, TakeStats

    model = DraftModel(pack, backend)
    model.warmup()
    rows = []
    for i in range(repeats + 1):
        stats = TakeStats()
        # three objects in view: the blockout control's cost grows with the objects
        shot = f"two red boxes left of a tall blue pillar on sand at dusk, take {i}"
        recipe = Recipe(prompt=shot, seed=i, seconds=seconds, backend=backend,
                        camera={"preset": "orbit_left"})
        start = time.perf_counter()
        n = sum(1 for _ in model.generate(recipe, stats=stats))
        elapsed = time.perf_counter() - start
        if i:  # the first take warms caches (allocator, text cache); it is not counted
            rows.append((n / elapsed, stats.first_frame_s or 0.0, stats.denoise_s / n, stats.decode_s / n,
                         stats.control_s / max(1, stats.chunks_done)))
    fps = statistics.median(r[0] for r in rows)
    return {
        "fps": fps,
        "rtf": fps / pack.draft.fps,
        "ttff_ms": 1000 * statistics.median(r[1] for r in rows),
        "denoise_ms_per_frame": 1000 * statistics.median(r[2] for r in rows),
        "decode_ms_per_frame": 1000 * statistics.median(r[3] for r in rows),
        "control_ms_per_window": 1000 * statistics.median(r[4] for r in rows),
        "providers": ",".join(model.denoiser.info.providers),
        "model": model,
    }


def bench_ours_for_frames(model: Any, frames: int) -> tuple[float, float]:
    """(time to last frame, denoiser-only time) for a take of exactly `frames` frames."""
    from previz.recipe import Recipe
    from previz.take import TakeStats

    recipe = Recipe(prompt="a red cube on a sandy plain", seed=0, seconds=frames / model.fps,
                    camera={"preset": "orbit_left"})
    list(model.generate(recipe))  # warm, and caches the prompt as the stock run gets its embeds for free
    stats = TakeStats()
    start = time.perf_counter()
    n = sum(1 for _ in model.generate(recipe, stats=stats))
    assert n == frames, (n, frames)
    return time.perf_counter() - start, stats.denoise_s


def without_conditioning_channels(transformer: Any, channels: int) -> Any:
    """The same weights, less the patch-embedding inputs (camera, control) that stock Wan does not feed."""
    from diffusers import WanTransformer3DModel

    if transformer.config.in_channels == channels:
        return transformer
    stock = WanTransformer3DModel.from_config({**transformer.config, "in_channels": channels}).eval()
    state = transformer.state_dict()
    state["patch_embedding.weight"] = state["patch_embedding.weight"][:, :channels]
    stock.load_state_dict(state)
    return stock


def bench_stock(pack: Any, model: Any, frames: int) -> tuple[float, float]:
    """Stock WanPipeline: same transformer weights, steps, size; its own Wan VAE."""
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline

    from previz.packs import load_component

    draft = pack.draft
    pipe = WanPipeline(
        tokenizer=None,
        text_encoder=None,
        vae=AutoencoderKLWan().eval(),  # the real Wan 2.1 VAE configuration (random weights)
        scheduler=UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                          flow_shift=draft.shift),
        transformer=without_conditioning_channels(load_component(pack, "denoiser"), pack.latent.channels),
    )
    pipe.set_progress_bar_config(disable=True)
    embeds = model.text("a red cube on a sandy plain")
    kwargs = dict(prompt_embeds=embeds, height=draft.height, width=draft.width, num_frames=frames,
                  num_inference_steps=draft.steps, guidance_scale=1.0,
                  generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        start = time.perf_counter()
        pipe(output_type="latent", **kwargs)
        denoise = time.perf_counter() - start
        start = time.perf_counter()
        video = pipe(output_type="np", **kwargs).frames[0]
        total = time.perf_counter() - start
    assert len(video) == frames
    return total, denoise


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pack", default=DEFAULT_PACK)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--backends", default="torch,onnxruntime")
    parser.add_argument("--stock-frames", type=int, default=None,
                        help="frames for the WanPipeline comparison (4k+1; default: the take length; 0 skips it)")
    args = parser.parse_args()

    from previz.cli import _quiet_libraries, open_pack

    _quiet_libraries()
    pack = open_pack(args.pack, lambda m: print(f"<!-- {m} -->"))
    print(f"machine: {machine()}")
    gemm = gemm_gflops()
    print(f"pack: {pack.id} ({pack.label}), {pack.draft.width}x{pack.draft.height} @ {pack.draft.fps} fps, "
          f"{pack.draft.steps} steps, window {pack.draft.window_frames} latent frames "
          f"(context {pack.draft.context_frames}), {args.seconds:g} s takes, median of {args.repeats}\n")

    results = {b: bench_backend(pack, b, args.seconds, args.repeats) for b in args.backends.split(",")}
    print("| backend | providers | fps | realtime factor | time to first frame | denoise ms/frame | decode ms/frame "
          "| blockout control ms/window |")
    print("|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['providers']} | {r['fps']:.1f} | {r['rtf']:.2f}x | {r['ttff_ms']:.0f} ms | "
              f"{r['denoise_ms_per_frame']:.2f} | {r['decode_ms_per_frame']:.2f} | {r['control_ms_per_window']:.1f} |")
    if "torch" in results and "onnxruntime" in results:
        print(f"\nonnxruntime / torch eager: {results['onnxruntime']['fps'] / results['torch']['fps']:.2f}x")

    model = next(iter(results.values()))["model"]
    draft = pack.draft
    new_frames = (draft.window_frames - draft.context_frames) * pack.latent.temporal
    graphs = model.denoiser_graphs
    if graphs.context is not None and graphs.cached is not None:  # block-causal: one context pass, cached steps
        den = (graph_gflop(graphs.context) + graph_gflop(graphs.cached) * draft.steps) / new_frames
    else:
        den = graph_gflop(model.denoiser_graph) * draft.steps / new_frames
    dec = graph_gflop(model.decoder_graph) / pack.latent.temporal
    limit = gemm / (den + dec)
    best = max(r["fps"] for r in results.values())
    print(f"\nGFLOP per frame: denoiser {den:.3f} (steady-state window), decoder {dec:.3f}, total {den + dec:.3f}")
    print(f"measured GEMM: {gemm:.1f} GFLOP/s (fp32 1024^3 matmul) -> compute limit {limit:.0f} fps; "
          f"best achieved {best:.1f} fps = {100 * best / limit:.0f}% of it")

    if args.stock_frames is None:  # the take's length, rounded up to WanPipeline's 4k+1
        args.stock_frames = 4 * -(-(round(args.seconds * draft.fps) - 1) // 4) + 1
    if args.stock_frames:
        frames = args.stock_frames
        stock_total, stock_denoise = bench_stock(pack, model, frames)
        print(f"\nstock diffusers WanPipeline, {frames} frames, same denoiser weights/steps/size, Wan VAE decode:")
        print("| backend | ours: last frame | stock: last frame | ratio | ours: denoise | stock: denoise | ratio |")
        print("|---|---|---|---|---|---|---|")
        for name, r in results.items():
            total, denoise = bench_ours_for_frames(r["model"], frames)
            print(f"| {name} | {total:.2f} s | {stock_total:.2f} s | {stock_total / total:.1f}x | "
                  f"{denoise:.2f} s | {stock_denoise:.2f} s | {stock_denoise / denoise:.1f}x |")


if __name__ == "__main__":
    main()
