"""One session per connection: the asyncio side of :class:`previz.session_core.SessionCore`.

The core decides; this layer moves bytes and runs threads.  It feeds the core
what the socket, the worker and the store produce, carries out the effects the
core returns (start or cancel a take on the shared worker, query the store on
its thread), and pumps the core's outbox into the socket.  A session turns
worker results into frames and events for its own socket only, so no frame of
one client ever reaches another; the drop policy for slow clients lives in the
core's outbox.
"""

from __future__ import annotations

import asyncio
import collections
import io
import logging
import socket
import struct
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from typing import Any

from PIL import Image
from websockets.exceptions import ConnectionClosed

from previz import protocol
from previz.drafts import DraftStore
from previz.errors import PrevizError
from previz.protocol import FrameHeader
from previz.session_core import CancelTake, Effect, SessionCore, SessionLimits, StartTake, StoreQuery
from previz.take import DraftModel, Frame
from previz.worker import GenerationWorker, TakeJob, throughput

log = logging.getLogger("previz.session")

__all__ = ["Session", "SessionLimits", "encode_image"]


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
        token: str | None = None,
        background_jobs: bool = False,
    ) -> None:
        self.id = session_id
        self.loop = loop
        self.model = model
        self.worker = worker
        self.store = store
        self.store_executor = store_executor
        self.encode_executor = encode_executor
        self.wakeup = asyncio.Event()
        self.core = SessionCore(session_id, model=model, limits=limits, backends=backends, token=token,
                                background_jobs=background_jobs, notify=self.wakeup.set)

    @property
    def limits(self) -> SessionLimits:
        return self.core.limits  # one copy: the core's

    @property
    def authenticated(self) -> bool:
        return self.core.authenticated

    @property
    def closed(self) -> bool:
        return self.core.closed

    def send_event(self, text: str) -> None:
        self.core.send_event(text)

    # ------------------------------------------------------------------ socket -> core -> effects

    async def receive(self, data: str | bytes) -> None:
        """One client message, answered in order: store queries finish before the next message is read."""
        await self.carry_out(self.core.receive(data))

    async def carry_out(self, effects: list[Effect]) -> None:
        for effect in effects:
            if isinstance(effect, StartTake):
                self._start_take(effect)
            elif isinstance(effect, CancelTake):
                self.worker.cancel(self.id)
            elif isinstance(effect, StoreQuery):
                await self._query(effect)

    async def _query(self, query: StoreQuery) -> None:
        # On the store's own thread: off the event loop, in order with draft writes,
        # and finished before the server shuts down.
        try:
            texts = await self.loop.run_in_executor(self.store_executor, query.run, self.store)
        except PrevizError as exc:
            self.core.request_failed(query.message, exc)
        except Exception as exc:  # a bug must cost one request, not the connection
            log.exception("session %d: store query for %s failed", self.id, query.message.type)
            self.core.internal_errors += 1
            self.core.request_failed(query.message, PrevizError(f"internal error: {type(exc).__name__}"))
        else:
            self.core.send_events(texts)

    # ------------------------------------------------------------------ core -> socket

    async def pump(self, send: Callable[[str | bytes], Awaitable[None]],
                   unsent_bytes: Callable[[], int] | None = None) -> None:
        """Send events and frames in order until the session or the socket closes.

        ``unsent_bytes`` (what the transport and the kernel still hold of what was sent) lets the
        pump hold frames back while more than ``frames_in_flight`` of them sit in socket buffers,
        whatever their size: small frames would otherwise fill a send buffer with seconds of video
        that can no longer be dropped.  Meanwhile the outbox drops the oldest, so the latest frame wins.
        """
        in_flight = InFlight(unsent_bytes) if unsent_bytes is not None else None
        try:
            while not self.core.closed:
                if in_flight is not None and self.core.outbox.next_is_frame():
                    while in_flight.frames() >= self.limits.frames_in_flight and not self.core.closed:
                        self.core.socket_busy = True  # the client is behind: frames may now be dropped
                        await asyncio.sleep(IN_FLIGHT_POLL_S)
                    self.core.socket_busy = False
                data = self.core.data_to_send()
                if data is None:
                    await self.wakeup.wait()
                    self.wakeup.clear()
                    continue
                self.core.socket_busy = True
                try:
                    await send(data)  # blocks while the transport's buffer is over its high-water mark
                finally:
                    self.core.socket_busy = False
                if in_flight is not None:
                    in_flight.sent(data)
        except ConnectionClosed:
            pass
        except Exception:  # a broken pump must not leave a client that hears nothing
            log.exception("session %d: sending failed", self.id)
        finally:
            self.close()

    def close(self) -> None:
        if not self.core.closed:
            self.core.close()
        self.worker.cancel(self.id)  # the worker's own record, whatever the core thought was live
        self.wakeup.set()

    # ------------------------------------------------------------------ takes

    def _start_take(self, start: StartTake) -> None:
        job = TakeJob(
            session_id=self.id, take_id=start.take_id, recipe=start.recipe,
            on_frame=self._frame_from_worker, on_chunk=self._chunk_from_worker,
            on_done=self._done_from_worker, on_fail=self._fail_from_worker,
        )
        self.worker.submit(job)  # supersedes this session's running take, if any

    # Worker-thread callbacks.  They only hand work on: the generation thread
    # never waits for an encoder, a disk or a socket.  Everything about a take
    # goes through the one (FIFO) encoder thread, so events and frames reach
    # the loop (and the core) in the order they were made.

    def _later(self, fn: Callable[..., None], *args: Any, **kwargs: Any) -> None:
        """Run ``fn`` on the event loop, unless the server is shutting down."""
        try:
            self.loop.call_soon_threadsafe(lambda: fn(*args, **kwargs))
        except RuntimeError:  # the loop closed under us: nobody is listening any more
            pass

    def _on_encoder(self, fn: Callable[..., None], *args: Any, **kwargs: Any) -> None:
        try:
            self.encode_executor.submit(fn, *args, **kwargs)
        except RuntimeError:  # the executor shut down: the server is closing
            pass

    def _frame_from_worker(self, job: TakeJob, frame: Frame) -> None:
        if self.core.is_live(job.take_id):
            self._on_encoder(self._encode_frame, job, frame)

    def _encode_frame(self, job: TakeJob, frame: Frame) -> None:
        if not self.core.is_live(job.take_id):
            return  # superseded while it waited: don't spend the CPU
        fmt = protocol.IMAGE_FORMATS[self.limits.image_format]
        data = protocol.pack_frame(
            FrameHeader(job.take_id, frame.chunk, frame.index, frame.pts, frame.last, fmt),
            encode_image(frame.image, self.limits.image_format, self.limits.jpeg_quality),
        )
        self._later(self.core.take_frame, job.take_id, data)

    def _chunk_from_worker(self, job: TakeJob, chunk: int) -> None:
        text = protocol.event("chunk_done", take_id=job.take_id, chunk=chunk, frames_done=job.frames_out,
                              **throughput(job.stats, self.model.fps))
        self._on_encoder(self._later, self.core.take_event, job.take_id, text)

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
                text = protocol.error_event(err, "generate", take_id=job.take_id)
            else:
                text = protocol.event("take_done", take_id=job.take_id, draft_id=f.result().id,
                                      frames=job.frames_out, stats=stats)
            self._later(self.core.take_event, job.take_id, text, final=True)

        # The draft is stored even if the client moved on; only the event is skipped.
        self._on_encoder(store)

    def _fail_from_worker(self, job: TakeJob, exc: BaseException) -> None:
        # A PrevizError (a refused recipe, the GPU out of memory, ...) reaches the client as it is.
        log.error("session %d: take %d failed", self.id, job.take_id, exc_info=exc)
        err = exc if isinstance(exc, PrevizError) else PrevizError("the take failed (see the server log)")
        text = protocol.error_event(err, "generate", take_id=job.take_id)
        self._on_encoder(self._later, self.core.take_event, job.take_id, text, final=True)


IN_FLIGHT_POLL_S = 0.005
WS_FRAME_OVERHEAD = 10  # bytes of websocket framing per server message, at most (no mask, no compression)


class InFlight:
    """How many sent frames have not yet left this host's buffers (transport + kernel send queue).

    The kernel counts bytes, not messages; the pump knows each message's size, so a running total
    of bytes written, less what is still unsent, says which frames have left.
    """

    def __init__(self, unsent_bytes: Callable[[], int]) -> None:
        self.unsent_bytes = unsent_bytes
        self.written = 0
        self.frame_ends: collections.deque[int] = collections.deque()  # byte offset where each frame ends

    def sent(self, data: str | bytes) -> None:
        self.written += (len(data) if isinstance(data, bytes) else len(data.encode())) + WS_FRAME_OVERHEAD
        if isinstance(data, bytes):
            self.frame_ends.append(self.written)

    def frames(self) -> int:
        left = self.written - self.unsent_bytes()  # bytes that have reached the client's host
        while self.frame_ends and self.frame_ends[0] <= left:
            self.frame_ends.popleft()
        return len(self.frame_ends)


SIOCOUTQNSD = 0x894B  # Linux: bytes in a TCP send queue not yet sent (linux/sockios.h)


def kernel_unsent_bytes(sock: socket.socket) -> int:
    """Bytes in a TCP socket's send queue that have not been sent yet (Linux SIOCOUTQNSD); 0 elsewhere.

    Not SIOCOUTQ: that also counts bytes sent and waiting for an ACK, which a receiver may delay by
    tens of milliseconds while the data already sits in its buffer, so a fast client would look slow.
    Unsent bytes pile up only when the client's window is closed: when it really is not reading.
    """
    try:
        import fcntl

        return int(struct.unpack("i", fcntl.ioctl(sock.fileno(), SIOCOUTQNSD, b"\0\0\0\0"))[0])
    except (ImportError, OSError):
        return 0


def _concat(latents: list[Any]) -> Any:
    import numpy as np

    return np.concatenate(latents, axis=2) if latents else np.zeros((0,), np.float32)
