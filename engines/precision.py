"""Compute precision: which dtype an engine runs at, and a module cast the way diffusers loads one.

fp32 is the reference and the CPU default (CPUs have no fast bf16 matmul to
speak of, and fp32 keeps takes reproducible across backends).  On CUDA the
default is bf16: the 1.3B draft student ran 5.7x faster in bf16 than in fp32 on
an H200 (DESIGN.md), and bf16 keeps fp32's range, so no loss scaling or
overflow guards are needed, as fp16 would.

fp8 (opt-in, CUDA GPUs of compute capability 8.9 or newer: Ada, Hopper,
Blackwell) is bf16 everywhere except the large bf16 linear layers, whose
weights and inputs torchao quantizes to float8 (e4m3, one scale per row), so
their matmuls run on the fp8 tensor cores at up to twice the bf16 rate.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from engines.errors import BackendUnavailableError

if TYPE_CHECKING:
    import torch

PRECISIONS = ("fp32", "bf16", "fp16", "fp8")
_TORCH_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "fp8": "bfloat16"}  # fp8: see top
FP8_CAPABILITY = (8, 9)  # the first NVIDIA architecture (Ada) with fp8 tensor cores


def resolve_precision(precision: str | None, device_type: str) -> str:
    """``None`` or ``auto`` -> the device's default (bf16 on CUDA, fp32 elsewhere); others are checked."""
    if precision in (None, "auto"):
        return "bf16" if device_type == "cuda" else "fp32"
    if precision not in PRECISIONS:
        raise BackendUnavailableError(f"precision {precision!r}: choose one of auto, {', '.join(PRECISIONS)}",
                                      field="precision", value=precision)
    return precision


def torch_dtype(precision: str) -> torch.dtype:
    """The dtype activations and unquantized weights compute at (bf16 for fp8)."""
    import torch

    return getattr(torch, _TORCH_DTYPES[precision])  # type: ignore[no-any-return]


def precision_name(dtype: torch.dtype) -> str:
    """fp32, bf16 or fp16 for a torch dtype (what a module loaded at its stored dtype runs at)."""
    names = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}
    return names[str(dtype).removeprefix("torch.")]


def text_precision(engine_precision: str, device_type: str) -> str | None:
    """The precision a text encoder runs at beside engines at ``engine_precision``.

    On CUDA, bf16 unless the engines run fp32: UMT5 overflows in fp16 (Wan runs it
    in bf16), and fp8 is a matmul format of the engines, not a text encoder's
    dtype.  On a CPU, None: the dtype the checkpoint was stored in, because an
    fp32 copy of a bf16 UMT5-XXL is 22 GB of host memory.
    """
    if device_type != "cuda":
        return None
    return "fp32" if engine_precision == "fp32" else "bf16"


def cast_module(module: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """Cast ``module``'s weights to ``dtype`` in place, keeping what diffusers keeps in fp32.

    This is ``from_pretrained(torch_dtype=dtype)``'s own rule
    (``diffusers.models.model_loading_utils.load_model_dict_into_meta``): every
    floating weight is cast, except those whose dotted name, relative to the
    diffusers model holding it, has a part in that model's
    ``_keep_in_fp32_modules`` (Wan: time embedder, modulation tables, norms).
    A draft model loads its denoiser at the torch engine's precision already
    (no fp32 copy of a bf16 student), so there this leaves the weights as they
    are; it casts graphs built at fp32, with the weights ``torch_dtype``
    loading would give (tests/test_device_path.py checks both).  Unlike
    ``ModelMixin.to(dtype)``, which casts everything and warns about it.
    """
    import torch

    kept: set[int] = set()
    for owner in module.modules():
        keep = getattr(owner, "_keep_in_fp32_modules", None) or []
        for name, tensor in owner.state_dict(keep_vars=True).items():
            if any(part in keep for part in name.split(".")):
                kept.add(id(tensor))
    for tensor in module.state_dict(keep_vars=True).values():
        # Plain tensors only: a weight quantized by an engine that shares it (torchao's fp8) stays as it is.
        if type(tensor) in (torch.Tensor, torch.nn.Parameter) and torch.is_floating_point(tensor):
            tensor.data = tensor.data.to(torch.float32 if id(tensor) in kept else dtype)
    return module


def check_fp8(device: torch.device) -> None:
    """fp8 needs fp8 tensor cores (CUDA, compute capability 8.9+) and torchao: a typed error naming the
    missing one."""
    import importlib.util

    import torch

    if device.type != "cuda" or torch.cuda.get_device_capability(device) < FP8_CAPABILITY:
        where = torch.cuda.get_device_name(device) if device.type == "cuda" else str(device)
        raise BackendUnavailableError(
            f"precision 'fp8' needs an NVIDIA GPU of compute capability {'.'.join(map(str, FP8_CAPABILITY))} or "
            f"newer (Ada, Hopper, Blackwell); this engine runs on {where}: use bf16", field="precision", value="fp8")
    if importlib.util.find_spec("torchao") is None:
        raise BackendUnavailableError("precision 'fp8' needs torchao: pip install 'previz[fp8]'",
                                      field="precision", value="fp8")


def quantize_fp8(module: torch.nn.Module, device: torch.device) -> int:
    """Quantize ``module``'s large bf16 linear layers to float8 in place (torchao); how many are fp8 now.

    Dynamic, per-row scales for the activations and the weights: torchao's recipe for inference with
    no calibration data.  Left in bf16: layers kept in fp32 (see :func:`cast_module`), layers too small
    or oddly shaped for the fp8 matmul (both sides multiples of 16), and the embedders (Wan's time
    projection sets every block's modulation; fp8 recipes for diffusion transformers keep such layers
    in bf16).  Call after the module is cast to bf16 and moved to ``device``.
    """
    import torch

    check_fp8(device)
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_

    def linear(layer: torch.nn.Module, name: str) -> bool:
        return (isinstance(layer, torch.nn.Linear) and layer.weight.dtype == torch.bfloat16
                and layer.in_features % 16 == 0 and layer.out_features % 16 == 0
                and min(layer.in_features, layer.out_features) >= 256 and "embed" not in name)

    def large(layer: torch.nn.Module, name: str) -> bool:
        # type(weight) is a torchao tensor once quantized: graphs that share one set of weights (a
        # block-causal student's three) reach this once per engine, and a layer is quantized once.
        return linear(layer, name) and type(layer.weight) in (torch.Tensor, torch.nn.Parameter)

    count = sum(1 for name, layer in module.named_modules() if linear(layer, name))
    # set_inductor_config=False: torchao would otherwise switch inductor options for the whole process,
    # and every later compile (the decoder's, another engine's) would run with them.
    quantize_(module, Float8DynamicActivationFloat8WeightConfig(granularity=PerRow(), set_inductor_config=False),
              filter_fn=large)
    return count
