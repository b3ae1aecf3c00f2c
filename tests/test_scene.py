"""Scene blockouts: the prompt parser, validation, and the renderer."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from previz import blockout
from previz.backlot import random_shot, render_shot
from previz.camera import camera_path
from previz.packs import LatentLayout
from previz.recipe import Recipe, resolve
from previz.scene import COLORS, MAX_OBJECTS, Scene, SceneError, parse_scene, scene_from_prompt

# prompt -> (time of day, ground, [(shape, colour name), ...] in the scene's order)
PHRASINGS = [
    ("a red cube on a sandy plain", "day", "sand", [("box", "red")]),
    ("A RED CUBE ON A SANDY PLAIN", "day", "sand", [("box", "red")]),
    ("two blue spheres in a meadow at sunset", "dusk", "grass", [("sphere", "blue")] * 2),
    ("3 yellow cones on the road at night", "night", "asphalt", [("cone", "yellow")] * 3),
    ("a tall white pillar behind a green box on snow at dawn", "dawn", "snow", [("pillar", "white"), ("box", "green")]),
    ("a purple cylinder next to an orange cone in a plaza", "day", "concrete",
     [("cylinder", "purple"), ("cone", "orange")]),
    ("a lighthouse in a gale", "day", "grass", [("pillar", "grey")]),
    ("a wooden crate on a muddy farm", "day", "dirt", [("box", "brown")]),
    ("a gray wall at golden hour", "dusk", "grass", [("wall", "grey")]),
    ("an empty desert at midnight", "night", "sand", []),
    ("a dolly past a neon diner", "day", "grass", []),
]


@pytest.mark.parametrize("prompt,tod,ground,objects", PHRASINGS)
def test_prompt_parser_reads_the_backlot_vocabulary(prompt, tod, ground, objects):
    scene = scene_from_prompt(prompt)
    assert (scene.time_of_day, scene.ground) == (tod, ground)
    assert [(o.shape, o.color) for o in scene.objects] == [(s, COLORS[c]) for s, c in objects]
    assert scene_from_prompt(prompt) == scene  # deterministic
    parse_scene(scene.to_dict())  # what it derives always validates


def test_prompt_parser_places_relations():
    left = scene_from_prompt("a red box left of a blue sphere")
    box, sphere = left.objects
    assert box.position[0] < sphere.position[0] and box.position[2] == sphere.position[2]
    right = scene_from_prompt("a red box to the right of a blue sphere").objects
    assert right[0].position[0] > right[1].position[0]
    behind = scene_from_prompt("a red box behind a blue sphere").objects
    assert behind[0].position[2] < behind[1].position[2]  # farther from the camera (more negative z)
    front = scene_from_prompt("a red box in front of a blue sphere").objects
    assert front[0].position[2] > front[1].position[2]
    on = scene_from_prompt("a yellow ball on a wooden table").objects
    assert on[0].position[1] == pytest.approx(on[1].size[1]) and on[0].position[0] == on[1].position[0]
    row = scene_from_prompt("three green cones").objects
    xs = [o.position[0] for o in row]
    assert xs == sorted(xs) and abs(sum(xs)) < 1e-6  # a row centred in front of the camera
    assert all(o.position[2] < 0 for o in row)


def test_prompt_parser_sizes_and_counts():
    big, small = scene_from_prompt("a big red box and a small red box").objects
    assert big.size[0] > small.size[0]
    tall = scene_from_prompt("a tall pillar").objects[0]
    assert tall.size[1] > scene_from_prompt("a pillar").objects[0].size[1]
    assert len(scene_from_prompt("40 red boxes").objects) == MAX_OBJECTS


def test_scene_round_trips_through_its_json_form():
    scene = scene_from_prompt("two red boxes left of a tall blue pillar on sand at dusk")
    assert parse_scene(scene.to_dict()) == scene
    odd = parse_scene({"objects": [{"shape": "box", "color": "#123456", "position": [0, 0, -4]}]})
    assert odd.objects[0].color == (0x12, 0x34, 0x56) and odd.to_dict()["objects"][0]["color"] == "#123456"
    assert parse_scene({"objects": [{"shape": "box", "color": [1, 2, 3], "position": [0, 0, -4]}]}).objects[0].color \
        == (1, 2, 3)


BAD_SCENES = [
    ({"objects": [{"shape": "blob", "position": [0, 0, -4]}]}, "scene.objects[0].shape"),
    ({"objects": [{"shape": "box", "color": "mauvish", "position": [0, 0, -4]}]}, "scene.objects[0].color"),
    ({"objects": [{"shape": "box", "color": [300, 0, 0], "position": [0, 0, -4]}]}, "scene.objects[0].color"),
    ({"objects": [{"shape": "box", "position": [0, float("nan"), -4]}]}, "scene.objects[0].position[1]"),
    ({"objects": [{"shape": "box", "position": [0, 0, -4], "size": [1e9, 1, 1]}]}, "scene.objects[0].size[0]"),
    ({"objects": [{"shape": "box", "position": [0, 0, -4], "size": [1, -1, 1]}]}, "scene.objects[0].size[1]"),
    ({"objects": [{"shape": "box", "position": [0, 0, -4], "size": [1, 1]}]}, "scene.objects[0].size"),
    ({"objects": [{"shape": "box", "position": [0, -1, -4]}]}, "scene.objects[0].position[1]"),
    ({"objects": [{"shape": "box", "position": [0, 0, -4], "yaw": float("inf")}]}, "scene.objects[0].yaw"),
    ({"objects": [{"shape": "box"}]}, "scene.objects[0].position"),
    ({"objects": [{"shape": "box", "position": [0, 0, -4], "spin": 3}]}, "scene.objects[0].spin"),
    ({"objects": [{"shape": "box", "position": [0, 0, -4]}] * (MAX_OBJECTS + 1)}, "scene.objects"),
    ({"objects": "a box"}, "scene.objects"),
    ({"time_of_day": "teatime"}, "scene.time_of_day"),
    ({"ground": "lava"}, "scene.ground"),
    ({"weather": "rain"}, "scene.weather"),
    ([1, 2], "scene"),
    ({"objects": [{"shape": "box", "position": [0, 0, True]}]}, "scene.objects[0].position[2]"),
]


@pytest.mark.parametrize("data,field", BAD_SCENES)
def test_bad_scenes_are_typed_errors_naming_the_field(data, field):
    with pytest.raises(SceneError) as err:
        parse_scene(data)
    assert err.value.field == field and err.value.code == "invalid_scene"
    assert field in str(err.value) and "\n" not in str(err.value)


def test_recipe_resolve_derives_or_checks_the_scene(test_pack):
    derived = resolve(Recipe(prompt="a red cube on a sandy plain", pack=test_pack.id), test_pack)
    assert derived.scene == scene_from_prompt("a red cube on a sandy plain").to_dict()
    given = {"time_of_day": "night", "ground": "snow", "objects": []}
    assert resolve(Recipe(prompt="a red cube", scene=given, pack=test_pack.id), test_pack).scene == given
    with pytest.raises(SceneError):
        resolve(Recipe(prompt="x", scene={"ground": "lava"}, pack=test_pack.id), test_pack)


# ----------------------------------------------------------------------------- the renderer


def _poses(preset: str = "static", times=(0.0,), width: int = 64):
    return blockout.poses_to_tensors(camera_path({"preset": preset}, 2.0), np.array(times), width)


def test_renderer_hits_what_is_in_front_at_the_right_depth_and_colour():
    box = Scene(ground="snow", time_of_day="day", objects=parse_scene(
        {"objects": [{"shape": "box", "color": "red", "position": [0, 0.6, -5], "size": [2, 2, 2]}]}).objects)
    c2w, focal = _poses(width=65)
    ctl = blockout.control(box, c2w, focal, 65, 33)  # [1, 4, H, W] in [-1, 1]
    centre = (ctl[0, :, 16, 32] + 1) / 2
    # The centre pixel's ray leaves eye height (1.6 m) straight down -z: the box's front face is 4 m away.
    assert float(centre[0]) == pytest.approx(1 / (1 + 4.0 / blockout.DEPTH_SCALE_M), abs=1e-5)
    assert centre[1:].tolist() == pytest.approx([c / 255 for c in COLORS["red"]], abs=1e-5)
    top = (ctl[0, :, 0, 32] + 1) / 2  # straight ahead and up: sky
    assert float(top[0]) == 0.0
    assert top[1:].tolist() == pytest.approx(blockout.sky_albedo("day"), abs=1e-5)
    bottom = (ctl[0, :, 32, 2] + 1) / 2  # down and to the left: the snow
    assert bottom[1:].tolist() == pytest.approx(blockout.GROUND_ALBEDO["snow"], abs=1e-5)


@pytest.mark.parametrize("shape", ["box", "sphere", "cylinder", "cone", "pillar", "wall"])
def test_every_shape_is_hit_where_it_stands_and_missed_beside_it(shape):
    scene = parse_scene({"objects": [{"shape": shape, "color": "blue", "position": [0, 0, -4],
                                      "size": [1.2, 1.6, 1.2], "yaw": 30}]})
    origin = torch.tensor([[0.0, 0.8, 0.0], [3.0, 0.8, 0.0]])
    direction = torch.tensor([[0.0, 0.0, -1.0], [0.0, 0.0, -1.0]])
    hits = blockout.cast(scene, blockout.scene_tensors(scene), origin, direction)
    assert hits.kind.tolist() == [1, -1]  # the object; the second ray runs parallel past it, to the horizon
    assert 3.3 < float(hits.t[0]) < 4.0  # the front of a 1.2 m object centred 4 m away
    assert float(torch.linalg.norm(hits.normal[0])) == pytest.approx(1.0, abs=1e-5)
    assert float(hits.normal[0, 2]) > 0  # facing the camera


def test_a_rotated_box_turns_with_its_yaw():
    flat = {"shape": "wall", "color": "white", "position": [0, 0, -5], "size": [4, 2, 0.2]}
    face_on = parse_scene({"objects": [flat]})
    edge_on = parse_scene({"objects": [{**flat, "yaw": 90}]})
    ray = torch.tensor([[1.5, 1.0, 0.0]]), torch.tensor([[0.0, 0.0, -1.0]])
    assert int(blockout.cast(face_on, blockout.scene_tensors(face_on), *ray).kind[0]) == 1
    assert int(blockout.cast(edge_on, blockout.scene_tensors(edge_on), *ray).kind[0]) == -1  # level: on to the sky


def test_renderer_is_deterministic_by_seed():
    layout = LatentLayout(space="s", channels=16, temporal=4, spatial=8)
    kwargs = dict(layout=layout, window=2, fps=30, width=64, height=32, control_scale=2)
    a = render_shot(random_shot(123, window=2, context=1, temporal=4, fps=30), **kwargs)
    b = render_shot(random_shot(123, window=2, context=1, temporal=4, fps=30), **kwargs)
    c = render_shot(random_shot(124, window=2, context=1, temporal=4, fps=30), **kwargs)
    for name in ("frames", "control", "camera"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert not torch.equal(a.frames, c.frames)
    assert a.frames.shape == (8, 32, 64, 3) and 0.0 <= float(a.frames.min()) and float(a.frames.max()) <= 1.0
    assert a.control.shape == (2, blockout.control_channels(4, 8, 2), 4, 8)


def test_control_windows_are_slices_of_the_whole_take():
    scene = scene_from_prompt("two red boxes left of a tall blue pillar on sand at dusk")
    path = camera_path({"preset": "orbit_left", "speed": 2.0}, 2.0)
    common = dict(fps=30, frames=60, width=64, height=32, temporal=4, spatial=8, causal_first_frame=False, scale=2)
    whole = blockout.control_latent(scene, path, latents=range(0, 15), **common)
    window = blockout.control_latent(scene, path, latents=range(6, 10), **common)
    assert torch.allclose(whole[6:10], window, atol=1e-6)
    overrun = blockout.control_latent(scene, path, latents=range(14, 17), **common)  # past the end: the last frame
    assert torch.allclose(overrun[1], overrun[2]) and torch.allclose(overrun[0], whole[14])


def test_appearance_follows_time_of_day_and_ground():
    base = scene_from_prompt("a red box on sand")
    c2w, focal = _poses()
    means = {}
    for tod in ("day", "night"):
        img = blockout.appearance(dataclasses.replace(base, time_of_day=tod), c2w, focal, 64, 36)
        means[tod] = float(img.mean())
    assert means["day"] > 2 * means["night"]
    assert not math.isnan(means["day"])
