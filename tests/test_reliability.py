"""Reliability and safety: bad DICOMs and bad CSVs among good data, kill -9 at random points, unsafe model files,
reproducibility, memory. Each test adds to `TALLY` (bad-input kinds tried, faults injected, files lost); conftest
prints the totals at the end of the session."""
import hashlib, io, json, os, pickle, shutil, signal, subprocess, sys, threading, time
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pydicom
import pytest
import yaml
from pydicom.data import get_testdata_file
from pydicom.encaps import encapsulate, get_frame

from conftest import command, run_cli, run_prep, tree_digest
import spinexr.dicom as dicom
import spinexr.prep as prep
from spinexr.annotations import image_table, load_release, read_annotations, split_train_val
from spinexr.core import NO_FINDING, InputError, keep_threads, load_json, offline_env, save_json
from spinexr.phantom import write_dicom

PREP = command('spinexr_prep')                  # started with Popen by the kill tests
TALLY, RSS_MIB = Counter(), {}

# ---------------------------------------------------------------------------------------------------- helpers

_MEASURED = ("import json, resource, subprocess, sys; "
             "r = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
             "print(json.dumps(dict(rc=r.returncode, out=r.stdout, err=r.stderr, "
             "kb=resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)))")

def run_measured(*args, timeout=300) -> dict:
    """Run a command from a fresh Python: its exit status, output and peak RSS in KiB (its own or a worker's,
    the largest)."""
    r = run_cli(Path(sys.executable).name, '-c', _MEASURED, *args, timeout=timeout)    # this Python, afresh
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)

def subset_release(release: Path, n: int, dst: Path) -> Path:
    "A release of the first `n` images of `release` (by image_id): its CSV rows, its DICOMs hard-linked."
    raw = {s: pd.read_csv(release/'annotations'/f'{s}.csv', dtype=str, keep_default_na=False)
           for s in ('train', 'test')}
    keep = set(sorted(pd.concat(raw.values()).image_id.unique())[:n])
    (dst/'annotations').mkdir(parents=True)
    for s, df in raw.items():
        part = df[df.image_id.isin(keep)]
        assert len(part), f'no {s} image among the first {n}'
        part.to_csv(dst/'annotations'/f'{s}.csv', index=False)
        (dst/f'{s}_images').mkdir()
        for iid in sorted(set(part.image_id)):
            os.link(release/f'{s}_images'/f'{iid}.dicom', dst/f'{s}_images'/f'{iid}.dicom')
    return dst

def output_files(out: Path) -> dict:
    "The bytes of every output a user sees (not the private records, lock or run summary); data.yaml without its path."
    files = {}
    for p in sorted(out.rglob('*')):
        rel = p.relative_to(out)
        if not p.is_file() or any(part.startswith('.') for part in rel.parts) or rel.name == 'prep.json': continue
        files[str(rel)] = _normalised(rel, p.read_bytes())
    return files

def _normalised(rel: Path, data: bytes) -> bytes:
    if rel.name == 'data.yaml':
        return yaml.safe_dump({k: v for k, v in yaml.safe_load(data).items() if k != 'path'}).encode()
    return data

def incomplete_prep_files(out: Path, expected: dict) -> list:
    """Files under a final name in OUT that are not complete: outputs not equal to the clean run's, records or summary
    not valid JSON."""
    bad = []
    for dirpath, dirnames, filenames in os.walk(out):                     # (os.walk skips folders removed meanwhile)
        for name in filenames:
            p = Path(dirpath)/name
            rel = p.relative_to(out)
            # temporaries, lock, half-built trees
            if any(part.startswith('.') and part != '.records' for part in rel.parts): continue
            try: data = p.read_bytes()
            except FileNotFoundError: continue                 # replaced or removed between listing and reading
            if rel.parts[0] == '.records' or rel.name == 'prep.json':
                try: json.loads(data)
                except ValueError: bad.append(f'{rel}: not valid JSON ({len(data)} bytes)')
            elif str(rel) not in expected: bad.append(f'{rel}: not an output of the clean run')
            elif _normalised(rel, data) != expected[str(rel)]:
                bad.append(f'{rel}: differs from the clean run ({len(data)} bytes)')
    return bad

def n_records(out: Path) -> int:
    d = out/'.records'
    return sum(1 for p in d.iterdir() if not p.name.startswith('.')) if d.is_dir() else 0

class Watcher(threading.Thread):
    """Scan a folder over and over while other processes write into it; collect every file found incomplete under
    its final name."""
    def __init__(self, check):
        super().__init__(daemon=True)
        self.check, self.stopped, self.bad, self.scans = check, threading.Event(), [], 0
    def run(self):
        while not self.stopped.is_set():
            self.bad += self.check(); self.scans += 1
            time.sleep(0.002)
    def stop(self):
        self.stopped.set(); self.join()
        return self

def kill_when(cmd, ready, delay: float, psutil, env=None, timeout=120) -> dict:
    "Start `cmd`, wait until `ready()`, wait `delay` seconds more, then kill -9 it; wait for its workers to go too."
    proc = subprocess.Popen(list(map(str, cmd)), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    t0 = time.monotonic()
    while proc.poll() is None and not ready() and time.monotonic() - t0 < timeout: time.sleep(0.003)
    time.sleep(delay)
    try: children = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess: children = []
    killed = proc.poll() is None
    if killed: os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    gone, alive = psutil.wait_procs(children, timeout=10)
    assert not alive, f'{len(alive)} orphan workers still running'
    if killed: TALLY['faults injected'] += 1
    return dict(killed=killed, seconds=round(time.monotonic() - t0, 2), workers=len(children))

class Payload:
    "A pickle that creates a file when unpickled: stands for any code a model file could carry."
    def __init__(self, marker): self.marker = str(marker)
    def __reduce__(self): return (io.open, (self.marker, 'w'))

def payload_bytes(marker, in_archive: bool, key: str = 'weight') -> bytes:
    "The payload as a torch archive (a state_dict with one poisoned entry) or as a bare pickle."
    import torch
    if not in_archive: return pickle.dumps({key: Payload(marker)})
    buf = io.BytesIO(); torch.save({key: torch.zeros(1), 'x': Payload(marker)}, buf)
    return buf.getvalue()

def torch_bytes(obj) -> bytes:
    import torch
    buf = io.BytesIO(); torch.save(obj, buf)
    return buf.getvalue()

# ---------------------------------------------------------------------------------------------------- data

@pytest.fixture(scope='module')
def big_release(phantom_release):
    "A phantom release of 214 images at 256 px, a third MONOCHROME1 (read only: tests copy or hard-link from it)."
    return phantom_release(n_studies=100, seed=0, size=256, mono1_frac=0.3)

@pytest.fixture(scope='module')
def prep_runs(big_release, tmp_path_factory):
    "Clean spinexr_prep runs over the first 50 and the first 200 images, with their peak RSS."
    d = tmp_path_factory.mktemp('prep_runs')
    runs = {}
    for n in (50, 200):
        rel = subset_release(big_release, n, d/f'release{n}')
        r = run_measured(PREP, rel, d/f'out{n}', '--size', 128, '--workers', 2, '--quiet')
        assert r['rc'] == 0, r['err']
        assert f'spinexr_prep: {n} images' in r['out']
        runs[n] = dict(release=rel, out=d/f'out{n}', rss_kb=r['kb'])
    return runs

# ---------------------------------------------------------------------------------------------------- bad DICOMs

def bad_dicoms(src: Path, good: list) -> list:
    "Write every kind of bad file into `src` beside the good ones: [(path relative to src, kind, expected reason)]."
    cases = []
    def add(name, kind, reason): cases.append((name, kind, reason))
    raw, ids = good[0].read_bytes(), dict(image_id='1.2.3', study_id='1.2.4', series_id='1.2.5')
    arr = pydicom.dcmread(good[0]).pixel_array
    (src/'zero.dicom').write_bytes(b'')
    add('zero.dicom', 'zero bytes', 'empty file (0 bytes)')
    (src/'text.dicom').write_text('this is not a DICOM file\n' * 10)
    add('text.dicom', 'text file named .dicom', 'not a DICOM file')
    (src/'truncated.dicom').write_bytes(raw[:len(raw) // 2])
    add('truncated.dicom', 'truncated file', 'truncated file')
    ds = pydicom.dcmread(good[1]); cs = get_frame(ds.PixelData, 0, number_of_frames=1)
    ds.PixelData = encapsulate([cs[:len(cs) * 3 // 4]]); ds.save_as(src/'cut_j2k.dicom')
    add('cut_j2k.dicom', 'truncated JPEG 2000 stream', 'truncated JPEG 2000 codestream')
    ds = pydicom.dcmread(good[2]); del ds.PixelData; ds.save_as(src/'nopixels.dcm')
    add('nopixels.dcm', 'no PixelData', 'no Pixel Data element')
    shutil.copy(get_testdata_file('SC_rgb_small_odd.dcm'), src/'rgb.dcm');  add('rgb.dcm', 'RGB image', 'colour image')
    write_dicom(src/'frames.dcm', np.stack([arr, arr]), ids, syntax='explicit')
    add('frames.dcm', 'multi-frame image', '2 frames')
    write_dicom(src/'one_pixel.dcm', np.full((1, 1), 1000, np.uint16), ids, syntax='explicit')
    add('one_pixel.dcm', '1x1 image', 'image of 1 x 1 pixels: too small to be a radiograph')
    for syntax in ('explicit', 'jpeg2000', 'rle', 'jpegls'):           # a 60000 x 60000 header over a 256 px image
        f = write_dicom(src/f'huge_{syntax}.dcm', arr, ids, syntax=syntax)
        ds = pydicom.dcmread(f); ds.Rows = ds.Columns = 60000; ds.save_as(f)
        add(f.name, 'declared size far larger than the data', 'the header declares 60000 x 60000 pixels')
    ds = pydicom.dcmread(good[3]); ds.file_meta.TransferSyntaxUID = '1.2.840.10008.1.2.4.100'
    ds.save_as(src/'mpeg2.dcm')
    add('mpeg2.dcm', 'unsupported transfer syntax',
        'transfer syntax 1.2.840.10008.1.2.4.100 (MPEG2 Main Profile / Main Level) cannot be decoded')
    ds = pydicom.dcmread(good[3]); ds.file_meta.TransferSyntaxUID = '1.2.826.0.1.3680043.2.1143.99'
    ds.save_as(src/'private_ts.dcm')
    add('private_ts.dcm', 'unsupported transfer syntax', 'transfer syntax 1.2.826.0.1.3680043.2.1143.99')
    (src/'sub').mkdir(); (src/'other').mkdir()
    shutil.copy(good[0], src/'sub'/'dup.dcm'); shutil.copy(good[1], src/'other'/'dup.dcm')
    for n in ('sub/dup.dcm', 'other/dup.dcm'): add(n, 'two files, one image id', "image id 'dup' is shared by 2 files")
    shutil.copy(good[2], src/'bad name.dcm')
    add('bad name.dcm', 'unusable file name', "file name 'bad name' cannot be used as an image id")
    return cases

def test_bad_dicoms_among_good_ones(big_release, tmp_path):
    src = tmp_path/'mixed'; src.mkdir()
    good = sorted((big_release/'train_images').glob('*.dicom'))[:6]
    for f in good: shutil.copy(f, src/f.name)
    cases = bad_dicoms(src, good)
    kinds = sorted({k for _, k, _ in cases})
    TALLY['bad-input kinds'] += len(kinds); TALLY['faults injected'] += len(cases)
    before = tree_digest(src)
    r = run_measured(PREP, src, tmp_path/'out', '--size', 128, '--quiet')
    print(f'{len(cases)} bad files of {len(kinds)} kinds among {len(good)} good ones: exit {r["rc"]}, '
          f'peak RSS {r["kb"] / 1024:.0f} MiB')
    assert r['rc'] == 1, r['err']                                           # documented: 1 when any file failed
    assert r['out'].count('\n') == 1 and f'{len(cases)} FAILED' in r['out'], r['out']
    assert f'{len(good)} images' in r['out'], r['out']
    assert tree_digest(src) == before                                       # nothing under SRC is modified
    assert r['kb'] < 500 * 1024                         # no decoder allocated a declared 60000 x 60000 image
    fail = pd.read_csv(tmp_path/'out'/'failures.csv')
    reason = {Path(p).relative_to(src).as_posix(): e for p, e in zip(fail.path, fail.error)}
    assert sorted(reason) == sorted(n for n, _, _ in cases)                  # each bad file listed once ...
    for name, kind, expected in cases:                                      # ... with its reason
        assert reason[name].startswith(expected), (kind, name, reason[name])
    man = pd.read_csv(tmp_path/'out'/'manifest.csv', dtype={'image_id': str})
    pngs = {p.stem for p in (tmp_path/'out'/'images').glob('*.png')}
    lost = sum(f.stem not in set(man.image_id) or f.stem not in pngs for f in good)
    TALLY['files lost'] += lost
    assert lost == 0 and len(man) == len(good)                              # every good file still converted

def test_read_dicom_names_the_file_and_the_reason(big_release, tmp_path):
    """The same files one by one through read_dicom, which spinexr_predict calls too: a DicomError naming the file,
    with the reason."""
    src = tmp_path/'src'; src.mkdir()
    good = sorted((big_release/'train_images').glob('*.dicom'))[:4]
    for name, kind, expected in bad_dicoms(src, good):
        if '/' in name or ' ' in name: continue                             # folder-level problems: not one file's
        with pytest.raises(dicom.DicomError) as e: dicom.read_dicom(src/name, 128)
        assert e.value.reason.startswith(expected) and str(src/name) in str(e.value), (kind, str(e.value))

# ---------------------------------------------------------------------------------------------------- bad CSVs

CSV_CASES = [  # (kind, row: a 'No finding' row or a lesion row (None: no row), column, value, message)
    ('unknown lesion type', False, 'lesion_type', 'Fracture', "unknown lesion_type 'Fracture'"),
    ('empty box field on a lesion row', False, 'xmin', '', 'box must have four finite numbers'),
    ('NaN box on a lesion row', False, 'ymax', 'nan', "ymax 'nan' is not a number"),
    ('infinite box on a lesion row', False, 'xmax', 'inf', 'box must have four finite numbers'),
    ('inverted box', False, 'xmax', '-5', 'inverted or empty box'),
    ('text in a box field', False, 'ymin', '12px', "ymin '12px' is not a number"),
    ('path-like image_id', False, 'image_id', '../../x', "image_id '../../x' is not a safe id"),
    ('unsafe series_id', False, 'series_id', 'a b', "series_id 'a b' is not a safe id"),
    ('box on a No finding row', True, 'xmin', '3', 'must have empty box fields'),
    ('empty rad_id', True, 'rad_id', '', 'empty rad_id'),
    ('missing column', None, 'rad_id', None, "missing columns ['rad_id']"),
]

@pytest.fixture(scope='module')
def small_release(big_release, tmp_path_factory):
    rel = subset_release(big_release, 16, tmp_path_factory.mktemp('small')/'release')
    kinds = set(pd.read_csv(rel/'annotations'/'train.csv').lesion_type)
    assert NO_FINDING in kinds and len(kinds) > 1                            # both kinds of rows to corrupt
    return rel

@pytest.mark.parametrize('kind,normal,col,value,message', CSV_CASES, ids=[c[0] for c in CSV_CASES])
def test_bad_csv_names_the_row_and_writes_nothing(small_release, tmp_path, kind, normal, col, value, message):
    rel = tmp_path/'release'; shutil.copytree(small_release, rel)
    csv = rel/'annotations'/'train.csv'
    df = pd.read_csv(csv, dtype=str, keep_default_na=False)
    if normal is None: df, line = df.drop(columns=col), None
    else:
        line = int(np.flatnonzero((df.lesion_type == NO_FINDING) == normal)[0]) + 2   # the header is line 1
        df.loc[line - 2, col] = value
    df.to_csv(csv, index=False)
    shutil.copy(next((rel/'train_images').iterdir()), tmp_path/'x.dicom')  # what train_images/../../x.dicom reaches
    TALLY['bad-input kinds'] += 1; TALLY['faults injected'] += 1
    before = tree_digest(tmp_path)
    with pytest.raises(InputError) as e: read_annotations(csv)
    assert e.value.row == line and e.value.path == csv and message in e.value.reason, str(e.value)
    r = run_prep(rel, tmp_path/'out', '--size', 64)
    assert r.returncode == 2 and 'Traceback' not in r.stderr, r.stderr     # documented: 2 for an unusable SRC
    assert r.stderr.startswith(f'spinexr_prep: error: {csv}: ') and message in r.stderr, r.stderr
    assert line is None or f': row {line}: ' in r.stderr
    assert tree_digest(tmp_path) == before and not (tmp_path/'out').exists()  # nothing written, outside OUT or in it

# ---------------------------------------------------------------------------------------------------- kill -9

def test_prep_kill9_at_random_points_then_resume(prep_runs, tmp_path):
    psutil = pytest.importorskip('psutil')
    rel, clean = prep_runs[200]['release'], prep_runs[200]['out']
    expected, before, out = output_files(clean), tree_digest(rel), tmp_path/'killed'
    seed = int(np.random.default_rng().integers(2 ** 31)); rng = np.random.default_rng(seed)
    cmd = [PREP, rel, out, '--size', 128, '--workers', 1, '--quiet']
    watcher = Watcher(lambda: incomplete_prep_files(out, expected)); watcher.start()
    points = []
    for _ in range(3):                                                      # mid-conversion, after a random image
        done = n_records(out)
        target = done + int(rng.integers(1, max(2, (190 - done) // 2)))
        k = kill_when(cmd, lambda: n_records(out) >= target, rng.uniform(0, 0.02), psutil)
        points.append(dict(k, target=target, records=n_records(out)))
        assert k['killed'] and 0 < n_records(out) < 200 and not (out/'manifest.csv').exists(), points
        assert incomplete_prep_files(out, expected) == []
    k = kill_when(cmd, lambda: n_records(out) == 200, rng.uniform(0, 0.3), psutil)   # while the tables are written
    points.append(dict(k, target='tables', records=n_records(out)))
    assert incomplete_prep_files(out, expected) == []
    res = run_prep(rel, out, '--size', 128, '--workers', 2)
    watcher.stop()
    print(f'seed {seed}: killed at {points}; then resumed; {watcher.scans} scans of OUT while it ran')
    assert res.returncode == 0, res.stderr
    assert watcher.bad == [], watcher.bad[:5]                             # no partial file ever under its final name
    got = output_files(out)
    lost = sum(got.get(k) != v for k, v in expected.items())
    TALLY['files lost'] += lost
    assert lost == 0 and got == expected                                     # pixel-identical PNGs, identical tables
    s = load_json(out/'prep.json')
    assert s['n_converted'] + s['n_skipped'] == 200 and s['n_failed'] == 0
    assert not [p for p in out.rglob('*') if '.tmp' in p.name or p.name == '.yolo.old']  # nothing temporary left
    assert tree_digest(rel) == before

def test_prep_stopped_at_its_first_write_leaves_a_folder_it_resumes(big_release, tmp_path, monkeypatch):
    "Killed between creating OUT and taking the lock: the folder must still be one a re-run accepts."
    src = tmp_path/'src'; src.mkdir()
    for f in sorted((big_release/'train_images').glob('*.dicom'))[:3]: shutil.copy(f, src/f.name)
    class Killed(BaseException): pass
    def killed(out, timeout=30): raise Killed()
    with monkeypatch.context() as m:
        m.setattr(prep, '_locked', killed)
        with pytest.raises(Killed): prep.prep(src, tmp_path/'out', size=64, workers=1, progress=False)
    TALLY['faults injected'] += 1
    assert not (tmp_path/'out').exists() or not any((tmp_path/'out').iterdir())
    s = prep.prep(src, tmp_path/'out', size=64, workers=1, progress=False)
    assert (s['n_images'], s['n_failed']) == (3, 0)

# ---------------------------------------------------------------------------------------------------- classifier

CLS_ARGS = ['--arch', 'densenet121', '--size', '32', '--epochs', '3', '--bs', '8', '--no_pretrained']
def cls_env() -> dict:
    # one thread: the same arithmetic in every run, and no oversubscription
    return dict(os.environ, SPINEXR_THREADS='1')

def train_cls(prep_dir, out):
    return run_cli('spinexr_train_cls', '--data', prep_dir, '--out', out, *CLS_ARGS, timeout=600, env=cls_env())

def run_file(name: str, data: bytes) -> bytes:
    "A classifier run's file without what measures time (train_seconds, the time column of the log)."
    if name == 'metrics.json':
        return json.dumps({k: v for k, v in json.loads(data).items() if k != 'train_seconds'}).encode()
    if name == 'history.csv': return pd.read_csv(io.BytesIO(data)).drop(columns='time').to_csv(index=False).encode()
    return data

def run_files(run: Path) -> dict:
    return {p.name: run_file(p.name, p.read_bytes()) for p in sorted(run.iterdir())
            if p.is_file() and not p.name.startswith('.')}

class RunFilesCheck:
    """Each version (inode, size, mtime) of each file under a final name in `run` checked once: its bytes must be one
    of `allowed`."""
    def __init__(self, run: Path, allowed: dict): self.run, self.allowed, self.seen = run, allowed, {}
    def __call__(self) -> list:
        bad = []
        for name in os.listdir(self.run) if self.run.is_dir() else []:
            if name.startswith('.'): continue
            try:
                st = os.stat(self.run/name); key = (st.st_ino, st.st_size, st.st_mtime_ns)
                if self.seen.get(name) == key: continue
                data = (self.run/name).read_bytes()
            except (FileNotFoundError, IsADirectoryError): continue
            self.seen[name] = key
            try: ok = run_file(name, data) in self.allowed.get(name, ())
            except Exception: ok = False
            if not ok: bad.append(f'{name}: incomplete or from neither run ({len(data)} bytes)')
        return bad

@pytest.fixture(scope='module')
def cls_prep(prepared):
    return prepared(n_studies=20, size=256, prep_size=64)

@pytest.fixture(scope='module')
def cls_run(cls_prep, tmp_path_factory):
    out = tmp_path_factory.mktemp('cls_run')/'run'
    r = train_cls(cls_prep, out)
    assert r.returncode == 0, r.stderr[-3000:]
    return out

def test_classifier_is_reproducible(cls_prep, cls_run, tmp_path):
    r = train_cls(cls_prep, tmp_path/'again')
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = run_files(cls_run), run_files(tmp_path/'again')
    assert json.loads(a['metrics.json']) == json.loads(b['metrics.json'])   # identical metrics ...
    assert a == b                                                     # ... and identical weights, predictions, log

def check_run_dir(run: Path, expected: dict) -> list:
    """A classifier run directory after a kill: each file complete and from this run (equal to the clean run's),
    model.pt loadable."""
    from spinexr.classify import load_classifier
    got = run_files(run)
    assert got.pop('notes.txt') == b'mine'                                  # the user's own file is kept
    assert {k: v for k, v in expected.items() if k in got} == got, sorted(k for k in got if got[k] != expected.get(k))
    if 'config.json' in got: load_classifier(run)
    elif 'model.pt' in got:
        with pytest.raises(InputError, match='no config.json'): load_classifier(run)
    return sorted(got)

def test_classifier_kill9_then_rerun(cls_prep, cls_run, tmp_path):
    psutil = pytest.importorskip('psutil')
    run, expected = tmp_path/'run', run_files(cls_run)
    shutil.copytree(cls_run, run)                                     # an earlier, complete run into the same folder
    m = load_json(run/'metrics.json'); m['auroc_of_an_older_model'] = 0.5; save_json(m, run/'metrics.json')
    (run/'notes.txt').write_text('mine')
    older = run_files(run)
    allowed = ({k: {expected.get(k), v} for k, v in older.items()}
               | {k: {v} for k, v in expected.items() if k not in older})
    watcher = Watcher(RunFilesCheck(run, allowed))
    watcher.start()
    seed = int(np.random.default_rng().integers(2 ** 31)); rng = np.random.default_rng(seed)
    fit_s = load_json(cls_run/'metrics.json')['train_seconds']
    cmd = [command('spinexr_train_cls'), '--data', cls_prep, '--out', run, *CLS_ARGS]
    k1 = kill_when(cmd, lambda: (run/'.checkpoints'/'history.csv').exists(), rng.uniform(0, 0.5 * fit_s), psutil,
                   env=cls_env())
    left1 = check_run_dir(run, expected)                          # (the older run's metrics.json would fail this)
    assert k1['killed']
    k2 = kill_when(cmd, lambda: (run/'model.pt').exists(), rng.uniform(0, 0.5), psutil,
                   env=cls_env())                                                  # while writing the outputs
    left2 = check_run_dir(run, expected)
    print(f'seed {seed}: killed mid-training after {k1["seconds"]} s (left {left1}), '
          f'then while writing after {k2["seconds"]} s (left {left2}); '
          f'{watcher.scans} scans of the run directory')
    r = train_cls(cls_prep, run)
    watcher.stop()
    assert r.returncode == 0, r.stderr[-3000:]
    assert watcher.bad == [], watcher.bad                                   # never a partial file (model.pt above all)
    got = run_files(run)
    lost = sum(got.get(k) != v for k, v in expected.items())
    TALLY['files lost'] += lost
    assert lost == 0 and got == dict(expected, **{'notes.txt': b'mine'})     # the same run as one never interrupted
    assert sorted(p.name for p in run.iterdir() if p.name.startswith('.')) == []   # no checkpoints or temporaries left

# ------------------------------------------------------------------------------------------------ unsafe model files

def check_refused(load, run: Path, fname: str, cases: dict, marker: Path):
    "Each damaged `fname` in `run` is an InputError naming the file, and the payload in a file never runs."
    for kind, (data, message) in cases.items():
        (run/fname).write_bytes(data)
        with pytest.raises(InputError) as e: load(run)
        assert str(run/fname) in str(e.value) and message in str(e.value), (kind, str(e.value))
        assert not marker.exists(), f'{kind}: the pickle in the file ran'
        TALLY['faults injected'] += 1

def weight_damage(good: bytes, marker: Path, key: str) -> dict:
    "The damage both loaders must refuse: {kind: (file bytes, expected message)}; `key` a tensor name of the model."
    import torch
    flipped = bytearray(good); flipped[len(good) * 2 // 3] ^= 0x01
    return {'truncated': (good[:len(good) // 2], 'not a readable PyTorch weights file: truncated or corrupt'),
            'zero bytes': (b'', 'not a readable PyTorch weights file'),
            'pickle payload in a torch archive': (payload_bytes(marker, True, key),
                                                  'refused: the file holds Python objects'),
            'bare pickle payload': (payload_bytes(marker, False), 'refused: the file holds Python objects'),
            'one flipped bit in a tensor': (bytes(flipped), 'the weights changed after training'),
            'other weights': (torch_bytes({key: torch.zeros(2)}), 'the weights changed after training')}

def test_payload_is_live(tmp_path):
    "The payload used below does run when unpickled the unsafe way (so its absence later means something)."
    pickle.loads(payload_bytes(tmp_path/'ran', in_archive=False))
    assert (tmp_path/'ran').exists()

@pytest.mark.filterwarnings('ignore:Detected pickle protocol')
def test_unsafe_classifier_files(cls_run, tmp_path):
    from spinexr.classify import load_classifier
    run, marker = tmp_path/'run', tmp_path/'payload_ran'
    run.mkdir(); shutil.copy(cls_run/'config.json', run)
    good = (cls_run/'model.pt').read_bytes()
    import torch
    cases = {**weight_damage(good, marker, 'features.conv0.weight'),
             'a list, not a state_dict': (torch_bytes([torch.zeros(2)]), 'not a state_dict')}
    check_refused(load_classifier, run, 'model.pt', cases, marker)
    cfg = load_json(run/'config.json'); cfg['weights_sha256'] = None                     # a run without a checksum
    save_json(cfg, run/'config.json')
    check_refused(load_classifier, run, 'model.pt',
                  {'other architecture': (cases['other weights'][0], 'not a valid densenet121 checkpoint')}, marker)
    (run/'model.pt').write_bytes(good)
    cfg['eval'] = '__import__("os")'                          # a tampered config.json: refused, naming the setting
    save_json(cfg, run/'config.json')
    with pytest.raises(InputError, match=r"config.json: unknown settings \['eval'\]"): load_classifier(run)
    TALLY['bad-input kinds'] += len(cases) + 2; TALLY['faults injected'] += 1

@pytest.mark.filterwarnings('ignore:Detected pickle protocol')
def test_unsafe_detector_files(tmp_path):
    """detector.pt (from 20_detect) goes through the same damage; its loader must refuse each without unpickling
    (that it loads a good one, tests/test_detect.py shows)."""
    offline_env()
    with keep_threads():                                                    # ultralytics lowers torch's threads
        from ultralytics.nn.tasks import DetectionModel
        from spinexr.detect import load_detector, save_detector
        run, marker = tmp_path/'det', tmp_path/'payload_ran'
        run.mkdir()
        model = DetectionModel('yolo11n.yaml', ch=1, nc=7, verbose=False)
        save_detector(SimpleNamespace(model=model), run)                                    # as a YOLO wrapper holds it
        cases = weight_damage((run/'detector.pt').read_bytes(), marker, 'model.0.conv.weight')
        check_refused(load_detector, run, 'detector.pt', cases, marker)
        spec = load_json(run/'detector.json'); spec['weights_sha256'] = None                          # no checksum
        save_json(spec, run/'detector.json')
        check_refused(load_detector, run, 'detector.pt',
                      {'other architecture': (cases['other weights'][0], 'weights do not fit the architecture')},
                      marker)
    TALLY['bad-input kinds'] += len(cases) + 1

# ------------------------------------------------------------------------------------------- reproducibility, memory

def test_phantom_is_deterministic(tmp_path):
    "The same seed gives the same release byte for byte, whatever the number of workers; another seed another."
    def phantom(out, *args):
        r = run_cli('spinexr_phantom', out, '--n_studies', 12, '--size', 256, *args, timeout=300)
        assert r.returncode == 0, r.stderr
        return {p.relative_to(out).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(out.rglob('*')) if p.is_file() and p.name != 'phantom.json'}
    a, b = phantom(tmp_path/'a', '--seed', '1'), phantom(tmp_path/'b', '--seed', '1', '--workers', '1')
    c = phantom(tmp_path/'c', '--seed', '2')
    assert a == b and len(a) > 12
    assert a['annotations/train.csv'] != c['annotations/train.csv']

def test_split_is_deterministic(big_release, prep_runs):
    imgs = image_table(load_release(big_release))
    a, b, c = (split_train_val(imgs, 0.15, seed=s) for s in (3, 3, 4))
    pd.testing.assert_frame_equal(a, b)
    assert not a.split.equals(c.split) and set(a.split) == {'train', 'val', 'test'}
    labels = pd.read_csv(prep_runs[200]['out']/'labels.csv', dtype={'image_id': str})  # spinexr_prep's split: seed 42
    sub = image_table(load_release(prep_runs[200]['release']))
    expected = split_train_val(sub, 0.15, seed=42).set_index('image_id').split
    assert (labels.set_index('image_id').split == expected.loc[labels.image_id]).all()

def test_prep_peak_rss_does_not_grow_with_the_number_of_images(prep_runs):
    r50, r200 = prep_runs[50]['rss_kb'] / 1024, prep_runs[200]['rss_kb'] / 1024
    RSS_MIB.update({50: r50, 200: r200})
    print(f'spinexr_prep peak RSS: {r50:.1f} MiB for 50 images, {r200:.1f} MiB for 200 images ({r200 / r50:.3f}x)')
    assert r200 < 1.1 * r50 + 8                                            # MiB: flat, not proportional to the images

# ------------------------------------------------------------------------------------------------ model bundles

@pytest.fixture(scope='module')
def tiny_model(prepared):
    from spinexr.bundle import tiny_bundle
    return tiny_bundle(prepared(n_studies=100, size=512, prep_size=256))

def relisted(bundle: Path):
    "Re-write bundle.json's list of files as an attacker who can write the whole bundle would."
    from spinexr.bundle import Bundle
    Bundle(bundle).write_record(load_json(bundle/'bundle.json'))

def test_a_bundle_runs_no_code_and_every_file_is_checked(tiny_model, release, tmp_path):
    """A detector.json carrying a Python expression where ultralytics' builder would `eval` it: refused by its SHA-256
    as it stands, and refused by the architecture check (the expression never runs) when the list is re-written too.
    Any changed, missing or added file stops spinexr_predict, naming the file, with no traceback."""
    bundle, marker = tmp_path/'model', tmp_path/'expression_ran'
    shutil.copytree(tiny_model, bundle)
    dicom = sorted((release/'test_images').glob('*.dicom'))[0]
    predict = lambda: run_cli('spinexr_predict', bundle, dicom, '--out', tmp_path/'p', timeout=300)
    spec_file = bundle/'detector'/'detector.json'
    good = spec_file.read_text()
    spec = json.loads(good)
    spec['yaml']['activation'] = f"__import__('pathlib').Path({str(marker)!r}).touch() or __import__('torch').nn.SiLU()"
    spec_file.write_text(json.dumps(spec))
    r = predict()
    assert r.returncode == 1 and 'detector/detector.json changed after the bundle was made' in r.stderr, r.stderr
    relisted(bundle)
    r = predict()
    assert r.returncode == 1 and 'the architecture recorded is not yolo11n.yaml' in r.stderr, r.stderr
    spec['yaml']['activation'] = None; spec['yaml']['yaml_file'] = '../../../tmp/evil.yaml'
    spec_file.write_text(json.dumps(spec)); relisted(bundle)
    r = predict()
    assert r.returncode == 1 and "architecture '../../../tmp/evil.yaml' is not one spinexr builds" in r.stderr
    assert not marker.exists() and 'Traceback' not in r.stderr
    spec_file.write_text(good); relisted(bundle)
    smaller = lambda f: f.write_text(f.read_text().replace('"size": 64', '"size": 63'))
    cases = {'classifiers/resnet50/config.json': ('changed after the bundle was made', smaller),
             'detector/config.json': ('is missing', lambda f: f.unlink()),
             'classifiers/extra.pt': ('is not part of the bundle', lambda f: f.write_bytes(b'x'))}
    for rel, (message, damage) in cases.items():
        keep = tmp_path/'keep'
        shutil.copytree(bundle, keep)
        damage(bundle/rel)
        r = predict()
        assert r.returncode == 1 and f'{rel} {message}' in r.stderr and 'Traceback' not in r.stderr, r.stderr
        shutil.rmtree(bundle); keep.rename(bundle)
    assert predict().returncode == 0                     # the bundle, put back, is accepted
    TALLY['bad-input kinds'] += 3 + len(cases); TALLY['faults injected'] += 3 + len(cases)

# ------------------------------------------------------- decoding in worker processes, and the device asked for

def test_decoding_workers_write_what_one_process_writes(tiny_model, release, tmp_path):
    "spinexr_predict --workers 2 writes the records and failures --workers 1 writes, in the same order."
    dicoms = sorted((release/'test_images').glob('*.dicom'))[:5]
    bad = tmp_path/'empty.dicom'; bad.write_bytes(b'')
    out = {}
    for w in (1, 2):
        r = run_cli('spinexr_predict', tiny_model, dicoms[0], bad, *dicoms[1:], '--out', tmp_path/f'w{w}',
                    '--workers', w, '--batch', 2, '--device', 'cpu', '--no_overlays', timeout=300)
        assert r.returncode == 1 and 'empty.dicom' in r.stderr, r.stderr        # the empty file fails alone
        assert f"(torch on cpu, {w} decoding process{'es' if w > 1 else ''})" in r.stdout, r.stdout
        out[w] = load_json(tmp_path/f'w{w}'/'predictions.json')
    assert out[1]['images'] == out[2]['images'] and len(out[1]['images']) >= 3
    assert out[1]['failures'] == out[2]['failures']
    assert out[1]['device'] == 'cpu'
    TALLY['bad-input kinds'] += 1

def test_a_decoder_that_kills_its_worker_fails_only_its_input(release, monkeypatch):
    "A decode that ends its worker process is that input's failure; the pool is made again and the others answered."
    import spinexr.inference as inference
    paths = sorted((release/'test_images').glob('*.dicom'))[:4]
    real = inference.read_input
    def fatal(path, *args, **kwargs):                         # a codec that crashes on one file
        if Path(path) == paths[1]: os._exit(9)
        return real(path, *args, **kwargs)
    monkeypatch.setattr(inference, 'read_input', fatal)       # the workers are forked: they see it too
    pool = inference.DecodePool(2)
    try: got = pool.map(paths, 128)
    finally: pool.close()
    assert got[1] == (None, inference.CRASHED)
    for p, (read, why) in zip(paths[::2] + paths[3:], [got[0], got[2], got[3]]):
        assert why is None and np.array_equal(read[0], real(p, 128)[0])
    TALLY['faults injected'] += 1

def test_a_gpu_asked_for_and_missing_stops_before_the_models_load(tiny_model, release, tmp_path):
    "--device cuda on a machine whose torch sees no GPU: exit 1 in seconds, naming --device, nothing written."
    from spinexr.runtime import gpu_count
    if gpu_count(): pytest.skip('this machine has a GPU')
    dicom = sorted((release/'test_images').glob('*.dicom'))[0]
    r = run_cli('spinexr_predict', tiny_model, dicom, '--out', tmp_path/'p', '--device', 'cuda', timeout=120)
    assert r.returncode == 1 and '--device cuda: torch sees no GPU here' in r.stderr and 'Traceback' not in r.stderr
    assert not (tmp_path/'p'/'predictions.json').exists()
    r = run_cli('spinexr_serve', tiny_model, '--device', 'cuda:1', '--port', 0, timeout=120)
    assert r.returncode == 1 and '--device cuda:1' in r.stderr, r.stderr
    TALLY['bad-input kinds'] += 2

# ----------------------------------------------------------------------------------------- the classifiers' cache

_SLOW_BUILD = ("import sys, time; import spinexr.cache as c; c.CHUNK = 4; square = c.square_image; "
               "c.square_image = lambda *a: (time.sleep(0.05), square(*a))[1]; "
               "c.ClsCache(sys.argv[1], 32).build([f'i{k}' for k in range(40)], workers=1)")

def test_a_killed_cache_build_resumes_where_it_stopped(tmp_path, monkeypatch):
    psutil = pytest.importorskip('psutil')
    import cv2
    import spinexr.cache as cache_mod
    from spinexr.cache import ClsCache, _chunk_jobs, square_image
    tree, rng, ids = tmp_path/'tree', np.random.default_rng(0), [f'i{k}' for k in range(40)]
    (tree/'images').mkdir(parents=True)
    for i in ids:
        cv2.imwrite(str(tree/'images'/f'{i}.png'), rng.integers(0, 256, tuple(rng.integers(20, 60, 2)), np.uint8))
    cache = ClsCache(tree, 32)
    def done(): return len(list((cache.building/'done').glob('*.json'))) if (cache.building/'done').is_dir() else 0
    k = kill_when([sys.executable, '-c', _SLOW_BUILD, tree], lambda: done() >= 3, 0.0, psutil)
    left = done()
    assert k['killed'] and 3 <= left < 10 and not cache.dir.exists(), (k, left)   # no half cache under its final name
    monkeypatch.setattr(cache_mod, 'CHUNK', 4)
    assert len(_chunk_jobs(cache, ids)) == 10 - left                                # the next build does only the rest
    cache.build(ids, workers=2)
    images, idx = cache.open()
    assert idx['ids'] == ids and not cache.building.exists()
    assert all((images[n] == square_image(tree/'images'/f'{i}.png', 32)).all() for n, i in enumerate(ids))
    TALLY['faults injected'] += 1
