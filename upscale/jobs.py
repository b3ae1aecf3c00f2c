"""Resumable final-render jobs: refine, decode, VSR and encode as units that survive a crash.

A job is a row in the draft store plus unit rows.  Each unit's file is written
atomically (``previz.atomic``) *before* its row, so a row always names a whole
file:

- ``refine`` unit *i*: the latents after refine step *i* (unit 0 is the
  renoised handoff).  The sampler's whole state between steps is ``x`` and the
  step index, so a restarted job loads the last checkpoint and carries on.
- ``deliver`` unit *j*: segment *j* of the delivery (a self-contained movie
  segment, or that segment's image files).  The VAE decode and the VSR stream
  frames into the segment being encoded; on restart the causal decoder is
  replayed over the finished segments' latent frames (decode is cheap next to
  refine) but nothing finished is upscaled or encoded again.

Everything is deterministic on CPU (seeded noise, a pinned plan, segment
length and torch thread count, fixed encoder settings), so a job killed at any
point and resumed writes a file that is byte-identical to an uninterrupted
run's.

States: queued -> running -> done | failed | cancelled.  A process that runs a
job holds its ``flock`` (released by the kernel if the process dies), so
``previz jobs resume`` can tell a dead run from a live one.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from previz.atomic import atomic_write, file_lock
from previz.drafts import TAKE, Draft, DraftStore, Job
from previz.errors import JobError, PrevizError
from upscale.encode import (
    DEFAULT_TIMECODE,
    DeliveryMeta,
    check_delivery_target,
    delivery_format,
    delivery_size,
    encode_image,
    encode_segment,
    frame_name,
    join_frames,
    join_segments,
    timecode_frame,
)
from upscale.final_pack import FINAL_PACK_ID, open_final_pack
from upscale.refine import FinalModel, Refine, RefinePlan, RefineState, handoff_kind
from upscale.vsr import TiledVSR, Upscaler, upscaler_for

log = logging.getLogger(__name__)

DEFAULT_STRENGTH = 0.6
SEGMENT_FRAMES = 8
# Fault injection for the crash tests: sleep this long after every progress event, so a
# test can SIGKILL the process at a chosen point.  Never set in normal use.
UNIT_DELAY_ENV = "PREVIZ_JOB_UNIT_DELAY_S"


@dataclass(frozen=True)
class Progress:
    job_id: str
    stage: str  # refine (steps) | vsr (frames) | encode (segments)
    unit: int  # finished units of this stage
    units: int
    eta_s: float | None

    def to_dict(self) -> dict[str, Any]:
        return {"stage": self.stage, "unit": self.unit, "units": self.units, "eta_s": self.eta_s}


class JobCancelled(JobError):
    code = "job_cancelled"


def default_output_dir(store: DraftStore) -> Path:
    return store.root / "finals"


def output_target(store: DraftStore, job: Job) -> Path:
    """Where a job's delivery lands: ``<output_dir>/<draft>_<job><ext>`` (a directory for sequences)."""
    fmt = delivery_format(job.options.get("format", "prores"))
    directory = Path(job.options.get("output_dir") or default_output_dir(store))
    name = f"{job.draft_id}_{job.id}"
    return directory / (name if fmt.sequence else name + fmt.ext)


def parse_size(text: str) -> tuple[int, int]:
    w, h = text.split("x")
    return int(w), int(h)


class JobRunner:
    """Runs one job at a time in this process (the local executor: one worker per device)."""

    def __init__(self, store: DraftStore, *, device: str = "cpu", segment_frames: int = SEGMENT_FRAMES,
                 threads: int | None = None, on_progress: Callable[[Progress], None] | None = None,
                 say: Callable[[str], None] = lambda _msg: None, stop: threading.Event | None = None,
                 upscaler: Upscaler | None = None) -> None:
        if segment_frames < 1:
            raise JobError(f"segment_frames = {segment_frames}: expected at least 1", field="segment_frames",
                           value=segment_frames)
        self.store, self.device, self.on_progress, self.say = store, device, on_progress, say
        self.segment_frames = segment_frames
        self.threads = threads  # torch CPU threads; None: whatever this process has
        self.stop = stop  # set by a shutting-down server: the job fails at its next unit, resumable
        self.upscaler = upscaler or upscaler_for("lanczos")  # the only one until a trained VSR pack lands
        self._delay = float(os.environ.get(UNIT_DELAY_ENV, "0") or 0)
        self._models: dict[str, FinalModel] = {}

    # ------------------------------------------------------------------ lifecycle

    def run(self, job_id: str, *, resume: bool = False) -> Job:
        """Run a queued job (or resume a dead or failed one) to done; returns the finished row."""
        job = self.store.job(job_id)
        if not resume and job.state != "queued":
            hint = " (use `previz jobs resume`)" if job.state in ("running", "failed") else ""
            raise JobError(f"job {job_id} is {job.state}, not queued{hint}", field="state", value=job.state)
        if resume and job.state not in ("running", "failed"):
            raise JobError(f"job {job_id} is {job.state}: only a running (interrupted) or failed job resumes",
                           field="state", value=job.state)
        work = self.store.job_dir(job_id)
        with file_lock(work.parent / f"{job_id}.lock", blocking=False) as held:
            if not held:
                raise JobError(f"job {job_id} is running in another process", field="state", value=job.state)
            self.store.set_job_state(job_id, "running", allowed_from=("running", "failed") if resume else ("queued",))
            try:
                output = self._render(self.store.job(job_id), work)
            except JobCancelled:
                shutil.rmtree(work, ignore_errors=True)
                raise
            except PrevizError as exc:
                self._fail(job_id, exc.message)
                raise
            except KeyboardInterrupt:
                self._fail(job_id, "interrupted (resume it with `previz jobs resume`)")
                raise
            except BaseException as exc:  # a bug: record it on the job, keep the traceback
                self._fail(job_id, f"internal error: {type(exc).__name__}: {exc}"[:500])
                raise
            done = self.store.set_job_state(job_id, "done", output=str(output))
            shutil.rmtree(work, ignore_errors=True)  # the units are in the delivery now
            return done

    def _fail(self, job_id: str, message: str) -> None:
        try:
            self.store.set_job_state(job_id, "failed", error=message)
        except PrevizError:
            pass  # cancelled meanwhile: that state stands

    def _check_cancelled(self, job_id: str) -> None:
        if self.store.job(job_id).state == "cancelled":
            raise JobCancelled(f"job {job_id} was cancelled", field="state", value="cancelled")
        if self.stop is not None and self.stop.is_set():
            raise JobError(f"stopped: the server shut down before job {job_id} finished; "
                           f"`previz jobs resume {job_id}` carries on", field="state", value="stopped")

    def _progress(self, job_id: str, stage: str, unit: int, units: int, started: float, first: int) -> None:
        done_here = unit - first
        eta = (time.monotonic() - started) / done_here * (units - unit) if done_here > 0 else None
        event = Progress(job_id, stage, unit, units, None if eta is None else round(eta, 1))
        self.store.set_job_progress(job_id, event.to_dict())
        if self.on_progress is not None:
            self.on_progress(event)
        if self._delay:
            time.sleep(self._delay)

    # ------------------------------------------------------------------ the render

    def _model(self, pack_ref: str) -> FinalModel:
        if pack_ref not in self._models:
            self._models[pack_ref] = FinalModel(open_final_pack(pack_ref, self.say), device=self.device)
        return self._models[pack_ref]

    def _render(self, job: Job, work: Path) -> Path:
        draft = self.store.get(job.draft_id)
        options = job.options
        fmt = delivery_format(options.get("format", "prores"))
        target = check_delivery_target(output_target(self.store, job))  # before any work: fail fast
        model = self._model(options.get("pack", FINAL_PACK_ID))
        pack = model.pack
        assert pack.final is not None
        width, height = parse_size(options["size"]) if "size" in options else (pack.final.width, pack.final.height)
        draft_space = (draft.meta.get("pack") or {}).get("latent_space")
        plan = model.plan(draft.recipe, frames=draft.frames, fps=draft.fps, width=width, height=height,
                          strength=float(options.get("strength", DEFAULT_STRENGTH)),
                          handoff=handoff_kind(draft_space, pack))
        work.mkdir(parents=True, exist_ok=True)
        # A resume keeps the segment length the job started with (H.265 segments are separate
        # encodes) and its torch thread count (CPU reductions group differently per thread count,
        # so the bytes are reproducible only at the same count).
        segment_frames, threads = self._pin_plan(work, job, plan, pack.fingerprint())
        torch.set_num_threads(threads)

        latents = self._refine(job, draft, model, plan, work)
        resolution = delivery_size(options.get("resolution", "uhd"))
        vsr = TiledVSR(self.upscaler, (plan.width, plan.height), resolution)
        meta = DeliveryMeta(
            draft_id=draft.id, job_id=job.id, recipe=draft.recipe, fps=plan.fps,
            timecode=options.get("timecode", DEFAULT_TIMECODE),
            extra={
                "packs": {"draft": draft.meta.get("pack") or {}, "final": pack.recipe_stamp()},
                "upscaler": {"name": vsr.upscaler.name, "label": vsr.upscaler.label,
                             "trained": vsr.upscaler.trained},
                "plan": plan.to_dict(),
                "options": {k: v for k, v in options.items() if k != "output_dir"},
            },
        )
        return self._deliver(job, model, plan, latents, vsr, fmt, meta, work, target, segment_frames)

    def _pin_plan(self, work: Path, job: Job, plan: RefinePlan, fingerprint: str) -> tuple[int, int]:
        """The plan a job started with; a resume against a different pack or plan would mix two renders.

        Returns the segment length and thread count pinned with it.
        """
        record: dict[str, Any] = {"plan": plan.to_dict(), "pack": fingerprint, "options": job.options}
        path = work / "plan.json"
        if path.is_file():
            pinned = json.loads(path.read_text())
            segment_frames, threads = int(pinned.pop("segment_frames")), int(pinned.pop("threads"))
            if pinned != json.loads(json.dumps(record)):
                raise JobError(f"job {job.id}: its final pack or plan changed since it started; it cannot resume "
                               "into the same file (cancel it and promote the draft again)", field="job_id",
                               value=job.id)
            return segment_frames, threads
        record["segment_frames"] = self.segment_frames
        record["threads"] = self.threads or torch.get_num_threads()
        atomic_write(path, (json.dumps(record, sort_keys=True, indent=1) + "\n").encode())
        return self.segment_frames, record["threads"]

    # ------------------------------------------------------------------ refine units

    def _refine(self, job: Job, draft: Draft, model: FinalModel, plan: RefinePlan, work: Path) -> np.ndarray:
        import safetensors.numpy

        done = self.store.units(job.id, "refine")
        last = max((i for i, f in done.items() if (work / f).is_file()), default=None)
        if last is not None:
            x = safetensors.numpy.load_file(str(work / done[last]))["x"]
            self.say(f"job {job.id}: resuming refine after step {last} of {plan.units}")
        else:
            if plan.handoff == "latent":
                x = model.start_from_latents(plan, self.store.load_latents(draft.id))
            else:
                x = model.start_from_frames(plan, read_take(self.store.file_path(draft.id, TAKE)))
            self._checkpoint(job.id, work, 0, x)
            last = 0
        refine = Refine(model.model(draft.recipe, plan), plan, RefineState(last, x))
        started = time.monotonic()
        while not refine.done:
            self._check_cancelled(job.id)
            state = refine.step()
            self._checkpoint(job.id, work, state.next_step, state.x)
            self._progress(job.id, "refine", state.next_step, plan.units, started, last)
        peak = model.placement.peak_device_bytes()
        if peak is not None:
            self.say(f"job {job.id}: refine peak device memory {peak / 2**30:.2f} GiB "
                     f"({model.placement.swaps} expert swaps)")
        return refine.state.x

    def _checkpoint(self, job_id: str, work: Path, index: int, x: np.ndarray) -> None:
        import safetensors.numpy

        name = f"refine/step{index:04d}.safetensors"
        atomic_write(work / name, safetensors.numpy.save({"x": np.ascontiguousarray(x, np.float32)}))
        self.store.add_unit(job_id, "refine", index, name)  # the row only after the file is whole

    # ------------------------------------------------------------------ delivery units

    def _deliver(self, job: Job, model: FinalModel, plan: RefinePlan, latents: np.ndarray, vsr: TiledVSR,
                 fmt: Any, meta: DeliveryMeta, work: Path, target: Path, segment_frames: int) -> Path:
        size = vsr.dst
        segments = [(s, min(segment_frames, plan.frames - s)) for s in range(0, plan.frames, segment_frames)]
        done = {i for i, f in self.store.units(job.id, "deliver").items() if (work / f).exists()}
        first_todo = next((i for i in range(len(segments)) if i not in done), len(segments))
        if done:
            self.say(f"job {job.id}: resuming delivery at segment {first_todo} of {len(segments)}")
        frames = model.decode(latents, plan.frames)
        window: collections.deque[np.ndarray] = collections.deque(maxlen=vsr.upscaler.temporal_window)
        started = time.monotonic()
        first_frame = sum(n for i, (_, n) in enumerate(segments) if i in done)
        for j, (start, count) in enumerate(segments):
            if j in done:
                for _ in range(count):
                    # Replay the causal decoder; nothing is upscaled or encoded again, but a
                    # temporal VSR's window is refilled, so the next frame sees what it saw before.
                    window.append(next(frames))
                continue
            self._check_cancelled(job.id)
            upscaled = self._vsr_frames(job.id, vsr, frames, window, count, start, plan.frames, started,
                                        first_frame)
            if fmt.sequence:
                directory = work / f"deliver/seg{j:05d}"
                shutil.rmtree(directory, ignore_errors=True)  # a half-written segment from a killed run
                directory.mkdir(parents=True)
                for k, image in enumerate(upscaled):
                    encode_image(directory / frame_name("f", start + k, fmt), image, fmt, size)
                name = f"deliver/seg{j:05d}"
            else:
                name = f"deliver/seg{j:05d}{fmt.ext}"
                encode_segment(work / name, upscaled, fmt, size, plan.fps)
            self.store.add_unit(job.id, "deliver", j, name)
            self._progress(job.id, "encode", j + 1, len(segments), started, first_todo)
        self._check_cancelled(job.id)
        if fmt.sequence:
            files = sorted(p for j in range(len(segments)) for p in (work / f"deliver/seg{j:05d}").iterdir())
            join_frames(files, target, fmt, meta, timecode_frame(meta.timecode, meta.fps))
        else:
            join_segments([work / f"deliver/seg{j:05d}{fmt.ext}" for j in range(len(segments))], target, fmt, meta)
        return target

    def _vsr_frames(self, job_id: str, vsr: TiledVSR, frames: Iterator[np.ndarray],
                    window: collections.deque[np.ndarray], count: int, start: int, total: int, started: float,
                    first: int) -> Iterator[np.ndarray]:
        for k in range(count):
            window.append(next(frames))
            yield vsr.upscale(list(window))
            self._progress(job_id, "vsr", start + k + 1, total, started, first)


def read_take(path: Path) -> Iterator[np.ndarray]:
    """A draft's MP4 as float32 RGB frames in [0, 1] (the pixel handoff's input)."""
    import av

    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            yield frame.to_ndarray(format="rgb24").astype(np.float32) / 255.0


def cancel(store: DraftStore, job_id: str) -> Job:
    """Cancel a job.  A process rendering it stops at its next unit and removes its files;
    if none is (the lock is free), the files of an interrupted run are removed here."""
    job = store.set_job_state(job_id, "cancelled")
    work = store.job_dir(job_id)
    with file_lock(work.parent / f"{job_id}.lock", blocking=False) as held:
        if held:
            shutil.rmtree(work, ignore_errors=True)
    return job


class BackgroundJobs:
    """The local executor inside ``previz serve``: one worker thread runs queued jobs, oldest first.

    ``on_event(kind, job, progress)`` is called from the worker thread with
    ``job_progress``, ``job_done`` or ``job_failed``; the server forwards it to
    its clients.  One worker per device: the live drafts and this worker share
    the machine, so a second one would only slow both.
    """

    def __init__(self, store: DraftStore, on_event: Callable[[str, Job, dict[str, Any] | None], None], *,
                 device: str = "cpu", poll_s: float = 1.0) -> None:
        self.store, self.on_event, self.poll_s = store, on_event, poll_s
        self._stop = threading.Event()
        self.runner = JobRunner(store, device=device, stop=self._stop, on_progress=self._progress)
        self._thread = threading.Thread(target=self._loop, name="previz-jobs", daemon=True)

    def start(self) -> BackgroundJobs:
        self._thread.start()
        return self

    def stop(self, timeout: float = 60.0) -> None:
        """Stop after the unit in progress; an unfinished job is left failed, and resumable."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _progress(self, event: Progress) -> None:
        self.on_event("job_progress", self.store.job(event.job_id), event.to_dict())

    def _loop(self) -> None:
        while not self._stop.is_set():
            queued = self.store.jobs(state="queued")
            if not queued:
                self._stop.wait(self.poll_s)
                continue
            job_id = queued[-1].id  # newest first: the last is the oldest
            try:
                done = self.runner.run(job_id)
                self.on_event("job_done", done, None)
            except PrevizError:
                self.on_event("job_failed", self.store.job(job_id), None)
            except Exception:  # a bug: the runner recorded it on the job; the worker lives on
                log.exception("final-render job %s failed", job_id)
                self.on_event("job_failed", self.store.job(job_id), None)


def run_queued(store: DraftStore, runner: JobRunner) -> list[Job]:
    """Run every queued job, oldest first (the local executor's loop)."""
    finished = []
    for job in reversed(store.jobs(state="queued")):
        try:
            finished.append(runner.run(job.id))
        except PrevizError:
            continue  # recorded as failed (or cancelled) on the job; the next job may still run
    return finished

