"""`previz serve` from this checkout in its own process, for the tools that drive a live server."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


class Server:
    """`previz serve` in its own process; its log is drained (and kept) so it never blocks on a pipe."""

    def __init__(self, pack: str, backend: str, *extra: str) -> None:
        self.store = tempfile.mkdtemp(prefix="previz-served-store-")
        # This checkout's previz (not whichever one the venv's `previz` script was installed from).
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "previz.cli", "serve", "--port", "0", "--pack", pack, "--backend", backend,
             "--store", self.store, *extra], stderr=subprocess.PIPE, text=True, env=env)
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            match = re.search(r"live at (http://[^ ]+)/", line)
            if match:
                self.url = match.group(1)
                break
        else:
            raise RuntimeError("previz serve did not start")
        self.ws = self.url.replace("http://", "ws://") + "/ws"
        self.port = int(self.url.rsplit(":", 1)[1])
        self.log: list[str] = []
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.log.append(line)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)
