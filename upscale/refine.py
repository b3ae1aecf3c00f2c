"""MoE refinement: an approved draft's recipe (and, where possible, its latents) through both experts.

The loop is short and written here, over diffusers' models, because
``WanVideoToVideoPipeline`` has one transformer:

1. **Handoff.**  When the draft pack's latent space is the final pack's, the
   draft's stored latents are upsampled to the final size (*latent handoff*);
   otherwise the draft's frames are resized and encoded with the final pack's
   VAE (*pixel handoff*).  Either way the clean latents are renoised to the
   first noise level that ``strength`` runs (the scheduler's ``scale_noise``).
2. **Denoise** with the sampler's pure functions: ``experts(high, low,
   boundary)`` routes each step to the high-noise expert while t >= boundary
   and to the low-noise expert below, each inside its own guidance.  Same
   prompt, seed and camera path as the draft.  :class:`Refine` is the loop as
   an explicit step whose state (the step index and the latent ``x``) is what
   a job checkpoints, the same shape as a draft :class:`previz.take.Take`.
3. **Decode** with the Wan VAE in spatial tiles with overlap, one latent frame
   at a time, each tile carrying its own causal cache from frame to frame: frames
   leave as soon as they exist and a clip is never decoded whole.

On CUDA only the active expert is on the device; the other waits in pinned host
memory and they swap once, at the boundary (:class:`ExpertPlacement`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from engines.device import checked_device
from engines.precision import resolve_precision, torch_dtype
from previz.camera import camera_path, plucker_latent
from previz.errors import BackendUnavailableError, PackError, engine_errors
from previz.packs import Pack, load_component
from previz.sampler import Model, chunk_noise, euler_step, experts, guided, renoise, strength_sigmas
from previz.text import TextEncoder
from previz.vae_stream import VAEStream, latent_stats

# The final's noise is its own stream of (seed, stream): distinct from every draft chunk's.
FINAL_NOISE_STREAM = 1 << 30


@dataclass(frozen=True)
class RefinePlan:
    """Everything that fixes a refine's result; a job stores it and resumes against it."""

    width: int
    height: int
    frames: int  # video frames delivered
    fps: int
    latent_frames: int
    steps: int
    shift: float
    strength: float
    seed: int
    handoff: str  # "latent" or "pixel"
    sigmas: tuple[float, ...]  # the noise levels run, first (renoise level) to last (0)

    @property
    def units(self) -> int:
        return len(self.sigmas) - 1

    def to_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}


@dataclass(frozen=True)
class RefineState:
    """All a refine carries from one step to the next: the step index and the latents."""

    next_step: int
    x: np.ndarray


class Refine:
    """The refine as an explicit step, the same shape as a draft :class:`previz.take.Take`.

    ``state`` is everything to checkpoint; a refine built from a saved state
    carries on with exactly the steps an uninterrupted one would run.
    """

    def __init__(self, model: Model, plan: RefinePlan, state: RefineState) -> None:
        self.model, self.plan, self.state = model, plan, state

    @property
    def done(self) -> bool:
        return self.state.next_step >= self.plan.units

    def step(self) -> RefineState:
        i = self.state.next_step
        sigma, sigma_next = self.plan.sigmas[i], self.plan.sigmas[i + 1]
        x = euler_step(self.model, torch.from_numpy(self.state.x), sigma, sigma_next,
                       torch.tensor([1000.0 * sigma], dtype=torch.float32))
        self.state = RefineState(i + 1, x.numpy())
        return self.state


def handoff_kind(draft_space: str | None, final: Pack) -> str:
    """'latent' when the draft's latents live in the final pack's latent space, else 'pixel'.

    A latent space id names one VAE and its layout (channels, compression,
    causal first frame), so equal ids are the whole test; the shapes are still
    checked when the latents are read.
    """
    return "latent" if draft_space and draft_space == final.latent.space else "pixel"


def check_size(pack: Pack, width: int, height: int) -> None:
    assert pack.final is not None
    multiple = pack.final.size_multiple
    for name, value in (("width", width), ("height", height)):
        if value % multiple or not 32 <= value <= 3840:
            raise PackError(f"size {width}x{height}: {name} must be a multiple of {multiple} between 32 and 3840",
                            field="size", value=f"{width}x{height}")


class ExpertPlacement:
    """Which expert is on the device.  On CUDA the idle one waits in pinned host memory.

    Both A14B experts are 57 GB in bf16, more than a 24 or 48 GB card holds, so
    by default (``offload=None``) a CUDA device holds one expert at a time; the
    denoising order (all high-noise steps, then all low-noise ones) makes that
    one swap per render, at the boundary.
    """

    def __init__(self, modules: dict[str, torch.nn.Module], device: torch.device,
                 offload: bool | None = None) -> None:
        self.modules, self.device = modules, device
        self.offload = device.type == "cuda" if offload is None else offload
        self._pin = self.offload and torch.cuda.is_available()  # pinned pages copy to the GPU asynchronously
        self.active: str | None = None
        self.swaps = 0
        for module in modules.values():
            if self.offload:
                self._to_host(module)
            else:
                module.to(device)

    def _to_host(self, module: torch.nn.Module) -> None:
        module.to("cpu")
        if self._pin:
            for p in module.parameters():
                p.data = p.data.pin_memory()

    def activate(self, name: str) -> torch.nn.Module:
        if self.offload and self.active != name:
            if self.active is not None:
                self._to_host(self.modules[self.active])
            self.modules[name].to(self.device, non_blocking=self._pin)
            self.swaps += 1
        self.active = name
        return self.modules[name]

    def peak_device_bytes(self) -> int | None:
        """Peak memory allocated on the CUDA device so far (None elsewhere)."""
        return int(torch.cuda.max_memory_allocated(self.device)) if self.device.type == "cuda" else None


@dataclass
class RefineStats:
    calls: dict[str, int] = field(default_factory=lambda: {"transformer": 0, "transformer_2": 0})
    timesteps: dict[str, list[float]] = field(default_factory=lambda: {"transformer": [], "transformer_2": []})


class FinalModel:
    """A final pack loaded for refinement and decoding (CPU by default).

    The experts run at ``precision`` (fp32 | bf16 | fp16; None: bf16 on CUDA,
    fp32 on a CPU), loaded at it with ``torch_dtype``: diffusers otherwise loads
    a bf16 checkpoint as fp32, and an A14B expert is 57 GB in fp32 against 28 GB
    in bf16, twice, in host memory and then on the GPU.  The modules diffusers
    keeps in fp32 stay fp32, and so do the timesteps and the VAE (as
    WanPipeline runs it).
    """

    def __init__(self, pack: Pack, *, device: str = "cpu", precision: str | None = None,
                 text: TextEncoder | None = None, offload: bool | None = None) -> None:
        if pack.kind != "final" or pack.final is None or pack.boundary_ratio is None:
            raise PackError(f"pack {pack.id!r} is not a final pack with sampling defaults", field="pack",
                            value=pack.id)
        self.pack = pack
        if precision == "fp8":
            raise BackendUnavailableError("the final stage runs fp32, bf16 or fp16; fp8 is for draft engines",
                                          field="precision", value=precision)
        with engine_errors():  # previz's typed errors at this edge, as for the draft engines
            self.device = checked_device(device)
            self.precision = resolve_precision(precision, self.device.type)
        self.dtype = torch_dtype(self.precision)
        # On the host, at the checkpoint's stored dtype: a render encodes two prompts, and on a GPU UMT5-XXL
        # would hold 11 GB beside the experts for the whole render.
        self.text = text or TextEncoder(pack)
        experts_ = {name: load_component(pack, name, torch_dtype=self.dtype)
                    for name in ("transformer", "transformer_2")}
        cam = pack.conditioning.camera
        self.camera_channels = cam.channels if cam else 0
        for name, module in experts_.items():
            if module.config.in_channels != pack.latent.channels + self.camera_channels:
                raise PackError(f"pack {pack.id!r}: {name} takes {module.config.in_channels} channels; the layout "
                                f"and camera say {pack.latent.channels} + {self.camera_channels}")
        self.placement = ExpertPlacement(experts_, self.device, offload)
        self.vae = load_component(pack, "vae").to(self.device)
        self.latents_mean, self.latents_std = latent_stats(self.vae)
        self.stats = RefineStats()

    # ------------------------------------------------------------------ 1. plan and handoff

    def plan(self, recipe: dict[str, Any], *, frames: int, fps: int, width: int, height: int, strength: float,
             handoff: str) -> RefinePlan:
        assert self.pack.final is not None
        check_size(self.pack, width, height)
        steps, shift = self.pack.final.steps, self.pack.final.shift
        sigmas = strength_sigmas(steps, shift, strength)
        return RefinePlan(width=width, height=height, frames=frames, fps=fps,
                          latent_frames=self.pack.latent.latent_frames(frames), steps=steps, shift=shift,
                          strength=strength, seed=int(recipe.get("seed", 0)), handoff=handoff,
                          sigmas=tuple(float(s) for s in sigmas))

    def latent_shape(self, plan: RefinePlan) -> tuple[int, int, int, int, int]:
        lat_h, lat_w = self.pack.latent.latent_size(plan.width, plan.height)
        return (1, self.pack.latent.channels, plan.latent_frames, lat_h, lat_w)

    def start_from_latents(self, plan: RefinePlan, draft_latents: np.ndarray) -> np.ndarray:
        """Latent handoff: the draft's latents upsampled to the final size, renoised to strength."""
        shape = self.latent_shape(plan)
        if draft_latents.ndim != 5 or draft_latents.shape[1] != shape[1]:
            raise PackError(f"draft latents {draft_latents.shape} do not fit the final layout {shape}")
        x0 = F.interpolate(torch.from_numpy(np.ascontiguousarray(draft_latents, np.float32)), size=shape[2:],
                           mode="trilinear", align_corners=False).numpy()
        return self._renoise(plan, x0)

    @torch.inference_mode()
    def start_from_frames(self, plan: RefinePlan, frames: Iterable[np.ndarray]) -> np.ndarray:
        """Pixel handoff: the draft's frames resized to the final size and encoded by the final VAE.

        Streamed in the VAE's own causal chunks (one frame, then ``temporal`` at
        a time, its cache carried between them, as diffusers' ``_encode`` runs),
        so the draft is never held whole at the final size: memory stays flat
        in clip length on this path too.  A clip short of ``1 + 4k`` frames is
        padded with its last frame.
        """
        vae = self.vae
        need = self.pack.latent.video_frames(plan.latent_frames)
        cache: list[Any] = [None] * vae._cached_conv_counts["encoder"]
        means: list[torch.Tensor] = []
        batch: list[torch.Tensor] = []
        last: torch.Tensor | None = None
        count = 0

        def resized(frame: np.ndarray) -> torch.Tensor:
            image = torch.from_numpy(np.ascontiguousarray(frame, np.float32)).permute(2, 0, 1)[None]
            image = F.interpolate(image, size=(plan.height, plan.width), mode="bicubic", align_corners=False,
                                  antialias=True).clamp(0, 1)
            return image[0] * 2 - 1  # [3, H, W] in [-1, 1]

        def flush() -> None:
            x = torch.stack(batch, dim=1)[None].to(self.device)  # [1, 3, n, H, W]
            moments = vae.quant_conv(vae.encoder(x, feat_cache=cache, feat_idx=[0]))  # a 1x1x1 conv: stateless
            means.append(moments[:, : vae.config.z_dim].float().cpu())  # the posterior's mode is its mean
            batch.clear()

        for frame in frames:
            if count == need:
                break
            last = resized(frame)
            batch.append(last)
            count += 1
            if len(batch) == (1 if not means else self.pack.latent.temporal):
                flush()
        if last is None:
            raise PackError("the draft has no frames to hand over", field="draft", value=0)
        while count < need:
            batch.append(last)
            count += 1
            if len(batch) == (1 if not means else self.pack.latent.temporal):
                flush()
        z = torch.cat(means, dim=2)
        x0 = ((z - self.latents_mean) / self.latents_std).numpy()
        return self._renoise(plan, x0)

    def _renoise(self, plan: RefinePlan, x0: np.ndarray) -> np.ndarray:
        noise = chunk_noise(plan.seed, FINAL_NOISE_STREAM, x0.shape)
        return renoise(torch.from_numpy(x0), noise, plan.sigmas[0]).numpy()

    # ------------------------------------------------------------------ 2. the MoE model

    def model(self, recipe: dict[str, Any], plan: RefinePlan) -> Model:
        """The sampler's model: experts(guided(high), guided(low), boundary) over this recipe."""
        assert self.pack.final is not None and self.pack.boundary_ratio is not None
        prompt = self.text(str(recipe.get("prompt", "")))
        negative = self.text(str(recipe.get("negative_prompt", "")))
        camera = self._camera(recipe, plan)

        def expert(name: str, states: torch.Tensor) -> Model:
            def run(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
                self.stats.calls[name] += 1
                self.stats.timesteps[name].append(float(t.max()))
                module = self.placement.activate(name)
                with torch.inference_mode():
                    latents = x
                    if camera is not None:
                        latents = torch.cat([latents, camera], dim=1)
                    out = module(latents.to(self.device, self.dtype), t.to(self.device),
                                 states.to(self.device, self.dtype), return_dict=False)[0]
                return out.float().cpu()

            return run

        final = self.pack.final
        high = guided(expert("transformer", prompt), expert("transformer", negative), final.guidance)
        low = guided(expert("transformer_2", prompt), expert("transformer_2", negative), final.guidance_2)
        return experts(high, low, self.pack.boundary_ratio * 1000.0)

    def _camera(self, recipe: dict[str, Any], plan: RefinePlan) -> torch.Tensor | None:
        if not self.camera_channels:
            return None
        layout = self.pack.latent
        path = camera_path(recipe.get("camera") or {"preset": "static"}, float(recipe.get("seconds", 1.0)))
        maps = plucker_latent(path, fps=plan.fps, frames=plan.frames, width=plan.width, height=plan.height,
                              temporal=layout.temporal, spatial=layout.spatial,
                              causal_first_frame=layout.causal_first_frame)
        return torch.from_numpy(np.ascontiguousarray(maps.transpose(1, 0, 2, 3)[None], dtype=np.float32))

    # ------------------------------------------------------------------ 3. decode, streaming

    def decode(self, latents: np.ndarray, frames: int, *, tile: int = 32, overlap: int = 8,
               on_latent_frame: Callable[[int], None] | None = None) -> Iterator[np.ndarray]:
        """Frames [H, W, 3] float32 in [0, 1], one latent frame at a time, in spatial tiles.

        ``tile`` and ``overlap`` are in latent cells (x8 pixels).  Each tile has
        its own causal cache, carried from one latent frame to the next, as
        diffusers' ``tiled_decode`` keeps one per tile over the whole clip
        (:class:`previz.vae_stream.VAEStream`, which the draft path uses too).
        """
        stream = VAEStream(self.vae, tile=tile, overlap=overlap)
        z = torch.from_numpy(np.ascontiguousarray(latents, np.float32))
        emitted = 0
        for k in range(z.shape[2]):
            video = stream.decode(z[:, :, k])
            if on_latent_frame is not None:
                on_latent_frame(k)
            for image in video:
                if emitted == frames:
                    return
                emitted += 1
                yield np.ascontiguousarray(image.cpu().numpy(), dtype=np.float32)

    def decode_reference(self, latents: np.ndarray, *, tile: int | None = None, overlap: int = 8) -> np.ndarray:
        """diffusers' own whole-clip decode, [F, H, W, 3] in [0, 1]: the yardstick for :meth:`decode`."""
        if tile is not None:
            px, stride = tile * self.pack.latent.spatial, (tile - overlap) * self.pack.latent.spatial
            self.vae.enable_tiling(tile_sample_min_height=px, tile_sample_min_width=px,
                                   tile_sample_stride_height=stride, tile_sample_stride_width=stride)
        else:
            self.vae.disable_tiling()
        try:
            with torch.inference_mode():
                z = torch.from_numpy(np.ascontiguousarray(latents, np.float32)) * self.latents_std + self.latents_mean
                video = self.vae.decode(z.to(self.device), return_dict=False)[0]
        finally:
            self.vae.disable_tiling()  # the VAE is shared: leave it as it was
        return ((video[0].permute(1, 2, 3, 0).float().cpu().numpy() + 1) * 0.5).astype(np.float32)

