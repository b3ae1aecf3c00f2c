"""`previz jobs list | show | run | resume | cancel`: final-render jobs from a terminal.

Running a job renders it in this process (the local executor): refine through
both experts, decode, VSR to the delivery size, encode.  A run that is killed
keeps its finished units; `previz jobs resume` carries on from the last one.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from previz.drafts import JOB_STATES, DraftStore, default_store_root
from previz.drafts_cli import print_table
from previz.errors import JobError


def _open(args: argparse.Namespace) -> DraftStore:
    return DraftStore(args.store or default_store_root())


def _when(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else "-"


def _progress_text(progress: dict[str, Any] | None) -> str:
    if not progress:
        return ""
    eta = f", eta {progress['eta_s']:.0f} s" if progress.get("eta_s") is not None else ""
    return f"{progress['stage']} {progress['unit']}/{progress['units']}{eta}"


def cmd_list(args: argparse.Namespace) -> int:
    with _open(args) as store:
        jobs = store.jobs(state=args.state)
    if not jobs:
        print("no jobs" + (f" in state {args.state}" if args.state else ""))
        return 0
    rows: list[tuple[str, ...]] = [("ID", "DRAFT", "STATE", "FORMAT", "UPDATED", "PROGRESS / OUTPUT / ERROR")]
    for j in jobs:
        detail = j.error or j.output or _progress_text(j.progress)
        rows.append((j.id, j.draft_id, j.state, str(j.options.get("format", "")), _when(j.updated), detail or ""))
    print_table(rows)
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    with _open(args) as store:
        job = store.job(args.id)
        out = job.to_dict()
        out["units"] = {stage: len(store.units(job.id, stage)) for stage in ("refine", "decode", "vsr", "deliver")}
    print(json.dumps(out, indent=2, sort_keys=True))
    return 0


class _Bars:
    """A progress bar per stage on a terminal; one line per unit otherwise (logs, scripts, tests)."""

    def __init__(self, quiet: bool) -> None:
        self.quiet, self.tty = quiet, sys.stdout.isatty()
        self.bar: Any = None
        self.stage: tuple[str, str] | None = None

    def __call__(self, event: Any) -> None:
        if self.quiet:
            return
        if not self.tty:
            eta = f" eta {event.eta_s:.0f}s" if event.eta_s is not None else ""
            print(f"{event.job_id} {event.stage} {event.unit}/{event.units}{eta}", flush=True)
            return
        from tqdm import tqdm

        if event.stage == "encode":  # segments interleave with the VSR's frames: a note on that bar
            if self.bar is not None:
                self.bar.set_postfix_str(f"encoded segment {event.unit}/{event.units}")
                if self.bar.n == self.bar.total and event.unit == event.units:
                    self.bar.close()
                    self.bar, self.stage = None, None
            return
        if self.stage != (event.job_id, event.stage):
            if self.bar is not None:
                self.bar.close()
            self.stage = (event.job_id, event.stage)
            unit = "step" if event.stage == "refine" else "frame"
            self.bar = tqdm(total=event.units, desc=f"{event.job_id} {event.stage}", unit=unit, file=sys.stdout)
        self.bar.n = event.unit
        self.bar.refresh()
        if event.stage == "refine" and event.unit == event.units:
            self.bar.close()
            self.bar, self.stage = None, None


def _runner(store: DraftStore, args: argparse.Namespace) -> Any:
    from previz.cli import _quiet_libraries
    from upscale.jobs import SEGMENT_FRAMES, JobRunner

    _quiet_libraries()  # the weight-loading bars are not for a filmmaker's terminal

    return JobRunner(store, device=args.device, segment_frames=args.segment_frames or SEGMENT_FRAMES,
                     on_progress=_Bars(args.quiet), say=lambda m: print(m, file=sys.stderr))


def _finish(job: Any) -> None:
    print(f"{job.id}: done -> {job.output}", flush=True)


def _run_elsewhere(store: DraftStore, args: argparse.Namespace, job_ids: list[str]) -> int:
    from upscale.executors import create_executor

    executor = create_executor(args.executor, store, address=args.address, device=args.device,
                               segment_frames=args.segment_frames)
    try:
        outcomes = executor.run(job_ids)
    finally:
        executor.close()
    for o in outcomes:
        print(f"{o.job_id}: {o.state}" + (f" -> {o.output}" if o.output else "") + (f" ({o.error})" if o.error else ""))
    failed = [o for o in outcomes if o.state != "done"]
    if failed:
        raise JobError(f"{len(failed)} of {len(outcomes)} jobs did not finish (`previz jobs list` shows why)")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    with _open(args) as store:
        if args.executor != "local":
            ids = [args.id] if args.id else [j.id for j in reversed(store.jobs(state="queued"))]
            if not ids:
                print("no queued jobs")
                return 0
            return _run_elsewhere(store, args, ids)
        runner = _runner(store, args)
        if args.id:
            _finish(runner.run(args.id))
            return 0
        from upscale.jobs import run_queued

        queued = store.jobs(state="queued")
        if not queued:
            print("no queued jobs")
            return 0
        finished = run_queued(store, runner)
        for job in finished:
            _finish(job)
        if len(finished) < len(queued):
            raise JobError(f"{len(queued) - len(finished)} of {len(queued)} jobs did not finish "
                           "(`previz jobs list` shows why)")
    return 0


def cmd_resume(args: argparse.Namespace) -> int:
    with _open(args) as store:
        _finish(_runner(store, args).run(args.id, resume=True))
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    from upscale.jobs import cancel

    with _open(args) as store:
        job = cancel(store, args.id)
    print(f"{job.id}: cancelled")
    return 0


def add_jobs_parser(sub: Any) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--store", type=Path, default=None, metavar="DIR",
                        help="draft store directory (default: $PREVIZ_HOME/drafts)")
    running = argparse.ArgumentParser(add_help=False)
    running.add_argument("--device", default="cpu", help="torch device for refine and decode (default cpu)")
    running.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    running.add_argument("--segment-frames", type=int, default=None, metavar="N",
                         help="frames per resumable delivery segment (default 8; a resume keeps the job's own)")

    jobs = sub.add_parser("jobs", help="final-render jobs: list, show, run, resume, cancel")
    jsub = jobs.add_subparsers(dest="jobs_command", required=True, metavar="COMMAND")
    p = jsub.add_parser("list", parents=[common], help="jobs, newest first")
    p.add_argument("--state", choices=JOB_STATES, default=None)
    p.set_defaults(func=cmd_list)
    p = jsub.add_parser("show", parents=[common], help="one job as JSON")
    p.add_argument("id")
    p.set_defaults(func=cmd_show)
    p = jsub.add_parser("run", parents=[common, running], help="render a queued job (default: every queued job)")
    p.add_argument("id", nargs="?")
    p.add_argument("--executor", choices=("local", "ray"), default="local",
                   help="local: this process (default); ray: Ray tasks with retries (pip install 'previz[ray]')")
    p.add_argument("--address", default=None, help="Ray cluster address (default: start a local Ray instance)")
    p.set_defaults(func=cmd_run)
    p = jsub.add_parser("resume", parents=[common, running],
                        help="carry on an interrupted or failed job from its last finished unit")
    p.add_argument("id")
    p.set_defaults(func=cmd_resume)
    p = jsub.add_parser("cancel", parents=[common], help="cancel a queued, running or failed job")
    p.add_argument("id")
    p.set_defaults(func=cmd_cancel)
