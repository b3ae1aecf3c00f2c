"""The Ray executor against a real local Ray instance on CPU: VSR and encode units as tasks, retried, same bytes."""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time
from pathlib import Path

import pytest
from conftest import make_stored_draft

from previz.drafts import DraftStore
from upscale.jobs import UNIT_DELAY_ENV, JobRunner

ray = pytest.importorskip("ray", reason="the Ray executor is an optional extra (pip install 'previz[ray]')")
pytestmark = pytest.mark.slow


def holder_of(path: Path) -> int | None:
    """The pid of the process with ``path`` open (a unit's lock file: the worker running that task)."""
    target = str(path)
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
            if any(os.readlink(f"/proc/{pid}/fd/{fd}") == target for fd in fds):
                return int(pid)
        except OSError:
            continue
    return None


def test_a_job_through_ray_survives_a_worker_killed_mid_vsr_and_writes_the_local_bytes(
        tmp_path, test_pack, final_pack, cache_dir, monkeypatch):
    from upscale.executors import RayExecutor

    # Ray workers are fresh processes: they must import this checkout and find the same packs.
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).resolve().parents[1]))
    root = tmp_path / "a"
    with DraftStore(root) as store:
        draft = make_stored_draft(store, test_pack, cache_dir, seconds=0.1)  # 3 frames: segments of 2 and 1
        job = store.promote(draft.id, {"format": "h265", "size": "128x64"})
    shutil.copytree(root, tmp_path / "b")
    with DraftStore(tmp_path / "b") as ref:
        reference = Path(JobRunner(ref, threads=2, segment_frames=2).run(job.id).output).read_bytes()

    monkeypatch.setenv(UNIT_DELAY_ENV, "1")  # each task pauses after each unit: time to kill its worker
    with DraftStore(root) as store:
        # The same torch thread count and segment length as the local run: the same bytes.
        executor = RayExecutor(store, num_cpus=1, threads=2, segment_frames=2)
        outcomes: list = []
        driver = threading.Thread(target=lambda: outcomes.extend(executor.run([job.id])))
        try:
            driver.start()
            deadline = time.monotonic() + 180
            # Segment 0's vsr task has upscaled its first frame and is pausing before the second.
            while (store.job(job.id).progress or {}).get("stage") != "vsr":
                assert time.monotonic() < deadline and driver.is_alive(), "the vsr task never got going"
                time.sleep(0.1)
            pid = holder_of(store.job_dir(job.id) / "locks" / "vsr00000.lock")
            assert pid is not None and pid != os.getpid()
            os.kill(pid, signal.SIGKILL)  # the worker dies mid-VSR; Ray runs that task again
            driver.join(300)
            assert not driver.is_alive()
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)  # that worker is gone: a second attempt finished the segment
        finally:
            executor.close()
        [outcome] = outcomes
        assert outcome.state == "done", outcome.error
        assert store.job(job.id).state == "done" and not store.job_dir(job.id).exists()
        assert Path(outcome.output).read_bytes() == reference
