"""The draft store: every finished take, kept until the filmmaker approves, rejects or promotes it.

State lives in SQLite (WAL, ``synchronous=FULL``: an approval the filmmaker saw
succeed survives a power cut); the take's files live beside it under
``files/<draft_id>/``.  The ordering rule that keeps the two consistent: a
draft's files are written (atomically, fsynced) *before* its row is inserted,
so a crash can leave a files directory with no row (garbage, swept on open)
but never a row pointing at missing files.

Ids come in from URLs and the command line, so every entry point checks them
against a strict pattern before they touch SQL or the filesystem, and file
names are chosen from a fixed set, never taken from a client.
"""

from __future__ import annotations

import builtins
import contextlib
import dataclasses
import io
import json
import math
import re
import secrets
import shutil
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from previz.atomic import atomic_copy, fsync_dir
from previz.errors import DraftError, InvalidTransitionError, OutputError, UnknownDraftError, UnknownJobError
from previz.packs import previz_home

DRAFT_STATES = ("draft", "approved", "rejected", "promoted")
JOB_STATES = ("queued", "running", "done", "failed", "cancelled")
# Which job states may follow which.  running -> running is a resume of a run whose process
# died (its lock is free); failed -> running is a resume after an error.  done and cancelled are final.
JOB_TRANSITIONS: dict[str, tuple[str, ...]] = {
    "queued": ("running", "cancelled"),
    "running": ("running", "done", "failed", "cancelled"),
    "failed": ("running", "cancelled"),
    "done": (),
    "cancelled": (),
}
# States a filmmaker sets directly; "promoted" is reached only through promote(),
# which also queues the final render, and nothing leaves it.
SETTABLE_STATES = ("draft", "approved", "rejected")

FINAL_FORMATS = ("prores", "h265", "png", "exr")
FINAL_RESOLUTIONS = ("hd", "uhd", "dci4k")
DEFAULT_JOB_OPTIONS: dict[str, Any] = {"format": "prores", "resolution": "uhd"}
# Options only the local command line may set: they name things on this machine
# (a pack directory, an output directory, a VSR pack), which a page's client never may.
LOCAL_JOB_OPTIONS = ("pack", "output_dir", "upscaler")
_SIZE = re.compile(r"^([1-9][0-9]{1,3})x([1-9][0-9]{1,3})$")
_TIMECODE = re.compile(r"^[0-9]{2}:[0-5][0-9]:[0-5][0-9]:[0-9]{2}$")

TAKE, THUMB, LATENTS = "take.mp4", "thumb.jpg", "latents.safetensors"
FILE_NAMES = (TAKE, THUMB, LATENTS)
THUMB_MAX_WIDTH = 256

DB_NAME = "drafts.sqlite3"
SCHEMA_VERSION = 2
MAX_LIST = 1000
# A files directory without a row is swept on open only once it is this old: another
# process (the server) may be writing a draft's files right now, row not yet inserted.
ORPHAN_GRACE_S = 3600.0

_DRAFT_ID = re.compile(r"^d[0-9a-f]{16}$")
_JOB_ID = re.compile(r"^j[0-9a-f]{16}$")

_SCHEMA = """
CREATE TABLE drafts (
    id      TEXT PRIMARY KEY CHECK (length(id) = 17),
    created REAL NOT NULL,
    updated REAL NOT NULL,
    state   TEXT NOT NULL CHECK (state IN ('draft', 'approved', 'rejected', 'promoted')),
    recipe  TEXT NOT NULL,
    meta    TEXT NOT NULL,
    frames  INTEGER NOT NULL CHECK (frames > 0),
    fps     INTEGER NOT NULL CHECK (fps > 0)
);
CREATE INDEX drafts_by_created ON drafts (created);
CREATE INDEX drafts_by_state ON drafts (state, created);
-- No CHECK on job state: the final stage will add states, and SQLite cannot alter a CHECK in place.
CREATE TABLE jobs (
    id       TEXT PRIMARY KEY CHECK (length(id) = 17),
    draft_id TEXT NOT NULL REFERENCES drafts (id) ON DELETE RESTRICT,
    created  REAL NOT NULL,
    state    TEXT NOT NULL,
    options  TEXT NOT NULL
);
CREATE INDEX jobs_by_draft ON jobs (draft_id);
CREATE INDEX jobs_by_state ON jobs (state, created);
"""
# Version 2 (the final stage): a job's progress, error and output, and its finished units
# (refine checkpoints, delivery segments), each a file written atomically before its row.
_SCHEMA_2 = """
ALTER TABLE jobs ADD COLUMN updated REAL;
ALTER TABLE jobs ADD COLUMN error TEXT;
ALTER TABLE jobs ADD COLUMN output TEXT;
ALTER TABLE jobs ADD COLUMN progress TEXT;
CREATE TABLE job_units (
    job_id   TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    stage    TEXT NOT NULL,
    idx      INTEGER NOT NULL CHECK (idx >= 0),
    file     TEXT NOT NULL,
    finished REAL NOT NULL,
    PRIMARY KEY (job_id, stage, idx)
);
"""


def default_store_root() -> Path:
    return previz_home() / "drafts"


def _new_id(prefix: str) -> str:
    return prefix + secrets.token_hex(8)


def new_draft_id() -> str:
    """An id for a draft about to be added (the CLI names its output file after it before rendering)."""
    return _new_id("d")


def check_job_id(job_id: Any) -> str:
    if not isinstance(job_id, str) or not _JOB_ID.match(job_id):
        shown = job_id if isinstance(job_id, str) and len(job_id) <= 40 else type(job_id).__name__
        raise UnknownJobError(f"no job {shown!r}: a job id is 'j' and 16 hex digits", field="job_id", value=job_id)
    return job_id


def check_draft_id(draft_id: Any) -> str:
    """The id, if it is one we could have issued; UnknownDraftError otherwise (never a path)."""
    if not isinstance(draft_id, str) or not _DRAFT_ID.match(draft_id):
        shown = draft_id if isinstance(draft_id, str) and len(draft_id) <= 40 else type(draft_id).__name__
        raise UnknownDraftError(f"no draft {shown!r}: a draft id is 'd' and 16 hex digits",
                                field="draft_id", value=draft_id)
    return draft_id


def _json(field: str, value: Any) -> str:
    # allow_nan=False: what is stored must round-trip to the web page as strict JSON.
    try:
        return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise DraftError(f"{field} is not JSON-safe: {exc}", field=field, value=None) from None


@dataclass(frozen=True)
class Draft:
    id: str
    created: float
    state: str
    recipe: dict[str, Any]
    meta: dict[str, Any]
    frames: int
    fps: int

    @property
    def seconds(self) -> float:
        return self.frames / self.fps

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "created": self.created,
            "state": self.state,
            # Copies through JSON: a caller editing the dict cannot reach into this frozen record.
            "recipe": json.loads(json.dumps(self.recipe)),
            "meta": json.loads(json.dumps(self.meta)),
            "frames": self.frames,
            "fps": self.fps,
            "seconds": self.seconds,
            "thumbnail": f"/drafts/{self.id}/{THUMB}",
            "video": f"/drafts/{self.id}/{TAKE}",
        }


@dataclass(frozen=True)
class Job:
    id: str
    draft_id: str
    created: float
    state: str
    options: dict[str, Any]
    updated: float | None = None
    error: str | None = None  # why it failed, one line
    output: str | None = None  # the delivery, once done
    progress: dict[str, Any] | None = None  # {"stage", "unit", "units", "eta_s"}

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "draft_id": self.draft_id,
            "created": self.created,
            "state": self.state,
            "options": dict(self.options),
            "updated": self.updated,
            "error": self.error,
            "output": self.output,
            "progress": dict(self.progress) if self.progress else None,
        }

    def to_public_dict(self) -> dict[str, Any]:
        """What a page's client sees: the delivery's file name, never this machine's paths."""
        out = self.to_dict()
        out["output"] = Path(self.output).name if self.output else None
        out["options"].pop("output_dir", None)
        out["options"].pop("pack", None)
        return out


def check_job_options(options: dict[str, Any] | None, *, local: bool = False) -> dict[str, Any]:
    """Final-render options with the defaults filled in; DraftError naming the bad field otherwise.

    ``local``: the caller is this machine's command line, which may also name a
    final pack and an output directory (LOCAL_JOB_OPTIONS); a page's client may not.
    """
    if options is None:
        return dict(DEFAULT_JOB_OPTIONS)
    if not isinstance(options, dict):
        raise DraftError("final-render options must be an object", field="options", value=None)
    allowed = ("format", "resolution", "strength", "size", "timecode") + (LOCAL_JOB_OPTIONS if local else ())
    for key in options:
        if key not in allowed:
            raise DraftError(f"unknown final-render option {key!r} (expected one of {', '.join(allowed)})",
                             field="options", value=key)
    out = {**DEFAULT_JOB_OPTIONS, **options}
    if out["format"] not in FINAL_FORMATS:
        raise DraftError(f"format = {out['format']!r}: expected one of {', '.join(FINAL_FORMATS)}",
                         field="format", value=out["format"])
    if out["resolution"] not in FINAL_RESOLUTIONS:
        raise DraftError(f"resolution = {out['resolution']!r}: expected one of {', '.join(FINAL_RESOLUTIONS)}",
                         field="resolution", value=out["resolution"])
    if "strength" in out:
        s = out["strength"]
        # bool is an int to Python, but "strength": true is a client bug, not 1.0.
        if isinstance(s, bool) or not isinstance(s, int | float) or not math.isfinite(s) or not 0 < s <= 1:
            raise DraftError(f"strength = {s!r}: expected a number in (0, 1]", field="strength", value=s)
        out["strength"] = float(s)
    if "size" in out:
        m = _SIZE.match(out["size"]) if isinstance(out["size"], str) else None
        if m is None or int(m.group(1)) % 16 or int(m.group(2)) % 16:
            raise DraftError(f"size = {out['size']!r}: expected WIDTHxHEIGHT, both multiples of 16 (e.g. 1280x720)",
                             field="size", value=out["size"])
    if "timecode" in out and not (isinstance(out["timecode"], str) and _TIMECODE.match(out["timecode"])):
        raise DraftError(f"timecode = {out['timecode']!r}: expected HH:MM:SS:FF", field="timecode",
                         value=out["timecode"])
    for key in LOCAL_JOB_OPTIONS:
        if key in out and (not isinstance(out[key], str) or not out[key]):
            raise DraftError(f"{key} must be a non-empty string", field=key, value=out[key])
    return out


def _check_frames(frames: Sequence[np.ndarray]) -> list[np.ndarray]:
    frames = list(frames)
    if not frames:
        raise DraftError("a draft needs at least one frame", field="frames", value=0)
    shape = frames[0].shape
    for i, f in enumerate(frames):
        if not isinstance(f, np.ndarray) or f.dtype != np.uint8 or f.ndim != 3 or f.shape[2] != 3 or f.shape != shape:
            got = f"{getattr(f, 'dtype', type(f).__name__)} {getattr(f, 'shape', '')}"
            raise DraftError(f"frame {i} is {got}: expected uint8 RGB [H, W, 3] of shape {shape}",
                             field="frames", value=i)
    return frames


def _thumbnail_jpeg(frame: np.ndarray) -> bytes:
    from PIL import Image

    image = Image.fromarray(np.ascontiguousarray(frame))  # uint8 [H, W, 3] is RGB
    if image.width > THUMB_MAX_WIDTH:
        height = max(1, round(image.height * THUMB_MAX_WIDTH / image.width))
        image = image.resize((THUMB_MAX_WIDTH, height), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=85)
    return buf.getvalue()


class DraftStore:
    """Drafts, their state and their promote jobs, safe to call from several threads.

    One connection, opened with ``check_same_thread=False`` and guarded by a lock,
    rather than a connection per call: SQLite admits one writer at a time anyway,
    so the lock costs no write throughput, while per-thread connections in one
    process would contend through SQLITE_BUSY and re-run the PRAGMAs on every
    call.  The slow part of ``add`` (encoding the MP4) runs outside the lock, so
    concurrent takes still encode in parallel.  Other processes (the CLI beside
    the server) read under WAL and wait up to ``busy_timeout`` to write.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.files = self.root / "files"
        try:
            self.files.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"cannot create the draft store at {self.root}: {exc.strerror}",
                              field="store", value=str(self.root)) from None
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        try:
            # isolation_level=None: no implicit transactions; every write below opens its
            # own BEGIN IMMEDIATE, so the read-check-write of a state change is atomic.
            self._db = sqlite3.connect(
                self.root / DB_NAME, check_same_thread=False, isolation_level=None, timeout=10.0
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._migrate()
        except sqlite3.DatabaseError as exc:
            self.close()
            raise DraftError(f"cannot open the draft store {self.root / DB_NAME}: {exc}",
                             field="store", value=str(self.root)) from None
        self._sweep_orphans()

    # ------------------------------------------------------------------ plumbing

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise DraftError("the draft store is closed", field="store", value=str(self.root))
        return self._db

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction under the lock: committed whole or not at all."""
        with self._lock:
            db = self._conn()
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def _migrate(self) -> None:
        db = self._conn()
        db.execute("BEGIN IMMEDIATE")  # re-read inside: two processes may open a new store at once
        try:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise DraftError(f"the draft store {self.root} has schema {version}, newer than this previz "
                                 f"understands ({SCHEMA_VERSION}); upgrade previz", field="store", value=version)
            # One step at a time, in this transaction: a new store runs every step.
            for step, schema in ((1, _SCHEMA), (2, _SCHEMA_2)):
                if version < step:
                    for statement in schema.split(";"):
                        if statement.strip():
                            db.execute(statement)
            if version < SCHEMA_VERSION:
                db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def _sweep_orphans(self) -> None:
        """Remove files directories whose draft row never landed (a crash between files and row)."""
        now = time.time()
        with self._lock:
            known = {row[0] for row in self._conn().execute("SELECT id FROM drafts")}
        for entry in self.files.iterdir():
            if not _DRAFT_ID.match(entry.name) or entry.name in known or not entry.is_dir():
                continue
            with contextlib.suppress(OSError):
                if now - entry.stat().st_mtime > ORPHAN_GRACE_S:
                    shutil.rmtree(entry)

    def _row_to_draft(self, row: tuple[Any, ...]) -> Draft:
        id_, created, state, recipe, meta, frames, fps = row
        return Draft(id=id_, created=created, state=state, recipe=json.loads(recipe), meta=json.loads(meta),
                     frames=frames, fps=fps)

    _DRAFT_COLUMNS = "id, created, state, recipe, meta, frames, fps"
    _JOB_COLUMNS = "id, draft_id, created, state, options, updated, error, output, progress"

    def _fetch_draft(self, db: sqlite3.Connection, draft_id: str) -> Draft:
        row = db.execute(f"SELECT {self._DRAFT_COLUMNS} FROM drafts WHERE id = ?", (draft_id,)).fetchone()
        if row is None:
            raise UnknownDraftError(f"no draft {draft_id!r} in {self.root}", field="draft_id", value=draft_id)
        return self._row_to_draft(row)

    # ------------------------------------------------------------------ drafts

    def add(self, *, recipe: dict[str, Any], meta: dict[str, Any], frames: Sequence[np.ndarray],
            latents: np.ndarray, fps: int, draft_id: str | None = None) -> Draft:
        """Store a finished take: files first (atomic, fsynced), then the row.

        ``draft_id`` (from :func:`new_draft_id`) is for a caller that must know the id in advance.
        """
        # Imported here, not at module top: PyAV, Pillow and the engines package (torch)
        # cost over a second, and `previz drafts list` or a page of drafts needs none of them.
        import safetensors.numpy

        from previz.atomic import atomic_write
        from previz.video import write_mp4

        if isinstance(fps, bool) or not isinstance(fps, int) or fps <= 0:
            raise DraftError(f"fps = {fps!r}: expected a positive integer", field="fps", value=fps)
        if not isinstance(latents, np.ndarray):
            raise DraftError("latents must be a numpy array", field="latents", value=type(latents).__name__)
        for name, value in (("recipe", recipe), ("meta", meta)):
            if not isinstance(value, dict):
                raise DraftError(f"{name} must be a dict", field=name, value=type(value).__name__)
        frames = _check_frames(frames)
        recipe_json, meta_json = _json("recipe", recipe), _json("meta", meta)
        pack = meta.get("pack") if isinstance(meta.get("pack"), dict) else {}
        latent_space = str(pack.get("latent_space", "")) if pack else ""

        draft_id = check_draft_id(draft_id) if draft_id is not None else new_draft_id()
        directory = self.files / draft_id
        try:
            directory.mkdir(parents=True)
            write_mp4(directory / TAKE, frames, fps=fps, meta=meta)
            atomic_write(directory / THUMB, _thumbnail_jpeg(frames[len(frames) // 2]))
            blob = safetensors.numpy.save({"latents": np.ascontiguousarray(latents)},
                                          metadata={"draft_id": draft_id, "latent_space": latent_space})
            atomic_write(directory / LATENTS, blob)
            fsync_dir(self.files)  # the directory entry itself, before a row can name it
            with self._write() as db:
                created = time.time()  # taken under the lock, so created order is insert order
                db.execute(
                    f"INSERT INTO drafts ({self._DRAFT_COLUMNS}, updated) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (draft_id, created, "draft", recipe_json, meta_json, len(frames), fps, created),
                )
        except BaseException as exc:
            # No row, so nothing refers to these files: remove them now rather than at the next sweep.
            shutil.rmtree(directory, ignore_errors=True)
            if isinstance(exc, OSError):
                raise OutputError(f"cannot write draft files under {directory}: {exc.strerror}",
                                  field="store", value=str(directory)) from None
            raise
        return Draft(id=draft_id, created=created, state="draft", recipe=json.loads(recipe_json),
                     meta=json.loads(meta_json), frames=len(frames), fps=fps)

    def get(self, draft_id: str) -> Draft:
        check_draft_id(draft_id)
        with self._lock:
            return self._fetch_draft(self._conn(), draft_id)

    def list(self, *, limit: int = 50, state: str | None = None) -> list[Draft]:
        """Newest first (insertion order breaks ties in the timestamp)."""
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIST:
            raise DraftError(f"limit = {limit!r}: expected an integer from 1 to {MAX_LIST}",
                             field="limit", value=limit)
        if state is not None and state not in DRAFT_STATES:
            raise DraftError(f"state = {state!r}: expected one of {', '.join(DRAFT_STATES)}",
                             field="state", value=state)
        where, params = ("WHERE state = ?", [state]) if state is not None else ("", [])
        with self._lock:
            rows = self._conn().execute(
                f"SELECT {self._DRAFT_COLUMNS} FROM drafts {where} ORDER BY created DESC, rowid DESC LIMIT ?",
                (*params, limit),
            ).fetchall()
        return [self._row_to_draft(r) for r in rows]

    def set_state(self, draft_id: str, state: str) -> Draft:
        """Approve, reject or return to draft; free among those three, impossible once promoted."""
        check_draft_id(draft_id)
        if state not in SETTABLE_STATES:
            hint = " (use promote, which also queues the final render)" if state == "promoted" else ""
            raise DraftError(f"state = {state!r}: expected one of {', '.join(SETTABLE_STATES)}{hint}",
                             field="state", value=state)
        with self._write() as db:
            current = self._fetch_draft(db, draft_id)
            if current.state == "promoted":
                raise InvalidTransitionError(
                    f"draft {draft_id} is promoted (its final render is queued); it cannot become {state}",
                    field="state", value={"from": current.state, "to": state})
            if current.state != state:
                db.execute("UPDATE drafts SET state = ?, updated = ? WHERE id = ?", (state, time.time(), draft_id))
        return dataclasses.replace(current, state=state)

    def promote(self, draft_id: str, options: dict[str, Any] | None = None, *, local: bool = False) -> Job:
        """Approved -> promoted, with the final-render job queued in the same transaction."""
        check_draft_id(draft_id)
        options = check_job_options(options, local=local)
        options_json = _json("options", options)
        with self._write() as db:
            current = self._fetch_draft(db, draft_id)
            if current.state != "approved":
                why = "it already is" if current.state == "promoted" else "approve it first"
                raise InvalidTransitionError(
                    f"draft {draft_id} is {current.state}: only an approved draft can be promoted ({why})",
                    field="state", value={"from": current.state, "to": "promoted"})
            now = time.time()
            job = Job(id=_new_id("j"), draft_id=draft_id, created=now, state="queued", options=options, updated=now)
            db.execute("UPDATE drafts SET state = 'promoted', updated = ? WHERE id = ?", (now, draft_id))
            db.execute("INSERT INTO jobs (id, draft_id, created, state, options, updated) VALUES (?, ?, ?, ?, ?, ?)",
                       (job.id, draft_id, now, job.state, options_json, now))
        return job

    # builtins.list: inside this class body, a bare ``list`` would name the method above.
    def jobs(self, *, draft_id: str | None = None, state: str | None = None) -> builtins.list[Job]:
        """Promote jobs, newest first, optionally for one draft or in one state."""
        clauses: builtins.list[str] = []
        params: builtins.list[Any] = []
        if draft_id is not None:
            check_draft_id(draft_id)
            clauses.append("draft_id = ?")
            params.append(draft_id)
        if state is not None:
            if state not in JOB_STATES:
                raise DraftError(f"job state = {state!r}: expected one of {', '.join(JOB_STATES)}",
                                 field="state", value=state)
            clauses.append("state = ?")
            params.append(state)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        with self._lock:
            db = self._conn()
            if draft_id is not None:
                self._fetch_draft(db, draft_id)  # an unknown draft is an error, not "no jobs"
            rows = db.execute(f"SELECT {self._JOB_COLUMNS} FROM jobs {where} ORDER BY created DESC, rowid DESC",
                              params).fetchall()
        return [self._row_to_job(r) for r in rows]

    @staticmethod
    def _row_to_job(r: tuple[Any, ...]) -> Job:
        return Job(id=r[0], draft_id=r[1], created=r[2], state=r[3], options=json.loads(r[4]), updated=r[5],
                   error=r[6], output=r[7], progress=json.loads(r[8]) if r[8] else None)

    def _fetch_job(self, db: sqlite3.Connection, job_id: str) -> Job:
        row = db.execute(f"SELECT {self._JOB_COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise UnknownJobError(f"no job {job_id!r} in {self.root}", field="job_id", value=job_id)
        return self._row_to_job(row)

    def job(self, job_id: str) -> Job:
        check_job_id(job_id)
        with self._lock:
            return self._fetch_job(self._conn(), job_id)

    def set_job_state(self, job_id: str, state: str, *, error: str | None = None, output: str | None = None,
                      allowed_from: tuple[str, ...] | None = None) -> Job:
        """Move a job along JOB_TRANSITIONS (optionally only from ``allowed_from``), atomically."""
        check_job_id(job_id)
        with self._write() as db:
            current = self._fetch_job(db, job_id)
            ok = state in JOB_TRANSITIONS[current.state] and (allowed_from is None or current.state in allowed_from)
            if not ok:
                raise InvalidTransitionError(f"job {job_id} is {current.state}; it cannot become {state}",
                                             field="state", value={"from": current.state, "to": state})
            now = time.time()
            progress = None if state in ("done", "cancelled") else current.progress
            db.execute("UPDATE jobs SET state = ?, updated = ?, error = ?, output = ?, progress = ? WHERE id = ?",
                       (state, now, error, output, _json("progress", progress) if progress else None, job_id))
            if state in ("done", "cancelled"):
                db.execute("DELETE FROM job_units WHERE job_id = ?", (job_id,))
        return dataclasses.replace(current, state=state, updated=now, error=error, output=output, progress=progress)

    def set_job_progress(self, job_id: str, progress: dict[str, Any]) -> None:
        with self._write() as db:
            db.execute("UPDATE jobs SET progress = ?, updated = ? WHERE id = ?",
                       (_json("progress", progress), time.time(), job_id))

    def add_unit(self, job_id: str, stage: str, index: int, file: str) -> None:
        """Record a finished unit; its file must already be written (atomically)."""
        with self._write() as db:
            db.execute("INSERT OR REPLACE INTO job_units (job_id, stage, idx, file, finished) VALUES (?, ?, ?, ?, ?)",
                       (job_id, stage, index, file, time.time()))

    def units(self, job_id: str, stage: str) -> dict[int, str]:
        """Finished units of one stage: index -> file (relative to the job's directory)."""
        with self._lock:
            rows = self._conn().execute("SELECT idx, file FROM job_units WHERE job_id = ? AND stage = ? ORDER BY idx",
                                        (job_id, stage)).fetchall()
        return {int(i): str(f) for i, f in rows}

    def job_dir(self, job_id: str) -> Path:
        """Where a job keeps its units (refine checkpoints, segments) while it runs."""
        return self.root / "jobs" / check_job_id(job_id)

    # ------------------------------------------------------------------ files

    def file_path(self, draft_id: str, name: str) -> Path:
        """The path of one of a draft's own files; ``name`` is checked against a fixed set."""
        check_draft_id(draft_id)
        if name not in FILE_NAMES:
            raise UnknownDraftError(f"draft {draft_id} has no file {str(name)[:40]!r} "
                                    f"(expected one of {', '.join(FILE_NAMES)})", field="name", value=name)
        self.get(draft_id)
        path = self.files / draft_id / name
        if not path.is_file():
            raise DraftError(f"draft {draft_id} has lost its {name} (expected {path})", field="name", value=name)
        return path

    def load_latents(self, draft_id: str) -> np.ndarray:
        from safetensors import safe_open

        path = self.file_path(draft_id, LATENTS)
        with safe_open(str(path), framework="numpy") as f:
            # A latents file moved between draft directories must not pass as this draft's.
            owner = (f.metadata() or {}).get("draft_id")
            if owner != draft_id:
                raise DraftError(f"{path} belongs to draft {owner!r}, not {draft_id}", field="draft_id",
                                 value=draft_id)
            return f.get_tensor("latents")  # type: ignore[no-any-return]

    def export(self, draft_id: str, dest: Path) -> Path:
        """Copy the take's MP4 to ``dest`` (a file, or a directory -> dest/<id>.mp4), atomically."""
        from previz.video import check_output_path

        source = self.file_path(draft_id, TAKE)
        dest = Path(dest)
        target = check_output_path(dest / f"{draft_id}.mp4" if dest.is_dir() else dest)
        atomic_copy(source, target)  # an OSError (full disk, read-only) becomes an OutputError
        return target

    # ------------------------------------------------------------------ lifecycle

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    def __enter__(self) -> DraftStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
