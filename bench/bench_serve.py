"""spinexr_serve under load: requests per second and p50/p95 latency at several concurrencies, against the same
images through spinexr_predict in the same run (its images per second with the bundle loaded, batch 8), as ratios.

    python bench/bench_serve.py MODEL_DIR DICOM_DIR [--n 48] [--concurrency 1 4 16] [--abuse]

MODEL_DIR is a bundle (spinexr_demo writes DIR/model); DICOM_DIR holds DICOMs the models never saw (e.g.
spinexr_phantom /tmp/unseen --n_studies 20 --seed 77 --size 1024). The server is started as a command on a free
loopback port, exactly as a user starts it; every request asks for the overlay, as spinexr_predict writes one.
With --abuse, each concurrency is run again while 32 clients dribble their headers a byte a second (reconnecting
when the server cuts them, after --header_s) and another sends a PNG bomb (a 20000 x 20000 header) every 0.1 s:
what the guards cost the good clients.
"""
import argparse, asyncio, os, socket, struct, subprocess, sys, tempfile, time, zlib
from collections import Counter
from pathlib import Path

import httpx
import numpy as np

from spinexr.inference import predict_files
from spinexr.inputs import find_inputs

def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]

def start_server(model_dir, port):
    "`spinexr_serve MODEL_DIR --port PORT`, once it answers /health; (process, seconds to start, first request's s)."
    cmd = [str(Path(sys.executable).parent/'spinexr_serve'), str(model_dir), '--port', str(port)]
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while True:
        if p.poll() is not None: sys.exit(f'spinexr_serve exited {p.returncode}')
        try:
            if httpx.get(f'http://127.0.0.1:{port}/health', timeout=2).status_code == 200: break
        except httpx.TransportError: time.sleep(0.2)
    return p, time.perf_counter() - t0

async def load(url, uploads, concurrency) -> tuple:
    "Send every upload with at most `concurrency` in flight: (wall seconds, each request's latency)."
    gate, lat = asyncio.Semaphore(concurrency), []
    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=concurrency)) as c:
        async def one(name, data):
            async with gate:
                t = time.perf_counter()
                r = await c.post(f'{url}/predict', files=dict(file=(name, data)))
                lat.append(time.perf_counter() - t)
                if r.status_code != 200: sys.exit(f'{name}: {r.status_code} {r.text[:200]}')
        t0 = time.perf_counter()
        await asyncio.gather(*(one(n, d) for n, d in uploads))
        return time.perf_counter() - t0, np.array(lat)

def png_bomb(side: int = 20000) -> bytes:
    "A PNG whose header declares side x side pixels, over a few bytes of data: refused from its header (413)."
    chunk = lambda k, d: struct.pack('>I', len(d)) + k + d + struct.pack('>I', zlib.crc32(k + d))
    return (b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', struct.pack('>IIBBBBB', side, side, 8, 0, 0, 0, 0))
            + chunk(b'IDAT', zlib.compress(bytes(side + 1))) + chunk(b'IEND', b''))

async def abuse(url, stop: asyncio.Event, slow: int = 32) -> Counter:
    "Until `stop`: `slow` connections dribbling their headers (reconnecting when cut) and a PNG bomb every 0.1 s."
    port, seen, bomb = int(url.rsplit(':', 1)[1]), Counter(), png_bomb()
    async def slowloris():
        while not stop.is_set():
            r, w = await asyncio.open_connection('127.0.0.1', port)
            try:
                for b in f'POST /predict HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n'.encode():
                    w.write(bytes([b])); await w.drain()
                    try: await asyncio.wait_for(r.read(1), 1); break          # answered (408) or closed: cut
                    except asyncio.TimeoutError: pass
                    if stop.is_set(): break
            except OSError: pass
            finally: w.close(); seen['slow connections'] += 1
    async def bombs():
        async with httpx.AsyncClient(timeout=60) as c:
            while not stop.is_set():
                r = await c.post(f'{url}/predict', files=dict(file=('bomb.png', bomb)))
                seen[f'bombs answered {r.status_code}'] += 1
                await asyncio.sleep(0.1)
    tasks = [asyncio.ensure_future(slowloris()) for _ in range(slow)] + [asyncio.ensure_future(bombs())]
    await stop.wait()
    await asyncio.gather(*tasks, return_exceptions=True)
    return seen

async def load_under_abuse(url, uploads, concurrency) -> tuple:
    "`load` while `abuse` runs: (wall seconds, latencies, what the abusers saw)."
    stop = asyncio.Event()
    bg = asyncio.ensure_future(abuse(url, stop))
    await asyncio.sleep(1)
    wall, lat = await load(url, uploads, concurrency)
    stop.set()
    return wall, lat, await bg

if __name__ == '__main__':
    ap = argparse.ArgumentParser()
    ap.add_argument('model_dir'); ap.add_argument('dicoms')
    ap.add_argument('--n', type=int, default=48)
    ap.add_argument('--concurrency', type=int, nargs='+', default=[1, 4, 16])
    ap.add_argument('--abuse', action='store_true', help='run each concurrency again under slowloris and bombs')
    a = ap.parse_args()
    paths = find_inputs([a.dicoms])[:a.n]
    uploads = [(p.name, p.read_bytes()) for p in paths]
    with tempfile.TemporaryDirectory() as out:
        predict_files(a.model_dir, paths[:2], out)                          # warm-up: imports, first-call costs
        s = predict_files(a.model_dir, paths, out)                          # batch 8, overlays written
    base = 1 / s['seconds_per_image']
    port = free_port()
    p, started = start_server(a.model_dir, port)
    url = f'http://127.0.0.1:{port}'
    try:
        t = time.perf_counter(); asyncio.run(load(url, uploads[:1], 1)); first = time.perf_counter() - t
        rows = []
        for c in a.concurrency:
            asyncio.run(load(url, uploads[:c], c))                          # the client's own warm-up
            wall, lat = asyncio.run(load(url, uploads, c))
            rows.append((f'spinexr_serve, concurrency {c}', len(uploads) / wall, *np.percentile(lat, [50, 95])))
            if a.abuse:
                wall, lat, seen = asyncio.run(load_under_abuse(url, uploads, c))
                rows.append(('  the same under abuse', len(uploads) / wall, *np.percentile(lat, [50, 95])))
                print(f'concurrency {c} under abuse: {dict(seen)}')
    finally:
        p.terminate(); p.wait(30)
    print(f'{len(paths)} DICOMs, {os.cpu_count()} CPUs; server up in {started:.1f} s (bundle loaded, warmed up); '
          f'its first request {first:.2f} s')
    print(f'{"variant":<44} {"img/s":>6} {"p50 s":>7} {"p95 s":>7} {"vs predict":>11}')
    print(f'{"spinexr_predict, one run, batch 8 (baseline)":<44} {base:>6.2f} {"":>7} {"":>7} {1:>10.2f}x')
    for name, rps, p50, p95 in rows: print(f'{name:<44} {rps:>6.2f} {p50:>7.3f} {p95:>7.3f} {rps / base:>10.2f}x')
