"""The generation worker: one thread owns the draft engine and shares it fairly between takes.

Sessions submit takes; the worker advances them round-robin, one chunk per
turn, so two clients each get every other window and neither can starve the
other.  A take that was superseded (its session sent ``update``) or cancelled
stops queuing work before its next denoising step or frame (``cancel``).  The
worker never waits on a client: frames go out through callbacks that only enqueue.

A take that fails fails alone.  Running out of GPU memory in particular is a
typed error to that take's client, naming what to lower; the worker empties
torch's cache so the memory the failed take held is there for the others, and
goes on with the next take.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from engines.base import release_device_memory
from engines.errors import is_out_of_memory
from previz.errors import OutOfDeviceMemoryError, PrevizError, from_engine_error
from previz.recipe import Recipe
from previz.sampler import Chunk
from previz.take import DraftModel, Frame, TakeStats

log = logging.getLogger("previz.worker")


@dataclass
class TakeJob:
    """One take in flight, and where its results go."""

    session_id: int
    take_id: int
    recipe: Recipe  # resolved
    on_frame: Callable[[TakeJob, Frame], None]  # called on the worker thread; must not block
    on_chunk: Callable[[TakeJob, int], None]  # a chunk's frames have all been handed to on_frame
    on_done: Callable[[TakeJob], None]  # the take finished: frames and latents are complete
    on_fail: Callable[[TakeJob, BaseException], None]
    cancel: threading.Event = field(default_factory=threading.Event)
    stats: TakeStats = field(default_factory=TakeStats)
    frames: list[np.ndarray] = field(default_factory=list)
    frames_out: int = 0  # frames handed to on_frame so far
    latents: list[np.ndarray] = field(default_factory=list)
    _frames_iter: Iterator[Frame] | None = None
    _pending: Frame | None = None  # first frame of the next chunk, held for the next turn


class GenerationWorker:
    def __init__(self, model: DraftModel) -> None:
        self.model = model
        self._takes: OrderedDict[int, TakeJob] = OrderedDict()  # session id -> its current take
        self._cond = threading.Condition()
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="previz-generation", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        self._thread.join(timeout=10)

    def submit(self, job: TakeJob) -> TakeJob | None:
        """Start ``job``; returns the take of the same session it supersedes, if one was running."""
        with self._cond:
            old = self._takes.pop(job.session_id, None)
            if old is not None:
                old.cancel.set()
            self._takes[job.session_id] = job
            self._cond.notify_all()
        return old

    def cancel(self, session_id: int) -> TakeJob | None:
        with self._cond:
            job = self._takes.pop(session_id, None)
        if job is not None:
            job.cancel.set()
        return job

    def busy(self) -> int:
        with self._cond:
            return len(self._takes)

    # ------------------------------------------------------------------ the thread

    def _next(self) -> TakeJob | None:
        with self._cond:
            while not self._takes and not self._stop:
                self._cond.wait()
            if self._stop:
                return None
            session_id, job = next(iter(self._takes.items()))
            self._takes.move_to_end(session_id)  # round-robin: the others go first next time
            return job

    def _finish(self, job: TakeJob) -> None:
        with self._cond:
            if self._takes.get(job.session_id) is job:
                del self._takes[job.session_id]

    def _run(self) -> None:
        while (job := self._next()) is not None:
            try:
                done = self._turn(job)
            except Exception as exc:  # a failed take must not take the worker down with it
                self._finish(job)
                job._frames_iter = None  # drops the take's device tensors before the cache is emptied
                try:
                    job.on_fail(job, self._typed(job, exc))
                except Exception:
                    log.exception("reporting a failed take failed")
                continue
            if done:
                self._finish(job)

    def _typed(self, job: TakeJob, exc: Exception) -> Exception:
        """The error the take's client gets: previz's own, an engine's mapped to previz's, else as it is."""
        if is_out_of_memory(exc):
            log.warning("take %d ran out of device memory: %s", job.take_id, exc)
            traceback.clear_frames(exc.__traceback__)  # the failed take's tensors live on in its frames' locals
            release_device_memory()
            return out_of_memory_error(job.recipe, self.model)
        return from_engine_error(exc) or exc

    def _turn(self, job: TakeJob) -> bool:
        """Advance ``job`` by one chunk; True when it has ended (finished or cancelled)."""
        if job.cancel.is_set():
            return True
        if job._frames_iter is None:
            job.stats = TakeStats()

            def keep_latents(chunk: Chunk, latents: np.ndarray) -> None:
                job.latents.append(latents)

            job._frames_iter = self.model.generate(job.recipe, cancel=job.cancel, on_chunk=keep_latents,
                                                   stats=job.stats)
        chunk: int | None = None
        while True:
            if job.cancel.is_set():  # superseded mid-chunk: skip decoding the rest of it
                return True
            frame = job._pending
            job._pending = None
            if frame is None:
                frame = next(job._frames_iter, None)
            if frame is None:
                if job.cancel.is_set() or job.stats.cancelled:
                    return True
                job.on_done(job)
                return True
            if chunk is not None and frame.chunk != chunk:
                job._pending = frame  # this chunk is computed; its frames go out next turn
                job.on_chunk(job, chunk)
                return False
            chunk = frame.chunk
            job.frames.append(frame.image)  # the draft store needs every frame, even ones a slow client lost
            job.frames_out += 1
            job.on_frame(job, frame)
            if frame.last:
                job.on_chunk(job, chunk)


def out_of_memory_error(recipe: Recipe, model: DraftModel) -> PrevizError:
    """What a client reads when its take did not fit in device memory: what it asked for, and what to lower."""
    window = model.pack.draft.window_frames if model.pack.draft else None
    # Half precision halves the weights and activations; only worth saying where the engine runs fp32.
    precision = ", or use --precision bf16" if model.denoiser.info.precision == "fp32" else ""
    return OutOfDeviceMemoryError(
        f"out of memory on {model.denoiser.info.device} for a {recipe.width}x{recipe.height}, {recipe.seconds:g} s "
        f"take (window of {window} latent frames): lower the size, the seconds or the pack's window "
        f"(draft.window_frames){precision}; other takes go on",
        field="size", value=f"{recipe.width}x{recipe.height}",
    )


def throughput(stats: TakeStats, fps: int) -> dict[str, Any]:
    """The live readouts for a take so far."""
    elapsed = max(time.perf_counter() - stats.started, 1e-9)
    gen_fps = stats.frames / elapsed
    return {
        "gen_fps": round(gen_fps, 2),
        "rtf": round(gen_fps / fps, 3),
        "ttff_ms": None if stats.first_frame_s is None else round(1000 * stats.first_frame_s, 1),
    }
