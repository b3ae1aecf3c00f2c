"""A take: recipe in, 30 fps frames out, chunk by chunk.

:class:`DraftModel` holds what is expensive to set up (the text encoder and the
engines for one pack, backend and size: denoiser and decoder, and for a
block-causal student the context pass and the cached step).  :class:`Take` is one take as an
explicit step whose whole state is the next chunk and the context latents;
:meth:`DraftModel.generate` is the generator over it: each window is denoised,
then decoded one latent frame at a time, and frames are yielded as soon as
they exist.  A caller stops a take by setting ``cancel`` (checked before every
denoising step) or by simply not asking for more.  On an asynchronous device
(CUDA) a take is pipelined: each chunk's decoding is queued behind its window,
and the next window behind that decoding, so the device never waits for the
host to read frames (:meth:`DraftModel.generate`).

Latents, conditioning and decoded frames are torch tensors on the engines'
device from end to end; a frame leaves it once, as uint8, for the encoders
(``Frame.image``), and a chunk's latents once, for the draft store.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import importlib.metadata
import threading
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from engines import Engine, create_engine
from engines.device import HostCopy, upload
from engines.precision import text_precision
from previz.blockout import control as blockout_control
from previz.blockout import control_latent, poses_to_tensors, single_threaded
from previz.camera import camera_path, plucker_latent
from previz.draft_graphs import build_decoder_graph, build_denoiser_graph, camera_channels, control_spec
from previz.errors import engine_errors
from previz.frame_decoder import EngineFrameDecoder, FrameDecoder, VAEFrameDecoder, streams_with_vae
from previz.packs import Pack, previz_home
from previz.recipe import Recipe, frame_count, resolve
from previz.sampler import Chunk, chunk_noise, flow_sigmas, guided, plan_chunks, sample_window
from previz.scene import parse_scene
from previz.text import TextEncoder, text_shape

# The shot of DraftModel.warm_take: objects in view, so the blockout renderer runs too.
WARM_UP_SHOT = "a red box left of a tall blue pillar on sand at noon"


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
    image: np.ndarray  # [H, W, 3] uint8 RGB, on the host: the edge where JPEG and MP4 encoders take over
    last: bool


@dataclass
class TakeStats:
    """What a take cost, filled in as it runs (read it after iterating)."""

    started: float = field(default_factory=time.perf_counter)
    first_frame_s: float | None = None
    denoiser_calls: int = 0  # steps: whole windows, or a block-causal student's new frames
    context_calls: int = 0  # a block-causal student's context passes, one per window after the first
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
        """``engine_options`` go to both engines: ``precision`` (fp32 | bf16 | fp16 | fp8; default bf16 on
        CUDA, fp32 on CPU), ``compile`` (torch.compile; default on CUDA), ``compile_mode``, ``compile_scope``
        (blocks on CUDA, model elsewhere), ``attention`` (torch's attention kernel), ``gelu_epilogue`` (CUDA: the
        feed-forward's GELU in its matmul's epilogue): see engines.torch_backend; and ``device``."""
        if pack.draft is None:
            raise ValueError(f"pack {pack.id!r} is not a draft pack")
        self.pack = pack
        self.backend = backend
        self.width = width or pack.draft.width
        self.height = height or pack.draft.height
        self.fps = pack.draft.fps
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
        text_tokens, text_dim = text_shape(pack)  # the manifest's: the encoder loads after the denoiser
        load_dtype = None  # fp32, which the ONNX exports need
        if backend == "torch":  # the torch engine's own precision: no fp32 copy of a bf16 student
            from engines.torch_backend import compute_dtype

            with engine_errors():
                load_dtype = compute_dtype(**engine_options)
        graphs = build_denoiser_graph(pack, self.width, self.height, text_tokens=text_tokens, text_dim=text_dim,
                                      dtype=load_dtype)
        self.denoiser_graphs = graphs
        self.denoiser_graph, self.tokens_per_frame = graphs.window, graphs.tokens_per_frame
        with engine_errors():
            self.denoiser: Engine = create_engine(backend, self.denoiser_graph, self.cache_dir, **engine_options)
            # A block-causal student's two other graphs, on the same weights (previz.causal_context).
            self.context_pass: Engine | None = None
            self.cached_step: Engine | None = None
            if graphs.context is not None and graphs.cached is not None:
                self.context_pass = create_engine(backend, graphs.context, self.cache_dir, **engine_options)
                self.cached_step = create_engine(backend, graphs.cached, self.cache_dir, **engine_options)
        self.device = self.denoiser.device
        # Where the denoiser runs behind the host (queued CUDA work), a take builds the next window's inputs
        # while the device denoises this one.
        self.asynchronous = self.denoiser.queues_work
        # ...and there a take is pipelined (see generate).  Its own flag, so a benchmark can compare.
        self.pipelined = self.asynchronous
        # On the denoiser's device, so the states never cross from the host per take.
        self.text = text or TextEncoder(pack, device=self.device,
                                        precision=text_precision(self.denoiser.info.precision, self.device.type))
        # The decoder seam (previz.frame_decoder): a frame-wise graph on the same backend, or, for an
        # imported Wan checkpoint, its own VAE streamed with a causal cache carried across chunks.
        self.decoder_graph = None if streams_with_vae(pack) else build_decoder_graph(pack, self.width, self.height)
        self.decoder: Engine | None = None
        self.frame_decoder: FrameDecoder
        if self.decoder_graph is None:
            self.frame_decoder = VAEFrameDecoder(pack, device=self.device)
        else:
            with engine_errors():
                self.decoder = create_engine(backend, self.decoder_graph, self.cache_dir, **engine_options)
            self.frame_decoder = EngineFrameDecoder(self.decoder, pack.latent)

    def warmup(self, progress: Callable[[str], None] | None = None) -> None:
        """Pay every one-off cost before the first take: text encoder set-up, and each engine's first run
        (for a compiled engine, its compile: a minute or more the first time, seconds from inductor's cache)."""
        say = progress or (lambda _message: None)
        self.text("")  # the encoder's first call pays one-off initialisation
        for name, engine in self.engines():
            compiled = "torch.compile" in engine.info.providers
            say(f"warming up the {name} ({engine.info.backend}, {engine.info.precision}, {engine.info.device}"
                + (", compiling: the first start takes minutes, later ones reuse the cache)" if compiled else ")"))
            start = time.perf_counter()
            with engine_errors():
                engine.warmup()
            say(f"{name} ready in {time.perf_counter() - start:.1f} s")

    def warm_take(self, progress: Callable[[str], None] | None = None) -> TakeStats:
        """A take's first window, its frames thrown away, so that what a take pays once is paid before the
        first client's: the camera and blockout code's first runs, the text encoder on a real prompt, and on
        a GPU the pinned buffers.  For a server, after :meth:`warmup` and before it reports ready."""
        say = progress or (lambda _message: None)
        say("warming up a take")
        stats = TakeStats()
        assert self.pack.draft is not None
        recipe = Recipe(prompt=WARM_UP_SHOT, seconds=min(1.0, self.pack.draft.max_seconds),
                        camera={"preset": "orbit_left"})
        frames = self.generate(recipe, stats=stats)
        try:
            next(frames, None)
        finally:
            frames.close()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # what the take queued runs now, not in the first client's take
        say(f"take ready: first frame after {1000 * (stats.first_frame_s or 0.0):.0f} ms")
        return stats

    def engines(self) -> list[tuple[str, Engine | FrameDecoder]]:
        """Every engine of this model, by a name for people, in the order a take first runs them."""
        engines: list[tuple[str, Engine | FrameDecoder]] = [("denoiser", self.denoiser)]
        if self.context_pass is not None and self.cached_step is not None:
            engines += [("denoiser's context pass", self.context_pass), ("denoiser's cached step", self.cached_step)]
        return [*engines, ("decoder", self.frame_decoder)]

    def close(self) -> None:
        for _name, engine in self.engines():
            engine.close()

    def engine_info(self) -> dict[str, Any]:
        info = {
            name: {"backend": e.info.backend, "device": e.info.device, "precision": e.info.precision,
                   "providers": list(e.info.providers),
                   **{k: e.info.details[k] for k in ("compile_mode", "compile_scope", "compile_s", "attention",
                                                     "gelu_epilogue") if k in e.info.details}}
            for name, e in (("denoiser", self.denoiser), ("decoder", self.frame_decoder))
        } | {"text": {"device": str(self.text.device), "precision": self.text.precision}}
        if self.context_pass is not None:
            info["denoiser"]["context"] = "block-causal, keys and values cached per window"
        return info

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

    def camera_conditioning(self, recipe: Recipe) -> Callable[[int, int], torch.Tensor] | None:
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

        def window(first: int, count: int) -> torch.Tensor:
            maps = plucker_latent(
                path, fps=self.fps, frames=frames, width=width, height=height, temporal=layout.temporal,
                spatial=layout.spatial, causal_first_frame=layout.causal_first_frame,
                latents=range(first, first + count),
            )
            # Contiguous once here, not at every denoiser call that reads it.
            return upload(torch.from_numpy(maps).permute(1, 0, 2, 3)[None].contiguous(), self.device)

        return window

    def control_conditioning(self, recipe: Recipe) -> Callable[[int, int], torch.Tensor] | None:
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

        def window(first: int, count: int) -> torch.Tensor:
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
            return upload(maps.permute(1, 0, 2, 3)[None].contiguous(), self.device)

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
        width, height = recipe.width // spec.scale, recipe.height // spec.scale  # as the model sees it
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
        self, prompt_states: torch.Tensor, extra: dict[str, torch.Tensor], stats: TakeStats
    ) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """The denoiser engine as the sampler's model: (x, timesteps) -> velocity."""
        conditioning = {"text": prompt_states, **extra}

        def model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            start = time.perf_counter()
            inputs = {"latents": x, "timesteps": t, **conditioning}
            with engine_errors():
                velocity = self.denoiser.run(inputs)["velocity"]
            stats.denoiser_calls += 1
            stats.denoise_s += time.perf_counter() - start
            return velocity

        return model

    def _cached_model(
        self, prompt_states: torch.Tensor, context: torch.Tensor, extra: dict[str, torch.Tensor], stats: TakeStats
    ) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """A block-causal student's model for one window: its context runs once, here, into every layer's
        keys and values; the callable then denoises the new frames alone, attending to them."""
        context_pass, cached_step = self.context_pass, self.cached_step
        assert context_pass is not None and cached_step is not None
        n_ctx = context.shape[2]
        start = time.perf_counter()
        inputs = {"latents": context, "text": prompt_states,
                  "timesteps": torch.zeros(1, n_ctx * self.tokens_per_frame, device=context.device),
                  **{name: value[:, :, :n_ctx] for name, value in extra.items()}}
        with self._releasing_context(), engine_errors():
            kv = context_pass.run(inputs)["kv"]
        stats.context_calls += 1
        stats.denoise_s += time.perf_counter() - start
        # The new frames' conditioning made contiguous once here, not by the engine at each of the window's steps.
        conditioning = {"text": prompt_states, "kv": kv,
                        **{name: value[:, :, n_ctx:].contiguous() for name, value in extra.items()}}

        def model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            start = time.perf_counter()
            with self._releasing_context(), engine_errors():
                velocity = cached_step.run({"latents": x, "timesteps": t, **conditioning})["velocity"]
            stats.denoiser_calls += 1
            stats.denoise_s += time.perf_counter() - start
            return velocity

        return model

    @contextlib.contextmanager
    def _releasing_context(self) -> Iterator[None]:
        """A torch graph that fails half way (out of memory) leaves the shared slot holding the keys and
        values it was given or recording: let them go, so that the memory can be handed back."""
        try:
            yield
        except BaseException:
            if self.denoiser_graphs.slot is not None:
                self.denoiser_graphs.slot.use("full")
            raise

    def generate(
        self,
        recipe: Recipe,
        *,
        cancel: threading.Event | None = None,
        on_chunk: Callable[[Chunk, np.ndarray], None] | None = None,
        stats: TakeStats | None = None,
    ) -> Generator[Frame, None, None]:
        """Frames of one take, in order.  ``on_chunk`` receives each chunk's kept latents, on the host
        as float32 numpy (for the draft store).

        ``cancel`` is checked before every denoising step, so a superseded take stops queuing work
        within one step rather than one window (on a GPU, what it queued already still runs: at most the
        rest of one window).  When the model is pipelined (an asynchronous device: CUDA) the next window
        is queued as soon as this chunk's first frame is out, behind this chunk's decoding, so the device
        goes from one window to the next without waiting for the host to read frames.  If that window
        fails, the error is raised after this chunk's frames, which are computed already.
        """
        take = Take(self, recipe, stats, cancel=cancel)
        queued: Denoised | None = None  # the next chunk, already on the device's queue
        try:
            while queued is not None or not take.done:
                if take.cancelled():
                    take.stats.cancelled = True
                    return
                chunk, latents, frames = queued if queued is not None else take.step()
                queued, failed = None, None
                if on_chunk is not None:
                    on_chunk(chunk, latents.wait().float().numpy())
                for n, frame in enumerate(frames):
                    yield frame
                    # After the first frame has gone, not before: that frame is the time to first frame.
                    if n == 0 and self.pipelined and not take.done and not take.cancelled():
                        try:
                            queued = take.step()
                        except TakeCancelled:
                            raise
                        except Exception as exc:  # this chunk's frames exist: they go out first
                            failed = exc
                if failed is not None:
                    raise failed
                take.stats.chunks_done += 1
        except TakeCancelled:
            take.stats.cancelled = True


class TakeCancelled(Exception):
    """Raised by :meth:`Take.step` when the take's ``cancel`` event is set before one of its denoising steps."""


class Denoised(NamedTuple):
    """What :meth:`Take.step` returns: one chunk, denoised."""

    chunk: Chunk
    latents: HostCopy  # its kept latents [1, C, keep, h, w], on their way to the host (the draft store)
    frames: Iterator[Frame]  # its frames, in order, each as soon as it is decoded


@dataclass(frozen=True)
class WindowInputs:
    chunk: int  # the window's chunk index
    noise: torch.Tensor  # [1, C, new, h, w]
    extra: dict[str, torch.Tensor]  # conditioning by denoiser input name (camera, control), whole window


@dataclass
class TakeState:
    """All a take carries from one chunk boundary to the next: small, explicit, checkpointable.

    The frame index is not state: it follows from the chunk (see :meth:`Take.first_frame`).
    """

    next_chunk: int = 0
    context: torch.Tensor | None = None  # the last window's clean latents, the next window's context


class Take:
    """One take as an explicit step, the same shape as a final job's refine: ``state`` plus ``step()``.

    Each :meth:`step` denoises the next chunk, advances the state, and returns
    :class:`Denoised`: the chunk, its kept latents on their way to the host, and
    an iterator of its frames, one latent frame's at a time (decoded as they are
    read, or, when the model is pipelined, all queued at once behind the window).
    A take built with a saved :class:`TakeState` carries on from that chunk with
    exactly the latents an uninterrupted take would have made, and, with a
    frame-wise decoder, exactly its frames; a streamed Wan VAE (an imported
    checkpoint) rebuilds its causal cache from the context latents, so its
    frames come close but not bit for bit (see :mod:`previz.frame_decoder`).
    """

    def __init__(self, model: DraftModel, recipe: Recipe, stats: TakeStats | None = None,
                 state: TakeState | None = None, cancel: threading.Event | None = None) -> None:
        self.model = model
        self.cancel = cancel  # checked before each denoising step: a set event makes step() raise TakeCancelled
        self.recipe = recipe = resolve(dataclasses.replace(recipe, backend=model.backend), model.pack)
        if (recipe.width, recipe.height) != (model.width, model.height):
            raise ValueError(
                f"this DraftModel runs at {model.width}x{model.height}; the recipe asks {recipe.width}x{recipe.height}"
            )
        draft = model.pack.draft
        assert draft is not None and recipe.steps is not None and recipe.shift is not None
        self.stats = stats if stats is not None else TakeStats()
        self.state = state or TakeState()
        self.layout = model.pack.latent
        self.total_frames = frame_count(recipe, model.fps)
        self.chunks = plan_chunks(self.layout.latent_frames(self.total_frames), draft.window_frames,
                                  draft.context_frames)
        self.sigmas = flow_sigmas(recipe.steps, recipe.shift)
        self.window = draft.window_frames
        self.camera_window = model.camera_conditioning(recipe)
        self.control_window = model.control_conditioning(recipe)
        self.prompt = _states(model.text(recipe.prompt), model.device)
        self.negative = (_states(model.text(recipe.negative_prompt), model.device)
                         if recipe.guidance != 1.0 else None)
        resume = None if self.done else self.chunks[self.state.next_chunk].start
        previous = self.state.context  # the frames before a resumed take's next chunk, to warm a stateful decoder
        self.frame_stream = model.frame_decoder.open(resume or 0, previous)  # one decoder stream per take
        self._ahead: WindowInputs | None = None  # the next window's inputs, built early (see step)

    @property
    def done(self) -> bool:
        return self.state.next_chunk >= len(self.chunks)

    def first_frame(self, chunk: Chunk) -> int:
        """Index of the chunk's first video frame: the frames of every latent frame before it."""
        return min(self.total_frames, self.layout.video_frames(chunk.start)) if chunk.start else 0

    def window_inputs(self, chunk: Chunk) -> WindowInputs:
        """What the host makes for one window: its noise and its camera and control maps, sent to the device.

        A function of the recipe and the chunk alone, so building it early changes nothing.
        """
        model, layout = self.model, self.layout
        lat_h, lat_w = layout.latent_size(model.width, model.height)
        noise = chunk_noise(self.recipe.seed, chunk.index, (1, layout.channels, chunk.new, lat_h, lat_w),
                            model.device)
        first = chunk.start - chunk.context  # the window's first latent frame, context included
        extra: dict[str, torch.Tensor] = {}
        if self.camera_window is not None:
            extra["camera"] = self.camera_window(first, self.window)
        if self.control_window is not None:
            start = time.perf_counter()
            extra["control"] = self.control_window(first, self.window)
            self.stats.control_s += time.perf_counter() - start
        return WindowInputs(chunk.index, noise, extra)

    def step(self) -> Denoised:
        """Denoise the next chunk and advance the state.

        On an asynchronous device this only queues work (the window's steps, the copy of its latents,
        and, when the model is pipelined, its decoding); the host first waits when it reads the latents
        or a frame.  A step cut short by ``cancel`` raises :class:`TakeCancelled` and leaves the state
        as it was.
        """
        model, stats = self.model, self.stats
        chunk = self.chunks[self.state.next_chunk]
        self._check_cancel()
        ahead, self._ahead = self._ahead, None
        window = ahead if ahead is not None and ahead.chunk == chunk.index else self.window_inputs(chunk)
        previous = self.state.context
        context = None if chunk.context == 0 or previous is None else previous[:, :, -chunk.context:]
        model_for: Callable[[torch.Tensor], Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]
        if context is not None and model.cached_step is not None:
            # A block-causal student: the context lives in the model's cached keys and values, not in x.
            model_for, in_window = (lambda states: model._cached_model(states, context, window.extra, stats)), None
        else:
            model_for, in_window = (lambda states: model._model(states, window.extra, stats)), context
        velocity = model_for(self.prompt)
        if self.negative is not None:
            velocity = guided(velocity, model_for(self.negative), float(self.recipe.guidance or 1.0))
        clean = sample_window(self._cancellable(velocity), window.noise, self.sigmas, context=in_window,
                              tokens_per_frame=model.tokens_per_frame)
        self.state = TakeState(next_chunk=self.state.next_chunk + 1,
                               context=clean if context is None else torch.cat([context, clean], dim=2))
        kept = clean[:, :, : chunk.keep]
        latents = HostCopy(kept)  # queued before the decoding: reading it waits for the window's steps alone
        decoded = self._decoded(kept)
        if model.asynchronous and not self.done:
            # The device is still denoising this window (its frames are read only as they are decoded), so
            # the host builds the next window's inputs now, and that window starts the moment it is asked for.
            # Not where run() computed the window already (a CPU, ONNX Runtime): there it would only delay
            # this window's frames.
            self._ahead = self.window_inputs(self.chunks[self.state.next_chunk])
        return Denoised(chunk, latents, self._frames(chunk, decoded))

    def cancelled(self) -> bool:
        return self.cancel is not None and self.cancel.is_set()

    def _check_cancel(self) -> None:
        if self.cancelled():
            raise TakeCancelled

    def _cancellable(self, model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
                     ) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        def checked(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            self._check_cancel()
            return model(x, t)

        return checked

    def _decoded(self, kept: torch.Tensor) -> Iterator[np.ndarray]:
        """Each kept latent frame's video frames, [n, H, W, 3] uint8 on the host, in order.

        When the model is pipelined every latent frame's decoding is queued now, behind the window, and
        each is read when it is done; otherwise each is decoded when it is asked for, so the first frames
        leave before the chunk's last latent frame is decoded.
        """
        count = kept.shape[2]
        if self.model.pipelined:
            queued = [self._decode(kept[:, :, j]) for j in range(count)]
            return (frames.wait().numpy() for frames in queued)
        return (self._decode(kept[:, :, j]).wait().numpy() for j in range(count))

    def _decode(self, latent: torch.Tensor) -> HostCopy:
        """One latent frame [1, C, h, w] -> exactly the video frames it holds, [n, H, W, 3] uint8, on their
        way to the host.

        The uint8 conversion runs on the decoder's device, so one small copy per
        latent frame is all that crosses to the host.
        """
        start = time.perf_counter()
        with engine_errors():
            images = self.frame_stream.decode(latent)
        frames = HostCopy(to_uint8(images))
        self.stats.decoder_calls += 1
        self.stats.decode_s += time.perf_counter() - start
        return frames

    def _frames(self, chunk: Chunk, decoded: Iterator[np.ndarray]) -> Iterator[Frame]:
        stats = self.stats
        emitted = self.first_frame(chunk)
        for images in decoded:
            for image in images:
                if emitted == self.total_frames:
                    break
                if stats.first_frame_s is None:
                    stats.first_frame_s = time.perf_counter() - stats.started
                yield Frame(index=emitted, chunk=chunk.index, pts=emitted, image=image,
                            last=emitted == self.total_frames - 1)
                emitted += 1
                stats.frames = emitted


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """[0, 1] floats -> uint8, rounding half to even as ``np.rint`` does, on the images' own device."""
    return (images.float() * 255.0).round().clamp(0, 255).to(torch.uint8)


def _states(states: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Text states (the encoder's cached tensor) on ``device``: the tensor itself where it already is,
    so a cached prompt costs no copy.  Shared with the cache: the take only ever reads it."""
    return states.to(device, torch.float32)
