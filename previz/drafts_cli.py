"""`previz drafts list | show | approve | reject | promote | export`: the draft store from a terminal.

Every user error is a :class:`previz.errors.PrevizError` (bad id, bad state,
invalid transition); the main CLI prints it as one line with exit status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from previz.drafts import (
    DEFAULT_JOB_OPTIONS,
    DRAFT_STATES,
    FINAL_FORMATS,
    FINAL_RESOLUTIONS,
    Draft,
    DraftStore,
    default_store_root,
)

PROMPT_WIDTH = 40
RUN_NOTE = "Render it with `previz jobs run {job}` (a killed render resumes with `previz jobs resume {job}`)."


def _open(args: argparse.Namespace) -> DraftStore:
    return DraftStore(args.store or default_store_root())


def _pack_label(draft: Draft) -> str:
    """The pack that made a draft, and honestly whether it was trained."""
    pack = draft.meta.get("pack")
    if not isinstance(pack, dict):
        pack = {}
    pack_id = str(pack.get("id", "?"))
    if not pack.get("trained", False):
        return f"{pack_id} (untrained)"
    label = str(pack.get("label", "") or "trained")
    return f"{pack_id} ({label})"


def _prompt(draft: Draft) -> str:
    text = " ".join(str(draft.recipe.get("prompt", "")).split())  # newlines and tabs would break the table
    return text if len(text) <= PROMPT_WIDTH else text[: PROMPT_WIDTH - 3] + "..."


def print_table(rows: list[tuple[str, ...]]) -> None:
    """Columns padded to their widest cell; the last column runs free (prompts, errors)."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for r in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(r[:-1], widths, strict=True)) + "  " + r[-1])


def _when(created: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(created))


def cmd_list(args: argparse.Namespace) -> int:
    with _open(args) as store:
        drafts = store.list(limit=args.limit, state=args.state)
        if not drafts:
            which = f"{args.state} drafts" if args.state else "drafts"
            print(f"no {which} in {store.root}")
            return 0
        rows: list[tuple[str, ...]] = [("ID", "CREATED", "STATE", "FRAMES", "SECONDS", "PACK", "PROMPT")]
        for d in drafts:
            rows.append((d.id, _when(d.created), d.state, str(d.frames), f"{d.seconds:.1f}",
                         _pack_label(d), _prompt(d)))
    print_table(rows)
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from previz.drafts import LATENTS, TAKE, THUMB

    with _open(args) as store:
        draft = store.get(args.id)
        out = draft.to_dict()
        out["meta"].pop("recipe", None)  # the take's copy of the recipe at the top: shown once
        # Files on this machine, not the server's URLs: a terminal user opens or copies them.
        files = store.files.resolve() / draft.id
        out["video"], out["thumbnail"], out["latents"] = (str(files / name) for name in (TAKE, THUMB, LATENTS))
        out["jobs"] = [j.to_dict() for j in store.jobs(draft_id=draft.id)]
    print(json.dumps(out, indent=2, sort_keys=True))
    return 0


def _set_state(args: argparse.Namespace, state: str) -> int:
    with _open(args) as store:
        draft = store.set_state(args.id, state)
    print(f"{draft.id}: {draft.state}")
    return 0


def cmd_approve(args: argparse.Namespace) -> int:
    return _set_state(args, "approved")


def cmd_reject(args: argparse.Namespace) -> int:
    return _set_state(args, "rejected")


def cmd_unreview(args: argparse.Namespace) -> int:
    return _set_state(args, "draft")


def cmd_promote(args: argparse.Namespace) -> int:
    options: dict[str, Any] = {"format": args.format, "resolution": args.resolution}
    for key in ("strength", "size", "timecode", "pack", "upscaler"):
        if getattr(args, key) is not None:
            options[key] = getattr(args, key)
    if args.output is not None:
        from upscale.encode import check_delivery_target

        # Checked now, not when the job runs: a filmmaker learns of a bad directory at once.
        check_delivery_target(args.output.resolve() / ".previz-probe")
        options["output_dir"] = str(args.output.resolve())
    if args.upscaler not in (None, "lanczos"):
        from upscale.vsr import upscaler_for

        upscaler_for(args.upscaler)  # now, not when the job runs: a bad pack is a one-line error here
        if Path(args.upscaler).expanduser().is_dir():  # a directory: the job may run from another cwd
            options["upscaler"] = str(Path(args.upscaler).expanduser().resolve())
    with _open(args) as store:
        job = store.promote(args.id, options, local=True)
        opts = ", ".join(f"{k} {v}" for k, v in sorted(job.options.items()))
        print(f"{job.draft_id}: promoted; final-render job {job.id} is queued ({opts}).")
        if args.run:
            from previz.cli import _quiet_libraries
            from upscale.jobs import JobRunner

            _quiet_libraries()  # the weight-loading bars are not for a filmmaker's terminal

            done = JobRunner(store, say=lambda m: print(m, file=sys.stderr)).run(job.id)
            print(f"{done.id}: done -> {done.output}")
        else:
            print(RUN_NOTE.format(job=job.id))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from previz.video import resolve_output

    with _open(args) as store:
        draft = store.get(args.id)  # a bad id is the first thing to say
        target = resolve_output(args.output, dir_name=f"{draft.id}.mp4", force=args.force, mkdir=args.mkdir)
        if args.mkdir:
            target.parent.mkdir(parents=True, exist_ok=True)
        path = store.export(draft.id, target)
    print(path)
    return 0


def add_output_flags(parser: argparse.ArgumentParser) -> None:
    """--force and --mkdir: the same rules for every command that writes an MP4 (see video.resolve_output)."""
    parser.add_argument("--force", action="store_true",
                        help="replace an existing file, and allow a name that does not end in .mp4")
    parser.add_argument("--mkdir", action="store_true", help="create the output's missing directories")


def add_promote_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--format", choices=FINAL_FORMATS, default=DEFAULT_JOB_OPTIONS["format"],
                   help="delivery format (default %(default)s)")
    p.add_argument("--resolution", choices=FINAL_RESOLUTIONS, default=DEFAULT_JOB_OPTIONS["resolution"],
                   help="delivery size: uhd 3840x2160, dci4k 4096x2160, hd 1920x1080 (default %(default)s)")
    p.add_argument("--strength", type=float, default=None,
                   help="refinement strength in (0, 1]: how far the final may move from the draft (default 0.6)")
    p.add_argument("--size", default=None, metavar="WxH",
                   help="refine size before VSR, e.g. 1280x720 (default: the final pack's)")
    p.add_argument("--timecode", default=None, metavar="HH:MM:SS:FF", help="start timecode (default 01:00:00:00)")
    p.add_argument("--pack", default=None,
                   help="final pack name or directory (default: the embedded previz-final-tiny)")
    p.add_argument("--upscaler", default=None, metavar="NAME|PACK",
                   help="VSR to the delivery size: lanczos (default; no learned detail) or a vsr pack's name or "
                        "directory (a Real-ESRGAN-family network; pip install 'previz[vsr]')")
    p.add_argument("-o", "--output", type=Path, default=None, metavar="DIR",
                   help="directory for the delivery (default: $PREVIZ_HOME/drafts/finals)")
    p.add_argument("--run", action="store_true", help="render the job now, in this process")
    p.set_defaults(func=cmd_promote)


def add_drafts_parser(sub: Any) -> None:
    """Add `drafts` and its subcommands to the main CLI's subparsers object."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--store", type=Path, default=None, metavar="DIR",
                        help="draft store directory (default: $PREVIZ_HOME/drafts, i.e. ~/.cache/previz/drafts)")

    def with_id(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("id", help="draft id, e.g. d0123456789abcdef (see `previz drafts list`)")
        return p

    drafts = sub.add_parser("drafts", help="list, review, promote and export stored draft takes")
    # The nested subparsers inherit the parser class (one-line usage errors) from `drafts`.
    dsub = drafts.add_subparsers(dest="drafts_command", required=True, metavar="COMMAND")

    p = dsub.add_parser("list", parents=[common], help="stored drafts, newest first")
    p.add_argument("--state", choices=DRAFT_STATES, default=None)
    p.add_argument("--limit", type=int, default=50, help="at most this many (1-1000, default 50)")
    p.set_defaults(func=cmd_list)

    with_id(dsub.add_parser("show", parents=[common], help="a draft's full record and its jobs, as JSON")
            ).set_defaults(func=cmd_show)
    with_id(dsub.add_parser("approve", parents=[common], help="mark a draft approved")).set_defaults(func=cmd_approve)
    with_id(dsub.add_parser("reject", parents=[common], help="mark a draft rejected")).set_defaults(func=cmd_reject)
    with_id(dsub.add_parser("unreview", parents=[common], help="return an approved or rejected draft to draft")
            ).set_defaults(func=cmd_unreview)

    # `previz drafts promote` and, as the issue names it, `previz promote`: one parser, two places.
    for where in (dsub, sub):
        add_promote_options(with_id(where.add_parser("promote", parents=[common],
                                                     help="queue an approved draft for the final 4K render")))

    p = with_id(dsub.add_parser("export", parents=[common], help="copy a draft's MP4 out of the store"))
    p.add_argument("-o", "--output", type=Path, required=True, metavar="PATH",
                   help="an .mp4 file, or a directory: the file is then named <draft id>.mp4")
    add_output_flags(p)
    p.set_defaults(func=cmd_export)
