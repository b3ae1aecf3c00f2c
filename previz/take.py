"""A take: recipe in, 30 fps frames out, chunk by chunk.

:class:`DraftModel` holds what is expensive to set up (the text encoder and the
two engines for one pack, backend and size).  :meth:`DraftModel.generate` is a
generator: each window is denoised, then decoded one latent frame at a time,
and frames are yielded as soon as they exist.  A caller stops a take by
setting ``cancel`` (checked between chunks) or by simply not asking for more.
"""

from __future__ import annotations

import base64
import dataclasses
import importlib.metadata
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engines import Engine, create_engine
from previz.blockout import control as blockout_control
from previz.blockout import control_latent, poses_to_tensors, single_threaded
from previz.camera import camera_path, plucker_latent
from previz.draft_graphs import build_decoder_graph, build_denoiser_graph, camera_channels, control_spec
from previz.packs import Pack, previz_home
from previz.recipe import Recipe, frame_count, resolve
from previz.sampler import Chunk, chunk_noise, flow_sigmas, guided, plan_chunks, sample_window
from previz.scene import parse_scene
from previz.text import TextEncoder


def default_cache_dir() -> Path:
    return previz_home() / "cache"


def previz_version() -> str:
    try:
        return importlib.metadata.version("previz")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


@dataclass(frozen=True)
class Frame:
    index: int  # position in the take, from 0
    chunk: int
    pts: int  # presentation time in 1/fps units
    image: np.ndarray  # [H, W, 3] uint8 RGB
    last: bool


@dataclass
class TakeStats:
    """What a take cost, filled in as it runs (read it after iterating)."""

    started: float = field(default_factory=time.perf_counter)
    first_frame_s: float | None = None
    denoiser_calls: int = 0
    decoder_calls: int = 0
    chunks_done: int = 0
    frames: int = 0
    cancelled: bool = False  # stopped by the caller's cancel event before the last frame
    denoise_s: float = 0.0  # wall time inside the denoiser engine
    control_s: float = 0.0  # wall time rendering the blockout control
    decode_s: float = 0.0  # wall time inside the decoder engine


class DraftModel:
    def __init__(
        self,
        pack: Pack,
        backend: str = "torch",
        *,
        width: int | None = None,
        height: int | None = None,
        cache_dir: Path | None = None,
        text: TextEncoder | None = None,
        **engine_options: Any,
    ) -> None:
        if pack.draft is None:
            raise ValueError(f"pack {pack.id!r} is not a draft pack")
        self.pack = pack
        self.backend = backend
        self.width = width or pack.draft.width
        self.height = height or pack.draft.height
        self.fps = pack.draft.fps
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
        self.text = text or TextEncoder(pack)
        self.denoiser_graph, self.tokens_per_frame = build_denoiser_graph(
            pack, self.width, self.height, text_tokens=self.text.tokens, text_dim=self.text.dim
        )
        self.decoder_graph = build_decoder_graph(pack, self.width, self.height)
        self.denoiser: Engine = create_engine(backend, self.denoiser_graph, self.cache_dir, **engine_options)
        self.decoder: Engine = create_engine(backend, self.decoder_graph, self.cache_dir, **engine_options)

    def warmup(self) -> None:
        self.text("")  # the encoder's first call pays one-off initialisation
        self.denoiser.warmup()
        self.decoder.warmup()

    def close(self) -> None:
        self.denoiser.close()
        self.decoder.close()

    def engine_info(self) -> dict[str, Any]:
        return {
            name: {"backend": e.info.backend, "device": e.info.device, "precision": e.info.precision,
                   "providers": list(e.info.providers)}
            for name, e in (("denoiser", self.denoiser), ("decoder", self.decoder))
        }

    def metadata(self, recipe: Recipe) -> dict[str, Any]:
        """What a written take records: the recipe plus the pack and engines behind it."""
        return {
            "previz": previz_version(),
            "recipe": dataclasses.replace(recipe, backend=self.backend).to_dict(),
            "pack": self.pack.recipe_stamp(),
            "fps": self.fps,
            "frames": frame_count(recipe, self.fps),
            "engines": self.engine_info(),
        }

    # ------------------------------------------------------------------ generation

    def camera_conditioning(self, recipe: Recipe) -> Callable[[int, int], np.ndarray] | None:
        """For camera packs: (first latent frame, count) -> [1, 6*T, count, h, w] Plücker maps.

        Built window by window, so a long take's camera never delays its first frame.
        """
        if not camera_channels(self.pack):
            return None
        assert recipe.width and recipe.height
        layout = self.pack.latent
        path = camera_path(recipe.camera, float(recipe.seconds))
        frames = frame_count(recipe, self.fps)
        width, height = recipe.width, recipe.height

        def window(first: int, count: int) -> np.ndarray:
            maps = plucker_latent(
                path, fps=self.fps, frames=frames, width=width, height=height, temporal=layout.temporal,
                spatial=layout.spatial, causal_first_frame=layout.causal_first_frame,
                latents=range(first, first + count),
            )
            return np.ascontiguousarray(maps.transpose(1, 0, 2, 3)[None])

        return window

    def control_conditioning(self, recipe: Recipe) -> Callable[[int, int], np.ndarray] | None:
        """For control packs: (first latent frame, count) -> [1, K, count, h, w] blockout control.

        Rendered window by window along the camera path, like the camera maps.
        """
        spec = control_spec(self.pack)
        if spec is None:
            return None
        assert recipe.width and recipe.height and recipe.scene is not None
        layout = self.pack.latent
        path = camera_path(recipe.camera, float(recipe.seconds))
        scene = parse_scene(recipe.scene)
        frames = frame_count(recipe, self.fps)
        width, height = recipe.width, recipe.height
        rendered: dict[int, torch.Tensor] = {}  # latent frame -> its control: windows share their context frames

        def window(first: int, count: int) -> np.ndarray:
            wanted = range(first, first + count)
            missing = [i for i in wanted if i not in rendered]
            if missing:
                maps = control_latent(
                    scene, path, fps=self.fps, frames=frames, width=width, height=height,
                    temporal=layout.temporal, spatial=layout.spatial, causal_first_frame=layout.causal_first_frame,
                    scale=spec.scale, latents=missing,
                )
                for i, m in zip(missing, maps, strict=True):
                    rendered[i] = m
                for i in [i for i in rendered if i < first]:
                    del rendered[i]  # a take moves forward: earlier frames are never asked for again
            maps = torch.stack([rendered[i] for i in wanted])
            return np.ascontiguousarray(maps.permute(1, 0, 2, 3)[None].numpy())

        return window

    def control_preview(self, recipe: Recipe) -> dict[str, Any] | None:
        """The take's first control frame, small, for the page: raw RGB bytes (base64) of albedo and depth.

        Raw pixels rather than an image file, so the page draws them with
        ``putImageData`` under its strict content policy.  None for packs without control.
        """
        spec = control_spec(self.pack)
        if spec is None:
            return None
        assert recipe.width and recipe.height and recipe.scene is not None
        width, height = recipe.width // 2, recipe.height // 2
        path = camera_path(recipe.camera, float(recipe.seconds))
        c2w, focal = poses_to_tensors(path, np.zeros(1), width)
        with single_threaded():
            control = blockout_control(parse_scene(recipe.scene), c2w, focal, width, height)[0]
        maps = ((control + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()  # [h, w, 4]
        depth = np.repeat(maps[..., :1], 3, axis=-1)
        return {"width": width, "height": height,
                "albedo": base64.b64encode(np.ascontiguousarray(maps[..., 1:]).tobytes()).decode(),
                "depth": base64.b64encode(depth.tobytes()).decode()}

    def _model(
        self, prompt_states: np.ndarray, extra: dict[str, np.ndarray], stats: TakeStats
    ) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
        """The denoiser engine as the sampler's model: (x, timesteps) -> velocity."""
        conditioning = {"text": prompt_states, **extra}

        def model(x: np.ndarray, t: np.ndarray) -> np.ndarray:
            start = time.perf_counter()
            inputs = {"latents": x, "timesteps": t, **conditioning}
            velocity = self.denoiser.run(inputs)["velocity"]
            stats.denoiser_calls += 1
            stats.denoise_s += time.perf_counter() - start
            return velocity

        return model

    def generate(
        self,
        recipe: Recipe,
        *,
        cancel: threading.Event | None = None,
        on_chunk: Callable[[Chunk, np.ndarray], None] | None = None,
        stats: TakeStats | None = None,
    ) -> Iterator[Frame]:
        """Frames of one take, in order.  ``on_chunk`` receives each chunk's kept latents."""
        recipe = resolve(dataclasses.replace(recipe, backend=self.backend), self.pack)
        if (recipe.width, recipe.height) != (self.width, self.height):
            raise ValueError(
                f"this DraftModel runs at {self.width}x{self.height}; the recipe asks {recipe.width}x{recipe.height}"
            )
        assert self.pack.draft is not None and recipe.steps is not None and recipe.shift is not None
        stats = stats if stats is not None else TakeStats()
        layout = self.pack.latent
        total_frames = frame_count(recipe, self.fps)
        total_latents = layout.latent_frames(total_frames)
        chunks = plan_chunks(total_latents, self.pack.draft.window_frames, self.pack.draft.context_frames)
        sigmas = flow_sigmas(recipe.steps, recipe.shift)
        lat_h, lat_w = layout.latent_size(self.width, self.height)

        window = self.pack.draft.window_frames
        camera_window = self.camera_conditioning(recipe)
        control_window = self.control_conditioning(recipe)
        prompt = self.text(recipe.prompt)
        negative = self.text(recipe.negative_prompt) if recipe.guidance != 1.0 else None

        emitted = 0
        previous: np.ndarray | None = None  # clean latents of the last window
        for chunk in chunks:
            if cancel is not None and cancel.is_set():
                stats.cancelled = True
                return
            noise = chunk_noise(recipe.seed, chunk.index, (1, layout.channels, chunk.new, lat_h, lat_w))
            extra: dict[str, np.ndarray] = {}
            if camera_window is not None:
                extra["camera"] = camera_window(chunk.start - chunk.context, window)
            if control_window is not None:
                start = time.perf_counter()
                extra["control"] = control_window(chunk.start - chunk.context, window)
                stats.control_s += time.perf_counter() - start
            model = self._model(prompt, extra, stats)
            if negative is not None:
                model = guided(model, self._model(negative, extra, stats), float(recipe.guidance or 1.0))
            context = None if chunk.context == 0 or previous is None else previous[:, :, -chunk.context:]
            clean = sample_window(model, noise, sigmas, context=context, tokens_per_frame=self.tokens_per_frame)
            previous = clean if context is None else np.concatenate([context, clean], axis=2)
            kept = clean[:, :, : chunk.keep]
            if on_chunk is not None:
                on_chunk(chunk, kept)
            for j in range(chunk.keep):
                latent_index = chunk.start + j
                start = time.perf_counter()
                images = self.decoder.run({"latents": np.ascontiguousarray(kept[:, :, j])})["frames"]
                stats.decoder_calls += 1
                stats.decode_s += time.perf_counter() - start
                if layout.causal_first_frame and latent_index == 0:
                    images = images[-1:]  # the first causal latent frame holds one video frame
                for image in images:
                    if emitted == total_frames:
                        break
                    if stats.first_frame_s is None:
                        stats.first_frame_s = time.perf_counter() - stats.started
                    yield Frame(
                        index=emitted,
                        chunk=chunk.index,
                        pts=emitted,
                        image=to_uint8(image),
                        last=emitted == total_frames - 1,
                    )
                    emitted += 1
                    stats.frames = emitted
            stats.chunks_done += 1


def to_uint8(image: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)
