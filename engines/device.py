"""Where tensors live: checking a device exists, and moving tensors between it and the host without stalling it."""

from __future__ import annotations

from typing import TYPE_CHECKING

from engines.errors import BackendUnavailableError

if TYPE_CHECKING:
    import torch


def checked_device(device: torch.device | str) -> torch.device:
    """``device`` as a torch device; a CUDA device where this torch has none is a typed error."""
    import torch

    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise BackendUnavailableError(f"device {str(device)!r}: this torch has no CUDA GPU to run on",
                                      field="device", value=str(device))
    return resolved


def upload(host: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """A host tensor on ``device``, without making the host wait for the device's queue.

    To a CUDA device the copy goes through pinned memory: copied from pageable
    memory, a few megabytes are staged in pieces as the device reaches them, so
    the host would wait for the work queued before the copy.  torch's pinned
    allocator keeps the buffer until the copy is done.
    """
    import torch

    if torch.device(device).type == "cuda":
        return host.pin_memory().to(device, non_blocking=True)
    return host.to(device)


class HostCopy:
    """A device tensor's copy on the host, queued now and waited for only when it is read.

    On CUDA the copy goes into pinned memory behind the work that makes the
    tensor, with an event after it on the same stream: queuing it never makes
    the host wait, and :meth:`wait` waits for that work alone, not for whatever
    is queued later.  A tensor on the host already (a CPU take) is handed back
    as it is.
    """

    def __init__(self, tensor: torch.Tensor) -> None:
        import torch

        self._done: torch.cuda.Event | None = None
        if tensor.device.type == "cuda":
            self._host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
            self._host.copy_(tensor, non_blocking=True)
            self._done = torch.cuda.Event()
            self._done.record(torch.cuda.current_stream(tensor.device))  # the copy's stream, whatever device is current
        else:
            self._host = tensor.cpu()

    def wait(self) -> torch.Tensor:
        """The host tensor, in ordinary memory.  A pinned buffer goes back to torch's pool at once: a draft
        store keeps every frame of a take, and that much page-locked memory would be taken from the OS."""
        import torch

        if self._done is not None:
            self._done.synchronize()
            pageable = torch.empty(self._host.shape, dtype=self._host.dtype)
            self._host, self._done = pageable.copy_(self._host), None
        return self._host
