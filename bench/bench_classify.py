"""Classifier throughput: data loading (decode + augment, per worker) vs training (fwd + bwd + step) at 384 px,
and, with --imbalance, which remedy for class imbalance helps on an imbalanced phantom.

    python bench/bench_classify.py [--cache DIR] [--imbalance]

Everything is measured in this run on this machine; figures are printed as a table.
"""
import argparse, os, time
from pathlib import Path

import numpy as np
import torch

from spinexr.core import cpu_count, set_threads, write_csv
from spinexr.classify import (ARCHS, ClsConfig, create_backbone, cls_dataloaders, read_labels, BinaryLoss,
                              train_classifier)
from spinexr.prep import PrepTree, prepared_phantom

def loader_rate(labels, size, bs=16) -> float:
    "Images per second of one loader process: PNG decode, resize/pad, augmentation, normalisation."
    cfg = ClsConfig(arch='resnet50', size=size, bs=bs, workers=0, pretrained=False)
    create_backbone(cfg)  # fills in the normalisation
    dl = cls_dataloaders(labels.path.iloc[0].parent.parent, cfg, labels).train
    it = iter(dl); next(it)                      # warm-up
    t0, n = time.perf_counter(), 0
    for x, y in it: n += len(x)                  # the rest of the epoch
    return n / (time.perf_counter() - t0)

def train_rate(arch, size, bs=8, steps=3) -> float:
    "Images per second of fwd + bwd + AdamW step on the CPU."
    cfg = ClsConfig(arch=arch, size=size, pretrained=False)
    model = create_backbone(cfg).train()
    opt = torch.optim.AdamW(model.parameters(), 1e-4)
    x, y, loss = torch.randn(bs, 1, size, size), torch.randint(0, 2, (bs,)).float(), BinaryLoss()
    def step():
        l = loss(model(x), y); l.backward(); opt.step(); opt.zero_grad()
    step()                                       # warm-up
    t0 = time.perf_counter()
    for _ in range(steps): step()
    return bs * steps / (time.perf_counter() - t0)

def imbalanced(prep: Path, out: Path, keep_pos=0.25, seed=0) -> Path:
    "A copy of a prep tree's labels where only `keep_pos` of the abnormal train images remain (images are shared)."
    src, dst = PrepTree(prep), PrepTree(out)
    out.mkdir(parents=True, exist_ok=True)
    labels = src.labels()
    rng = np.random.default_rng(seed)
    drop = (labels.split == 'train') & (labels.abnormal == 1) & (rng.random(len(labels)) > keep_pos)
    write_csv(labels[~drop], dst.labels_csv)
    if not dst.images.exists(): os.symlink(src.images.absolute(), dst.images)
    return out

if __name__ == '__main__':
    ap = argparse.ArgumentParser()
    ap.add_argument('--cache', default=None)
    ap.add_argument('--imbalance', action='store_true')
    a = ap.parse_args()
    set_threads()
    print(f'machine: {cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads, load '
          f'{os.getloadavg()[0]:.2f}')
    prep = prepared_phantom(n_studies=60, size=1400, prep_size=1024, root=a.cache)
    labels = read_labels(prep)
    rows = [('loader, 1 process, 384 px (PNG 1024 -> 384, augment)', loader_rate(labels, 384))]
    for arch in ARCHS: rows.append((f'train {arch}, 384 px, batch 8', train_rate(arch, 384)))
    print(f"{'measurement':<58} {'images/s':>9}")
    for name, r in rows: print(f'{name:<58} {r:>9.1f}')
    fastest = max(r for n, r in rows[1:])
    print(f'one loader process delivers {rows[0][1] / fastest:.1f}x what the fastest of the three models consumes at '
          f'384 px')
    if a.imbalance:
        small = prepared_phantom(n_studies=250, size=1024, prep_size=256, root=a.cache)
        imb = imbalanced(small, Path(a.cache or '/tmp')/'imbalanced')
        lab = PrepTree(imb).labels()
        tr = lab[lab.split == 'train']
        print(f'\nimbalanced phantom: {len(tr)} train images, {tr.abnormal.mean():.1%} abnormal; val/test unchanged')
        print(f"{'imbalance remedy':<12} {'val AUROC':>9} {'test AUROC':>10} {'sens':>6} {'spec':>6}")
        for how in ('none', 'pos_weight', 'sampler'):
            m = train_classifier(imb, Path(a.cache or '/tmp')/f'imb_{how}',
                                 ClsConfig(arch='resnet50', size=128, epochs=5, bs=16, lr=2e-3,
                                 pretrained=False, imbalance=how), progress=False)
            t = m['test']
            print(f"{how:<12} {m['val_auroc']:>9.4f} {t['auroc']:>10.4f} {t['sensitivity']:>6.3f} "
                  f"{t['specificity']:>6.3f}")
