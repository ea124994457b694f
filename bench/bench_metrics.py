"""Time the published-protocol metrics at the VinDr-SpineXR test split's size.

- bootstrap: 10,000 resamples of 2,077 images (1,007 abnormal), AUROC + threshold metrics, threshold fixed;
- official mAP: pycocotools COCOeval AP@0.5 over 2,077 images (1,070 normal), ~3 boxes per abnormal image
  and 20 predictions per image (~41,500 boxes), in memory and end to end from CSV files (`eval_det`);
- bootstrap of the mAP: 1,000 resamples of those images from the match tables (`det_bootstrap_ci`), against the
  baseline of pycocotools run on each resampled set (timed on a few resamples; goal: 1,000 in under a minute).

Run: .venv/bin/python bench/bench_metrics.py [--repeats 3]
"""
import argparse, importlib.metadata, os, platform, statistics, tempfile, time
from pathlib import Path

import numpy as np
import pandas as pd

from spinexr.core import ANNOTATION_COLUMNS, BOX_COLUMNS, DET_CLASSES, NO_FINDING, cpu_count, write_csv
from spinexr.metrics import (DET_COLUMNS, _resample_counts, bootstrap_ci, cls_metrics, coco_eval, det_ap50,
                             det_bootstrap_ci, eval_det, youden_threshold)

N_IMAGES, N_ABNORMAL, PREDS_PER_IMAGE = 2077, 1007, 20
# share of boxes per class in the release's train split (VINDR.md)
CLASS_SHARE = np.array([12562, 429, 280, 387, 924, 268, 446], float)  # DET_CLASSES order


def synthetic_scores(rng):
    y = np.r_[np.ones(N_ABNORMAL, int), np.zeros(N_IMAGES - N_ABNORMAL, int)]
    p = 1 / (1 + np.exp(-(rng.normal(size=N_IMAGES) + 1.65 * y)))  # AUROC about 0.88, like the paper's
    return y, p


def synthetic_detection(rng):
    "Release-like ground truth (float xyxy, ~2455x1606 images, ~9,000 px^2 boxes) and 20 predictions per image."
    gts, preds = [], []
    share = CLASS_SHARE / CLASS_SHARE.sum()
    for i in range(N_IMAGES):
        iid = f'{i:032x}'
        W, H = rng.uniform(1100, 2200), rng.uniform(1800, 3000)
        objs = []
        if i < N_ABNORMAL:
            for _ in range(1 + rng.poisson(2)):  # ~3 boxes per abnormal image
                w, h = np.exp(rng.normal(np.log(95), 0.45, 2))
                x, y = rng.uniform(0, W - w), rng.uniform(0, H - h)
                objs.append((DET_CLASSES[rng.choice(7, p=share)], [x, y, x + w, y + h]))
        gts += [(i, c, b) for c, b in objs] or [(i, NO_FINDING, [np.nan] * 4)]
        rows = []
        for c, (x0, y0, x1, y1) in objs:
            if rng.random() < 0.7:
                w, h = x1 - x0, y1 - y0
                j = rng.normal(0, 0.12, 4) * [w, h, w, h]
                rows.append((iid, c, rng.beta(4, 2), [x0 + j[0], y0 + j[1], x1 + j[2], y1 + j[3]]))
        while len(rows) < PREDS_PER_IMAGE:
            w, h = np.exp(rng.normal(np.log(95), 0.45, 2))
            x, y = rng.uniform(0, W - w), rng.uniform(0, H - h)
            rows.append((iid, DET_CLASSES[rng.choice(7, p=share)], rng.beta(1.5, 4), [x, y, x + w, y + h]))
        preds += rows
    gt = pd.DataFrame([dict(study_id=f'{i // 2:031x}s', series_id=f'{i:031x}e', image_id=f'{i:032x}', rad_id='rad1',
                            lesion_type=c, **dict(zip(BOX_COLUMNS, b))) for i, c, b in gts])  # two images per study
    pr = pd.DataFrame([dict(image_id=i, lesion_type=c, score=s, **dict(zip(BOX_COLUMNS, b))) for i, c, s, b in preds])
    return gt[list(ANNOTATION_COLUMNS)], pr[list(DET_COLUMNS)]


def timed(f, repeats):
    out, secs = None, []
    for _ in range(repeats):
        t = time.perf_counter(); out = f(); secs.append(time.perf_counter() - t)
    return out, secs


def fmt(secs): return f"median {statistics.median(secs):.2f} s (runs: {', '.join(f'{s:.2f}' for s in secs)})"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--repeats', type=int, default=3)
    a = ap.parse_args()
    v = importlib.metadata.version
    print(f'python {platform.python_version()}, numpy {np.__version__}, pandas {pd.__version__}, '
          f'scikit-learn {v("scikit-learn")}, pycocotools {v("pycocotools")}; {cpu_count()} cores, '
          f'load average {os.getloadavg()[0]:.1f} (other work on the machine slows the figures)')
    rng = np.random.default_rng(0)

    y, p = synthetic_scores(rng)
    t = youden_threshold(y, p)
    ci, secs = timed(lambda: bootstrap_ci(y, p, t, n=10_000, seed=0), a.repeats)
    m = cls_metrics(y, p, t)
    print(f'\nbootstrap 10,000 x {N_IMAGES:,} images ({N_ABNORMAL:,} abnormal), 6 metrics, threshold fixed: '
          f'{fmt(secs)}')
    print(f"  AUROC {m['auroc']:.4f} (95% CI {ci['auroc'][0]:.4f}-{ci['auroc'][1]:.4f}), "
          f"sensitivity {m['sensitivity']:.4f} ({ci['sensitivity'][0]:.4f}-{ci['sensitivity'][1]:.4f}) at threshold "
          f"{t:.4f}")

    gt, pr = synthetic_detection(rng)
    n_box = int((gt.lesion_type != NO_FINDING).sum())
    print(f'\nofficial mAP@0.5: {N_IMAGES:,} images ({N_IMAGES - N_ABNORMAL:,} normal), {n_box:,} GT boxes '
          f'({n_box / N_ABNORMAL:.2f} per abnormal image), {len(pr):,} predictions '
          f'({len(pr) / N_IMAGES:.0f} per image)')
    res, secs = timed(lambda: det_ap50(gt, pr), a.repeats)
    print(f'  det_ap50 in memory: {fmt(secs)}; mAP {res["map50"]:.4f}')
    with tempfile.TemporaryDirectory() as d:
        write_csv(gt, Path(d)/'gt.csv'); write_csv(pr, Path(d)/'pred.csv')
        res2, secs = timed(lambda: eval_det(Path(d)/'gt.csv', Path(d)/'pred.csv'), a.repeats)
    print(f'  eval_det from CSV files (read, validate, score): {fmt(secs)}; mAP {res2["map50"]:.4f}')
    print('  ' + ', '.join(f'{c} {res["ap50"][c]:.3f}' for c in DET_CLASSES))

    E = coco_eval(gt, pr)
    ci, secs = timed(lambda: det_bootstrap_ci(E, 1000, seed=0), a.repeats)
    boot = statistics.median(secs)
    print(f'\nbootstrap of the mAP, 1,000 resamples of {N_IMAGES:,} images from the match tables: {fmt(secs)}; '
          f"mAP 95% CI {ci['map50'][0]:.4f}-{ci['map50'][1]:.4f}")
    ids = np.array(sorted(gt.image_id.unique()))
    C = next(_resample_counts(len(ids), 3, seed=0))
    def pycocotools_once(w):
        "det_ap50 (pycocotools) on the resampled set itself: each drawn copy of an image a new image."
        rep = pd.Series(np.repeat(ids, w))
        nth = rep.groupby(rep).cumcount().astype(str)
        pick = lambda df: df.merge(pd.DataFrame(dict(image_id=rep, nth=nth)), on='image_id').assign(
            image_id=lambda d: d.image_id + '#' + d.nth).drop(columns='nth')
        return det_ap50(pick(gt), pick(pr))
    _, secs = timed(lambda: [pycocotools_once(w) for w in C], 1)
    per = secs[0] / len(C)
    print(f'  baseline, pycocotools on each resampled set: {per:.2f} s per resample, so {1000 * per:.0f} s for 1,000; '
          f'the match tables are {1000 * per / boot:.0f}x faster')


if __name__ == '__main__':
    main()
