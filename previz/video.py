"""Draft takes to H.264 MP4 through PyAV, with the recipe in the container metadata.

The file appears atomically (previz.atomic): frames go to a temp file beside the
target, which is fsynced and renamed once the encoder has flushed, so an
interrupted take never leaves a truncated MP4 where a good one was expected.

Frames are converted RGB -> YUV with the BT.709 matrix into limited range, and
the stream is tagged so (primaries, transfer, matrix, range): players and
compositors then read the colours as they were made instead of guessing.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np

from previz.atomic import atomic_path
from previz.errors import InputFileError, OutputError

RECIPE_TAG = "comment"  # a standard MP4 tag: ffprobe and most players show it
BT709 = 1  # the H.273 code for BT.709 primaries, transfer and matrix alike
LIMITED_RANGE = 1  # AVCOL_RANGE_MPEG: 16-235 luma, what H.264 players expect


def metadata_tags(meta: dict[str, Any]) -> dict[str, str]:
    """Container tags for a take: the JSON recipe, and an honest label of the pack."""
    pack = meta.get("pack", {})
    label = "untrained pack: drafts are noise" if not pack.get("trained", False) else "trained pack"
    return {
        "title": f"previz draft: {meta.get('recipe', {}).get('prompt', '')}"[:200],
        RECIPE_TAG: json.dumps(meta, sort_keys=True, separators=(",", ":")),
        "description": f"previz {meta.get('previz', '')}; pack {pack.get('id', '?')} ({label})",
    }


def check_output_path(path: Path, *, overwrite: bool = True, make_dirs: bool = True,
                      suffix: str | None = None) -> Path:
    """Fail before any work if ``path`` cannot receive a file.

    The library default (overwrite, create directories) suits the draft store; the
    CLI passes ``overwrite=False, make_dirs=False, suffix=".mp4"`` unless asked.
    """
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"output {path} is a directory; give a file name such as {path / 'take.mp4'}",
                          field="output", value=str(path))
    if suffix is not None and path.suffix.lower() != suffix:
        raise OutputError(f"output {path} does not end in {suffix}, but previz writes an MP4 there; "
                          f"name it {path.with_suffix(suffix).name}, or add --force", field="output", value=str(path))
    if not overwrite and path.exists():
        raise OutputError(f"output {path} already exists; give another name, or add --force to replace it",
                          field="output", value=str(path))
    if not make_dirs and not path.parent.is_dir():
        raise OutputError(f"cannot write {path}: the directory {path.parent} does not exist "
                          "(create it, or add --mkdir)", field="output", value=str(path))
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write {path}: {parent} is not a writable directory",
                          field="output", value=str(path))
    return path


def resolve_output(path: Path, *, dir_name: str | None, force: bool, mkdir: bool) -> Path:
    """The CLI's rule for ``-o``, the same for `draft` and `drafts export`.

    A file name must end in .mp4 and must not exist; its directory must exist.
    An existing directory takes the file as ``dir_name`` (``<draft id>.mp4``).
    ``force`` lifts the first two rules, ``mkdir`` the third.
    """
    path = Path(path)
    if path.is_dir():
        if dir_name is None:
            raise OutputError(f"output {path} is a directory; give a file name such as {path / 'take.mp4'}",
                              field="output", value=str(path))
        path = path / dir_name
    return check_output_path(path, overwrite=force, make_dirs=mkdir, suffix=None if force else ".mp4")


def write_mp4(
    path: Path,
    frames: Iterable[np.ndarray],
    *,
    fps: int,
    meta: dict[str, Any],
    crf: int = 18,
) -> int:
    """Encode RGB uint8 frames [H, W, 3]; returns the number written."""
    path = check_output_path(path)
    count = 0
    with atomic_path(path, suffix=".mp4") as tmp:
        with av.open(str(tmp), mode="w", format="mp4", options={"movflags": "+faststart"}) as container:
            container.metadata.update(metadata_tags(meta))
            stream: Any = None
            for image in frames:
                if stream is None:
                    height, width = image.shape[:2]
                    stream = container.add_stream("libx264", rate=Fraction(fps, 1))
                    stream.width, stream.height = width, height
                    stream.pix_fmt = "yuv420p"
                    stream.options = {"crf": str(crf), "preset": "veryfast"}
                    codec = stream.codec_context
                    codec.color_primaries = codec.color_trc = codec.colorspace = BT709
                    codec.color_range = LIMITED_RANGE
                frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24").reformat(
                    format="yuv420p", src_colorspace="itu709", dst_colorspace="itu709",
                    src_color_range="JPEG", dst_color_range="MPEG",
                )
                frame.pts = count
                frame.time_base = Fraction(1, fps)
                container.mux(stream.encode(frame))
                count += 1
            if stream is None:
                raise ValueError("no frames to write")
            container.mux(stream.encode(None))
    return count


def read_recipe(path: Path) -> dict[str, Any]:
    """The metadata a take was written with (the inverse of :func:`metadata_tags`)."""
    path = Path(path)
    if not path.exists():
        raise InputFileError(f"{path} does not exist", field="take", value=str(path))
    if not path.is_file():
        raise InputFileError(f"{path} is not a file; give a previz take (.mp4)", field="take", value=str(path))
    try:
        with av.open(str(path)) as container:
            text = container.metadata.get(RECIPE_TAG)
    except OSError as exc:  # before FFmpegError: PyAV's permission errors are both
        raise InputFileError(f"cannot read {path}: {exc.strerror}", field="take", value=str(path)) from None
    except av.error.FFmpegError:
        raise InputFileError(f"{path} is not a video file previz can read; give a previz take (.mp4)",
                             field="take", value=str(path)) from None
    try:
        meta = json.loads(text) if text is not None else None
    except ValueError:
        meta = None
    if not isinstance(meta, dict) or not isinstance(meta.get("recipe"), dict):
        raise InputFileError(f"{path} is a video but not a previz take: it carries no previz recipe",
                             field="take", value=str(path))
    return meta
