"""`previz pack import | verify`: bring a real checkpoint in, and re-hash a pack on request.

``import`` reads a diffusers-format Wan directory and writes a manifest for it
in the user's pack directory (:mod:`previz.pack_import`); the weights stay
where they are.  ``verify`` re-hashes every weight file of a pack against its
manifest: loads only compare size and mtime stamps, because a real checkpoint
is tens of GB.  Every user error is a :class:`previz.errors.PrevizError`,
printed by the main CLI as one line.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any


def cmd_import(args: argparse.Namespace) -> int:
    from previz.pack_import import ImportOptions, import_checkpoint

    fields = ("name", "kind", "width", "height", "fps", "steps", "shift", "guidance", "text_tokens",
              "window_frames", "context_frames", "force")
    given = {k: getattr(args, k) for k in fields if getattr(args, k) is not None}
    started = time.perf_counter()
    print(f"importing {args.directory} (hashing its weights once; a large checkpoint takes a while)")
    pack = import_checkpoint(args.directory, ImportOptions(**given))
    native = pack.draft or pack.final
    assert native is not None
    layout = pack.latent
    print(f"pack {pack.id}: {pack.kind}, {layout.channels} latent channels at {layout.temporal}x{layout.spatial}x"
          f"{layout.spatial}, {native.width}x{native.height} @ {native.fps} fps, {native.steps} steps, "
          f"shift {native.shift:g} ({time.perf_counter() - started:.1f} s)")
    print(f"  manifest: {pack.root}")
    print(f"  weights:  {pack.weights} (not copied: keep them there)")
    if pack.kind == "draft":
        print("  takes text (and context frames) only: the camera and the scene blockout do not steer it")
        print(f"  try: previz draft 'a red cube on a sandy plain' --pack {pack.id} --seconds 2")
    else:
        print(f"  try: previz drafts promote DRAFT --final-pack {pack.id}")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from previz.packs import MANIFEST_NAME, load_pack, user_packs_dir, verify_pack, write_manifest

    pack = load_pack(args.pack, verify=False)
    started = time.perf_counter()
    checked = verify_pack(pack)  # raises PackError on the first file that differs
    files = sum(len(c.sha256) for c in pack.components.values())
    print(f"pack {pack.id}: {files} weight files match their hashes ({time.perf_counter() - started:.1f} s)")
    stale = [n for n, c in pack.components.items() if c.stamp and c.stamp != checked.components[n].stamp]
    if stale and (pack.root / MANIFEST_NAME).resolve().is_relative_to(user_packs_dir().resolve()):
        write_manifest(checked)  # the files are what was hashed: loads trust their new stamps
        print(f"  stamps refreshed for {', '.join(stale)} (the files were touched, not changed)")
    return 0


def add_pack_parser(sub: Any) -> None:
    p = sub.add_parser("pack", help="import a diffusers-format Wan checkpoint; verify a pack's weights")
    psub = p.add_subparsers(dest="pack_command", required=True, parser_class=type(p))
    i = psub.add_parser("import", help="make a pack of a diffusers Wan directory (the weights are not copied)")
    i.add_argument("directory", type=Path, help="a directory with model_index.json (e.g. Wan2.1-T2V-1.3B-Diffusers)")
    i.add_argument("--name", help="the pack's name (default: the directory's name)")
    i.add_argument("--kind", choices=["draft", "final"],
                   help="default: final for a two-expert (A14B) directory, draft otherwise")
    i.add_argument("--width", type=int, help="draft (or final) width (default 832)")
    i.add_argument("--height", type=int, help="draft (or final) height (default 480)")
    i.add_argument("--fps", type=int, help="default: 16 for Wan 2.1's layout, 24 for Wan 2.2 TI2V's")
    i.add_argument("--steps", type=int,
                   help="sampling steps (default 4 for a draft, for step-distilled students; a base model needs ~30)")
    i.add_argument("--shift", type=float, help="flow shift (default: the scheduler config's)")
    i.add_argument("--guidance", type=float,
                   help="classifier-free guidance (default: 1, none, for a draft; 4 and 3 for A14B's experts)")
    i.add_argument("--text-tokens", type=int, help="text states per prompt (default 512, as WanPipeline)")
    i.add_argument("--window-frames", type=int, help="latent frames per denoiser call (default 4)")
    i.add_argument("--context-frames", type=int, help="clean latent frames carried between windows (default 1)")
    i.add_argument("--force", action="store_true", default=None, help="replace an earlier import of that name")
    i.set_defaults(func=cmd_import)
    v = psub.add_parser("verify", help="re-hash a pack's weight files against its manifest")
    v.add_argument("pack", help="pack name or directory")
    v.set_defaults(func=cmd_verify)
