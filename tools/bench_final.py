"""Final-stage benchmark: seconds per output frame for refine, decode, VSR and encode, and peak RSS.

Runs a real 4K job (the job runner, the draft store, the embedded packs) for a
draft of L frames and one of 2L frames, each in its own process so that each
peak RSS is that job's alone, and prints:

- seconds per output frame of each stage (refine counts its steps' time over
  the frames they produce);
- peak RSS of each job and the ratio 2L / L (memory must not grow with length:
  frames stream through decode, VSR and encode);
- the VSR's temporal flicker: mean absolute frame-to-frame change of the VSR
  output minus that of a bicubic upscale of the same input frames.

    python tools/bench_final.py [--frames 16] [--format prores] [--resolution uhd]

Everything runs on the embedded packs, which are UNTRAINED: the figures are
costs, not quality.

    python tools/bench_final.py --gpu

On a CUDA machine instead: one step of one Wan 2.2 A14B-shaped expert (random
bf16 weights) over 81 frames at 1280x720, the Wan 2.1 VAE decode of those 81
frames, and the Lanczos VSR to UHD, with peak device memory.  (Written without
a GPU at hand: its figures have not been recorded yet.)
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


def child(frames: int, fmt: str, resolution: str, home: Path, flicker: bool) -> dict[str, Any]:
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
    store = DraftStore(home / "drafts")
    draft = store.add(recipe=recipe.to_dict(), meta=model.metadata(recipe), frames=images,
                      latents=np.concatenate(latents, axis=2), fps=model.fps)
    store.set_state(draft.id, "approved")
    job = store.promote(draft.id, {"format": fmt, "resolution": resolution})
    del model, images  # the job reads the draft back from the store, as a real one does

    spent = {"refine": 0.0, "decode": 0.0, "vsr": 0.0, "encode_total": 0.0}

    def timed(key: str, fn: Any) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[key] += time.perf_counter() - start
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
    for name in ("encode_segment", "encode_image", "join_segments", "join_frames"):
        setattr(jobs, name, timed("encode_total", getattr(jobs, name)))

    start = time.perf_counter()
    done = jobs.JobRunner(store).run(job.id)
    wall = time.perf_counter() - start
    # Decode and VSR run inside the encoder's frame loop: encode alone is the rest.
    encode = spent["encode_total"] - spent["decode"] - spent["vsr"]
    out: dict[str, Any] = {
        "frames": draft.frames, "wall_s": wall, "refine_s": spent["refine"], "decode_s": spent["decode"],
        "vsr_s": spent["vsr"], "encode_s": encode,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "output_bytes": sum(p.stat().st_size for p in Path(done.output).rglob("*")) if Path(done.output).is_dir()
        else Path(done.output).stat().st_size,
    }
    if flicker:
        out["flicker"] = measure_flicker(store, draft.id)
    return out


def measure_flicker(store: Any, draft_id: str) -> dict[str, float]:
    """Mean |frame t - frame t-1| of the VSR output and of a bicubic upscale of the same decoded frames."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    from upscale.final_pack import FINAL_PACK_ID, open_final_pack
    from upscale.jobs import read_take
    from upscale.refine import FinalModel
    from upscale.vsr import Lanczos, TiledVSR

    # The input: the draft's frames through the final VAE round trip is not needed; VSR flicker is a
    # property of the upscaler on any frame sequence, so the draft's own frames at the final size serve.
    model = FinalModel(open_final_pack(FINAL_PACK_ID, lambda _m: None))
    assert model.pack.final is not None
    w, h = model.pack.final.width, model.pack.final.height
    vsr = TiledVSR(Lanczos(), (w, h), (3840, 2160))
    x, y, rw, rh = vsr.rect
    prev_v = prev_b = None
    dv, db, n = 0.0, 0.0, 0
    for frame in read_take(store.file_path(draft_id, "take.mp4")):
        small = F.interpolate(torch.from_numpy(frame).permute(2, 0, 1)[None], size=(h, w), mode="bilinear",
                              antialias=True)[0].permute(1, 2, 0).numpy()
        v = vsr.upscale([np.ascontiguousarray(small)])[y:y + rh, x:x + rw]
        b = F.interpolate(torch.from_numpy(small).permute(2, 0, 1)[None], size=(rh, rw), mode="bicubic")[0]
        b = b.clamp(0, 1).permute(1, 2, 0).numpy()
        if prev_v is not None:
            dv += float(np.abs(v - prev_v).mean())
            db += float(np.abs(b - prev_b).mean())
            n += 1
        prev_v, prev_b = v, b
    return {"vsr": dv / max(n, 1), "bicubic": db / max(n, 1), "vsr_minus_bicubic": (dv - db) / max(n, 1)}


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

    vsr = TiledVSR(Lanczos(), (width, height), (3840, 2160))
    frame = np.random.default_rng(0).random((height, width, 3), dtype=np.float32)
    start = time.perf_counter()
    for _ in range(3):
        vsr.upscale([frame])
    print(f"VSR (Lanczos, CPU) {width}x{height} -> 3840x2160: {(time.perf_counter() - start) / 3:.2f} s/frame")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=16, help="L: frames of the shorter job (default 16)")
    parser.add_argument("--format", default="prores")
    parser.add_argument("--resolution", default="uhd")
    parser.add_argument("--gpu", action="store_true", help="time the real shapes on a CUDA GPU instead")
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--home", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--flicker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.gpu:
        sys.path.insert(0, str(REPO))
        gpu_bench()
        return
    if args.child is not None:
        print(json.dumps(child(args.child, args.format, args.resolution, args.home, args.flicker)))
        return

    home = Path(tempfile.mkdtemp(prefix="previz-bench-final-"))
    results = {}
    for i, frames in enumerate((args.frames, 2 * args.frames)):
        cmd = [sys.executable, __file__, "--child", str(frames), "--format", args.format, "--resolution",
               args.resolution, "--home", str(home)] + (["--flicker"] if i == 0 else [])
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            sys.exit(f"bench child failed:\n{proc.stderr[-3000:]}")
        results[frames] = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"final stage, {args.format} {args.resolution}, embedded packs (UNTRAINED), "
          f"{os.cpu_count()} CPU threads, torch CPU")
    print(f"{'frames':>6} {'refine':>8} {'decode':>8} {'vsr':>8} {'encode':>8} {'wall':>8} {'peak RSS':>10}   "
          "(seconds per output frame)")
    for r in results.values():
        n = r["frames"]
        print(f"{n:>6} {r['refine_s'] / n:>8.3f} {r['decode_s'] / n:>8.3f} {r['vsr_s'] / n:>8.3f} "
              f"{r['encode_s'] / n:>8.3f} {r['wall_s'] / n:>8.3f} {r['peak_rss_mb']:>8.0f} MB")
    a, b = results[args.frames], results[2 * args.frames]
    print(f"peak RSS 2L/L = {b['peak_rss_mb'] / a['peak_rss_mb']:.3f} (target <= 1.1)")
    f = a["flicker"]
    print(f"VSR temporal flicker (mean |frame t - frame t-1|): VSR {f['vsr']:.5f}, bicubic {f['bicubic']:.5f}, "
          f"VSR - bicubic {f['vsr_minus_bicubic']:+.5f}")


if __name__ == "__main__":
    main()
