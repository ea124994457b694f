"Metrics: agreement with scikit-learn and pycocotools, known answers, the eval commands and their bad-input errors."
import json

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import f1_score, precision_score, recall_score, roc_auc_score

from spinexr.core import ANNOTATION_COLUMNS, BOX_COLUMNS, DET_CLASSES, NO_FINDING
from spinexr.metrics import (CLS_METRICS, DET_COLUMNS, _resample_counts, bootstrap_ci, bootstrap_samples, cls_metrics,
                             det_ap50, f1_threshold, fusion_rule, reverse_fusion, youden_threshold)
from conftest import run_cli


def scores(seed, n=400, ties=True):
    r = np.random.default_rng(seed)
    y = (r.random(n) < 0.45).astype(int)
    p = 1 / (1 + np.exp(-(r.normal(size=n) + 1.4 * y)))
    return y, (np.round(p, 2) if ties else p)


# ---------------------------------------------------------------- classification

@pytest.mark.parametrize('seed', [0, 1, 2])
def test_cls_metrics_match_sklearn(seed):
    y, p = scores(seed)
    t = youden_threshold(y, p)
    m = cls_metrics(y, p, t)
    assert m['auroc'] == pytest.approx(roc_auc_score(y, p), abs=1e-12)
    assert m['sensitivity'] == pytest.approx(recall_score(y, p >= t), abs=1e-12)
    assert m['specificity'] == pytest.approx(recall_score(1 - y, p < t), abs=1e-12)
    assert m['precision'] == pytest.approx(precision_score(y, p >= t), abs=1e-12)
    assert m['f1'] == pytest.approx(f1_score(y, p >= t), abs=1e-12)


@pytest.mark.parametrize('ties', [True, False])
def test_bootstrap_resamples_match_sklearn(ties):
    y, p = scores(4, n=300, ties=ties)
    t = 0.5
    C = next(_resample_counts(len(y), 25, seed=7))
    s = bootstrap_samples(y, p, t, n=25, seed=7)
    for i in range(25):
        k = np.repeat(np.arange(len(y)), C[i])
        assert s.auroc[i] == pytest.approx(roc_auc_score(y[k], p[k]), abs=1e-12)
        assert s.specificity[i] == pytest.approx(recall_score(1 - y[k], p[k] < t), abs=1e-12)
        assert s.precision[i] == pytest.approx(precision_score(y[k], p[k] >= t), abs=1e-12)
        assert s.accuracy[i] == pytest.approx(np.mean(y[k] == (p[k] >= t)), abs=1e-12)


def test_cluster_bootstrap_draws_whole_groups():
    y, p = scores(5, n=200)
    groups = np.arange(200) // 2          # pairs of images, as views of one study
    C = next(_resample_counts(200, 5, seed=1, groups=groups))
    assert (C[:, ::2] == C[:, 1::2]).all() and (C.sum(axis=1) == 200).all()
    s = bootstrap_samples(y, p, 0.5, n=5, seed=1, groups=groups)
    for i in range(5):
        k = np.repeat(np.arange(200), C[i])
        assert s.auroc[i] == pytest.approx(roc_auc_score(y[k], p[k]), abs=1e-12)
        assert s.sensitivity[i] == pytest.approx(recall_score(y[k], p[k] >= 0.5), abs=1e-12)


def test_bootstrap_reproducible_and_blocking_invariant():
    y, p = scores(6)
    a = bootstrap_samples(y, p, 0.5, n=300, seed=11)
    assert a.equals(bootstrap_samples(y, p, 0.5, n=300, seed=11))
    assert not a.equals(bootstrap_samples(y, p, 0.5, n=300, seed=12))
    small = np.concatenate(list(_resample_counts(len(y), 300, seed=11, max_elems=7 * len(y))))
    big = np.concatenate(list(_resample_counts(len(y), 300, seed=11)))
    assert (small == big).all()
    ci = bootstrap_ci(y, p, 0.5, n=2000, seed=0)
    m = cls_metrics(y, p, 0.5)
    for k in CLS_METRICS:
        assert ci[k][0] <= m[k] <= ci[k][1]


def test_bootstrap_degenerate_resamples_are_left_out():
    y = np.array([1, 0, 0, 0, 0, 0])
    p = np.array([.9, .1, .2, .3, .4, .5])
    s = bootstrap_samples(y, p, 0.5, n=200, seed=0)
    assert s.auroc.isna().any() and s.auroc.notna().any()  # resamples without the one abnormal image
    ci = bootstrap_ci(y, p, 0.5, n=200, seed=0)
    assert np.isfinite(ci['auroc']).all()


# ---------------------------------------------------------------- detection

def gt_frame(rows):
    return pd.DataFrame([dict(study_id=f's{i}', series_id=f'e{i}', image_id=i, rad_id='rad1', lesion_type=t,
                              **dict(zip(BOX_COLUMNS, b if b is not None else [np.nan] * 4))) for i, t, b in rows],
                        columns=list(ANNOTATION_COLUMNS))


def pred_frame(rows):
    return pd.DataFrame([dict(image_id=i, lesion_type=t, score=s, **dict(zip(BOX_COLUMNS, b))) for i, t, s, b in rows],
                        columns=list(DET_COLUMNS))


def random_case(seed, n_img=300, absent='Other lesions'):
    r = np.random.default_rng(seed)
    classes = [c for c in DET_CLASSES if c != absent]
    gts, preds = [], []
    for i in range(n_img):
        iid = f'im{i:04d}'
        objs = [(str(r.choice(classes)), r.uniform(0, 1500, 2), r.uniform(30, 150, 2))
                for _ in range(r.integers(1, 6))] if r.random() < 0.5 else []
        gts += [(iid, c, [*xy, *(xy + wh)]) for c, xy, wh in objs] or [(iid, NO_FINDING, None)]
        for c, xy, wh in objs:
            for _ in range(r.integers(0, 3)):  # 0-2 detections per object, some duplicates
                j = r.normal(0, 0.15, 4) * np.r_[wh, wh]
                box = [xy[0] + j[0], xy[1] + j[1], xy[0] + wh[0] + j[2], xy[1] + wh[1] + j[3]]
                preds.append((iid, c, float(np.round(r.random(), 2)), box))
        for _ in range(r.integers(0, 8)):
            xy, wh = r.uniform(0, 1500, 2), r.uniform(30, 150, 2)
            preds.append((iid, str(r.choice(DET_CLASSES)), float(np.round(r.random() * 0.8, 2)), [*xy, *(xy + wh)]))
    return gt_frame(gts), pred_frame(preds)


def textbook_coco(gt, preds, tmp_path):
    "A standard pycocotools run, written independently: json file, loadRes, default parameters, summarize()."
    import contextlib, io
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval
    ids = {k: n + 1 for n, k in enumerate(sorted(gt.image_id.unique()))}
    boxes = gt[gt.lesion_type != NO_FINDING]
    anns = [dict(id=n + 1, image_id=ids[r.image_id], category_id=DET_CLASSES.index(r.lesion_type) + 1, iscrowd=0,
                 bbox=[r.xmin, r.ymin, r.xmax - r.xmin, r.ymax - r.ymin], area=(r.xmax - r.xmin) * (r.ymax - r.ymin))
            for n, r in enumerate(boxes.itertuples())]
    (tmp_path/'gt.json').write_text(json.dumps(dict(
        images=[dict(id=i, width=2000, height=2000) for i in ids.values()], annotations=anns,
        categories=[dict(id=k + 1, name=c) for k, c in enumerate(DET_CLASSES)])))
    # detections in the same canonical order as det_ap50 so that tied scores are broken alike
    preds = preds.assign(_i=preds.image_id.map(ids), _c=preds.lesion_type.map(DET_CLASSES.index)).sort_values(
        ['_i', '_c', 'score', *BOX_COLUMNS], ascending=[True, True, False, True, True, True, True], kind='mergesort')
    dts = [dict(image_id=ids[r.image_id], category_id=DET_CLASSES.index(r.lesion_type) + 1, score=r.score,
                bbox=[r.xmin, r.ymin, r.xmax - r.xmin, r.ymax - r.ymin]) for r in preds.itertuples()]
    with contextlib.redirect_stdout(io.StringIO()):
        G = COCO(str(tmp_path/'gt.json'))
        E = COCOeval(G, G.loadRes(dts), 'bbox')
        E.evaluate(); E.accumulate(); E.summarize()
    return E


@pytest.mark.parametrize('seed', [0, 1])
def test_det_matches_textbook_pycocotools(seed, tmp_path):
    gt, preds = random_case(seed)
    res, E = det_ap50(gt, preds), textbook_coco(gt, preds, tmp_path)
    assert res['map50'] == pytest.approx(E.stats[1], abs=1e-12)
    for k, c in enumerate(DET_CLASSES):
        ref = E.eval['precision'][0, :, k, 0, 2]   # IoU 0.5, all areas, maxDets 100
        if (ref == -1).all(): assert res['ap50'][c] is None
        else: assert res['ap50'][c] == pytest.approx(ref.mean(), abs=1e-12)
    assert res['ap50']['Other lesions'] is None and res['n_pred']['Other lesions'] > 0
    assert 0.05 < res['map50'] < 0.95
    assert res['n_images'] == gt.image_id.nunique() and res['n_pred_on_normal'] > 0


def test_det_independent_of_row_order():
    gt, preds = random_case(2, n_img=120)  # scores rounded to 0.01: many ties
    a = det_ap50(gt, preds)
    b = det_ap50(gt.sample(frac=1, random_state=0), preds.sample(frac=1, random_state=1))
    assert a['ap50'] == b['ap50']


def test_det_known_answers():
    B = [[10, 10, 50, 50], [60, 60, 90, 100], [120, 20, 150, 80], [5, 100, 40, 130]]
    gt = gt_frame([('n1', NO_FINDING, None), ('a1', 'Osteophytes', B[0]), ('a1', 'Osteophytes', B[1]),
                   ('a2', 'Osteophytes', B[2]), ('a2', 'Osteophytes', B[3])])
    hits = [('a1', 'Osteophytes', .9, B[0]), ('a1', 'Osteophytes', .8, B[1]), ('a2', 'Osteophytes', .7, B[2]),
            ('a2', 'Osteophytes', .6, B[3])]
    perfect = det_ap50(gt, pred_frame(hits))
    assert perfect['map50'] == pytest.approx(1.0) and perfect['ap50']['Surgical implant'] is None
    fp = det_ap50(gt, pred_frame(hits + [('n1', 'Osteophytes', .75, B[0])]))
    assert fp['map50'] == pytest.approx(91 / 101, abs=1e-12)   # TP TP FP TP TP: 51 recall points at 1, 50 at 0.8
    # TP FP TP TP TP: precision 1, 1/2, 2/3, 3/4, 4/5, interpolated 1 up to recall 0.25 (26 points),
    # then 0.8 (75 points)
    dup = det_ap50(gt, pred_frame(hits[:1] + [('a1', 'Osteophytes', .85, B[0])] + hits[1:]))
    assert dup['map50'] == pytest.approx((26 + 75 * 0.8) / 101, abs=1e-12)
    # a false positive tied with the first true positive: image order decides (ids sorted: a1 < a2 < n1, but 0n < a1)
    tie = det_ap50(gt, pred_frame(hits + [('n1', 'Osteophytes', .9, B[0])]))
    assert tie['map50'] == pytest.approx((26 + 75 * 0.8) / 101, abs=1e-12)   # TP FP TP TP TP
    gt0 = gt.replace({'image_id': {'n1': '0n'}})
    tie0 = det_ap50(gt0, pred_frame(hits + [('0n', 'Osteophytes', .9, B[0])]))
    assert tie0['map50'] == pytest.approx(0.8, abs=1e-12)                   # FP TP TP TP TP


# ---------------------------------------------------------------- fusion

def test_fusion_rule_and_reverse_fusion():
    r = np.random.default_rng(0)
    ids = [f'i{k}' for k in range(50)]
    probs = pd.DataFrame(dict(image_id=ids, label=r.integers(0, 2, 50), prob=r.random(50)))
    boxes = pred_frame([(ids[r.integers(50)], 'Osteophytes', float(r.random()), [1, 1, 5, 5]) for _ in range(200)])
    kept = fusion_rule(boxes, probs, threshold=0.6)
    p = boxes.image_id.map(probs.set_index('image_id').prob)
    expect = boxes[(p >= 0.6) | (boxes.score >= 0.5)].reset_index(drop=True)
    pd.testing.assert_frame_equal(kept, expect)
    assert (kept.score < 0.5).any() and len(kept) < len(boxes)
    rf = reverse_fusion(probs, boxes)
    top = boxes.groupby('image_id').score.max()
    for row in rf.itertuples():
        p_cls = probs.prob[probs.image_id == row.image_id].item()
        assert row.prob == pytest.approx((p_cls + top.get(row.image_id, 0.0)) / 2)
    assert list(rf.columns[:3]) == ['image_id', 'label', 'prob']
    with pytest.raises(ValueError, match='without a probability'):
        fusion_rule(pred_frame([('zz', 'Osteophytes', .9, [1, 1, 5, 5])]), probs, 0.5)


# ---------------------------------------------------------------- commands

@pytest.fixture
def cls_files(tmp_path):
    for name, seed in (('val.csv', 10), ('test.csv', 11)):
        y, p = scores(seed, n=300)
        ids = [f'{name[:1]}{k}' for k in range(300)]
        pd.DataFrame(dict(image_id=ids, label=y, prob=p)).to_csv(tmp_path/name, index=False)
    return tmp_path


def test_eval_cls_with_val(cls_files):
    p = run_cli('spinexr_eval_cls', 'test.csv', '--val', 'val.csv', '--out', 'o.json', '--fig', 'roc.png',
                '--n_boot', '2000', cwd=cls_files)
    assert p.returncode == 0, p.stderr
    r = json.loads((cls_files/'o.json').read_text())
    val, test = pd.read_csv(cls_files/'val.csv'), pd.read_csv(cls_files/'test.csv')
    t = youden_threshold(val.label, val.prob)
    assert r['threshold'] == t and not r['optimistic']
    m = cls_metrics(test.label, test.prob, t)
    for k in ('auroc', 'sensitivity', 'specificity', 'f1'):
        assert r[k] == pytest.approx(m[k], abs=1e-12)
        assert r['ci'][k][0] <= r[k] <= r['ci'][k][1]
    assert r['ci']['auroc'] == pytest.approx(list(bootstrap_ci(test.label, test.prob, t, n=2000)['auroc']))
    assert 'auroc' in p.stdout and 'WARNING' not in p.stdout
    assert (cls_files/'roc.png').read_bytes()[:4] == b'\x89PNG'


def test_eval_cls_threshold_and_default(cls_files):
    p = run_cli('spinexr_eval_cls', 'test.csv', '--threshold', '0.37', '--out', 'o.json', '--n_boot', '200',
                cwd=cls_files)
    assert p.returncode == 0, p.stderr
    r = json.loads((cls_files/'o.json').read_text())
    assert r['threshold'] == 0.37 and r['threshold_source'] == 'given'
    assert set(r['ci']) >= {'auroc', 'sensitivity', 'specificity', 'f1'} and all(len(v) == 2 for v in r['ci'].values())
    p = run_cli('spinexr_eval_cls', 'test.csv', '--out', 'o2.json', '--n_boot', '200', cwd=cls_files)
    r = json.loads((cls_files/'o2.json').read_text())
    test = pd.read_csv(cls_files/'test.csv')
    assert p.returncode == 0 and 'WARNING' in p.stdout and r['optimistic'] is True
    assert r['threshold'] == youden_threshold(test.label, test.prob)
    p = run_cli('spinexr_eval_cls', 'test.csv', '--val', 'val.csv', '--rule', 'f1', '--out', 'o3.json',
                '--n_boot', '200', cwd=cls_files)
    val = pd.read_csv(cls_files/'val.csv')
    assert json.loads((cls_files/'o3.json').read_text())['threshold'] == f1_threshold(val.label, val.prob)


@pytest.fixture
def det_files(tmp_path):
    gt, preds = random_case(3, n_img=80)
    gt.to_csv(tmp_path/'gt.csv', index=False)
    preds.round(3).to_csv(tmp_path/'pred.csv', index=False)
    return tmp_path


def test_eval_det(det_files):
    p = run_cli('spinexr_eval_det', 'gt.csv', 'pred.csv', '--out', 'o.json', '--fig', 'pr.png', cwd=det_files)
    assert p.returncode == 0, p.stderr
    r = json.loads((det_files/'o.json').read_text())
    ref = det_ap50(pd.read_csv(det_files/'gt.csv', dtype={'image_id': str}), pd.read_csv(det_files/'pred.csv'))
    assert r['map50'] == pytest.approx(ref['map50'], abs=1e-12)
    assert r['ap50'] == {c: (None if v is None else pytest.approx(v, abs=1e-12)) for c, v in ref['ap50'].items()}
    assert r['ap50']['Other lesions'] is None and 'absent' in p.stdout
    assert r['n_images'] == 80 and r['n_normal_images'] > 0
    assert 'mAP@0.5 (6 classes)' in p.stdout
    assert (det_files/'pr.png').read_bytes()[:4] == b'\x89PNG'


def test_eval_det_without_predictions(det_files):
    (det_files/'none.csv').write_text(','.join(DET_COLUMNS) + '\n')
    p = run_cli('spinexr_eval_det', 'gt.csv', 'none.csv', '--out', 'o.json', cwd=det_files)
    assert p.returncode == 0, p.stderr
    r = json.loads((det_files/'o.json').read_text())
    assert r['map50'] == 0.0


CLS_BAD = [
    ('image_id,prob\na,0.9\n', "missing columns ['label']"),
    ('image_id,label,prob\na,1,0.9\nb,2,0.2\n', "row 3: label '2' is not 0 or 1"),
    ('image_id,label,prob\na,1,0.9\nb,0,-0.1\n', 'row 3: prob -0.1 is outside [0, 1]'),
    ('image_id,label,prob\na,1,0.9\nb,0,NaN\n', "row 3: prob 'NaN' is not a finite number"),
    ('image_id,label,prob\na,1,0.9\nb,0,0.1\nb,0,0.2\n', 'row 4: image b appears again'),
    ('image_id,label,prob\na,1,0.9\nb,1,0.1\n', 'AUROC needs both'),
    ('', 'not a readable CSV'),
]


@pytest.mark.parametrize('body,msg', CLS_BAD)
def test_eval_cls_bad_input(tmp_path, body, msg):
    (tmp_path/'bad.csv').write_text(body)
    p = run_cli('spinexr_eval_cls', 'bad.csv', '--threshold', '0.5', '--out', 'o.json', cwd=tmp_path)
    assert p.returncode == 1
    assert p.stderr.strip().splitlines() == [p.stderr.strip()] and 'Traceback' not in p.stderr
    assert 'spinexr_eval_cls: error: bad.csv' in p.stderr and msg in p.stderr
    assert not (tmp_path/'o.json').exists()


@pytest.mark.parametrize('args,msg', [
    (['--threshold', '0.5', '--val', 'val.csv'], 'not both'),
    (['--threshold', '1.5'], 'threshold must be in [0, 1]'),
    (['--val', 'test.csv'], '300 images are in both'),
    (['--rule', 'max'], 'rule must be one of'),
])
def test_eval_cls_bad_options(cls_files, args, msg):
    p = run_cli('spinexr_eval_cls', 'test.csv', *args, cwd=cls_files)
    assert p.returncode == 1 and msg in p.stderr and 'Traceback' not in p.stderr


DET_BAD = [
    ('image_id,lesion_type,score,xmin,ymin,xmax\n', "missing columns ['ymax']"),
    ('{h}im0000,Fracture,0.5,1,2,3,4\n', "row 2: unknown lesion_type 'Fracture'"),
    ('{h}im0000,Osteophytes,0.5,1,2,3,4\nim0000,Osteophytes,0.5,,2,3,4\n', 'row 3: xmin is empty'),
    ('{h}im0000,Osteophytes,0.5,NaN,2,3,4\n', "row 2: xmin 'NaN' is not a finite number"),
    ('{h}im0000,Osteophytes,0.5,5,2,3,4\n', 'row 2: inverted or empty box'),
    ('{h}im0000,Osteophytes,0.5,1,4,3,4\n', 'row 2: inverted or empty box'),
    ('{h}im0000,Osteophytes,1.5,1,2,3,4\n', 'row 2: score 1.5 is outside [0, 1]'),
    ('{h}im0000,Osteophytes,0.5,1,2,3,4\nnope,Osteophytes,0.5,1,2,3,4\n',
     'row 3: image nope is not in the ground truth'),
]


@pytest.mark.parametrize('body,msg', DET_BAD)
def test_eval_det_bad_input(det_files, body, msg):
    (det_files/'bad.csv').write_text(body.format(h=','.join(DET_COLUMNS) + '\n'))
    p = run_cli('spinexr_eval_det', 'gt.csv', 'bad.csv', '--out', 'o.json', cwd=det_files)
    assert p.returncode == 1
    assert len(p.stderr.strip().splitlines()) == 1 and 'Traceback' not in p.stderr
    assert 'spinexr_eval_det: error: bad.csv' in p.stderr and msg in p.stderr
    assert not (det_files/'o.json').exists()


def test_eval_det_bad_ground_truth(det_files):
    text = (det_files/'gt.csv').read_text().splitlines()
    text[3] = (text[3].replace('Osteophytes', 'Fracture') if 'Osteophytes' in text[3]
               else text[3].replace(NO_FINDING, 'Fracture'))
    (det_files/'gt_bad.csv').write_text('\n'.join(text) + '\n')
    p = run_cli('spinexr_eval_det', 'gt_bad.csv', 'pred.csv', cwd=det_files)
    assert p.returncode == 1 and 'gt_bad.csv: row 4' in p.stderr and 'Traceback' not in p.stderr


def test_eval_det_swapped_files(det_files):
    p = run_cli('spinexr_eval_det', 'pred.csv', 'gt.csv', cwd=det_files)
    assert p.returncode == 1, p.stderr
    assert 'pred.csv and gt.csv look swapped' in p.stderr and 'Traceback' not in p.stderr, p.stderr
