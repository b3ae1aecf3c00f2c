"""The handshake and the HTTP routes, from a raw socket: every refusal has the right status and no traceback."""

from __future__ import annotations

import os
import socket

import pytest
from conftest import LiveServer

from previz.errors import PrevizError
from previz.server import PrevizServer, ServeConfig

WS_HEADERS = "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n" \
             "Sec-WebSocket-Version: 13\r\n"


def raw_request(port: int, path: str, headers: str) -> tuple[int, bytes]:
    """One HTTP/1.1 request exactly as written (duplicate headers and all); the status and the body."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\n{headers}\r\n".encode("latin-1"))
        data = b""
        while b"\r\n\r\n" not in data or len(data) < data.index(b"\r\n\r\n") + 4 + _length(data):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def _length(data: bytes) -> int:
    for line in data.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


@pytest.mark.parametrize(
    "path, headers, status",
    [
        ("/ws", "Host: {host}\r\n" + WS_HEADERS, 101),
        ("/ws", "Host: {host}\r\nOrigin: http://{host}\r\n" + WS_HEADERS, 101),
        ("/ws", "Host: {host}\r\nOrigin: http://evil.example\r\n" + WS_HEADERS, 403),
        ("/ws", "Host: {host}\r\nOrigin: null\r\n" + WS_HEADERS, 403),
        ("/ws", "Host: {host}\r\nOrigin: http://[\r\n" + WS_HEADERS, 403),
        ("/ws", "Host: {host}\r\nOrigin: http://{host}/path\r\n" + WS_HEADERS, 403),
        ("/ws", "Host: {host}\r\nOrigin: http://{host}\r\nOrigin: http://{host}\r\n" + WS_HEADERS, 403),
        ("/ws", "Host: evil.example\r\n" + WS_HEADERS, 421),
        ("/ws", "Host: {host}\r\nHost: {host}\r\n" + WS_HEADERS, 421),
        ("/ws", "Host: {host}\r\nHost: evil.example\r\n" + WS_HEADERS, 421),
        ("/", "Host: {host}\r\nHost: {host}\r\n", 421),
        ("/", "Host: [::1\r\n", 421),
        ("/", "", 421),
        ("/", "Host: {host}\r\n", 200),
        ("/drafts/../../etc/passwd", "Host: {host}\r\n", 404),
        ("/drafts/..%2F..%2Fetc%2Fpasswd/thumb.jpg", "Host: {host}\r\n", 404),
        ("/drafts/%2Fetc%2Fpasswd/thumb.jpg", "Host: {host}\r\n", 404),
        ("//etc/passwd", "Host: {host}\r\n", 404),
        ("/drafts/d0123456789abcdef/thumb.jpg", "Host: {host}\r\n", 404),
        ("/drafts/d0123456789abcdef/latents.safetensors", "Host: {host}\r\n", 404),
    ],
)
def test_refusals_have_the_right_status_and_no_traceback(live_server, path, headers, status):
    host = f"127.0.0.1:{live_server.port}"
    got, body = raw_request(live_server.port, path, headers.format(host=host))
    assert got == status, body
    assert b"Traceback" not in body and b"Error" not in body


def test_a_planted_symlink_in_the_store_is_not_followed(live_server, tmp_path):
    from conftest import make_stored_draft

    draft = make_stored_draft(live_server.store, live_server.server.model.pack, tmp_path / "cache")
    secret = tmp_path / "secret.txt"
    secret.write_text("not for the network")
    thumb = live_server.store.file_path(draft.id, "thumb.jpg")
    thumb.unlink()
    os.symlink(secret, thumb)
    host = f"127.0.0.1:{live_server.port}"
    status, body = raw_request(live_server.port, f"/drafts/{draft.id}/thumb.jpg", f"Host: {host}\r\n")
    assert status == 404 and b"not for the network" not in body


def test_a_non_loopback_bind_always_has_a_strong_token(torch_model, tmp_path):
    from previz.drafts import DraftStore

    with DraftStore(tmp_path / "drafts") as store:
        server = PrevizServer(ServeConfig(host="0.0.0.0"), model=torch_model, store=store, backends=["torch"])
        assert server.token is not None and len(server.token) >= 32
        with pytest.raises(PrevizError, match="token"):
            PrevizServer(ServeConfig(host="0.0.0.0", token="short"), model=torch_model, store=store,
                         backends=["torch"])


def test_a_token_server_refuses_everything_before_hello(test_pack, tmp_path, cache_dir):
    import json

    from websockets.sync.client import connect

    server = LiveServer(test_pack, tmp_path / "drafts", cache_dir, token="a-long-enough-test-token")
    try:
        with connect(server.ws_url) as ws:
            assert json.loads(ws.recv(timeout=30))["auth"] == "token"
            for message in ({"type": "list_drafts", "id": 1}, {"type": "hello", "version": 1, "id": 2},
                            {"type": "hello", "version": 1, "token": "a-long-enough-test-tokeN", "id": 3}):
                ws.send(json.dumps(message))
                error = json.loads(ws.recv(timeout=30))
                assert (error["code"], error["re"]) == ("unauthorized", message["id"])
    finally:
        server.close()
