"""The session's rules, tested on the sans-I/O core directly: no socket, no event loop, no worker thread."""

from __future__ import annotations

import json

import pytest

from previz import protocol
from previz.drafts import DraftStore
from previz.errors import PrevizError
from previz.session_core import CancelTake, Outbox, SessionCore, SessionLimits, StartTake, StoreQuery


def make_core(model, **kwargs) -> SessionCore:
    core = SessionCore(1, model=model, limits=kwargs.pop("limits", SessionLimits()), backends=["torch"], **kwargs)
    core.connected()
    return core


def sent(core: SessionCore) -> list:
    """Everything queued for the client, events decoded."""
    out = []
    while (item := core.data_to_send()) is not None:
        out.append(json.loads(item) if isinstance(item, str) else item)
    return out


def events(core: SessionCore) -> list[dict]:
    return [e for e in sent(core) if isinstance(e, dict)]


def send(core: SessionCore, **message) -> list:
    return core.receive(json.dumps(message))


def generate(core: SessionCore, prompt: str = "a red cube", **message) -> StartTake:
    effects = send(core, type="generate", recipe={"prompt": prompt, "seconds": 1.0}, **message)
    (start,) = effects
    assert isinstance(start, StartTake)
    return start


def frame(take_id: int, index: int, size: int = 100) -> bytes:
    return protocol.pack_frame(protocol.FrameHeader(take_id, 0, index, index), b"\xff" * size)


def test_a_loopback_session_is_ready_at_once(torch_model):
    core = make_core(torch_model)
    (ready,) = events(core)
    assert ready["type"] == "ready" and ready["capabilities"]["limits"]["max_message_bytes"] == protocol.MAX_TEXT_BYTES


def test_a_token_session_answers_unauthorized_until_hello_brings_the_token(torch_model):
    core = make_core(torch_model, token="s3cret")
    assert events(core) == [{"type": "ready", "version": 1, "auth": "token"}]
    assert send(core, type="generate", id=1, recipe={"prompt": "sneaky"}) == []
    (error,) = events(core)
    assert (error["code"], error["re"], error["request"]) == ("unauthorized", 1, "generate")
    send(core, type="hello", version=1, token="wrong")
    assert events(core)[0]["code"] == "unauthorized"
    send(core, type="hello", version=1, token="s3cret")
    assert events(core)[0]["pack"]["id"] == "previz-test" and core.authenticated


def test_generate_starts_a_take_and_a_second_supersedes_it(torch_model):
    core = make_core(torch_model)
    sent(core)
    first = generate(core, id="g1")
    (started,) = events(core)
    assert started["type"] == "take_started" and started["re"] == "g1" and started["take_id"] == first.take_id
    assert first.recipe.prompt == "a red cube" and first.recipe.steps == 2
    core.take_frame(first.take_id, frame(first.take_id, 0))
    second = generate(core, "another", id="g2")
    out = sent(core)  # the waiting frame of the superseded take is gone; its end is announced
    assert [e["type"] for e in out] == ["take_cancelled", "take_started"]
    assert out[0] == {"type": "take_cancelled", "take_id": first.take_id, "reason": "generate"}
    core.take_frame(first.take_id, frame(first.take_id, 1))  # late output of the old take: ignored
    core.take_event(first.take_id, protocol.event("take_done", take_id=first.take_id), final=True)
    assert sent(core) == []
    core.take_frame(second.take_id, frame(second.take_id, 0))
    core.take_event(second.take_id, protocol.event("take_done", take_id=second.take_id), final=True)
    out = sent(core)
    assert isinstance(out[0], bytes) and out[1]["type"] == "take_done"
    assert core.live_take is None


def test_update_merges_into_the_recipe_and_needs_a_take_first(torch_model):
    core = make_core(torch_model)
    sent(core)
    assert send(core, type="update", id=4, recipe={"seed": 2}) == []
    (error,) = events(core)
    assert (error["code"], error["field"], error["re"], error["request"]) == ("no_take", "type", 4, "update")
    generate(core)
    (start,) = send(core, type="update", recipe={"seed": 9})
    assert (start.recipe.prompt, start.recipe.seed) == ("a red cube", 9)
    assert [e["type"] for e in events(core)] == ["take_started", "take_cancelled", "take_started"]


def test_cancel_ends_the_take_and_cancel_with_nothing_running_is_answered(torch_model):
    core = make_core(torch_model)
    sent(core)
    assert send(core, type="cancel", id="c0") == []
    (error,) = events(core)
    assert (error["code"], error["re"], error["request"]) == ("no_take", "c0", "cancel")
    start = generate(core)
    sent(core)
    core.take_frame(start.take_id, frame(start.take_id, 0))
    assert send(core, type="cancel", id="c1") == [CancelTake(start.take_id)]
    assert sent(core) == [{"type": "take_cancelled", "re": "c1", "take_id": start.take_id, "reason": "cancel"}]
    core.take_frame(start.take_id, frame(start.take_id, 1))
    assert sent(core) == []


def test_a_take_that_fails_ends_with_an_error_naming_it(torch_model):
    core = make_core(torch_model)
    start = generate(core)
    sent(core)
    oom = PrevizError("out of GPU memory")
    core.take_event(start.take_id, protocol.error_event(oom, "generate", take_id=start.take_id), final=True)
    (error,) = events(core)
    assert error["take_id"] == start.take_id and core.live_take is None
    assert send(core, type="cancel") == [] and events(core)[0]["code"] == "no_take"


@pytest.mark.parametrize(
    "raw, code, field",
    [
        ('{"type": "generate", "id": 5, "recipe": {"prompt": "x", "seed": 1e999}}', "out_of_range", "recipe.seed"),
        ('{"type": "generate", "id": 5, "recipe": {"prompt": "x", "seed": 1' + "0" * 400 + "}}", "out_of_range",
         "recipe.seed"),
        ('{"type": "generate", "id": 5, "recipe": {"prompt": "\\ud800 cube"}}', "invalid_string", "recipe.prompt"),
        ('{"type": "generate", "id": 5, "recipe": {"prompt": "x", "camera": {"preset": "static", "shake": '
         '{"amplitude": "x"}}}}', "invalid_camera", "camera.shake.amplitude"),
        ('{"type": "generate", "id": 5, "recipe": {"prompt": "x", "camera": {"keyframes": [{"time": 0, '
         '"position": [1e308, 0, 0]}, {"time": 1, "position": [-1e308, 0, 0]}]}}}', "invalid_camera",
         "camera.keyframes[0].position"),
        ('{"type": "generate", "id": 5, "recipe": {"prompt": "x", "camera": {"preset": "pan_left", '
         '"speed": 1e300}}}', "invalid_camera", "camera.speed"),
        ('{"type": "generate", "id": 5, "recipe": {"prompt": "x", "camera": {"preset": "static", '
         '"focal_mm": 1e308}}}', "invalid_camera", "camera.focal_mm"),
        ('{"type": "generate", "id": 5, "recipe": {"prompt": "x", "seconds": 1' + "0" * 18 + "}}",
         "invalid_recipe", "seconds"),
        ('{"type": "generate", "id": 5}', "missing_field", "recipe"),
        ('{"type": "generate", "id": 5, "recipe": {"prompt": "x", "scene": ' + "[" * 40 + "]" * 40 + "}}",
         "too_large", "recipe.scene" + "[0]" * 15),
        ('{"type": "hello", "id": 5}', "missing_field", "version"),
    ],
)
def test_bad_input_is_a_typed_error_with_the_request_it_answers(torch_model, raw, code, field):
    core = make_core(torch_model)
    sent(core)
    assert core.receive(raw) == []
    (error,) = events(core)
    assert (error["code"], error["field"], error["re"]) == (code, field, 5)
    assert error["request"] == json.loads(raw.replace("\\ud800", "?").replace("1e999", "1"))["type"]
    assert core.internal_errors == 0


def test_a_bug_in_a_handler_costs_one_request(torch_model, monkeypatch):
    from previz import session_core

    core = make_core(torch_model)
    sent(core)

    def broken(core, message):
        raise KeyError("oops")

    monkeypatch.setitem(session_core.HANDLERS, "list_drafts", broken)
    send(core, type="list_drafts", id=3)
    (error,) = events(core)
    assert (error["code"], error["re"], error["request"]) == ("previz_error", 3, "list_drafts")
    assert "KeyError" in error["message"] and core.internal_errors == 1
    generate(core)  # the session still works


def test_store_queries_run_on_a_store_and_answer_the_request(torch_model, tmp_path):
    core = make_core(torch_model)
    sent(core)
    (query,) = send(core, type="list_drafts", id=8, limit=5)
    assert isinstance(query, StoreQuery)
    store = DraftStore(tmp_path / "drafts")
    try:
        core.send_events(query.run(store))
        assert events(core) == [{"type": "drafts", "re": 8, "drafts": []}]
        (query,) = send(core, type="approve", id=9, draft_id="d0123456789abcdef")
        with pytest.raises(PrevizError) as err:
            query.run(store)
        core.request_failed(query.message, err.value)
        (error,) = events(core)
        assert (error["code"], error["re"], error["request"]) == ("unknown_draft", 9, "approve")
    finally:
        store.close()


def test_the_outbox_drops_the_oldest_frames_and_never_an_event():
    box = Outbox(max_frames=3, max_bytes=10_000)
    box.event("e0")
    for i in range(6):
        box.frame(bytes([i]) * 10)
        box.event(f"e{i + 1}")
    items = [box.pop() for _ in range(len(box))]
    assert [i for i in items if isinstance(i, str)] == [f"e{i}" for i in range(7)]
    assert [i[0] for i in items if isinstance(i, bytes)] == [3, 4, 5]  # the latest win
    assert box.dropped == 3 and box.frames == 0 and box.frame_bytes == 0


def test_the_outbox_is_bounded_in_bytes_too_but_keeps_the_newest_frame():
    box = Outbox(max_frames=8, max_bytes=250)
    for i in range(5):
        box.frame(bytes([i]) * 100)
    assert box.frames == 2 and box.frame_bytes == 200 and box.dropped == 3
    box.frame(b"\x09" * 1000)  # alone over the bound: still sent, the latest frame wins
    assert box.frames == 1 and box.pop() == b"\x09" * 1000


def test_frames_drop_only_while_the_socket_is_busy(torch_model):
    core = make_core(torch_model, limits=SessionLimits(frame_queue=2))
    start = generate(core)
    for i in range(8):  # a late event loop, not a slow client: up to 4x the queue waits
        core.take_frame(start.take_id, frame(start.take_id, i))
    assert core.outbox.frames == 8 and core.outbox.dropped == 0
    core.socket_busy = True
    core.take_frame(start.take_id, frame(start.take_id, 8))
    assert core.outbox.frames == 2 and core.outbox.dropped == 7
    indices = [protocol.unpack_frame(f)[0].index for f in sent(core) if isinstance(f, bytes)]
    assert indices == [7, 8]


def test_close_cancels_the_live_take_and_sends_nothing_more(torch_model):
    core = make_core(torch_model)
    start = generate(core)
    assert core.close() == [CancelTake(start.take_id)]
    core.send_event(protocol.event("drafts", drafts=[]))
    assert core.data_to_send() is None and core.receive('{"type": "cancel"}') == []
