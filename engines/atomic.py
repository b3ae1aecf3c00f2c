"""The one home for files that appear whole or not at all, and for cross-process locks.

Every writer that must never leave a half-written file under its final name
(draft files, takes, exports, engine plans, ONNX files, packs, final renders,
job checkpoints) goes through here, so the crash-safety rule is written once:
write beside the target under a hidden temporary name, flush and fsync the
data, give it an ordinary file mode, rename it over the target (atomic on POSIX
within one filesystem), then fsync the directory so the rename itself survives a
power cut.

It lives in ``engines``, the lowest layer, so that engines import nothing of
previz; previz reaches it through :mod:`previz.atomic`, which raises previz's
own ``OutputError`` where this raises :class:`engines.errors.WriteError`.

Locks are advisory ``flock`` locks on a small lock file.  The kernel drops them
when their process dies (even by SIGKILL), so a crashed worker never leaves a
job or a pack locked forever.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from engines.errors import WriteError


def fsync_dir(path: Path) -> None:
    """Make a directory's entries (a rename, a new file) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _ordinary_mode(path: Path, *, directory: bool = False) -> None:
    # mkstemp makes 0600 and mkdtemp 0700; a written file is an ordinary one, so apply the umask.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, (0o777 if directory else 0o666) & ~umask)


def _output_error(target: Path, exc: OSError) -> WriteError:
    return WriteError(f"cannot write {target}: {exc.strerror or exc}", field="output", value=str(target))


@contextlib.contextmanager
def atomic_path(target: Path, *, suffix: str | None = None) -> Iterator[Path]:
    """A temporary path beside ``target``; renamed onto it only if the block finishes.

    For writers that open the file themselves (PyAV, onnx.save).  ``suffix``
    keeps the extension a library sniffs the format from (default: the
    target's own).  On any exception the temporary file is removed and the
    target is untouched.  An ``OSError`` (full disk, read-only directory)
    becomes one :class:`WriteError` naming the target.
    """
    target = Path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.",
                                    suffix=suffix if suffix is not None else (target.suffix or ".tmp"))
        os.close(fd)
    except OSError as exc:
        raise _output_error(target, exc) from None
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        _ordinary_mode(tmp)
        os.replace(tmp, target)
        fsync_dir(target.parent)
    except OSError as exc:
        raise _output_error(target, exc) from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


@contextlib.contextmanager
def atomic_open(target: Path) -> Iterator[IO[bytes]]:
    """A binary file object whose contents replace ``target`` only when the block finishes."""
    with atomic_path(target, suffix=".tmp") as tmp, open(tmp, "wb") as f:
        yield f
        f.flush()


def atomic_write(target: Path, data: bytes) -> None:
    """Temp file in the same directory, fsync, rename: readers see old or new, never half."""
    with atomic_open(target) as f:
        f.write(data)


def atomic_copy(source: Path, target: Path) -> None:
    with atomic_open(target) as out, open(source, "rb") as src:
        shutil.copyfileobj(src, out, 1 << 20)


@contextlib.contextmanager
def atomic_dir(target: Path) -> Iterator[Path]:
    """A temporary directory beside ``target``, renamed onto it (replacing it) when the block finishes.

    For outputs that are directories (image sequences, packs).  A crash leaves
    only a hidden ``.<name>.*`` directory, never a partial ``target``.
    """
    target = Path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    except OSError as exc:
        raise _output_error(target, exc) from None
    try:
        yield tmp
        for path in tmp.rglob("*"):
            if path.is_file():
                with open(path, "rb") as f:
                    os.fsync(f.fileno())
        fsync_dir(tmp)
        _ordinary_mode(tmp, directory=True)
        if target.exists():
            # Directories cannot be renamed over a non-empty one: move the old one aside first.
            old = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.old."))
            os.replace(target, old / "x")
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
        fsync_dir(target.parent)
    except OSError as exc:
        raise _output_error(target, exc) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def file_lock(path: Path, *, blocking: bool = True) -> Iterator[bool]:
    """Hold an exclusive ``flock`` on ``path`` (created if missing) for the block.

    Yields True when held.  With ``blocking=False`` it yields False at once if
    another process holds it, so a caller can say "already running" instead
    of waiting.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
