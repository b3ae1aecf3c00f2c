"""Engines: every backend runs the same graph to the same numbers, behind one seam."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engines import available_backends, create_engine, cuda_device_name, resolve_backend
from engines.base import Engine
from engines.errors import BackendUnavailableError, EngineCacheError
from engines.export import check_external_data, export_onnx, to_fp16
from engines.onnxruntime_backend import provider_chain


def test_onnxruntime_matches_torch_on_the_same_pack(torch_model, ort_model):
    for name in ("denoiser_graph", "decoder_graph"):
        graph = getattr(torch_model, name)
        inputs = graph.example_inputs(seed=3)
        engine_t = torch_model.denoiser if graph.name == "denoiser" else torch_model.decoder
        engine_o = ort_model.denoiser if graph.name == "denoiser" else ort_model.decoder
        out_t = engine_t.run(inputs)[graph.output]
        out_o = engine_o.run(inputs)[graph.output]
        assert isinstance(out_t, torch.Tensor) and isinstance(out_o, torch.Tensor)
        assert out_t.shape == out_o.shape and out_t.dtype == out_o.dtype == torch.float32
        assert out_t.device == engine_t.device and out_o.device == engine_o.device
        assert float((out_t - out_o).abs().max()) <= 1e-3, graph.name
        assert float(out_t.abs().max()) > 0  # not a trivially zero graph


def test_onnxruntime_binds_torch_tensors_instead_of_copying_through_numpy(ort_model, monkeypatch):
    """The IOBinding path: inputs read from the tensors' memory, a fresh output tensor written by ORT."""
    engine, graph = ort_model.denoiser, ort_model.denoiser_graph
    inputs = graph.example_inputs(seed=5)
    reference = engine.run(inputs)[graph.output].clone()

    def no_numpy_feeds(*args, **kwargs):
        raise AssertionError("session.run (numpy feeds) was called; the engine must bind tensors")

    monkeypatch.setattr(engine.session, "run", no_numpy_feeds)
    strided = {k: v.transpose(0, -1).contiguous().transpose(0, -1) for k, v in inputs.items()}  # non-contiguous
    first = engine.run(strided)[graph.output]
    second = engine.run(inputs)[graph.output]
    torch.testing.assert_close(first, reference, rtol=0, atol=0)
    assert first.data_ptr() != second.data_ptr()  # callers may hold one output while asking for the next
    with pytest.raises(ValueError, match="shape"):
        engine.run({**inputs, "latents": inputs["latents"][:, :, :1]})


def test_graphs_declare_input_dtypes_and_keep_timesteps_exact(torch_model):
    graph = torch_model.denoiser_graph
    assert set(graph.dtypes) == set(graph.inputs) and graph.exact == ("timesteps",)
    assert {v.dtype for v in graph.example_inputs().values()} == {torch.float32}
    with pytest.raises(ValueError, match="unknown dtypes"):
        type(graph)(name="g", module=graph.module, inputs={"x": (1,)}, output="y", source_sha256="0",
                    dtypes={"x": "float64x"})


def test_onnx_native_attention_is_the_same_arithmetic(torch_model):
    graph = torch_model.denoiser_graph
    args = list(graph.example_inputs(seed=4).values())
    native = graph.export_module(23)
    assert native is not graph.module and graph.export_module(18) is graph.module
    with torch.inference_mode():
        np.testing.assert_allclose(native(*args).numpy(), graph.module(*args).numpy(), atol=1e-5)


def test_whole_takes_match_between_backends(torch_model, ort_model):
    from previz.recipe import Recipe

    recipe = Recipe(prompt="a lighthouse at dusk", seed=5, seconds=0.5)
    a = np.stack([f.image for f in torch_model.generate(recipe)]).astype(int)
    b = np.stack([f.image for f in ort_model.generate(recipe)]).astype(int)
    assert a.shape == b.shape
    assert np.abs(a - b).max() <= 2  # uint8 rounding of values within 1e-3


def test_engines_satisfy_the_protocol_and_report_real_providers(torch_model, ort_model):
    for engine in (torch_model.denoiser, ort_model.denoiser, ort_model.decoder):
        assert isinstance(engine, Engine)
    assert torch_model.denoiser.info.backend == "torch"
    if cuda_device_name() is None:  # onnxruntime-gpu lists GPU providers anyway; none may be used
        assert ort_model.denoiser.info.providers == ("CPUExecutionProvider",)
        assert ort_model.denoiser.info.device == "cpu"


def test_provider_chain_asks_for_gpu_providers_only_with_a_gpu(tmp_path):
    listed = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert provider_chain(listed, None, tmp_path) == ["CPUExecutionProvider"]
    chain = provider_chain(listed, "NVIDIA H100", tmp_path)
    assert [p[0] if isinstance(p, tuple) else p for p in chain] == listed
    assert chain[0][1]["trt_engine_cache_path"] == str(tmp_path)
    assert provider_chain(["CUDAExecutionProvider", "CPUExecutionProvider"], "GPU", None) == [
        "CUDAExecutionProvider", "CPUExecutionProvider"]


def test_backends_are_reported_and_unknown_ones_refused(torch_model, cache_dir):
    backends = available_backends()
    assert backends["torch"] is None and backends["onnxruntime"] is None
    with pytest.raises(BackendUnavailableError, match="unknown backend 'cuda-magic'"):
        create_engine("cuda-magic", torch_model.decoder_graph, cache_dir)
    # torch on a CUDA GPU (bf16, compiled), else ONNX Runtime (installed here); TensorRT never by default
    assert resolve_backend("auto") == ("torch" if torch.cuda.is_available() else "onnxruntime")
    assert resolve_backend("torch") == "torch"


@pytest.mark.skipif(available_backends()["tensorrt"] is None, reason="TensorRT can run here")
def test_tensorrt_without_a_gpu_is_a_clear_error(torch_model, cache_dir):
    with pytest.raises(BackendUnavailableError, match="tensorrt"):
        create_engine("tensorrt", torch_model.decoder_graph, cache_dir)


def test_onnx_export_is_cached_by_fingerprint(torch_model, cache_dir):
    path = export_onnx(torch_model.decoder_graph, cache_dir)
    mtime = path.stat().st_mtime_ns
    assert export_onnx(torch_model.decoder_graph, cache_dir) == path
    assert path.stat().st_mtime_ns == mtime
    assert torch_model.decoder_graph.fingerprint in str(path)


def test_a_new_code_revision_retires_the_cached_exports(torch_model):
    """A graph whose code changed how it exports (not its numbers) gets a new fingerprint, so the ONNX and
    TensorRT caches make it again; a graph at its first revision keeps the fingerprint it always had."""
    import dataclasses

    from previz.draft_graphs import DENOISER_REVISION

    graph = torch_model.denoiser_graph
    assert graph.revision == DENOISER_REVISION == "frame-modulation"
    first = dataclasses.replace(graph, revision="")
    assert len({graph.fingerprint, first.fingerprint, dataclasses.replace(graph, revision="next").fingerprint}) == 3
    decoder = torch_model.decoder_graph
    assert decoder.revision == "" and dataclasses.replace(decoder, revision="").fingerprint == decoder.fingerprint


def test_onnx_external_data_outside_the_model_dir_is_refused(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    tensor = helper.make_tensor("w", TensorProto.FLOAT, [1], [0.0])
    tensor.data_location = TensorProto.EXTERNAL
    del tensor.float_data[:]
    entry = tensor.external_data.add()
    entry.key, entry.value = "location", "../../etc/passwd"
    graph = helper.make_graph([helper.make_node("Identity", ["w"], ["y"])], "g", [],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])], [tensor])
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph), str(path))
    with pytest.raises(EngineCacheError, match="outside"):
        check_external_data(path)


def test_fp16_conversion_for_tensorrt_keeps_fp32_io_and_runs(torch_model, cache_dir, tmp_path):
    import onnxruntime as ort

    for graph, engine in ((torch_model.decoder_graph, torch_model.decoder),
                          (torch_model.denoiser_graph, torch_model.denoiser)):
        fp16 = to_fp16(export_onnx(graph, cache_dir), tmp_path / f"{graph.name}.fp16.onnx")
        session = ort.InferenceSession(str(fp16), providers=["CPUExecutionProvider"])
        inputs = graph.example_inputs(seed=1)
        (out,) = session.run(None, {k: v.numpy() for k, v in inputs.items()})
        ref = engine.run(inputs)[graph.output].numpy()
        assert out.dtype == np.float32
        assert np.abs(out - ref).max() < 5e-2 * max(1.0, float(np.abs(ref).max())), graph.name


@pytest.mark.gpu
@pytest.mark.parametrize("which", ["decoder", "denoiser"])
def test_tensorrt_matches_torch_on_gpu(torch_model, cache_dir, which):
    graph = getattr(torch_model, f"{which}_graph")
    reference = getattr(torch_model, which)
    engine = create_engine("tensorrt", graph, cache_dir)
    inputs = graph.example_inputs(seed=2, device="cuda")
    out = engine.run(inputs)[graph.output]
    ref = reference.run(inputs)[graph.output].to(out.device)
    assert out.device.type == "cuda"  # the caller's tensors were bound; nothing came back to the host
    assert float((out - ref).abs().max()) < 5e-2 * max(1.0, float(ref.abs().max()))
    assert engine.info.backend == "tensorrt" and engine.info.precision == "fp16"


@pytest.mark.gpu
def test_onnxruntime_uses_a_gpu_provider_when_a_gpu_exists(test_pack, cache_dir, text_encoder):
    from previz.take import DraftModel

    model = DraftModel(test_pack, "onnxruntime", cache_dir=cache_dir, text=text_encoder)
    assert model.denoiser.info.providers[0] in ("TensorrtExecutionProvider", "CUDAExecutionProvider")
