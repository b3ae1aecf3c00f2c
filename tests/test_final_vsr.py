"""The tiled VSR: tiles blend back to the whole-frame result; pictures are fitted; VSR packs load via spandrel."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from upscale.vsr import Lanczos, NetworkUpscaler, TiledVSR, fit_rect, stabilize, upscaler_for


def frame(w: int, h: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((h, w, 3), dtype=np.float32)


@pytest.mark.parametrize("src, dst", [((64, 36), (960, 540)), ((48, 32), (200, 130))])
def test_tiles_blend_to_the_whole_frame_result(src, dst):
    f = frame(*src)
    whole = TiledVSR(Lanczos(), src, dst, tile=4096, overlap=0)
    tiled = TiledVSR(Lanczos(), src, dst, tile=96, overlap=16)
    assert whole.tiles_per_frame == 1 and tiled.tiles_per_frame >= 6
    a, b = whole.upscale([f]), tiled.upscale([f])
    assert a.shape == b.shape == (dst[1], dst[0], 3)
    assert np.abs(a - b).max() < 1e-4


def test_a_tile_without_enough_margin_would_show_seams():
    """The margin is what makes tiles agree: without it the same tiling differs (the test can fail)."""
    f = frame(64, 36)
    whole = TiledVSR(Lanczos(), (64, 36), (960, 540), tile=4096, overlap=0).upscale([f])
    seamy = TiledVSR(Lanczos(margin=0), (64, 36), (960, 540), tile=96, overlap=16).upscale([f])
    assert np.abs(whole - seamy).max() > 1e-3


def test_dci_is_pillarboxed_and_uhd_filled():
    assert fit_rect((256, 144), (3840, 2160)) == (0, 0, 3840, 2160)
    assert fit_rect((256, 144), (4096, 2160)) == (128, 0, 3840, 2160)
    assert fit_rect((1280, 720), (1920, 1080)) == (0, 0, 1920, 1080)
    vsr = TiledVSR(Lanczos(), (32, 18), (64 * 4, 34 * 4), tile=64, overlap=8)
    out = vsr.upscale([np.full((18, 32, 3), 0.5, np.float32)])
    x, y, w, h = vsr.rect
    assert out.shape == (136, 256, 3) and x > 0 and w < 256  # pillarboxed
    assert np.all(out[y:y + h, x:x + w] > 0.49)
    mask = np.ones(out.shape[:2], bool)
    mask[y:y + h, x:x + w] = False
    assert np.all(out[mask] == 0)


def test_stream_is_one_out_per_frame_in():
    vsr = TiledVSR(Lanczos(), (32, 18), (320, 180), tile=128, overlap=16)
    outs = list(vsr.stream(frame(32, 18, i) for i in range(3)))
    assert len(outs) == 3 and all(o.shape == (180, 320, 3) for o in outs)
    with pytest.raises(ValueError, match="VSR input"):
        list(vsr.stream([frame(16, 16)]))


def test_lanczos_is_the_default_and_an_unknown_upscaler_is_a_clear_error():
    assert upscaler_for("lanczos").trained is False
    from previz.errors import UnknownPackError

    with pytest.raises(UnknownPackError, match="realesrgan.*not 'lanczos' and not an installed vsr pack"):
        upscaler_for("realesrgan")


def test_stabilize_averages_still_pixels_and_keeps_moving_ones():
    rng = np.random.default_rng(1)
    still = np.full((8, 8, 3), 0.5, np.float32)
    frames = [still + rng.normal(0, 0.005, still.shape).astype(np.float32) for _ in range(3)]
    frames[-1][:4] = 1.0  # the top half moved (changed far past the threshold)
    out = stabilize(frames, threshold=0.04)
    assert np.array_equal(out[:4], frames[-1][:4])  # moving: the current frame, untouched
    # still: the noise of three frames averaged is smaller than one frame's
    assert np.abs(out[4:] - 0.5).mean() < 0.8 * np.abs(frames[-1][4:] - 0.5).mean()
    assert np.array_equal(stabilize(frames[-1:], 0.04), frames[-1])


# ----------------------------------------------------------------------------- learned VSR packs (spandrel)


@pytest.fixture(scope="module")
def vsr_pack(tmp_path_factory):
    """A tiny SRVGGNetCompact x4 built with spandrel's own class, saved as a safetensors state dict."""
    from previz.errors import BackendUnavailableError
    from upscale.final_pack import build_vsr_pack
    from upscale.vsr import import_spandrel

    try:
        import_spandrel()
    except BackendUnavailableError:
        pytest.skip("the learned VSR is an optional extra (pip install 'previz[vsr]')")

    return build_vsr_pack(tmp_path_factory.mktemp("packs") / "tiny-compact", pack_id="tiny-compact",
                          config=dict(num_feat=8, num_conv=2), temporal_window=3)


def test_a_vsr_pack_loads_through_spandrel_and_says_it_is_untrained(vsr_pack):
    from previz.packs import load_pack

    pack = load_pack(str(vsr_pack.root))
    assert (pack.kind, pack.scale, pack.temporal_window, pack.trained) == ("vsr", 4, 3, False)
    up = upscaler_for(str(vsr_pack.root))
    assert isinstance(up, NetworkUpscaler) and type(up.module).__name__ == "SRVGGNetCompact"
    assert (up.name, up.scale, up.temporal_window, up.trained) == ("tiny-compact", 4, 3, False)
    assert "UNTRAINED" in up.label and "SRVGGNetCompact x4" in up.label


def test_network_tiles_blend_to_the_whole_frame_result(vsr_pack):
    up = upscaler_for(str(vsr_pack.root))
    f = frame(64, 36)
    whole = TiledVSR(up, (64, 36), (960, 540), tile=4096, overlap=0).upscale([f])
    tiled = TiledVSR(up, (64, 36), (960, 540), tile=96, overlap=16)
    assert tiled.tiles_per_frame >= 6
    assert np.abs(whole - tiled.upscale([f])).max() < 1e-4


def test_the_temporal_window_lowers_flicker_on_a_still_noisy_shot(vsr_pack):
    up = upscaler_for(str(vsr_pack.root))
    rng = np.random.default_rng(2)
    base = frame(48, 32, 3)
    shots = [np.clip(base + rng.normal(0, 0.01, base.shape), 0, 1).astype(np.float32) for _ in range(5)]
    vsr = TiledVSR(up, (48, 32), (192, 128))
    per_frame = [vsr.upscale([s]) for s in shots]
    windowed = list(vsr.stream(shots))  # the pack's window of 3
    flicker = [float(np.mean([np.abs(b - a).mean() for a, b in zip(o, o[1:], strict=False)]))
               for o in (per_frame, windowed)]
    assert flicker[1] < 0.7 * flicker[0]


def test_a_vsr_pack_that_lies_about_itself_is_refused(vsr_pack, tmp_path):
    import json
    import shutil

    from previz.errors import PackError
    from previz.packs import MANIFEST_NAME

    wrong = tmp_path / "wrong"
    shutil.copytree(vsr_pack.root, wrong)
    manifest = json.loads((wrong / MANIFEST_NAME).read_text())
    manifest["scale"] = 2
    (wrong / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(PackError, match="scale 2, the network upscales x4"):
        upscaler_for(str(wrong))
    manifest["scale"], manifest["components"]["upscaler"]["class"] = 4, "RRDBNet"
    (wrong / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(PackError, match="says RRDBNet, the weights are a Compact network"):
        upscaler_for(str(wrong))
    manifest["components"]["upscaler"]["class"], manifest["temporal_window"] = "SRVGGNetCompact", 0
    (wrong / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(PackError, match="temporal_window = 0"):
        upscaler_for(str(wrong))


def test_loading_spandrel_leaves_no_torchvision_placeholder_behind(vsr_pack):
    import importlib.util
    import sys

    upscaler_for(str(vsr_pack.root))
    if importlib.util.find_spec("torchvision") is None:  # a CPU install: still none, for every library
        assert "torchvision" not in sys.modules


def test_make_vsr_pack_turns_a_safetensors_network_into_a_pack(vsr_pack, tmp_path, capsys):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
    import make_vsr_pack

    weights = vsr_pack.component_dir("upscaler") / "model.safetensors"
    out = tmp_path / "from-file"
    assert make_vsr_pack.main([str(weights), "--id", "from-file", "--out", str(out), "--window", "2",
                               "--label", "a test network"]) == 0
    assert "SRVGGNetCompact x4, window 2, UNTRAINED" in capsys.readouterr().out
    up = upscaler_for(str(out))
    assert (up.name, up.scale, up.temporal_window, up.trained) == ("from-file", 4, 2, False)
    assert make_vsr_pack.main([str(tmp_path / "nope.pth"), "--id", "x", "--out", str(tmp_path / "x")]) == 2
    assert "is not a .safetensors file" in capsys.readouterr().err


@pytest.mark.gpu
def test_a_vsr_pack_on_cuda_runs_in_fp16_and_matches_the_cpu(vsr_pack):
    cpu = upscaler_for(str(vsr_pack.root))
    gpu = upscaler_for(str(vsr_pack.root), device="cuda")
    assert gpu.dtype == torch.float16 and cpu.dtype == torch.float32
    f = frame(64, 36)
    a = TiledVSR(cpu, (64, 36), (960, 540)).upscale([f])
    b = TiledVSR(gpu, (64, 36), (960, 540)).upscale([f])
    assert np.abs(a - b).max() < 2e-2
