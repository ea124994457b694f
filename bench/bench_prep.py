"""Benchmark of spinexr_prep's DICOM -> PNG conversion (not a test: run by hand, takes a few minutes).

    .venv/bin/python bench/bench_prep.py CACHE_DIR [--n 40] [--long_side 2600] [--size 1024]

Builds (or reuses) in CACHE_DIR a phantom release at realistic size (long side >= 2500, JPEG 2000 lossless, 12-bit)
and measures, in the same run and on the same files:
  1. images/s of a baseline converter written the way the dataset authors' converter works (single process: full
     decode, pydicom apply_voi_lut at full resolution, min-max, full-size PNG, then read back, resize and write);
  2. images/s of spinexr_prep's conversion (`prep`) with 1 worker (the per-process comparison with 1.) and 2 workers;
  3. peak memory (RSS) of the spinexr_prep command (main process and workers) on 50 and on 200 images.
  4. the floor: the bare reduced-resolution JPEG 2000 decode of each file (its codestream extracted beforehand, then
     Pillow/OpenJPEG at the resolution level spinexr_prep decodes at, nothing else), and spinexr_prep per process as
     a multiple of it, with the stages of the rest (header, decode checks, VOI, alignment, resize, PNG, writing, and
     what is left: process start-up, planning, manifest) at the PNG settings given by --png (level:strategy).
Goals: >= 3x the baseline per process, >= 1.7x from 1 to 2 workers, flat memory, <= 1.3x the floor.
"""
from __future__ import annotations
import argparse, json, os, shutil, subprocess, sys, tempfile, time
from pathlib import Path

import io

import cv2
import numpy as np
import pandas as pd
import pydicom
from pydicom.pixels import apply_voi_lut

import spinexr.prep
from spinexr.core import cpu_count, save_json
from spinexr.dicom import target_shape
from spinexr.prep import prep
from spinexr.phantom import PhantomConfig, make_phantom, plan_phantom


def phantom(cache: Path, n: int, long_side: int) -> list:
    "A phantom release with at least `n` images of long side `long_side`; returns its DICOM paths (sorted)."
    studies = next(k for k in range(2, 10 * n)
                   if len(plan_phantom(PhantomConfig(n_studies=k, seed=0, size=long_side))) >= n)
    cfg = PhantomConfig(n_studies=studies, seed=0, size=long_side, mono1_frac=0.1, syntax='jpeg2000')
    t0 = time.perf_counter()
    s = make_phantom(cache/f'phantom_{long_side}', cfg, workers=cpu_count(), progress=False)
    print(f'phantom: {s["n_images"]} images, long side {long_side} '
          f'({time.perf_counter() - t0:.0f} s to build or reuse)', flush=True)
    return sorted((cache/f'phantom_{long_side}').glob('*_images/*.dicom'))


def folder_of(files: list, n: int, dst: Path) -> Path:
    "A plain folder with `n` DICOMs (symbolic links cycling through `files`, each under its own name)."
    shutil.rmtree(dst, ignore_errors=True); dst.mkdir(parents=True)
    for i in range(n): (dst/f'img{i:04d}.dicom').symlink_to(files[i % len(files)].resolve())
    return dst


def baseline_convert(path: Path, out: Path, size: int):
    "The dataset authors' way: full decode, apply_voi_lut at full size, min-max to 8 bits, full-size PNG, then resize."
    ds = pydicom.dcmread(path)
    data = apply_voi_lut(ds.pixel_array, ds)
    if ds.PhotometricInterpretation == 'MONOCHROME1': data = np.amax(data) - data
    data = data - np.min(data)
    data = data / np.max(data)
    data = (data * 255).astype(np.uint8)
    full = out/f'{path.stem}_full.png'
    cv2.imwrite(str(full), data)
    img = cv2.imread(str(full), cv2.IMREAD_GRAYSCALE)
    h, w = target_shape(*img.shape, size)
    cv2.imwrite(str(out/f'{path.stem}.png'), cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA))


def time_baseline(files: list, out: Path, size: int) -> float:
    cv2.setNumThreads(1)                       # one process, one core, as each spinexr_prep worker
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    for f in files: baseline_convert(f, out, size)
    return len(files) / (time.perf_counter() - t0)


def time_prep(src: Path, out: Path, size: int, workers: int) -> tuple:
    "Wall-clock images/s of a complete prep run (pool start-up included) into an empty folder; and its summary."
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    s = prep(src, out, size=size, workers=workers, progress=False)
    secs = time.perf_counter() - t0
    assert s['n_failed'] == 0 and s['n_converted'] == s['n_images'], s
    return s['n_images'] / secs, s


def peak_memory(src: Path, out: Path, size: int, workers: int) -> dict:
    "Run the spinexr_prep command; sample the RSS of it and its workers every 20 ms; peaks in MiB."
    import psutil
    shutil.rmtree(out, ignore_errors=True)
    cmd = [str(Path(sys.executable).parent/'spinexr_prep'), str(src), str(out), '--size', str(size), '--workers',
           str(workers), '--quiet']
    t0 = time.perf_counter()
    proc = psutil.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    peak_total = peak_main = peak_worker = 0
    while proc.poll() is None:
        try:
            main = proc.memory_info().rss
            kids = [c.memory_info().rss for c in proc.children(recursive=True)]
        except psutil.Error: continue
        peak_main, peak_total = max(peak_main, main), max(peak_total, main + sum(kids))
        peak_worker = max([peak_worker] + kids)
        time.sleep(0.02)
    secs = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stderr.read()
    mib = 1 / 2 ** 20
    return dict(total=peak_total * mib, main=peak_main * mib, worker=peak_worker * mib, seconds=secs)


def codestreams(files: list, size: int) -> list:
    "Each file's JPEG 2000 codestream and the resolution level spinexr_prep decodes it at (the floor's input)."
    from pydicom.encaps import get_frame
    from spinexr.dicom import choose_reduce, j2k_header
    out = []
    for f in files:
        ds = pydicom.dcmread(f)
        cs = get_frame(ds.PixelData, 0, number_of_frames=1)
        hdr = j2k_header(cs)
        out.append((cs[hdr['offset']:], choose_reduce(ds.Rows, ds.Columns, size, hdr['levels'])))
    return out


def floor_seconds(streams: list) -> float:
    "Seconds per image of the bare reduced-resolution decode (Pillow's OpenJPEG at level r), nothing else."
    from PIL import Image
    t0 = time.perf_counter()
    for cs, r in streams:
        with Image.open(io.BytesIO(cs)) as im:
            im.reduce = r
            im.load()
    return (time.perf_counter() - t0) / len(streams)


def stage_seconds(files: list, size: int, png: str, out: Path) -> dict:
    "Seconds per image of each stage of spinexr_prep's conversion (read_dicom's steps, then convert_one's), in-process."
    from spinexr.dicom import (_header_info, _quiet_uids, align_reduced, decode_stored, open_dicom, resize_to,
                               to_display, to_uint8)
    out.mkdir(parents=True, exist_ok=True)
    t = dict.fromkeys(['read and parse the header', 'decode (checks, Pillow, to int32)', 'VOI (to_display)',
                       'align_reduced', 'resize and clip', 'to 8 bits', 'PNG encode',
                       'write PNG and record'], 0.0)
    ks = list(t)
    for f in files:
        c = [time.perf_counter()]
        with _quiet_uids():
            ds, _ = open_dicom(f); info = _header_info(ds, f); c.append(time.perf_counter())
            stored, dec = decode_stored(ds, size, f); c.append(time.perf_counter())
            img, voi, _ = to_display(stored, ds, info['photometric']); c.append(time.perf_counter())
        H, W = info['orig_height'], info['orig_width']
        img = align_reduced(img, dec['reduce'], H, W); c.append(time.perf_counter())
        img = np.clip(resize_to(img, target_shape(H, W, size)), 0, 1); c.append(time.perf_counter())
        img8 = to_uint8(img); c.append(time.perf_counter())
        ok, data = cv2.imencode('.png', img8, spinexr.prep.png_params()); c.append(time.perf_counter())
        (out/f'{f.stem}.png').write_bytes(data.tobytes()); save_json(dict(info=str(info)), out/f'{f.stem}.json')
        c.append(time.perf_counter())
        for k, a, b in zip(ks, c, c[1:]): t[k] += b - a
    return {k: v / len(files) for k, v in t.items()}


def png_bytes(folder: Path) -> float:
    return float(np.mean([p.stat().st_size for p in folder.glob('*.png')]))


def floor_table(files: list, src: Path, work: Path, size: int, pngs: list):
    "spinexr_prep per process against the floor, at each PNG setting ('level:strategy'); the stages of each."
    floor = floor_seconds(codestreams(files, size))
    default = spinexr.prep.PNG_COMPRESSION, spinexr.prep.PNG_STRATEGY
    rows = []
    try:
        for k, png in enumerate(pngs):
            level, strategy = png.split(':')
            spinexr.prep.PNG_COMPRESSION, spinexr.prep.PNG_STRATEGY = int(level), strategy   # forked workers see it
            ips, _ = time_prep(src, work/f'floor{k}', size, 1)
            stages = stage_seconds(files, size, png, work/f'stages{k}')
            rows.append((png, 1 / ips, stages, png_bytes(work/f'floor{k}'/'images')))
    finally: spinexr.prep.PNG_COMPRESSION, spinexr.prep.PNG_STRATEGY = default
    print(f'\nthe floor: bare reduced-resolution JPEG 2000 decode {floor:.4f} s/image; spinexr_prep\'s PNG setting: '
          f'{default[0]}:{default[1]}')
    print('| PNG level:strategy | spinexr_prep, 1 worker, s/image | x floor | PNG KiB | ' + ' | '.join(rows[0][2]) +
          ' | the rest (start-up, planning, manifest) |')
    print('|' + ' --- |' * (5 + len(rows[0][2])))
    for png, per, st, nbytes in rows:
        rest = per - sum(st.values())
        print(f'| {png} | {per:.4f} | {per / floor:.2f}x | {nbytes / 1024:.0f} | ' +
              ' | '.join(f'{v:.4f}' for v in st.values()) + f' | {rest:.4f} |')
    return dict(floor=floor, png={p: dict(s_per_image=s, stages=st, png_bytes=b) for p, s, st, b in rows})


def png_agreement(a: Path, b: Path) -> float:
    "Mean absolute difference (8-bit levels) between the PNGs of the same images in two folders."
    diffs = []
    for p in sorted(a.glob('*.png')):
        q = b/p.name
        if q.exists(): diffs.append(np.abs(cv2.imread(str(p), 0).astype(int) - cv2.imread(str(q), 0)).mean())
    return float(np.mean(diffs))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('cache', help='folder for the phantom and the outputs (reused between runs)')
    ap.add_argument('--n', type=int, default=40, help='images for the speed measurements')
    ap.add_argument('--long_side', type=int, default=2600, help='long side of the phantom radiographs')
    ap.add_argument('--size', type=int, default=1024, help='target long side')
    ap.add_argument('--mem', default='50,200', help="image counts for the memory measurement ('' for none)")
    ap.add_argument('--png', default='3:default,1:default,1:rle',
                    help="PNG settings (zlib level:strategy) for the floor table; 3:default was spinexr_prep's before")
    a = ap.parse_args()
    cache = Path(a.cache); cache.mkdir(parents=True, exist_ok=True)
    print(f'machine: {cpu_count()} cores, load average at start {os.getloadavg()[0]:.2f}', flush=True)
    files = phantom(cache, a.n, a.long_side)
    shapes = [pydicom.dcmread(f, stop_before_pixels=True) for f in files[:a.n]]
    print(f'images: {a.n}, {np.mean([d.Rows for d in shapes]):.0f} x {np.mean([d.Columns for d in shapes]):.0f} px on '
          f'average, '
          f'{shapes[0].BitsStored}-bit, {shapes[0].file_meta.TransferSyntaxUID.name}; target long side {a.size}',
          flush=True)
    src = folder_of(files, a.n, cache/f'set{a.n}')
    work = Path(tempfile.mkdtemp(dir=cache, prefix='run_'))
    try:
        base = time_baseline(sorted(src.glob('*.dicom')), work/'baseline', a.size)
        print(f'baseline (full decode, apply_voi_lut, min-max, full PNG, resize): {base:.2f} images/s', flush=True)
        w1, _ = time_prep(src, work/'prep1', a.size, 1)
        decoders = pd.read_csv(work/'prep1'/'manifest.csv').decoder.value_counts().to_dict()
        print(f'spinexr_prep, 1 worker: {w1:.2f} images/s (decoders used: {decoders})', flush=True)
        w2, _ = time_prep(src, work/'prep2', a.size, 2)
        print(f'spinexr_prep, 2 workers: {w2:.2f} images/s', flush=True)
        agree = png_agreement(work/'prep1'/'images', work/'baseline')
        floor = floor_table(files[:a.n], src, work, a.size, a.png.split(','))
        mem = {}
        for n in (int(x) for x in a.mem.split(',') if x):
            mem[n] = peak_memory(folder_of(files, n, cache/f'mem{n}'), work/f'mem{n}', a.size, 2)
            print(f'memory, {n} images, 2 workers: peak {mem[n]["total"]:.0f} MiB (main {mem[n]["main"]:.0f}, '
                  f'largest worker {mem[n]["worker"]:.0f}) in {mem[n]["seconds"]:.1f} s', flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    ns = sorted(mem)
    rows = [('baseline, 1 process', f'{base:.2f} images/s', ''),
            ('spinexr_prep, 1 worker', f'{w1:.2f} images/s', f'{w1 / base:.2f}x baseline (goal >= 3x)'),
            ('spinexr_prep, 2 workers', f'{w2:.2f} images/s', f'{w2 / w1:.2f}x 1 worker (goal >= 1.7x)')]
    rows += [(f'peak RSS, {n} images', f'{mem[n]["total"]:.0f} MiB',
              f'{mem[n]["total"] / mem[ns[0]]["total"]:.2f}x {ns[0]} images (goal: flat)')
             for n in ns]
    rows += [('the floor (bare decode)', f'{1 / floor["floor"]:.2f} images/s',
              f'spinexr_prep, 1 worker: {1 / (floor["floor"] * w1):.2f}x the floor\'s time (goal <= 1.3x)')]
    print(f'\n{"measurement":28s} {"value":>16s}   ratio')
    for r in rows: print(f'{r[0]:28s} {r[1]:>16s}   {r[2]}')
    print(f'PNG agreement with the baseline: mean |difference| {agree:.2f} grey levels; load average at end '
          f'{os.getloadavg()[0]:.2f}')
    result = dict(baseline=base, prep_1=w1, prep_2=w2, speedup_per_process=w1 / base, scaling_1_to_2=w2 / w1,
                  memory={str(n): v for n, v in mem.items()}, png_agreement=agree, floor=floor, n=a.n,
                  long_side=a.long_side, size=a.size)
    (cache/'bench_prep.json').write_text(json.dumps(result, indent=2))


if __name__ == '__main__':
    main()
