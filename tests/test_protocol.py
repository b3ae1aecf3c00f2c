"""Protocol v1 as pure functions: parsing, events, frame headers; only documented errors come out."""

from __future__ import annotations

import json
import random

import pytest

from previz import protocol
from previz.errors import InvalidRecipeError
from previz.protocol import FrameHeader, ProtocolError, pack_frame, parse_message, unpack_frame


def test_generate_parses_with_its_request_id():
    m = parse_message(json.dumps({"type": "generate", "id": 7, "recipe": {"prompt": "a cube", "seconds": 2,
                                                                           "camera": {"preset": "pan_left"}}}))
    assert (m.type, m.id) == ("generate", 7)
    assert m.fields["recipe"] == {"prompt": "a cube", "seconds": 2, "camera": {"preset": "pan_left"}}


@pytest.mark.parametrize(
    "message, code, field",
    [
        ({"type": "generate", "recipe": {}}, "missing_field", "recipe.prompt"),
        ({"type": "generate"}, "missing_field", "recipe"),
        ({"type": "generate", "recipe": []}, "wrong_type", "recipe"),
        ({"type": "hello"}, "missing_field", "version"),
        ({"type": "generate", "recipe": {"prompt": "x", "seed": True}}, "wrong_type", "recipe.seed"),
        ({"type": "generate", "recipe": {"prompt": "x", "seed": 1.5}}, "wrong_type", "recipe.seed"),
        ({"type": "update", "recipe": {}}, "missing_field", "recipe"),
        ({"type": "hello", "version": 2}, "unsupported_version", "version"),
        ({"type": "approve"}, "missing_field", "draft_id"),
        ({"type": "approve", "draft_id": 3}, "wrong_type", "draft_id"),
        ({"type": "list_drafts", "limit": 0}, "out_of_range", "limit"),
        ({"type": "cancel", "extra": 1}, "unknown_field", "extra"),
        ({"type": "cancel", "id": [1]}, "wrong_type", "id"),
        ({"kind": "generate"}, "missing_field", "type"),
    ],
)
def test_bad_messages_name_code_and_field(message, code, field):
    with pytest.raises(ProtocolError) as err:
        parse_message(json.dumps(message))
    assert (err.value.code, err.value.field) == (code, field)


def test_nan_and_oversized_and_binary_are_refused():
    with pytest.raises(ProtocolError, match="finite"):
        parse_message('{"type": "generate", "recipe": {"prompt": "x", "seconds": NaN}}')
    with pytest.raises(ProtocolError) as err:
        parse_message(json.dumps({"type": "generate", "recipe": {"prompt": "x" * 100_000}}))
    assert err.value.code == "too_large"
    with pytest.raises(ProtocolError) as err:
        parse_message(b"{}")
    assert err.value.code == "binary_not_allowed"


def test_only_protocol_errors_come_out_of_the_parser():
    rng = random.Random(0)
    samples = ['{"type":', "[]", "null", '{"type": null}', "{" * 5000 + "}" * 5000, '"\\ud800"']
    alphabet = '{}[]":,0123456789.eE-+ abtypegnrcio\\'
    samples += ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 60))) for _ in range(2000)]
    for text in samples:
        try:
            parse_message(text)
        except ProtocolError:
            pass


def test_frame_header_round_trip():
    header = FrameHeader(take_id=3, chunk=2, index=41, pts=41, last=True, image_format=protocol.FORMAT_WEBP)
    data = pack_frame(header, b"IMAGE")
    assert len(data) == protocol.FRAME_HEADER.size + 5 == 25
    assert unpack_frame(data) == (header, b"IMAGE")
    assert data[:4] == bytes([1, 1, 2, 0])  # version, flags (last), format, reserved
    with pytest.raises(ProtocolError):
        unpack_frame(data[:10])


def test_events_and_errors_are_json_with_the_request_echoed():
    assert json.loads(protocol.event("drafts", 5, drafts=[])) == {"type": "drafts", "re": 5, "drafts": []}
    err = json.loads(protocol.error_event(InvalidRecipeError("seconds = -1: bad", field="seconds"), "generate", 9))
    assert err == {"type": "error", "re": 9, "code": "invalid_recipe", "message": "seconds = -1: bad",
                   "field": "seconds", "request": "generate"}
