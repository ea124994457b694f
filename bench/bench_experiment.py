"""Benchmark of spinexr_experiment's executors (not a test: run by hand, takes some minutes).

    .venv/bin/python bench/bench_experiment.py WORK_DIR [--studies 40] [--epochs 2] [--folds 2]

Writes a phantom prep tree and a toy plan (resnet50 at 64 px from scratch, two settings, k folds) in WORK_DIR, then
runs the same plan, each time into a fresh folder, with:
  1. `--parallel 1` (the baseline: one job at a time, all cores to it);
  2. `--parallel 2` (two jobs at once, half the cores each);
  3. `--executor ray --parallel 2` (a local Ray started for the run, two CPU slots of half the cores).
It prints each run's wall time and its ratio to the baseline, checks that the three give the same figures, and
prints the baseline's summary table (mean and corrected 95% interval per setting and figure).
"""
from __future__ import annotations
import argparse, subprocess, sys, time
from pathlib import Path

import pandas as pd

from spinexr.prep import prepared_phantom

FIGURES = ['fold_auroc', 'fold_sensitivity', 'fold_specificity', 'test_auroc']


def plan(work: Path, prep: Path, epochs: int, folds: int) -> Path:
    p = work/'plan.yaml'
    p.write_text(f'prep: {prep}\nfolds: {folds}\nmodels: [resnet50]\n'
                 f'classifier: {{size: 64, epochs: {epochs}, pretrained: false, bs: 8}}\n'
                 'settings:\n  recipe: {}\n  no_pos_weight: {imbalance: none}\n')
    return p


def timed(plan_path: Path, out: Path, *args) -> float:
    "Seconds `spinexr_experiment PLAN --out OUT ARGS` took (a fresh folder each time)."
    t0 = time.perf_counter()
    cmd = [str(Path(sys.executable).parent/'spinexr_experiment'), str(plan_path), '--out', str(out), *args]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0: sys.exit(f'{" ".join(cmd)} failed:\n{r.stdout[-2000:]}{r.stderr[-2000:]}')
    return time.perf_counter() - t0


def figures(out: Path) -> pd.DataFrame:
    return pd.read_csv(out/'results.csv').set_index(['setting', 'fold']).sort_index()[FIGURES]


if __name__ == '__main__':
    ap = argparse.ArgumentParser()
    ap.add_argument('work', type=Path)
    ap.add_argument('--studies', type=int, default=40)
    ap.add_argument('--epochs', type=int, default=2)
    ap.add_argument('--folds', type=int, default=2)
    a = ap.parse_args()
    a.work.mkdir(parents=True, exist_ok=True)
    prep = prepared_phantom(root=a.work, n_studies=a.studies, size=256, prep_size=96)
    p = plan(a.work, prep, a.epochs, a.folds)
    runs = {'--parallel 1': (), '--parallel 2': ('--parallel', '2'),
            '--executor ray --parallel 2': ('--executor', 'ray', '--parallel', '2')}
    secs, outs = {}, {}
    for i, (name, args) in enumerate(runs.items()):
        outs[name] = a.work/f'exp{i}'
        subprocess.run(['rm', '-rf', str(outs[name])], check=True)
        secs[name] = timed(p, outs[name], *args)
    base = secs['--parallel 1']
    n_jobs = 2 * a.folds
    print(f'toy plan: {n_jobs} jobs (resnet50 at 64 px, {a.epochs} epochs, 2 settings x {a.folds} folds)')
    for name, s in secs.items(): print(f'{name:30s} {s:7.1f} s   {base / s:.2f}x the baseline')
    ref = figures(outs['--parallel 1'])
    for name, out in outs.items():
        same = (figures(out) - ref).abs().max().max() < 1e-6
        print(f'{name:30s} same figures as --parallel 1: {same}')
    print(pd.read_csv(outs['--parallel 1']/'summary.csv').round(4).to_string(index=False))
