"""Prompt text to the token states a denoiser cross-attends to, with an LRU cache.

The encoder is whatever the pack names (MiniLM for the embedded pack, UMT5 for
real Wan packs), loaded through transformers.  Embeddings are padded to the
pack's fixed token count with zeros past the prompt's end, as WanPipeline does,
so every engine sees one static shape.

Camera-only and seed-only changes are the common case while iterating, so the
cache keeps recent prompts: such a change never runs the text encoder again.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import numpy as np
import torch

from previz.errors import PackError
from previz.packs import Pack, load_component, load_tokenizer


def text_shape(pack: Pack) -> tuple[int, int]:
    """(tokens, width) of the text states a pack's denoiser reads, from its manifest."""
    text = pack.conditioning.text
    if text is None:
        raise PackError(f"pack {pack.id!r}: its manifest has no conditioning.text (tokens, dim)")
    return text.tokens, text.dim


class TextEncoder:
    def __init__(self, pack: Pack, *, cache_size: int = 64) -> None:
        self.tokens, self.dim = text_shape(pack)
        self.tokenizer = load_tokenizer(pack)
        self.model = load_component(pack, "text_encoder")
        config = self.model.config
        hidden = int(getattr(config, "hidden_size", None) or config.d_model)  # BERT names it one way, T5 another
        if hidden != self.dim:
            raise PackError(f"pack {pack.id!r}: text encoder width {hidden} != conditioning.text.dim {self.dim}")
        self.cache_size = cache_size
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self.encode_calls = 0  # how often the model actually ran (cache misses)

    def __call__(self, prompt: str) -> np.ndarray:
        """[1, tokens, dim] float32 states for one prompt."""
        with self._lock:
            hit = self._cache.get(prompt)
            if hit is not None:
                self._cache.move_to_end(prompt)
                return hit
        states = self._encode(prompt)
        with self._lock:
            self._cache[prompt] = states
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return states

    @torch.inference_mode()
    def _encode(self, prompt: str) -> np.ndarray:
        self.encode_calls += 1
        batch = self.tokenizer(
            [prompt],
            padding="max_length",
            max_length=self.tokens,
            truncation=True,
            return_tensors="pt",
        )
        mask = batch["attention_mask"]
        out = self.model(input_ids=batch["input_ids"], attention_mask=mask).last_hidden_state
        # Zero the padding positions: the denoiser must not read the encoder's
        # states for pad tokens (WanPipeline does the same).
        out = out * mask.unsqueeze(-1).to(out.dtype)
        states = out.float().numpy()
        states.flags.writeable = False  # shared by the cache: nobody may edit it
        return states
