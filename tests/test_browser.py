"""The live page in a real browser: Debian's Chromium driven by Playwright against a live server.

Skipped unless the `playwright` package and /usr/bin/chromium are both installed
(tools/setup.sh installs them; `playwright install` is never needed).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from pathlib import Path

import pytest

sync_api = pytest.importorskip("playwright.sync_api")

CHROMIUM = "/usr/bin/chromium"
if shutil.which(CHROMIUM) is None:
    pytest.skip(f"{CHROMIUM} not found (apt-get install chromium)", allow_module_level=True)

pytestmark = pytest.mark.slow

ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--no-first-run", "--disable-sync"]
SCREENSHOT = Path(__file__).resolve().parent.parent / "artifacts" / "browser" / "previz-page.png"
BACKLOT_SCREENSHOT = SCREENSHOT.with_name("previz-backlot-page.png")
TIMEOUT_MS = 120_000  # a CPU test pack drafts in seconds; generous for slow CI machines


# The server's CSP forbids eval, so page.wait_for_function (which evaluates a string in the page)
# is refused; the test polls attributes and text from Python instead, and keeps the CSP on so that
# anything in the page that breaks it fails here too.
def wait_until(check, what: str, timeout_s: float = TIMEOUT_MS / 1000):
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@contextlib.contextmanager
def open_page(server):
    """The page in Chromium on ``server``, with every JSON message it sends (page.sent) and receives
    (page.received) recorded, and any page error, console error or HTTP error failing the test."""
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 860})
            page = context.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.on("console", lambda msg: errors.append(f"{msg.text} {msg.location}") if msg.type == "error" else None)
            page.on("response", lambda r: errors.append(f"HTTP {r.status} {r.url}") if r.status >= 400 else None)
            page.set_default_timeout(TIMEOUT_MS)
            page.sent = []  # JSON the page sends on its websocket, to check what it asks for
            page.received = []  # JSON events the server sends it

            def record(into):
                def on(payload):
                    if isinstance(payload, str):
                        into.append(json.loads(payload))
                return on

            def watch(ws):
                ws.on("framesent", record(page.sent))
                ws.on("framereceived", record(page.received))

            page.on("websocket", watch)
            page.goto(server.url)
            # ready has arrived once the pack label is filled in
            wait_until(lambda: page.text_content("#pack-label") != "connecting…", "the ready event")
            yield page
            assert errors == [], f"uncaught errors in the page: {errors}"
        finally:
            browser.close()


@pytest.fixture
def page(live_server):
    with open_page(live_server) as page:
        yield page


@pytest.fixture
def backlot_page(backlot_server):
    with open_page(backlot_server) as page:
        yield page


def frames_drawn_at_least(page, n: int) -> None:
    wait_until(lambda: int(page.get_attribute("#player", "data-frames-drawn") or 0) >= n, f"{n} frames drawn")


def test_generate_play_and_approve(page, live_server):
    page.fill("#prompt", "a red cube on a sandy plain")
    page.check("#seed-lock")
    page.fill("#seed", "7")
    page.fill("#seconds", "1")
    page.click("#generate")

    frames_drawn_at_least(page, 10)
    take_id = page.get_attribute("#player", "data-take-id")
    assert take_id and int(take_id) >= 1
    # Never faster than real time, however far ahead of it generation runs (loop playback keeps it going).
    t0, n0 = time.monotonic(), int(page.get_attribute("#player", "data-frames-drawn"))
    time.sleep(1.0)
    n1, t1 = int(page.get_attribute("#player", "data-frames-drawn")), time.monotonic()
    assert n1 - n0 <= 30 * (t1 - t0) + 2, (n1 - n0, t1 - t0)  # an upper bound only: a slow machine draws fewer

    draft = page.wait_for_selector("#drafts .draft")
    draft_id = draft.get_attribute("data-id")
    assert draft_id
    assert draft.get_attribute("data-state") == "draft"
    # the latest take's draft is selected by default once its take_done arrives
    page.wait_for_selector(f"#drafts .draft.selected[data-id='{draft_id}']")
    assert page.text_content("#gen-fps") not in ("–", "…")
    assert page.text_content("#rtf").endswith("×")
    assert page.text_content("#ttff").endswith("ms")

    page.click("#approve")
    page.wait_for_selector(f"#drafts .draft[data-id='{draft_id}'][data-state='approved']")
    wait_until(lambda: {d.id: d.state for d in live_server.store.list()}.get(draft_id) == "approved",
               "the store to say approved", 10)

    # Promotion: jobs stay queued until the final stage exists, and the page shows the server's words.
    page.click("#promote")
    page.wait_for_selector("#jobs li .job-message")
    assert "queued" in page.text_content("#jobs")

    # A camera change while the take plays restarts it (update): a new take id, and it plays.
    page.select_option("#camera", "orbit_left")
    wait_until(lambda: int(page.get_attribute("#player", "data-take-id") or 0) > int(take_id), "the updated take")
    frames_drawn_at_least(page, 10)
    updates = [m for m in page.sent if m["type"] == "update"]
    assert [u["recipe"] for u in updates] == [{"camera": {"preset": "orbit_left", "speed": 1}}], updates
    wait_until(lambda: len(page.query_selector_all("#drafts .draft")) == 2, "the updated take's draft")

    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOT), full_page=True)


def test_untrained_badge_and_bad_input(page):
    assert page.is_visible("#untrained-badge")
    assert "untrained pack" in page.text_content("#untrained-badge")

    page.fill("#prompt", "a lighthouse in a gale")
    for bad in ("0", "999"):
        before = page.text_content("#status")
        page.fill("#seconds", bad)
        page.click("#generate")
        status = wait_until(lambda before=before: (t := page.text_content("#status")) != before
                            and "error" in (page.get_attribute("#status", "class") or "") and t, "an error")
        assert "invalid_recipe" in status and "seconds" in status and bad in status, status

    # The page still works: a valid take draws frames.
    page.fill("#seconds", "1")
    page.click("#generate")
    frames_drawn_at_least(page, 10)
    assert "error" not in (page.get_attribute("#status", "class") or "")


def test_unlocked_seed_and_live_camera_updates(page):
    page.fill("#prompt", "a slow dolly past a neon diner")
    page.fill("#seconds", "1")
    assert not page.is_checked("#seed-lock")
    page.click("#generate")
    frames_drawn_at_least(page, 5)
    page.click("#generate")  # unlocked: each Generate is a new random seed, shown in #seed
    wait_until(lambda: len([m for m in page.sent if m["type"] == "generate"]) == 2, "two generates")
    seeds = [m["recipe"]["seed"] for m in page.sent if m["type"] == "generate"]
    assert seeds[0] != seeds[1]
    wait_until(lambda: page.input_value("#seed") == str(seeds[1]), "the new seed shown")

    frames_drawn_at_least(page, 5)
    page.focus("#speed")
    page.keyboard.press("ArrowRight")  # one slider step: 1 -> 1.25
    assert page.text_content("#speed-value") == "1.25×"
    page.fill("#shake", "0.5")
    page.press("#shake", "Tab")  # change fires when the field is left
    wait_until(lambda: len([m for m in page.sent if m["type"] == "update"]) == 2, "two updates")
    first, second = (m["recipe"] for m in page.sent if m["type"] == "update")
    assert first == {"camera": {"preset": "static", "speed": 1.25}}
    assert second == {"camera": {"preset": "static", "speed": 1.25, "shake": {"amplitude": 0.5, "seed": seeds[1]}}}
    frames_drawn_at_least(page, 5)


def test_page_offers_the_cli_choices_and_enforces_its_limits(page, live_server):
    from previz.drafts import FINAL_FORMATS
    from previz.recipe import MAX_SEED

    # The promote formats are exactly the CLI's (`previz drafts promote --format`).
    options = page.eval_on_selector_all("#promote-format option", "els => els.map((e) => e.value)")
    assert options == list(FINAL_FORMATS)

    page.fill("#prompt", "a lighthouse in a gale")
    page.fill("#seconds", "1")
    page.check("#seed-lock")

    def error_after(action) -> str:
        before = page.text_content("#status")
        action()
        return wait_until(lambda: (t := page.text_content("#status")) != before
                          and "error" in (page.get_attribute("#status", "class") or "") and t, "an error")

    # Shake above the field's maximum (5) is refused, as the CLI refuses it.
    page.fill("#seed", "7")
    page.fill("#shake", "9")
    status = error_after(lambda: page.click("#generate"))
    assert "shake amplitude = 9: between 0 and 5 degrees" in status, status
    page.fill("#shake", "0")

    # A seed one above MAX_SEED is refused by name ...
    status = error_after(lambda: (page.fill("#seed", str(MAX_SEED + 1)), page.click("#generate")))
    assert "seed" in status and str(MAX_SEED + 1) in status, status

    # ... and every seed up to MAX_SEED travels exactly and stays whole in the box.
    for seed in (1256266967, MAX_SEED):
        page.fill("#seed", str(seed))
        page.click("#generate")
        wait_until(lambda seed=seed: [m for m in page.sent if m["type"] == "generate"
                                      and m["recipe"]["seed"] == seed], f"a generate with seed {seed}")
        assert page.input_value("#seed") == str(seed)
        assert page.eval_on_selector("#seed", "el => el.scrollWidth <= el.clientWidth"), "digits cut off"
        wait_until(lambda seed=seed: any(d.recipe["seed"] == seed for d in live_server.store.list()),
                   f"the draft with seed {seed}")
        assert page.input_value("#seed") == str(seed)


def test_scene_edited_before_any_take_goes_with_generate(page):
    # The untrained test pack has no control: the panel is there, the control preview is not.
    assert page.is_visible("#scene-panel") and not page.is_visible("#control-wrap")
    page.select_option("#add-shape", "cone")
    page.select_option("#add-color", "orange")
    page.click("#add-object")
    page.select_option("#scene-ground", "snow")
    assert not page.is_checked("#scene-follow")
    assert not [m for m in page.sent if m["type"] == "update"]  # no take yet: nothing to update
    page.fill("#prompt", "a lighthouse in a gale")
    page.fill("#seconds", "1")
    page.click("#generate")
    wait_until(lambda: [m for m in page.sent if m["type"] == "generate"], "a generate")
    generate = [m for m in page.sent if m["type"] == "generate"][0]
    assert generate["recipe"]["scene"]["ground"] == "snow"
    assert [(o["shape"], o["color"]) for o in generate["recipe"]["scene"]["objects"]] == [("cone", "orange")]
    frames_drawn_at_least(page, 5)
    assert len(page.query_selector_all("#scene-objects button")) == 1  # the edited scene, not the prompt's
    assert not page.is_visible("#control-wrap")


# ----------------------------------------------------------------------------- the scene panel (backlot pack)

SCENE_PROMPT = "a red box left of a blue sphere on sand at dusk"


def take_started_for(page, request_id: int) -> dict:
    """The take_started that answers the page's request ``request_id``."""
    # page.wait_for_timeout lets Playwright deliver the websocket events it holds; a bare sleep does not.
    return wait_until(lambda: page.wait_for_timeout(20) or next(
        (m for m in page.received if m["type"] == "take_started" and m.get("re") == request_id), None),
        f"the take answering request {request_id}")


def sent_after(page, before: int, kind: str) -> dict:
    """The last ``kind`` message the page sent after its first ``before`` messages."""
    return wait_until(lambda: page.wait_for_timeout(20) or ([m for m in page.sent[before:] if m["type"] == kind]
                                                            or [None])[-1], f"a {kind}")


def object_buttons(page) -> list[str]:
    texts = page.eval_on_selector_all("#scene-objects button", "els => els.map((e) => e.textContent)")
    return [t.strip() for t in texts]


def map_point(page, x: float, z: float) -> tuple[float, float]:
    """Where world (x, z) is on screen: the map says where (0, 0) is and its pixels per metre."""
    page.locator("#scene-map").scroll_into_view_if_needed()  # the mouse only reaches what is on screen
    cx, cy, scale = (float(v) for v in page.get_attribute("#scene-map", "data-view").split())
    box = page.locator("#scene-map").bounding_box()
    width, height = (int(page.get_attribute("#scene-map", a)) for a in ("width", "height"))
    return (box["x"] + (cx + x * scale) * box["width"] / width, box["y"] + (cy + z * scale) * box["height"] / height)


def lit_fraction(page, selector: str) -> float:
    """The share of a canvas's pixels that are not black."""
    return page.eval_on_selector(selector, """c => {
        const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
        let lit = 0;
        for (let i = 0; i < d.length; i += 4) if (d[i] + d[i + 1] + d[i + 2] > 30) lit++;
        return lit / (c.width * c.height);
    }""")


def start_scene_take(page) -> dict:
    page.fill("#prompt", SCENE_PROMPT)
    page.check("#seed-lock")
    page.fill("#seed", "7")
    page.fill("#seconds", "1")
    before = len(page.sent)
    page.click("#generate")
    generate = sent_after(page, before, "generate")
    assert "scene" not in generate["recipe"]  # it follows the prompt: the server derives the scene
    return take_started_for(page, generate["id"])


def test_scene_panel_shows_the_derived_scene_and_edits_restart_the_take(backlot_page, backlot_server):
    page = backlot_page
    assert page.is_visible("#scene-panel")
    started = start_scene_take(page)
    derived = started["recipe"]["scene"]
    assert derived["time_of_day"] == "dusk" and derived["ground"] == "sand"
    red, blue = derived["objects"]
    assert (red["color"], red["shape"], blue["color"], blue["shape"]) == ("red", "box", "blue", "sphere")
    assert red["position"][0] < blue["position"][0]  # left of

    # The panel shows what was understood.
    wait_until(lambda: len(object_buttons(page)) == 2, "the derived objects listed")
    names = object_buttons(page)
    assert "red box" in names[0] and "blue sphere" in names[1], names
    assert page.input_value("#scene-time") == "dusk" and page.input_value("#scene-ground") == "sand"
    assert page.is_checked("#scene-follow")
    assert "derived from the prompt" in page.text_content("#scene-summary")

    # The control preview is drawn from take_started.control_preview: albedo and depth, not blank.
    wait_until(lambda: page.get_attribute("#control-albedo", "data-take-id") == str(started["take_id"]),
               "the control preview")
    assert page.is_visible("#control-wrap")
    assert lit_fraction(page, "#control-albedo") > 0.5  # the sky's and the ground's flat colours
    assert lit_fraction(page, "#control-depth") > 0.2
    frames_drawn_at_least(page, 5)

    # Drag the blue sphere 2 m to the right (still in shot): updates carry the whole scene, and the take restarts on it.
    x0, z0 = blue["position"][0], blue["position"][2]
    sx, sy = map_point(page, x0, z0)
    ex, _ = map_point(page, x0 + 2, z0)
    before = len(page.sent)
    page.mouse.move(sx, sy)
    page.mouse.down()
    page.mouse.move(ex, sy, steps=12)
    page.mouse.up()
    # Letting go sends the final position (throttled updates may have gone before it).
    wait_until(lambda: abs(sent_after(page, before, "update")["recipe"]["scene"]["objects"][1]["position"][0]
                           - (x0 + 2)) < 0.2, "the dragged position sent")
    drag_updates = [m for m in page.sent[before:] if m["type"] == "update"]
    assert all(set(m["recipe"]) == {"scene"} for m in drag_updates), drag_updates
    moved = drag_updates[-1]["recipe"]["scene"]["objects"][1]
    assert abs(moved["position"][0] - (x0 + 2)) < 0.2 and moved["position"][2] == z0, moved
    assert drag_updates[-1]["recipe"]["scene"]["objects"][0] == red  # the other object untouched
    restarted = take_started_for(page, drag_updates[-1]["id"])
    assert restarted["take_id"] > started["take_id"]
    assert restarted["recipe"]["scene"]["objects"][1]["position"] == moved["position"]
    assert restarted["recipe"]["prompt"] == SCENE_PROMPT and restarted["recipe"]["seed"] == 7
    assert not page.is_checked("#scene-follow")
    assert "edited here" in page.text_content("#scene-summary")

    # Recolour the red box green.
    page.click("#scene-objects button[data-index='0']")
    before = len(page.sent)
    page.select_option("#obj-color", "green")
    update = sent_after(page, before, "update")
    assert update["recipe"]["scene"]["objects"][0]["color"] == "green"
    assert take_started_for(page, update["id"])["recipe"]["scene"]["objects"][0]["color"] == "green"

    # Add a yellow cylinder.
    page.select_option("#add-shape", "cylinder")
    page.select_option("#add-color", "yellow")
    before = len(page.sent)
    page.click("#add-object")
    update = sent_after(page, before, "update")
    added = take_started_for(page, update["id"])["recipe"]["scene"]["objects"]
    assert [(o["color"], o["shape"]) for o in added] == [("green", "box"), ("blue", "sphere"), ("yellow", "cylinder")]
    wait_until(lambda: len(object_buttons(page)) == 3, "three objects listed")

    # The edited scene is what the draft stores.
    frames_drawn_at_least(page, 20)
    wait_until(lambda: any(len(d.recipe["scene"]["objects"]) == 3 for d in backlot_server.store.list()),
               "the edited scene's draft")
    stored = next(d for d in backlot_server.store.list() if len(d.recipe["scene"]["objects"]) == 3)
    assert stored.recipe["scene"]["objects"][2]["shape"] == "cylinder"
    assert stored.recipe["scene"]["objects"][1]["position"] == moved["position"]
    BACKLOT_SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(BACKLOT_SCREENSHOT), full_page=True)

    # A prompt change keeps the edited scene (the server holds it) ...
    before = len(page.sent)
    page.fill("#prompt", "two white pillars on snow at night")
    page.press("#prompt", "Enter")
    update = sent_after(page, before, "update")
    assert update["recipe"] == {"prompt": "two white pillars on snow at night"}
    kept = take_started_for(page, update["id"])["recipe"]["scene"]
    assert len(kept["objects"]) == 3 and kept["ground"] == "sand"

    # ... until the scene follows the prompt again: a generate without a scene, and the derived one shows.
    before = len(page.sent)
    page.check("#scene-follow")
    generate = sent_after(page, before, "generate")
    assert "scene" not in generate["recipe"] and generate["recipe"]["seed"] == 7
    derived = take_started_for(page, generate["id"])["recipe"]["scene"]
    assert (derived["ground"], derived["time_of_day"]) == ("snow", "night")
    assert [(o["color"], o["shape"]) for o in derived["objects"]] == [("white", "pillar")] * 2
    wait_until(lambda: page.input_value("#scene-ground") == "snow" and len(object_buttons(page)) == 2,
               "the derived scene in the panel")
    frames_drawn_at_least(page, 5)


def test_scene_edits_that_the_server_refuses_show_and_the_page_goes_on(backlot_page):
    page = backlot_page
    started = start_scene_take(page)
    wait_until(lambda: len(object_buttons(page)) == 2, "the derived objects listed")
    frames_drawn_at_least(page, 5)

    # A zero width is refused by name; the playing take is left alone and the field is marked.
    page.click("#scene-objects button[data-index='1']")
    assert page.get_attribute("#scene-objects button[data-index='1']", "aria-pressed") == "true"
    before = page.text_content("#status")
    page.fill("#obj-w", "0")
    page.press("#obj-w", "Tab")
    status = wait_until(lambda: (t := page.text_content("#status")) != before
                        and "error" in (page.get_attribute("#status", "class") or "") and t, "an error")
    assert "invalid_scene" in status and "scene.objects[1].size[0]" in status, status
    assert page.get_attribute("#obj-w", "aria-invalid") == "true"
    assert page.get_attribute("#player", "data-take-id") == str(started["take_id"])

    # Fixing it restarts the take on the fixed scene, and the mark goes.
    before = len(page.sent)
    page.fill("#obj-w", "1.5")
    page.press("#obj-w", "Tab")
    update = sent_after(page, before, "update")
    fixed = take_started_for(page, update["id"])
    assert fixed["recipe"]["scene"]["objects"][1]["size"][0] == 1.5
    wait_until(lambda: page.get_attribute("#obj-w", "aria-invalid") is None, "the mark cleared")
    frames_drawn_at_least(page, 5)
    assert "error" not in (page.get_attribute("#status", "class") or "")

    # Ground, time of day, a keyboard nudge and a delete each send the whole scene.
    before = len(page.sent)
    page.select_option("#scene-ground", "asphalt")
    assert sent_after(page, before, "update")["recipe"]["scene"]["ground"] == "asphalt"
    before = len(page.sent)
    page.select_option("#scene-time", "night")
    assert sent_after(page, before, "update")["recipe"]["scene"]["time_of_day"] == "night"
    x = fixed["recipe"]["scene"]["objects"][1]["position"][0]
    page.focus("#scene-map")
    before = len(page.sent)
    page.keyboard.press("Shift+ArrowRight")
    nudged = sent_after(page, before, "update")["recipe"]["scene"]["objects"][1]
    assert abs(nudged["position"][0] - (x + 1)) < 1e-6, nudged
    before = len(page.sent)
    page.keyboard.press("Delete")
    update = sent_after(page, before, "update")
    assert [o["shape"] for o in update["recipe"]["scene"]["objects"]] == ["box"]
    after = take_started_for(page, update["id"])["recipe"]["scene"]
    assert (after["ground"], after["time_of_day"], len(after["objects"])) == ("asphalt", "night", 1)
    frames_drawn_at_least(page, 5)
