"""Runtimes behind one seam: torch, ONNX Runtime and TensorRT look the same to callers.

Backends are imported by name only when chosen, so a CPU machine never imports
tensorrt (see :func:`engines.base.create_engine`).
"""

from engines.base import (
    BACKENDS,
    Engine,
    EngineInfo,
    available_backends,
    create_engine,
    cuda_device_name,
    resolve_backend,
)
from engines.errors import BackendUnavailableError, DeviceOutOfMemoryError, EngineCacheError, EngineError
from engines.graphs import Graph

__all__ = [
    "BACKENDS",
    "BackendUnavailableError",
    "DeviceOutOfMemoryError",
    "Engine",
    "EngineCacheError",
    "EngineError",
    "EngineInfo",
    "Graph",
    "available_backends",
    "create_engine",
    "cuda_device_name",
    "resolve_backend",
]
