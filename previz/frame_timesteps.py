"""The time embedding of a draft window, computed once per latent frame instead of once per token.

A draft denoiser takes per-token timesteps (``previz.sampler.token_timesteps``: the context frames at 0,
the new ones at the step's level), so diffusers' Wan transformer takes its Wan 2.2 TI2V path: the time
embedder (fp32, as diffusers keeps it) and the 6-way modulation projection run for every token.  For the
Wan2.1-1.3B-shaped student at 832x480 that is 6,240 rows of a 1536 -> 9216 projection per call, and every
block then reads a [tokens, 6, 1536] modulation tensor.

The sampler's timesteps are constant within a latent frame, so the embedding is a function of the frame:
this wrapper computes it for each frame's first token and spreads it over the frame's tokens.  The numbers
are the stock embedder's (tests/test_frame_timesteps.py); the embedder's work is ``frames`` rows instead of
``frames * tokens_per_frame``.  The spread itself is a copy in eager torch and in an ONNX export, so there
the blocks still read per-token modulation; compiled torch may fold it into their indexing.
"""

from __future__ import annotations

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
        return self.spread(temb), self.spread(projection), text, image

    def spread(self, per_frame: torch.Tensor) -> torch.Tensor:
        """[B, frames, D] -> [B, frames * tokens_per_frame, D], each frame's row for each of its tokens."""
        b, frames, d = per_frame.shape
        return per_frame[:, :, None].expand(b, frames, self.tokens_per_frame, d).reshape(b, -1, d)


def install(transformer: Any, tokens_per_frame: int) -> None:
    """Put the per-frame time embedding on ``transformer`` (a ``WanTransformer3DModel``), in place, once."""
    embedder = transformer.condition_embedder
    if not isinstance(embedder, FrameTimestepEmbedding):
        transformer.condition_embedder = FrameTimestepEmbedding(embedder, tokens_per_frame)
    elif embedder.tokens_per_frame != tokens_per_frame:  # one transformer is one draft size (build_denoiser_graph)
        raise ValueError(f"this transformer embeds time for frames of {embedder.tokens_per_frame} tokens, "
                         f"not {tokens_per_frame}: load it afresh for another size")
