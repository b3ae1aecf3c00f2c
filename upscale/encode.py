"""Delivery files through PyAV: ProRes 422 HQ, H.265 Main10, 16-bit PNG and half-float EXR sequences.

Frames arrive one at a time as float32 RGB ``[H, W, 3]`` in [0, 1] (BT.709
primaries, BT.709-encoded values) and leave one at a time: nothing here holds a
clip, so a 4K render's memory does not grow with its length.

A delivery is written in **segments** so that a killed render resumes without
re-encoding what is done (the job runner owns the segment plan):

- a movie is encoded segment by segment, each segment a self-contained file
  (ProRes is intra-only; every H.265 segment is its own encode, so it starts
  with an IDR frame and no frame references across a segment boundary: a
  closed GOP), then :func:`join_segments` remuxes the packets into one file
  without decoding or re-encoding them;
- an image sequence's segment is simply its frames, one file each, and
  :func:`join_frames` moves them into the delivery directory with a sidecar.

Both final steps write under a temporary name and rename into place
(``previz.atomic``), so a half-written delivery is never visible under its
final name.  Every file carries BT.709 primaries/transfer/matrix and range
tags, a start timecode (movies: a ``tmcd`` track; sequences: the sidecar), and
the recipe and source draft id in its metadata.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np

from previz.atomic import atomic_dir, atomic_path, atomic_write
from previz.errors import OutputError, PrevizError

# FFmpeg's enum values (AVColorPrimaries / AVColorTransferCharacteristic / AVColorSpace / AVColorRange).
BT709 = 1
TRC_LINEAR = 8
RGB_MATRIX = 0
RANGE_LIMITED, RANGE_FULL = 1, 2

RESOLUTIONS: dict[str, tuple[int, int]] = {"uhd": (3840, 2160), "dci4k": (4096, 2160), "hd": (1920, 1080)}
DEFAULT_TIMECODE = "01:00:00:00"  # the conventional first frame of programme on an editor's timeline
SIDECAR = "previz.json"


class DeliveryError(PrevizError):
    """A delivery option (format, timecode, size) that cannot be written."""

    code = "delivery_error"


@dataclass(frozen=True)
class DeliveryFormat:
    name: str
    codec: str
    pix_fmt: str
    sequence: bool  # an image sequence (a directory of files) rather than one movie file
    ext: str
    container: str | None = None
    options: dict[str, str] = field(default_factory=dict)
    codec_tag: str | None = None
    description: str = ""


FORMATS: dict[str, DeliveryFormat] = {
    "prores": DeliveryFormat(
        "prores", "prores_ks", "yuv422p10le", False, ".mov", "mov",
        # profile 3 = 422 HQ; vendor apl0 is what Apple's own encoder writes, which some NLEs look for.
        {"profile": "3", "vendor": "apl0"}, None, "ProRes 422 HQ, 10-bit 4:2:2, QuickTime",
    ),
    "h265": DeliveryFormat(
        "h265", "libx265", "yuv420p10le", False, ".mp4", "mp4",
        # No B-frames: packets leave in presentation order, so each segment is a closed GOP with
        # pts == dts that joins by remux, and its timestamps are ours, not libx265's (whose
        # dts for a few-frame encode came out invalid in about one run in ten).
        {"preset": "fast", "crf": "16", "x265-params": "bframes=0:log-level=error"},
        # hvc1 (parameter sets out of band) is the tag QuickTime and Apple devices require.
        "hvc1", "H.265 Main10, 10-bit 4:2:0, MPEG-4",
    ),
    "png": DeliveryFormat("png", "png", "rgb48be", True, ".png", description="16-bit RGB PNG sequence"),
    "exr": DeliveryFormat(
        "exr", "exr", "gbrpf32le", True, ".exr", options={"format": "half", "compression": "zip1"},
        description="half-float OpenEXR sequence, scene-linear BT.709",
    ),
}


def delivery_format(name: str) -> DeliveryFormat:
    try:
        return FORMATS[name]
    except KeyError:
        raise DeliveryError(f"format = {name!r}: expected one of {', '.join(FORMATS)}",
                            field="format", value=name) from None


def delivery_size(resolution: str) -> tuple[int, int]:
    try:
        return RESOLUTIONS[resolution]
    except KeyError:
        raise DeliveryError(f"resolution = {resolution!r}: expected one of {', '.join(RESOLUTIONS)}",
                            field="resolution", value=resolution) from None


_TIMECODE = re.compile(r"^(\d\d):([0-5]\d):([0-5]\d):(\d\d)$")


def check_timecode(timecode: str, fps: int) -> str:
    m = _TIMECODE.match(timecode) if isinstance(timecode, str) else None
    if m is None or int(m.group(4)) >= fps:
        raise DeliveryError(f"timecode = {timecode!r}: expected HH:MM:SS:FF with FF below {fps}",
                            field="timecode", value=timecode)
    return timecode


def timecode_frame(timecode: str, fps: int) -> int:
    hh, mm, ss, ff = (int(x) for x in check_timecode(timecode, fps).split(":"))
    return ((hh * 60 + mm) * 60 + ss) * fps + ff


@dataclass(frozen=True)
class DeliveryMeta:
    """What every delivery file records about where it came from."""

    draft_id: str
    job_id: str
    recipe: dict[str, Any]
    fps: int
    timecode: str = DEFAULT_TIMECODE
    extra: dict[str, Any] = field(default_factory=dict)  # packs, label, options

    def tags(self) -> dict[str, str]:
        upscaler = self.extra.get("upscaler") or {}
        # Lanczos is a resampler, honest untrained; a network with random weights is not a VSR.
        trained = all(p.get("trained", False) for p in self.extra.get("packs", {}).values()) and (
            upscaler.get("name", "lanczos") == "lanczos" or bool(upscaler.get("trained")))
        label = "" if trained else " [UNTRAINED packs: not a meaningful picture]"
        # title and comment: the two keys both the mov and mp4 muxers write and ffprobe shows.
        return {
            "title": f"previz final of {self.draft_id}{label}: {self.recipe.get('prompt', '')}"[:240],
            "comment": json.dumps({**self.to_dict(), "trained": trained}, sort_keys=True, separators=(",", ":")),
        }

    def to_dict(self) -> dict[str, Any]:
        return {"draft_id": self.draft_id, "job_id": self.job_id, "recipe": self.recipe, "fps": self.fps,
                "timecode": self.timecode, **self.extra}


# ----------------------------------------------------------------------------- frames


def _check_frame(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    width, height = size
    if image.dtype != np.float32 or image.shape != (height, width, 3):
        raise ValueError(f"a delivery frame is float32 [{height}, {width}, 3]; got {image.dtype} {image.shape}")
    return np.clip(image, 0.0, 1.0)


def _tag(frame: av.VideoFrame, *, trc: int = BT709, matrix: int = BT709, full: bool = False) -> av.VideoFrame:
    frame.color_primaries = BT709
    frame.color_trc = trc
    frame.colorspace = matrix
    frame.color_range = RANGE_FULL if full else RANGE_LIMITED
    return frame


def _rgb48(image: np.ndarray) -> av.VideoFrame:
    return av.VideoFrame.from_ndarray(np.rint(image * 65535.0).astype(np.uint16), format="rgb48le")


def bt709_to_linear(v: np.ndarray) -> np.ndarray:
    """The inverse BT.709 OETF: EXR holds scene-linear light, by convention."""
    return np.where(v < 0.081, v / 4.5, ((v + 0.099) / 1.099) ** (1 / 0.45)).astype(np.float32)


def video_frame(image: np.ndarray, fmt: DeliveryFormat) -> av.VideoFrame:
    """One RGB frame in the format's pixel layout, with its colour tags."""
    if fmt.name == "exr":
        return _tag(av.VideoFrame.from_ndarray(np.ascontiguousarray(bt709_to_linear(image)), format="gbrpf32le"),
                    trc=TRC_LINEAR, matrix=RGB_MATRIX, full=True)
    if fmt.name == "png":
        return _tag(_rgb48(image).reformat(format="rgb48be"), matrix=RGB_MATRIX, full=True)
    # Y'CbCr with the BT.709 matrix, limited ("video") range: what broadcast and NLE timelines expect.
    frame = _rgb48(image).reformat(format=fmt.pix_fmt, dst_colorspace=BT709, dst_color_range=RANGE_LIMITED)
    return _tag(frame)


def _tag_codec(cc: Any, fmt: DeliveryFormat) -> None:
    cc.color_primaries = BT709
    if fmt.name == "exr":
        cc.color_trc, cc.colorspace, cc.color_range = TRC_LINEAR, RGB_MATRIX, RANGE_FULL
    elif fmt.name == "png":
        cc.color_trc, cc.colorspace, cc.color_range = BT709, RGB_MATRIX, RANGE_FULL
    else:
        cc.color_trc, cc.colorspace, cc.color_range = BT709, BT709, RANGE_LIMITED


# ----------------------------------------------------------------------------- image sequences


def encode_image(path: Path, image: np.ndarray, fmt: DeliveryFormat, size: tuple[int, int]) -> None:
    """One frame of a PNG/EXR sequence, written atomically."""
    frame = video_frame(_check_frame(image, size), fmt)
    cc: Any = av.CodecContext.create(fmt.codec, "w")
    cc.width, cc.height = size
    cc.pix_fmt = fmt.pix_fmt
    cc.time_base = Fraction(1, 1)
    cc.options = dict(fmt.options)
    _tag_codec(cc, fmt)
    frame.pts = 0
    data = b"".join(bytes(p) for p in [*cc.encode(frame), *cc.encode(None)])
    atomic_write(path, data)


def frame_name(stem: str, index: int, fmt: DeliveryFormat) -> str:
    return f"{stem}.{index:07d}{fmt.ext}"


def join_frames(frames: Sequence[Path], target: Path, fmt: DeliveryFormat, meta: DeliveryMeta,
                first_number: int) -> Path:
    """Move finished frame files into ``target`` (a directory) with a sidecar, atomically as a whole."""
    stem = target.name
    with atomic_dir(target) as tmp:
        for i, src in enumerate(frames):
            shutil.copyfile(src, tmp / frame_name(stem, first_number + i, fmt))
        sidecar = {
            **meta.to_dict(), "format": fmt.description, "frames": len(frames), "first_frame": first_number,
            "colour": {"primaries": "bt709", "transfer": "linear" if fmt.name == "exr" else "bt709",
                       "matrix": "rgb", "range": "full"},
        }
        (tmp / SIDECAR).write_text(json.dumps(sidecar, indent=1, sort_keys=True) + "\n")
    return target


# ----------------------------------------------------------------------------- movies


def encode_segment(path: Path, images: Iterable[np.ndarray], fmt: DeliveryFormat, size: tuple[int, int],
                   fps: int) -> int:
    """Encode frames into one self-contained movie segment (written atomically); returns the frame count."""
    width, height = size
    count = 0
    with atomic_path(path) as tmp, av.open(str(tmp), mode="w", format=fmt.container) as container:
        # An explicit time base of one frame: left to PyAV it is sometimes unset when the encoder
        # opens, and packet timestamps come out garbled (flaky "non monotonically increasing dts").
        stream: Any = container.add_stream(fmt.codec, rate=Fraction(fps, 1), time_base=Fraction(1, fps))
        stream.codec_context.time_base = Fraction(1, fps)
        stream.width, stream.height = width, height
        stream.pix_fmt = fmt.pix_fmt
        stream.options = dict(fmt.options)
        cc = stream.codec_context
        _tag_codec(cc, fmt)
        if fmt.codec_tag:
            cc.codec_tag = fmt.codec_tag
        muxed = 0

        def mux(packets: list[av.Packet]) -> None:
            # Every delivery codec here emits packets in presentation order (ProRes is intra-only,
            # H.265 runs without B-frames), so the n-th packet is frame n: stamp it so.
            nonlocal muxed
            for packet in packets:
                packet.pts = packet.dts = muxed
                packet.time_base = Fraction(1, fps)
                muxed += 1
            container.mux(packets)

        for image in images:
            frame = video_frame(_check_frame(image, size), fmt)
            frame.pts = count
            frame.time_base = Fraction(1, fps)
            mux(stream.encode(frame))
            count += 1
        if count == 0:
            raise ValueError("a segment needs at least one frame")
        mux(stream.encode(None))
        if muxed != count:
            raise RuntimeError(f"{fmt.codec} returned {muxed} packets for {count} frames")
    return count


def join_segments(segments: Sequence[Path], target: Path, fmt: DeliveryFormat, meta: DeliveryMeta) -> int:
    """Remux segments into the delivery file, packets copied as they are; returns the frame count.

    Timestamps are shifted by the frames before each segment.  Segments hold
    packets in presentation order with pts == dts (see :func:`encode_segment`),
    so the shifted timestamps increase across the joins.
    """
    if not segments:
        raise ValueError("nothing to join")
    frames = 0
    with atomic_path(target) as tmp, av.open(str(tmp), mode="w", format=fmt.container) as out:
        out.metadata.update(meta.tags())
        # The mov/mp4 muxer turns this into a tmcd track: the editor's timeline starts here.
        out.metadata["timecode"] = check_timecode(meta.timecode, meta.fps)
        ostream: Any = None
        for seg in segments:
            with av.open(str(seg)) as src:
                istream = src.streams.video[0]
                if ostream is None:
                    ostream = out.add_stream_from_template(istream)
                    if fmt.codec_tag:
                        ostream.codec_tag = fmt.codec_tag
                    ostream.time_base = istream.time_base
                    # The muxer sizes the tmcd track from the stream's frame rate, which a copied stream lacks.
                    ostream.codec_context.framerate = Fraction(meta.fps, 1)
                assert istream.time_base is not None  # mov/mp4 streams always have one
                scale = Fraction(1, meta.fps) / istream.time_base  # frames -> this segment's ticks
                offset = int(frames * scale)
                n = 0
                for packet in src.demux(istream):
                    if packet.size == 0:
                        continue  # the demuxer's end-of-stream marker
                    if packet.pts is not None:
                        packet.pts += offset
                    if packet.dts is not None:
                        packet.dts += offset
                    packet.stream = ostream
                    out.mux(packet)
                    n += 1
                frames += n
    return frames


def write_delivery(target: Path, images: Iterable[np.ndarray], fmt_name: str, size: tuple[int, int],
                   meta: DeliveryMeta, work: Path, segment_frames: int = 16) -> int:
    """Stream frames into a delivery in one go (segments under ``work``); returns the frame count.

    The job runner drives the same three steps unit by unit so that it can
    resume; this is the one-call form for tools and tests.
    """
    fmt = delivery_format(fmt_name)
    work.mkdir(parents=True, exist_ok=True)
    done: list[Path] = []
    batch: list[np.ndarray] = []
    index = 0

    def flush() -> None:
        if fmt.sequence:
            for image in batch:
                path = work / frame_name("f", len(done), fmt)
                encode_image(path, image, fmt, size)
                done.append(path)
        elif batch:
            path = work / f"segment{len(done):05d}{fmt.ext}"
            encode_segment(path, batch, fmt, size, meta.fps)
            done.append(path)
        batch.clear()

    for image in images:
        batch.append(image)
        index += 1
        if len(batch) == segment_frames:
            flush()
    flush()
    if fmt.sequence:
        join_frames(done, target, fmt, meta, timecode_frame(meta.timecode, meta.fps))
        return len(done)
    return join_segments(done, target, fmt, meta)


def check_delivery_target(target: Path) -> Path:
    """Fail before any work when the delivery's directory cannot take a file."""
    target = Path(target)
    parent = target.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        probe = parent / f".{target.name}.probe"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise OutputError(f"cannot write {target}: {parent} is not a writable directory ({exc.strerror or exc})",
                          field="output", value=str(target)) from None
    return target
