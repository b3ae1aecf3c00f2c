"""One session per connection: its recipe, its takes, and its bounded outbox.

A session turns protocol messages into takes for the shared worker and turns
worker results into events and frames for its own socket only, so no frame of
one client ever reaches another.  Events and frames leave in the order they
were made, through one outbox that holds at most ``frame_queue`` frames: when a
client reads slowly its oldest waiting frame is dropped (the latest frame
wins), so it never stalls the worker and never grows the server's memory.
Control events are few and small and are never dropped.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import io
import logging
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

from PIL import Image
from websockets.exceptions import ConnectionClosed

from previz import protocol
from previz.camera import ALIASES, PRESETS
from previz.drafts import DraftStore
from previz.errors import InvalidRecipeError, PrevizError
from previz.protocol import FrameHeader, Message
from previz.recipe import MAX_PROMPT_CHARS, MAX_STEPS, Recipe, frame_count, resolve
from previz.scene import COLORS, GROUNDS, MAX_OBJECTS, SHAPES, TIMES_OF_DAY
from previz.take import DraftModel, Frame
from previz.worker import GenerationWorker, TakeJob, throughput

log = logging.getLogger("previz.session")


@dataclass(frozen=True)
class SessionLimits:
    frame_queue: int = 8  # frames buffered per client before the oldest are dropped
    image_format: str = "jpeg"
    jpeg_quality: int = 85


def encode_image(image: Any, image_format: str, quality: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="WEBP" if image_format == "webp" else "JPEG", quality=quality)
    return buf.getvalue()


class Session:
    def __init__(
        self,
        session_id: int,
        *,
        loop: asyncio.AbstractEventLoop,
        model: DraftModel,
        worker: GenerationWorker,
        store: DraftStore,
        store_executor: Executor,
        encode_executor: Executor,
        limits: SessionLimits,
        backends: list[str],
    ) -> None:
        self.id = session_id
        self.loop = loop
        self.model = model
        self.worker = worker
        self.store = store
        self.store_executor = store_executor
        self.encode_executor = encode_executor
        self.limits = limits
        self.backends = backends
        self.recipe: dict[str, Any] | None = None  # the client's fields, before defaults
        self.take_id = 0
        self.current: TakeJob | None = None
        self.outbox: collections.deque[tuple[bool, str | bytes]] = collections.deque()  # (is frame, data)
        self.queued_frames = 0  # frames in the outbox, at most limits.frame_queue
        self.frames_dropped = 0
        self.in_send = False  # the pump is waiting for the socket
        self.authenticated = False
        self.wakeup = asyncio.Event()
        self.closed = False
        self.background_jobs = False  # the server renders queued jobs itself (job_* events follow)

    # ------------------------------------------------------------------ outbox (event loop thread)

    def send_event(self, text: str) -> None:
        if not self.closed:
            self.outbox.append((False, text))
            self.wakeup.set()

    def push_frame(self, job: TakeJob, data: bytes) -> None:
        if self.closed or job is not self.current:
            return  # superseded between encoding and now (checked here, on the loop thread)
        # Drop only for a slow *client*: while the pump is blocked in send(), the
        # socket's buffers are full.  A late event loop is not a slow client, so
        # frames then just wait, up to a hard cap that bounds memory either way.
        limit = self.limits.frame_queue if self.in_send else 4 * self.limits.frame_queue
        if self.queued_frames >= limit:
            for i, (is_frame, _) in enumerate(self.outbox):  # the oldest waiting frame goes
                if is_frame:
                    del self.outbox[i]
                    break
            self.frames_dropped += 1
        else:
            self.queued_frames += 1
        self.outbox.append((True, data))
        self.wakeup.set()

    def post(self, job: TakeJob, text: str) -> None:
        """An event about ``job``, unless the client has moved on to another take."""
        if job is self.current:
            self.send_event(text)

    def drop_frames(self) -> None:
        """Forget waiting frames (their take was superseded); events stay."""
        self.outbox = collections.deque(item for item in self.outbox if not item[0])
        self.queued_frames = 0

    async def pump(self, send: Callable[[str | bytes], Awaitable[None]]) -> None:
        """Send events and frames in order until the session or the socket closes."""
        try:
            await self._pump(send)
        except ConnectionClosed:
            pass
        except Exception:  # a broken pump must not leave a client that hears nothing
            log.exception("session %d: sending failed", self.id)
        finally:
            self.close()

    async def _pump(self, send: Callable[[str | bytes], Awaitable[None]]) -> None:
        while not self.closed:
            await self.wakeup.wait()
            self.wakeup.clear()
            while self.outbox and not self.closed:
                is_frame, data = self.outbox.popleft()
                if is_frame:
                    self.queued_frames -= 1
                self.in_send = True
                try:
                    await send(data)  # blocks while the socket's buffers are full
                finally:
                    self.in_send = False

    def close(self) -> None:
        self.closed = True
        self.worker.cancel(self.id)
        self.wakeup.set()

    # ------------------------------------------------------------------ messages

    def ready_event(self) -> str:
        pack = self.model.pack
        assert pack.draft is not None
        return protocol.event(
            "ready",
            version=protocol.VERSION,
            pack={"id": pack.id, "label": pack.label, "trained": pack.trained, "latent_space": pack.latent.space},
            draft={"width": self.model.width, "height": self.model.height, "fps": self.model.fps},
            capabilities={
                "packs": [pack.id],
                "backends": self.backends,
                "presets": sorted(PRESETS) + sorted(ALIASES),
                "scene": {"shapes": list(SHAPES),
                          "colors": {k: "#{:02x}{:02x}{:02x}".format(*v) for k, v in COLORS.items()},
                          "grounds": list(GROUNDS), "times_of_day": list(TIMES_OF_DAY), "max_objects": MAX_OBJECTS,
                          "control": pack.conditioning.control is not None},
                # An imported Wan checkpoint takes text (+ context) only: say so, never ignore the camera silently.
                "camera": pack.conditioning.steers_camera,
                "image_format": self.limits.image_format,
                "limits": {
                    "max_seconds": pack.draft.max_seconds,
                    "max_prompt_chars": MAX_PROMPT_CHARS,
                    "size_multiple": pack.draft.size_multiple,
                    "sizes": [[self.model.width, self.model.height]],
                    "steps": [1, MAX_STEPS],
                    "default_steps": pack.draft.steps,
                    "max_message_bytes": protocol.MAX_TEXT_BYTES,
                },
            },
        )

    async def handle(self, message: Message) -> None:
        handler = getattr(self, f"_on_{message.type}")
        try:
            await handler(message)
        except PrevizError as exc:
            self.send_event(protocol.error_event(exc, message.type, message.id))

    async def _on_hello(self, message: Message) -> None:
        self.send_event(protocol.event("hello", message.id, version=protocol.VERSION))

    async def _on_generate(self, message: Message) -> None:
        self._start(dict(message.fields["recipe"]), message, reason="generate")

    async def _on_update(self, message: Message) -> None:
        if self.recipe is None:
            raise protocol.ProtocolError("nothing to update: send generate first", code="no_take", field="type")
        self._start({**self.recipe, **message.fields["recipe"]}, message, reason="update")

    async def _on_cancel(self, message: Message) -> None:
        job = self.worker.cancel(self.id)
        self.current = None  # nothing more about it reaches the client
        self.drop_frames()
        if job is not None:
            self.send_event(protocol.event("take_cancelled", message.id, take_id=job.take_id, reason="cancel"))

    async def _on_approve(self, message: Message) -> None:
        await self._set_state(message, "approved")

    async def _on_reject(self, message: Message) -> None:
        await self._set_state(message, "rejected")

    async def _set_state(self, message: Message, state: str) -> None:
        draft = await self._store(self.store.set_state, message.fields["draft_id"], state)
        self.send_event(protocol.event("draft", message.id, draft=await self._draft_dict(draft)))

    async def _on_promote(self, message: Message) -> None:
        job = await self._store(self.store.promote, message.fields["draft_id"], message.fields["options"])
        if self.background_jobs:
            text = ("Promotion recorded: the job is queued, and this server renders it in the background "
                    "(MoE refine, 4K upscale, delivery encode); its progress follows.")
        else:
            text = (f"Promotion recorded: the job is queued. This server does not render jobs (it runs with "
                    f"--no-jobs), so it stays queued until `previz jobs run {job.id}` renders it.")
        self.send_event(protocol.event("job_queued", message.id, job=job.to_public_dict(), message=text))
        draft = await self._store(self.store.get, message.fields["draft_id"])
        self.send_event(protocol.event("draft", None, draft=await self._draft_dict(draft)))

    async def _on_list_drafts(self, message: Message) -> None:
        drafts = await self._store(self.store.list, **message.fields)
        self.send_event(protocol.event("drafts", message.id, drafts=[d.to_dict() for d in drafts]))

    async def _on_get_draft(self, message: Message) -> None:
        draft = await self._store(self.store.get, message.fields["draft_id"])
        self.send_event(protocol.event("draft", message.id, draft=await self._draft_dict(draft)))

    async def _store(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """A store call on the store's own thread: off the event loop, in order with draft writes,
        and finished before the server shuts down."""
        return await self.loop.run_in_executor(self.store_executor, functools.partial(fn, *args, **kwargs))

    async def _draft_dict(self, draft: Any) -> dict[str, Any]:
        out: dict[str, Any] = draft.to_dict()
        jobs = await self._store(self.store.jobs, draft_id=draft.id)
        out["jobs"] = [j.to_public_dict() for j in jobs]
        return out

    # ------------------------------------------------------------------ takes

    def _start(self, fields: dict[str, Any], message: Message, *, reason: str) -> None:
        try:
            recipe = resolve(Recipe(**fields, pack=self.model.pack.id, backend=self.model.backend), self.model.pack)
        except TypeError as exc:  # protocol.py already limits fields; this is belt and braces
            raise InvalidRecipeError(f"bad recipe: {exc}", field="recipe") from None
        if (recipe.width, recipe.height) != (self.model.width, self.model.height):
            field = "recipe.width" if recipe.width != self.model.width else "recipe.height"
            raise InvalidRecipeError(
                f"this server drafts at {self.model.width}x{self.model.height}; "
                f"{recipe.width}x{recipe.height} needs a server started at that size", field=field)
        self.recipe = fields
        self.take_id += 1
        job = TakeJob(
            session_id=self.id, take_id=self.take_id, recipe=recipe,
            on_frame=self._frame_from_worker, on_chunk=self._chunk_from_worker,
            on_done=self._done_from_worker, on_fail=self._fail_from_worker,
        )
        self.current = job
        self.drop_frames()  # frames of the superseded take are stale
        superseded = self.worker.submit(job)
        if superseded is not None:
            self.send_event(protocol.event("take_cancelled", take_id=superseded.take_id, reason=reason))
        self.send_event(protocol.event(
            "take_started", message.id, take_id=job.take_id, recipe=recipe.to_dict(),
            frames=frame_count(recipe, self.model.fps), fps=self.model.fps,
            chunks=_chunk_count(self.model, recipe), control_preview=self.model.control_preview(recipe),
        ))

    # Worker-thread callbacks.  They only hand work on: the generation thread
    # never waits for an encoder, a disk or a socket.  Everything about a take
    # goes through the one (FIFO) encoder thread, so events and frames reach
    # the loop in the order they were made.

    def _later(self, fn: Callable[..., None], *args: Any) -> None:
        """Run ``fn`` on the event loop, unless the server is shutting down."""
        try:
            self.loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # the loop closed under us: nobody is listening any more
            pass

    def _on_encoder(self, fn: Callable[..., None], *args: Any) -> None:
        try:
            self.encode_executor.submit(fn, *args)
        except RuntimeError:  # the executor shut down: the server is closing
            pass

    def _frame_from_worker(self, job: TakeJob, frame: Frame) -> None:
        if not self.closed and job is self.current:
            self._on_encoder(self._encode_frame, job, frame)

    def _encode_frame(self, job: TakeJob, frame: Frame) -> None:
        if self.closed or job is not self.current:
            return  # superseded while it waited: don't spend the CPU
        fmt = protocol.IMAGE_FORMATS[self.limits.image_format]
        data = protocol.pack_frame(
            FrameHeader(job.take_id, frame.chunk, frame.index, frame.pts, frame.last, fmt),
            encode_image(frame.image, self.limits.image_format, self.limits.jpeg_quality),
        )
        self._later(self.push_frame, job, data)

    def _chunk_from_worker(self, job: TakeJob, chunk: int) -> None:
        text = protocol.event("chunk_done", take_id=job.take_id, chunk=chunk, frames_done=job.frames_out,
                              **throughput(job.stats, self.model.fps))
        self._on_encoder(self._later, self.post, job, text)

    def _done_from_worker(self, job: TakeJob) -> None:
        stats = throughput(job.stats, self.model.fps)
        meta = self.model.metadata(job.recipe)

        def store() -> None:
            future = self.store_executor.submit(
                self.store.add, recipe=job.recipe.to_dict(), meta=meta, frames=job.frames,
                latents=_concat(job.latents), fps=self.model.fps,
            )
            future.add_done_callback(stored)

        def stored(f: Any) -> None:
            exc = f.exception()
            if exc is not None:
                log.error("session %d: storing take %d failed", self.id, job.take_id, exc_info=exc)
                err = exc if isinstance(exc, PrevizError) else PrevizError(
                    "could not store the draft (see the server log)")
                text = protocol.error_event(err, "generate")
            else:
                text = protocol.event("take_done", take_id=job.take_id, draft_id=f.result().id,
                                      frames=job.frames_out, stats=stats)
            self._later(self.post, job, text)

        # The draft is stored even if the client moved on; only the event is skipped.
        self._on_encoder(store)

    def _fail_from_worker(self, job: TakeJob, exc: BaseException) -> None:
        log.error("session %d: take %d failed", self.id, job.take_id, exc_info=exc)
        err = exc if isinstance(exc, PrevizError) else PrevizError("the take failed (see the server log)")
        self._on_encoder(self._later, self.post, job, protocol.error_event(err, "generate", take_id=job.take_id))


def _concat(latents: list[Any]) -> Any:
    import numpy as np

    return np.concatenate(latents, axis=2) if latents else np.zeros((0,), np.float32)


def _chunk_count(model: DraftModel, recipe: Recipe) -> int:
    from previz.sampler import plan_chunks

    assert model.pack.draft is not None
    total = model.pack.latent.latent_frames(frame_count(recipe, model.fps))
    return len(plan_chunks(total, model.pack.draft.window_frames, model.pack.draft.context_frames))

