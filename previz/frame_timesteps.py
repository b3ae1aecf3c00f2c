"""The time embedding of a draft window and the blocks' modulation by it, once per latent frame instead of
once per token.

A draft denoiser takes per-token timesteps (``previz.sampler.token_timesteps``: the context frames at 0,
the new ones at the step's level), so diffusers' Wan transformer takes its Wan 2.2 TI2V path: the time
embedder (fp32, as diffusers keeps it) and the 6-way modulation projection run for every token, and every
block reads a [tokens, 6, dim] modulation tensor.  For the Wan2.1-1.3B-shaped student at 832x480 that is
6,240 rows of a 1536 -> 9216 projection per call, and a 115 MB tensor (bf16) that each of the 30 blocks
reads: about 3.5 GB of memory traffic a call for numbers that repeat 1,560 times.

The sampler's timesteps are constant within a latent frame, so both are functions of the frame:

- :class:`FrameTimestepEmbedding` computes the embedding for each frame's first token, and hands the blocks
  one modulation row per frame, [B, frames, 6, dim];
- :class:`FrameModulatedBlock` is diffusers' ``WanTransformerBlock`` with the same arithmetic, its
  modulation broadcast over each frame's tokens instead of read per token.

The numbers are the stock transformer's (tests/test_frame_timesteps.py).  Only the output norm, once a call,
still takes a per-token time embedding.  Given per-token modulation (diffusers' own embedder), the block
runs diffusers' code unchanged.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import nn


class FrameTimestepEmbedding(nn.Module):
    """A Wan transformer's ``condition_embedder`` for timesteps that are constant within each latent frame."""

    def __init__(self, embedder: nn.Module, tokens_per_frame: int) -> None:
        super().__init__()
        self.embedder = embedder
        self.tokens_per_frame = tokens_per_frame

    def forward(self, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor,
                encoder_hidden_states_image: torch.Tensor | None = None,
                timestep_seq_len: int | None = None) -> tuple[Any, ...]:
        if timestep_seq_len is None:  # one timestep per sample: nothing to save
            return self.embedder(timestep, encoder_hidden_states, encoder_hidden_states_image)  # type: ignore[no-any-return]
        frames, rest = divmod(timestep_seq_len, self.tokens_per_frame)
        if rest:
            raise ValueError(f"{timestep_seq_len} timesteps are not whole frames of {self.tokens_per_frame} tokens")
        per_frame = timestep.view(-1, frames, self.tokens_per_frame)[:, :, 0].flatten()  # [B * frames]
        temb, projection, text, image = self.embedder(per_frame, encoder_hidden_states, encoder_hidden_states_image,
                                                       timestep_seq_len=frames)
        # The output norm reads temb per token (once a call); the blocks take the projection per frame.
        return self.spread(temb), projection, text, image

    def spread(self, per_frame: torch.Tensor) -> torch.Tensor:
        """[B, frames, D] -> [B, frames * tokens_per_frame, D], each frame's row for each of its tokens."""
        b, frames, d = per_frame.shape
        return per_frame[:, :, None].expand(b, frames, self.tokens_per_frame, d).reshape(b, -1, d)


@functools.cache
def frame_modulated_block() -> type:
    """:class:`FrameModulatedBlock`, made on first use: diffusers is imported only where a model is built."""
    from diffusers.models.transformers.transformer_wan import WanTransformerBlock

    class FrameModulatedBlock(WanTransformerBlock):  # type: ignore[misc]
        """A Wan block that takes its modulation per latent frame, [B, frames, 6, dim].

        Diffusers' ``WanTransformerBlock.forward`` with each [B, tokens, dim] step viewed as [B, frames,
        tokens_per_frame, dim] where it meets the modulation, so the same products and sums are done in the
        same order, on a [B, frames, 1, dim] row instead of a [B, tokens, dim] copy.  Tokens are frame-major
        after the patch embedding (as ``token_timesteps`` lays them out), and each block sees all of a
        sample's tokens: diffusers' context parallelism, which splits them across devices, is not used here.
        """

        def forward(self, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor, temb: torch.Tensor,
                    rotary_emb: torch.Tensor) -> torch.Tensor:
            if temb.ndim != 4 or temb.shape[1] == hidden_states.shape[1]:  # per sample, or per token
                return super().forward(hidden_states, encoder_hidden_states, temb, rotary_emb)  # type: ignore[no-any-return]
            frames = temb.shape[1]

            def by_frame(x: torch.Tensor) -> torch.Tensor:  # [B, tokens, dim] -> [B, frames, tokens_per_frame, dim]
                return x.unflatten(1, (frames, -1))

            shift_msa, scale_msa, gate_msa, c_shift_msa, c_scale_msa, c_gate_msa = (
                self.scale_shift_table.unsqueeze(0) + temb.float()
            ).chunk(6, dim=2)  # each [B, frames, 1, dim]

            # 1. Self-attention
            norm_hidden_states = (by_frame(self.norm1(hidden_states.float())) * (1 + scale_msa) + shift_msa)
            attn_output = self.attn1(norm_hidden_states.flatten(1, 2).type_as(hidden_states), None, None, rotary_emb)
            residual = by_frame(hidden_states.float()) + by_frame(attn_output) * gate_msa
            hidden_states = residual.flatten(1, 2).type_as(hidden_states)

            # 2. Cross-attention
            norm_hidden_states = self.norm2(hidden_states.float()).type_as(hidden_states)
            attn_output = self.attn2(norm_hidden_states, encoder_hidden_states, None, None)
            hidden_states = hidden_states + attn_output

            # 3. Feed-forward
            norm_hidden_states = (by_frame(self.norm3(hidden_states.float())) * (1 + c_scale_msa) + c_shift_msa)
            ff_output = self.ffn(norm_hidden_states.flatten(1, 2).type_as(hidden_states))
            out = (by_frame(hidden_states.float()) + by_frame(ff_output.float()) * c_gate_msa).flatten(1, 2)
            return out.type_as(hidden_states)

    return FrameModulatedBlock


def install(transformer: Any, tokens_per_frame: int) -> None:
    """Put the per-frame time embedding and modulation on ``transformer`` (a ``WanTransformer3DModel``), in
    place, once.  Each block becomes a :class:`FrameModulatedBlock`: the same module, weights and names, with
    the forward above."""
    block_class = frame_modulated_block()
    for block in transformer.blocks:  # checked before anything changes
        if type(block) not in (block_class, block_class.__base__):  # a class whose forward this one is not
            raise TypeError(f"per-frame modulation is for diffusers' WanTransformerBlock, not {type(block).__name__}")
    embedder = transformer.condition_embedder
    if not isinstance(embedder, FrameTimestepEmbedding):
        transformer.condition_embedder = FrameTimestepEmbedding(embedder, tokens_per_frame)
    elif embedder.tokens_per_frame != tokens_per_frame:  # one transformer is one draft size (build_denoiser_graph)
        raise ValueError(f"this transformer embeds time for frames of {embedder.tokens_per_frame} tokens, "
                         f"not {tokens_per_frame}: load it afresh for another size")
    for block in transformer.blocks:
        block.__class__ = block_class  # a subclass that adds no state: only the forward changes
