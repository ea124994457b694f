"""spinexr_predict speed: per-image wall time of the whole chain and the share of each stage, against two
baselines measured in the same run: loading the bundle for every image, and predicting one image at a time.

    python bench/bench_predict.py MODEL_DIR DICOM_DIR [--n 40]

MODEL_DIR is a bundle (spinexr_demo writes DIR/model); DICOM_DIR holds DICOMs the models never saw
(e.g. a phantom made with another seed: spinexr_phantom /tmp/unseen --n_studies 20 --seed 77 --size 1024).
"""
import argparse, tempfile, time

from spinexr.inference import Predictor, find_inputs, predict_files

def run(model_dir, paths, batch, reload_each=False):
    "Seconds per image, and the stage shares, for predicting `paths`."
    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        if reload_each:
            for p in paths: predict_files(model_dir, [p], out, batch=1)
            return (time.perf_counter() - t0) / len(paths), None
        pred = Predictor(model_dir)
        t1 = time.perf_counter()
        s = predict_files(model_dir, paths, out, batch=batch, predictor=pred)
        per = (time.perf_counter() - t1) / len(paths)
        st = s['stage_seconds']; tot = sum(st.values())
        return per, {k: v / tot for k, v in st.items()}, t1 - t0

if __name__ == '__main__':
    ap = argparse.ArgumentParser()
    ap.add_argument('model_dir'); ap.add_argument('dicoms'); ap.add_argument('--n', type=int, default=40)
    a = ap.parse_args()
    paths = find_inputs([a.dicoms])[:a.n]
    run(a.model_dir, paths[:2], 2)                               # warm-up (imports, first-call costs)
    naive, _ = run(a.model_dir, paths[:5], 1, reload_each=True)
    one, _, load = run(a.model_dir, paths, 1)
    batched, shares, _ = run(a.model_dir, paths, 8)
    print(f'{len(paths)} DICOMs; bundle loaded in {load:.2f} s')
    print(f'{"variant":<40} {"s/image":>8} {"speed-up":>9}')
    for name, v in (('bundle loaded for every image (baseline)', naive), ('loaded once, batch 1', one),
                    ('loaded once, batch 8', batched)):
        print(f'{name:<40} {v:>8.3f} {naive / v:>8.2f}x')
    print('stage shares (batch 8): ' + ', '.join(f'{k} {100 * v:.0f}%' for k, v in shares.items()))
