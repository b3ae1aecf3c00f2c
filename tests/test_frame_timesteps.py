"""The time embedding and the blocks' modulation once per latent frame (previz.frame_timesteps): the stock
numbers, a frame's work."""

import pytest
import torch

from previz.draft_graphs import build_denoiser_graph
from previz.frame_timesteps import FrameTimestepEmbedding, frame_modulated_block, install
from previz.packs import load_component
from previz.sampler import token_timesteps
from previz.text import text_shape

FRAMES, H, W = 3, 8, 12  # latent frames, latent height and width
TOKENS = (H // 2) * (W // 2)  # per frame, at the (1, 2, 2) patch


def tiny_transformer():
    from diffusers import WanTransformer3DModel

    torch.manual_seed(0)
    return WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=4,
                                 out_channels=4, text_dim=16, freq_dim=256, ffn_dim=32, num_layers=2,
                                 cross_attn_norm=True, qk_norm="rms_norm_across_heads", rope_max_seq_len=32).eval()


@pytest.mark.parametrize("levels", [[0.0, 0.7, 0.7], [0.999, 0.999, 0.999], [0.0, 0.0, 0.25]])  # sigmas
def test_the_transformer_computes_what_it_computes_per_token(levels):
    """A context at 0 then new frames, a first window, two context frames: the stock transformer's output."""
    stock, wrapped = tiny_transformer(), tiny_transformer()
    install(wrapped, TOKENS)
    x, text = torch.randn(1, 4, FRAMES, H, W), torch.randn(1, 5, 16)
    t = token_timesteps(torch.tensor(levels), TOKENS)
    with torch.inference_mode():
        ref = stock(x, t, text, return_dict=False)[0]
        out = wrapped(x, t, text, return_dict=False)[0]
        scalar = wrapped(x, t[:, 0], text, return_dict=False)[0]  # one timestep a sample passes through
    assert ref.shape == out.shape
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-6)
    if len(set(levels)) == 1:
        torch.testing.assert_close(scalar, ref, rtol=0, atol=1e-6)


def test_the_time_embedder_runs_once_a_frame():
    transformer = tiny_transformer()
    install(transformer, TOKENS)
    install(transformer, TOKENS)  # once: a second install keeps the first wrapper
    embedder = transformer.condition_embedder
    assert isinstance(embedder, FrameTimestepEmbedding) and not isinstance(embedder.embedder, FrameTimestepEmbedding)
    rows: list[int] = []
    embedder.embedder.time_embedder.register_forward_hook(lambda m, args, out: rows.append(args[0].numel() // 256))
    with torch.inference_mode():
        transformer(torch.randn(1, 4, FRAMES, H, W), token_timesteps(torch.tensor([0.0, 0.5, 0.5]), TOKENS),
                    torch.randn(1, 5, 16), return_dict=False)
    assert rows == [FRAMES]  # against FRAMES * TOKENS rows per token
    with pytest.raises(ValueError, match="load it afresh"):
        install(transformer, TOKENS * 4)  # the same transformer at another size


def test_a_block_of_another_kind_is_refused():
    transformer = tiny_transformer()
    transformer.blocks[1] = torch.nn.Identity()
    with pytest.raises(TypeError, match="not Identity"):
        install(transformer, TOKENS)
    assert not isinstance(transformer.condition_embedder, FrameTimestepEmbedding)  # nothing half done


def test_the_blocks_take_one_modulation_row_a_frame():
    transformer = tiny_transformer()
    install(transformer, TOKENS)
    assert all(isinstance(block, frame_modulated_block()) for block in transformer.blocks)
    shapes: list[tuple[int, ...]] = []
    for block in transformer.blocks:
        block.register_forward_pre_hook(lambda m, args: shapes.append(tuple(args[2].shape)))
    with torch.inference_mode():
        transformer(torch.randn(1, 4, FRAMES, H, W), token_timesteps(torch.tensor([0.0, 0.5, 0.5]), TOKENS),
                    torch.randn(1, 5, 16), return_dict=False)
    dim = transformer.config.num_attention_heads * transformer.config.attention_head_dim
    assert shapes == [(1, FRAMES, 6, dim)] * len(transformer.blocks)  # not (1, FRAMES * TOKENS, 6, dim)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_frame_modulated_block_is_the_stock_block_with_a_row_a_frame(dtype):
    """Per-frame modulation against the same rows spread to every token, through diffusers' own forward;
    and a block given per-token modulation (diffusers' own embedder) runs that forward itself."""
    from engines.precision import cast_module

    stock = cast_module(tiny_transformer(), dtype).blocks[0]
    block = cast_module(tiny_transformer(), dtype).blocks[0]
    block.__class__ = frame_modulated_block()
    dim = block.scale_shift_table.shape[-1]
    hidden, text = torch.randn(1, FRAMES * TOKENS, dim).to(dtype), torch.randn(1, 5, dim).to(dtype)
    rows = torch.randn(1, FRAMES, 6, dim).to(dtype)  # the time projection's output, at the engine's dtype
    per_token = rows.repeat_interleave(TOKENS, dim=1)
    rope = tiny_transformer().rope(torch.zeros(1, 4, FRAMES, H, W))
    with torch.inference_mode():
        ref = stock(hidden, text, per_token, rope)
        torch.testing.assert_close(block(hidden, text, rows, rope), ref, rtol=0, atol=0)
        torch.testing.assert_close(block(hidden, text, per_token, rope), ref, rtol=0, atol=0)


def test_timesteps_that_are_not_whole_frames_are_refused():
    embedder = FrameTimestepEmbedding(tiny_transformer().condition_embedder, TOKENS)
    with pytest.raises(ValueError, match="not whole frames"):
        embedder(torch.zeros(TOKENS + 1), torch.randn(1, 5, 16), timestep_seq_len=TOKENS + 1)


def test_a_draft_graph_built_from_a_pack_matches_the_stock_transformer(test_pack):
    """The graph a DraftModel runs, loaded as a real pack is, against the pack's transformer loaded as is."""
    tokens, dim = text_shape(test_pack)
    graph = build_denoiser_graph(test_pack, 64, 64, text_tokens=tokens, text_dim=dim).window
    assert isinstance(graph.module.transformer.condition_embedder, FrameTimestepEmbedding)
    stock = load_component(test_pack, "denoiser").eval()
    inputs = graph.example_inputs()
    frames = inputs["latents"].shape[2]
    inputs["timesteps"] = token_timesteps(torch.linspace(0.0, 0.9, frames), inputs["timesteps"].shape[1] // frames)
    with torch.inference_mode():
        out = graph.module(*inputs.values())
        x = torch.cat([inputs["latents"], *(inputs[k] for k in ("camera", "control") if k in inputs)], dim=1)
        ref = stock(x, inputs["timesteps"], inputs["text"], return_dict=False)[0]
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-6)
