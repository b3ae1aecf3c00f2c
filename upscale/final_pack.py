"""Writing final packs: two Wan experts, a Wan VAE and a text encoder, saved with ``save_pretrained``.

The embedded final pack, ``previz-final-tiny``, is what ``previz drafts promote``
renders with out of the box on a CPU.  It is built from the real diffusers
classes (two ``WanTransformer3DModel`` experts, ``AutoencoderKLWan``) at a size
two CPU cores render in seconds, with seeded weights: it is **UNTRAINED** and
says so in its manifest, in every job and in every delivery file, until the
project's trained pack replaces it.  It loads through ``previz.packs.load_pack``
and ``load_component`` exactly as a real Wan 2.2 A14B checkpoint directory
would.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from previz.atomic import atomic_dir
from previz.errors import PackError, UnknownPackError
from previz.pack_builder import MINILM_DIM, ensure_pack, install_lock, minilm_component
from previz.packs import (
    MANIFEST_NAME,
    CameraConditioning,
    Component,
    Conditioning,
    FinalDefaults,
    LatentLayout,
    Pack,
    TextConditioning,
    hash_component_dir,
    load_pack,
    write_manifest,
)

FINAL_PACK_ID = "previz-final-tiny"
# The Wan VAE's own layout (16 channels, 4x8x8, causal first frame).  The space is the
# pack's own: its seeded VAE is not Wan 2.1's, so no draft pack shares it by accident.
FINAL_LATENT = LatentLayout(space="previz-final-tiny-v0", channels=16, temporal=4, spatial=8,
                            causal_first_frame=True)
# shift 12 as Wan 2.2 A14B samples: at strength 0.6 both experts get steps.
FINAL_DEFAULTS = FinalDefaults(width=256, height=144, fps=30, steps=6, shift=12.0, guidance=1.0, guidance_2=1.0,
                               size_multiple=16, text_tokens=64)
FINAL_BOUNDARY = 0.875  # Wan 2.2 A14B T2V's boundary_ratio
FINAL_TRANSFORMER: dict[str, Any] = dict(
    patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=16, freq_dim=32, ffn_dim=64, num_layers=2,
    rope_max_seq_len=1024,
)
# diffusers' own test configuration for AutoencoderKLWan: real causal 3D convs and cache, tiny widths.
FINAL_VAE: dict[str, Any] = dict(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                                 temperal_downsample=[False, True, True])


def build_final_pack(
    root: Path,
    *,
    pack_id: str = FINAL_PACK_ID,
    latent: LatentLayout = FINAL_LATENT,
    defaults: FinalDefaults = FINAL_DEFAULTS,
    boundary_ratio: float = FINAL_BOUNDARY,
    transformer: dict[str, Any] | None = None,
    vae: dict[str, Any] | None = None,
    camera: bool = True,
    seed: int = 100,
    description: str = "",
) -> Pack:
    """Build a final pack with seeded (UNTRAINED) weights in ``root``, replacing the pack there."""
    from diffusers import AutoencoderKLWan, WanTransformer3DModel

    final_root = Path(root)
    if final_root.exists() and any(final_root.iterdir()) and not (final_root / MANIFEST_NAME).is_file():
        raise PackError(f"refusing to build a pack into {final_root}: it holds files and is not a pack")
    camera_channels = 6 * latent.temporal if camera else 0  # Plücker rays, as the draft packs take them
    with install_lock(final_root), atomic_dir(final_root) as tmp:
        for i, name in enumerate(("transformer", "transformer_2")):
            torch.manual_seed(seed + i)
            expert: Any = WanTransformer3DModel(
                in_channels=latent.channels + camera_channels, out_channels=latent.channels, text_dim=MINILM_DIM,
                **(transformer or FINAL_TRANSFORMER),
            )
            expert.save_pretrained(tmp / name, safe_serialization=True)
        torch.manual_seed(seed + 2)
        autoencoder: Any = AutoencoderKLWan(**(vae or FINAL_VAE))
        if autoencoder.config.z_dim != latent.channels:
            raise PackError(f"the VAE's z_dim {autoencoder.config.z_dim} != latent channels {latent.channels}")
        autoencoder.save_pretrained(tmp / "vae", safe_serialization=True)
        components = {
            name: Component(name, "WanTransformer3DModel", name, hash_component_dir(tmp / name))
            for name in ("transformer", "transformer_2")
        }
        components["vae"] = Component("vae", "AutoencoderKLWan", "vae", hash_component_dir(tmp / "vae"))
        components["text_encoder"] = minilm_component()
        pack = Pack(
            id=pack_id, kind="final", root=tmp, latent=latent, components=components, trained=False,
            label="untrained",
            description=description or "Seeded Wan-shaped experts and VAE, UNTRAINED: finals are noise "
                                       "until the trained pack lands.",
            conditioning=Conditioning(
                text=TextConditioning(encoder="all-MiniLM-L6-v2", dim=MINILM_DIM, tokens=defaults.text_tokens),
                camera=CameraConditioning(kind="plucker", channels=camera_channels) if camera else None,
            ),
            boundary_ratio=boundary_ratio,
            final=defaults,
        )
        write_manifest(pack)
    return dataclasses.replace(pack, root=final_root)


def ensure_final_pack(target: Path, say: Any = print) -> Pack:
    """The embedded final pack at ``target``, built once even when several processes start together."""
    return ensure_pack(target, build_final_pack, FINAL_PACK_ID, say)


def open_final_pack(ref: str, say: Any = print) -> Pack:
    """Load a final pack; the embedded default is built on first use instead of failing."""
    from previz.packs import user_packs_dir

    try:
        pack = load_pack(ref)
    except UnknownPackError:
        if ref != FINAL_PACK_ID:
            raise
        pack = ensure_final_pack(user_packs_dir() / FINAL_PACK_ID, say)
    if pack.kind != "final":
        raise PackError(f"pack {pack.id!r} is a {pack.kind} pack; a final render needs a final pack",
                        field="pack", value=ref)
    if pack.final is None:
        raise PackError(f"final pack {pack.id!r} has no 'final' section (sampling defaults)", field="pack",
                        value=ref)
    return pack


# --------------------------------------------------------------------------- VSR packs

VSR_PACK_ID = "previz-vsr-compact-untrained"
# A VSR pack works on pixels: its "latent" layout is the picture itself.
PIXELS = LatentLayout(space="pixels-rgb", channels=3, temporal=1, spatial=1)
# The Real-ESRGAN animevideov3 shape is SRVGGNetCompact(num_feat=64, num_conv=16, upscale=4); a test or a
# CPU bench passes a smaller one.
COMPACT: dict[str, Any] = dict(num_feat=64, num_conv=16)


def build_vsr_pack(root: Path, *, pack_id: str = VSR_PACK_ID, arch: str = "SRVGGNetCompact", scale: int = 4,
                   temporal_window: int = 3, config: dict[str, Any] | None = None, seed: int = 300,
                   state_dict: dict[str, torch.Tensor] | None = None, trained: bool = False,
                   label: str = "untrained", description: str = "") -> Pack:
    """Write a VSR pack: one Real-ESRGAN-family network as a safetensors state dict, and its manifest.

    ``state_dict`` is a trained network's weights (say, a Real-ESRGAN release
    converted to safetensors); without it the network gets seeded random
    weights and the pack says ``trained: false``.  Either way the weights are
    written as the state dict spandrel detects, and load back through
    :func:`upscale.vsr.load_vsr_pack` as any published file would.
    """
    import safetensors.torch

    from upscale.vsr import import_spandrel

    if state_dict is None and trained:
        raise PackError("a pack with seeded random weights is never trained", field="trained", value=True)
    root = Path(root)
    if root.exists() and any(root.iterdir()) and not (root / MANIFEST_NAME).is_file():
        raise PackError(f"refusing to build a pack into {root}: it holds files and is not a pack")
    if state_dict is None:
        import_spandrel()
        torch.manual_seed(seed)
        if arch == "SRVGGNetCompact":
            from spandrel.architectures.Compact import Compact

            net: torch.nn.Module = Compact(upscale=scale, **(config or COMPACT))
        elif arch == "RRDBNet":
            from spandrel.architectures.ESRGAN import ESRGAN

            net = ESRGAN(scale=scale, **(config or {}))
        else:
            raise PackError(f"arch = {arch!r}: expected SRVGGNetCompact or RRDBNet", field="arch", value=arch)
        state_dict = net.state_dict()
    with install_lock(root), atomic_dir(root) as tmp:
        (tmp / "upscaler").mkdir()
        tensors = {k: v.detach().contiguous() for k, v in state_dict.items()}
        safetensors.torch.save_file(tensors, str(tmp / "upscaler" / "model.safetensors"))
        pack = Pack(
            id=pack_id, kind="vsr", root=tmp, latent=PIXELS, trained=trained, label=label,
            components={"upscaler": Component("upscaler", arch, "upscaler", hash_component_dir(tmp / "upscaler"))},
            description=description or (f"{arch} x{scale}" + ("" if trained else
                                        ", seeded random weights, UNTRAINED: not a real upscaler")),
            scale=scale, temporal_window=temporal_window,
        )
        write_manifest(pack)
    return dataclasses.replace(pack, root=root)
