"""The scene blockout: sky, ground and simple objects in metres, and how a prompt becomes one.

Directors block a shot in grey boxes before they light it.  A recipe's
``scene`` is that blockout: a time of day, a ground material and up to
:data:`MAX_OBJECTS` primitive objects.  The blockout renderer
(:mod:`previz.blockout`) draws it along the camera path into the control video
that backlot packs follow, so layout and camera come from the scene and the
model only has to supply the look.

World convention (as :mod:`previz.camera`): right-handed, +Y up, metres.  The
camera presets start at (0, 1.6, 0) looking down -Z at a subject 4 m away, so
a blocked shot lives at negative z.  An object's ``position`` is the centre of
its footprint on the ground (its base), ``size`` is (width x, height y, depth z)
before ``yaw`` (degrees, counter-clockwise seen from above) turns it.

:func:`scene_from_prompt` is a deterministic parser of the backlot vocabulary
(colours, shapes, materials, times of day, counts, simple relations), so a
prompt alone gives a scene, and the client is shown what was understood.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from previz.errors import InputFileError, PrevizError
from previz.validation import is_finite_number

MAX_OBJECTS = 16
MIN_SIZE_M, MAX_SIZE_M = 0.05, 50.0
MAX_DISTANCE_M = 200.0
MAX_HEIGHT_M = 100.0

TIMES_OF_DAY = ("dawn", "day", "dusk", "night")
GROUNDS = ("grass", "sand", "asphalt", "snow", "dirt", "concrete")
SHAPES = ("box", "sphere", "cylinder", "pillar", "cone", "wall")

# Named colours (sRGB 0-255): what a filmmaker says, and what the parser knows.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (200, 40, 35), "orange": (230, 120, 30), "yellow": (235, 200, 40), "green": (50, 150, 60),
    "blue": (40, 80, 200), "purple": (120, 60, 170), "pink": (235, 130, 170), "cyan": (40, 180, 200),
    "white": (235, 235, 230), "black": (25, 25, 28), "grey": (128, 128, 128), "brown": (120, 80, 45),
    "gold": (212, 175, 55), "silver": (190, 192, 196), "teal": (30, 128, 128), "beige": (215, 200, 165),
}
COLOR_ALIASES = {"gray": "grey", "violet": "purple", "golden": "gold", "crimson": "red", "navy": "blue",
                 "wooden": "brown", "wood": "brown", "metal": "silver", "metallic": "silver", "steel": "silver",
                 "stone": "grey", "concrete": "grey", "marble": "white"}
DEFAULT_COLOR = "grey"  # a blockout's grey box

DEFAULT_SIZES: dict[str, tuple[float, float, float]] = {
    "box": (1.0, 1.0, 1.0), "sphere": (1.0, 1.0, 1.0), "cylinder": (0.8, 1.2, 0.8),
    "pillar": (0.5, 3.0, 0.5), "cone": (0.8, 1.2, 0.8), "wall": (4.0, 2.0, 0.3),
}


class SceneError(PrevizError, ValueError):
    """A scene field is malformed or out of range; ``field`` names it (``scene.objects[2].size``)."""

    code = "invalid_scene"

    def __init__(self, message: str, *, field: str = "scene", value: Any = None) -> None:
        super().__init__(f"{field}: {message}", field=field, value=value)


@dataclass(frozen=True)
class SceneObject:
    shape: str
    color: tuple[int, int, int]
    position: tuple[float, float, float]  # centre of the base, metres
    size: tuple[float, float, float]  # width (x), height (y), depth (z), metres
    yaw: float = 0.0  # degrees about +Y

    def to_dict(self) -> dict[str, Any]:
        return {"shape": self.shape, "color": color_name(self.color), "position": list(self.position),
                "size": list(self.size), "yaw": self.yaw}


@dataclass(frozen=True)
class Scene:
    time_of_day: str = "day"
    ground: str = "grass"
    objects: tuple[SceneObject, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        return {"time_of_day": self.time_of_day, "ground": self.ground,
                "objects": [o.to_dict() for o in self.objects]}


def color_name(rgb: tuple[int, int, int]) -> str:
    """A palette name where the colour is one, else ``#rrggbb``: the form a person edits."""
    for name, value in COLORS.items():
        if value == tuple(rgb):
            return name
    return "#{:02x}{:02x}{:02x}".format(*rgb)


# ----------------------------------------------------------------------------- validation


def _finite(value: Any, where: str, lo: float, hi: float) -> float:
    if not is_finite_number(value):
        raise SceneError(f"{str(value)[:40]} is not a finite number", field=where, value=value)
    if not lo <= value <= hi:
        raise SceneError(f"{value:g} is outside {lo:g}..{hi:g}", field=where, value=value)
    return float(value)


def _triple(value: Any, where: str, lo: float, hi: float) -> tuple[float, float, float]:
    if not isinstance(value, (list, tuple)) or len(value) != 3:
        raise SceneError("expected three numbers [x, y, z]", field=where, value=value)
    x, y, z = (_finite(v, f"{where}[{i}]", lo, hi) for i, v in enumerate(value))
    return x, y, z


def parse_color(value: Any, where: str) -> tuple[int, int, int]:
    """A palette name, ``#rrggbb``, or ``[r, g, b]`` in 0..255."""
    if isinstance(value, str):
        name = COLOR_ALIASES.get(value.strip().lower(), value.strip().lower())
        if name in COLORS:
            return COLORS[name]
        if re.fullmatch(r"#[0-9a-f]{6}", name):
            return int(name[1:3], 16), int(name[3:5], 16), int(name[5:7], 16)
        raise SceneError(f"unknown colour {value!r}: a name ({', '.join(COLORS)}), #rrggbb or [r, g, b]",
                         field=where, value=value)
    if isinstance(value, (list, tuple)) and len(value) == 3 and all(
            isinstance(c, int) and not isinstance(c, bool) and 0 <= c <= 255 for c in value):
        return int(value[0]), int(value[1]), int(value[2])
    raise SceneError("a colour is a name, #rrggbb or [r, g, b] with integers 0..255", field=where, value=value)


OBJECT_KEYS = {"shape", "color", "position", "size", "yaw"}
SCENE_KEYS = {"time_of_day", "ground", "objects"}


def parse_object(data: Any, where: str) -> SceneObject:
    if not isinstance(data, dict):
        raise SceneError("an object is {shape, color, position, size, yaw}", field=where, value=data)
    unknown = sorted(set(data) - OBJECT_KEYS)
    if unknown:
        raise SceneError(f"unknown field {unknown[0]!r} (known: {', '.join(sorted(OBJECT_KEYS))})",
                         field=f"{where}.{unknown[0]}", value=unknown[0])
    shape = data.get("shape")
    if shape not in SHAPES:
        raise SceneError(f"unknown shape {shape!r}: one of {', '.join(SHAPES)}", field=f"{where}.shape", value=shape)
    if "position" not in data:
        raise SceneError("missing (the centre of the object's base, [x, y, z] metres)", field=f"{where}.position")
    position = _triple(data["position"], f"{where}.position", -MAX_DISTANCE_M, MAX_DISTANCE_M)
    if not 0.0 <= position[1] <= MAX_HEIGHT_M:
        raise SceneError(f"height {position[1]:g} m is outside 0..{MAX_HEIGHT_M:g} (y is the base, 0 = on the ground)",
                         field=f"{where}.position[1]", value=position[1])
    size = _triple(data.get("size", DEFAULT_SIZES[shape]), f"{where}.size", MIN_SIZE_M, MAX_SIZE_M)
    yaw = _finite(data.get("yaw", 0.0), f"{where}.yaw", -3600.0, 3600.0)
    return SceneObject(shape=shape, color=parse_color(data.get("color", DEFAULT_COLOR), f"{where}.color"),
                       position=position, size=size, yaw=yaw)


def parse_scene(data: Any) -> Scene:
    """A scene from its JSON form, every field checked; errors name the field."""
    if isinstance(data, Scene):
        return data
    if not isinstance(data, dict):
        raise SceneError("a scene is an object {time_of_day, ground, objects}", value=data)
    unknown = sorted(set(data) - SCENE_KEYS)
    if unknown:
        raise SceneError(f"unknown field {unknown[0]!r} (known: {', '.join(sorted(SCENE_KEYS))})",
                         field=f"scene.{unknown[0]}", value=unknown[0])
    tod = data.get("time_of_day", "day")
    if tod not in TIMES_OF_DAY:
        raise SceneError(f"{tod!r} is not one of {', '.join(TIMES_OF_DAY)}", field="scene.time_of_day", value=tod)
    ground = data.get("ground", "grass")
    if ground not in GROUNDS:
        raise SceneError(f"{ground!r} is not one of {', '.join(GROUNDS)}", field="scene.ground", value=ground)
    objects = data.get("objects", [])
    if not isinstance(objects, list):
        raise SceneError("expected a list of objects", field="scene.objects", value=objects)
    if len(objects) > MAX_OBJECTS:
        raise SceneError(f"{len(objects)} objects; at most {MAX_OBJECTS}", field="scene.objects", value=len(objects))
    return Scene(time_of_day=tod, ground=ground,
                 objects=tuple(parse_object(o, f"scene.objects[{i}]") for i, o in enumerate(objects)))


def load_scene_file(path: Path) -> dict[str, Any]:
    """A scene from a JSON file (as ``previz scene`` writes it), checked; errors say what is wrong in words."""
    path = Path(path)
    if not path.exists():
        raise InputFileError(f"{path} does not exist", field="scene", value=str(path))
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputFileError(f"{path} is not a readable JSON scene file ({getattr(exc, 'msg', None) or exc})",
                             field="scene", value=str(path)) from None
    return parse_scene(data).to_dict()


# ----------------------------------------------------------------------------- the prompt parser

NUMBERS = {"a": 1, "an": 1, "one": 1, "single": 1, "two": 2, "pair": 2, "three": 3, "four": 4, "five": 5,
           "six": 6, "seven": 7, "eight": 8, "nine": 9, "ten": 10, "several": 3, "some": 2, "few": 3}
# noun -> (shape, size in metres or None for the shape's default)
NOUNS: dict[str, tuple[str, tuple[float, float, float] | None]] = {
    "cube": ("box", None), "box": ("box", None), "crate": ("box", (0.8, 0.8, 0.8)), "block": ("box", None),
    "sphere": ("sphere", None), "ball": ("sphere", (0.6, 0.6, 0.6)), "orb": ("sphere", None),
    "globe": ("sphere", None), "boulder": ("sphere", (1.6, 1.2, 1.4)), "rock": ("sphere", (0.9, 0.6, 0.8)),
    "cylinder": ("cylinder", None), "barrel": ("cylinder", (0.6, 0.9, 0.6)), "drum": ("cylinder", (0.6, 0.9, 0.6)),
    "tank": ("cylinder", (2.5, 3.0, 2.5)), "pillar": ("pillar", None), "column": ("pillar", None),
    "post": ("pillar", (0.2, 1.8, 0.2)), "pole": ("pillar", (0.15, 4.0, 0.15)), "tower": ("pillar", (2.0, 12.0, 2.0)),
    "cone": ("cone", None), "pyramid": ("cone", (1.5, 1.5, 1.5)), "tree": ("cone", (1.6, 4.0, 1.6)),
    "wall": ("wall", None), "fence": ("wall", (5.0, 1.2, 0.1)), "barrier": ("wall", (3.0, 1.0, 0.4)),
    "car": ("box", (1.8, 1.4, 4.2)), "van": ("box", (2.0, 2.2, 5.0)), "truck": ("box", (2.5, 3.0, 7.0)),
    "house": ("box", (6.0, 4.5, 6.0)), "building": ("box", (10.0, 15.0, 10.0)), "shed": ("box", (3.0, 2.5, 3.0)),
    "table": ("box", (1.6, 0.75, 0.9)), "bench": ("box", (1.8, 0.5, 0.5)), "person": ("pillar", (0.5, 1.75, 0.3)),
    "statue": ("pillar", (0.8, 2.5, 0.8)), "monolith": ("box", (1.2, 4.0, 0.4)),
    "lighthouse": ("pillar", (3.0, 14.0, 3.0)), "hut": ("box", (3.0, 2.5, 3.0)), "container": ("box", (2.4, 2.6, 6.0)),
}
SIZE_WORDS = {"tiny": 0.4, "small": 0.6, "little": 0.6, "big": 1.6, "large": 1.6, "huge": 2.5, "giant": 3.0,
              "enormous": 3.0, "massive": 2.5}
TALL_WORDS = {"tall": (1.0, 2.0, 1.0), "short": (1.0, 0.5, 1.0), "low": (1.0, 0.5, 1.0), "wide": (2.0, 1.0, 1.0),
              "long": (1.0, 1.0, 2.0), "flat": (1.0, 0.3, 1.0)}
TIME_WORDS = {
    "dawn": "dawn", "sunrise": "dawn", "morning": "dawn", "daybreak": "dawn",
    "day": "day", "daytime": "day", "noon": "day", "midday": "day", "afternoon": "day", "sunny": "day",
    "dusk": "dusk", "sunset": "dusk", "evening": "dusk", "twilight": "dusk", "golden": "dusk",
    "night": "night", "midnight": "night", "nighttime": "night", "moonlit": "night", "moonlight": "night",
}
GROUND_WORDS = {
    "grass": "grass", "grassy": "grass", "lawn": "grass", "meadow": "grass", "field": "grass", "park": "grass",
    "sand": "sand", "sandy": "sand", "beach": "sand", "desert": "sand", "dune": "sand", "dunes": "sand",
    "asphalt": "asphalt", "road": "asphalt", "street": "asphalt", "tarmac": "asphalt", "parking": "asphalt",
    "highway": "asphalt", "snow": "snow", "snowy": "snow", "ice": "snow", "icy": "snow", "tundra": "snow",
    "dirt": "dirt", "mud": "dirt", "muddy": "dirt", "soil": "dirt", "earth": "dirt", "farm": "dirt",
    "concrete": "concrete", "pavement": "concrete", "plaza": "concrete", "courtyard": "concrete",
    "square": "concrete", "rooftop": "concrete", "warehouse": "concrete",
}
# Phrases that relate the object before them to the object after them.
RELATIONS = [
    ("left", ("to the left of", "left of", "on the left of")),
    ("right", ("to the right of", "right of", "on the right of")),
    ("on", ("on top of", "on", "atop", "upon")),
    ("behind", ("behind", "in back of", "beyond")),
    ("front", ("in front of", "before")),
    ("next", ("next to", "beside", "by", "near", "alongside")),
]
ROW_DISTANCE = 6.0  # metres in front of the camera where a prompt's objects stand
ROW_GAP = 0.8  # metres between neighbours in a row
_WORD = re.compile(r"[a-z]+|\d+")


def _singular(word: str) -> str:
    if word in NOUNS:
        return word
    for suffix, repl in (("ies", "y"), ("ches", "ch"), ("xes", "x"), ("es", "e"), ("es", ""), ("s", "")):
        if word.endswith(suffix) and word[: len(word) - len(suffix)] + repl in NOUNS:
            return word[: len(word) - len(suffix)] + repl
    return word


@dataclass
class _Phrase:
    shape: str
    size: tuple[float, float, float]
    color: tuple[int, int, int]
    count: int
    relation: str | None = None  # how this phrase stands to ``anchor``
    anchor: int | None = None
    placed: list[tuple[float, float, float]] = field(default_factory=list)


def _relation_at(words: list[str], i: int) -> tuple[str, int] | None:
    """The relation starting at word ``i`` and how many words it spans."""
    for name, phrases in RELATIONS:
        for phrase in phrases:
            parts = phrase.split()
            if words[i: i + len(parts)] == parts:
                return name, len(parts)
    return None


def scene_from_prompt(prompt: str) -> Scene:
    """The blockout a prompt describes, deterministically.

    ``"two red boxes left of a tall blue pillar on sand at dusk"`` gives a dusk
    scene on sand with a tall blue pillar ahead and two red boxes to its left.
    Words outside the vocabulary are ignored: a prompt with no known objects
    gives an empty scene with the right sky and ground.
    """
    words = _WORD.findall(prompt.lower())
    time_of_day, ground = "day", "grass"
    phrases: list[_Phrase] = []
    pending_relation: str | None = None
    count, scale, stretch, color = 1, 1.0, (1.0, 1.0, 1.0), None
    i = 0
    while i < len(words):
        word = words[i]
        rel = _relation_at(words, i)
        if rel is not None and phrases and not (rel[0] == "on" and _is_ground_phrase(words, i + rel[1])):
            pending_relation = rel[0]
            i += rel[1]
            continue
        noun = _singular(word)
        if noun in NOUNS:
            shape, size = NOUNS[noun]
            base = size or DEFAULT_SIZES[shape]
            dims = tuple(b * scale * s for b, s in zip(base, stretch, strict=True))
            phrases.append(_Phrase(shape=shape, size=dims,  # type: ignore[arg-type]
                                   color=color or COLORS[DEFAULT_COLOR], count=count))
            if pending_relation is not None:  # "A <rel> B": A stands relative to B, the phrase just read
                phrases[-2].relation, phrases[-2].anchor = pending_relation, len(phrases) - 1
                pending_relation = None
            count, scale, stretch, color = 1, 1.0, (1.0, 1.0, 1.0), None
        elif word.isdigit():
            count = max(1, min(int(word), MAX_OBJECTS))
        elif word in NUMBERS:
            count = NUMBERS[word]
        elif word in SIZE_WORDS:
            scale *= SIZE_WORDS[word]
        elif word in TALL_WORDS:
            stretch = tuple(a * b for a, b in zip(stretch, TALL_WORDS[word], strict=True))  # type: ignore[assignment]
        elif word in COLORS or word in COLOR_ALIASES:
            if word == "golden" and i + 1 < len(words) and words[i + 1] == "hour":
                time_of_day = "dusk"
            elif not (word in ("concrete", "stone") and i + 1 < len(words) and words[i + 1] in GROUND_WORDS):
                color = COLORS[COLOR_ALIASES.get(word, word)]
        if word in TIME_WORDS and not (word == "golden" and i + 1 < len(words) and words[i + 1] != "hour"):
            time_of_day = TIME_WORDS[word]
        if word in GROUND_WORDS and noun not in NOUNS:
            ground = GROUND_WORDS[word]
        i += 1
    objects = _layout(phrases)
    return Scene(time_of_day=time_of_day, ground=ground, objects=tuple(objects[:MAX_OBJECTS]))


def _is_ground_phrase(words: list[str], j: int) -> bool:
    """``on a sandy plain`` / ``on the grass``: 'on' names the ground, not an object."""
    for word in words[j: j + 4]:
        if word in GROUND_WORDS:
            return True
        if _singular(word) in NOUNS:
            return False
    return True  # "on" followed by nothing we know stands for nothing to stack on


def _layout(phrases: list[_Phrase]) -> list[SceneObject]:
    """Place phrases: anchors in a row across the frame, the others relative to their anchor."""
    objects: list[SceneObject] = []
    roots = [i for i, p in enumerate(phrases) if p.anchor is None]
    widths = [_group_width(phrases[i]) for i in roots]
    x = -(sum(widths) + ROW_GAP * (len(roots) - 1)) / 2.0
    for i, width in zip(roots, widths, strict=True):
        _place(phrases, i, (x + width / 2.0, 0.0, -ROW_DISTANCE))
        x += width + ROW_GAP
    placing = [i for i in range(len(phrases)) if phrases[i].anchor is not None]
    for _ in range(len(placing)):  # anchors may themselves be relative: settle in dependency order
        for i in placing:
            p = phrases[i]
            anchor = phrases[p.anchor] if p.anchor is not None else None
            if p.placed or anchor is None or not anchor.placed:
                continue
            _place(phrases, i, _relative(p, anchor))
    for p in phrases:
        for position in p.placed:
            objects.append(SceneObject(shape=p.shape, color=p.color, position=position, size=p.size))
    return objects


def _group_width(p: _Phrase) -> float:
    return p.count * p.size[0] + (p.count - 1) * ROW_GAP


def _place(phrases: list[_Phrase], i: int, centre: tuple[float, float, float]) -> None:
    """A phrase's ``count`` objects side by side, centred on ``centre``."""
    p = phrases[i]
    start = centre[0] - _group_width(p) / 2.0 + p.size[0] / 2.0
    p.placed = [(round(start + k * (p.size[0] + ROW_GAP), 3), round(centre[1], 3), round(centre[2], 3))
                for k in range(p.count)]


def _relative(p: _Phrase, anchor: _Phrase) -> tuple[float, float, float]:
    ax = sum(pos[0] for pos in anchor.placed) / len(anchor.placed)
    ay, az = anchor.placed[0][1], anchor.placed[0][2]
    half_group = _group_width(p) / 2.0
    half_anchor = _group_width(anchor) / 2.0
    if p.relation == "on":
        return ax, ay + anchor.size[1], az
    if p.relation == "left":
        return ax - half_anchor - ROW_GAP - half_group, ay, az
    if p.relation in ("right", "next"):
        return ax + half_anchor + ROW_GAP + half_group, ay, az
    if p.relation == "behind":
        return ax, ay, az - anchor.size[2] / 2.0 - ROW_GAP - p.size[2] / 2.0
    return ax, ay, az + anchor.size[2] / 2.0 + ROW_GAP + p.size[2] / 2.0  # in front


def describe(scene: Scene) -> str:
    """A caption in the parser's own vocabulary (used to caption training clips)."""
    parts = []
    for obj in scene.objects:
        name = color_name(obj.color)
        parts.append(f"a {obj.shape}" if name.startswith("#") else f"a {name} {obj.shape}")
    things = ", ".join(parts) if parts else "an empty plain"
    return f"{things} on {scene.ground} at {scene.time_of_day}"
