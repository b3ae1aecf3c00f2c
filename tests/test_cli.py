"""The CLI as a user runs it: real MP4s checked by ffprobe, one-line errors, no tracebacks."""

from __future__ import annotations

import argparse
import ast
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli

from previz.cli import main

FFPROBE = shutil.which("ffprobe")


def ffprobe(path: Path) -> dict:
    out = subprocess.run(
        [FFPROBE, "-v", "error", "-count_frames", "-show_entries",
         "stream=codec_name,r_frame_rate,nb_read_frames,width,height,pix_fmt,"
         "color_range,color_space,color_transfer,color_primaries:format_tags", "-of", "json", str(path)],
        capture_output=True, text=True, check=True,
    )
    return json.loads(out.stdout)


@pytest.mark.skipif(FFPROBE is None, reason="ffprobe (Debian's ffmpeg) is not installed")
@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_draft_writes_a_30fps_mp4_with_the_recipe(test_pack, tmp_path, backend):
    out = tmp_path / "take.mp4"
    result = run_cli("draft", "a red cube on a sandy plain", "--seconds", "1.5", "--seed", "7",
                     "--backend", backend, "--pack", "previz-test", "--no-store", "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert "UNTRAINED" in result.stderr
    probe = ffprobe(out)
    (stream,) = probe["streams"]
    assert stream["codec_name"] == "h264" and stream["pix_fmt"] == "yuv420p"
    # Tagged BT.709, limited ("tv") range: players need not guess the colours.
    assert (stream["color_primaries"], stream["color_transfer"], stream["color_space"]) == ("bt709",) * 3
    assert stream["color_range"] == "tv"
    assert stream["r_frame_rate"] == "30/1"
    assert int(stream["nb_read_frames"]) == 45
    assert (stream["width"], stream["height"]) == (64, 32)
    tags = probe["format"]["tags"]
    meta = json.loads(tags["comment"])
    assert meta["recipe"]["prompt"] == "a red cube on a sandy plain"
    assert meta["recipe"]["seed"] == 7 and meta["recipe"]["backend"] == backend
    assert meta["recipe"]["seconds"] == 1.5 and meta["fps"] == 30 and meta["frames"] == 45
    assert meta["pack"]["id"] == "previz-test" and meta["pack"]["label"] == "untrained"
    assert meta["pack"]["sha256"]["denoiser"] == test_pack.components["denoiser"].sha256
    assert "untrained" in tags["description"]


@pytest.mark.parametrize(
    "args, needle",
    [
        (["draft", "a cube", "--pack", "no-such-pack"], "no-such-pack"),
        (["draft", "a cube", "--pack", "previz-test", "--width", "100"], "width = 100"),
        (["draft", "a cube", "--pack", "previz-test", "--height", "40"], "height = 40"),
        (["draft", "a cube", "--pack", "previz-test", "--seconds", "0"], "seconds = 0"),
        (["draft", "a cube", "--pack", "previz-test", "--seconds", "-2"], "seconds = -2"),
        (["draft", "a cube", "--pack", "previz-test", "--seconds", "600"], "seconds = 600"),
        (["draft", "", "--pack", "previz-test"], "prompt = ''"),
        (["draft", "a cube", "--pack", "previz-test", "--backend", "warp-drive"], "warp-drive"),
    ],
)
def test_bad_input_is_one_line_naming_the_value(test_pack, tmp_path, capsys, args, needle):
    code = main([*args, "-o", str(tmp_path / "x.mp4")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1, err  # no untrained-pack note on top of the error
    assert err[0].startswith("previz: error: ") and needle in err[0]
    assert not (tmp_path / "x.mp4").exists()


@pytest.mark.parametrize("output", ["dir-without-store", "file-as-dir"])
def test_unwritable_outputs_fail_before_any_work(test_pack, tmp_path, capsys, output):
    (tmp_path / "plain-file").write_text("x")
    target = tmp_path if output == "dir-without-store" else tmp_path / "plain-file" / "take.mp4"
    # A directory names the file after the draft id, so without a stored draft it has no name.
    code = main(["draft", "a cube", "--pack", "previz-test", "--no-store", "-o", str(target)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("previz: error: ") and str(target) in err[-1]


def test_usage_errors_are_one_line(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["draft", "a cube", "--seconds", "abc"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and len(err) == 1 and "'abc'" in err[0]


def test_a_cuda_only_attention_kernel_on_a_cpu_is_a_one_line_error(test_pack, tmp_path, capsys, monkeypatch):
    import torch

    from engines.torch_backend import ATTENTION_KERNELS
    from previz.cli import add_engine_flags

    parser = argparse.ArgumentParser()
    add_engine_flags(parser)
    choices = next(a.choices for a in parser._actions if a.dest == "attention")
    assert list(choices) == ["auto", *ATTENTION_KERNELS]  # the CLI offers what the engine takes
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the CPU, even on a GPU machine
    code = main(["draft", "a cube", "--pack", "previz-test", "--backend", "torch", "--attention", "cudnn",
                 "--no-store", "-o", str(tmp_path / "x.mp4")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("previz: error: ") and "CUDA GPU only" in err[-1]
    assert not (tmp_path / "x.mp4").exists()


def test_written_takes_are_ordinary_files(test_pack, tmp_path):
    import os
    import stat

    out = tmp_path / "take.mp4"
    assert main(["draft", "a cube", "--pack", "previz-test", "--seconds", "0.2", "-q", "-o", str(out)]) == 0
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o666 & ~umask


def test_pickle_weights_in_a_pack_are_refused_by_the_cli(test_pack, tmp_path, capsys):
    bad = tmp_path / "bad-pack"
    shutil.copytree(test_pack.root, bad)
    (bad / "transformer" / "diffusion_pytorch_model.bin").write_bytes(b"pickle")
    code = main(["draft", "a cube", "--pack", str(bad), "-o", str(tmp_path / "x.mp4")])
    err = capsys.readouterr().err
    assert code == 2 and "diffusion_pytorch_model.bin is not safetensors" in err


def test_errors_from_the_installed_script_have_no_traceback(test_pack):
    result = run_cli("draft", "a cube", "--pack", "previz-test", "--seconds", "-1")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "previz: error: seconds = -1.0: more than 0 and at most 5 for pack 'previz-test'")


@pytest.mark.skipif(FFPROBE is None, reason="ffprobe (Debian's ffmpeg) is not installed")
def test_camera_flags_reach_the_recipe_and_the_take_goes_back_to_chan(test_pack, tmp_path, capsys):
    from previz.camera import path_from_spec, read_chan

    take = tmp_path / "orbit.mp4"
    assert main(["draft", "a cube", "--pack", "previz-test", "--seconds", "1", "--camera", "orbit_left:1.5",
                 "--shake", "0.3", "--seed", "0", "-q", "-o", str(take)]) == 0
    meta = json.loads(ffprobe(take)["format"]["tags"]["comment"])
    assert meta["recipe"]["camera"] == {"preset": "orbit_left", "speed": 1.5,
                                        "shake": {"amplitude": 0.3, "seed": 0}}
    chan = tmp_path / "orbit.chan"
    assert main(["camera", "--take", str(take), "--fps", "30", "-o", str(chan)]) == 0
    from_chan = read_chan(chan.read_text(), fps=30, aspect=64 / 32)
    original = path_from_spec(meta["recipe"]["camera"], 1.0)
    np.testing.assert_allclose(from_chan.frames(30, 31).c2w, original.frames(30, 31).c2w, atol=1e-6)
    # ... and a .chan drives a take.
    again = tmp_path / "from-chan.mp4"
    assert main(["draft", "a cube", "--pack", "previz-test", "--seconds", "1", "--camera-file", str(chan),
                 "-q", "-o", str(again)]) == 0
    assert "keyframes" in json.loads(ffprobe(again)["format"]["tags"]["comment"])["recipe"]["camera"]


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--camera", "barrel_roll"], "unknown camera preset 'barrel_roll'"),
        (["--camera", "pan_left:fast"], "camera speed 'fast'"),
        (["--camera-file", "/nonexistent/cam.chan"], "cannot read camera file"),
        (["--camera", "pan_left", "--camera-file", "x.chan"], "not both"),
        (["--shake", "9"], "shake amplitude = 9: between 0 and 5 degrees"),  # the page's maximum too
    ],
)
def test_bad_cameras_are_one_line_errors(test_pack, tmp_path, capsys, args, needle):
    code = main(["draft", "a cube", "--pack", "previz-test", *args, "-o", str(tmp_path / "x.mp4")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("previz: error: ") and needle in err[-1]


def test_models_lists_packs_and_backends(test_pack, capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "previz-test" in out and "untrained" in out
    assert "onnxruntime  available" in out and "tensorrt" in out


def test_export_writes_onnx_for_both_graphs(test_pack, tmp_path, capsys):
    assert main(["export", "--pack", "previz-test", "--cache-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "denoiser for onnxruntime (opset 23)" in out and "decoder for tensorrt (opset 18)" in out
    assert len(list(tmp_path.rglob("*.onnx"))) == 4


def test_build_engine_without_a_gpu_says_why(test_pack, capsys):
    from engines import available_backends

    if available_backends()["tensorrt"] is None:
        pytest.skip("TensorRT can run here")
    assert main(["build-engine", "--pack", "previz-test"]) == 2
    assert "cannot build TensorRT engines here" in capsys.readouterr().err


# ----------------------------------------------------------------------------- issue 11: a new user's papercuts


def _draft(tmp_path, *args: str) -> list[str]:
    """Arguments for a short take on the test pack, stored in tmp_path/store."""
    return ["draft", "a cube", "--pack", "previz-test", "--seconds", "0.2", "-q",
            "--store", str(tmp_path / "store"), *args]


def _err(capsys) -> list[str]:
    return capsys.readouterr().err.strip().splitlines()


def _plain_mp4(path: Path) -> None:
    """An ordinary MP4 with no previz recipe in it."""
    import av

    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        for _ in range(2):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.zeros((32, 32, 3), np.uint8), "rgb24")))
        container.mux(stream.encode(None))


@pytest.mark.parametrize("take, needle", [
    ("nosuch.mp4", "nosuch.mp4 does not exist"),
    ("notes.txt", "notes.txt is not a video file previz can read"),
    ("plain.mp4", "plain.mp4 is a video but not a previz take"),
    ("a-directory", "a-directory is not a file"),
])
def test_camera_take_errors_say_what_is_wrong_in_words(tmp_path, capsys, monkeypatch, take, needle):
    monkeypatch.chdir(tmp_path)
    Path("notes.txt").write_text("not a video")
    Path("a-directory").mkdir()
    _plain_mp4(Path("plain.mp4"))
    assert main(["camera", "--take", take, "-o", "t.chan"]) == 2
    err = _err(capsys)
    assert len(err) == 1 and err[0].startswith(f"previz: error: {needle}")
    assert not re.search(r"\(\w*(Error|Exception)\)", err[0])  # no Python class names
    assert not Path("t.chan").exists()


def test_output_rules_missing_directory_existing_file_and_suffix(test_pack, tmp_path, capsys):
    missing = tmp_path / "no" / "such" / "dir" / "x.mp4"
    assert main(_draft(tmp_path, "-o", str(missing))) == 2
    assert "does not exist (create it, or add --mkdir)" in _err(capsys)[0]
    assert not (tmp_path / "no").exists()  # nothing created behind the user's back
    assert main(_draft(tmp_path, "--mkdir", "-o", str(missing))) == 0 and missing.is_file()
    _err(capsys)

    existing = tmp_path / "keep.mp4"
    existing.write_bytes(b"precious")
    assert main(_draft(tmp_path, "-o", str(existing))) == 2
    assert "already exists" in _err(capsys)[0] and existing.read_bytes() == b"precious"

    text = tmp_path / "take.txt"
    assert main(_draft(tmp_path, "-o", str(text))) == 2
    assert "does not end in .mp4" in _err(capsys)[0] and not text.exists()

    assert main(_draft(tmp_path, "--force", "-o", str(existing))) == 0
    assert existing.read_bytes()[4:8] == b"ftyp"  # replaced by an MP4, as asked


def test_draft_and_export_treat_a_directory_alike(test_pack, tmp_path, capsys):
    from previz.drafts import DraftStore

    shots, exports = tmp_path / "shots", tmp_path / "exports"
    shots.mkdir()
    exports.mkdir()
    assert main(_draft(tmp_path, "-o", str(shots))) == 0
    _err(capsys)
    with DraftStore(tmp_path / "store") as store:
        (draft,) = store.list()
    assert [p.name for p in shots.iterdir()] == [f"{draft.id}.mp4"]

    store_args = ["--store", str(tmp_path / "store")]
    assert main(["drafts", "export", draft.id, "-o", str(exports), *store_args]) == 0
    assert [p.name for p in exports.iterdir()] == [f"{draft.id}.mp4"]
    # ... and the same file rules: no silent overwrite, no silent mkdir, no .txt.
    for target, needle in ((exports, "already exists"), (tmp_path / "nope" / "y.mp4", "add --mkdir"),
                           (tmp_path / "y.txt", "does not end in .mp4")):
        assert main(["drafts", "export", draft.id, "-o", str(target), *store_args]) == 2
        assert needle in _err(capsys)[-1]
    assert not (tmp_path / "nope").exists() and not (tmp_path / "y.txt").exists()
    capsys.readouterr()
    assert main(["drafts", "export", draft.id, "--mkdir", "-o", str(tmp_path / "nope" / "y.mp4"), *store_args]) == 0
    assert (tmp_path / "nope" / "y.mp4").read_bytes() == (shots / f"{draft.id}.mp4").read_bytes()


def test_cli_takes_are_stored_as_drafts_unless_no_store(test_pack, tmp_path, capsys):
    from previz.drafts import DraftStore
    from previz.video import read_recipe

    out = tmp_path / "take.mp4"
    assert main(_draft(tmp_path, "--seed", "1256266967", "-o", str(out))) == 0
    err = _err(capsys)
    with DraftStore(tmp_path / "store") as store:
        (draft,) = store.list()
        stored = store.file_path(draft.id, "take.mp4").read_bytes()
    assert f"seed 1256266967; stored as draft {draft.id} in {tmp_path / 'store'}" in err[-2]
    assert err[-1].startswith("note: pack previz-test is UNTRAINED")  # after the take, not before errors
    assert draft.recipe["seed"] == 1256266967 and draft.recipe["prompt"] == "a cube"
    assert out.read_bytes() == stored  # the file at -o is the stored take

    again = tmp_path / "again.mp4"
    assert main(_draft(tmp_path, "--no-store", "-o", str(again))) == 0
    assert "not stored (--no-store)" in _err(capsys)[-2] and read_recipe(again)["recipe"]["prompt"] == "a cube"
    with DraftStore(tmp_path / "store") as store:
        assert [d.id for d in store.list()] == [draft.id]


def test_seed_is_random_by_default_and_printed(test_pack, tmp_path, capsys):
    from previz.video import read_recipe

    seeds = []
    for name in ("a.mp4", "b.mp4"):
        assert main(_draft(tmp_path, "--no-store", "-o", str(tmp_path / name))) == 0
        printed = re.search(r"^seed (\d+);", _err(capsys)[-2])
        assert printed, "the seed used is printed"
        seeds.append(read_recipe(tmp_path / name)["recipe"]["seed"])
        assert seeds[-1] == int(printed.group(1))
    assert seeds[0] != seeds[1]  # 1 in 2**31 to fail by chance
    with pytest.raises(SystemExit):
        main(["draft", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "--seed SEED noise seed" in help_text and "default: a random one, printed" in help_text


def test_drafts_show_gives_the_recipe_once_and_file_paths(test_pack, tmp_path, capsys):
    assert main(_draft(tmp_path, "--no-store", "-o", str(tmp_path / "x.mp4"))) == 0  # nothing stored
    assert main(_draft(tmp_path, "-o", str(tmp_path / "y.mp4"))) == 0
    draft_id = re.search(r"stored as draft (d[0-9a-f]{16})", capsys.readouterr().err).group(1)
    assert main(["drafts", "show", draft_id, "--store", str(tmp_path / "store")]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["recipe"]["prompt"] == "a cube" and "recipe" not in shown["meta"]
    assert json.dumps(shown).count('"prompt"') == 1
    for key, name in (("video", "take.mp4"), ("thumbnail", "thumb.jpg"), ("latents", "latents.safetensors")):
        path = Path(shown[key])
        assert path.is_absolute() and path.name == name and path.is_file()
    assert Path(shown["video"]).read_bytes() == (tmp_path / "y.mp4").read_bytes()


def test_commands_that_render_nothing_import_no_model_libraries(test_pack, tmp_path):
    heavy = ("torch", "diffusers", "transformers", "onnxruntime", "scipy", "av")
    code = (
        "import sys\n"
        "from previz.cli import main\n"
        f"heavy = {heavy!r}\n"
        "def loaded():\n"
        "    print(sorted(m for m in heavy if m in sys.modules))\n"
        f"main(['drafts', 'list', '--store', {str(tmp_path / 'store')!r}])\n"
        "loaded()\n"
        "try:\n"
        "    main(['draft', 'x', '--seconds', 'abc'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "loaded()\n"
        "for bad in (['--width', '100'], ['--backend', 'warp-drive']):\n"
        "    assert main(['draft', 'x', '--pack', 'previz-test', '--no-store', *bad]) == 2\n"
        "loaded()\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    after_list, after_usage_error, after_recipe_errors = result.stdout.strip().splitlines()[-3:]
    assert after_list == after_usage_error == "[]"
    # The recipe is checked with scipy (camera) and PyAV (output) at most; no model library is needed.
    assert set(ast.literal_eval(after_recipe_errors)) <= {"scipy", "av"}, after_recipe_errors


def test_a_port_in_use_is_reported_before_the_pack_loads(capsys):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        # The pack does not exist: had it been opened first, the error would name it.
        assert main(["serve", "--port", str(port), "--pack", "no-such-pack"]) == 2
    err = _err(capsys)
    assert len(err) == 1 and err[0].startswith(f"previz: error: cannot serve on 127.0.0.1:{port}: ")
    assert "no-such-pack" not in err[0]


def test_serve_freezes_the_start_up_heap_before_it_serves(test_pack, tmp_path, monkeypatch):
    """A full garbage collection scans every tracked object with the GIL held (200-260 ms in a served process,
    BENCHMARKS.md): what start-up loaded is frozen before the server starts, so no stream waits on it."""
    import gc

    import previz.server

    frozen_at_start: list[int] = []

    async def serve_nothing(config, **kwargs) -> None:
        frozen_at_start.append(gc.get_freeze_count())

    monkeypatch.setattr(previz.server, "run", serve_nothing)
    gc.unfreeze()
    try:
        assert main(["serve", "--port", "0", "--pack", "previz-test", "--backend", "torch", "--store",
                     str(tmp_path / "drafts"), "--no-jobs"]) == 0
    finally:
        gc.unfreeze()  # the test process collects as before
    assert frozen_at_start and frozen_at_start[0] > 10_000  # torch alone is far more


def test_camera_output_follows_the_same_file_rules(tmp_path, capsys):
    chan = tmp_path / "cam" / "orbit.chan"
    assert main(["camera", "orbit_left", "-o", str(chan)]) == 2
    assert "add --mkdir" in _err(capsys)[0] and not chan.parent.exists()
    assert main(["camera", "orbit_left", "--mkdir", "-o", str(chan)]) == 0
    first = chan.read_text()
    assert main(["camera", "pan_left", "-o", str(chan)]) == 2
    assert "already exists" in _err(capsys)[-1] and chan.read_text() == first
    assert main(["camera", "pan_left", "--force", "-o", str(chan)]) == 0 and chan.read_text() != first


def test_scene_files_drive_a_take_and_come_back_out(test_pack, tmp_path, capsys):
    from previz.scene import scene_from_prompt

    shot = tmp_path / "shot.json"
    assert main(["scene", "two red boxes left of a tall blue pillar on sand at dusk", "-o", str(shot)]) == 0
    written = json.loads(shot.read_text())
    assert written == scene_from_prompt("two red boxes left of a tall blue pillar on sand at dusk").to_dict()
    written["objects"][0]["color"] = "#00ff00"  # edited by hand, as a filmmaker would
    shot.write_text(json.dumps(written))
    take = tmp_path / "take.mp4"
    assert main(["draft", "a lighthouse", "--pack", "previz-test", "--seconds", "0.5", "--scene", str(shot),
                 "--no-store", "-q", "-o", str(take)]) == 0
    assert json.loads(ffprobe(take)["format"]["tags"]["comment"])["recipe"]["scene"] == written
    back = tmp_path / "back.json"
    assert main(["scene", "--take", str(take), "-o", str(back)]) == 0
    assert json.loads(back.read_text()) == written
    assert main(["scene", "--take", str(take), "-o", str(back)]) == 2  # exists: the -o rules hold
    capsys.readouterr()
    assert main(["scene", "a red cube"]) == 0  # no -o: standard output
    assert json.loads(capsys.readouterr().out)["objects"][0]["shape"] == "box"


@pytest.mark.parametrize(
    "content, needle",
    [
        (None, "does not exist"),
        ("{not json", "not a readable JSON scene file"),
        ('{"objects": [{"shape": "blob", "position": [0, 0, -4]}]}', "scene.objects[0].shape: unknown shape 'blob'"),
        ('{"ground": "lava"}', "scene.ground: 'lava' is not one of"),
    ],
)
def test_bad_scene_files_are_one_line_errors(test_pack, tmp_path, capsys, content, needle):
    path = tmp_path / "scene.json"
    if content is not None:
        path.write_text(content)
    code = main(["draft", "a cube", "--pack", "previz-test", "--scene", str(path), "-o", str(tmp_path / "x.mp4")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and needle in err[0], err
    assert not (tmp_path / "x.mp4").exists()
