"""Are two output trees (two `spinexr_demo` folders, two `spinexr_prep` trees) the same? For checking that a change
that should not change behaviour (a restructuring) did not, by running the same command before and after it:

    python bench/compare_runs.py DIR_BEFORE DIR_AFTER [FILE ...]

Every file is compared by SHA-256. A file that differs is compared again without what differs between any two runs
of the same code: in JSON, the keys that hold times, memory peaks, dates and mtimes; in `history.csv`, the time
column; in `report.html`, whitespace, the date, the table of step times, the seconds per image and the bundle's
SHA-256 (bundle.json records when it was made); in a DICOM file, its dates and times (DA, TM, DT elements: when it
was written). Ultralytics' label caches (`*.cache`, pickles with file times) are listed apart.
The FILEs named are printed with both SHA-256s. Exit 0 if nothing else differs."""
import hashlib, json, re, sys
from pathlib import Path

VOLATILE = {'seconds', 'total_seconds', 'images_per_s', 'peak_rss_gb', 'peak_gpu_gb', 'png_mtime_ns', 'source_mtime_ns',
            'created', 'date', 'train_seconds', 'load_seconds', 'seconds_per_image', 'stage_seconds'}

def sha(p: Path) -> str: return hashlib.sha256(p.read_bytes()).hexdigest()

def files(root: Path) -> dict:
    return {p.relative_to(root).as_posix(): p for p in sorted(root.rglob('*')) if p.is_file()}

def _strip(v):
    if isinstance(v, dict): return {k: _strip(x) for k, x in v.items() if k not in VOLATILE}
    if isinstance(v, list): return [_strip(x) for x in v]
    return v

def _report(s: str) -> str:
    s = re.sub(r'<table class="dataframe t steps">.*?</table>', 'STEPS', s, flags=re.S)
    s = re.sub(r'written \d{4}-\d\d-\d\d \d\d:\d\d', 'written DATE', s)
    s = re.sub(r'\d+\.\d+ s per image', 'T s per image', s)
    s = re.sub(r'[0-9a-f]{64}', 'SHA', re.sub(r'>[0-9a-f]{16}&hellip;', '>SHA&hellip;', s))
    return re.sub(r'\s+', '', s)

def same_but_volatile(name: str, a: Path, b: Path) -> bool:
    "Whether two files that differ are the same but for what differs between any two runs."
    if name.endswith('.json'):
        try: return _strip(json.loads(a.read_text())) == _strip(json.loads(b.read_text()))
        except ValueError: return False
    if name.endswith('history.csv'):
        import pandas as pd
        da, db = (pd.read_csv(p) for p in (a, b))
        return da.drop(columns='time', errors='ignore').equals(db.drop(columns='time', errors='ignore'))
    if name.endswith('report.html'): return _report(a.read_text()) == _report(b.read_text())
    if name.endswith('.dcm'): return _dicom(a) == _dicom(b)
    return False

def _dicom(p: Path) -> list:
    "A DICOM file's elements, those in sequences too, but its dates and times."
    import pydicom
    ds = pydicom.dcmread(p)
    return [(e.tag, str(e.value)) for e in ds.iterall() if e.VR not in ('DA', 'TM', 'DT', 'SQ')]

def compare(a: Path, b: Path) -> dict:
    fa, fb = files(a), files(b)
    out = dict(n_files=(len(fa), len(fb)), only_in_one=sorted(set(fa) ^ set(fb)), identical=0, same_but_volatile=0,
               caches=[], different=[])
    for k in sorted(set(fa) & set(fb)):
        if sha(fa[k]) == sha(fb[k]): out['identical'] += 1
        elif same_but_volatile(k, fa[k], fb[k]): out['same_but_volatile'] += 1
        elif k.endswith('.cache'): out['caches'].append(k)
        else: out['different'].append(k)
    return out

if __name__ == '__main__':
    a, b = Path(sys.argv[1]), Path(sys.argv[2])
    r = compare(a, b)
    print(f"{r['n_files'][0]} files vs {r['n_files'][1]}: {r['identical']} byte-identical, {r['same_but_volatile']} "
          f"identical but for times, dates and mtimes, {len(r['caches'])} ultralytics label caches, "
          f"{len(r['different'])} different, {len(r['only_in_one'])} in one tree only")
    for k in r['different'] + r['only_in_one']: print('  differs:', k)
    for k in sys.argv[3:]:
        print(f'  {k}: {sha(a/k)[:16]} {sha(b/k)[:16]}', end='')
        if k.endswith('.json'):     # and of its content without times: the same if the run did the same
            h = [hashlib.sha256(json.dumps(_strip(json.loads((d/k).read_text())), sort_keys=True).encode()).hexdigest()
                 for d in (a, b)]
            print(f'; without times {h[0][:16]} {h[1][:16]}', end='')
        print()
    sys.exit(1 if r['different'] or r['only_in_one'] else 0)
