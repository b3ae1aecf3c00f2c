"""SIGKILL the live server while it stores drafts and writes approvals; nothing committed is lost.

(A final render killed mid-job and resumed: tests/test_final_jobs.py, `previz jobs resume`.)
"""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from websockets.sync.client import connect

from previz import drafts
from previz.drafts import DraftStore
from previz.protocol import unpack_frame

REPO = Path(__file__).resolve().parents[1]


def start_server(store: Path) -> tuple[subprocess.Popen[str], str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "previz.cli", "serve", "--port", "0", "--pack", "previz-test", "--backend", "torch",
         "--store", str(store), "--no-jobs"], stderr=subprocess.PIPE, text=True, env=env)
    assert proc.stderr is not None
    for line in proc.stderr:
        match = re.search(r"live at http://([^ ]+)/", line)
        if match:
            return proc, f"ws://{match.group(1)}/ws"
    raise AssertionError("previz serve did not start")


@pytest.mark.parametrize("kill_after", [2, 3])
def test_sigkill_mid_store_loses_no_committed_approval(test_pack, tmp_path, kill_after):
    store_root = tmp_path / "drafts"
    proc, url = start_server(store_root)
    approved: list[str] = []  # approvals the server confirmed: committed, so they must survive
    try:
        with connect(url, max_size=2**22) as ws:
            assert json.loads(ws.recv(timeout=60))["type"] == "ready"
            ws.send(json.dumps({"type": "generate", "recipe": {"prompt": "take 0", "seconds": 0.4}}))
            takes = 0
            while True:
                data = ws.recv(timeout=120)
                if isinstance(data, bytes):
                    if unpack_frame(data)[0].last and takes == kill_after:
                        # The take's last frame is out: the server is now writing its MP4, thumbnail,
                        # latents and row, and an approval is in flight.  Kill it there, no clean-up.
                        os.kill(proc.pid, signal.SIGKILL)
                        break
                    continue
                event = json.loads(data)
                if event["type"] == "take_done":
                    takes += 1
                    ws.send(json.dumps({"type": "approve", "draft_id": event["draft_id"]}))
                    ws.send(json.dumps({"type": "generate", "recipe": {"prompt": f"take {takes}", "seconds": 0.4}}))
                elif event["type"] == "draft" and event["draft"]["state"] == "approved":
                    approved.append(event["draft"]["id"])
    finally:
        proc.kill()
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL and len(approved) >= kill_after - 1

    db = sqlite3.connect(store_root / "drafts.db")
    assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    db.close()
    with DraftStore(store_root) as store:
        for draft_id in approved:
            draft = store.get(draft_id)
            assert draft.state == "approved" and store.file_path(draft_id, "take.mp4").stat().st_size > 0
        known = {d.id for d in store.list(limit=1000)}
    # Whatever the kill interrupted has no row; once older than the grace period (which protects another
    # process mid-add), the next open sweeps it, hidden temporary files and all.
    files = store_root / "files"
    orphans = [p for p in files.iterdir() if p.name not in known]
    print(f"approved {len(approved)}, kept {len(known)}, interrupted {len(orphans)}")
    long_ago = time.time() - 2 * drafts.ORPHAN_GRACE_S
    for path in orphans:
        os.utime(path, (long_ago, long_ago))
    with DraftStore(store_root) as store:
        assert {p.name for p in files.iterdir()} == known
        assert not [p for p in files.rglob(".*")]  # no temporary file left in any kept draft
        assert {d.id for d in store.list(limit=1000)} == known
