"""A real slow reader over TCP: a small receive buffer and throttled reads, against the default server.

It must get every control event and the newest frames (older ones dropped), and a client beside it
keeps getting every frame.  How far behind it gets is printed (a figure, not an assertion):
tools/stress.py --slow-reader measures it for BENCHMARKS.md.
"""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest
from conftest import LiveServer
from websockets.sync.client import connect

from previz.protocol import unpack_frame

DEADLINE = 180
pytestmark = pytest.mark.filterwarnings("ignore:connect\\(\\) must be used:DeprecationWarning")


def test_a_slow_reader_gets_every_event_and_the_newest_frames(test_pack, tmp_path, cache_dir):
    server = LiveServer(test_pack, tmp_path / "drafts", cache_dir)  # the default limits and buffers
    made: dict[tuple[int, int], float] = {}  # (take, frame index) -> when the session queued it
    try:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", server.port))
        slow = connect(server.ws_url, sock=sock, max_size=2**22, max_queue=2)  # the client buffers little too
        assert json.loads(slow.recv(timeout=30))["type"] == "ready"
        session = next(iter(server.server.sessions.values()))
        take_frame = session.core.take_frame

        def timed(take_id: int, data: bytes) -> None:
            made.setdefault((take_id, unpack_frame(data)[0].index), time.monotonic())
            take_frame(take_id, data)

        session.core.take_frame = timed  # type: ignore[method-assign]
        slow.send(json.dumps({"type": "generate", "recipe": {"prompt": "read slowly", "seconds": 5.0}}))

        other_frames: list[int] = []

        def other_client() -> None:
            with connect(server.ws_url, max_size=2**22) as ws:
                ws.recv(timeout=30)
                ws.send(json.dumps({"type": "generate", "recipe": {"prompt": "read fast", "seconds": 2.0}}))
                while True:
                    data = ws.recv(timeout=DEADLINE)
                    if isinstance(data, bytes):
                        other_frames.append(unpack_frame(data)[0].index)
                    elif json.loads(data)["type"] == "take_done":
                        return

        other = threading.Thread(target=other_client)
        other.start()
        events: list[dict] = []
        frames: list[int] = []
        lags: list[float] = []
        end = time.monotonic() + DEADLINE
        while not any(e["type"] == "take_done" for e in events) and time.monotonic() < end:
            time.sleep(0.05)  # 20 messages a second: far below the generation rate
            data = slow.recv(timeout=DEADLINE)
            if isinstance(data, bytes):
                header, _ = unpack_frame(data)
                frames.append(header.index)
                lags.append(time.monotonic() - made[(header.take_id, header.index)])
            else:
                events.append(json.loads(data))
        other.join(timeout=DEADLINE)
        slow.close()
    finally:
        server.close()

    started = next(e for e in events if e["type"] == "take_started")
    chunks = [e for e in events if e["type"] == "chunk_done"]
    assert len(chunks) == started["chunks"]  # every control event arrived: none is ever dropped
    assert [e["type"] for e in events][-1] == "take_done"
    assert frames == sorted(frames) and frames[-1] == started["frames"] - 1  # in order; the newest won
    assert len(frames) < started["frames"]  # ...and older ones were dropped for it
    assert other_frames == list(range(60))  # the client beside it lost nothing
    lags.sort()
    print(f"\nslow reader: {len(frames)}/{started['frames']} frames, "
          f"behind by p50 {1000 * lags[len(lags) // 2]:.0f} ms, max {1000 * lags[-1]:.0f} ms")
