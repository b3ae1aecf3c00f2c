"""Files that appear whole or not at all, with previz's typed error: the mechanism is :mod:`engines.atomic`.

It lives in ``engines``, the layer under previz, so that engines import nothing
of previz.  These are the same functions; a write that fails (full disk,
read-only directory) raises previz's :class:`~previz.errors.OutputError`,
naming the target, as everything else at previz's edges does.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from engines import atomic
from engines.atomic import file_lock, fsync_dir
from previz.errors import engine_errors

__all__ = ["atomic_copy", "atomic_dir", "atomic_open", "atomic_path", "atomic_write", "file_lock", "fsync_dir"]


@contextlib.contextmanager
def atomic_path(target: Path, *, suffix: str | None = None) -> Iterator[Path]:
    """:func:`engines.atomic.atomic_path`."""
    with engine_errors(), atomic.atomic_path(target, suffix=suffix) as tmp:
        yield tmp


@contextlib.contextmanager
def atomic_open(target: Path) -> Iterator[IO[bytes]]:
    """:func:`engines.atomic.atomic_open`."""
    with engine_errors(), atomic.atomic_open(target) as f:
        yield f


@contextlib.contextmanager
def atomic_dir(target: Path) -> Iterator[Path]:
    """:func:`engines.atomic.atomic_dir`."""
    with engine_errors(), atomic.atomic_dir(target) as tmp:
        yield tmp


def atomic_write(target: Path, data: bytes) -> None:
    """:func:`engines.atomic.atomic_write`."""
    with engine_errors():
        atomic.atomic_write(target, data)


def atomic_copy(source: Path, target: Path) -> None:
    """:func:`engines.atomic.atomic_copy`."""
    with engine_errors():
        atomic.atomic_copy(source, target)
