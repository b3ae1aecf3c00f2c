"""Camera paths: keyframes, film-language presets, and the conditioning models read.

Axis convention (declared once, used everywhere):

- **World**: right-handed, metres, **+Y up**.
- **Camera space**: **+X right, +Y up, -Z forward** (the view direction), as in
  Nuke, Blender's cameras and OpenGL.  A keyframe's ``rotation`` is the
  camera-to-world rotation, a unit quaternion ``(x, y, z, w)``.
- **Model conditioning** (Plücker maps, relative poses) uses the OpenCV camera
  convention that CameraCtrl and Wan Fun Camera Control were trained with:
  +X right, +Y down, +Z forward.  :func:`to_opencv` converts.

A path is a list of keyframes.  Between them, position and focal length follow
a cubic spline, rotation follows slerp, and the whole path can ease in and out.
Presets are generators of keyframes, so a take's camera is stored as its small
spec (``{"preset": "orbit_left", "speed": 1.5}``) and expanded the same way by
the draft and the final: both read one path, each at its own resolution.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import itertools
import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy.interpolate import CubicSpline
from scipy.spatial.transform import Rotation, Slerp

from previz.errors import PrevizError
from previz.validation import is_finite_number

SENSOR_WIDTH_MM = 36.0  # full-frame stills / large-format cine width
DEFAULT_FOCAL_MM = 35.0
TARGET_DISTANCE = 4.0  # metres from camera to the subject that presets frame
EASES = ("linear", "in", "out", "in_out")
PRESET_RATE = 24  # keyframes per second when a preset is expanded
MIN_FOCAL_MM, MAX_FOCAL_MM = 4.0, 1200.0
ZOOM_RANGE_MM = (12.0, 400.0)  # a long cine zoom's range
MAX_SHAKE_DEGREES = 5.0  # handheld wobble; the page's shake field has the same maximum
# Bounds on everything a client can send, so no number reaches the spline or rotation maths
# as something that overflows there (1e308 m, a zero-length keyframe gap, speed 1e300).
MAX_SPEED = 50.0  # the page's slider goes to 8; aliases multiply it by at most 4
MAX_POSITION_M = 10_000.0  # per coordinate
MAX_PATH_SECONDS = 3600.0  # keyframe times lie in 0..this
MIN_KEYFRAME_GAP_S = 1e-3  # a keyframe per millisecond at most
MAX_KEYFRAMES = 100_000  # an hour of a .chan file at 24 fps fits
MAX_QUATERNION = 1e6  # per component: rotations are normalised, but the norm must not overflow
MIN_SENSOR_MM, MAX_SENSOR_MM = 1.0, 100.0
MAX_SHAKE_HZ = 20.0
MAX_SHAKE_SEED = 2**32 - 1


class CameraError(PrevizError, ValueError):
    code = "invalid_camera"

    def __init__(self, message: str, value: Any = None, *, field: str = "camera") -> None:
        super().__init__(message, field=field, value=value)


@contextlib.contextmanager
def _field(path: str) -> Iterator[None]:
    """Name ``path`` (``camera.keyframes[2]``) in the errors raised inside that do not name a finer one."""
    try:
        yield
    except CameraError as exc:
        if exc.field == "camera":
            exc.field = path
        raise


@dataclass(frozen=True)
class Keyframe:
    time: float  # seconds from the start of the take
    position: tuple[float, float, float]
    rotation: tuple[float, float, float, float]  # camera-to-world unit quaternion (x, y, z, w)
    focal_mm: float = DEFAULT_FOCAL_MM
    sensor_width_mm: float = SENSOR_WIDTH_MM

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _finite(values: Sequence[float], what: str, field: str = "camera") -> None:
    if not all(is_finite_number(v) for v in values):
        raise CameraError(f"camera {what} must be finite numbers, got {list(values)!r}", value=list(values),
                          field=field)


def _within(value: float, lo: float, hi: float, what: str, field: str = "camera") -> None:
    if not lo <= value <= hi:
        raise CameraError(f"{what} = {value:g}: between {lo:g} and {hi:g}", value=value, field=field)


def keyframe(data: dict[str, Any], where: str = "camera") -> Keyframe:
    """A keyframe from its JSON form, checked; errors name ``where`` (``camera.keyframes[2]``) and the field."""
    with _field(where):
        return _keyframe(data, where)


def _keyframe(data: dict[str, Any], where: str) -> Keyframe:
    if not isinstance(data, dict):
        raise CameraError(f"a keyframe is an object, got {data!r}", value=data)
    unknown = sorted(set(data) - {f.name for f in dataclasses.fields(Keyframe)})
    if unknown:
        raise CameraError(f"unknown keyframe field {unknown[0]!r}", value=unknown[0])
    try:
        kf = Keyframe(
            time=data["time"],
            position=tuple(data["position"]),  # type: ignore[arg-type]
            rotation=tuple(data.get("rotation", (0.0, 0.0, 0.0, 1.0))),  # type: ignore[arg-type]
            focal_mm=data.get("focal_mm", DEFAULT_FOCAL_MM),
            sensor_width_mm=data.get("sensor_width_mm", SENSOR_WIDTH_MM),
        )
    except (KeyError, TypeError) as exc:
        raise CameraError(f"malformed keyframe {str(data)[:200]} ({exc})", value=data) from None
    _finite([kf.time], "keyframe time", f"{where}.time")
    _within(kf.time, 0.0, MAX_PATH_SECONDS, "keyframe time", f"{where}.time")
    if len(kf.position) != 3:
        raise CameraError(f"position needs x, y, z, got {list(kf.position)!r}", value=list(kf.position),
                          field=f"{where}.position")
    _finite(kf.position, "position", f"{where}.position")
    for v in kf.position:
        _within(v, -MAX_POSITION_M, MAX_POSITION_M, "position (m)", f"{where}.position")
    if len(kf.rotation) != 4:
        raise CameraError(f"rotation is a quaternion (x, y, z, w), got {list(kf.rotation)!r}", value=list(kf.rotation),
                          field=f"{where}.rotation")
    _finite(kf.rotation, "rotation", f"{where}.rotation")
    for v in kf.rotation:
        _within(v, -MAX_QUATERNION, MAX_QUATERNION, "rotation component", f"{where}.rotation")
    if np.linalg.norm(kf.rotation) < 1e-6:
        raise CameraError("rotation quaternion is zero", value=list(kf.rotation), field=f"{where}.rotation")
    _finite([kf.focal_mm], "focal length", f"{where}.focal_mm")
    _finite([kf.sensor_width_mm], "sensor width", f"{where}.sensor_width_mm")
    _within(kf.focal_mm, MIN_FOCAL_MM, MAX_FOCAL_MM, "focal_mm", f"{where}.focal_mm")
    _within(kf.sensor_width_mm, MIN_SENSOR_MM, MAX_SENSOR_MM, "sensor_width_mm", f"{where}.sensor_width_mm")
    return kf


def smoothstep_ease(u: np.ndarray, ease: str) -> np.ndarray:
    """Remap normalised time in [0, 1]: ease in starts slow, ease out lands slow."""
    u = np.clip(u, 0.0, 1.0)
    if ease == "linear":
        return u
    if ease == "in":
        return u * u
    if ease == "out":
        return 1.0 - (1.0 - u) ** 2
    if ease == "in_out":
        return u * u * (3.0 - 2.0 * u)
    raise CameraError(f"unknown ease {ease!r}: one of {', '.join(EASES)}", value=ease)


@dataclass(frozen=True)
class Pose:
    """Cameras at a set of times: camera-to-world matrices and lens."""

    c2w: np.ndarray  # [N, 4, 4], this module's (GL) camera convention
    focal_mm: np.ndarray  # [N]
    sensor_width_mm: np.ndarray  # [N]

    def intrinsics(self, width: int, height: int) -> np.ndarray:
        """[N, 3, 3] pixel intrinsics (square pixels, centred principal point)."""
        fx = self.focal_mm / self.sensor_width_mm * width
        k = np.zeros((len(fx), 3, 3))
        k[:, 0, 0] = k[:, 1, 1] = fx
        k[:, 0, 2], k[:, 1, 2], k[:, 2, 2] = width / 2.0, height / 2.0, 1.0
        return k


class CameraPath:
    """Keyframes and how to move between them."""

    def __init__(self, keyframes: Sequence[Keyframe], ease: str = "linear") -> None:
        if not keyframes:
            raise CameraError("a camera path needs at least one keyframe")
        times = [k.time for k in keyframes]
        for a, b in zip(times, times[1:], strict=False):
            if not b > a:
                raise CameraError(f"keyframe times must increase: {a:g} is followed by {b:g}", value=times)

        smoothstep_ease(np.zeros(1), ease)  # validates the name
        self.keyframes = tuple(keyframes)
        self.ease = ease
        t = np.array(times, dtype=np.float64)
        quats = np.array([k.rotation for k in keyframes], dtype=np.float64)
        quats /= np.linalg.norm(quats, axis=1, keepdims=True)
        self._rot = Rotation.from_quat(quats)
        if len(keyframes) == 1:
            self._slerp = None
            self._pos = None
        else:
            self._slerp = Slerp(t, self._rot)
            pos = np.array([k.position for k in keyframes], dtype=np.float64)
            lens = np.array([[k.focal_mm, k.sensor_width_mm] for k in keyframes], dtype=np.float64)
            # Natural cubic splines: C2-smooth through every keyframe; with two
            # keyframes they reduce to straight lines.  One spline for position
            # and lens keeps ratios the data hold (a dolly zoom's focal/distance).
            self._pos = CubicSpline(t, pos, bc_type="natural")
            self._lens = CubicSpline(t, lens, bc_type="natural")

    @property
    def duration(self) -> float:
        return self.keyframes[-1].time

    def at(self, times: Sequence[float] | np.ndarray) -> Pose:
        """Poses at arbitrary times (held at the ends outside the keyframes)."""
        t = np.asarray(times, dtype=np.float64)
        start, end = self.keyframes[0].time, self.keyframes[-1].time
        if self._slerp is None or self._pos is None:
            n = len(t)
            rot = Rotation.from_quat(np.repeat(self._rot.as_quat()[None], n, axis=0).reshape(n, 4))
            pos = np.repeat(np.array(self.keyframes[0].position)[None], n, axis=0)
            lens = np.repeat([[self.keyframes[0].focal_mm, self.keyframes[0].sensor_width_mm]], n, axis=0)
        else:
            u = smoothstep_ease((t - start) / (end - start), self.ease)
            tt = start + u * (end - start)
            rot, pos, lens = self._slerp(tt), self._pos(tt), self._lens(tt)
        c2w = np.tile(np.eye(4), (len(t), 1, 1))
        c2w[:, :3, :3] = rot.as_matrix()
        c2w[:, :3, 3] = pos
        return Pose(c2w=c2w, focal_mm=lens[:, 0], sensor_width_mm=lens[:, 1])

    def frames(self, fps: float, count: int) -> Pose:
        """Per-frame poses of a take at ``fps``."""
        return self.at(np.arange(count) / float(fps))

    def to_dict(self) -> dict[str, Any]:
        return {"keyframes": [k.to_dict() for k in self.keyframes], "ease": self.ease}


# ----------------------------------------------------------------------------- presets

# name -> (kind, sign).  Rates are per second at speed 1.0; `speed` scales them.
PRESETS: dict[str, tuple[str, float]] = {
    "static": ("static", 0.0),
    "pan_left": ("pan", +1.0), "pan_right": ("pan", -1.0),
    "tilt_up": ("tilt", +1.0), "tilt_down": ("tilt", -1.0),
    "dolly_in": ("dolly", +1.0), "dolly_out": ("dolly", -1.0),
    "truck_left": ("truck", -1.0), "truck_right": ("truck", +1.0),
    "pedestal_up": ("pedestal", +1.0), "pedestal_down": ("pedestal", -1.0),
    "orbit_left": ("orbit", -1.0), "orbit_right": ("orbit", +1.0),
    "crane_up": ("crane", +1.0), "crane_down": ("crane", -1.0),
    "zoom_in": ("zoom", +1.0), "zoom_out": ("zoom", -1.0),
    "dolly_zoom_in": ("dolly_zoom", +1.0), "dolly_zoom_out": ("dolly_zoom", -1.0),
    "arc_left": ("arc", -1.0), "arc_right": ("arc", +1.0),
}
# The fast variants filmmakers name separately are the same moves, faster.
ALIASES: dict[str, tuple[str, float]] = {
    "crash_zoom_in": ("zoom_in", 8.0), "crash_zoom_out": ("zoom_out", 8.0),
    "super_dolly_in": ("dolly_in", 4.0), "super_dolly_out": ("dolly_out", 4.0),
    "whip_pan_left": ("pan_left", 8.0), "whip_pan_right": ("pan_right", 8.0),
}
RATES = {
    "pan": math.radians(15.0),  # rad/s
    "tilt": math.radians(10.0),
    "dolly": 0.5,  # m/s
    "truck": 0.5,
    "pedestal": 0.3,
    "orbit": math.radians(20.0),
    "crane": 0.4,
    "zoom": math.log(1.25),  # focal length x1.25 per second
    "dolly_zoom": 0.4,
    "arc": math.radians(12.0),
}
ARC_DRIFT = 0.15  # m/s toward the subject while arcing
START_POSITION = (0.0, 1.6, 0.0)  # eye height


WORLD_UP = (0.0, 1.0, 0.0)


def look_at(position: np.ndarray, target: np.ndarray) -> Rotation:
    """Camera-to-world rotation that points -Z at ``target``, +Y as close to world up as it goes."""
    back = position - target
    back = back / np.linalg.norm(back)
    right = np.cross(np.array(WORLD_UP), back)
    right /= np.linalg.norm(right)
    true_up = np.cross(back, right)
    return Rotation.from_matrix(np.stack([right, true_up, back], axis=1))


def preset_path(name: str, seconds: float, speed: float = 1.0, ease: str = "in_out",
                focal_mm: float = DEFAULT_FOCAL_MM) -> CameraPath:
    """A preset move as keyframes: the camera starts at eye height looking down -Z at a subject 4 m away."""
    if name in ALIASES:
        name, factor = ALIASES[name]
        speed *= factor
    if name not in PRESETS:
        known = ", ".join(sorted(PRESETS) + sorted(ALIASES))
        raise CameraError(f"unknown camera preset {name!r}: one of {known}", value=name)
    _finite([seconds, speed], "preset duration / speed")
    if seconds <= 0:
        raise CameraError(f"a camera move needs a positive duration, got {seconds}", value=seconds)
    if speed < 0:
        raise CameraError(f"speed = {speed}: must be >= 0 (choose the opposite preset to reverse)", value=speed)
    _within(speed, 0.0, MAX_SPEED, "speed")
    _within(seconds, 0.0, MAX_PATH_SECONDS, "duration (s)")
    kind, sign = PRESETS[name]
    n = max(2, int(math.ceil(seconds * PRESET_RATE)) + 1)
    times = np.linspace(0.0, seconds, n)
    # Easing is baked into the keyframes (progress along the move), so the path
    # itself interpolates linearly in time and round-trips through .chan exactly.
    elapsed = smoothstep_ease(times / seconds, ease) * seconds
    amount = sign * speed * RATES.get(kind, 0.0) * elapsed

    p0 = np.array(START_POSITION)
    target = p0 + np.array([0.0, 0.0, -TARGET_DISTANCE])
    positions = np.repeat(p0[None], n, axis=0)
    rotations = Rotation.identity(n)
    focal = np.full(n, focal_mm)
    if kind == "pan":
        rotations = Rotation.from_rotvec(np.outer(amount, [0.0, 1.0, 0.0]))  # yaw about world up
    elif kind == "tilt":
        rotations = Rotation.from_rotvec(np.outer(amount, [1.0, 0.0, 0.0]))  # pitch about camera right
    elif kind == "dolly":
        positions = p0 + np.outer(amount, [0.0, 0.0, -1.0])  # along the view direction
    elif kind == "truck":
        positions = p0 + np.outer(amount, [1.0, 0.0, 0.0])
    elif kind == "pedestal":
        positions = p0 + np.outer(amount, [0.0, 1.0, 0.0])
    elif kind in ("orbit", "arc"):
        radius = TARGET_DISTANCE - (ARC_DRIFT * speed * elapsed if kind == "arc" else 0.0)
        if np.any(radius <= 0.1):
            raise CameraError(f"arc at speed {speed} for {seconds:g} s would run into the subject", value=speed)
        # Positive amount = orbit right: the camera moves toward +x around the subject.
        positions = target + np.stack(
            [radius * np.sin(amount), np.zeros(n), radius * np.cos(amount)], axis=1
        )
        rotations = Rotation.concatenate([look_at(p, target) for p in positions])
    elif kind == "crane":
        positions = p0 + np.outer(amount, [0.0, 1.0, 0.0])
        rotations = Rotation.concatenate([look_at(p, target) for p in positions])  # keeps the subject framed
    elif kind == "zoom":
        # A zoom lens stops at the ends of its range: a crash zoom gets there and
        # holds.  tanh eases into the stop, so the path has no kink to overshoot.
        limit = math.log((ZOOM_RANGE_MM[1] if sign > 0 else ZOOM_RANGE_MM[0]) / focal_mm)
        focal = focal_mm * np.exp(limit * np.tanh(amount / limit)) if abs(limit) > 1e-9 else focal
    elif kind == "dolly_zoom":
        # Vertigo: dolly one way, zoom the other, so focal / distance (the
        # subject's size on screen) stays constant while perspective changes.
        distance = TARGET_DISTANCE - amount
        if np.any(distance <= 0.1):
            raise CameraError(f"dolly zoom at speed {speed} for {seconds:g} s reaches the subject", value=speed)
        positions = target + np.outer(distance, [0.0, 0.0, 1.0])
        focal = focal_mm * distance / TARGET_DISTANCE
    if np.any(focal < MIN_FOCAL_MM) or np.any(focal > MAX_FOCAL_MM):
        raise CameraError(
            f"{name} at speed {speed} for {seconds:g} s needs focal lengths outside "
            f"{MIN_FOCAL_MM:g}-{MAX_FOCAL_MM:g} mm", value=speed)
    quats = rotations.as_quat()
    return CameraPath(
        [Keyframe(float(t), tuple(p), tuple(q), float(f))  # type: ignore[arg-type]
         for t, p, q, f in zip(times, positions, quats, focal, strict=True)],
    )


def with_shake(path: CameraPath, amplitude: float, seed: int = 0, frequency: float = 1.5) -> CameraPath:
    """Handheld shake: smooth, seeded wobble of rotation (``amplitude`` degrees) and position.

    A sum of a few sines with seeded frequencies and phases: deterministic for
    a seed, smooth (no frame-to-frame jitter a real operator would not make).
    """
    _finite([amplitude, frequency], "shake amplitude / frequency")
    if not 0 <= amplitude <= MAX_SHAKE_DEGREES:
        raise CameraError(f"shake amplitude = {amplitude:g}: between 0 and {MAX_SHAKE_DEGREES:g} degrees",
                          value=amplitude, field="camera.shake.amplitude")
    _within(frequency, 0.0, MAX_SHAKE_HZ, "shake frequency (Hz)", "camera.shake.frequency")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SHAKE_SEED:
        raise CameraError(f"shake seed = {seed!r}: an integer from 0 to {MAX_SHAKE_SEED}", value=seed,
                          field="camera.shake.seed")
    rng = np.random.default_rng(seed)
    n = max(2, int(math.ceil(path.duration * PRESET_RATE)) + 1)
    times = np.linspace(0.0, path.duration, n) if path.duration > 0 else np.zeros(1)
    base = path.at(times)
    freqs = frequency * rng.uniform(0.5, 1.5, size=(6, 3))
    phases = rng.uniform(0, 2 * np.pi, size=(6, 3))
    wobble = np.stack([np.sin(2 * np.pi * freqs[i][None] * times[:, None] + phases[i][None]).mean(axis=1)
                       for i in range(6)], axis=1)  # [n, 6] in [-1, 1]
    angles = np.radians(amplitude) * wobble[:, :3]
    offsets = 0.01 * amplitude * wobble[:, 3:]  # 1 cm per degree of shake
    rot = Rotation.from_matrix(base.c2w[:, :3, :3]) * Rotation.from_rotvec(angles)  # in camera space
    pos = base.c2w[:, :3, 3] + offsets
    return CameraPath([Keyframe(float(t), tuple(p), tuple(q), float(f), float(s))  # type: ignore[arg-type]
                       for t, p, q, f, s in zip(times, pos, rot.as_quat(), base.focal_mm, base.sensor_width_mm,
                                                strict=True)])


# ----------------------------------------------------------------------------- the recipe's form


def parse_spec(text: str) -> dict[str, Any]:
    """CLI shorthand ``PRESET[:speed]`` to a camera spec."""
    name, _, speed = text.partition(":")
    spec: dict[str, Any] = {"preset": name.strip()}
    if speed:
        try:
            spec["speed"] = float(speed)
        except ValueError:
            raise CameraError(f"camera speed {speed!r} is not a number (use PRESET:SPEED, e.g. orbit_left:1.5)",
                              value=text) from None
    return spec


SPEC_KEYS = {"preset", "speed", "ease", "focal_mm", "keyframes", "shake"}


def path_from_spec(spec: dict[str, Any] | None, seconds: float) -> CameraPath:
    """The recipe's camera (preset or keyframes, optional shake) as a path."""
    if spec is None:
        spec = {"preset": "static"}
    if not isinstance(spec, dict):
        raise CameraError(f"camera must be an object, got {spec!r}", value=spec)
    unknown = sorted(set(spec) - SPEC_KEYS)
    if unknown:
        raise CameraError(f"unknown camera field {unknown[0]!r}", value=unknown[0], field=f"camera.{unknown[0]}")
    if ("preset" in spec) == ("keyframes" in spec):
        raise CameraError("camera needs exactly one of 'preset' or 'keyframes'", value=spec)
    ease = spec.get("ease", "in_out" if "preset" in spec else "linear")
    if not isinstance(ease, str) or ease not in EASES:
        raise CameraError(f"unknown ease {ease!r}: one of {', '.join(EASES)}", value=ease, field="camera.ease")
    if "preset" in spec:
        if not isinstance(spec["preset"], str):
            raise CameraError(f"camera preset must be a name, got {spec['preset']!r}", value=spec["preset"],
                              field="camera.preset")
        speed, focal = spec.get("speed", 1.0), spec.get("focal_mm", DEFAULT_FOCAL_MM)
        _finite([speed], "speed", "camera.speed")
        _finite([focal], "focal_mm", "camera.focal_mm")
        _within(focal, MIN_FOCAL_MM, MAX_FOCAL_MM, "focal_mm", "camera.focal_mm")
        if speed < 0:
            raise CameraError(f"speed = {speed}: must be >= 0 (choose the opposite preset to reverse)", value=speed,
                              field="camera.speed")
        _within(speed, 0.0, MAX_SPEED, "speed", "camera.speed")
        with _field("camera.preset"):
            path = preset_path(spec["preset"], seconds, float(speed), ease, float(focal))
    else:
        frames = spec["keyframes"]
        if not isinstance(frames, list):
            raise CameraError("keyframes must be a list", value=frames, field="camera.keyframes")
        if len(frames) > MAX_KEYFRAMES:
            raise CameraError(f"{len(frames)} keyframes; at most {MAX_KEYFRAMES}", value=len(frames),
                              field="camera.keyframes")
        keyframes = [keyframe(k, f"camera.keyframes[{i}]") for i, k in enumerate(frames)]
        for i, (a, b) in enumerate(itertools.pairwise(k.time for k in keyframes)):
            if 0 < b - a < MIN_KEYFRAME_GAP_S:  # closer than this, the spline's slopes overflow
                raise CameraError(f"keyframes {a:g} s and {b:g} s are closer than {MIN_KEYFRAME_GAP_S:g} s",
                                  value=[a, b], field=f"camera.keyframes[{i + 1}].time")
        with _field("camera.keyframes"):
            path = CameraPath(keyframes, ease)
    shake = spec.get("shake")
    if shake is not None:
        if not isinstance(shake, dict) or set(shake) - {"amplitude", "seed", "frequency"}:
            raise CameraError("shake is {amplitude, seed, frequency}", value=shake, field="camera.shake")
        amplitude, frequency = shake.get("amplitude", 0.5), shake.get("frequency", 1.5)
        # Checked before float(): "x" and [1] are refused here, each naming its field.
        _finite([amplitude], "shake amplitude", "camera.shake.amplitude")
        _finite([frequency], "shake frequency", "camera.shake.frequency")
        with _field("camera.shake"):
            path = with_shake(path, float(amplitude), shake.get("seed", 0), float(frequency))
    return path


def camera_path(spec: dict[str, Any] | None, seconds: float) -> CameraPath:
    """:func:`path_from_spec`, remembered: a take's start validates its recipe and then
    conditions on the same camera, so the path (up to tens of ms with shake) is built once."""
    try:
        key = json.dumps(spec, sort_keys=True)
    except (TypeError, ValueError):
        return path_from_spec(spec, seconds)  # not JSON: let the checks name the problem
    return _camera_path(key, float(seconds))


@functools.lru_cache(maxsize=32)
def _camera_path(key: str, seconds: float) -> CameraPath:
    return path_from_spec(json.loads(key), seconds)


def load_camera_file(path: Path, *, aspect: float = 16 / 9) -> dict[str, Any]:
    """A camera file (.json recipe form, or .chan) as a recipe camera spec."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise CameraError(f"cannot read camera file {path}: {exc.strerror}", value=str(path)) from None
    if path.suffix.lower() == ".json":
        try:
            spec = json.loads(text)
        except json.JSONDecodeError as exc:
            raise CameraError(f"{path}: not valid JSON ({exc})", value=str(path)) from None
        path_from_spec(spec, 1.0)  # validate now, with the file name in hand
        return spec  # type: ignore[no-any-return]
    if path.suffix.lower() == ".chan":
        return read_chan(text, aspect=aspect, source=str(path)).to_dict()
    raise CameraError(f"{path}: camera files are .json or .chan", value=str(path))


# ----------------------------------------------------------------------------- .chan interchange

CHAN_FPS_DEFAULT = 24.0


def vfov_deg(focal_mm: float, sensor_width_mm: float, aspect: float) -> float:
    sensor_height = sensor_width_mm / aspect
    return math.degrees(2.0 * math.atan(sensor_height / (2.0 * focal_mm)))


def focal_from_vfov(vfov: float, sensor_width_mm: float, aspect: float) -> float:
    sensor_height = sensor_width_mm / aspect
    return sensor_height / (2.0 * math.tan(math.radians(vfov) / 2.0))


def read_chan(text: str, *, fps: float = CHAN_FPS_DEFAULT, aspect: float = 16 / 9,
              sensor_width_mm: float = SENSOR_WIDTH_MM, source: str = ".chan") -> CameraPath:
    """Nuke/Blender ``.chan``: ``frame tx ty tz rx ry rz [vfov]`` per line.

    Nuke's convention, which Blender's exporter also writes: world +Y up,
    camera looking down -Z, Euler angles in degrees applied in ZXY order
    (Nuke's default for cameras).  Frames are numbered at ``fps``; the first
    line's frame is time 0.
    """
    keyframes: list[Keyframe] = []
    first_frame: float | None = None
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        fields = line.split()
        try:
            values = [float(v) for v in fields]
        except ValueError:
            raise CameraError(f"{source} line {number}: {raw.strip()!r} is not numbers", value=raw) from None
        if len(values) not in (7, 8) or not all(math.isfinite(v) for v in values):
            raise CameraError(
                f"{source} line {number}: expected 'frame tx ty tz rx ry rz [vfov]', got {raw.strip()!r}",
                value=raw)
        frame, tx, ty, tz, rx, ry, rz = values[:7]
        first_frame = frame if first_frame is None else first_frame
        quat = Rotation.from_euler("zxy", [rz, rx, ry], degrees=True).as_quat()
        focal = DEFAULT_FOCAL_MM
        if len(values) == 8:
            if not 0 < values[7] < 180:
                raise CameraError(f"{source} line {number}: vertical FOV {values[7]:g} is not in (0, 180)",
                                  value=raw)
            focal = focal_from_vfov(values[7], sensor_width_mm, aspect)
        keyframes.append(Keyframe((frame - first_frame) / fps, (tx, ty, tz), tuple(quat),  # type: ignore[arg-type]
                                  focal, sensor_width_mm))
    if not keyframes:
        raise CameraError(f"{source}: no keyframes", value=source)
    return CameraPath(keyframes)


def write_chan(path: CameraPath, *, fps: float = CHAN_FPS_DEFAULT, aspect: float = 16 / 9,
               start_frame: int = 1) -> str:
    """The inverse of :func:`read_chan`, one line per frame at ``fps`` (vertical FOV included)."""
    count = int(round(path.duration * fps)) + 1
    pose = path.frames(fps, count)
    lines = []
    for i in range(count):
        rz, rx, ry = Rotation.from_matrix(pose.c2w[i, :3, :3]).as_euler("zxy", degrees=True)
        tx, ty, tz = pose.c2w[i, :3, 3]
        fov = vfov_deg(float(pose.focal_mm[i]), float(pose.sensor_width_mm[i]), aspect)
        lines.append(f"{start_frame + i} {tx:.9f} {ty:.9f} {tz:.9f} {rx:.9f} {ry:.9f} {rz:.9f} {fov:.9f}")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- conditioning

GL_TO_CV = np.diag([1.0, -1.0, -1.0])  # flip y and z: (right, up, back) -> (right, down, forward)


def to_opencv(c2w: np.ndarray) -> np.ndarray:
    """Camera-to-world matrices in the OpenCV camera convention (same world)."""
    out = c2w.copy()
    out[..., :3, :3] = c2w[..., :3, :3] @ GL_TO_CV
    return out


def relative_to_first(c2w: np.ndarray) -> np.ndarray:
    """Every pose relative to the first camera (which becomes the identity)."""
    return np.linalg.inv(c2w[0])[None] @ c2w


def latent_frame_groups(frames: int, temporal: int, causal_first_frame: bool) -> list[list[int]]:
    """Which video frames each latent frame covers.

    Causal (Wan VAE): [0], [1..4], [5..8], ...  Frame-group: [0..3], [4..7], ...
    The last group is padded by repeating the final frame.
    """
    if frames < 1:
        raise CameraError(f"a take needs at least one frame, got {frames}")
    groups: list[list[int]] = []
    start = 0
    if causal_first_frame:
        groups.append([0])
        start = 1
    while start < frames:
        groups.append([min(start + j, frames - 1) for j in range(temporal)])
        start += temporal
    return groups


def latent_poses(c2w: np.ndarray, temporal: int, causal_first_frame: bool) -> np.ndarray:
    """One pose per latent frame: the last video frame of its group (frames 0, 4, 8, ... when causal)."""
    groups = latent_frame_groups(len(c2w), temporal, causal_first_frame)
    return c2w[[g[-1] for g in groups]]


def relative_pose_12d(c2w: np.ndarray, temporal: int, causal_first_frame: bool) -> np.ndarray:
    """[latent frames, 12]: each latent frame's [R | t] relative to the first camera, OpenCV convention."""
    rel = relative_to_first(to_opencv(latent_poses(c2w, temporal, causal_first_frame)))
    return rel[:, :3, :4].reshape(len(rel), 12)


def plucker(c2w: np.ndarray, k: np.ndarray, width: int, height: int) -> np.ndarray:
    """[N, 6, height, width] Plücker rays (moment o x d, then unit direction d) per pixel centre.

    ``c2w`` is in the OpenCV convention; ``k`` are intrinsics at this resolution.
    """
    v, u = np.meshgrid(np.arange(height) + 0.5, np.arange(width) + 0.5, indexing="ij")
    pix = np.stack([u.ravel(), v.ravel(), np.ones(height * width)])  # [3, HW]
    # Both halves are linear in the pixel until d is normalised: n = R K^-1 pix and o x n = [o]x n. So one
    # [6, 3] matrix per pose maps the pixels straight to [N, 6, HW] rays, channels first, and the norm
    # divides both halves after. The first window's maps are on a take's critical path: at 832x480 they
    # went from 11-14 ms (per-pixel cross products, then a transpose) to about 2 (tools/bench_window_inputs.py).
    to_world = c2w[:, :3, :3] @ np.linalg.inv(k)  # [N, 3, 3]
    rays = np.concatenate([cross_matrix(c2w[:, :3, 3]) @ to_world, to_world], axis=1) @ pix  # [N, 6, HW]
    rays /= np.linalg.norm(rays[:, 3:], axis=1, keepdims=True)
    return rays.astype(np.float32).reshape(len(c2w), 6, height, width)


def cross_matrix(o: np.ndarray) -> np.ndarray:
    """[N, 3] vectors -> [N, 3, 3] matrices with ``cross_matrix(o) @ x == np.cross(o, x)``."""
    m = np.zeros((len(o), 3, 3))
    m[:, 0, 1], m[:, 0, 2] = -o[:, 2], o[:, 1]
    m[:, 1, 0], m[:, 1, 2] = o[:, 2], -o[:, 0]
    m[:, 2, 0], m[:, 2, 1] = -o[:, 1], o[:, 0]
    return m


def plucker_latent(path: CameraPath, *, fps: float, frames: int, width: int, height: int,
                   temporal: int, spatial: int, causal_first_frame: bool,
                   latents: Sequence[int] | None = None) -> np.ndarray:
    """[latent frames, 6 * temporal, h, w]: per-frame Plücker maps at latent resolution,
    ``temporal`` consecutive frames folded into channels (Wan Fun Camera Control's 24).

    Poses are relative to the first frame, so the conditioning describes the
    move, not where the world's origin happens to be.  ``latents`` picks which
    latent frames to build (default all); indices past the take's end hold its
    last pose, for a final window that overruns the take.
    """
    groups = latent_frame_groups(frames, temporal, causal_first_frame)
    if causal_first_frame:  # the lone first frame fills all its slots (as Wan Fun repeats it)
        groups[0] = [0] * temporal
    chosen = [groups[min(i, len(groups) - 1)] for i in (range(len(groups)) if latents is None else latents)]
    needed = sorted({0, *(f for g in chosen for f in g)})
    pose = path.at(np.array(needed, dtype=np.float64) / fps)
    lat_w, lat_h = width // spatial, height // spatial
    c2w = relative_to_first(to_opencv(pose.c2w))  # frame 0 is needed[0]
    rays = plucker(c2w, pose.intrinsics(lat_w, lat_h), lat_w, lat_h)  # intrinsics scale with the map
    row = {frame: i for i, frame in enumerate(needed)}
    picked = rays[np.array([[row[f] for f in g] for g in chosen])]  # one gather: [latents, temporal, 6, h, w]
    return picked.reshape(len(chosen), 6 * temporal, lat_h, lat_w)
