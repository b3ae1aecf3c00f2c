"""A block-causal student: its context's keys and values computed once per window (previz.causal_context).

The split (one context pass, then steps over the new frames alone) must give the new frames the numbers a
whole window gives under the block-causal mask that training uses; a take must run it end to end and resume.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from conftest import TEST_PACK, TEST_TRANSFORMER, make_test_pack, traced_take

from previz.causal_context import block_causal_mask, install
from previz.draft_graphs import build_denoiser_graph
from previz.errors import PackError
from previz.packs import MANIFEST_NAME, load_pack
from previz.recipe import Recipe

CAUSAL_PACK = f"{TEST_PACK}-block-causal"


@pytest.fixture(scope="module")
def causal_pack(tmp_path_factory):
    import os
    from pathlib import Path

    make_test_pack(Path(os.environ["PREVIZ_PACKS"]) / CAUSAL_PACK, pack_id=CAUSAL_PACK, seed=3,
                   context_attention="block-causal")
    return load_pack(CAUSAL_PACK)


@pytest.fixture(scope="module")
def graphs(causal_pack):
    return build_denoiser_graph(causal_pack, 64, 32, text_tokens=16, text_dim=384)


def window_inputs(graphs, ctx: int, sigma: float = 0.7, seed: int = 0) -> dict[str, torch.Tensor]:
    """Whole-window inputs with the first ``ctx`` frames clean (timestep 0), the rest at ``sigma``."""
    inputs = graphs.window.example_inputs(seed=seed)
    frames = inputs["latents"].shape[2]
    levels = torch.tensor([0.0] * ctx + [sigma] * (frames - ctx))
    inputs["timesteps"] = (levels * 1000).repeat_interleave(graphs.tokens_per_frame)[None]
    return inputs


def split(inputs: dict[str, torch.Tensor], ctx: int, tokens: int) -> tuple[dict, dict]:
    """The window's inputs cut into the context's and the new frames'."""
    head, tail = {}, {}
    for name, value in inputs.items():
        if name == "text":
            head[name] = tail[name] = value
        elif name == "timesteps":
            head[name], tail[name] = value[:, : ctx * tokens], value[:, ctx * tokens:]
        else:
            head[name], tail[name] = value[:, :, :ctx], value[:, :, ctx:]
    return head, tail


@torch.inference_mode()
def test_the_cached_step_equals_a_whole_window_under_the_block_causal_mask(graphs):
    ctx, tokens = 1, graphs.tokens_per_frame
    inputs = window_inputs(graphs, ctx)
    head, tail = split(inputs, ctx, tokens)
    kv = graphs.context.module(*head.values())
    cached = graphs.cached.module(*tail.values(), kv)

    whole = graphs.window.module  # WholeWindow: the denoiser and its slot
    frames = inputs["latents"].shape[2]
    whole.slot.use("masked", mask=block_causal_mask(torch.tensor([ctx]), frames, tokens))
    masked = whole.denoiser(*inputs.values())[:, :, ctx:]
    bidirectional = whole(*inputs.values())[:, :, ctx:]  # every token sees every other

    assert kv.shape == graphs.cached.inputs["kv"]
    assert torch.allclose(cached, masked, atol=1e-5, rtol=1e-4), (cached - masked).abs().max()
    # The mask is what makes the two agree: a bidirectional window gives other numbers.
    assert (bidirectional - masked).abs().max() > 1e-3


@torch.inference_mode()
def test_full_mode_computes_what_stock_diffusers_computes(causal_pack):
    from previz.packs import load_component

    stock = load_component(causal_pack, "denoiser").eval()
    ours = copy.deepcopy(stock)
    install(ours)
    x = torch.randn(1, stock.config.in_channels, 3, 4, 8, generator=torch.Generator().manual_seed(1))
    t = torch.full((1, 3 * 8), 500.0)
    text = torch.randn(1, 16, 384, generator=torch.Generator().manual_seed(2))
    assert torch.equal(ours(x, t, text, return_dict=False)[0], stock(x, t, text, return_dict=False)[0])


@torch.inference_mode()
def test_the_new_frames_need_their_place_after_the_context(graphs):
    """The rotary positions carry the offset: the same step placed at the window's start gives other numbers."""
    ctx, tokens = 1, graphs.tokens_per_frame
    head, tail = split(window_inputs(graphs, ctx), ctx, tokens)
    kv = graphs.context.module(*head.values())
    step = graphs.cached.module
    right = step(*tail.values(), kv)
    step.context_frames = 0
    try:
        wrong = step(*tail.values(), kv)
    finally:
        step.context_frames = ctx
    assert (right - wrong).abs().max() > 1e-4


def test_block_causal_mask_lets_the_context_see_only_itself():
    mask = block_causal_mask(torch.tensor([1, 0]), frames=3, tokens_per_frame=2)[:, 0]
    assert mask.shape == (2, 6, 6)
    assert mask[0, :2, :2].all() and not mask[0, :2, 2:].any()  # context queries: context keys only
    assert mask[0, 2:].all()  # new frames see the whole window
    assert mask[1].all()  # no context: every token sees every other


def test_the_slot_refuses_keys_and_values_that_do_not_fit_before_it_changes(graphs):
    slot = graphs.slot
    layers = len(slot.layers)
    with pytest.raises(ValueError, match=f"for {layers + 1} layers, the transformer has {layers}"):
        slot.use("attend", kv=torch.zeros(layers + 1, 2, 1, 4, 8))
    with pytest.raises(ValueError, match="in attend mode, and only there"):
        slot.use("record", kv=torch.zeros(layers, 2, 1, 4, 8))
    with pytest.raises(ValueError, match="choose one of"):
        slot.use("attnd")
    assert slot.mode == "full" and all(layer.kv is None for layer in slot.layers)


def test_a_take_runs_the_context_once_per_window_and_resumes(causal_pack, cache_dir, text_encoder):
    from previz.take import DraftModel, Take, TakeStats

    model = DraftModel(causal_pack, "torch", cache_dir=cache_dir, text=text_encoder, device="cpu")
    recipe = Recipe(prompt="a red cube", seed=5, seconds=1.0, camera={"preset": "orbit_left"})
    stats = TakeStats()
    latents: list[torch.Tensor] = []
    frames = list(model.generate(recipe, stats=stats, on_chunk=lambda _c, kept: latents.append(torch.from_numpy(kept))))

    take = Take(model, recipe)
    steps, windows = len(take.sigmas) - 1, len(take.chunks)
    assert windows > 2 and len(frames) == take.total_frames
    assert stats.context_calls == windows - 1  # every window after the first
    assert stats.denoiser_calls == steps * windows
    assert model.engine_info()["denoiser"]["context"].startswith("block-causal")

    # Resumed from its state after the second window, the take makes the same latents.
    take.step(), take.step()
    resumed = Take(model, recipe, state=take.state)
    rest = []
    while not resumed.done:
        rest.append(torch.from_numpy(resumed.step().latents.wait().numpy()))
    assert all(torch.equal(a, b) for a, b in zip(latents[2:], rest, strict=True))


def test_a_cached_take_makes_the_latents_of_whole_windows_under_the_mask(tmp_path, cache_dir, text_encoder,
                                                                           monkeypatch):
    """The take-level reference, on a pack with camera *and* blockout control: the same take run as whole
    windows under the block-causal mask (the cached path switched off) makes the same latents.  So the
    context's conditioning, timesteps and keys reach the right frames; guidance runs one pass per prompt."""
    from conftest import TEST_DRAFT, TEST_LATENT

    from previz.causal_context import WholeWindow
    from previz.pack_builder import build_draft_pack
    from previz.take import DraftModel

    pack = build_draft_pack(tmp_path / "ctl", pack_id="ctl", latent=TEST_LATENT, draft=TEST_DRAFT,
                            transformer=TEST_TRANSFORMER, decoder_channels=8, text_tokens=16, seed=7,
                            control_scale=2, context_attention="block-causal")
    recipe = Recipe(prompt="two red boxes left of a blue pillar on sand", seed=9, seconds=1.0,
                    camera={"preset": "orbit_left"}, guidance=2.0, negative_prompt="fog")

    def take(model: DraftModel) -> torch.Tensor:
        kept: list[torch.Tensor] = []
        list(model.generate(recipe, on_chunk=lambda _c, k: kept.append(torch.from_numpy(k))))
        return torch.cat(kept, dim=2)

    cached = DraftModel(pack, "torch", cache_dir=cache_dir, text=text_encoder, device="cpu")
    ours = take(cached)

    def masked_window(self, *inputs):  # the context: the leading frames at timestep 0
        timesteps, frames = inputs[1], inputs[0].shape[2]
        tokens = timesteps.shape[1] // frames
        ctx = int((timesteps[0].view(frames, tokens)[:, 0] == 0).sum())
        self.slot.use("masked", mask=block_causal_mask(torch.tensor([ctx]), frames, tokens))
        return self.denoiser(*inputs)

    monkeypatch.setattr(WholeWindow, "forward", masked_window)
    whole = DraftModel(pack, "torch", cache_dir=cache_dir, text=text_encoder, device="cpu")
    whole.cached_step = None  # every window as a whole one
    reference = take(whole)
    assert ours.shape == reference.shape and ours.shape[2] > 4  # several windows
    assert torch.allclose(ours, reference, atol=1e-4), (ours - reference).abs().max()


def test_onnx_runtime_runs_a_block_causal_take_as_torch_does(causal_pack, cache_dir, text_encoder):
    """Opset 23's native RotaryEmbedding and Attention ops, with the keys and values as a graph output and
    input: the same latents as torch's take."""
    from previz.take import DraftModel

    recipe = Recipe(prompt="a red cube", seed=5, seconds=1.0, camera={"preset": "orbit_left"})
    latents = {}
    for backend in ("torch", "onnxruntime"):
        model = DraftModel(causal_pack, backend, cache_dir=cache_dir, text=text_encoder, device="cpu")
        kept: list[torch.Tensor] = []
        list(model.generate(recipe, on_chunk=lambda _c, k, kept=kept: kept.append(torch.from_numpy(k))))
        latents[backend] = torch.cat(kept, dim=2)
        assert model.context_pass is not None and model.context_pass.info.backend == backend
    assert torch.allclose(latents["onnxruntime"], latents["torch"], atol=1e-4)


def test_tensorrt_s_onnx_of_the_cached_graphs_computes_what_torch_does(graphs, cache_dir):
    """TensorRT's export (opset 18, plain ops), checked where TensorRT cannot run: in ONNX Runtime."""
    import onnxruntime as ort

    from engines.export import OPSET, export_onnx

    ctx, tokens = 1, graphs.tokens_per_frame
    head, tail = split(window_inputs(graphs, ctx), ctx, tokens)
    with torch.inference_mode():
        kv = graphs.context.module(*head.values())
        velocity = graphs.cached.module(*tail.values(), kv)
    outputs = {}
    for graph, inputs in ((graphs.context, head), (graphs.cached, {**tail, "kv": kv})):
        session = ort.InferenceSession(str(export_onnx(graph, cache_dir, opset=OPSET)),
                                       providers=["CPUExecutionProvider"])
        outputs[graph.name] = session.run(None, {k: v.numpy() for k, v in inputs.items()})[0]
    assert np.allclose(outputs["denoiser_context"], kv.numpy(), atol=1e-4)
    assert np.allclose(outputs["denoiser_cached"], velocity.numpy(), atol=1e-4)


def test_an_unknown_context_attention_is_a_pack_error(tmp_path):
    import json

    root = make_test_pack(tmp_path / "p", pack_id="p", transformer=TEST_TRANSFORMER).root
    manifest = json.loads((root / MANIFEST_NAME).read_text())
    manifest["conditioning"]["context"]["attention"] = "sideways"
    (root / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(PackError, match="sideways"):
        load_pack(str(root))


def test_the_cli_drafts_a_block_causal_pack(causal_pack, tmp_path):
    from conftest import run_cli

    out = tmp_path / "take.mp4"
    result = run_cli("draft", "a red cube", "--pack", CAUSAL_PACK, "--seconds", "1", "--output", str(out),
                     "--no-store", "--quiet")
    assert result.returncode == 0, result.stderr
    assert out.stat().st_size > 0


def test_a_compiled_take_traces_each_graph_once(causal_pack, cache_dir, text_encoder, traced_eagerly):
    """The slot is set inside each graph's forward, so the warm-up's traces serve every window after it.

    Traced with dynamo's ``eager`` backend (the same guards, no inductor), so it runs in seconds on a CPU.
    """
    graphs, frames, after, _ = traced_take(causal_pack, cache_dir, text_encoder, traced_eagerly, seconds=1.0)
    assert graphs == 4  # the whole window, the context pass, the cached step and the decoder
    assert len(frames) == 30
    assert after == graphs  # nothing traced again in the take


def test_compiled_by_blocks_every_layer_shares_one_graph_per_window_kind(causal_pack, cache_dir, text_encoder,
                                                                         traced_eagerly):
    """Regional compilation: the layers hold their own keys and values, not an index into a shared cache,
    so dynamo traces the block once for each kind of call (the whole window, the context pass, the cached
    step) and every layer reuses it; a per-layer int would trace each layer again.  The take's frames are
    the eager take's."""
    from previz.take import DraftModel

    graphs, frames, after, model = traced_take(causal_pack, cache_dir, text_encoder, traced_eagerly, seconds=1.0,
                                               compile_scope="blocks")
    layers = len(model.denoiser_graph.module.denoiser.transformer.blocks)
    assert layers >= 2
    for _name, engine in model.engines()[:3]:  # the whole window, the context pass, the cached step
        assert engine.info.details["compile_scope"] == "blocks" and engine.info.details["compiled_blocks"] == layers
    assert graphs == 3 + 1  # the block in its three kinds of call, and the decoder (compiled whole)
    assert after == graphs  # nothing traced again in the take
    eager = DraftModel(causal_pack, "torch", cache_dir=cache_dir, text=text_encoder, device="cpu")
    expected = list(eager.generate(Recipe(prompt="a dolly past a diner", seed=1, seconds=1.0,
                                          camera={"preset": "dolly_in"})))
    assert len(frames) == len(expected) == 30
    diff = [np.abs(a.image.astype(int) - b.image.astype(int)).max() for a, b in zip(frames, expected, strict=True)]
    assert max(diff) <= 1


@pytest.mark.gpu
def test_on_cuda_compiled_equals_eager_and_a_cached_window_never_waits(causal_pack, cache_dir, text_encoder):
    from previz.take import DraftModel, Take

    eager = DraftModel(causal_pack, "torch", cache_dir=cache_dir, text=text_encoder, device="cuda", compile=False)
    compiled = DraftModel(causal_pack, "torch", cache_dir=cache_dir, text=text_encoder, device="cuda", compile=True)
    compiled.warmup()
    recipe = Recipe(prompt="a lighthouse at dusk", seed=5, seconds=1.0, camera={"preset": "orbit_left"})
    a, b = (np.stack([f.image for f in m.generate(recipe)]).astype(int) for m in (eager, compiled))
    assert a.shape == b.shape and np.abs(a - b).mean() <= 1.0  # fused bf16 kernels round differently

    eager.warmup()
    take = Take(eager, recipe)
    for _ in range(3):  # the whole first window, then two with a cached context
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            _, _, frames = take.step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
        assert len(list(frames)) > 0
