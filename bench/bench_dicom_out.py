"""What DICOM results cost: spinexr_predict's per-image time with `--dicom` (a presentation state and an SR per
image) against the same run without it (the baseline), measured in the same process, alternately, with one
loaded bundle; and the time of `write_results` alone.

    python bench/bench_dicom_out.py MODEL_DIR DICOM_DIR [--n 24] [--repeats 2]

MODEL_DIR is a bundle (spinexr_demo writes DIR/model); DICOM_DIR holds DICOMs the models never saw
(e.g. spinexr_phantom /tmp/unseen --n_studies 12 --seed 77 --size 1024).
"""
import argparse, json, tempfile, time
from pathlib import Path

from spinexr.dicom_out import write_results
from spinexr.inference import Predictor, predict_files
from spinexr.inputs import find_inputs

def per_image(pred, paths, dicom: bool) -> float:
    "Seconds per image of `predict_files` on `paths` with a loaded `pred`, with or without DICOM results."
    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        predict_files(pred.model_dir, paths, out, batch=8, predictor=pred, dicom=dicom)
        return (time.perf_counter() - t0) / len(paths)

def write_only(pred, paths) -> float:
    "Seconds per image of `write_results` alone, on the records of one prediction run."
    with tempfile.TemporaryDirectory() as out:
        predict_files(pred.model_dir, paths, out, batch=8, predictor=pred, overlays=False)
        recs = json.loads((Path(out)/'predictions.json').read_text())['images']
        algo = pred.algorithm(0.25)
        t0 = time.perf_counter()
        for r in recs: write_results(r, Path(out)/'dicom', algo)
        return (time.perf_counter() - t0) / len(recs)

if __name__ == '__main__':
    ap = argparse.ArgumentParser()
    ap.add_argument('model_dir'); ap.add_argument('dicoms')
    ap.add_argument('--n', type=int, default=24); ap.add_argument('--repeats', type=int, default=2)
    a = ap.parse_args()
    paths = find_inputs([a.dicoms])[:a.n]
    pred = Predictor(a.model_dir)
    pred.warm_up(); per_image(pred, paths[:2], True)           # imports and first-call costs, not measured
    base, dicom = [], []
    for _ in range(a.repeats):                                  # alternately: drift hits both alike
        base.append(per_image(pred, paths, False)); dicom.append(per_image(pred, paths, True))
    b, d = min(base), min(dicom)
    print(f'{len(paths)} DICOMs, best of {a.repeats}')
    print(f'{"variant":<44} {"s/image":>8} {"ratio":>7}')
    print(f'{"spinexr_predict (baseline)":<44} {b:>8.3f} {1:>6.2f}x')
    print(f'{"spinexr_predict --dicom":<44} {d:>8.3f} {d / b:>6.2f}x')
    print(f'{"write_results alone (GSPS + SR)":<44} {write_only(pred, paths):>8.3f}')
