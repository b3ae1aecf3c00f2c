"""previz.atomic: a file (or directory) appears whole under its name, or not at all."""

from __future__ import annotations

import errno
import multiprocessing
import os

import pytest

from previz.atomic import atomic_dir, atomic_open, atomic_path, atomic_write, file_lock
from previz.errors import OutputError


def test_atomic_write_replaces_whole_and_leaves_no_temp(tmp_path):
    target = tmp_path / "a" / "f.bin"
    atomic_write(target, b"one")
    atomic_write(target, b"two")
    assert target.read_bytes() == b"two"
    assert sorted(p.name for p in target.parent.iterdir()) == ["f.bin"]
    assert oct(target.stat().st_mode & 0o777) != oct(0o600)  # an ordinary file, not mkstemp's 0600


def test_an_exception_leaves_the_old_file_and_no_temp(tmp_path):
    target = tmp_path / "f.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_open(target) as f:
        f.write(b"half")
        raise RuntimeError("crash mid-write")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]


def test_a_full_disk_is_an_output_error_naming_the_target(tmp_path):
    target = tmp_path / "f.mov"
    with pytest.raises(OutputError, match="f.mov"), atomic_path(target) as tmp:
        tmp.write_bytes(b"x")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_engines_raise_their_own_write_error_and_previz_its_output_error(tmp_path):
    """The mechanism lives in engines (which import nothing of previz); previz's door gives previz's error."""
    import engines.atomic
    from engines.errors import WriteError

    for module, error in ((engines.atomic, WriteError), (None, OutputError)):
        path = atomic_path if module is None else module.atomic_path
        with pytest.raises(error, match="f.mov") as raised, path(tmp_path / "f.mov") as tmp:
            tmp.write_bytes(b"x")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        assert raised.value.field == "output"
    assert list(tmp_path.iterdir()) == []


def test_engines_import_nothing_of_previz():
    import subprocess
    import sys

    code = ("import sys, engines, engines.atomic, engines.cache, engines.export, engines.precision, "
            "engines.device, engines.torch_backend, engines.onnxruntime_backend, engines.tensorrt_backend; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('previz', 'upscale')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_unwritable_directory_is_an_output_error(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root writes anywhere")
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o500)
    with pytest.raises(OutputError):
        atomic_write(ro / "f", b"x")


def test_atomic_dir_replaces_an_existing_directory(tmp_path):
    target = tmp_path / "seq"
    with atomic_dir(target) as d:
        (d / "a.png").write_bytes(b"1")
    with atomic_dir(target) as d:
        (d / "b.png").write_bytes(b"2")
    assert sorted(p.name for p in target.iterdir()) == ["b.png"]
    assert [p.name for p in tmp_path.iterdir()] == ["seq"]
    with pytest.raises(ValueError), atomic_dir(target) as d:
        (d / "c.png").write_bytes(b"3")
        raise ValueError("stop")
    assert sorted(p.name for p in target.iterdir()) == ["b.png"]
    assert [p.name for p in tmp_path.iterdir()] == ["seq"]


def _try_lock(path, queue):
    with file_lock(path, blocking=False) as held:
        queue.put(held)


def test_file_lock_excludes_another_process_and_dies_with_it(tmp_path):
    lock = tmp_path / "job.lock"
    queue = multiprocessing.get_context("fork").Queue()
    with file_lock(lock) as held:
        assert held
        p = multiprocessing.get_context("fork").Process(target=_try_lock, args=(lock, queue))
        p.start()
        p.join(30)
        assert queue.get(timeout=5) is False
    p = multiprocessing.get_context("fork").Process(target=_try_lock, args=(lock, queue))
    p.start()
    p.join(30)
    assert queue.get(timeout=5) is True
