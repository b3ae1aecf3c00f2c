"""The tiled VSR: tiles blend back to exactly the whole-frame result; pictures are fitted, never cropped."""

from __future__ import annotations

import numpy as np
import pytest

from upscale.vsr import Lanczos, TiledVSR, fit_rect, upscaler_for


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


def test_only_lanczos_until_a_trained_pack():
    assert upscaler_for("lanczos").trained is False
    from previz.errors import PackError

    with pytest.raises(PackError, match="realesrgan"):
        upscaler_for("realesrgan")
