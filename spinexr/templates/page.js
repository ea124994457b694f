
const $ = s => document.querySelector(s);
const num = (x, d) => Number(x).toFixed(d);
const prob = p => p > 0.999 ? '> 0.999' : p < 0.001 ? '< 0.001' : num(p, 3);   // never "1" for 0.9999987
const {kind, minScore} = document.querySelector('main').dataset;
function decision(abnormal) {          // a phantom or rehearsal model's call is not worded as a finding
  if (kind === 'release') return abnormal ? 'ABNORMAL' : 'NORMAL';
  return `${abnormal ? 'Above' : 'Below'} the threshold (a ${kind} model: not a finding)`;
}
const boxRow = b => [b.label, prob(b.score), b.xmin, b.ymin, b.xmax, b.ymax];
function cell(v, n) {
  const td = document.createElement('td'); td.textContent = v; if (n) td.className = 'n'; return td;
}
function fill(sel, rows) {
  $(sel + ' tbody').replaceChildren(...rows.map(r => { const tr = document.createElement('tr');
    r.forEach((v, k) => tr.append(cell(v, k > 0 && typeof v === 'number'))); return tr; }));
}
function say(text, bad) { $('#status').textContent = text; $('#status').className = bad ? 'error' : ''; }
function header(j) {
  const d = j.dicom, rows = [['size', `${j.orig_width} x ${j.orig_height} pixels`]];
  if (!d) return rows.concat([['header', 'a PNG or JPEG: no DICOM header']]);
  const sp = d.pixel_spacing_mm ? `${d.pixel_spacing_mm[0]} x ${d.pixel_spacing_mm[1]} mm` : 'not given';
  return rows.concat([['pixel spacing', sp], ['photometric interpretation', d.photometric],
    ['window used', d.window], ['modality', d.modality || 'not given'], ['body part', d.body_part || 'not given'],
    ['view', d.view || 'not given'], ['bits stored', d.bits_stored], ['transfer syntax', d.transfer_syntax]]);
}

// The viewer: the image at full size on a canvas, windowed here from its 16-bit values; the boxes drawn over it.
const styles = Object.fromEntries(JSON.parse(document.querySelector('main').dataset.classes).map(c => [c.name, c]));
const V = {vals: null, w: 0, h: 0, off: document.createElement('canvas'), boxes: [], hidden: new Set(), zoom: 1,
           x: 0, y: 0, c: 0, ww: 1, c0: 0, ww0: 1, invert: false, offset: 0, step: 1, lo: 0, hi: 1, fitZoom: 1,
           fitted: true, probe: ''};
window.viewer = V;                    // for the browser tests, and for a curious user's console
const real = v => V.offset + V.step * v;
const fmt = v => Math.abs(v) >= 100 ? v.toFixed(0) : Number(v.toPrecision(3)).toString();
function bytesOf(url) {               // a data URL's bytes, without a fetch (the page may only fetch its server)
  const s = atob(url.slice(url.indexOf(',') + 1)), b = new Uint8Array(s.length);
  for (let i = 0; i < s.length; i++) b[i] = s.charCodeAt(i);
  return b;
}
async function load(view) {           // the 16-bit values from an RGB PNG: high byte red, low byte green
  const bmp = await createImageBitmap(new Blob([bytesOf(view.png)], {type: 'image/png'}),
                                      {colorSpaceConversion: 'none', premultiplyAlpha: 'none'});
  const w = bmp.width, h = bmp.height, cv = document.createElement('canvas');
  cv.width = w; cv.height = h;
  const g = cv.getContext('2d', {willReadFrequently: true}); g.drawImage(bmp, 0, 0);
  const rgba = g.getImageData(0, 0, w, h).data, vals = new Uint16Array(w * h);
  let lo = 65535, hi = 0;
  for (let i = 0, j = 0; i < vals.length; i++, j += 4) {
    const v = rgba[j] * 256 + rgba[j + 1]; vals[i] = v; if (v < lo) lo = v; if (v > hi) hi = v;
  }
  Object.assign(V, {vals, w, h, lo, hi, c0: view.center, ww0: view.width, c: view.center, ww: view.width,
                    invert: view.invert, offset: view.offset, step: view.step});
  V.off.width = w; V.off.height = h; V.img = V.off.getContext('2d').createImageData(w, h);
  $('#invert').checked = false; windowed(); fit();
}
function windowed() {                 // the values through the window, into the picture the canvas scales
  const lut = new Uint8ClampedArray(65536), lo = V.c - V.ww / 2, k = 255 / V.ww;
  const flip = V.invert !== $('#invert').checked;     // MONOCHROME1 shows inverted unless the user inverts it back
  for (let v = 0; v < 65536; v++) { const y = (v - lo) * k; lut[v] = flip ? 255 - y : y; }
  const out = V.img.data;
  for (let i = 0, j = 0; i < V.vals.length; i++, j += 4) {
    const g = lut[V.vals[i]]; out[j] = out[j + 1] = out[j + 2] = g; out[j + 3] = 255;
  }
  V.off.getContext('2d').putImageData(V.img, 0, 0); draw();
}
const pending = new Set();           // each redraw at most once a frame, however many events ask for it
function later(f) {
  if (!pending.has(f)) { pending.add(f); requestAnimationFrame(() => { pending.delete(f); f(); }); }
}
function draw() {
  const cv = $('#view'), r = cv.getBoundingClientRect(), d = window.devicePixelRatio || 1;
  cv.width = Math.round(r.width * d); cv.height = Math.round(r.height * d);
  const g = cv.getContext('2d');
  g.setTransform(1, 0, 0, 1, 0, 0); g.fillStyle = '#000'; g.fillRect(0, 0, cv.width, cv.height);
  if (!V.vals) return;
  g.setTransform(d * V.zoom, 0, 0, d * V.zoom, d * V.x, d * V.y);
  g.imageSmoothingEnabled = V.zoom < 1;          // enlarged, each pixel is seen as it is
  g.drawImage(V.off, 0, 0);
  g.setTransform(d, 0, 0, d, 0, 0); g.font = '12px system-ui,sans-serif'; g.lineWidth = 2;
  let drawn = 0;
  for (const b of V.boxes) {
    if (V.hidden.has(b.lesion_type)) continue;
    const s = styles[b.lesion_type] || {color: '#fff', dash: []};
    const x0 = V.x + V.zoom * b.xmin, y0 = V.y + V.zoom * b.ymin;
    g.strokeStyle = s.color; g.setLineDash(s.dash);
    g.strokeRect(x0, y0, V.zoom * (b.xmax - b.xmin), V.zoom * (b.ymax - b.ymin));
    if ($('#labels').checked) {
      const text = `${b.label} ${prob(b.score)}`, tw = g.measureText(text).width, ty = Math.max(y0, 16);
      g.setLineDash([]); g.fillStyle = 'rgba(0,0,0,0.75)'; g.fillRect(x0, ty - 16, tw + 6, 16);
      g.fillStyle = s.color; g.fillText(text, x0 + 3, ty - 4);
    }
    drawn++;
  }
  cv.dataset.zoom = V.zoom.toFixed(4); cv.dataset.drawn = drawn;
  $('#readout').textContent = `window ${fmt(V.ww * V.step)}, level ${fmt(real(V.c))} (${V.c === V.c0 && V.ww === V.ww0 ?
    "the model's window" : 'set here'}) · zoom ${Math.round(100 * V.zoom)}% · ${V.w} x ${V.h} pixels` + V.probe;
}
function zoomAt(f, px, py) {          // zoom by f about the point (px, py) of the canvas, within 1/4 fit .. 32x
  let z = Math.min(32, Math.max(V.fitZoom / 4, V.zoom * f));
  if (Math.abs(z - 1) < 1e-9) z = 1;  // 1:1 exactly, drawn without smoothing
  V.x = px - (px - V.x) * z / V.zoom; V.y = py - (py - V.y) * z / V.zoom; V.zoom = z; V.fitted = false; later(draw);
}
function fit() {
  const r = $('#view').getBoundingClientRect();
  V.fitZoom = V.zoom = Math.min(r.width / V.w, r.height / V.h);
  V.x = (r.width - V.w * V.zoom) / 2; V.y = (r.height - V.h * V.zoom) / 2; V.fitted = true; draw();
}
function pan(dx, dy) { V.x += dx; V.y += dy; V.fitted = false; draw(); }
function centre() { const r = $('#view').getBoundingClientRect(); return [r.width / 2, r.height / 2]; }
function setWindow(c, ww) { V.c = c; V.ww = Math.max(1, ww); later(windowed); }
function classToggles(boxes) {        // one checkbox per class shown, with its colour, outline and count
  const counts = {};
  boxes.forEach(b => { counts[b.lesion_type] = (counts[b.lesion_type] || 0) + 1; });
  V.hidden.clear();
  $('#classlist').replaceChildren(...Object.keys(counts).map(name => {
    const s = styles[name] || {color: '#fff', dash: [], label: name}, label = document.createElement('label');
    const box = document.createElement('input'), swatch = document.createElement('canvas');
    box.type = 'checkbox'; box.checked = true; box.dataset.lesion = name;
    box.addEventListener('change', () => { box.checked ? V.hidden.delete(name) : V.hidden.add(name); draw(); });
    swatch.width = 28; swatch.height = 12; swatch.className = 'swatch';
    const g = swatch.getContext('2d'); g.strokeStyle = s.color; g.lineWidth = 3; g.setLineDash(s.dash);
    g.beginPath(); g.moveTo(0, 6); g.lineTo(28, 6); g.stroke();
    label.append(box, swatch, ` ${s.label} (${counts[name]})`); return label;
  }));
  $('#noclass').hidden = boxes.length > 0;
}
const cv = $('#view');
cv.addEventListener('wheel', e => { e.preventDefault(); const r = cv.getBoundingClientRect();
  zoomAt(Math.exp(-e.deltaY / 300), e.clientX - r.left, e.clientY - r.top); }, {passive: false});
cv.addEventListener('contextmenu', e => e.preventDefault());
let drag = null;
cv.addEventListener('pointerdown', e => { cv.setPointerCapture(e.pointerId);
  drag = {x: e.clientX, y: e.clientY, wl: e.shiftKey || e.button === 2 || $('#tool').value === 'wl', c: V.c, ww: V.ww,
          px: V.x, py: V.y}; });
cv.addEventListener('pointermove', e => {
  const r = cv.getBoundingClientRect(), ix = Math.floor((e.clientX - r.left - V.x) / V.zoom),
        iy = Math.floor((e.clientY - r.top - V.y) / V.zoom);
  const inside = V.vals && ix >= 0 && iy >= 0 && ix < V.w && iy < V.h;
  V.probe = inside ? ` · pixel (${ix}, ${iy}): ${fmt(real(V.vals[iy * V.w + ix]))}` : '';
  if (!drag) { later(draw); return; }
  const dx = e.clientX - drag.x, dy = e.clientY - drag.y;
  if (drag.wl) { const k = Math.max(V.ww0, 1) / 256; setWindow(drag.c + dy * k, drag.ww * Math.exp(dx / 200)); }
  else { V.x = drag.px + dx; V.y = drag.py + dy; V.fitted = false; later(draw); }
});
['pointerup', 'pointercancel'].forEach(t => cv.addEventListener(t, () => { drag = null; }));
cv.addEventListener('keydown', e => {
  const [px, py] = centre(), keys = {'+': () => zoomAt(1.25, px, py), '=': () => zoomAt(1.25, px, py),
    '-': () => zoomAt(0.8, px, py), '0': fit, '1': actual, r: () => setWindow(V.c0, V.ww0),
    i: () => { $('#invert').checked = !$('#invert').checked; windowed(); },
    ArrowLeft: () => pan(40, 0), ArrowRight: () => pan(-40, 0),
    ArrowUp: () => pan(0, 40), ArrowDown: () => pan(0, -40)};
  if (keys[e.key]) { e.preventDefault(); keys[e.key](); }
});
$('#zoomin').addEventListener('click', () => zoomAt(1.25, ...centre()));
$('#zoomout').addEventListener('click', () => zoomAt(0.8, ...centre()));
$('#fit').addEventListener('click', fit);
function actual() {                  // one image pixel per screen pixel, on whole pixels
  zoomAt(1 / V.zoom, ...centre()); V.x = Math.round(V.x); V.y = Math.round(V.y); later(draw);
}
$('#actual').addEventListener('click', actual);
$('#resetwl').addEventListener('click', () => setWindow(V.c0, V.ww0));
$('#fullwl').addEventListener('click', () => setWindow((V.lo + V.hi) / 2, V.hi - V.lo + 1));
$('#invert').addEventListener('change', windowed);
$('#labels').addEventListener('change', draw);
window.addEventListener('resize', () => { if (V.vals) later(V.fitted ? fit : draw); });   // fitted stays fitted
async function show(j) {
  const call = j.abnormal ? 'abnormal' : 'normal';
  $('#decision').textContent = decision(j.abnormal); $('#decision').className = kind === 'release' ? call : 'model';
  $('#kindnote').hidden = kind === 'release';
  $('#score').textContent = `calibrated p(abnormal) ${prob(j.p_abnormal)} against the threshold ${num(j.threshold, 3)}`;
  $('#pbar').style.width = `${100 * j.p_abnormal}%`; $('#tmark').style.left = `${100 * j.threshold}%`;
  fill('#classifiers', Object.entries(j.classifiers).map(([k, v]) => [k, prob(v)]));
  const shown = j.boxes.filter(b => b.score >= Number(minScore)), low = j.boxes.filter(b => b.score < Number(minScore));
  fill('#boxes', shown.map(boxRow)); fill('#lowboxes', low.map(boxRow));
  $('#noboxes').hidden = shown.length > 0; $('#low').hidden = low.length === 0; $('#low').open = false;
  $('#lowsummary').textContent = `${low.length} box${low.length === 1 ? '' : 'es'} scoring under ${minScore}: ` +
    'likely not lesions (show)';
  fill('#header', header(j));
  $('#warnings').replaceChildren(...j.warnings.map(w => { const li = document.createElement('li');
    li.textContent = w; return li; }));
  const {overlay, view, ...plain} = j;
  $('#json').href = URL.createObjectURL(new Blob([JSON.stringify(plain, null, 2)], {type: 'application/json'}));
  $('#json').download = `${j.image_id}.json`; $('#png').href = overlay; $('#png').download = `${j.image_id}.png`;
  $('#result').hidden = false;
  V.boxes = shown; classToggles(shown);
  $('#viewer').hidden = !j.view;          // the server says in the warnings why there is none
  if (j.view) { await load(j.view); $('#viewer').scrollIntoView({block: 'start'}); }
  say(`${j.source}: predicted`);
}
async function send(file) {
  say(`predicting ${file.name} ...`); $('#result').hidden = true;
  const body = new FormData(); body.append('file', file);
  let r, j;
  try { r = await fetch('predict', {method: 'POST', body}); j = await r.json(); }
  catch (e) { say(`no answer from the server (${e})`, true); return; }
  if (!r.ok) { say(`${file.name} was refused (${r.status}): ${j.error}`, true); return; }
  try { await show(j); } catch (e) { say(`${file.name}: predicted, but the page could not show it (${e})`, true); }
}
$('#file').addEventListener('change', e => { if (e.target.files[0]) send(e.target.files[0]); });
const drop = $('#drop');
const over = on => e => { e.preventDefault(); drop.classList.toggle('over', on); };
['dragenter', 'dragover'].forEach(t => drop.addEventListener(t, over(true)));
['dragleave', 'drop'].forEach(t => drop.addEventListener(t, over(false)));
drop.addEventListener('drop', e => { if (e.dataTransfer.files[0]) send(e.dataTransfer.files[0]); });
