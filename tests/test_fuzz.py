"""Property-based fuzzing (Hypothesis): the parser, resolve() and the session core let only
documented, typed errors out, and valid messages round-trip.  Like websockets' fuzzers, anything
else escaping is a failure."""

from __future__ import annotations

import json
import math
import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from previz import protocol
from previz.errors import PrevizError
from previz.protocol import ProtocolError, parse_message
from previz.recipe import Recipe, resolve
from previz.session_core import SessionCore, SessionLimits

# PREVIZ_FUZZ_EXAMPLES=5000 for a deeper run than CI's.
EXAMPLES = int(os.environ.get("PREVIZ_FUZZ_EXAMPLES", "300"))
FAST = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Every code docs/protocol.md lists; an error with any other code is a bug.
DOCUMENTED_CODES = {
    "invalid_json", "bad_message", "unknown_type", "unknown_field", "wrong_type", "missing_field", "too_large",
    "out_of_range", "invalid_string", "binary_not_allowed", "unsupported_version", "unauthorized", "no_take",
    "invalid_recipe", "invalid_camera", "invalid_scene", "unknown_draft", "invalid_transition", "draft_error",
    "pack_error", "output_error", "previz_error",
}

# Hostile leaves: huge and tiny numbers, ints past 64 bits, odd Unicode (lone surrogates included).
hostile_text = st.one_of(
    st.text(max_size=30),
    st.sampled_from(["\ud800", "a\udfffb", "\x00", "\u202e", "\ufeff", "🎬" * 3, "x" * 3000, " ", ""]),
)
hostile_numbers = st.one_of(
    st.integers(),
    st.integers(min_value=2**62, max_value=2**80),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0, -1, 1e308, -1e308, 5e-324, 2**63, -(2**63) - 1, 10**100]),
)
leaves = st.one_of(st.none(), st.booleans(), hostile_numbers, hostile_text)
json_values = st.recursive(
    leaves,
    lambda children: st.one_of(st.lists(children, max_size=4), st.dictionaries(hostile_text, children, max_size=4)),
    max_leaves=20,
)

RECIPE_KEYS = ["prompt", "negative_prompt", "seed", "seconds", "width", "height", "steps", "camera", "scene"]
camera_values = st.one_of(
    json_values,
    st.fixed_dictionaries({"preset": st.sampled_from(["static", "orbit_left", "pan_left", "zoom_in",
                                                      "dolly_zoom_in", "arc_left", "crane_up", "nope"])},
                          optional={"speed": leaves, "focal_mm": leaves, "ease": leaves,
                                    "shake": st.dictionaries(st.sampled_from(["amplitude", "seed", "frequency"]),
                                                             leaves, max_size=3)}),
    st.fixed_dictionaries({"keyframes": st.lists(st.dictionaries(
        st.sampled_from(["time", "position", "rotation", "focal_mm", "sensor_width_mm"]),
        st.one_of(leaves, st.lists(hostile_numbers, max_size=5)), max_size=5), max_size=4)}),
)
scene_values = st.one_of(
    json_values,
    st.fixed_dictionaries({}, optional={
        "time_of_day": leaves, "ground": leaves,
        "objects": st.lists(st.dictionaries(st.sampled_from(["shape", "color", "position", "size", "yaw"]),
                                            st.one_of(leaves, st.lists(hostile_numbers, max_size=4)), max_size=5),
                            max_size=3)}),
)
recipe_values = st.fixed_dictionaries(
    {"prompt": st.one_of(hostile_text, leaves)},
    optional={"negative_prompt": st.one_of(hostile_text, leaves), "seed": hostile_numbers, "seconds": hostile_numbers,
              "width": hostile_numbers, "height": hostile_numbers, "steps": hostile_numbers,
              "camera": camera_values, "scene": scene_values},
)
messages = st.one_of(
    json_values,
    st.fixed_dictionaries(
        {"type": st.one_of(st.sampled_from(sorted(protocol.MESSAGE_TYPES)), leaves)},
        optional={"id": leaves, "recipe": st.one_of(recipe_values, json_values), "draft_id": leaves,
                  "version": leaves, "token": leaves, "limit": leaves, "state": leaves, "options": json_values,
                  "extra": leaves},
    ),
)


def _dumps(value) -> str:
    return json.dumps(value, allow_nan=True)


@FAST
@given(st.one_of(st.text(max_size=200), st.binary(max_size=50), messages.map(_dumps)))
def test_the_parser_raises_only_protocol_errors(data):
    try:
        message = parse_message(data)
    except ProtocolError as exc:
        assert exc.code in DOCUMENTED_CODES and exc.message
        json.loads(protocol.error_event(exc, exc.request, exc.request_id))  # always sendable
        return
    assert message.type in protocol.MESSAGE_TYPES


valid_recipes = st.fixed_dictionaries(
    {"prompt": st.text(min_size=1, max_size=50).filter(str.strip)},
    optional={"seed": st.integers(0, 2**63 - 1), "seconds": st.floats(0.05, 5.0), "steps": st.integers(1, 50),
              "camera": st.fixed_dictionaries({"preset": st.sampled_from(["static", "orbit_left", "dolly_in"])}),
              "negative_prompt": st.text(max_size=20)},
)
valid_messages = st.one_of(
    st.fixed_dictionaries({"type": st.just("generate"), "recipe": valid_recipes},
                          optional={"id": st.one_of(st.integers(-(2**63), 2**63 - 1), st.text(max_size=20))}),
    st.fixed_dictionaries({"type": st.sampled_from(["approve", "reject", "get_draft"]),
                           "draft_id": st.text(min_size=1, max_size=30)}),
    st.fixed_dictionaries({"type": st.just("list_drafts")},
                          optional={"limit": st.integers(1, 1000), "state": st.text(max_size=10)}),
    st.fixed_dictionaries({"type": st.just("hello"), "version": st.just(1)}, optional={"token": st.text(max_size=30)}),
    st.just({"type": "cancel"}),
)


@FAST
@given(valid_messages)
def test_valid_messages_round_trip(message):
    parsed = parse_message(json.dumps(message))
    assert parsed.type == message["type"] and parsed.id == message.get("id")
    for key, value in message.items():
        if key not in ("type", "id"):
            assert parsed.fields[key] == value


@FAST
@given(recipe_values)
def test_resolve_raises_only_previz_errors(test_pack, fields):
    try:
        recipe = resolve(Recipe(**fields), test_pack)
    except PrevizError as exc:
        assert exc.code in DOCUMENTED_CODES
        return
    assert 0 < recipe.seconds <= 5.0 and math.isfinite(recipe.seconds)
    json.dumps(recipe.to_dict(), allow_nan=False)  # what a draft stores is plain, finite JSON


@FAST
@given(st.lists(messages.map(_dumps), min_size=1, max_size=6))
def test_the_session_core_answers_anything_with_documented_events(torch_model, raws):
    core = SessionCore(1, model=torch_model, limits=SessionLimits(), backends=["torch"])
    core.connected()
    for raw in raws:
        core.receive(raw)
    while (item := core.data_to_send()) is not None:
        event = json.loads(item)
        if event["type"] == "error":
            assert event["code"] in DOCUMENTED_CODES and event["code"] != "previz_error", event
    assert core.internal_errors == 0


# ----------------------------------------------------------------------------- the take lifecycle

ops = st.lists(st.one_of(
    st.just(("generate",)), st.just(("update",)), st.just(("cancel",)), st.just(("read",)),
    st.tuples(st.just("frame"), st.integers(0, 6)),
    st.tuples(st.just("done"), st.integers(0, 6)),
    st.tuples(st.just("fail"), st.integers(0, 6)),
), max_size=25)


@settings(max_examples=150, deadline=None)
@given(ops)
def test_every_take_ends_exactly_once_and_nothing_of_it_follows(torch_model, script):
    core = SessionCore(1, model=torch_model, limits=SessionLimits(frame_queue=3), backends=["torch"])
    core.socket_busy = True
    out: list = []

    def drain() -> None:
        while (item := core.data_to_send()) is not None:
            out.append(json.loads(item) if isinstance(item, str) else protocol.unpack_frame(item)[0])

    for op in script:
        if op[0] == "read":  # the client reads at odd moments
            drain()
        elif op[0] in ("generate", "update", "cancel"):
            recipe = {"prompt": "a cube", "seconds": 0.5} if op[0] == "generate" else {"seed": 1}
            core.receive(json.dumps({"type": op[0], **({"recipe": recipe} if op[0] != "cancel" else {})}))
        elif op[0] == "frame":
            core.take_frame(op[1], protocol.pack_frame(protocol.FrameHeader(op[1], 0, 0, 0), b"img"))
        elif op[0] == "done":
            core.take_event(op[1], protocol.event("take_done", take_id=op[1]), final=True)
        else:
            core.take_event(op[1], protocol.error_event(PrevizError("boom"), "generate", take_id=op[1]), final=True)
    drain()
    ended: set[int] = set()
    started: set[int] = set()
    for item in out:
        if isinstance(item, protocol.FrameHeader):
            assert item.take_id in started and item.take_id not in ended
            continue
        take = item.get("take_id")
        if item["type"] == "take_started":
            assert take not in started
            started.add(take)
        elif item["type"] in ("take_done", "take_cancelled") or (item["type"] == "error" and take is not None):
            assert take in started and take not in ended, item
            ended.add(take)
    assert len(started - ended) <= 1 and (started - ended) <= {core.live_take}
