"""`previz draft | serve | drafts | jobs | camera | models | export | build-engine`.

Every user error is a :class:`PrevizError`: printed as one line, exit status 2,
no traceback.  Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import secrets
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from previz.drafts_cli import add_drafts_parser, add_output_flags
from previz.errors import PrevizError, UnknownPackError, engine_errors
from previz.jobs_cli import add_jobs_parser
from previz.pack_cli import add_pack_parser
from previz.recipe import DEFAULT_PACK, Recipe

EXIT_USER_ERROR = 2
RANDOM_SEEDS = 2**31  # a seed left out is drawn below this, as the page draws one


def _quiet_libraries() -> None:
    """Library chatter (weight-loading bars, exporter notes) is not for a filmmaker's terminal."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    import diffusers
    import transformers

    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def open_pack(ref: str, say: Callable[[str], None]) -> Any:
    """Load a pack; the embedded default is built on first use instead of failing."""
    from previz.packs import load_pack, user_packs_dir

    try:
        pack = load_pack(ref)
    except UnknownPackError:
        from previz.pack_builder import TINY_PACK_ID, ensure_tiny_pack  # imports torch: only when needed

        if ref != TINY_PACK_ID:
            raise
        _quiet_libraries()
        pack = ensure_tiny_pack(user_packs_dir() / TINY_PACK_ID, say)
    return pack


def untrained_note(pack: Any) -> None:
    """Said once a take is written or the server is up; never on top of an error."""
    if not pack.trained:
        _say(f"note: pack {pack.id} is {pack.label.upper()}: its drafts are noise, not pictures")


def _say(msg: str) -> None:
    print(msg, file=sys.stderr)


# ----------------------------------------------------------------------------- commands


def cmd_draft(args: argparse.Namespace) -> int:
    from previz.drafts import DraftStore, default_store_root, new_draft_id
    from previz.recipe import check_prompt
    from previz.video import resolve_output

    if args.seed is None:
        args.seed = secrets.randbelow(RANDOM_SEEDS)  # printed below, so the take can be made again
    scene = None
    if args.scene is not None:
        from previz.scene import load_scene_file

        scene = load_scene_file(args.scene)  # checked now: a bad scene file fails before anything loads
    recipe = Recipe(
        prompt=args.prompt,
        seed=args.seed,
        scene=scene,
        seconds=args.seconds,
        width=args.width,
        height=args.height,
        steps=args.steps,
        negative_prompt=args.negative_prompt,
        pack=args.pack,
        backend=args.backend,  # "auto" is resolved once the recipe is valid: that imports torch
    )
    check_prompt("prompt", recipe.prompt)  # before loading anything: fail fast
    store = None if args.no_store else DraftStore(args.store or default_store_root())
    draft_id = new_draft_id() if store is not None else None
    try:
        output = resolve_output(args.output, dir_name=f"{draft_id}.mp4" if draft_id else None,
                                force=args.force, mkdir=args.mkdir)
        return _render_draft(args, recipe, output, store, draft_id)
    finally:
        if store is not None:
            store.close()


def _render_draft(args: argparse.Namespace, recipe: Recipe, output: Path, store: Any, draft_id: str | None) -> int:
    from tqdm import tqdm

    from engines import resolve_backend
    from previz.recipe import frame_count, resolve

    pack = open_pack(args.pack, _say)
    recipe = resolve(dataclasses.replace(recipe, camera=camera_spec(args, pack)), pack)
    recipe = dataclasses.replace(recipe, backend=resolve_backend(recipe.backend))
    # Imported only now, so that every error above comes at once (diffusers and torch take seconds).
    _quiet_libraries()
    from previz.take import DraftModel, TakeStats
    from previz.video import write_mp4

    model = DraftModel(pack, recipe.backend, width=recipe.width, height=recipe.height, **engine_options(args))
    model.warmup(None if args.quiet else _say)  # first-call initialisation (a compile) is set-up, not the take
    total = frame_count(recipe, model.fps)
    stats = TakeStats()  # the clock starts here: set-up above is not part of the take
    latents: list[Any] = []
    frames = model.generate(recipe, stats=stats, on_chunk=lambda _chunk, kept: latents.append(kept))
    bar = tqdm(total=total, unit="frame", desc="draft", file=sys.stderr, disable=args.quiet)

    def images() -> Any:
        for frame in frames:
            bar.update(1)
            yield frame.image

    start = time.perf_counter()
    meta = model.metadata(recipe)
    if store is None:
        written = write_mp4(output, images(), fps=model.fps, meta=meta)
    else:
        import numpy as np

        # The store encodes the take once; the file at -o is a copy of the stored MP4.
        draft = store.add(recipe=recipe.to_dict(), meta=meta, frames=list(images()),
                          latents=np.concatenate(latents, axis=2), fps=model.fps, draft_id=draft_id)
        if args.mkdir:
            output.parent.mkdir(parents=True, exist_ok=True)
        store.export(draft.id, output)
        written = draft.frames
    elapsed = time.perf_counter() - start
    bar.close()
    fps = written / elapsed
    _say(
        f"wrote {output}: {written} frames at {model.fps} fps ({written / model.fps:.2f} s) "
        f"in {elapsed:.2f} s = {fps:.1f} fps, {fps / model.fps:.2f}x real time, "
        f"first frame after {1000 * (stats.first_frame_s or 0):.0f} ms "
        f"[{recipe.backend}: {', '.join(model.denoiser.info.providers)}; pack {pack.id}, {pack.label}]"
    )
    _say(f"seed {recipe.seed}; " + (f"stored as draft {draft_id} in {store.root} (see `previz drafts list`)"
                                    if store is not None else "not stored (--no-store)"))
    untrained_note(pack)
    camera_note(pack, asked=bool(args.camera or args.camera_file or args.shake or args.scene))
    return 0


def camera_note(pack: Any, *, asked: bool) -> None:
    """Say so when a camera or scene was asked of a pack that does not take one (never ignore it silently)."""
    if asked and not pack.conditioning.steers_camera:
        _say(f"note: pack {pack.id} takes text only: the camera and scene you gave are recorded "
             "in the recipe but do not steer this pack's drafts")


def camera_spec(args: argparse.Namespace, pack: Any) -> dict[str, Any] | None:
    """--camera PRESET[:speed] or --camera-file, plus --shake, as the recipe's camera."""
    from previz.camera import CameraError, load_camera_file, parse_spec

    if args.camera and args.camera_file:
        raise CameraError("give --camera or --camera-file, not both")
    spec: dict[str, Any] | None = None
    if args.camera:
        spec = parse_spec(args.camera)
    elif args.camera_file:
        width = args.width or (pack.draft.width if pack.draft else 16)
        height = args.height or (pack.draft.height if pack.draft else 9)
        spec = load_camera_file(args.camera_file, aspect=width / height)
    if args.shake is not None:
        spec = {**(spec or {"preset": "static"}), "shake": {"amplitude": args.shake, "seed": args.seed}}
    return spec


def cmd_camera(args: argparse.Namespace) -> int:
    """Write a camera path (a preset, a file, or a take's recipe) as .chan or .json."""
    from previz.camera import CameraError, load_camera_file, parse_spec, path_from_spec, write_chan
    from previz.video import read_recipe

    aspect = args.aspect
    if args.take:
        recipe = read_recipe(args.take)["recipe"]  # InputFileError: missing, not a video, no recipe
        spec, seconds = recipe.get("camera") or {"preset": "static"}, float(recipe["seconds"])
        aspect = recipe["width"] / recipe["height"]
    elif args.camera_file:
        spec, seconds = load_camera_file(args.camera_file, aspect=aspect), args.seconds
    else:
        spec, seconds = parse_spec(args.camera or "static"), args.seconds
    if args.shake is not None:
        spec = {**spec, "shake": {"amplitude": args.shake, "seed": 0}}
    path = path_from_spec(spec, seconds)
    if args.output.suffix.lower() == ".chan":
        text = write_chan(path, fps=args.fps, aspect=aspect)
    elif args.output.suffix.lower() == ".json":
        text = json.dumps(path.to_dict(), indent=1) + "\n"
    else:
        raise CameraError(f"{args.output}: write .chan or .json", value=str(args.output))
    write_text_output(args.output, text, force=args.force, mkdir=args.mkdir)
    print(f"wrote {args.output}: {len(path.keyframes)} keyframes over {path.duration:g} s")
    return 0


def cmd_scene(args: argparse.Namespace) -> int:
    """Write the scene blockout of a take, or the one a prompt gives, as JSON (the form --scene reads)."""
    from previz.scene import parse_scene, scene_from_prompt
    from previz.video import read_recipe

    if (args.prompt is None) == (args.take is None):
        raise PrevizError("give a prompt or --take TAKE.mp4 (one of them)")
    if args.take is not None:
        recipe = read_recipe(args.take)["recipe"]  # InputFileError: missing, not a video, no recipe
        scene = parse_scene(recipe.get("scene") or scene_from_prompt(recipe["prompt"]))
    else:
        scene = scene_from_prompt(args.prompt)
    text = json.dumps(scene.to_dict(), indent=1) + "\n"
    if args.output is None:
        sys.stdout.write(text)
        return 0
    write_text_output(args.output, text, force=args.force, mkdir=args.mkdir)
    _say(f"wrote {args.output}: {len(scene.objects)} objects, {scene.ground} at {scene.time_of_day}")
    return 0


def write_text_output(path: Path, text: str, *, force: bool, mkdir: bool) -> None:
    """A small text file (.chan, .json) under the rules of ``draft -o``, written whole or not at all."""
    from previz.atomic import atomic_write
    from previz.video import check_output_path

    check_output_path(path, overwrite=force, make_dirs=mkdir)
    atomic_write(path, text.encode())  # OutputError, naming the file, if it cannot be written


def cmd_serve(args: argparse.Namespace) -> int:
    check_port(args.host, args.port)  # before anything heavy loads (seconds): a taken port is said at once
    import asyncio

    from engines import available_backends, resolve_backend
    from previz.drafts import DraftStore, default_store_root
    from previz.server import ServeConfig, run
    from previz.session import SessionLimits
    from previz.take import DraftModel

    pack = open_pack(args.pack, _say)
    backend = resolve_backend(args.backend)
    _quiet_libraries()
    untrained_note(pack)
    model = DraftModel(pack, backend, **engine_options(args))
    model.warmup(_say)  # before the server reports ready: the first take should not pay for a compile
    model.warm_take(_say)  # ...nor for the take loop's own first run
    store = DraftStore(args.store or default_store_root())
    config = ServeConfig(
        host=args.host, port=args.port, max_clients=args.max_clients, allowed_hosts=tuple(args.allow_host),
        limits=SessionLimits(image_format=args.image_format), run_jobs=args.jobs,
    )
    backends = [name for name, reason in available_backends().items() if reason is None]
    freeze_start_up_heap()
    try:
        asyncio.run(run(config, model=model, store=store, backends=backends, announce=_say))
    except OSError as exc:  # the port is taken, or the address is not ours
        raise PrevizError(f"cannot serve on {args.host}:{args.port}: {exc.strerror or exc}") from None
    finally:
        store.close()
    return 0


def freeze_start_up_heap() -> None:
    """Take what start-up loaded out of the garbage collector's sight, for the life of the process.

    A served process tracks about 450,000 objects once torch, diffusers and the model are loaded, and a full
    collection scans them all with the GIL held: 200 to 260 ms on the project's CPU (BENCHMARKS.md), a stall
    of every client's stream and update whenever one comes.  They live as long as the process, so start-up's
    own garbage is collected once and the rest is frozen; a full collection then scans only what came later.
    """
    import gc

    gc.collect()
    gc.freeze()


def add_engine_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16", "fp8"], default="auto",
                        help="compute precision of the engines (auto: bf16 on a CUDA GPU, fp32 on CPU; fp8: the "
                             "torch engines' large matmuls in float8, on a CUDA GPU of compute capability 8.9+, "
                             "with previz[fp8]; "
                             "tensorrt takes fp16 or fp32; onnxruntime runs fp32)")
    parser.add_argument("--compile", choices=["auto", "on", "off", "blocks", "model", "cuda-graphs"],
                        default="auto",
                        help="torch.compile the torch engines (auto: on with a CUDA GPU, off on CPU; on: by blocks "
                             "on a CUDA GPU, the whole model on CPU; blocks: one transformer block that every "
                             "layer reuses, a quicker first compile; model: the whole model as one graph; "
                             "cuda-graphs: the whole model, capturing CUDA graphs). The first compile takes "
                             "seconds to minutes; later starts reuse the cache in $PREVIZ_HOME/cache/inductor")
    parser.add_argument("--attention", choices=["auto", "sdpa", "cudnn", "flash", "efficient", "math"],
                        default="auto",
                        help="the attention kernel of the torch engines (auto: sdpa, torch's own choice; "
                             "cudnn, flash and efficient pin one of its fused CUDA kernels)")


def engine_options(args: argparse.Namespace) -> dict[str, Any]:
    """The engine options the flags ask for; ``auto`` leaves each to the engine's own default."""
    options: dict[str, Any] = {}
    if args.precision != "auto":
        options["precision"] = args.precision
    if args.compile != "auto":
        options["compile"] = args.compile != "off"
        if args.compile == "cuda-graphs":
            options["compile_mode"] = "reduce-overhead"
        if args.compile in ("blocks", "model"):
            options["compile_scope"] = args.compile
    if args.attention != "auto":
        options["attention"] = args.attention
    return options


def check_port(host: str, port: int) -> None:
    """Bind and release each address the server will bind, so a port in use fails before any work."""
    import socket

    try:
        for family, kind, proto, _, address in socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        ):
            with socket.socket(family, kind, proto) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as asyncio's server does
                probe.bind(address)
    except OSError as exc:
        raise PrevizError(f"cannot serve on {host}:{port}: {exc.strerror or exc}") from None


def cmd_models(args: argparse.Namespace) -> int:
    from engines import available_backends, cuda_device_name
    from previz.packs import list_packs, pack_search_dirs

    packs = list_packs()
    print("packs:")
    if not packs:
        print("  (none found)")
    for p in packs:
        native = p.draft or p.final  # a draft pack's live size, a final pack's refine size
        size = f"{native.width}x{native.height} @ {native.fps} fps" if native else ""
        print(f"  {p.id:<20} {p.kind:<6} {p.label:<10} {p.latent.space:<22} {size}  {p.root}")
    print(f"  searched: {', '.join(str(d) for d in pack_search_dirs())}")
    print("backends:")
    for name, reason in available_backends().items():
        print(f"  {name:<12} {'available' if reason is None else 'unavailable: ' + reason}")
    print(f"gpu: {cuda_device_name() or 'none found'}")
    return 0


def _draft_graphs(args: argparse.Namespace) -> tuple[Any, list[Any]]:
    from previz.draft_graphs import build_decoder_graph, build_denoiser_graph
    from previz.frame_decoder import streams_with_vae
    from previz.recipe import resolve
    from previz.text import text_shape

    pack = open_pack(args.pack, _say)
    recipe = resolve(Recipe(prompt="-", width=args.width, height=args.height, pack=args.pack), pack)
    _quiet_libraries()
    tokens, dim = text_shape(pack)
    assert recipe.width and recipe.height
    graphs = build_denoiser_graph(pack, recipe.width, recipe.height, text_tokens=tokens, text_dim=dim)
    denoisers = [g for g in (graphs.window, graphs.context, graphs.cached) if g is not None]
    if streams_with_vae(pack):  # an imported checkpoint decodes with its own VAE, in torch: no decoder graph
        return pack, denoisers
    return pack, [*denoisers, build_decoder_graph(pack, recipe.width, recipe.height)]


def cmd_export(args: argparse.Namespace) -> int:
    from engines.export import OPSET, ORT_OPSET, export_onnx
    from previz.take import default_cache_dir

    _, graphs = _draft_graphs(args)
    for graph in graphs:
        for runtime, opset in (("onnxruntime", ORT_OPSET), ("tensorrt", OPSET)):
            path = export_onnx(graph, args.cache_dir or default_cache_dir(), opset=opset)
            print(f"{graph.name} for {runtime} (opset {opset}): {path}  [{graph.shape_profile()}]")
    return 0


def cmd_build_engine(args: argparse.Namespace) -> int:
    from engines import available_backends
    from previz.errors import BackendUnavailableError
    from previz.take import default_cache_dir

    reason = available_backends()["tensorrt"]
    if reason:
        raise BackendUnavailableError(
            f"cannot build TensorRT engines here: {reason}", field="backend", value="tensorrt"
        )
    from engines.tensorrt_backend import ensure_plan

    _, graphs = _draft_graphs(args)
    for graph in graphs:
        _, key = ensure_plan(graph, args.cache_dir or default_cache_dir(), args.precision)
        print(f"{graph.name}: engine {key} ({args.precision}) [{graph.shape_profile()}]")
    return 0


# ----------------------------------------------------------------------------- parser


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (the full usage stays behind --help)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USER_ERROR, f"previz: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="previz", description="Fast previsualisation: live drafts, 4K finals.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)

    d = sub.add_parser("draft", help="render one draft take to an MP4")
    d.add_argument("prompt", help="what the shot shows")
    d.add_argument("--seconds", type=float, default=4.0, help="take length (default 4)")
    d.add_argument("--seed", type=int, default=None,
                   help="noise seed, 0 or more; same seed + same recipe = same take "
                        "(default: a random one, printed after the take)")
    d.add_argument("--backend", default="auto",
                   help="auto | torch | onnxruntime | tensorrt (auto: torch on a CUDA GPU, else onnxruntime "
                        "where installed, else torch)")
    add_engine_flags(d)
    d.add_argument("--pack", default=DEFAULT_PACK, help="pack name, directory or hub id")
    d.add_argument("--width", type=int, default=None, help="default: the pack's draft width")
    d.add_argument("--height", type=int, default=None, help="default: the pack's draft height")
    d.add_argument("--steps", type=int, default=None, help="sampling steps (default: the pack's)")
    d.add_argument("--negative-prompt", default="")
    d.add_argument("--camera", metavar="PRESET[:SPEED]",
                   help="a camera move, e.g. orbit_left:1.5, dolly_zoom_in, crash_zoom_in (default: static)")
    d.add_argument("--camera-file", type=Path, metavar="PATH", help="a camera path: .chan (Nuke/Blender) or .json")
    d.add_argument("--shake", type=float, metavar="DEGREES", help="add seeded handheld shake of this amplitude (0-5)")
    d.add_argument("--scene", type=Path, metavar="PATH",
                   help="the scene blockout as JSON (see `previz scene`; default: derived from the prompt)")
    d.add_argument("-o", "--output", type=Path, default=Path("take.mp4"), metavar="PATH",
                   help="an .mp4 file (default take.mp4), or a directory: the file is then named <draft id>.mp4")
    add_output_flags(d)
    d.add_argument("--store", type=Path, default=None, metavar="DIR",
                   help="draft store the take is kept in (default: $PREVIZ_HOME/drafts, i.e. ~/.cache/previz/drafts)")
    d.add_argument("--no-store", action="store_true", help="write only the MP4; keep no draft in the store")
    d.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    d.set_defaults(func=cmd_draft)

    s = sub.add_parser("serve", help="the live previz server: page and websocket on one port")
    s.add_argument("--host", default="127.0.0.1", help="bind address (default loopback; others need the token)")
    s.add_argument("--port", type=int, default=8188)
    s.add_argument("--pack", default=DEFAULT_PACK)
    s.add_argument("--backend", default="auto")
    add_engine_flags(s)
    s.add_argument("--store", type=Path, default=None, help="draft store directory (default ~/.cache/previz/drafts)")
    s.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                   help="another Host name clients may use (e.g. the machine's DNS name)")
    s.add_argument("--max-clients", type=int, default=16)
    s.add_argument("--image-format", choices=["jpeg", "webp"], default="jpeg")
    s.add_argument("--no-jobs", dest="jobs", action="store_false",
                   help="do not render queued final jobs in the background (`previz jobs run` does it then)")
    s.set_defaults(func=cmd_serve)

    add_drafts_parser(sub)
    add_jobs_parser(sub)
    add_pack_parser(sub)

    c = sub.add_parser("camera", help="write a camera path as .chan (Nuke/Blender) or .json")
    c.add_argument("camera", nargs="?", metavar="PRESET[:SPEED]", help="a preset (default static)")
    c.add_argument("--camera-file", type=Path, help="convert this .chan or .json instead")
    c.add_argument("--take", type=Path, help="export the camera of this previz MP4 take")
    c.add_argument("--seconds", type=float, default=4.0)
    c.add_argument("--shake", type=float, metavar="DEGREES")
    c.add_argument("--fps", type=float, default=24.0, help=".chan frame rate (default 24)")
    c.add_argument("--aspect", type=float, default=16 / 9, help="image aspect for the .chan vertical FOV")
    c.add_argument("-o", "--output", type=Path, required=True, help="a .chan or .json file")
    c.add_argument("--force", action="store_true", help="replace an existing file")
    c.add_argument("--mkdir", action="store_true", help="create the output's missing directories")
    c.set_defaults(func=cmd_camera)

    sc = sub.add_parser("scene", help="write a scene blockout as JSON: a take's, or the one a prompt gives")
    sc.add_argument("prompt", nargs="?", help="derive the scene from this prompt")
    sc.add_argument("--take", type=Path, help="the scene of this previz MP4 take")
    sc.add_argument("-o", "--output", type=Path, default=None, help="a .json file (default: standard output)")
    sc.add_argument("--force", action="store_true", help="replace an existing file")
    sc.add_argument("--mkdir", action="store_true", help="create the output's missing directories")
    sc.set_defaults(func=cmd_scene)

    m = sub.add_parser("models", help="list packs and the backends this machine can run")
    m.set_defaults(func=cmd_models)

    for name, func, help_ in (
        ("export", cmd_export, "export a pack's draft graphs to ONNX"),
        ("build-engine", cmd_build_engine, "build TensorRT engines for a pack (needs a CUDA GPU)"),
    ):
        e = sub.add_parser(name, help=help_)
        e.add_argument("--pack", default=DEFAULT_PACK)
        e.add_argument("--width", type=int, default=None)
        e.add_argument("--height", type=int, default=None)
        e.add_argument("--cache-dir", type=Path, default=None)
        if name == "build-engine":
            e.add_argument("--precision", default="fp16", choices=["fp16", "fp32"])
        e.set_defaults(func=func)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with engine_errors():
            return int(args.func(args))
    except PrevizError as exc:
        print(f"previz: error: {exc.message}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("previz: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
