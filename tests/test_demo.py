"The end-to-end demo at its toy scale, and spinexr_predict with the bundle it writes, on DICOMs it has never seen."
import json, shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import CHROMIUM, CHROMIUM_ARGS, SHOTS, matched_boxes, require_system, run_cli

from spinexr.core import DET_CLASSES
from spinexr.bundle import Bundle, bundle_sha256, read_bundle

@pytest.fixture(scope='module')
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp('demo')/'demo'
    r = run_cli('spinexr_demo', '--out', out, '--tiny', timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    return out, r

def test_demo_writes_metrics_report_and_bundle(demo):
    out, r = demo
    m = json.loads((out/'metrics.json').read_text())
    for name in ('densenet121', 'tf_efficientnetv2_s', 'resnet50'):
        assert {'auroc', 'sensitivity', 'specificity', 'f1', 'threshold', 'ci'} <= set(m['classifiers'][name])
    assert {'auroc', 'sensitivity', 'specificity', 'f1', 'threshold', 'ci', 'weights'} <= set(m['ensemble'])
    for k in ('without_fusion', 'with_fusion'):
        assert set(m['detection'][k]['ap50']) == set(DET_CLASSES) and 'map50' in m['detection'][k]
        lo, hi = m['detection'][k]['ci']['map50']
        assert 0 <= lo <= hi <= 1 and m['detection'][k]['ci']['n_boot'] == 1000
    t = m['detection']['tta']                                           # flip TTA + WBF, chosen on validation
    assert t['on'] == (t['val_map50']['tta'] > t['val_map50']['plain']) and 'map50' in t['with_fusion']
    assert (out/'model'/'detector'/'tta.json').exists()
    sal = m['saliency']                                                 # Grad-CAM's sanity checks ran
    assert sal['n_images'] > 0 and {'box_mass_ratio', 'randomised_rank_correlation'} <= set(sal)
    c = m['calibration']
    assert c['method'] in ('none', 'temperature', 'platt')
    assert abs(c['auroc_before'] - c['auroc_after']) < 1e-9      # a tie made would move it by 1 / (2 n1 n0)
    for k in ('before', 'after'): assert {'ece', 'brier', 'ci'} <= set(c[k])
    assert 'calibration (' in r.stdout and 'studies (' in r.stdout
    st = m['study']
    assert st['how'] in ('max', 'mean') and 0 < st['n_studies'] <= st['n_images'] == m['ensemble']['n']
    assert {'auroc', 'sensitivity', 'specificity', 'f1', 'ci'} <= set(st)
    html = (out/'report.html').read_text()
    assert html.count('data:image/png;base64,') >= 4 and 'src="http' not in html and '<link' not in html
    assert '<h2 id="published">Published numbers</h2>' in html and 'Synthetic data.' in html
    assert '95% bootstrap confidence intervals (1,000 resamples of the test' in html
    assert 'exact (Clopper-Pearson)' in html and 'the percentile bootstrap (' in html
    assert 'alt="figure"' not in html and 'alt="ROC curves of each classifier' in html      # each figure described
    assert '<h3>Calibration</h3>' in html and 'expected calibration error' in html and '<h3>Studies</h3>' in html
    assert '<h3>Where the classifiers looked</h3>' in html
    assert bundle_sha256(out/'model')[:16] in html and '<h2 id="card">Model card</h2>' in html
    card = json.loads((out/'model'/'model_card.json').read_text())   # the bundle's card holds the test figures
    assert card['evaluation']['classification']['auroc'] == m['ensemble']['auroc'] and 'sha256' not in card
    assert card['evaluation']['classification']['proportions']['sensitivity']['n'] == m['ensemble']['n_pos']
    b = read_bundle(out/'model')
    assert b['ensemble'].names == ['densenet121', 'tf_efficientnetv2_s', 'resnet50']
    t = b['trained_on']
    assert (t['data'], t['root'], t['rehearsal']) == ('phantom', 'phantom', False)
    assert t['command'].startswith('spinexr_demo --out ')
    assert t['images']['test'] == m['ensemble']['n']
    assert max(map(len, (r.stdout + r.stderr).splitlines())) < 300  # off a terminal: a line per epoch, no progress bars
    assert 'ensemble             test AUROC' in r.stdout                # the summary
    assert 'detection test mAP50 (official)' in r.stdout

def test_demo_resumes_without_retraining(demo):
    out, _ = demo
    before = {p: p.stat().st_mtime_ns for p in (out/'classifiers').rglob('model.pt')}
    r = run_cli('spinexr_demo', '--out', out, '--tiny', timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert {p: p.stat().st_mtime_ns for p in (out/'classifiers').rglob('model.pt')} == before

_LAYOUT = """() => {
  const body = document.body.getBoundingClientRect();
  return {wide: [...document.querySelectorAll('table')].filter(t => t.getBoundingClientRect().right > body.right + 1)
                                                      .map(t => t.innerText.slice(0, 40)),
          shrunk: [...document.images].map(i => i.naturalWidth / i.clientWidth),
          broken: [...document.images].filter(i => !i.naturalWidth).length,
          h2: [...document.querySelectorAll('h2')].map(h => h.textContent),
          meta: document.querySelector('.meta').textContent,
          sideways: document.documentElement.scrollWidth > document.documentElement.clientWidth,
          summaryBottom: document.querySelector('.summary').getBoundingClientRect().bottom,
          card: document.querySelector('#card').parentElement.innerText};
}"""

def test_report_reads_in_chromium_at_1280_and_400_px(demo):
    """The report as a reader sees it: at 1280 px its summary fills the first screen, no table runs past the column,
    no figure is shrunk (its text is the size it was drawn), nothing is fetched; at 400 px nothing scrolls sideways.
    The model card at its end gives the intended use and the test figures. Screenshots of the first screen at both."""
    require_system(CHROMIUM, 'chromium')
    from playwright.sync_api import sync_playwright
    out, _ = demo
    SHOTS.mkdir(exist_ok=True)
    facts = {}
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        for width, height in ((1280, 900), (400, 860)):
            page, requests = b.new_context(viewport={'width': width, 'height': height}).new_page(), []
            page.on('request', lambda r: requests.append(r.url))
            page.goto((out/'report.html').as_uri())
            facts[width] = page.evaluate(_LAYOUT)
            page.screenshot(path=str(SHOTS/f'report-first-screen-{width}.png'))
            if width == 1280: page.screenshot(path=str(SHOTS/'report.png'), full_page=True)
            assert all(u.startswith(('file:', 'data:')) for u in requests), requests
        b.close()
    f = facts[1280]
    assert f['wide'] == [] and f['broken'] == 0 and len(f['shrunk']) >= 4, f
    assert max(f['shrunk']) <= 1.1, f['shrunk']
    assert f['h2'][:2] == ['Summary', 'Contents'] and f['h2'][-2:] == ['Published numbers', 'Model card']
    assert f['summaryBottom'] <= 900, f['summaryBottom']                  # the summary is the first screen
    assert 'model bundle SHA-256' in f['meta'] and 'spinexr ' in f['meta']
    assert 'Intended use' in f['card'] and 'not a diagnostic device' in f['card'] and 'test AUROC (%)' in f['card']
    assert not facts[400]['sideways'] and not f['sideways']

@pytest.fixture(scope='module')
def unseen(phantom_release):
    "A phantom the demo never saw (another seed than the demo's 5), 21 DICOMs; read only (tests copy what they change)."
    return phantom_release(n_studies=10, seed=77, size=512)

def test_predict_on_unseen_dicoms_with_bad_ones(demo, unseen, tmp_path):
    out, _ = demo
    good = sorted((unseen/'train_images').glob('*.dicom')) + sorted((unseen/'test_images').glob('*.dicom'))
    bad = tmp_path/'bad'; bad.mkdir()
    (bad/'zero.dicom').write_bytes(b'')
    (bad/'text.dicom').write_text('not a DICOM\n')
    (bad/'truncated.dicom').write_bytes(good[0].read_bytes()[:3000])
    (bad/'broken.png').write_bytes(b'\x89PNG\r\n\x1a\n garbage')
    before = {p: p.read_bytes() for p in unseen.rglob('*') if p.is_file()}
    res = tmp_path/'pred'
    r = run_cli('spinexr_predict', out/'model', unseen/'train_images', unseen/'test_images', bad, '--out', res,
                timeout=600)
    assert r.returncode == 1, r.stderr                                  # documented: 1 when any input failed
    for name in ('zero.dicom', 'text.dicom', 'truncated.dicom', 'broken.png'): assert name in r.stderr
    assert f'{len(good)} of {len(good) + 4} images predicted' in r.stdout
    pj = json.loads((res/'predictions.json').read_text())
    assert sorted(i['image_id'] for i in pj['images']) == sorted(p.stem for p in good)
    assert len(pj['failures']) == 4 and all(f['error'] for f in pj['failures'])
    for rec in pj['images']:
        assert rec['abnormal'] == (rec['p_abnormal'] >= pj['threshold'])
        for b in rec['boxes']:
            assert b['lesion_type'] in DET_CLASSES and 0 <= b['xmin'] <= b['xmax'] <= rec['orig_width'] + 1e-6
            # the fusion rule: only confident boxes on images called normal
            assert rec['abnormal'] or b['score'] >= pj['keep_score']
    assert sorted(p.stem for p in (res/'overlays').glob('*.png')) == sorted(p.stem for p in good)
    studies = pd.read_csv(res/'studies.csv')                             # a row per StudyInstanceUID
    assert set(studies.study_id) == {i['dicom']['study_uid'] for i in pj['images']}
    assert studies.images.sum() == len(good) and len(studies) < len(good)
    assert set(' '.join(studies.image_ids).split()) == {p.stem for p in good}
    assert {p: p.read_bytes() for p in unseen.rglob('*') if p.is_file()} == before  # the inputs are untouched
    # the boxes CSV is what spinexr_eval_det reads, in original DICOM pixels
    gt = pd.concat([pd.read_csv(unseen/'annotations'/f'{s}.csv') for s in ('train', 'test')])
    gt.to_csv(tmp_path/'gt.csv', index=False)
    r = run_cli('spinexr_eval_det', tmp_path/'gt.csv', res/'predictions.csv', timeout=300)
    assert r.returncode == 0, r.stderr
    assert 'mAP@0.5' in r.stdout

def test_predict_saliency(demo, unseen, tmp_path):
    "--saliency writes a Grad-CAM picture per image, the size of its overlay; --dicomweb with it is refused."
    out, _ = demo
    dicoms = sorted(unseen.glob('test_images/*.dicom'))[:3]
    r = run_cli('spinexr_predict', out/'model', *dicoms, '--out', tmp_path/'p', '--saliency', timeout=300)
    assert r.returncode == 0 and 'saliency' in r.stdout, r.stderr[-2000:]
    sal = sorted((tmp_path/'p'/'saliency').glob('*.png'))
    assert [p.stem for p in sal] == sorted(p.stem for p in dicoms)
    import cv2
    assert cv2.imread(str(sal[0])).shape == cv2.imread(str(tmp_path/'p'/'overlays'/sal[0].name)).shape
    r = run_cli('spinexr_predict', out/'model', '--dicomweb', 'http://127.0.0.1:9/dicom-web', '--saliency',
                '--out', tmp_path/'q', timeout=60)
    assert r.returncode == 1 and 'not with --dicomweb' in r.stderr, r.stderr

def test_predict_refuses_a_damaged_bundle(demo, unseen, tmp_path):
    out, _ = demo
    bundle = tmp_path/'model'
    shutil.copytree(out/'model', bundle)
    pt = bundle/'classifiers'/'resnet50'/'model.pt'
    pt.write_bytes(pt.read_bytes()[:4096])
    r = run_cli('spinexr_predict', bundle, unseen/'test_images', '--out', tmp_path/'p', timeout=300)
    assert r.returncode == 1 and 'model.pt' in r.stderr and 'Traceback' not in r.stderr
    (bundle/'bundle.json').unlink()
    r = run_cli('spinexr_predict', bundle, unseen/'test_images', '--out', tmp_path/'p', timeout=300)
    assert r.returncode == 1 and 'not a spinexr model bundle' in r.stderr and 'Traceback' not in r.stderr

def test_predict_warns_about_the_phantom_bundle_and_a_chest_radiograph(demo, unseen, tmp_path):
    """The caveats spinexr_predict gives: the bundle's (trained on a phantom) on every image, and a header's
    (a chest CR) on that image."""
    import pydicom
    out, _ = demo
    src = tmp_path/'in'; src.mkdir()
    spine = shutil.copy(sorted(unseen.glob('test_images/*.dicom'))[0], src/'spine.dicom')
    ds = pydicom.dcmread(spine)
    ds.Modality, ds.BodyPartExamined = 'CR', 'CHEST'
    ds.save_as(src/'chest.dicom')
    r = run_cli('spinexr_predict', out/'model', src, '--out', tmp_path/'p', timeout=300)
    assert r.returncode == 0, r.stderr
    lines = [l for l in r.stderr.splitlines() if 'warning' in l]
    assert lines[0].startswith('spinexr_predict: warning: the model was trained on a phantom'), r.stderr
    assert len(lines) == 2, r.stderr
    assert "chest.dicom: Body Part Examined is 'CHEST', not the spine" in lines[1]
    pj = json.loads((tmp_path/'p'/'predictions.json').read_text())
    w = {i['image_id']: i['warnings'] for i in pj['images']}
    assert pj['warnings'] == w['spine'] and len(w['spine']) == 1
    assert w['chest'][:1] == w['spine'] and len(w['chest']) == 2
    assert pj['trained_on']['data'] == 'phantom'
    scores = pd.read_csv(tmp_path/'p'/'scores.csv').set_index('image_id')
    assert 'CHEST' in scores.warnings['chest'] and 'phantom' in scores.warnings['spine']

def test_predict_checks_its_inputs_before_loading_the_models(demo, unseen, tmp_path):
    """A mistyped input is reported before any model loads: with a damaged model in the bundle, the error is still the
    input's."""
    out, _ = demo
    bundle = tmp_path/'model'
    shutil.copytree(out/'model', bundle)
    pt = bundle/'classifiers'/'resnet50'/'model.pt'
    pt.write_bytes(pt.read_bytes()[:4096])
    r = run_cli('spinexr_predict', bundle, unseen/'test_images', tmp_path/'typo.dicom', '--out', tmp_path/'p',
                timeout=300)
    assert r.returncode == 1 and f'no such file or folder: {tmp_path/"typo.dicom"}' in r.stderr, r.stderr
    assert 'model.pt' not in r.stderr and 'Traceback' not in r.stderr and not (tmp_path/'p').exists()

def test_predict_with_no_inputs(demo, tmp_path):
    out, _ = demo
    (tmp_path/'empty').mkdir()
    r = run_cli('spinexr_predict', out/'model', tmp_path/'empty', '--out', tmp_path/'p', timeout=300)
    assert r.returncode == 1 and 'no input files' in r.stderr

def test_predict_never_reads_its_own_out(demo, unseen, tmp_path):
    "An output folder inside the input folder: a second run predicts the same DICOMs, not the first run's overlays."
    out, _ = demo
    scans = tmp_path/'scans'
    shutil.copytree(unseen/'test_images', scans)
    n = len(list(scans.glob('*.dicom')))
    for _ in range(2):
        r = run_cli('spinexr_predict', out/'model', scans, '--out', scans/'predictions', timeout=300)
        assert r.returncode == 0 and f'{n} of {n} images predicted' in r.stdout, r.stdout + r.stderr[-2000:]
    assert len(list((scans/'predictions'/'overlays').glob('*.png'))) == n

def test_predict_refuses_inputs_over_the_pixel_budget(demo, unseen, tmp_path):
    "A PNG declaring 30000 x 30000 pixels is refused from its header, the others predicted; --max_pixels: the budget."
    from test_inputs import png_bomb
    out, _ = demo
    dicoms = sorted((unseen/'test_images').glob('*.dicom'))[:2]
    bomb = png_bomb(tmp_path/'bomb.png')
    r = run_cli('spinexr_predict', out/'model', *dicoms, bomb, '--out', tmp_path/'p', timeout=300)
    assert r.returncode == 1 and '2 of 3 images predicted' in r.stdout, r.stdout + r.stderr[-2000:]
    assert 'bomb.png' in r.stderr and '30000 x 30000' in r.stderr and '--max_pixels' in r.stderr, r.stderr[-2000:]
    r = run_cli('spinexr_predict', out/'model', *dicoms, '--out', tmp_path/'q', '--max_pixels', 1000, timeout=300)
    assert r.returncode == 1 and '0 of 2 images predicted' in r.stdout and 'Traceback' not in r.stderr

def test_predict_reports_every_bad_dicom_kind(demo, unseen, tmp_path):
    """The reliability suite's bad DICOMs, mixed with good ones, through spinexr_predict: each reported with its reason,
    every good one predicted."""
    from test_reliability import TALLY, bad_dicoms
    out, _ = demo
    src = tmp_path/'mixed'; src.mkdir()
    good = [Path(shutil.copy(p, src)) for p in sorted(unseen.glob('*_images/*.dicom'))[:4]]
    cases = bad_dicoms(src, good)
    before = {p: p.read_bytes() for p in src.rglob('*') if p.is_file()}
    r = run_cli('spinexr_predict', out/'model', src, '--out', tmp_path/'p', '--no_overlays', timeout=600)
    assert r.returncode == 1, r.stderr
    pj = json.loads((tmp_path/'p'/'predictions.json').read_text())
    failed = {Path(f['source']).relative_to(src).as_posix(): f['error'] for f in pj['failures']}
    predicted = {Path(i['source']).relative_to(src).as_posix() for i in pj['images']}
    renamed = {'two files, one image id', 'unusable file name'}     # spinexr_predict gives these ids of their own
    for name, kind, reason in cases:
        if kind in renamed: assert name in predicted, kind
        else: assert reason in failed.get(name, ''), (kind, failed.get(name))
    lost = {g.name for g in good} - predicted
    assert not lost
    assert {p: p.read_bytes() for p in src.rglob('*') if p.is_file()} == before  # nothing in the input folder changed
    TALLY['bad-input kinds'] += len({k for _, k, _ in cases})
    TALLY['faults injected'] += len(cases); TALLY['files lost'] += len(lost)

def test_data_that_is_not_a_release_stops_before_any_step(tmp_path):
    import time
    (tmp_path/'folder').mkdir(); (tmp_path/'folder'/'notes.txt').write_text('not a release')
    t0 = time.time()
    r = run_cli('spinexr_demo', '--data', tmp_path/'folder', '--out', tmp_path/'out', timeout=300)
    assert r.returncode == 1, r.stderr
    assert f'--data {tmp_path/"folder"}' in r.stderr and 'not a VinDr-SpineXR release' in r.stderr, r.stderr
    assert time.time() - t0 < 60 and not (tmp_path/'out').exists()

def test_full_scale_without_weights_stops_before_any_step(release, tmp_path):
    import os
    env = dict(os.environ, SPINEXR_WEIGHTS=str(tmp_path/'empty_store'))
    r = run_cli('spinexr_demo', '--data', release, '--out', tmp_path/'out', timeout=300, env=env)
    assert r.returncode == 1, r.stderr
    assert 'spinexr_weights fetch --only densenet121' in r.stderr and '--no_pretrained' in r.stderr
    assert not (tmp_path/'out').exists()

def test_rehearsal_on_a_subset_of_a_release(phantom_release, tmp_path):
    """The rehearsal's own path on a release (subset, then every step; rehearsal.csv), at a toy scale, comparing two
    detector families; the release untouched."""
    from conftest import tree_digest
    from spinexr.classify import recipe
    from spinexr.demo import DemoConfig, run_demo
    rel = phantom_release('rel', n_studies=40, size=256)                 # the bundle records the folder's name
    before = tree_digest(rel)
    cfg = DemoConfig(prep_size=128, cls_size=64, cls_epochs=1, det_imgsz=128, det_epochs=1, det_batch=8, n_boot=100,
                     det_n_boot=100, val_frac=0.3, rehearsal=True, rehearsal_images=40, detectors='yolo11n,yolo26n')
    m = run_demo(tmp_path/'out', data=rel, cfg=cfg, progress=False)
    t = pd.read_csv(tmp_path/'out'/'rehearsal.csv')
    assert t.step.tolist()[:3] == ['subset', 'preprocess', 'classifier densenet121'] and t.step.iloc[-1] == 'report'
    assert (t.seconds >= 0).all() and (t.peak_rss_gb > 0).all() and 'from scratch' in t.settings[2]
    labels = pd.read_csv(tmp_path/'out'/'prep'/'labels.csv')
    assert 25 <= len(labels) <= 55
    cls = t.set_index('step').loc['classifier densenet121']             # its time projected to the release's images
    assert cls.full_scale_h == pytest.approx(cls.seconds * 8389 / labels.split.isin(['train', 'val']).sum()
                                             * recipe('densenet121').epochs / 3600, rel=0.02, abs=0.01)
    assert t.full_scale_h[t.step.isin(['subset', 'report'])].isna().all() and t.full_scale_h.notna().sum() == 6
    assert 'rehearsal subset' in m['data'] and tree_digest(rel) == before
    t = read_bundle(tmp_path/'out'/'model')['trained_on']       # a phantom's subset, in a rehearsal: both are caveats
    assert (t['data'], t['root'], t['rehearsal']) == ('phantom', 'rel (a subset)', True)
    steps = pd.read_csv(tmp_path/'out'/'rehearsal.csv').step.tolist()
    assert {'detector yolo11n', 'detector yolo26n', 'detector choice'} <= set(steps) and 'detector' not in steps
    d = m['detectors']                     # both on the same test images; the bundle's is the better on validation
    assert list(d['test']) == ['yolo11n', 'yolo26n']
    assert d['chosen'] == max(d['test'], key=lambda n: d['val_map50'][n] or -1)
    assert len(d['paired']) == 1 and d['paired'][0]['n_images'] == m['detection']['n_images']
    bundled = json.loads((Bundle(tmp_path/'out'/'model').detector/'config.json').read_text())
    assert bundled['model'] == d['chosen'] + '.yaml'
    assert 'Detectors compared' in (tmp_path/'out'/'report.html').read_text()


def test_onnx_runtime_matches_torch(demo, unseen, tmp_path):
    """spinexr_export on the demo's bundle, then spinexr_predict with each runtime on 21 unseen DICOMs: the same
    probabilities (1e-4), decisions and boxes (one to one, IoU >= 0.99, scores within 1e-3); a changed ONNX file
    is refused by its SHA-256."""
    out, _ = demo
    bundle = shutil.copytree(out/'model', tmp_path/'model')
    r = run_cli('spinexr_export', bundle, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    rec = read_bundle(bundle)['onnx']
    assert set(rec['networks']) == {*read_bundle(bundle)['ensemble'].names, 'detector'}
    for n in rec['networks']: assert n in r.stdout
    dicoms = sorted(unseen.glob('*_images/*.dicom'))
    assert len(dicoms) >= 20
    res = {}
    for rt in ('torch', 'onnx'):
        r = run_cli('spinexr_predict', bundle, *dicoms, '--out', tmp_path/rt, '--runtime', rt, '--no_overlays',
                    timeout=600)
        assert r.returncode == 0 and f'({rt} on ' in r.stdout, r.stderr[-3000:]
        assert json.loads((tmp_path/rt/'predictions.json').read_text())['runtime'] == rt
        res[rt] = (pd.read_csv(tmp_path/rt/'scores.csv').set_index('image_id'),
                   pd.read_csv(tmp_path/rt/'predictions.csv'))
    (pt, bt), (po, bo) = res['torch'], res['onnx']
    assert len(pt) == len(dicoms) and (po.index == pt.index).all()
    assert np.abs(po.p_abnormal - pt.p_abnormal).max() <= 1e-4
    assert (po.abnormal == pt.abnormal).all()
    assert len(bt) and len(bo) == len(bt)
    m = np.array(matched_boxes(bt, bo))                          # one to one: each torch box has its own ONNX box
    assert m[:, 0].min() >= 0.99 and m[:, 1].max() <= 1e-3, (m[:, 0].min(), m[:, 1].max())
    f = bundle/rec['networks']['resnet50']['file']
    data = bytearray(f.read_bytes()); data[len(data) // 2] ^= 1; f.write_bytes(bytes(data))
    for rt in ('onnx', 'auto'):
        r = run_cli('spinexr_predict', bundle, dicoms[0], '--out', tmp_path/'tampered', '--runtime', rt, timeout=300)
        assert r.returncode == 1 and 'SHA-256' in r.stderr and 'resnet50.onnx' in r.stderr, r.stderr[-2000:]
        assert 'Traceback' not in r.stderr
