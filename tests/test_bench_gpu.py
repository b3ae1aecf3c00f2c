"""tools/bench_gpu.py runs end to end at its small CPU size (the CUDA run is the same code at 832x480)."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load_tool(monkeypatch, name: str):
    """``tools/<name>.py`` as a module, as ``python tools/<name>.py`` has it: its sibling modules importable.
    (Not syspath_prepend: that calls pkg_resources, which the kosoku test leaves as a stand-in without the
    function it calls.)"""
    monkeypatch.setattr(sys, "path", [str(ROOT / "tools"), *sys.path])
    spec = importlib.util.spec_from_file_location(name, ROOT / "tools" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    tool = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, tool)  # its dataclasses look their module up there
    spec.loader.exec_module(tool)
    return tool


def load_bench(monkeypatch):
    return load_tool(monkeypatch, "bench_gpu")


def test_bench_gpu_runs_at_the_small_size_on_cpu(tmp_path, capsys, monkeypatch):
    bench = load_bench(monkeypatch)
    assert bench.main(["--small", "--variants", "fp32,bf16", "--seconds", "0.2", "--packs", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    for student in ("wan21-1.3b", "wan22-5b"):
        assert f"## {student}, bidirectional context:" in out
    rows = [line for line in out.splitlines() if line.startswith(("| fp32 |", "| bf16 |"))]
    assert len(rows) == 4
    assert out.count("time to first frame of the synced take:") == 4
    for row in rows:
        fps = float(row.split("|")[2])
        assert fps > 0
    # The 5B-shaped student really has Wan 2.2 TI2V's latent layout: 48 channels, 16x spatial.
    from previz.packs import load_pack

    pack = load_pack(str(next(tmp_path.glob("wan22-5b-*"))))
    assert (pack.latent.channels, pack.latent.spatial) == (48, 16)


def test_the_profile_splits_a_denoiser_call_by_kind(tmp_path, capsys, monkeypatch):
    bench = load_bench(monkeypatch)
    assert [bench.kernel_kind(k) for k in ("aten::addmm", "sm90_xmma_gemm_bf16bf16_bf16f32", "pytorch_flash::flash_fwd",
                                           "cudnn_generated_fort_native_sdpa_sm90", "triton_poi_fused_add_mul_0",
                                           "aten::mkldnn_convolution")] == [
        "matmul", "matmul", "attention", "attention", "other", "convolution"]
    # A variant that cannot run here (cuDNN attention on a CPU) is reported, and the run goes on.
    assert bench.main(["--small", "--students", "wan21-1.3b", "--variants", "bf16-cudnn,fp32", "--seconds", "0.2",
                       "--packs", str(tmp_path), "--profile"]) == 0
    out = capsys.readouterr().out
    [line] = [x for x in out.splitlines() if x.startswith("- **fp32, one denoiser call profiled:**")]
    assert "matmul" in line and "attention" in line and "%" in line
    assert "- **bf16-cudnn failed:** BackendUnavailableError: attention 'cudnn' runs on a CUDA GPU only" in out
    assert sum(x.startswith("| fp32 |") for x in out.splitlines()) == 1


def test_a_block_causal_student_is_measured_beside_the_bidirectional_one(tmp_path, capsys, monkeypatch):
    """1 s takes: three windows, so the context pass and the cached steps run (a 0.2 s take is one window)."""
    bench = load_bench(monkeypatch)
    assert bench.main(["--small", "--students", "wan21-1.3b", "--context", "bidirectional,block-causal",
                       "--variants", "fp32", "--seconds", "1", "--repeats", "1", "--packs", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    for context in ("bidirectional", "block-causal"):
        assert f"## wan21-1.3b, {context} context:" in out
    rows = [line for line in out.splitlines() if line.startswith("| fp32 |")]
    assert len(rows) == 2 and all(float(row.split("|")[2]) > 0 for row in rows)
    assert bench.main(["--small", "--context", "sideways"]) == 2


def test_the_time_embedding_variant_measures_the_stock_embedder(tmp_path, capsys, monkeypatch, test_pack):
    """``-token-temb`` variants put diffusers' own per-token embedder back, and run beside the default."""
    bench = load_bench(monkeypatch)
    from previz.draft_graphs import build_denoiser_graph
    from previz.frame_timesteps import FrameTimestepEmbedding
    from previz.text import text_shape

    tokens, dim = text_shape(test_pack)
    module = build_denoiser_graph(test_pack, 64, 64, text_tokens=tokens, text_dim=dim).window.module
    bench.embed_time_per_token(module)
    embedder = module.transformer.condition_embedder
    assert not isinstance(embedder, FrameTimestepEmbedding) and type(embedder).__name__ == "WanTimeTextImageEmbedding"
    spied: list[str] = []
    real = bench.embed_time_per_token
    monkeypatch.setattr(bench, "embed_time_per_token", lambda module: (spied.append("once"), real(module))[1])
    assert bench.main(["--small", "--students", "wan21-1.3b", "--variants", "fp32-token-temb,fp32", "--seconds",
                       "0.2", "--packs", str(tmp_path)]) == 0
    assert spied == ["once"]  # the -token-temb variant's model, not the default's
    rows = {row.split("|")[1].strip(): row.split("|") for row in capsys.readouterr().out.splitlines()
            if row.startswith(("| fp32-token-temb |", "| fp32 |"))}
    assert set(rows) == {"fp32-token-temb", "fp32"}


def test_bench_time_embedding_alternates_the_three_kinds(capsys, monkeypatch):
    tool = load_tool(monkeypatch, "bench_time_embedding")
    assert tool.main(["--device", "cpu", "--layers", "1", "--width", "64", "--height", "64", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    rows = [line.split("|")[1].strip() for line in out.splitlines() if line.startswith("| ") and " ms |" in line]
    assert rows == ["per token (stock)", "embedding once a frame", "both once a frame"]
    assert out.count("- call 1,") == 3


def test_the_first_frame_is_split_into_host_denoise_decode_and_the_rest(monkeypatch):
    import types

    bench = load_bench(monkeypatch)
    stats = types.SimpleNamespace(started=0.0, first_frame_s=0.100)
    log = [("denoise", 0.010, 0.030), ("denoise", 0.030, 0.050), ("decode", 0.060, 0.070), ("denoise", 0.07, 0.2)]
    split = bench.first_frame_split(stats, log)
    assert {k: round(v) for k, v in split.items()} == {
        "total": 100, "host before the first call": 10, "first window's denoiser calls": 40,
        "first decoder call": 10, "the rest": 40}
    assert bench.first_frame_split(types.SimpleNamespace(started=0.0, first_frame_s=None), log) is None


def test_bench_window_inputs_times_both_layouts(capsys, monkeypatch):
    tool = load_tool(monkeypatch, "bench_window_inputs")
    assert tool.main(["--width", "128", "--height", "64", "--repeats", "1"]) == 0
    rows = [line.split("|") for line in capsys.readouterr().out.splitlines() if line.startswith("| wan")]
    assert [row[1].strip() for row in rows] == ["wan21-1.3b", "wan22-5b"]
    assert all(cell.strip().endswith(" ms") for row in rows for cell in row[2:5])


def test_an_asynchronous_model_is_also_timed_with_the_serial_take_loop(tmp_path, capsys, monkeypatch):
    """On CUDA (forced here) each variant's takes are alternated with serial ones on the same engines."""
    from previz.take import DraftModel

    init = DraftModel.__init__

    def as_on_cuda(self, *args, **kwargs):
        init(self, *args, **kwargs)
        self.asynchronous = self.pipelined = True

    monkeypatch.setattr(DraftModel, "__init__", as_on_cuda)
    bench = load_bench(monkeypatch)
    assert bench.main(["--small", "--students", "wan21-1.3b", "--variants", "fp32", "--seconds", "0.2",
                       "--repeats", "2", "--packs", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    [line] = [x for x in out.splitlines() if x.startswith("- **fp32, the take loop pipelined against serial**")]
    [(pipelined, serial)] = re.findall(r"([\d.]+) against ([\d.]+) fps", line)
    assert float(pipelined) > 0 and float(serial) > 0
    [line] = [x for x in out.splitlines() if x.startswith("- **fp32, restart** (a cancel at a random moment")]
    medians = dict(re.findall(r"(pipelined|serial): median ([\d.]+) ms", line))
    assert set(medians) == {"pipelined", "serial"} and all(float(m) > 0 for m in medians.values())


def test_bench_first_take_times_a_fresh_model_with_and_without_a_warm_take(monkeypatch, test_pack):
    import gc

    tool = load_tool(monkeypatch, "bench_first_take")
    try:
        for warm in (False, True):
            times = tool.child(test_pack.id, "torch", warm=warm)
            assert set(times) == {"first", "later"} and all(ms > 0 for ms in times.values())
            assert gc.get_freeze_count() > 0  # timed as `previz serve` serves: its start-up heap frozen
    finally:
        gc.unfreeze()  # the test process collects as before


def test_a_compiled_variant_says_whether_its_takes_ran_what_the_warm_up_compiled(tmp_path, capsys, monkeypatch):
    """Each compiled variant's dynamo line counts the graphs its warm-up compiled, those compiled after it,
    the graph breaks and the code left eager: two variants in one process, and neither's takes add any."""
    bench = load_bench(monkeypatch)
    assert bench.main(["--small", "--students", "wan21-1.3b", "--variants", "bf16-compiled-model,bf16-compiled-blocks",
                       "--seconds", "0.2", "--repeats", "1", "--packs", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    lines = re.findall(r"- \*\*(\S+), dynamo:\*\* (\d+) graphs compiled by the warm-up, (\d+) more by the end.*; "
                       r"(\d+) graph breaks; (\d+) left eager", out)
    assert [(variant, more, breaks, eager) for variant, _, more, breaks, eager in lines] == [
        ("bf16-compiled-model", "0", "0", "0"), ("bf16-compiled-blocks", "0", "0", "0")]
    assert all(int(warm) >= 2 for _, warm, _, _, _ in lines)  # the denoiser and the decoder, compiled again


def test_bench_gc_times_a_full_collection_before_and_after_the_start_up_heap_is_frozen(monkeypatch, test_pack,
                                                                                          capsys):
    import gc

    tool = load_tool(monkeypatch, "bench_gc")
    try:
        assert tool.main(["--pack", test_pack.id, "--backend", "torch"]) == 0
    finally:
        gc.unfreeze()
    out = capsys.readouterr().out
    rows = dict(re.findall(r"^\| (as loaded|start-up frozen) \| ([\d.]+) ms \|", out, re.MULTILINE))
    assert set(rows) == {"as loaded", "start-up frozen"}
    assert float(rows["as loaded"]) > float(rows["start-up frozen"])  # the frozen objects are not scanned
    assert gc.get_freeze_count() == 0  # the tool leaves the test process's collector as it found it


def test_a_compiled_variant_whose_code_dynamo_left_eager_says_so(tmp_path, capsys, monkeypatch):
    """Past dynamo's recompile limit a block runs eager with only a warning: the dynamo line counts it, so such
    a row is not taken for the compiled variant's figure."""
    import torch

    import engines.torch_backend as torch_backend

    bench = load_bench(monkeypatch)
    monkeypatch.setattr(torch_backend, "COMPILED_SHAPES", 1)
    # A block-causal student's block needs 3 graphs.  (torch's own patch: pytest's monkeypatch would delete
    # the setting from torch's config module on its way out.)
    with torch._dynamo.config.patch(recompile_limit=1):
        assert bench.main(["--small", "--students", "wan21-1.3b", "--context", "block-causal", "--variants",
                           "bf16-compiled-blocks", "--seconds", "1", "--repeats", "1", "--packs", str(tmp_path)]) == 0
    [eager] = re.findall(r"- \*\*bf16-compiled-blocks, dynamo:\*\* .*; (\d+) left eager \(\d+× Dynamo recompile limit",
                         capsys.readouterr().out)
    assert int(eager) >= 1
