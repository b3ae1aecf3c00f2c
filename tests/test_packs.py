"""Packs: the loader reads save_pretrained directories and hub snapshots through one path."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import TEST_LATENT, make_test_pack
from safetensors.numpy import save_file

from previz.errors import PackError, UnknownPackError, UnsafeWeightsError
from previz.packs import (
    MANIFEST_NAME,
    LatentLayout,
    load_component,
    load_pack,
    manifest_dict,
    parse_manifest,
)


def test_save_pretrained_dir_loads_by_path_and_by_name(test_pack, tmp_path):
    pack = load_pack(str(test_pack.root))
    assert pack.id == "previz-test" and pack.kind == "draft"
    assert pack.label == "untrained" and pack.trained is False
    denoiser = load_component(pack, "denoiser")
    assert type(denoiser).__name__ == "WanTransformer3DModel"
    assert denoiser.config.num_layers == 2
    decoder = load_component(pack, "decoder")
    assert type(decoder).__name__ == "AutoencoderTiny"
    assert load_pack("previz-test").root == test_pack.root


def _hub_cache(tmp_path: Path, repo_id: str, source: Path) -> Path:
    """A hub cache as huggingface_hub lays it out after a download."""
    cache = tmp_path / "hub"
    repo_dir = cache / f"models--{repo_id.replace('/', '--')}"
    commit = "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(source, repo_dir / "snapshots" / commit)
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(commit)
    return cache


def test_hub_id_resolves_through_snapshot_download_offline(test_pack, tmp_path, monkeypatch):
    cache = _hub_cache(tmp_path, "someone/previz-test", test_pack.root)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(cache))
    pack = load_pack("someone/previz-test")
    assert pack.id == test_pack.id
    assert "snapshots" in str(pack.root)
    assert load_component(pack, "denoiser").config.num_layers == 2


def test_unknown_pack_names_the_value():
    with pytest.raises(UnknownPackError, match="no-such-pack"):
        load_pack("no-such-pack")
    with pytest.raises(UnknownPackError, match="empty"):
        load_pack("  ")


def test_unknown_hub_id_offline_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(UnknownPackError, match="nobody/nothing") as exc:
        load_pack("nobody/nothing")
    assert exc.value.message.endswith("HF_HUB_OFFLINE is set, so it was not downloaded")  # words, no class name
    assert "Error" not in exc.value.message


@pytest.fixture
def pack_copy(test_pack, tmp_path) -> Path:
    root = tmp_path / "copy"
    shutil.copytree(test_pack.root, root)
    return root


@pytest.mark.parametrize("name", ["pytorch_model.bin", "weights.pt", "model.ckpt", "x.pth"])
def test_pickle_weights_are_refused(pack_copy, name):
    (pack_copy / "transformer" / name).write_bytes(b"not really a pickle")
    with pytest.raises(UnsafeWeightsError, match=name):
        load_pack(str(pack_copy))


def test_component_without_safetensors_is_refused(pack_copy):
    (pack_copy / "decoder" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(PackError, match="no .safetensors"):
        load_pack(str(pack_copy))


def test_changed_weights_fail_the_hash_check(pack_copy):
    target = pack_copy / "decoder" / "diffusion_pytorch_model.safetensors"
    save_file({"x": np.zeros(3, np.float32)}, str(target))
    with pytest.raises(PackError, match="does not match its manifest"):
        load_pack(str(pack_copy))


def test_directory_without_manifest_is_not_a_pack(tmp_path):
    with pytest.raises(UnknownPackError, match=MANIFEST_NAME):
        load_pack(str(tmp_path))


def test_manifest_round_trip_and_class_allowlist(test_pack):
    data = manifest_dict(test_pack)
    assert parse_manifest(json.loads(json.dumps(data)), test_pack.root) == test_pack
    data["components"]["denoiser"]["class"] = "os.system"
    with pytest.raises(PackError, match="unsupported class"):
        parse_manifest(data, test_pack.root)


@pytest.mark.parametrize("key, value", [("subfolder", "../../etc"), ("subfolder", "/etc"),
                                        ("tokenizer_subfolder", "a/../../b"), ("package", "os")])
def test_manifest_cannot_point_outside_the_pack(test_pack, key, value):
    data = manifest_dict(test_pack)
    data["components"]["text_encoder"][key] = value
    with pytest.raises(PackError, match="outside the pack|names package"):
        parse_manifest(data, test_pack.root)


def test_final_and_vsr_packs_are_described_the_same_way(tmp_path):
    final = {
        "format": "previz-pack/1", "id": "wan22-a14b", "kind": "final", "trained": True,
        "latent": {"space": "wan2.1", "channels": 16, "temporal": 4, "spatial": 8, "causal_first_frame": True},
        "boundary_ratio": 0.875,
        "components": {
            name: {"class": cls, "subfolder": name, "sha256": {}}
            for name, cls in [("transformer", "WanTransformer3DModel"), ("transformer_2", "WanTransformer3DModel"),
                              ("vae", "AutoencoderKLWan"), ("text_encoder", "UMT5EncoderModel")]
        },
    }
    pack = parse_manifest(final, tmp_path)
    assert pack.boundary_ratio == 0.875 and pack.latent.latent_frames(81) == 21
    final["boundary_ratio"] = 1.5
    with pytest.raises(PackError, match="boundary_ratio"):
        parse_manifest(final, tmp_path)
    del final["components"]["transformer_2"]
    final["boundary_ratio"] = 0.9
    with pytest.raises(PackError, match="transformer_2"):
        parse_manifest(final, tmp_path)
    vsr = {"format": "previz-pack/1", "id": "x4", "kind": "vsr", "latent": final["latent"],
           "components": {"upscaler": {"class": "SRVGGNetCompact", "subfolder": "upscaler", "sha256": {}}}}
    pack = parse_manifest(vsr, tmp_path)  # scale and window left out: 1, as checked, not None
    assert (pack.scale, pack.temporal_window) == (1, 1)


@pytest.mark.parametrize(
    "layout, frames, latents",
    [
        (LatentLayout("wan2.1", 16, 4, 8, causal_first_frame=True), 81, 21),
        (LatentLayout("wan2.2-ti2v", 48, 4, 16, causal_first_frame=True), 121, 31),
        (TEST_LATENT, 120, 30),
        (TEST_LATENT, 121, 31),
    ],
)
def test_latent_layout_frame_math(layout, frames, latents):
    assert layout.latent_frames(frames) == latents
    assert layout.video_frames(latents) >= frames


def test_a_pack_with_another_latent_layout_drafts_without_code_changes(tmp_path, cache_dir):
    """48 channels, 16x spatial, 2 frames per latent: nothing downstream hard-codes Wan 2.1."""
    import dataclasses

    from conftest import TEST_DRAFT

    from previz.recipe import Recipe
    from previz.take import DraftModel

    layout = LatentLayout(space="other-v0", channels=48, temporal=2, spatial=16)
    draft = dataclasses.replace(TEST_DRAFT, width=64, height=32, size_multiple=32)
    make_test_pack(tmp_path / "other", pack_id="other", latent=layout, draft=draft,
                   transformer=dict(TEST_TRANSFORMER_SMALL))
    pack = load_pack(str(tmp_path / "other"))
    model = DraftModel(pack, "torch", cache_dir=cache_dir)
    frames = list(model.generate(Recipe(prompt="a tree", seconds=0.5, pack=str(pack.root))))
    assert len(frames) == 15
    assert frames[0].image.shape == (32, 64, 3)


TEST_TRANSFORMER_SMALL = dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=8, freq_dim=16,
                              ffn_dim=32, num_layers=1)


@pytest.mark.parametrize(
    "mutate, needle",
    [
        (lambda d: [], "JSON object"),
        (lambda d: {**d, "components": []}, "components must be an object"),
        (lambda d: {**d, "draft": {**d["draft"], "fps": "30"}}, "fps = '30' should be int"),
        (lambda d: {**d, "draft": {**d["draft"], "context_frames": 3}}, "context_frames"),
        (lambda d: {**d, "latent": {**d["latent"], "temporal": 0}}, "temporal = 0"),
        (lambda d: {**d, "id": ["a"]}, "id must be a non-empty string"),
        (lambda d: {**d, "latent": {**d["latent"], "colour": 1}}, "unknown field 'colour'"),
        (lambda d: {**d, "conditioning": {**d["conditioning"], "context": {**d["conditioning"]["context"],
                                                                          "frames": 2}}}, "disagrees"),
    ],
)
def test_malformed_manifests_are_pack_errors(test_pack, pack_copy, mutate, needle):
    data = json.loads((pack_copy / MANIFEST_NAME).read_text())
    (pack_copy / MANIFEST_NAME).write_text(json.dumps(mutate(data)))
    with pytest.raises(PackError, match=needle):
        load_pack(str(pack_copy))


def test_undecodable_manifest_is_a_pack_error(pack_copy):
    (pack_copy / MANIFEST_NAME).write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(PackError, match="not a readable JSON file"):
        load_pack(str(pack_copy))


@pytest.mark.parametrize("ref", ["owner/na..me", "o/-x", "owner/name."])
def test_invalid_hub_ids_are_unknown_packs(ref, tmp_path, monkeypatch):
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(UnknownPackError):
        load_pack(ref)


def test_one_broken_pack_does_not_hide_the_others(test_pack, tmp_path, monkeypatch):
    from previz.packs import list_packs

    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / MANIFEST_NAME).write_text("{")
    shutil.copytree(test_pack.root, tmp_path / "good")
    monkeypatch.setenv("PREVIZ_PACKS", str(tmp_path))
    assert [p.id for p in list_packs() if p.root.parent == tmp_path] == ["previz-test"]


def test_pack_builder_refuses_a_directory_that_is_not_a_pack(tmp_path):
    (tmp_path / "my-films").mkdir()
    (tmp_path / "my-films" / "precious.mov").write_bytes(b"footage")
    with pytest.raises(PackError, match="not a pack"):
        make_test_pack(tmp_path / "my-films")
    assert (tmp_path / "my-films" / "precious.mov").read_bytes() == b"footage"


def test_a_causal_layout_gives_one_frame_for_the_first_latent(tmp_path, cache_dir):
    """Wan-VAE-style layouts: 1 + 4k frames, the first latent frame decodes to one frame."""

    from conftest import TEST_DRAFT

    from previz.recipe import Recipe
    from previz.take import DraftModel

    layout = LatentLayout(space="causal-v0", channels=16, temporal=4, spatial=8, causal_first_frame=True)
    make_test_pack(tmp_path / "causal", pack_id="causal", latent=layout, draft=TEST_DRAFT,
                   transformer=dict(TEST_TRANSFORMER_SMALL))
    pack = load_pack(str(tmp_path / "causal"))
    model = DraftModel(pack, "torch", cache_dir=cache_dir)
    latents = []
    frames = list(model.generate(Recipe(prompt="a tree", seconds=0.3, pack=str(pack.root)),
                                 on_chunk=lambda c, z: latents.append(z)))
    assert len(frames) == 9  # 0.3 s at 30 fps
    assert sum(z.shape[2] for z in latents) == 3  # 1 + 2 groups of 4
    import torch

    from previz.take import to_uint8

    first = model.decoder.run({"latents": torch.from_numpy(latents[0][:, :, 0])})["frames"]
    assert np.array_equal(frames[0].image, to_uint8(first[-1]).numpy())
