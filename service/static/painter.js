// The SDEdit painter: draws a guide (and a mask) at the model's resolution, or on a photo at
// the photo's own resolution, and talks only to the public API (/v1/models, /v1/edits). No
// build step: plain browser JavaScript.
"use strict";

const $ = (id) => document.getElementById(id);
const base = $("base"), mask = $("mask"), patch = $("patch"), stage = $("stage");
const bctx = base.getContext("2d", { willReadFrequently: true });
const mctx = mask.getContext("2d", { willReadFrequently: true });
const pctx = patch.getContext("2d");
const MASK_RGB = [255, 0, 0]; // shown as a translucent red overlay; sent as white-on-black

// The canvases' size in pixels: the model's resolution, or a loaded photo's own size (a masked
// edit of a photo comes back at that size: the service crops around the mask and stitches).
let width = 32, height = 32;
let resolution = 32; // the selected model's
const MAX_PHOTO_SIDE = 2048; // larger photos are scaled down to this on load (upload limits)
let tool = "brush";
let maskMode = false;
let history = [];
let future = [];
let models = [];
let patchState = null; // {image, x, y, scale}

// ---------------------------------------------------------------- canvas state and history

function isPhoto() {
  return width !== resolution || height !== resolution;
}

function resetCanvases(w, h = w) {
  width = w;
  height = h;
  for (const canvas of [base, mask, patch]) {
    canvas.width = width;
    canvas.height = height;
  }
  // Shown scaled to fit the stage's 512 px box, keeping the aspect ratio.
  const scale = 512 / Math.max(width, height);
  stage.style.width = `${Math.round(width * scale)}px`;
  stage.style.height = `${Math.round(height * scale)}px`;
  stage.classList.toggle("photo", isPhoto());
  bctx.fillStyle = "#ffffff";
  bctx.fillRect(0, 0, width, height);
  mctx.clearRect(0, 0, width, height);
  history = [];
  future = [];
  clearPatch();
}

function snapshot() {
  return { base: bctx.getImageData(0, 0, width, height), mask: mctx.getImageData(0, 0, width, height) };
}

function restore(state) {
  bctx.putImageData(state.base, 0, 0);
  mctx.putImageData(state.mask, 0, 0);
}

function remember() {
  history.push(snapshot());
  if (history.length > 200) history.shift();
  future = [];
}

function undo() {
  if (!history.length) return;
  future.push(snapshot());
  restore(history.pop());
}

function redo() {
  if (!future.length) return;
  history.push(snapshot());
  restore(future.pop());
}

function maskUsed() {
  const data = mctx.getImageData(0, 0, width, height).data;
  for (let i = 3; i < data.length; i += 4) if (data[i] > 0) return true;
  return false;
}

// ---------------------------------------------------------------- painting

function hexToRgb(hex) {
  const v = parseInt(hex.slice(1), 16);
  return [(v >> 16) & 255, (v >> 8) & 255, v & 255];
}

function stamp(x, y) {
  const ctx = maskMode ? mctx : bctx;
  // The brush size is in model pixels: on a photo it covers as much of the picture.
  const diameter = Number($("size").value) * Math.max(width, height) / resolution;
  const r = (diameter - 1) / 2;
  const erase = tool === "eraser";
  const rgb = maskMode ? MASK_RGB : erase ? [255, 255, 255] : hexToRgb($("colour").value);
  ctx.fillStyle = `rgb(${rgb.join(",")})`;
  if (isPhoto()) {
    // A photo's brush is hundreds of pixels wide: one filled circle, not pixel by pixel.
    ctx.save();
    if (maskMode && erase) ctx.globalCompositeOperation = "destination-out";
    ctx.beginPath();
    ctx.arc(x + 0.5, y + 0.5, diameter / 2, 0, 2 * Math.PI);
    ctx.fill();
    ctx.restore();
    return;
  }
  for (let dy = -Math.ceil(r); dy <= Math.ceil(r); dy++) {
    for (let dx = -Math.ceil(r); dx <= Math.ceil(r); dx++) {
      if (dx * dx + dy * dy > r * r + 0.5) continue;
      const px = Math.round(x + dx), py = Math.round(y + dy);
      if (px < 0 || py < 0 || px >= width || py >= height) continue;
      if (maskMode && erase) ctx.clearRect(px, py, 1, 1);
      else ctx.fillRect(px, py, 1, 1);
    }
  }
}

function line(from, to) {
  // On a photo, stamps a few pixels apart draw the same stroke far faster.
  const spacing = isPhoto() ? Math.max(1, Math.max(width, height) / 512) : 1;
  const steps = Math.max(Math.ceil(Math.max(Math.abs(to.x - from.x), Math.abs(to.y - from.y)) / spacing), 1);
  for (let i = 0; i <= steps; i++) {
    stamp(from.x + ((to.x - from.x) * i) / steps, from.y + ((to.y - from.y) * i) / steps);
  }
}

function floodFill(x, y) {
  const ctx = maskMode ? mctx : bctx;
  const image = ctx.getImageData(0, 0, width, height);
  const d = image.data;
  const at = (px, py) => (py * width + px) * 4;
  const start = at(x, y);
  const target = [d[start], d[start + 1], d[start + 2], d[start + 3]];
  const fill = maskMode ? [...MASK_RGB, 255] : [...hexToRgb($("colour").value), 255];
  if (target.every((v, i) => v === fill[i])) return;
  const same = (i) => d[i] === target[0] && d[i + 1] === target[1] && d[i + 2] === target[2] &&
    d[i + 3] === target[3];
  const stack = [[x, y]];
  while (stack.length) {
    const [px, py] = stack.pop();
    if (px < 0 || py < 0 || px >= width || py >= height) continue;
    const i = at(px, py);
    if (!same(i)) continue;
    d.set(fill, i);
    stack.push([px + 1, py], [px - 1, py], [px, py + 1], [px, py - 1]);
  }
  ctx.putImageData(image, 0, 0);
}

function canvasPoint(event) {
  const rect = stage.getBoundingClientRect();
  return {
    x: Math.floor(((event.clientX - rect.left) / rect.width) * width),
    y: Math.floor(((event.clientY - rect.top) / rect.height) * height),
  };
}

let last = null;
let dragging = null;

stage.addEventListener("pointerdown", (event) => {
  try {
    stage.setPointerCapture(event.pointerId); // keep the stroke when the pointer leaves
  } catch {
    // synthetic events (scripts, some test drivers) have no capturable pointer
  }
  const p = canvasPoint(event);
  if (patchState) {
    dragging = { start: p, x: patchState.x, y: patchState.y };
    return;
  }
  remember();
  if (tool === "fill") {
    floodFill(p.x, p.y);
    return;
  }
  stamp(p.x, p.y);
  last = p;
});

stage.addEventListener("pointermove", (event) => {
  const p = canvasPoint(event);
  if (dragging) {
    patchState.x = dragging.x + p.x - dragging.start.x;
    patchState.y = dragging.y + p.y - dragging.start.y;
    drawPatch();
    return;
  }
  if (!last) return;
  line(last, p);
  last = p;
});

for (const type of ["pointerup", "pointercancel"]) {
  stage.addEventListener(type, () => {
    last = null;
    dragging = null;
  });
}

// ---------------------------------------------------------------- images: base and patch

function readImage(file) {
  return new Promise((resolve, reject) => {
    const url = URL.createObjectURL(file);
    const image = new Image();
    image.onload = () => resolve(image);
    image.onerror = () => reject(new Error(`${file.name || "the file"} is not an image`));
    image.src = url;
  });
}

function drawCover(ctx, image) {
  // Centre-crop to a square, like the service's default resize policy.
  const side = Math.min(image.width, image.height);
  ctx.imageSmoothingEnabled = true;
  ctx.drawImage(image, (image.width - side) / 2, (image.height - side) / 2, side, side,
    0, 0, width, height);
}

function useAsBase(image) {
  // A picture larger than the model becomes a photo canvas at its own size (at most
  // MAX_PHOTO_SIDE), painted and masked there; a small one is fitted to the model's canvas.
  if (image.naturalWidth > resolution || image.naturalHeight > resolution) {
    const scale = Math.min(1, MAX_PHOTO_SIDE / Math.max(image.naturalWidth, image.naturalHeight));
    resetCanvases(Math.round(image.naturalWidth * scale), Math.round(image.naturalHeight * scale));
    bctx.imageSmoothingEnabled = true;
    bctx.drawImage(image, 0, 0, width, height);
    return;
  }
  remember();
  if (isPhoto()) resetCanvases(resolution);
  bctx.fillStyle = "#ffffff";
  bctx.fillRect(0, 0, width, height);
  drawCover(bctx, image);
}

async function loadBase(file) {
  try {
    useAsBase(await readImage(file));
  } catch (error) {
    showError(error.message);
  }
}

async function loadPatch(file) {
  try {
    const image = await readImage(file);
    const scale = (Math.min(width, height) / 2) / Math.max(image.width, image.height);
    patchState = { image, scale, x: Math.round(width / 4), y: Math.round(height / 4) };
    $("patch-scale").value = 100;
    $("patch-scale").disabled = false;
    $("flatten").disabled = false;
    drawPatch();
  } catch (error) {
    showError(error.message);
  }
}

function patchBox() {
  const s = patchState.scale * Number($("patch-scale").value) / 100;
  return [patchState.x, patchState.y, patchState.image.width * s, patchState.image.height * s];
}

function drawPatch() {
  pctx.clearRect(0, 0, width, height);
  if (!patchState) return;
  pctx.imageSmoothingEnabled = true;
  pctx.drawImage(patchState.image, ...patchBox());
}

function clearPatch() {
  patchState = null;
  pctx.clearRect(0, 0, width, height);
  $("patch-scale").disabled = true;
  $("flatten").disabled = true;
}

function flatten() {
  if (!patchState) return;
  remember();
  bctx.imageSmoothingEnabled = true;
  bctx.drawImage(patchState.image, ...patchBox());
  clearPatch();
}

$("load-base").addEventListener("change", (e) => e.target.files[0] && loadBase(e.target.files[0]));
$("load-patch").addEventListener("change", (e) => e.target.files[0] && loadPatch(e.target.files[0]));
$("patch-scale").addEventListener("input", drawPatch);
$("flatten").addEventListener("click", flatten);
stage.addEventListener("dragover", (e) => e.preventDefault());
stage.addEventListener("drop", (e) => {
  e.preventDefault();
  const file = [...e.dataTransfer.files].find((f) => f.type.startsWith("image/"));
  if (file) loadPatch(file);
});
window.addEventListener("paste", (e) => {
  const item = [...e.clipboardData.items].find((i) => i.type.startsWith("image/"));
  if (item) loadPatch(item.getAsFile());
});

// ---------------------------------------------------------------- tools and shortcuts

function selectTool(name) {
  tool = name;
  for (const b of document.querySelectorAll("#tools [data-tool]")) {
    b.classList.toggle("active", b.dataset.tool === name);
  }
}

function toggleMask(on = !maskMode) {
  maskMode = on;
  $("mask-mode").setAttribute("aria-pressed", String(on));
  $("mask-mode").classList.toggle("active", on);
}

for (const b of document.querySelectorAll("#tools [data-tool]")) {
  b.addEventListener("click", () => selectTool(b.dataset.tool));
}
$("mask-mode").addEventListener("click", () => toggleMask());
$("undo").addEventListener("click", undo);
$("redo").addEventListener("click", redo);
$("clear").addEventListener("click", () => {
  remember();
  if (maskMode) {
    mctx.clearRect(0, 0, width, height);
  } else if (isPhoto()) {
    resetCanvases(resolution); // back to a blank canvas at the model's resolution
  } else {
    bctx.fillStyle = "#ffffff";
    bctx.fillRect(0, 0, width, height);
  }
});

window.addEventListener("keydown", (e) => {
  if (["INPUT", "SELECT", "TEXTAREA"].includes(document.activeElement.tagName)) return;
  const key = e.key.toLowerCase();
  if ((e.ctrlKey || e.metaKey) && key === "z") {
    e.preventDefault();
    e.shiftKey ? redo() : undo();
  } else if ((e.ctrlKey || e.metaKey) && key === "y") {
    e.preventDefault();
    redo();
  } else if (key === "b") selectTool("brush");
  else if (key === "e") selectTool("eraser");
  else if (key === "f") selectTool("fill");
  else if (key === "m") toggleMask();
  else if (key === "[") $("size").value = Number($("size").value) - 1;
  else if (key === "]") $("size").value = Number($("size").value) + 1;
  else if (key === "enter" && (e.ctrlKey || e.metaKey)) submit();
});

$("t0").addEventListener("input", () => { $("t0-value").value = Number($("t0").value).toFixed(2); });

// ---------------------------------------------------------------- the API

function headers() {
  const key = $("api-key").value.trim();
  localStorage.setItem("sdedit-api-key", key);
  return key ? { Authorization: `Bearer ${key}` } : {};
}

function showError(message) {
  $("error").textContent = message || "";
}

async function apiError(response) {
  try {
    return (await response.json()).error.message;
  } catch {
    return `${response.status} ${response.statusText}`;
  }
}

async function loadModels() {
  const response = await fetch("/v1/models");
  models = (await response.json()).models;
  const select = $("model");
  select.innerHTML = "";
  for (const m of models) {
    const option = document.createElement("option");
    option.value = m.name;
    option.textContent = m.available
      ? `${m.name} (${m.resolution} px, ${m.family}${m.text ? ", text-guided" : ""})`
      : `${m.name} (no worker yet)`;
    select.append(option);
  }
  applyModel();
}

function applyModel() {
  const m = models.find((x) => x.name === $("model").value);
  if (!m || !m.available) {
    showError("No worker serves this model yet; start one (sdedit worker) and reload.");
    return;
  }
  if (m.resolution !== resolution) {
    resolution = m.resolution;
    resetCanvases(resolution);
  }
  const sampler = $("sampler");
  sampler.innerHTML = '<option value="">model default</option>';
  for (const name of m.samplers) {
    const option = document.createElement("option");
    option.value = option.textContent = name;
    sampler.append(option);
  }
  $("samples").max = m.max_batch;
  // Text-guided models (Stable Diffusion) take a prompt; the others refuse one.
  $("text-row").hidden = !m.text;
  if (m.text) $("guidance-scale").value = m.defaults.guidance_scale;
}

function selectedModel() {
  return models.find((x) => x.name === $("model").value);
}

$("model").addEventListener("change", applyModel);

function canvasBlob(canvas) {
  return new Promise((resolve) => canvas.toBlob(resolve, "image/png"));
}

async function maskBlob() {
  // White where the user painted (may change), black elsewhere (kept exactly).
  const out = document.createElement("canvas");
  out.width = width;
  out.height = height;
  const octx = out.getContext("2d");
  const src = mctx.getImageData(0, 0, width, height);
  const dst = octx.createImageData(width, height);
  for (let i = 0; i < src.data.length; i += 4) {
    const v = src.data[i + 3] > 0 ? 255 : 0;
    dst.data.set([v, v, v, 255], i);
  }
  octx.putImageData(dst, 0, 0);
  return canvasBlob(out);
}

async function submit() {
  showError("");
  const form = new FormData();
  form.append("image", await canvasBlob(base), "guide.png");
  if (maskUsed()) form.append("mask", await maskBlob(), "mask.png");
  form.append("model", $("model").value);
  form.append("t0", $("t0").value);
  form.append("samples", $("samples").value);
  form.append("seed", $("seed").value || "0");
  if ($("sampler").value) form.append("sampler", $("sampler").value);
  if ($("steps").value) form.append("steps", $("steps").value);
  if (selectedModel()?.text) {
    form.append("prompt", $("prompt").value);
    form.append("negative_prompt", $("negative-prompt").value);
    if ($("guidance-scale").value) form.append("guidance_scale", $("guidance-scale").value);
  }
  // A photo's edit comes back at the photo's size, with or without a mask.
  if (isPhoto()) form.append("output_size", "input");
  const response = await fetch("/v1/edits", { method: "POST", body: form, headers: headers() });
  if (!response.ok) {
    showError(await apiError(response));
    return;
  }
  const { id } = await response.json();
  follow(id, Number($("t0").value));
}

$("submit").addEventListener("click", submit);

function jobCard(id, t0) {
  const card = document.createElement("article");
  card.className = "job";
  card.dataset.job = id;
  card.innerHTML = `<div class="meta"><span>t0 = ${t0.toFixed(2)} · <span class="state">queued</span></span>
    <button class="cancel">Cancel</button></div><progress value="0" max="1"></progress>
    <div class="grid"></div>`;
  card.querySelector(".cancel").addEventListener("click", async () => {
    const response = await fetch(`/v1/edits/${id}`, { method: "DELETE", headers: headers() });
    if (!response.ok) showError(await apiError(response));
  });
  $("jobs").prepend(card);
  return card;
}

async function follow(id, t0) {
  const card = jobCard(id, t0);
  const bar = card.querySelector("progress");
  const state = card.querySelector(".state");
  for (;;) {
    const response = await fetch(`/v1/edits/${id}`, { headers: headers() });
    if (!response.ok) {
      state.textContent = await apiError(response);
      state.className = "failed";
      return;
    }
    const job = await response.json();
    bar.max = job.progress.total || 1;
    bar.value = job.progress.step;
    state.textContent = job.status === "queued" && job.position !== null
      ? `queued (#${job.position + 1})` : job.status;
    if (job.status === "finished") {
      card.querySelector(".cancel").remove();
      await showResults(card, job);
      return;
    }
    if (job.status === "failed" || job.status === "canceled") {
      card.querySelector(".cancel").remove();
      if (job.error) state.textContent = `failed: ${job.error}`;
      state.className = "failed";
      return;
    }
    await new Promise((r) => setTimeout(r, 300));
  }
}

async function showResults(card, job) {
  const grid = card.querySelector(".grid");
  for (const [k, link] of job.links.images.entries()) {
    const response = await fetch(link, { headers: headers() });
    const url = URL.createObjectURL(await response.blob());
    const figure = document.createElement("figure");
    const image = document.createElement("img");
    image.src = url;
    image.alt = `result ${k}`;
    image.title = "click: use as the new guide";
    image.addEventListener("click", () => {
      if (image.naturalWidth === width && image.naturalHeight === height) {
        remember();
        bctx.drawImage(image, 0, 0); // same size: pixel for pixel
      } else {
        useAsBase(image);
      }
    });
    const download = document.createElement("a");
    download.href = url;
    download.download = `sdedit-${job.id.slice(0, 8)}-${k}.${job.parameters.output_format}`;
    download.textContent = "download";
    figure.append(image, document.createElement("br"), download);
    grid.append(figure);
  }
}

// ---------------------------------------------------------------- start

$("api-key").value = localStorage.getItem("sdedit-api-key") || "";
resetCanvases(resolution);
loadModels().catch((error) => showError(`cannot load models: ${error.message}`));
