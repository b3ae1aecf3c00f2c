"""The live server over a real socket, with a real websocket client."""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field

import pytest
from conftest import LiveServer
from websockets.sync.client import connect

from previz.protocol import unpack_frame

pytestmark = pytest.mark.filterwarnings("ignore:connect\\(\\) must be used:DeprecationWarning")

DEADLINE = 120  # seconds: generous bounds so a slow CI machine never flakes; these are not timing assertions


@dataclass
class Client:
    """A test client that records everything it receives."""

    ws: object
    events: list[dict] = field(default_factory=list)
    frames: list = field(default_factory=list)  # (header, image bytes)

    def send(self, **message) -> None:
        self.ws.send(json.dumps(message))

    def recv(self, timeout: float = DEADLINE):
        data = self.ws.recv(timeout=timeout)
        if isinstance(data, bytes):
            header, image = unpack_frame(data)
            self.frames.append((header, image))
            return header
        event = json.loads(data)
        self.events.append(event)
        return event

    def until(self, predicate, timeout: float = DEADLINE):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            item = self.recv(timeout=max(0.1, end - time.monotonic()))
            if isinstance(item, dict) and predicate(item):
                return item
        raise AssertionError(f"no matching event; got {[e['type'] for e in self.events]}")

    def event(self, kind: str, timeout: float = DEADLINE) -> dict:
        return self.until(lambda e: e["type"] == kind, timeout)

    def frames_of(self, take_id: int) -> list:
        return [h for h, _ in self.frames if h.take_id == take_id]


def open_client(server: LiveServer, *, receive_buffer: int | None = None) -> Client:
    sock = None
    if receive_buffer is not None:  # a client on a thin pipe: the kernel holds little for it
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        sock.connect(("127.0.0.1", server.port))
    client = Client(connect(server.ws_url, sock=sock, max_size=2**22))
    assert client.event("ready")["version"] == 1
    return client


def test_ready_announces_capabilities_and_an_honest_label(live_server):
    client = open_client(live_server)
    ready = client.events[0]
    assert ready["pack"] == {"id": "previz-test", "label": "untrained", "trained": False,
                             "latent_space": "previz-test-v0"}
    caps = ready["capabilities"]
    assert "orbit_left" in caps["presets"] and caps["limits"]["max_seconds"] == 5.0
    assert caps["limits"]["sizes"] == [[64, 32]]


def test_generate_streams_every_frame_in_order_and_stores_a_draft(live_server):
    client = open_client(live_server)
    client.send(type="generate", id=1, recipe={"prompt": "a red cube", "seconds": 1.0, "seed": 3,
                                               "camera": {"preset": "orbit_left"}})
    started = client.event("take_started")
    assert started["re"] == 1 and started["frames"] == 30 and started["fps"] == 30
    assert started["recipe"]["camera"] == {"preset": "orbit_left"} and started["recipe"]["steps"] == 2
    done = client.event("take_done")
    indices = [h.index for h in client.frames_of(started["take_id"])]
    assert indices == list(range(30))  # one fast client: nothing dropped
    assert [h.pts for h in client.frames_of(started["take_id"])] == indices
    assert client.frames_of(started["take_id"])[-1].last
    assert client.frames[0][1][:2] == b"\xff\xd8"  # JPEG
    chunks = [e for e in client.events if e["type"] == "chunk_done"]
    assert len(chunks) == started["chunks"] and chunks[-1]["frames_done"] == 30
    assert chunks[-1]["gen_fps"] > 0 and chunks[-1]["ttff_ms"] > 0
    draft = live_server.store.get(done["draft_id"])
    assert draft.state == "draft" and draft.frames == 30
    assert draft.recipe["prompt"] == "a red cube" and draft.recipe["camera"] == {"preset": "orbit_left"}
    assert draft.meta["pack"]["label"] == "untrained"


def test_update_mid_take_stops_the_old_take_within_a_chunk(live_server):
    client = open_client(live_server)
    client.send(type="generate", recipe={"prompt": "a long shot", "seconds": 5.0})
    first = client.event("take_started")["take_id"]
    client.until(lambda e: e["type"] == "chunk_done")
    received_before = len(client.frames_of(first))
    client.send(type="update", recipe={"camera": {"preset": "dolly_in", "speed": 2}})
    cancelled = client.event("take_cancelled")
    assert cancelled == {"type": "take_cancelled", "take_id": first, "reason": "update"}
    second = client.event("take_started")
    assert second["recipe"]["prompt"] == "a long shot"  # update merges into the recipe
    assert second["recipe"]["camera"] == {"preset": "dolly_in", "speed": 2}
    client.event("take_done")
    frames_per_chunk = 4 * 3  # the test pack's first window: 3 latent frames x 4 frames
    assert len(client.frames_of(first)) - received_before <= frames_per_chunk
    assert len(client.frames_of(first)) < 150
    assert [h.index for h in client.frames_of(second["take_id"])] == list(range(150))


def test_two_clients_each_get_only_their_own_frames(live_server):
    a, b = open_client(live_server), open_client(live_server)
    a.send(type="generate", recipe={"prompt": "client a", "seconds": 1.0})
    b.send(type="generate", recipe={"prompt": "client b", "seconds": 0.5})
    done_a, done_b = a.event("take_done"), b.event("take_done")
    assert len(a.frames) == 30 and len(b.frames) == 15
    assert max(h.index for h, _ in b.frames) == 14
    assert live_server.store.get(done_a["draft_id"]).recipe["prompt"] == "client a"
    assert live_server.store.get(done_b["draft_id"]).recipe["prompt"] == "client b"
    assert not any(e["type"] == "take_done" and e["draft_id"] == done_b["draft_id"] for e in a.events)


def test_a_client_that_stops_reading_does_not_hold_up_another(test_pack, tmp_path, cache_dir):
    # Thin pipes at both ends, so a client that stops reading backs up into the server quickly.
    live_server = LiveServer(test_pack, tmp_path / "drafts", cache_dir, socket_send_buffer=4096)
    try:
        _slow_client_case(live_server)
    finally:
        live_server.close()


def _slow_client_case(live_server: LiveServer) -> None:
    stalled = open_client(live_server, receive_buffer=4096)
    stalled.send(type="generate", recipe={"prompt": "never read", "seconds": 5.0})
    reader = open_client(live_server)
    for i in range(3):  # the stalled client's take runs the whole time
        reader.send(type="generate", recipe={"prompt": f"reader {i}", "seconds": 1.0})
        reader.event("take_done")
    session = next(s for s in live_server.server.sessions.values()
                   if s.core.recipe and s.core.recipe["prompt"] == "never read")
    outbox = session.core.outbox
    assert outbox.frames <= session.limits.frame_queue  # bounded: the latest frames win
    deadline = time.monotonic() + DEADLINE
    while live_server.server.worker.busy() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert outbox.dropped > 0 and outbox.frames <= session.limits.frame_queue
    assert sum(1 for item in outbox.items if isinstance(item, bytes)) == outbox.frames
    # Once it reads again, it still gets its control events (never dropped) and the latest frames.
    done = stalled.event("take_done")
    assert live_server.store.get(done["draft_id"]).frames == 150  # the stored draft has every frame


@pytest.mark.parametrize(
    "payload, code, field",
    [
        ("{not json", "invalid_json", None),
        (json.dumps({"type": "generate", "recipe": {"prompt": 5}}), "wrong_type", "recipe.prompt"),
        (json.dumps({"type": "generate", "recipe": {"prompt": "x", "seconds": "4"}}), "wrong_type",
         "recipe.seconds"),
        (json.dumps({"type": "teleport"}), "unknown_type", "type"),
        (json.dumps({"type": "generate", "recipe": {"prompt": "x" * 1_000_000}}), "too_large", None),
        (json.dumps({"type": "generate", "recipe": {"prompt": "x", "seconds": -2}}), "invalid_recipe",
         "seconds"),
        (json.dumps({"type": "generate", "recipe": {"prompt": "x", "camera": {"preset": "barrel_roll"}}}),
         "invalid_camera", "camera.preset"),
        (json.dumps({"type": "generate", "recipe": {"prompt": "x", "colour": "red"}}), "unknown_field",
         "recipe.colour"),
        (json.dumps({"type": "update", "recipe": {"seed": 2}}), "no_take", "type"),
        (json.dumps({"type": "approve", "draft_id": "../../etc/passwd"}), "unknown_draft", "draft_id"),
        (json.dumps([1, 2]), "bad_message", None),
        (b"\x00\x01binary", "binary_not_allowed", None),
    ],
)
def test_malformed_messages_get_typed_errors_and_the_connection_keeps_working(live_server, payload, code, field):
    client = open_client(live_server)
    client.ws.send(payload)
    error = client.event("error")
    assert error["code"] == code and error["field"] == field and error["message"]
    client.send(type="generate", recipe={"prompt": "still here", "seconds": 0.2})
    assert client.event("take_done")["draft_id"]
    other = open_client(live_server)  # and the server still serves others
    other.send(type="list_drafts")
    assert other.event("drafts")["drafts"]


def test_approve_promote_and_persistence_across_a_restart(test_pack, tmp_path, cache_dir):
    server = LiveServer(test_pack, tmp_path / "drafts", cache_dir)
    try:
        client = open_client(server)
        client.send(type="generate", recipe={"prompt": "keep me", "seconds": 0.3})
        draft_id = client.event("take_done")["draft_id"]
        client.send(type="generate", recipe={"prompt": "reject me", "seconds": 0.3})
        rejected_id = client.event("take_done")["draft_id"]
        client.send(type="approve", id="a", draft_id=draft_id)
        assert client.event("draft")["draft"]["state"] == "approved"
        client.send(type="reject", draft_id=rejected_id)
        assert client.event("draft")["draft"]["state"] == "rejected"
        client.send(type="promote", draft_id=rejected_id)
        assert client.event("error")["code"] == "invalid_transition"
        client.send(type="promote", draft_id=draft_id, options={"format": "prores"})
        queued = client.event("job_queued")
        assert queued["job"]["state"] == "queued" and "stays queued" in queued["message"]
        assert client.event("draft")["draft"]["state"] == "promoted"
    finally:
        server.close()
    again = LiveServer(test_pack, tmp_path / "drafts", cache_dir)
    try:
        client = open_client(again)
        client.send(type="list_drafts")
        states = {d["id"]: d["state"] for d in client.event("drafts")["drafts"]}
        assert states == {draft_id: "promoted", rejected_id: "rejected"}
        client.send(type="get_draft", draft_id=draft_id)
        assert client.event("draft")["draft"]["jobs"][0]["state"] == "queued"
    finally:
        again.close()


def http_get(url: str, **headers) -> tuple[int, bytes, str]:
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read(), response.headers.get("Content-Type", "")
    except urllib.error.HTTPError as err:
        return err.code, err.read(), ""


def test_http_serves_the_page_and_draft_files_by_id_only(live_server):
    status, body, kind = http_get(live_server.url)
    assert status == 200 and b"<html" in body.lower() and kind.startswith("text/html")
    client = open_client(live_server)
    client.send(type="generate", recipe={"prompt": "thumb", "seconds": 0.2})
    draft_id = client.event("take_done")["draft_id"]
    status, body, kind = http_get(f"{live_server.url}drafts/{draft_id}/thumb.jpg")
    assert status == 200 and body[:2] == b"\xff\xd8" and kind == "image/jpeg"
    assert http_get(f"{live_server.url}drafts/{draft_id}/take.mp4")[0] == 200
    assert http_get(f"{live_server.url}drafts/{draft_id}/latents.safetensors")[0] == 404
    assert http_get(f"{live_server.url}drafts/..%2F..%2Fetc/thumb.jpg")[0] == 404
    assert http_get(f"{live_server.url}nope")[0] == 404


def test_handshake_checks_host_and_origin(live_server):
    assert http_get(live_server.url, Host="evil.example:80")[0] == 421
    with pytest.raises(Exception, match="403"):
        connect(live_server.ws_url, origin="http://evil.example")
    ok = connect(live_server.ws_url, origin=f"http://localhost:{live_server.port}")
    assert json.loads(ok.recv(timeout=30))["type"] == "ready"
    ok.close()


def test_a_token_server_needs_hello_with_the_token(test_pack, tmp_path, cache_dir):
    server = LiveServer(test_pack, tmp_path / "drafts", cache_dir, token="s3cret")
    try:
        client = Client(connect(server.ws_url))
        assert client.recv()["auth"] == "token"
        client.send(type="generate", recipe={"prompt": "sneaky"})
        assert client.event("error")["code"] == "unauthorized"
        client.send(type="hello", version=1, token="wrong")
        assert client.event("error")["code"] == "unauthorized"
        client.send(type="hello", version=1, token="s3cret")
        assert client.event("ready")["pack"]["id"] == "previz-test"
    finally:
        server.close()


def test_cancel_silences_the_take_and_the_session_stays_usable(live_server):
    client = open_client(live_server)
    client.send(type="generate", recipe={"prompt": "stop me", "seconds": 5.0})
    take = client.event("take_started")["take_id"]
    client.until(lambda e: e["type"] == "chunk_done")
    client.send(type="cancel", id="c")
    cancelled = client.event("take_cancelled")
    assert cancelled["take_id"] == take and cancelled["reason"] == "cancel" and cancelled["re"] == "c"
    seen = len(client.frames_of(take))
    client.send(type="generate", recipe={"prompt": "next", "seconds": 0.2})
    started = client.event("take_started")
    client.event("take_done")
    assert len(client.frames_of(take)) == seen  # nothing of the cancelled take after take_cancelled
    assert not any(e["type"] == "take_done" and e["take_id"] == take for e in client.events)
    assert [h.index for h in client.frames_of(started["take_id"])] == list(range(6))


def test_the_client_limit_holds_for_a_handshake_that_raced_past_the_503(test_pack, tmp_path, cache_dir,
                                                                       monkeypatch):
    from websockets.exceptions import ConnectionClosed, InvalidStatus

    from previz.server import PrevizServer

    check, racing = PrevizServer._process_request, []

    async def process_request(self, connection, request):
        if not racing:
            return await check(self, connection, request)
        # The race: the check sees no sessions, as a second handshake running beside the first's would.
        sessions, self.sessions = self.sessions, {}
        try:
            return await check(self, connection, request)
        finally:
            self.sessions = sessions

    monkeypatch.setattr(PrevizServer, "_process_request", process_request)
    server = LiveServer(test_pack, tmp_path / "drafts", cache_dir, max_clients=1)
    try:
        first = open_client(server)
        with pytest.raises(InvalidStatus, match="503"):  # the usual case: refused at the handshake
            connect(server.ws_url)
        racing.append(True)
        second = connect(server.ws_url)  # past the 503 check, but the slot is still not there to take
        with pytest.raises(ConnectionClosed) as closed:
            second.recv(timeout=30)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1013
        first.send(type="hello", version=1)
        assert first.event("hello")["version"] == 1  # the client holding the slot keeps it
    finally:
        server.close()
