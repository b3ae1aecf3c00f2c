"""Video super-resolution to the delivery size: tiled with overlap blending, frames streaming through.

Two kinds of upscaler sit behind one :class:`Upscaler` shape:

- **Lanczos** (the default, labelled as such in every job and file): an honest
  resampler, not a network pretending to add detail.
- **A learned VSR pack** (kind ``vsr``): a Real-ESRGAN-family network
  (``SRVGGNetCompact`` or ``RRDBNet``) stored as safetensors and loaded through
  spandrel's ``ModelLoader`` from the state dict, exactly as a published
  Real-ESRGAN ``.safetensors`` file loads.  The network runs at its own integer
  ``scale``; Lanczos takes its output the rest of the way to the delivery size.
  A pack says whether it is trained; the job and the file record the
  upscaler's name, label and that flag, so random weights never pass for a VSR.

Temporal stability (:func:`stabilize`): a single-image network amplifies the
frame-to-frame noise of its input into flicker.  A VSR pack's
``temporal_window`` of *k* frames blends each source pixel with the same pixel
of the previous *k - 1* frames wherever it did not move (weight falling to zero
as the difference reaches a threshold), before the network sees it.  It holds
only the window's source frames, so a resumed render refills it from the
decoded frames and sees exactly what an uninterrupted one saw.

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
from typing import Any, Protocol

import numpy as np
import torch
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
    @property
    def fingerprint(self) -> str | None: ...  # the weights' identity (None: no weights), pinned by a job

    def __call__(self, crops: list[np.ndarray], box: Box, size: tuple[int, int]) -> np.ndarray: ...


@dataclass(frozen=True)
class Lanczos:
    """Lanczos-3 resampling per channel in float32 (PIL), no learned detail."""

    name: str = "lanczos"
    label: str = "Lanczos resampling (no trained VSR pack yet)"
    trained: bool = False
    temporal_window: int = 1
    fingerprint: str | None = None
    margin: int = 4  # Lanczos-3 reaches 3 source pixels; one more for rounding at the tile edge
    tile: int = 768

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

    def __init__(self, upscaler: Upscaler, src: tuple[int, int], dst: tuple[int, int], *, tile: int | None = None,
                 overlap: int = 32) -> None:
        if tile is None:
            tile = int(getattr(upscaler, "tile", 768))  # output pixels: the upscaler's own preference
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


def stabilize(crops: list[np.ndarray], threshold: float) -> np.ndarray:
    """The current frame (``crops[-1]``) averaged with earlier ones wherever the picture held still.

    Each earlier frame's pixel weighs ``1 - |difference| / threshold`` (the
    largest channel difference; zero past the threshold), so moving edges keep
    the current frame and still areas lose their frame-to-frame noise.  Pure.
    """
    current = crops[-1]
    total = current.copy()
    weight = np.ones(current.shape[:2] + (1,), np.float32)
    for earlier in crops[:-1]:
        w = np.clip(1.0 - np.abs(earlier - current).max(axis=2, keepdims=True) / threshold, 0.0, 1.0)
        total += w * earlier
        weight += w
    return total / weight


# Manifest class -> spandrel's architecture id for it.
SPANDREL_ARCHES = {"SRVGGNetCompact": "Compact", "RRDBNet": "ESRGAN"}


def import_spandrel() -> Any:
    """spandrel, or a one-line error saying how to install it.

    spandrel imports torchvision when it loads its architecture registry, for
    two architectures previz never loads (LaMa, RestoreFormer).  PyPI's
    torchvision wheels are built against CUDA torch and fail to import beside
    the CPU build, so a CPU install has none: ``previz[vsr]`` installs spandrel
    without dependencies, and while spandrel imports, torchvision's place is
    taken by a module whose functions refuse to run.  It leaves
    ``sys.modules`` once spandrel holds its names, so other libraries still
    find no torchvision (diffusers, for one, asks).  A working torchvision is
    used as it is.
    """
    import sys
    import types

    if "spandrel" in sys.modules:
        return sys.modules["spandrel"]
    placeholder: list[str] = []
    try:
        import torchvision.transforms.functional  # noqa: F401
    except Exception:  # absent, or a CUDA build beside CPU torch (RuntimeError at import)
        for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
            del sys.modules[name]

        def unavailable(*_args: Any, **_kwargs: Any) -> Any:
            raise RuntimeError("torchvision is not installed: this spandrel architecture needs it")

        functional = types.ModuleType("torchvision.transforms.functional")
        functional.InterpolationMode = types.SimpleNamespace(BILINEAR="bilinear", NEAREST="nearest")  # type: ignore[attr-defined]
        functional.rotate = functional.normalize = unavailable  # type: ignore[attr-defined]
        transforms = types.ModuleType("torchvision.transforms")
        transforms.functional = functional  # type: ignore[attr-defined]
        package = types.ModuleType("torchvision")
        package.transforms = transforms  # type: ignore[attr-defined]
        package.__path__ = []  # a package, so submodule imports resolve through sys.modules
        placeholder = ["torchvision", "torchvision.transforms", "torchvision.transforms.functional"]
        sys.modules.update(zip(placeholder, (package, transforms, functional), strict=True))
    try:
        import spandrel
    except ImportError as exc:
        from previz.errors import BackendUnavailableError

        raise BackendUnavailableError(f"a learned VSR pack needs spandrel ({exc.name or exc} is missing): "
                                      "pip install 'previz[vsr]' && pip install --no-deps 'spandrel>=0.4.2'",
                                      field="upscaler", value="spandrel") from None
    finally:
        for name in placeholder:
            sys.modules.pop(name, None)
    return spandrel


class NetworkUpscaler:
    """A Real-ESRGAN-family network from a VSR pack, then Lanczos to the tile's size.

    ``margin`` covers the network's receptive field (a border of reflected or
    zero padding would otherwise differ between a tile and the whole frame)
    plus Lanczos' reach.  ``tile`` (output pixels) defaults to the whole frame:
    the network runs at the source size, which a 720p source fits on any
    device, and every tile's margin is work done twice.  Lower it where memory
    is short.
    """

    tile = 4096

    def __init__(self, module: torch.nn.Module, *, name: str, label: str, trained: bool, scale: int,
                 temporal_window: int = 1, margin: int = 16, threshold: float = 0.04, device: str = "cpu",
                 half: bool = False, fingerprint: str | None = None) -> None:
        self.module, self.name, self.label, self.trained = module.eval(), name, label, trained
        self.fingerprint = fingerprint
        self.scale, self.temporal_window, self.margin, self.threshold = scale, temporal_window, margin, threshold
        self.device = torch.device(device)
        # fp16 on a GPU where the network supports it (as Real-ESRGAN runs); fp32 on a CPU.
        self.dtype = torch.float16 if half and self.device.type == "cuda" else torch.float32
        self.module.to(self.device, self.dtype)

    def __call__(self, crops: list[np.ndarray], box: Box, size: tuple[int, int]) -> np.ndarray:
        source = stabilize(crops, self.threshold) if len(crops) > 1 else crops[-1]
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(source.transpose(2, 0, 1)))[None].to(self.device, self.dtype)
            y = self.module(x)[0].clamp(0, 1).permute(1, 2, 0).float().cpu().numpy()
        s = float(self.scale)
        return Lanczos()([np.ascontiguousarray(y)], (box[0] * s, box[1] * s, box[2] * s, box[3] * s), size)


def _spandrel_model(state: dict[str, torch.Tensor], where: str) -> Any:
    """spandrel's ModelLoader on a state dict: its model descriptor (architecture, scale, module)."""
    from previz.errors import PackError

    spandrel = import_spandrel()
    try:
        return spandrel.ModelLoader().load_from_state_dict(state)
    except Exception as exc:  # spandrel's UnsupportedModelError and friends: not a network it knows
        raise PackError(f"{where}: spandrel cannot load the weights ({exc})", field="upscaler", value=None) from None


def describe_network(state: dict[str, torch.Tensor]) -> tuple[str, int]:
    """(manifest class, scale) of a Real-ESRGAN-family state dict, as spandrel detects it."""
    from previz.errors import PackError

    descriptor = _spandrel_model(state, "a VSR network")
    by_arch = {arch: cls for cls, arch in SPANDREL_ARCHES.items()}
    arch = descriptor.architecture.id
    if arch not in by_arch:
        raise PackError(f"these weights are a {arch} network; a VSR pack takes {', '.join(SPANDREL_ARCHES)}",
                        field="upscaler", value=arch)
    return by_arch[arch], int(descriptor.scale)


def load_vsr_pack(ref: str, *, device: str = "cpu") -> NetworkUpscaler:
    """A VSR pack's network through spandrel, from its safetensors state dict (as a Real-ESRGAN file loads)."""
    import safetensors.torch

    from previz.errors import PackError
    from previz.packs import check_safetensors_only, load_pack

    pack = load_pack(ref)
    if pack.kind != "vsr":
        raise PackError(f"pack {pack.id!r} is a {pack.kind} pack; --upscaler takes 'lanczos' or a vsr pack",
                        field="upscaler", value=ref)
    component = pack.component("upscaler")
    directory = pack.component_dir("upscaler")
    check_safetensors_only(directory)
    files = sorted(directory.glob("*.safetensors"))
    if len(files) != 1:
        raise PackError(f"pack {pack.id!r}: the upscaler is one .safetensors file; found {len(files)}",
                        field="upscaler", value=ref)
    descriptor = _spandrel_model(safetensors.torch.load_file(str(files[0])), f"pack {pack.id!r}")
    arch = descriptor.architecture.id
    if arch != SPANDREL_ARCHES[component.cls]:
        raise PackError(f"pack {pack.id!r}: the manifest says {component.cls}, the weights are a {arch} network",
                        field="upscaler", value=ref)
    if descriptor.scale != pack.scale:
        raise PackError(f"pack {pack.id!r}: the manifest says scale {pack.scale}, the network upscales "
                        f"x{descriptor.scale}", field="upscaler", value=ref)
    # The receptive field of a Compact net is one pixel per 3x3 conv; RRDBNet's is deeper than any tile
    # margin, and there the overlap blend hides the rest.
    margin = int(getattr(descriptor.model, "num_conv", 28)) + 4
    label = pack.label if pack.trained else f"{pack.label} (UNTRAINED weights: not a real upscaler)"
    return NetworkUpscaler(descriptor.model, name=pack.id, label=f"{component.cls} x{pack.scale}: {label}",
                           trained=pack.trained, scale=int(descriptor.scale),
                           temporal_window=pack.temporal_window or 1, margin=margin, device=device,
                           half=bool(descriptor.supports_half), fingerprint=pack.fingerprint())


def upscaler_for(name: str, *, device: str = "cpu") -> Upscaler:
    """The upscaler a job names: ``lanczos`` (the default) or a VSR pack (name or directory)."""
    if name == "lanczos":
        return Lanczos()
    from previz.errors import UnknownPackError

    try:
        return load_vsr_pack(name, device=device)
    except UnknownPackError:
        raise UnknownPackError(f"upscaler = {name!r}: not 'lanczos' and not an installed vsr pack "
                               "(`previz models` lists the packs here)", field="upscaler", value=name) from None
