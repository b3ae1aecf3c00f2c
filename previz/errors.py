"""Every error a user can cause, as one typed hierarchy.

The CLI prints these as one line and exits non-zero; the server (a later issue)
turns them into protocol ``error`` events.  Anything that is *not* a
``PrevizError`` is a bug and keeps its traceback.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any


class PrevizError(Exception):
    """Base class: a problem the user can act on."""

    code = "previz_error"

    def __init__(self, message: str, *, field: str | None = None, value: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.value = value

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "field": self.field}


class InvalidRecipeError(PrevizError, ValueError):
    """A recipe field is out of range or malformed."""

    code = "invalid_recipe"


class PackError(PrevizError):
    """A model pack is missing, malformed or fails its hash check."""

    code = "pack_error"


class UnknownPackError(PackError, LookupError):
    code = "unknown_pack"


class UnsafeWeightsError(PackError):
    """Weights in a format that can execute code on load (pickle)."""

    code = "unsafe_weights"


class BackendUnavailableError(PrevizError):
    """The requested runtime is not installed or has no device here."""

    code = "backend_unavailable"


class EngineCacheError(PrevizError):
    """A cached engine is not trusted (not in our manifest, or altered)."""

    code = "untrusted_engine"


class OutputError(PrevizError):
    """A file previz was asked to write cannot be written there."""

    code = "output_error"


class InputFileError(PrevizError):
    """A file previz was asked to read is missing, unreadable or not what it should be."""

    code = "input_error"


class DraftError(PrevizError):
    """A stored draft cannot be read, changed or promoted as asked."""

    code = "draft_error"


class UnknownDraftError(DraftError, LookupError):
    """No draft (or draft file) by that id or name; also any malformed id."""

    code = "unknown_draft"


class InvalidTransitionError(DraftError):
    """A state change a draft's current state does not allow (e.g. un-promoting)."""

    code = "invalid_transition"


class UnknownJobError(DraftError, LookupError):
    """No final-render job by that id; also any malformed job id."""

    code = "unknown_job"


class JobError(PrevizError):
    """A final-render job cannot run as asked (already running, its pack changed, cancelled)."""

    code = "job_error"


class OutOfDeviceMemoryError(PrevizError):
    """The GPU ran out of memory during a take: a smaller size, shorter take or window fits."""

    code = "out_of_memory"


def from_engine_error(exc: BaseException) -> PrevizError | None:
    """The previz error an ``engines`` error stands for (None when ``exc`` is not one).

    ``engines`` raises its own errors (it is a layer under previz); previz's
    edges (the CLI, the generation worker, the final jobs) turn them into these.
    """
    import sys

    if "engines.errors" not in sys.modules:  # nothing of engines' has run: exc cannot be one of its errors
        return None
    from engines import errors as engine

    if not isinstance(exc, engine.EngineError):
        return None
    kinds: list[tuple[type[engine.EngineError], type[PrevizError]]] = [
        (engine.BackendUnavailableError, BackendUnavailableError),
        (engine.EngineCacheError, EngineCacheError),
        (engine.DeviceOutOfMemoryError, OutOfDeviceMemoryError),
        (engine.WriteError, OutputError),
    ]
    cls = next((ours for theirs, ours in kinds if isinstance(exc, theirs)), PrevizError)
    return cls(exc.message, field=exc.field, value=exc.value)


@contextlib.contextmanager
def engine_errors() -> Iterator[None]:
    """Raise engines' errors as previz's, for code that calls into ``engines``."""
    try:
        yield
    except Exception as exc:
        mapped = from_engine_error(exc)
        if mapped is None:
            raise
        raise mapped from exc
