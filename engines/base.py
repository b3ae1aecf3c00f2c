"""The Engine protocol, backend selection by name, and GPU detection.

An Engine runs one graph (the denoiser or the decoder) with torch tensors in
and out, on its own device: a CUDA engine takes and returns CUDA tensors, so a
take's latents never visit the host between denoiser steps (ONNX Runtime binds
them with IOBinding, TensorRT by address).  Its callers (the sampler, the take
loop) never learn which runtime it is.  Numpy is for the edges (image and video
encoding, the draft store), not for this seam.
"""

from __future__ import annotations

import ctypes
import functools
import importlib
import importlib.util
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from engines.errors import BackendUnavailableError
from engines.graphs import Graph

if TYPE_CHECKING:
    import torch

# name -> module; each module exposes `unavailable_reason() -> str | None` and
# `create(graph, cache_dir, **options) -> Engine`.  Options a backend does not use are ignored:
# device (torch: "cuda" where there is one, else "cpu"), precision (torch: fp32 | bf16 | fp16 | fp8;
# tensorrt: fp16 | fp32), compile, compile_mode, compile_scope, attention and gelu_epilogue (torch),
# threads (onnxruntime).
BACKENDS: dict[str, str] = {
    "torch": "engines.torch_backend",
    "onnxruntime": "engines.onnxruntime_backend",
    "tensorrt": "engines.tensorrt_backend",
}


@dataclass(frozen=True)
class EngineInfo:
    backend: str
    graph: str
    device: str
    precision: str
    providers: tuple[str, ...] = ()  # what the runtime actually uses, not what it lists
    details: dict[str, Any] = field(default_factory=dict)  # e.g. compile_s: the first (compiling) run


@runtime_checkable
class Engine(Protocol):
    info: EngineInfo
    device: torch.device  # where run() wants its inputs and leaves its outputs
    # run() returns once the work is queued on the device, before it is done (torch on CUDA, TensorRT);
    # a caller can then do host work meanwhile.  False where run() returns with the results computed.
    queues_work: bool

    def run(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Inputs of the graph's shapes and dtypes, ideally already on ``device`` (else they are moved)."""
        ...

    def warmup(self) -> None: ...

    def close(self) -> None: ...


def warmup_with_examples(engine: Engine, graph: Graph) -> None:
    """Shared warm-up: one run on the graph's example inputs, made on the engine's device."""
    engine.run(graph.example_inputs(device=engine.device))


def release_device_memory() -> None:
    """Hand cached, unused device memory back (after an out-of-memory error), where torch holds any."""
    import sys

    torch = sys.modules.get("torch")  # no torch imported: nothing of ours can hold device memory
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def _backend_module(name: str) -> Any:
    if name not in BACKENDS:
        raise BackendUnavailableError(
            f"unknown backend {name!r}: choose one of {', '.join(BACKENDS)}", field="backend", value=name
        )
    return importlib.import_module(BACKENDS[name])


def available_backends() -> dict[str, str | None]:
    """backend name -> None if it can run here, else the reason it cannot."""
    return {name: _backend_module(name).unavailable_reason() for name in BACKENDS}


def resolve_backend(name: str) -> str:
    """``auto`` -> the fastest backend that runs here without a long first build.

    With a CUDA build of torch and a GPU, that is torch (bf16, compiled: the
    fastest draft path measured on a GPU, and always installed); on a CPU it is
    ONNX Runtime where installed (1.5x eager torch on the project's CPU), else
    torch.  TensorRT is never chosen automatically: its first use builds plans
    for minutes, which a user should ask for (``--backend tensorrt``).
    """
    if name != "auto":
        if name not in BACKENDS:
            _backend_module(name)  # raises, naming the choices, without importing any runtime
        return name
    if _torch_cuda():
        return "torch"
    return "onnxruntime" if _backend_module("onnxruntime").unavailable_reason() is None else "torch"


def _torch_cuda() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def create_engine(backend: str, graph: Graph, cache_dir: Path, **options: Any) -> Engine:
    module = _backend_module(backend)
    reason = module.unavailable_reason()
    if reason:
        raise BackendUnavailableError(f"backend {backend!r} cannot run here: {reason}", field="backend", value=backend)
    engine: Engine = module.create(graph, cache_dir=Path(cache_dir), **options)
    return engine


def module_installed(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


@functools.cache
def cuda_device_name() -> str | None:
    """The first CUDA GPU's name, or None when no GPU is really there.

    onnxruntime-gpu lists CUDA/TensorRT providers whether or not a GPU exists,
    so we ask the driver itself.  torch answers when it is a CUDA build; the
    driver API answers otherwise (a CPU torch beside onnxruntime-gpu).
    """
    try:
        import torch

        if torch.cuda.is_available():
            return str(torch.cuda.get_device_name(0))
    except Exception:  # a broken CUDA install must read as "no GPU", not crash
        pass
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return None
    count = ctypes.c_int(0)
    if cuda.cuInit(0) != 0 or cuda.cuDeviceGetCount(ctypes.byref(count)) != 0 or count.value < 1:
        return None
    name = ctypes.create_string_buffer(256)
    device = ctypes.c_int(0)
    if cuda.cuDeviceGet(ctypes.byref(device), 0) != 0 or cuda.cuDeviceGetName(name, 256, device) != 0:
        return "CUDA GPU"
    return name.value.decode(errors="replace")
