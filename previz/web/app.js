// previz live page: one websocket, a 30 fps player fed from a jitter buffer, shot controls, drafts.
// The wire protocol is docs/protocol.md; this file only speaks it. No build step, no dependencies.
"use strict";

const FPS = 30;                 // the draft rate; ready.draft.fps overrides it
const PREBUFFER = 4;            // frames decoded before playback starts: absorbs network/decode jitter
const PROMPT_PAUSE_MS = 400;    // typing pause before a prompt change restarts the take
const DRAFT_LIST_LIMIT = 12;
const HEADER_BYTES = 20;

// Used when the server's ready event has no preset list (docs/camera.md).
const BUILTIN_PRESETS = [
  "static", "pan_left", "pan_right", "tilt_up", "tilt_down", "dolly_in", "dolly_out",
  "truck_left", "truck_right", "pedestal_up", "pedestal_down", "orbit_left", "orbit_right",
  "crane_up", "crane_down", "zoom_in", "zoom_out", "dolly_zoom_in", "dolly_zoom_out",
  "arc_left", "arc_right",
  "crash_zoom_in", "crash_zoom_out", "super_dolly_in", "super_dolly_out", "whip_pan_left", "whip_pan_right",
];
const ALIAS_PREFIXES = ["crash_", "super_", "whip_"];

const $ = (id) => document.getElementById(id);

// Seeds go up to 2**63 - 1 (the recipe's MAX_SEED), past what a JS number holds exactly, so the page
// keeps them as BigInt and writes them into the JSON as bare digits.
const BIGINT_MARK = "\u0000bigint:";
const BIGINT_JSON = /"\\u0000bigint:(\d+)"/g;
function toJSON(value) {
  return JSON.stringify(value, (_, v) => (typeof v === "bigint" ? BIGINT_MARK + v : v))?.replace(BIGINT_JSON, "$1");
}

const state = {
  ws: null,
  nextId: 1,
  fps: FPS,
  connected: false,
  reconnectMs: 500,
  takeId: null,          // the take whose frames we accept; older takes' frames are stale
  generating: false,     // between take_started and take_done/cancel/error
  framesReceived: 0,
  framesDropped: 0,
  expectedIndex: 0,      // next frame index we expect; a jump is a gap (frames dropped upstream)
  latestDraftId: null,
  selectedId: null,
  drafts: new Map(),     // id -> draft dict, for the strip and the review panel
  sent: {},              // the recipe fields last sent, so update carries only what changed
  lastTakeRequest: 0,    // id of the last generate/update sent: older takes' scenes are stale
};

// ------------------------------------------------------------------ player

// Frames arrive faster than real time and out of step with the display; the player decodes them
// into a queue and draws exactly one per 1/30 s tick of a requestAnimationFrame clock.
const player = {
  canvas: null,
  ctx: null,
  queue: [],             // decoded {index, bitmap}, in frame order, not yet shown
  played: [],            // this take's frames already shown, kept for loop playback
  playing: false,
  lastReceived: false,   // the take's last frame has arrived: play out whatever is buffered
  nextDue: 0,            // performance.now() time the next frame is due
  drawn: 0,
  totalDrawn: 0,
  looping: false,
};

function playerInit() {
  player.canvas = $("player");
  player.ctx = player.canvas.getContext("2d");
  player.ctx.fillStyle = "#000";
  player.ctx.fillRect(0, 0, player.canvas.width, player.canvas.height);
  requestAnimationFrame(playerTick);
}

// A new take: drop everything of the old one so its frames never show after the switch.
function playerReset(takeId) {
  for (const f of player.queue) f.bitmap.close();
  for (const f of player.played) f.bitmap.close();
  player.queue = [];
  player.played = [];
  player.playing = false;
  player.lastReceived = false;
  player.looping = false;
  player.drawn = 0;
  player.canvas.dataset.framesDrawn = "0";
  player.canvas.dataset.takeId = String(takeId);
  setOverlay("buffering…");
}

function playerPush(index, bitmap, last) {
  // Decodes can finish out of order; keep the queue sorted by frame index.
  let i = player.queue.length;
  while (i > 0 && player.queue[i - 1].index > index) i--;
  player.queue.splice(i, 0, {index, bitmap});
  if (last) player.lastReceived = true;
  if (!player.playing && (player.queue.length >= PREBUFFER || player.lastReceived)) {
    player.playing = true;
    player.nextDue = performance.now();
    setOverlay(null);
  }
}

function playerTick(now) {
  requestAnimationFrame(playerTick);
  $("buffered").textContent = String(player.queue.length);
  if (!player.playing || now < player.nextDue) return;
  if (player.queue.length === 0) {
    if (player.lastReceived && $("loop").checked && player.played.length > 0) {
      player.queue = player.played;   // replay the finished take from its first frame
      player.played = [];
      player.looping = true;
    } else {
      // Underrun (generation behind real time) or the take ended: hold the last frame and
      // re-prebuffer, rather than bursting to catch up later.
      player.playing = false;
      if (!player.lastReceived) setOverlay("buffering…");
      return;
    }
  }
  const frame = player.queue.shift();
  player.ctx.drawImage(frame.bitmap, 0, 0, player.canvas.width, player.canvas.height);
  player.played.push(frame);
  player.drawn++;
  player.totalDrawn++;
  player.canvas.dataset.framesDrawn = String(player.drawn);
  player.canvas.dataset.totalDrawn = String(player.totalDrawn);
  // One frame per 1/fps. If the tab stalled and we are far behind, resync instead of bursting:
  // the player is never faster than the take's frame rate.
  player.nextDue += 1000 / state.fps;
  if (player.nextDue < now - 1000 / state.fps) player.nextDue = now + 1000 / state.fps;
}

function setOverlay(text) {
  const el = $("player-overlay");
  el.textContent = text || "";
  el.hidden = !text;
}

// ------------------------------------------------------------------ frames off the wire

function parseHeader(buf) {
  const v = new DataView(buf);
  return {
    version: v.getUint8(0), last: (v.getUint8(1) & 1) === 1, format: v.getUint8(2),
    take: v.getUint32(4), chunk: v.getUint32(8), index: v.getUint32(12), pts: v.getUint32(16),
  };
}

async function onFrame(buf) {
  if (buf.byteLength < HEADER_BYTES) return;
  const h = parseHeader(buf);
  if (h.version !== 1) return;
  if (state.takeId === null || h.take > state.takeId) startTake(h.take);  // frame beat take_started
  if (h.take !== state.takeId) return;                                   // a superseded take
  state.framesReceived++;
  if (h.index > state.expectedIndex) state.framesDropped += h.index - state.expectedIndex;
  state.expectedIndex = Math.max(state.expectedIndex, h.index + 1);
  $("frames-received").textContent = String(state.framesReceived);
  $("frames-dropped").textContent = String(state.framesDropped);

  const blob = new Blob([buf.slice(HEADER_BYTES)], {type: h.format === 2 ? "image/webp" : "image/jpeg"});
  let bitmap;
  try {
    bitmap = await createImageBitmap(blob);
  } catch (err) {
    setStatus(`could not decode frame ${h.index}: ${err}`, true);
    return;
  }
  if (h.take !== state.takeId) { bitmap.close(); return; }  // the take changed while decoding
  playerPush(h.index, bitmap, h.last);
}

function startTake(takeId) {
  state.takeId = takeId;
  state.framesReceived = 0;
  state.framesDropped = 0;
  state.expectedIndex = 0;
  $("frames-received").textContent = "0";
  $("frames-dropped").textContent = "0";
  playerReset(takeId);
}

// ------------------------------------------------------------------ connection

function connect() {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const ws = new WebSocket(`${scheme}//${location.host}/ws`);
  ws.binaryType = "arraybuffer";
  state.ws = ws;
  ws.onopen = () => { state.reconnectMs = 500; setConnection(true); };
  ws.onmessage = (ev) => {
    if (typeof ev.data === "string") onEvent(ev.data);
    else onFrame(ev.data);
  };
  ws.onclose = () => {
    setConnection(false);
    state.generating = false;
    // Reconnect with backoff: a restarted server should not need a page reload.
    setTimeout(connect, state.reconnectMs);
    state.reconnectMs = Math.min(state.reconnectMs * 2, 8000);
  };
}

function send(type, fields = {}) {
  if (!state.ws || state.ws.readyState !== WebSocket.OPEN) {
    setStatus("not connected to the server", true);
    return null;
  }
  const id = state.nextId++;
  if (type === "generate" || type === "update") state.lastTakeRequest = id;
  state.ws.send(toJSON({type, id, ...fields}));
  return id;
}

function setConnection(up) {
  state.connected = up;
  const el = $("connection");
  el.textContent = up ? "live" : "offline — reconnecting";
  el.className = up ? "conn conn-up" : "conn conn-down";
  if (!up) setStatus("disconnected; reconnecting…", true);
}

// ------------------------------------------------------------------ server events

const handlers = {
  ready: onReady,
  hello: () => {},
  take_started: onTakeStarted,
  chunk_done: onStats,
  take_done: onTakeDone,
  take_cancelled: onTakeCancelled,
  draft: (ev) => { upsertDraft(ev.draft); showJobs(ev.draft); },
  drafts: onDrafts,
  job_queued: onJobQueued,
  job_progress: onJobProgress,
  job_done: (ev) => addJobLine(ev.job || {}, `finished: ${(ev.job || {}).output || "?"}`),
  job_failed: (ev) => addJobLine(ev.job || {}, `failed: ${(ev.job || {}).error || "?"}`),
  error: onError,
};

function onEvent(text) {
  let ev;
  try {
    ev = JSON.parse(text);
  } catch (err) {
    setStatus(`bad event from server: ${err}`, true);
    return;
  }
  const handler = handlers[ev.type];
  if (handler) handler(ev);
}

function onReady(ev) {
  if (ev.auth === "token") {  // non-loopback server: it waits for hello with its token
    $("token-box").hidden = false;
    setStatus("this server needs its token (printed where `previz serve` runs)");
    return;
  }
  $("token-box").hidden = true;
  state.takeId = null;  // take ids restart at 1 on every connection
  if (ev.draft && ev.draft.fps) state.fps = ev.draft.fps;
  if (ev.draft && ev.draft.width && ev.draft.height) {
    player.canvas.width = ev.draft.width;
    player.canvas.height = ev.draft.height;
    // Frame the player at the draft's own aspect (CSSOM styles are allowed by the server's CSP).
    player.canvas.parentElement.style.aspectRatio = `${ev.draft.width} / ${ev.draft.height}`;
  }
  const pack = ev.pack || {};
  $("pack-label").textContent = pack.label || pack.id || "unknown pack";
  // Honest labelling: an untrained pack's drafts are noise and the page must say so.
  $("untrained-badge").hidden = pack.trained !== false;
  const caps = ev.capabilities || {};
  fillPresets(Array.isArray(caps.presets) && caps.presets.length ? caps.presets : BUILTIN_PRESETS);
  const maxSeconds = caps.limits && caps.limits.max_seconds;
  if (maxSeconds) {
    $("seconds").max = String(maxSeconds);
    $("seconds").title = `at most ${maxSeconds} s with this pack`;
  }
  const maxChars = caps.limits && caps.limits.max_prompt_chars;
  if (maxChars) $("prompt").maxLength = maxChars;
  sceneInit(caps.scene);
  // An imported Wan checkpoint takes no camera: say so rather than let the controls look live.
  $("camera-note").hidden = caps.camera !== false;
  setStatus("ready");
  requestDrafts();
}

function onTakeStarted(ev) {
  if (state.takeId !== ev.take_id) startTake(ev.take_id);
  state.generating = true;
  const r = ev.recipe || {};
  // The resolved seed, for reproducing it; one past 2**53 came from this box and is shown exactly there.
  if (Number.isSafeInteger(r.seed)) $("seed").value = String(r.seed);
  $("take-info").textContent = `#${ev.take_id} · ${ev.frames} frames`;
  sceneFromTake(ev);
  $("gen-fps").textContent = $("rtf").textContent = $("ttff").textContent = "…";
  setStatus(`take ${ev.take_id}: generating ${ev.frames} frames`);
}

function onStats(ev) {
  if (ev.take_id !== state.takeId) return;
  showStats(ev);
}

function showStats(s) {
  if (typeof s.gen_fps === "number") $("gen-fps").textContent = s.gen_fps.toFixed(1);
  if (typeof s.rtf === "number") {
    $("rtf").textContent = `${s.rtf.toFixed(2)}×`;
    $("rtf").className = s.rtf >= 1 ? "good" : "bad";  // below 1× the player will underrun
  }
  if (typeof s.ttff_ms === "number") $("ttff").textContent = `${Math.round(s.ttff_ms)} ms`;
}

function onTakeDone(ev) {
  if (ev.take_id === state.takeId) {
    state.generating = false;
    showStats(ev.stats || {});
    setStatus(`take ${ev.take_id} done: ${ev.frames} frames, draft ${ev.draft_id}`);
  }
  state.latestDraftId = ev.draft_id;
  selectDraft(ev.draft_id);  // the newest take is what the filmmaker judges next
  requestDrafts();
}

function onTakeCancelled(ev) {
  if (ev.take_id === state.takeId) state.generating = false;
  if (ev.reason === "cancel") setStatus(`take ${ev.take_id} stopped`);
}

function onError(ev) {
  // Stop pressed after the take already ended: nothing to stop is not a failure worth red text.
  if (ev.code === "no_take" && ev.request === "cancel") { setStatus("nothing to stop"); return; }
  const where = ev.field ? ` (${ev.field})` : "";
  setStatus(`${ev.code}: ${ev.message}${where}`, true);
  sceneError(ev);
  // An error naming a take is that take failing while it generated; any other error (a refused
  // recipe, a bad draft id) leaves the current take alone.
  if (ev.take_id !== undefined && ev.take_id === state.takeId) state.generating = false;
}

function setStatus(text, isError = false) {
  const el = $("status");
  el.textContent = text;
  el.className = isError ? "error" : "";
}

// ------------------------------------------------------------------ recipe and controls

function fillPresets(names) {
  const select = $("camera");
  const current = select.value || "static";
  select.replaceChildren();
  const moves = document.createElement("optgroup");
  moves.label = "Moves";
  const fast = document.createElement("optgroup");
  fast.label = "Fast variants";
  for (const name of names) {
    const opt = document.createElement("option");
    opt.value = name;
    opt.textContent = name.replaceAll("_", " ");
    (ALIAS_PREFIXES.some((p) => name.startsWith(p)) ? fast : moves).append(opt);
  }
  select.append(moves);
  if (fast.children.length) select.append(fast);
  select.value = names.includes(current) ? current : names[0];
}

function cameraSpec() {
  const spec = {preset: $("camera").value || "static", speed: Number($("speed").value)};
  const shake = Number($("shake").value);
  if (shake > 0) spec.shake = {amplitude: shake, seed: readSeed()};
  return spec;
}

function readSeed() {
  const text = $("seed").value.trim();
  if (!/^-?\d+$/.test(text)) return 0;
  const seed = BigInt(text);  // exact; a seed outside 0..MAX_SEED goes as typed, and the server says so
  return seed <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(seed) : seed;
}

// The full recipe as the controls show it. Seconds are not clamped here: the server is the
// authority on limits, and its error names the problem better than a silently changed value.
function currentRecipe() {
  const recipe = {
    prompt: $("prompt").value.trim(),
    seed: readSeed(),
    seconds: Number($("seconds").value),
    camera: cameraSpec(),
  };
  // No scene while it follows the prompt: the server then derives it (and says which in take_started).
  if (scene.caps && !sceneFollows()) recipe.scene = clone(scene.model);
  return recipe;
}

function generate() {
  if (!$("seed-lock").checked) {
    // Unlocked seed: every Generate is a fresh variation, and the seed is shown so it can be kept.
    $("seed").value = String(Math.floor(Math.random() * 2 ** 31));
  }
  const recipe = currentRecipe();
  if (!recipe.prompt) {
    setStatus("type a prompt first", true);
    $("prompt").focus();
    return;
  }
  clearTimeout(scene.timer);  // a pending scene edit goes with this generate
  scene.timer = null;
  state.sent = recipe;
  send("generate", {recipe});
}

// A take is "live" while it generates or plays: edits then restart it with only what changed.
function takeLive() {
  return state.takeId !== null && (state.generating || player.playing);
}

function sendUpdate(keys) {
  if (!takeLive()) return false;
  const recipe = currentRecipe();
  const changed = {};
  // An edited scene goes with any update the server has not seen it in, so a prompt change keeps it.
  for (const key of [...keys, "scene"]) {
    if (toJSON(recipe[key]) !== toJSON(state.sent[key])) changed[key] = recipe[key];
  }
  if (changed.prompt === "") delete changed.prompt;  // an empty prompt is a mid-edit state, not a request
  if (Object.keys(changed).length === 0) return true;
  Object.assign(state.sent, changed);
  send("update", {recipe: changed});
  return true;
}

let promptTimer = null;

function bindControls() {
  $("shot").addEventListener("submit", (e) => { e.preventDefault(); generate(); });
  $("cancel").addEventListener("click", () => send("cancel"));

  $("prompt").addEventListener("keydown", (e) => {
    if (e.key !== "Enter" || e.shiftKey || e.isComposing) return;
    e.preventDefault();
    clearTimeout(promptTimer);
    if (!sendUpdate(["prompt"])) generate();
  });
  $("prompt").addEventListener("input", () => {
    clearTimeout(promptTimer);
    promptTimer = setTimeout(() => sendUpdate(["prompt"]), PROMPT_PAUSE_MS);
  });

  // change (not input) for the slider: one update when the filmmaker lets go, not one per pixel.
  $("speed").addEventListener("input", showSpeed);
  for (const id of ["camera", "speed", "shake"]) {
    $(id).addEventListener("change", () => sendUpdate(["camera"]));
  }
  $("seed").addEventListener("change", () => sendUpdate(["seed", "camera"]));  // shake is seeded too
  $("seconds").addEventListener("change", () => sendUpdate(["seconds"]));

  $("approve").addEventListener("click", () => actOnSelected("approve"));
  $("reject").addEventListener("click", () => actOnSelected("reject"));
  $("promote").addEventListener("click", () =>
    actOnSelected("promote", {options: {format: $("promote-format").value}}));

  // Re-enabling loop on a finished take resumes playback from its first frame.
  $("loop").addEventListener("change", () => {
    if ($("loop").checked && player.lastReceived && !player.playing && player.played.length) {
      player.playing = true;
      player.nextDue = performance.now();
    }
  });

  bindScene();

  $("token-send").addEventListener("click", () =>
    send("hello", {version: 1, token: $("token").value}));
  showSpeed();
}

function showSpeed() {
  $("speed-value").textContent = `${Number($("speed").value)}×`;
}

// ------------------------------------------------------------------ scene blockout

// The scene is the take's grey-box blockout (docs/protocol.md, previz/scene.py): a time of day, a
// ground and up to 16 primitive objects, in metres, +Y up. The camera starts at (0, 1.6, 0) looking
// down -Z, so a shot's objects stand at negative z. The panel shows the scene the server actually
// used (take_started.recipe.scene): the one it derived from the prompt, or the one edited here.
//
// Two modes, chosen by the "scene follows prompt" box:
// - follows (the default): the page sends no scene, so the server derives one from each prompt;
// - edited: any edit here unticks the box, and from then on the page sends its whole scene with
//   every take, so a prompt change keeps the edited layout. The server keeps a scene once sent
//   (update merges recipe fields, and a null scene is refused), so ticking the box again goes back
//   to a derived scene with a fresh generate that carries no scene.

const SCENE_SEND_MS = 150;      // while dragging: at most one update per 150 ms, each restarts the take
const NUDGE_M = 0.25;           // arrow keys move the selected object this far (Shift: 1 m)
const SNAP_M = 0.05;            // positions are kept to 5 cm: finer means nothing in a blockout
// The default camera's horizontal field of view: a 35 mm lens on a 36 mm wide sensor (docs/camera.md).
const HALF_FOV = Math.atan(18 / 35);
// Each shape's size when added here, as the prompt parser sizes a bare noun (previz/scene.py
// DEFAULT_SIZES); ready does not carry them, and any other shape starts as a 1 m cube.
const DEFAULT_SIZES = {
  box: [1, 1, 1], sphere: [1, 1, 1], cylinder: [0.8, 1.2, 0.8], pillar: [0.5, 3, 0.5],
  cone: [0.8, 1.2, 0.8], wall: [4, 2, 0.3],
};
const ROUND_SHAPES = new Set(["sphere", "cylinder", "cone"]);  // footprint an ellipse, not a rectangle
// Map background per ground, dimmed so the objects' own colours stand out.
const GROUND_TINT = {
  grass: "#26351f", sand: "#4a4130", asphalt: "#222326", snow: "#5a5f66", dirt: "#3a2c20", concrete: "#3a3a38",
};

const scene = {
  caps: null,            // ready.capabilities.scene: shapes, colors, grounds, times_of_day, max_objects, control
  model: {time_of_day: "day", ground: "grass", objects: []},
  selected: -1,          // index into model.objects, -1 for none
  drag: null,            // {index, dx, dz, moved, pointerId} while an object is held
  timer: null,           // a pending (throttled) scene update
  view: {cx: 220, cy: 280, scale: 16},  // canvas pixel of world (0, 0) and pixels per metre
  invalidField: null,    // the scene field the server last refused, shown on its input
};

const clone = (value) => JSON.parse(JSON.stringify(value));
const sceneFollows = () => $("scene-follow").checked;

function sceneInit(caps) {
  scene.caps = caps || null;
  $("scene-panel").hidden = !caps;
  if (!caps) return;  // a server without scenes: the panel stays away
  const firstTime = $("add-color").options.length === 0;
  fillSelect($("scene-time"), caps.times_of_day);
  fillSelect($("scene-ground"), caps.grounds);
  fillSelect($("add-shape"), caps.shapes);
  fillSelect($("add-color"), Object.keys(caps.colors));
  fillSelect($("obj-color"), Object.keys(caps.colors));
  // New objects are a blockout's grey unless the filmmaker picks otherwise (kept across reconnects).
  if (firstTime && "grey" in caps.colors) $("add-color").value = "grey";
  $("control-wrap").hidden = true;  // until a take brings a control preview
  renderScene();
}

function fillSelect(select, names) {
  const current = select.value;
  select.replaceChildren();
  for (const name of names || []) {
    const opt = document.createElement("option");
    opt.value = opt.textContent = name;
    select.append(opt);
  }
  if (names && names.includes(current)) select.value = current;
}

function colorHex(color) {
  if (typeof color === "string" && /^#[0-9a-f]{6}$/i.test(color)) return color.toLowerCase();
  return (scene.caps && scene.caps.colors[color]) || "#808080";
}

const finite = (...xs) => xs.every((x) => typeof x === "number" && Number.isFinite(x));

// ---- the server's scene

// take_started carries the scene the take uses. Show it, unless that would fight the user: while
// they drag or an edit waits to be sent their own scene is newer, and a take started by an older
// request than the last one we sent is about to be superseded (its `re` says which request it answers).
function sceneFromTake(ev) {
  if (!scene.caps) return;
  if (ev.control_preview !== undefined) showControlPreview(ev.control_preview, ev.take_id);
  const used = ev.recipe && ev.recipe.scene;
  if (!used || scene.drag || scene.timer) return;
  if (typeof ev.re === "number" && ev.re < state.lastTakeRequest) return;
  // A scene derived from a new prompt is a new set of objects: a selection in the old one means nothing.
  if (sceneFollows() && toJSON(used.objects) !== toJSON(scene.model.objects)) scene.selected = -1;
  scene.model = clone(used);
  if (state.sent.scene !== undefined) state.sent.scene = clone(used);  // the server's spelling of our scene
  if (scene.selected >= scene.model.objects.length) scene.selected = -1;
  markInvalid(null);  // the server accepted a scene: any earlier refusal is history
  renderScene();
}

// An invalid_scene error names the field (scene.objects[2].size[0]): select that object and mark
// the input, so the filmmaker sees what to fix. The take that was playing keeps playing.
function sceneError(ev) {
  if (ev.code !== "invalid_scene" || typeof ev.field !== "string") return;
  const m = /^scene\.objects\[(\d+)\]\.(\w+)(?:\[(\d)\])?/.exec(ev.field);
  if (m && Number(m[1]) < scene.model.objects.length) scene.selected = Number(m[1]);
  markInvalid(ev.field);
  renderScene();
}

function markInvalid(field) {
  scene.invalidField = field;
  for (const el of document.querySelectorAll("#scene-panel [aria-invalid]")) el.removeAttribute("aria-invalid");
  if (!field) return;
  const m = /^scene\.objects\[\d+\]\.(\w+)(?:\[(\d)\])?/.exec(field);
  let el = null;
  if (m && m[1] === "color") el = $("obj-color");
  else if (m) el = document.querySelector(`#object-editor input[data-key="${m[1]}"]${m[2] ? `[data-axis="${m[2]}"]` : ""}`);
  else if (field === "scene.ground") el = $("scene-ground");
  else if (field === "scene.time_of_day") el = $("scene-time");
  if (el) el.setAttribute("aria-invalid", "true");
}

// ---- editing and sending

// Every edit goes through here: the panel redraws at once, and the server hears the whole scene
// (now, or within SCENE_SEND_MS while a drag goes on, so a drag restarts the take every few frames
// rather than on every pointer event).
function sceneEdited({throttle = false} = {}) {
  $("scene-follow").checked = false;  // an edited scene no longer follows the prompt
  renderScene();
  if (!throttle) { flushScene(); return; }
  if (!scene.timer) scene.timer = setTimeout(flushScene, SCENE_SEND_MS);
}

function flushScene() {
  clearTimeout(scene.timer);
  scene.timer = null;
  if (state.takeId === null) {
    // No take on this connection yet (update needs one): Generate sends this scene.
    setStatus("scene edited: Generate renders it");
    return;
  }
  if (toJSON(scene.model) === toJSON(state.sent.scene)) return;
  const edited = clone(scene.model);
  state.sent.scene = edited;
  send("update", {recipe: {scene: edited}});
}

// Ticking "scene follows prompt" again: the server holds the edited scene until a generate without
// one replaces it, so send the shot as it stands (same seed) minus the scene; its take_started
// brings the derived scene back into the panel.
function onFollowChange() {
  if (!sceneFollows()) {
    // Unticked by hand: the scene as shown is kept through prompt changes. It is the scene the take
    // already uses, so nothing restarts now; the next update or generate carries it.
    renderScene();
    return;
  }
  clearTimeout(scene.timer);
  scene.timer = null;
  if (state.takeId === null) {
    scene.model = {time_of_day: "day", ground: "grass", objects: []};
    scene.selected = -1;
    renderScene();
    setStatus("the scene will be derived from the prompt");
    return;
  }
  const recipe = currentRecipe();  // no scene now that it follows the prompt
  if (!recipe.prompt) { setStatus("type a prompt first", true); return; }
  state.sent = recipe;
  send("generate", {recipe});
}

function addObject() {
  const objects = scene.model.objects;
  if (objects.length >= scene.caps.max_objects) return;
  const shape = $("add-shape").value;
  const size = (DEFAULT_SIZES[shape] || [1, 1, 1]).slice();
  // Six metres ahead, like the prompt parser's row, on the first spot along x that is free.
  let x = 0;
  for (const candidate of [0, 1.5, -1.5, 3, -3, 4.5, -4.5, 6, -6]) {
    x = candidate;
    if (objects.every((o) => Math.hypot(o.position[0] - x, o.position[2] + 6) > 1.2)) break;
  }
  objects.push({shape, color: $("add-color").value, position: [x, 0, -6], size, yaw: 0});
  scene.selected = objects.length - 1;
  sceneEdited();
}

function deleteSelected() {
  if (scene.selected < 0) return;
  scene.model.objects.splice(scene.selected, 1);
  scene.selected = Math.min(scene.selected, scene.model.objects.length - 1);
  sceneEdited();
  $("scene-map").focus();
}

function selectObject(index) {
  scene.selected = index;
  renderScene();
}

// A numeric field of the selected object. Not clamped: the server checks the limits and its
// invalid_scene error names the field better than a value silently changed here would.
function onObjectInput(el) {
  const obj = scene.model.objects[scene.selected];
  if (!obj) return;
  const value = el.value.trim() === "" ? NaN : Number(el.value);
  if (el.dataset.key === "yaw") obj.yaw = value;
  else obj[el.dataset.key][Number(el.dataset.axis)] = value;
  sceneEdited();
}

// ---- the top-down map

// World (x, z) to canvas pixels: x to the right, -z (away from the camera) up the canvas.
const toCanvas = (x, z) => [scene.view.cx + x * scene.view.scale, scene.view.cy + z * scene.view.scale];
const toWorld = (px, py) => [(px - scene.view.cx) / scene.view.scale, (py - scene.view.cy) / scene.view.scale];

// Frame the camera and every object. Not while dragging: the map must not rescale under the pointer.
function fitView(canvas) {
  let [x0, x1, z0, z1] = [-6, 6, -10, 1];  // a default shot: 12 m across, 10 m deep, the camera near the bottom
  for (const o of scene.model.objects) {
    if (!finite(...o.position, ...o.size)) continue;
    const r = Math.min(Math.hypot(o.size[0], o.size[2]) / 2, 60);
    x0 = Math.min(x0, o.position[0] - r); x1 = Math.max(x1, o.position[0] + r);
    z0 = Math.min(z0, o.position[2] - r); z1 = Math.max(z1, o.position[2] + r);
  }
  [x0, x1, z0, z1] = [Math.max(x0, -200), Math.min(x1, 200), Math.max(z0, -200), Math.min(z1, 200)];
  const pad = 14;
  const scale = Math.min((canvas.width - 2 * pad) / (x1 - x0), (canvas.height - 2 * pad) / (z1 - z0));
  scene.view = {
    scale,
    cx: canvas.width / 2 - ((x0 + x1) / 2) * scale,
    cy: canvas.height / 2 - ((z0 + z1) / 2) * scale,
  };
  // For tests and tools: where world (0, 0) is and how many pixels make a metre, in canvas pixels.
  canvas.dataset.view = `${scene.view.cx} ${scene.view.cy} ${scene.view.scale}`;
}

// The footprint seen from above. Yaw turns counter-clockwise seen from above, as the renderer does:
// the object's local x axis points along world (cos, -sin) in (x, z), which is up-right on the map.
function footprintPath(ctx, o) {
  const [px, py] = toCanvas(o.position[0], o.position[2]);
  const k = scene.view.scale;
  const yaw = (o.yaw || 0) * Math.PI / 180;
  const c = Math.cos(yaw), s = Math.sin(yaw);
  const hw = Math.max(o.size[0] * k / 2, 2), hd = Math.max(o.size[2] * k / 2, 2);
  ctx.beginPath();
  if (ROUND_SHAPES.has(o.shape)) {
    ctx.ellipse(px, py, hw, hd, -yaw, 0, 2 * Math.PI);
  } else {
    for (const [lx, lz] of [[-hw, -hd], [hw, -hd], [hw, hd], [-hw, hd]]) {
      ctx.lineTo(px + c * lx + s * lz, py - s * lx + c * lz);
    }
    ctx.closePath();
  }
}

function drawMap() {
  const canvas = $("scene-map");
  const ctx = canvas.getContext("2d");
  if (!scene.drag) fitView(canvas);
  const {scale} = scene.view;
  ctx.fillStyle = GROUND_TINT[scene.model.ground] || "#1b1d20";
  ctx.fillRect(0, 0, canvas.width, canvas.height);

  // A 1 m grid (5 m when zoomed far out), the x = 0 axis a little brighter.
  const step = scale >= 6 ? 1 : 5;
  const [wx0, wz0] = toWorld(0, 0), [wx1, wz1] = toWorld(canvas.width, canvas.height);
  ctx.lineWidth = 1;
  for (let x = Math.ceil(wx0 / step) * step; x <= wx1; x += step) {
    const [px] = toCanvas(x, 0);
    ctx.strokeStyle = x === 0 ? "rgba(255,255,255,0.22)" : "rgba(255,255,255,0.07)";
    ctx.beginPath(); ctx.moveTo(Math.round(px) + 0.5, 0); ctx.lineTo(Math.round(px) + 0.5, canvas.height); ctx.stroke();
  }
  for (let z = Math.ceil(wz0 / step) * step; z <= wz1; z += step) {
    const [, py] = toCanvas(0, z);
    ctx.strokeStyle = z === 0 ? "rgba(255,255,255,0.22)" : "rgba(255,255,255,0.07)";
    ctx.beginPath(); ctx.moveTo(0, Math.round(py) + 0.5); ctx.lineTo(canvas.width, Math.round(py) + 0.5); ctx.stroke();
  }

  // The camera at its start, (0, 0), and the rough field of view it looks down (-z).
  const [camX, camY] = toCanvas(0, 0);
  const reach = Math.hypot(canvas.width, canvas.height);
  ctx.fillStyle = "rgba(232,176,74,0.10)";
  ctx.strokeStyle = "rgba(232,176,74,0.55)";
  ctx.beginPath();
  ctx.moveTo(camX, camY);
  ctx.lineTo(camX - Math.sin(HALF_FOV) * reach, camY - Math.cos(HALF_FOV) * reach);
  ctx.lineTo(camX + Math.sin(HALF_FOV) * reach, camY - Math.cos(HALF_FOV) * reach);
  ctx.closePath();
  ctx.fill();
  ctx.stroke();
  ctx.fillStyle = "#e8b04a";
  ctx.fillRect(camX - 6, camY - 3, 12, 8);  // a camera body, lens towards -z
  ctx.fillRect(camX - 3, camY - 7, 6, 4);

  // Objects on the ground first, stacked ones (y > 0) over them, dashed so they read as "on top".
  const order = scene.model.objects.map((o, i) => i).filter((i) => {
    const o = scene.model.objects[i];
    return finite(...o.position, ...o.size) && finite(o.yaw || 0);
  });
  order.sort((a, b) => scene.model.objects[a].position[1] - scene.model.objects[b].position[1]);
  ctx.font = "bold 11px system-ui, sans-serif";
  ctx.textAlign = "center";
  ctx.textBaseline = "middle";
  for (const i of order) {
    const o = scene.model.objects[i];
    footprintPath(ctx, o);
    ctx.fillStyle = colorHex(o.color);
    ctx.fill();
    ctx.setLineDash(o.position[1] > 0 ? [4, 3] : []);
    ctx.lineWidth = i === scene.selected ? 3 : 1;
    ctx.strokeStyle = i === scene.selected ? "#e8b04a" : "rgba(0,0,0,0.7)";
    ctx.stroke();
    ctx.setLineDash([]);
    const [px, py] = toCanvas(o.position[0], o.position[2]);
    ctx.lineWidth = 3;
    ctx.strokeStyle = "rgba(0,0,0,0.8)";
    ctx.strokeText(String(i + 1), px, py);
    ctx.fillStyle = "#fff";
    ctx.fillText(String(i + 1), px, py);
  }

  ctx.textAlign = "left";
  ctx.textBaseline = "top";
  ctx.font = "11px system-ui, sans-serif";
  ctx.fillStyle = "rgba(255,255,255,0.75)";
  ctx.fillText(`${scene.model.time_of_day} · ${scene.model.ground}`, 6, 5);
}

// The topmost object under a canvas point, or -1. Tiny objects get a few pixels of slack.
function hitTest(px, py) {
  const [wx, wz] = toWorld(px, py);
  const slack = 6 / scene.view.scale;
  const objects = scene.model.objects;
  // Topmost first: the highest base, then the one drawn last.
  const order = objects.map((o, i) => i).sort((a, b) => objects[b].position[1] - objects[a].position[1] || b - a);
  for (const i of order) {
    const o = objects[i];
    if (!finite(...o.position, ...o.size)) continue;
    const yaw = (o.yaw || 0) * Math.PI / 180;
    const rx = wx - o.position[0], rz = wz - o.position[2];
    const lx = Math.cos(yaw) * rx - Math.sin(yaw) * rz;  // into the object's frame, as the renderer does
    const lz = Math.sin(yaw) * rx + Math.cos(yaw) * rz;
    const hw = o.size[0] / 2 + slack, hd = o.size[2] / 2 + slack;
    const inside = ROUND_SHAPES.has(o.shape)
      ? (lx / hw) ** 2 + (lz / hd) ** 2 <= 1
      : Math.abs(lx) <= hw && Math.abs(lz) <= hd;
    if (inside) return i;
  }
  return -1;
}

function canvasPoint(canvas, ev) {
  const rect = canvas.getBoundingClientRect();  // the canvas is scaled by CSS; work in its own pixels
  return [(ev.clientX - rect.left) * canvas.width / rect.width, (ev.clientY - rect.top) * canvas.height / rect.height];
}

const snap = (v) => Math.round(v / SNAP_M) * SNAP_M;
const round2 = (v) => Math.round(v * 100) / 100;

function bindMap() {
  const canvas = $("scene-map");
  canvas.addEventListener("pointerdown", (ev) => {
    const [px, py] = canvasPoint(canvas, ev);
    const hit = hitTest(px, py);
    selectObject(hit);
    if (hit < 0) return;
    const o = scene.model.objects[hit];
    const [wx, wz] = toWorld(px, py);
    scene.drag = {index: hit, dx: o.position[0] - wx, dz: o.position[2] - wz, moved: false, pointerId: ev.pointerId};
    canvas.setPointerCapture(ev.pointerId);
    canvas.classList.add("dragging");
    ev.preventDefault();
    canvas.focus();
  });
  canvas.addEventListener("pointermove", (ev) => {
    const drag = scene.drag;
    if (!drag || ev.pointerId !== drag.pointerId) return;
    const [wx, wz] = toWorld(...canvasPoint(canvas, ev));
    const o = scene.model.objects[drag.index];
    const x = round2(snap(wx + drag.dx)), z = round2(snap(wz + drag.dz));
    if (x === o.position[0] && z === o.position[2]) return;
    o.position[0] = x;
    o.position[2] = z;
    drag.moved = true;
    sceneEdited({throttle: true});
  });
  const release = (ev) => {
    const drag = scene.drag;
    if (!drag || ev.pointerId !== drag.pointerId) return;
    scene.drag = null;
    canvas.classList.remove("dragging");
    if (drag.moved) flushScene();  // the final position goes now, not after the throttle
    renderScene();                  // the view may refit now that nothing is held
  };
  canvas.addEventListener("pointerup", release);
  canvas.addEventListener("pointercancel", release);

  canvas.addEventListener("keydown", (ev) => {
    const o = scene.model.objects[scene.selected];
    if (!o) return;
    const step = ev.shiftKey ? 1 : NUDGE_M;
    const moves = {ArrowLeft: [-step, 0], ArrowRight: [step, 0], ArrowUp: [0, -step], ArrowDown: [0, step]};
    if (moves[ev.key]) {
      o.position[0] = round2(o.position[0] + moves[ev.key][0]);
      o.position[2] = round2(o.position[2] + moves[ev.key][1]);
      sceneEdited({throttle: true});  // held arrow keys repeat like a drag
    } else if (ev.key === "Delete" || ev.key === "Backspace") {
      deleteSelected();
    } else {
      return;
    }
    ev.preventDefault();
  });
}

// ---- the panel around the map

function renderScene() {
  if (!scene.caps) return;
  const model = scene.model;
  $("scene-time").value = model.time_of_day;
  $("scene-ground").value = model.ground;
  const n = model.objects.length;
  $("scene-summary").textContent = `${n} object${n === 1 ? "" : "s"} · `
    + (sceneFollows() ? "derived from the prompt" : "edited here");
  $("add-object").disabled = n >= scene.caps.max_objects;
  $("add-object").title = n >= scene.caps.max_objects ? `at most ${scene.caps.max_objects} objects` : "";
  drawMap();
  renderObjectList();
  renderEditor();
}

function renderObjectList() {
  const list = $("scene-objects");
  // Rebuild only when the objects changed: a button replaced between press and release loses the
  // click, and take_started (or a redraw) can come at any moment.
  const key = toJSON(scene.model.objects);
  if (list.dataset.key === key) {
    for (const button of list.querySelectorAll("button")) {
      button.setAttribute("aria-pressed", String(Number(button.dataset.index) === scene.selected));
    }
    return;
  }
  list.dataset.key = key;
  list.replaceChildren();
  scene.model.objects.forEach((o, i) => {
    const li = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    button.dataset.index = String(i);
    button.setAttribute("aria-pressed", String(i === scene.selected));
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    swatch.style.background = colorHex(o.color);  // CSSOM, which the CSP allows
    const text = document.createElement("span");
    const [x, y, z] = o.position.map((v) => (finite(v) ? round2(v) : "?"));
    text.textContent = `${i + 1} · ${o.color} ${o.shape} · x ${x} z ${z}${y ? ` (y ${y})` : ""}`;
    button.append(swatch, text);
    button.addEventListener("click", () => selectObject(i));
    li.append(button);
    list.append(li);
  });
}

function renderEditor() {
  const o = scene.model.objects[scene.selected];
  $("object-editor").disabled = !o;
  $("object-title").textContent = o ? `object ${scene.selected + 1}: ${o.shape}` : "no object selected";
  if (!o) return;
  // Leave the field being typed in alone: a take_started or a redraw must not overwrite it.
  const put = (el, value) => { if (el !== document.activeElement) el.value = value; };
  const show = (v) => (finite(v) ? String(round2(v)) : "");
  for (const el of document.querySelectorAll("#object-editor input[type=number]")) {
    put(el, show(el.dataset.key === "yaw" ? (o.yaw || 0) : o[el.dataset.key][Number(el.dataset.axis)]));
  }
  const select = $("obj-color");
  for (const opt of select.querySelectorAll("option.custom")) opt.remove();
  if (!(o.color in scene.caps.colors)) {  // a #rrggbb colour outside the palette gets its own entry
    const opt = document.createElement("option");
    opt.className = "custom";
    opt.value = opt.textContent = o.color;
    select.append(opt);
  }
  put(select, o.color);
  put($("obj-color-custom"), colorHex(o.color));
  markInvalid(scene.invalidField);
}

function bindScene() {
  bindMap();
  $("scene-follow").addEventListener("change", onFollowChange);
  $("scene-time").addEventListener("change", () => { scene.model.time_of_day = $("scene-time").value; sceneEdited(); });
  $("scene-ground").addEventListener("change", () => { scene.model.ground = $("scene-ground").value; sceneEdited(); });
  $("add-object").addEventListener("click", addObject);
  $("obj-delete").addEventListener("click", deleteSelected);
  $("obj-color").addEventListener("change", () => {
    const o = scene.model.objects[scene.selected];
    if (o) { o.color = $("obj-color").value; sceneEdited(); }
  });
  $("obj-color-custom").addEventListener("change", () => {
    const o = scene.model.objects[scene.selected];
    if (o) { o.color = $("obj-color-custom").value; sceneEdited(); }
  });
  for (const el of document.querySelectorAll("#object-editor input[type=number]")) {
    el.addEventListener("change", () => onObjectInput(el));
  }
}

// ---- the control preview

// take_started.control_preview: the first frame of the blockout control the model follows, as raw
// RGB bytes (the CSP allows no data: images), drawn with putImageData. Null for packs without control.
function showControlPreview(preview, takeId) {
  $("control-wrap").hidden = !preview;
  if (!preview) return;
  drawRGB($("control-albedo"), preview.width, preview.height, preview.albedo);
  drawRGB($("control-depth"), preview.width, preview.height, preview.depth);
  $("control-albedo").dataset.takeId = $("control-depth").dataset.takeId = String(takeId);
}

function drawRGB(canvas, width, height, base64) {
  const raw = atob(base64 || "");
  if (raw.length !== width * height * 3) return;  // malformed: keep the last good picture
  canvas.width = width;
  canvas.height = height;
  const image = new ImageData(width, height);
  for (let i = 0, j = 0; i < raw.length; i += 3, j += 4) {
    image.data[j] = raw.charCodeAt(i);
    image.data[j + 1] = raw.charCodeAt(i + 1);
    image.data[j + 2] = raw.charCodeAt(i + 2);
    image.data[j + 3] = 255;
  }
  canvas.getContext("2d").putImageData(image, 0, 0);
}

// ------------------------------------------------------------------ drafts

function requestDrafts() {
  send("list_drafts", {limit: DRAFT_LIST_LIMIT});
}

function onDrafts(ev) {
  const strip = $("drafts");
  state.drafts = new Map();
  strip.replaceChildren();
  for (const draft of ev.drafts || []) {
    state.drafts.set(draft.id, draft);
    strip.append(draftItem(draft));
  }
  if (!state.selectedId && ev.drafts && ev.drafts.length) state.selectedId = ev.drafts[0].id;
  renderSelection();
}

function draftPrompt(d) {
  return d.prompt || (d.recipe && d.recipe.prompt) || "";
}

function draftItem(d) {
  const item = document.createElement("button");
  item.type = "button";
  item.className = "draft";
  item.dataset.id = d.id;
  item.dataset.state = d.state || "";
  item.setAttribute("role", "option");
  const img = document.createElement("img");
  img.src = d.thumbnail || `/drafts/${encodeURIComponent(d.id)}/thumb.jpg`;
  img.alt = "";
  img.loading = "lazy";
  const badge = document.createElement("span");
  badge.className = "draft-state";
  badge.textContent = d.state || "?";
  const caption = document.createElement("span");
  caption.className = "draft-prompt";
  const prompt = draftPrompt(d);
  caption.textContent = prompt.length > 40 ? `${prompt.slice(0, 39)}…` : prompt;
  item.title = `${d.id}\n${prompt}`;
  item.append(img, badge, caption);
  item.addEventListener("click", () => selectDraft(d.id));
  return item;
}

// A draft event (approve/reject/promote/get) updates the strip item in place.
function upsertDraft(d) {
  if (!d || !d.id) return;
  state.drafts.set(d.id, {...(state.drafts.get(d.id) || {}), ...d});
  const old = $("drafts").querySelector(`.draft[data-id="${CSS.escape(d.id)}"]`);
  const fresh = draftItem(state.drafts.get(d.id));
  if (old) old.replaceWith(fresh);
  else $("drafts").prepend(fresh);
  renderSelection();
}

function selectDraft(id) {
  state.selectedId = id;
  renderSelection();
}

function renderSelection() {
  for (const el of $("drafts").querySelectorAll(".draft")) {
    const on = el.dataset.id === state.selectedId;
    el.classList.toggle("selected", on);
    el.setAttribute("aria-selected", String(on));
  }
  const d = state.selectedId ? state.drafts.get(state.selectedId) : null;
  const id = state.selectedId;
  $("selected").textContent = id
    ? `${id} — ${d ? d.state : "…"}${d && draftPrompt(d) ? ` — “${draftPrompt(d)}”` : ""}`
    : "none yet";
  $("selected").className = id ? `selected state-${d ? d.state : ""}` : "selected muted";
  for (const b of ["approve", "reject", "promote"]) $(b).disabled = !id;
}

function actOnSelected(type, extra = {}) {
  const id = state.selectedId || state.latestDraftId;
  if (!id) { setStatus("no draft selected", true); return; }
  send(type, {draft_id: id, ...extra});
}

function onJobQueued(ev) {
  // Say exactly what the server says: it renders the job in the background, or it stays queued.
  const job = ev.job || {};
  addJobLine(job, ev.message || "");
  setStatus(`promotion of ${job.draft_id} queued`);
}

function onJobProgress(ev) {
  // A final render's stage, unit i of n and ETA, as the server's job worker reports them.
  const p = ev.progress || {};
  const eta = p.eta_s === null || p.eta_s === undefined ? "" : ` · about ${Math.ceil(p.eta_s)} s left`;
  const bar = p.units ? ` ${"#".repeat(Math.round(10 * p.unit / p.units)).padEnd(10, ".")}` : "";
  addJobLine(ev.job || {}, `${p.stage || "?"} ${p.unit}/${p.units}${bar}${eta}`);
}

function addJobLine(job, message) {
  const list = $("jobs");
  let li = job.id ? list.querySelector(`li[data-job="${CSS.escape(job.id)}"]`) : null;
  if (!li) {
    li = document.createElement("li");
    if (job.id) li.dataset.job = job.id;
    list.prepend(li);
  }
  li.replaceChildren();
  const head = document.createElement("span");
  head.className = "job-head";
  const fmt = job.options && job.options.format ? ` · ${job.options.format}` : "";
  head.textContent = `${job.id || "job"} · draft ${job.draft_id || "?"} · ${job.state || "?"}${fmt}`;
  li.append(head);
  if (message) {
    const msg = document.createElement("p");
    msg.className = "job-message";
    msg.textContent = message;
    li.append(msg);
  }
}

function showJobs(draft) {
  // Jobs listed with a draft (get_draft, promote) keep their lines current without losing messages.
  for (const job of (draft && draft.jobs) || []) {
    const existing = job.id && $("jobs").querySelector(`li[data-job="${CSS.escape(job.id)}"] .job-message`);
    addJobLine(job, existing ? existing.textContent : "");
  }
}

// ------------------------------------------------------------------ start

// The server has no favicon route and its CSP allows images only from 'self' and blob:, so the
// icon (an amber "record" dot) is a blob made before the browser goes looking for /favicon.ico.
function setFavicon() {
  const svg = '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 32 32">'
    + '<circle cx="16" cy="16" r="11" fill="#e8b04a"/></svg>';
  const link = document.createElement("link");
  link.rel = "icon";
  link.href = URL.createObjectURL(new Blob([svg], {type: "image/svg+xml"}));
  document.head.append(link);
}

function main() {
  playerInit();
  fillPresets(BUILTIN_PRESETS);
  bindControls();
  renderSelection();
  connect();
}

setFavicon();  // now, while the document is still parsing
document.addEventListener("DOMContentLoaded", main);
