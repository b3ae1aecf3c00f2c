"""The blockout renderer: a scene along a camera path, as a control video and as a lit picture.

A vectorised torch ray caster over analytic primitives (box, sphere, cylinder,
cone; pillars and walls are boxes) and the ground plane.  Every pixel's ray is
tested against every object at once, so a frame is a handful of tensor ops on
whatever device the tensors live on, and the result is a pure function of
(scene, poses, size): deterministic, with no random state.

Two products:

- :func:`control` is what a backlot pack's denoiser follows at inference: per
  frame a G-buffer of depth (a disparity-like code, 0 for sky) and flat albedo
  (object colour, ground material, the sky's colour for the time of day).
  :func:`control_latent` folds it to latent resolution window by window.
- :func:`appearance` is the lit, textured picture the pack learns to draw
  (sky by time of day, textured ground, diffuse shading, sun shadows, haze).
  Training renders it as ground truth; inference never needs it.

Poses come from :mod:`previz.camera` (GL convention: camera +X right, +Y up,
looking down -Z; world +Y up).
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from previz.camera import CameraPath, latent_frame_groups
from previz.scene import Scene

FAR_M = 400.0  # rays that hit nothing nearer are sky
EPS = 1e-4
DEPTH_SCALE_M = 4.0  # the control's depth code: 1 / (1 + distance / DEPTH_SCALE_M)
SHAPE_IDS = {"box": 0, "pillar": 0, "wall": 0, "sphere": 1, "cylinder": 2, "cone": 3}
CONTROL_CHANNELS = 4  # depth code + albedo RGB, per video frame


@dataclass(frozen=True)
class Light:
    """Sky and sun for one time of day (linear-ish RGB in 0..1)."""

    sun_dir: tuple[float, float, float]  # toward the sun (or moon)
    sun: tuple[float, float, float]
    ambient: tuple[float, float, float]
    zenith: tuple[float, float, float]
    horizon: tuple[float, float, float]


def _toward(azimuth_deg: float, elevation_deg: float) -> tuple[float, float, float]:
    a, e = math.radians(azimuth_deg), math.radians(elevation_deg)
    return math.cos(e) * math.cos(a), math.sin(e), -math.cos(e) * math.sin(a)


# time of day -> Light(toward the sun, sun colour, ambient, zenith, horizon).  The sun stands behind the
# camera's shoulder at every time of day, so a blocked shot's faces read rather than backlit.
LIGHTS = {
    "dawn": Light(_toward(-35.0, 12.0), (1.05, 0.78, 0.55), (0.32, 0.33, 0.42), (0.38, 0.50, 0.72), (0.95, 0.72, 0.58)),
    "day": Light(_toward(-60.0, 55.0), (1.00, 0.96, 0.88), (0.38, 0.44, 0.55), (0.25, 0.45, 0.85),
                 (0.70, 0.82, 0.95)),
    "dusk": Light(_toward(215.0, 8.0), (1.00, 0.52, 0.28), (0.30, 0.24, 0.32), (0.22, 0.22, 0.45), (0.98, 0.55, 0.32)),
    "night": Light(_toward(-120.0, 40.0), (0.30, 0.34, 0.48), (0.09, 0.10, 0.17), (0.01, 0.02, 0.06),
                   (0.06, 0.08, 0.16)),
}
GROUND_ALBEDO = {
    "grass": (0.30, 0.52, 0.22), "sand": (0.86, 0.76, 0.55), "asphalt": (0.22, 0.22, 0.24),
    "snow": (0.92, 0.94, 0.97), "dirt": (0.45, 0.33, 0.22), "concrete": (0.62, 0.61, 0.58),
}
# Texture per ground: (contrast, coarse frequency per metre, fine frequency, tile size m or 0)
GROUND_TEXTURE = {
    "grass": (0.45, 0.6, 5.0, 0.0), "sand": (0.18, 0.25, 3.0, 0.0), "asphalt": (0.30, 0.9, 9.0, 0.0),
    "snow": (0.07, 0.3, 2.0, 0.0), "dirt": (0.40, 0.8, 4.0, 0.0), "concrete": (0.12, 0.4, 6.0, 2.0),
}


def sky_albedo(time_of_day: str) -> tuple[float, float, float]:
    """The flat colour sky pixels carry in the control: the sky's mean, so time of day reads at a glance."""
    light = LIGHTS[time_of_day]
    return tuple((2.0 * h + z) / 3.0 for h, z in zip(light.horizon, light.zenith, strict=True))  # type: ignore[return-value]


# ----------------------------------------------------------------------------- geometry


@dataclass(frozen=True)
class SceneTensors:
    centre: torch.Tensor  # [K, 3] object centres (base + half height)
    half: torch.Tensor  # [K, 3] half sizes
    cos: torch.Tensor  # [K] yaw
    sin: torch.Tensor
    radius: torch.Tensor  # [K] bounding-sphere radius
    albedo: torch.Tensor  # [K, 3] in 0..1
    shapes: tuple[int, ...]  # SHAPE_IDS per object (Python ints: the per-object loop branches on them)

    @property
    def count(self) -> int:
        return len(self.shapes)


def scene_tensors(scene: Scene, device: torch.device | str = "cpu") -> SceneTensors:
    objs = scene.objects
    f32 = dict(dtype=torch.float32, device=device)
    centre = torch.tensor([[o.position[0], o.position[1] + o.size[1] / 2.0, o.position[2]] for o in objs],
                          **f32).reshape(-1, 3)  # type: ignore[arg-type]
    half = torch.tensor([[s / 2.0 for s in o.size] for o in objs], **f32).reshape(-1, 3)  # type: ignore[arg-type]
    yaw = torch.tensor([math.radians(o.yaw) for o in objs], **f32)  # type: ignore[arg-type]
    albedo = torch.tensor([[c / 255.0 for c in o.color] for o in objs], **f32).reshape(-1, 3)  # type: ignore[arg-type]
    return SceneTensors(centre, half, torch.cos(yaw), torch.sin(yaw), half.norm(dim=-1) * 1.001, albedo,
                        tuple(SHAPE_IDS[o.shape] for o in objs))


def _safe(d: torch.Tensor) -> torch.Tensor:
    """Direction components away from zero, sign kept, so slab divisions stay finite."""
    return torch.where(d.abs() < 1e-9, torch.full_like(d, 1e-9) * torch.where(d < 0, -1.0, 1.0), d)


def _roots(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Both roots of a t^2 + b t + c, smaller first (+inf where there are none; never NaN)."""
    disc = b * b - 4.0 * a * c
    ok = (disc >= 0) & (a.abs() > 1e-12)
    sq = torch.sqrt(disc.clamp_min(0.0))
    a2 = torch.where(ok, 2.0 * a, torch.ones_like(a))
    t1, t2 = (-b - sq) / a2, (-b + sq) / a2
    inf = torch.full_like(a, math.inf)
    return torch.where(ok, torch.minimum(t1, t2), inf), torch.where(ok, torch.maximum(t1, t2), inf)


def _in_front(t: torch.Tensor, ok: torch.Tensor) -> torch.Tensor:
    return torch.where(ok & (t > EPS), t, torch.full_like(t, math.inf))


# Unit primitives in their own frame: o, d [M, 3] -> (t [M], outward normal [M, 3]).

def _box(o: torch.Tensor, d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    ds = _safe(d)
    t1, t2 = (-1.0 - o) / ds, (1.0 - o) / ds
    t_in, axis = torch.minimum(t1, t2).max(-1)
    t_out = torch.maximum(t1, t2).min(-1).values
    normal = -torch.sign(d) * torch.nn.functional.one_hot(axis, 3).to(d.dtype)
    return _in_front(t_in, t_out >= t_in), normal


def _sphere(o: torch.Tensor, d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    t, _ = _roots((d * d).sum(-1), 2.0 * (o * d).sum(-1), (o * o).sum(-1) - 1.0)
    t = _in_front(t, torch.ones_like(t, dtype=torch.bool))
    return t, o + t.clamp(max=FAR_M)[:, None] * d


def _caps(o: torch.Tensor, d: torch.Tensor, levels: tuple[float, ...]) -> list[torch.Tensor]:
    out = []
    for level in levels:  # discs of radius 1 at y = level
        t = (level - o[:, 1]) / _safe(d[:, 1])
        x, z = o[:, 0] + t * d[:, 0], o[:, 2] + t * d[:, 2]
        out.append(_in_front(t, x * x + z * z <= 1.0))
    return out


def _side(o: torch.Tensor, d: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """The nearer root whose point lies within |y| <= 1."""
    def ok(t: torch.Tensor) -> torch.Tensor:
        return _in_front(t, (o[:, 1] + t.clamp(max=FAR_M) * d[:, 1]).abs() <= 1.0)
    return torch.minimum(ok(lo), ok(hi))


def _cylinder(o: torch.Tensor, d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    ox, oz, dx, dz = o[:, 0], o[:, 2], d[:, 0], d[:, 2]
    side = _side(o, d, *_roots(dx * dx + dz * dz, 2.0 * (ox * dx + oz * dz), ox * ox + oz * oz - 1.0))
    top, bottom = _caps(o, d, (1.0, -1.0))
    t = torch.minimum(side, torch.minimum(top, bottom))
    p = o + t.clamp(max=FAR_M)[:, None] * d
    cap_normal = torch.zeros_like(p)
    cap_normal[:, 1] = torch.where(t == top, 1.0, -1.0)
    return t, torch.where((t == side)[:, None], p * p.new_tensor([1.0, 0.0, 1.0]), cap_normal)


def _cone(o: torch.Tensor, d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Apex at y = 1, radius 1 at y = -1: x^2 + z^2 = k (1 - y)^2 with k = 1/4."""
    k = 0.25
    ox, oy, oz, dx, dy, dz = o[:, 0], o[:, 1], o[:, 2], d[:, 0], d[:, 1], d[:, 2]
    side = _side(o, d, *_roots(dx * dx + dz * dz - k * dy * dy,
                               2.0 * (ox * dx + oz * dz) + 2.0 * k * (1.0 - oy) * dy,
                               ox * ox + oz * oz - k * (1.0 - oy) ** 2))
    (base,) = _caps(o, d, (-1.0,))
    t = torch.minimum(side, base)
    p = o + t.clamp(max=FAR_M)[:, None] * d
    slope = torch.stack([p[:, 0], k * (1.0 - p[:, 1]), p[:, 2]], -1)
    return t, torch.where((t == side)[:, None], slope, p.new_tensor([0.0, -1.0, 0.0]).expand_as(p))


PRIMITIVES = (_box, _sphere, _cylinder, _cone)  # indexed by SHAPE_IDS


def _trace_objects(st: SceneTensors, origin: torch.Tensor, direction: torch.Tensor, *, normals: bool = True
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Nearest object hit per ray: t [R] (+inf for none), object index [R] (-1), world normal [R, 3].

    A bounding-sphere test picks, per object, the few rays that can hit it, and
    only those run the exact test: objects cover a small part of most frames.
    The test is written with two [R, 3] x [3, K] products so that no [R, K, 3]
    temporary is made: memory traffic, not arithmetic, is what costs on a CPU.
    """
    n = origin.shape[0]
    t_best = torch.full((n,), math.inf, device=origin.device)
    k_best = torch.full((n,), -1, dtype=torch.long, device=origin.device)
    n_best = torch.zeros_like(origin) if normals else None
    if not st.count:
        return t_best, k_best, n_best
    # |o + t d - c|^2 = r^2 with |d| = 1:  b = (o - c).d,  c0 = |o - c|^2 - r^2
    b = (origin * direction).sum(-1, keepdim=True) - direction @ st.centre.T  # [R, K]
    c0 = (origin * origin).sum(-1, keepdim=True) - 2.0 * origin @ st.centre.T + (
        (st.centre * st.centre).sum(-1) - st.radius ** 2)
    disc = b * b - c0
    candidates = (disc >= 0) & ((disc > b * b) | (b < 0))  # the sphere is (partly) ahead of the ray
    for k, shape in enumerate(st.shapes):
        idx = candidates[:, k].nonzero()[:, 0]
        if idx.numel() == 0:
            continue
        c, s, half = st.cos[k], st.sin[k], st.half[k]
        rel, dirs = origin[idx] - st.centre[k], direction[idx]
        # Into the object's frame: undo the yaw (rotation about +Y), then the size.
        o = torch.stack([c * rel[:, 0] - s * rel[:, 2], rel[:, 1], s * rel[:, 0] + c * rel[:, 2]], -1) / half
        d = torch.stack([c * dirs[:, 0] - s * dirs[:, 2], dirs[:, 1], s * dirs[:, 0] + c * dirs[:, 2]], -1) / half
        t, n_local = PRIMITIVES[shape](o, d)
        better = t < t_best[idx]
        hit = idx[better]
        t_best[hit] = t[better]
        k_best[hit] = k
        if n_best is not None:
            # Normals go back by the inverse transpose: divide by the size again, then redo the yaw.
            nl = n_local[better] / half
            n_best[hit] = torch.nn.functional.normalize(
                torch.stack([c * nl[:, 0] + s * nl[:, 2], nl[:, 1], -s * nl[:, 0] + c * nl[:, 2]], -1), dim=-1)
    return t_best, k_best, n_best


@dataclass(frozen=True)
class Hits:
    """What each ray hit: distance, kind (-1 sky, 0 ground, k + 1 object k), normal and albedo."""

    t: torch.Tensor  # [R]
    kind: torch.Tensor  # [R] long
    albedo: torch.Tensor  # [R, 3]
    normal: torch.Tensor | None = None  # [R, 3], when asked for
    point: torch.Tensor | None = None  # [R, 3], when normals are


def cast(scene: Scene, st: SceneTensors, origin: torch.Tensor, direction: torch.Tensor, *,
         normals: bool = True) -> Hits:
    """Trace rays [R, 3] against the ground (y = 0) and every object."""
    dy = direction[:, 1]
    t = -origin[:, 1] / _safe(dy)  # the ground plane, where a ray descends to it from above
    t = torch.where((dy < -1e-6) & (origin[:, 1] > 0) & (t > EPS) & (t < FAR_M), t, math.inf)
    kind = torch.where(torch.isfinite(t), 0, -1)
    t_obj, k, n_obj = _trace_objects(st, origin, direction, normals=normals)
    nearer = t_obj < t
    t = torch.where(nearer, t_obj, t)
    kind = torch.where(nearer, k + 1, kind)
    # One palette lookup for every ray's flat colour: sky, ground, then the objects.
    palette = torch.cat([torch.tensor([sky_albedo(scene.time_of_day), GROUND_ALBEDO[scene.ground]],
                                      device=origin.device), st.albedo])
    albedo = palette[kind + 1]
    if not normals:
        return Hits(t=t, kind=kind, albedo=albedo)
    normal = torch.zeros_like(origin)
    normal[:, 1] = 1.0
    if n_obj is not None:
        normal = torch.where(nearer[:, None], n_obj, normal)
    point = origin + t.clamp(max=FAR_M)[:, None] * direction
    return Hits(t=t, kind=kind, albedo=albedo, normal=normal, point=point)


def camera_rays(c2w: torch.Tensor, focal_px: torch.Tensor, width: int, height: int
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Origins and unit directions [N*H*W, 3] through pixel centres, GL camera convention."""
    device = c2w.device
    v, u = torch.meshgrid(torch.arange(height, device=device, dtype=torch.float32) + 0.5,
                          torch.arange(width, device=device, dtype=torch.float32) + 0.5, indexing="ij")
    f = focal_px[:, None, None]
    cam = torch.stack([(u - width / 2.0) / f, -(v - height / 2.0) / f, -torch.ones_like(u / f)], -1)  # [N, H, W, 3]
    dirs = torch.einsum("nij,nhwj->nhwi", c2w[:, :3, :3], cam)
    dirs = torch.nn.functional.normalize(dirs, dim=-1).reshape(-1, 3)
    origins = c2w[:, None, :3, 3].expand(-1, height * width, 3).reshape(-1, 3)
    return origins, dirs


def poses_to_tensors(path: CameraPath, times: np.ndarray, width: int,
                     device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """c2w [N, 4, 4] and focal length in pixels [N] for a path at ``times`` (seconds)."""
    pose = path.at(times)
    c2w = torch.tensor(pose.c2w, dtype=torch.float32, device=device)
    focal = torch.tensor(pose.focal_mm / pose.sensor_width_mm * width, dtype=torch.float32, device=device)
    return c2w, focal


# ----------------------------------------------------------------------------- the two products


def depth_code(t: torch.Tensor) -> torch.Tensor:
    """Disparity-like depth in (0, 1]: near is bright, far fades, sky (inf) is 0."""
    return torch.where(torch.isfinite(t), 1.0 / (1.0 + t.clamp(max=FAR_M) / DEPTH_SCALE_M), torch.zeros_like(t))


def control(scene: Scene, c2w: torch.Tensor, focal_px: torch.Tensor, width: int, height: int,
            st: SceneTensors | None = None) -> torch.Tensor:
    """[N, 4, H, W] in [-1, 1]: depth code, then flat albedo RGB."""
    st = st or scene_tensors(scene, c2w.device)
    origin, direction = camera_rays(c2w, focal_px, width, height)
    hits = cast(scene, st, origin, direction, normals=False)
    maps = torch.cat([depth_code(hits.t)[:, None], hits.albedo], -1)  # [N*H*W, 4]
    return (maps.reshape(len(c2w), height, width, CONTROL_CHANNELS).permute(0, 3, 1, 2) * 2.0 - 1.0).contiguous()


def _hash2(ix: torch.Tensor, iz: torch.Tensor, salt: int) -> torch.Tensor:
    """A value in [0, 1) per integer lattice point: integer hashing, identical on every device."""
    h = (ix * 73856093) ^ (iz * 19349663) ^ (salt * 83492791)
    h = (h ^ (h >> 13)) * 1274126177
    h = h ^ (h >> 16)
    return (h & 0xFFFF).to(torch.float32) / 65536.0


def value_noise(x: torch.Tensor, z: torch.Tensor, salt: int) -> torch.Tensor:
    """Smooth value noise in [0, 1) over the ground plane."""
    fx, fz = torch.floor(x), torch.floor(z)
    ix, iz = fx.to(torch.int64), fz.to(torch.int64)
    ux, uz = x - fx, z - fz
    ux, uz = ux * ux * (3 - 2 * ux), uz * uz * (3 - 2 * uz)
    a, b = _hash2(ix, iz, salt), _hash2(ix + 1, iz, salt)
    c, d = _hash2(ix, iz + 1, salt), _hash2(ix + 1, iz + 1, salt)
    return (a + (b - a) * ux) * (1 - uz) + (c + (d - c) * ux) * uz


def _ground_texture(scene: Scene, hits: Hits) -> torch.Tensor:
    """Brightness multiplier for ground pixels; contrast fades with distance, a cheap stand-in for mip-mapping."""
    contrast, coarse, fine, tile = GROUND_TEXTURE[scene.ground]
    assert hits.point is not None
    x, z = hits.point[:, 0], hits.point[:, 2]
    n = 0.65 * value_noise(x * coarse, z * coarse, 1) + 0.35 * value_noise(x * fine, z * fine, 2)
    tex = 1.0 + contrast * (2.0 * n - 1.0) * torch.exp(-hits.t.clamp(max=FAR_M) / 25.0)
    if tile:
        gx, gz = torch.remainder(x, tile) / tile, torch.remainder(z, tile) / tile
        edge = torch.minimum(torch.minimum(gx, 1 - gx), torch.minimum(gz, 1 - gz))
        tex = tex * (1.0 - 0.25 * (edge < 0.02).float() * torch.exp(-hits.t.clamp(max=FAR_M) / 15.0))
    return tex


def appearance(scene: Scene, c2w: torch.Tensor, focal_px: torch.Tensor, width: int, height: int,
               st: SceneTensors | None = None) -> torch.Tensor:
    """[N, H, W, 3] in [0, 1]: the lit, textured blockout (the look a backlot pack learns)."""
    device = c2w.device
    st = st or scene_tensors(scene, device)
    light = LIGHTS[scene.time_of_day]
    sun_dir = torch.tensor(light.sun_dir, device=device)
    sun, ambient = torch.tensor(light.sun, device=device), torch.tensor(light.ambient, device=device)
    zenith, horizon = torch.tensor(light.zenith, device=device), torch.tensor(light.horizon, device=device)

    origin, direction = camera_rays(c2w, focal_px, width, height)
    hits = cast(scene, st, origin, direction)
    up = direction[:, 1].clamp(0.0, 1.0)[:, None]
    sky = horizon + (zenith - horizon) * torch.sqrt(up)
    sky = sky + sun * 0.45 * (direction @ sun_dir).clamp_min(0.0)[:, None] ** 48

    albedo = hits.albedo * torch.where(hits.kind == 0, _ground_texture(scene, hits), 1.0)[:, None]
    assert hits.normal is not None and hits.point is not None
    lambert = (hits.normal @ sun_dir).clamp_min(0.0)
    lit = torch.ones_like(lambert)
    if st.count:  # sun shadows: anything between the point and the sun
        t_shadow, _, _ = _trace_objects(st, hits.point + hits.normal * 1e-3, sun_dir.expand_as(hits.point),
                                        normals=False)
        lit = torch.where(torch.isfinite(t_shadow), 0.0, 1.0)
    hemisphere = 0.6 + 0.4 * hits.normal[:, 1:2]  # faces turned to the sky get more of it
    shaded = albedo * (ambient * hemisphere + sun * (lambert * lit)[:, None])
    haze = 1.0 - torch.exp(-hits.t.clamp(max=FAR_M) / 90.0)[:, None]
    shaded = shaded + (horizon - shaded) * haze
    rgb = torch.where((hits.kind < 0)[:, None], sky, shaded).clamp(0.0, 1.0)
    return rgb.reshape(len(c2w), height, width, 3)


# ----------------------------------------------------------------------------- control at latent resolution


_THREADS = threading.Lock()


@contextlib.contextmanager
def single_threaded() -> Iterator[None]:
    """Run torch's CPU ops on one thread for a while.

    A window's control is ~100 elementwise ops on ~150k rays: split over
    threads, each op costs more in hand-offs than it saves, and far more when
    ONNX Runtime's threads share the cores.  Measured on 2 busy cores, a 2 s
    take's control: 1380 ms on torch's 2 threads, 498 ms on one.
    """
    with _THREADS:
        before = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            yield
        finally:
            torch.set_num_threads(before)


def control_latent(scene: Scene, path: CameraPath, *, fps: float, frames: int, width: int, height: int,
                   temporal: int, spatial: int, causal_first_frame: bool, scale: int,
                   latents: range | list[int], device: torch.device | str = "cpu") -> torch.Tensor:
    """[len(latents), 4 * temporal * (spatial/scale)^2, h, w]: the control a denoiser window reads.

    Each latent frame's ``temporal`` video frames are rendered at 1/``scale`` of
    the pixel size, pixel-unshuffled to latent resolution, and folded into
    channels (frame-major, as the camera's Plücker maps).  Indices past the
    take's end hold its last frame, like the camera's, so the last window may overrun.
    """
    groups = latent_frame_groups(frames, temporal, causal_first_frame)
    if causal_first_frame:
        groups[0] = [0] * temporal
    chosen = [groups[min(i, len(groups) - 1)] for i in latents]
    flat = [f for g in chosen for f in g]
    w, h = width // scale, height // scale
    c2w, focal = poses_to_tensors(path, np.array(flat, dtype=np.float64) / fps, w, device)
    if torch.device(device).type == "cpu":
        with single_threaded():
            maps = control(scene, c2w, focal, w, h, scene_tensors(scene, device))  # [L*T, 4, h*f, w*f]
    else:
        maps = control(scene, c2w, focal, w, h, scene_tensors(scene, device))
    factor = spatial // scale
    folded = torch.nn.functional.pixel_unshuffle(maps, factor)  # [L*T, 4*f*f, h, w]
    return folded.reshape(len(chosen), temporal * folded.shape[1], *folded.shape[2:])


def control_channels(temporal: int, spatial: int, scale: int) -> int:
    return CONTROL_CHANNELS * temporal * (spatial // scale) ** 2

