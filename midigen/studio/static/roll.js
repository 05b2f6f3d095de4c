// The piano roll: every track's notes on one canvas, drums in their own lane, bar lines from the song's
// meters, a chord lane (each bar's chords: the file's chord symbols, else the server's labeller's), a
// playhead, a selected span, and the notes of a running job drawn as they arrive. Dragging across the
// chord lane selects whole bars.
// Time runs left to right in seconds; a thin native scrollbar under the canvas scrolls it.

const GUTTER = 52;   // keyboard / lane labels
const RULER = 22;    // bar numbers
const LANE = 18;     // the chord lane under the ruler
const TOP = RULER + LANE;  // where the pitch rows start
const NAMES = ["C", "C♯", "D", "D♯", "E", "F", "F♯", "G", "G♯", "A", "A♯", "B"];
const BLACK = new Set([1, 3, 6, 8, 10]);
// one hue per General MIDI family of eight programs: pianos blue, basses orange, strings gold, ...
const HUES = [212, 282, 328, 96, 18, 46, 172, 34, 128, 192, 300, 252, 58, 145, 8, 0];

export function instrumentColor(inst, alpha = 1) {
  if (inst === 128) return `hsla(0, 0%, 78%, ${alpha})`;
  const hue = HUES[Math.floor(inst / 8)];
  const light = 58 + (inst % 8) * 2.5;
  return `hsla(${hue}, 72%, ${light}%, ${alpha})`;
}

export function clock(t) {
  t = Math.max(0, t || 0);
  const m = Math.floor(t / 60);
  const s = t - 60 * m;
  return `${m}:${s < 10 ? "0" : ""}${s.toFixed(1)}`;
}

export class PianoRoll {
  constructor(canvas, scroller, spacer) {
    this.canvas = canvas;
    this.scroller = scroller;
    this.spacer = spacer;
    this.ctx = canvas.getContext("2d");
    this.pps = 40;              // pixels per second
    this.data = null;
    this.preview = [];          // [start, dur, pitch, velocity, instrument]
    this.playhead = 0;
    this.selection = null;      // [a, b] seconds
    this.hidden = null;         // track indices muted (drawn faintly), or null
    this.onSeek = () => {};
    this.onSelect = () => {};
    this.pending = false;
    this._range();
    new ResizeObserver(() => { this._layout(); this.draw(); }).observe(canvas.parentElement);
    scroller.addEventListener("scroll", () => this.draw());
    this._listen();
  }

  // ----- state --------------------------------------------------------------------------------

  setData(roll, keepView = false) {
    this.data = roll;
    this.preview = [];
    if (!keepView) {
      const width = this.canvas.clientWidth - GUTTER - 20;
      const dur = Math.max(roll ? roll.duration : 0, 8);
      this.pps = Math.min(120, Math.max(8, width / dur));
      this.scroller.scrollLeft = 0;
    }
    this._range();
    this.draw();
  }

  addPreview(rows) {
    if (!rows.length) return;
    this.preview.push(...rows);
    this._range();
    const last = rows[rows.length - 1][0];
    this.follow(last);
    this.draw();
  }

  clearPreview() { this.preview = []; this._range(); this.draw(); }

  setPlayhead(t, follow = false) {
    this.playhead = t;
    this.canvas.dataset.playhead = t.toFixed(3);
    if (follow) this.follow(t);
    this.draw();
  }

  setSelection(sel) { this.selection = sel; this.draw(); }

  setHidden(indices) { this.hidden = indices; this.draw(); }

  view() { return { pps: this.pps, left: this.scroller.scrollLeft }; }

  setView(v) {  // back to a zoom and scroll saved with view()
    this.pps = v.pps;
    this._layout();
    this.scroller.scrollLeft = v.left;
    this.draw();
  }

  duration() {
    const d = this.data ? this.data.duration : 0;
    const p = this.preview.reduce((m, n) => Math.max(m, n[0] + n[1]), 0);
    return Math.max(d, p);
  }

  zoom(factor, atX = null) {
    const x = atX === null ? (this.canvas.clientWidth - GUTTER) / 2 : atX - GUTTER;
    const t = this._time(x + GUTTER);
    this.pps = Math.min(800, Math.max(2, this.pps * factor));
    this._layout();
    this.scroller.scrollLeft = Math.max(0, t * this.pps - x);
    this.draw();
  }

  follow(t) {  // keep time t in view, paging forward like a score
    const view = this.canvas.clientWidth - GUTTER;
    const x = t * this.pps - this.scroller.scrollLeft;
    if (x < 0 || x > view - 30) this.scroller.scrollLeft = Math.max(0, t * this.pps - view * 0.15);
  }

  // ----- geometry -----------------------------------------------------------------------------

  _layout() {
    const dpr = window.devicePixelRatio || 1;
    const w = this.canvas.clientWidth, h = this.canvas.clientHeight;
    if (this.canvas.width !== Math.round(w * dpr) || this.canvas.height !== Math.round(h * dpr)) {
      this.canvas.width = Math.round(w * dpr);
      this.canvas.height = Math.round(h * dpr);
    }
    this.ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    const content = (this.duration() + 4) * this.pps + GUTTER;
    this.spacer.style.width = `${Math.max(content, w)}px`;
  }

  _range() {
    let lo = 127, hi = 0;
    const drums = new Set();
    const see = (p, inst) => { if (inst === 128) drums.add(p); else { lo = Math.min(lo, p); hi = Math.max(hi, p); } };
    for (const tr of (this.data ? this.data.tracks : [])) {
      for (const p of tr.pitch) see(p, tr.instrument);
    }
    for (const n of this.preview) see(n[2], n[4]);
    if (lo > hi) { lo = 48; hi = 72; }
    const pad = Math.max(2, Math.ceil((24 - (hi - lo)) / 2));
    this.lo = Math.max(0, lo - pad);
    this.hi = Math.min(127, hi + pad);
    this.drumRows = [...drums].sort((a, b) => a - b);
    this._layout();
  }

  _areas() {
    const h = this.canvas.clientHeight;
    const drumH = this.drumRows.length ? Math.min(Math.max(this.drumRows.length * 9, 44), (h - TOP) * 0.3) : 0;
    const pitchH = h - TOP - drumH;
    return { h, drumH, pitchH, row: pitchH / (this.hi - this.lo + 1), drumRow: drumH / Math.max(1, this.drumRows.length) };
  }

  _x(t) { return GUTTER + t * this.pps - this.scroller.scrollLeft; }
  _time(x) { return Math.max(0, (x - GUTTER + this.scroller.scrollLeft) / this.pps); }

  // ----- drawing ------------------------------------------------------------------------------

  draw() {
    if (this.pending) return;
    this.pending = true;
    requestAnimationFrame(() => { this.pending = false; this._draw(); });
  }

  _draw() {
    const c = this.ctx, w = this.canvas.clientWidth, a = this._areas();
    const t0 = this._time(GUTTER), t1 = this._time(w);
    c.fillStyle = "#0d0f12";
    c.fillRect(0, 0, w, a.h);
    this._drawRows(c, w, a);
    this._drawGrid(c, w, a, t0, t1);
    this._drawChords(c, w, t0, t1);
    this._drawSections(c, a);
    this._drawSelection(c, a);
    this._drawNotes(c, a, t0, t1);
    this._drawGutter(c, a);
    this._drawPlayhead(c, a);
  }

  _drawRows(c, w, a) {
    for (let p = this.lo; p <= this.hi; p++) {
      const y = TOP + (this.hi - p) * a.row;
      if (BLACK.has(p % 12)) { c.fillStyle = "#111419"; c.fillRect(GUTTER, y, w - GUTTER, a.row); }
      if (p % 12 === 0) { c.fillStyle = "#232833"; c.fillRect(GUTTER, y + a.row - 1, w - GUTTER, 1); }
    }
    if (a.drumH) {
      c.fillStyle = "#101317";
      c.fillRect(GUTTER, TOP + a.pitchH, w - GUTTER, a.drumH);
      c.fillStyle = "#3a404c";
      c.fillRect(0, TOP + a.pitchH, w, 1);
    }
  }

  _drawGrid(c, w, a, t0, t1) {
    const d = this.data;
    c.fillStyle = "#15181e";
    c.fillRect(GUTTER, 0, w - GUTTER, RULER);
    if (!d) return;
    if (this.pps * this._spacing(d.beats) > 6) {
      c.fillStyle = "#1b1f27";
      for (const t of d.beats) if (t >= t0 && t <= t1) c.fillRect(Math.round(this._x(t)), TOP, 1, a.h - TOP);
    }
    const every = Math.max(1, Math.ceil(28 / Math.max(1e-6, this.pps * this._spacing(d.bars))));
    c.font = "11px system-ui, sans-serif";
    c.textBaseline = "middle";
    d.bars.forEach((t, i) => {
      if (t < t0 - 60 || t > t1) return;
      const x = Math.round(this._x(t));
      c.fillStyle = i % every === 0 ? "#363d4a" : "#262b35";
      c.fillRect(x, RULER - 6, 1, a.h);
      if (i % every === 0 && x >= GUTTER) { c.fillStyle = "#9aa3b2"; c.fillText(String(i + 1), x + 4, RULER / 2); }
    });
  }

  _drawChords(c, w, t0, t1) {  // each bar's names spread across it; a name only where the one before has ended
    c.fillStyle = "#12151a";
    c.fillRect(GUTTER, RULER, w - GUTTER, LANE);
    const bars = this.data ? (this.data.chords || []) : [];
    c.font = "11px system-ui, sans-serif";
    c.textBaseline = "middle";
    let previous = null, freeFrom = -Infinity;
    const drawn = [];
    bars.forEach((bar, k) => {
      const names = bar.chords.split(" ").filter(Boolean);
      const x0 = this._x(bar.start), x1 = this._x(bar.end);
      if (x1 >= GUTTER && x0 <= w) {
        c.fillStyle = k % 2 ? "#171b22" : "#1d222b";
        c.fillRect(Math.max(GUTTER, x0), RULER + 1, x1 - Math.max(GUTTER, x0), LANE - 2);
      }
      const width = (x1 - x0) / Math.max(1, names.length);
      names.forEach((name, i) => {
        const x = x0 + i * width + 3;
        if (name !== previous && x >= freeFrom) {
          if (x >= GUTTER && x <= w) { c.fillStyle = "#d9c58f"; c.fillText(name, x, RULER + LANE / 2); }
          freeFrom = x + c.measureText(name).width + 6;
          drawn.push(name);
        }
        previous = name;
      });
    });
    this.canvas.dataset.chords = drawn.join(" ");  // what the lane says, for tests and assistive reading
  }

  barsAt(a, b) {  // the bars a span [a, b] seconds covers most of, as [{start, end, chords}]
    const bars = this.data ? (this.data.chords || []) : [];
    return bars.filter((bar) => Math.min(b, bar.end) - Math.max(a, bar.start) >= (bar.end - bar.start) / 2);
  }

  _barSpan(t0, t1) {  // [t0, t1] widened to whole bars of the chord lane
    const bars = this.data ? (this.data.chords || []) : [];
    const inside = bars.filter((bar) => bar.end > Math.min(t0, t1) && bar.start <= Math.max(t0, t1));
    if (!inside.length) return [Math.min(t0, t1), Math.max(t0, t1)];
    return [inside[0].start, inside[inside.length - 1].end];
  }

  _spacing(ts) { return ts.length > 1 ? (ts[ts.length - 1] - ts[0]) / (ts.length - 1) : 1; }

  _drawSections(c, a) {  // a song's form: a band per section, one tint per label, its name at the top
    const sections = (this.data && this.data.sections) || [];
    const tints = {};
    c.font = "11px system-ui, sans-serif";
    c.textBaseline = "top";
    for (const sec of sections) {
      const base = sec.label.replace(/'+$/, "");
      if (!(base in tints)) tints[base] = Object.keys(tints).length % 3;
      const x0 = Math.max(GUTTER, this._x(sec.start)), x1 = this._x(sec.end);
      if (x1 <= x0) continue;
      c.fillStyle = ["rgba(246, 173, 85, 0.07)", "rgba(144, 205, 244, 0.07)", "rgba(183, 148, 244, 0.07)"][tints[base]];
      c.fillRect(x0, RULER, x1 - x0, a.h - RULER);
      c.fillStyle = "rgba(230, 232, 236, 0.35)";
      c.fillRect(Math.round(this._x(sec.start)), RULER, 1, a.h - RULER);
      if (this._x(sec.start) >= GUTTER) { c.fillStyle = "#c9d1dc"; c.fillText(sec.label, this._x(sec.start) + 4, RULER + 3); }
    }
  }

  _drawSelection(c, a) {
    if (!this.selection) return;
    const [s, e] = this.selection;
    const x0 = Math.max(GUTTER, this._x(s)), x1 = this._x(e);
    if (x1 <= x0) return;
    c.fillStyle = "rgba(79, 209, 197, 0.13)";
    c.fillRect(x0, 0, x1 - x0, a.h);
    c.fillStyle = "rgba(79, 209, 197, 0.8)";
    c.fillRect(x0, 0, x1 - x0, 3);
    c.fillRect(Math.round(this._x(s)), 0, 1, a.h);
    c.fillRect(Math.round(x1), 0, 1, a.h);
  }

  _noteRect(a, start, dur, pitch, inst) {
    const x = this._x(start), wpx = Math.max(2, dur * this.pps - 1);
    if (inst === 128) {
      const i = this.drumRows.indexOf(pitch);
      const y = TOP + a.pitchH + i * a.drumRow;
      return [x, y + 1, Math.max(3, Math.min(wpx, 6)), Math.max(2, a.drumRow - 2)];
    }
    if (pitch < this.lo || pitch > this.hi) return null;
    return [x, TOP + (this.hi - pitch) * a.row + 0.5, wpx, Math.max(2, a.row - 1)];
  }

  _drawNotes(c, a, t0, t1) {
    const muted = (tr) => Boolean(this.hidden && this.hidden.has(tr.index));
    const tracks = [...(this.data ? this.data.tracks : [])].sort((x, y) => muted(y) - muted(x));  // muted below
    for (const tr of tracks) {
      const n = tr.start.length;
      const faint = muted(tr);
      for (let i = 0; i < n; i++) {
        const s = tr.start[i], d = tr.duration[i];
        if (s > t1 || s + d < t0) continue;
        const r = this._noteRect(a, s, d, tr.pitch[i], tr.instrument);
        if (!r) continue;
        c.fillStyle = faint ? "rgba(120, 128, 140, 0.18)" : instrumentColor(tr.instrument, 0.45 + 0.55 * tr.velocity[i] / 127);
        c.fillRect(r[0], r[1], r[2], r[3]);
      }
    }
    c.lineWidth = 1;
    for (const [s, d, p, v, inst] of this.preview) {
      if (s > t1 || s + d < t0) continue;
      const r = this._noteRect(a, s, d, p, inst);
      if (!r) continue;
      c.fillStyle = instrumentColor(inst, 0.9);
      c.fillRect(r[0], r[1], r[2], r[3]);
      c.strokeStyle = "rgba(255, 255, 255, 0.85)";
      c.strokeRect(r[0] + 0.5, r[1] + 0.5, r[2] - 1, r[3] - 1);
    }
  }

  _drawGutter(c, a) {
    c.fillStyle = "#15181e";
    c.fillRect(0, 0, GUTTER, a.h);
    c.font = "10px system-ui, sans-serif";
    c.textBaseline = "middle";
    for (let p = this.lo; p <= this.hi; p++) {
      const y = TOP + (this.hi - p) * a.row;
      c.fillStyle = BLACK.has(p % 12) ? "#2a2f38" : "#c9ced6";
      c.fillRect(GUTTER - 14, y + 0.5, 14, Math.max(1, a.row - 1));
      if (p % 12 === 0 && a.row * 12 > 22) {
        c.fillStyle = "#8b93a1";
        c.fillText(`${NAMES[0]}${Math.floor(p / 12) - 1}`, 6, y + a.row / 2);
      }
    }
    if (a.drumH) {
      c.fillStyle = "#8b93a1";
      c.fillText("Drums", 6, TOP + a.pitchH + a.drumH / 2);
    }
    c.fillStyle = "#8b93a1";
    c.fillText("Chords", 6, RULER + LANE / 2);
    c.fillStyle = "#2e333d";
    c.fillRect(GUTTER - 1, 0, 1, a.h);
  }

  _drawPlayhead(c, a) {
    const x = Math.round(this._x(this.playhead));
    if (x < GUTTER) return;
    c.fillStyle = "#f2b84b";
    c.fillRect(x, 0, 2, a.h);
    c.beginPath();
    c.moveTo(x - 5, 0); c.lineTo(x + 7, 0); c.lineTo(x + 1, 8); c.closePath();
    c.fill();
  }

  // ----- input --------------------------------------------------------------------------------

  _listen() {
    const cv = this.canvas;
    let down = null;
    cv.addEventListener("pointerdown", (e) => {
      if (e.offsetX < GUTTER) return;
      const lane = e.offsetY >= RULER && e.offsetY < TOP && this.data && (this.data.chords || []).length > 0;
      down = { x: e.offsetX, t: this._time(e.offsetX), dragging: false, ruler: e.offsetY < RULER, lane };
      cv.setPointerCapture(e.pointerId);
    });
    cv.addEventListener("pointermove", (e) => {
      if (!down || down.ruler) return;
      if (Math.abs(e.offsetX - down.x) > 4) down.dragging = true;
      if (down.dragging) {
        const t = this._time(e.offsetX);
        this.setSelection(down.lane ? this._barSpan(down.t, t) : [Math.min(t, down.t), Math.max(t, down.t)]);
      }
    });
    cv.addEventListener("pointerup", (e) => {
      if (!down) return;
      if (!down.dragging && down.lane) {  // a click on the lane selects its bar
        this.setSelection(this._barSpan(down.t, down.t));
        down.dragging = true;
      }
      if (down.dragging) this.onSelect(this.selection);
      else this.onSeek(Math.min(down.t, this.duration()));
      down = null;
    });
    cv.addEventListener("wheel", (e) => {
      e.preventDefault();
      if (e.ctrlKey || e.metaKey) this.zoom(e.deltaY < 0 ? 1.2 : 1 / 1.2, e.offsetX);
      else this.scroller.scrollLeft += Math.abs(e.deltaX) > Math.abs(e.deltaY) ? e.deltaX : e.deltaY;
    }, { passive: false });
  }
}
