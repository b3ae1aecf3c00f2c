"""The draft pack's two graphs, denoiser and decoder, with the I/O contract every engine runs.

denoiser: latents [1, C, F, h, w], timesteps [1, F*h*w/patch] (per token, 0..1000),
          text [1, L, D], for camera packs camera [1, 6*T, F, h, w], and for
          control packs control [1, K, F, h, w]  ->  velocity [1, C, F, h, w]
decoder:  latents [1, C, h, w] (one latent frame)  ->  frames [T, H, W, 3] in [0, 1]

The decoder is frame-wise (the TAEHV pattern): one latent frame at a time, so
the first picture leaves as soon as the first latent frame is denoised.  Its
output channels hold ``T`` RGB frames side by side (channel = frame * 3 + rgb);
the graph unfolds them into frames.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from engines.graphs import Graph
from previz.errors import PackError
from previz.packs import Pack, load_component
from previz.wan_onnx import onnx_friendly

SUPPORTED_CONDITIONING = ("text", "context", "camera", "control")
CAMERA_KINDS = ("plucker",)
# Control videos a denoiser can take as extra channels.  "blockout" is the
# scene renderer's G-buffer (depth code + flat albedo), rendered at 1/scale of
# the pixel size and pixel-unshuffled to latent resolution.  A depth video
# encoded by the pack's VAE (Wan Fun Control, VACE) is the next kind on this seam.
CONTROL_KINDS = ("blockout",)


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


@dataclass(frozen=True)
class ControlSpec:
    """The manifest's ``conditioning.control``: what control video the denoiser reads."""

    kind: str
    scale: int  # rendered at 1/scale of the pixel size, then pixel-unshuffled by spatial/scale
    channels: int  # per latent frame, as the denoiser takes them


def control_spec(pack: Pack) -> ControlSpec | None:
    """The pack's control conditioning, checked against its latent layout (None: it takes none)."""
    control = pack.conditioning.get("control")
    if not control:
        return None
    if not isinstance(control, dict) or control.get("kind") not in CONTROL_KINDS:
        kind = control.get("kind") if isinstance(control, dict) else control
        raise PackError(f"pack {pack.id!r}: control conditioning {kind!r} is not one of {CONTROL_KINDS}")
    from previz.blockout import control_channels

    scale, channels = control.get("scale"), control.get("channels")
    spatial = pack.latent.spatial
    if not isinstance(scale, int) or isinstance(scale, bool) or scale < 1 or spatial % scale:
        raise PackError(f"pack {pack.id!r}: control scale {scale!r} must be a positive divisor of {spatial}")
    expected = control_channels(pack.latent.temporal, spatial, scale)
    if channels != expected:
        raise PackError(f"pack {pack.id!r}: a blockout control at scale {scale} has {expected} channels, "
                        f"the manifest says {channels!r}")
    return ControlSpec(kind=str(control["kind"]), scale=scale, channels=expected)


def camera_channels(pack: Pack) -> int:
    """Channels of camera conditioning the pack's denoiser takes (0: none)."""
    camera = pack.conditioning.get("camera")
    if not camera:
        return 0
    if camera.get("kind") not in CAMERA_KINDS:
        raise PackError(f"pack {pack.id!r}: camera conditioning {camera.get('kind')!r} is not one of {CAMERA_KINDS}")
    return 6 * pack.latent.temporal


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


def check_conditioning(pack: Pack) -> None:
    extra = sorted(k for k, v in pack.conditioning.items() if v and k not in SUPPORTED_CONDITIONING)
    if extra:
        raise PackError(
            f"pack {pack.id!r} needs {', '.join(extra)} conditioning, which this version of previz "
            f"does not provide yet (it provides: {', '.join(SUPPORTED_CONDITIONING)})",
            field="pack",
            value=pack.id,
        )


def tokens_per_frame(transformer: Any, latent_h: int, latent_w: int) -> int:
    _, p_h, p_w = transformer.config.patch_size
    return (latent_h // p_h) * (latent_w // p_w)


def build_denoiser_graph(pack: Pack, width: int, height: int, *, text_tokens: int, text_dim: int) -> tuple[Graph, int]:
    """The denoiser graph at one draft size, and its tokens per latent frame."""
    check_conditioning(pack)
    assert pack.draft is not None
    transformer = load_component(pack, "denoiser")
    layout = pack.latent
    cam = camera_channels(pack)
    spec = control_spec(pack)
    ctl = spec.channels if spec else 0
    if ctl and not cam:
        raise PackError(f"pack {pack.id!r}: control conditioning needs camera conditioning too (channel order)")
    if transformer.config.in_channels != layout.channels + cam + ctl:
        raise PackError(
            f"pack {pack.id!r}: denoiser takes {transformer.config.in_channels} channels, the latent layout, "
            f"camera and control conditioning say {layout.channels} + {cam} + {ctl}"
        )
    lat_h, lat_w = layout.latent_size(width, height)
    frames = pack.draft.window_frames
    tokens = tokens_per_frame(transformer, lat_h, lat_w)
    module = (ControlDenoiserGraph if ctl else CameraDenoiserGraph if cam else DenoiserGraph)(transformer).eval()
    inputs = {
        "latents": (1, layout.channels, frames, lat_h, lat_w),
        "timesteps": (1, frames * tokens),
        "text": (1, text_tokens, text_dim),
    }
    if cam:
        inputs["camera"] = (1, cam, frames, lat_h, lat_w)
    if ctl:
        inputs["control"] = (1, ctl, frames, lat_h, lat_w)
    graph = Graph(
        name="denoiser",
        module=module,
        inputs=inputs,
        output="velocity",
        source_sha256=_source_hash(pack, "denoiser"),
        dtypes=dict.fromkeys(inputs, "float32"),
        exact=("timesteps",),  # 0..1000: bf16 rounds 999 to 1000; Wan's time embedder runs in fp32 anyway
        for_export=lambda opset: onnx_friendly(module, opset),
    )
    return graph, tokens


def build_decoder_graph(pack: Pack, width: int, height: int) -> Graph:
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
