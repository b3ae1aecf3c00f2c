"""A block-causal context: a window's clean context frames attend only to each other, so their keys and
values are computed once per window instead of once per denoising step.

A draft window is ``[context | new]``: the last clean latent frames of the previous window, at timestep 0,
then the noisy frames being made.  In a bidirectional student (the default) every token attends to every
other, so the context's hidden states change with the noise and the whole window runs at every step.  In a
block-causal student (the idea behind streaming students such as CausVid and Self-Forcing) the context
attends only to itself.  With per-token timesteps
holding the context at 0, every layer's keys and values for the context are then the same at every step.

A window then costs one pass over the context, recording those keys and values, and one pass over the new
frames per step, attending to ``[recorded context, new]``.  For the Wan2.1-1.3B-shaped student at 832x480
(1 context frame and 3 new ones, 4 steps), that is 19% fewer token-passes through the linear layers and 23%
fewer attention scores per window.  The new frames get the numbers a whole window gets under the
block-causal mask (tests/test_causal_context.py), and training uses that mask.

The mechanism is diffusers' extension point for this: a processor on each self-attention (``attn1``), as
diffusers' own Flux2 Klein KV pipeline caches its reference images.  One :class:`ContextSlot` per
transformer says what the processors do on the next call.  Every graph sets the whole slot before it runs
the transformer (:meth:`ContextSlot.use`), so a call that failed half way leaves no mode behind for the next;
``DraftModel`` also lets go of the keys and values such a call leaves in the slot.

Each layer's processor holds its own :class:`LayerKV` rather than an index into a shared cache, so every
block runs the same code on the same kinds of values: ``torch.compile`` can then compile one block and
reuse it for all of them (regional compilation, ``engines.torch_backend``'s ``compile_scope="blocks"``),
where a Python int per layer, or a list each layer appends to, would make it compile every layer anew.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

MODES = ("full", "masked", "record", "attend")


@dataclass
class LayerKV:
    """One layer's keys and values of the context, [2, B, S_context, heads * head_dim]: given to the layer
    (``attend``) or recorded by it (``record``)."""

    kv: torch.Tensor | None = None


@dataclass
class ContextSlot:
    """What every layer's self-attention does on the transformer's next call.

    One per transformer, so one call at a time: a draft model's takes all run on its one generation
    thread (``previz.worker``), and its graphs run one after another.

    - ``full``: plain attention over the tokens given (stock diffusers);
    - ``masked``: attention under ``mask`` [B, 1, S, S] (True: may attend), for training;
    - ``record``: plain attention, and each layer keeps its keys and values (read them with :meth:`recorded`);
    - ``attend``: the tokens are the new frames, placed ``frame_offset`` latent frames into the window,
      and attend to ``kv`` [layers, 2, B, S_context, heads * head_dim] followed by themselves.
    """

    mode: str = "full"
    mask: torch.Tensor | None = None
    frame_offset: int = 0
    layers: list[LayerKV] = field(default_factory=list)  # one per transformer block, in order

    def use(self, mode: str, *, mask: torch.Tensor | None = None, kv: torch.Tensor | None = None,
            frame_offset: int = 0) -> None:
        if mode not in MODES:  # a misspelt mode would otherwise run as plain attention
            raise ValueError(f"context slot mode {mode!r}: choose one of {', '.join(MODES)}")
        if (mode == "attend") != (kv is not None):
            raise ValueError("context slot: keys and values are given in attend mode, and only there")
        if kv is not None and kv.shape[0] != len(self.layers):
            raise ValueError(f"context slot: keys and values for {kv.shape[0]} layers, the transformer has "
                             f"{len(self.layers)}")
        self.mode, self.mask, self.frame_offset = mode, mask, frame_offset
        for i, layer in enumerate(self.layers):
            layer.kv = None if kv is None else kv[i]

    def recorded(self) -> torch.Tensor:
        """The keys and values the layers recorded, [layers, 2, B, S_context, heads * head_dim]."""
        if any(layer.kv is None for layer in self.layers):
            raise RuntimeError("context slot: no recorded keys and values (run the transformer in record mode)")
        return torch.stack([layer.kv for layer in self.layers])  # type: ignore[misc]


def rotate(x: torch.Tensor, freqs_cos: torch.Tensor, freqs_sin: torch.Tensor) -> torch.Tensor:
    """Wan's interleaved rotary embedding, as diffusers' ``WanAttnProcessor`` applies it (same arithmetic)."""
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
    cos = freqs_cos[..., 0::2]
    sin = freqs_sin[..., 1::2]
    out = torch.empty_like(x)
    out[..., 0::2] = x1 * cos - x2 * sin
    out[..., 1::2] = x1 * sin + x2 * cos
    return out.type_as(x)


def _processor_class() -> Any:
    from diffusers.models.attention_dispatch import dispatch_attention_fn
    from diffusers.models.transformers.transformer_wan import WanAttnProcessor, _get_qkv_projections

    from previz.wan_onnx import native_rotary

    class ContextAttnProcessor(WanAttnProcessor):  # type: ignore[misc]
        """Self-attention of one layer, in the slot's mode; ``_attention_backend`` picks the kernel.

        Keys and values are kept as [B, S, heads * head_dim] (the projections' own layout), so the same
        cache serves this processor and its ONNX-native twin (:meth:`onnx_native`).
        """

        def __init__(self, cache: LayerKV, slot: ContextSlot, native: bool = False) -> None:
            super().__init__()
            self.cache = cache  # this layer's own, so that every layer runs the same code (see the top)
            self.slot = slot
            self.native = native

        def onnx_native(self) -> Any:
            """The same processor on ONNX opset 23's RotaryEmbedding and Attention ops (``previz.wan_onnx``)."""
            return type(self)(self.cache, self.slot, native=True)

        def __call__(self, attn: Any, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                     attention_mask: torch.Tensor | None = None,
                     rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
            slot = self.slot
            q, k, v = _get_qkv_projections(attn, hidden_states, None)  # type: ignore[arg-type]
            q, k = attn.norm_q(q), attn.norm_k(k)  # [B, S, heads * head_dim]
            if rotary_emb is not None:
                q, k = self._rotate(attn, q, rotary_emb), self._rotate(attn, k, rotary_emb)
            mask = None
            if slot.mode == "record":
                self.cache.kv = torch.stack([k, v])
            elif slot.mode == "attend":
                kv = self.cache.kv
                assert kv is not None
                k = torch.cat([kv[0].to(k.dtype), k], dim=1)
                v = torch.cat([kv[1].to(v.dtype), v], dim=1)
            elif slot.mode == "masked":
                mask = slot.mask
            out = self._attend(attn, q, k, v, mask).type_as(q)
            return attn.to_out[1](attn.to_out[0](out))  # type: ignore[no-any-return]

        def _rotate(self, attn: Any, x: torch.Tensor, rotary_emb: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
            if self.native:
                return native_rotary(x, rotary_emb, attn.heads)
            return rotate(x.unflatten(2, (attn.heads, -1)), *rotary_emb).flatten(2, 3)

        def _attend(self, attn: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                    mask: torch.Tensor | None) -> torch.Tensor:
            if self.native:
                return torch.onnx.ops.attention(q, k, v, mask, q_num_heads=attn.heads,  # type: ignore[no-any-return]
                                                kv_num_heads=attn.heads)[0]
            q, k, v = (t.unflatten(2, (attn.heads, -1)) for t in (q, k, v))  # [B, S, heads, head_dim]
            out = dispatch_attention_fn(q, k, v, attn_mask=mask, dropout_p=0.0, is_causal=False,
                                        backend=self._attention_backend)
            return out.flatten(2, 3)  # type: ignore[no-any-return]

    return ContextAttnProcessor


class OffsetRope(nn.Module):
    """The transformer's rotary embedding, with the slot's frame offset: in ``attend`` mode the new frames
    sit after the context in the window, and rotary positions are what tell the layers so."""

    def __init__(self, rope: Any, slot: ContextSlot) -> None:
        super().__init__()
        self.rope = rope
        self.slot = slot
        self.patch_size: tuple[int, int, int] = tuple(rope.patch_size)

    def forward(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        offset = self.slot.frame_offset if self.slot.mode == "attend" else 0
        if not offset:
            return self.rope(hidden_states)  # type: ignore[no-any-return]
        b, c, f, h, w = hidden_states.shape
        p_t, p_h, p_w = self.patch_size
        # The rope reads only the shape: a zero-stride view stands for the whole window.
        cos, sin = self.rope(hidden_states.new_zeros(()).expand(b, c, f + offset, h, w))
        skip = (offset // p_t) * (h // p_h) * (w // p_w)
        return cos[:, skip:], sin[:, skip:]


def install(transformer: Any) -> ContextSlot:
    """Put the context processors on ``transformer`` (a ``WanTransformer3DModel``), in place; its slot.

    The weights are untouched; in ``full`` mode the transformer computes what it computed before.
    """
    existing = getattr(transformer, "context_slot", None)
    if isinstance(existing, ContextSlot):
        return existing
    slot = ContextSlot()
    processor = _processor_class()
    for block in transformer.blocks:
        slot.layers.append(LayerKV())
        block.attn1.set_processor(processor(slot.layers[-1], slot))
    transformer.rope = OffsetRope(transformer.rope, slot)
    transformer.context_slot = slot
    return slot


def block_causal_mask(context_frames: torch.Tensor, frames: int, tokens_per_frame: int) -> torch.Tensor:
    """[B, 1, S, S] bool, True where a query may attend: each sample's first ``context_frames[b]`` frames
    attend only to each other, the others to the whole window (training's view of :func:`install`'s two
    passes)."""
    frame = torch.arange(frames, device=context_frames.device).repeat_interleave(tokens_per_frame)  # [S]
    is_context = frame[None, :] < context_frames[:, None]  # [B, S]
    blocked = is_context[:, :, None] & ~is_context[:, None, :]  # a context query, a new key
    return (~blocked)[:, None]


class SlotGraph(nn.Module):
    """A graph of a block-causal student: the shared denoiser module, run in one mode of its slot."""

    def __init__(self, denoiser: nn.Module, slot: ContextSlot) -> None:
        super().__init__()
        self.denoiser = denoiser
        self.slot = slot


class ContextPass(SlotGraph):
    """The context's own pass: the denoiser's inputs for the context frames in, every layer's keys and
    values out, [layers, 2, 1, S_context, heads * head_dim]."""

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        self.slot.use("record")
        self.denoiser(*inputs)  # its velocity for the context is not needed
        kv = self.slot.recorded()
        self.slot.use("full")  # let go of the recorded tensors
        return kv


class CachedStep(SlotGraph):
    """One step over the new frames: the denoiser's inputs for them, then the context's keys and values."""

    def __init__(self, denoiser: nn.Module, slot: ContextSlot, context_frames: int) -> None:
        super().__init__(denoiser, slot)
        self.context_frames = context_frames

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        *denoiser_inputs, kv = inputs
        self.slot.use("attend", kv=kv, frame_offset=self.context_frames)
        velocity = self.denoiser(*denoiser_inputs)
        self.slot.use("full")
        return velocity  # type: ignore[no-any-return]


class WholeWindow(SlotGraph):
    """A window with no context (a take's first), every token attending to every other."""

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        self.slot.use("full")
        return self.denoiser(*inputs)  # type: ignore[no-any-return]
