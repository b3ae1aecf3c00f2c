"""Streaming benchmark: the live server end to end, with 1 and 4 clients.

Starts `previz serve` as a subprocess on a free loopback port (a real server, a
real socket) and drives it with websocket clients from this process.  Prints
markdown for BENCHMARKS.md.

    python tools/bench_stream.py                # embedded pack, default backend
    python tools/bench_stream.py --updates 40

What is measured
- in-process engine fps: DraftModel.generate in this process, same pack and
  backend, no server (the denominator of the end-to-end ratio);
- frames received per second per client, from take_started to the last
  frame, and the end-to-end realtime factor (fps / 30);
- time to first frame after an `update` (new take's first frame minus the
  moment the update was sent), p50 and p95 over --updates updates sent
  mid-take;
- cancel latency: `cancel` sent -> `take_cancelled` received, and -> the
  last frame of the old take received.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
from typing import Any

from served import Server
from websockets.asyncio.client import connect

from previz.protocol import unpack_frame
from previz.recipe import DEFAULT_PACK

# A blocked shot with three objects: the blockout control's cost grows with the objects in view.
SHOT = "two red boxes left of a tall blue pillar on sand at dusk"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def engine_fps(pack_ref: str, backend: str, seconds: float) -> float:
    from previz.cli import _quiet_libraries, open_pack
    from previz.recipe import Recipe
    from previz.take import DraftModel

    _quiet_libraries()
    pack = open_pack(pack_ref, lambda m: None)
    model = DraftModel(pack, backend)
    model.warmup()
    rates = []
    for i in range(4):
        start = time.perf_counter()
        n = sum(1 for _ in model.generate(Recipe(prompt=f"{SHOT}, take {i}", seed=i, seconds=seconds,
                                                 camera={"preset": "orbit_left"})))
        if i:
            rates.append(n / (time.perf_counter() - start))
    model.close()
    return statistics.median(rates)


async def take(ws_url: str, prompt: str, seconds: float) -> dict[str, Any]:
    async with connect(ws_url, max_size=2**22, compression=None) as ws:
        assert json.loads(await ws.recv())["type"] == "ready"
        await ws.send(json.dumps({"type": "generate", "recipe": {"prompt": prompt, "seconds": seconds,
                                                                  "camera": {"preset": "orbit_left"}}}))
        frames, start, last = 0, None, None
        while True:
            data = await ws.recv()
            if isinstance(data, bytes):
                header, _ = unpack_frame(data)
                frames += 1
                last = time.perf_counter()
                continue
            event = json.loads(data)
            if event["type"] == "take_started":
                start = time.perf_counter()
            elif event["type"] == "take_done":
                break
            elif event["type"] == "error":
                raise RuntimeError(event)
        assert start is not None and last is not None
        return {"frames": frames, "fps": frames / (last - start)}


async def updates(ws_url: str, count: int) -> list[float]:
    """Send updates mid-take; time each to the new take's first frame."""
    latencies = []
    async with connect(ws_url, max_size=2**22, compression=None) as ws:
        assert json.loads(await ws.recv())["type"] == "ready"
        await ws.send(json.dumps({"type": "generate", "recipe": {"prompt": SHOT, "seconds": 20}}))
        current, sent = None, None
        presets = ["pan_left", "dolly_in", "orbit_right", "crane_up", "zoom_in"]
        while len(latencies) < count:
            data = await ws.recv()
            if isinstance(data, bytes):
                header, _ = unpack_frame(data)
                if header.take_id != current:
                    continue
                if sent is not None:
                    latencies.append(time.perf_counter() - sent)
                    sent = None
                elif header.index == 20:  # mid-take: send the next update
                    sent = time.perf_counter()
                    current = None  # frames of the old take still in flight must not count
                    preset = presets[len(latencies) % len(presets)]
                    await ws.send(json.dumps({"type": "update", "recipe": {"camera": {"preset": preset}}}))
                continue
            event = json.loads(data)
            if event["type"] == "take_started":
                current = event["take_id"]
    return latencies


async def cancels(ws_url: str, count: int) -> tuple[list[float], list[float]]:
    """Cancel mid-take: time to the take_cancelled event, and to the old take's last frame."""
    to_event, to_silence = [], []
    async with connect(ws_url, max_size=2**22, compression=None) as ws:
        assert json.loads(await ws.recv())["type"] == "ready"
        for i in range(count):
            await ws.send(json.dumps({"type": "generate", "recipe": {"prompt": f"{SHOT}, cancel {i}", "seconds": 20}}))
            take_id, sent, last_old_frame, cancelled = None, None, None, False
            while True:
                try:  # after take_cancelled, a second of silence means the old take has stopped
                    data = await asyncio.wait_for(ws.recv(), 1.0 if cancelled else 120)
                except TimeoutError:
                    break
                if isinstance(data, bytes):
                    header, _ = unpack_frame(data)
                    if header.take_id != take_id:
                        continue
                    if sent is None and header.index == 20:
                        sent = time.perf_counter()
                        await ws.send(json.dumps({"type": "cancel"}))
                    elif sent is not None:
                        last_old_frame = time.perf_counter()
                    continue
                event = json.loads(data)
                if event["type"] == "take_started":
                    take_id = event["take_id"]
                elif event["type"] == "take_cancelled" and sent is not None:
                    cancelled = True
                    to_event.append(time.perf_counter() - sent)
            assert sent is not None
            to_silence.append(0.0 if last_old_frame is None else last_old_frame - sent)
    return to_event, to_silence


async def main_async(args: argparse.Namespace, server: Server) -> dict[str, Any]:
    out: dict[str, Any] = {}
    await take(server.ws, "warm-up", 1.0)
    one = [await take(server.ws, f"{SHOT}, one client {i}", args.seconds) for i in range(3)]
    out["one_fps"] = statistics.median(r["fps"] for r in one)
    four = await asyncio.gather(*(take(server.ws, f"{SHOT}, client {i}", args.seconds) for i in range(4)))
    out["four_fps"] = [r["fps"] for r in four]
    lat = await updates(server.ws, args.updates)
    out["update_p50"], out["update_p95"] = percentile(lat, 0.5), percentile(lat, 0.95)
    to_event, to_silence = await cancels(server.ws, args.cancels)
    out["cancel_event_p50"], out["cancel_silence_p50"] = statistics.median(to_event), statistics.median(to_silence)
    out["cancel_event_max"], out["cancel_silence_max"] = max(to_event), max(to_silence)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pack", default=DEFAULT_PACK)
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--updates", type=int, default=30)
    parser.add_argument("--cancels", type=int, default=10)
    args = parser.parse_args()

    from engines import resolve_backend

    backend = resolve_backend(args.backend)
    fps_engine = engine_fps(args.pack, backend, args.seconds)
    server = Server(args.pack, backend)
    try:
        r = asyncio.run(main_async(args, server))
    finally:
        server.close()
    print(f"machine: {os.cpu_count()} cores; backend {backend}; pack {args.pack}; {args.seconds:g} s takes, "
          "orbit_left camera, JPEG frames over loopback\n")
    print(f"in-process engine: {fps_engine:.1f} fps\n")
    print("| clients | frames/s per client | realtime factor per client | end-to-end / engine |")
    print("|---|---|---|---|")
    print(f"| 1 | {r['one_fps']:.1f} | {r['one_fps'] / 30:.2f}x | {r['one_fps'] / fps_engine:.2f} |")
    per = r["four_fps"]
    print(f"| 4 | {statistics.mean(per):.1f} (min {min(per):.1f}) | {statistics.mean(per) / 30:.2f}x | "
          f"{sum(per) / fps_engine:.2f} (all four together) |")
    print(f"\ntime to first frame after an update: p50 {1000 * r['update_p50']:.0f} ms, "
          f"p95 {1000 * r['update_p95']:.0f} ms ({args.updates} updates)")
    print(f"cancel -> take_cancelled: p50 {1000 * r['cancel_event_p50']:.0f} ms, "
          f"max {1000 * r['cancel_event_max']:.0f} ms; cancel -> last old frame: p50 "
          f"{1000 * r['cancel_silence_p50']:.0f} ms, max {1000 * r['cancel_silence_max']:.0f} ms "
          f"({args.cancels} cancels)")


if __name__ == "__main__":
    main()
