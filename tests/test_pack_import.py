"""`previz pack import` of diffusers-format Wan directories: the manifest, drafting by CLI and websocket,
the streaming VAE decode, stamps and verify, bad imports, and an imported A14B final pack."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from conftest import LiveServer, run_module_cli
from test_server import open_client

from previz.errors import PackError
from previz.pack_import import ImportOptions, import_checkpoint
from previz.packs import MANIFEST_NAME, LatentLayout, load_pack, parse_manifest, user_packs_dir

pytestmark = pytest.mark.filterwarnings("ignore:connect\\(\\) must be used:DeprecationWarning")

SMALL = ["--width", "64", "--height", "32", "--text-tokens", "16"]


def _import(directory: Path, name: str, *extra: str) -> dict:
    result = run_module_cli("pack", "import", str(directory), "--name", name, "--force", *extra)
    assert result.returncode == 0, result.stderr
    assert f"pack {name}: " in result.stdout
    return json.loads((user_packs_dir() / name / MANIFEST_NAME).read_text())


@pytest.fixture(scope="module")
def wan21(wan_checkpoint):
    _import(wan_checkpoint("wan2.1"), "imp-wan21", *SMALL)
    return load_pack("imp-wan21")


@pytest.fixture(scope="module")
def ti2v(wan_checkpoint):
    _import(wan_checkpoint("wan2.2-ti2v"), "imp-ti2v", *SMALL)  # 64x32: whole 32-pixel cells (16x VAE, 2x2 patch)
    return load_pack("imp-ti2v")


# ----------------------------------------------------------------------------- the manifest


@pytest.mark.parametrize("kind, channels, spatial, shift, fps", [("wan2.1", 16, 8, 7.0, 16),
                                                                  ("wan2.2-ti2v", 48, 16, 3.0, 24)])
def test_import_reads_the_layout_text_and_shift_from_the_configs_and_copies_no_weight(
        wan_checkpoint, kind, channels, spatial, shift, fps):
    directory = wan_checkpoint(kind)
    manifest = _import(directory, f"imp-layout-{kind}", *SMALL)
    assert manifest["kind"] == "draft" and manifest["weights"] == str(directory.resolve())
    assert manifest["latent"] == {"space": manifest["latent"]["space"], "channels": channels, "temporal": 4,
                                  "spatial": spatial, "causal_first_frame": True}
    assert manifest["latent"]["space"].startswith(f"wan-vae-z{channels}-")
    assert manifest["conditioning"] == {"text": {"encoder": "UMT5EncoderModel", "dim": 32, "tokens": 16},
                                        "context": {"kind": "clean-latent-frames", "frames": 1,
                                                    "attention": "bidirectional"}}  # real Wan: every token sees all
    assert manifest["draft"]["shift"] == shift and manifest["draft"]["fps"] == fps
    assert manifest["draft"]["size_multiple"] == spatial * 2  # VAE cell x the transformer's 2x2 patch
    assert manifest["components"]["decoder"] == {**manifest["components"]["decoder"], "class": "AutoencoderKLWan",
                                                 "subfolder": "vae"}
    assert all(c["stamp"] for c in manifest["components"].values())
    pack_dir = user_packs_dir() / f"imp-layout-{kind}"
    assert [p.name for p in pack_dir.iterdir()] == [MANIFEST_NAME]  # the weights stay where they are


def test_umt5_is_loaded_at_the_asked_precision_and_its_bf16_states_match_fp32(wan21):
    """torch_dtype at load (no fp32 copy, transformers' own fp32 modules kept), and states as device tensors."""
    from test_text import assert_close_to_fp32

    from previz.text import TextEncoder

    fp32, bf16, fp16 = (TextEncoder(wan21, precision=p) for p in ("fp32", "bf16", "fp16"))
    kept_at = {torch.bfloat16: set(getattr(bf16.model, "_keep_in_fp32_modules_strict", None) or ()),
               torch.float16: set(fp16.model._keep_in_fp32_modules or ()) | set(
                   getattr(fp16.model, "_keep_in_fp32_modules_strict", None) or ())}
    assert kept_at[torch.float16] >= {"wo"}  # T5's feed-forward output overflows fp16
    for encoder, dtype in ((bf16, torch.bfloat16), (fp16, torch.float16)):
        assert encoder.model.config.dtype == dtype
        for name, param in encoder.model.named_parameters():
            kept = bool(kept_at[dtype] & set(name.split(".")))
            assert param.dtype == (torch.float32 if kept else dtype), name  # .to(fp16) would have cast wo too
    for prompt in ("a red cube on sandy plain", "blue sky over the sea at dusk camera orbits slowly", ""):
        states = bf16(prompt)
        assert states.shape == (1, 16, 32) and states.dtype == torch.float32 and states.device == bf16.device
        n_tokens = len(bf16.tokenizer(prompt)["input_ids"])
        assert torch.all(states[0, n_tokens:] == 0) and states[0, :n_tokens].abs().sum(-1).min() > 0
        assert_close_to_fp32(states, fp32(prompt))
        calls = bf16.encode_calls
        assert bf16(prompt) is states and bf16.encode_calls == calls


def test_on_a_cpu_umt5_runs_at_the_dtype_its_checkpoint_stores(wan_checkpoint, tmp_path):
    """Wan ships UMT5 in bf16; on a CPU an fp32 copy of UMT5-XXL would be 22 GB of host memory, so the
    default there is the stored dtype (and an explicit fp32 is still honoured)."""
    from transformers import UMT5EncoderModel

    from previz.text import TextEncoder

    source = tmp_path / "wan21-bf16"
    shutil.copytree(wan_checkpoint("wan2.1"), source)
    stored = UMT5EncoderModel.from_pretrained(source / "text_encoder", torch_dtype=torch.bfloat16)
    shutil.rmtree(source / "text_encoder")
    stored.save_pretrained(source / "text_encoder")
    _import(source, "imp-wan21-bf16", *SMALL)
    pack = load_pack("imp-wan21-bf16")
    default, fp32 = TextEncoder(pack), TextEncoder(pack, precision="fp32")
    assert default.precision == "bf16" and {p.dtype for p in default.model.parameters()} == {torch.bfloat16}
    assert fp32.precision == "fp32" and {p.dtype for p in fp32.model.parameters()} == {torch.float32}
    assert default("a red cube").dtype == torch.float32  # states are fp32 whatever the encoder ran at


def test_wan_transformers_take_per_token_timesteps(wan21):
    """The windowed sampler gives clean context tokens t=0: diffusers 0.42's Wan forward takes [B, seq]."""
    from previz.packs import load_component

    model = load_component(wan21, "denoiser")
    x = torch.randn(1, 16, 2, 4, 8)
    text = torch.randn(1, 16, 32)
    tokens = 2 * (4 // 2) * (8 // 2)
    scalar = model(x, torch.tensor([700.0]), text, return_dict=False)[0]
    per_token = model(x, torch.full((1, tokens), 700.0), text, return_dict=False)[0]
    mixed = model(x, torch.cat([torch.zeros(1, tokens // 2), torch.full((1, tokens // 2), 700.0)], 1), text,
                  return_dict=False)[0]
    assert torch.allclose(scalar, per_token, atol=1e-5)
    assert not torch.allclose(mixed, per_token, atol=1e-3)  # the per-token values are really read


# ----------------------------------------------------------------------------- streaming VAE decode


@pytest.mark.parametrize("kind, tile", [("wan2.1", None), ("wan2.1", 4), ("wan2.2-ti2v", None)])
def test_streaming_decode_equals_a_whole_clip_vae_decode(wan_checkpoint, kind, tile):
    from diffusers import AutoencoderKLWan

    from previz.vae_stream import VAEStream, latent_stats

    vae = AutoencoderKLWan.from_pretrained(wan_checkpoint(kind) / "vae").eval()
    channels = vae.config.z_dim
    torch.manual_seed(0)
    latents = torch.randn(1, channels, 4, 6, 7)  # odd sizes: tiles of 4 with overlap 1 leave ragged edges
    stream = VAEStream(vae, tile=tile or 32, overlap=1 if tile else 8)
    streamed = torch.cat([stream.decode(latents[:, :, k]) for k in range(4)])  # [F, H, W, 3]
    mean, std = latent_stats(vae)
    if tile:
        px = tile * vae.spatial_compression_ratio
        vae.enable_tiling(tile_sample_min_height=px, tile_sample_min_width=px,
                          tile_sample_stride_height=px - vae.spatial_compression_ratio,
                          tile_sample_stride_width=px - vae.spatial_compression_ratio)
    with torch.inference_mode():
        whole = vae.decode(latents * std + mean, return_dict=False)[0]
    reference = (whole[0].permute(1, 2, 3, 0) + 1) * 0.5
    assert streamed.shape == reference.shape == (13, 6 * vae.spatial_compression_ratio,
                                                 7 * vae.spatial_compression_ratio, 3)
    assert (streamed - reference).abs().max().item() < 1e-4


def test_a_take_decoded_chunk_by_chunk_equals_the_whole_clip_decode(wan21, cache_dir):
    from previz.recipe import Recipe, resolve
    from previz.take import DraftModel
    from previz.vae_stream import latent_stats

    model = DraftModel(wan21, "torch", cache_dir=cache_dir)
    recipe = resolve(Recipe(prompt="a red cube on a sandy plain", seed=2, seconds=1.0), wan21)
    latents: list[np.ndarray] = []
    chunks: list[int] = []
    frames = [f.image for f in model.generate(recipe, on_chunk=lambda c, kept: (latents.append(kept),
                                                                                  chunks.append(c.index)))]
    assert len(chunks) >= 2 and len(frames) == 16  # 1 s at Wan 2.1's 16 fps, in more than one chunk
    vae = model.frame_decoder.vae
    mean, std = latent_stats(vae)
    with torch.inference_mode():
        whole = vae.decode(torch.from_numpy(np.concatenate(latents, axis=2)) * std + mean, return_dict=False)[0]
    reference = np.clip(np.rint((whole[0].permute(1, 2, 3, 0).numpy() + 1) * 0.5 * 255), 0, 255)
    assert np.abs(np.stack(frames).astype(np.int16) - reference[:16].astype(np.int16)).max() <= 1


# ----------------------------------------------------------------------------- drafting: CLI and websocket


@pytest.mark.parametrize("pack_name", ["imp-wan21", "imp-ti2v"])
def test_an_imported_pack_drafts_by_the_cli_and_says_the_camera_does_not_steer_it(
        wan21, ti2v, pack_name, tmp_path):
    out = tmp_path / "take.mp4"
    result = run_module_cli("draft", "a red cube on a sandy plain", "--pack", pack_name, "--seconds", "1",
                            "--backend", "torch", "--camera", "orbit_left", "-o", str(out), "--no-store", "-q")
    assert result.returncode == 0, result.stderr
    assert "takes text only: the camera and scene you gave are recorded" in result.stderr
    fps = 16 if pack_name == "imp-wan21" else 24
    with av.open(str(out)) as container:
        images = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(images) == fps and images[0].shape == (32, 64, 3)


def test_an_imported_pack_streams_over_the_websocket_chunk_by_chunk(ti2v, tmp_path, cache_dir):
    server = LiveServer(ti2v, tmp_path / "drafts", cache_dir)
    try:
        client = open_client(server)
        ready = client.events[0]
        assert ready["pack"]["label"] == "imported" and ready["capabilities"]["camera"] is False
        assert ready["capabilities"]["scene"]["control"] is False
        client.send(type="generate", id=1, recipe={"prompt": "a red cube", "seconds": 1.0, "seed": 3})
        started = client.event("take_started")
        arrivals: list[tuple[str, int]] = []  # ("frame", chunk) and ("done", chunk), in arrival order
        while True:
            item = client.recv()
            if not isinstance(item, dict):
                arrivals.append(("frame", item.chunk))
            elif item["type"] == "chunk_done":
                arrivals.append(("done", item["chunk"]))
            elif item["type"] == "take_done":
                break
    finally:
        server.close()
    headers = client.frames_of(started["take_id"])
    assert [h.index for h in headers] == list(range(24)) and started["chunks"] >= 2
    assert sorted({h.chunk for h in headers}) == list(range(started["chunks"]))
    # Frames leave as each chunk is denoised: chunk k's frames come before chunk k+1 is done.
    for position, (what, chunk) in enumerate(arrivals):
        if what == "done" and chunk + 1 < started["chunks"]:
            assert ("frame", chunk + 1) not in arrivals[:position]
            assert ("frame", chunk) in arrivals[:position]


# ----------------------------------------------------------------------------- stamps and verify


def test_a_load_checks_stamps_and_verify_rehashes(wan_checkpoint, tmp_path):
    directory = tmp_path / "ckpt"
    shutil.copytree(wan_checkpoint("wan2.1"), directory)
    import_checkpoint(directory, ImportOptions(name="imp-stamps", width=64, height=32, text_tokens=16, force=True))
    load_pack("imp-stamps")  # stamps match: no hashing
    weights = directory / "transformer" / "diffusion_pytorch_model.safetensors"
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))
    with pytest.raises(PackError, match="run `previz pack verify imp-stamps`"):
        load_pack("imp-stamps")
    result = run_module_cli("pack", "verify", "imp-stamps")
    assert result.returncode == 0, result.stderr
    assert "match their hashes" in result.stdout and "stamps refreshed for denoiser" in result.stdout
    load_pack("imp-stamps")  # the touched file is what was hashed: loads trust it again
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # the same size, another byte
    weights.write_bytes(bytes(data))
    result = run_module_cli("pack", "verify", "imp-stamps")
    assert result.returncode == 2 and "does not match its manifest hashes" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    directory.rename(tmp_path / "moved")
    with pytest.raises(PackError, match="which is not there any more: import the checkpoint again"):
        load_pack("imp-stamps")


# ----------------------------------------------------------------------------- bad imports


def _bad_import(directory: Path) -> str:
    result = run_module_cli("pack", "import", str(directory), "--name", "imp-bad", "--force")
    assert result.returncode == 2, result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("previz: error: "), result.stderr
    assert not (user_packs_dir() / "imp-bad").exists()
    return lines[0]


def test_bad_imports_are_one_line_errors(wan_checkpoint, tmp_path):
    assert "not a diffusers checkpoint directory (it has no model_index.json)" in _bad_import(tmp_path)
    missing = tmp_path / "missing"
    shutil.copytree(wan_checkpoint("wan2.1"), missing)
    shutil.rmtree(missing / "vae")
    assert "the 'vae' component is missing" in _bad_import(missing)
    pickled = tmp_path / "pickled"
    shutil.copytree(wan_checkpoint("wan2.1"), pickled)
    (pickled / "transformer" / "diffusion_pytorch_model.bin").write_bytes(b"pickle")
    line = _bad_import(pickled)
    assert "diffusion_pytorch_model.bin is not safetensors" in line and "Convert the weights" in line
    from wan_dirs import write_wan_dir

    mismatched = write_wan_dir(tmp_path / "mismatched", "wan2.1", vae_kind="wan2.2-ti2v")
    assert "the VAE has 48 latent channels but the transformer takes 16" in _bad_import(mismatched)


def test_a_two_expert_directory_will_not_import_as_a_draft(wan_checkpoint):
    with pytest.raises(PackError, match="import it with --kind final"):
        import_checkpoint(wan_checkpoint("wan2.2-a14b"), ImportOptions(name="imp-a14b-draft", kind="draft"))
    with pytest.raises(PackError, match="needs two experts"):
        import_checkpoint(wan_checkpoint("wan2.1"), ImportOptions(name="imp-21-final", kind="final"))
    final = import_checkpoint(wan_checkpoint("wan2.2-a14b"), ImportOptions(name="imp-a14b-defaults", force=True))
    assert final.kind == "final" and final.boundary_ratio == 0.875
    assert (final.final.guidance, final.final.guidance_2, final.final.steps) == (4.0, 3.0, 40)  # WanPipeline's


# ----------------------------------------------------------------------------- typed sections


def test_conditioning_sections_are_typed_and_checked_where_the_manifest_is_parsed(backlot_pack):
    assert backlot_pack.conditioning.text.dim == 384 and backlot_pack.conditioning.camera.channels == 24
    assert backlot_pack.conditioning.control.maps == ("depth", "albedo")
    raw = json.loads((backlot_pack.root / MANIFEST_NAME).read_text())
    for change, message in (({"camera": {"kind": "plucker", "channels": 12}}, "are 24 channels"),
                            ({"audio": {"kind": "wav"}}, "needs audio conditioning"),
                            ({"text": {"dim": "384", "tokens": 64}}, "dim = '384' should be int")):
        bad = {**raw, "conditioning": {**raw["conditioning"], **change}}
        with pytest.raises(PackError, match=message):
            parse_manifest(bad, backlot_pack.root)


# ----------------------------------------------------------------------------- an imported A14B final pack


def test_an_imported_a14b_directory_is_a_final_pack_that_renders_a_promoted_draft(wan_checkpoint, wan21, tmp_path,
                                                                                  cache_dir):
    from conftest import make_stored_draft

    from previz.drafts import DraftStore

    manifest = _import(wan_checkpoint("wan2.2-a14b"), "imp-a14b", "--width", "64", "--height", "32",
                       "--text-tokens", "16", "--steps", "4", "--fps", "16", "--guidance", "1")
    assert manifest["kind"] == "final" and manifest["boundary_ratio"] == 0.875
    assert set(manifest["components"]) == {"transformer", "transformer_2", "vae", "text_encoder"}
    # Built with the same seed, the tiny 2.1 and A14B directories share their VAE weights, so they share a
    # latent space and the draft's latents are handed over directly (as a real Wan 2.1 student's are to A14B).
    assert manifest["latent"]["space"] == wan21.latent.space
    with DraftStore(tmp_path / "drafts") as store:
        draft = make_stored_draft(store, wan21, cache_dir, seconds=0.25)
        result = run_module_cli("drafts", "promote", draft.id, "--pack", "imp-a14b", "--format", "png",
                                "--resolution", "hd", "--size", "64x32", "--store", str(store.root), "--run")
        assert result.returncode == 0, result.stderr
        job = store.jobs(draft_id=draft.id)[0]
        assert job.state == "done" and Path(job.output).exists()
        plan = json.loads(json.dumps(job.options))
        assert plan["pack"] == "imp-a14b"


# ----------------------------------------------------------------------------- a tiny decoder; a resumed take


def test_a_checkpoint_with_a_tiny_safetensors_decoder_drafts_with_it(wan_checkpoint, tmp_path, cache_dir):
    from previz.pack_builder import new_autoencoder
    from previz.recipe import Recipe, resolve
    from previz.take import DraftModel

    directory = tmp_path / "with-decoder"
    shutil.copytree(wan_checkpoint("wan2.1"), directory)
    layout = LatentLayout(space="wan2.1", channels=16, temporal=4, spatial=8, causal_first_frame=True)
    torch.manual_seed(0)
    new_autoencoder(layout, 8).save_pretrained(directory / "decoder", safe_serialization=True)
    pack = import_checkpoint(directory, ImportOptions(name="imp-tiny-decoder", width=64, height=32, text_tokens=16,
                                                      force=True))
    assert pack.component("decoder").cls == "AutoencoderTiny" and pack.component("decoder").subfolder == "decoder"
    model = DraftModel(load_pack("imp-tiny-decoder"), "torch", cache_dir=cache_dir)
    assert model.decoder_graph is not None  # the frame-wise graph, on the take's backend
    frames = list(model.generate(resolve(Recipe(prompt="a red cube", seed=1, seconds=1.0), pack)))
    assert [f.index for f in frames] == list(range(16))  # the causal first latent frame gives one frame


def test_a_streamed_take_resumes_with_the_same_frames_and_a_warmed_cache(wan21, cache_dir):
    """A resumed take rebuilds the VAE's causal cache from the saved context latents: the same frames, and the
    same pixels where the context reaches back to the take's start (later, nearly the same)."""
    from previz.recipe import Recipe
    from previz.take import DraftModel, Take, TakeState

    model = DraftModel(wan21, "torch", cache_dir=cache_dir)
    recipe = Recipe(prompt="a slow dolly past a diner", seed=3, seconds=2.0)  # 9 latent frames: 3 chunks
    whole = np.stack([f.image for f in model.generate(recipe)])
    for after, tolerance in ((1, 0.0), (2, 8.0)):
        first = Take(model, recipe)
        done = []
        for _ in range(after):
            done += [f.image for f in first.step().frames]
        again = Take(model, recipe, state=TakeState(first.state.next_chunk, first.state.context.clone()))
        rest = []
        while not again.done:
            rest += [f.image for f in again.step().frames]
        assert len(done) + len(rest) == len(whole) and np.array_equal(np.stack(done), whole[:len(done)])
        diff = np.abs(np.stack(rest).astype(int) - whole[len(done):])
        print(f"resumed after {after} chunks: mean abs difference {diff.mean():.3f}, max {diff.max()}")
        assert diff.mean() <= tolerance
