"""The Ray executor against a real local Ray instance on CPU: the same job gives the same bytes."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from conftest import make_stored_draft

from previz.drafts import DraftStore
from upscale.jobs import JobRunner

ray = pytest.importorskip("ray", reason="the Ray executor is an optional extra (pip install 'previz[ray]')")
pytestmark = pytest.mark.slow


def test_a_job_through_ray_writes_the_same_bytes_as_the_local_executor(tmp_path, test_pack, final_pack, cache_dir,
                                                                       monkeypatch):
    from upscale.executors import RayExecutor

    # Ray workers are fresh processes: they must import this checkout and find the same packs.
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).resolve().parents[1]))
    root = tmp_path / "a"
    with DraftStore(root) as store:
        draft = make_stored_draft(store, test_pack, cache_dir, seconds=0.1)
        job = store.promote(draft.id, {"format": "h265", "size": "128x64"})
    shutil.copytree(root, tmp_path / "b")
    with DraftStore(tmp_path / "b") as ref:
        reference = Path(JobRunner(ref, threads=2).run(job.id).output).read_bytes()

    with DraftStore(root) as store:
        executor = RayExecutor(store, num_cpus=1, threads=2)  # the same torch thread count: the same bytes
        try:
            [outcome] = executor.run([job.id])
        finally:
            executor.close()
        assert outcome.state == "done", outcome.error
        assert store.job(job.id).state == "done"
        assert Path(outcome.output).read_bytes() == reference
