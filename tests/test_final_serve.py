"""`previz serve` renders promoted drafts in its background job worker and reports progress to clients."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import LiveServer
from test_server import open_client

pytestmark = pytest.mark.filterwarnings("ignore:connect\\(\\) must be used:DeprecationWarning")


def test_a_promoted_draft_renders_in_the_background_with_progress_events(test_pack, final_pack, tmp_path,
                                                                         cache_dir):
    server = LiveServer(test_pack, tmp_path / "drafts", cache_dir, run_jobs=True)
    try:
        client = open_client(server)
        client.send(type="generate", recipe={"prompt": "a final, please", "seconds": 0.1})
        draft_id = client.event("take_done")["draft_id"]
        client.send(type="approve", draft_id=draft_id)
        client.event("draft")
        # Bad options are typed protocol errors naming the field, and change nothing.
        for options, field in (({"strength": 2}, "strength"), ({"format": "gif"}, "format"),
                               ({"output_dir": "/etc"}, "options")):
            client.send(type="promote", draft_id=draft_id, options=options)
            error = client.event("error")
            assert (error["code"], error["field"], error["request"]) == ("draft_error", field, "promote")
        assert server.store.get(draft_id).state == "approved" and server.store.jobs() == []
        client.send(type="promote", draft_id=draft_id,
                    options={"format": "prores", "size": "128x64", "resolution": "hd"})
        queued = client.event("job_queued")
        assert "in the background" in queued["message"]
        done = client.event("job_done", timeout=300)
        job_id = queued["job"]["id"]
        assert done["job"]["id"] == job_id and done["job"]["state"] == "done"
        progress = [e["progress"] for e in client.events if e["type"] == "job_progress"]
        assert {p["stage"] for p in progress} == {"refine", "decode", "vsr", "encode"}
        assert all(1 <= p["unit"] <= p["units"] for p in progress)
        # The encode stage estimates its time left from the segment it has just encoded (it had none before).
        assert all(p["eta_s"] is not None and p["eta_s"] >= 0 for p in progress if p["stage"] == "encode")
        # Clients learn the delivery's file name, never this machine's paths.
        assert done["job"]["output"] == f"{draft_id}_{job_id}.mov"
        assert "output_dir" not in done["job"]["options"]
        assert Path(server.store.job(job_id).output).is_file()
    finally:
        server.close()
