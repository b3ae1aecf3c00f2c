"""Final renders end to end: promote, render every format, resume after SIGKILL, and bad input."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import make_stored_draft
from test_final_encode import exr_channel_types, ffprobe

from previz.cli import main
from previz.drafts import DraftStore
from upscale.jobs import UNIT_DELAY_ENV, JobRunner, output_target

pytestmark = pytest.mark.skipif(shutil.which("ffprobe") is None, reason="ffprobe (Debian ffmpeg) not installed")

SIZE = "128x64"  # the refine size: small for CPU; VSR still takes it to the full 4K frame


@pytest.fixture
def store(tmp_path):
    with DraftStore(tmp_path / "drafts") as s:
        yield s


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()  # only this command's output (not, say, a weight-loading bar from building a draft)
    rc = main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.mark.parametrize("fmt", ["prores", "h265", "png", "exr"])
def test_an_approved_draft_promoted_renders_a_4k_delivery(fmt, store, test_pack, latent_draft_pack, final_pack,
                                                          cache_dir, capsys):
    # The ProRes case comes from a draft in the final pack's latent space (latent handoff); the others
    # from the ordinary test pack (pixel handoff): both handoffs run end to end.
    pack = latent_draft_pack if fmt == "prores" else test_pack
    draft = make_stored_draft(store, pack, cache_dir, seconds=0.1)
    rc, out, err = cli(capsys, "drafts", "promote", draft.id, "--format", fmt, "--size", SIZE, "--strength", "0.6",
                       "--store", str(store.root), "--run")
    assert rc == 0, err
    job = store.jobs(draft_id=draft.id)[0]
    assert job.state == "done" and job.error is None
    target = Path(job.output)
    assert target == output_target(store, job) and target.exists()
    assert f"done -> {target}" in out
    assert not (store.job_dir(job.id)).exists()  # the units are removed once the delivery is whole

    if fmt in ("prores", "h265"):
        info = ffprobe(target)
        video = [s for s in info["streams"] if s["codec_type"] == "video"][0]
        expected = {"prores": ("prores", "HQ", "yuv422p10le", "apch"), "h265": ("hevc", "Main 10", "yuv420p10le",
                                                                              "hvc1")}[fmt]
        assert (video["codec_name"], video["profile"], video["pix_fmt"], video["codec_tag_string"]) == expected
        assert (video["width"], video["height"]) == (3840, 2160)
        assert int(video["nb_read_frames"]) == draft.frames and video["r_frame_rate"] == f"{draft.fps}/1"
        assert (video["color_primaries"], video["color_transfer"], video["color_space"]) == ("bt709",) * 3
        assert any(s.get("tags", {}).get("timecode") == "01:00:00:00" for s in info["streams"])
        comment = json.loads(info["format"]["tags"]["comment"])
    else:
        files = sorted(target.glob(f"*.{fmt}"))
        assert len(files) == draft.frames
        stream = ffprobe(files[0])["streams"][0]
        assert (stream["width"], stream["height"]) == (3840, 2160)
        if fmt == "png":
            raw = files[0].read_bytes()
            assert stream["pix_fmt"] == "rgb48be" and raw[24] == 16  # 16 bits per channel
        else:
            assert exr_channel_types(files[0]) == {"B": 1, "G": 1, "R": 1}  # half float
        comment = json.loads((target / "previz.json").read_text())
    assert comment["draft_id"] == draft.id and comment["job_id"] == job.id
    assert comment["recipe"]["prompt"] == draft.recipe["prompt"] and comment["recipe"]["seed"] == draft.recipe["seed"]
    assert comment["plan"]["handoff"] == ("latent" if fmt == "prores" else "pixel")
    assert comment["packs"]["final"]["id"] == final_pack.id and comment["upscaler"]["name"] == "lanczos"
    assert comment["refine"] == {"device": "cpu", "precision": "fp32"}  # what ran the experts
    # Nothing half-written was left beside the delivery.
    assert [p.name for p in target.parent.iterdir() if p.name.startswith(".")] == []


# ----------------------------------------------------------------------------- kill and resume


def _previz(*argv: str, delay: float = 0.0) -> subprocess.Popen[str]:
    # The code under test (this checkout), whatever the installed console script points at.
    repo = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, UNIT_DELAY_ENV: str(delay),
           "PYTHONPATH": os.pathsep.join(p for p in (repo, os.environ.get("PYTHONPATH", "")) if p)}
    return subprocess.Popen([sys.executable, "-m", "previz.cli", *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, bufsize=1, env=env)


def _kill_after(proc: subprocess.Popen[str], marker: str) -> list[str]:
    """Read progress lines until one contains ``marker``, then SIGKILL the process (no clean-up runs)."""
    seen = []
    assert proc.stdout is not None
    for line in proc.stdout:
        seen.append(line.strip())
        if marker in line:
            os.kill(proc.pid, signal.SIGKILL)
            break
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, (seen, proc.stderr.read() if proc.stderr else "")
    return seen


def test_sigkill_mid_refine_vsr_and_encode_then_resume_is_byte_identical(tmp_path, test_pack, final_pack,
                                                                        cache_dir, capsys):
    root = tmp_path / "a"
    with DraftStore(root) as store:
        draft = make_stored_draft(store, test_pack, cache_dir, seconds=0.1)
        assert draft.frames == 3
        rc, _, err = cli(capsys, "drafts", "promote", draft.id, "--format", "h265", "--size", SIZE,
                         "--store", str(root))
        assert rc == 0, err
        job_id = store.jobs(draft_id=draft.id)[0].id

    # The reference: the same job, from a copy of the store taken before it ran, never interrupted.
    shutil.copytree(root, tmp_path / "b")
    with DraftStore(tmp_path / "b") as ref_store:
        reference = Path(JobRunner(ref_store, segment_frames=2).run(job_id).output).read_bytes()

    # Three frames in segments of two: segment 0 = frames 0-1, segment 1 = frame 2.  Progress lines
    # come after each unit (a refine step, a decoded frame, a frame through VSR, a closed segment),
    # and the run pauses a second after each, which is when it is killed.
    store_args = ("--store", str(root))

    def files(stage: str) -> list[int]:
        with DraftStore(root) as store:
            work = store.job_dir(job_id)
            return sorted(i for i, f in store.units(job_id, stage).items() if (work / f).exists())

    # 1. Killed mid-refine: two of four steps checkpointed.
    _kill_after(_previz("jobs", "run", job_id, "--segment-frames", "2", *store_args, delay=1), "refine 2/4")
    with DraftStore(root) as store:
        job = store.job(job_id)
        assert job.state == "running" and job.progress["stage"] == "refine"  # the row still says running
        target = output_target(store, job)
    assert files("refine") == [0, 1, 2] and not target.exists()
    # 2. Resumed, then killed mid-decode: two of three frames decoded.
    seen = _kill_after(_previz("jobs", "resume", job_id, *store_args, delay=1), "decode 2/3")
    assert " refine 3/4" in seen[0]  # it carried on after step 2, not from the start
    assert files("decode") == [0, 1] and files("vsr") == [] and not target.exists()
    # 3. Resumed, then killed mid-VSR: frame 0 upscaled and stored, frame 1 not yet.
    seen = _kill_after(_previz("jobs", "resume", job_id, *store_args, delay=1), "vsr 1/3")
    assert " decode 3/3" in seen[0]  # only the missing frame became a unit (the decoder was replayed)
    assert files("vsr") == [0] and files("deliver") == [] and not target.exists()
    # 4. Resumed, then killed mid-encode: segment 0 closed, frame 2 upscaled, segment 1 not closed.
    seen = _kill_after(_previz("jobs", "resume", job_id, *store_args, delay=1), "vsr 3/3")
    assert " vsr 2/3" in seen[0]  # frame 0 was not upscaled again
    assert files("deliver") == [0] and files("vsr") == [2] and not target.exists()  # segment 0's frames went
    # 5. Resumed to the end: nothing but the last segment's encode and the join is left.
    proc = _previz("jobs", "resume", job_id, *store_args)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert [line.split(" ", 1)[1].split(" eta ")[0] for line in out.splitlines()[:-1]] == ["encode 2/2"]
    assert target.read_bytes() == reference
    with DraftStore(root) as store:
        assert store.job(job_id).state == "done"


# ----------------------------------------------------------------------------- bad input


def _one_line_error(rc: int, err: str) -> str:
    assert rc == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("previz: error: "), err
    return lines[0]


def test_bad_promotions_are_one_line_errors_that_change_nothing(store, test_pack, cache_dir, capsys, tmp_path):
    draft = make_stored_draft(store, test_pack, cache_dir, approve=False)
    s = ("--store", str(store.root))
    assert "no draft" in _one_line_error(*cli(capsys, "drafts", "promote", "d0000000000000000", *s)[::2])
    assert "approve it first" in _one_line_error(*cli(capsys, "drafts", "promote", draft.id, *s)[::2])
    store.set_state(draft.id, "approved")
    assert "strength = 1.5" in _one_line_error(*cli(capsys, "drafts", "promote", draft.id, "--strength", "1.5",
                                                    *s)[::2])
    assert "strength = 0.0" in _one_line_error(*cli(capsys, "drafts", "promote", draft.id, "--strength", "0",
                                                    *s)[::2])
    with pytest.raises(SystemExit) as exit_info:  # argparse's choices: also one line, status 2
        main(["drafts", "promote", draft.id, "--format", "gif", *s])
    assert exit_info.value.code == 2
    assert "gif" in capsys.readouterr().err
    assert "size" in _one_line_error(*cli(capsys, "drafts", "promote", draft.id, "--size", "1000x500", *s)[::2])
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    assert "cannot write" in _one_line_error(*cli(capsys, "drafts", "promote", draft.id, "--output",
                                                  str(blocker / "out"), *s)[::2])
    assert store.get(draft.id).state == "approved" and store.jobs() == []  # nothing was queued
    assert "no job" in _one_line_error(*cli(capsys, "jobs", "show", "j0000000000000000", *s)[::2])


def test_a_full_disk_fails_the_job_cleanly_and_it_resumes_once_space_is_free(store, test_pack, final_pack, cache_dir,
                                                                             capsys, monkeypatch):
    import engines.atomic

    draft = make_stored_draft(store, test_pack, cache_dir)
    finals = store.root / "finals"
    real_fsync = os.fsync

    def full_disk(fd: int) -> None:
        # The delivery's data reaches the disk at fsync: that is where a full disk reports itself.
        if os.readlink(f"/proc/self/fd/{fd}").startswith(str(finals)):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    monkeypatch.setattr(engines.atomic.os, "fsync", full_disk)
    # `previz promote`: the top-level spelling of `previz drafts promote`.
    rc, _, err = cli(capsys, "promote", draft.id, "--format", "prores", "--size", SIZE, "--store", str(store.root),
                     "--run")
    assert "No space left on device" in _one_line_error(rc, err)
    job = store.jobs(draft_id=draft.id)[0]
    assert job.state == "failed" and "No space left on device" in job.error
    assert list(finals.iterdir()) == []  # no partial file under the final name, and no temp file either
    assert not output_target(store, job).exists()

    monkeypatch.setattr(engines.atomic.os, "fsync", real_fsync)
    rc, out, err = cli(capsys, "jobs", "resume", job.id, "--store", str(store.root))
    assert rc == 0, err
    assert store.job(job.id).state == "done" and output_target(store, job).is_file()


def test_jobs_list_show_and_cancel(store, test_pack, cache_dir, capsys):
    draft = make_stored_draft(store, test_pack, cache_dir)
    s = ("--store", str(store.root))
    assert cli(capsys, "drafts", "promote", draft.id, *s)[0] == 0
    job = store.jobs()[0]
    rc, out, _ = cli(capsys, "jobs", "list", *s)
    assert rc == 0 and job.id in out and "queued" in out
    rc, out, _ = cli(capsys, "jobs", "show", job.id, *s)
    assert json.loads(out)["state"] == "queued"
    assert cli(capsys, "jobs", "cancel", job.id, *s)[:2] == (0, f"{job.id}: cancelled\n")
    assert "cancelled" in _one_line_error(*cli(capsys, "jobs", "run", job.id, *s)[::2])
    assert "only a running" in _one_line_error(*cli(capsys, "jobs", "resume", job.id, *s)[::2])
    assert store.job(job.id).state == "cancelled"


def test_a_version_1_store_migrates_and_keeps_its_queued_jobs(tmp_path):
    import sqlite3
    import time

    import previz.drafts as drafts_mod

    root = tmp_path / "old"
    (root / "files").mkdir(parents=True)
    db = sqlite3.connect(root / drafts_mod.DB_NAME)
    db.executescript(drafts_mod._SCHEMA + "PRAGMA user_version = 1;")
    now = time.time()
    db.execute("INSERT INTO drafts VALUES ('d0123456789abcdef', ?, ?, 'promoted', '{}', '{}', 3, 30)", (now, now))
    db.execute("INSERT INTO jobs VALUES ('j0123456789abcdef', 'd0123456789abcdef', ?, 'queued', "
               "'{\"format\":\"prores\"}')", (now,))
    db.commit()
    db.close()
    with DraftStore(root) as store:
        job = store.job("j0123456789abcdef")
        assert (job.state, job.options, job.error, job.output, job.progress) == (
            "queued", {"format": "prores"}, None, None, None)
        assert store.units(job.id, "refine") == {}
        store.set_job_state(job.id, "cancelled")
    db = sqlite3.connect(root / drafts_mod.DB_NAME)
    assert db.execute("PRAGMA user_version").fetchone()[0] == drafts_mod.SCHEMA_VERSION == 2
    db.close()


@dataclass(frozen=True)
class WindowedLanczos:
    """A test upscaler with a temporal window (the mean of the last 3 frames, then Lanczos).

    Not a VSR and never offered as one: it exists to show that a resumed delivery
    refills a temporal window exactly as an uninterrupted run fills it.
    """

    name: str = "test-windowed-lanczos"
    label: str = "test only"
    trained: bool = False
    temporal_window: int = 3
    margin: int = 4
    fingerprint: str | None = None  # no weights

    def __call__(self, crops, box, size):
        from upscale.vsr import Lanczos

        return Lanczos()([sum(crops) / len(crops)], box, size)


def test_a_crash_mid_delivery_with_a_temporal_window_resumes_to_the_same_bytes(tmp_path, test_pack, final_pack,
                                                                                cache_dir):
    root = tmp_path / "a"
    with DraftStore(root) as store:
        draft = make_stored_draft(store, test_pack, cache_dir, seconds=0.2)  # 6 frames: 3 segments of 2
        job = store.promote(draft.id, {"format": "prores", "size": SIZE, "resolution": "hd"})
    shutil.copytree(root, tmp_path / "b")
    with DraftStore(tmp_path / "b") as ref:
        reference = Path(JobRunner(ref, segment_frames=2, upscaler=WindowedLanczos()).run(job.id).output).read_bytes()

    class Crash(Exception):
        pass

    def crash_after_the_first_segment(event) -> None:
        if event.stage == "encode" and event.unit == 1:
            raise Crash("the machine went down")

    with DraftStore(root) as store:
        with pytest.raises(Crash):
            JobRunner(store, segment_frames=2, upscaler=WindowedLanczos(),
                      on_progress=crash_after_the_first_segment).run(job.id)
        assert store.job(job.id).state == "failed" and sorted(store.units(job.id, "deliver")) == [0]
        done = JobRunner(store, upscaler=WindowedLanczos()).run(job.id, resume=True)  # its pinned segment length
        assert Path(done.output).read_bytes() == reference


def test_a_promote_through_a_learned_vsr_pack_is_4k_and_says_which_upscaler(store, test_pack, final_pack, cache_dir,
                                                                           capsys, tmp_path):
    from previz.errors import BackendUnavailableError
    from upscale.final_pack import build_vsr_pack
    from upscale.vsr import import_spandrel

    try:
        import_spandrel()
    except BackendUnavailableError:
        pytest.skip("the learned VSR is an optional extra (pip install 'previz[vsr]')")
    # A tiny SRVGGNetCompact x4 from spandrel's own class, as safetensors: loaded as a Real-ESRGAN file is.
    pack = build_vsr_pack(tmp_path / "tiny-compact", pack_id="tiny-compact", config=dict(num_feat=8, num_conv=2))
    draft = make_stored_draft(store, test_pack, cache_dir, seconds=0.1)
    s = ("--store", str(store.root))
    assert "not 'lanczos' and not an installed vsr pack" in _one_line_error(
        *cli(capsys, "promote", draft.id, "--upscaler", "no-such-vsr", *s)[::2])
    assert "is a final pack" in _one_line_error(
        *cli(capsys, "promote", draft.id, "--upscaler", str(final_pack.root), *s)[::2])
    from previz.errors import DraftError

    with pytest.raises(DraftError, match="unknown final-render option 'upscaler'"):
        store.promote(draft.id, {"upscaler": str(pack.root)})  # a page's client names no pack on this machine
    assert store.jobs() == []
    rc, _, err = cli(capsys, "promote", draft.id, "--format", "h265", "--size", SIZE, "--upscaler", str(pack.root),
                     *s, "--run")
    assert rc == 0, err
    job = store.jobs(draft_id=draft.id)[0]
    assert job.state == "done" and job.options["upscaler"] == str(pack.root)
    info = ffprobe(Path(job.output))
    video = [st for st in info["streams"] if st["codec_type"] == "video"][0]
    assert (video["codec_name"], video["width"], video["height"]) == ("hevc", 3840, 2160)
    assert int(video["nb_read_frames"]) == draft.frames
    upscaler = json.loads(info["format"]["tags"]["comment"])["upscaler"]
    assert (upscaler["name"], upscaler["trained"], upscaler["temporal_window"]) == ("tiny-compact", False, 3)
    assert "SRVGGNetCompact x4" in upscaler["label"] and "UNTRAINED" in upscaler["label"]
