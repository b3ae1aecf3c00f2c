"""The backlot pack: its training script, the shipped pack, and scenes over the live server."""

from __future__ import annotations

import base64
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from test_server import open_client

from previz.packs import BUILTIN_PACKS, load_pack
from previz.recipe import DEFAULT_PACK, Recipe
from previz.scene import scene_from_prompt

ROOT = Path(__file__).parent.parent
pytestmark = pytest.mark.filterwarnings("ignore:connect\\(\\) must be used:DeprecationWarning")


def _train_module():
    spec = importlib.util.spec_from_file_location("train_backlot", ROOT / "tools" / "train_backlot.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["train_backlot"] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def train():
    return _train_module()


def test_a_few_training_steps_lower_the_loss(train, tmp_path):
    torch.manual_seed(0)
    cfg = train.tiny_config()
    cfg.refresh = 0  # a fixed pool: the loss must fall on what the model has seen
    trainer = train.Trainer(tmp_path / "run", cfg, torch.device("cpu"), seed=3, log=lambda _m: None)
    ae = trainer.train("ae", steps=40)
    assert np.mean(ae[-8:]) < 0.8 * np.mean(ae[:8])
    den = trainer.train("denoiser", steps=40)
    assert np.mean(den[-8:]) < 0.8 * np.mean(den[:8])
    assert trainer.state["ae"]["steps"] == 40 and trainer.state["denoiser"]["steps"] == 40
    assert trainer.state["denoiser"]["clips_seen"] == 40 * cfg.batch


def test_training_resumes_from_its_checkpoint_and_exports_a_loadable_pack(train, tmp_path):
    cfg = train.tiny_config()
    first = train.Trainer(tmp_path / "run", cfg, torch.device("cpu"), seed=1, log=lambda _m: None)
    first.train("ae", steps=3)
    first.train("denoiser", steps=2)
    weights = {k: v.clone() for k, v in first.denoiser.state_dict().items()}
    again = train.Trainer(tmp_path / "run", cfg, torch.device("cpu"), seed=1, log=lambda _m: None)
    assert again.state["denoiser"]["steps"] == 2 and again.state["scaling_factor"] == first.state["scaling_factor"]
    assert all(torch.equal(v, again.denoiser.state_dict()[k]) for k, v in weights.items())
    assert again.opt.state_dict()["state"], "Adam moments come back too"
    encoder = {k: v.clone() for k, v in again.ae.encoder.state_dict().items()}
    again.train("decoder", steps=2)  # the decoder alone: the latent space must not move
    assert all(torch.equal(v, again.ae.encoder.state_dict()[k]) for k, v in encoder.items())
    again.export(tmp_path / "pack")
    pack = load_pack(str(tmp_path / "pack"))  # the same loader as every pack, hashes checked
    assert pack.trained and pack.label == "trained" and pack.training["denoiser"]["steps"] == 2
    assert pack.conditioning.control.kind == "blockout"
    # A later session goes on from the pack alone (it is what git keeps): same weights, same counts.
    later = train.Trainer(tmp_path / "later", cfg, torch.device("cpu"), seed=2, log=lambda _m: None)
    later.start_from_pack(tmp_path / "pack")
    assert all(torch.equal(v, later.denoiser.state_dict()[k]) for k, v in again.ema.state_dict().items())
    assert later.state["denoiser"]["steps"] == 2 and later.state["next_seed"] >= again.state["next_seed"]
    assert later.state["scaling_factor"] == pytest.approx(again.state["scaling_factor"])
    later.train("denoiser", steps=1)


def test_a_block_causal_run_trains_under_the_mask_and_exports_a_pack_that_caches_its_context(
        train, tmp_path, monkeypatch):
    from previz.take import DraftModel

    cfg = train.tiny_config()
    cfg.context_attention = "block-causal"
    trainer = train.Trainer(tmp_path / "run", cfg, torch.device("cpu"), seed=4, log=lambda _m: None)
    trainer.train("ae", steps=2)
    masks = []
    real_mask = train.block_causal_mask
    monkeypatch.setattr(train, "block_causal_mask", lambda *args: masks.append(real_mask(*args)) or masks[-1])
    trainer.train("denoiser", steps=2)
    assert len(masks) == 2 and any(not m.all() for m in masks)  # each step masked, and some windows had context
    assert trainer.state["config"]["context_attention"] == "block-causal"
    trainer.export(tmp_path / "pack")
    pack = load_pack(str(tmp_path / "pack"))
    assert pack.conditioning.context.attention == "block-causal"
    model = DraftModel(pack, "torch", device="cpu")
    frames = list(model.generate(Recipe(prompt="two red boxes on sand", seconds=1.0)))
    assert len(frames) == 30 and model.context_pass is not None


def test_the_shipped_pack_is_the_default_trained_and_draws_the_scene():
    from previz.take import DraftModel

    assert DEFAULT_PACK == "previz-backlot"
    pack = load_pack(DEFAULT_PACK)  # found by name, in the package
    assert pack.root == BUILTIN_PACKS / "previz-backlot"
    assert pack.trained and pack.label == "trained"
    size = sum(p.stat().st_size for p in pack.root.rglob("*") if p.is_file())
    assert size < 60e6
    model = DraftModel(pack, "torch")
    frames = [f.image for f in model.generate(Recipe(prompt="a red box on snow at noon", seconds=0.5, seed=1,
                                                     pack=pack.id))]
    image = np.stack(frames).astype(np.float64)
    assert image.mean() > 100  # snow under a day sky: a bright picture, not the untrained pack's near-black
    night = np.stack([f.image for f in model.generate(Recipe(prompt="a red box on snow at night", seconds=0.5,
                                                             seed=1, pack=pack.id))]).astype(np.float64)
    assert night.mean() < 0.5 * image.mean()  # the scene's time of day shows


def test_scene_only_update_restarts_the_take_without_reencoding_text(backlot_server):
    client = open_client(backlot_server)
    ready = client.events[0]
    assert ready["capabilities"]["scene"]["control"] is True
    prompt = "a red box left of a blue sphere on sand at dusk"
    client.send(type="generate", id=1, recipe={"prompt": prompt, "seconds": 1.0})
    started = client.event("take_started")
    assert started["recipe"]["scene"] == scene_from_prompt(prompt).to_dict()  # what was understood, shown
    preview = started["control_preview"]
    assert preview["width"] * preview["height"] * 3 == len(base64.b64decode(preview["albedo"]))
    client.until(lambda e: e["type"] == "chunk_done")
    text = backlot_server.server.model.text
    calls = text.encode_calls
    scene = started["recipe"]["scene"]
    scene["objects"][0]["color"] = "green"
    scene["time_of_day"] = "night"
    client.send(type="update", id=2, recipe={"scene": scene})
    cancelled = client.event("take_cancelled")
    assert cancelled["reason"] == "update"
    restarted = client.event("take_started")
    assert restarted["recipe"]["scene"]["objects"][0]["color"] == "green"
    assert restarted["recipe"]["scene"]["time_of_day"] == "night"
    done = client.event("take_done")
    assert done["take_id"] == restarted["take_id"]
    assert text.encode_calls == calls  # the prompt did not change: its states came from the cache
    client.send(type="update", id=3, recipe={"scene": {"objects": [{"shape": "blob", "position": [0, 0, -4]}]}})
    error = client.event("error")
    assert error["code"] == "invalid_scene" and error["field"] == "scene.objects[0].shape"
    client.send(type="update", id=4, recipe={"seconds": 0.5})  # the connection still works
    assert client.event("take_started")["recipe"]["scene"]["time_of_day"] == "night"
