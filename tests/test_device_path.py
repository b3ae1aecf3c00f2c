"""The GPU draft path's seams, checked on the CPU: precision, compile options, typed out-of-memory.

The ``gpu``-marked tests run the same checks on CUDA (they skip without one).
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from conftest import LiveServer, trace_engine_compiles, traced_take
from test_server import open_client

from engines import create_engine
from engines.errors import BackendUnavailableError, DeviceOutOfMemoryError, is_out_of_memory
from engines.precision import cast_module, resolve_precision
from previz.errors import OutOfDeviceMemoryError, PrevizError, from_engine_error
from previz.recipe import Recipe

pytestmark = pytest.mark.filterwarnings("ignore:connect\\(\\) must be used:DeprecationWarning")

# bf16 keeps 8 bits of mantissa.  Measured on the test pack over 5 seeds: one call differs from
# fp32 by at most 0.4% (denoiser) and 1.4% (decoder) of the output's range; a whole 0.5 s take's
# frames by 0.1 uint8 level on average (1 at most).  The bounds leave 2x to 10x of room.
BF16_CALL_TOLERANCE = 0.03
BF16_FRAME_MEAN_LEVELS = 1.0


def tiny_wan():
    from diffusers import WanTransformer3DModel

    torch.manual_seed(0)
    return WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=8, in_channels=4,
                                 out_channels=4, text_dim=16, freq_dim=16, ffn_dim=32, num_layers=1).eval()


def test_precision_defaults_to_bf16_on_cuda_and_fp32_elsewhere():
    assert resolve_precision(None, "cuda") == "bf16" and resolve_precision("auto", "cuda") == "bf16"
    assert resolve_precision(None, "cpu") == "fp32" and resolve_precision("fp16", "cpu") == "fp16"
    with pytest.raises(BackendUnavailableError, match="choose one of"):
        resolve_precision("int4", "cpu")


def test_cast_keeps_fp32_modules_exactly_as_loading_with_torch_dtype_does(tmp_path):
    from diffusers import WanTransformer3DModel

    tiny_wan().save_pretrained(tmp_path)
    loaded = WanTransformer3DModel.from_pretrained(tmp_path, torch_dtype=torch.bfloat16)
    cast = cast_module(WanTransformer3DModel.from_pretrained(tmp_path), torch.bfloat16)
    want = loaded.state_dict()
    got = cast.state_dict()
    assert want.keys() == got.keys()
    for name, tensor in want.items():
        assert got[name].dtype == tensor.dtype and torch.equal(got[name], tensor), name
    dtypes = {t.dtype for t in got.values()}
    assert dtypes == {torch.bfloat16, torch.float32}  # something was kept: the norms and time embedder
    assert got["scale_shift_table"].dtype == torch.float32 and got["proj_out.weight"].dtype == torch.bfloat16


@pytest.fixture(scope="module")
def bf16_model(test_pack, cache_dir, text_encoder):
    from previz.take import DraftModel

    return DraftModel(test_pack, "torch", cache_dir=cache_dir, text=text_encoder, device="cpu", precision="bf16")


def test_bf16_on_cpu_runs_and_matches_fp32_within_tolerance(torch_model, bf16_model):
    assert torch_model.denoiser.info.precision == "fp32" and bf16_model.denoiser.info.precision == "bf16"
    for name in ("denoiser", "decoder"):
        graph = getattr(torch_model, f"{name}_graph")
        inputs = graph.example_inputs(seed=7)
        ref = getattr(torch_model, name).run(inputs)[graph.output]
        out = getattr(bf16_model, name).run(inputs)[graph.output]
        assert out.dtype == torch.bfloat16 and out.shape == ref.shape
        span = float(ref.max() - ref.min())
        assert float((out.float() - ref).abs().max()) <= BF16_CALL_TOLERANCE * span, name
    recipe = Recipe(prompt="a lighthouse at dusk", seed=5, seconds=0.5, camera={"preset": "orbit_left"})
    a = np.stack([f.image for f in torch_model.generate(recipe)]).astype(float)
    b = np.stack([f.image for f in bf16_model.generate(recipe)]).astype(float)
    assert a.shape == b.shape and np.abs(a - b).mean() <= BF16_FRAME_MEAN_LEVELS
    meta = bf16_model.metadata(recipe)
    assert meta["engines"]["denoiser"]["precision"] == "bf16" and meta["engines"]["decoder"]["precision"] == "bf16"


def test_timesteps_stay_fp32_in_a_bf16_engine(bf16_model):
    """bf16 has no 999: a bf16 timestep would put every high-noise step at 1000."""
    assert torch.tensor(999.0).to(torch.bfloat16).item() == 1000.0
    engine = bf16_model.denoiser
    assert engine._argument("timesteps", torch.full((1, 4), 999.0)).dtype == torch.float32
    assert engine._argument("latents", torch.zeros(1)).dtype == torch.bfloat16


def test_onnxruntime_refuses_a_precision_it_does_not_run(torch_model, cache_dir):
    with pytest.raises(BackendUnavailableError, match="fp32 export"):
        create_engine("onnxruntime", torch_model.decoder_graph, cache_dir, precision="bf16")


def test_compile_keeps_inductor_s_cache_under_the_engine_cache(test_pack, cache_dir, monkeypatch):
    from previz.draft_graphs import build_decoder_graph

    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    monkeypatch.delenv("TRITON_CACHE_DIR", raising=False)
    graph = build_decoder_graph(test_pack, 64, 32)
    engine = create_engine("torch", graph, cache_dir, device="cpu", compile=True)  # compiles lazily: not run here
    assert engine.info.providers == ("torch.compile",) and engine.info.details["compile_mode"] == "default"
    import os

    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(cache_dir / "inductor")
    eager = create_engine("torch", build_decoder_graph(test_pack, 64, 32), cache_dir, device="cpu")
    assert eager.info.providers == ("eager",)  # off by default on CPU
    with pytest.raises(BackendUnavailableError, match="compile mode"):
        create_engine("torch", graph, cache_dir, device="cpu", compile=True, compile_mode="fastest")


def test_fp8_is_refused_where_it_cannot_run_with_the_reason(test_pack, cache_dir, monkeypatch):
    """fp8 needs fp8 tensor cores (CUDA, compute capability 8.9+) and torchao: each absence is a typed error
    naming the precision, checked before the engine casts or moves a weight."""
    import engines.precision
    from previz.draft_graphs import build_denoiser_graph

    graph = build_denoiser_graph(test_pack, 64, 32, text_tokens=16, text_dim=384).window
    with pytest.raises(BackendUnavailableError, match="compute capability 8.9") as err:
        create_engine("torch", graph, cache_dir, device="cpu", precision="fp8")
    assert err.value.field == "precision" and "use bf16" in err.value.message
    assert {p.dtype for p in graph.module.parameters()} == {torch.float32}  # refused before any cast
    # On a capable GPU without torchao: the install hint.
    import importlib.util

    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *rest: None if name == "torchao" else find_spec(name, *rest))
    with pytest.raises(BackendUnavailableError, match=r"needs torchao: pip install 'previz\[fp8\]'"):
        engines.precision.check_fp8(torch.device("cuda"))
    assert engines.precision.torch_dtype("fp8") == torch.bfloat16  # what fp8 leaves unquantized runs at


def test_the_attention_kernel_is_chosen_per_engine_and_checked(test_pack, cache_dir):
    """``attention`` routes the denoiser's diffusers attention through one kernel; the math kernel is the
    same attention (to float rounding), the decoder has none to route, and CUDA-only kernels are refused
    on a CPU with the field named."""
    from previz.draft_graphs import build_decoder_graph, build_denoiser_graph

    def denoiser(attention: str):
        graph = build_denoiser_graph(test_pack, 64, 32, text_tokens=16, text_dim=384).window
        return graph, create_engine("torch", graph, cache_dir, device="cpu", attention=attention)

    def kernels(engine) -> set[str]:
        return {m.processor._attention_backend for m in engine.graph.module.modules()
                if hasattr(getattr(m, "processor", None), "_attention_backend")}

    _, math = denoiser("math")
    graph, sdpa = denoiser("sdpa")  # built after "math": one engine's kernel must not leak into the next
    assert sdpa.info.details["attention"] == "sdpa" and math.info.details["attention"] == "math"
    assert kernels(math) == {"_native_math"} and kernels(sdpa) == {"native"}
    inputs = graph.example_inputs(seed=3)
    ref, out = sdpa.run(inputs)[graph.output], math.run(inputs)[graph.output]
    assert float((out - ref).abs().max()) <= 1e-5 * float(ref.abs().max())
    decoder = create_engine("torch", build_decoder_graph(test_pack, 64, 32), cache_dir, device="cpu",
                            attention="math")
    assert "attention" not in decoder.info.details
    for bad, message in (("cudnn", "CUDA GPU only"), ("efficient", "CUDA GPU only"), ("fastest", "choose one of")):
        with pytest.raises(BackendUnavailableError, match=message) as err:
            denoiser(bad)
        assert err.value.field == "attention"


def test_the_gelu_epilogue_swaps_each_feed_forward_gelu_once_on_the_same_weights(test_pack, cache_dir):
    """Each block's tanh-GELU projection becomes one module on the same weights (a second engine on a shared
    module fuses nothing twice); off CUDA it computes what diffusers computes, and an engine refuses it."""
    from engines.gelu_epilogue import GeluEpilogueLinear, fuse_gelu_epilogues
    from previz.draft_graphs import build_denoiser_graph

    graph = build_denoiser_graph(test_pack, 64, 32, text_tokens=16, text_dim=384).window
    module = graph.module
    projections = [m.proj for m in module.modules() if getattr(m, "approximate", None) == "tanh" and hasattr(m, "proj")]
    blocks = module.transformer.config.num_layers
    assert len(projections) == blocks
    inputs = graph.example_inputs(seed=2)
    with torch.inference_mode():
        ref = module(*inputs.values())
        assert fuse_gelu_epilogues(module) == blocks
        assert fuse_gelu_epilogues(module) == blocks  # idempotent
        out = module(*inputs.values())
    fused = [m for m in module.modules() if isinstance(m, GeluEpilogueLinear)]
    assert [m.proj for m in fused] == projections  # the same layers, no copies
    assert not any(isinstance(m.proj, GeluEpilogueLinear) for m in fused)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    with pytest.raises(BackendUnavailableError, match="CUDA GPU only") as err:
        create_engine("torch", graph, cache_dir, device="cpu", gelu_epilogue=True)
    assert err.value.field == "gelu_epilogue"


def test_a_torch_engine_s_student_is_loaded_at_its_precision_with_the_weights_a_cast_would_give(
        test_pack, cache_dir, text_encoder, monkeypatch):
    """No fp32 copy of a bf16 student in host memory: the torch backend loads the denoiser at its engine's
    precision; the weights equal an fp32 load cast by the engine's rule, so takes are unchanged."""
    import previz.draft_graphs
    from engines.precision import cast_module
    from previz.draft_graphs import build_denoiser_graph
    from previz.take import DraftModel

    asked: list = []
    load = previz.draft_graphs.load_component
    monkeypatch.setattr(previz.draft_graphs, "load_component",
                        lambda pack, name, **kw: asked.append((name, kw.get("torch_dtype"))) or load(pack, name, **kw))
    DraftModel(test_pack, "torch", cache_dir=cache_dir, text=text_encoder, device="cpu", precision="bf16")
    DraftModel(test_pack, "torch", cache_dir=cache_dir, text=text_encoder, device="cpu")
    DraftModel(test_pack, "onnxruntime", cache_dir=cache_dir, text=text_encoder)
    # Only the denoiser: the decoder is small. onnxruntime exports the fp32 graph.
    assert [dtype for name, dtype in asked if name == "denoiser"] == [torch.bfloat16, torch.float32, None]
    loaded = build_denoiser_graph(test_pack, 64, 32, text_tokens=16, text_dim=384, dtype=torch.bfloat16).window
    cast = build_denoiser_graph(test_pack, 64, 32, text_tokens=16, text_dim=384).window
    cast_module(cast.module, torch.bfloat16)
    a, b = loaded.module.state_dict(), cast.module.state_dict()
    assert a.keys() == b.keys() and all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a)
    assert {v.dtype for v in a.values()} == {torch.bfloat16, torch.float32}  # Wan's fp32-kept modules stay


def test_kernels_without_fp32_are_refused_for_an_fp32_engine_on_cuda(test_pack, cache_dir, monkeypatch):
    """cuDNN's and flash attention take bf16 or fp16 on CUDA: an fp32 engine asking for them is refused when
    it is made (the check runs before anything touches the GPU, so a CPU machine can run this test)."""
    from previz.draft_graphs import build_denoiser_graph

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for kernel in ("cudnn", "flash"):
        graph = build_denoiser_graph(test_pack, 64, 32, text_tokens=16, text_dim=384).window
        with pytest.raises(BackendUnavailableError, match="takes bf16 or fp16") as err:
            create_engine("torch", graph, cache_dir, device="cuda", precision="fp32", attention=kernel)
        assert err.value.field == "attention"


def test_a_take_never_recompiles_what_the_warm_up_compiled(test_pack, cache_dir, text_encoder, traced_eagerly):
    """Dynamo guards on strides and inference-ness: the take's inputs must match the warm-up's.

    Traced with dynamo's ``eager`` backend (the same guards, no inductor), so it runs in seconds on a CPU.
    """
    graphs, frames, after, _ = traced_take(test_pack, cache_dir, text_encoder, traced_eagerly, seconds=0.5)
    assert graphs == 2  # the denoiser and the decoder were traced by the warm-up
    assert len(frames) == 15
    assert after == graphs  # nothing traced again in the take


def test_compiled_by_blocks_the_transformer_s_layers_share_one_graph(test_pack, cache_dir, text_encoder,
                                                                     traced_eagerly):
    """``compile_scope="blocks"``: each layer is compiled in place and all share one traced graph; the decoder,
    which has no repeated blocks, is compiled whole.  A take traces nothing more."""
    graphs, frames, after, model = traced_take(test_pack, cache_dir, text_encoder, traced_eagerly, seconds=0.5,
                                               compile_scope="blocks")
    assert graphs == 2 and after == graphs and len(frames) == 15
    denoiser, decoder = (model.engine_info()[name] for name in ("denoiser", "decoder"))
    assert denoiser["compile_scope"] == "blocks" and decoder["compile_scope"] == "model"
    blocks = model.denoiser_graph.module.transformer.blocks
    assert model.denoiser.info.details["compiled_blocks"] == len(blocks) >= 2


def test_a_compile_scope_is_checked_with_the_reason(test_pack, cache_dir):
    from previz.draft_graphs import build_decoder_graph

    graph = build_decoder_graph(test_pack, 64, 32)
    with pytest.raises(BackendUnavailableError, match="compile scope 'layers'") as err:
        create_engine("torch", graph, cache_dir, device="cpu", compile=True, compile_scope="layers")
    assert err.value.field == "compile"
    for mode in ("reduce-overhead", "max-autotune"):  # both capture CUDA graphs
        with pytest.raises(BackendUnavailableError, match=f"compile mode '{mode}' captures CUDA graphs"):
            create_engine("torch", graph, cache_dir, device="cpu", compile=True, compile_scope="blocks",
                          compile_mode=mode)


def test_the_default_compile_scope_is_blocks_on_cuda_and_the_model_elsewhere_or_with_cuda_graphs():
    """Blocks compile ten times quicker on a GPU at the same speed (BENCHMARKS.md, H200); a CPU's calls were
    quicker whole, and CUDA graphs take a whole graph."""
    from engines.torch_backend import default_compile_scope

    assert default_compile_scope(torch.device("cuda"), cuda_graphs=False) == "blocks"
    assert default_compile_scope(torch.device("cuda"), cuda_graphs=True) == "model"
    assert default_compile_scope(torch.device("cpu"), cuda_graphs=False) == "model"


def test_the_compile_flag_maps_to_engine_options():
    import argparse

    from previz.cli import add_engine_flags, engine_options

    parser = argparse.ArgumentParser()
    add_engine_flags(parser)
    assert engine_options(parser.parse_args([])) == {}
    assert engine_options(parser.parse_args(["--compile", "on"])) == {"compile": True}  # the device's scope
    for scope in ("blocks", "model"):
        assert engine_options(parser.parse_args(["--compile", scope])) == {"compile": True, "compile_scope": scope}
    assert engine_options(parser.parse_args(["--compile", "cuda-graphs"])) == {"compile": True,
                                                                              "compile_mode": "reduce-overhead"}
    assert engine_options(parser.parse_args(["--compile", "off"])) == {"compile": False}


def test_a_graph_a_bf16_engine_has_cast_is_never_exported_as_the_fp32_one(test_pack, cache_dir):
    from engines.errors import EngineCacheError
    from engines.export import export_onnx
    from previz.draft_graphs import build_decoder_graph

    graph = build_decoder_graph(test_pack, 64, 32)
    create_engine("torch", graph, cache_dir, device="cpu", precision="bf16")
    with pytest.raises(EngineCacheError, match="bfloat16"):
        export_onnx(graph, cache_dir)


def test_out_of_memory_is_recognised_from_every_runtime_and_typed_at_previz_s_edge():
    assert is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert is_out_of_memory(RuntimeError("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Failed to allocate memory"))
    try:
        try:
            raise torch.OutOfMemoryError("CUDA out of memory")
        except torch.OutOfMemoryError as inner:
            raise RuntimeError("decoder failed") from inner
    except RuntimeError as outer:
        assert is_out_of_memory(outer)  # found through the cause chain
    assert not is_out_of_memory(ValueError("shape mismatch"))
    mapped = from_engine_error(DeviceOutOfMemoryError("denoiser: out of memory on cuda:0"))
    assert isinstance(mapped, OutOfDeviceMemoryError) and mapped.code == "out_of_memory"
    assert from_engine_error(ValueError("x")) is None
    unavailable = from_engine_error(BackendUnavailableError("no GPU", field="backend", value="tensorrt"))
    assert isinstance(unavailable, PrevizError) and unavailable.code == "backend_unavailable"
    assert unavailable.field == "backend"


class OutOfMemoryFor:
    """The server's denoiser, running out of device memory on the second window of takes of one prompt."""

    def __init__(self, engine, states: torch.Tensor, after_calls: int) -> None:
        self.engine, self.states, self.after_calls, self.calls = engine, states, after_calls, 0
        self.info, self.device = engine.info, engine.device

    def run(self, inputs):
        if torch.equal(inputs["text"].float().cpu(), self.states):
            self.calls += 1
            if self.calls > self.after_calls:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (injected)")
        return self.engine.run(inputs)

    def warmup(self) -> None:
        self.engine.warmup()

    def close(self) -> None:
        self.engine.close()


def test_out_of_memory_mid_take_is_a_typed_error_to_that_client_and_the_others_stream_on(
        test_pack, tmp_path, cache_dir, monkeypatch):
    import previz.worker

    released: list[bool] = []
    monkeypatch.setattr(previz.worker, "release_device_memory", lambda: released.append(True))
    server = LiveServer(test_pack, tmp_path / "store", cache_dir)
    try:
        model = server.server.model
        steps = test_pack.draft.steps
        model.denoiser = OutOfMemoryFor(model.denoiser, model.text("too big").cpu(),
                                        after_calls=steps)  # the first window streams; the second fails
        victim, other = open_client(server), open_client(server)
        other.send(type="generate", recipe={"prompt": "a calm sea", "seconds": 2.0, "seed": 1})
        other_take = other.event("take_started")["take_id"]
        victim.send(type="generate", id=7, recipe={"prompt": "too big", "seconds": 2.0, "seed": 2})
        victim_take = victim.event("take_started")["take_id"]
        error = victim.event("error")
        assert error["code"] == "out_of_memory" and error["take_id"] == victim_take
        for words in ("out of memory", "64x32", "2 s", "window", "lower the size, the seconds"):
            assert words in error["message"], words
        assert 0 < len(victim.frames_of(victim_take)) < 60  # it failed mid-take, after its first window
        assert released == [True]  # the device cache was emptied once
        other.event("take_done")
        assert [h.index for h in other.frames_of(other_take)] == list(range(60))  # nothing lost
        victim.send(type="generate", recipe={"prompt": "a smaller shot", "seconds": 0.5})
        victim.event("take_done")  # the same client, the same server, goes on
    finally:
        server.close()


# ---------------------------------------------------------------- on a CUDA GPU


@pytest.mark.gpu
@pytest.mark.parametrize("precision, tolerance", [("fp32", 1e-3), ("bf16", BF16_CALL_TOLERANCE)])
def test_torch_on_cuda_matches_cpu_fp32(torch_model, test_pack, cache_dir, text_encoder, precision, tolerance):
    from previz.take import DraftModel

    gpu = DraftModel(test_pack, "torch", cache_dir=cache_dir, text=text_encoder, device="cuda",
                     precision=precision, compile=False)
    for name in ("denoiser", "decoder"):
        graph = getattr(torch_model, f"{name}_graph")
        inputs = graph.example_inputs(seed=11)
        ref = getattr(torch_model, name).run(inputs)[graph.output]
        out = getattr(gpu, name).run({k: v.cuda() for k, v in inputs.items()})[graph.output]
        assert out.device.type == "cuda"
        span = float(ref.max() - ref.min())
        assert float((out.float().cpu() - ref).abs().max()) <= tolerance * span, name


@pytest.mark.gpu
@pytest.mark.parametrize("scope", ["model", "blocks"])
def test_compiled_equals_eager_on_cuda(test_pack, cache_dir, text_encoder, scope):
    from previz.take import DraftModel

    eager = DraftModel(test_pack, "torch", cache_dir=cache_dir, text=text_encoder, device="cuda", compile=False)
    compiled = DraftModel(test_pack, "torch", cache_dir=cache_dir, text=text_encoder, device="cuda", compile=True,
                          compile_scope=scope)
    compiled.warmup()
    assert compiled.engine_info()["denoiser"]["compile_scope"] == scope
    assert compiled.engine_info()["denoiser"]["compile_s"] > 0
    recipe = Recipe(prompt="a lighthouse at dusk", seed=5, seconds=0.5, camera={"preset": "orbit_left"})
    a = np.stack([f.image for f in eager.generate(recipe)]).astype(int)
    b = np.stack([f.image for f in compiled.generate(recipe)]).astype(int)
    assert a.shape == b.shape and np.abs(a - b).mean() <= 1.0  # fused bf16 kernels round differently


@pytest.mark.gpu
def test_cudnn_attention_matches_torch_s_own_choice_on_cuda(test_pack, cache_dir, text_encoder):
    from previz.take import DraftModel

    models = {attention: DraftModel(test_pack, "torch", cache_dir=cache_dir, text=text_encoder, device="cuda",
                                    compile=False, attention=attention) for attention in ("sdpa", "cudnn")}
    recipe = Recipe(prompt="a lighthouse at dusk", seed=5, seconds=0.5, camera={"preset": "orbit_left"})
    a, b = (np.stack([f.image for f in m.generate(recipe)]).astype(int) for m in models.values())
    assert models["cudnn"].engine_info()["denoiser"]["attention"] == "cudnn"
    assert a.shape == b.shape and np.abs(a - b).mean() <= 1.0  # two bf16 kernels round differently


@pytest.mark.gpu
def test_the_gelu_epilogue_on_cuda_replaces_the_gelu_kernel_and_matches_diffusers_gelu(test_pack, cache_dir):
    """cuBLASLt's GELU epilogue is the tanh approximation Wan's feed-forward uses: compiled, within bf16's
    rounding of the unfused graph, with no feed-forward GELU kernel left; fp8 (torchao's matmuls) refuses it."""
    from torch.profiler import ProfilerActivity, profile

    from previz.draft_graphs import build_denoiser_graph

    graphs = [build_denoiser_graph(test_pack, 64, 32, text_tokens=16, text_dim=384).window for _ in range(2)]
    plain, fused = (create_engine("torch", g, cache_dir, device="cuda", precision="bf16", compile=True,
                                  compile_scope="model", gelu_epilogue=on)
                    for g, on in zip(graphs, (False, True), strict=True))
    assert fused.info.details["gelu_epilogue"] == graphs[1].module.transformer.config.num_layers
    inputs = graphs[0].example_inputs(seed=4, device="cuda")
    ref, out = (e.run(inputs)["velocity"].float() for e in (plain, fused))  # the first runs compile
    assert float((out - ref).abs().max()) <= BF16_CALL_TOLERANCE * float(ref.abs().max())

    def gelu_kernels(engine) -> list[str]:
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            engine.run(inputs)
            torch.cuda.synchronize()
        return [e.name for e in prof.events() if e.device_type.name == "CUDA" and "gelu" in e.name.lower()
                and e.name.startswith("triton")]

    # Inductor's own GELU kernel is gone from every block (the text projection's GELU is not a feed-forward's).
    layers = graphs[0].module.transformer.config.num_layers
    assert len(gelu_kernels(plain)) - len(gelu_kernels(fused)) >= layers
    if torch.cuda.get_device_capability() >= (8, 9):
        with pytest.raises(BackendUnavailableError, match="fp8") as err:
            create_engine("torch", graphs[0], cache_dir, device="cuda", precision="fp8", gelu_epilogue=True)
        assert err.value.field == "gelu_epilogue"


@pytest.mark.gpu
def test_fp8_quantizes_the_large_linears_and_stays_close_to_bf16(cache_dir):
    """A Wan-shaped block at a width fp8 takes (the tiny test pack's layers are below its threshold)."""
    if torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("fp8 needs compute capability 8.9+")
    pytest.importorskip("torchao")
    from engines.graphs import Graph

    torch.manual_seed(0)
    block = torch.nn.Sequential(torch.nn.Linear(512, 1024), torch.nn.GELU(approximate="tanh"),
                                torch.nn.Linear(1024, 512))
    x = torch.randn(1, 256, 512)
    engines_ = {p: create_engine("torch", Graph(name="mlp", module=copy.deepcopy(block), inputs={"x": (1, 256, 512)},
                                                output="y", source_sha256=p),
                                 cache_dir, device="cuda", precision=p, compile=False) for p in ("bf16", "fp8")}
    ref, out = (engines_[p].run({"x": x.cuda()})["y"].float() for p in ("bf16", "fp8"))
    assert engines_["fp8"].info.details["fp8_layers"] == 2
    assert float((out - ref).norm() / ref.norm()) < 0.1  # e4m3 keeps 3 mantissa bits: a few percent


def test_a_host_copy_of_a_host_tensor_is_the_tensor_itself():
    from engines.device import HostCopy

    x = torch.arange(6.0).reshape(2, 3)[:, 1:]  # a strided view, as a chunk's kept latents are
    assert HostCopy(x).wait() is x  # a CPU take copies nothing


@pytest.mark.gpu
def test_a_host_copy_is_queued_without_a_wait_and_read_into_ordinary_memory():
    from engines.device import HostCopy

    x = torch.randn(1, 16, 4, 60, 104, device="cuda")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        kept = (x * 2)[:, :, :3]  # strided, as a last chunk's kept latents are
        frames = HostCopy((x * 255).to(torch.uint8))
        latents = HostCopy(kept)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert frames._host.is_pinned()  # else the non-blocking copy would be a blocking one
    host = latents.wait()
    assert torch.equal(host, kept.cpu()) and not host.is_pinned()
    assert torch.equal(frames.wait(), (x * 255).to(torch.uint8).cpu())


@pytest.mark.gpu
def test_a_window_is_queued_without_the_host_waiting_for_the_device(test_pack, cache_dir, text_encoder):
    """``Take.step`` only queues work on CUDA (the denoiser's steps, the copy of the latents, the
    decoding, and the next window's inputs built meanwhile); the host first waits when it reads the
    latents or a frame. torch's sync debug mode raises on the waits torch makes (a blocking copy,
    ``.item()``, a stream sync); a staged copy from pageable memory it does not see, which is why
    uploads go through ``engines.device.upload``."""
    from previz.take import DraftModel, Take

    model = DraftModel(test_pack, "torch", cache_dir=cache_dir, text=text_encoder, device="cuda", compile=False)
    model.warmup()
    take = Take(model, Recipe(prompt="a lighthouse at dusk", seed=5, seconds=1.0, camera={"preset": "orbit_left"}))
    for _ in range(2):  # the first window (no context) and one with context
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            _, latents, frames = take.step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
        assert len(list(frames)) > 0 and latents.wait().shape[2] > 0


def test_a_model_at_another_size_gets_its_own_static_graphs(test_pack, cache_dir, text_encoder, monkeypatch,
                                                            dynamo_reset):
    """Dynamo keys its compiled code by the graph's Python code, which every DraftModel shares, and by
    default recompiles a second shape with symbolic sizes (slower kernels, a longer compile).  A server
    that changes size, or a benchmark that runs two students, must get a static graph for each."""
    from previz.take import DraftModel

    symbolic: list[bool] = []

    def recording(gm, example_inputs):
        values = [node.meta.get("example_value") for node in gm.graph.find_nodes(op="placeholder")]
        symbolic.append(any(isinstance(v, torch.SymInt) or isinstance(v, torch.Tensor)
                            and any(isinstance(d, torch.SymInt) for d in v.shape) for v in values))
        return gm.forward

    trace_engine_compiles(monkeypatch, recording)
    for width, height in ((64, 64), (96, 64)):
        DraftModel(test_pack, "torch", cache_dir=cache_dir, text=text_encoder, device="cpu", compile=True,
                   width=width, height=height).warmup()
    assert len(symbolic) >= 4 and not any(symbolic)  # both models' denoiser and decoder, each static
