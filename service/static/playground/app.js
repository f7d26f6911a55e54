// fewstep playground: one page over the service's own API (no build step, no dependencies).
"use strict";

const $ = (id) => document.getElementById(id);
const ENDPOINTS = { generate: "/v1/generate", img2img: "/v1/img2img", inpaint: "/v1/inpaint" };
const MODES = Object.fromEntries(Object.entries(ENDPOINTS).map(([mode, path]) => [path.slice(4), mode]));
MODES.txt2img = "generate";
const PROGRESS_FROM_STEPS = 4; // runs of this many steps and more show their steps as they come

// what the page is doing; exposed for the curious (and the browser tests)
const state = {
  models: [], model: null, mode: "generate", image: null,
  live: { inflight: false, pending: false, seq: 0, shown: 0, card: null },
  frames: [], // performance.now() of every image shown while dragging
  lastRequest: null, // {path, body} of the last generation request sent
};
window.fewstep = state;

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

function authHeaders(json) {
  const h = {};
  if (json) h["Content-Type"] = "application/json";
  const key = $("api-key").value.trim();
  if (key) h["Authorization"] = "Bearer " + key;
  return h;
}

function describe(data) {
  if (!data) return "";
  const d = data.detail !== undefined ? data.detail : (data.error && (data.error.message || data.error.detail)) || data.error;
  if (typeof d === "string") return d;
  if (Array.isArray(d)) return d.map((e) => `${(e.loc || []).filter((x) => x !== "body").join(".")}: ${e.msg}`).join("\n");
  return d === undefined ? "" : JSON.stringify(d);
}

async function api(path, body) {
  const init = body === undefined ? { headers: authHeaders(false) } : { method: "POST", headers: authHeaders(true), body: JSON.stringify(body) };
  const r = await fetch(path, init);
  let data = null;
  try { data = await r.json(); } catch (_) { data = null; }
  if (!r.ok) throw new ApiError(r.status, describe(data) || r.statusText);
  return data;
}

function showError(err) {
  const box = $("error");
  box.textContent = (err.status ? `HTTP ${err.status}: ` : "") + (err.message || String(err));
  box.hidden = false;
}
function clearError() { $("error").hidden = true; $("error").textContent = ""; }

// ---- models and the form ------------------------------------------------------------
async function loadModels() {
  clearError();
  try {
    const data = await api("/v1/models");
    state.models = data.data;
  } catch (err) {
    showError(err);
    return;
  }
  const select = $("model");
  const previous = select.value;
  const label = (m) => m.id + ((m.default_for || []).length ? " (default for " + m.default_for.join(" and ") + "s)" : (m.default ? " (default)" : ""));
  select.replaceChildren(...state.models.map((m) => new Option(label(m), m.id)));
  // a visitor types a prompt first: start on the family that prompts go to
  const pick = state.models.find((m) => m.id === previous) || state.models.find((m) => (m.default_for || []).includes("prompt"))
    || state.models.find((m) => m.default) || state.models[0];
  if (pick) { select.value = pick.id; applyModel(); }
}

function applyModel() {
  const m = state.models.find((x) => x.id === $("model").value);
  state.model = m;
  if (!m) return;
  const [lo, hi] = m.guidance_range;
  const g = $("guidance");
  g.min = lo; g.max = hi;
  g.value = Math.min(Math.max(+g.value, lo), hi);
  showGuidance();
  $("class").replaceChildren(...(m.class_names || []).map((name, i) => new Option(`${i}: ${name}`, i)));
  const hasText = m.conditioning.includes("text"), hasClass = m.conditioning.includes("class");
  $("cond-kind").hidden = !(hasText && hasClass);
  if (!hasText) setCond("class");
  if (!hasClass) setCond("prompt");
  for (const tab of document.querySelectorAll(".tabs button")) {
    const mode = tab.dataset.mode;
    tab.disabled = mode !== "generate" && !m.conditioning.includes(mode);
  }
  if (document.querySelector(`.tabs button[data-mode="${state.mode}"]`).disabled) setMode("generate");
  fillSteps();
}

function fillSteps(wanted) {
  const m = state.model;
  const stochastic = $("stochastic").checked;
  const options = stochastic ? m.stochastic_steps : m.steps;
  const select = $("steps");
  const keep = wanted !== undefined ? wanted : +select.value;
  select.replaceChildren(...options.map((s) => new Option(String(s), s)));
  select.value = options.includes(keep) ? keep : (options.includes(4) ? 4 : options[0]);
  $("stochastic").disabled = !m.stochastic_steps.length;
}

function setCond(kind) {
  document.querySelector(`input[name=cond][value=${kind}]`).checked = true;
  $("prompt-box").hidden = kind !== "prompt";
  $("class-box").hidden = kind !== "class";
}
const useClass = () => document.querySelector("input[name=cond]:checked").value === "class";

function setMode(mode) {
  state.mode = mode;
  for (const tab of document.querySelectorAll(".tabs button")) tab.classList.toggle("active", tab.dataset.mode === mode);
  $("image-box").hidden = mode === "generate";
  $("strength-box").hidden = mode !== "img2img";
  $("mask-tools").hidden = mode !== "inpaint";
}

function showGuidance() { $("guidance-value").textContent = (+$("guidance").value).toFixed(2); }

function seed(fresh) {
  if (fresh && $("new-seed").checked) $("seed").value = Math.floor(Math.random() * 2 ** 31);
  return +$("seed").value;
}

function requestBody({ guidance, freshSeed = false } = {}) {
  const m = state.model;
  const body = {
    model: m.id,
    steps: +$("steps").value,
    stochastic: $("stochastic").checked,
    seed: seed(freshSeed),
    n: +$("n").value,
    guidance: guidance !== undefined ? guidance : +$("guidance").value,
  };
  if (useClass()) body.class_label = +$("class").value;
  else body.prompt = $("prompt").value;
  if (state.mode !== "generate") {
    if (!state.image) throw new ApiError(0, "pick or drop an image first");
    if (state.mode === "img2img") {
      body.image = state.image.dataUrl;
      body.strength = +$("strength").value;
    } else {
      body.image = $("source").toDataURL("image/png");
      body.mask = maskPng();
    }
  }
  return body;
}

// ---- drawing --------------------------------------------------------------------------
async function generate(path, body) {
  state.lastRequest = { path, body };
  const started = performance.now();
  const data = await api(path, body);
  return { data, body, path, latency: performance.now() - started };
}

async function runOnce() {
  clearError();
  let body;
  try { body = requestBody({ freshSeed: true }); } catch (err) { showError(err); return; }
  const path = ENDPOINTS[state.mode];
  try {
    const result = body.steps >= PROGRESS_FROM_STEPS ? await generateWithProgress(path, body) : await generate(path, body);
    if (result) addCard(result);
  } catch (err) { showError(err); }
}

async function runSweep() {
  clearError();
  const values = $("sweep-values").value.split(/[\s,]+/).filter(Boolean).map(Number);
  let body;
  try { body = { ...requestBody({ freshSeed: true }), guidance: values, n: 1 }; } catch (err) { showError(err); return; }
  try { addCard(await generate(ENDPOINTS[state.mode], body)); } catch (err) { showError(err); }
}

// redraw while the slider moves: one request in flight; the newest settings go next
function liveDraw() {
  showGuidance();
  if (!$("live").checked || !state.model) return;
  const live = state.live;
  if (live.inflight) { live.pending = true; return; }
  let body;
  try { body = requestBody(); } catch (_) { return; }
  live.inflight = true;
  const seq = ++live.seq;
  generate(ENDPOINTS[state.mode], { ...body, n: 1 })
    .then((result) => {
      if (seq > live.shown) {
        live.shown = seq;
        clearError();
        live.card = addCard(result, live.card);
        state.frames.push(performance.now());
      }
    })
    .catch(showError)
    .finally(() => {
      live.inflight = false;
      if (live.pending) { live.pending = false; liveDraw(); }
    });
}

async function generateWithProgress(path, body) {
  const progress = $("progress");
  progress.hidden = false;
  $("progress-text").textContent = "queued";
  $("preview").removeAttribute("src");
  const started = performance.now();
  try {
    state.lastRequest = { path, body };
    const job = await api("/v1/jobs", { endpoint: path.slice(4), request: body });
    let result = null;
    await readEvents(job.id, (kind, data) => {
      if (kind === "queued") $("progress-text").textContent = `queued (${data.position} ahead)`;
      else if (kind === "started") $("progress-text").textContent = "started";
      else if (kind === "step") {
        $("preview").src = "data:image/png;base64," + data.preview;
        $("progress-text").textContent = `step ${data.step} of ${data.steps}`;
      } else if (kind === "done") result = data.result;
      else if (kind === "failed") throw new ApiError(data.error.status, data.error.detail);
      else if (kind === "cancelled") throw new ApiError(410, "the job was cancelled");
    });
    if (!result) throw new ApiError(0, "the progress stream ended without a result");
    return { data: result, body, path, latency: performance.now() - started };
  } finally {
    progress.hidden = true;
  }
}

// server-sent events through fetch (EventSource cannot send the API key)
async function readEvents(jobId, onEvent) {
  const r = await fetch(`/v1/jobs/${encodeURIComponent(jobId)}/events`, { headers: authHeaders(false) });
  if (!r.ok) {
    let data = null;
    try { data = await r.json(); } catch (_) { data = null; }
    throw new ApiError(r.status, describe(data) || r.statusText);
  }
  const reader = r.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const message = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let kind = "message", data = "";
      for (const line of message.split("\n")) {
        if (line.startsWith("event: ")) kind = line.slice(7);
        else if (line.startsWith("data: ")) data += line.slice(6);
      }
      if (data) onEvent(kind, JSON.parse(data));
    }
  }
}

// ---- results ----------------------------------------------------------------------------
function settingsOf(result) {
  const { body, data, path } = result;
  const s = { model: data.model, endpoint: path.slice(4), steps: data.steps, stochastic: data.stochastic, guidance: data.guidance, seed: data.seeds[0] };
  if (body.prompt !== undefined) s.prompt = body.prompt;
  if (body.class_label !== undefined) s.class_label = body.class_label;
  if (body.strength !== undefined) s.strength = body.strength;
  return s;
}

function addCard(result, replace) {
  const card = $("result-template").content.firstElementChild.cloneNode(true);
  const { data } = result;
  const sweep = Array.isArray(data.guidance);
  const images = card.querySelector(".images");
  data.images.forEach((b64, k) => {
    const fig = document.createElement("figure");
    const img = document.createElement("img");
    img.src = `data:image/${data.format || "png"};base64,${b64}`;
    img.alt = `seed ${data.seeds[k]}`;
    const caption = document.createElement("figcaption");
    const link = document.createElement("a");
    link.href = img.src;
    link.download = `fewstep-${data.model}-seed${data.seeds[k]}${sweep ? "-g" + data.guidance[k] : ""}.${data.format || "png"}`;
    link.textContent = "download";
    caption.append(sweep ? `γ ${data.guidance[k]} · ` : `seed ${data.seeds[k]} · `, link);
    fig.append(img, caption);
    images.append(fig);
  });
  const settings = settingsOf(result);
  const facts = {
    latency: `${result.latency.toFixed(0)} ms`,
    "network evaluations": data.network_evaluations !== undefined ? `${data.network_evaluations} per image` : "-",
    model: settings.model, endpoint: settings.endpoint, steps: settings.steps, stochastic: settings.stochastic,
    guidance: sweep ? data.guidance.join(", ") : settings.guidance,
    seed: data.seeds.join(", "),
  };
  if (settings.prompt !== undefined) facts.prompt = settings.prompt;
  if (settings.class_label !== undefined) facts.class = (state.model.class_names || [])[settings.class_label] || settings.class_label;
  if (settings.strength !== undefined) facts.strength = settings.strength;
  const dl = card.querySelector(".facts");
  for (const [k, v] of Object.entries(facts)) {
    const dt = document.createElement("dt"), dd = document.createElement("dd");
    dt.textContent = k; dd.textContent = String(v);
    dd.dataset.fact = k;
    dl.append(dt, dd);
  }
  card.querySelector(".rerun").addEventListener("click", () => { applySettings(settings, sweep ? data.guidance : undefined); (sweep ? runSweep : runOnce)(); });
  if (replace && replace.isConnected) replace.replaceWith(card);
  else $("results").prepend(card);
  return card;
}

function applySettings(s, sweepValues) {
  if (s.model && state.models.some((m) => m.id === s.model)) { $("model").value = s.model; applyModel(); }
  const mode = MODES[s.endpoint];
  if (mode) setMode(mode);
  if (s.stochastic !== undefined) $("stochastic").checked = !!s.stochastic;
  fillSteps(s.steps);
  if (sweepValues) $("sweep-values").value = sweepValues.join(", ");
  else if (s.guidance !== undefined) { $("guidance").value = s.guidance; showGuidance(); }
  if (s.seed !== undefined) { $("seed").value = s.seed; $("new-seed").checked = false; }
  if (s.prompt !== undefined) { setCond("prompt"); $("prompt").value = s.prompt; }
  if (s.class_label !== undefined) { setCond("class"); $("class").value = s.class_label; }
  if (s.strength !== undefined) { $("strength").value = s.strength; $("strength-value").textContent = (+s.strength).toFixed(2); }
}

// ---- images, masks and dropped files ---------------------------------------------------------
function readFile(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
}

async function useImage(file) {
  if (!file || !file.type.startsWith("image/")) { showError(new ApiError(0, "that is not an image file")); return; }
  const dataUrl = await readFile(file);
  const img = new Image();
  img.onload = () => {
    const ctx = $("source").getContext("2d");
    ctx.imageSmoothingEnabled = false;
    ctx.clearRect(0, 0, 256, 256);
    ctx.drawImage(img, 0, 0, 256, 256);
    state.image = { dataUrl, width: img.naturalWidth, height: img.naturalHeight };
    $("drop").firstChild.textContent = `${file.name} (${img.naturalWidth}x${img.naturalHeight}) · drop another or `;
  };
  img.onerror = () => showError(new ApiError(0, "the image could not be read"));
  img.src = dataUrl;
}

function maskPng() {
  const src = $("mask").getContext("2d").getImageData(0, 0, 256, 256);
  const out = document.createElement("canvas");
  out.width = out.height = 256;
  const ctx = out.getContext("2d");
  const img = ctx.createImageData(256, 256);
  for (let i = 0; i < src.data.length; i += 4) {
    const v = src.data[i + 3] > 0 ? 255 : 0;
    img.data[i] = img.data[i + 1] = img.data[i + 2] = v;
    img.data[i + 3] = 255;
  }
  ctx.putImageData(img, 0, 0);
  return out.toDataURL("image/png");
}

function setupMask() {
  const canvas = $("mask"), ctx = canvas.getContext("2d");
  let last = null;
  const at = (e) => { const r = canvas.getBoundingClientRect(); return [(e.clientX - r.left) * 256 / r.width, (e.clientY - r.top) * 256 / r.height]; };
  const paint = (p) => {
    ctx.strokeStyle = ctx.fillStyle = "#ff0000";
    ctx.lineWidth = +$("brush").value;
    ctx.lineCap = "round";
    ctx.beginPath();
    if (last) { ctx.moveTo(...last); ctx.lineTo(...p); ctx.stroke(); }
    else { ctx.arc(p[0], p[1], ctx.lineWidth / 2, 0, 2 * Math.PI); ctx.fill(); }
    last = p;
  };
  let painting = false;
  canvas.addEventListener("pointerdown", (e) => {
    painting = true;
    last = null;
    paint(at(e));
    try { canvas.setPointerCapture(e.pointerId); } catch (_) { /* synthetic pointers have none */ }
  });
  canvas.addEventListener("pointermove", (e) => { if (painting) paint(at(e)); });
  for (const end of ["pointerup", "pointercancel"]) canvas.addEventListener(end, () => { painting = false; last = null; });
  $("mask-clear").addEventListener("click", () => ctx.clearRect(0, 0, 256, 256));
  $("mask-invert").addEventListener("click", () => {
    const img = ctx.getImageData(0, 0, 256, 256);
    for (let i = 0; i < img.data.length; i += 4) {
      const on = img.data[i + 3] > 0;
      img.data[i] = 255; img.data[i + 1] = img.data[i + 2] = 0;
      img.data[i + 3] = on ? 0 : 255;
    }
    ctx.putImageData(img, 0, 0);
  });
}

function dropZone(el, onFile) {
  el.addEventListener("dragover", (e) => { e.preventDefault(); el.classList.add("over"); });
  el.addEventListener("dragleave", () => el.classList.remove("over"));
  el.addEventListener("drop", (e) => {
    e.preventDefault();
    el.classList.remove("over");
    const file = e.dataTransfer.files[0];
    if (file) onFile(file);
  });
}

async function loadSettingsFrom(file) {
  clearError();
  try {
    const dataUrl = await readFile(file);
    const { settings } = await api("/v1/png-info", { image: dataUrl });
    applySettings(settings);
  } catch (err) { showError(err); }
}

// ---- wiring -------------------------------------------------------------------------------
function init() {
  const key = $("api-key");
  key.value = localStorage.getItem("fewstep-api-key") || "";
  key.addEventListener("change", () => { localStorage.setItem("fewstep-api-key", key.value); loadModels(); });
  $("model").addEventListener("change", applyModel);
  for (const tab of document.querySelectorAll(".tabs button")) tab.addEventListener("click", () => setMode(tab.dataset.mode));
  for (const radio of document.querySelectorAll("input[name=cond]")) radio.addEventListener("change", () => setCond(radio.value));
  $("stochastic").addEventListener("change", () => fillSteps());
  $("guidance").addEventListener("input", liveDraw);
  $("strength").addEventListener("input", () => { $("strength-value").textContent = (+$("strength").value).toFixed(2); });
  $("form").addEventListener("submit", (e) => { e.preventDefault(); runOnce(); });
  $("sweep").addEventListener("click", runSweep);
  $("file").addEventListener("change", () => useImage($("file").files[0]));
  dropZone($("drop"), useImage);
  dropZone($("settings-drop"), loadSettingsFrom);
  setupMask();
  loadModels();
}

init();
