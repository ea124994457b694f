"""spinexr_predict speed by runtime: seconds per image of the whole chain (decode, classifiers, detector, fusion,
writing), its speed-up over spinexr_predict as it was before the runtimes (a git revision, run in the same session
on the same images) and the share of each stage, at batch 1 and 8, at the bundle's own input sizes and at the
full-scale ones (classifiers at 384, detector at 640, decode at 1024).

    python bench/bench_predict.py MODEL_DIR DICOM_DIR [--n 16] [--baseline 76c6e8b] [--scales demo,full]
                                  [--device auto] [--workers N]

MODEL_DIR is a bundle (spinexr_demo writes DIR/model); it is copied, never changed: the copies are exported with
spinexr_export, and the full-scale copy has its input sizes raised (the same weights: every network is fully
convolutional up to its pooling). DICOM_DIR holds DICOMs the models never saw (spinexr_phantom /tmp/unseen
--n_studies 12 --seed 77 --size 1024). Variants:

- baseline: the package at --baseline (default 76c6e8b: the last revision before --device and --workers), its torch
  runtime, on a copy of the bundle without the settings it does not know (training-only ones: `cache`,
  `copy_paste`) and without the ONNX files;
- torch, contiguous: this package's torch runtime with the classifiers put back in the default memory layout;
- torch: this package's torch runtime (inference_mode, channels-last classifiers, one resize per size);
- onnx: this package's ONNX Runtime path (spinexr_export's files);
- torch / onnx, N decoders: the same with the inputs decoded in --workers processes, a batch ahead (default: the
  cores). Every variant runs on --device (default auto: the first GPU, else the CPU), each in a fresh process, as
  the baseline does.

It also measures the classifiers' input preparation (once per classifier against once per size) and loading the
models against decoding the first batch (sequential against overlapped in a thread).
"""
import argparse, json, os, shutil, subprocess, sys, tempfile, time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BATCHES = (1, 8)
FULL_SCALE = dict(cls_size=384, det_imgsz=640, prep_size=1024)   # 50_demo's full-scale settings

def full_scale_copy(src: Path, dst: Path) -> Path:
    "A copy of a bundle with the full-scale input sizes (same weights), its file list sealed again."
    from spinexr.bundle import Bundle
    from spinexr.core import load_json, save_json
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns('onnx'))
    b = load_json(dst/'bundle.json'); b.pop('onnx', None); b['prep_size'] = FULL_SCALE['prep_size']
    for cfg in (dst/'classifiers').glob('*/config.json'):
        save_json({**load_json(cfg), 'size': FULL_SCALE['cls_size']}, cfg)
    cfg = dst/'detector'/'config.json'
    save_json({**load_json(cfg), 'imgsz': FULL_SCALE['det_imgsz']}, cfg)
    Bundle(dst).write_record(b)          # the changed configs listed with their new SHA-256s
    return dst

def timed_run(predictor, model_dir, paths, batch: int) -> dict:
    "s/image and stage shares of predict_files with a loaded predictor (the package imported in this process)."
    from spinexr.inference import predict_files
    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        s = predict_files(model_dir, paths, out, batch=batch, predictor=predictor)
        per = (time.perf_counter() - t0) / len(paths)
    st = s['stage_seconds']; tot = sum(st.values())
    return dict(s_per_image=per, shares={k: v / tot for k, v in st.items()})

ROUNDS = 2   # every variant once per round, rounds one after the other; the fastest of each is kept: the machine's
             # speed drifts over minutes here, and rounds spread the drift over all variants alike

def fastest_runs(rev: str, model_dir, paths, tmp: Path) -> dict:
    "variant -> batch -> the fastest of ROUNDS timed runs, the baseline's included."
    best = {}
    for _ in range(ROUNDS):
        runs = dict(baseline=baseline_runs(rev, model_dir, paths, tmp), **variants(model_dir, paths))
        for name, by_batch in runs.items():
            for b, r in by_batch.items():
                if b not in best.setdefault(name, {}) or r['s_per_image'] < best[name][b]['s_per_image']:
                    best[name][b] = r
    return best

BASELINE_SCRIPT = """
import dataclasses, json, shutil, sys, tempfile, spinexr
from pathlib import Path
sys.path.insert(0, sys.argv[1]); from bench_predict import timed_run
from spinexr.bundle import Bundle
from spinexr.classify import ClsConfig
from spinexr.core import load_json, save_json
from spinexr.detect import DetConfig
from spinexr.inference import Predictor
assert Path(spinexr.__file__).is_relative_to(sys.argv[2]), spinexr.__file__
model_dir, paths = Path(tempfile.mkdtemp())/'model', json.loads(sys.argv[4])
shutil.copytree(sys.argv[3], model_dir, ignore=shutil.ignore_patterns('onnx'))   # the torch runtime, as it was then
configs = [(f, ClsConfig) for f in model_dir.glob('classifiers/*/config.json')] + [(model_dir/'detector'/'config.json',
                                                                                    DetConfig)]
for f, C in configs:            # the settings this revision knows (training-only ones came later)
    known = {x.name for x in dataclasses.fields(C)}
    save_json({k: v for k, v in load_json(f).items() if k in known}, f)
record = load_json(model_dir/'bundle.json'); record.pop('onnx', None); Bundle(model_dir).write_record(record)
pred = Predictor(model_dir, 'torch'); pred.warm_up()
print(json.dumps({b: timed_run(pred, model_dir, paths, b) for b in (1, 8)}))
"""

def baseline_runs(rev: str, model_dir, paths, tmp: Path) -> dict:
    "timed_run at batch 1 and 8 with the package as it was at git revision `rev`, in a subprocess."
    src = tmp/f'spinexr-{rev}'
    if not src.exists():
        src.mkdir()
        tar = subprocess.run(['git', '-C', str(REPO), 'archive', rev, 'spinexr'], capture_output=True, check=True)
        subprocess.run(['tar', '-x', '-C', str(src)], input=tar.stdout, check=True)
    env = {**os.environ, 'PYTHONPATH': str(src)}
    r = subprocess.run([sys.executable, '-c', BASELINE_SCRIPT, str(REPO/'bench'), str(src), str(model_dir),
                        json.dumps([str(p) for p in paths])], capture_output=True, text=True, env=env,
                       cwd=src)       # python -c puts its folder first on sys.path
    if r.returncode: sys.exit(f'baseline at {rev} failed:\n{r.stderr[-3000:]}')
    return {int(b): v for b, v in json.loads(r.stdout.strip().splitlines()[-1]).items()}

def contiguous(pred):
    "The torch predictor with its classifiers back in PyTorch's default memory layout."
    import torch
    for net, _ in pred.classifiers.values(): net.to(memory_format=torch.contiguous_format)
    return pred

DEVICE, WORKERS = 'auto', os.cpu_count()        # set from --device and --workers

def variant_names() -> list:
    names = ['torch, contiguous', 'torch', 'onnx']
    return names + ([f'{rt}, {WORKERS} decoders' for rt in ('torch', 'onnx')] if WORKERS > 1 else [])

def one_variant(name: str, model_dir, paths) -> dict:
    "timed_run of one variant of this package at each batch, in this process."
    from spinexr.inference import Predictor
    runtime, _, rest = name.partition(', ')
    pred = Predictor(model_dir, runtime, device=DEVICE, workers=WORKERS if 'decoders' in rest else 1)
    if rest == 'contiguous': contiguous(pred)
    pred.warm_up()
    out = {b: timed_run(pred, model_dir, paths, b) for b in BATCHES}
    if pred.decoder: pred.decoder.close()
    return out

def variants(model_dir, paths) -> dict:
    ("timed_run of each variant of this package at batch 1 and 8, each in a fresh process as the baseline is (in one "
     "process, a variant's speed depended on those run before it).")
    out = {}
    for name in variant_names():
        r = subprocess.run([sys.executable, __file__, str(model_dir), json.dumps([str(p) for p in paths]),
                            '--variant', name, '--device', DEVICE, '--workers', str(WORKERS)],
                           capture_output=True, text=True)
        if r.returncode: sys.exit(f'variant {name} failed:\n{r.stderr[-3000:]}')
        out[name] = {int(b): v for b, v in json.loads(r.stdout.strip().splitlines()[-1]).items()}
    return out

def input_preparation(model_dir, paths) -> dict:
    "Seconds per image to make the classifiers' inputs: once per classifier (before) and once per size (now)."
    from spinexr.classify import ClsConfig
    from spinexr.bundle import read_bundle
    from spinexr.inference import classifier_inputs, normalised, padded_batch
    from spinexr.inputs import read_input
    b = read_bundle(model_dir)
    cfgs = [ClsConfig.load(Path(model_dir)/'classifiers'/a/'config.json') for a in b['ensemble'].names]
    imgs = [read_input(p, int(b['prep_size']))[0] for p in paths[:8]]
    def per_classifier(): return [classifier_inputs(imgs, c) for c in cfgs]
    def per_size():
        padded = {s: padded_batch(imgs, s) for s in {c.size for c in cfgs}}
        return [normalised(padded[c.size], c) for c in cfgs]
    out = {}
    for name, f in (('once per classifier', per_classifier), ('once per size', per_size)):
        f(); t0 = time.perf_counter()
        for _ in range(3): f()
        out[name] = (time.perf_counter() - t0) / 3 / len(imgs)
    return out

def loading_overlap(model_dir, paths, runtime: str) -> dict:
    "Seconds to load the models and decode the first batch: one after the other, and overlapped in a thread."
    from spinexr.bundle import read_bundle
    from spinexr.inference import Predictor
    from spinexr.inputs import read_input
    size = int(read_bundle(model_dir)['prep_size'])
    decode = lambda: [read_input(p, size) for p in paths[:8]]
    t0 = time.perf_counter(); Predictor(model_dir, runtime); t1 = time.perf_counter(); decode()
    t2 = time.perf_counter()
    with ThreadPoolExecutor(1) as ex:
        fut = ex.submit(Predictor, model_dir, runtime); decode(); fut.result()
    return dict(load=t1 - t0, decode=t2 - t1, sequential=t2 - t0, overlapped=time.perf_counter() - t2)

def report(scale: str, model_dir, runs: dict):
    from spinexr.core import load_json
    from spinexr.classify import ClsConfig
    b = load_json(Path(model_dir)/'bundle.json')
    sizes = sorted({ClsConfig.load(f).size for f in Path(model_dir).glob('classifiers/*/config.json')})
    det = load_json(Path(model_dir)/'detector'/'config.json')
    print(f"\n### {scale}: classifiers {', '.join(b['ensemble']['names'])} at {'/'.join(map(str, sizes))} px, "
          f"{det['model']} at {det['imgsz']}, decode to {b['prep_size']} px")
    base = runs['baseline'][8]['s_per_image']
    stages = list(runs['baseline'][8]['shares'])
    print(f"| variant | batch | s/image | speed-up | {' | '.join(stages)} |")
    print('|' + ' --- |' * (4 + len(stages)))
    for name, by_batch in runs.items():
        for bs, r in by_batch.items():
            shares = ' | '.join(f"{100 * r['shares'].get(s, 0):.0f}%" for s in stages)
            print(f"| {name} | {bs} | {r['s_per_image']:.3f} | {base / r['s_per_image']:.2f}x | {shares} |")

if __name__ == '__main__':
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('model_dir'); ap.add_argument('dicoms')
    ap.add_argument('--n', type=int, default=16, help='DICOMs to predict')
    ap.add_argument('--baseline', default='76c6e8b', help='git revision of the baseline (before --device, --workers)')
    ap.add_argument('--scales', default='demo,full', help='demo (the bundle as it is), full (the 384 px copy)')
    ap.add_argument('--device', default='auto', help='auto (the first GPU, else the CPU), cpu, cuda, cuda:N')
    ap.add_argument('--workers', type=int, default=os.cpu_count(), help='decoding processes of the N-decoder variants')
    ap.add_argument('--variant', default=None, help=argparse.SUPPRESS)   # one variant, in this process (internal)
    a = ap.parse_args()
    DEVICE, WORKERS = a.device, a.workers
    if a.variant:                   # DICOMS is then the JSON list of the paths
        print(json.dumps(one_variant(a.variant, a.model_dir, json.loads(a.dicoms)))); sys.exit()
    sys.path.insert(0, str(REPO/'bench'))
    from spinexr.export import export_bundle
    from spinexr.inputs import find_inputs
    paths = find_inputs([a.dicoms])[:a.n]
    from spinexr.runtime import resolve_device
    print(f'{len(paths)} DICOMs from {a.dicoms}; {os.cpu_count()} CPUs; device {resolve_device(DEVICE)}; '
          f'baseline: spinexr at {a.baseline} (on the CPU); '
          f"s/image of spinexr_predict's whole chain (overlays on), the fastest of {ROUNDS} rounds; "
          'speed-up against the baseline at batch 8')
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for scale in a.scales.split(','):
            bundle = (shutil.copytree(a.model_dir, tmp/'demo', ignore=shutil.ignore_patterns('onnx')) if scale == 'demo'
                      else full_scale_copy(Path(a.model_dir), tmp/'full'))
            t0 = time.perf_counter(); export_bundle(bundle); t_export = time.perf_counter() - t0
            runs = fastest_runs(a.baseline, bundle, paths, tmp)
            report(scale, bundle, runs)
            print(f'spinexr_export of this bundle: {t_export:.1f} s')
            prep = input_preparation(bundle, paths)
            print('classifier inputs, s/image: ' + ', '.join(f'{k} {v:.4f}' for k, v in prep.items()) +
                  f" ({prep['once per classifier'] / prep['once per size']:.2f}x)")
            for rt in ('torch', 'onnx'):
                o = loading_overlap(bundle, paths, rt)
                print(f"{rt}: models load in {o['load']:.2f} s, the first 8 decode in {o['decode']:.2f} s; one after "
                      f"the other {o['sequential']:.2f} s, overlapped in a thread {o['overlapped']:.2f} s")
