"""The training input pipelines in images per second, on this machine, each variant in its own process:

- the classifiers' (a full epoch of the training loader at 384 px, batch 16: the images, their augmentation on the
  device and the normalisation; no model): the baseline, the package at --baseline (default 041a473: every epoch
  decodes each 1024-px PNG and resizes it), against the training cache (`07a_cache`), whose one-off build is timed
  apart; with 0 loader processes (the CPU default) and with one per core;
- the detector's (ultralytics' training dataset and loader at 640 px, batch 12, mosaic on, as `spinexr_train_det`
  builds them): with ultralytics' image cache off, in RAM and on disk (`DetConfig.cache`), and 2 loader processes
  (today's default) against one per core. With a cache the first epoch fills it, so both epochs are timed.

    python bench/bench_input.py [--n_studies 60] [--baseline 041a473] [--rounds 2] [--root DIR]

The phantom prep tree (long side 1024, as the full-scale prep) is made once under --root (default: a temporary
folder). Rates are the best of --rounds; ratios are against the baseline measured in the same run.
"""
import argparse, json, os, shutil, subprocess, sys, tempfile, time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CLS_SIZE, CLS_BS, DET_IMGSZ, DET_BS = 384, 16, 640, 12

def cls_epoch(prep: str, workers: int, cached: bool) -> dict:
    "Images/s of one training epoch of the classifier loader (after one warm-up batch); the cache build timed apart."
    import torch
    from spinexr.classify import ClsConfig, cls_dataloaders, read_labels
    from spinexr.core import set_threads
    set_threads()
    cfg = ClsConfig(arch='resnet50', size=CLS_SIZE, bs=CLS_BS, workers=workers, pretrained=False, mean=0.5, std=0.25)
    labels = read_labels(prep)
    t0 = time.perf_counter()
    dls = cls_dataloaders(prep, cfg, labels) if cached else cls_dataloaders(labels, cfg)
    build = time.perf_counter() - t0
    it = iter(dls.train); next(it)
    t0, n = time.perf_counter(), 0
    for x, y in it: n += len(x)
    assert x.dtype == torch.float32 and x.shape[1:] == (1, CLS_SIZE, CLS_SIZE)
    import spinexr
    return dict(images_per_s=n / (time.perf_counter() - t0), setup_s=build, package=spinexr.__file__)

def det_epochs(prep: str, workers: int, cache: str) -> dict:
    "Images/s of two epochs of ultralytics' training loader over the prep tree's YOLO dataset (the first fills it)."
    from spinexr.core import offline_env
    offline_env()                               # before ultralytics is imported: nothing is downloaded
    from ultralytics.cfg import get_cfg
    from ultralytics.data.build import build_dataloader, build_yolo_dataset
    from ultralytics.data.utils import check_det_dataset
    data = check_det_dataset(str(Path(prep)/'yolo'/'data.yaml'))
    cfg = get_cfg(overrides=dict(imgsz=DET_IMGSZ, batch=DET_BS, cache=False if cache == 'none' else cache,
                                 mosaic=1.0, hsv_h=0.0, hsv_s=0.0, flipud=0.0, degrees=10.0, workers=workers))
    t0 = time.perf_counter()
    ds = build_yolo_dataset(cfg, data['train'], DET_BS, data, mode='train')
    setup = time.perf_counter() - t0
    dl = build_dataloader(ds, DET_BS, workers, shuffle=True)
    rates = []
    for _ in range(2):
        t0, n = time.perf_counter(), 0
        for b in dl: n += len(b['im_file'])
        rates.append(n / (time.perf_counter() - t0))
    return dict(images_per_s=rates[1], first_epoch_images_per_s=rates[0], setup_s=setup)

def in_process(kind: str, prep: Path, workers: int, arg: str, src: Path | None = None) -> dict:
    "Run one variant in a fresh Python (the baseline's package first on its path); its result."
    env = {**os.environ, **({'PYTHONPATH': str(src)} if src else {})}
    r = subprocess.run([sys.executable, __file__, '--variant', json.dumps([kind, str(prep), workers, arg])],
                       capture_output=True, text=True, env=env, cwd=src or REPO)
    if r.returncode: sys.exit(f'{kind} {workers} {arg} failed:\n{r.stderr[-3000:]}')
    return json.loads(r.stdout.strip().splitlines()[-1])

def baseline_source(rev: str, tmp: Path) -> Path:
    "The package as it was at git revision `rev`, extracted under `tmp`."
    src = tmp/f'spinexr-{rev}'
    if not src.exists():
        src.mkdir(parents=True)
        tar = subprocess.run(['git', '-C', str(REPO), 'archive', rev, 'spinexr'], capture_output=True, check=True)
        subprocess.run(['tar', '-x', '-C', str(src)], input=tar.stdout, check=True)
    return src

def best(runs: list) -> dict: return max(runs, key=lambda r: r['images_per_s'])

def clear_caches(prep: Path):
    "Remove the classifier cache and ultralytics' label and image caches, so that each variant starts cold."
    shutil.rmtree(prep/'cache', ignore_errors=True)
    for p in (prep/'yolo').rglob('*'):
        if p.suffix in ('.npy', '.cache'): p.unlink()

def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--n_studies', type=int, default=60)
    ap.add_argument('--baseline', default='041a473', help='git revision of the baseline (before the training cache)')
    ap.add_argument('--rounds', type=int, default=2)
    ap.add_argument('--root', default=None, help='where the phantom prep tree is made (default: a temporary folder)')
    ap.add_argument('--variant', default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.variant:
        kind, prep, workers, arg = json.loads(a.variant)
        fn = cls_epoch if kind == 'cls' else det_epochs
        print(json.dumps(fn(prep, workers, arg == 'cache' if kind == 'cls' else arg))); return
    from spinexr.core import cpu_count
    from spinexr.prep import prepared_phantom
    import torch
    cores = cpu_count()
    tmp = Path(a.root or tempfile.mkdtemp(prefix='bench_input-'))
    prep = prepared_phantom(n_studies=a.n_studies, size=1400, prep_size=1024, root=tmp/'phantoms')
    print(f'machine: {cores} cores, torch {torch.__version__}, load {os.getloadavg()[0]:.2f}; '
          f'phantom prep tree of {a.n_studies} studies at 1024 px; best of {a.rounds} rounds')
    src = baseline_source(a.baseline, tmp)
    rows = []
    for workers in sorted({0, cores}):
        base = best([in_process('cls', prep, workers, 'png', src) for _ in range(a.rounds)])
        assert base['package'].startswith(str(src)), base['package']          # the baseline's package, not this one
        runs = []
        for _ in range(a.rounds):
            clear_caches(prep)
            cold = in_process('cls', prep, workers, 'cache')          # builds the cache, then reads it
            runs.append(dict(in_process('cls', prep, workers, 'cache'), build_s=cold['setup_s']))
        cached = best(runs)
        rows += [(f'classifier, {workers} loader processes', f'baseline {a.baseline} (PNG decoded every epoch)',
                  base['images_per_s'], 1.0, ''),
                 (f'classifier, {workers} loader processes', 'training cache', cached['images_per_s'],
                  cached['images_per_s'] / base['images_per_s'], f"cache built once in {cached['build_s']:.1f} s")]
    det = {}
    for workers in sorted({2, cores}):
        for cache in ('none', 'ram', 'disk'):
            runs = []
            for _ in range(a.rounds):
                clear_caches(prep)
                runs.append(in_process('det', prep, workers, cache))
            det[workers, cache] = best(runs)
    ref = det[2, 'none']['images_per_s']
    for (workers, cache), r in det.items():
        rows.append((f'detector, {workers} loader processes', f'ultralytics cache {cache}', r['images_per_s'],
                     r['images_per_s'] / ref, f"first epoch {r['first_epoch_images_per_s']:.1f} images/s, "
                                              f"dataset set up in {r['setup_s']:.1f} s"))
    print(f"\n| pipeline | variant | images/s | x baseline | notes |\n|---|---|---:|---:|---|")
    for r in rows: print(f'| {r[0]} | {r[1]} | {r[2]:.1f} | {r[3]:.2f} | {r[4]} |')
    if not a.root: shutil.rmtree(tmp, ignore_errors=True)

if __name__ == '__main__': main()
