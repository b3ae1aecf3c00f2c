"""One client's session as a state machine, without I/O (sans-I/O, like websockets' ``Protocol``).

:class:`SessionCore` owns everything a session decides: whether the client has
authenticated, its current recipe, take ids and which take is live, what a
cancel or a superseding ``generate`` means, and the outbox with its drop
policy.  It takes what arrived (a client message, a worker frame or event, a
store answer) and returns :data:`Effect` values for the I/O layer to carry out
(start or cancel a take, query the draft store); what the client should receive
it queues, and the I/O layer reads it with :meth:`SessionCore.data_to_send`.
No socket, event loop, thread or disk in here, so every rule is tested directly
(tests/test_session_core.py) and fuzzed (tests/test_fuzz.py).

Take lifecycle, as a client sees it: every ``take_started`` is followed by
exactly one of ``take_done``, ``take_cancelled`` or an ``error`` naming its
``take_id``; after that, nothing more of the take (frame or event) is sent.
"""

from __future__ import annotations

import collections
import functools
import hmac
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from previz import protocol
from previz.camera import ALIASES, PRESETS
from previz.errors import InvalidRecipeError, PrevizError
from previz.protocol import Message, ProtocolError
from previz.recipe import MAX_PROMPT_CHARS, MAX_STEPS, Recipe, frame_count, resolve
from previz.scene import COLORS, GROUNDS, MAX_OBJECTS, SHAPES, TIMES_OF_DAY

if TYPE_CHECKING:
    from previz.drafts import Draft, DraftStore
    from previz.take import DraftModel

log = logging.getLogger("previz.session")


@dataclass(frozen=True)
class SessionLimits:
    frame_queue: int = 8  # frames buffered per client before the oldest are dropped
    queue_bytes: int = 1024 * 1024  # ...and the bytes they may hold (a 4K test frame must not queue 8 MB)
    frames_in_flight: int = 2  # frames sent but still in this host's socket buffers, before the outbox holds on
    image_format: str = "jpeg"
    jpeg_quality: int = 85


# ----------------------------------------------------------------------------- effects


@dataclass(frozen=True)
class StartTake:
    """Generate ``recipe`` as take ``take_id``, superseding this session's running take, if any."""

    take_id: int
    recipe: Recipe


@dataclass(frozen=True)
class CancelTake:
    """Stop take ``take_id`` before its next denoising step or frame; nothing more of it reaches the client."""

    take_id: int


@dataclass(frozen=True)
class StoreQuery:
    """Run ``run(store)`` on the store's thread; its events go to :meth:`SessionCore.send_events`,
    a :class:`PrevizError` it raises to :meth:`SessionCore.request_failed` with ``message``."""

    message: Message
    run: Callable[[DraftStore], list[str]]


Effect = StartTake | CancelTake | StoreQuery


# ----------------------------------------------------------------------------- the outbox


class Outbox:
    """Events and frames in the order they were made, at most ``max_frames`` frames / ``max_bytes``
    bytes of them.  Over the bound the oldest waiting frame goes (the latest frame wins); events are
    few and small and are never dropped."""

    def __init__(self, max_frames: int, max_bytes: int) -> None:
        self.max_frames = max_frames
        self.max_bytes = max_bytes
        self.items: collections.deque[str | bytes] = collections.deque()  # bytes: a frame; str: an event
        self.frames = 0
        self.frame_bytes = 0
        self.dropped = 0

    def __len__(self) -> int:
        return len(self.items)

    def event(self, text: str) -> None:
        self.items.append(text)

    def frame(self, data: bytes, *, slack: int = 1) -> None:
        """Queue a frame; ``slack`` multiplies the bounds (a late event loop is not a slow client)."""
        self.items.append(data)
        self.frames += 1
        self.frame_bytes += len(data)
        while self.frames > 1 and (self.frames > slack * self.max_frames or self.frame_bytes > slack * self.max_bytes):
            self._drop_oldest_frame()

    def _drop_oldest_frame(self) -> None:
        for i, item in enumerate(self.items):
            if isinstance(item, bytes):
                del self.items[i]
                self.frames -= 1
                self.frame_bytes -= len(item)
                self.dropped += 1
                return

    def drop_frames(self) -> None:
        """Forget waiting frames (their take ended or was superseded); events stay."""
        self.items = collections.deque(item for item in self.items if isinstance(item, str))
        self.frames = self.frame_bytes = 0

    def next_is_frame(self) -> bool:
        return bool(self.items) and isinstance(self.items[0], bytes)

    def pop(self) -> str | bytes | None:
        if not self.items:
            return None
        item = self.items.popleft()
        if isinstance(item, bytes):
            self.frames -= 1
            self.frame_bytes -= len(item)
        return item


# ----------------------------------------------------------------------------- the session


class SessionCore:
    def __init__(self, session_id: int, *, model: DraftModel, limits: SessionLimits, backends: list[str],
                 token: str | None = None, background_jobs: bool = False,
                 notify: Callable[[], None] = lambda: None) -> None:
        self.id = session_id
        self.model = model
        self.limits = limits
        self.backends = backends
        self.token = token
        self.background_jobs = background_jobs  # the server renders queued jobs itself (job_* events follow)
        self.notify = notify  # called whenever there is something new to send
        self.authenticated = token is None
        self.recipe: dict[str, Any] | None = None  # the client's fields, before defaults
        self.take_id = 0  # the last take id handed out
        self.live_take: int | None = None  # started, and no take_done / take_cancelled / error for it yet
        self.outbox = Outbox(limits.frame_queue, limits.queue_bytes)
        self.socket_busy = False  # the I/O layer is blocked writing: the client is reading slowly
        self.closed = False
        self.internal_errors = 0

    # ------------------------------------------------------------------ output

    def data_to_send(self) -> str | bytes | None:
        """The next text (event) or bytes (frame) for the client, or None when there is nothing."""
        return None if self.closed else self.outbox.pop()

    def send_event(self, text: str) -> None:
        if not self.closed:
            self.outbox.event(text)
            self.notify()

    def send_events(self, texts: list[str]) -> None:
        for text in texts:
            self.send_event(text)

    def close(self) -> list[Effect]:
        self.closed = True
        live, self.live_take = self.live_take, None
        self.notify()
        return [CancelTake(live)] if live is not None else []

    # ------------------------------------------------------------------ from the client

    def connected(self) -> None:
        self.send_event(self.ready_event() if self.authenticated else protocol.event(
            "ready", version=protocol.VERSION, auth="token"))

    def receive(self, data: str | bytes) -> list[Effect]:
        """One message from the client.  Anything wrong with it becomes an ``error`` event."""
        try:
            message = protocol.parse_message(data)
        except ProtocolError as exc:
            self.send_event(protocol.error_event(exc, exc.request, exc.request_id))
            return []
        return self.handle(message)

    def handle(self, message: Message) -> list[Effect]:
        if self.closed:
            return []
        try:
            if not self.authenticated:
                return self._authenticate(message)
            return HANDLERS[message.type](self, message)
        except PrevizError as exc:
            self.request_failed(message, exc)
        except Exception as exc:  # a bug must cost one request, not the connection or the server
            log.exception("session %d: internal error handling %s", self.id, message.type)
            self.internal_errors += 1
            self.request_failed(message, PrevizError(f"internal error: {type(exc).__name__}"))
        return []

    def request_failed(self, message: Message, exc: PrevizError) -> None:
        self.send_event(protocol.error_event(exc, message.type, message.id))

    def _authenticate(self, message: Message) -> list[Effect]:
        token = message.fields.get("token") if message.type == "hello" else None
        assert self.token is not None
        if isinstance(token, str) and hmac.compare_digest(token.encode(), self.token.encode()):
            self.authenticated = True
            self.send_event(self.ready_event())
            return []
        raise ProtocolError('this server needs its token: send {"type": "hello", "version": 1, "token": ...}',
                            code="unauthorized", field="token")

    def _on_hello(self, message: Message) -> list[Effect]:
        self.send_event(protocol.event("hello", message.id, version=protocol.VERSION))
        return []

    def _on_generate(self, message: Message) -> list[Effect]:
        return self._start(dict(message.fields["recipe"]), message, reason="generate")

    def _on_update(self, message: Message) -> list[Effect]:
        if self.recipe is None:
            raise ProtocolError("nothing to update: send generate first", code="no_take", field="type")
        return self._start({**self.recipe, **message.fields["recipe"]}, message, reason="update")

    def _on_cancel(self, message: Message) -> list[Effect]:
        live = self.live_take
        if live is None:
            raise ProtocolError("nothing to cancel: no take is running", code="no_take", field="type")
        self._end_take(protocol.event("take_cancelled", message.id, take_id=live, reason="cancel"))
        return [CancelTake(live)]

    def _on_approve(self, message: Message) -> list[Effect]:
        return [StoreQuery(message, functools.partial(_set_state, message, "approved"))]

    def _on_reject(self, message: Message) -> list[Effect]:
        return [StoreQuery(message, functools.partial(_set_state, message, "rejected"))]

    def _on_promote(self, message: Message) -> list[Effect]:
        return [StoreQuery(message, functools.partial(_promote, message, self.background_jobs))]

    def _on_list_drafts(self, message: Message) -> list[Effect]:
        return [StoreQuery(message, functools.partial(_list_drafts, message))]

    def _on_get_draft(self, message: Message) -> list[Effect]:
        return [StoreQuery(message, functools.partial(_get_draft, message))]

    # ------------------------------------------------------------------ takes

    def _start(self, fields: dict[str, Any], message: Message, *, reason: str) -> list[Effect]:
        try:
            recipe = resolve(Recipe(**fields, pack=self.model.pack.id, backend=self.model.backend), self.model.pack)
        except TypeError as exc:  # protocol.py already limits fields; this is belt and braces
            raise InvalidRecipeError(f"bad recipe: {exc}", field="recipe") from None
        if (recipe.width, recipe.height) != (self.model.width, self.model.height):
            field = "recipe.width" if recipe.width != self.model.width else "recipe.height"
            raise InvalidRecipeError(
                f"this server drafts at {self.model.width}x{self.model.height}; "
                f"{recipe.width}x{recipe.height} needs a server started at that size", field=field)
        started = protocol.event(
            "take_started", message.id, take_id=self.take_id + 1, recipe=recipe.to_dict(),
            frames=frame_count(recipe, self.model.fps), fps=self.model.fps,
            chunks=_chunk_count(self.model, recipe), control_preview=self.model.control_preview(recipe),
        )  # built before any state changes: if it raises, the running take goes on untouched
        if self.live_take is not None:
            self._end_take(protocol.event("take_cancelled", take_id=self.live_take, reason=reason))
        self.recipe = fields
        self.take_id += 1
        self.live_take = self.take_id
        self.send_event(started)
        return [StartTake(self.take_id, recipe)]

    def _end_take(self, text: str) -> None:
        """The live take's last word: nothing more of it reaches the client."""
        self.live_take = None
        self.outbox.drop_frames()
        self.send_event(text)

    def is_live(self, take_id: int) -> bool:
        return not self.closed and take_id == self.live_take

    # ------------------------------------------------------------------ from the worker (via the I/O layer)

    def take_frame(self, take_id: int, data: bytes) -> None:
        if not self.is_live(take_id):
            return  # superseded between encoding and now
        # Drop only for a slow *client*: while the I/O layer is blocked writing, the socket's buffers
        # are full.  A late event loop is not a slow client, so frames then just wait, up to a hard
        # cap that bounds memory either way.
        self.outbox.frame(data, slack=1 if self.socket_busy else 4)
        self.notify()

    def take_event(self, take_id: int, text: str, *, final: bool = False) -> None:
        """An event about take ``take_id`` (``final``: take_done, or an error that ends it)."""
        if not self.is_live(take_id):
            return
        if final:
            self.live_take = None
        self.send_event(text)

    # ------------------------------------------------------------------ the ready event

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


HANDLERS: dict[str, Callable[[SessionCore, Message], list[Effect]]] = {
    "hello": SessionCore._on_hello,
    "generate": SessionCore._on_generate,
    "update": SessionCore._on_update,
    "cancel": SessionCore._on_cancel,
    "approve": SessionCore._on_approve,
    "reject": SessionCore._on_reject,
    "promote": SessionCore._on_promote,
    "list_drafts": SessionCore._on_list_drafts,
    "get_draft": SessionCore._on_get_draft,
}
assert set(HANDLERS) == set(protocol.MESSAGE_TYPES), "every message type has exactly one handler"


# ----------------------------------------------------------------------------- store queries (run on its thread)


def _draft_dict(store: DraftStore, draft: Draft) -> dict[str, Any]:
    out: dict[str, Any] = draft.to_dict()
    out["jobs"] = [j.to_public_dict() for j in store.jobs(draft_id=draft.id)]
    return out


def _set_state(message: Message, state: str, store: DraftStore) -> list[str]:
    draft = store.set_state(message.fields["draft_id"], state)
    return [protocol.event("draft", message.id, draft=_draft_dict(store, draft))]


def _promote(message: Message, background_jobs: bool, store: DraftStore) -> list[str]:
    job = store.promote(message.fields["draft_id"], message.fields["options"])
    if background_jobs:
        text = ("Promotion recorded: the job is queued, and this server renders it in the background "
                "(MoE refine, 4K upscale, delivery encode); its progress follows.")
    else:
        text = (f"Promotion recorded: the job is queued. This server does not render jobs (it runs with "
                f"--no-jobs), so it stays queued until `previz jobs run {job.id}` renders it.")
    draft = store.get(message.fields["draft_id"])
    return [protocol.event("job_queued", message.id, job=job.to_public_dict(), message=text),
            protocol.event("draft", None, draft=_draft_dict(store, draft))]


def _list_drafts(message: Message, store: DraftStore) -> list[str]:
    drafts = store.list(**message.fields)
    return [protocol.event("drafts", message.id, drafts=[d.to_dict() for d in drafts])]


def _get_draft(message: Message, store: DraftStore) -> list[str]:
    draft = store.get(message.fields["draft_id"])
    return [protocol.event("draft", message.id, draft=_draft_dict(store, draft))]


def _chunk_count(model: DraftModel, recipe: Recipe) -> int:
    from previz.sampler import plan_chunks

    assert model.pack.draft is not None
    total = model.pack.latent.latent_frames(frame_count(recipe, model.fps))
    return len(plan_chunks(total, model.pack.draft.window_frames, model.pack.draft.context_frames))
