"""`previz serve`: the page and the websocket on one port, on websockets' own server.

No model code lives here, and no hand-written HTTP: websockets parses the
requests, ``process_request`` answers the few static routes, and the session
does the rest.  Security defaults: loopback bind; Host and Origin allowlists;
a random token, required in ``hello`` whenever the bind is not loopback and
compared in constant time; no compression; bounded message size, connection
count and per-client queues; files addressed by draft id, never by path.
"""

from __future__ import annotations

import asyncio
import http
import ipaddress
import itertools
import logging
import mimetypes
import os
import secrets
import signal
import socket
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.frames import CloseCode
from websockets.http11 import Request, Response

from previz import protocol
from previz.drafts import DraftStore
from previz.errors import PrevizError
from previz.session import Session, SessionLimits, kernel_unsent_bytes
from previz.take import DraftModel
from previz.worker import GenerationWorker

log = logging.getLogger("previz.server")

DEFAULT_PORT = 8188
AUTH_TIMEOUT_S = 10.0
MIN_TOKEN_CHARS = 16
PING_INTERVAL_S = PING_TIMEOUT_S = 20.0
MAX_MESSAGE_BYTES = 2 * 1024 * 1024  # beyond this the socket closes (1009); the protocol refuses >64 KiB politely
STATIC = {"/": "index.html", "/index.html": "index.html", "/app.js": "app.js", "/style.css": "style.css"}
DRAFT_FILES = {"thumb.jpg", "take.mp4"}


@dataclass(frozen=True)
class ServeConfig:
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    max_clients: int = 16
    allowed_hosts: tuple[str, ...] = ()  # extra Host header values (names other than the bind address)
    token: str | None = None  # None: generated when the bind is not loopback
    # What a slow reader can have in flight beyond its session's outbox.  Linux autotunes a socket's
    # send buffer up to megabytes (tens of seconds of draft frames); a fixed one keeps a slow client's
    # backlog in the outbox, where the oldest frames are dropped.  None: the OS default (autotuned).
    socket_send_buffer: int | None = 32 * 1024  # the kernel doubles it for its own bookkeeping
    write_limit: int = 16 * 1024  # websockets' transport buffer high-water mark
    limits: SessionLimits = field(default_factory=SessionLimits)
    run_jobs: bool = False  # render queued final jobs in a background worker (`previz serve` turns it on)


def websocket_options(config: ServeConfig) -> dict[str, Any]:
    """The websocket layer's settings: one set for the live server and for the conformance echo
    (tools/autobahn_conformance.py, tests/test_autobahn.py), so Autobahn tests the limits clients meet."""
    return dict(
        origins=None,  # checked in _process_request against the live port (known only after bind)
        compression=None,
        max_size=MAX_MESSAGE_BYTES,
        max_queue=4,  # with max_size: at most 8 MiB of unread input per client
        write_limit=config.write_limit,
        # Keepalive (websockets' defaults, stated): a ping every 20 s, and a client that has not
        # answered within 20 s is closed (1011).  A slow reader's pong waits behind at most the
        # bounded backlog (see ServeConfig), so reading slowly is not mistaken for being gone.
        ping_interval=PING_INTERVAL_S,
        ping_timeout=PING_TIMEOUT_S,
        close_timeout=2,
        server_header="previz",
    )


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class PrevizServer:
    def __init__(self, config: ServeConfig, *, model: DraftModel, store: DraftStore, backends: list[str]) -> None:
        self.config = config
        self.model = model
        self.store = store
        self.backends = backends
        if config.token is not None and not is_loopback(config.host) and len(config.token) < MIN_TOKEN_CHARS:
            raise PrevizError(f"a token for a non-loopback bind needs at least {MIN_TOKEN_CHARS} characters",
                              field="token")
        self.token = config.token or (None if is_loopback(config.host) else secrets.token_urlsafe(32))
        self.worker = GenerationWorker(model)
        self.store_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="previz-store")
        self.encode_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="previz-encode")
        self.sessions: dict[int, Session] = {}
        self._ids = itertools.count(1)
        self._server: Server | None = None
        self.port = config.port
        self.jobs: Any = None  # upscale.jobs.BackgroundJobs, when config.run_jobs
        self._loop: asyncio.AbstractEventLoop | None = None

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        self.worker.start()
        self._loop = asyncio.get_running_loop()
        if self.config.run_jobs:
            from upscale.jobs import BackgroundJobs  # imported only when asked: torch-heavy final stage

            self.jobs = BackgroundJobs(self.store, self._job_event).start()
        self._server = await serve(self._connection, self.config.host, self.config.port,
                                   process_request=self._process_request, **websocket_options(self.config))
        self.port = self._server.sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        host = f"[{self.config.host}]" if ":" in self.config.host else self.config.host
        return f"http://{host}:{self.port}/"

    async def close(self) -> None:
        # Stop making frames first, so nothing keeps a connection busy while it closes.
        for session in list(self.sessions.values()):
            session.close()
        await asyncio.to_thread(self.worker.stop)
        if self.jobs is not None:
            await asyncio.to_thread(self.jobs.stop)  # after its current unit; the job stays resumable
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        await asyncio.to_thread(self.encode_executor.shutdown, wait=True)
        await asyncio.to_thread(self.store_executor.shutdown, wait=True)  # drafts in flight are kept

    def _job_event(self, kind: str, job: Any, progress: dict[str, Any] | None) -> None:
        """From the job worker's thread: tell every client (jobs are the machine's, not a session's)."""
        text = protocol.event(kind, job=job.to_public_dict(), progress=progress)

        def broadcast() -> None:
            for session in list(self.sessions.values()):
                session.send_event(text)

        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(broadcast)

    # ------------------------------------------------------------------ HTTP

    def _allowed_hosts(self) -> set[str]:
        names = {self.config.host, *self.config.allowed_hosts}
        if is_loopback(self.config.host):
            names |= {"localhost", "127.0.0.1", "[::1]"}
        return {f"{n}:{self.port}" for n in names} | ({n for n in names} if self.port == 80 else set())

    def _origin_allowed(self, origins: list[str]) -> bool:
        if not origins:  # browsers always send it; other clients may not, and need no CSRF defence
            return True
        if len(origins) > 1:  # which one would a browser have meant? Neither.
            return False
        try:
            parts = urllib.parse.urlsplit(origins[0])
        except ValueError:  # e.g. "http://[": not an origin at all
            return False
        return parts.scheme in ("http", "https") and not parts.path and parts.netloc in self._allowed_hosts()

    async def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        # get_all, not get: a duplicated header would raise MultipleValuesError (HTTP 500) from get.
        hosts = request.headers.get_all("Host")
        if len(hosts) != 1 or hosts[0] not in self._allowed_hosts():
            return _text(http.HTTPStatus.MISDIRECTED_REQUEST, f"unexpected Host header {_shown(hosts)}\n")
        path = request.path.split("?", 1)[0]
        if path == "/ws":
            origins = request.headers.get_all("Origin")
            if not self._origin_allowed(origins):
                return _text(http.HTTPStatus.FORBIDDEN, f"origin {_shown(origins)} is not allowed\n")
            if len(self.sessions) >= self.config.max_clients:
                return _text(http.HTTPStatus.SERVICE_UNAVAILABLE, "too many clients\n")
            return None  # proceed with the websocket handshake
        if path in STATIC:
            name = STATIC[path]
            body = resources.files("previz").joinpath("web", name).read_bytes()
            return _bytes(http.HTTPStatus.OK, body, mimetypes.guess_type(name)[0] or "application/octet-stream")
        if path == "/healthz":
            return _text(http.HTTPStatus.OK, "ok\n")
        if path == "/favicon.ico":
            return _bytes(http.HTTPStatus.NO_CONTENT, b"", "image/x-icon")
        parts = path.strip("/").split("/")
        if len(parts) == 3 and parts[0] == "drafts" and parts[2] in DRAFT_FILES:
            try:  # off the event loop: the store may wait on SQLite, and an MP4 is megabytes
                body = await asyncio.to_thread(self._draft_file, parts[1], parts[2])
            except (PrevizError, OSError):
                return _text(http.HTTPStatus.NOT_FOUND, "no such draft file\n")
            return _bytes(http.HTTPStatus.OK, body, "image/jpeg" if parts[2].endswith(".jpg") else "video/mp4")
        return _text(http.HTTPStatus.NOT_FOUND, "not found\n")

    def _draft_file(self, draft_id: str, name: str) -> bytes:
        path = self.store.file_path(draft_id, name)  # the store validates the id: never a path
        # The store writes plain files; a link planted in it must not serve any file on the machine.
        if path.parent.is_symlink():
            raise FileNotFoundError(path)
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))  # ELOOP (an OSError) on a link
        with os.fdopen(fd, "rb") as f:
            return f.read()

    # ------------------------------------------------------------------ websocket

    async def _connection(self, ws: ServerConnection) -> None:
        if len(self.sessions) >= self.config.max_clients:
            # Handshakes that passed the 503 check at the same moment: the limit holds here, where a slot is taken.
            await ws.close(CloseCode.TRY_AGAIN_LATER, "too many clients")
            return
        loop = asyncio.get_running_loop()
        session = Session(
            next(self._ids), loop=loop, model=self.model, worker=self.worker, store=self.store,
            store_executor=self.store_executor, encode_executor=self.encode_executor,
            limits=self.config.limits, backends=self.backends, token=self.token,
            background_jobs=self.jobs is not None,
        )
        self.sessions[session.id] = session
        sock = ws.transport.get_extra_info("socket")
        if self.config.socket_send_buffer and sock is not None:
            # A fixed send buffer turns off the kernel's autotuning (megabytes per socket), so a slow
            # reader backs up into the session's outbox, where old frames are dropped, within kilobytes.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.config.socket_send_buffer)
        transport = ws.transport
        pump = asyncio.create_task(session.pump(
            ws.send, lambda: transport.get_write_buffer_size() + (kernel_unsent_bytes(sock) if sock else 0)))
        if not session.authenticated:  # an unauthenticated client may not sit on a connection slot
            loop.call_later(AUTH_TIMEOUT_S, lambda: None if session.authenticated else asyncio.ensure_future(
                ws.close(1008, "authentication timed out")))
        try:
            session.core.connected()
            async for raw in ws:
                await session.receive(raw)
        except ConnectionClosed:
            pass
        finally:
            session.close()
            pump.cancel()
            self.sessions.pop(session.id, None)


def _shown(values: list[str]) -> str:
    """Header values for a refusal's body: quoted, and short, whatever the client sent."""
    return ", ".join(repr(v[:100]) for v in values[:2]) or "(none)"


def _text(status: http.HTTPStatus, text: str) -> Response:
    return _bytes(status, text.encode(), "text/plain; charset=utf-8")


def _bytes(status: http.HTTPStatus, body: bytes, content_type: str) -> Response:
    headers = Headers([
        ("Content-Type", content_type),
        ("Content-Length", str(len(body))),
        ("Cache-Control", "no-store"),
        ("X-Content-Type-Options", "nosniff"),
        ("Content-Security-Policy", "default-src 'self'; img-src 'self' blob:; connect-src 'self'; "
                                    "frame-ancestors 'none'; base-uri 'none'; form-action 'none'; object-src 'none'"),
        ("X-Frame-Options", "DENY"),
    ])
    return Response(status.value, status.phrase, headers, body)


async def run(config: ServeConfig, *, model: DraftModel, store: DraftStore, backends: list[str],
              announce: Any = print) -> None:
    """Serve until SIGINT/SIGTERM."""
    server = PrevizServer(config, model=model, store=store, backends=backends)
    await server.start()
    announce(f"previz is live at {server.url}  (pack {model.pack.id}, {model.pack.label}; "
             f"{model.denoiser.info.backend}: {', '.join(model.denoiser.info.providers)})")
    if server.token:
        announce(f"non-loopback bind: clients must send this token in hello: {server.token}")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await server.close()


__all__ = ["DEFAULT_PORT", "PrevizServer", "ServeConfig", "run", "websocket_options"]
