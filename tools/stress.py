"""Stress the live server from outside: hostile messages while a client streams; many clients at once;
a slow reader.  Prints figures for BENCHMARKS.md.

    python tools/stress.py                       # >= 10,000 hostile messages vs `previz serve`
    python tools/stress.py --messages 20000 --connections 4
    python tools/stress.py --clients 8 --stalled 1 --minutes 5
    python tools/stress.py --slow-reader         # how far behind a slow reader gets (in-process server)

Fuzz mode starts `previz serve` as a subprocess on a free loopback port (a real server, a real
socket, a separate process so a crash is seen as one).  One client streams takes the whole time;
others send random, malformed and hostile messages (garbage text and bytes, invalid UTF-8, JSON
with huge numbers, NaN, lone surrogates, deep nesting, extreme camera and scene values, oversized
messages) and read every answer.  It prints messages tried, typed errors by code, closes by code,
internal errors (``previz_error`` events, goal 0), crashes (goal 0), the streaming client's fps and
p95 frame gap before and during the run, and the server's RSS at start and end.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import random
import socket
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from served import Server
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from previz.protocol import unpack_frame

SHOT = "two red boxes left of a tall blue pillar on sand at dusk"


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


# ----------------------------------------------------------------------------- hostile messages


def _recipe(rng: random.Random) -> dict[str, Any]:
    return {"prompt": SHOT, "seconds": 1.0, "seed": rng.randint(0, 100)}


HUGE = ["1" + "0" * 400, "1e999", "-1e999", "NaN", "Infinity", "-Infinity", "1" + "0" * 5000, "9" * 19, "-0",
        "5e-324", "1.7976931348623157e309", "123456789012345678901234567890"]
ODD_TEXT = ["\\ud800", "\\udfff", "a\\ud83d", "\\u0000", "\\u202e", "\\ufeff", "\\uffff", "🎬", "x" * 3000]


def hostile(rng: random.Random, takes: bool = True) -> tuple[str, str | bytes, bool]:
    """One message: (its kind, the payload, whether to send bytes as a *text* frame).

    ``takes=False``: no message is meant to start a take (a generate is kept invalid in two fields,
    so one mutation rarely makes it valid), which isolates the cost of the hostile traffic itself
    from the worker's fair share between sessions with takes."""
    pick = rng.random()
    if not takes and pick >= 0.95:
        pick = rng.random() * 0.95
    if pick < 0.08:  # garbage text
        alphabet = '{}[]":,0123456789.eE-+ abtypegnrcio\\u'
        return "garbage_text", "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 80))), False
    if pick < 0.12:  # binary messages: never accepted from clients
        return "binary", rng.randbytes(rng.randint(0, 64)), False
    if pick < 0.14:  # text frames that are not UTF-8: the websocket layer closes (1007)
        return "invalid_utf8", b'{"type": "hello\xff\xfe"}', True
    if pick < 0.30:  # huge and non-finite numbers, anywhere a number goes
        number = rng.choice(HUGE)
        template = rng.choice([
            '{"type": "generate", "id": 1, "recipe": {"prompt": "x", "seed": %s}}',
            '{"type": "generate", "recipe": {"prompt": "x", "seconds": %s}}',
            '{"type": "generate", "recipe": {"prompt": "x", "camera": {"preset": "orbit_left", "speed": %s}}}',
            '{"type": "generate", "recipe": {"prompt": "x", "camera": {"preset": "static", "shake": '
            '{"amplitude": 1, "seed": %s}}}}',
            '{"type": "generate", "recipe": {"prompt": "x", "camera": {"keyframes": [{"time": 0, "position": '
            '[%s, 0, 0]}, {"time": 1, "position": [0, 0, 0]}]}}}',
            '{"type": "generate", "recipe": {"prompt": "x", "camera": {"preset": "static", "focal_mm": %s}}}',
            '{"type": "generate", "recipe": {"prompt": "x", "scene": {"objects": [{"shape": "box", '
            '"position": [0, %s, 0]}]}}}',
            '{"type": "list_drafts", "limit": %s}',
            '{"type": "hello", "version": %s}',
            '{"type": "cancel", "id": %s}',
        ])
        return "numbers", template % number, False
    if pick < 0.40:  # odd Unicode in every string field
        text = rng.choice(ODD_TEXT)
        template = rng.choice([
            '{"type": "generate", "recipe": {"prompt": "a cube %s"}}',
            '{"type": "generate", "recipe": {"prompt": "x", "negative_prompt": "%s"}}',
            '{"type": "approve", "draft_id": "%s"}',
            '{"type": "%s"}',
            '{"type": "list_drafts", "state": "%s"}',
            '{"type": "cancel", "id": "%s"}',
            '{"type": "generate", "recipe": {"prompt": "x", "camera": {"preset": "%s"}}}',
            '{"type": "generate", "recipe": {"prompt": "x", "scene": {"ground": "%s"}}}',
            '{"type": "generate", "recipe": {"%s": 1, "prompt": "x"}}',
        ])
        return "unicode", template % text, False
    if pick < 0.45:  # deep nesting
        depth = rng.choice([17, 100, 1000, 20000])
        return "nesting", '{"type": "generate", "recipe": {"prompt": "x", "scene": ' + "[" * depth + "]" * depth \
            + "}}", False
    if pick < 0.47:  # oversized: politely refused (> 64 KiB) or closed (> 2 MiB, 1009)
        size = rng.choice([70_000, 3_000_000])
        return "oversized", json.dumps({"type": "generate", "recipe": {"prompt": "x" * size}}), False
    if pick < 0.75:  # a valid message, mutated: wrong types, unknown fields, missing fields
        base: dict[str, Any] = rng.choice([
            {"type": "generate", "id": rng.randint(0, 9),
             "recipe": _recipe(rng) if takes else {**_recipe(rng), "steps": 0, "seconds": -1}},
            {"type": "update", "recipe": {"seed": 3} if takes else {"seed": 3, "steps": 0, "seconds": -1}},
            {"type": "approve", "draft_id": "d0123456789abcdef"},
            {"type": "promote", "draft_id": "d0123456789abcdef", "options": {"format": "prores"}},
            {"type": "list_drafts", "limit": 5},
            {"type": "hello", "version": 1},
            {"type": "get_draft", "draft_id": "d0123456789abcdef"},
        ])
        target = base["recipe"] if "recipe" in base and rng.random() < 0.6 else base
        key = rng.choice(list(target) + ["extra", "camera", "scene"])
        target[key] = rng.choice([None, True, -1, 2**70, 1.5, "", "x" * 100, [], {}, [[]], {"a": {"b": None}},
                                  {"preset": "barrel_roll"}, {"keyframes": [{"time": "0"}]},
                                  {"objects": [{"shape": "box", "position": [0, 0, 0], "size": [0, 0, 0]}]}])
        if rng.random() < 0.2:
            target.pop(rng.choice(list(target)), None)
        return "mutated", json.dumps(base), False
    if pick < 0.95:  # valid and harmless: the server must answer these normally
        return "valid", json.dumps(rng.choice([
            {"type": "hello", "version": 1, "id": "h"}, {"type": "list_drafts", "limit": 3},
            {"type": "get_draft", "draft_id": "d0123456789abcdef"}, {"type": "cancel"},
            {"type": "update", "recipe": {"seed": 1}} if takes else {"type": "cancel", "id": "c"},
        ])), False
    # a real take, at once superseded or cancelled: it costs the streamer a little worker time
    return "take", json.dumps({"type": "generate", "recipe": {**_recipe(rng), "seconds": 0.2}}), False


class Tally:
    def __init__(self) -> None:
        self.tried = 0
        self.kinds: collections.Counter[str] = collections.Counter()
        self.errors: collections.Counter[str] = collections.Counter()
        self.closes: collections.Counter[str] = collections.Counter()
        self.events: collections.Counter[str] = collections.Counter()
        self.refused: collections.Counter[int] = collections.Counter()  # handshakes refused, by HTTP status
        self.internal: list[dict[str, Any]] = []


FENCE_EVERY = 10


async def hostile_client(url: str, rng: random.Random, tally: Tally, quota: list[int], takes: bool) -> None:
    """Sends hostile messages in batches; after each batch a ``hello`` fence, whose answer comes after
    the answers to everything before it (a session answers in order), so every answer is counted."""
    fence = 0
    while quota[0] > 0:
        try:
            async with connect(url, max_size=2**22, compression=None, open_timeout=60) as ws:
                await ws.recv()  # ready
                while quota[0] > 0:
                    for _ in range(min(FENCE_EVERY, quota[0])):
                        quota[0] -= 1
                        kind, payload, as_text = hostile(rng, takes)
                        if not takes and isinstance(payload, str):  # an invalid step count: no take starts
                            payload = payload.replace('"recipe": {', '"recipe": {"steps": 0, ', 1)
                        tally.tried += 1
                        tally.kinds[kind] += 1
                        await ws.send(payload, text=True) if as_text else await ws.send(payload)
                    fence += 1
                    await ws.send(json.dumps({"type": "hello", "version": 1, "id": f"fence-{fence}"}))
                    await _read_until_fence(ws, tally, f"fence-{fence}")
        except ConnectionClosed as exc:
            rcvd = exc.rcvd
            tally.closes[str(rcvd.code) if rcvd else "no close frame"] += 1
        except InvalidStatus as exc:
            tally.refused[exc.response.status_code] += 1
            await asyncio.sleep(0.5)
        except OSError:
            tally.closes["reset"] += 1


async def _read_until_fence(ws: Any, tally: Tally, fence: str) -> None:
    while True:
        data = await asyncio.wait_for(ws.recv(), timeout=120)
        if isinstance(data, bytes):
            continue
        event = json.loads(data)
        if event["type"] == "hello" and event.get("re") == fence:
            return
        tally.events[event["type"]] += 1
        if event["type"] == "error":
            tally.errors[event["code"]] += 1
            if event["code"] == "previz_error":
                tally.internal.append(event)


async def raw_garbage(port: int, rng: random.Random, tally: Tally, count: int) -> None:
    """Bytes that are not a websocket at all, on fresh TCP connections."""
    for _ in range(count):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(rng.choice([rng.randbytes(200), b"GET /ws HTTP/1.1\r\nHost: x\r\n\r\n",
                                 b"\x00" * 5000, b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * 500 + b"\r\n"]))
        tally.tried += 1
        tally.kinds["raw_tcp"] += 1
        try:
            await writer.drain()
            await asyncio.wait_for(reader.read(4096), timeout=5)
        except (OSError, asyncio.TimeoutError):
            pass
        writer.close()


async def free_slots(url: str, count: int) -> int:
    """How many of ``count`` new clients get in (and a ready event) at once."""
    opened = []
    try:
        for _ in range(count):
            try:
                ws = await connect(url, open_timeout=30)
            except (InvalidStatus, OSError):
                break
            opened.append(ws)
            await ws.recv()
        return len(opened)
    finally:
        for ws in opened:
            await ws.close()


class Streamer:
    """A client that streams takes back to back and records when each frame arrived."""

    def __init__(self, url: str, name: str) -> None:
        self.url, self.name = url, name
        self.arrivals: list[tuple[float, int, int]] = []  # (time, take id, frame index)
        self.stop = False

    async def run(self) -> None:
        async with connect(self.url, max_size=2**22, compression=None, open_timeout=60) as ws:
            await ws.recv()
            while not self.stop:
                await ws.send(json.dumps({"type": "generate", "recipe": {"prompt": SHOT, "seconds": 4.0,
                                                                          "camera": {"preset": "orbit_left"}}}))
                while True:
                    data = await ws.recv()
                    if isinstance(data, bytes):
                        header, _ = unpack_frame(data)
                        self.arrivals.append((time.perf_counter(), header.take_id, header.index))
                    elif json.loads(data)["type"] in ("take_done", "take_cancelled", "error"):
                        break

    def figures(self, start: float, end: float) -> tuple[float, float]:
        """Frames per second received in [start, end], and the p95 gap between frames of one take (ms)."""
        inside = [a for a in self.arrivals if start <= a[0] <= end]
        gaps = [1000 * (b[0] - a[0]) for a, b in zip(inside, inside[1:], strict=False) if a[1] == b[1]]
        return len(inside) / max(end - start, 1e-9), percentile(gaps, 0.95)


async def fuzz(args: argparse.Namespace) -> None:
    server = Server(args.pack, args.backend, "--no-jobs")
    rng = random.Random(args.seed)
    tally = Tally()
    try:
        streamer = Streamer(server.ws, "streamer")
        stream_task = asyncio.create_task(streamer.run())
        t0 = time.perf_counter()
        await asyncio.sleep(args.baseline)
        t1 = time.perf_counter()
        rss_start = rss_mb(server.proc.pid)
        quota = [args.messages]
        await asyncio.gather(
            *(hostile_client(server.ws, random.Random(rng.random()), tally, quota, args.takes)
              for _ in range(args.connections)),
            raw_garbage(server.port, random.Random(rng.random()), tally, args.raw),
        )
        t2 = time.perf_counter()
        await asyncio.sleep(2)
        rss_end = rss_mb(server.proc.pid)
        slots = await free_slots(server.ws, 15)  # the streamer holds the 16th: no session leaked
        streamer.stop = True
        crashed = server.proc.poll() is not None
        if not crashed:
            await asyncio.wait_for(stream_task, timeout=120)
        internal_logged = sum(1 for line in server.log if "internal error" in line)
        base_fps, base_gap = streamer.figures(t0 + 5, t1)  # after the first take's warm-up
        fuzz_fps, fuzz_gap = streamer.figures(t1, t2)
        print(f"## stress: {tally.tried} hostile messages over {args.connections} connections "
              f"(+{args.raw} raw TCP), {t2 - t1:.0f} s, {'with' if args.takes else 'without'} valid takes")
        print(f"- messages by kind: {dict(sorted(tally.kinds.items()))}")
        print(f"- typed errors: {sum(tally.errors.values())} {dict(sorted(tally.errors.items()))}")
        print(f"- other answers: {dict(sorted((k, v) for k, v in tally.events.items() if k != 'error'))}")
        print(f"- closes by code: {dict(sorted(tally.closes.items()))}; handshakes refused, by status: "
              f"{dict(tally.refused)}")
        print(f"- internal errors: {tally.errors.get('previz_error', 0)} events, {internal_logged} in the server log")
        print(f"- crashes: {int(crashed)} (server exit code {server.proc.poll()}); connection slots free "
              f"afterwards: {slots}/15 (no session leaked)")
        print(f"- streaming client: {base_fps:.1f} fps alone, {fuzz_fps:.1f} fps during the run; "
              f"p95 frame gap {base_gap:.0f} ms alone, {fuzz_gap:.0f} ms during")
        print(f"- server RSS: {rss_start:.0f} MB at the start of the run, {rss_end:.0f} MB at the end")
        if tally.internal or internal_logged:
            print("\ninternal errors (events, then the server log):", *tally.internal[:5], sep="\n")
            print("".join(server.log[-60:]))
    finally:
        server.close()


# ----------------------------------------------------------------------------- many clients, one stalled


async def stalled_client(port: int) -> socket.socket:
    """Connects, starts a long take, and never reads again (a tiny receive buffer, so it backs up fast)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    key = "dGhlIHNhbXBsZSBub25jZQ=="
    sock.sendall(f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
    time.sleep(1)
    payload = json.dumps({"type": "generate", "recipe": {"prompt": "never read", "seconds": 5.0}}).encode()
    mask = b"\x01\x02\x03\x04"
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    sock.sendall(bytes([0x81, 0x80 | 126]) + len(payload).to_bytes(2, "big") + mask + masked)
    return sock


async def many(args: argparse.Namespace) -> None:
    server = Server(args.pack, args.backend, "--no-jobs")
    try:
        stalled = [await stalled_client(server.port) for _ in range(args.stalled)]
        streamers = [Streamer(server.ws, f"client {i + 1}") for i in range(args.clients - args.stalled)]
        tasks = [asyncio.create_task(s.run()) for s in streamers]
        start = time.perf_counter()
        samples = [(0.0, rss_mb(server.proc.pid))]
        while time.perf_counter() - start < 60 * args.minutes:
            await asyncio.sleep(min(30, 60 * args.minutes))
            samples.append((time.perf_counter() - start, rss_mb(server.proc.pid)))
        end = time.perf_counter()
        for s in streamers:
            s.stop = True
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), timeout=180)
        print(f"## {args.clients} clients, {args.stalled} stalled, {args.minutes:g} min")
        for s in streamers:
            fps, gap = s.figures(start + 10, end)
            print(f"- {s.name}: {fps:.1f} fps, p95 frame gap {gap:.0f} ms")
        print("- server RSS (MB) over time: " + ", ".join(f"{t:.0f} s: {m:.0f}" for t, m in samples))
        print(f"- crashes: {int(server.proc.poll() is not None)}")
        for sock in stalled:
            sock.close()
    finally:
        server.close()


# ----------------------------------------------------------------------------- a slow reader


def slow_reader(args: argparse.Namespace) -> None:
    """An in-process server, so the moment each frame was queued is known exactly (same clock)."""
    from websockets.sync.client import connect as sync_connect

    from previz.cli import _quiet_libraries, open_pack
    from previz.drafts import DraftStore
    from previz.server import PrevizServer, ServeConfig
    from previz.session_core import SessionLimits
    from previz.take import DraftModel

    _quiet_libraries()
    pack = open_pack(args.pack, lambda m: None)
    model = DraftModel(pack, "torch" if args.backend == "auto" else args.backend)
    model.warmup()
    results = []
    for label, config in (
        ("autotuned socket buffers, no in-flight bound (before)",
         ServeConfig(port=0, socket_send_buffer=None, write_limit=2**15,
                     limits=SessionLimits(frames_in_flight=10**9))),
        ("defaults (after)", ServeConfig(port=0)),
    ):
        store = DraftStore(Path(tempfile.mkdtemp(prefix="previz-slow-")))
        loop = asyncio.new_event_loop()
        server = PrevizServer(config, model=model, store=store, backends=["torch"])
        thread = threading.Thread(target=loop.run_forever, daemon=True)
        thread.start()
        asyncio.run_coroutine_threadsafe(server.start(), loop).result(timeout=60)
        made: dict[tuple[int, int], float] = {}
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, args.rcvbuf)
        sock.connect(("127.0.0.1", server.port))
        with sync_connect(f"ws://127.0.0.1:{server.port}/ws", sock=sock, max_size=2**22, max_queue=2) as ws:
            ws.recv(timeout=60)
            session = next(iter(server.sessions.values()))
            take_frame = session.core.take_frame

            def timed(take_id: int, data: bytes, take_frame: Any = take_frame, made: Any = made) -> None:
                made.setdefault((take_id, unpack_frame(data)[0].index), time.perf_counter())
                take_frame(take_id, data)

            session.core.take_frame = timed  # type: ignore[method-assign]
            ws.send(json.dumps({"type": "generate", "recipe": {"prompt": SHOT, "seconds": 5.0}}))
            lags, frames, total, events = [], 0, 0, 0
            while True:
                time.sleep(1 / args.read_rate)
                data = ws.recv(timeout=300)
                if isinstance(data, bytes):
                    header, _ = unpack_frame(data)
                    frames += 1
                    lags.append(1000 * (time.perf_counter() - made[(header.take_id, header.index)]))
                    continue
                event = json.loads(data)
                events += 1
                if event["type"] == "take_started":
                    total = event["frames"]
                if event["type"] == "take_done":
                    break
        asyncio.run_coroutine_threadsafe(server.close(), loop).result(timeout=60)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        store.close()
        results.append((label, frames, total, events, percentile(lags, 0.5), percentile(lags, 0.95), max(lags)))
    print(f"## slow reader: {args.read_rate:g} messages/s, SO_RCVBUF {args.rcvbuf} B, pack {pack.id}, "
          f"{model.width}x{model.height}")
    print("| server | frames received | events received | behind p50 | p95 | max |")
    print("|---|---|---|---|---|---|")
    for label, frames, total, events, p50, p95, top in results:
        print(f"| {label} | {frames}/{total} | {events} (all) | {p50:.0f} ms | {p95:.0f} ms | {top:.0f} ms |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pack", default="previz-backlot")
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--connections", type=int, default=4, help="hostile connections at once")
    parser.add_argument("--no-takes", dest="takes", action="store_false",
                        help="hostile traffic only: no message meant to start a take")
    parser.add_argument("--raw", type=int, default=40, help="raw TCP connections sending non-websocket bytes")
    parser.add_argument("--baseline", type=float, default=20, help="seconds the streamer runs alone first")
    parser.add_argument("--clients", type=int, default=0, help="many-clients mode: clients at once")
    parser.add_argument("--stalled", type=int, default=1, help="many-clients mode: how many never read")
    parser.add_argument("--minutes", type=float, default=5)
    parser.add_argument("--slow-reader", action="store_true")
    parser.add_argument("--read-rate", type=float, default=10, help="slow reader: messages read per second")
    parser.add_argument("--rcvbuf", type=int, default=4096, help="slow reader: its SO_RCVBUF")
    args = parser.parse_args()
    if args.slow_reader:
        slow_reader(args)
    elif args.clients:
        asyncio.run(many(args))
    else:
        asyncio.run(fuzz(args))


if __name__ == "__main__":
    main()
