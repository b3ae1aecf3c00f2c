"""The sampler's pure functions: schedules, chunk plans, noise, Euler steps."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from previz.sampler import (
    NUM_TRAIN_TIMESTEPS,
    chunk_noise,
    flow_sigmas,
    guided,
    plan_chunks,
    sample_window,
    token_timesteps,
)


@pytest.mark.parametrize("steps", [1, 2, 3, 4])
@pytest.mark.parametrize("shift", [1.0, 3.0, 5.0])
def test_sigmas_run_from_one_to_zero_and_shift_favours_high_noise(steps, shift):
    s = flow_sigmas(steps, shift)
    assert len(s) == steps + 1 and s[0] == pytest.approx(1.0) and s[-1] == 0.0
    assert s.dtype == torch.float32 and bool(torch.all(torch.diff(s) < 0))
    if shift > 1 and steps > 1:
        assert bool(torch.all(s[1:-1] > flow_sigmas(steps, 1.0)[1:-1]))


def test_sigmas_are_the_numbers_numpy_gave():
    """Moving the sampler to torch changed no schedule: takes stay what they were."""
    for steps, shift in ((1, 3.0), (2, 5.0), (4, 3.0), (8, 1.0)):
        ref = np.linspace(1.0, 0.0, steps + 1)
        ref = (shift * ref / (1.0 + (shift - 1.0) * ref)).astype(np.float32)
        assert np.array_equal(flow_sigmas(steps, shift).numpy(), ref)


def test_zero_steps_is_an_error():
    with pytest.raises(ValueError, match="steps"):
        flow_sigmas(0, 1.0)


@pytest.mark.parametrize("total", [1, 2, 3, 4, 5, 10, 30, 31])
@pytest.mark.parametrize("window, context", [(3, 1), (4, 1), (4, 2), (2, 0)])
def test_chunks_cover_the_take_exactly_once(total, window, context):
    chunks = plan_chunks(total, window, context)
    covered = [i for c in chunks for i in range(c.start, c.start + c.keep)]
    assert covered == list(range(total))
    assert chunks[0].context == 0 and chunks[0].new == window
    assert all(c.context + c.new == window for c in chunks[1:])  # one static shape


def test_bad_chunk_plans_are_refused():
    with pytest.raises(ValueError):
        plan_chunks(0, 3, 1)
    with pytest.raises(ValueError):
        plan_chunks(5, 3, 3)


def test_noise_depends_on_seed_and_chunk_only():
    a = chunk_noise(7, 2, (1, 4, 2, 3, 3))
    assert isinstance(a, torch.Tensor) and a.dtype == torch.float32
    assert torch.equal(a, chunk_noise(7, 2, (1, 4, 2, 3, 3)))
    assert not torch.equal(a, chunk_noise(8, 2, (1, 4, 2, 3, 3)))
    assert not torch.equal(a, chunk_noise(7, 3, (1, 4, 2, 3, 3)))


def test_token_timesteps_are_frame_major():
    t = token_timesteps(torch.tensor([0.0, 0.5, 1.0]), tokens_per_frame=4)
    assert t.shape == (1, 12) and t.dtype == torch.float32
    assert np.array_equal(t[0].numpy(), np.repeat([0.0, 500.0, 1000.0], 4).astype(np.float32))


@pytest.mark.parametrize("steps", [1, 2, 4])
@pytest.mark.parametrize("with_context", [False, True])
def test_an_exact_velocity_model_lands_on_its_target(steps, with_context):
    """With the true flow velocity, Euler reaches x0 exactly; context stays at t=0."""
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn((1, 2, 2, 3, 3), generator=g)
    noise = torch.randn(x0.shape, generator=g)
    context = torch.randn((1, 2, 1, 3, 3), generator=g) if with_context else None
    n_ctx = 0 if context is None else 1
    seen_t: list[torch.Tensor] = []

    def model(window: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        seen_t.append(t)
        sigma = t[0, -1] / NUM_TRAIN_TIMESTEPS
        x = window[:, :, n_ctx:]
        v = torch.zeros_like(window)
        v[:, :, n_ctx:] = (x - x0) / sigma  # = noise - x0 on the straight path
        return v.to(torch.bfloat16 if steps == 4 else torch.float32)  # a bf16 model leaves x in fp32

    out = sample_window(model, noise, flow_sigmas(steps, 3.0), context=context, tokens_per_frame=9)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, x0, atol=1e-5 if steps != 4 else 5e-2, rtol=0)
    assert len(seen_t) == steps
    for t in seen_t:
        assert t.shape == (1, (n_ctx + 2) * 9)
        assert bool(torch.all(t[0, : n_ctx * 9] == 0.0)) and bool(torch.all(t[0, n_ctx * 9 :] > 0))


def test_guidance_of_one_is_the_plain_model_and_above_extrapolates():
    cond = lambda x, t: torch.full_like(x, 2.0)  # noqa: E731
    uncond = lambda x, t: torch.full_like(x, 1.0)  # noqa: E731
    x, t = torch.zeros((1, 1, 1, 1, 1)), torch.zeros((1, 1))
    assert guided(cond, uncond, 1.0) is cond
    assert guided(cond, uncond, 3.0)(x, t).item() == pytest.approx(4.0)
