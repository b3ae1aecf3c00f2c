"""Evaluate a backlot pack on held-out shots: every camera preset, seeds it never trained on.

For each held-out scene and camera preset it drafts the take through the
product's own ``DraftModel`` (scene and camera from the recipe, exactly as a
user's take) and renders the ground truth along the same path.  It prints:

- PSNR and SSIM against the ground-truth render;
- camera adherence: the sign of the global motion on the preset's axis
  (horizontal shift for pans, trucks, orbits and arcs; vertical for tilts,
  pedestals and cranes; scale for dollies and zooms), generated vs ground truth;
- object IoU of an object estimator (pixels that differ from the empty plate,
  the shot rendered without its objects) against the exact masks, for the
  generated frames and, as the estimator's own ceiling, for the ground truth;
- colour error inside the exact object masks (RGB distance of mean colours, 0..255);
- time-of-day and ground accuracy: each generated take is classified by the
  nearest re-render of its first frame under every time of day / every ground;
- flicker on static shots: mean absolute frame-to-frame change, generated over ground truth.

It also writes a contact sheet (control / generated / ground truth).

    python tools/eval_backlot.py                        # the shipped pack, 4 scenes x 21 presets
    python tools/eval_backlot.py --pack DIR --scenes 2 --sheet docs/backlot-contact-sheet.jpg
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from previz.backlot import HELD_OUT_SEEDS, random_shot
from previz.blockout import appearance, camera_rays, cast, control, poses_to_tensors, scene_tensors
from previz.camera import PRESETS, camera_path
from previz.packs import load_pack
from previz.recipe import Recipe, frame_count, resolve
from previz.scene import GROUNDS, TIMES_OF_DAY, Scene
from previz.take import DraftModel

AXIS = {"pan": "x", "truck": "x", "orbit": "x", "arc": "x", "tilt": "y", "pedestal": "y", "crane": "y",
        "dolly": "scale", "zoom": "scale", "dolly_zoom": None, "static": None}


# ----------------------------------------------------------------------------- image metrics


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 10.0 * math.log10(255.0 ** 2 / max(mse, 1e-10))


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Mean SSIM over RGB channels, 11x11 Gaussian window (sigma 1.5), as Wang et al."""
    x = torch.from_numpy(a).permute(2, 0, 1)[None].double() / 255.0
    y = torch.from_numpy(b).permute(2, 0, 1)[None].double() / 255.0
    g = torch.exp(-((torch.arange(11) - 5.0) ** 2) / (2 * 1.5 ** 2)).double()
    w = (g[:, None] * g[None]) / g.sum() ** 2
    w = w.expand(3, 1, 11, 11)

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, w, groups=3)

    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx ** 2, blur(y * y) - my ** 2, blur(x * y) - mx * my
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2))
    return float(s.mean())


def _gray(img: np.ndarray) -> np.ndarray:
    return img.astype(np.float64) @ np.array([0.299, 0.587, 0.114])


def shift(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Global translation (dx, dy) from a to b by phase correlation of image gradients."""
    def edges(img: np.ndarray) -> np.ndarray:
        g = _gray(img)
        e = np.hypot(np.diff(g, axis=0)[:, :-1], np.diff(g, axis=1)[:-1])
        return (e - e.mean()) * np.outer(np.hanning(e.shape[0]), np.hanning(e.shape[1]))
    fa, fb = np.fft.fft2(edges(a)), np.fft.fft2(edges(b))
    r = fb * np.conj(fa)
    corr = np.fft.ifft2(r / (np.abs(r) + 1e-9)).real
    dy, dx = np.unravel_index(np.argmax(corr), corr.shape)
    h, w = corr.shape
    return float(dx - w if dx > w // 2 else dx), float(dy - h if dy > h // 2 else dy)


def scale(a: np.ndarray, b: np.ndarray) -> float:
    """Global zoom from a to b: the centre-crop scale of a that best matches b (log scale, + = zoom in)."""
    ga, gb = torch.from_numpy(_gray(a))[None, None], torch.from_numpy(_gray(b))[None, None]
    h, w = ga.shape[-2:]
    best, best_err = 0.0, math.inf
    for s in np.linspace(-0.4, 0.4, 33):
        k = math.exp(s)
        theta = torch.tensor([[[1 / k, 0, 0], [0, 1 / k, 0]]], dtype=torch.float64)
        warped = F.grid_sample(ga, F.affine_grid(theta, ga.shape, align_corners=False), align_corners=False)
        m = slice(h // 4, 3 * h // 4), slice(w // 4, 3 * w // 4)
        err = float((warped[..., m[0], m[1]] - gb[..., m[0], m[1]]).abs().mean())
        if err < best_err:
            best, best_err = float(s), err
    return best


def motion(kind: str, a: np.ndarray, b: np.ndarray) -> float:
    axis = AXIS[kind]
    if axis == "scale":
        return scale(a, b)
    dx, dy = shift(a, b)
    return dx if axis == "x" else dy


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def object_estimate(img: np.ndarray, plate: np.ndarray, threshold: float = 24.0) -> np.ndarray:
    """Pixels that differ from the empty plate (the same shot rendered without its objects).

    Shadows differ from the plate too, and an object the colour of what is behind
    it does not: the estimator's own ceiling is measured on the ground truth.
    """
    def soft(x: np.ndarray) -> torch.Tensor:  # ground texture is detail, not an object: compare 5x5 means
        t = torch.from_numpy(x.astype(np.float64)).permute(2, 0, 1)[None]
        return F.avg_pool2d(t, 5, stride=1, padding=2, count_include_pad=False)[0]
    return ((soft(img) - soft(plate)).abs().mean(0) > threshold).numpy()


# ----------------------------------------------------------------------------- one take


def gbuffer_masks(scene: Scene, c2w: torch.Tensor, focal: torch.Tensor, w: int, h: int) -> np.ndarray:
    origin, direction = camera_rays(c2w, focal, w, h)
    hits = cast(scene, scene_tensors(scene), origin, direction)
    return hits.kind.reshape(len(c2w), h, w).numpy()


def evaluate(model: DraftModel, seed: int, move: str, seconds: float, steps: int | None) -> dict[str, float]:
    shot = random_shot(seed, window=4, context=1, temporal=4, fps=model.fps, move=move, first_window=True)
    camera = dict(shot.camera)
    recipe = resolve(Recipe(prompt=shot.caption or "a blockout", seed=seed, seconds=seconds, camera=camera,
                            scene=shot.scene.to_dict(), pack=model.pack.id, backend=model.backend, steps=steps),
                     model.pack)
    generated = np.stack([f.image for f in model.generate(recipe)])
    n = frame_count(recipe, model.fps)
    path = camera_path(recipe.camera, seconds)
    w, h = model.width, model.height
    # Ground truth for every frame only where flicker is measured; elsewhere at the frames the metrics read.
    shown = np.arange(n) if move == "static" else np.linspace(0, n - 1, 5).round().astype(int)
    generated = generated[shown]
    c2w, focal = poses_to_tensors(path, shown / model.fps, w)
    truth = (appearance(shot.scene, c2w, focal, w, h).numpy() * 255.0 + 0.5).clip(0, 255).astype(np.uint8)
    kinds = gbuffer_masks(shot.scene, c2w, focal, w, h)
    picks = np.linspace(0, len(shown) - 1, 5).round().astype(int)
    out: dict[str, float] = {
        "psnr": float(np.mean([psnr(generated[i], truth[i]) for i in picks])),
        "ssim": float(np.mean([ssim(generated[i], truth[i]) for i in picks])),
    }
    kind = PRESETS[move][0]
    if AXIS[kind] is not None:
        g, t = motion(kind, generated[0], generated[-1]), motion(kind, truth[0], truth[-1])
        if abs(t) > (0.02 if AXIS[kind] == "scale" else 1.0):  # a move too small to show has no sign to get right
            out["camera_sign"] = float(np.sign(g) == np.sign(t))
    if shot.scene.objects:
        empty = dataclasses.replace(shot.scene, objects=())
        plate = (appearance(empty, c2w[picks], focal[picks], w, h).numpy() * 255.0 + 0.5).clip(0, 255)
        masks = kinds[picks] > 0
        if masks.any():
            out["iou"] = float(np.mean([iou(object_estimate(generated[i], p), m)
                                        for i, p, m in zip(picks, plate, masks, strict=True)]))
            out["iou_truth"] = float(np.mean([iou(object_estimate(truth[i], p), m)
                                              for i, p, m in zip(picks, plate, masks, strict=True)]))
            errs = []
            for i in picks:
                for k in range(len(shot.scene.objects)):
                    m = kinds[i] == k + 1
                    if m.sum() >= 20:
                        errs.append(np.linalg.norm(generated[i][m].mean(0) - truth[i][m].mean(0)))
            if errs:
                out["color_error"] = float(np.mean(errs))
    first = (generated[0], shot.scene, c2w[:1], focal[:1], w, h)
    everywhere = np.ones(kinds[0].shape, bool)
    out["time_of_day"] = float(_classify(*first, "time_of_day", everywhere) == shot.scene.time_of_day)
    out["ground"] = float(_classify(*first, "ground", kinds[0] == 0) == shot.scene.ground)
    if move == "static":
        flicker = np.abs(np.diff(generated.astype(np.float64), axis=0)).mean()
        flicker_truth = np.abs(np.diff(truth.astype(np.float64), axis=0)).mean()
        out["flicker_ratio"] = float(flicker / max(flicker_truth, 0.25))  # a still truth has ~0 change: floor it
    out["_generated"], out["_truth"] = generated, truth  # type: ignore[assignment]
    out["_control"] = ((control(shot.scene, c2w, focal, w, h)[:, 1:].permute(0, 2, 3, 1).numpy() + 1) * 127.5
                       ).astype(np.uint8)  # type: ignore[assignment]
    return out


def _classify(img: np.ndarray, scene: Scene, c2w: torch.Tensor, focal: torch.Tensor, w: int, h: int,
              field: str, where: np.ndarray) -> str:
    """The time of day (or ground) whose re-render of this frame has the mean colour nearest the image's,
    over the pixels ``where`` says (the whole frame for time of day, the ground's pixels for ground)."""
    options = TIMES_OF_DAY if field == "time_of_day" else GROUNDS
    if not where.any():
        where = np.ones_like(where)
    seen = img[where].astype(np.float64).mean(0)
    best, best_err = options[0], math.inf
    for option in options:
        ref = appearance(dataclasses.replace(scene, **{field: option}), c2w, focal, w, h)[0].numpy() * 255.0
        err = float(np.linalg.norm(ref[where].mean(0) - seen))
        if err < best_err:
            best, best_err = option, err
    return best


# ----------------------------------------------------------------------------- the run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pack", default="previz-backlot")
    parser.add_argument("--backend", default="onnxruntime")
    parser.add_argument("--scenes", type=int, default=4, help="held-out scenes (each with every preset)")
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--steps", type=int, default=None, help="sampling steps (default: the pack's)")
    parser.add_argument("--sheet", type=Path, default=None, help="write a contact sheet here (.jpg or .png)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures as JSON")
    args = parser.parse_args(argv)

    pack = load_pack(args.pack)
    model = DraftModel(pack, args.backend)
    model.warmup()
    moves = sorted(PRESETS)
    results: list[dict[str, float]] = []
    sheet_rows: list[np.ndarray] = []
    start = time.perf_counter()
    for s in range(args.scenes):
        seed = HELD_OUT_SEEDS + s
        for move in moves:
            r = evaluate(model, seed, move, args.seconds, args.steps)
            gen, truth, ctl = r.pop("_generated"), r.pop("_truth"), r.pop("_control")  # type: ignore[misc]
            results.append(r)
            if args.sheet is not None and move in ("orbit_left", "dolly_in", "pan_right", "crane_up") and s < 4:
                idx = np.linspace(0, len(gen) - 1, 3).round().astype(int)
                sheet_rows.append(np.concatenate([np.concatenate([ctl[i], gen[i], truth[i]], 1) for i in idx], 1))
        print(f"scene {s + 1}/{args.scenes} done ({time.perf_counter() - start:.0f} s)", file=sys.stderr)

    def mean(key: str) -> tuple[float, int]:
        vals = [r[key] for r in results if key in r]
        return (float(np.mean(vals)) if vals else float("nan")), len(vals)

    print(f"pack {pack.id} ({pack.label}), backend {args.backend}, {args.steps or pack.draft.steps} steps, "
          f"{len(results)} held-out takes ({args.scenes} scenes x {len(moves)} presets, {args.seconds:g} s each)")
    rows = [("PSNR vs ground truth (dB)", "psnr", ">= 26"), ("SSIM", "ssim", ">= 0.82"),
            ("camera: motion sign on the right axis", "camera_sign", ">= 0.90"),
            ("object IoU (generated)", "iou", ">= 0.62"), ("object IoU (ground truth, estimator ceiling)",
                                                          "iou_truth", ""),
            ("colour error in object masks (0..255)", "color_error", "<= 25"),
            ("time-of-day accuracy", "time_of_day", ">= 0.90"), ("ground accuracy", "ground", ">= 0.90"),
            ("static-shot flicker / ground truth's", "flicker_ratio", "<= 1.5")]
    figures = {}
    for label, key, target in rows:
        value, count = mean(key)
        figures[key] = {"mean": value, "n": count}
        print(f"  {label:<46} {value:8.3f}   (n={count}) {('target ' + target) if target else ''}")
    if args.json:
        args.json.write_text(json.dumps({"pack": pack.id, "takes": len(results), "figures": figures}, indent=1))
    if args.sheet is not None and sheet_rows:
        args.sheet.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.concatenate(sheet_rows, 0)).save(args.sheet, quality=88)
        print(f"contact sheet (each frame: control | generated | ground truth): {args.sheet}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
