"""Few-step flow-matching sampling and the chunk plan, as pure functions over a model callable.

Conventions (rectified flow, as Wan and diffusers' FlowMatchEulerDiscreteScheduler):
``x_sigma = (1 - sigma) * x0 + sigma * noise``; the model predicts the velocity
``noise - x0`` given the timestep ``1000 * sigma``.

Streaming by chunks (DESIGN.md): a take is a sequence of fixed-size *windows*
of latent frames.  The first window is all noise.  Every later window starts
with the last ``context`` latent frames of the previous one, already clean, at
timestep 0 (Wan 2.2 TI2V's per-token timesteps), and continues with fresh noise.
Every window has the same shape, so compiled engines see one static shape, and
the first frames are ready after one window.

A model here is any ``Callable[[x, token_timesteps], velocity]``, k-diffusion
style: engines, guidance and conditioning are wrapped around it by the caller.
Everything is a torch tensor on the model's device, so a GPU take's latents
stay on the GPU; the state ``x`` is fp32 whatever precision the model computes
at (a bf16 velocity is promoted when it is added).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from engines.device import upload

Model = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
NUM_TRAIN_TIMESTEPS = 1000.0


def flow_sigmas(steps: int, shift: float) -> torch.Tensor:
    """``steps + 1`` noise levels from 1 down to 0, warped by ``shift``.

    Shift > 1 spends more of the few steps at high noise, where a low
    resolution draft decides its layout (the SD3/Wan time shift).
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    sigmas = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
    shifted = shift * sigmas / (1.0 + (shift - 1.0) * sigmas)
    return shifted.to(torch.float32)


def token_timesteps(noise_level: torch.Tensor, tokens_per_frame: int) -> torch.Tensor:
    """Per-token timesteps [1, frames * tokens_per_frame] from a per-frame sigma vector.

    Tokens are frame-major after the patch embedding, so each frame's sigma is
    repeated once per spatial token.
    """
    per_frame = noise_level.to(torch.float32) * NUM_TRAIN_TIMESTEPS
    return per_frame.repeat_interleave(tokens_per_frame)[None, :]


def guided(cond: Model, uncond: Model, scale: float) -> Model:
    """Classifier-free guidance, for teachers; distilled students run with scale 1."""
    if scale == 1.0:
        return cond

    def model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        v_u = uncond(x, t)
        return v_u + scale * (cond(x, t) - v_u)

    return model


def experts(high: Model, low: Model, boundary_timestep: float) -> Model:
    """A two-expert MoE as one model: ``high`` while t >= boundary, ``low`` below (Wan 2.2 A14B).

    The rule is diffusers' ``WanPipeline``: ``boundary_timestep = boundary_ratio
    * num_train_timesteps``, decided per call from the timestep of the frames
    being denoised (the largest one: clean context tokens sit at 0).  Each
    expert comes wrapped in its own guidance (:func:`guided`).
    """

    def model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return high(x, t) if float(t.max()) >= boundary_timestep else low(x, t)

    return model


def strength_sigmas(steps: int, shift: float, strength: float) -> torch.Tensor:
    """The tail of :func:`flow_sigmas` that an image-to-image pass at ``strength`` runs.

    As diffusers' video-to-video pipelines: ``round(steps * strength)`` of the
    ``steps`` are run, starting from the noise level where they begin, so
    strength 1 is a full generation and small strengths keep the input.
    """
    if not 0.0 < strength <= 1.0:
        raise ValueError(f"strength must be in (0, 1], got {strength}")
    sigmas = flow_sigmas(steps, shift)
    run = max(1, min(steps, round(steps * strength)))
    return sigmas[steps - run:]


def renoise(x0: torch.Tensor, noise: torch.Tensor, sigma: float) -> torch.Tensor:
    """A clean latent taken to noise level ``sigma`` along the flow (the scheduler's ``scale_noise``)."""
    return ((1.0 - sigma) * x0 + sigma * noise).to(torch.float32)


def euler_step(model: Model, x: torch.Tensor, sigma: float, sigma_next: float, timestep: torch.Tensor) -> torch.Tensor:
    """One Euler step along the flow; the whole state to checkpoint between steps is ``x``."""
    return (x + (sigma_next - sigma) * model(x, timestep)).to(torch.float32)


def sample_window(
    model: Model,
    noise: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    context: torch.Tensor | None,
    tokens_per_frame: int,
) -> torch.Tensor:
    """Denoise one window with Euler steps along the flow; returns the clean new frames.

    ``noise`` is [B, C, new, h, w]; ``context`` is [B, C, ctx, h, w] clean
    latents (or None).  The context is held fixed at sigma 0 in every step.
    """
    n_ctx = 0 if context is None else context.shape[2]
    n_new = noise.shape[2]
    x = noise.to(torch.float32, copy=True)
    context = None if context is None else context.to(torch.float32)
    for sigma, sigma_next in zip(sigmas[:-1].tolist(), sigmas[1:].tolist(), strict=True):
        # Made on the device: a host tensor copied there would make the host wait for the GPU every step.
        levels = torch.full((n_ctx + n_new,), sigma, device=x.device)
        levels[:n_ctx] = 0.0
        window = x if context is None else torch.cat([context, x], dim=2)
        velocity = model(window, token_timesteps(levels, tokens_per_frame))
        x = x + (sigma_next - sigma) * velocity[:, :, n_ctx:]
    return x


@dataclass(frozen=True)
class Chunk:
    """One window of a take: which latent frames it adds and which it carries."""

    index: int
    start: int  # index of the first *new* latent frame in the take
    new: int  # latent frames denoised in this window
    keep: int  # of those, how many belong to the take (the last window may overrun)
    context: int  # clean frames carried from the previous window


def plan_chunks(total: int, window: int, context: int) -> list[Chunk]:
    """Cover ``total`` latent frames with fixed-size windows."""
    if total < 1:
        raise ValueError(f"a take needs at least one latent frame, got {total}")
    if not 0 <= context < window:
        raise ValueError(f"context ({context}) must be smaller than the window ({window})")
    chunks = [Chunk(index=0, start=0, new=window, keep=min(window, total), context=0)]
    start = window
    while start < total:
        new = window - context
        chunks.append(Chunk(index=len(chunks), start=start, new=new, keep=min(new, total - start), context=context))
        start += new
    return chunks


def chunk_noise(seed: int, chunk: int, shape: tuple[int, ...], device: str | torch.device = "cpu") -> torch.Tensor:
    """Gaussian noise for one chunk: a function of (seed, chunk) alone.

    Independent of backend, device and of how many chunks a take has, so
    changing the length of a take never changes its beginning.  Drawn on the
    host with numpy's PCG64 (a GPU's generator draws other numbers than a
    CPU's) and moved to ``device`` once per chunk.
    """
    rng = np.random.Generator(np.random.PCG64([seed, chunk]))
    return upload(torch.from_numpy(rng.standard_normal(shape, dtype=np.float32)), device)
