"""`spinexr_serve` as its users meet it: the real server started as a command on a free loopback port, spoken to
over HTTP (every bad-input kind, the same answers as spinexr_predict, many clients at once) and from Debian's
chromium (the page, the API docs), with nothing requested off the machine."""
import asyncio, base64, contextlib, json, os, shutil, socket, subprocess, threading, time
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest
from conftest import SHOTS, Visit, command, run_cli

from spinexr.core import clinical_name
from spinexr.dicom import read_dicom, to_uint8
from spinexr.dicom_out import presentation_state_boxes, report_findings
from spinexr.bundle import bundle_sha256, tiny_bundle
from spinexr.inputs import NOT_AN_IMAGE, read_view

@pytest.fixture(scope='module')
def bundle(prepared):
    "A bundle trained for a moment on a phantom (machinery, not a model), made once per session's prep tree."
    return tiny_bundle(prepared(n_studies=100, size=512, prep_size=256))

@pytest.fixture(scope='module')
def unseen(phantom_release):
    "DICOMs the bundle never saw; read only."
    return sorted(phantom_release(n_studies=6, seed=77, size=512).glob('*_images/*.dicom'))

def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]

@contextlib.contextmanager
def serving(bundle, tmp: Path, *args):
    """`spinexr_serve BUNDLE --port FREE ARGS` running, its temporary files in `tmp`: (base URL, process); stopped
    after."""
    port, tmp = free_port(), Path(tmp)
    tmp.mkdir(parents=True, exist_ok=True)
    p = subprocess.Popen([command('spinexr_serve'), str(bundle), '--port', str(port), *map(str, args)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env={**os.environ, 'TMPDIR': str(tmp)})
    url = f'http://127.0.0.1:{port}'
    try:
        t0 = time.time()
        while True:
            if p.poll() is not None: pytest.fail(f'spinexr_serve exited {p.returncode}: {p.stderr.read()[-3000:]}')
            try:
                if httpx.get(f'{url}/health', timeout=2).status_code == 200: break
            except httpx.TransportError: pass
            assert time.time() - t0 < 180, 'spinexr_serve did not answer /health within 180 s'
            time.sleep(0.3)
        yield url, p
    finally:
        p.terminate()
        try: p.wait(30)
        except subprocess.TimeoutExpired: p.kill(); p.wait()

@pytest.fixture(scope='module')
def server(bundle, tmp_path_factory):
    "The server of `bundle` with --max_mb 1, and the folder it keeps its temporary files in."
    tmp = tmp_path_factory.mktemp('serve_tmp')
    with serving(bundle, tmp, '--max_mb', 1) as (url, p): yield url, p, tmp

def post(url, name, data, **kw) -> httpx.Response:
    return httpx.post(f'{url}/predict', files=dict(file=(name, data)), timeout=120, **kw)

def uploads_left(tmp: Path) -> list:
    "The upload folders left under the server's private parent in `tmp` (`spinexr-serve-UID/PID-START/upload-*`)."
    return sorted(p.name for p in Path(tmp).glob('spinexr-serve-*/*/upload-*'))

def as_png(dicom: Path, path: Path) -> Path:
    "A DICOM's image as a PNG, as a user might export one."
    img, _ = read_dicom(dicom)
    cv2.imwrite(str(path), to_uint8(img))
    return path

# --- the answers ------------------------------------------------------------------------------------------

def decoded_png(url: str) -> np.ndarray:
    "A PNG data URL as OpenCV reads it (blue, green, red)."
    return cv2.imdecode(np.frombuffer(base64.b64decode(url.split(',', 1)[1]), np.uint8), cv2.IMREAD_COLOR)

def test_answers_equal_spinexr_predicts(server, bundle, unseen, tmp_path):
    ("Each upload's JSON is the record spinexr_predict writes for the same file; its overlay is at the file's size, "
     "and its viewer image holds the file's own values.")
    url, _, tmp = server
    files = [*unseen[:3], as_png(unseen[3], tmp_path/'exported.png')]
    # --batch 1, as the server predicts one request at a time when idle: a batch's make-up moves the 7th digit
    r = run_cli('spinexr_predict', bundle, *files, '--out', tmp_path/'p', '--batch', 1, timeout=300)
    assert r.returncode == 0, r.stderr
    ref = {i['image_id']: i for i in json.loads((tmp_path/'p'/'predictions.json').read_text())['images']}
    for f in files:
        res = post(url, f.name, f.read_bytes())
        assert res.status_code == 200, res.text
        got = res.json()
        assert [b.pop('label') for b in got['boxes']] == [clinical_name(b['lesion_type']) for b in got['boxes']]
        assert {k: v for k, v in got.items() if k not in ('overlay', 'view', 'threshold', 'source', 'min_score')} == \
               {k: v for k, v in ref[f.stem].items() if k != 'source'}
        assert got['min_score'] == 0.25
        assert got['source'] == f.name and got['abnormal'] == (got['p_abnormal'] >= got['threshold'])
        # the overlay at the image's own size, its text in a strip above; the viewer's values exactly the file's
        full, view = read_view(f)
        ov = decoded_png(got['overlay'])
        assert ov.shape[1] == got['orig_width'] and ov.shape[0] > got['orig_height'] == len(full)
        assert np.abs(ov[-len(full):, :, 0].astype(int) - full).mean() < 2      # under the strip: the image itself
        rgb = decoded_png(got['view']['png'])
        assert np.array_equal(rgb[..., 2].astype(np.uint16) * 256 + rgb[..., 1], view['values'])
        assert (got['view']['center'], got['view']['width']) == (view['center'], view['width'])
    assert ref['exported']['dicom'] is None and ref[unseen[0].stem]['dicom']['sop_uid'] == unseen[0].stem
    # ?dicom=true: the presentation state and SR of a DICOM upload, the objects spinexr_predict --dicom writes
    got = post(url, unseen[0].name, unseen[0].read_bytes(), params=dict(dicom='true', overlay='false')).json()
    for kind, data in got['dicom_results'].items():
        (tmp_path/f'{kind}.dcm').write_bytes(base64.b64decode(data))
    sr = report_findings(tmp_path/'sr.dcm')
    assert (sr['p_abnormal'], sr['source_uid'], sr['boxes']) == (
        got['p_abnormal'], unseen[0].stem, [b for b in got['boxes'] if b['score'] >= 0.25])
    assert len(presentation_state_boxes(tmp_path/'gsps.dcm')) == len(sr['boxes'])
    png = post(url, files[-1].name, files[-1].read_bytes(), params=dict(dicom='true')).json()
    assert png['dicom_results'] is None and any('not a DICOM file' in w for w in png['warnings'])
    assert uploads_left(tmp) == []                                   # every upload's folder is removed

def test_health_and_model_card(server, bundle):
    url, _, _ = server
    h = httpx.get(f'{url}/health').json()
    version = json.loads((Path(bundle)/'bundle.json').read_text())['version']
    assert h['model_loaded'] and h['bundle']['sha256'] == bundle_sha256(bundle) and h['bundle']['version'] == version
    assert h['bundle']['files']['bundle.json'] and h['versions']['uvicorn'] and h['versions']['torch']
    card = httpx.get(f'{url}/model', params={'format': 'json'}).json()
    b = json.loads((Path(bundle)/'bundle.json').read_text())
    assert card['decision']['threshold'] == b['ensemble']['threshold'] and card['sha256'] == bundle_sha256(bundle)
    assert card['validation']['classifier_auroc'] and 'not a diagnostic device' in card['intended_use']
    assert card['training_data']['images_per_split'] == b['trained_on']['images']
    assert '"/' not in json.dumps(card)                                   # no absolute path of this machine
    page = httpx.get(f'{url}/model')
    assert page.headers['content-type'].startswith('text/html') and 'Intended use' in page.text
    assert httpx.get(f'{url}/model', params={'format': 'pdf'}).status_code == 422

# --- bad input ----------------------------------------------------------------------------------------------

def _chunked(data: bytes, boundary: str, name: str):
    "A multipart body sent in chunks, without a Content-Length (as a streaming client sends it)."
    yield (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
           f'Content-Type: application/octet-stream\r\n\r\n').encode()
    for k in range(0, len(data), 1 << 16): yield data[k:k + (1 << 16)]
    yield f'\r\n--{boundary}--\r\n'.encode()

def test_every_bad_input_gets_a_4xx_and_the_reason_spinexr_predict_gives(server, bundle, unseen, tmp_path):
    """The reliability suite's bad DICOMs and the web's own bad requests: each a 4xx JSON answer with its reason (for a
    file, spinexr_predict's reason for the same file), never a 500; the table is saved beside the screenshots."""
    from test_reliability import TALLY, bad_dicoms
    url, p, tmp = server
    src = tmp_path/'bad'; src.mkdir()
    good = [Path(shutil.copy(f, src)) for f in unseen[:4]]
    cases = [(n, k) for n, k, _ in bad_dicoms(src, good) if k not in ('two files, one image id', 'unusable file name')]
    r = run_cli('spinexr_predict', bundle, src, '--out', tmp_path/'p', '--no_overlays', timeout=600)
    why = {Path(f['source']).name: f['error'].removeprefix(f"{f['source']}: ")
           for f in json.loads((tmp_path/'p'/'predictions.json').read_text())['failures']}
    rows = []
    def check(kind, res, status, reason):
        body = res.json()
        rows.append((kind, res.status_code, body.get('error', '')))
        assert res.status_code == status and body['status'] == status, (kind, res.status_code, res.text[:300])
        assert reason in body['error'] and 'Traceback' not in res.text, (kind, body['error'])
    for name, kind in cases:                          # the DICOM kinds: the same reason as spinexr_predict's ...
        status = {'zero bytes': 400,                                  # an empty upload is a bad request
                  'declared size far larger than the data': 413,      # over the pixel budget, from its header
                  'text file named .dicom': 415}.get(kind, 422)       # ... but for a name the content belies
        reason = NOT_AN_IMAGE if status == 415 else why[name]
        check(kind, post(url, name, (src/name).read_bytes()), status, f'{name}: {reason}')
    raw = unseen[0].read_bytes()
    grey = to_uint8(read_dicom(unseen[0], 256)[0])
    photo = np.dstack([grey, grey[::-1], np.full_like(grey, 60)])
    web = [('no file field', httpx.post(f'{url}/predict', data=dict(image='x')), 400, "field 'file'"),
           ('not a multipart body', httpx.post(f'{url}/predict', json=dict(file='x')), 400, "field 'file'"),
           ('a text field named file', httpx.post(f'{url}/predict', data=dict(file='x')), 400, "field 'file'"),
           ('empty file', post(url, 'empty.dcm', b''), 400, 'empty file (0 bytes)'),
           ('over --max_mb, declared', post(url, 'big.dcm', raw + bytes(1 << 20)), 413, 'larger than 1 MB'),
           ('over --max_mb, chunked', httpx.post(f'{url}/predict',
                                                 content=_chunked(raw + bytes(2 << 20), 'b0', 'big.dcm'),
                                                 headers={'content-type': 'multipart/form-data; boundary=b0'}),
            413, 'larger than 1 MB'),
           ('neither DICOM, PNG nor JPEG', post(url, 'notes.txt', b'hello'), 415, 'not a DICOM, PNG or JPEG'),
           ('broken PNG', post(url, 'broken.png', b'\x89PNG\r\n\x1a\n garbage'), 422, 'not a readable PNG or JPEG'),
           ('colour photograph', post(url, 'photo.jpg', cv2.imencode('.jpg', photo)[1].tobytes()), 422,
            'a colour image'),
           ('blank image', post(url, 'blank.png', cv2.imencode('.png', np.full((300, 200), 9, np.uint8))[1].tobytes()),
            422, 'almost uniform'),
           ('binary mask', post(url, 'mask.png', cv2.imencode('.png', (grey > 128).astype(np.uint8) * 255)[1]
                                .tobytes()),
            422, 'only 2 grey levels'),
           ('GET /predict', httpx.get(f'{url}/predict'), 405, 'Method Not Allowed'),
           ('an unknown address', httpx.get(f'{url}/../etc/passwd'), 404, 'Not Found')]
    for kind, res, status, reason in web: check(kind, res, status, reason)
    # a hostile file name is a name, not a path: answered under a safe id, nothing written where it points
    res = post(url, '../../../../tmp/evil.dcm', raw)
    assert res.status_code == 200 and res.json()['image_id'] == 'evil' and not Path('/tmp/evil.dcm').exists()
    assert p.poll() is None and uploads_left(tmp) == []             # still serving; no upload left behind
    SHOTS.mkdir(exist_ok=True)
    cell = lambda v: str(v).replace('|', '\\|')
    (SHOTS/'serve_bad_inputs.md').write_text('| kind | status | reason |\n|---|---|---|\n' + ''.join(
        f'| {cell(k)} | {s} | {cell(e)} |\n' for k, s, e in rows))
    TALLY['bad-input kinds'] += len(rows); TALLY['5xx'] += sum(s >= 500 for _, s, _ in rows)

def test_a_dicom_without_modality_or_body_part_is_accepted_and_a_chest_one_warned_about(server, unseen, tmp_path):
    "De-identified releases often drop Modality and Body Part Examined: accepted; a header saying CHEST: a warning."
    import pydicom
    url, _, _ = server
    ds = pydicom.dcmread(unseen[0])
    del ds.Modality, ds.BodyPartExamined
    ds.save_as(tmp_path/'bare.dicom')
    res = post(url, 'bare.dicom', (tmp_path/'bare.dicom').read_bytes())
    assert res.status_code == 200 and res.json()['dicom']['modality'] == '', res.text[:300]
    ds.Modality, ds.BodyPartExamined = 'CR', 'CHEST'
    ds.save_as(tmp_path/'chest.dicom')
    res = post(url, 'chest.dicom', (tmp_path/'chest.dicom').read_bytes())
    assert res.status_code == 200 and any("Body Part Examined is 'CHEST'" in w for w in res.json()['warnings'])

# --- many at once --------------------------------------------------------------------------------------------

class PeakRSS:
    "The peak resident memory of a process (and its children), sampled every 20 ms while in the `with` block."
    def __init__(self, pid): self.pid, self.peak, self.stop = pid, 0, threading.Event()
    def _sample(self):
        import psutil
        p = psutil.Process(self.pid)
        while not self.stop.is_set():
            try: self.peak = max(self.peak, sum(q.memory_info().rss for q in [p, *p.children(recursive=True)]))
            except psutil.Error: pass
            time.sleep(0.02)
    def __enter__(self):
        self.t = threading.Thread(target=self._sample, daemon=True); self.t.start(); return self
    def __exit__(self, *a): self.stop.set(); self.t.join()

async def _concurrently(url, uploads, connections):
    async with httpx.AsyncClient(timeout=300, limits=httpx.Limits(max_connections=connections)) as c:
        return await asyncio.gather(*(c.post(f'{url}/predict?overlay=false', files=dict(file=(n, d)))
                                      for n, d in uploads))

def test_fifty_concurrent_requests_all_answered_right(server, unseen):
    "50 requests at once from one client: each answered 200 with the answer it gets alone; batched; memory bounded."
    url, p, tmp = server
    alone = {f.name: post(url, f.name, f.read_bytes(), params=dict(overlay='false')).json() for f in unseen[:5]}
    before = httpx.get(f'{url}/health').json()['queue']['batches_run']
    uploads = [(f.name, f.read_bytes()) for f in unseen[:5]] * 10
    t0 = time.time()
    with PeakRSS(p.pid) as rss: answers = asyncio.run(_concurrently(url, uploads, 50))
    secs = time.time() - t0
    assert [a.status_code for a in answers] == [200] * 50
    for (name, _), a in zip(uploads, answers):
        got, ref = a.json(), alone[name]
        assert abs(got['p_abnormal'] - ref['p_abnormal']) < 1e-5 and got['abnormal'] == ref['abnormal'], name
        assert [b['lesion_type'] for b in got['boxes']] == [b['lesion_type'] for b in ref['boxes']], name
        assert np.allclose([[b[c] for c in ('xmin', 'ymin', 'xmax', 'ymax')] for b in got['boxes']],
                           [[b[c] for c in ('xmin', 'ymin', 'xmax', 'ymax')] for b in ref['boxes']], atol=0.05)
    batches = httpx.get(f'{url}/health').json()['queue']['batches_run'] - before
    print(f'50 concurrent requests: {secs:.1f} s, {batches} batches, server peak RSS {rss.peak / 2**20:.0f} MiB')
    assert batches < 50                                             # waiting requests were batched
    assert rss.peak < 4 * 2**30 and uploads_left(tmp) == []

def test_a_full_queue_refuses_with_503_and_retry_after(bundle, unseen, tmp_path):
    "With room for 2 waiting requests, a burst of 12 gets some 200s and some 503s with Retry-After, nothing else."
    with serving(bundle, tmp_path/'tmp', '--queue', 2, '--batch', 1) as (url, p):
        answers = asyncio.run(_concurrently(url, [(unseen[0].name, unseen[0].read_bytes())] * 12, 12))
    codes = sorted(a.status_code for a in answers)
    assert set(codes) == {200, 503} and codes.count(200) >= 2, codes
    busy = [a for a in answers if a.status_code == 503]
    assert all(a.headers['retry-after'] == '2' and 'busy' in a.json()['error'] for a in busy)

# --- in a browser --------------------------------------------------------------------------------------------

def shown_probability(p: float) -> str:
    "A probability as the page shows it: three decimals, '> 0.999' and '< 0.001' at the ends."
    return '> 0.999' if p > 0.999 else '< 0.001' if p < 0.001 else f'{p:.3f}'

def no_sideways_scroll(page) -> bool:
    return page.evaluate('document.documentElement.scrollWidth <= document.documentElement.clientWidth')

def at_widths(page, name: str):
    "Screenshots of `page` at 1280 and 400 px wide (screenshots/NAME-1280.png, -400.png), neither scrolling sideways."
    SHOTS.mkdir(exist_ok=True)
    for width in (400, 1280):
        page.set_viewport_size(dict(width=width, height=900 if width > 400 else 860))
        page.wait_for_timeout(200)                                        # the viewer redraws on resize
        assert no_sideways_scroll(page), (name, width)
        page.screenshot(path=str(SHOTS/f'{name}-{width}.png'))

VIEWER_READY = "document.querySelector('#view').dataset.drawn !== undefined"

def test_the_page_in_chromium(server, browser, unseen):
    """A user opens the page, chooses a DICOM: the viewer, the score, the decision and the box table appear; no
    request leaves 127.0.0.1; screenshots at 1280 and 400 px before and after, neither scrolling sideways."""
    url, _, _ = server
    v = Visit(browser, f'{url}/')
    try:
        page = v.page
        assert 'not a diagnostic device' in page.inner_text('.note') and 'phantom' in page.inner_text('.caveat')
        at_widths(page, 'page-before')
        with page.expect_response(lambda r: r.url.endswith('/predict')) as res:
            page.set_input_files('#file', str(unseen[1]))
        j = res.value.json()
        page.wait_for_selector('#result', state='visible', timeout=60_000)
        page.wait_for_function(VIEWER_READY, timeout=60_000)
        at_widths(page, 'page-after')
        call = 'Above' if j['abnormal'] else 'Below'          # a phantom bundle's call is not worded as a finding
        assert page.inner_text('#decision') == f'{call} the threshold (a phantom model: not a finding)'
        assert f"calibrated p(abnormal) {shown_probability(j['p_abnormal'])}" in page.inner_text('#score')
        low = [b for b in j['boxes'] if b['score'] < j['min_score']]
        assert page.locator('#boxes tbody tr').count() == len(j['boxes']) - len(low)
        assert page.locator('#lowboxes tbody tr').count() == len(low) and not page.locator('#lowboxes').is_visible()
        assert 'Spondylolysthesis' not in page.inner_text('#result')         # the clinical spelling only
        assert page.locator('#classifiers tbody tr').count() == 3
        assert 'raw p(abnormal)' in page.inner_text('#classifiers')
        assert page.locator('#classifiers tbody td:nth-child(2)').all_inner_texts() == [
            shown_probability(v) for v in j['classifiers'].values()]
        assert 'MONOCHROME' in page.inner_text('#header')
        assert page.get_attribute('#json', 'download') == f"{unseen[1].stem}.json"
        page.screenshot(path=str(SHOTS/'serve.png'), full_page=True)
        assert v.errors == [] and v.failed == [] and v.foreign_hosts() == set(), (v.errors, v.failed, v.requests)
        # a refused file is explained on the page, not as a crash
        page.set_input_files('#file', files=[dict(name='notes.txt', mimeType='text/plain', buffer=b'hello')])
        page.wait_for_selector('#status.error')
        assert 'refused (415)' in page.inner_text('#status')
    finally: v.close()

def canvas_grey(page, x: int, y: int) -> int:
    "The grey level the viewer's canvas shows at (x, y) of the canvas."
    return page.evaluate(f"document.querySelector('#view').getContext('2d').getImageData({x}, {y}, 1, 1).data[0]")

def test_the_viewer_in_chromium(bundle, browser, unseen, tmp_path):
    """The viewer shows the file's own values, windowed as the model's reader did; it zooms about the pointer, pans,
    sets window and level, and hides and shows each class's boxes."""
    with serving(bundle, tmp_path/'tmp', '--min_score', 0) as (url, _):
        answers = {f: post(url, f.name, f.read_bytes(), params=dict(overlay='false')).json() for f in unseen[:6]}
        boxed = next(f for f, a in answers.items() if a['boxes'])         # the first with a box to show
        v = Visit(browser, f'{url}/')
        try:
            page = v.page
            with page.expect_response(lambda r: r.url.endswith('/predict')) as res:
                page.set_input_files('#file', str(boxed))
            j = res.value.json()
            page.wait_for_function(VIEWER_READY, timeout=60_000)
            V = lambda expr: page.evaluate(f'viewer.{expr}')
            values = read_view(boxed)[1]['values']
            assert (V('w'), V('h')) == (values.shape[1], values.shape[0])
            assert V('vals.reduce((a, b) => a + b, 0)') == int(values.sum(dtype=np.int64))     # decoded exactly
            assert V('vals.slice(0, 4096).join()') == ','.join(map(str, values.ravel()[:4096]))
            drawn = lambda: int(page.get_attribute('#view', 'data-drawn'))
            assert drawn() == len(j['boxes'])
            kinds = [b['lesion_type'] for b in j['boxes']]
            first = page.locator('#classlist input').first
            hidden = kinds.count(first.get_attribute('data-lesion'))
            first.uncheck(); assert drawn() == len(kinds) - hidden
            first.check(); assert drawn() == len(kinds)
            for box in page.locator('#classlist input').all(): box.uncheck()
            assert drawn() == 0
            # 1:1, then the canvas's centre pixel is the image's, through the model's window
            page.click('#actual'); page.wait_for_timeout(100)
            assert page.get_attribute('#view', 'data-zoom') == '1.0000'
            cw, ch = V('off.width'), V('off.height')
            x, y = page.evaluate("[Math.floor(document.querySelector('#view').width / 2), "
                                 "Math.floor(document.querySelector('#view').height / 2)]")
            ix, iy = int(np.floor(x + 0.5 - V('x'))), int(np.floor(y + 0.5 - V('y')))   # the pixel's centre
            assert 0 <= ix < cw and 0 <= iy < ch
            t = np.clip((float(values[iy, ix]) - (V('c0') - V('ww0') / 2)) / V('ww0'), 0, 1)
            assert abs(canvas_grey(page, x, y) - 255 * (1 - t if V('invert') else t)) <= 1
            # the wheel zooms about the pointer: the image point under it stays put
            box = page.locator('#view').bounding_box()
            px, py = box['x'] + 100, box['y'] + 120
            under = lambda: ((100 - V('x')) / V('zoom'), (120 - V('y')) / V('zoom'))
            before = under()
            page.mouse.move(px, py); page.mouse.wheel(0, -300); page.wait_for_timeout(100)
            assert float(page.get_attribute('#view', 'data-zoom')) > 2.5
            assert np.allclose(under(), before, atol=1e-6)
            page.click('#zoomout'); page.wait_for_timeout(100)
            assert abs(V('zoom') - float(page.get_attribute('#view', 'data-zoom'))) < 1e-4
            x0 = V('x'); page.mouse.move(px, py); page.mouse.down(); page.mouse.move(px + 50, py + 30)
            page.mouse.up(); assert abs(V('x') - x0 - 50) < 1e-6                        # drag pans
            ww = V('ww'); page.keyboard.down('Shift'); page.mouse.move(px, py); page.mouse.down()
            page.mouse.move(px + 100, py); page.mouse.up(); page.keyboard.up('Shift'); page.wait_for_timeout(100)
            assert abs(V('ww') / ww - np.exp(0.5)) < 1e-6 and 'set here' in page.inner_text('#readout')
            page.focus('#view'); page.keyboard.press('r'); page.wait_for_timeout(100)
            assert (V('ww'), V('c')) == (V('ww0'), V('c0')) and "the model's window" in page.inner_text('#readout')
            for b in page.locator('#classlist input').all(): b.check()
            page.click('#fit'); SHOTS.mkdir(exist_ok=True)
            page.screenshot(path=str(SHOTS/'viewer.png'))
            assert v.errors == [] and v.failed == [], (v.errors, v.failed)
        finally: v.close()

def test_the_model_card_in_chromium(server, browser):
    "The model card reads as a page: intended use first, no sideways scroll at 400 px; screenshots at both widths."
    url, _, _ = server
    v = Visit(browser, f'{url}/model')
    try:
        text = v.page.text_content('body')
        assert text.index('Intended use') < text.index('Evaluation') and 'not a diagnostic device' in text
        assert v.page.text_content('dd').strip()                         # fields filled in, not empty
        at_widths(v.page, 'model-card')
        assert v.errors == [] and v.foreign_hosts() == set()
    finally: v.close()

def test_the_api_docs_render_offline_in_chromium(server, browser):
    url, _, _ = server
    v = Visit(browser, f'{url}/docs')
    try:
        v.page.wait_for_selector('.opblock-summary-path', timeout=30_000)     # Swagger UI drew the operations
        paths = v.page.locator('.opblock-summary-path').all_inner_texts()
        assert {'/predict', '/health', '/model'} <= {p.strip() for p in paths}, paths
        assert v.errors == [] and v.foreign_hosts() == set(), (v.errors, v.requests)
        SHOTS.mkdir(exist_ok=True)
        v.page.screenshot(path=str(SHOTS/'serve_docs.png'))
    finally: v.close()

def test_the_page_and_the_docs_run_under_their_content_security_policy(server, browser, unseen):
    """The page's inline style applies and its inline script predicts under the page's CSP, and Swagger UI draws the
    docs under theirs: chromium reports no CSP violation; both forbid framing."""
    url, _, _ = server
    for path, ready in (('/', '#drop'), ('/docs', '.opblock-summary-path')):
        ctx = browser.new_context()
        page, console = ctx.new_page(), []
        page.on('console', lambda m: console.append(m.text))
        try:
            resp = page.goto(f'{url}{path}', wait_until='networkidle')
            assert "frame-ancestors 'none'" in resp.headers['content-security-policy'], resp.headers
            page.wait_for_selector(ready, timeout=30_000)
            if path == '/':
                header = "getComputedStyle(document.querySelector('header')).backgroundColor"
                assert page.evaluate(header) == 'rgb(23, 50, 77)'                 # the inline style applied
                page.set_input_files('#file', str(unseen[1]))                    # the inline script runs
                page.wait_for_selector('#result', state='visible', timeout=60_000)
            violations = [m for m in console if 'Content Security Policy' in m or 'Refused to' in m]
            assert violations == [], violations
        finally: ctx.close()
