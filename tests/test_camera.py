"""Camera paths: presets move the way their names say, conversions are exact, bad paths are clear errors."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from previz.camera import (
    ALIASES,
    PRESETS,
    START_POSITION,
    TARGET_DISTANCE,
    CameraError,
    CameraPath,
    Keyframe,
    latent_frame_groups,
    latent_poses,
    load_camera_file,
    parse_spec,
    path_from_spec,
    plucker,
    plucker_latent,
    preset_path,
    read_chan,
    relative_pose_12d,
    to_opencv,
    with_shake,
    write_chan,
)

TARGET = np.array(START_POSITION) + np.array([0.0, 0.0, -TARGET_DISTANCE])
FPS = 30


def frames(path: CameraPath, seconds: float = 2.0):
    return path.frames(FPS, int(seconds * FPS) + 1)


def view_dirs(pose) -> np.ndarray:
    return pose.c2w[:, :3, :3] @ np.array([0.0, 0.0, -1.0])


def in_first_camera(pose, vectors: np.ndarray) -> np.ndarray:
    """World vectors expressed in the first frame's camera axes (x right, y up, -z forward)."""
    return vectors @ pose.c2w[0, :3, :3]


@pytest.mark.parametrize("name", sorted(PRESETS) + sorted(ALIASES))
def test_every_preset_keeps_rotations_orthonormal(name):
    pose = frames(path_from_spec({"preset": name, "shake": {"amplitude": 1.0, "seed": 3}}, 2.0), 2.0)
    r = pose.c2w[:, :3, :3]
    np.testing.assert_allclose(r @ r.transpose(0, 2, 1), np.broadcast_to(np.eye(3), r.shape), atol=1e-9)
    np.testing.assert_allclose(np.linalg.det(r), 1.0, atol=1e-9)


def test_interpolated_keyframes_stay_orthonormal_between_keys():
    keys = [Keyframe(t, (t, 0.0, -t), tuple(Rotation.from_euler("xyz", [20 * t, 70 * t, -30 * t], degrees=True)
                                             .as_quat())) for t in (0.0, 0.7, 1.5, 3.0)]
    pose = CameraPath(keys, ease="in_out").at(np.linspace(-1, 4, 301))
    r = pose.c2w[:, :3, :3]
    np.testing.assert_allclose(r @ r.transpose(0, 2, 1), np.broadcast_to(np.eye(3), r.shape), atol=1e-9)


def test_pan_left_turns_the_view_toward_negative_x():
    pose = frames(preset_path("pan_left", 2.0))
    x = in_first_camera(pose, view_dirs(pose))[:, 0]
    assert x[-1] < -0.4 and np.all(np.diff(x) <= 1e-12)
    np.testing.assert_allclose(pose.c2w[:, :3, 3], np.broadcast_to(START_POSITION, (len(x), 3)))  # rotation only
    right = in_first_camera(frames(preset_path("pan_right", 2.0)), view_dirs(frames(preset_path("pan_right", 2.0))))
    assert right[-1, 0] > 0.4


def test_tilt_up_raises_the_view():
    pose = frames(preset_path("tilt_up", 2.0))
    assert in_first_camera(pose, view_dirs(pose))[-1, 1] > 0.2


def test_dolly_in_moves_along_the_view_direction():
    pose = frames(preset_path("dolly_in", 2.0, speed=1.5))
    motion = pose.c2w[-1, :3, 3] - pose.c2w[0, :3, 3]
    forward = view_dirs(pose)[0]
    assert np.dot(motion, forward) == pytest.approx(np.linalg.norm(motion)) and np.linalg.norm(motion) > 1.0
    assert np.allclose(pose.c2w[:, :3, :3], pose.c2w[0, :3, :3])


@pytest.mark.parametrize("name, axis, sign", [("truck_left", 0, -1), ("truck_right", 0, 1),
                                             ("pedestal_up", 1, 1), ("pedestal_down", 1, -1)])
def test_truck_and_pedestal_translate_sideways_and_vertically(name, axis, sign):
    pose = frames(preset_path(name, 2.0))
    motion = in_first_camera(pose, pose.c2w[-1:, :3, 3] - pose.c2w[:1, :3, 3])[0]
    assert sign * motion[axis] > 0.5 and np.abs(np.delete(motion, axis)).max() < 1e-9


@pytest.mark.parametrize("name", ["orbit_left", "orbit_right", "crane_up"])
def test_orbit_and_crane_keep_the_subject_centred(name):
    pose = frames(preset_path(name, 3.0, speed=2.0), 3.0)
    to_subject = TARGET - pose.c2w[:, :3, 3]
    to_subject /= np.linalg.norm(to_subject, axis=1, keepdims=True)
    np.testing.assert_allclose(np.einsum("ni,ni->n", view_dirs(pose), to_subject), 1.0, atol=1e-6)


@pytest.mark.parametrize("name, sign", [("orbit_left", -1), ("orbit_right", 1)])
def test_orbit_keeps_the_distance_to_the_target(name, sign):
    pose = frames(preset_path(name, 4.0, speed=2.0), 4.0)
    distance = np.linalg.norm(pose.c2w[:, :3, 3] - TARGET, axis=1)
    np.testing.assert_allclose(distance, TARGET_DISTANCE, rtol=1e-6)
    x = in_first_camera(pose, pose.c2w[:, :3, 3] - pose.c2w[0, :3, 3])[:, 0]
    assert sign * x[-1] > 1.0


@pytest.mark.parametrize("name", ["zoom_in", "zoom_out", "crash_zoom_in"])
def test_zoom_changes_only_the_focal_length(name):
    pose = frames(path_from_spec({"preset": name}, 2.0))
    assert np.allclose(pose.c2w, pose.c2w[0])
    grows = pose.focal_mm[-1] > pose.focal_mm[0]
    assert grows == name.endswith("_in") and not np.isclose(pose.focal_mm[-1], pose.focal_mm[0])


def test_crash_zoom_is_a_faster_zoom_that_stops_at_the_lens_end():
    slow = frames(preset_path("zoom_in", 1.0), 1.0).focal_mm[-1]
    fast = frames(path_from_spec({"preset": "crash_zoom_in"}, 1.0), 1.0).focal_mm[-1]
    assert fast > slow * 2
    held = frames(path_from_spec({"preset": "crash_zoom_in"}, 4.0), 4.0).focal_mm
    assert held.max() <= 400.0 + 1e-6 and held[-1] == pytest.approx(400.0, rel=0.02)


def projected_size(pose, point_offset: float = 0.5) -> np.ndarray:
    """Pixel height of a 1 m-tall subject at the target, through each frame's lens (1920 px wide)."""
    k = pose.intrinsics(1920, 1080)
    sizes = []
    for c2w, kk in zip(pose.c2w, k, strict=True):
        w2c = np.linalg.inv(to_opencv(c2w[None])[0])
        pts = [w2c @ np.array([*(TARGET + [0.0, dy, 0.0]), 1.0]) for dy in (-point_offset, point_offset)]
        ys = [kk[1, 1] * p[1] / p[2] for p in pts]
        sizes.append(abs(ys[0] - ys[1]))
    return np.array(sizes)


@pytest.mark.parametrize("name", ["dolly_zoom_in", "dolly_zoom_out"])
def test_dolly_zoom_keeps_the_subject_size_while_the_camera_moves(name):
    pose = frames(preset_path(name, 3.0, speed=1.5), 3.0)
    size = projected_size(pose)
    assert np.abs(size / size[0] - 1).max() < 0.01
    moved = np.linalg.norm(pose.c2w[-1, :3, 3] - pose.c2w[0, :3, 3])
    assert moved > 1.0 and not np.isclose(pose.focal_mm[-1], pose.focal_mm[0])
    background = projected_size(pose, point_offset=0.5)  # noqa: F841  (same point: size is constant)
    assert (pose.focal_mm[-1] < pose.focal_mm[0]) == name.endswith("_in")  # dolly in, zoom out


def test_arc_is_a_partial_orbit_that_drifts_in():
    pose = frames(preset_path("arc_left", 3.0), 3.0)
    distance = np.linalg.norm(pose.c2w[:, :3, 3] - TARGET, axis=1)
    assert distance[-1] < distance[0] - 0.2
    assert in_first_camera(pose, pose.c2w[-1:, :3, 3] - pose.c2w[:1, :3, 3])[0, 0] < -0.3


def test_static_does_not_move():
    pose = frames(preset_path("static", 2.0))
    assert np.allclose(pose.c2w, pose.c2w[0]) and np.allclose(pose.focal_mm, pose.focal_mm[0])


def test_shake_is_seeded_small_and_smooth():
    base = frames(preset_path("static", 2.0))
    a = frames(with_shake(preset_path("static", 2.0), 0.5, seed=1))
    b = frames(with_shake(preset_path("static", 2.0), 0.5, seed=1))
    c = frames(with_shake(preset_path("static", 2.0), 0.5, seed=2))
    assert np.array_equal(a.c2w, b.c2w) and not np.allclose(a.c2w, c.c2w)
    angle = np.degrees(np.arccos(np.clip(np.einsum("ni,ni->n", view_dirs(a), view_dirs(base)), -1, 1)))
    assert 0 < angle.max() <= 0.5 * math.sqrt(3) + 1e-6
    assert np.degrees(np.arccos(np.clip(np.einsum("ni,ni->n", view_dirs(a)[1:], view_dirs(a)[:-1]), -1, 1))).max() < 0.2


def test_ease_in_out_starts_and_ends_slowly():
    pose = frames(preset_path("dolly_in", 2.0, ease="in_out"))
    step = np.linalg.norm(np.diff(pose.c2w[:, :3, 3], axis=0), axis=1)
    assert step[0] < step[len(step) // 2] / 5 and step[-1] < step[len(step) // 2] / 5
    linear = np.linalg.norm(np.diff(frames(preset_path("dolly_in", 2.0, ease="linear")).c2w[:, :3, 3], axis=0), axis=1)
    np.testing.assert_allclose(linear, linear[0], rtol=1e-6)


def test_intrinsics_follow_focal_length_and_sensor():
    pose = frames(preset_path("static", 1.0, focal_mm=50.0), 1.0)
    k = pose.intrinsics(1920, 1080)[0]
    assert k[0, 0] == pytest.approx(50.0 / 36.0 * 1920) and k[1, 1] == k[0, 0]
    assert (k[0, 2], k[1, 2]) == (960.0, 540.0)


# ----------------------------------------------------------------------------- conditioning


def test_plucker_rays_are_unit_with_perpendicular_moments():
    pose = frames(preset_path("orbit_left", 1.0), 1.0)
    rays = plucker(to_opencv(pose.c2w), pose.intrinsics(32, 18), 32, 18)
    assert rays.shape == (31, 6, 18, 32) and rays.dtype == np.float32
    moment, direction = rays[:, :3], rays[:, 3:]
    np.testing.assert_allclose(np.linalg.norm(direction, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.einsum("nchw,nchw->nhw", moment, direction), 0.0, atol=1e-5)


def test_plucker_rays_are_the_textbook_per_pixel_cross_product():
    # plucker() maps pixels with one matrix per pose; the definition is o x d with d = R K^-1 pixel, unit.
    pose = frames(preset_path("orbit_left", 1.0, speed=2.0), 1.0)
    c2w, k = to_opencv(pose.c2w), pose.intrinsics(24, 14)
    v, u = np.meshgrid(np.arange(14) + 0.5, np.arange(24) + 0.5, indexing="ij")
    pix = np.stack([u, v, np.ones_like(u)], axis=-1)  # [h, w, 3]
    d = np.einsum("nij,njk,hwk->nhwi", c2w[:, :3, :3], np.linalg.inv(k), pix)
    d /= np.linalg.norm(d, axis=-1, keepdims=True)
    o = np.broadcast_to(c2w[:, None, None, :3, 3], d.shape)
    expected = np.concatenate([np.cross(o, d), d], axis=-1).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(plucker(c2w, k, 24, 14), expected, rtol=0, atol=1e-6)


def test_plucker_latent_folds_four_frames_into_24_channels():
    path = preset_path("dolly_in", 4.0)
    maps = plucker_latent(path, fps=30, frames=120, width=256, height=144, temporal=4, spatial=8,
                          causal_first_frame=False)
    assert maps.shape == (30, 24, 18, 32)
    # The first camera is the reference: its rays start at the origin (zero moment).
    np.testing.assert_allclose(maps[0, :3], 0.0, atol=1e-6)
    # Later frames moved forward, so their moments are not zero.
    assert np.abs(maps[-1, 18:21]).max() > 1e-3


def test_causal_layout_repeats_the_first_frame_like_wan_fun():
    maps = plucker_latent(preset_path("pan_left", 81 / 30), fps=30, frames=81, width=64, height=32, temporal=4,
                          spatial=8, causal_first_frame=True)
    assert maps.shape == (21, 24, 4, 8)
    for slot in range(1, 4):
        np.testing.assert_array_equal(maps[0, 6 * slot : 6 * slot + 6], maps[0, :6])


def test_a_window_of_latents_equals_the_same_slice_of_the_whole_take():
    path = preset_path("orbit_right", 2.0, speed=2.0)
    kw = dict(fps=30, frames=60, width=64, height=32, temporal=4, spatial=8, causal_first_frame=False)
    whole = plucker_latent(path, **kw)
    np.testing.assert_allclose(plucker_latent(path, latents=range(6, 10), **kw), whole[6:10], atol=1e-6)
    # Past the end, the take's last pose holds.
    past = plucker_latent(path, latents=range(14, 17), **kw)
    np.testing.assert_allclose(past[1], whole[-1], atol=1e-6)


def test_draft_and_final_get_consistent_conditioning_at_their_own_resolutions():
    path = preset_path("crane_up", 2.0)
    draft = plucker_latent(path, fps=30, frames=60, width=256, height=144, temporal=4, spatial=8,
                           causal_first_frame=False)
    final = plucker_latent(path, fps=30, frames=60, width=1280, height=720, temporal=4, spatial=8,
                           causal_first_frame=False)
    # The same normalised image point sees the same ray: draft pixel (i, j) covers final pixels 5i..5i+4.
    d = draft.reshape(15, 4, 6, 18, 32)[:, :, 3:]
    f = final.reshape(15, 4, 6, 90, 160)[:, :, 3:]
    np.testing.assert_allclose(d[..., 9, 16], f[..., 47, 82], atol=2e-2)  # centres of matching cells
    first = relative_pose_12d(path.frames(30, 60).c2w, 4, False).reshape(-1, 3, 4)[0]
    np.testing.assert_allclose(first, np.eye(4)[:3], atol=1e-9)


def test_resampling_to_latent_frames_picks_the_right_poses():
    assert latent_frame_groups(9, 4, causal_first_frame=True) == [[0], [1, 2, 3, 4], [5, 6, 7, 8]]
    assert latent_frame_groups(10, 4, causal_first_frame=False) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 9, 9]]
    c2w = np.stack([np.eye(4)] * 81)
    c2w[:, 0, 3] = np.arange(81)  # frame i sits at x = i
    assert list(latent_poses(c2w, 4, True)[:, 0, 3]) == list(range(0, 81, 4))  # 0, 4, 8, ... 80
    assert list(latent_poses(c2w[:80], 4, False)[:, 0, 3]) == list(range(3, 80, 4))
    pose12 = relative_pose_12d(c2w, 4, True)
    assert pose12.shape == (21, 12)
    assert list(pose12[:, 3]) == list(range(0, 81, 4))  # OpenCV x is still right


# ----------------------------------------------------------------------------- interchange


def test_chan_round_trip_preserves_values():
    path = with_shake(preset_path("orbit_left", 2.0, speed=1.5), 0.7, seed=4)
    text = write_chan(path, fps=24)
    again = read_chan(text, fps=24)
    text2 = write_chan(again, fps=24)
    a = np.array([[float(v) for v in line.split()] for line in text.splitlines()])
    b = np.array([[float(v) for v in line.split()] for line in text2.splitlines()])
    np.testing.assert_allclose(a, b, atol=1e-6)
    pa, pb = path.frames(24, 49), again.frames(24, 49)
    np.testing.assert_allclose(pa.c2w, pb.c2w, atol=1e-6)
    np.testing.assert_allclose(pa.focal_mm, pb.focal_mm, atol=1e-6)


def test_chan_without_fov_and_with_comments(tmp_path):
    f = tmp_path / "cam.chan"
    f.write_text("# from Nuke\n1 0 1.6 0 0 0 0\n\n25 1 1.6 0 0 90 0\n")
    spec = load_camera_file(f)
    path = path_from_spec(spec, 1.0)
    pose = path.at([1.0])
    assert pose.c2w[0, 0, 3] == pytest.approx(1.0)
    np.testing.assert_allclose(view_dirs(pose)[0], [-1.0, 0.0, 0.0], atol=1e-9)  # ry=90: looking down -x


def test_json_is_the_recipes_own_form(tmp_path):
    path = preset_path("arc_right", 1.0)
    f = tmp_path / "cam.json"
    f.write_text(json.dumps(path.to_dict()))
    again = path_from_spec(load_camera_file(f), 1.0)
    np.testing.assert_allclose(again.frames(30, 31).c2w, path.frames(30, 31).c2w, atol=1e-12)


@pytest.mark.parametrize(
    "spec, needle",
    [
        ({"keyframes": [{"time": 1, "position": [0, 0, 0]}, {"time": 0.5, "position": [1, 0, 0]}]},
         "must increase"),
        ({"keyframes": [{"time": 0, "position": [0, float("nan"), 0]}]}, "finite"),
        ({"keyframes": [{"time": 0, "position": [0, 0, 0], "focal_mm": 0}]}, "focal_mm = 0"),
        ({"keyframes": [{"time": 0, "position": [0, 0, 0], "focal_mm": -35}]}, "focal_mm = -35"),
        ({"keyframes": [{"time": 0, "position": [0, 0]}]}, "x, y, z"),
        ({"keyframes": [{"time": 0, "position": [0, 0, 0], "rotation": [0, 0, 0, 0]}]}, "zero"),
        ({"keyframes": []}, "at least one keyframe"),
        ({"preset": "barrel_roll"}, "unknown camera preset 'barrel_roll'"),
        ({"preset": "pan_left", "speed": -1}, "speed = -1"),
        ({"preset": "pan_left", "keyframes": []}, "exactly one"),
        ({"preset": "pan_left", "wobble": 1}, "unknown camera field 'wobble'"),
        ({"preset": "pan_left", "ease": "bounce"}, "unknown ease 'bounce'"),
        ({"preset": "dolly_zoom_in", "speed": 20}, "reaches the subject"),
        ("orbit", "must be an object"),
    ],
)
def test_invalid_paths_are_clear_errors(spec, needle):
    with pytest.raises(CameraError, match=needle) as err:
        path_from_spec(spec, 4.0)
    assert err.value.field == "camera" or err.value.field.startswith("camera.")


@pytest.mark.parametrize(
    "spec, field",
    [
        ({"preset": "orbit_left", "speed": 1e9}, "camera.speed"),
        ({"preset": "orbit_left", "focal_mm": float("nan")}, "camera.focal_mm"),
        ({"preset": "barrel_roll"}, "camera.preset"),
        ({"preset": "static", "ease": "bounce"}, "camera.ease"),
        ({"preset": "static", "zoom": 2}, "camera.zoom"),
        ({"keyframes": [{"time": 0, "position": [0, 0, 0]}, {"time": 1, "position": [0, 1e12, 0]}]},
         "camera.keyframes[1].position"),
        ({"keyframes": [{"time": 0, "position": [0, 0, 0], "focal_mm": 1e9}]}, "camera.keyframes[0].focal_mm"),
        ({"keyframes": [{"time": 0, "position": [0, 0, 0], "rotation": [0, 0, 0, 0]}]},
         "camera.keyframes[0].rotation"),
        ({"keyframes": [{"time": 0, "position": [0, 0, 0]}, {"time": 0.0005, "position": [0, 0, 0]}]},
         "camera.keyframes[1].time"),
        ({"keyframes": "x"}, "camera.keyframes"),
        ({"preset": "static", "shake": {"amplitude": 1e9}}, "camera.shake.amplitude"),
        ({"preset": "static", "shake": {"seed": -1}}, "camera.shake.seed"),
        ({"preset": "static", "shake": {"frequency": "fast"}}, "camera.shake.frequency"),
    ],
)
def test_camera_errors_name_the_field_they_refuse(spec, field):
    with pytest.raises(CameraError) as err:
        path_from_spec(spec, 4.0)
    assert err.value.field == field


@pytest.mark.parametrize(
    "text, needle",
    [
        ("1 0 0 0 0 0\n", "expected 'frame tx ty tz rx ry rz"),
        ("1 0 0 zero 0 0 0\n", "line 1"),
        ("1 0 0 0 0 0 0\n2 0 0 0 0 0 0 200\n", "line 2: vertical FOV 200"),
        ("1 0 0 0 0 0 0\n1 0 0 0 0 0 0\n", "must increase"),
        ("# nothing\n", "no keyframes"),
    ],
)
def test_malformed_chan_lines_are_clear_errors(text, needle):
    with pytest.raises(CameraError, match=needle):
        read_chan(text)


def test_cli_shorthand():
    assert parse_spec("orbit_left:1.5") == {"preset": "orbit_left", "speed": 1.5}
    assert parse_spec("static") == {"preset": "static"}
    with pytest.raises(CameraError, match="not a number"):
        parse_spec("orbit_left:fast")
