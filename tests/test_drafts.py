"""The draft store: files before rows, states and promote jobs, ids that cannot become paths, restarts."""

from __future__ import annotations

import argparse
import errno
import json
import math
import os
import sqlite3
import threading
import time

import av
import numpy as np
import pytest
import safetensors
from PIL import Image

import previz.drafts as drafts_mod
import previz.video
from previz.drafts import (
    DRAFT_STATES,
    FILE_NAMES,
    SCHEMA_VERSION,
    DraftStore,
    default_store_root,
)
from previz.drafts_cli import add_drafts_parser
from previz.errors import DraftError, InvalidTransitionError, OutputError, PrevizError, UnknownDraftError
from previz.video import read_recipe

W, H, FPS = 64, 48, 30
ID_RE = r"^d[0-9a-f]{16}$"


def make_frames(n: int = 9, width: int = W, height: int = H) -> list[np.ndarray]:
    """Frame i is a flat grey of level 20*i, so the thumbnail shows which frame it came from."""
    return [np.full((height, width, 3), (20 * i) % 256, dtype=np.uint8) for i in range(n)]


def make_recipe(prompt: str = "a red cube on a sandy plain", seed: int = 7) -> dict:
    return {"prompt": prompt, "seed": seed, "seconds": 0.3, "width": W, "height": H, "steps": 2, "shift": 3.0,
            "guidance": 1.0, "camera": None, "backend": "torch", "pack": "previz-tiny"}


def make_meta(recipe: dict, frames: int = 9, trained: bool = False) -> dict:
    return {
        "previz": "0.1.0",
        "recipe": recipe,
        "pack": {"id": "previz-tiny", "label": "trained" if trained else "untrained", "trained": trained,
                 "latent_space": "previz-tiny-v0", "sha256": {"transformer": {"model.safetensors": "ab" * 32}}},
        "fps": FPS,
        "frames": frames,
        "engines": {"denoiser": {"backend": "torch"}},
    }


def add_draft(store: DraftStore, prompt: str = "a red cube on a sandy plain", n: int = 9, **kw):
    recipe = make_recipe(prompt)
    latents = np.arange(16 * 3 * 6 * 8, dtype=np.float32).reshape(1, 16, 3, 6, 8) / 7
    return store.add(recipe=recipe, meta=make_meta(recipe, n, **kw), frames=make_frames(n), latents=latents,
                     fps=FPS)


@pytest.fixture
def store(tmp_path):
    s = DraftStore(tmp_path / "store")
    yield s
    s.close()


# ----------------------------------------------------------------------------- add / get / list


def test_add_then_get_round_trips(store):
    draft = add_draft(store, "a slow dolly past a neon diner")
    assert draft.id.startswith("d") and len(draft.id) == 17
    assert draft.state == "draft" and draft.frames == 9 and draft.fps == FPS
    got = store.get(draft.id)
    assert got == draft
    assert got.recipe["prompt"] == "a slow dolly past a neon diner"
    assert got.meta["pack"]["trained"] is False
    d = got.to_dict()
    assert d["thumbnail"] == f"/drafts/{draft.id}/thumb.jpg"
    assert d["video"] == f"/drafts/{draft.id}/take.mp4"
    assert d["seconds"] == pytest.approx(9 / FPS)
    assert json.loads(json.dumps(d, allow_nan=False)) == d  # strictly JSON-safe
    d["recipe"]["prompt"] = "edited"
    assert got.recipe["prompt"] == "a slow dolly past a neon diner"  # to_dict hands out a copy


def test_files_are_written_and_valid(store):
    draft = add_draft(store, n=9)
    take = store.file_path(draft.id, "take.mp4")
    with av.open(str(take)) as container:
        decoded = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(decoded) == 9
    assert decoded[0].shape == (H, W, 3)
    assert read_recipe(take) == draft.meta  # the take carries its recipe like any other previz MP4

    thumb = store.file_path(draft.id, "thumb.jpg")
    assert thumb.read_bytes()[:3] == b"\xff\xd8\xff"
    with Image.open(thumb) as image:
        assert image.format == "JPEG" and image.size == (W, H)
        level = np.asarray(image.convert("RGB")).mean()
    assert abs(level - 20 * 4) < 4  # the middle frame (index 4 of 9)

    latents = store.load_latents(draft.id)
    expected = np.arange(16 * 3 * 6 * 8, dtype=np.float32).reshape(1, 16, 3, 6, 8) / 7
    assert latents.dtype == np.float32
    np.testing.assert_array_equal(latents, expected)
    with safetensors.safe_open(str(store.file_path(draft.id, "latents.safetensors")), framework="numpy") as f:
        assert f.metadata() == {"draft_id": draft.id, "latent_space": "previz-tiny-v0"}
    leftovers = [p.name for p in (store.files / draft.id).iterdir() if p.name not in FILE_NAMES]
    assert leftovers == []  # no temp files left behind


def test_thumbnail_is_at_most_256_wide(store):
    recipe = make_recipe()
    draft = store.add(recipe=recipe, meta=make_meta(recipe, 3), frames=make_frames(3, 320, 176),
                      latents=np.zeros((2, 2), np.float16), fps=FPS)
    with Image.open(store.file_path(draft.id, "thumb.jpg")) as image:
        assert image.size == (256, round(176 * 256 / 320))


def test_list_is_newest_first_with_limit_and_state(store):
    ids = [add_draft(store, f"shot {i}").id for i in range(5)]
    assert [d.id for d in store.list()] == ids[::-1]
    assert [d.id for d in store.list(limit=2)] == ids[:-3:-1]
    store.set_state(ids[1], "approved")
    store.set_state(ids[3], "approved")
    store.set_state(ids[2], "rejected")
    assert [d.id for d in store.list(state="approved")] == [ids[3], ids[1]]
    assert [d.id for d in store.list(state="rejected")] == [ids[2]]
    assert [d.id for d in store.list(state="draft")] == [ids[4], ids[0]]
    assert store.list(state="promoted") == []


@pytest.mark.parametrize("kwargs, field", [
    ({"limit": 0}, "limit"), ({"limit": 1001}, "limit"), ({"limit": True}, "limit"), ({"limit": "5"}, "limit"),
    ({"state": "bogus"}, "state"), ({"state": "DRAFT"}, "state"),
])
def test_list_validates_limit_and_state(store, kwargs, field):
    with pytest.raises(DraftError) as info:
        store.list(**kwargs)
    assert info.value.field == field


@pytest.mark.parametrize("change, field", [
    ({"frames": []}, "frames"),
    ({"frames": [np.zeros((H, W, 3), np.float32)]}, "frames"),
    ({"frames": [np.zeros((H, W), np.uint8)]}, "frames"),
    ({"frames": [np.zeros((H, W, 3), np.uint8), np.zeros((H, W + 16, 3), np.uint8)]}, "frames"),
    ({"fps": 0}, "fps"),
    ({"fps": 29.97}, "fps"),
    ({"latents": [1, 2, 3]}, "latents"),
    ({"recipe": {"prompt": "x", "guidance": math.nan}}, "recipe"),
    ({"meta": {"blob": object()}}, "meta"),
])
def test_add_rejects_bad_input_and_leaves_nothing(store, change, field):
    recipe = make_recipe()
    kwargs = dict(recipe=recipe, meta=make_meta(recipe), frames=make_frames(3), latents=np.zeros(4), fps=FPS)
    with pytest.raises(DraftError) as info:
        store.add(**{**kwargs, **change})
    assert info.value.field == field
    assert store.list() == []
    assert list(store.files.iterdir()) == []


def test_a_failed_write_leaves_no_row_and_no_files(store, monkeypatch):
    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(previz.video, "write_mp4", disk_full)
    with pytest.raises(OutputError, match="No space left"):
        add_draft(store)
    assert store.list() == []
    assert list(store.files.iterdir()) == []


# ----------------------------------------------------------------------------- states and promote


def test_states_move_freely_among_draft_approved_rejected(store):
    draft = add_draft(store)
    for state in ("approved", "rejected", "draft", "rejected", "approved", "approved", "draft"):
        assert store.set_state(draft.id, state).state == state
        assert store.get(draft.id).state == state


@pytest.mark.parametrize("state", ["promoted", "queued", "APPROVED", "", None])
def test_set_state_refuses_states_it_cannot_set(store, state):
    draft = add_draft(store)
    with pytest.raises(DraftError) as info:
        store.set_state(draft.id, state)
    assert info.value.field == "state"
    assert store.get(draft.id).state == "draft"


@pytest.mark.parametrize("state", ["draft", "rejected"])
def test_only_an_approved_draft_can_be_promoted(store, state):
    draft = add_draft(store)
    store.set_state(draft.id, state)
    with pytest.raises(InvalidTransitionError) as info:
        store.promote(draft.id)
    assert info.value.value == {"from": state, "to": "promoted"}
    assert info.value.code == "invalid_transition"
    assert store.get(draft.id).state == state
    assert store.jobs(draft_id=draft.id) == []


def test_promote_queues_a_job_and_the_draft_can_no_longer_change(store):
    draft = add_draft(store)
    other = add_draft(store, "another shot")
    store.set_state(draft.id, "approved")
    job = store.promote(draft.id)
    assert job.state == "queued" and job.draft_id == draft.id
    assert job.id.startswith("j") and len(job.id) == 17
    assert job.options == {"format": "prores", "resolution": "uhd"}
    assert store.get(draft.id).state == "promoted"
    assert store.jobs(draft_id=draft.id) == [job]
    assert store.jobs(state="queued") == [job]
    assert store.jobs(draft_id=other.id) == []
    assert json.loads(json.dumps(job.to_dict())) == job.to_dict()

    for state in ("draft", "approved", "rejected"):
        with pytest.raises(InvalidTransitionError) as info:
            store.set_state(draft.id, state)
        assert info.value.value == {"from": "promoted", "to": state}
    with pytest.raises(InvalidTransitionError):
        store.promote(draft.id)
    assert store.get(draft.id).state == "promoted"
    assert len(store.jobs()) == 1


def test_promote_is_one_transaction(store, monkeypatch):
    first, second = add_draft(store), add_draft(store)
    store.set_state(first.id, "approved")
    store.set_state(second.id, "approved")
    taken = store.promote(first.id)
    # The job insert fails (its id collides) after the state update ran: both must roll back.
    monkeypatch.setattr(drafts_mod, "_new_id", lambda prefix: taken.id)
    with pytest.raises(sqlite3.IntegrityError):
        store.promote(second.id)
    assert store.get(second.id).state == "approved"
    assert store.jobs(draft_id=second.id) == []
    monkeypatch.undo()
    assert store.promote(second.id).draft_id == second.id  # and the store is still usable


def test_promote_options(store):
    draft = add_draft(store)
    store.set_state(draft.id, "approved")
    job = store.promote(draft.id, {"format": "h265", "strength": 0.4})
    assert job.options == {"format": "h265", "resolution": "uhd", "strength": 0.4}
    assert store.jobs()[0].options == job.options


@pytest.mark.parametrize("options, field", [
    ({"codec": "prores"}, "options"), ({"path": "/etc/passwd"}, "options"), ("prores", "options"),
    ({"format": "gif"}, "format"), ({"resolution": "8k"}, "resolution"),
    ({"strength": 0}, "strength"), ({"strength": 1.5}, "strength"), ({"strength": True}, "strength"),
    ({"strength": math.nan}, "strength"), ({"strength": "0.5"}, "strength"),
    ({"size": "1280x721"}, "size"), ({"size": "1280"}, "size"), ({"size": [1280, 720]}, "size"),
    ({"timecode": "1:00:00:00"}, "timecode"),
    # Local-only options: a page's client may not name a pack directory or an output directory.
    ({"pack": "/tmp/evil-pack"}, "options"), ({"output_dir": "/etc"}, "options"),
])
def test_promote_validates_options_before_changing_anything(store, options, field):
    draft = add_draft(store)
    store.set_state(draft.id, "approved")
    with pytest.raises(DraftError) as info:
        store.promote(draft.id, options)
    assert info.value.field == field
    assert store.get(draft.id).state == "approved"
    assert store.jobs() == []


# ----------------------------------------------------------------------------- ids and files


BAD_IDS = ["../etc/passwd", "d123", "D0123456789ABCDEF", "d0123456789abcdeg", "d0123456789abcdef/../x",
           "d0123456789abcdef\n", "", "j0123456789abcdef", 5, None]


@pytest.mark.parametrize("bad", BAD_IDS)
def test_malformed_ids_are_unknown_drafts(store, bad):
    add_draft(store)
    calls = [
        lambda: store.get(bad),
        lambda: store.set_state(bad, "approved"),
        lambda: store.promote(bad),
        lambda: store.file_path(bad, "take.mp4"),
        lambda: store.load_latents(bad),
        lambda: store.export(bad, store.root.parent / "out.mp4"),
    ]
    if bad is not None:  # jobs(draft_id=None) means every draft's jobs
        calls.append(lambda: store.jobs(draft_id=bad))
    for call in calls:
        with pytest.raises(UnknownDraftError) as info:
            call()
        assert info.value.field == "draft_id"
        assert isinstance(info.value, LookupError) and info.value.code == "unknown_draft"
    assert not (store.root.parent / "out.mp4").exists()


def test_unknown_well_formed_id(store):
    missing = "d" + "0" * 16
    for call in (lambda: store.get(missing), lambda: store.set_state(missing, "approved"),
                 lambda: store.promote(missing), lambda: store.jobs(draft_id=missing),
                 lambda: store.file_path(missing, "thumb.jpg")):
        with pytest.raises(UnknownDraftError, match=missing):
            call()


@pytest.mark.parametrize("name", ["../drafts.sqlite3", "take.mp4/../../drafts.sqlite3", "TAKE.MP4", "",
                                  "/etc/passwd", ".", "take.mp4\x00", None])
def test_file_path_refuses_other_names(store, name):
    draft = add_draft(store)
    with pytest.raises(UnknownDraftError) as info:
        store.file_path(draft.id, name)
    assert info.value.field == "name"


def test_file_path_serves_the_three_files(store):
    draft = add_draft(store)
    for name in FILE_NAMES:
        path = store.file_path(draft.id, name)
        assert path == store.root / "files" / draft.id / name and path.is_file()


def test_export_copies_the_take(store, tmp_path):
    draft = add_draft(store)
    source = store.file_path(draft.id, "take.mp4").read_bytes()
    to_file = store.export(draft.id, tmp_path / "out" / "shot.mp4")
    assert to_file == tmp_path / "out" / "shot.mp4" and to_file.read_bytes() == source
    to_dir = store.export(draft.id, tmp_path / "out")
    assert to_dir == tmp_path / "out" / f"{draft.id}.mp4" and to_dir.read_bytes() == source
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(["shot.mp4", f"{draft.id}.mp4"])
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(OutputError):
        store.export(draft.id, tmp_path / "a-file" / "take.mp4")


# ----------------------------------------------------------------------------- durability and threads


def test_store_survives_a_restart(tmp_path):
    root = tmp_path / "store"
    store = DraftStore(root)
    kept, rejected, promoted = add_draft(store, "kept"), add_draft(store, "cut"), add_draft(store, "final")
    store.set_state(rejected.id, "rejected")
    store.set_state(promoted.id, "approved")
    job = store.promote(promoted.id, {"format": "exr"})
    before = store.list()
    store.close()
    with pytest.raises(DraftError, match="closed"):
        store.get(kept.id)

    reopened = DraftStore(root)  # the server restarting
    try:
        assert reopened.list() == before
        assert [reopened.get(d.id).state for d in (kept, rejected, promoted)] == ["draft", "rejected", "promoted"]
        assert reopened.jobs() == [job]
        np.testing.assert_array_equal(reopened.load_latents(kept.id), store_latents_expected())
        with pytest.raises(InvalidTransitionError):
            reopened.set_state(promoted.id, "draft")
    finally:
        reopened.close()

    db = sqlite3.connect(root / "drafts.sqlite3")
    try:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        db.close()


def store_latents_expected() -> np.ndarray:
    return np.arange(16 * 3 * 6 * 8, dtype=np.float32).reshape(1, 16, 3, 6, 8) / 7


def test_a_store_from_a_newer_previz_is_refused(tmp_path):
    DraftStore(tmp_path).close()
    db = sqlite3.connect(tmp_path / "drafts.sqlite3")
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()
    with pytest.raises(DraftError, match="newer"):
        DraftStore(tmp_path)


def test_orphaned_files_are_swept_on_open_once_old(tmp_path):
    store = DraftStore(tmp_path)
    kept = add_draft(store)
    store.close()
    old_orphan = tmp_path / "files" / ("d" + "a" * 16)  # a crash after the files, before the row
    fresh_orphan = tmp_path / "files" / ("d" + "b" * 16)  # another process mid-add: must survive
    stranger = tmp_path / "files" / "notes"
    for d in (old_orphan, fresh_orphan, stranger):
        d.mkdir()
        (d / "take.mp4").write_bytes(b"partial")
    long_ago = time.time() - 2 * drafts_mod.ORPHAN_GRACE_S
    os.utime(old_orphan, (long_ago, long_ago))
    os.utime(stranger, (long_ago, long_ago))
    os.utime(tmp_path / "files" / kept.id, (long_ago, long_ago))

    DraftStore(tmp_path).close()
    assert not old_orphan.exists()
    assert fresh_orphan.exists() and stranger.exists()
    assert (tmp_path / "files" / kept.id / "take.mp4").is_file()


def test_concurrent_adds_and_state_changes_all_land(store):
    results: list = []
    errors: list = []

    def worker(n: int) -> None:
        try:
            for i in range(3):
                draft = add_draft(store, f"thread {n} take {i}", n=3)
                store.set_state(draft.id, "approved" if i % 2 else "rejected")
                results.append(draft.id)
        except BaseException as exc:  # surfaced below; a thread's exception is otherwise lost
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(results) == len(set(results)) == 24
    listed = store.list(limit=1000)
    assert {d.id for d in listed} == set(results)
    assert sum(d.state == "approved" for d in listed) == 8
    for draft_id in results:
        assert store.file_path(draft_id, "take.mp4").is_file()


def test_default_root_follows_previz_home(monkeypatch, tmp_path):
    monkeypatch.setenv("PREVIZ_HOME", str(tmp_path))
    assert default_store_root() == tmp_path / "drafts"


# ----------------------------------------------------------------------------- CLI


def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="previz")
    sub = parser.add_subparsers(dest="command", required=True)
    add_drafts_parser(sub)
    args = parser.parse_args(argv)
    return int(args.func(args))


@pytest.fixture
def cli_store(tmp_path):
    root = tmp_path / "cli-store"
    with DraftStore(root) as s:
        drafts = [add_draft(s, "a lighthouse in a gale, waves breaking over the rocks at dusk"),
                  add_draft(s, "a red cube", n=30)]
    return root, drafts


def test_cli_list(cli_store, capsys):
    root, (long_prompt, cube) = cli_store
    assert run_cli(["drafts", "list", "--store", str(root)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["ID", "CREATED", "STATE", "FRAMES", "SECONDS", "PACK", "PROMPT"]
    assert lines[1].startswith(cube.id) and lines[2].startswith(long_prompt.id)  # newest first
    assert "30" in lines[1].split() and "1.0" in lines[1].split()
    assert "previz-tiny (untrained)" in lines[1]
    assert lines[2].endswith("...") and "waves breaking" not in lines[2]

    assert run_cli(["drafts", "list", "--store", str(root), "--limit", "1"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2
    assert run_cli(["drafts", "list", "--store", str(root), "--state", "approved"]) == 0
    assert capsys.readouterr().out.startswith("no approved drafts in")
    with pytest.raises(DraftError):
        run_cli(["drafts", "list", "--store", str(root), "--limit", "0"])


def test_cli_list_default_store_and_trained_label(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("PREVIZ_HOME", str(tmp_path))
    with DraftStore(default_store_root()) as s:
        add_draft(s, trained=True)
    assert run_cli(["drafts", "list"]) == 0
    out = capsys.readouterr().out
    assert "previz-tiny (trained)" in out and "untrained" not in out


def test_cli_review_promote_show_export(cli_store, capsys, tmp_path):
    root, (first, second) = cli_store
    store_args = ["--store", str(root)]
    assert run_cli(["drafts", "reject", first.id, *store_args]) == 0
    assert capsys.readouterr().out.strip() == f"{first.id}: rejected"
    assert run_cli(["drafts", "unreview", first.id, *store_args]) == 0
    assert capsys.readouterr().out.strip() == f"{first.id}: draft"
    with pytest.raises(InvalidTransitionError):
        run_cli(["drafts", "promote", first.id, *store_args])

    assert run_cli(["drafts", "approve", second.id, *store_args]) == 0
    assert capsys.readouterr().out.strip() == f"{second.id}: approved"
    assert run_cli(["drafts", "promote", second.id, "--format", "h265", *store_args]) == 0
    out = capsys.readouterr().out
    assert "queued" in out and "format h265" in out
    job_id = shown_job_id = out.split("final-render job ")[1].split()[0]
    assert f"previz jobs run {job_id}" in out and shown_job_id.startswith("j")

    assert run_cli(["drafts", "show", second.id, *store_args]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["id"] == second.id and shown["state"] == "promoted" and shown["frames"] == 30
    assert [(j["state"], j["options"]["format"]) for j in shown["jobs"]] == [("queued", "h265")]

    with DraftStore(root) as s:
        assert s.get(second.id).state == "promoted"
        take = s.file_path(second.id, "take.mp4").read_bytes()
    (tmp_path / "exports").mkdir()
    assert run_cli(["drafts", "export", second.id, "-o", str(tmp_path / "exports"), *store_args]) == 0
    written = tmp_path / "exports" / f"{second.id}.mp4"
    assert capsys.readouterr().out.strip() == str(written)
    assert written.read_bytes() == take


def test_cli_errors_are_typed(cli_store):
    root, (first, _) = cli_store
    for argv in (["drafts", "show", "../etc/passwd"], ["drafts", "approve", "d123"],
                 ["drafts", "export", "d" + "f" * 16, "-o", "x.mp4"]):
        with pytest.raises(UnknownDraftError):
            run_cli([*argv, "--store", str(root)])
    with pytest.raises(SystemExit):
        run_cli(["drafts", "promote", first.id, "--format", "gif", "--store", str(root)])  # argparse choices


def test_errors_are_previz_errors():
    for cls in (DraftError, UnknownDraftError, InvalidTransitionError):
        assert issubclass(cls, PrevizError)
    assert DRAFT_STATES == ("draft", "approved", "rejected", "promoted")
