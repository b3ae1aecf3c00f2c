"""The CLI as a user runs it: real MP4s checked by ffprobe, one-line errors, no tracebacks."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli

from previz.cli import main

FFPROBE = shutil.which("ffprobe")


def ffprobe(path: Path) -> dict:
    out = subprocess.run(
        [FFPROBE, "-v", "error", "-count_frames", "-show_entries",
         "stream=codec_name,r_frame_rate,nb_read_frames,width,height,pix_fmt:format_tags", "-of", "json", str(path)],
        capture_output=True, text=True, check=True,
    )
    return json.loads(out.stdout)


@pytest.mark.skipif(FFPROBE is None, reason="ffprobe (Debian's ffmpeg) is not installed")
@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_draft_writes_a_30fps_mp4_with_the_recipe(test_pack, tmp_path, backend):
    out = tmp_path / "take.mp4"
    result = run_cli("draft", "a red cube on a sandy plain", "--seconds", "1.5", "--seed", "7",
                     "--backend", backend, "--pack", "previz-test", "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert "UNTRAINED" in result.stderr
    probe = ffprobe(out)
    (stream,) = probe["streams"]
    assert stream["codec_name"] == "h264" and stream["pix_fmt"] == "yuv420p"
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
    assert err[-1].startswith("previz: error: ") and needle in err[-1]
    assert not (tmp_path / "x.mp4").exists()


@pytest.mark.parametrize("output", ["dir", "file-as-dir"])
def test_unwritable_outputs_fail_before_any_work(test_pack, tmp_path, capsys, output):
    (tmp_path / "plain-file").write_text("x")
    target = tmp_path if output == "dir" else tmp_path / "plain-file" / "take.mp4"
    code = main(["draft", "a cube", "--pack", "previz-test", "-o", str(target)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("previz: error: ") and str(target) in err[-1]


def test_usage_errors_are_one_line(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["draft", "a cube", "--seconds", "abc"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and len(err) == 1 and "'abc'" in err[0]


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
                 "--shake", "0.3", "-q", "-o", str(take)]) == 0
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
