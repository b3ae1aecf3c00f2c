"""Video super-resolution to the delivery size: tiled with overlap blending, one frame in, one frame out.

Until a trained VSR pack lands, the upscaler is **Lanczos** (labelled as such in
every job and file): an honest resampler, not a network pretending to add
detail.  A VSR pack (kind ``vsr``: an ``upscaler`` component, an integer
``scale`` and a temporal window) plugs in behind the same :class:`Upscaler`
shape; random weights never do.

Tiling exists for the networks: a 4K frame through a conv net does not fit a
consumer GPU in one piece.  Output tiles overlap and are blended with linear
ramps, and each tile is computed from a source crop with a margin, so no tile
sees an edge that the whole frame does not have.  For Lanczos the tiled result
equals the whole-frame result, which is how the tiler itself is tested.

The picture is fitted inside the delivery frame, aspect kept, and centred: a
16:9 render fills UHD and HD exactly and is pillarboxed in DCI 4K (4096×2160),
never cropped and never stretched.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from PIL import Image

Box = tuple[float, float, float, float]  # left, top, right, bottom in source pixels


class Upscaler(Protocol):
    """Resample a source crop: ``box`` (in crop coordinates) to an output tile of ``size``."""

    @property
    def name(self) -> str: ...
    @property
    def label(self) -> str: ...
    @property
    def trained(self) -> bool: ...
    @property
    def temporal_window(self) -> int: ...  # frames it looks at (1: per frame)
    @property
    def margin(self) -> int: ...  # source pixels of context a tile needs around its box

    def __call__(self, crops: list[np.ndarray], box: Box, size: tuple[int, int]) -> np.ndarray: ...


@dataclass(frozen=True)
class Lanczos:
    """Lanczos-3 resampling per channel in float32 (PIL), no learned detail."""

    name: str = "lanczos"
    label: str = "Lanczos resampling (no trained VSR pack yet)"
    trained: bool = False
    temporal_window: int = 1
    margin: int = 4  # Lanczos-3 reaches 3 source pixels; one more for rounding at the tile edge

    def __call__(self, crops: list[np.ndarray], box: Box, size: tuple[int, int]) -> np.ndarray:
        crop = crops[-1]  # the current frame: Lanczos has no temporal context
        out = np.empty((size[1], size[0], 3), np.float32)
        for c in range(3):
            image = Image.fromarray(np.ascontiguousarray(crop[:, :, c]), mode="F")
            out[:, :, c] = np.asarray(image.resize(size, Image.Resampling.LANCZOS, box=box))
        return out


def fit_rect(src: tuple[int, int], dst: tuple[int, int]) -> tuple[int, int, int, int]:
    """(x, y, width, height) of the picture inside the delivery frame: fitted, centred, aspect kept."""
    sw, sh = src
    dw, dh = dst
    scale = min(dw / sw, dh / sh)
    w, h = min(dw, round(sw * scale)), min(dh, round(sh * scale))
    return (dw - w) // 2, (dh - h) // 2, w, h


def _ramp(length: int, overlap_start: int, overlap_end: int) -> np.ndarray:
    """Blend weights along one axis of a tile: rising over the leading overlap, falling over the trailing one."""
    w = np.ones(length, np.float32)
    if overlap_start:
        w[:overlap_start] = (np.arange(overlap_start, dtype=np.float32) + 0.5) / overlap_start
    if overlap_end:
        w[-overlap_end:] = np.minimum(w[-overlap_end:], (np.arange(overlap_end, 0, -1, dtype=np.float32) - 0.5)
                                      / overlap_end)
    return w


def _starts(total: int, tile: int, overlap: int) -> list[int]:
    if total <= tile:
        return [0]
    stride = tile - overlap
    starts = list(range(0, total - tile, stride)) + [total - tile]
    return sorted(set(starts))


class TiledVSR:
    """Upscale frames to a delivery size through an :class:`Upscaler`, tile by tile."""

    def __init__(self, upscaler: Upscaler, src: tuple[int, int], dst: tuple[int, int], *, tile: int = 768,
                 overlap: int = 32) -> None:
        if overlap * 2 >= tile:
            raise ValueError(f"overlap ({overlap}) must be less than half the tile ({tile})")
        self.upscaler, self.src, self.dst, self.tile, self.overlap = upscaler, src, dst, tile, overlap
        self.rect = fit_rect(src, dst)
        self.tiles_per_frame = len(_starts(self.rect[2], tile, overlap)) * len(_starts(self.rect[3], tile, overlap))

    def upscale(self, window: list[np.ndarray]) -> np.ndarray:
        """The delivery frame for ``window[-1]``; earlier entries are temporal context (oldest first)."""
        sw, sh = self.src
        x0, y0, w, h = self.rect
        sx, sy = w / sw, h / sh
        picture = np.zeros((h, w, 3), np.float32)
        weight = np.zeros((h, w, 1), np.float32)
        xs, ys = _starts(w, self.tile, self.overlap), _starts(h, self.tile, self.overlap)
        m = self.upscaler.margin
        for ty in ys:
            th = min(self.tile, h - ty)
            for tx in xs:
                tw = min(self.tile, w - tx)
                # The source region this output tile samples, widened by the kernel's reach.
                bx0, by0, bx1, by1 = tx / sx, ty / sy, (tx + tw) / sx, (ty + th) / sy
                cx0, cy0 = max(0, int(bx0) - m), max(0, int(by0) - m)
                cx1, cy1 = min(sw, int(np.ceil(bx1)) + m), min(sh, int(np.ceil(by1)) + m)
                crops = [f[cy0:cy1, cx0:cx1] for f in window]
                out = self.upscaler(crops, (bx0 - cx0, by0 - cy0, bx1 - cx0, by1 - cy0), (tw, th))
                wy = _ramp(th, self.overlap if ty > 0 else 0, self.overlap if ty + th < h else 0)
                wx = _ramp(tw, self.overlap if tx > 0 else 0, self.overlap if tx + tw < w else 0)
                wt = (wy[:, None] * wx[None, :])[:, :, None]
                picture[ty:ty + th, tx:tx + tw] += out * wt
                weight[ty:ty + th, tx:tx + tw] += wt
        picture /= weight
        np.clip(picture, 0.0, 1.0, out=picture)
        if (w, h) == self.dst:
            return picture
        frame = np.zeros((self.dst[1], self.dst[0], 3), np.float32)  # black bars outside the picture
        frame[y0:y0 + h, x0:x0 + w] = picture
        return frame

    def stream(self, frames: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        """Delivery frames, one per input frame, holding at most the temporal window in memory."""
        window: collections.deque[np.ndarray] = collections.deque(maxlen=self.upscaler.temporal_window)
        for frame in frames:
            if frame.shape != (self.src[1], self.src[0], 3):
                raise ValueError(f"VSR input is [{self.src[1]}, {self.src[0]}, 3]; got {frame.shape}")
            window.append(np.asarray(frame, np.float32))
            yield self.upscale(list(window))


def upscaler_for(name: str) -> Upscaler:
    """The upscaler a job names.  Only Lanczos exists until a trained VSR pack lands."""
    if name == "lanczos":
        return Lanczos()
    from previz.errors import PackError

    raise PackError(f"upscaler = {name!r}: only 'lanczos' is available (no trained VSR pack is installed)",
                    field="upscaler", value=name)
