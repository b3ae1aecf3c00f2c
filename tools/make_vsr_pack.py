"""Make a VSR pack from a Real-ESRGAN-family network's safetensors file (SRVGGNetCompact or RRDBNet).

spandrel reads the state dict and says which network it is and its scale; the
pack records them, the temporal window and whether the weights are trained.
Published Real-ESRGAN weights are pickle files (``.pth``): convert them to
safetensors first (previz never opens a pickle).

    python tools/make_vsr_pack.py realesr-animevideov3.safetensors --id realesr-animevideov3 \\
        --trained --label "Real-ESRGAN animevideov3 (x4)" [--window 3] [--out DIR]

The pack goes to ``$PREVIZ_HOME/packs/ID`` by default; then
``previz promote DRAFT --upscaler ID``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    from previz.errors import PrevizError
    from previz.packs import user_packs_dir

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("weights", type=Path, help="the network's .safetensors file")
    parser.add_argument("--id", required=True, help="the pack's name")
    parser.add_argument("--out", type=Path, default=None, help="pack directory (default $PREVIZ_HOME/packs/ID)")
    parser.add_argument("--window", type=int, default=3, help="temporal window in frames (default 3; 1: none)")
    parser.add_argument("--trained", action="store_true", help="the weights are trained (say so only if true)")
    parser.add_argument("--label", default=None, help="what the file and the job call it")
    args = parser.parse_args(argv)
    try:
        import safetensors.torch

        from upscale.final_pack import build_vsr_pack
        from upscale.vsr import describe_network

        if args.weights.suffix != ".safetensors" or not args.weights.is_file():
            print(f"make_vsr_pack: error: {args.weights} is not a .safetensors file", file=sys.stderr)
            return 2
        state = safetensors.torch.load_file(str(args.weights))
        arch, scale = describe_network(state)
        out = args.out or user_packs_dir() / args.id
        pack = build_vsr_pack(out, pack_id=args.id, arch=arch, scale=scale, temporal_window=args.window,
                              state_dict=state, trained=args.trained,
                              label=args.label or ("trained" if args.trained else "untrained"))
    except PrevizError as exc:
        print(f"make_vsr_pack: error: {exc.message}", file=sys.stderr)
        return 2
    print(f"built {pack.id}: {arch} x{scale}, window {args.window}, "
          f"{'trained' if pack.trained else 'UNTRAINED'}, in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
