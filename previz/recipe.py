"""The recipe: everything that determines a draft, and the checks it must pass.

A recipe is the unit of truth (DESIGN.md): the same recipe on the same pack and
backend gives the same frames, and promotion reads it instead of guessing.
:func:`resolve` fills the pack's native defaults and validates every field,
raising :class:`InvalidRecipeError` that names the field and the bad value.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from previz.errors import InvalidRecipeError
from previz.packs import Pack
from previz.scene import parse_scene, scene_from_prompt
from previz.validation import is_finite_number, is_valid_text

DEFAULT_PACK = "previz-backlot"
MAX_PROMPT_CHARS = 2000
MAX_SEED = 2**63 - 1
MIN_SIZE, MAX_SIZE = 32, 3840
MAX_STEPS = 50


@dataclass(frozen=True)
class Recipe:
    prompt: str
    seed: int = 0
    seconds: float = 4.0
    width: int | None = None  # None: the pack's native draft size
    height: int | None = None
    steps: int | None = None
    shift: float | None = None
    guidance: float | None = None  # classifier-free guidance scale; 1.0 = off
    negative_prompt: str = ""
    pack: str = DEFAULT_PACK
    backend: str = "torch"
    # The camera move: {"preset": name, "speed": x, ...} or {"keyframes": [...]},
    # optionally with "shake"; see previz.camera.  None: a locked-off camera.
    camera: dict[str, Any] | None = None
    # The blockout: {"time_of_day", "ground", "objects": [...]}; see previz.scene.
    # None: derived from the prompt, and the derived scene is what resolve() returns.
    scene: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Recipe:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise InvalidRecipeError(f"unknown recipe field {unknown[0]!r}", field=unknown[0])
        return cls(**data)


def _bad(field: str, value: Any, expected: str) -> InvalidRecipeError:
    shown = repr(value) if not isinstance(value, str) or len(value) <= 60 else f"{value[:57]!r}... ({len(value)} chars)"
    return InvalidRecipeError(f"{field} = {shown}: {expected}", field=field, value=value)


def _number(field: str, value: Any) -> float:
    if not is_finite_number(value):
        raise _bad(field, value, "expected a finite number")
    return float(value)


def _integer(field: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad(field, value, "expected an integer")
    return value


def check_prompt(field: str, prompt: Any) -> str:
    if not isinstance(prompt, str) or not prompt.strip():
        raise _bad(field, prompt, "the prompt is empty; describe the shot")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise _bad(field, prompt, f"at most {MAX_PROMPT_CHARS} characters")
    if not is_valid_text(prompt):
        raise _bad(field, prompt, "not valid Unicode (a lone UTF-16 surrogate?)")
    return prompt


def resolve(recipe: Recipe, pack: Pack) -> Recipe:
    """The recipe with the pack's defaults filled in, every field checked."""
    draft = pack.draft
    if draft is None:
        raise _bad("pack", pack.id, "is not a draft pack")

    check_prompt("prompt", recipe.prompt)
    negative = recipe.negative_prompt
    if not isinstance(negative, str) or len(negative) > MAX_PROMPT_CHARS or not is_valid_text(negative):
        raise _bad("negative_prompt", negative, f"valid text of at most {MAX_PROMPT_CHARS} characters")

    seed = _integer("seed", recipe.seed)
    if not 0 <= seed <= MAX_SEED:
        raise _bad("seed", seed, f"between 0 and {MAX_SEED}")

    seconds = _number("seconds", recipe.seconds)
    if not 0 < seconds <= draft.max_seconds:
        raise _bad("seconds", recipe.seconds, f"more than 0 and at most {draft.max_seconds:g} for pack {pack.id!r}")

    width = _integer("width", recipe.width if recipe.width is not None else draft.width)
    height = _integer("height", recipe.height if recipe.height is not None else draft.height)
    multiple = draft.size_multiple
    for name, value in (("width", width), ("height", height)):
        if value % multiple:
            raise _bad(name, value, f"must be a multiple of {multiple}")
        if not MIN_SIZE <= value <= MAX_SIZE:
            raise _bad(name, value, f"between {MIN_SIZE} and {MAX_SIZE} pixels")

    steps = _integer("steps", recipe.steps if recipe.steps is not None else draft.steps)
    if not 1 <= steps <= MAX_STEPS:
        raise _bad("steps", steps, f"between 1 and {MAX_STEPS}")
    shift = _number("shift", recipe.shift if recipe.shift is not None else draft.shift)
    if shift <= 0:
        raise _bad("shift", shift, "must be positive")
    guidance = _number("guidance", recipe.guidance if recipe.guidance is not None else draft.guidance)
    if guidance < 1.0:
        raise _bad("guidance", guidance, "at least 1.0 (1.0 turns guidance off)")
    if not isinstance(recipe.backend, str) or not recipe.backend:
        raise _bad("backend", recipe.backend, "a backend name")

    from previz.camera import camera_path  # here: scipy costs the CLI's parser half a second

    camera = recipe.camera if recipe.camera is not None else {"preset": "static"}
    camera_path(camera, seconds)  # raises CameraError naming what is wrong
    # Raises SceneError naming the field; the normal form is what drafts store and clients edit.
    scene = (parse_scene(recipe.scene) if recipe.scene is not None else scene_from_prompt(recipe.prompt)).to_dict()

    return dataclasses.replace(
        recipe, seed=seed, seconds=seconds, width=width, height=height, steps=steps, shift=shift, guidance=guidance,
        camera=camera, scene=scene,
    )


def frame_count(recipe: Recipe, fps: int) -> int:
    """Video frames in a take: seconds at the pack's fps, at least one."""
    return max(1, math.floor(float(recipe.seconds) * fps + 0.5))  # half up, not banker's rounding
