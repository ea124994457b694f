
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
function show(j) {
  $('#overlay').src = j.overlay;
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
