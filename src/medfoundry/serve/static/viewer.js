// medfoundry viewer: canvas rendering with window/level in the browser, prompts, overlays, reading aids.
// Planes come raw from /v1/images/{id}/planes/{view}/{k}; masks as COCO RLE from /v1/.../segment.
"use strict";
const $ = (id) => document.getElementById(id);
const esc = (t) => String(t).replace(/[&<>"']/g, (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"})[c]);
const canvas = $("view"), ctx = canvas.getContext("2d");
const S = {
  img: null, view: "axial", index: {}, planes: new Map(), wl: null, zoom: 1, pan: [0, 0],
  prompts: [], mask: null, heat: null, busy: 0, drag: null, lastError: "",
};
window.mf = S; // for tests and the console

function showError(e) { S.lastError = e || ""; $("error").textContent = S.lastError; }
async function api(url, opts) {
  S.busy++;
  try {
    const r = await fetch(url, opts);
    const type = r.headers.get("content-type") || "";
    const body = type.includes("json") ? await r.json() : await r.arrayBuffer();
    if (!r.ok) throw new Error(body.error ? `${body.error}: ${typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail)}` : `HTTP ${r.status}`);
    return {body, headers: r.headers};
  } finally { S.busy--; }
}
const post = (url, data) => api(url, {method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(data)}).then((r) => r.body);
const V = () => S.img.views[S.view];
const K = () => S.index[S.view];

// ---- planes and window/level ----
async function plane(view, k) {
  const key = `${view}/${k}`;
  if (!S.planes.has(key)) {
    const r = await api(`/v1/images/${S.img.id}/planes/${view}/${k}`);
    const rows = +r.headers.get("X-Rows"), cols = +r.headers.get("X-Cols"), ch = +r.headers.get("X-Channels");
    const data = r.headers.get("X-Dtype") === "uint8" ? new Uint8Array(r.body) : new Float32Array(r.body);
    S.planes.set(key, {rows, cols, ch, data});
    if (S.planes.size > 64) S.planes.delete(S.planes.keys().next().value);
  }
  return S.planes.get(key);
}
function baseCanvas(p) {
  const off = new OffscreenCanvas(p.cols, p.rows), o = off.getContext("2d");
  const im = o.createImageData(p.cols, p.rows), px = im.data;
  const lo = S.wl.c - S.wl.w / 2, scale = 255 / Math.max(S.wl.w, 1e-6);
  for (let i = 0, n = p.rows * p.cols; i < n; i++) {
    for (let c = 0; c < 3; c++) {
      const v = p.data[i * p.ch + (p.ch === 3 ? c : 0)];
      px[4 * i + c] = Math.max(0, Math.min(255, Math.round((v - lo) * scale)));
    }
    px[4 * i + 3] = 255;
  }
  o.putImageData(im, 0, 0);
  return off;
}

// ---- geometry: image pixel (x = column, y = row) <-> canvas ----
function layout() {
  const v = V(), [sr, sc] = v.spacing_mm, [rows, cols] = v.shape;
  const s = Math.min(canvas.width / (cols * sc), canvas.height / (rows * sr)) * S.zoom;
  const pw = sc * s, ph = sr * s;
  return {pw, ph, ox: (canvas.width - cols * pw) / 2 + S.pan[0], oy: (canvas.height - rows * ph) / 2 + S.pan[1]};
}
function toImage(cx, cy) { const L = layout(); return [(cx - L.ox) / L.pw, (cy - L.oy) / L.ph]; }
function toCanvas(x, y) { const L = layout(); return [L.ox + x * L.pw, L.oy + y * L.ph]; }
S.toCanvas = toCanvas;

// ---- masks: axial slices from RLE; other views built from them ----
function rleDecode(rle) {
  const [h, w] = rle.size, out = new Uint8Array(h * w); let pos = 0;
  rle.counts.forEach((n, i) => { if (i % 2) for (let j = 0; j < n; j++) { const f = pos + j; out[(f % h) * w + Math.floor(f / h)] = 1; } pos += n; });
  return out;
}
function maskPlane(rows, cols) {
  if (!S.mask) return null;
  const k = K(), sl = S.mask.slices;
  if (S.view === "axial") return sl[k] || null;
  const out = new Uint8Array(rows * cols), [, h, w] = S.img.summary.spatial_shape; let any = false;
  for (const z of Object.keys(sl)) {
    const m = sl[z], r = V().flipped ? rows - 1 - z : +z;
    for (let j = 0; j < cols; j++) {
      const v = S.view === "coronal" ? m[k * w + j] : m[j * w + k];
      if (v) { out[r * cols + j] = 1; any = true; }
    }
  }
  return any ? out : null;
}
function tint(rows, cols, values, rgb, fromHeat) {
  const off = new OffscreenCanvas(cols, rows), o = off.getContext("2d"), im = o.createImageData(cols, rows);
  for (let i = 0; i < rows * cols; i++) {
    const v = values[i];
    if (!v) continue;
    if (fromHeat) { im.data.set([v, Math.round(255 - Math.abs(v - 128) * 2), 255 - v, 255], 4 * i); }
    else im.data.set([...rgb, 255], 4 * i);
  }
  o.putImageData(im, 0, 0);
  return off;
}

// ---- drawing ----
async function render() {
  if (!S.img) return;
  const v = V(), p = await plane(S.view, K());
  const L = layout();
  ctx.fillStyle = "#000"; ctx.fillRect(0, 0, canvas.width, canvas.height);
  ctx.imageSmoothingEnabled = false;
  ctx.drawImage(baseCanvas(p), L.ox, L.oy, p.cols * L.pw, p.rows * L.ph);
  const m = $("showmask").checked ? maskPlane(p.rows, p.cols) : null;
  if (m) { ctx.globalAlpha = $("opacity").value / 100; ctx.drawImage(tint(p.rows, p.cols, m, [255, 40, 40]), L.ox, L.oy, p.cols * L.pw, p.rows * L.ph); }
  if (S.heat && $("showheat").checked && S.view === "axial" && S.heat.slice === K()) {
    ctx.globalAlpha = 0.45; ctx.drawImage(S.heat.canvas, L.ox, L.oy, p.cols * L.pw, p.rows * L.ph);
  }
  ctx.globalAlpha = 1;
  if (S.view === "axial") drawPrompts();
  drawText(v, p);
  $("slicelabel").textContent = `slice ${K() + 1} / ${v.slices}`;
}
function drawPrompts() {
  ctx.lineWidth = 2;
  for (const q of S.prompts.filter((q) => q.slice === K())) {
    if (q.box) { const [a, b] = toCanvas(q.box[0], q.box[1]), [c, d] = toCanvas(q.box[2], q.box[3]); ctx.strokeStyle = "#40c8ff"; ctx.strokeRect(a, b, c - a, d - b); }
    else { const [a, b] = toCanvas(q.point[0], q.point[1]); ctx.fillStyle = q.point[2] ? "#3c3" : "#e33"; ctx.beginPath(); ctx.arc(a, b, 4, 0, 7); ctx.fill(); }
  }
  if (S.drag && S.drag.box) { const [a, b, c, d] = S.drag.box; ctx.strokeStyle = "#40c8ff"; ctx.strokeRect(a, b, c - a, d - b); }
  const ax = S.mask && S.mask.axes;
  if (ax && S.mask.axesSlice === K() && $("showmask").checked) {
    for (const [seg, col] of [[ax.long, "#ffd400"], [ax.short, "#ff8c00"]]) {
      const [a, b] = toCanvas(...seg[0]), [c, d] = toCanvas(...seg[1]);
      ctx.strokeStyle = col; ctx.beginPath(); ctx.moveTo(a, b); ctx.lineTo(c, d); ctx.stroke();
    }
  }
}
function drawText(v, p) {
  const s = S.img.summary, W = canvas.width, H = canvas.height;
  ctx.font = "13px system-ui, sans-serif"; ctx.fillStyle = "#ffd27f";
  ctx.textAlign = "left";
  ctx.fillText(`${s.modality} · ${S.view} · ${K() + 1}/${v.slices}`, 8, 18);
  ctx.fillText(v.spacing_known ? `${v.spacing_mm.map((x) => x.toFixed(2)).join(" × ")} mm · ${s.orientation}` : "no pixel spacing in the file", 8, H - 10);
  ctx.textAlign = "right";
  ctx.fillText(`W ${Math.round(S.wl.w)} L ${Math.round(S.wl.c)}${s.units === "HU" ? " HU" : ""}`, W - 8, 18);
  ctx.fillText(`zoom ${S.zoom.toFixed(2)}×`, W - 8, H - 10);
  ctx.fillStyle = "#7fd0ff"; ctx.font = "bold 15px system-ui, sans-serif"; ctx.textAlign = "center";
  ctx.fillText(v.letters.top, W / 2, 36); ctx.fillText(v.letters.bottom, W / 2, H - 28);
  ctx.fillText(v.letters.left, 14, H / 2); ctx.fillText(v.letters.right, W - 14, H / 2);
}

// ---- opening an image ----
async function open(file) {
  showError();
  const fd = new FormData(); fd.append("file", file);
  const info = (await api("/v1/images", {method: "POST", body: fd})).body;
  S.img = info; S.planes.clear(); S.prompts = []; S.mask = null; S.heat = null; S.zoom = 1; S.pan = [0, 0];
  S.view = "axial";
  for (const [name, v] of Object.entries(info.views)) S.index[name] = Math.floor(v.slices / 2);
  S.wl = {c: info.windows.default.center, w: info.windows.default.width};
  $("preset").innerHTML = `<option value="">default</option>` + Object.keys(info.windows.presets).map((n) => `<option>${esc(n)}</option>`).join("");
  for (const b of document.querySelectorAll("#views button")) { b.disabled = !(b.dataset.view in info.views); b.classList.toggle("on", b.dataset.view === "axial"); }
  const s = info.summary;
  $("info").textContent = `${info.filename}: ${s.modality} ${s.spatial_shape.join("×")}, spacing ${s.spacing_mm.map((x) => x.toFixed(2)).join(" × ")} mm, ${s.orientation}`;
  $("measure").innerHTML = ""; $("downloads").innerHTML = ""; $("probs").innerHTML = "";
  setSliceBar(); updatePrompt(); await render();
}
function setSliceBar() { $("slice").max = V().slices - 1; $("slice").value = K(); }
async function setSlice(k) { S.index[S.view] = Math.max(0, Math.min(V().slices - 1, k)); setSliceBar(); await render(); }

// ---- prompts and segmentation ----
function updatePrompt() {
  const here = S.prompts.filter((q) => q.slice === K());
  $("prompt").textContent = here.length ? here.map((q) => q.box ? "box " + q.box.map(Math.round).join(",") : (q.point[2] ? "+" : "−") + "point").join(", ") : "no prompt";
}
async function segment() {
  const k = K(), here = S.prompts.filter((q) => q.slice === k);
  updatePrompt();
  if (!here.length) { S.mask = null; $("measure").innerHTML = ""; $("downloads").innerHTML = ""; return render(); }
  const box = [...here].reverse().find((q) => q.box);
  const points = here.filter((q) => q.point).map((q) => q.point);
  const vol = S.img.slices > 1;
  const j = await post(`/v1/images/${S.img.id}/segment`, {box: box ? box.box : null, points: points.length ? points : null,
    slice: vol ? k : null, propagate: vol && $("propagate").checked, png: false});
  const slices = {};
  if (j.propagated) for (const [z, r] of Object.entries(j.slices)) slices[z] = rleDecode(r);
  else slices[vol ? k : 0] = rleDecode(j.rle);
  S.mask = {id: j.mask_id, slices, axes: j.axes, axesSlice: vol ? j.axes_slice : 0, measurements: j.measurements};
  showMeasurements(j.measurements, j.model);
  const base = `/v1/images/${S.img.id}/masks/${j.mask_id}`;
  $("downloads").innerHTML = `download mask: <a id="dl-png" href="${base}.png" download>PNG</a> · <a id="dl-nii" href="${base}.nii.gz" download>NIfTI</a>` +
    (S.img.dicom ? ` · <a id="dl-seg" href="${base}.dcm" download>DICOM SEG</a>` : "");
  await render();
}
function showMeasurements(m, model) {
  const u = m.size_unit, rows = [
    ["model", model || ""],
    ["pixels", m.pixels], m.volume_ml !== null ? ["volume", `${m.volume_ml.toFixed(2)} mL`] : ["area", `${m.area_mm2.toFixed(1)} ${u}²`],
    ["long axis", `${m.long_axis_mm.toFixed(1)} ${u}`], ["short axis", `${m.short_axis_mm.toFixed(1)} ${u}`],
  ];
  if (m.mean !== null) rows.push([`mean ${m.units === "HU" ? "HU" : "value"}`, `${m.mean.toFixed(1)} ± ${m.std.toFixed(1)}`]);
  $("measure").innerHTML = rows.map(([a, b]) => `<tr><td>${esc(a)}</td><td>${esc(b)}</td></tr>`).join("");
}
const run = (f) => async (...a) => { try { showError(); await f(...a); } catch (e) { showError(e.message); } };

// ---- mouse and keys ----
canvas.addEventListener("contextmenu", (e) => e.preventDefault());
canvas.addEventListener("mousedown", (e) => {
  if (!S.img) return;
  const mode = e.button === 2 ? "wl" : (e.button === 1 || e.altKey) ? "pan" : "prompt";
  S.drag = {mode, x: e.offsetX, y: e.offsetY, wl: {...S.wl}, pan: [...S.pan], shift: e.shiftKey};
  e.preventDefault();
});
canvas.addEventListener("mousemove", (e) => {
  const d = S.drag; if (!d) return;
  const dx = e.offsetX - d.x, dy = e.offsetY - d.y;
  if (d.mode === "wl") { S.wl = {w: Math.max(1, d.wl.w + dx * d.wl.w / 200), c: d.wl.c + dy * d.wl.w / 200}; $("preset").value = ""; }
  else if (d.mode === "pan") S.pan = [d.pan[0] + dx, d.pan[1] + dy];
  else if (S.view === "axial" && currentTool() === "box") d.box = [Math.min(d.x, e.offsetX), Math.min(d.y, e.offsetY), Math.max(d.x, e.offsetX), Math.max(d.y, e.offsetY)];
  render();
});
canvas.addEventListener("mouseup", run(async (e) => {
  const d = S.drag; S.drag = null; if (!d || d.mode !== "prompt" || S.view !== "axial") return render();
  const tool = currentTool();
  if (d.box && Math.abs(e.offsetX - d.x) > 3 && Math.abs(e.offsetY - d.y) > 3) {
    const [x0, y0] = toImage(d.box[0], d.box[1]), [x1, y1] = toImage(d.box[2], d.box[3]);
    S.prompts.push({slice: K(), box: [x0, y0, x1, y1]});
  } else {
    const [x, y] = toImage(e.offsetX, e.offsetY);
    S.prompts.push({slice: K(), point: [x, y, tool === "neg" || d.shift ? 0 : 1]});
  }
  await segment();
}));
canvas.addEventListener("wheel", run(async (e) => {
  if (!S.img) return; e.preventDefault();
  if (e.ctrlKey) { S.zoom = Math.max(0.25, Math.min(16, S.zoom * (e.deltaY < 0 ? 1.2 : 1 / 1.2))); return render(); }
  await setSlice(K() + (e.deltaY > 0 ? 1 : -1));
}), {passive: false});
const currentTool = () => document.querySelector("input[name=tool]:checked").value;

// ---- controls ----
$("upload").onsubmit = run(async (e) => { e.preventDefault(); await open($("file").files[0]); });
$("slice").oninput = run(async () => setSlice(+$("slice").value));
$("preset").onchange = run(async () => {
  const p = S.img.windows.presets[$("preset").value] || S.img.windows.default;
  S.wl = {c: p.center, w: p.width}; await render();
});
for (const b of document.querySelectorAll("#views button")) b.onclick = run(async () => {
  if (!S.img || !(b.dataset.view in S.img.views)) return;
  S.view = b.dataset.view; S.pan = [0, 0];
  for (const x of document.querySelectorAll("#views button")) x.classList.toggle("on", x === b);
  setSliceBar(); await render();
});
$("zoomin").onclick = () => { S.zoom *= 1.25; render(); };
$("zoomout").onclick = () => { S.zoom /= 1.25; render(); };
$("reset").onclick = () => { S.zoom = 1; S.pan = [0, 0]; S.wl = {c: S.img.windows.default.center, w: S.img.windows.default.width}; $("preset").value = ""; render(); };
$("undo").onclick = run(async () => { const k = K(); const i = S.prompts.map((q) => q.slice).lastIndexOf(k); if (i >= 0) S.prompts.splice(i, 1); await segment(); });
$("clear").onclick = run(async () => { S.prompts = S.prompts.filter((q) => q.slice !== K()); await segment(); });
$("showmask").onchange = $("opacity").oninput = $("showheat").onchange = () => render();
$("classify").onclick = run(async () => {
  const j = await post(`/v1/images/${S.img.id}/classify`, {labels: $("labels").value.split(","), slice: S.img.slices > 1 ? S.index.axial : null});
  const top = Math.max(...Object.values(j.probs));
  $("probs").innerHTML = Object.entries(j.probs).map(([k, v]) => `<div class="bar" data-label="${esc(k)}" data-p="${v}"><span class="name">${esc(k)}</span>` +
    `<span class="fill" style="width:${Math.round(v * 180)}px"></span><b>${v.toFixed(3)}</b></div>`).join("") +
    `<div class="muted small">${j.calibrated ? "calibrated" : "not calibrated"}${j.abstained ? ` · abstained: top ${top.toFixed(2)} below ${j.uncertain_below}` : ""}</div>`;
});
$("ground").onclick = run(async () => {
  const k = S.img.slices > 1 ? S.index.axial : 0;
  const j = await post(`/v1/images/${S.img.id}/ground`, {text: $("text").value, slice: S.img.slices > 1 ? k : null});
  const im = new Image(); im.src = "data:image/png;base64," + j.heatmap_png; await im.decode();
  const off = new OffscreenCanvas(im.width, im.height), o = off.getContext("2d"); o.drawImage(im, 0, 0);
  const grey = o.getImageData(0, 0, im.width, im.height).data, vals = new Uint8Array(im.width * im.height);
  for (let i = 0; i < vals.length; i++) vals[i] = grey[4 * i];
  S.heat = {slice: k, canvas: tint(im.height, im.width, vals, null, true)};
  $("showheat").checked = true; await render();
});
$("similar").onclick = run(async () => {
  const j = (await api(`/v1/images/${S.img.id}/similar?k=6`)).body;
  $("cases").innerHTML = j.cases.length ? j.cases.map((c) => {
    const src = c.id ? `/v1/images/${c.id}/preview.png?size=96` : c.thumbnail_png ? `data:image/png;base64,${c.thumbnail_png}` : "";
    return `<figure>${src ? `<img src="${src}" alt="">` : ""}<figcaption>${esc(c.name)} ${c.score.toFixed(3)}${c.label ? " · " + esc(c.label) : ""}</figcaption></figure>`;
  }).join("") : `no other cases yet (${esc(j.source)})`;
});
$("report").onclick = run(async () => {
  const q = S.img.slices > 1 ? `&slice=${S.index.axial}` : "";
  const j = (await api(`/v1/images/${S.img.id}/report?k=1${q}`)).body;
  $("reporttext").innerHTML = esc(j.report) + "<br><span class='muted small'>" + j.sources.map((s) => `similarity ${s.similarity.toFixed(3)}`).join(", ") + "</span>";
});
$("ask").onclick = run(async () => {
  const j = await post(`/v1/images/${S.img.id}/ask`, {question: $("question").value, slice: S.img.slices > 1 ? S.index.axial : null});
  $("answer").innerHTML = esc(j.answer) + `<br><span class="muted small">${esc(j.model)}, ${j.new_tokens} tokens in ${j.seconds} s</span>`;
});
api("/v1/health").then((r) => { $("askbox").hidden = !r.body.models.chat; }).catch(() => {});
