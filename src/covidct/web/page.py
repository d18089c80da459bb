"""The single page at ``/``: plain HTML, CSS and JavaScript in Python strings.

Kept as strings (not files) so the page ships with the package without package-data
settings, and works offline: no CDN, no fonts, no framework. The page talks to the API
with fetch(); pictures are fetched too (not <img src>) so a bearer token can be sent.
"""
from __future__ import annotations

import html
import json

from ..constants import DISCLAIMER, SYNTHETIC_NOTICE

CSS = r"""
*{box-sizing:border-box}
body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;color:#1d2430;background:#f3f5f8}
header{background:#13293d;color:#fff;padding:.6em 1.2em;display:flex;gap:1em;align-items:baseline}
header h1{margin:0;font-size:20px}header span{opacity:.8}
#disclaimer{position:sticky;top:0;z-index:9;background:#fff4d6;border-bottom:1px solid #e0b84a;padding:.45em 1.2em;font-weight:600}
#synthetic-banner{background:#6b2fa0;color:#fff;padding:.45em 1.2em;font-weight:600}
main{padding:1em 1.2em;max-width:1300px;margin:auto}
.card{background:#fff;border:1px solid #d7dde5;border-radius:8px;padding:1em;margin-bottom:1em}
#drop{border:2px dashed #7a8ca3;border-radius:8px;padding:2em;text-align:center;cursor:pointer;background:#fafcff}
#drop.over{background:#e6f0ff;border-color:#2a6fdb}
#progress{width:100%;height:10px;margin-top:.6em}
#status{margin-top:.4em;min-height:1.4em}
.error{color:#b00020;font-weight:600}
#result{display:grid;grid-template-columns:minmax(300px,560px) 1fr;gap:1em}
#viewer{position:relative;width:100%;aspect-ratio:1;background:#000;border-radius:6px;overflow:hidden}
#viewer img{position:absolute;inset:0;width:100%;height:100%;object-fit:contain;image-rendering:auto}
#overlay-img{pointer-events:none}
.controls{display:flex;flex-wrap:wrap;gap:.8em;align-items:center;margin:.6em 0}
.controls label{display:flex;gap:.35em;align-items:center}
#slice-slider{width:100%}
#strip{width:100%;height:46px;display:block;cursor:pointer;border:1px solid #d7dde5;border-radius:4px;background:#fbfbfd}
.legend{font-size:12px;color:#5a6678}
.method h3{margin:.2em 0 .3em;font-size:15px}
.bar{display:grid;grid-template-columns:190px 1fr 56px;gap:.5em;align-items:center;margin:.18em 0}
.track{background:#e8ecf2;border-radius:4px;height:14px;overflow:hidden}
.fill{height:100%;background:#4a78b5}.fill.covid{background:#c0392b}
#call{font-size:18px;font-weight:700;margin:.2em 0 .5em}
.meta{font-size:12px;color:#5a6678}
button,select,input[type=range]{font:inherit}
button{background:#13293d;color:#fff;border:0;border-radius:5px;padding:.45em .9em;cursor:pointer}
button.secondary{background:#e8ecf2;color:#13293d}
#phi{background:#ffe8e8;padding:.4em;border-radius:4px}
[hidden]{display:none!important}
"""

JS = r"""
const CFG = JSON.parse(document.getElementById('config').textContent);
const $ = (id) => document.getElementById(id);
let job = null, result = null, nSlices = 0, current = 0, blobs = new Map();

function token() { return sessionStorage.getItem('covidct-token') || ''; }
function headers() { const t = token(); return t ? {'Authorization': 'Bearer ' + t} : {}; }
if (CFG.token_required) {
  $('token-box').hidden = false;
  $('token').value = token();
  $('token').addEventListener('change', (e) => sessionStorage.setItem('covidct-token', e.target.value.trim()));
}
function setStatus(text, isError) { $('status').textContent = text; $('status').className = isError ? 'error' : ''; }

async function api(path) {
  const r = await fetch(path, {headers: headers()});
  if (!r.ok) { let d = r.statusText; try { d = (await r.json()).detail || d; } catch (e) {} throw new Error(r.status + ': ' + d); }
  return r;
}

// Upload ---------------------------------------------------------------------------
const drop = $('drop');
drop.addEventListener('click', () => $('file-input').click());
drop.addEventListener('dragover', (e) => { e.preventDefault(); drop.classList.add('over'); });
drop.addEventListener('dragleave', () => drop.classList.remove('over'));
drop.addEventListener('drop', (e) => { e.preventDefault(); drop.classList.remove('over'); upload(e.dataTransfer.files); });
// Cleared after each upload, so the next choice (even the same file again) starts afresh.
$('file-input').addEventListener('change', (e) => { upload(e.target.files); e.target.value = ''; });

function upload(files) {
  if (!files || !files.length) return;
  const form = new FormData();
  for (const f of files) form.append('files', f, f.name);
  const xhr = new XMLHttpRequest();
  xhr.open('POST', '/api/scans');
  const h = headers(); for (const k in h) xhr.setRequestHeader(k, h[k]);
  $('progress').hidden = false; $('progress').value = 0; $('result').hidden = true;
  $('synthetic-banner').hidden = true;
  setStatus('Uploading ' + files.length + ' file(s)...');
  xhr.upload.onprogress = (e) => { if (e.lengthComputable) $('progress').value = 50 * e.loaded / e.total; };
  xhr.onload = () => {
    let body = {}; try { body = JSON.parse(xhr.responseText); } catch (e) {}
    if (xhr.status !== 202) { $('progress').hidden = true; setStatus('Refused (' + xhr.status + '): ' + (body.detail || xhr.statusText), true); return; }
    job = body.id; $('progress').value = 55; poll();
  };
  xhr.onerror = () => setStatus('Upload failed: the server could not be reached', true);
  xhr.send(form);
}

async function poll() {
  try {
    const data = await (await api('/api/scans/' + job)).json();
    if (data.status === 'done') { $('progress').value = 100; setStatus('Done.'); show(data.result); return; }
    if (data.status === 'failed') { $('progress').hidden = true; setStatus('Could not analyse the scan: ' + data.error, true); return; }
    $('progress').value = data.status === 'running' ? 75 : 60;
    setStatus((data.status === 'running' ? 'Running: ' : 'Queued: ') + (data.stage || ''));
    setTimeout(poll, 700);
  } catch (e) { setStatus(String(e.message || e), true); }
}

// Result -----------------------------------------------------------------------------
function pct(p) { return (100 * p).toFixed(1) + '%'; }

function show(res) {
  result = res; nSlices = res.scan.shape[0]; blobs = new Map();
  $('result').hidden = false;
  $('synthetic-banner').hidden = !res.synthetic;
  $('call').textContent = 'Patient-level call: ' + res.call.label +
      ' (COVID-19 probability ' + pct(res.call.covid19_probability) + ')';
  $('scan-summary').textContent = res.scan.summary;
  if (CFG.show_phi && res.phi) {
    $('phi').hidden = false;
    $('phi').textContent = Object.entries(res.phi).map(([k, v]) => k + ': ' + v).join(' | ');
  } else { $('phi').hidden = true; }
  const probs = $('probs'); probs.innerHTML = '';
  for (const [method, pred] of Object.entries(res.methods)) {
    const box = document.createElement('div'); box.className = 'method';
    box.innerHTML = '<h3></h3>'; box.querySelector('h3').textContent = method + ': ' + pred.label;
    const names = Object.keys(pred.probabilities);
    names.forEach((name, i) => {
      const p = pred.probabilities[name];
      const row = document.createElement('div'); row.className = 'bar prob-bar';
      row.dataset.method = method; row.dataset.cls = name; row.dataset.p = p;
      row.innerHTML = '<span></span><div class="track"><div class="fill"></div></div><span></span>';
      row.children[0].textContent = name;
      const fill = row.querySelector('.fill'); fill.style.width = pct(p);
      if (i === names.length - 1) fill.classList.add('covid');
      row.children[2].textContent = pct(p);
      box.appendChild(row);
    });
    const m = pred.model || {};
    const meta = document.createElement('div'); meta.className = 'meta';
    const file = (m.file && typeof m.file === 'object') ? m.file.name : m.file;
    meta.textContent = 'model ' + (file || m.name || method) + ', covidct ' + (m.version || m.covidct_version || '?') +
        (m.synthetic ? ', trained on SYNTHETIC data' : '') + '; ' + pred.aggregation;
    box.appendChild(meta);
    const inv = (pred.lungs || {}).involvement;
    if (inv) {  // textContent only: numbers from the result JSON, never markup
      const lungs = document.createElement('div'); lungs.className = 'meta lungs';
      const v = inv.lung_volume_ml || {};
      lungs.textContent = 'Lungs (research measurement): right ' + v.right + ' mL, left ' + v.left +
          ' mL; ' + inv.involved_percent + '% with infection-like density' +
          (inv.map_share_percent !== undefined ? ', ' + inv.map_share_percent + '% under the infection map' : '') +
          '; zone score ' + inv.severity_score + '/24';
      box.appendChild(lungs);
    }
    probs.appendChild(box);
  }
  for (const [method, err] of Object.entries(res.errors || {})) {
    const p = document.createElement('p'); p.className = 'error'; p.textContent = method + ' not run: ' + err; probs.appendChild(p);
  }
  const timings = Object.entries(res.timings_s).map(([k, v]) => k + ' ' + v.toFixed(2) + ' s').join(', ');
  $('timings').textContent = 'Timings: ' + timings;
  // Controls
  $('window-box').hidden = res.scan.units !== 'HU';
  const sel = $('overlay-select'); sel.innerHTML = '<option value="none">none</option>';
  for (const [method, view] of Object.entries(res.display || {})) {
    if (!res.methods[method] || !res.slice_scores[method]) continue;
    const opt = document.createElement('option'); opt.value = view.overlay; opt.textContent = view.overlay_label; sel.appendChild(opt);
  }
  sel.value = sel.options.length > 1 ? sel.options[1].value : 'none';
  $('slice-slider').max = nSlices - 1;
  current = bestSlice(); $('slice-slider').value = current;
  drawStrip(); showSlice();
}

function bestSlice() {
  // The slice a probability-scaled method scores highest, else the first method's.
  const rows = Object.entries(result.slice_scores);
  const pick = rows.find(([m]) => view(m).strip_scale === 'probability') || rows[0];
  const s = pick ? pick[1] : [];
  let best = Math.floor(nSlices / 2), top = -1;
  s.forEach((v, k) => { if (v !== null && v > top) { top = v; best = k; } });
  return best;
}

async function picture(k, overlay) {
  const win = $('window-select').value;
  const key = k + '/' + overlay + '/' + win;
  if (!blobs.has(key)) {
    const r = await api('/api/scans/' + result.id + '/slices/' + k + '.png?overlay=' + overlay + '&window=' + win);
    blobs.set(key, URL.createObjectURL(await r.blob()));
  }
  return blobs.get(key);
}

let drawing = 0;
async function showSlice() {
  const ticket = ++drawing, k = current, overlay = $('overlay-select').value;
  $('slice-label').textContent = 'slice ' + (k + 1) + ' / ' + nSlices;
  try {
    const base = await picture(k, 'none');
    const over = overlay === 'none' ? null : await picture(k, overlay);
    if (ticket !== drawing) return;
    $('base-img').src = base;
    $('overlay-img').hidden = !over;
    if (over) $('overlay-img').src = over;
    $('overlay-img').style.opacity = $('opacity').value / 100;
  } catch (e) { setStatus('Slice picture: ' + (e.message || e), true); }
  drawStrip();
}

function setSlice(k) { current = Math.max(0, Math.min(nSlices - 1, k)); $('slice-slider').value = current; showSlice(); }
$('slice-slider').addEventListener('input', (e) => setSlice(+e.target.value));
$('viewer').addEventListener('wheel', (e) => { e.preventDefault(); setSlice(current + (e.deltaY > 0 ? 1 : -1)); }, {passive: false});
document.addEventListener('keydown', (e) => { if (!result) return; if (e.key === 'ArrowUp') setSlice(current - 1); if (e.key === 'ArrowDown') setSlice(current + 1); });
$('overlay-select').addEventListener('change', showSlice);
$('window-select').addEventListener('change', showSlice);
$('opacity').addEventListener('input', (e) => { $('overlay-img').style.opacity = e.target.value / 100; });

// The per-slice score strip: one row per method, darker = more evidence for COVID-19.
function view(method) { return (result.display || {})[method] || {strip_scale: 'relative', strip_label: method, colour: '60,60,160'}; }
function drawStrip() {
  const c = $('strip'), ctx = c.getContext('2d');
  c.width = c.clientWidth * devicePixelRatio; c.height = c.clientHeight * devicePixelRatio;
  ctx.clearRect(0, 0, c.width, c.height);
  const rows = Object.entries(result.slice_scores), w = c.width / nSlices, h = c.height / Math.max(1, rows.length);
  rows.forEach(([method, scores], r) => {
    const peak = Math.max(1e-9, ...scores.filter((v) => v !== null));
    const col = view(method).colour;
    scores.forEach((v, k) => {
      if (v === null) { ctx.fillStyle = '#eceff3'; }
      else { const a = view(method).strip_scale === 'relative' ? v / peak : v; ctx.fillStyle = `rgba(${col},${0.08 + 0.92 * a})`; }
      ctx.fillRect(k * w, r * h, Math.max(1, w - 0.5), h - 1);
    });
  });
  ctx.strokeStyle = '#13293d'; ctx.lineWidth = 2 * devicePixelRatio;
  ctx.strokeRect(current * w, 1, Math.max(2, w), c.height - 2);
  $('strip-legend').textContent = rows.map(([m], r) => 'row ' + (r + 1) + ': ' +
      view(m).strip_label).join(' | ');
}
$('strip').addEventListener('click', (e) => { const r = e.target.getBoundingClientRect(); setSlice(Math.floor((e.clientX - r.left) / r.width * nSlices)); });
window.addEventListener('resize', () => { if (result) drawStrip(); });

async function download(path, name) {
  try {
    const blob = await (await api(path)).blob();
    const a = document.createElement('a'); a.href = URL.createObjectURL(blob); a.download = name; a.click();
  } catch (e) { setStatus('Download: ' + (e.message || e), true); }
}
$('download-json').addEventListener('click', () => download('/api/scans/' + result.id + '/result.json', 'covidct-' + result.id.slice(0, 8) + '.json'));
$('download-report').addEventListener('click', () => download('/api/scans/' + result.id + '/report.html', 'covidct-' + result.id.slice(0, 8) + '-report.html'));
"""

BODY = """
<div id="disclaimer">{disclaimer}</div>
<div id="synthetic-banner" hidden>{synthetic}</div>
<header><h1>covidct</h1><span>COVID-19 detection in chest CT: BiT slice classifier and CovidCTNet</span></header>
<main>
<section class="card">
  <div id="token-box" class="controls" hidden><label>API token <input id="token" type="password" size="32" autocomplete="off"></label></div>
  <div id="drop">Drop a scan here, or click to choose: a <b>.zip</b> of a DICOM series, a <b>NIfTI</b> file (.nii, .nii.gz), or one or more <b>PNG/JPG</b> slices.
    <input id="file-input" type="file" multiple hidden accept=".zip,.nii,.gz,.png,.jpg,.jpeg,.dcm"></div>
  <progress id="progress" max="100" value="0" hidden></progress>
  <div id="status"></div>
</section>
<section id="result" hidden>
  <div class="card">
    <div id="viewer"><img id="base-img" alt="CT slice"><img id="overlay-img" alt="heat map overlay" hidden></div>
    <input id="slice-slider" type="range" min="0" max="0" value="0" aria-label="slice">
    <div class="controls">
      <span id="slice-label"></span>
      <label id="window-box">window <select id="window-select"><option value="lung">lung</option><option value="mediastinum">mediastinum</option></select></label>
      <label>overlay <select id="overlay-select"></select></label>
      <label>opacity <input id="opacity" type="range" min="0" max="100" value="70"></label>
    </div>
    <canvas id="strip" title="per-slice scores: click to go to a slice"></canvas>
    <div id="strip-legend" class="legend"></div>
  </div>
  <div class="card">
    <div id="call"></div>
    <div id="phi" hidden></div>
    <div id="scan-summary" class="meta"></div>
    <div id="probs"></div>
    <p class="controls"><button id="download-json">Download JSON</button><button id="download-report" class="secondary">Download report</button></p>
    <div id="timings" class="meta"></div>
    <p class="meta">Scroll over the slice, use the slider or the arrow keys to move through slices; click the strip to jump to a slice.</p>
  </div>
</section>
</main>
"""


def render_page(token_required: bool = False, show_phi: bool = False) -> str:
    config = json.dumps({"token_required": token_required, "show_phi": show_phi})
    body = BODY.format(disclaimer=html.escape(DISCLAIMER), synthetic=html.escape(SYNTHETIC_NOTICE))
    return ("<!doctype html><html lang='en'><head><meta charset='utf-8'>"
            "<meta name='viewport' content='width=device-width,initial-scale=1'>"
            f"<title>covidct</title><style>{CSS}</style></head><body>{body}"
            f"<script type='application/json' id='config'>{config}</script>"
            f"<script>{JS}</script></body></html>")
