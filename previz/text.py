"""Prompt text to the token states a denoiser cross-attends to, with an LRU cache.

The encoder is whatever the pack names (MiniLM for the embedded pack, UMT5 for
real Wan packs), loaded through transformers on the denoiser's device at its
precision: a real Wan checkpoint's UMT5-XXL has 5.7B parameters, 22 GB in fp32
and seconds per prompt on a CPU, where WanPipeline runs it in bf16 on the GPU.
Embeddings are padded to the pack's fixed token count with zeros past the
prompt's end, as WanPipeline does, so every engine sees one static shape.

Camera-only and seed-only changes are the common case while iterating, so the
cache keeps recent prompts as device tensors: such a change neither runs the
text encoder again nor copies its states to the device again.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import torch

from engines.device import checked_device
from engines.precision import precision_name, resolve_precision, torch_dtype
from previz.errors import BackendUnavailableError, PackError, engine_errors
from previz.packs import Pack, load_component, load_tokenizer


def text_shape(pack: Pack) -> tuple[int, int]:
    """(tokens, width) of the text states a pack's denoiser reads, from its manifest."""
    text = pack.conditioning.text
    if text is None:
        raise PackError(f"pack {pack.id!r}: its manifest has no conditioning.text (tokens, dim)")
    return text.tokens, text.dim


class TextEncoder:
    """Prompt -> ``[1, tokens, dim]`` float32 states on ``device``, cached by prompt.

    ``precision`` is fp32, bf16 or fp16; None is bf16 on CUDA (as WanPipeline
    runs UMT5) and, on a CPU, the dtype the checkpoint was stored in (fp32 for
    MiniLM, bf16 for Wan's UMT5: an fp32 copy of UMT5-XXL would be 22 GB of host
    memory).  The states returned are the cache's own tensors, handed to every
    take with that prompt: callers must not write into them.  They are made
    under inference mode, so an in-place write outside it raises; inside it (an
    engine's ``run``) nothing stops one, and the tests check that the take path
    makes none.  On a GPU the cache is device memory: UMT5's states are 8 MB a
    prompt, so a full cache of 64 holds 0.5 GB.
    """

    def __init__(self, pack: Pack, *, cache_size: int = 64, device: str | torch.device = "cpu",
                 precision: str | None = None) -> None:
        self.tokens, self.dim = text_shape(pack)
        if precision == "fp8":
            raise BackendUnavailableError("a text encoder runs fp32, bf16 or fp16; fp8 is for the engines' matmuls",
                                          field="precision", value=precision)
        with engine_errors():
            self.device = checked_device(device)
            stored = precision in (None, "auto") and self.device.type != "cuda"
            chosen = None if stored else resolve_precision(precision, self.device.type)
        self.tokenizer = load_tokenizer(pack)
        # torch_dtype at load, not .to(dtype) after it: no fp32 copy of a bf16 checkpoint is made, and the
        # modules transformers keeps in fp32 (T5's ``wo`` at fp16) stay fp32.  A one-device device_map puts
        # each weight straight on the device as it is read, with no dispatch hooks.
        self.model = load_component(pack, "text_encoder", torch_dtype="auto" if chosen is None else torch_dtype(chosen),
                                    device_map={"": self.device})
        self.precision = chosen or precision_name(self.model.dtype)
        config = self.model.config
        hidden = int(getattr(config, "hidden_size", None) or config.d_model)  # BERT names it one way, T5 another
        if hidden != self.dim:
            raise PackError(f"pack {pack.id!r}: text encoder width {hidden} != conditioning.text.dim {self.dim}")
        self.cache_size = cache_size
        self._cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._lock = threading.Lock()
        self.encode_calls = 0  # how often the model actually ran (cache misses)

    def __call__(self, prompt: str) -> torch.Tensor:
        """[1, tokens, dim] float32 states for one prompt, on ``self.device``: read them, never write them."""
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
    def _encode(self, prompt: str) -> torch.Tensor:
        self.encode_calls += 1
        batch = self.tokenizer(
            [prompt],
            padding="max_length",
            max_length=self.tokens,
            truncation=True,
            return_tensors="pt",
        ).to(self.device)
        mask = batch["attention_mask"]
        out = self.model(input_ids=batch["input_ids"], attention_mask=mask).last_hidden_state
        # Zero the padding positions: the denoiser must not read the encoder's
        # states for pad tokens (WanPipeline does the same).
        return (out.float() * mask.unsqueeze(-1)).contiguous()
