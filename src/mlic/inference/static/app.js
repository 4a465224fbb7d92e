// mlic web page: send each chosen or dropped image to POST /predict and draw one bar per class.
// Plain browser JavaScript, no build step and no dependencies. Server text (file names, error details) is
// only ever set through textContent, never parsed as HTML.
"use strict";

const MAX_PARALLEL = 2; // requests at once; the server queues model calls anyway
const MAX_RETRIES = 20; // 503 "busy" answers to wait out before giving up on an image
const COLLAPSED_ROWS = 12; // with many classes, show the top rows (and every predicted one) until expanded

const state = { limits: null, queue: [], active: 0, done: 0, total: 0 };
const $ = (id) => document.getElementById(id);

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

async function fetchJson(url) {
  const response = await fetch(url);
  if (!response.ok) throw new Error(`${url}: HTTP ${response.status}`);
  return response.json();
}

async function loadModelInfo() {
  try {
    const [labels, health] = await Promise.all([fetchJson("/labels"), fetchJson("/health")]);
    state.limits = health.limits;
    const n = labels.class_names.length;
    $("model-info").textContent =
      `${n} class${n === 1 ? "" : "es"} · thresholds: ${labels.threshold_source} · device: ${health.device}`;
    const mb = (health.limits.max_upload_bytes / 2 ** 20).toFixed(0);
    const mp = (health.limits.max_pixels / 1e6).toFixed(0);
    $("limits").textContent = `Up to ${mb} MB per upload and ${mp} megapixels per image.`;
  } catch (error) {
    $("model-info").textContent = `Could not reach the server (${error.message}).`;
  }
}

function makeCard(file) {
  const card = element("article", "card");
  card.dataset.state = "pending";
  card.dataset.filename = file.name;
  const preview = element("img", "preview");
  preview.alt = `preview of ${file.name}`;
  preview.src = URL.createObjectURL(file);
  // Formats the browser cannot show (TIFF, or no image at all) get a plain box instead of a broken-image icon.
  preview.addEventListener("error", () => {
    URL.revokeObjectURL(preview.src);
    preview.replaceWith(element("div", "preview placeholder", "no preview"));
  });
  const body = element("div", "card-body");
  body.append(element("h2", "filename", file.name), element("p", "card-status", "Waiting…"));
  card.append(preview, body);
  $("results").prepend(card);
  return card;
}

function addFiles(fileList) {
  for (const file of fileList) {
    state.queue.push({ file, card: makeCard(file) });
    state.total += 1;
  }
  $("clear").hidden = state.total === 0;
  pump();
}

function pump() {
  while (state.active < MAX_PARALLEL && state.queue.length > 0) {
    const job = state.queue.shift();
    state.active += 1;
    predict(job).finally(() => {
      state.active -= 1;
      state.done += 1;
      updateStatus();
      pump();
    });
  }
  updateStatus();
}

function updateStatus() {
  const waiting = state.total - state.done;
  $("status").textContent = state.total === 0 ? "" : waiting > 0
    ? `Labelling… ${state.done} of ${state.total} done.`
    : `${state.total} image${state.total === 1 ? "" : "s"} done.`;
  document.body.dataset.pending = String(waiting);
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function predict({ file, card }) {
  const status = card.querySelector(".card-status");
  if (state.limits && file.size > state.limits.max_upload_bytes) {
    return showError(card, `${file.name} is larger than the server's upload limit.`);
  }
  status.textContent = "Labelling…";
  const form = new FormData();
  form.append("files", file, file.name);
  try {
    for (let attempt = 0; attempt <= MAX_RETRIES; attempt += 1) {
      const response = await fetch("/predict", { method: "POST", body: form });
      if (response.status === 503 && attempt < MAX_RETRIES) {
        const seconds = Number(response.headers.get("Retry-After")) || 1;
        status.textContent = `Server busy, retrying in ${seconds} s…`;
        await sleep(seconds * 1000);
        continue;
      }
      const answer = await response.json().catch(() => null);
      if (!response.ok) {
        return showError(card, (answer && answer.detail) || `HTTP ${response.status}`);
      }
      return render(card, answer.results[0], answer.thresholds);
    }
  } catch (error) {
    return showError(card, `Could not reach the server (${error.message}).`);
  }
}

function showError(card, message) {
  card.dataset.state = "error";
  const status = card.querySelector(".card-status");
  status.textContent = message;
  status.classList.add("error");
}

function render(card, result, thresholds) {
  if (result.error) return showError(card, result.error);
  const body = card.querySelector(".card-body");
  card.querySelector(".card-status").remove();
  card.dataset.labels = JSON.stringify(result.labels);

  const chips = element("ul", "labels");
  chips.setAttribute("aria-label", "predicted labels");
  for (const label of result.labels) {
    const chip = element("li", "chip", label);
    chip.dataset.label = label;
    chips.append(chip);
  }
  if (result.labels.length === 0) chips.append(element("li", "chip none", "no class reached its threshold"));

  const rows = element("ol", "classes");
  const ranked = Object.entries(result.probabilities).sort((a, b) => b[1] - a[1]);
  ranked.forEach(([name, probability], rank) => rows.append(makeRow(name, probability, thresholds[name], rank)));
  body.append(chips, rows);
  if (ranked.length > COLLAPSED_ROWS) body.append(makeExpander(rows, ranked.length));
  card.dataset.state = "done";
}

function makeRow(name, probability, threshold, rank) {
  const predicted = probability >= threshold; // the server's rule: p >= the class threshold
  const row = element("li", predicted ? "row predicted" : "row");
  Object.assign(row.dataset, {
    class: name,
    probability: String(probability),
    threshold: String(threshold),
    predicted: String(predicted),
  });
  if (rank >= COLLAPSED_ROWS && !predicted) row.classList.add("extra");
  const bar = element("span", "bar");
  bar.setAttribute("role", "img");
  bar.setAttribute("aria-label", `${name}: probability ${probability.toFixed(3)}, threshold ${threshold.toFixed(3)}`);
  bar.style.setProperty("--p", String(probability));
  bar.style.setProperty("--t", String(threshold));
  const mark = element("span", "mark");
  mark.title = `threshold ${threshold.toFixed(3)}`;
  bar.append(element("span", "fill"), mark);
  row.append(element("span", "class-name", name), bar, element("span", "value", probability.toFixed(3)));
  return row;
}

function makeExpander(rows, total) {
  rows.classList.add("collapsed");
  const button = element("button", "link", `Show all ${total} classes`);
  button.type = "button";
  button.addEventListener("click", () => {
    const collapsed = rows.classList.toggle("collapsed");
    button.textContent = collapsed ? `Show all ${total} classes` : "Show fewer classes";
  });
  return button;
}

function clearResults() {
  for (const img of document.querySelectorAll("#results img.preview")) URL.revokeObjectURL(img.src);
  state.queue.length = 0;
  $("results").replaceChildren();
  state.total = state.active;
  state.done = 0;
  $("clear").hidden = true;
  updateStatus();
}

function setUpDropping() {
  const zone = $("drop-zone");
  let depth = 0; // dragenter/dragleave fire for every child element crossed
  window.addEventListener("dragenter", (event) => {
    event.preventDefault();
    depth += 1;
    zone.classList.add("dragging");
  });
  window.addEventListener("dragleave", () => {
    depth = Math.max(0, depth - 1);
    if (depth === 0) zone.classList.remove("dragging");
  });
  // Without preventDefault the browser would navigate away to the dropped file.
  window.addEventListener("dragover", (event) => event.preventDefault());
  window.addEventListener("drop", (event) => {
    event.preventDefault();
    depth = 0;
    zone.classList.remove("dragging");
    if (event.dataTransfer && event.dataTransfer.files.length > 0) addFiles(event.dataTransfer.files);
  });
}

document.addEventListener("DOMContentLoaded", () => {
  const input = $("file-input");
  input.addEventListener("change", () => {
    addFiles(input.files);
    input.value = ""; // choosing the same file again still fires "change"
  });
  $("clear").addEventListener("click", clearResults);
  setUpDropping();
  updateStatus();
  loadModelInfo();
});
