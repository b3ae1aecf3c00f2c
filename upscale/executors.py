"""Where jobs run: this process (local, the default) or a Ray cluster (``pip install previz[ray]``).

Both run the same :class:`upscale.jobs.JobRunner` stages; an executor only
decides which process runs each.  The backend is picked by name and imported
only when chosen, so a CPU install never imports Ray.

On Ray a job is a small graph of tasks, each with retries:

- ``prepare`` (refine and decode: the stages that need the final pack's models);
- per delivery segment, ``vsr`` (its frames to the delivery size) and then
  ``encode`` (its segment file), so the segments of a long render spread over
  the cluster's workers;
- ``join`` (the remux into the delivery file).

The driver (the process that called :meth:`RayExecutor.run`) holds the job as
the local runner does: its lock, ``running`` state, and ``done`` or ``failed``
at the end.  Every task works in units that the draft store records (see
:mod:`upscale.jobs`), so when a worker dies (a crash, a lost node) Ray runs its
task again (``max_retries``) and the new attempt carries on from the last
finished unit; an ``OSError`` (a shared filesystem's hiccup) is retried too
(``retry_exceptions``).  Each task holds a lock file per unit of work while it
runs, so two attempts never write the same unit.  The job's files live in the
draft store, which every worker must reach (one machine, or a shared
filesystem).  Ray stays out of the live draft path.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from previz.atomic import file_lock
from previz.drafts import DraftStore, Job
from previz.errors import BackendUnavailableError, PrevizError

EXECUTORS = ("local", "ray")
# What a Ray worker needs to find the same packs and code as this process.
FORWARDED_ENV = ("PREVIZ_HOME", "PREVIZ_PACKS", "PYTHONPATH", "HF_HUB_OFFLINE", "TOKENIZERS_PARALLELISM",
                 "PREVIZ_JOB_UNIT_DELAY_S")  # the last: fault injection, set only by the crash tests
# Ray retries a task whose worker died; these application errors are worth a second attempt too.
RETRIED_EXCEPTIONS = [OSError]


@dataclass(frozen=True)
class Outcome:
    job_id: str
    state: str
    output: str | None
    error: str | None


def _outcome(job: Job) -> Outcome:
    return Outcome(job.id, job.state, job.output, job.error)


# ----------------------------------------------------------------------------- task bodies


def _unit_lock(store: DraftStore, job_id: str, name: str) -> Any:
    """One attempt at a time per unit of work; the kernel frees it if the worker dies."""
    return file_lock(store.job_dir(job_id) / "locks" / f"{name}.lock")


def prepare_task(store_root: str, job_id: str, device: str, threads: int | None, segment_frames: int) -> int:
    """Refine and decode; returns the number of delivery segments."""
    from upscale.jobs import JobRunner

    with DraftStore(Path(store_root)) as store, _unit_lock(store, job_id, "prepare"):
        runner = JobRunner(store, device=device, threads=threads, segment_frames=segment_frames)
        return len(runner.prepare(job_id).segments)


def vsr_task(store_root: str, job_id: str, segment: int, device: str) -> int:
    from upscale.jobs import JobRunner, Render

    with DraftStore(Path(store_root)) as store, _unit_lock(store, job_id, f"vsr{segment:05d}"):
        JobRunner(store, device=device).vsr_segment(Render.load(store, job_id), segment)
    return segment


def encode_task(store_root: str, job_id: str, segment: int, _upscaled: int) -> int:
    """Segment ``segment``'s file; ``_upscaled`` is the vsr task's result, so Ray runs this after it."""
    from upscale.jobs import JobRunner, Render

    with DraftStore(Path(store_root)) as store, _unit_lock(store, job_id, f"encode{segment:05d}"):
        JobRunner(store).encode_segment(Render.load(store, job_id), segment)
    return segment


def join_task(store_root: str, job_id: str, *_encoded: int) -> str:
    from upscale.jobs import JobRunner, Render

    with DraftStore(Path(store_root)) as store, _unit_lock(store, job_id, "join"):
        return str(JobRunner(store).join(Render.load(store, job_id)))


# ----------------------------------------------------------------------------- executors


class LocalExecutor:
    name = "local"

    def __init__(self, store: DraftStore, *, device: str = "cpu", segment_frames: int | None = None) -> None:
        from upscale.jobs import SEGMENT_FRAMES, JobRunner

        self.store = store
        self.runner = JobRunner(store, device=device, segment_frames=segment_frames or SEGMENT_FRAMES)

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
    """Jobs, and their VSR and encode units, as Ray tasks with retries, on a local Ray instance or a cluster."""

    name = "ray"

    def __init__(self, store: DraftStore, *, address: str | None = None, num_cpus: int | None = None,
                 max_retries: int = 2, device: str = "cpu", threads: int | None = None,
                 segment_frames: int | None = None) -> None:
        try:
            import ray
        except ImportError:
            raise BackendUnavailableError("the Ray executor needs Ray: pip install 'previz[ray]'",
                                          field="executor", value="ray") from None
        from upscale.jobs import SEGMENT_FRAMES, JobRunner

        self.ray, self.store, self.device = ray, store, device
        # Ray gives a task OMP_NUM_THREADS = its CPUs (1); a job pins its own torch thread count, by
        # default this process's, as a local run does, so the two give the same bytes.
        import torch  # here, not at the top: `previz jobs list` should not pay for it

        self.threads = threads or torch.get_num_threads()
        self.segment_frames = segment_frames or SEGMENT_FRAMES
        self.runner = JobRunner(store, device=device)  # holds each job here, in the driver
        env = {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}
        self._started_here = not ray.is_initialized()
        if self._started_here:
            ray.init(address=address, num_cpus=num_cpus, include_dashboard=False, log_to_driver=False,
                     runtime_env={"env_vars": env} if env else None)
        # Ray's stubs type retry_exceptions as a bool; its docs (and code) also take a list of exception types.
        task: Any = ray.remote(num_cpus=1, max_retries=max_retries,
                               retry_exceptions=RETRIED_EXCEPTIONS)  # type: ignore[call-overload]
        self._prepare, self._vsr, self._encode, self._join = (
            task(f) for f in (prepare_task, vsr_task, encode_task, join_task))
        if device.startswith("cuda"):  # Ray hides the GPUs from a task that asks for none
            self._prepare, self._vsr = (t.options(num_gpus=1) for t in (self._prepare, self._vsr))

    def run(self, job_ids: list[str]) -> list[Outcome]:
        out = []
        for job_id in job_ids:  # one job at a time; its segments spread over the workers
            resume = self.store.job(job_id).state in ("running", "failed")
            try:
                with self.runner.hold(job_id, resume=resume):
                    self._run_tasks(job_id)
            except PrevizError:
                pass  # recorded as failed (or cancelled) on the job
            except self.ray.exceptions.RayError:
                pass  # a task failed past its retries: recorded as failed, with the cause, by hold()
            out.append(_outcome(self.store.job(job_id)))
        return out

    def _run_tasks(self, job_id: str) -> None:
        ray, root = self.ray, str(self.store.root.resolve())
        try:
            segments = ray.get(self._prepare.remote(root, job_id, self.device, self.threads, self.segment_frames))
            encoded = [self._encode.remote(root, job_id, j, self._vsr.remote(root, job_id, j, self.device))
                       for j in range(segments)]
            ray.get(self._join.remote(root, job_id, *encoded))
        except ray.exceptions.RayTaskError as exc:
            if isinstance(exc.cause, PrevizError):  # a job error (cancelled, full disk): the job's own message
                raise exc.cause from None
            raise

    def close(self) -> None:
        if self._started_here:
            self.ray.shutdown()


def create_executor(name: str, store: DraftStore, **options: Any) -> LocalExecutor | RayExecutor:
    if name == "local":
        return LocalExecutor(store, device=options.get("device", "cpu"), segment_frames=options.get("segment_frames"))
    if name == "ray":
        return RayExecutor(store, address=options.get("address"), num_cpus=options.get("num_cpus"),
                           device=options.get("device", "cpu"), threads=options.get("threads"),
                           segment_frames=options.get("segment_frames"))
    raise BackendUnavailableError(f"executor = {name!r}: expected one of {', '.join(EXECUTORS)}",
                                  field="executor", value=name)
