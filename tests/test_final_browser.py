"""The page shows a final render's progress and its finished file (Chromium via Playwright, live server)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from conftest import LiveServer

sync_api = pytest.importorskip("playwright.sync_api")
if shutil.which("/usr/bin/chromium") is None:
    pytest.skip("/usr/bin/chromium not found (apt-get install chromium)", allow_module_level=True)

from test_browser import ARGS, CHROMIUM, wait_until  # noqa: E402

pytestmark = pytest.mark.slow


def test_the_page_shows_job_progress_and_the_finished_file(test_pack, final_pack, tmp_path, cache_dir):
    server = LiveServer(test_pack, tmp_path / "drafts", cache_dir, run_jobs=True)
    try:
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            try:
                page = browser.new_page()
                errors: list[str] = []
                page.on("pageerror", lambda exc: errors.append(str(exc)))
                page.goto(server.url)
                wait_until(lambda: page.text_content("#pack-label") != "connecting…", "the ready event")
                page.fill("#prompt", "a lighthouse in a gale")
                page.fill("#seconds", "0.1")  # three frames: the render, not the take, is under test
                page.click("#generate")
                draft = page.wait_for_selector("#drafts .draft", timeout=120_000)
                draft_id = draft.get_attribute("data-id")
                page.click("#approve")
                page.wait_for_selector(f"#drafts .draft[data-id='{draft_id}'][data-state='approved']")
                page.select_option("#promote-format", "prores")
                page.click("#promote")

                seen: set[str] = set()

                def finished() -> str | None:
                    text = page.text_content("#jobs") or ""
                    seen.update(stage for stage in ("refine", "vsr", "encode") if f"{stage} " in text)
                    return text if "finished:" in text else None

                text = wait_until(finished, "the job's finished file", 300)
                job = server.store.jobs(draft_id=draft_id)[0]
                assert job.state == "done"
                assert f"finished: {Path(job.output).name}" in text and "done" in text
                assert seen, "no progress line was shown while the job ran"
                assert errors == []
            finally:
                browser.close()
    finally:
        server.close()
