"""`previz pack import`: a diffusers-format Wan checkpoint directory becomes a previz pack, in place.

A filmmaker's ``Wan2.1-T2V-1.3B-Diffusers``, ``Wan2.2-TI2V-5B-Diffusers`` or
``Wan2.2-T2V-A14B-Diffusers`` directory (``model_index.json`` plus one
subfolder per component) is read, checked, and described by a previz manifest
written to the user's pack directory.  The manifest points at the checkpoint;
no weight is copied.  Everything the manifest says comes from the checkpoint's
own configs, or from options where a checkpoint does not say (draft size,
steps):

- the latent layout from the VAE config: Wan 2.1's VAE is 16 channels at
  4x8x8, Wan 2.2's TI2V VAE 48 channels at 4x16x16, both with a causal first
  frame;
- the text shape from the text encoder config (UMT5's ``d_model``) and the
  transformer's ``text_dim``, which must agree;
- shift from the scheduler config;
- the kind: a directory with ``transformer_2`` and a ``boundary_ratio`` (Wan
  2.2 A14B) is a final pack, anything else a draft pack.

The weights are hashed once, here; a load checks their size and mtime stamps,
and ``previz pack verify`` re-hashes on request.  An imported draft pack
decodes with its own VAE, streamed chunk by chunk (:mod:`previz.vae_stream`),
unless the checkpoint holds a frame-wise ``decoder/`` (``AutoencoderTiny``) in
safetensors.  It takes text and clean context frames only: no camera, no
control.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from previz.atomic import atomic_dir
from previz.errors import PackError, UnsafeWeightsError
from previz.packs import (
    Component,
    Conditioning,
    ContextConditioning,
    DraftDefaults,
    FinalDefaults,
    LatentLayout,
    Pack,
    TextConditioning,
    check_safetensors_only,
    file_stamps,
    hash_component_dir,
    manifest_dict,
    parse_manifest,
    user_packs_dir,
    write_manifest,
)

# The pipelines whose directories import: text-to-video Wan (2.1, 2.2 TI2V run as T2V, 2.2 A14B).
WAN_PIPELINES = frozenset({"WanPipeline"})
TEXT_ENCODERS = frozenset({"UMT5EncoderModel", "T5EncoderModel"})
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass(frozen=True)
class ImportOptions:
    """What a checkpoint does not say, with defaults for a few-step distilled student.

    A base (non-distilled) Wan model needs ``steps=30, guidance=5`` or so to
    draw anything; a step-distilled one (lightx2v, Self-Forcing) runs at 4 and 1.
    """

    name: str | None = None
    kind: str | None = None  # None: from the directory (transformer_2 + boundary_ratio = final)
    width: int = 832
    height: int = 480
    fps: int | None = None  # None: 16 for Wan 2.1's layout, 24 for Wan 2.2 TI2V's
    steps: int | None = None  # None: 4 for a draft, 40 for a final (WanPipeline's A14B default)
    shift: float | None = None  # None: the scheduler config's
    guidance: float | None = None  # None: 1 (none) for a draft; 4 and 3 for a final's two experts (WanPipeline's)
    text_tokens: int = 512  # WanPipeline's max_sequence_length
    window_frames: int = 4
    context_frames: int = 1
    force: bool = False  # replace an earlier import of the same name


def _fail(directory: Path, why: str) -> PackError:
    return PackError(f"cannot import {directory}: {why}", field="pack", value=str(directory))


def _read_config(path: Path, directory: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise _fail(directory, f"{path.relative_to(directory)} is missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _fail(directory, f"{path.relative_to(directory)} is not readable JSON ({exc})") from None
    if not isinstance(data, dict):
        raise _fail(directory, f"{path.relative_to(directory)} is not a JSON object")
    return data


@dataclass(frozen=True)
class WanCheckpoint:
    """What a Wan checkpoint directory holds, read from its configs.  No weights are opened."""

    directory: Path
    pipeline: str
    experts: tuple[str, ...]  # ("transformer",) or ("transformer", "transformer_2")
    boundary_ratio: float | None
    latent: LatentLayout
    text_dim: int
    text_encoder: str
    shift: float
    patch: int  # the transformer's spatial patch
    tiny_decoder: bool  # a frame-wise AutoencoderTiny in decoder/
    vae_sha256: dict[str, str]  # hashed once, for the latent space id and the manifest
    diffusers_version: str


def read_checkpoint(directory: Path) -> WanCheckpoint:
    """Read and check a diffusers-format Wan directory; a :class:`PackError` names what is wrong."""
    directory = Path(directory).expanduser().resolve()
    # 1. A diffusers directory of a Wan text-to-video pipeline.
    if not directory.is_dir():
        raise _fail(directory, "no such directory")
    if not (directory / "model_index.json").is_file():
        raise _fail(directory, "it is not a diffusers checkpoint directory (it has no model_index.json)")
    index = _read_config(directory / "model_index.json", directory)
    pipeline = index.get("_class_name")
    if pipeline not in WAN_PIPELINES:
        raise _fail(directory, f"its pipeline is {pipeline!r}; previz imports {', '.join(sorted(WAN_PIPELINES))}")
    # 2. Every component it needs, named in model_index.json and present on disk.
    expected = {"transformer": "WanTransformer3DModel", "vae": "AutoencoderKLWan", "text_encoder": None,
                "tokenizer": None, "scheduler": None}
    has_second = isinstance(index.get("transformer_2"), list) and index["transformer_2"][-1] is not None
    if has_second:
        expected["transformer_2"] = "WanTransformer3DModel"
    for name, cls in expected.items():
        entry = index.get(name)
        if not (isinstance(entry, list) and len(entry) == 2 and entry[1]):
            raise _fail(directory, f"model_index.json names no {name!r} component")
        if cls is not None and entry[1] != cls:
            raise _fail(directory, f"its {name} is a {entry[1]}, expected {cls}")
        if not (directory / name).is_dir():
            raise _fail(directory, f"the {name!r} component is missing (no {name}/ folder)")
    if index["text_encoder"][1] not in TEXT_ENCODERS:
        raise _fail(directory, f"its text encoder is a {index['text_encoder'][1]}, expected one of "
                               f"{', '.join(sorted(TEXT_ENCODERS))}")
    # 3. Safetensors only, before any config is trusted further.
    weighted = [n for n in expected if n not in ("tokenizer", "scheduler")]
    for name in weighted:
        try:
            check_safetensors_only(directory / name)
        except UnsafeWeightsError:
            raise
        except PackError:
            raise _fail(directory, f"the {name!r} component has no .safetensors weights") from None
    # 4. Configs: the layout from the VAE, the text shape from the encoder, and that they all agree.
    vae = _read_config(directory / "vae" / "config.json", directory)
    transformer = _read_config(directory / "transformer" / "config.json", directory)
    encoder = _read_config(directory / "text_encoder" / "config.json", directory)
    scheduler = _read_config(directory / "scheduler" / "scheduler_config.json", directory)
    z_dim = int(vae.get("z_dim", 16))
    for name in expected:
        if name.startswith("transformer"):
            cfg = transformer if name == "transformer" else _read_config(directory / name / "config.json", directory)
            if cfg.get("in_channels") != z_dim or cfg.get("out_channels") != z_dim:
                ins, outs = cfg.get("in_channels"), cfg.get("out_channels")
                raise _fail(directory, f"the VAE has {z_dim} latent channels but the {name} takes {ins} and "
                                       f"returns {outs} (a text-to-video Wan transformer takes the VAE's channels)")
    text_dim = int(encoder.get("d_model", 0))
    if transformer.get("text_dim") != text_dim:
        raise _fail(directory, f"the text encoder's width is {text_dim} but the transformer reads "
                               f"text_dim {transformer.get('text_dim')}")
    boundary = index.get("boundary_ratio")
    if has_second and not (isinstance(boundary, (int, float)) and 0 < boundary < 1):
        raise _fail(directory, f"it has transformer_2 but boundary_ratio is {boundary!r}, expected a number in (0, 1)")
    shift = scheduler.get("flow_shift", scheduler.get("shift"))
    if not isinstance(shift, (int, float)) or shift <= 0:
        shift = 5.0  # the Wan 2.x default where a scheduler leaves it out
    patch = transformer.get("patch_size") or [1, 2, 2]
    # A latent space is one VAE's weights: the same id only for the same files, so a draft hands its
    # latents to a final (latent handoff) only when both really share the VAE.
    vae_sha256 = hash_component_dir(directory / "vae")
    vae_hash = hashlib.sha256(json.dumps(vae_sha256, sort_keys=True).encode()).hexdigest()[:12]
    latent = LatentLayout(space=f"wan-vae-z{z_dim}-{vae_hash}", channels=z_dim,
                          temporal=int(vae.get("scale_factor_temporal", 4)),
                          spatial=int(vae.get("scale_factor_spatial", 8)), causal_first_frame=True)
    tiny = False
    if (directory / "decoder" / "config.json").is_file():
        decoder = _read_config(directory / "decoder" / "config.json", directory)
        check_safetensors_only(directory / "decoder")
        tiny = decoder.get("_class_name") == "AutoencoderTiny"
    return WanCheckpoint(
        directory=directory, pipeline=str(pipeline), experts=tuple(n for n in expected if n.startswith("transformer")),
        boundary_ratio=float(boundary) if has_second and boundary is not None else None, latent=latent,
        text_dim=text_dim,
        text_encoder=str(index["text_encoder"][1]), shift=float(shift), patch=int(patch[1]), tiny_decoder=tiny,
        diffusers_version=str(index.get("_diffusers_version", "")), vae_sha256=vae_sha256,
    )


def _component(ckpt: WanCheckpoint, name: str, cls: str, subfolder: str, **extra: Any) -> Component:
    directory = ckpt.directory / subfolder
    # Hashed once, here (the VAE already was, for its latent space id): loads compare the stamps.
    sha = ckpt.vae_sha256 if subfolder == "vae" else hash_component_dir(directory)
    return Component(name=name, cls=cls, subfolder=subfolder, sha256=sha, stamp=file_stamps(directory, sha), **extra)


def plan_pack(ckpt: WanCheckpoint, options: ImportOptions, root: Path) -> Pack:
    """The pack an import writes: the manifest's content, with the weights hashed."""
    kind = options.kind or ("final" if len(ckpt.experts) == 2 else "draft")
    if kind not in ("draft", "final"):
        raise _fail(ckpt.directory, f"kind {kind!r} is not draft or final")
    if kind == "final" and len(ckpt.experts) != 2:
        raise _fail(ckpt.directory, "a final pack needs two experts (transformer_2 and boundary_ratio, as Wan 2.2 "
                                    "A14B has); import it as --kind draft")
    if kind == "draft" and len(ckpt.experts) == 2:
        raise _fail(ckpt.directory, "it is a two-expert (A14B) checkpoint, which previz runs as a final pack; "
                                    "import it with --kind final")
    name = options.name or ckpt.directory.name
    if not _NAME.match(name):
        raise _fail(ckpt.directory, f"pack name {name!r} must be letters, digits, '.', '_' or '-' (at most 64)")
    text = TextConditioning(encoder=ckpt.text_encoder, dim=ckpt.text_dim, tokens=options.text_tokens)
    encoder = _component(ckpt, "text_encoder", ckpt.text_encoder, "text_encoder", tokenizer_subfolder="tokenizer")
    wan21 = ckpt.latent.channels == 16
    fps = options.fps or (16 if wan21 else 24)
    multiple = ckpt.latent.spatial * ckpt.patch
    source = {"format": "diffusers", "pipeline": ckpt.pipeline, "diffusers_version": ckpt.diffusers_version}
    common: dict[str, Any] = dict(id=name, kind=kind, root=root, latent=ckpt.latent, trained=True, label="imported",
                                  weights=ckpt.directory, source=source)
    if kind == "final":
        assert ckpt.boundary_ratio is not None
        components = {n: _component(ckpt, n, "WanTransformer3DModel", n) for n in ckpt.experts}
        components["vae"] = _component(ckpt, "vae", "AutoencoderKLWan", "vae")
        components["text_encoder"] = encoder
        final = FinalDefaults(width=options.width, height=options.height, fps=fps, steps=options.steps or 40,
                              shift=options.shift or ckpt.shift, guidance=options.guidance or 4.0,
                              guidance_2=options.guidance or 3.0, size_multiple=multiple,
                              text_tokens=options.text_tokens)
        return Pack(**common, components=components, description=f"Imported from {ckpt.directory} (Wan, two experts)",
                    conditioning=Conditioning(text=text), boundary_ratio=ckpt.boundary_ratio, final=final)
    decoder = (_component(ckpt, "decoder", "AutoencoderTiny", "decoder") if ckpt.tiny_decoder
               else _component(ckpt, "decoder", "AutoencoderKLWan", "vae"))
    components = {"denoiser": _component(ckpt, "denoiser", "WanTransformer3DModel", "transformer"),
                  "decoder": decoder, "text_encoder": encoder}
    draft = DraftDefaults(width=options.width, height=options.height, fps=fps, steps=options.steps or 4,
                          shift=options.shift or ckpt.shift, guidance=options.guidance or 1.0,
                          context_frames=options.context_frames, window_frames=options.window_frames,
                          size_multiple=multiple)
    context = ContextConditioning(kind="clean-latent-frames", frames=options.context_frames)
    return Pack(**common, components=components,
                description=f"Imported from {ckpt.directory} (Wan, text only: the camera does not steer it)",
                conditioning=Conditioning(text=text, context=context), draft=draft)


def import_checkpoint(directory: Path, options: ImportOptions | None = None, *, packs_dir: Path | None = None) -> Pack:
    """Import a Wan checkpoint directory: check it, hash it, write its manifest.  Returns the loaded pack."""
    options = options or ImportOptions()
    ckpt = read_checkpoint(directory)
    base = packs_dir or user_packs_dir()
    root = base / (options.name or ckpt.directory.name)
    if root.exists() and not options.force:
        raise _fail(ckpt.directory, f"a pack named {root.name!r} already exists in {base} "
                                    "(choose another --name, or --force to replace it)")
    pack = plan_pack(ckpt, options, root)
    # Checked by the same parser every load uses, before anything is written.
    manifest = parse_manifest(json.loads(json.dumps(manifest_dict(pack))), root)
    with atomic_dir(root) as tmp:
        write_manifest(dataclasses.replace(manifest, root=tmp))
    return manifest
