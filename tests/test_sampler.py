"""The sampler's pure functions: schedules, chunk plans, noise, Euler steps."""

from __future__ import annotations

import numpy as np
import pytest

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
    assert np.all(np.diff(s) < 0)
    if shift > 1 and steps > 1:
        assert np.all(s[1:-1] > flow_sigmas(steps, 1.0)[1:-1])


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
    assert np.array_equal(a, chunk_noise(7, 2, (1, 4, 2, 3, 3)))
    assert not np.array_equal(a, chunk_noise(8, 2, (1, 4, 2, 3, 3)))
    assert not np.array_equal(a, chunk_noise(7, 3, (1, 4, 2, 3, 3)))


def test_token_timesteps_are_frame_major():
    t = token_timesteps(np.array([0.0, 0.5, 1.0], np.float32), tokens_per_frame=4)
    assert t.shape == (1, 12)
    assert np.array_equal(t[0], np.repeat([0.0, 500.0, 1000.0], 4).astype(np.float32))


@pytest.mark.parametrize("steps", [1, 2, 4])
@pytest.mark.parametrize("with_context", [False, True])
def test_an_exact_velocity_model_lands_on_its_target(steps, with_context):
    """With the true flow velocity, Euler reaches x0 exactly; context stays at t=0."""
    rng = np.random.default_rng(0)
    x0 = rng.standard_normal((1, 2, 2, 3, 3)).astype(np.float32)
    noise = rng.standard_normal(x0.shape).astype(np.float32)
    context = rng.standard_normal((1, 2, 1, 3, 3)).astype(np.float32) if with_context else None
    n_ctx = 0 if context is None else 1
    seen_t: list[np.ndarray] = []

    def model(window: np.ndarray, t: np.ndarray) -> np.ndarray:
        seen_t.append(t)
        sigma = t[0, -1] / NUM_TRAIN_TIMESTEPS
        x = window[:, :, n_ctx:]
        v = np.zeros_like(window)
        v[:, :, n_ctx:] = (x - x0) / sigma  # = noise - x0 on the straight path
        return v

    out = sample_window(model, noise, flow_sigmas(steps, 3.0), context=context, tokens_per_frame=9)
    np.testing.assert_allclose(out, x0, atol=1e-5)
    assert len(seen_t) == steps
    for t in seen_t:
        assert t.shape == (1, (n_ctx + 2) * 9)
        assert np.all(t[0, : n_ctx * 9] == 0.0) and np.all(t[0, n_ctx * 9 :] > 0)


def test_guidance_of_one_is_the_plain_model_and_above_extrapolates():
    cond = lambda x, t: np.full_like(x, 2.0)  # noqa: E731
    uncond = lambda x, t: np.full_like(x, 1.0)  # noqa: E731
    x, t = np.zeros((1, 1, 1, 1, 1), np.float32), np.zeros((1, 1), np.float32)
    assert guided(cond, uncond, 1.0) is cond
    assert guided(cond, uncond, 3.0)(x, t).item() == pytest.approx(4.0)
