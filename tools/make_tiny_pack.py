"""Build the embedded draft pack, previz-tiny: deterministic, seeded and UNTRAINED.

Until the backlot pack (trained by the project) replaces it, this pack keeps
every path runnable on a laptop CPU.  Its drafts are structured noise, and it
says so: the manifest, the CLI and every written take label it "untrained".

    python tools/make_tiny_pack.py            # into $PREVIZ_HOME/packs/previz-tiny
    python tools/make_tiny_pack.py --out DIR
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from previz.pack_builder import build_draft_pack
from previz.packs import DraftDefaults, LatentLayout, load_pack, pack_search_dirs

PACK_ID = "previz-tiny"

# Wan 2.1's latent layout (16 channels, 4x8x8) so the stock WanPipeline can run
# the same denoiser weights in tools/bench_draft.py; the latent *space* is the
# pack's own, because its decoder is not the Wan VAE.
LATENT = LatentLayout(space="previz-tiny-v0", channels=16, temporal=4, spatial=8, causal_first_frame=False)
DRAFT = DraftDefaults(
    width=256, height=144, fps=30, steps=2, shift=5.0, guidance=1.0,
    context_frames=1, window_frames=4, max_seconds=20.0, size_multiple=16,
)
# ~4M parameters: sized so that 2 CPU cores draft faster than real time.
TRANSFORMER = dict(
    patch_size=(1, 2, 2), num_attention_heads=6, attention_head_dim=32, freq_dim=64,
    ffn_dim=768, num_layers=6, rope_max_seq_len=1024,
)
DECODER = dict(
    encoder_block_out_channels=(32, 32, 32, 32), decoder_block_out_channels=(32, 32, 32, 32),
    num_encoder_blocks=(1, 1, 1, 1), num_decoder_blocks=(1, 1, 1, 1),
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=pack_search_dirs()[-1] / PACK_ID)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    build_draft_pack(
        args.out, pack_id=PACK_ID, latent=LATENT, draft=DRAFT, transformer=TRANSFORMER, decoder=DECODER,
        text_tokens=64, seed=args.seed, trained=False,
        description="Deterministic seeded weights, UNTRAINED: drafts are noise until the backlot pack lands.",
    )
    pack = load_pack(str(args.out))  # proves it loads and its hashes hold
    size = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file())
    print(f"built {pack.id} ({pack.label}) in {args.out}: {size / 1e6:.1f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
