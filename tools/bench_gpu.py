"""The GPU draft path at real size: DraftModel on CUDA with random students, fp32 against bf16 against compiled.

Two students, built with the real diffusers classes into ordinary draft packs
(``previz.pack_builder``, random weights: cost only, never quality) and run
through the same ``DraftModel`` a server runs:

- ``wan21-1.3b``: a Wan2.1-T2V-1.3B-shaped camera student (dim 1536, 30 layers,
  12 heads, FFN 8960; 16 latent channels + 24 Plücker channels; 4x8x8 latents);
- ``wan22-5b``: a Wan2.2-TI2V-5B-shaped camera student (dim 3072, 30 layers,
  24 heads, FFN 14336; 48 latent channels, 4x16x16 latents).

Both decode with a frame-wise ``AutoencoderTiny`` (the TAEHV pattern, 64
channels), at 832x480, 30 fps, 4 steps, windows of 4 latent frames with 1 of
context.  Text is the pack's MiniLM encoder at 512 tokens (UMT5's length); the
prompt repeats, so its cache answers after the first take, as in live use.

For each variant: fps and realtime factor (fps / 30) over whole takes and the
time to first frame, measured as a server runs a take (nothing waits for the
device that a server would not); then, from one more take with every engine
call synchronised (so each stage's time is its own on an asynchronous device),
the denoise/decode/rest split and the achieved TFLOP/s of the denoiser against
a measured matmul peak at the same dtype, and that take's time to first frame
split into the host's work before the first call, the first window's denoiser
calls, the first decoder call and the rest; and the compile time (the warm-up
run of a compiled engine).  Then restarts: a take cancelled at a random moment,
timed to the next take's first frame, as a server restarts on an update.  On an
asynchronous device (CUDA) the takes and the restarts are alternated with the
take loop serial on the same engines, so the pipelined loop's worth is measured
without another compile.  Prints markdown for BENCHMARKS.md.

    python tools/bench_gpu.py                       # CUDA, both students, fp32 / bf16 / bf16 compiled
    python tools/bench_gpu.py --students wan21-1.3b --variants bf16,bf16-compiled,bf16-cudagraphs
    python tools/bench_gpu.py --small               # tiny students on the CPU: checks that it all runs
    python tools/bench_gpu.py --students wan21-1.3b --variants bf16-compiled --profile   # where a call's time goes
    python tools/bench_gpu.py --students wan21-1.3b --context bidirectional,block-causal  # a cached context
    python tools/bench_gpu.py --device cpu --students wan21-1.3b --layers 1 --variants fp32  # full width, on a CPU
    python tools/bench_gpu.py --students wan21-1.3b --variants bf16-compiled-token-temb,bf16-compiled  # time embedding
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import os
import platform
import random
import statistics
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from machine import cpu_model
from torch.utils.flop_counter import FlopCounterMode

warnings.filterwarnings("ignore")

FPS = 30


@dataclasses.dataclass(frozen=True)
class Student:
    name: str
    channels: int
    spatial: int
    transformer: dict[str, Any]
    size_multiple: int


WAN_COMMON = dict(patch_size=(1, 2, 2), attention_head_dim=128, freq_dim=256, num_layers=30, cross_attn_norm=True,
                  qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024)
STUDENTS = {
    # diffusers' Wan2.1-T2V-1.3B and Wan2.2-TI2V-5B transformer configs, less the text width (MiniLM here).
    "wan21-1.3b": Student("wan21-1.3b", 16, 8, dict(WAN_COMMON, num_attention_heads=12, ffn_dim=8960), 16),
    "wan22-5b": Student("wan22-5b", 48, 16, dict(WAN_COMMON, num_attention_heads=24, ffn_dim=14336), 32),
}
SMALL_STUDENTS = {
    name: dataclasses.replace(s, transformer=dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=16,
                                                  freq_dim=32, ffn_dim=64, num_layers=2))
    for name, s in STUDENTS.items()
}
# variant -> engine options (DraftModel passes them to both engines)
VARIANTS: dict[str, dict[str, Any]] = {
    "fp32": {"precision": "fp32", "compile": False},
    "bf16": {"precision": "bf16", "compile": False},
    "bf16-compiled": {"precision": "bf16", "compile": True},  # the default scope: blocks on CUDA, else the model
    "bf16-compiled-model": {"precision": "bf16", "compile": True, "compile_scope": "model"},  # one whole graph
    "bf16-cudagraphs": {"precision": "bf16", "compile": True, "compile_mode": "reduce-overhead"},
    "bf16-cudnn": {"precision": "bf16", "compile": True, "attention": "cudnn"},
    "fp8-compiled": {"precision": "fp8", "compile": True},
    "fp8-cudnn": {"precision": "fp8", "compile": True, "attention": "cudnn"},
    "bf16-autotune": {"precision": "bf16", "compile": True, "compile_mode": "max-autotune-no-cudagraphs"},
    "bf16-autotune-cudnn": {"precision": "bf16", "compile": True, "compile_mode": "max-autotune-no-cudagraphs",
                            "attention": "cudnn"},
    "fp16": {"precision": "fp16", "compile": False},
    "bf16-compiled-gelu": {"precision": "bf16", "compile": True, "gelu_epilogue": True},  # one matmul + GELU
    "bf16-compiled-model-gelu": {"precision": "bf16", "compile": True, "compile_scope": "model",
                                 "gelu_epilogue": True},
    "bf16-compiled-blocks": {"precision": "bf16", "compile": True, "compile_scope": "blocks"},  # regional
    # The time embedding and the blocks' modulation per token, as stock diffusers computes them, against
    # previz's once a frame (previz.frame_timesteps): the same engines with the student's own embedder put
    # back, whose per-token modulation the blocks then take through diffusers' own forward.
    "fp32-token-temb": {"precision": "fp32", "compile": False, "time_embedding": "per-token"},
    "bf16-compiled-token-temb": {"precision": "bf16", "compile": True, "time_embedding": "per-token"},
}
BENCH_ONLY = ("time_embedding",)  # variant keys the benchmark applies itself, not engine options


def embed_time_per_token(module: torch.nn.Module) -> None:
    """Put the stock, per-token time embedding back on the denoiser inside ``module`` (and with it the
    blocks' per-token modulation: ``previz.frame_timesteps.FrameModulatedBlock``)."""
    from previz.frame_timesteps import FrameTimestepEmbedding

    for m in module.modules():
        if isinstance(getattr(m, "condition_embedder", None), FrameTimestepEmbedding):
            m.condition_embedder = m.condition_embedder.embedder


def machine(device: torch.device) -> str:
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return (f"{props.name}, {props.total_memory / 2**30:.0f} GiB, torch {torch.__version__}, "
                f"CUDA {torch.version.cuda}, Python {platform.python_version()}")
    return f"{cpu_model()}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads)"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak_tflops(device: torch.device, dtype: torch.dtype, small: bool) -> float:
    """Best of a few timed square matmuls: the rate the device really reaches at this dtype."""
    n = 512 if small else 8192
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    repeats = 3 if small else 20
    for _ in range(2):
        a @ b
    best = 0.0
    for _ in range(3):
        sync(device)
        start = time.perf_counter()
        for _ in range(repeats):
            a @ b
        sync(device)
        best = max(best, 2 * n**3 * repeats / (time.perf_counter() - start) / 1e12)
    return best


class Synced:
    """An engine whose run() returns only when the device is done, so stage times are the stage's own;
    it counts its calls, and logs each as (stage, start, end) in ``log`` (shared by a take's engines)."""

    def __init__(self, engine: Any, stage: str, log: list[tuple[str, float, float]]) -> None:
        self.engine, self.info, self.device = engine, engine.info, engine.device
        self.stage, self.log = stage, log
        self.calls = 0

    def run(self, inputs: Any) -> Any:
        start = time.perf_counter()
        out = self.engine.run(inputs)
        sync(self.device)
        self.calls += 1
        self.log.append((self.stage, start, time.perf_counter()))
        return out

    def warmup(self) -> None:
        self.engine.warmup()

    def close(self) -> None:
        self.engine.close()


def first_frame_split(stats: Any, log: list[tuple[str, float, float]]) -> dict[str, float] | None:
    """The synced take's time to first frame, in ms: the host's work before the first denoiser call, the
    first window's denoiser calls, the first decoder call, and what is left (the sampler's own steps, the
    copy of the frames to the host)."""
    decodes = [(start, end) for stage, start, end in log if stage == "decode"]
    if stats.first_frame_s is None or not decodes or not log:
        return None
    first_decode = decodes[0]
    before = [end - start for stage, start, end in log if stage == "denoise" and end <= first_decode[0]]
    split = {"total": stats.first_frame_s, "host before the first call": log[0][1] - stats.started,
             "first window's denoiser calls": sum(before), "first decoder call": first_decode[1] - first_decode[0]}
    split["the rest"] = split["total"] - sum(v for k, v in split.items() if k != "total")
    return {k: 1000 * v for k, v in split.items()}


def build_pack(student: Student, root: Path, width: int, height: int, text_tokens: int, decoder_channels: int,
               context: str = "bidirectional") -> Any:
    """The student's random pack; a block-causal one is the bidirectional pack's files (hard links: the same
    weights, built once) under a manifest that says block-causal."""
    from previz.pack_builder import build_draft_pack
    from previz.packs import MANIFEST_NAME, DraftDefaults, LatentLayout, load_pack, write_manifest

    layers = student.transformer["num_layers"]
    pack_dir = root / f"{student.name}-{layers}l-{context}-{width}x{height}-{text_tokens}-{decoder_channels}"
    if (pack_dir / MANIFEST_NAME).is_file():
        return load_pack(str(pack_dir))
    if context != "bidirectional":
        pack = build_pack(student, root, width, height, text_tokens, decoder_channels)
        for path in sorted(pack.root.rglob("*")):
            target = pack_dir / path.relative_to(pack.root)
            if path.is_dir():
                target.mkdir(parents=True, exist_ok=True)
            elif path.name != MANIFEST_NAME:
                target.parent.mkdir(parents=True, exist_ok=True)
                os.link(path, target)
        assert pack.conditioning.context is not None
        conditioning = dataclasses.replace(
            pack.conditioning, context=dataclasses.replace(pack.conditioning.context, attention=context))
        write_manifest(dataclasses.replace(pack, root=pack_dir, conditioning=conditioning))
        return load_pack(str(pack_dir))
    latent = LatentLayout(space=f"bench-{student.name}", channels=student.channels, temporal=4,
                          spatial=student.spatial, causal_first_frame=True)
    draft = DraftDefaults(width=width, height=height, fps=FPS, steps=4, shift=5.0, context_frames=1,
                          window_frames=4, max_seconds=20.0, size_multiple=student.size_multiple)
    print(f"building {student.name} (random weights) in {pack_dir} ...", file=sys.stderr, flush=True)
    build_draft_pack(pack_dir, pack_id=f"bench-{student.name}", latent=latent, draft=draft,
                     transformer=student.transformer, decoder_channels=decoder_channels, text_tokens=text_tokens,
                     description="tools/bench_gpu.py: random weights, for timing only")
    return load_pack(str(pack_dir))


def graph_flop(graph: Any, device: torch.device, dtype: torch.dtype) -> float:
    """FLOPs of one call of a graph as the engine runs it (matmuls, convolutions, attention), at ``dtype``."""
    counter = FlopCounterMode(display=False)
    inputs = graph.example_inputs(device=device)
    args = [v.to(dtype) if v.is_floating_point() and k not in graph.exact else v for k, v in inputs.items()]
    with counter, torch.inference_mode():
        graph.module(*args)
    return float(counter.get_total_flops())


# Kernel (CUDA) or op (CPU) names -> where a denoiser call's time goes. Checked in this order.
KERNEL_KINDS = (
    ("attention", ("flash", "fmha", "attention", "attn", "cudnn_sdpa", "sdpa")),
    ("convolution", ("conv", "fprop", "implicit_gemm")),  # the patch embedding (before gemm: cuDNN's names)
    ("matmul", ("gemm", "nvjet", "cutlass", "xmma", "scaled_mm", "aten::mm", "aten::addmm", "aten::bmm",
                "aten::linear", "aten::matmul")),
)


def kernel_kind(name: str) -> str:
    lowered = name.lower()
    return next((kind for kind, keys in KERNEL_KINDS if any(k in lowered for k in keys)), "other")


def profile_denoiser(engine: Any, graph: Any, device: torch.device, top: int = 8) -> dict[str, Any]:
    """One denoiser call under torch.profiler: device time by kind (matmul, attention, other) and the top kernels.

    On CUDA the kernels' own device time; on a CPU the ops' self time (nested ops are not counted twice).
    """
    from torch.profiler import ProfilerActivity, profile

    inputs = graph.example_inputs(seed=1, device=device)
    engine.run(inputs)  # warm: allocator and any lazy set-up out of the profile
    sync(device)
    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        engine.run(inputs)
        sync(device)
    rows = []
    for event in prof.key_averages():
        us = event.self_device_time_total if cuda else event.self_cpu_time_total
        if us > 0 and (not cuda or event.device_type.name == "CUDA"):
            rows.append((us / 1000.0, event.key))
    total = sum(ms for ms, _ in rows) or 1e-9
    kinds: dict[str, float] = {}
    for ms, name in rows:
        kinds[kernel_kind(name)] = kinds.get(kernel_kind(name), 0.0) + ms
    return {"total_ms": total, "kinds": kinds, "top": sorted(rows, reverse=True)[:top]}


def print_profile(variant: str, profile: dict[str, Any]) -> None:
    total = profile["total_ms"]
    parts = ", ".join(f"{kind} {ms:.1f} ms ({100 * ms / total:.0f}%)"
                      for kind, ms in sorted(profile["kinds"].items(), key=lambda kv: -kv[1]))
    print(f"\n- **{variant}, one denoiser call profiled:** {total:.1f} ms of kernels: {parts}. Top kernels:")
    for ms, name in profile["top"]:
        print(f"  - {ms:.2f} ms `{name[:100]}` ({kernel_kind(name)})")


def bench_variant(pack: Any, text: Any, variant: str, device: torch.device, seconds: float, repeats: int,
                  cache_dir: Path, profile: bool = False) -> dict[str, Any]:
    from torch._dynamo.utils import counters

    from engines.precision import torch_dtype
    from previz.cli import freeze_start_up_heap
    from previz.frame_decoder import EngineFrameDecoder
    from previz.recipe import Recipe
    from previz.take import DraftModel, TakeStats

    options = {k: v for k, v in VARIANTS[variant].items() if k not in BENCH_ONLY}
    # Each variant compiles on its own: dynamo keeps compiled code by the Python code it traced, which the
    # variants share (inductor's on-disk cache still serves a graph compiled before).  Its counters then say
    # whether this variant's takes ran what the warm-up compiled.
    torch._dynamo.reset()
    counters.clear()
    built = time.perf_counter()
    model = DraftModel(pack, "torch", cache_dir=cache_dir, text=text, device=str(device), **options)
    load_s = time.perf_counter() - built
    if VARIANTS[variant].get("time_embedding") == "per-token":
        embed_time_per_token(model.denoiser_graph.module)  # before the warm-up, which compiles
    start = time.perf_counter()
    model.warmup()
    sync(device)
    warmup_s = time.perf_counter() - start
    freeze_start_up_heap()  # as `previz serve` does before it serves: no full collection scans all this mid-take
    warm_graphs = counters["stats"]["unique_graphs"]
    info = model.engine_info()
    compile_s = sum(engine.info.details.get("compile_s", 0.0) for _, engine in model.engines())

    pipelined = model.pipelined  # on an asynchronous device; the serial loop runs on the same engines

    def recipe(seed: int, camera: str = "orbit_left") -> Recipe:
        return Recipe(prompt="a lighthouse on a cliff at dusk", seed=seed, seconds=seconds, camera={"preset": camera})

    def take(seed: int, mode: str = "pipelined") -> tuple[float, TakeStats]:
        """(wall seconds, stats) of one whole take.  ``serial``: the take loop before pipelining, where the
        host reads each chunk's frames, one decoder call at a time, before it queues the next window."""
        model.pipelined = pipelined and mode == "pipelined"
        stats = TakeStats()
        sync(device)
        start = time.perf_counter()
        for _ in model.generate(recipe(seed), stats=stats):
            pass
        return time.perf_counter() - start, stats

    def restart(i: int, take_s: float, mode: str = "pipelined") -> float | None:
        """Seconds from a cancel at a random moment of a running take to the next take's first frame, as a
        server's worker restarts on an update: it drops the old take before its next denoising step or
        frame and starts the new one (here: another camera) at once, behind whatever the old one left
        queued on the device.  None where the take ended before the cancel."""
        model.pipelined = pipelined and mode == "pipelined"
        cancel, fired = threading.Event(), []
        timer = threading.Timer(random.Random(i).uniform(0.1, 0.6) * take_s,
                                lambda: (fired.append(time.perf_counter()), cancel.set()))
        sync(device)
        timer.start()
        for _ in model.generate(recipe(100 + i), cancel=cancel):
            if cancel.is_set():
                break
        else:
            timer.cancel()
            timer.join()
            return None  # the take ended first
        stats = TakeStats()
        frames = model.generate(recipe(200 + i, camera="dolly_in"), stats=stats)
        next(frames)
        frames.close()
        latency = stats.started + (stats.first_frame_s or 0.0) - fired[0]
        sync(device)  # what the new take queued must not delay the next sample
        return latency

    # fps and first frame as a server runs a take: the device queue is never drained on purpose. The first
    # take warms the allocator and the text cache.
    takes = [take(i) for i in range(repeats + 1)][1:]
    # Where the loop can be serial, as many more takes of each loop on the same engines, alternated and each
    # round in the other order (the card's clocks drift): what pipelining is worth.  Then restarts at random
    # moments of a take, likewise.
    modes = ("pipelined", "serial") if pipelined else ("pipelined",)
    compared: dict[str, list[tuple[float, TakeStats]]] = {mode: [] for mode in modes}
    for i in range(repeats if pipelined else 0):
        for mode in modes if i % 2 else modes[::-1]:
            compared[mode].append(take(i + 1, mode))
    take_s = statistics.median(elapsed for elapsed, _ in takes)
    restarts: dict[str, list[float]] = {mode: [] for mode in modes}
    for i in range(2 * repeats):
        for mode in modes if i % 2 else modes[::-1]:
            latency = restart(i, take_s, mode)
            if latency is not None:
                restarts[mode].append(latency)
    # The split from one more take with every engine call synchronised, so each stage's time is its own
    # on an asynchronous device (those syncs cost a little fps, so this take's wall is reported beside it).
    # On the serial loop: pipelined, a synced take would decode the whole first chunk before its first frame.
    dtype = torch_dtype(info["denoiser"]["precision"])
    log: list[tuple[str, float, float]] = []
    denoisers = [(Synced(model.denoiser, "denoise", log), model.denoiser_graph)]
    model.denoiser = denoisers[0][0]
    if model.context_pass is not None and model.cached_step is not None:  # a block-causal student
        denoisers += [(Synced(model.context_pass, "denoise", log), model.denoiser_graphs.context),
                      (Synced(model.cached_step, "denoise", log), model.denoiser_graphs.cached)]
        model.context_pass, model.cached_step = denoisers[1][0], denoisers[2][0]
    if isinstance(model.frame_decoder, EngineFrameDecoder):
        model.frame_decoder.engine = Synced(model.frame_decoder.engine, "decode", log)
    wall, split = take(repeats + 1, "serial")
    denoise, decode, steps = split.denoise_s, split.decode_s, split.denoiser_calls
    take_flop = sum(engine.calls * graph_flop(graph, device, dtype) for engine, graph in denoisers)
    # The steady-state call: a block-causal student's cached step, else the whole window.
    profiled_engine, profiled_graph = denoisers[-1]
    profiled = profile_denoiser(profiled_engine.engine, profiled_graph, device) if profile else None
    fps = statistics.median(stats.frames / elapsed for elapsed, stats in takes)
    result = {
        "variant": variant,
        "precision": info["denoiser"]["precision"],
        "fps": fps,
        "rtf": fps / FPS,
        "ttff_ms": 1000 * statistics.median(stats.first_frame_s or 0.0 for _, stats in takes),
        "restarts_ms": {mode: [1000 * x for x in xs] for mode, xs in restarts.items() if xs},
        "compared": {mode: {"fps": statistics.median(stats.frames / elapsed for elapsed, stats in runs),
                            "ttff_ms": 1000 * statistics.median(stats.first_frame_s or 0.0 for _, stats in runs)}
                     for mode, runs in compared.items() if runs},
        "wall_s": wall,
        "denoise_s": denoise,
        "decode_s": decode,
        "other_s": max(0.0, wall - denoise - decode),
        "denoise_tflops": take_flop / max(denoise, 1e-9) / 1e12,
        # Per denoising step, context passes included: a bidirectional student's time per denoiser call.
        "denoise_step_ms": 1000 * denoise / max(steps, 1),
        "compile_s": compile_s,
        "warmup_s": warmup_s,
        "load_s": load_s,
        "params_b": sum(p.numel() for p in model.denoiser_graph.module.parameters()) / 1e9,
        "peak_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
        "profile": profiled,
        "first_frame_split": first_frame_split(split, log),
        "dynamo": {"warm_graphs": warm_graphs, "graphs": counters["stats"]["unique_graphs"],
                   "breaks": dict(counters["graph_break"]),
                   # code dynamo gave up on, which then runs eager (past the recompile limit, among others)
                   "eager": dict(counters["unimplemented"])} if compile_s else None,
    }
    model.close()
    return result


def release_variant(device: torch.device) -> None:
    """After a variant, measured or failed: its model is garbage (frozen with the heap after its warm-up, so
    unfrozen first), its device memory goes back, and the next variant's peak memory is its own."""
    gc.unfreeze()
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def print_details(r: dict[str, Any], repeats: int) -> None:
    """The lines under a variant's row: its time to first frame split, its restarts, pipelined against
    serial (where the loop can be serial) and its profile (with --profile)."""
    variant, split = r["variant"], r["first_frame_split"]
    if split is not None:
        print(f"- **{variant}, time to first frame of the synced take:** {split['total']:.0f} ms = "
              + " + ".join(f"{k} {v:.0f}" for k, v in split.items() if k != "total"))
    if r["restarts_ms"]:
        print(f"- **{variant}, restart** (a cancel at a random moment of a take, to the next take's first frame): "
              + "; ".join(f"{mode}: median {statistics.median(xs):.0f} ms, max {max(xs):.0f} ms of {len(xs)}"
                          for mode, xs in r["restarts_ms"].items()))
    if "serial" in r["compared"]:
        pipe, ser = r["compared"]["pipelined"], r["compared"]["serial"]
        print(f"- **{variant}, the take loop pipelined against serial** ({repeats} takes each, alternated): "
              f"{pipe['fps']:.1f} against {ser['fps']:.1f} fps, time to first frame "
              f"{pipe['ttff_ms']:.0f} against {ser['ttff_ms']:.0f} ms")
    if r["dynamo"] is not None:
        # More graphs after the warm-up, a graph break or code left eager means some calls ran other code than
        # the warm-up compiled: the row is then not the compiled variant's figure.
        dynamo = r["dynamo"]
        print(f"- **{variant}, dynamo:** {dynamo['warm_graphs']} graphs compiled by the warm-up, "
              f"{dynamo['graphs'] - dynamo['warm_graphs']} more by the end (takes, restarts, split, profile); "
              + "; ".join(f"{sum(counts.values())} {what}"
                          + "".join(f" ({n}× {reason[:120]})"
                                    for reason, n in sorted(counts.items(), key=lambda kv: -kv[1])[:3])
                          for what, counts in (("graph breaks", dynamo["breaks"]), ("left eager", dynamo["eager"]))))
    if r["profile"] is not None:
        print_profile(variant, r["profile"])
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", action="store_true", help="tiny students on the CPU at 128x64 (a quick check)")
    parser.add_argument("--device", default=None, help="cuda (default) or cpu (the default with --small)")
    parser.add_argument("--layers", type=int, default=None,
                        help="blocks per student (default: the real model's 30): a full-width student on a CPU, "
                             "cut to a depth it can run, still shows how a change scales per layer")
    parser.add_argument("--students", default=",".join(STUDENTS))
    parser.add_argument("--variants", default=None,
                        help=f"comma-separated, of {', '.join(VARIANTS)} (default: fp32,bf16,bf16-compiled on CUDA; "
                             "fp32,bf16 with --small)")
    parser.add_argument("--width", type=int, default=None, help="default 832 (128 with --small)")
    parser.add_argument("--height", type=int, default=None, help="default 480 (64 with --small)")
    parser.add_argument("--seconds", type=float, default=None, help="take length (default 4; 0.5 with --small)")
    parser.add_argument("--repeats", type=int, default=None, help="takes timed per variant (default 3; 1 --small)")
    parser.add_argument("--context", default="bidirectional",
                        help="comma-separated, of bidirectional and block-causal: how each student's window treats "
                             "its context frame (block-causal: keys and values computed once per window)")
    parser.add_argument("--profile", action="store_true",
                        help="also profile one denoiser call per variant: time by kind (matmul, attention, other) "
                             "and the top kernels")
    parser.add_argument("--packs", type=Path, default=None,
                        help="where the random students are built and kept (default: a temporary directory)")
    args = parser.parse_args(argv)

    device = torch.device(args.device or ("cpu" if args.small else "cuda"))
    if device.type == "cuda" and not torch.cuda.is_available():
        print("bench_gpu: no CUDA GPU here; run with --small for the CPU check", file=sys.stderr)
        return 2
    width = args.width or (128 if args.small else 832)
    height = args.height or (64 if args.small else 480)
    seconds = args.seconds or (0.5 if args.small else 4.0)
    repeats = args.repeats or (1 if args.small else 3)
    variants = (args.variants or ("fp32,bf16" if args.small else "fp32,bf16,bf16-compiled")).split(",")
    unknown = [v for v in variants if v not in VARIANTS]
    students = args.students.split(",")
    unknown += [s for s in students if s not in STUDENTS]
    contexts = args.context.split(",")
    unknown += [c for c in contexts if c not in ("bidirectional", "block-causal")]
    if unknown:
        print(f"bench_gpu: unknown variant, student or context {', '.join(unknown)}", file=sys.stderr)
        return 2
    table = SMALL_STUDENTS if args.small else STUDENTS
    if args.layers:
        table = {name: dataclasses.replace(s, transformer={**s.transformer, "num_layers": args.layers})
                 for name, s in table.items()}

    from engines.precision import torch_dtype
    from previz.text import TextEncoder

    with tempfile.TemporaryDirectory(prefix="previz-bench-gpu-") as tmp:
        packs = args.packs or Path(tmp) / "packs"
        cache_dir = Path(tmp) / "cache" if args.packs is None else args.packs / "cache"
        peaks = {dtype: matmul_peak_tflops(device, dtype, small=device.type == "cpu")
                 for dtype in (torch.float32, torch.bfloat16, torch.float16)}
        print(f"# bench_gpu: {machine(device)}\n")
        if args.layers:
            print(f"- students cut to {args.layers} layers.")
        print(f"- {width}x{height} at {FPS} fps, {seconds:g} s takes, 4 steps, window 4 with 1 context frame, "
              f"median of {repeats} takes after one warm take.")
        print("- matmul peak (measured): "
              + ", ".join(f"{str(k).removeprefix('torch.')} {v:.2f} TFLOP/s" for k, v in peaks.items()))
        for name, context in [(n, c) for n in students for c in contexts]:
            pack = build_pack(table[name], packs, width, height, *((16, 8) if args.small else (512, 64)),
                              context=context)
            text = TextEncoder(pack, device=device)  # bf16 on CUDA, shared by every variant (its cache too)
            unit, scale = ("GFLOP/s", 1e3) if args.small else ("TFLOP/s", 1.0)
            measured = 0
            failures: list[str] = []
            for variant in variants:
                # Each row and its details print as soon as they are measured, so a run cut short keeps all it
                # finished; a variant that fails (a kernel this card or torch lacks) is reported without ending
                # the run.
                try:
                    r = bench_variant(pack, text, variant, device, seconds, repeats, cache_dir, args.profile)
                except Exception as exc:  # a failure is a finding: printed below, and the run goes on
                    failures.append(f"- **{variant} failed:** {type(exc).__name__}: {str(exc)[:300]}")
                    continue
                finally:
                    release_variant(device)
                measured += 1
                if measured == 1:
                    params = r["params_b"]
                    size = f"{params:.2f}B" if params >= 0.1 else f"{params * 1e3:.2f}M"
                    print(f"\n## {name}, {context} context: {size}-parameter denoiser")
                # A table per variant, its details under it: a run cut short keeps every line it finished.
                print("\n| variant | fps | realtime | time to first frame | synced take: denoise / decode / rest (s) "
                      f"| denoise per step | denoiser {unit} (of peak) | compile | peak memory |")
                print("|---|---|---|---|---|---|---|---|---|")
                # Against the peak of the dtype the engine computes at: fp8 against bf16's (its attention and
                # small layers stay bf16, so its share of that peak can pass 100%).
                peak = peaks[torch_dtype(r["precision"])]
                memory = f"{r['peak_gib']:.1f} GiB" if r["peak_gib"] is not None else "-"
                compile_ = f"{r['compile_s']:.1f} s" if r["compile_s"] else "-"
                print(f"| {r['variant']} | {r['fps']:.1f} | {r['rtf']:.2f}x | {r['ttff_ms']:.0f} ms | "
                      f"{r['denoise_s']:.2f} / {r['decode_s']:.2f} / {r['other_s']:.2f} of {r['wall_s']:.2f} | "
                      f"{r['denoise_step_ms']:.1f} ms | {r['denoise_tflops'] * scale:.2f} "
                      f"({100 * r['denoise_tflops'] / peak:.0f}%)"
                      f" | {compile_} | {memory} |", flush=True)
                print_details(r, repeats)
            if failures:
                print(f"\n{name}, {context} context:\n" + "\n".join(failures), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
