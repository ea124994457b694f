"The detector command end to end on a tiny phantom: run directory without pickles, official scoring, bad input."
import json, shutil

import numpy as np
import pandas as pd
import pytest

from conftest import matched_boxes, run_cli
from spinexr.core import DET_CLASSES, InputError
from spinexr.detect import DetConfig, detector_for, load_detector, predict_boxes
from spinexr.prep import PrepTree

@pytest.fixture(scope='module')
def run(prepared, tmp_path_factory):
    prep = prepared(n_studies=30, size=256, prep_size=128)
    out = tmp_path_factory.mktemp('det')/'run'
    r = run_cli('spinexr_train_det', '--data', prep, '--out', out, '--model', 'yolo11n.yaml', '--imgsz', 128,
                '--epochs', 1, '--batch', 8, '--workers', 0, '--repeat_factor', 0.1, '--focal_gamma', 2,
                '--no_pretrained', timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    return prep, out, r.stdout

def test_run_directory(run):
    prep, out, stdout = run
    assert 'official mAP50' in stdout and "ultralytics' own mAP50" in stdout
    names = {p.name for p in out.iterdir()}
    assert {'config.json', 'data.yaml', 'train.txt', 'history.csv', 'detector.json', 'detector.pt', 'metrics.json',
            'preds_val.csv', 'preds_test.csv', 'preds_val_flip.csv', 'preds_test_flip.csv', 'preds_test_tta.csv',
            'tta.json'} <= names
    assert not any(p.suffix == '.pt' and p.name != 'detector.pt' for p in out.rglob('*'))  # no ultralytics pickles left
    m = json.loads((out/'metrics.json').read_text())
    assert set(m) == {'val', 'test', 'ultralytics_test', 'test_tta'}          # test_tta: flip TTA + WBF (20_detect)
    assert m['test_tta']['tta'] == json.loads((out/'tta.json').read_text())
    assert set(m['test']['ap50']) == set(DET_CLASSES) and 0 <= m['test']['map50'] <= 1
    cfg = json.loads((out/'config.json').read_text())
    assert cfg['focal_gamma'] == 2 and cfg['repeat_factor'] == 0.1

def test_predictions_score_with_the_eval_command(run, tmp_path):
    prep, out, _ = run
    gt = PrepTree(prep).ground_truth('test')
    labels = pd.read_csv(prep/'labels.csv')
    assert set(gt.image_id) == set(labels.image_id[labels.split == 'test'])      # normal images included
    rel = prep.parent/'release'/'annotations'/'test.csv'
    r = run_cli('spinexr_eval_det', rel, out/'preds_test.csv', '--out', tmp_path/'d.json', timeout=300)
    assert r.returncode == 0, r.stderr
    d = json.loads((tmp_path/'d.json').read_text())
    m = json.loads((out/'metrics.json').read_text())['test']
    assert abs(d['map50'] - m['map50']) < 1e-6    # scored against the release's own CSV: same figure

def test_predictions_through_the_interface(run):
    "The run's detector, loaded through the detector interface, gives the very boxes the run wrote for test."
    prep, out, _ = run
    tree, cfg = PrepTree(prep), DetConfig.load(out/'config.json')
    det = detector_for(cfg).load(out)
    spec = json.loads((out/'detector.json').read_text())
    assert det.arch == 'yolo11n.yaml' and det.weights_sha256(out) == spec['weights_sha256']
    labels = tree.labels()
    paths = [tree.yolo_png(i, 'test') for i in labels.image_id[labels.split == 'test']]
    got = tree.to_original(predict_boxes(det, paths, cfg)).reset_index(drop=True)
    want = pd.read_csv(out/'preds_test.csv', dtype={'image_id': str})
    pd.testing.assert_frame_equal(got, want, check_dtype=False, rtol=1e-6)
    assert np.isfinite(want.score).all()

def test_damaged_detector(run, tmp_path):
    _, out, _ = run
    shutil.copytree(out, tmp_path/'copy')
    pt = tmp_path/'copy'/'detector.pt'
    pt.write_bytes(pt.read_bytes()[:5000])
    with pytest.raises(InputError, match='truncated or corrupt'): load_detector(tmp_path/'copy')

@pytest.mark.parametrize('args,message', [(['--model', 'yolo11n.pt'], 'model must be an architecture .yaml'),
                                          (['--weights', '/nonexistent.pt'], 'weights file not found'),
                                          (['--model', 'yolov8n.yaml', '--no_pretrained'],
                                           "architecture 'yolov8n.yaml' is not one spinexr builds")])
def test_bad_settings(run, tmp_path, args, message):
    prep = run[0]
    r = run_cli('spinexr_train_det', '--data', prep, '--out', tmp_path/'x', *args, timeout=300)
    assert r.returncode == 1 and message in r.stderr and 'Traceback' not in r.stderr

def test_not_a_prep_tree(tmp_path):
    r = run_cli('spinexr_train_det', '--data', tmp_path, '--out', tmp_path/'run', timeout=300)
    assert r.returncode == 1 and 'no labels.csv' in r.stderr

# --- every detector family through the one interface: train, official scoring, bundle, ONNX, spinexr_predict ---

@pytest.fixture(scope='module')
def classifiers(run, tmp_path_factory):
    "The three classifiers of one epoch on the module's prep tree, and their ensemble, for bundles of each family."
    from spinexr.bundle import tiny_classifiers
    return tiny_classifiers(run[0], tmp_path_factory.mktemp('cls'), size=32)

@pytest.mark.parametrize('arch', ['rtdetr-l', 'yolo26n', 'yolo11n-p2'])
def test_family_end_to_end(arch, run, classifiers, tmp_path):
    ("RT-DETR, YOLO26 and spinexr's own YOLO11 with a P2 head (with copy-paste of the rare classes) train, score, "
     "bundle, export with parity and predict through spinexr_predict like YOLO11.")
    from spinexr.bundle import Bundle, make_bundle
    from spinexr.export import export_bundle
    prep, out = run[0], tmp_path/'det'
    focal = ['--focal_gamma', 2] if arch.startswith('yolo') else []          # RT-DETR's loss has its own
    if arch.endswith('-p2'): focal += ['--copy_paste', 0.5]
    r = run_cli('spinexr_train_det', '--data', prep, '--out', out, '--model', f'{arch}.yaml', '--imgsz', 64,
                '--epochs', 1, '--batch', 8, '--workers', 0, '--no_pretrained', *focal, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    m = json.loads((out/'metrics.json').read_text())
    assert {'val', 'test', 'test_tta', 'ultralytics_test'} <= set(m) and 0 <= m['test']['map50'] <= 1
    assert json.loads((out/'detector.json').read_text())['yaml']['yaml_file'] == f'{arch}.yaml'
    assert not any(p.suffix == '.pt' and p.name != 'detector.pt' for p in out.rglob('*'))
    if arch.endswith('-p2'):                       # the shares of the rare-class pastes it trained with
        shares = json.loads((out/'copy_paste.json').read_text())
        assert shares['Osteophytes'] == 0 and abs(sum(shares.values()) - 1) < 1e-3
    model = make_bundle(tmp_path/'model', classifiers[0], out, classifiers[1], prep)
    det = Bundle(model).detector_model('torch')
    assert det.arch == f'{arch}.yaml'
    rec = export_bundle(model)
    assert rec['networks']['detector']['max_difference'] < 1e-3
    dicoms = sorted((prep.parent/'release'/'test_images').glob('*.dicom'))[:3]
    src = tmp_path/'in'; src.mkdir()
    for f in dicoms: shutil.copy2(f, src/f.name)
    tree, cfg = PrepTree(prep), Bundle(model).detector_config()
    lab = tree.labels()
    pngs = [tree.png(i) for i in lab.image_id[lab.split == 'test']]
    a, b = (predict_boxes(Bundle(model).detector_model(rt), pngs, cfg) for rt in ('torch', 'onnx'))
    m = np.array(matched_boxes(a, b))                       # the detector alone: the same boxes, one to one
    assert len(a) and len(b) == len(a) and m[:, 0].min() >= 0.99 and m[:, 1].max() <= 1e-3
    for runtime in ('torch', 'onnx'):
        r = run_cli('spinexr_predict', model, src, '--out', tmp_path/runtime, '--runtime', runtime, timeout=600)
        assert r.returncode == 0, r.stderr[-3000:]
    a, b = (pd.read_csv(tmp_path/rt/'predictions.csv', dtype={'score': float}) for rt in ('torch', 'onnx'))
    assert len(a) == len(b) and np.allclose(a.score, b.score, atol=1e-3)   # after fusion (none, if all look normal)

def started_from_local_coco(tmp_path, runner, stem: str, arch: str) -> tuple:
    ("A run of `arch` started from the COCO weights `stem`, made here by ultralytics' `runner` and imported into a "
     "store: (its config, its network's state, the COCO state).")
    from spinexr.weights import WeightStore
    runner(f'{stem}.yaml').save(str(tmp_path/f'{stem}.pt'))
    store = WeightStore(tmp_path/'store')
    r = run_cli('spinexr_weights', 'import', tmp_path/f'{stem}.pt', '--name', stem, '--store', store.root)
    assert r.returncode == 0, r.stderr
    cfg = DetConfig(model=f'{arch}.yaml')
    return cfg, detector_for(cfg).start(cfg, store.root).state_dict(), store.load(stem)[0]

def test_p2_variant_starts_from_its_sizes_coco_weights(tmp_path):
    "yolo11n-p2 starts from yolo11n's COCO weights: every tensor of the same name and shape, the RGB stem summed."
    from ultralytics import YOLO
    cfg, state, coco = started_from_local_coco(tmp_path, YOLO, 'yolo11n', 'yolo11n-p2')
    k = 'model.0.conv.weight'
    assert cfg.used_pretrained and np.allclose(state[k], coco[k].sum(1, keepdim=True), atol=1e-4)
    assert all(np.allclose(state[k], coco[k]) for k in coco if k.startswith(('model.9.', 'model.10.')))  # backbone
    n, total = map(int, cfg.pretrained_tensors.split('/'))
    assert 0.3 * total < n < total, cfg.pretrained_tensors

def test_rtdetr_starts_from_coco_weights(tmp_path):
    "A locally made RT-DETR-l checkpoint imports into the store; a run starts from it, the RGB stem summed to gray."
    from ultralytics import RTDETR
    cfg, state, coco = started_from_local_coco(tmp_path, RTDETR, 'rtdetr-l', 'rtdetr-l')
    k = 'model.0.stem1.conv.weight'
    assert state[k].shape[1] == 1 and np.allclose(state[k], coco[k].sum(1, keepdim=True), atol=1e-4)
    n, total = map(int, cfg.pretrained_tensors.split('/'))
    assert 0.9 * total < n < total, cfg.pretrained_tensors          # all but the 7-class heads
