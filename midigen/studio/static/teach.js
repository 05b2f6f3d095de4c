// The Teach panel and the model selector: drop the user's MIDI (files or a zip), name the style, start a
// tune, watch its loss and held-out bits/note, cancel; a finished tune's model joins the selector.
// The tune runs in the server's own low-priority child, so the rest of the page keeps working meanwhile.
import { call } from "./api.js";

const $ = (id) => document.getElementById(id);
const teach = {
  set: null, files: 0, tune: null, points: [],
  upload: (file, set) => call("POST", `/api/teach/files?name=${encodeURIComponent(file.name || "upload.mid")}` +
    (set ? `&set=${set}` : ""), file, { "Content-Type": /\.zip$/i.test(file.name) ? "application/zip" : "audio/midi" }),
  start: (body) => call("POST", "/api/teach", body),
  poll: (id, since, wait) => call("GET", `/api/teach/${id}?since=${since}&wait=${wait}`),
  cancel: (id) => call("POST", `/api/teach/${id}/cancel`),
  models: () => call("GET", "/api/models"),
  select: (model) => call("POST", "/api/models/select", { model }),
};

// ----- the model selector -------------------------------------------------------------------------

async function showModels(listing = null) {
  const m = listing || await teach.models();
  const sel = $("model-select");
  sel.innerHTML = "";
  for (const x of m.models) {
    const o = document.createElement("option");
    o.value = x.id;
    o.textContent = x.id === "base" ? "base model" : `${x.name}${x.styles && x.styles.length ? " (taught)" : ""}`;
    sel.appendChild(o);
  }
  sel.value = m.current;
  sel.dataset.current = m.current;
  return m;
}

// ----- files --------------------------------------------------------------------------------------

function showFiles(refused = []) {
  $("teach-files").textContent = teach.files ? `${teach.files} file${teach.files === 1 ? "" : "s"} ready` : "no files yet";
  $("teach-refused").textContent = refused.length
    ? `Not taken: ${refused.map((r) => `${r.name} (${r.reason})`).join("; ")}` : "";
  updateButtons();
}

async function addFiles(files, toast) {
  const refused = [];
  for (const f of files) {
    try {
      const r = await teach.upload(f, teach.set);
      teach.set = r.set;
      teach.files = r.files;
      refused.push(...r.refused);
    } catch (e) {
      refused.push({ name: f.name, reason: e.message });
    }
  }
  showFiles(refused);
  if (refused.length && !teach.files) toast(`No file could be read: ${refused[0].reason}`);
}

// ----- the tune and its curve ---------------------------------------------------------------------

const running = () => teach.tune && ["queued", "preparing", "training"].includes(teach.tune.status);

function updateButtons() {
  $("teach-start").disabled = running() || teach.files < 2 || !$("teach-style").value.trim();
  $("teach-cancel").hidden = !running();
}

function statusLine(t) {
  const last = teach.points[teach.points.length - 1];
  const val = [...teach.points].reverse().find((p) => p[2] !== null);
  if (t.status === "preparing") return "Reading and preparing your music…";
  if (t.status === "training" && last) {
    return `Step ${last[0]} of at most ${t.steps} · loss ${last[1].toFixed(3)}` +
      (val ? ` · held-out ${val[2].toFixed(2)} bits/note` : "");
  }
  if (t.status === "done") {
    const r = t.result || {};
    const by = r.val != null && r.base_val != null ? ` (held-out ${r.val.toFixed(2)} bits/note; base ${r.base_val.toFixed(2)})` : "";
    const early = r.stopped === "best" ? ", stopped where the held-out score stopped improving" : "";
    return `Done after ${r.step} steps${early}: “${t.model}” is in the model list${by}.`;
  }
  if (t.status === "cancelled") return "Cancelled: no model was kept.";
  if (t.status === "failed") return `Failed: ${t.error}`;
  return "Waiting…";
}

function drawPlot() {
  const c = $("teach-plot");
  const w = c.width = c.clientWidth * devicePixelRatio;
  const h = c.height = c.clientHeight * devicePixelRatio;
  const g = c.getContext("2d");
  g.clearRect(0, 0, w, h);
  c.dataset.points = String(teach.points.length);
  c.dataset.valPoints = String(teach.points.filter((p) => p[2] !== null).length);
  if (!teach.points.length) return;
  const steps = Math.max(teach.tune ? teach.tune.steps : 1, ...teach.points.map((p) => p[0]));
  const pad = 6 * devicePixelRatio;
  const series = (k, color, dots) => {
    const pts = teach.points.filter((p) => p[k] !== null);
    if (!pts.length) return;
    const ys = pts.map((p) => p[k]);
    const lo = Math.min(...ys), hi = Math.max(...ys), span = hi - lo || 1;
    g.strokeStyle = g.fillStyle = color;
    g.lineWidth = 1.5 * devicePixelRatio;
    g.beginPath();
    pts.forEach((p, i) => {
      const x = pad + (w - 2 * pad) * (p[0] / steps);
      const y = pad + (h - 2 * pad) * (1 - (p[k] - lo) / span);
      if (dots) g.fillRect(x - 2 * devicePixelRatio, y - 2 * devicePixelRatio, 4 * devicePixelRatio, 4 * devicePixelRatio);
      if (i) g.lineTo(x, y); else g.moveTo(x, y);
    });
    g.stroke();
  };
  series(1, "#f2b84b", false);  // loss (each on its own scale: the shapes are what matter)
  series(2, "#4fd1c5", true);   // held-out bits/note
}

function showTune(t) {
  teach.tune = t;
  $("teach-status").textContent = statusLine(t);
  $("teach-status").dataset.status = t.status;
  drawPlot();
  updateButtons();
}

async function follow(t, toast) {
  teach.points = [...t.points];
  showTune(t);
  while (running()) {
    let next;
    try {
      next = await teach.poll(t.id, teach.points.length, 5);
    } catch (e) {
      toast(e.message);
      await new Promise((r) => setTimeout(r, 1000));
      continue;
    }
    teach.points.push(...next.points);
    showTune(next);
  }
  teach.set = null;  // the server deleted the set's files when the tune ended: a new tune starts a new set
  teach.files = 0;
  showFiles();
  if (teach.tune.status === "done") {
    await showModels();
    toast(`Taught “${teach.tune.model}”: choose it in the model list to write in its style.`, "info");
  }
}

// ----- wiring -------------------------------------------------------------------------------------

export function setupTeach({ toast, guard, onModel }) {
  const panel = $("teach");
  $("teach-open").onclick = () => { panel.hidden = !panel.hidden; if (!panel.hidden) drawPlot(); };
  $("teach-close").onclick = () => { panel.hidden = true; };
  $("teach-choose").onclick = () => $("teach-input").click();
  $("teach-input").onchange = guard(async (e) => { const fs = [...e.target.files]; e.target.value = ""; await addFiles(fs, toast); });
  $("teach-style").oninput = updateButtons;
  const zone = $("teach-drop");
  for (const kind of ["dragenter", "dragover", "dragleave"]) {  // the page's own drop (open a piece) stays out
    panel.addEventListener(kind, (e) => { e.preventDefault(); e.stopPropagation(); zone.classList.toggle("over", kind !== "dragleave"); });
  }
  panel.addEventListener("drop", (e) => {
    e.preventDefault();
    e.stopPropagation();
    zone.classList.remove("over");
    guard(addFiles)([...e.dataTransfer.files], toast);
  });
  $("teach-start").onclick = guard(async () => {
    const t = await teach.start({ set: teach.set, style: $("teach-style").value.trim(),
      steps: Number($("teach-steps").value) || 300 });
    await follow(t, toast);
  });
  $("teach-cancel").onclick = guard(async () => { if (teach.tune) showTune(await teach.cancel(teach.tune.id)); });
  $("model-select").onchange = guard(async (e) => {
    const sel = e.target;
    sel.disabled = true;
    try {
      await showModels(await teach.select(sel.value));
      await onModel();
    } catch (err) {
      sel.value = sel.dataset.current;
      throw err;
    } finally {
      sel.disabled = false;
    }
  });
  updateButtons();
  showFiles();
  return showModels();
}
