"""Draft takes to H.264 MP4 through PyAV, with the recipe in the container metadata.

The file appears atomically (previz.atomic): frames go to a temp file beside the
target, which is fsynced and renamed once the encoder has flushed, so an
interrupted take never leaves a truncated MP4 where a good one was expected.
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
from previz.errors import OutputError

RECIPE_TAG = "comment"  # a standard MP4 tag: ffprobe and most players show it


def metadata_tags(meta: dict[str, Any]) -> dict[str, str]:
    """Container tags for a take: the JSON recipe, and an honest label of the pack."""
    pack = meta.get("pack", {})
    label = "untrained pack: drafts are noise" if not pack.get("trained", False) else "trained pack"
    return {
        "title": f"previz draft: {meta.get('recipe', {}).get('prompt', '')}"[:200],
        RECIPE_TAG: json.dumps(meta, sort_keys=True, separators=(",", ":")),
        "description": f"previz {meta.get('previz', '')}; pack {pack.get('id', '?')} ({label})",
    }


def check_output_path(path: Path) -> Path:
    """Fail before any work if ``path`` cannot receive a file."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"output {path} is a directory; give a file name such as {path / 'take.mp4'}",
                          field="output", value=str(path))
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write {path}: {parent} is not a writable directory",
                          field="output", value=str(path))
    return path


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
                frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
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
    with av.open(str(path)) as container:
        return json.loads(container.metadata[RECIPE_TAG])  # type: ignore[no-any-return]
