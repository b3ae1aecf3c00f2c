"""The engines' own errors: what a runtime can tell its caller, without knowing who the caller is.

``engines`` is a layer under previz and raises none of previz's errors;
previz turns these into its typed, user-facing errors at its edge
(:func:`previz.errors.from_engine_error`).  Like previz's errors they carry a
message a person can act on, and the field and value it is about.
"""

from __future__ import annotations

from typing import Any


class EngineError(Exception):
    """Base class of everything an engine raises on purpose."""

    def __init__(self, message: str, *, field: str | None = None, value: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.value = value


class BackendUnavailableError(EngineError):
    """The requested runtime is not installed, has no device here, or cannot build this graph."""


class EngineCacheError(EngineError):
    """A cached artifact is not trusted (not in our manifest, altered, or pointing outside its directory)."""


class WriteError(EngineError):
    """A file could not be written where it was asked (full disk, read-only directory); nothing half-written
    was left under its name (engines.atomic)."""


class DeviceOutOfMemoryError(EngineError):
    """The device ran out of memory during a run.  The engine itself is still usable."""


# What runtimes that do not raise torch.OutOfMemoryError say when an allocation fails:
# ONNX Runtime's BFC arena and CUDA EP, TensorRT's allocator, cuBLAS/cuDNN.
_OOM_MESSAGES = ("out of memory", "failed to allocate memory", "cudaerrormemoryallocation",
                 "cuda_error_out_of_memory", "cublas_status_alloc_failed", "cudnn_status_alloc_failed")


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` (or what it was raised from) means the device ran out of memory."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, DeviceOutOfMemoryError) or type(current).__name__ == "OutOfMemoryError":
            return True  # ours, or torch.OutOfMemoryError (named, so that this module needs no torch)
        # ONNX Runtime's errors are pybind classes outside RuntimeError: only their words are reliable.
        if any(m in str(current).lower() for m in _OOM_MESSAGES):
            return True
        current = current.__cause__ or current.__context__
    return False
