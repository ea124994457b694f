"""Integration tests of `spinexr_prep`: a phantom release, a plain folder, a missing image and bad arguments, a
crashing worker. Bad files among good ones, kill -9 and resume: tests/test_reliability.py."""
import json, os, shutil
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pydicom
import yaml

import spinexr.dicom as dicom
import spinexr.prep as prep
from spinexr.annotations import load_release
from spinexr.core import BOX_COLUMNS, DET_CLASSES, NO_FINDING, SPLITS
from conftest import run_prep, tree_digest

# `release` (conftest): a small phantom release, 8 studies at 400 px, a third MONOCHROME1


def test_release_tree(release, tmp_path):
    before = tree_digest(release)
    out = tmp_path/'out'
    res = run_prep(release, out, '--size', 256)
    assert res.returncode == 0, res.stderr
    assert res.stdout.count('\n') == 1 and res.stdout.startswith('spinexr_prep: ') and '0 failed' in res.stdout
    assert tree_digest(release) == before                                    # the source is never modified
    ann = load_release(release)
    man = pd.read_csv(out/'manifest.csv', dtype={'image_id': str})
    assert list(man.image_id) == sorted(ann.image_id.unique())                # every image, sorted
    assert pd.read_csv(out/'failures.csv').empty
    assert set(man.photometric) == {'MONOCHROME1', 'MONOCHROME2'}
    assert (man.transfer_syntax == '1.2.840.10008.1.2.4.90').all() and man.window.str.startswith('LINEAR WC=').all()
    for r in man.itertuples():
        png = cv2.imread(str(out/'images'/f'{r.image_id}.png'), cv2.IMREAD_UNCHANGED)
        assert png.dtype == np.uint8 and png.shape == (r.height, r.width) and max(png.shape) == 256
        assert abs(r.width / r.height - r.orig_width / r.orig_height) < 2 / 256  # aspect ratio kept
    r = man.iloc[0]                                                           # the PNG is read_dicom's image
    png = cv2.imread(str(out/'images'/f'{r.image_id}.png'), cv2.IMREAD_UNCHANGED)
    assert (png == dicom.to_uint8(dicom.read_dicom(r.source, 256)[0])).all()
    # labels: every image once, train/val/test with test exactly the release's test split
    labels = pd.read_csv(out/'labels.csv', dtype={'image_id': str})
    assert sorted(labels.image_id) == list(man.image_id) and set(labels.split) <= set(SPLITS)
    test_ids = set(ann[ann.split == 'test'].image_id)
    assert set(labels[labels.split == 'test'].image_id) == test_ids and 'val' in set(labels.split)
    assert labels.groupby('study_id').split.nunique().max() == 1               # split by study
    assert (labels.abnormal == (labels.n_boxes > 0)).all()
    # boxes: the annotation boxes scaled per axis to the PNG, and back
    boxes = pd.read_csv(out/'boxes.csv', dtype={'image_id': str})
    lesions = ann[ann.lesion_type != NO_FINDING].sort_values('image_id', kind='stable').reset_index(drop=True)
    assert len(boxes) == len(lesions) and (boxes.lesion_type == lesions.lesion_type).all()
    m = man.set_index('image_id')
    sx, sy = boxes.image_id.map(m.width / m.orig_width), boxes.image_id.map(m.height / m.orig_height)
    np.testing.assert_allclose(boxes.xmin, lesions.xmin * sx, rtol=1e-9)
    np.testing.assert_allclose(boxes.ymax, lesions.ymax * sy, rtol=1e-9)
    np.testing.assert_allclose(dicom.to_original_coords(boxes, out/'manifest.csv')[list(BOX_COLUMNS)],
                               lesions[list(BOX_COLUMNS)], rtol=1e-9)
    assert (boxes.class_id == boxes.lesion_type.map({c: i for i, c in enumerate(DET_CLASSES)})).all()
    # YOLO: data.yaml, one label file per image with normalised boxes, images hard-linked to the PNGs
    data = yaml.safe_load((out/'yolo'/'data.yaml').read_text())
    assert data['names'] == list(DET_CLASSES) and data['nc'] == 7 and data['channels'] == 1
    assert Path(data['path']) == (out/'yolo').absolute()
    assert (data['train'], data['val'], data['test']) == ('images/train', 'images/val', 'images/test')
    n_labels = 0
    for split in SPLITS:
        ids = set(labels[labels.split == split].image_id)
        assert {p.stem for p in (out/'yolo'/'images'/split).glob('*.png')} == ids
        for iid in ids:
            assert os.path.samefile(out/'yolo'/'images'/split/f'{iid}.png', out/'images'/f'{iid}.png')
            lines = (out/'yolo'/'labels'/split/f'{iid}.txt').read_text().splitlines()
            assert len(lines) == (boxes.image_id == iid).sum()
            for line in lines:
                c, *v = line.split()
                assert 0 <= int(c) < 7 and all(0 <= float(x) <= 1 for x in v)
                assert float(v[2]) > 0 and float(v[3]) > 0
                n_labels += 1
    assert n_labels == len(boxes) > 0


def test_plain_folder(release, tmp_path):
    src = tmp_path/'dicoms'; (src/'a'/'b').mkdir(parents=True)
    files = sorted((release/'train_images').glob('*.dicom'))[:5]
    names = ['x1.dcm', 'a/x2.DCM', 'a/b/x3.dicom', 'a/b/x4', 'a/x5.IMA']   # no suffix, .IMA: found by the DICM marker
    for f, n in zip(files, names): shutil.copy(f, src/n)
    (src/'a'/'notes.txt').write_text('not an image'); (src/'.hidden.dcm').write_bytes(b'')
    before = tree_digest(src)
    res = run_prep(src, tmp_path/'out', '--size', 200, '--workers', 1)
    assert res.returncode == 0, res.stderr
    assert tree_digest(src) == before
    out = tmp_path/'out'
    listed = sorted(p.name for p in out.iterdir() if not p.name.startswith('.'))
    assert listed == ['failures.csv', 'images', 'manifest.csv', 'prep.json']
    man = pd.read_csv(out/'manifest.csv', dtype={'image_id': str, 'split': str}, keep_default_na=False)
    assert list(man.image_id) == ['x1', 'x2', 'x3', 'x4', 'x5'] and (man.split == '').all()
    study = {pydicom.dcmread(f).SOPInstanceUID: pydicom.dcmread(f).StudyInstanceUID for f in files}
    assert sorted(man.study_id) == sorted(study.values())                    # from the DICOM header
    assert (man[['height', 'width']].max(axis=1) == 200).all()
    assert json.loads((out/'prep.json').read_text())['n_other_files'] == 1


def test_release_missing_image_and_bad_args(release_copy, tmp_path):
    src = release_copy
    gone = sorted((src/'test_images').glob('*.dicom'))[0]; gone.unlink()
    res = run_prep(src, tmp_path/'out', '--size', 128)
    assert res.returncode == 1
    fail = pd.read_csv(tmp_path/'out'/'failures.csv')
    assert list(fail.path) == [str(gone)] and list(fail.error) == ['annotated image has no DICOM file']
    assert gone.stem not in set(pd.read_csv(tmp_path/'out'/'labels.csv').image_id)
    assert run_prep(tmp_path/'nowhere', tmp_path/'o2').returncode == 2
    (tmp_path/'full').mkdir(); (tmp_path/'full'/'mine.txt').write_text('keep')
    res = run_prep(src, tmp_path/'full')
    assert res.returncode == 2 and 'not a spinexr_prep output' in res.stderr and (tmp_path/'full'/'mine.txt').exists()
    res = run_prep(src, src/'prep')
    assert res.returncode == 2 and 'inside the source folder' in res.stderr and not (src/'prep').exists()


def crash_on_marked(job):
    "A converter whose worker process dies on files named crash*: stands in for a segfault in a native decoder."
    if Path(job.path).name.startswith('crash'): os._exit(11)
    return prep.convert_one(job)


def test_worker_crash_is_isolated(release, tmp_path):
    src = tmp_path/'src'; src.mkdir()
    files = sorted((release/'train_images').glob('*.dicom'))[:6]
    for i, f in enumerate(files): shutil.copy(f, src/(f'crash{i}.dcm' if i == 2 else f'ok{i}.dcm'))
    s = prep.prep(src, tmp_path/'out', size=96, workers=2, progress=False, convert=crash_on_marked)
    assert (s['n_images'], s['n_failed']) == (5, 1)
    fail = pd.read_csv(tmp_path/'out'/'failures.csv')
    assert list(fail.path.map(lambda p: Path(p).name)) == ['crash2.dcm']
    assert 'worker process died' in fail.error[0]


def test_fast_decoder_fallback(release, monkeypatch):
    "If Pillow's reduced JPEG 2000 decode fails at every level, pydicom decodes in full: the full decode, resized."
    f = sorted((release/'train_images').glob('*.dicom'))[0]
    fast, info = dicom.read_dicom(f, 100)
    assert info['decoder'].startswith('pillow-j2k 1/')
    def broken(cs, r, hdr, pr): raise OSError('broken data stream when reading image file')
    monkeypatch.setattr(dicom, '_pillow_j2k', broken)
    img, info = dicom.read_dicom(f, 100)
    assert info['decoder'] == 'pydicom' and any('broken data stream' in n for n in info['notes'])
    full, _ = dicom.read_dicom(f)
    assert (img == np.clip(dicom.resize_to(full, img.shape), 0, 1)).all()
    assert img.shape == fast.shape


def _png_state(out: Path, image_id: str) -> tuple:
    p = out/'images'/f'{image_id}.png'
    return p.read_bytes(), p.stat().st_mtime_ns


def test_unreadable_source_keeps_earlier_output(release_copy, tmp_path, monkeypatch):
    """A source that cannot be read on a re-run (half-copied, a transient I/O error, its file briefly gone) is a
    failure row, and the good PNG and manifest row of the earlier run stay; once the source is back, all is well."""
    src, out = release_copy, tmp_path/'out'
    assert run_prep(src, out, '--size', 128).returncode == 0
    f = sorted((src/'train_images').glob('*.dicom'))[0]
    iid, before = f.stem, _png_state(out, f.stem)
    backup = shutil.copy2(f, tmp_path/'backup.dicom')

    def check_kept(res, reason):
        assert res.returncode == 1 and '1 FAILED' in res.stdout, res.stdout
        assert '1 kept from an earlier run' in res.stdout, res.stdout
        assert _png_state(out, iid) == before                                    # the PNG is untouched
        man = pd.read_csv(out/'manifest.csv', dtype={'image_id': str}).set_index('image_id')
        assert man.notes[iid].startswith(prep.KEPT) and reason in man.notes[iid]
        fail = pd.read_csv(out/'failures.csv')
        assert list(fail.path) == [str(f)] and reason in fail.error[0]
        assert iid in set(pd.read_csv(out/'labels.csv', dtype={'image_id': str}).image_id)
        assert any((out/'yolo'/'images').rglob(f'{iid}.png'))                # and in the YOLO tree

    def check_whole(res):
        assert res.returncode == 0 and '0 failed' in res.stdout, res.stdout + res.stderr
        man = pd.read_csv(out/'manifest.csv', dtype={'image_id': str}).set_index('image_id')
        assert not man.notes.astype(str).str.contains(prep.KEPT).any() and pd.read_csv(out/'failures.csv').empty
        assert _png_state(out, iid)[0] == before[0]

    f.write_bytes(backup.read_bytes()[:f.stat().st_size // 2])                  # half-copied
    check_kept(run_prep(src, out, '--size', 128), 'truncated')
    shutil.copy2(backup, f)                                                      # whole again, same size and time
    check_whole(run_prep(src, out, '--size', 128))

    f.rename(tmp_path/'away.dicom')                                              # briefly gone (a mount away)
    check_kept(run_prep(src, out, '--size', 128), 'annotated image has no DICOM file')
    (tmp_path/'away.dicom').rename(f)
    check_whole(run_prep(src, out, '--size', 128))

    real = prep.read_dicom                                                       # a transient I/O error (EIO)
    def flaky(path, *a, **kw):
        if Path(path) == f: raise OSError(5, 'Input/output error')
        return real(path, *a, **kw)
    monkeypatch.setattr(prep, 'read_dicom', flaky)                               # the workers are forked
    os.utime(f)                                                                  # rewritten: not skipped as done
    s = prep.prep(src, out, size=128, workers=1, progress=False)
    assert (s['n_failed'], s['n_kept'], s['n_images']) == (1, 1, len(pd.read_csv(out/'manifest.csv')))
    assert _png_state(out, iid) == before
    assert pd.read_csv(out/'failures.csv').error[0] == 'OSError: [Errno 5] Input/output error'
    monkeypatch.setattr(prep, 'read_dicom', real)
    s = prep.prep(src, out, size=128, workers=1, progress=False)
    assert (s['n_failed'], s['n_kept'], s['n_converted']) == (0, 0, 1) and _png_state(out, iid)[0] == before[0]


def test_max_pixels_flag(release, tmp_path):
    "--max_pixels: an image declaring more is a failure row with the reason; the batch goes on."
    src = tmp_path/'src'; src.mkdir()
    files = sorted((release/'train_images').glob('*.dicom'))[:3]
    for f in files: shutil.copy(f, src/f.name)
    sizes = {f.stem: pydicom.dcmread(f, stop_before_pixels=True) for f in files}
    n = {k: int(d.Rows) * int(d.Columns) for k, d in sizes.items()}
    budget = sorted(n.values())[1]                                               # the largest is over it
    res = run_prep(src, tmp_path/'out', '--size', 64, '--max_pixels', budget, '--workers', 1)
    assert res.returncode == 1 and '1 FAILED' in res.stdout, res.stdout + res.stderr
    fail = pd.read_csv(tmp_path/'out'/'failures.csv')
    big = max(n, key=n.get)
    assert list(fail.path.map(lambda p: Path(p).stem)) == [big]
    assert f'more than the budget of {budget:,} pixels (--max_pixels): refused before decoding' in fail.error[0]
    assert json.loads((tmp_path/'out'/'prep.json').read_text())['max_pixels'] == budget
    assert run_prep(src, tmp_path/'o2', '--max_pixels', 0).returncode == 2
