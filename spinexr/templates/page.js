
const $ = s => document.querySelector(s);
const num = (x, d) => Number(x).toFixed(d);
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
function show(j) {
  $('#overlay').src = j.overlay;
  const call = j.abnormal ? 'abnormal' : 'normal';
  $('#decision').textContent = call.toUpperCase(); $('#decision').className = call;
  $('#score').textContent = `p(abnormal) ${num(j.p_abnormal, 3)} against the threshold ${num(j.threshold, 3)}`;
  $('#pbar').style.width = `${100 * j.p_abnormal}%`; $('#tmark').style.left = `${100 * j.threshold}%`;
  fill('#classifiers', Object.entries(j.classifiers).map(([k, v]) => [k, Number(num(v, 3))]));
  fill('#boxes', j.boxes.map(b => [b.lesion_type, Number(num(b.score, 3)), b.xmin, b.ymin, b.xmax, b.ymax]));
  $('#noboxes').hidden = j.boxes.length > 0;
  fill('#header', header(j));
  $('#warnings').replaceChildren(...j.warnings.map(w => { const li = document.createElement('li');
    li.textContent = w; return li; }));
  const {overlay, ...plain} = j;
  $('#json').href = URL.createObjectURL(new Blob([JSON.stringify(plain, null, 2)], {type: 'application/json'}));
  $('#json').download = `${j.image_id}.json`; $('#png').href = overlay; $('#png').download = `${j.image_id}.png`;
  $('#result').hidden = false;
  say(`${j.source}: predicted`);
}
async function send(file) {
  say(`predicting ${file.name} ...`); $('#result').hidden = true;
  const body = new FormData(); body.append('file', file);
  let r, j;
  try { r = await fetch('predict', {method: 'POST', body}); j = await r.json(); }
  catch (e) { say(`no answer from the server (${e})`, true); return; }
  if (!r.ok) { say(`${file.name} was refused (${r.status}): ${j.error}`, true); return; }
  show(j);
}
$('#file').addEventListener('change', e => { if (e.target.files[0]) send(e.target.files[0]); });
const drop = $('#drop');
const over = on => e => { e.preventDefault(); drop.classList.toggle('over', on); };
['dragenter', 'dragover'].forEach(t => drop.addEventListener(t, over(true)));
['dragleave', 'drop'].forEach(t => drop.addEventListener(t, over(false)));
drop.addEventListener('drop', e => { if (e.dataTransfer.files[0]) send(e.dataTransfer.files[0]); });
