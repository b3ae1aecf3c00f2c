"""Resumable final-render jobs: refine, decode, VSR and encode as units that survive a crash.

A job is a row in the draft store plus unit rows.  Each unit's file is written
atomically (``previz.atomic``) *before* its row, so a row always names a whole
file:

- ``refine`` unit *i*: the latents after refine step *i* (unit 0 is the
  renoised handoff).  The sampler's whole state between steps is ``x`` and the
  step index, so a restarted job loads the last checkpoint and carries on.
- ``decode`` unit *f*: video frame *f* from the VAE, at the refine size.  The
  causal decoder's cache is not stored, so a run killed mid-decode replays the
  decoder from the first frame (writing only the missing units); decode is
  cheap next to refine, and nothing after it waits on that.
- ``vsr`` unit *f*: frame *f* at the delivery size, as the 16-bit RGB the
  encoders take (the quantisation every format applies anyway), so a frame is
  never upscaled twice.  A temporal VSR's window is refilled from the decode
  units, so a resumed frame sees what it would have seen.
- ``deliver`` unit *j*: segment *j* of the delivery (a self-contained movie
  segment, or that segment's image files), encoded from its frames' vsr
  units, whose files then go: at most a segment of 4K frames is on disk.

A resume therefore redoes at most the unit that was in progress (one refine
step, one frame, or one segment), except mid-decode (above).  The stages after
``prepare`` read only the job's directory and the store, so an executor may
run each segment's VSR and encode as separate tasks on other workers
(:mod:`upscale.executors`).

Everything is deterministic on CPU (seeded noise, a pinned plan, segment
length and torch thread count, fixed encoder settings), so a job killed at any
point and resumed writes a file that is byte-identical to an uninterrupted
run's.

States: queued -> running -> done | failed | cancelled.  A process that runs a
job holds its ``flock`` (released by the kernel if the process dies), so
``previz jobs resume`` can tell a dead run from a live one.
"""

from __future__ import annotations

import contextlib
import dataclasses
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
PLAN_FILE = "plan.json"  # in the job's directory: the pinned render (see Render)


@dataclass(frozen=True)
class Progress:
    job_id: str
    stage: str  # refine (steps) | decode (frames) | vsr (frames) | encode (segments)
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


@dataclass(frozen=True)
class Render:
    """A job's pinned render, as its ``plan.json`` records it: all the later stages need.

    Written once by :meth:`JobRunner.prepare` (which loads the final pack);
    the VSR, encode and join stages read it back without loading any model, so
    they can run in other processes.
    """

    job_id: str
    work: Path
    plan: RefinePlan
    format: str
    target: Path
    size: tuple[int, int]
    upscaler: str
    segment_frames: int
    threads: int
    meta: DeliveryMeta

    @property
    def segments(self) -> list[tuple[int, int]]:
        """(first frame, frame count) of each delivery segment."""
        n, step = self.plan.frames, self.segment_frames
        return [(s, min(step, n - s)) for s in range(0, n, step)]

    @classmethod
    def load(cls, store: DraftStore, job_id: str) -> Render:
        work = store.job_dir(job_id)
        try:
            record = json.loads((work / PLAN_FILE).read_text())
        except FileNotFoundError:
            raise JobError(f"job {job_id} has not been prepared (no {PLAN_FILE})", field="job_id",
                           value=job_id) from None
        plan = dict(record["check"]["plan"])
        plan["sigmas"] = tuple(plan["sigmas"])
        m = record["meta"]
        return cls(job_id=job_id, work=work, plan=RefinePlan(**plan), format=record["format"],
                   target=Path(record["target"]), size=(int(record["size"][0]), int(record["size"][1])),
                   upscaler=record["check"]["upscaler"], segment_frames=int(record["segment_frames"]),
                   threads=int(record["threads"]),
                   meta=DeliveryMeta(draft_id=m["draft_id"], job_id=m["job_id"], recipe=m["recipe"], fps=m["fps"],
                                     timecode=m["timecode"], extra=m["extra"]))


def quantize(frame: np.ndarray) -> np.ndarray:
    """A delivery frame as the 16-bit RGB every encoder path starts from (see upscale.encode)."""
    return np.rint(np.clip(frame, 0.0, 1.0) * 65535.0).astype(np.uint16)


def dequantize(frame: np.ndarray) -> np.ndarray:
    return frame.astype(np.float32) / np.float32(65535.0)


class JobRunner:
    """Runs a job's stages; :meth:`run` runs them all in this process (the local executor)."""

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
        self.upscaler = upscaler  # None: the one the job's options name (default Lanczos)
        self._delay = float(os.environ.get(UNIT_DELAY_ENV, "0") or 0)
        self._models: dict[str, FinalModel] = {}
        self._upscalers: dict[str, Upscaler] = {}

    # ------------------------------------------------------------------ lifecycle

    def run(self, job_id: str, *, resume: bool = False) -> Job:
        """Run a queued job (or resume a dead or failed one) to done; returns the finished row."""
        with self.hold(job_id, resume=resume):
            render = self.prepare(job_id)
            for j in range(len(render.segments)):
                self.vsr_segment(render, j)
                self.encode_segment(render, j)
            self.join(render)
        return self.store.job(job_id)

    @contextlib.contextmanager
    def hold(self, job_id: str, *, resume: bool = False) -> Iterator[None]:
        """Own a job while its stages run: its lock, state running, and on the way out done or failed."""
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
                yield
            except JobCancelled:
                shutil.rmtree(work, ignore_errors=True)
                raise
            except PrevizError as exc:
                self._fail(job_id, exc.message)
                raise
            except KeyboardInterrupt:
                self._fail(job_id, "interrupted (resume it with `previz jobs resume`)")
                raise
            except BaseException as exc:  # a bug, or a task that failed on another worker: keep the traceback
                self._fail(job_id, f"internal error: {type(exc).__name__}: {exc}"[:500])
                raise
            job = self.store.job(job_id)
            if job.output is None or job.state != "done":
                raise JobError(f"job {job_id}: its stages ended without a delivery", field="job_id", value=job_id)
            shutil.rmtree(work, ignore_errors=True)  # the units are in the delivery now

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

    # ------------------------------------------------------------------ models

    def _model(self, pack_ref: str) -> FinalModel:
        if pack_ref not in self._models:
            self._models[pack_ref] = FinalModel(open_final_pack(pack_ref, self.say), device=self.device)
        return self._models[pack_ref]

    def _upscaler(self, name: str) -> Upscaler:
        if self.upscaler is not None:
            return self.upscaler
        if name not in self._upscalers:
            self._upscalers[name] = upscaler_for(name, device=self.device)
        return self._upscalers[name]

    # ------------------------------------------------------------------ 1. prepare: plan, refine, decode

    def prepare(self, job_id: str) -> Render:
        """Pin the plan, then refine and decode (the stages that need the final pack); returns the render."""
        job = self.store.job(job_id)
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
        work = self.store.job_dir(job_id)
        work.mkdir(parents=True, exist_ok=True)
        upscaler_name = self.upscaler.name if self.upscaler is not None else options.get("upscaler", "lanczos")
        upscaler = self._upscaler(upscaler_name)
        meta = DeliveryMeta(
            draft_id=draft.id, job_id=job.id, recipe=draft.recipe, fps=plan.fps,
            timecode=options.get("timecode", DEFAULT_TIMECODE),
            extra={
                "packs": {"draft": draft.meta.get("pack") or {}, "final": pack.recipe_stamp()},
                "upscaler": {"name": upscaler.name, "label": upscaler.label, "trained": upscaler.trained,
                             "temporal_window": upscaler.temporal_window},
                "refine": {"device": str(model.device), "precision": model.precision},
                "plan": plan.to_dict(),
                "options": {k: v for k, v in options.items() if k != "output_dir"},
            },
        )
        render = self._pin(job, work, plan, pack.fingerprint(), model.precision, fmt.name, target,
                           delivery_size(options.get("resolution", "uhd")), upscaler_name, upscaler.fingerprint, meta)
        torch.set_num_threads(render.threads)
        latents = self._refine(job, draft, model, plan, work)
        self._decode(render, model, latents)
        return render

    def _pin(self, job: Job, work: Path, plan: RefinePlan, fingerprint: str, precision: str, fmt: str, target: Path,
             size: tuple[int, int], upscaler: str, upscaler_weights: str | None, meta: DeliveryMeta) -> Render:
        """The render a job started with; a resume against a different pack or plan would mix two renders.

        The experts' precision is part of it: a resume on a CPU of a job a GPU
        started (fp32 against bf16) would change the picture mid-render.
        A resume keeps the segment length the job started with (H.265 segments
        are separate encodes) and its torch thread count (CPU reductions group
        differently per thread count, so the bytes are reproducible only at the
        same count).
        """
        check: dict[str, Any] = {"plan": plan.to_dict(), "pack": fingerprint, "precision": precision,
                                 "options": job.options, "upscaler": upscaler, "upscaler_weights": upscaler_weights}
        path = work / PLAN_FILE
        if path.is_file():
            pinned = json.loads(path.read_text())
            if pinned.get("check") != json.loads(json.dumps(check)):
                raise JobError(f"job {job.id}: its final pack or plan changed since it started; it cannot resume "
                               "into the same file (cancel it and promote the draft again)", field="job_id",
                               value=job.id)
        else:
            record = {"check": check, "segment_frames": self.segment_frames,
                      "threads": self.threads or torch.get_num_threads(), "format": fmt, "target": str(target),
                      "size": list(size), "meta": dataclasses.asdict(meta)}
            atomic_write(path, (json.dumps(record, sort_keys=True, indent=1) + "\n").encode())
        return Render.load(self.store, job.id)

    def _refine(self, job: Job, draft: Draft, model: FinalModel, plan: RefinePlan, work: Path) -> np.ndarray:
        import safetensors.numpy

        done = self.store.units(job.id, "refine")
        last = max((i for i, f in done.items() if (work / f).is_file()), default=None)
        if last is not None:
            x = safetensors.numpy.load_file(str(work / done[last]))["x"]
            if last < plan.units:
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

    def _decode(self, render: Render, model: FinalModel, latents: np.ndarray) -> None:
        """Decode units: every frame at the refine size (skipped when all are stored already)."""
        job_id, frames = render.job_id, render.plan.frames
        done = self._finished(job_id, "decode")
        if len(done) == frames:
            return
        if done:
            self.say(f"job {job_id}: replaying the decoder to frame {min(set(range(frames)) - done)} of {frames}")
        started, first = time.monotonic(), len(done)
        for f, frame in enumerate(model.decode(latents, frames)):
            if f in done:
                continue  # replayed for the causal cache only
            self._check_cancelled(job_id)
            self._save_frame(job_id, "decode", f, f"decode/f{f:06d}.safetensors", frame)
            self._progress(job_id, "decode", f + 1, frames, started, first)

    # ------------------------------------------------------------------ units on disk

    def _finished(self, job_id: str, stage: str) -> set[int]:
        work = self.store.job_dir(job_id)
        return {i for i, f in self.store.units(job_id, stage).items() if (work / f).exists()}

    def _save_frame(self, job_id: str, stage: str, index: int, name: str, frame: np.ndarray) -> None:
        import safetensors.numpy

        atomic_write(self.store.job_dir(job_id) / name, safetensors.numpy.save({"frame": np.ascontiguousarray(frame)}))
        self.store.add_unit(job_id, stage, index, name)

    def _load_frame(self, job_id: str, stage: str, index: int) -> np.ndarray:
        import safetensors.numpy

        name = self.store.units(job_id, stage).get(index)
        path = self.store.job_dir(job_id) / (name or "")
        if name is None or not path.is_file():
            raise JobError(f"job {job_id}: {stage} unit {index} is missing; `previz jobs resume {job_id}` "
                           "redoes it", field="job_id", value=job_id)
        return safetensors.numpy.load_file(str(path))["frame"]

    # ------------------------------------------------------------------ 2. VSR, one segment's frames

    def vsr_segment(self, render: Render, j: int) -> None:
        """VSR units for segment ``j``'s frames (those not stored yet, and only while the segment is not)."""
        job_id = render.job_id
        if j in self._finished(job_id, "deliver"):
            return
        torch.set_num_threads(render.threads)
        upscaler = self._upscaler(render.upscaler)
        vsr = TiledVSR(upscaler, (render.plan.width, render.plan.height), render.size)
        start, count = render.segments[j]
        done = self._finished(job_id, "vsr")
        started = time.monotonic()
        first = start + sum(1 for f in range(start, start + count) if f in done)
        for f in range(start, start + count):
            if f in done:
                continue
            self._check_cancelled(job_id)
            # The temporal window: this frame and the ones before it, from the decode units.
            window = [self._load_frame(job_id, "decode", i)
                      for i in range(max(0, f - upscaler.temporal_window + 1), f + 1)]
            frame = quantize(vsr.upscale(window))
            self._save_frame(job_id, "vsr", f, f"vsr/f{f:06d}.safetensors", frame)
            self._progress(job_id, "vsr", f + 1, render.plan.frames, started, first)

    # ------------------------------------------------------------------ 3. encode, one segment

    def encode_segment(self, render: Render, j: int) -> None:
        """The deliver unit for segment ``j``, from its frames' vsr units (whose files then go)."""
        job_id, work = render.job_id, render.work
        if j in self._finished(job_id, "deliver"):
            return
        self._check_cancelled(job_id)
        fmt = delivery_format(render.format)
        start, count = render.segments[j]
        started = time.monotonic()
        frames = (dequantize(self._load_frame(job_id, "vsr", f)) for f in range(start, start + count))
        if fmt.sequence:
            name = f"deliver/seg{j:05d}"
            directory = work / name
            shutil.rmtree(directory, ignore_errors=True)  # a half-written segment from a killed run
            directory.mkdir(parents=True)
            for k, image in enumerate(frames):
                encode_image(directory / frame_name("f", start + k, fmt), image, fmt, render.size)
        else:
            name = f"deliver/seg{j:05d}{fmt.ext}"
            encode_segment(work / name, frames, fmt, render.size, render.plan.fps)
        self.store.add_unit(job_id, "deliver", j, name)
        for f in range(start, start + count):  # in the segment now: a 4K frame is 48 MB on disk
            (work / f"vsr/f{f:06d}.safetensors").unlink(missing_ok=True)
        done = len(self._finished(job_id, "deliver"))
        # The ETA from this segment's own encode time: segments may be encoded by separate processes (Ray
        # tasks), so this one's time is the rate every process can measure.
        self._progress(job_id, "encode", done, len(render.segments), started, done - 1)

    # ------------------------------------------------------------------ 4. join

    def join(self, render: Render) -> Path:
        """The delivery from every segment, renamed into place whole; the job is then done."""
        job_id, work = render.job_id, render.work
        self._check_cancelled(job_id)
        missing = set(range(len(render.segments))) - self._finished(job_id, "deliver")
        if missing:
            raise JobError(f"job {job_id}: segments {sorted(missing)} are not encoded yet", field="job_id",
                           value=job_id)
        fmt = delivery_format(render.format)
        meta = render.meta
        if fmt.sequence:
            files = sorted(p for j in range(len(render.segments)) for p in (work / f"deliver/seg{j:05d}").iterdir())
            join_frames(files, render.target, fmt, meta, timecode_frame(meta.timecode, meta.fps))
        else:
            join_segments([work / f"deliver/seg{j:05d}{fmt.ext}" for j in range(len(render.segments))],
                          render.target, fmt, meta)
        self.store.set_job_state(job_id, "done", output=str(render.target))
        return render.target


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

