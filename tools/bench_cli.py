"""CLI start-up benchmark: how long commands that render nothing take, as a user runs them.

Each command runs as a fresh process (the wall time a user waits, interpreter
start-up and imports included), once untimed to warm the disk cache and build
the embedded pack if needed, then --repeats times; the median is printed as a
markdown row for BENCHMARKS.md.

    python tools/bench_cli.py                # 7 repeats
    python tools/bench_cli.py --repeats 11

The commands:
- `previz drafts list` against an empty store in a temporary directory;
- `previz models` (it asks every backend whether it runs here, which imports them);
- a usage error: `previz draft "a cube" --seconds abc`;
- a recipe error: `previz draft "a cube" --width 100` (the pack and the draft store are opened);
- a port in use: `previz serve --port N` while this script holds N.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def previz_command() -> list[str]:
    """The installed console script beside this interpreter, else the module."""
    script = Path(sys.executable).with_name("previz")
    return [str(script)] if script.exists() else [sys.executable, "-m", "previz.cli"]


def wall_times(argv: list[str], repeats: int, expect: int) -> list[float]:
    times = []
    for i in range(repeats + 1):
        start = time.perf_counter()
        result = subprocess.run(argv, capture_output=True, text=True, timeout=600)
        elapsed = time.perf_counter() - start
        if result.returncode != expect:
            raise SystemExit(f"{' '.join(argv)}: exit {result.returncode}, expected {expect}\n{result.stderr}")
        if i:  # the first run warms the disk cache (and builds the embedded pack once)
            times.append(elapsed)
    return times


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor() or "unknown CPU"
    for line in out.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()

    previz = previz_command()
    store = Path(tempfile.mkdtemp(prefix="previz-bench-cli-"))
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    cases = [
        ("`previz drafts list` (empty store)", ["drafts", "list", "--store", str(store)], 0),
        ("`previz models`", ["models"], 0),
        ("usage error (`draft --seconds abc`)", ["draft", "a cube", "--seconds", "abc"], 2),
        ("recipe error (`draft --width 100`)", ["draft", "a cube", "--width", "100"], 2),
        (f"port in use (`serve --port {port}`)", ["serve", "--port", str(port)], 2),
    ]
    try:
        print(f"CPU: {cpu_name()}, {os.cpu_count()} cores; Python {platform.python_version()}; "
              f"{args.repeats} runs each after one warm-up, wall time of a fresh process")
        print()
        print("| command | median s | min s | max s |")
        print("|---|---:|---:|---:|")
        for label, argv, expect in cases:
            times = wall_times([*previz, *argv], args.repeats, expect)
            print(f"| {label} | {statistics.median(times):.2f} | {min(times):.2f} | {max(times):.2f} |", flush=True)
    finally:
        taken.close()
        shutil.rmtree(store, ignore_errors=True)


if __name__ == "__main__":
    main()
