// The studio page: pieces, versions, the transport, the four kinds of job and their streamed notes.
// Everything goes through the JSON API (api.js); the piano roll draws (roll.js).
import { api } from "./api.js";
import { PianoRoll, clock, instrumentColor } from "./roll.js";
import { setupTeach } from "./teach.js";

const $ = (id) => document.getElementById(id);
const POLL_GAP_MS = 120;  // after an answer with notes; the first notes still come as soon as they exist
const state = {
  info: null, caps: null, names: [], pieceId: null, piece: null, version: null, roll: null,
  job: null, point: 0, span: null, variants: null,
  rollPiece: null,             // the piece the roll's zoom and scroll belong to
  muted: new Set(), solo: new Set(),  // track indices (the roll's "index"), per piece
};
const roll = new PianoRoll($("roll"), $("roll-scroll"), $("roll-spacer"));
const audio = $("audio");

// ----- messages -----------------------------------------------------------------------------------

// the API names its fields; the page says what its own labels say
const LABELS = {
  top_p: "Top-p", top_k: "Top-k", temperature: "Temperature", seed: "Seed", seconds: "Length (s)", tempo: "Tempo",
  num_samples: "Variants", start_s: "the span's start", end_s: "the span's end", at_seconds: "the point",
  instruments: "Instruments", add: "Add instruments", keep: "Keep these parts", time_signature: "Meter",
  style: "Style", key: "Key", density: "Density", chords: "Chords", free_chords: "Free chords",
};
function inPageWords(message) {
  return String(message).replace(/(^|; )([a-z_]+)(\.\d+)?: /g,
    (all, lead, field) => (LABELS[field] ? `${lead}${LABELS[field]}: ` : all));
}

let toastTimer = null;
function toast(message, kind = "error") {
  $("error-text").textContent = inPageWords(message);
  $("error").className = `toast ${kind === "error" ? "" : kind}`;  // error, warn or info
  $("error").hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => { $("error").hidden = true; }, kind === "info" ? 4000 : 15000);
}
const fail = (e) => toast(e.message || String(e));
$("error-close").onclick = () => { $("error").hidden = true; };

function guard(fn) {  // run an async handler; any error becomes the toast
  return (...args) => Promise.resolve().then(() => fn(...args)).catch(fail);
}

// ----- instruments and capabilities ---------------------------------------------------------------

const nameOf = (i) => state.names[i] || `program ${i}`;

function fillInstrumentPicker(select) {
  select.innerHTML = "";
  const seen = new Set(state.caps.instruments);
  for (let i = 0; i <= 128; i++) {
    if (!seen.has(i)) continue;
    const o = document.createElement("option");
    o.value = String(i);
    o.textContent = i === 128 ? "Drums" : `${nameOf(i)} (${i})`;
    select.appendChild(o);
  }
}

function chip(container, inst) {
  if ([...container.children].some((c) => c.dataset.inst === String(inst))) return;
  const el = document.createElement("span");
  el.className = "chip";
  el.dataset.inst = String(inst);
  const dot = document.createElement("i");
  dot.style.background = instrumentColor(inst);
  const x = document.createElement("button");
  x.textContent = "×";
  x.title = "Remove";
  x.onclick = () => el.remove();
  el.append(dot, document.createTextNode(nameOf(inst)), x);
  container.appendChild(el);
}
const chips = (container) => [...container.children].map((c) => Number(c.dataset.inst));

function setupSteering() {  // each select offers what the checkpoint learned; one it lacks says so
  for (const sel of document.querySelectorAll("[data-steer]")) {
    const values = state.caps[sel.dataset.steer] || [];
    sel.innerHTML = "<option value=''>model chooses</option>";
    for (const v of values) {
      const o = document.createElement("option");
      o.value = o.textContent = String(v);
      sel.appendChild(o);
    }
    sel.disabled = values.length === 0;
    sel.title = values.length ? "" : `This checkpoint has no ${sel.dataset.what} control.`;
  }
  for (const note of document.querySelectorAll(".steer-note")) {
    const missing = [...note.closest(".tab-body").querySelectorAll("[data-steer]:disabled")].map((s) => s.dataset.what);
    const last = missing[missing.length - 1];
    const list = missing.length > 1 ? `${missing.slice(0, -1).join(", ")} or ${last}` : last;
    note.textContent = missing.length ? `This checkpoint has no ${list} control.` : "";
  }
  const edit = state.caps.can_edit;
  for (const el of document.querySelectorAll(".edit-action")) el.disabled = !edit;
  for (const el of document.querySelectorAll(".edit-note")) {
    el.textContent = edit ? "" : "This checkpoint cannot edit (it was trained without the editing objective).";
  }
}

// ----- chord charts: read by the server (the parser lives there once), checked as they are typed -----

const CHORD_FIELD = { generate: "gen", continue: "cont", "continue-keep": "cont", infill: "infill", arrange: "arrange",
  "section-regenerate": "infill" };  // a section made like another keeps its own harmony: no chords
const chordTimers = new Map();

function setupChords() {  // a checkpoint trained without chords cannot follow a chart: its fields say so
  const has = Boolean(state.caps.chords);
  for (const f of document.querySelectorAll("[data-chords], [data-free-chords]")) {
    f.disabled = !has;
    f.title = has ? "" : "This checkpoint has no chords (it was trained without chord tokens).";
  }
  for (const n of document.querySelectorAll(".chords-note")) {
    n.className = "note chords-note";
    n.textContent = has ? "" : "This checkpoint has no chords (it was trained without chord tokens).";
  }
}

async function checkChords(field) {  // true when the chart reads (or is empty); the note says what was read or why not
  const note = $(`${field.id}-note`);
  const text = field.value.trim();
  if (field.disabled) return true;
  if (!text) {
    field.classList.remove("bad");
    field.removeAttribute("aria-invalid");
    note.className = "note chords-note";
    note.textContent = "";
    return true;
  }
  let ok = true, message;
  try {
    const chart = await api.chords(text);
    message = `${chart.bars.length} bar${chart.bars.length === 1 ? "" : "s"}: ${chart.text}`;
  } catch (e) {
    if (e.status !== 400 && e.status !== 422) throw e;
    ok = false;
    message = inPageWords(e.message);
  }
  if (field.value.trim() !== text) return checkChords(field);  // typed on meanwhile: check what is there now
  field.classList.toggle("bad", !ok);
  if (ok) field.removeAttribute("aria-invalid"); else field.setAttribute("aria-invalid", "true");
  note.className = `note chords-note ${ok ? "ok" : "bad"}`;
  note.textContent = message;
  return ok;
}

function chordsSoon(field) {  // check a field once typing pauses
  clearTimeout(chordTimers.get(field.id));
  chordTimers.set(field.id, setTimeout(() => guard(checkChords)(field), 250));
}

function chordRequest(kind) {  // the job's chords: the chart text and, for an edit, free chords
  const prefix = CHORD_FIELD[kind];
  const free = $(`${prefix}-free-chords`);
  const text = $(`${prefix}-chords`).value.trim();
  const out = { chords: free && free.checked ? null : (text || null) };
  if (free && kind !== "continue-keep") out.free_chords = free.checked;
  return out;
}

function fillChordsFrom(sel) {  // the selected bars' chords into the infill field and the open tab's
  const bars = roll.barsAt(sel[0], sel[1]);
  if (!bars.length) return;
  const text = bars.map((b) => b.chords).join(" | ");
  const open = document.querySelector(".tabs button.active").dataset.tab;
  for (const prefix of new Set(["infill", CHORD_FIELD[open]].filter(Boolean))) {
    const field = $(`${prefix}-chords`);
    const free = $(`${prefix}-free-chords`);
    if (free && free.checked) continue;
    field.value = text;
    guard(checkChords)(field);
  }
}

function fillSamplingDefaults(d) {
  // the server's defaults (/api/info), so the page and the API never disagree
  $("temperature").value = d.temperature;
  $("top-p").value = d.top_p ?? "";
}

function showModel() {
  const i = state.info;
  const m = (i.parameters / 1e6).toFixed(i.parameters < 1e7 ? 1 : 0);
  const path = i.checkpoint.split("/").filter(Boolean).slice(-2).join("/");
  $("model-info").innerHTML = "";
  $("model-info").append(`model ${path} · ${m}M params · ${i.device}`);
  const tag = document.createElement("span");
  tag.className = `tag ${i.capabilities.can_edit ? "ok" : "no"}`;
  tag.textContent = i.capabilities.can_edit ? "can edit" : "cannot edit";
  $("model-info").appendChild(tag);
}

// ----- pieces and versions ------------------------------------------------------------------------

async function refreshPieceList(known = null) {
  const pieces = known || await api.pieces();
  const sel = $("piece-select");
  sel.innerHTML = "";
  for (const p of pieces) {
    const o = document.createElement("option");
    o.value = p.id;
    o.textContent = `${p.name} · ${clock(p.seconds)} · ${p.versions} version${p.versions === 1 ? "" : "s"}`;
    sel.appendChild(o);
  }
  if (!pieces.length) sel.innerHTML = "<option value=''>no pieces yet</option>";
  sel.value = state.pieceId || "";
  return pieces;
}

async function openPiece(id, pieces = null, view = null) {
  const piece = await api.piece(id);
  state.pieceId = id;
  history.replaceState(null, "", `#piece=${id}`);
  await showPiece(piece, pieces, view);
}

async function showPiece(piece, pieces = null, view = null) {  // pieces: the listing, if the caller has it
  const changed = !state.piece || state.piece.id !== piece.id || state.version !== piece.current;
  if (!state.piece || state.piece.id !== piece.id) { state.muted.clear(); state.solo.clear(); }
  state.piece = piece;
  renderVersions();
  const listed = refreshPieceList(pieces);  // its "N versions" and length change with every step
  $("undo").disabled = !piece.can_undo;
  $("redo").disabled = !piece.can_redo;
  $("delete-piece").disabled = false;
  if (changed) await showVersion(piece.current, view);
  await listed;
}

async function showVersion(vid, view = null) {  // view: the zoom and scroll to keep (after a job)
  const samePiece = state.roll && state.rollPiece === state.pieceId;
  state.version = vid;
  audio.pause();
  if (!vid) {
    state.roll = null;
    state.rollPiece = null;
    roll.setData(null);
    audio.removeAttribute("src");
    $("audio-state").textContent = "";
    $("empty").hidden = false;
    renderParts();
    setDuration(0);
    return;
  }
  const data = await api.roll(state.pieceId, vid);
  if (state.version !== vid) return;  // another version was chosen meanwhile
  state.roll = data;
  state.rollPiece = state.pieceId;
  $("empty").hidden = true;
  roll.setData(data, Boolean(view || (samePiece && data.duration >= roll.duration() * 0.5)));
  if (view) roll.setView(view);
  renderParts();
  renderSections();
  setDuration(data.duration);
  loadAudio();
  seek(Math.min(state.point, data.duration));
}

function renderSections() {  // a button per section the song's markers name; a click selects its band
  const sections = (state.roll && state.roll.sections) || [];
  $("sections").hidden = !sections.length;
  state.section = null;
  const list = $("section-list");
  list.replaceChildren();
  sections.forEach((sec, i) => {
    const b = document.createElement("button");
    b.className = "ghost small section";
    b.dataset.index = String(i);
    b.textContent = `${sec.label} ${clock(sec.start)}`;
    b.onclick = () => selectSection(i);
    list.append(b);
  });
  $("section-like-pick").replaceChildren();
  sectionActions();
}

function sectionActions() {  // the section buttons work on a selected section, when no job runs and the model can edit
  const off = state.section == null || Boolean(state.job) || !state.caps.can_edit;
  $("section-regenerate").disabled = $("section-vary").disabled = off;
  $("section-like").disabled = off || !$("section-like-pick").options.length;
}

function selectSection(i) {  // the section's band becomes the span; "like" offers the sections as long as it
  const sections = state.roll.sections, sec = sections[i];
  state.section = i;
  state.span = [sec.start, sec.end];
  roll.setSelection(state.span);
  $("infill-span").textContent = `${sec.label}: ${clock(sec.start)} – ${clock(sec.end)}`;
  for (const b of $("section-list").children) b.classList.toggle("active", b.dataset.index === String(i));
  const pick = $("section-like-pick");
  pick.replaceChildren();
  sections.forEach((o, j) => {
    if (j === i || Math.abs((o.end - o.start) - (sec.end - sec.start)) > 1e-3) return;
    pick.append(new Option(`${o.label} ${clock(o.start)}`, String(j)));
  });
  sectionActions();
}

function renderVersions() {
  const list = $("versions");
  list.innerHTML = "";
  const p = state.piece;
  $("versions-note").textContent = p.versions.length ? `${p.versions.length} in all · click one to hear it` : "";
  [...p.versions].reverse().forEach((v) => {
    const li = document.createElement("li");
    li.dataset.version = v.id;
    if (v.id === p.current) li.classList.add("current");
    const num = document.createElement("span");
    num.className = "vnum";
    num.textContent = `v${v.number}`;
    const label = document.createElement("span");
    label.className = "vlabel";
    label.textContent = v.label;
    label.title = v.label;
    const facts = document.createElement("span");
    facts.className = "vfacts";
    facts.textContent = `${clock(v.seconds)} · ${v.notes} notes`;
    const mid = link("MIDI", api.midiUrl(p.id, v.id), "Download this version as MIDI");
    const wav = link("WAV", api.wavUrl(p.id, v.id, true), "Download this version as WAV audio");
    li.append(num, label, facts, mid, wav);
    if (v.id !== p.current) {
      const del = document.createElement("button");
      del.className = "del";
      del.textContent = "Delete";
      del.title = "Delete this version";
      del.onclick = guard(async (e) => { e.stopPropagation(); await showPiece(await api.deleteVersion(p.id, v.id)); });
      li.appendChild(del);
    }
    if (v.warnings && v.warnings.length) {  // an empty result must not pass as a normal one
      li.classList.add("warned");
      const warn = document.createElement("div");
      warn.className = "vwarn";
      warn.textContent = `⚠ ${v.warnings.join(" · ")}`;
      li.appendChild(warn);
    }
    li.onclick = guard(async () => { if (v.id !== state.piece.current) await showPiece(await api.select(p.id, v.id)); });
    list.appendChild(li);
  });
}

function link(text, href, title) {
  const a = document.createElement("a");
  a.textContent = text;
  a.href = href;
  a.title = title;
  a.setAttribute("download", "");
  a.onclick = (e) => e.stopPropagation();
  return a;
}

function renderParts() {
  const tracks = state.roll ? state.roll.tracks : [];
  const counts = new Map();
  for (const t of tracks) counts.set(t.instrument, (counts.get(t.instrument) || 0) + t.pitch.length);
  const writable = new Set(state.caps ? state.caps.instruments : []);
  for (const [id, checked, onlyWritable] of [["infill-instruments", false, true], ["arrange-keep", true, false]]) {
    const box = $(id);
    box.innerHTML = "";
    for (const inst of counts.keys()) {
      const l = document.createElement("label");
      const c = document.createElement("input");
      c.type = "checkbox";
      c.value = String(inst);
      c.checked = checked;
      if (onlyWritable && !writable.has(inst)) {
        c.disabled = true;
        l.className = "cannot";
        l.title = `This checkpoint never learned ${nameOf(inst)}, so it cannot write it.`;
      }
      const dot = document.createElement("i");
      dot.style.background = instrumentColor(inst);
      l.append(c, dot, document.createTextNode(nameOf(inst)));
      box.appendChild(l);
    }
  }
  const unwritable = [...counts.keys()].filter((i) => !writable.has(i)).map(nameOf);
  $("infill-note").textContent = unwritable.length
    ? `Greyed out: ${unwritable.join(", ")}. This checkpoint never learned ${unwritable.length > 1 ? "them" : "it"}, so it cannot rewrite ${unwritable.length > 1 ? "them" : "it"}.`
    : "";
  renderTracks(tracks);
}
// ----- tracks: one legend entry each, with mute and solo (doubled instruments stay apart) ----------

function audible(tracks) {  // the track indices that sound and show, or null for all of them
  const all = tracks.map((t) => t.index);
  const on = state.solo.size ? all.filter((i) => state.solo.has(i)) : all.filter((i) => !state.muted.has(i));
  return on.length === all.length ? null : on;
}

function trackName(t, tracks) {
  const same = tracks.filter((u) => u.instrument === t.instrument);
  if (same.length < 2) return nameOf(t.instrument);
  return `${nameOf(t.instrument)} ${t.name ? `“${t.name}”` : `#${same.indexOf(t) + 1}`}`;
}

function renderTracks(tracks) {
  const legend = $("legend");
  legend.innerHTML = "";
  for (const t of tracks) {
    const s = document.createElement("span");
    s.dataset.track = String(t.index);
    const dot = document.createElement("i");
    dot.style.background = instrumentColor(t.instrument);
    const count = document.createElement("em");
    count.textContent = `${t.pitch.length}`;
    const toggle = (set, letter, title) => {
      const b = document.createElement("button");
      b.className = `ghost tiny ${set.has(t.index) ? "on" : ""}`;
      b.textContent = letter;
      b.title = title;
      b.setAttribute("aria-pressed", String(set.has(t.index)));
      b.onclick = guard(async () => { if (!set.delete(t.index)) set.add(t.index); await applyMix(); });
      return b;
    };
    s.append(dot, document.createTextNode(trackName(t, tracks)), count,
      toggle(state.muted, "M", "Mute this track"), toggle(state.solo, "S", "Solo this track"));
    legend.appendChild(s);
  }
  const on = audible(tracks);
  for (const s of legend.children) s.classList.toggle("silent", on !== null && !on.includes(Number(s.dataset.track)));
  roll.setHidden(on === null ? null : new Set(tracks.map((t) => t.index).filter((i) => !on.includes(i))));
}

async function applyMix() {  // the roll and the audio follow mute and solo; playback goes on where it was
  if (!state.roll) return;
  renderTracks(state.roll.tracks);
  const playing = !audio.paused;
  loadAudio();
  if (playing && audio.getAttribute("src")) await audio.play();
}

function loadAudio() {  // the version as it sounds with the tracks muted and soloed
  const on = audible(state.roll.tracks);
  audio.pause();
  if (on && !on.length) {
    audio.removeAttribute("src");
    audio.load();
    $("audio-state").textContent = "every track is muted";
    return;
  }
  $("audio-state").textContent = "rendering audio…";
  audio.src = api.wavUrl(state.pieceId, state.version, false, on);
  audio.load();
}

const ticked = (id) => [...$(id).querySelectorAll("input:checked")].map((c) => Number(c.value));

// ----- transport ----------------------------------------------------------------------------------

function setDuration(d) { $("duration").textContent = clock(d); }

function continueNote() {  // said before the click: continuing from a point drops what follows it
  const fromPoint = document.querySelector("input[name=cont-from]:checked").value === "point";
  let after = 0;
  for (const t of (state.roll ? state.roll.tracks : [])) after += t.start.filter((x) => x >= state.point).length;
  $("cont-note").textContent = fromPoint && after
    ? `Everything from ${clock(state.point)} on is replaced: the ${after} note${after === 1 ? "" : "s"} after the point ` +
      "will not be in the new version (the old one stays in the list)." +
      (state.caps && state.caps.can_edit ? " “Continue and keep what follows” writes up to the next bar line instead." : "")
    : "";
  $("continue-keep").hidden = !fromPoint || !(state.caps && state.caps.can_edit);
}

function seek(t) {
  state.point = Math.max(0, t);
  $("time").textContent = clock(state.point);
  $("cont-point").textContent = clock(state.point);
  continueNote();
  if (audio.src && audio.readyState > 0) audio.currentTime = Math.min(state.point, audio.duration || state.point);
  roll.setPlayhead(state.point);
}

function tick() {
  if (!audio.paused) {
    state.point = audio.currentTime;
    $("time").textContent = clock(state.point);
    roll.setPlayhead(state.point, true);
    requestAnimationFrame(tick);
  }
}

async function togglePlay() {
  if (!state.version) return;
  if (audio.paused) {
    if (state.roll && state.point >= state.roll.duration - 0.05) seek(0);
    await audio.play();
  } else {
    audio.pause();
  }
}

audio.addEventListener("play", () => { $("play").textContent = "❚❚"; $("play").classList.add("playing"); requestAnimationFrame(tick); });
audio.addEventListener("pause", () => { $("play").textContent = "▶"; $("play").classList.remove("playing"); });
audio.addEventListener("ended", () => { seek(0); });
audio.addEventListener("loadedmetadata", () => {
  $("audio-state").textContent = "";
  if (state.point > 0) audio.currentTime = Math.min(state.point, audio.duration);
});
audio.addEventListener("error", () => {
  if (audio.getAttribute("src")) $("audio-state").textContent = "no audio for this version";
});

// ----- jobs ---------------------------------------------------------------------------------------

function sampling() {
  const num = (id) => ($(id).value === "" ? null : Number($(id).value));
  return { temperature: num("temperature") ?? state.info.defaults.temperature, top_p: num("top-p"), seed: num("seed") };
}

async function ensurePiece() {
  if (!state.pieceId) await openPiece((await api.createPiece("untitled")).id);
}

function steering(prefix) {  // the tab's style / key / density selects ("": the model chooses)
  const pick = (what) => $(`${prefix}-${what}`).value || null;
  return { style: pick("style"), key: pick("key"), density: pick("density") };
}

function jobBody(kind) {
  const num = (id) => ($(id).value === "" ? null : Number($(id).value));
  const s = { ...sampling(), ...(CHORD_FIELD[kind] ? chordRequest(kind) : {}) };
  if (kind === "generate") {
    return { ...s, ...steering("gen"), instruments: chips($("gen-instruments")), tempo: num("gen-tempo"),
      seconds: num("gen-seconds") ?? 30, time_signature: $("gen-meter").value || null,
      form: $("gen-form").value.trim() || null };
  }
  if (kind === "continue") {
    const fromPoint = document.querySelector("input[name=cont-from]:checked").value === "point";
    return { ...s, seconds: num("cont-seconds") ?? 20, tempo: num("cont-tempo"), at_seconds: fromPoint ? state.point : null };
  }
  if (kind === "continue-keep") {  // an infill from the point to the first bar line after the length
    const want = state.point + (num("cont-seconds") ?? 20);
    const bar = state.roll ? state.roll.bars.find((t) => t >= want - 1e-6) : undefined;
    return { ...s, start_s: state.point, end_s: bar ?? want, num_samples: 1 };
  }
  if (kind === "like-self" || kind === "like-other") {  // a section as a variation of itself, or like another
    const sec = state.roll && state.roll.sections[state.section];
    if (!sec) throw new Error("choose a section first: click one under Sections");
    const like = kind === "like-self" ? sec : state.roll.sections[Number($("section-like-pick").value)];
    if (!like) throw new Error("no section of the same length to make it like");
    return { ...s, ...steering("infill"), start_s: sec.start, end_s: sec.end, like_start_s: like.start, like_end_s: like.end };
  }
  if (kind === "infill" || kind === "section-regenerate") {
    if (!state.span) throw new Error("choose a span first: drag across the roll");
    const only = ticked("infill-instruments");
    return { ...s, ...steering("infill"), start_s: state.span[0], end_s: state.span[1],
      instruments: only.length ? only : null, num_samples: num("infill-n") ?? 1 };
  }
  return { ...s, ...steering("arrange"), add: chips($("arrange-add")), keep: ticked("arrange-keep"),
    num_samples: num("arrange-n") ?? 1 };
}

async function startJob(kind) {
  if (state.job) throw new Error("a job of this page is still running: wait for it or cancel it");
  await ensurePiece();
  const field = CHORD_FIELD[kind] ? $(`${CHORD_FIELD[kind]}-chords`) : null;  // a like job takes no chords
  if (field && !(await checkChords(field))) throw new Error($(`${field.id}-note`).textContent);
  const body = jobBody(kind);
  if (kind === "generate" && !body.instruments.length) body.instruments = null;
  const route = { "continue-keep": "infill", "section-regenerate": "infill", "like-self": "like", "like-other": "like" };
  const job = await api.submit(state.pieceId, route[kind] || kind, body);
  state.job = job;
  state.jobView = state.roll ? roll.view() : null;  // where the user was looking: the result opens there
  state.jobSpan = body.seconds || (body.end_s ? body.end_s - body.start_s : (state.roll ? state.roll.duration : 0));
  state.variants = null;
  $("variants").hidden = true;
  audio.pause();
  setBusy(true);
  showJob(job);
  await followJob(job);
}

function setBusy(busy) {
  $("job").hidden = !busy;
  for (const id of ["generate", "continue"]) $(id).disabled = busy;
  for (const el of document.querySelectorAll(".edit-action")) el.disabled = busy || !state.caps.can_edit;
  sectionActions();
}

function showJob(j) {
  const verb = { generate: "Generating", continue: "Continuing", infill: "Filling the span", arrange: "Arranging",
    like: "Writing a variation" }[j.kind];
  let text;
  if (j.status === "queued") text = `Waiting in line: ${j.position} job${j.position === 1 ? "" : "s"} ahead`;
  else if (j.status === "running") text = `${verb}… ${j.notes_total} notes (${j.tokens} tokens)`;
  else text = j.status;
  $("job-status").textContent = text;
  const span = state.jobSpan;
  const notes = roll.preview;
  let done = 0;
  if (span && notes.length) done = (notes[notes.length - 1][0] - notes[0][0]) / Math.max(0.1, span);
  $("job-bar").style.width = `${Math.round(100 * Math.min(1, Math.max(0, done)))}%`;
}

async function followJob(job) {
  let since = 0;
  let j = job;
  roll.clearPreview();
  try {
    while (j.status === "queued" || j.status === "running") {
      j = await api.job(job.id, since, 2);
      roll.addPreview(j.notes);
      if (j.notes.length) $("empty").hidden = true;  // the first notes of a new piece: nothing to drop here now
      since += j.notes.length;
      showJob(j);
      if (j.notes.length) await new Promise((ok) => setTimeout(ok, POLL_GAP_MS));  // gather a few notes per answer
    }
    roll.clearPreview();
    if (!state.version) $("empty").hidden = false;
    if (j.status === "done") {
      await openPiece(j.piece, null, state.jobView);
      if (j.versions.length > 1) showVariants(j.versions);
      const made = state.piece.versions.find((v) => v.id === j.versions[0]);
      if (made && made.warnings && made.warnings.length) toast(made.warnings.join(" · "), "warn");
    } else if (j.status === "failed") {
      toast(j.error || "the job failed");
    } else {
      toast("Cancelled.", "info");
    }
  } finally {
    state.job = null;
    setBusy(false);  // only now: the result is on the page
  }
}

function showVariants(vids) {
  state.variants = vids;
  const bar = $("variants");
  bar.innerHTML = "";
  bar.append(`${vids.length} variants:`);
  vids.forEach((vid, i) => {
    const b = document.createElement("button");
    b.textContent = String(i + 1);
    b.className = `ghost small ${state.piece.current === vid ? "current" : ""}`;
    b.onclick = guard(async () => { await showPiece(await api.select(state.pieceId, vid)); showVariants(vids); });
    bar.appendChild(b);
  });
  const keep = document.createElement("button");
  keep.textContent = "Keep this one";
  keep.className = "small";
  keep.onclick = guard(async () => {
    let piece = state.piece;
    for (const vid of vids) if (vid !== piece.current) piece = await api.deleteVersion(state.pieceId, vid);
    bar.hidden = true;
    await showPiece(piece);
  });
  bar.appendChild(keep);
  bar.hidden = false;
}

// ----- uploads ------------------------------------------------------------------------------------

async function uploadFile(file) {
  if (!file) return;
  if (state.info && file.size > state.info.limits.upload_bytes) {
    throw new Error(`${file.name} is too large: the studio takes MIDI files up to ${state.info.limits.upload_bytes >> 20} MiB`);
  }
  const piece = await api.upload(file);
  state.point = 0;
  await openPiece(piece.id);
  toast(`Opened ${piece.name}.`, "info");
}

let dragDepth = 0;
window.addEventListener("dragenter", (e) => { e.preventDefault(); dragDepth++; $("drop").hidden = false; });
window.addEventListener("dragover", (e) => e.preventDefault());
window.addEventListener("dragleave", () => { if (--dragDepth <= 0) { dragDepth = 0; $("drop").hidden = true; } });
window.addEventListener("drop", (e) => {
  e.preventDefault();
  dragDepth = 0;
  $("drop").hidden = true;
  guard(uploadFile)(e.dataTransfer.files[0]);
});

// ----- wiring -------------------------------------------------------------------------------------

function wire() {
  $("upload-button").onclick = () => $("upload-input").click();
  $("empty-upload").onclick = (e) => { e.preventDefault(); $("upload-input").click(); };
  $("upload-input").onchange = guard(async (e) => { const f = e.target.files[0]; e.target.value = ""; await uploadFile(f); });
  $("new-piece").onclick = guard(async () => { state.point = 0; await openPiece((await api.createPiece("untitled")).id); });
  $("piece-select").onchange = guard(async (e) => { if (e.target.value) { state.point = 0; await openPiece(e.target.value); } });
  $("delete-piece").onclick = guard(async () => {
    if (!state.pieceId || !confirm(`Delete “${state.piece.name}” and all its versions?`)) return;
    await api.deletePiece(state.pieceId);
    state.pieceId = state.piece = state.version = null;
    const pieces = await refreshPieceList();
    if (pieces.length) await openPiece(pieces[0].id); else await showVersion(null);
  });
  $("play").onclick = guard(togglePlay);
  $("undo").onclick = guard(async () => showPiece(await api.undo(state.pieceId)));
  $("redo").onclick = guard(async () => showPiece(await api.redo(state.pieceId)));
  $("zoom-in").onclick = () => roll.zoom(1.5);
  $("zoom-out").onclick = () => roll.zoom(1 / 1.5);
  $("seed-dice").onclick = () => { $("seed").value = String(Math.floor(Math.random() * 1e6)); };
  for (const kind of ["generate", "continue", "continue-keep", "infill", "arrange"]) {
    $(kind).onclick = guard(() => startJob(kind));
  }
  $("section-regenerate").onclick = guard(() => startJob("section-regenerate"));
  $("section-vary").onclick = guard(() => startJob("like-self"));
  $("section-like").onclick = guard(() => startJob("like-other"));
  $("cancel").onclick = guard(async () => { if (state.job) showJob(await api.cancel(state.job.id)); });
  $("gen-instrument-add").onclick = () => chip($("gen-instruments"), Number($("gen-instrument-pick").value));
  $("arrange-instrument-add").onclick = () => chip($("arrange-add"), Number($("arrange-instrument-pick").value));
  for (const tab of document.querySelectorAll(".tabs button")) {
    tab.onclick = () => {
      for (const t of document.querySelectorAll(".tabs button")) t.classList.toggle("active", t === tab);
      for (const b of document.querySelectorAll(".tab-body")) b.hidden = b.dataset.tab !== tab.dataset.tab;
    };
  }
  roll.onSeek = (t) => { document.querySelector("input[name=cont-from][value=point]").checked = true; seek(t); };
  for (const r of document.querySelectorAll("input[name=cont-from]")) r.onchange = continueNote;
  roll.onSelect = (sel) => {
    state.span = sel;
    $("infill-span").textContent = `${clock(sel[0])} – ${clock(sel[1])}`;
    fillChordsFrom(sel);
  };
  for (const f of document.querySelectorAll("[data-chords]")) f.addEventListener("input", () => chordsSoon(f));
  for (const b of document.querySelectorAll("[data-free-chords]")) {
    b.onchange = () => { const f = $(b.dataset.freeChords); f.disabled = b.checked; if (!b.checked) chordsSoon(f); };
  }
  document.addEventListener("keydown", (e) => {
    if (e.target.closest("input, select, textarea")) return;
    const mod = e.ctrlKey || e.metaKey;
    if (e.code === "Space") { e.preventDefault(); guard(togglePlay)(); }
    else if (mod && e.key.toLowerCase() === "z" && !e.shiftKey && !$("undo").disabled) { e.preventDefault(); $("undo").click(); }
    else if (mod && (e.key.toLowerCase() === "y" || (e.key.toLowerCase() === "z" && e.shiftKey)) && !$("redo").disabled) {
      e.preventDefault(); $("redo").click();
    }
  });
}

async function init() {
  // the first load carries ?token=…; the server has put it in a cookie, so keep it out of the address bar
  if (new URLSearchParams(location.search).has("token")) history.replaceState(null, "", location.pathname + location.hash);
  wire();
  const [info, pieces] = await Promise.all([api.info(), api.pieces()]);
  state.info = info;
  state.caps = info.capabilities;
  state.names = info.instruments.map((x) => x.name);
  showModel();
  fillSamplingDefaults(info.defaults);
  fillInstrumentPicker($("gen-instrument-pick"));
  fillInstrumentPicker($("arrange-instrument-pick"));
  setupSteering();
  setupChords();
  $("undo").disabled = $("redo").disabled = $("delete-piece").disabled = true;
  const wanted = new URLSearchParams(location.hash.slice(1)).get("piece");
  const first = pieces.find((p) => p.id === wanted) || pieces[0];
  if (first) {
    state.pieceId = first.id;
    await openPiece(first.id, pieces);
  } else {
    await refreshPieceList(pieces);
    await showVersion(null);
  }
  await setupTeach({ toast, guard, onModel: refreshModel });
  window.studioReady = true;
  document.body.dataset.ready = "true";
}

async function refreshModel() {  // another model was chosen: its instruments and controls replace these
  const info = await api.info();
  state.info = info;
  state.caps = info.capabilities;
  showModel();
  fillInstrumentPicker($("gen-instrument-pick"));
  fillInstrumentPicker($("arrange-instrument-pick"));
  setupSteering();
}

init().catch(fail);
