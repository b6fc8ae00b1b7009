// ganseg annotate: the page. Plain JS, no build step, nothing fetched from elsewhere.
//
// Hard edges by construction: the mask is a Uint8Array of class indices that every tool writes
// into directly; canvases only *display* it (drawn with image smoothing off). What is saved is that
// array, byte for byte, so every saved pixel is a class index — no anti-aliased edge can exist.
// Undo/redo store per-operation diffs: the mask is copied when an operation starts and compared when
// it ends (changed indices with their before/after values, or both whole masks when most pixels
// changed). Typed arrays only: no Map or Set, whose 2^24-entry limit once stopped a fill on a 6000²
// image half-way. Each image's mask is "reviewed" (the person's: saved as NAME_mask.png) or
// "proposed" (a head's proposal not yet edited or accepted: saved as NAME_proposed.png).
"use strict";

const $ = (id) => document.getElementById(id);
const api = async (method, path, body) => {
  const r = await fetch(path, {method, headers: body ? {"Content-Type": "application/json"} : {},
                               body: body ? JSON.stringify(body) : undefined});
  const data = await r.json().catch(() => ({error: `HTTP ${r.status} with no JSON body`}));
  if (!r.ok) { const e = new Error(data.error || `HTTP ${r.status}`); e.status = r.status; throw e; }
  return data;
};
const b64encode = (bytes) => {
  let s = "";
  for (let i = 0; i < bytes.length; i += 0x8000) s += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  return btoa(s);
};
const b64decode = (text) => Uint8Array.from(atob(text), (c) => c.charCodeAt(0));
const hexToRgb = (h) => [1, 3, 5].map((i) => parseInt(h.slice(i, i + 2), 16));

const S = {
  images: [], classes: [], byName: {}, current: null, tool: "brush", cls: 1, size: 5, opacity: 0.55,
  zoom: 1, panX: 0, panY: 0, showUnc: true, uncertain: 0.35, propose: null, commands: [],
  stroke: null, poly: [], panning: null, spaceDown: false, hover: null, pendingApply: false, offline: false,
};

// ------------------------------------------------------------------ per-image session

function session(name) {
  // Everything the page holds for one image; kept while navigating so undo and unsaved edits survive.
  const e = S.byName[name];
  if (!e.s) e.s = {mask: new Uint8Array(e.width * e.height), unc: null, undo: [], redo: [], version: "none",
                   kind: "reviewed", edits: 0, savedEdits: 0, saving: null, conflict: false, loaded: null, img: null};
  return e.s;
}

async function loadImage(name) {
  const e = S.byName[name], s = session(name);
  if (!s.loaded) s.loaded = (async () => {
    const img = new Image();
    img.src = `/api/image/${name}`;
    await img.decode();
    s.img = document.createElement("canvas");
    s.img.width = e.width; s.img.height = e.height;
    s.img.getContext("2d").drawImage(img, 0, 0);
    const m = await api("GET", `/api/mask/${name}`);
    s.version = m.version;
    s.kind = m.kind === "proposed" ? "proposed" : "reviewed";
    if (m.data) s.mask.set(b64decode(m.data));
    layersFor = null;
    if (m.error) showError(`${m.error} — starting from an empty mask; the file is kept as a backup when you save.`);
  })();
  return s.loaded;
}

// ------------------------------------------------------------------ editing primitives

function beginOp() { const s = session(S.current); S.stroke = {s, before: s.mask.slice(), kind: s.kind}; }
function setPixel(s, i, v) {
  if (s.mask[i] === v) return;
  s.mask[i] = v;
  if (s.unc) s.unc[i] = 0; // a pixel the person touched is no longer "uncertain"
}
function endOp(kind = "reviewed") {
  // kind after the operation: "reviewed" for the person's edits, "proposed" when a proposal is applied
  const op = S.stroke;
  S.stroke = null;
  if (!op) return;
  const s = op.s, before = op.before, after = s.mask, n = after.length;
  let count = 0;
  for (let i = 0; i < n; i++) if (before[i] !== after[i]) count++;
  if (count === 0 && kind === op.kind) return;
  let rec;
  if (count * 5 > n * 2) rec = {before, after: after.slice()}; // most pixels: two whole masks are smaller
  else {
    const idx = new Int32Array(count), b = new Uint8Array(count), a = new Uint8Array(count);
    for (let i = 0, k = 0; i < n; i++) if (before[i] !== after[i]) { idx[k] = i; b[k] = before[i]; a[k++] = after[i]; }
    rec = {idx, before: b, after: a};
  }
  rec.kindBefore = op.kind; rec.kindAfter = kind;
  s.kind = kind;
  s.undo.push(rec);
  s.redo = [];
  changed(s, rec.idx);
}
function changed(s, idx) {
  // idx (sorted changed pixel indices): only the rows between the first and the last are recoloured
  if (idx && layersFor === s) {
    const e = S.byName[S.current], w = e.width;
    if (idx.length) markDirty(e, 0, Math.floor(idx[0] / w), w, Math.floor(idx[idx.length - 1] / w) + 1);
  }
  else layersFor = null;
  s.edits++; render(); renderList(); scheduleSave();
}

function stamp(s, e, cx, cy, value) {
  // Disc brush of diameter S.size centred on pixel (cx, cy); even sizes centre between pixels.
  const d = S.size, lo = -Math.floor(d / 2), c = d % 2 ? 0 : -0.5, r2 = (d / 2) * (d / 2);
  for (let dy = lo; dy < lo + d; dy++) for (let dx = lo; dx < lo + d; dx++) {
    if ((dx - c) * (dx - c) + (dy - c) * (dy - c) > r2) continue;
    const x = cx + dx, y = cy + dy;
    if (x >= 0 && y >= 0 && x < e.width && y < e.height) setPixel(s, y * e.width + x, value);
  }
  markDirty(e, cx + lo, cy + lo, cx + lo + d, cy + lo + d);
}
function line(x0, y0, x1, y1, fn) { // Bresenham: every pixel between two mouse samples
  const dx = Math.abs(x1 - x0), dy = -Math.abs(y1 - y0), sx = x0 < x1 ? 1 : -1, sy = y0 < y1 ? 1 : -1;
  let err = dx + dy;
  for (;;) {
    fn(x0, y0);
    if (x0 === x1 && y0 === y1) return;
    const e2 = 2 * err;
    if (e2 >= dy) { err += dy; x0 += sx; }
    if (e2 <= dx) { err += dx; y0 += sy; }
  }
}
function flood(s, e, x, y, value) {
  // 4-connected region of the clicked pixel's class, by scanlines: each popped seed fills its whole
  // run in the row, then pushes one seed per run of the class in the rows above and below. The
  // stack is a growable Int32Array (at most one seed per run), so any image size works.
  const w = e.width, h = e.height, m = s.mask, unc = s.unc, from = m[y * w + x];
  if (from === value) return 0;
  let stack = new Int32Array(1024), sp = 0, filled = 0;
  const push = (i) => {
    if (sp === stack.length) { const t = new Int32Array(stack.length * 2); t.set(stack); stack = t; }
    stack[sp++] = i;
  };
  push(y * w + x);
  while (sp) {
    const i = stack[--sp];
    if (m[i] !== from) continue;
    const row = i - (i % w);
    let l = i, r = i;
    while (l > row && m[l - 1] === from) l--;
    while (r < row + w - 1 && m[r + 1] === from) r++;
    m.fill(value, l, r + 1);
    if (unc) unc.fill(0, l, r + 1);
    filled += r - l + 1;
    for (const adj of [row - w, row + w]) {
      if (adj < 0 || adj >= w * h) continue;
      let inRun = false;
      for (let k = l - row + adj, end = r - row + adj; k <= end; k++) {
        if (m[k] === from) { if (!inRun) { push(k); inRun = true; } } else inRun = false;
      }
    }
  }
  return filled;
}
function fillPolygon(s, e, pts, value) { // pixel centres inside the polygon (even-odd rule)
  for (let y = 0; y < e.height; y++) {
    const yc = y + 0.5, xs = [];
    for (let k = 0; k < pts.length; k++) {
      const [ax, ay] = pts[k], [bx, by] = pts[(k + 1) % pts.length];
      if ((ay <= yc) !== (by <= yc)) xs.push(ax + (yc - ay) * (bx - ax) / (by - ay));
    }
    xs.sort((a, b) => a - b);
    for (let k = 0; k + 1 < xs.length; k += 2)
      for (let x = Math.max(0, Math.ceil(xs[k] - 0.5)); x < e.width && x + 0.5 < xs[k + 1]; x++) setPixel(s, y * e.width + x, value);
  }
}
function paintValue() { return S.tool === "eraser" ? 0 : S.cls; }

function undo(redo = false) {
  const s = session(S.current), from = redo ? s.redo : s.undo, to = redo ? s.undo : s.redo;
  const op = from.pop();
  if (!op) return status(redo ? "nothing to redo" : "nothing to undo");
  const vals = redo ? op.after : op.before, idx = op.idx;
  if (idx) for (let k = 0; k < idx.length; k++) s.mask[idx[k]] = vals[k];
  else s.mask.set(vals);
  s.kind = redo ? op.kindAfter : op.kindBefore; // undoing a proposal's edit makes it a proposal again
  to.push(op);
  changed(s, idx);
}
function accept() {
  // The proposal on screen is right as it is: keep it as the person's (reviewed) mask.
  const s = session(S.current);
  if (s.kind !== "proposed") return status(`${S.current}: nothing to accept (this mask is already reviewed)`);
  beginOp(); endOp("reviewed");
  status(`${S.current}: proposal accepted as reviewed; saved as ${S.current}_mask.png`);
}

// ------------------------------------------------------------------ view

const canvas = $("canvas"), ctx = canvas.getContext("2d");
let maskCanvas = document.createElement("canvas"), uncCanvas = document.createElement("canvas"), frame = 0;
// The colour layers are rebuilt whole only when the image, its uncertainty or the classes changed
// (loads, palette edits set layersFor = null), never on hover, pan or zoom; an edit recolours only
// the rectangle it touched (`dirty`): a pass over a 36 MP mask takes ~0.1-0.3 s, a brush dab's
// square a few microseconds. `layerStats` counts both kinds of pass (the browser test reads it).
let layersFor = null, md = null, ud = null, dirty = null;
const layerStats = {full: 0, partial: 0, pixels: 0};

function markDirty(e, x0, y0, x1, y1) {
  x0 = Math.max(0, x0); y0 = Math.max(0, y0); x1 = Math.min(e.width, x1); y1 = Math.min(e.height, y1);
  if (x0 >= x1 || y0 >= y1) return;
  dirty = dirty ? [Math.min(dirty[0], x0), Math.min(dirty[1], y0), Math.max(dirty[2], x1), Math.max(dirty[3], y1)]
                : [x0, y0, x1, y1];
}

function toPixel(ev) {
  const r = canvas.getBoundingClientRect();
  return [(ev.clientX - r.left - S.panX) / S.zoom, (ev.clientY - r.top - S.panY) / S.zoom];
}
function fitZoom(e) {
  // The whole image in the view: the largest whole factor when it fits at 1x or more, else the
  // largest 1/n (every n-th pixel shown, evenly) that fits.
  const r = Math.min(canvas.clientWidth / e.width, canvas.clientHeight / e.height);
  return r >= 1 ? Math.floor(r) : 1 / Math.ceil(1 / r);
}
function clampZoom(z) {
  const e = S.byName[S.current], lo = e ? Math.min(0.25, fitZoom(e)) : 0.25; // never too small to see all of it
  return Math.min(64, Math.max(lo, z));
}
function fit() {
  const e = S.byName[S.current];
  if (!e) return;
  const z = fitZoom(e);
  setView(z, Math.round((canvas.clientWidth - e.width * z) / 2), Math.round((canvas.clientHeight - e.height * z) / 2));
}
function setView(zoom, panX, panY) {
  S.zoom = clampZoom(zoom); S.panX = panX; S.panY = panY;
  $("zoom-value").textContent = `${+S.zoom.toFixed(S.zoom < 1 ? 3 : 2)}×`;
  render();
}
function zoomAt(factor, cx, cy) {
  const z = clampZoom(S.zoom * factor);
  setView(z, cx - (cx - S.panX) * z / S.zoom, cy - (cy - S.panY) * z / S.zoom);
}

function render() {
  if (frame) return;
  frame = requestAnimationFrame(draw);
}
function draw() {
  frame = 0;
  const w = canvas.clientWidth, h = canvas.clientHeight;
  if (canvas.width !== w || canvas.height !== h) { canvas.width = w; canvas.height = h; }
  ctx.setTransform(1, 0, 0, 1, 0, 0);
  ctx.clearRect(0, 0, w, h);
  const e = S.byName[S.current];
  if (!e || !e.s || !e.s.img) return;
  const s = e.s;
  if (layersFor !== s) { buildLayers(e, s); layersFor = s; dirty = null; }
  else if (dirty) { paintLayers(e, s, dirty); dirty = null; }
  ctx.imageSmoothingEnabled = false;
  ctx.setTransform(S.zoom, 0, 0, S.zoom, S.panX, S.panY);
  ctx.drawImage(s.img, 0, 0);
  ctx.globalAlpha = S.opacity;
  ctx.drawImage(maskCanvas, 0, 0);
  ctx.globalAlpha = 1;
  if (S.showUnc && s.unc) ctx.drawImage(uncCanvas, 0, 0);
  ctx.setTransform(1, 0, 0, 1, 0, 0);
  ctx.strokeStyle = "#fff"; ctx.lineWidth = 1;
  if (S.poly.length) { // polygon being drawn (display only)
    ctx.beginPath();
    S.poly.forEach(([x, y], k) => ctx[k ? "lineTo" : "moveTo"](S.panX + x * S.zoom, S.panY + y * S.zoom));
    if (S.hover) ctx.lineTo(S.panX + S.hover[0] * S.zoom, S.panY + S.hover[1] * S.zoom);
    ctx.stroke();
  } else if (S.hover && (S.tool === "brush" || S.tool === "eraser")) { // brush outline
    const d = S.size * S.zoom, cx = Math.floor(S.hover[0]) + (S.size % 2 ? 0.5 : 0), cy = Math.floor(S.hover[1]) + (S.size % 2 ? 0.5 : 0);
    ctx.beginPath(); ctx.arc(S.panX + cx * S.zoom, S.panY + cy * S.zoom, d / 2, 0, 2 * Math.PI); ctx.stroke();
  }
}

function buildLayers(e, s) {
  const w = e.width, h = e.height;
  if (!md || md.width !== w || md.height !== h) { md = new ImageData(w, h); maskCanvas.width = w; maskCanvas.height = h; }
  if (s.unc && (!ud || ud.width !== w || ud.height !== h)) { ud = new ImageData(w, h); uncCanvas.width = w; uncCanvas.height = h; }
  layerStats.full++;
  paintLayers(e, s, [0, 0, w, h]);
}
function paintLayers(e, s, [x0, y0, x1, y1]) {
  // Recolour the rectangle [x0, x1) x [y0, y1) of both layers from the mask and its uncertainty.
  const w = e.width, mask = s.mask, unc = s.unc;
  // one 32-bit RGBA word per pixel (little-endian: A B G R); class 0 transparent, unknown classes white
  const m32 = new Uint32Array(md.data.buffer), pal = new Uint32Array(256).fill(0xffffffff);
  S.classes.forEach((c, i) => { const [r, g, b] = hexToRgb(c.color); pal[i] = ((255 << 24) | (b << 16) | (g << 8) | r) >>> 0; });
  pal[0] = 0;
  for (let y = y0; y < y1; y++) for (let i = y * w + x0, end = y * w + x1; i < end; i++) m32[i] = pal[mask[i]];
  maskCanvas.getContext("2d").putImageData(md, 0, 0, x0, y0, x1 - x0, y1 - y0);
  if (x0 || y0 || x1 !== w || y1 !== e.height) { layerStats.partial++; layerStats.pixels += (x1 - x0) * (y1 - y0); }
  if (!unc || !ud) return; // no proposal on this image: the uncertainty layer is not drawn
  const u32 = new Uint32Array(ud.data.buffer), thr = S.uncertain * 255, black = 170 << 24 >>> 0, white = (black | 0xffffff) >>> 0;
  for (let y = y0; y < y1; y++) { // black/white checkerboard: no class colour looks like it
    for (let x = x0, i = y * w + x0; x < x1; x++, i++) u32[i] = unc[i] > thr ? ((x + y) & 1 ? white : black) : 0;
  }
  uncCanvas.getContext("2d").putImageData(ud, 0, 0, x0, y0, x1 - x0, y1 - y0);
}

// ------------------------------------------------------------------ pointer input

canvas.addEventListener("pointerdown", (ev) => {
  const e = S.byName[S.current];
  if (!e || !e.s || !e.s.img) return;
  canvas.setPointerCapture(ev.pointerId);
  if (ev.button === 1 || (ev.button === 0 && S.spaceDown)) {
    S.panning = [ev.clientX - S.panX, ev.clientY - S.panY];
    return;
  }
  if (ev.button !== 0) return;
  const [fx, fy] = toPixel(ev), x = Math.floor(fx), y = Math.floor(fy), s = e.s;
  const inside = x >= 0 && y >= 0 && x < e.width && y < e.height;
  if (S.tool === "brush" || S.tool === "eraser") {
    beginOp(); stamp(s, e, x, y, paintValue()); S.last = [x, y]; render();
  } else if (S.tool === "fill" && inside) {
    beginOp(); flood(s, e, x, y, paintValue()); endOp();
  } else if (S.tool === "polygon") {
    const p0 = S.poly[0];
    if (S.poly.length >= 3 && Math.hypot(fx - p0[0], fy - p0[1]) * S.zoom < 8) closePolygon();
    else { S.poly.push([fx, fy]); render(); }
  }
});
canvas.addEventListener("pointermove", (ev) => {
  S.hover = toPixel(ev);
  if (S.panning) { setView(S.zoom, ev.clientX - S.panning[0], ev.clientY - S.panning[1]); return; }
  if (S.stroke && S.last) {
    const e = S.byName[S.current], x = Math.floor(S.hover[0]), y = Math.floor(S.hover[1]), v = paintValue();
    line(S.last[0], S.last[1], x, y, (px, py) => stamp(e.s, e, px, py, v));
    S.last = [x, y];
  }
  render();
});
const endPointer = () => { S.panning = null; if (S.stroke) { S.last = null; endOp(); } };
canvas.addEventListener("pointerup", endPointer);
canvas.addEventListener("pointercancel", endPointer);
canvas.addEventListener("pointerleave", () => { S.hover = null; render(); });
canvas.addEventListener("dblclick", () => { if (S.poly.length >= 3) closePolygon(); });
canvas.addEventListener("wheel", (ev) => {
  ev.preventDefault();
  const r = canvas.getBoundingClientRect();
  zoomAt(ev.deltaY < 0 ? 1.25 : 0.8, ev.clientX - r.left, ev.clientY - r.top);
}, {passive: false});
canvas.addEventListener("contextmenu", (ev) => ev.preventDefault());

function closePolygon() {
  const e = S.byName[S.current], pts = S.poly;
  S.poly = [];
  if (pts.length < 3) return render();
  beginOp(); fillPolygon(e.s, e, pts, paintValue()); endOp();
}

// ------------------------------------------------------------------ keys

const TOOLS = {b: "brush", e: "eraser", g: "fill", l: "polygon"};
document.addEventListener("keydown", (ev) => {
  if (ev.target.matches("input[type=text], textarea")) return; // only while a name is being edited
  const k = ev.key, ctrl = ev.ctrlKey || ev.metaKey;
  if (ctrl && (k === "z" || k === "Z")) { ev.preventDefault(); undo(ev.shiftKey); return; }
  if (ctrl && k === "y") { ev.preventDefault(); undo(true); return; }
  if (ctrl && k === "s") { ev.preventDefault(); saveAll(); return; }
  if (ctrl || ev.altKey) return;
  if (k === " ") { S.spaceDown = true; canvas.style.cursor = "grab"; ev.preventDefault(); return; }
  if (/^[0-9]$/.test(k)) return selectClass(+k);
  if (TOOLS[k]) return setTool(TOOLS[k]);
  const actions = {
    "[": () => setSize(S.size - 1), "]": () => setSize(S.size + 1),
    "+": () => zoomAt(1.25, canvas.clientWidth / 2, canvas.clientHeight / 2), "=": () => zoomAt(1.25, canvas.clientWidth / 2, canvas.clientHeight / 2),
    "-": () => zoomAt(0.8, canvas.clientWidth / 2, canvas.clientHeight / 2), z: fit,
    ArrowRight: () => step(1), ArrowLeft: () => step(-1), p: propose, n: suggestNext, a: accept,
    u: () => { $("show-uncertain").checked = S.showUnc = !S.showUnc; render(); },
    Enter: closePolygon, Escape: () => { S.poly = []; render(); },
    Backspace: () => { S.poly.pop(); render(); },
  };
  if (actions[k]) { ev.preventDefault(); actions[k](); }
});
document.addEventListener("keyup", (ev) => { if (ev.key === " ") { S.spaceDown = false; canvas.style.cursor = ""; } });

function setTool(t) {
  S.tool = t; S.poly = [];
  document.querySelectorAll("#tools button").forEach((b) => b.classList.toggle("active", b.dataset.tool === t));
  status(`tool: ${t}`); render();
}
function setSize(n) { S.size = Math.max(1, Math.min(64, n)); $("size").value = S.size; $("size-out").textContent = S.size; render(); }
function selectClass(i) {
  if (i >= S.classes.length) return status(`no class ${i}: ${S.classes.length} classes (add one in the Classes panel)`);
  S.cls = i;
  if (S.tool === "eraser") setTool("brush");
  markClass(); status(`class ${i}: ${S.classes[i].name}`);
}

// ------------------------------------------------------------------ saving

let saveTimer = null;
function scheduleSave() { clearTimeout(saveTimer); saveTimer = setTimeout(saveAll, 700); }
function unsaved() { return S.images.filter((e) => e.s && (e.s.edits !== e.s.savedEdits || e.s.saving)); }

async function saveOne(e, overwrite = false) {
  const s = e.s;
  if (!s || s.saving || s.edits === s.savedEdits || (s.conflict && !overwrite)) return s && s.saving;
  if (s.version === "none" && !s.mask.some((v) => v !== 0)) { s.savedEdits = s.edits; return null; } // nothing painted, nothing on disk
  s.saving = (async () => {
    const edits = s.edits, kind = s.kind;
    try {
      if (overwrite) s.version = (await api("GET", `/api/mask/${e.name}`)).version;
      const r = await api("PUT", `/api/mask/${e.name}`, {base_version: s.version, data: b64encode(s.mask), kind});
      Object.assign(s, {version: r.version, savedEdits: edits, conflict: false});
      e.annotated = r.annotated; e.proposed = r.proposed; e.error = r.error;
      if (S.offline) { S.offline = false; hideBanner(); }
      $("labels-file").textContent = S.labelsFile;
      status(kind === "proposed" ? `saved ${e.name}_proposed.png: a proposal, not yet reviewed (edit it, or A accepts it as it is)`
                                 : `saved ${e.name}_mask.png`);
    } catch (err) {
      if (err.status === 409) {
        s.conflict = true;
        showError(`${e.name}: ${err.message}`, [["Load the other version", () => reloadFromDisk(e)],
                                                 ["Overwrite with mine", () => saveOne(e, true)]]);
      } else if (err.status) showError(`${e.name}: not saved: ${err.message}`);
      else { S.offline = true; showError(`server not reachable: ${unsaved().length} image(s) with unsaved edits are kept in this tab; restart \`ganseg annotate\` and they are saved automatically`); }
    } finally {
      s.saving = null; renderList();
      if (s.edits !== s.savedEdits && !s.conflict && !S.offline) scheduleSave(); // edits made while saving
    }
  })();
  return s.saving;
}
async function saveAll() { await Promise.all(S.images.map((e) => saveOne(e))); }
async function reloadFromDisk(e) {
  e.s.loaded = null; e.s.conflict = false; e.s.undo = []; e.s.redo = []; e.s.edits = e.s.savedEdits = 0;
  e.s.mask.fill(0); e.s.unc = null; e.s.kind = "reviewed";
  await loadImage(e.name); hideBanner(); render(); renderList();
}
setInterval(() => { if (unsaved().length) saveAll(); }, 3000); // retries after a failure
window.addEventListener("beforeunload", (ev) => { if (unsaved().length) { ev.preventDefault(); ev.returnValue = ""; } });

// ------------------------------------------------------------------ proposals

let polling = null;
async function propose() {
  if (S.pendingApply) return status("a proposal is on its way");
  S.pendingApply = true; // until the proposal is on screen (scripts wait for this to clear)
  if (proposalFresh()) { await applyProposal(S.byName[S.current]); S.pendingApply = false; return; }
  await saveAll(); // train on what is on screen
  try {
    S.propose = await api("POST", "/api/propose");
    showPropose(); poll();
  } catch (err) { S.pendingApply = false; showError(err.message); }
}
function poll() {
  clearTimeout(polling);
  polling = setTimeout(async () => {
    try { S.propose = await api("GET", "/api/propose"); } catch (err) { return poll(); }
    showPropose();
    if (S.propose.state === "running") return poll();
    if (S.propose.state === "error") { S.pendingApply = false; return showError(`Propose: ${S.propose.message}`); }
    if (S.pendingApply) { await applyProposal(S.byName[S.current]); S.pendingApply = false; }
  }, 400);
}
async function applyProposal(e) {
  let p;
  try { p = await api("GET", `/api/proposal/${e.name}`); } catch (err) { return showError(err.message); }
  await loadImage(e.name);
  const s = e.s, labels = b64decode(p.labels);
  beginOp();
  s.mask.set(labels);
  s.unc = b64decode(p.uncertainty);
  endOp("proposed");
  layersFor = null; // a new uncertainty layer: both layers whole
  render();
  status(`proposal for ${e.name} from a head trained on ${p.trained_on.length} shot(s), saved as ${e.name}_proposed.png ` +
         `(not reviewed): correct it, or press A if it is right as it is (Ctrl+Z undoes it)`);
}
function proposalFresh() {
  // The head behind the proposals was trained on exactly the masks saved now (else P retrains).
  const p = S.propose, now = S.images.filter((e) => e.annotated).map((e) => e.name);
  return !!p && p.state === "done" && unsaved().length === 0 && now.length === p.trained_on.length &&
    now.every((n) => p.trained_on.includes(n));
}
function showPropose() {
  const p = S.propose;
  if (!p) return;
  if (S.uncertain !== p.uncertain) { S.uncertain = p.uncertain; layersFor = null; render(); }
  $("progress-bar").style.width = `${Math.round(100 * p.progress)}%`;
  $("propose-status").textContent = p.state === "running" ? `${p.stage}…` :
    p.state === "done" ? `${p.message}${proposalFresh() ? "" : " (masks saved since: P retrains)"}` : p.message || "";
  const list = $("suggestions");
  list.replaceChildren(...p.ranking.slice(0, 8).map((r) => {
    const li = document.createElement("li");
    li.textContent = `${r.name}  uncertainty ${r.uncertainty.toFixed(3)}`;
    li.onclick = () => go(r.name);
    return li;
  }));
}
function suggestNext() {
  const r = S.propose && S.propose.ranking.filter((x) => x.name !== S.current && !S.byName[x.name].annotated);
  if (!r || !r.length) return status("Suggest next orders the unannotated images by the head's uncertainty: press Propose (P) first");
  go(r[0].name);
}

// ------------------------------------------------------------------ classes, navigation, status

async function putClasses(classes) {
  try {
    const st = await api("PUT", "/api/labels", {classes: classes.map((c) => c.name), palette: classes.filter((c) => c.color).map((c) => hexToRgb(c.color))});
    S.classes = st.classes; $("labels-file").textContent = `saved to ${st.labels_file}`;
  } catch (err) { showError(err.message); }
  renderClasses(); layersFor = null; render();
}
function renderClasses() {
  // A click anywhere on a class row selects that class; its name is text, not a field, so keys
  // pressed afterwards are shortcuts. Renaming is explicit: double-click the name or press ✎.
  $("class-list").replaceChildren(...S.classes.map((c, i) => {
    const li = document.createElement("li"), key = document.createElement("span"), col = document.createElement("input");
    const name = document.createElement("span"), edit = document.createElement("button");
    key.className = "key"; key.textContent = i < 10 ? i : "";
    col.type = "color"; col.value = c.color; col.title = "class colour";
    name.className = "name"; name.textContent = c.name; name.title = "click: select · double-click: rename";
    edit.className = "edit"; edit.textContent = "✎"; edit.title = "rename";
    col.onchange = () => { col.blur(); putClasses(S.classes.map((d, j) => j === i ? {...d, color: col.value} : d)); };
    name.ondblclick = () => editClassName(i);
    edit.onclick = (ev) => { ev.stopPropagation(); editClassName(i); };
    li.onclick = (ev) => { if (!ev.target.matches("input[type=text]")) selectClass(i); };
    li.append(key, col, name, edit);
    return li;
  }));
  markClass();
}
function markClass() { [...$("class-list").children].forEach((li, i) => li.classList.toggle("current", i === S.cls)); }
function editClassName(i) {
  const span = $("class-list").children[i].querySelector(".name"), input = document.createElement("input");
  input.type = "text"; input.value = S.classes[i].name; input.className = "name-edit";
  let done = false;
  const finish = (commit) => {
    if (done) return;
    done = true;
    const v = input.value.trim();
    if (commit && v && v !== S.classes[i].name) putClasses(S.classes.map((d, j) => j === i ? {...d, name: v} : d));
    else renderClasses();
  };
  input.onkeydown = (ev) => {
    ev.stopPropagation(); // typed into the name, not shortcuts
    if (ev.key === "Enter") finish(true);
    else if (ev.key === "Escape") finish(false);
  };
  input.onblur = () => finish(true);
  span.replaceWith(input);
  input.focus(); input.select();
}
function renderList() {
  for (const e of S.images) {
    const li = e.li;
    li.classList.toggle("current", e.name === S.current);
    li.classList.toggle("annotated", !!e.annotated && !(e.s && e.s.edits !== e.s.savedEdits));
    li.classList.toggle("unsaved", !!(e.s && e.s.edits !== e.s.savedEdits));
    li.classList.toggle("proposed", !!e.proposed && !e.annotated && !(e.s && e.s.edits !== e.s.savedEdits));
    li.classList.toggle("error", !!e.error && !e.annotated);
    li.classList.toggle("nolatent", e.latent === false);
    li.title = [e.error || (e.annotated ? "annotated (reviewed)" : e.proposed ? "proposal saved, not reviewed" : "not annotated"),
                e.latent === false ? noLatentText(e.name) : ""].filter(Boolean).join(" — ");
  }
  const done = S.images.filter((e) => e.annotated).length, proposed = S.images.filter((e) => e.proposed && !e.annotated).length;
  $("commands").textContent = `${done} of ${S.images.length} annotated (reviewed)` +
    (proposed ? `, ${proposed} proposal(s) not reviewed` : "") + ". Then:\n" + S.commands.join("\n");
}
function noLatentText(name) {
  return `${name} has no latent in latents.safetensors: train-head cannot use its mask (see the terminal for the fix)`;
}
async function go(name) {
  if (!S.byName[name]) return;
  if (S.current) saveOne(S.byName[S.current]);
  S.current = name; S.poly = [];
  renderList();
  await loadImage(name);
  if (S.current !== name) return;
  fit(); render();
  const e = S.byName[name];
  const hint = e.latent === false ? ` — ${noLatentText(name)}` :
    e.s.kind === "proposed" ? " — a proposal, not reviewed: correct it, or A accepts it" :
    proposalFresh() && !e.annotated && e.s.edits === 0 ? " — proposal ready: press P" : "";
  status(`${name} (${e.width}×${e.height})${e.annotated ? " annotated" : ""}${hint}`);
}
function step(d) {
  const i = S.images.findIndex((e) => e.name === S.current);
  go(S.images[(i + d + S.images.length) % S.images.length].name);
}
function status(t) { $("status").textContent = t; }
function showError(text, actions = []) {
  $("banner-text").textContent = text;
  $("banner-actions").replaceChildren(...actions.map(([label, fn]) => {
    const b = document.createElement("button"); b.textContent = label; b.onclick = () => { hideBanner(); fn(); }; return b;
  }));
  $("banner").hidden = false;
  console.warn(text);
}
function hideBanner() { $("banner").hidden = true; }

// ------------------------------------------------------------------ start

async function start() {
  const st = await api("GET", "/api/state");
  S.classes = st.classes; S.commands = st.commands; S.propose = st.propose;
  S.labelsFile = st.labels_file;
  $("labels-file").textContent = st.labels_exist ? st.labels_file : `${st.labels_file} (written with the first save)`;
  S.images = st.images;
  const list = $("image-list");
  for (const e of S.images) {
    S.byName[e.name] = e;
    const li = document.createElement("li"), img = document.createElement("img"), label = document.createElement("span"), badge = document.createElement("span");
    img.src = `/api/image/${e.name}`; img.loading = "lazy"; label.textContent = e.name; badge.className = "badge";
    li.append(img, label, badge); li.onclick = () => go(e.name);
    e.li = li; list.append(li);
  }
  document.querySelectorAll("#tools button").forEach((b) => { b.onclick = () => setTool(b.dataset.tool); });
  $("size").oninput = () => setSize(+$("size").value);
  $("opacity").oninput = () => { S.opacity = $("opacity").value / 100; render(); };
  $("zoom-in").onclick = () => zoomAt(1.25, canvas.clientWidth / 2, canvas.clientHeight / 2);
  $("zoom-out").onclick = () => zoomAt(0.8, canvas.clientWidth / 2, canvas.clientHeight / 2);
  $("zoom-fit").onclick = fit;
  $("undo").onclick = () => undo(false); $("redo").onclick = () => undo(true);
  $("save").onclick = saveAll; $("propose").onclick = propose; $("suggest").onclick = suggestNext; $("accept").onclick = accept;
  $("show-uncertain").onchange = () => { S.showUnc = $("show-uncertain").checked; render(); };
  $("add-class").onclick = () => putClasses([...S.classes, {name: `class ${S.classes.length}`}]);
  $("banner-close").onclick = hideBanner;
  window.addEventListener("resize", render);
  renderClasses(); setTool("brush"); showPropose();
  if (S.propose.state === "running") poll();
  const first = S.images.find((e) => !e.annotated && e.latent !== false) || S.images[0];
  await go(first.name);
  const bad = S.images.filter((e) => e.error).map((e) => e.error), missing = S.images.filter((e) => e.latent === false);
  if (st.latents_error) bad.push(st.latents_error);
  else if (missing.length) bad.push(`${missing.length} image(s) have no latent in latents.safetensors (marked ⚠ in the list): ` +
                                    `train-head cannot use their masks; the terminal says how to fix it`);
  if (bad.length) showError(bad.join(" · "));
}

// A bug in the page is shown, not swallowed: an exception in a tool used to leave a half-done edit
// that was then saved as if complete.
window.addEventListener("error", (ev) => showError(`page error: ${ev.message}; the last action may be incomplete — please report it`));
window.addEventListener("unhandledrejection", (ev) => showError(`page error: ${ev.reason && ev.reason.message || ev.reason}; please report it`));

// For scripts and tests: the view transform and the mask as the page holds it.
window.annotator = {
  ready: start().catch((err) => { showError(`cannot start: ${err.message}`); throw err; }),
  state: S,
  go, setView, setTool, selectClass, setSize, saveAll, propose, fit, accept,
  kind: () => session(S.current).kind,
  mask: () => Array.from(session(S.current).mask),
  layers: () => ({...layerStats}),
  // RGBA of the mask layer (what is drawn over the image) at pixel (x, y)
  layerPixel: (x, y) => Array.from(md.data.subarray(4 * (y * md.width + x), 4 * (y * md.width + x) + 4)),
  uncertain: () => (session(S.current).unc ? Array.from(session(S.current).unc) : null),
  imageToClient: (x, y) => { const r = canvas.getBoundingClientRect(); return [r.left + S.panX + x * S.zoom, r.top + S.panY + y * S.zoom]; },
  idle: async () => { await saveAll(); return unsaved().length === 0 && (!S.propose || S.propose.state !== "running") && !S.pendingApply; },
};
