"""The MoE refine: expert routing by timestep, both handoffs, and the streaming tiled decode."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from previz.sampler import euler_step, experts, flow_sigmas, guided, strength_sigmas
from upscale.refine import FinalModel, handoff_kind


def counting(name: str, calls: list):
    def model(x, t):
        calls.append((name, float(t.max())))
        return torch.zeros_like(x)

    return model


def test_experts_routes_by_the_boundary_pure():
    calls: list = []
    model = experts(counting("high", calls), counting("low", calls), 875.0)
    x = torch.zeros((1, 1, 1, 1, 1))
    for t in (1000.0, 875.0, 874.5, 0.0):
        model(x, torch.tensor([t]))
    # Per-token timesteps: clean context tokens at 0 must not pull a noisy window to the low expert.
    model(x, torch.tensor([[0.0, 0.0, 900.0]]))
    assert calls == [("high", 1000.0), ("high", 875.0), ("low", 874.5), ("low", 0.0), ("high", 900.0)]


def test_strength_runs_the_tail_of_the_schedule():
    full = flow_sigmas(6, 12.0)
    assert torch.equal(strength_sigmas(6, 12.0, 1.0), full)
    tail = strength_sigmas(6, 12.0, 0.6)
    assert len(tail) == 5 and torch.equal(tail, full[2:])  # round(6 * 0.6) = 4 steps
    with pytest.raises(ValueError):
        strength_sigmas(6, 12.0, 0.0)


@pytest.fixture(scope="module")
def final_model(final_pack):
    return FinalModel(final_pack)


RECIPE = {"prompt": "a red cube", "negative_prompt": "blur", "seed": 3, "seconds": 0.3,
          "camera": {"preset": "orbit_left"}}


@pytest.mark.parametrize("strength, guidance", [(1.0, (1.0, 1.0)), (0.6, (3.0, 2.0))])
def test_each_expert_runs_exactly_on_its_side_of_the_boundary(final_model, strength, guidance):
    m = final_model
    m.pack = dataclasses.replace(m.pack, final=dataclasses.replace(m.pack.final, guidance=guidance[0],
                                                                     guidance_2=guidance[1]))
    m.stats.calls = {"transformer": 0, "transformer_2": 0}
    m.stats.timesteps = {"transformer": [], "transformer_2": []}
    plan = m.plan(RECIPE, frames=5, fps=30, width=64, height=32, strength=strength, handoff="latent")
    x = torch.from_numpy(m.start_from_latents(plan, np.zeros((1, 16, 2, 4, 8), np.float32)))
    model = m.model(RECIPE, plan)
    for i in range(plan.units):
        x = euler_step(model, x, plan.sigmas[i], plan.sigmas[i + 1], torch.tensor([1000 * plan.sigmas[i]]))
    boundary = 1000 * m.pack.boundary_ratio
    high = [1000 * s for s in plan.sigmas[:-1] if 1000 * s >= boundary]
    low = [1000 * s for s in plan.sigmas[:-1] if 1000 * s < boundary]
    assert high and low, "the plan must exercise both experts"
    per_step = (2 if guidance[0] > 1 else 1, 2 if guidance[1] > 1 else 1)  # CFG: cond + uncond
    assert m.stats.calls == {"transformer": len(high) * per_step[0], "transformer_2": len(low) * per_step[1]}
    assert sorted(set(m.stats.timesteps["transformer"])) == pytest.approx(sorted(high))
    assert sorted(set(m.stats.timesteps["transformer_2"])) == pytest.approx(sorted(low))
    assert bool(torch.isfinite(x).all())


def test_handoff_is_latent_only_in_the_same_latent_space(final_pack):
    assert handoff_kind(final_pack.latent.space, final_pack) == "latent"
    assert handoff_kind("previz-test-v0", final_pack) == "pixel"
    assert handoff_kind(None, final_pack) == "pixel"


def test_latent_handoff_keeps_the_draft_at_low_strength(final_model):
    plan = final_model.plan(RECIPE, frames=5, fps=30, width=128, height=64, strength=0.2, handoff="latent")
    draft = np.random.default_rng(0).standard_normal((1, 16, 2, 4, 8)).astype(np.float32)
    x = final_model.start_from_latents(plan, draft)
    assert x.shape == (1, 16, 2, 8, 16)
    import torch

    from previz.sampler import chunk_noise
    from upscale.refine import FINAL_NOISE_STREAM

    # The draft's latents, upsampled, taken to the first noise level the strength runs, with the seed's noise.
    up = torch.nn.functional.interpolate(torch.from_numpy(draft), size=(2, 8, 16), mode="trilinear").numpy()
    noise = chunk_noise(3, FINAL_NOISE_STREAM, up.shape).numpy()
    sigma = plan.sigmas[0]
    np.testing.assert_allclose(x, (1 - sigma) * up + sigma * noise, atol=1e-6)
    assert np.corrcoef(x.ravel(), up.ravel())[0, 1] > 0.2


def test_streamed_pixel_handoff_equals_diffusers_whole_clip_encode(final_model):
    """Chunk by chunk with a carried cache, never the whole clip, and the same latents as vae.encode()."""
    import torch
    import torch.nn.functional as F

    from previz.sampler import chunk_noise
    from upscale.refine import FINAL_NOISE_STREAM

    m = final_model
    plan = m.plan(RECIPE, frames=7, fps=30, width=64, height=32, strength=0.5, handoff="pixel")
    frames = [np.random.default_rng(i).random((24, 40, 3), dtype=np.float32) for i in range(7)]
    x = m.start_from_frames(plan, iter(frames))  # an iterator: it is read once, frame by frame
    video = F.interpolate(torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2), size=(32, 64), mode="bicubic",
                          antialias=True).clamp(0, 1)
    video = torch.cat([video, video[-1:].expand(2, -1, -1, -1)])  # 7 frames padded to 1 + 4k = 9
    with torch.inference_mode():
        z = m.vae.encode((video * 2 - 1).permute(1, 0, 2, 3)[None]).latent_dist.mode()
    x0 = ((z - m.latents_mean) / m.latents_std).numpy()
    sigma = plan.sigmas[0]
    expected = (1 - sigma) * x0 + sigma * chunk_noise(3, FINAL_NOISE_STREAM, x0.shape).numpy()
    assert x.shape == (1, 16, 3, 4, 8)
    np.testing.assert_allclose(x, expected, atol=1e-5)


def test_pixel_handoff_encodes_frames_with_the_final_vae(final_model):
    plan = final_model.plan(RECIPE, frames=5, fps=30, width=64, height=32, strength=0.5, handoff="pixel")
    frames = [np.full((32, 64, 3), v, np.float32) for v in (0.1, 0.3, 0.5, 0.7, 0.9)]
    x = final_model.start_from_frames(plan, frames)
    assert x.shape == (1, 16, 2, 4, 8) and np.isfinite(x).all()
    other = final_model.start_from_frames(plan, [1 - f for f in frames])
    assert not np.allclose(x, other)  # the frames, not just the noise, decide the start


@pytest.mark.parametrize("tile, overlap", [(4, 1), (64, 8)])
def test_streaming_tiled_decode_equals_diffusers(final_model, tile, overlap):
    """Frame by frame, each tile with its own causal cache == diffusers' whole-clip (tiled) decode."""
    latents = np.random.default_rng(1).standard_normal((1, 16, 3, 6, 10)).astype(np.float32)
    streamed = list(final_model.decode(latents, 9, tile=tile, overlap=overlap))
    reference = final_model.decode_reference(latents, tile=tile if tile < 6 else None, overlap=overlap)
    assert len(streamed) == 9 and streamed[0].shape == (48, 80, 3)
    assert np.abs(np.stack(streamed) - reference).max() < 1e-5
    assert len(list(final_model.decode(latents, 7, tile=tile, overlap=overlap))) == 7  # trimmed to the take


def test_experts_are_offloaded_only_on_cuda(final_model):
    placement = final_model.placement
    assert placement.offload is False and placement.swaps == 0  # on CPU both live in host memory
    guided_model = guided(lambda x, t: x, lambda x, t: x * 0, 2.0)
    assert torch.equal(guided_model(torch.ones(2), torch.zeros(1)), 2 * torch.ones(2))


def test_with_offload_the_experts_swap_once_at_the_boundary(final_pack):
    """The CUDA code path (one expert resident), run on the CPU: the same calls, counted swaps."""
    m = FinalModel(final_pack, offload=True)
    plan = m.plan(RECIPE, frames=5, fps=30, width=64, height=32, strength=1.0, handoff="latent")
    x = torch.from_numpy(m.start_from_latents(plan, np.zeros((1, 16, 2, 4, 8), np.float32)))
    model = m.model(RECIPE, plan)
    for i in range(plan.units):
        x = euler_step(model, x, plan.sigmas[i], plan.sigmas[i + 1], torch.tensor([1000 * plan.sigmas[i]]))
    assert m.stats.calls["transformer"] > 0 and m.stats.calls["transformer_2"] > 0
    assert m.placement.swaps == 2  # the high-noise expert in once, then the low-noise one, once
    assert m.placement.active == "transformer_2"


def test_experts_load_at_the_precision_asked_and_bf16_stays_close_to_fp32(final_model, final_pack):
    """Loaded at bf16 with torch_dtype (diffusers' fp32-kept modules stay fp32), not as diffusers' default
    fp32; a whole refine at bf16 lands close to the fp32 one. On a CPU the default stays fp32."""
    from previz.errors import PrevizError

    assert final_model.precision == "fp32"
    bf16 = FinalModel(final_pack, precision="bf16")
    for name in ("transformer", "transformer_2"):
        module = bf16.placement.modules[name]
        keep = set(module._keep_in_fp32_modules or ())
        for param_name, param in module.named_parameters():
            kept = bool(keep & set(param_name.split(".")))
            assert param.dtype == (torch.float32 if kept else torch.bfloat16), param_name
    assert {p.dtype for p in bf16.vae.parameters()} == {torch.float32}  # the VAE stays fp32, as WanPipeline runs it

    def refine(m):
        plan = m.plan(RECIPE, frames=5, fps=30, width=64, height=32, strength=0.6, handoff="latent")
        start = np.random.default_rng(0).standard_normal((1, 16, 2, 4, 8)).astype(np.float32)
        x = torch.from_numpy(m.start_from_latents(plan, start))
        model = m.model(RECIPE, plan)
        for i in range(plan.units):
            x = euler_step(model, x, plan.sigmas[i], plan.sigmas[i + 1], torch.tensor([1000 * plan.sigmas[i]]))
        return x

    ref, out = refine(final_model), refine(bf16)
    assert out.dtype == torch.float32 and bool(torch.isfinite(out).all())
    # bf16 keeps 8 bits of mantissa: measured max difference 0.13% of the latents' span over this refine.
    assert float((out - ref).abs().max()) <= 0.01 * float(ref.max() - ref.min())
    with pytest.raises(PrevizError, match="final stage runs fp32, bf16 or fp16") as err:
        FinalModel(final_pack, precision="fp8")
    assert err.value.field == "precision"
