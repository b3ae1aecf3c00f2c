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
  state.ws.send(JSON.stringify({type, id, ...fields}));
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
  setStatus("ready");
  requestDrafts();
}

function onTakeStarted(ev) {
  if (state.takeId !== ev.take_id) startTake(ev.take_id);
  state.generating = true;
  const r = ev.recipe || {};
  if (r.seed !== undefined) $("seed").value = String(r.seed);  // the resolved seed, for reproducing it
  $("take-info").textContent = `#${ev.take_id} · ${ev.frames} frames`;
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
  const where = ev.field ? ` (${ev.field})` : "";
  setStatus(`${ev.code}: ${ev.message}${where}`, true);
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
  if (shake > 0) spec.shake = {amplitude: shake, seed: Number($("seed").value) || 0};
  return spec;
}

function readSeed() {
  const seed = Number.parseInt($("seed").value, 10);
  return Number.isFinite(seed) ? seed : 0;
}

// The full recipe as the controls show it. Seconds are not clamped here: the server is the
// authority on limits, and its error names the problem better than a silently changed value.
function currentRecipe() {
  return {
    prompt: $("prompt").value.trim(),
    seed: readSeed(),
    seconds: Number($("seconds").value),
    camera: cameraSpec(),
  };
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
  for (const key of keys) {
    if (JSON.stringify(recipe[key]) !== JSON.stringify(state.sent[key])) changed[key] = recipe[key];
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

  $("token-send").addEventListener("click", () =>
    send("hello", {version: 1, token: $("token").value}));
  showSpeed();
}

function showSpeed() {
  $("speed-value").textContent = `${Number($("speed").value)}×`;
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
