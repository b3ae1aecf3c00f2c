"""Compute precision: which dtype an engine runs at, and a module cast the way diffusers loads one.

fp32 is the reference and the CPU default (CPUs have no fast bf16 matmul to
speak of, and fp32 keeps takes reproducible across backends).  On CUDA the
default is bf16: the 1.3B draft student ran 5.7x faster in bf16 than in fp32 on
an H200 (DESIGN.md), and bf16 keeps fp32's range, so no loss scaling or
overflow guards are needed, as fp16 would.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from engines.errors import BackendUnavailableError

if TYPE_CHECKING:
    import torch

PRECISIONS = ("fp32", "bf16", "fp16")
_TORCH_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def resolve_precision(precision: str | None, device_type: str) -> str:
    """``None`` or ``auto`` -> the device's default (bf16 on CUDA, fp32 elsewhere); others are checked."""
    if precision in (None, "auto"):
        return "bf16" if device_type == "cuda" else "fp32"
    if precision not in PRECISIONS:
        raise BackendUnavailableError(f"precision {precision!r}: choose one of auto, {', '.join(PRECISIONS)}",
                                      field="precision", value=precision)
    return precision


def torch_dtype(precision: str) -> torch.dtype:
    import torch

    return getattr(torch, _TORCH_DTYPES[precision])  # type: ignore[no-any-return]


def cast_module(module: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """Cast ``module``'s weights to ``dtype`` in place, keeping what diffusers keeps in fp32.

    This is ``from_pretrained(torch_dtype=dtype)``'s own rule
    (``diffusers.models.model_loading_utils.load_model_dict_into_meta``): every
    floating weight is cast, except those whose dotted name, relative to the
    diffusers model holding it, has a part in that model's
    ``_keep_in_fp32_modules`` (Wan: time embedder, modulation tables, norms).
    Casting here rather than loading twice lets one fp32 load serve both the
    fp32 ONNX export and a bf16 torch engine, with the weights
    ``torch_dtype`` loading would give (tests/test_precision.py checks it).
    Unlike ``ModelMixin.to(dtype)``, which casts everything and warns about it.
    """
    import torch

    kept: set[int] = set()
    for owner in module.modules():
        keep = getattr(owner, "_keep_in_fp32_modules", None) or []
        for name, tensor in owner.state_dict(keep_vars=True).items():
            if any(part in keep for part in name.split(".")):
                kept.add(id(tensor))
    for tensor in module.state_dict(keep_vars=True).values():
        if torch.is_floating_point(tensor):
            tensor.data = tensor.data.to(torch.float32 if id(tensor) in kept else dtype)
    return module
