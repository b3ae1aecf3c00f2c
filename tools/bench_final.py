"""Final-stage benchmark: seconds per output frame for refine, decode, VSR and encode, peak RSS, flicker.

Runs a real 4K job (the job runner, the draft store, the embedded packs) for a
draft of L frames and one of 2L frames, each in its own process so that each
peak RSS is that job's alone, and prints:

- seconds per output frame of each stage (refine counts its steps' time over
  the frames they produce), and of the unit files between them (decoded and
  upscaled frames written and read back: what makes a resume cheap);
- peak RSS of each job and the ratio 2L / L (memory must not grow with length:
  frames stream through decode, VSR and encode);
- each upscaler's temporal flicker: mean absolute frame-to-frame change of the
  VSR output minus that of a bicubic upscale of the same input frames, for
  Lanczos and for a learned VSR pack (SRVGGNetCompact x4 in the Real-ESRGAN
  animevideov3 shape, through spandrel) without and with its temporal window;
- with ``--upscaler vsr``, the L job through that VSR pack as well.

    python tools/bench_final.py [--frames 16] [--format prores] [--resolution uhd] [--upscaler vsr]

Everything runs on the embedded packs and a seeded VSR pack, all UNTRAINED:
the figures are costs, and the flicker of an untrained network is the
temporal window's effect on a network's noise, not a quality score.

    python tools/bench_final.py --gpu

On a CUDA machine instead: one step of one Wan 2.2 A14B-shaped expert (random
bf16 weights) over 81 frames at 1280x720, the Wan 2.1 VAE decode of those 81
frames, and the VSR to UHD (the SRVGGNetCompact x3 network in fp16 when
spandrel is installed, and Lanczos), with peak device memory.  (Written
without a GPU at hand: its figures have not been recorded yet.)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def child(frames: int, fmt: str, resolution: str, home: Path, flicker: bool, upscaler: str) -> dict[str, Any]:
    """One job in this process; returns its stage timings and peak RSS."""
    os.environ["PREVIZ_HOME"] = str(home)
    sys.path.insert(0, str(REPO))
    import numpy as np
    import torch

    import upscale.jobs as jobs
    import upscale.refine
    from previz.cli import _quiet_libraries, open_pack
    from previz.drafts import DraftStore
    from previz.recipe import Recipe, resolve
    from previz.take import DraftModel
    from upscale.refine import FinalModel
    from upscale.vsr import TiledVSR

    _quiet_libraries()
    torch.set_num_threads(os.cpu_count() or 1)
    pack = open_pack("previz-tiny", lambda _m: None)
    model = DraftModel(pack, "torch")
    recipe = resolve(Recipe(prompt="a lighthouse in a gale", seed=7, seconds=frames / model.fps,
                            camera={"preset": "orbit_left"}), pack)
    latents: list[Any] = []
    images = [f.image for f in model.generate(recipe, on_chunk=lambda _c, lat: latents.append(lat))]
    store = DraftStore(home / f"drafts-{frames}-{Path(upscaler).name}")
    draft = store.add(recipe=recipe.to_dict(), meta=model.metadata(recipe), frames=images,
                      latents=np.concatenate(latents, axis=2), fps=model.fps)
    store.set_state(draft.id, "approved")
    job = store.promote(draft.id, {"format": fmt, "resolution": resolution, "upscaler": upscaler}, local=True)
    del model, images  # the job reads the draft back from the store, as a real one does

    spent = {"refine": 0.0, "decode": 0.0, "vsr": 0.0, "encode": 0.0, "units": 0.0, "read_back": 0.0}
    encoding = [False]  # inside an encoder call: its frames' unit reads are counted as units only

    def timed(key: str, fn: Any) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            start, outer = time.perf_counter(), encoding[0]
            encoding[0] = outer or key == "encode"
            try:
                return fn(*args, **kwargs)
            finally:
                encoding[0] = outer
                spent[key] += time.perf_counter() - start
                if key == "units" and outer:
                    spent["read_back"] += time.perf_counter() - start
        return wrapper

    upscale.refine.euler_step = timed("refine", upscale.refine.euler_step)  # what Refine.step calls
    decode = FinalModel.decode

    def timed_decode(self: Any, *args: Any, **kwargs: Any) -> Any:
        stream = decode(self, *args, **kwargs)
        while True:
            start = time.perf_counter()
            try:
                frame = next(stream)
            except StopIteration:
                return
            finally:
                spent["decode"] += time.perf_counter() - start
            yield frame

    FinalModel.decode = timed_decode  # type: ignore[method-assign]
    TiledVSR.upscale = timed("vsr", TiledVSR.upscale)  # type: ignore[method-assign]
    for name in ("_save_frame", "_load_frame"):
        setattr(jobs.JobRunner, name, timed("units", getattr(jobs.JobRunner, name)))
    for name in ("encode_segment", "encode_image", "join_segments", "join_frames"):
        setattr(jobs, name, timed("encode", getattr(jobs, name)))

    start = time.perf_counter()
    done = jobs.JobRunner(store).run(job.id)
    wall = time.perf_counter() - start
    # The encoder reads each segment's frames from their vsr units as it goes: that read is in both
    # "encode" and "units", so it comes off encode here.
    read_back = spent["read_back"]
    out: dict[str, Any] = {
        "frames": draft.frames, "wall_s": wall, "refine_s": spent["refine"], "decode_s": spent["decode"],
        "vsr_s": spent["vsr"], "encode_s": spent["encode"] - read_back, "units_s": spent["units"],
        "upscaler": upscaler,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "output_bytes": sum(p.stat().st_size for p in Path(done.output).rglob("*")) if Path(done.output).is_dir()
        else Path(done.output).stat().st_size,
    }
    if flicker:
        out["flicker"] = measure_flicker(store, draft.id, home)
    return out


def vsr_pack(home: Path, temporal_window: int = 3) -> Path:
    """The bench's learned VSR pack: SRVGGNetCompact x4 (animevideov3's shape), seeded, UNTRAINED."""
    sys.path.insert(0, str(REPO))
    from previz.packs import load_pack
    from upscale.final_pack import build_vsr_pack

    root = home / f"vsr-compact-w{temporal_window}"
    try:
        load_pack(str(root))
    except Exception:
        build_vsr_pack(root, pack_id=f"bench-compact-x4-w{temporal_window}", temporal_window=temporal_window)
    return root


def measure_flicker(store: Any, draft_id: str, home: Path) -> dict[str, dict[str, float]]:
    """Mean |frame t - frame t-1| of each upscaler's output and of a bicubic upscale of the same frames."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    from upscale.final_pack import FINAL_PACK_ID, open_final_pack
    from upscale.jobs import read_take
    from upscale.refine import FinalModel
    from upscale.vsr import TiledVSR, upscaler_for

    # VSR flicker is a property of the upscaler on any frame sequence: the draft's own frames at the
    # final pack's size serve (the untrained final pack's decode would be noise).
    model = FinalModel(open_final_pack(FINAL_PACK_ID, lambda _m: None))
    assert model.pack.final is not None
    w, h = model.pack.final.width, model.pack.final.height
    upscalers = {"lanczos": upscaler_for("lanczos")}
    try:
        upscalers["compact x4, window 1"] = upscaler_for(str(vsr_pack(home, 1)))
        upscalers["compact x4, window 3"] = upscaler_for(str(vsr_pack(home, 3)))
    except Exception as exc:  # spandrel not installed: Lanczos only
        print(f"no learned VSR figures: {exc}", file=sys.stderr)
    small = [F.interpolate(torch.from_numpy(f).permute(2, 0, 1)[None], size=(h, w), mode="bilinear",
                           antialias=True)[0].permute(1, 2, 0).numpy()
             for f in read_take(store.file_path(draft_id, "take.mp4"))]
    out = {}
    for name, upscaler in upscalers.items():
        vsr = TiledVSR(upscaler, (w, h), (3840, 2160))
        x, y, rw, rh = vsr.rect
        prev_v = prev_b = None
        dv, db, n = 0.0, 0.0, 0
        for v_full, frame in zip(vsr.stream(small), small, strict=True):
            v = v_full[y:y + rh, x:x + rw]
            b = F.interpolate(torch.from_numpy(frame).permute(2, 0, 1)[None], size=(rh, rw), mode="bicubic")[0]
            b = b.clamp(0, 1).permute(1, 2, 0).numpy()
            if prev_v is not None:
                dv += float(np.abs(v - prev_v).mean())
                db += float(np.abs(b - prev_b).mean())
                n += 1
            prev_v, prev_b = v, b
        out[name] = {"vsr": dv / max(n, 1), "bicubic": db / max(n, 1), "vsr_minus_bicubic": (dv - db) / max(n, 1)}
    return out


# Wan2.2-T2V-A14B's transformer/config.json (each of its two experts has this shape).
A14B_EXPERT = dict(patch_size=(1, 2, 2), num_attention_heads=40, attention_head_dim=128, in_channels=16,
                   out_channels=16, text_dim=4096, freq_dim=256, ffn_dim=13824, num_layers=40,
                   cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024)


def gpu_bench() -> None:
    """Costs on a CUDA GPU at the real shapes (random weights: cost only, never quality)."""
    import numpy as np
    import torch
    from diffusers import AutoencoderKLWan, WanTransformer3DModel

    from upscale.vsr import Lanczos, TiledVSR

    if not torch.cuda.is_available():
        sys.exit("--gpu needs a CUDA GPU; none is visible to torch here")
    dev = torch.device("cuda")
    print(f"GPU: {torch.cuda.get_device_name(dev)}; torch {torch.__version__}")

    def timed(fn: Any, repeats: int = 2) -> float:
        fn()  # the first call pays kernel selection and allocation
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(repeats):
            fn()
        torch.cuda.synchronize()
        return (time.perf_counter() - start) / repeats

    frames, width, height = 81, 1280, 720
    lat = (1, 16, 1 + (frames - 1) // 4, height // 8, width // 8)
    x = torch.randn(lat, device=dev, dtype=torch.bfloat16)

    def expert_step() -> tuple[float, float, float]:
        """(seconds per step, peak GiB, billions of params); the expert is freed on return."""
        torch.set_default_dtype(torch.bfloat16)  # built in bf16 directly: fp32 first would need 57 GB
        with dev:
            expert: Any = WanTransformer3DModel(**A14B_EXPERT).eval()
        torch.set_default_dtype(torch.float32)
        t = torch.tensor([900.0], device=dev)
        text = torch.randn(1, 512, 4096, device=dev, dtype=torch.bfloat16)
        torch.cuda.reset_peak_memory_stats(dev)
        with torch.inference_mode():
            step = timed(lambda: expert(x, t, text, return_dict=False))
        return step, torch.cuda.max_memory_allocated(dev) / 2**30, sum(p.numel() for p in expert.parameters()) / 1e9

    step, peak, params = expert_step()
    torch.cuda.empty_cache()
    tokens = lat[2] * (lat[3] // 2) * (lat[4] // 2)
    print(f"A14B-shaped expert ({params:.1f}B params, bf16), {frames} frames {width}x{height} "
          f"({tokens} tokens): {step:.2f} s per step, peak {peak:.1f} GiB")

    vae: Any = AutoencoderKLWan().to(dev, torch.bfloat16).eval()  # the Wan 2.1 VAE's configuration
    torch.cuda.reset_peak_memory_stats(dev)
    with torch.inference_mode():
        decode = timed(lambda: vae.decode(x, return_dict=False), repeats=1)
    print(f"Wan 2.1 VAE decode, {frames} frames {width}x{height}: {decode:.2f} s "
          f"({decode / frames * 1000:.0f} ms/frame), peak {torch.cuda.max_memory_allocated(dev) / 2**30:.1f} GiB")

    frame = np.random.default_rng(0).random((height, width, 3), dtype=np.float32)
    try:
        from upscale.vsr import import_spandrel

        import_spandrel()
        from spandrel.architectures.Compact import Compact

        net: Any = Compact(num_feat=64, num_conv=16, upscale=3).to(dev, torch.float16).eval()  # animevideov3 x3
        batch = torch.rand(8, 3, height, width, device=dev, dtype=torch.float16)
        torch.cuda.reset_peak_memory_stats(dev)
        with torch.inference_mode():
            per_batch = timed(lambda: net(batch), repeats=3)
        print(f"SRVGGNetCompact x3 (fp16, batches of 8) {width}x{height} -> {3 * width}x{3 * height}: "
              f"{8 / per_batch:.0f} frames/s, peak {torch.cuda.max_memory_allocated(dev) / 2**30:.1f} GiB")
    except Exception as exc:  # spandrel not installed
        print(f"no SRVGGNetCompact figure: {exc}")
    vsr = TiledVSR(Lanczos(), (width, height), (3840, 2160))
    start = time.perf_counter()
    for _ in range(3):
        vsr.upscale([frame])
    print(f"VSR (Lanczos, CPU) {width}x{height} -> 3840x2160: {(time.perf_counter() - start) / 3:.2f} s/frame")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=16, help="L: frames of the shorter job (default 16)")
    parser.add_argument("--format", default="prores")
    parser.add_argument("--resolution", default="uhd")
    parser.add_argument("--upscaler", choices=("lanczos", "vsr"), default="lanczos",
                        help="vsr: also run the L job through the bench's learned VSR pack")
    parser.add_argument("--gpu", action="store_true", help="time the real shapes on a CUDA GPU instead")
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--home", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--job-upscaler", default="lanczos", help=argparse.SUPPRESS)
    parser.add_argument("--flicker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.gpu:
        sys.path.insert(0, str(REPO))
        gpu_bench()
        return
    if args.child is not None:
        print(json.dumps(child(args.child, args.format, args.resolution, args.home, args.flicker,
                               args.job_upscaler)))
        return

    home = Path(tempfile.mkdtemp(prefix="previz-bench-final-"))
    runs = [(args.frames, "lanczos", True), (2 * args.frames, "lanczos", False)]
    if args.upscaler == "vsr":
        runs.append((args.frames, str(vsr_pack(home)), False))
    results = []
    for frames, upscaler, flicker in runs:
        cmd = [sys.executable, __file__, "--child", str(frames), "--format", args.format, "--resolution",
               args.resolution, "--home", str(home), "--job-upscaler", upscaler] + (["--flicker"] if flicker else [])
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            sys.exit(f"bench child failed:\n{proc.stderr[-3000:]}")
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    print(f"final stage, {args.format} {args.resolution}, embedded packs (UNTRAINED), "
          f"{os.cpu_count()} CPU threads, torch CPU")
    print(f"{'frames':>6} {'upscaler':>24} {'refine':>8} {'decode':>8} {'vsr':>8} {'encode':>8} {'units':>8} "
          f"{'wall':>8} {'peak RSS':>10}   (seconds per output frame)")
    for r in results:
        n = r["frames"]
        print(f"{n:>6} {Path(r['upscaler']).name:>24} {r['refine_s'] / n:>8.3f} {r['decode_s'] / n:>8.3f} "
              f"{r['vsr_s'] / n:>8.3f} {r['encode_s'] / n:>8.3f} {r['units_s'] / n:>8.3f} {r['wall_s'] / n:>8.3f} "
              f"{r['peak_rss_mb']:>8.0f} MB")
    a, b = results[0], results[1]
    print(f"peak RSS 2L/L = {b['peak_rss_mb'] / a['peak_rss_mb']:.3f} (Lanczos; target <= 1.1)")
    print("VSR temporal flicker (mean |frame t - frame t-1| of the output, minus a bicubic upscale's):")
    for name, f in a["flicker"].items():
        print(f"  {name:<22} VSR {f['vsr']:.5f}, bicubic {f['bicubic']:.5f}, "
              f"VSR - bicubic {f['vsr_minus_bicubic']:+.5f}")


if __name__ == "__main__":
    main()
