"""The draft pack's two graphs, denoiser and decoder, with the I/O contract every engine runs.

denoiser: latents [1, C, F, h, w], timesteps [1, F*h*w/patch] (per token, 0..1000, constant within
          a latent frame: the time embedding and modulation run per frame, ``previz.frame_timesteps``),
          text [1, L, D], for camera packs camera [1, 6*T, F, h, w], and for
          control packs control [1, K, F, h, w]  ->  velocity [1, C, F, h, w]
decoder:  latents [1, C, h, w] (one latent frame)  ->  frames [T, H, W, 3] in [0, 1]

The decoder is frame-wise (the TAEHV pattern): one latent frame at a time, so
the first picture leaves as soon as the first latent frame is denoised.  Its
output channels hold ``T`` RGB frames side by side (channel = frame * 3 + rgb);
the graph unfolds them into frames.  An imported Wan checkpoint has no such
graph: it decodes with its own VAE, streamed (``previz.frame_decoder``).

The conditioning a denoiser takes is read from the pack's typed sections
(``previz.packs.Conditioning``), parsed once with the manifest.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from engines.graphs import Graph
from previz.causal_context import CachedStep, ContextPass, ContextSlot, WholeWindow, install
from previz.errors import PackError
from previz.frame_timesteps import install as embed_time_per_frame
from previz.packs import ControlConditioning, Pack, load_component
from previz.wan_onnx import onnx_friendly

# The denoiser graphs' code revision (engines.graphs.Graph.revision), so that ONNX exports cached before a
# change of the graph's code are made again: "frame-modulation" since the time embedding and the blocks'
# modulation run once a latent frame (previz.frame_timesteps).
DENOISER_REVISION = "frame-modulation"


class DenoiserGraph(nn.Module):
    def __init__(self, transformer: Any) -> None:
        super().__init__()
        self.transformer = transformer

    def forward(self, latents: torch.Tensor, timesteps: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        return self.transformer(latents, timesteps, text, return_dict=False)[0]


class CameraDenoiserGraph(DenoiserGraph):
    """Camera as extra input channels (as Wan I2V concatenates its image latents)."""

    def forward(  # type: ignore[override]
        self, latents: torch.Tensor, timesteps: torch.Tensor, text: torch.Tensor, camera: torch.Tensor
    ) -> torch.Tensor:
        return self.transformer(torch.cat([latents, camera], dim=1), timesteps, text, return_dict=False)[0]


class ControlDenoiserGraph(DenoiserGraph):
    """Camera and a control video as extra input channels, in that order."""

    def forward(  # type: ignore[override]
        self, latents: torch.Tensor, timesteps: torch.Tensor, text: torch.Tensor, camera: torch.Tensor,
        control: torch.Tensor,
    ) -> torch.Tensor:
        x = torch.cat([latents, camera, control], dim=1)
        return self.transformer(x, timesteps, text, return_dict=False)[0]


def control_spec(pack: Pack) -> ControlConditioning | None:
    """The pack's control conditioning, checked against the scene renderer's channels (None: it takes none)."""
    control = pack.conditioning.control
    if control is None:
        return None
    from previz.blockout import control_channels  # the renderer (and torch) only for packs that need it

    expected = control_channels(pack.latent.temporal, pack.latent.spatial, control.scale)
    if control.channels != expected:
        raise PackError(f"pack {pack.id!r}: a blockout control at scale {control.scale} has {expected} channels, "
                        f"the manifest says {control.channels!r}")
    return control


def camera_channels(pack: Pack) -> int:
    """Channels of camera conditioning the pack's denoiser takes (0: none)."""
    camera = pack.conditioning.camera
    return camera.channels if camera else 0


class DecoderGraph(nn.Module):
    def __init__(self, autoencoder: Any, temporal: int) -> None:
        super().__init__()
        self.decoder = autoencoder.decoder
        self.temporal = temporal
        self.scaling_factor = float(getattr(autoencoder.config, "scaling_factor", 1.0))

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        x = self.decoder(latents / self.scaling_factor)  # [N, 3*T, H, W] in [-1, 1]
        n, _, height, width = x.shape
        x = x.reshape(n, self.temporal, 3, height, width).permute(0, 1, 3, 4, 2)
        return ((x.reshape(n * self.temporal, height, width, 3) + 1.0) * 0.5).clamp(0.0, 1.0)


def _source_hash(pack: Pack, component: str) -> str:
    blob = json.dumps(
        {"pack": pack.id, "component": component, "sha256": pack.component(component).sha256}, sort_keys=True
    )
    return hashlib.sha256(blob.encode()).hexdigest()


def tokens_per_frame(transformer: Any, latent_h: int, latent_w: int) -> int:
    _, p_h, p_w = transformer.config.patch_size
    return (latent_h // p_h) * (latent_w // p_w)


@dataclass(frozen=True)
class DenoiserGraphs:
    """The denoiser's graphs at one draft size, all on one set of weights.

    ``window`` runs a whole window: a take's first, and every window of a bidirectional student.  A
    block-causal student (``previz.causal_context``) runs each later window as one ``context`` pass, which
    turns the context frames into every layer's keys and values, then ``cached`` steps over the new frames,
    which take those keys and values as their last input.
    """

    window: Graph
    tokens_per_frame: int
    context: Graph | None = None
    cached: Graph | None = None
    slot: ContextSlot | None = None  # what the three say to the torch module they share


def build_denoiser_graph(pack: Pack, width: int, height: int, *, text_tokens: int, text_dim: int,
                         dtype: torch.dtype | None = None) -> DenoiserGraphs:
    """The denoiser's graphs at one draft size.

    ``dtype`` loads the weights at a torch engine's precision (diffusers' fp32-kept modules stay fp32):
    without it diffusers loads fp32, twice a bf16 checkpoint's size in host memory (20 GB for a
    Wan2.2-TI2V-5B-sized student).  The ONNX exports need the fp32 load, so they pass none.
    """
    assert pack.draft is not None
    transformer = load_component(pack, "denoiser", **({"torch_dtype": dtype} if dtype is not None else {}))
    layout = pack.latent
    cam = camera_channels(pack)
    spec = control_spec(pack)
    ctl = spec.channels if spec else 0
    if transformer.config.in_channels != layout.channels + cam + ctl:
        raise PackError(
            f"pack {pack.id!r}: denoiser takes {transformer.config.in_channels} channels, the latent layout, "
            f"camera and control conditioning say {layout.channels} + {cam} + {ctl}"
        )
    lat_h, lat_w = layout.latent_size(width, height)
    tokens = tokens_per_frame(transformer, lat_h, lat_w)
    embed_time_per_frame(transformer, tokens)  # the sampler's timesteps are constant within a latent frame
    context = pack.conditioning.context
    slot = install(transformer) if context is not None and context.cached else None
    module: nn.Module = (ControlDenoiserGraph if ctl else CameraDenoiserGraph if cam else DenoiserGraph)(transformer)
    module = module.eval()
    source = _source_hash(pack, "denoiser")

    def inputs(frames: int) -> dict[str, tuple[int, ...]]:
        shapes = {
            "latents": (1, layout.channels, frames, lat_h, lat_w),
            "timesteps": (1, frames * tokens),
            "text": (1, text_tokens, text_dim),
        }
        if cam:
            shapes["camera"] = (1, cam, frames, lat_h, lat_w)
        if ctl:
            shapes["control"] = (1, ctl, frames, lat_h, lat_w)
        return shapes

    def graph(name: str, graph_module: nn.Module, shapes: dict[str, tuple[int, ...]], output: str,
              **extra: Any) -> Graph:
        return Graph(
            name=name,
            module=graph_module,
            inputs=shapes,
            output=output,
            source_sha256=source,
            dtypes=dict.fromkeys(shapes, "float32"),
            exact=("timesteps",),  # 0..1000: bf16 rounds 999 to 1000; Wan's time embedder runs in fp32 anyway
            revision=DENOISER_REVISION,
            **extra,
        )

    frames = pack.draft.window_frames
    if slot is None:
        return DenoiserGraphs(graph("denoiser", module, inputs(frames), "velocity",
                                    for_export=lambda opset: onnx_friendly(module, opset)), tokens)
    ctx = pack.draft.context_frames
    kv = (len(transformer.blocks), 2, 1, ctx * tokens, transformer.blocks[0].attn1.inner_dim)
    whole, context_pass = WholeWindow(module, slot), ContextPass(module, slot)
    cached_step = CachedStep(module, slot, ctx)
    return DenoiserGraphs(
        window=graph("denoiser", whole.eval(), inputs(frames), "velocity",
                     for_export=lambda opset: onnx_friendly(whole, opset)),
        tokens_per_frame=tokens,
        context=graph("denoiser_context", context_pass.eval(), inputs(ctx), "kv",
                      for_export=lambda opset: onnx_friendly(context_pass, opset)),
        cached=graph("denoiser_cached", cached_step.eval(), {**inputs(frames - ctx), "kv": kv}, "velocity",
                     for_export=lambda opset: onnx_friendly(cached_step, opset)),
        slot=slot,
    )


def build_decoder_graph(pack: Pack, width: int, height: int) -> Graph:
    if pack.component("decoder").cls != "AutoencoderTiny":
        raise PackError(f"pack {pack.id!r}: its decoder is a {pack.component('decoder').cls}, which previz streams "
                        "(previz.vae_stream) rather than running as a frame-wise graph")
    layout = pack.latent
    autoencoder = load_component(pack, "decoder")
    expected = 3 * layout.temporal
    if autoencoder.config.out_channels != expected or autoencoder.config.latent_channels != layout.channels:
        raise PackError(
            f"pack {pack.id!r}: the draft decoder must map {layout.channels} latent channels to "
            f"{expected} output channels ({layout.temporal} RGB frames), it maps "
            f"{autoencoder.config.latent_channels} to {autoencoder.config.out_channels}"
        )
    cfg = autoencoder.config
    upsampling = cfg.upsampling_scaling_factor ** (len(cfg.num_decoder_blocks) - 1)
    if upsampling != layout.spatial:
        raise PackError(
            f"pack {pack.id!r}: the draft decoder upsamples {upsampling}x, the latent layout says {layout.spatial}x"
        )
    lat_h, lat_w = layout.latent_size(width, height)
    return Graph(
        name="decoder",
        module=DecoderGraph(autoencoder, layout.temporal).eval(),
        inputs={"latents": (1, layout.channels, lat_h, lat_w)},
        output="frames",
        source_sha256=_source_hash(pack, "decoder"),
        dtypes={"latents": "float32"},
    )
