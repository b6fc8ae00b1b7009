// ganseg annotate: the page. Plain JS, no build step, nothing fetched from elsewhere.
//
// Hard edges by construction: the mask is a Uint8Array of class indices that every tool writes
// into directly; canvases only *display* it (drawn with image smoothing off). What is saved is that
// array, byte for byte, so every saved pixel is a class index — no anti-aliased edge can exist.
// Undo/redo store per-stroke diffs (changed indices with their before/after values).
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
                   edits: 0, savedEdits: 0, saving: null, conflict: false, loaded: null, img: null};
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
    if (m.data) s.mask.set(b64decode(m.data));
    if (m.error) showError(`${m.error} — starting from an empty mask; the file is kept as a backup when you save.`);
  })();
  return s.loaded;
}

// ------------------------------------------------------------------ editing primitives

function beginOp() { S.stroke = new Map(); }
function setPixel(s, i, v) {
  if (s.mask[i] === v) return;
  if (!S.stroke.has(i)) S.stroke.set(i, s.mask[i]);
  s.mask[i] = v;
  if (s.unc) s.unc[i] = 0; // a pixel the person touched is no longer "uncertain"
}
function endOp() {
  const s = session(S.current), ch = S.stroke;
  S.stroke = null;
  if (!ch || ch.size === 0) return;
  const idx = Int32Array.from(ch.keys()), before = Uint8Array.from(ch.values());
  const after = Uint8Array.from(idx, (i) => s.mask[i]);
  s.undo.push({idx, before, after});
  s.redo = [];
  changed(s);
}
function changed(s) { s.edits++; render(); renderList(); scheduleSave(); }

function stamp(s, e, cx, cy, value) {
  // Disc brush of diameter S.size centred on pixel (cx, cy); even sizes centre between pixels.
  const d = S.size, lo = -Math.floor(d / 2), c = d % 2 ? 0 : -0.5, r2 = (d / 2) * (d / 2);
  for (let dy = lo; dy < lo + d; dy++) for (let dx = lo; dx < lo + d; dx++) {
    if ((dx - c) * (dx - c) + (dy - c) * (dy - c) > r2) continue;
    const x = cx + dx, y = cy + dy;
    if (x >= 0 && y >= 0 && x < e.width && y < e.height) setPixel(s, y * e.width + x, value);
  }
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
function flood(s, e, x, y, value) { // 4-connected region of the clicked pixel's class
  const w = e.width, h = e.height, from = s.mask[y * w + x];
  if (from === value) return;
  const stack = [y * w + x];
  while (stack.length) {
    const i = stack.pop();
    if (s.mask[i] !== from) continue;
    setPixel(s, i, value);
    const px = i % w;
    if (px > 0) stack.push(i - 1);
    if (px < w - 1) stack.push(i + 1);
    if (i >= w) stack.push(i - w);
    if (i < w * (h - 1)) stack.push(i + w);
  }
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
  const vals = redo ? op.after : op.before;
  op.idx.forEach((i, k) => { s.mask[i] = vals[k]; });
  to.push(op);
  changed(s);
}

// ------------------------------------------------------------------ view

const canvas = $("canvas"), ctx = canvas.getContext("2d");
let maskCanvas = document.createElement("canvas"), uncCanvas = document.createElement("canvas"), frame = 0;

function toPixel(ev) {
  const r = canvas.getBoundingClientRect();
  return [(ev.clientX - r.left - S.panX) / S.zoom, (ev.clientY - r.top - S.panY) / S.zoom];
}
function fit() {
  const e = S.byName[S.current];
  if (!e) return;
  const z = Math.max(1, Math.floor(Math.min(canvas.clientWidth / e.width, canvas.clientHeight / e.height)));
  setView(z, Math.round((canvas.clientWidth - e.width * z) / 2), Math.round((canvas.clientHeight - e.height * z) / 2));
}
function setView(zoom, panX, panY) {
  S.zoom = Math.min(64, Math.max(0.25, zoom)); S.panX = panX; S.panY = panY;
  $("zoom-value").textContent = `${+S.zoom.toFixed(2)}×`;
  render();
}
function zoomAt(factor, cx, cy) {
  const z = Math.min(64, Math.max(0.25, S.zoom * factor));
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
  const s = e.s, n = e.width * e.height;
  for (const c of [maskCanvas, uncCanvas]) if (c.width !== e.width || c.height !== e.height) { c.width = e.width; c.height = e.height; }
  const md = new ImageData(e.width, e.height), ud = new ImageData(e.width, e.height);
  const pal = S.classes.map((c) => hexToRgb(c.color)), thr = S.uncertain * 255;
  for (let i = 0; i < n; i++) {
    const v = s.mask[i], o = 4 * i;
    if (v !== 0) { const p = pal[v] || [255, 255, 255]; md.data[o] = p[0]; md.data[o + 1] = p[1]; md.data[o + 2] = p[2]; md.data[o + 3] = 255; }
    if (s.unc && s.unc[i] > thr) { // black/white checkerboard: no class colour looks like it
      const v = ((i % e.width) + Math.floor(i / e.width)) % 2 ? 255 : 0;
      ud.data[o] = ud.data[o + 1] = ud.data[o + 2] = v; ud.data[o + 3] = 170;
    }
  }
  maskCanvas.getContext("2d").putImageData(md, 0, 0);
  uncCanvas.getContext("2d").putImageData(ud, 0, 0);
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
  if (ev.target.matches("input[type=text], input[type=color], textarea")) return;
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
    ArrowRight: () => step(1), ArrowLeft: () => step(-1), p: propose, n: suggestNext,
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
  renderClasses(); status(`class ${i}: ${S.classes[i].name}`);
}

// ------------------------------------------------------------------ saving

let saveTimer = null;
function scheduleSave() { clearTimeout(saveTimer); saveTimer = setTimeout(saveAll, 700); }
function unsaved() { return S.images.filter((e) => e.s && (e.s.edits !== e.s.savedEdits || e.s.saving)); }

async function saveOne(e, overwrite = false) {
  const s = e.s;
  if (!s || s.saving || s.edits === s.savedEdits || (s.conflict && !overwrite)) return s && s.saving;
  s.saving = (async () => {
    const edits = s.edits;
    try {
      if (overwrite) s.version = (await api("GET", `/api/mask/${e.name}`)).version;
      const r = await api("PUT", `/api/mask/${e.name}`, {base_version: s.version, data: b64encode(s.mask)});
      Object.assign(s, {version: r.version, savedEdits: edits, conflict: false});
      e.annotated = r.annotated; e.error = r.error;
      if (S.offline) { S.offline = false; hideBanner(); }
      $("labels-file").textContent = S.labelsFile;
      status(`saved ${e.name}_mask.png`);
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
  e.s.mask.fill(0); e.s.unc = null;
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
  labels.forEach((v, i) => setPixel(s, i, v));
  s.unc = b64decode(p.uncertainty);
  endOp();
  render();
  status(`proposal for ${e.name} from a head trained on ${p.trained_on.length} shot(s): correct it, it is saved as you go (Ctrl+Z undoes it)`);
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
  S.uncertain = p.uncertain;
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
  renderClasses(); render();
}
function renderClasses() {
  $("class-list").replaceChildren(...S.classes.map((c, i) => {
    const li = document.createElement("li"), key = document.createElement("span"), col = document.createElement("input"), name = document.createElement("input");
    li.classList.toggle("current", i === S.cls);
    key.className = "key"; key.textContent = i < 10 ? i : "";
    col.type = "color"; col.value = c.color; name.type = "text"; name.value = c.name;
    col.onchange = () => putClasses(S.classes.map((d, j) => j === i ? {...d, color: col.value} : d));
    name.onchange = () => putClasses(S.classes.map((d, j) => j === i ? {...d, name: name.value} : d));
    name.onkeydown = (ev) => { if (ev.key === "Enter") name.blur(); };
    li.onclick = (ev) => { if (ev.target === li || ev.target === key) selectClass(i); };
    li.append(key, col, name);
    return li;
  }));
}
function renderList() {
  for (const e of S.images) {
    const li = e.li;
    li.classList.toggle("current", e.name === S.current);
    li.classList.toggle("annotated", !!e.annotated && !(e.s && e.s.edits !== e.s.savedEdits));
    li.classList.toggle("unsaved", !!(e.s && e.s.edits !== e.s.savedEdits));
    li.classList.toggle("error", !!e.error && !e.annotated);
    li.title = e.error || (e.annotated ? "annotated" : "not annotated");
  }
  const done = S.images.filter((e) => e.annotated).length;
  $("commands").textContent = `${done} of ${S.images.length} annotated. Then:\n` + S.commands.join("\n");
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
  const hint = proposalFresh() && !e.annotated && e.s.edits === 0 ? " — proposal ready: press P" : "";
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
  $("save").onclick = saveAll; $("propose").onclick = propose; $("suggest").onclick = suggestNext;
  $("show-uncertain").onchange = () => { S.showUnc = $("show-uncertain").checked; render(); };
  $("add-class").onclick = () => putClasses([...S.classes, {name: `class ${S.classes.length}`}]);
  $("banner-close").onclick = hideBanner;
  window.addEventListener("resize", render);
  renderClasses(); setTool("brush"); showPropose();
  if (S.propose.state === "running") poll();
  const first = S.images.find((e) => !e.annotated) || S.images[0];
  await go(first.name);
  const bad = S.images.filter((e) => e.error);
  if (bad.length) showError(bad.map((e) => e.error).join(" · "));
}

// For scripts and tests: the view transform and the mask as the page holds it.
window.annotator = {
  ready: start().catch((err) => { showError(`cannot start: ${err.message}`); throw err; }),
  state: S,
  go, setView, setTool, selectClass, setSize, saveAll, propose, fit,
  mask: () => Array.from(session(S.current).mask),
  uncertain: () => (session(S.current).unc ? Array.from(session(S.current).unc) : null),
  imageToClient: (x, y) => { const r = canvas.getBoundingClientRect(); return [r.left + S.panX + x * S.zoom, r.top + S.panY + y * S.zoom]; },
  idle: async () => { await saveAll(); return unsaved().length === 0 && (!S.propose || S.propose.state !== "running") && !S.pendingApply; },
};
