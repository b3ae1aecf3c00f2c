"""The backlot: random blockout shots, for training the backlot pack and for evaluating it.

A shot is a random scene, a random camera move and a window of a take: the
clip of ``window`` latent frames that the draft sampler would denoise at that
point of the take.  :func:`render_shot` renders everything a training step or an
evaluation needs from it: the lit ground truth, the blockout control, the
camera's Plücker maps, and a caption in the prompt parser's vocabulary.

Every shot is a pure function of its integer seed (numpy's PCG64), so seeds
from one range train and seeds from a disjoint range hold out, on any machine.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from previz.blockout import appearance, control_latent, poses_to_tensors, scene_tensors
from previz.camera import PRESETS, CameraError, camera_path, latent_frame_groups, plucker_latent
from previz.packs import LatentLayout
from previz.scene import COLORS, DEFAULT_SIZES, GROUNDS, SHAPES, TIMES_OF_DAY, Scene, SceneObject, describe

HELD_OUT_SEEDS = 10_000_000  # training draws seeds below this, evaluation at and above it
MOVES = sorted(PRESETS)


@dataclass(frozen=True)
class Shot:
    seed: int
    scene: Scene
    camera: dict[str, Any]
    seconds: float
    start: int  # first latent frame of the window in the take
    context: int  # clean latent frames the window starts with (0 for a take's first window)
    caption: str


@dataclass
class ShotTensors:
    frames: torch.Tensor  # [window * temporal, H, W, 3] float in [0, 1]: the ground truth
    control: torch.Tensor  # [window, K, h, w]
    camera: torch.Tensor  # [window, 6 * temporal, h, w]


def random_scene(rng: np.random.Generator) -> Scene:
    """Objects where a blocked shot puts them: in view ahead of the camera, mostly on the ground, some
    stacked, and a third of the scenes in a row at the distance the prompt parser uses."""
    count = int(rng.choice([0, 1, 1, 2, 2, 3, 3, 4, 4, 5]))
    names = list(COLORS)
    in_a_row = rng.random() < 0.3
    row_z = -rng.uniform(5.0, 8.0)
    objects: list[SceneObject] = []
    for i in range(count):
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
        base = np.array(DEFAULT_SIZES[shape])
        size = base * rng.uniform(0.6, 2.2) * rng.uniform(0.75, 1.33, 3)
        r, g, b = (int(c) for c in rng.integers(0, 256, 3))
        color = COLORS[names[int(rng.integers(len(names)))]] if rng.random() < 0.8 else (r, g, b)
        if in_a_row:
            z, x = row_z, (i - (count - 1) / 2.0) * 1.8
        else:
            z = -rng.uniform(3.0, 12.0)
            x = rng.uniform(-0.4, 0.4) * abs(z)
        y = 0.0
        if objects and rng.random() < 0.15:  # stacked on an earlier object
            under = objects[int(rng.integers(len(objects)))]
            x, z = under.position[0], under.position[2]
            y = under.position[1] + under.size[1]
        objects.append(SceneObject(shape=shape, color=color, position=(float(x), float(y), float(z)),  # type: ignore[arg-type]
                                   size=tuple(float(s) for s in size), yaw=float(rng.uniform(0, 360))))  # type: ignore[arg-type]
    return Scene(time_of_day=TIMES_OF_DAY[int(rng.integers(len(TIMES_OF_DAY)))],
                 ground=GROUNDS[int(rng.integers(len(GROUNDS)))], objects=tuple(objects))


def random_camera(rng: np.random.Generator, move: str | None = None) -> dict[str, Any]:
    if move is None:
        move = "static" if rng.random() < 0.15 else MOVES[int(rng.integers(len(MOVES)))]
    spec: dict[str, Any] = {"preset": move, "speed": round(float(rng.uniform(0.4, 2.5)), 3),
                            "focal_mm": round(float(rng.uniform(24.0, 60.0)), 2)}
    if rng.random() < 0.25:
        spec["shake"] = {"amplitude": round(float(rng.uniform(0.1, 0.8)), 3), "seed": int(rng.integers(1000))}
    return spec


def random_shot(seed: int, *, window: int, context: int, temporal: int, fps: int,
                move: str | None = None, first_window: bool | None = None) -> Shot:
    """A shot from its seed: scene, camera, take length, and which window of the take."""
    rng = np.random.Generator(np.random.PCG64(seed))
    scene = random_scene(rng)
    camera = random_camera(rng, move)
    seconds = round(float(rng.uniform(1.0, 8.0)), 3)
    for _ in range(8):  # some moves (dolly zoom, arc) run into the subject if long and fast: slow them down
        try:
            camera_path(camera, seconds)
            break
        except CameraError:
            camera["speed"] = round(camera["speed"] / 2.0, 4)
    latents = -(-round(seconds * fps) // temporal)
    starts = [0] + list(range(window - context, max(1, latents - window + 1), window - context))
    if first_window is None:
        first_window = rng.random() < 0.4 or len(starts) == 1
    start = 0 if first_window else starts[1 + int(rng.integers(len(starts) - 1))]
    caption = describe(scene) if rng.random() > 0.25 else ""  # some shots teach the control alone
    return Shot(seed=seed, scene=scene, camera=camera, seconds=seconds, start=start,
                context=0 if start == 0 else context, caption=caption)


def render_shot(shot: Shot, *, layout: LatentLayout, window: int, fps: int, width: int, height: int,
                control_scale: int, device: torch.device | str = "cpu") -> ShotTensors:
    """Ground truth, control and camera maps for the shot's window, exactly as a take would see them."""
    path = camera_path(shot.camera, shot.seconds)
    frames = max(1, math.floor(shot.seconds * fps + 0.5))
    latents = range(shot.start, shot.start + window)
    groups = latent_frame_groups(frames, layout.temporal, layout.causal_first_frame)
    video = [f for i in latents for f in groups[min(i, len(groups) - 1)]]
    c2w, focal = poses_to_tensors(path, np.array(video, dtype=np.float64) / fps, width, device)
    truth = appearance(shot.scene, c2w, focal, width, height, scene_tensors(shot.scene, device))
    control = control_latent(shot.scene, path, fps=fps, frames=frames, width=width, height=height,
                             temporal=layout.temporal, spatial=layout.spatial,
                             causal_first_frame=layout.causal_first_frame, scale=control_scale, latents=latents,
                             device=device)
    camera = plucker_latent(path, fps=fps, frames=frames, width=width, height=height, temporal=layout.temporal,
                            spatial=layout.spatial, causal_first_frame=layout.causal_first_frame, latents=latents)
    return ShotTensors(frames=truth, control=control, camera=torch.from_numpy(camera).to(device))
