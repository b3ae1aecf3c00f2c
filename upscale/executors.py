"""Where jobs run: this process (local, the default) or a Ray cluster (``pip install previz[ray]``).

Both run the same :class:`upscale.jobs.JobRunner`; an executor only decides
which process does.  The backend is picked by name and imported only when
chosen, so a CPU install never imports Ray.

On Ray each job is one task.  If the worker process running it dies (a crash, a
node lost), Ray runs the task again (``max_retries``), and the new attempt
*resumes* the job from its last finished unit rather than starting over: the
job's units live in the draft store, which every worker must reach (one
machine, or a shared filesystem).  Ray stays out of the live draft path.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from previz.drafts import DraftStore, Job
from previz.errors import BackendUnavailableError, PrevizError

EXECUTORS = ("local", "ray")
# What a Ray worker needs to find the same packs and code as this process.
FORWARDED_ENV = ("PREVIZ_HOME", "PREVIZ_PACKS", "PYTHONPATH", "HF_HUB_OFFLINE", "TOKENIZERS_PARALLELISM",
                 "PREVIZ_JOB_UNIT_DELAY_S")  # the last: fault injection, set only by the crash tests


@dataclass(frozen=True)
class Outcome:
    job_id: str
    state: str
    output: str | None
    error: str | None


def _outcome(job: Job) -> Outcome:
    return Outcome(job.id, job.state, job.output, job.error)


def run_job_in_store(store_root: str, job_id: str, device: str = "cpu", threads: int | None = None) -> Outcome:
    """Run (or resume) one job against the store at ``store_root``; the body of a Ray task."""
    from upscale.jobs import JobRunner

    with DraftStore(Path(store_root)) as store:
        # A retried attempt finds the job 'running' (its first worker died holding it): resume.
        resume = store.job(job_id).state in ("running", "failed")
        try:
            return _outcome(JobRunner(store, device=device, threads=threads).run(job_id, resume=resume))
        except PrevizError:
            return _outcome(store.job(job_id))  # failed or cancelled: recorded on the job


class LocalExecutor:
    name = "local"

    def __init__(self, store: DraftStore, *, device: str = "cpu") -> None:
        from upscale.jobs import JobRunner

        self.store = store
        self.runner = JobRunner(store, device=device)

    def run(self, job_ids: list[str]) -> list[Outcome]:
        out = []
        for job_id in job_ids:
            resume = self.store.job(job_id).state in ("running", "failed")
            try:
                out.append(_outcome(self.runner.run(job_id, resume=resume)))
            except PrevizError:
                out.append(_outcome(self.store.job(job_id)))
        return out

    def close(self) -> None:
        pass


class RayExecutor:
    """Jobs as Ray tasks with retries, on a local Ray instance or a cluster (``address``)."""

    name = "ray"

    def __init__(self, store: DraftStore, *, address: str | None = None, num_cpus: int | None = None,
                 max_retries: int = 2, device: str = "cpu", threads: int | None = None) -> None:
        try:
            import ray
        except ImportError:
            raise BackendUnavailableError("the Ray executor needs Ray: pip install 'previz[ray]'",
                                          field="executor", value="ray") from None
        self.ray, self.store, self.max_retries, self.device = ray, store, max_retries, device
        # Ray gives a task OMP_NUM_THREADS = its CPUs (1); a job pins its own torch thread count,
        # and the same count as another executor's gives the same bytes.
        self.threads = threads
        env = {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}
        self._started_here = not ray.is_initialized()
        if self._started_here:
            ray.init(address=address, num_cpus=num_cpus, include_dashboard=False, log_to_driver=False,
                     runtime_env={"env_vars": env} if env else None)
        self._task: Any = ray.remote(num_cpus=1, max_retries=max_retries)(run_job_in_store)

    def run(self, job_ids: list[str]) -> list[Outcome]:
        root = str(self.store.root.resolve())
        futures = [self._task.remote(root, job_id, self.device, self.threads) for job_id in job_ids]
        return list(self.ray.get(futures))

    def close(self) -> None:
        if self._started_here:
            self.ray.shutdown()


def create_executor(name: str, store: DraftStore, **options: Any) -> LocalExecutor | RayExecutor:
    if name == "local":
        return LocalExecutor(store, device=options.get("device", "cpu"))
    if name == "ray":
        return RayExecutor(store, address=options.get("address"), num_cpus=options.get("num_cpus"),
                           device=options.get("device", "cpu"), threads=options.get("threads"))
    raise BackendUnavailableError(f"executor = {name!r}: expected one of {', '.join(EXECUTORS)}",
                                  field="executor", value=name)
