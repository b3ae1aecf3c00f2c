"""Protocol v1, sans-I/O: parse client messages, build server events and binary frame headers.

Pure functions and dataclasses only; the server moves bytes, this module says
what they mean.  Every malformed input becomes a :class:`ProtocolError` with a
code, a message and the offending field, which the server sends back as an
``error`` event without closing the connection.  See docs/protocol.md.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from previz.errors import PrevizError
from previz.validation import is_finite_number, is_valid_text

VERSION = 1
MAX_TEXT_BYTES = 64 * 1024  # control messages are small; a 1 MB prompt is refused before parsing
MAX_DEPTH = 16  # nesting of objects and lists in a message (a scene is 4 deep)
MAX_INT, MIN_INT = 2**63 - 1, -(2**63)
MAX_ID_CHARS = 256  # a request id is echoed in every answer, so it stays small

# Binary frame header, network byte order:
#   version u8 | flags u8 | image format u8 | reserved u8 |
#   take id u32 | chunk u32 | frame index u32 | pts u32 (1/fps units)
FRAME_HEADER = struct.Struct("!BBBBIIII")
FLAG_LAST = 0x01  # the take's last frame
FORMAT_JPEG, FORMAT_WEBP = 1, 2
IMAGE_FORMATS = {"jpeg": FORMAT_JPEG, "webp": FORMAT_WEBP}

RECIPE_FIELDS: dict[str, type | tuple[type, ...]] = {
    "prompt": str,
    "negative_prompt": str,
    "seed": int,
    "seconds": (int, float),
    "width": int,
    "height": int,
    "steps": int,
    "camera": dict,
    "scene": dict,
}


class ProtocolError(PrevizError):
    """A message the server cannot act on.  ``request`` / ``request_id`` are the message's type and
    id when they could be read, so the error event can carry them (``request``, ``re``)."""

    code = "bad_message"

    def __init__(self, message: str, *, code: str = "bad_message", field: str | None = None) -> None:
        super().__init__(message, field=field)
        self.code = code
        self.request: str | None = None
        self.request_id: str | int | None = None


@dataclass(frozen=True)
class Message:
    """A parsed client message: its type, optional request id, and checked fields."""

    type: str
    id: str | int | None
    fields: dict[str, Any]


def _fail(message: str, field: str | None = None, code: str = "bad_message") -> ProtocolError:
    return ProtocolError(message, code=code, field=field)


def _shown(value: str, limit: int = 40) -> str:
    return repr(value) if len(value) <= limit else f"{value[:limit]!r}..."


def _check_json(value: Any, where: str = "", depth: int = 0) -> None:
    """What any JSON value in a message must be, whatever field it sits in: nested at most
    MAX_DEPTH deep, numbers finite, integers within 64 bits, strings (keys too) valid Unicode.

    Python's parser accepts NaN, Infinity, integers of thousands of digits and lone UTF-16
    surrogates (``"\\ud800"``); none of them may reach code that assumes a float, an int64 or
    text a tokenizer can encode."""
    name = where or None
    if depth > MAX_DEPTH:
        raise _fail(f"nested more than {MAX_DEPTH} deep", name, "too_large")
    if isinstance(value, bool) or value is None:
        return
    if isinstance(value, int):
        if not MIN_INT <= value <= MAX_INT:
            digits = str(value)
            shown = digits if len(digits) <= 30 else f"{digits[:20]}... ({len(digits)} digits)"
            raise _fail(f"{where or 'number'} = {shown}: integers are limited to 64 bits "
                        f"({MIN_INT} to {MAX_INT})", name, "out_of_range")
    elif isinstance(value, float):
        if not is_finite_number(value):
            raise _fail(f"{where or 'number'} must be finite, got {value}", name, "out_of_range")
    elif isinstance(value, str):
        _check_text(value, name)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _check_json(item, f"{where}[{i}]", depth + 1)
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_text(key, name)
            _check_json(item, f"{where}.{key}" if where else key, depth + 1)


def _check_text(value: str, field: str | None) -> None:
    if not is_valid_text(value):
        raise _fail(f"{field or 'a string'} is not valid Unicode (a lone UTF-16 surrogate?)", field,
                    "invalid_string")


def _check_recipe(value: Any, *, partial: bool) -> dict[str, Any]:
    if value is None:
        raise _fail("recipe is required", "recipe", "missing_field")
    if not isinstance(value, dict):
        raise _fail("recipe must be an object", "recipe", "wrong_type")
    unknown = sorted(set(value) - set(RECIPE_FIELDS))
    if unknown:
        raise _fail(f"unknown recipe field {_shown(unknown[0])}", f"recipe.{unknown[0]}", "unknown_field")
    for key, kind in RECIPE_FIELDS.items():
        if key not in value:
            continue
        v = value[key]
        if isinstance(v, bool) or not isinstance(v, kind):
            name = kind.__name__ if isinstance(kind, type) else "number"
            raise _fail(f"recipe.{key} must be a {name}, got {type(v).__name__}", f"recipe.{key}", "wrong_type")
    if not partial and "prompt" not in value:
        raise _fail("generate needs recipe.prompt", "recipe.prompt", "missing_field")
    return dict(value)


def _draft_id(m: dict[str, Any]) -> str:
    if "draft_id" not in m:
        raise _fail("draft_id is required", "draft_id", "missing_field")
    value = m["draft_id"]
    if not isinstance(value, str) or not value:
        raise _fail("draft_id must be a non-empty string", "draft_id", "wrong_type")
    return value


def _fields_generate(m: dict[str, Any]) -> dict[str, Any]:
    return {"recipe": _check_recipe(m.get("recipe"), partial=False)}


def _fields_update(m: dict[str, Any]) -> dict[str, Any]:
    recipe = _check_recipe(m.get("recipe"), partial=True)
    if not recipe:
        raise _fail("update needs at least one recipe field", "recipe", "missing_field")
    return {"recipe": recipe}


def _fields_hello(m: dict[str, Any]) -> dict[str, Any]:
    if "version" not in m:
        raise _fail(f"hello needs the protocol version ({VERSION})", "version", "missing_field")
    version = m["version"]
    if isinstance(version, bool) or not isinstance(version, int):
        raise _fail("version must be an integer", "version", "wrong_type")
    if version != VERSION:
        raise _fail(f"protocol version {version} is not supported; this server speaks {VERSION}", "version",
                    "unsupported_version")
    token = m.get("token")
    if token is not None and not isinstance(token, str):
        raise _fail("token must be a string", "token", "wrong_type")
    return {"version": version, "token": token}


def _fields_none(m: dict[str, Any]) -> dict[str, Any]:
    return {}


def _fields_draft(m: dict[str, Any]) -> dict[str, Any]:
    return {"draft_id": _draft_id(m)}


def _fields_promote(m: dict[str, Any]) -> dict[str, Any]:
    options = m.get("options", {})
    if not isinstance(options, dict):
        raise _fail("options must be an object", "options", "wrong_type")
    return {"draft_id": _draft_id(m), "options": options}


def _fields_list(m: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if "limit" in m:
        limit = m["limit"]
        if isinstance(limit, bool) or not isinstance(limit, int):
            raise _fail("limit must be an integer from 1 to 1000", "limit", "wrong_type")
        if not 1 <= limit <= 1000:
            raise _fail(f"limit = {limit}: an integer from 1 to 1000", "limit", "out_of_range")
        out["limit"] = limit
    if "state" in m:
        if not isinstance(m["state"], str):
            raise _fail("state must be a string", "state", "wrong_type")
        out["state"] = m["state"]
    return out


# type -> (field checker, the fields it may carry besides type and id)
MESSAGE_TYPES: dict[str, tuple[Callable[[dict[str, Any]], dict[str, Any]], set[str]]] = {
    "hello": (_fields_hello, {"version", "token"}),
    "generate": (_fields_generate, {"recipe"}),
    "update": (_fields_update, {"recipe"}),
    "cancel": (_fields_none, set()),
    "approve": (_fields_draft, {"draft_id"}),
    "reject": (_fields_draft, {"draft_id"}),
    "promote": (_fields_promote, {"draft_id", "options"}),
    "list_drafts": (_fields_list, {"limit", "state"}),
    "get_draft": (_fields_draft, {"draft_id"}),
}


def decode_json(data: str | bytes) -> Any:
    """A client's text message as JSON.  Raises ProtocolError; never anything else."""
    if isinstance(data, bytes):
        raise _fail("binary messages are not accepted from clients; send JSON text", None, "binary_not_allowed")
    if len(data) > MAX_TEXT_BYTES:
        raise _fail(f"message of {len(data)} characters is over the {MAX_TEXT_BYTES} limit", None, "too_large")
    try:
        return json.loads(data)
    # ValueError covers JSONDecodeError and integers past Python's digit limit; RecursionError, deep nesting.
    except (ValueError, RecursionError) as exc:
        raise _fail(f"invalid JSON: {str(exc)[:200]}", None, "invalid_json") from None


def parse_message(data: str | bytes) -> Message:
    """One client message.  Raises ProtocolError; never anything else.

    Once the message is a JSON object, a readable ``type`` and ``id`` ride on the error, so a
    client can match it to what it sent."""
    m = decode_json(data)
    if not isinstance(m, dict):
        raise _fail("a message is a JSON object", None, "bad_message")
    kind, request_id = m.get("type"), m.get("id")
    try:
        return _parse_object(m, kind, request_id)
    except ProtocolError as exc:
        exc.request = kind if isinstance(kind, str) and kind in MESSAGE_TYPES else None
        exc.request_id = request_id if _valid_id(request_id) and exc.field != "id" else None
        raise


def _valid_id(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return MIN_INT <= value <= MAX_INT
    return isinstance(value, str) and len(value) <= MAX_ID_CHARS and is_valid_text(value)


def _parse_object(m: dict[str, Any], kind: Any, request_id: Any) -> Message:
    if "type" not in m:
        raise _fail("message needs a 'type'", "type", "missing_field")
    if not isinstance(kind, str):
        raise _fail("type must be a string", "type", "wrong_type")
    if kind not in MESSAGE_TYPES:
        raise _fail(f"unknown message type {_shown(kind)}", "type", "unknown_type")
    if request_id is not None and not _valid_id(request_id):
        raise _fail(f"id must be a string of at most {MAX_ID_CHARS} characters or a 64-bit integer", "id",
                    "wrong_type")
    checker, allowed = MESSAGE_TYPES[kind]
    unknown = sorted(set(m) - allowed - {"type", "id"})
    if unknown:
        raise _fail(f"unknown field {_shown(unknown[0])} for {kind}", unknown[0], "unknown_field")
    _check_json(m)
    return Message(type=kind, id=request_id, fields=checker(m))


# ----------------------------------------------------------------------------- server -> client


def event(kind: str, request_id: str | int | None = None, **fields: Any) -> str:
    """A JSON event.  ``re`` echoes the id of the request it answers."""
    body: dict[str, Any] = {"type": kind, **fields}
    if request_id is not None:
        body["re"] = request_id
    return json.dumps(body, separators=(",", ":"), allow_nan=False)


def error_event(exc: PrevizError, request: str | None = None, request_id: str | int | None = None,
                take_id: int | None = None) -> str:
    extra = {} if take_id is None else {"take_id": take_id}
    return event("error", request_id, code=exc.code, message=exc.message, field=exc.field, request=request, **extra)


@dataclass(frozen=True)
class FrameHeader:
    take_id: int
    chunk: int
    index: int
    pts: int
    last: bool = False
    image_format: int = FORMAT_JPEG
    version: int = VERSION


def pack_frame(header: FrameHeader, image: bytes) -> bytes:
    flags = FLAG_LAST if header.last else 0
    return FRAME_HEADER.pack(header.version, flags, header.image_format, 0, header.take_id, header.chunk,
                             header.index, header.pts) + image


def unpack_frame(data: bytes) -> tuple[FrameHeader, bytes]:
    if len(data) < FRAME_HEADER.size:
        raise _fail(f"frame message shorter than its {FRAME_HEADER.size}-byte header", None, "bad_frame")
    version, flags, image_format, _, take_id, chunk, index, pts = FRAME_HEADER.unpack_from(data)
    if version != VERSION:
        raise _fail(f"frame version {version}, expected {VERSION}", None, "bad_frame")
    header = FrameHeader(take_id, chunk, index, pts, bool(flags & FLAG_LAST), image_format, version)
    return header, data[FRAME_HEADER.size :]
