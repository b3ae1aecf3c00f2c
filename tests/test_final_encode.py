"""Delivery encodes, checked by an independent reader (ffprobe) and by decoding them back."""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
from pathlib import Path

import av
import numpy as np
import pytest

from upscale.encode import (
    FORMATS,
    SIDECAR,
    DeliveryError,
    DeliveryMeta,
    check_timecode,
    delivery_format,
    timecode_frame,
    write_delivery,
)

needs_ffprobe = pytest.mark.skipif(shutil.which("ffprobe") is None, reason="ffprobe (Debian ffmpeg) not installed")

SIZE = (128, 72)
META = DeliveryMeta(draft_id="d0123456789abcdef", job_id="j0123456789abcdef", recipe={"prompt": "a cube", "seed": 3},
                    fps=24, timecode="01:00:00:00", extra={"packs": {"final": {"trained": False}}})


def ramp_frames(n: int, size=SIZE):
    w, h = size
    x = np.linspace(0, 1, w, dtype=np.float32)[None, :, None]
    y = np.linspace(0, 1, h, dtype=np.float32)[:, None, None]
    for i in range(n):
        yield np.ascontiguousarray(np.broadcast_to((x * 0.7 + y * 0.2 + 0.1 * (i % 5) / 5) * np.array(
            [1.0, 0.8, 0.6], np.float32), (h, w, 3)), dtype=np.float32)


def ffprobe(path: Path) -> dict:
    out = subprocess.run(["ffprobe", "-v", "error", "-count_frames", "-show_streams", "-show_format", "-of", "json",
                          str(path)], capture_output=True, text=True, check=True).stdout
    return json.loads(out)


def exr_channel_types(path: Path) -> dict[str, int]:
    """Parse an OpenEXR header's chlist by hand: {channel: pixel type} (1 = HALF, 2 = FLOAT)."""
    data = path.read_bytes()
    assert data[:4] == b"\x76\x2f\x31\x01"
    pos = 8
    while data[pos] != 0:
        name_end = data.index(b"\0", pos)
        name = data[pos:name_end].decode()
        type_end = data.index(b"\0", name_end + 1)
        size = struct.unpack("<i", data[type_end + 1:type_end + 5])[0]
        value = data[type_end + 5:type_end + 5 + size]
        if name == "channels":
            out, p = {}, 0
            while value[p] != 0:
                e = value.index(b"\0", p)
                out[value[p:e].decode()] = struct.unpack("<i", value[e + 1:e + 5])[0]
                p = e + 1 + 16
            return out
        pos = type_end + 5 + size
    raise AssertionError("no chlist")


@needs_ffprobe
@pytest.mark.parametrize("name, codec, profile, pix_fmt, tag", [
    ("prores", "prores", "HQ", "yuv422p10le", "apch"),
    ("h265", "hevc", "Main 10", "yuv420p10le", "hvc1"),
])
def test_movies_have_codec_profile_tags_timecode_and_metadata(tmp_path, name, codec, profile, pix_fmt, tag):
    target = tmp_path / f"final{FORMATS[name].ext}"
    # 11 frames in segments of 4: three segments, the last one short, joined by remux.
    n = write_delivery(target, ramp_frames(11), name, SIZE, META, tmp_path / "work", segment_frames=4)
    assert n == 11
    info = ffprobe(target)
    video = [s for s in info["streams"] if s["codec_type"] == "video"][0]
    assert (video["codec_name"], video["profile"], video["pix_fmt"], video["codec_tag_string"]) == (
        codec, profile, pix_fmt, tag)
    assert (video["width"], video["height"]) == SIZE
    assert video["nb_read_frames"] == "11"
    assert video["r_frame_rate"] == "24/1"
    assert (video["color_primaries"], video["color_transfer"], video["color_space"], video["color_range"]) == (
        "bt709", "bt709", "bt709", "tv")
    assert any(s.get("tags", {}).get("timecode") == "01:00:00:00" for s in info["streams"])
    comment = json.loads(info["format"]["tags"]["comment"])
    assert comment["draft_id"] == META.draft_id and comment["recipe"]["seed"] == 3
    assert "UNTRAINED" in info["format"]["tags"]["title"] and comment["trained"] is False
    # The joined file decodes to the frames that went in, in order (the ramp's brightness cycles).
    with av.open(str(target)) as c:
        decoded = [f.to_ndarray(format="rgb24").astype(np.float32) / 255 for f in c.decode(video=0)]
    expected = list(ramp_frames(11))
    assert len(decoded) == 11
    for got, want in zip(decoded, expected, strict=True):
        assert np.abs(got - want).mean() < 0.02
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


@needs_ffprobe
def test_png_sequence_is_16_bit_rgb_with_bt709_and_a_sidecar(tmp_path):
    target = tmp_path / "final_png"
    assert write_delivery(target, ramp_frames(5), "png", SIZE, META, tmp_path / "work", segment_frames=2) == 5
    files = sorted(target.glob("*.png"))
    first = timecode_frame("01:00:00:00", 24)
    assert [f.name for f in files] == [f"final_png.{first + i:07d}.png" for i in range(5)]
    info = ffprobe(files[0])["streams"][0]
    assert (info["codec_name"], info["pix_fmt"], info["width"], info["height"]) == ("png", "rgb48be", *SIZE)
    raw = files[0].read_bytes()
    assert raw[24] == 16 and raw[25] == 2  # IHDR: bit depth 16, colour type RGB
    assert b"cICP\x01\x01\x00\x01" in raw  # BT.709 primaries and transfer, RGB, full range
    sidecar = json.loads((target / SIDECAR).read_text())
    assert sidecar["draft_id"] == META.draft_id and sidecar["timecode"] == "01:00:00:00" and sidecar["frames"] == 5


@needs_ffprobe
def test_exr_sequence_is_half_float_and_linear(tmp_path):
    target = tmp_path / "final_exr"
    assert write_delivery(target, ramp_frames(3), "exr", SIZE, META, tmp_path / "work") == 3
    files = sorted(target.glob("*.exr"))
    assert len(files) == 3
    assert exr_channel_types(files[0]) == {"B": 1, "G": 1, "R": 1}  # 1 = HALF
    info = ffprobe(files[0])["streams"][0]
    assert (info["codec_name"], info["width"], info["height"]) == ("exr", *SIZE)
    assert json.loads((target / SIDECAR).read_text())["colour"]["transfer"] == "linear"


def test_bad_options_are_typed_errors():
    with pytest.raises(DeliveryError, match="avi"):
        delivery_format("avi")
    with pytest.raises(DeliveryError, match="timecode"):
        check_timecode("01:00:00:24", 24)
    assert check_timecode("00:59:59:23", 24) == "00:59:59:23"


def test_a_failed_encode_leaves_nothing_under_the_final_name(tmp_path):
    def frames():
        yield from ramp_frames(2)
        raise RuntimeError("render crashed")

    target = tmp_path / "final.mov"
    with pytest.raises(RuntimeError):
        write_delivery(target, frames(), "prores", SIZE, META, tmp_path / "work", segment_frames=1)
    assert not target.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["work"]
