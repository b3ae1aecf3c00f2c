"""Build the embedded draft pack, previz-tiny: deterministic, seeded and UNTRAINED.

Until the backlot pack (trained by the project) replaces it, this pack keeps
every path runnable on a laptop CPU.  Its drafts are structured noise, and it
says so: the manifest, the CLI and every written take label it "untrained".
The CLI builds it on first use as well; this script rebuilds it on demand.

    python tools/make_tiny_pack.py            # into $PREVIZ_HOME/packs/previz-tiny
    python tools/make_tiny_pack.py --out DIR
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from previz.pack_builder import TINY_PACK_ID, build_tiny_pack
from previz.packs import load_pack, user_packs_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build the embedded (untrained) previz-tiny pack.")
    parser.add_argument("--out", type=Path, default=user_packs_dir() / TINY_PACK_ID)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    build_tiny_pack(args.out, seed=args.seed)
    pack = load_pack(str(args.out))  # proves it loads and its hashes hold
    size = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file())
    print(f"built {pack.id} ({pack.label}) in {args.out}: {size / 1e6:.1f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
