"""`spinexr_serve` attacked, on loopback: a few hundred mutated DICOM, PNG and JPEG uploads (no 5xx, a healthy
server after), 50 clients at once with bombs and bad files among good ones, the peak memory of the server while it
refuses a decompression bomb of each kind, slow clients (headers and bodies), forms with too many parts, a full
queue and too many clients, clients that leave, DNS rebinding, and the upload folders a killed server leaves.
Every loop is bounded; every figure is printed (`pytest -s`)."""
import asyncio, io, json, os, random, re, select, signal, socket, struct, subprocess, time, zlib
from collections import Counter
from pathlib import Path

import cv2
import httpx
import numpy as np
import pydicom
import pytest
from pydicom.encaps import encapsulate
from pydicom.uid import (DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian,
                         JPEGLSLossless, RLELossless)
from test_serve import as_png, bundle, free_port, serving, unseen, uploads_left  # noqa: F401 (fixtures)

from spinexr.dicom import read_dicom, to_uint8

try: from test_reliability import TALLY          # the reliability suite's totals, printed by conftest
except ImportError: TALLY = Counter()

PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'

@pytest.fixture(scope='module')
def server(bundle, tmp_path_factory):
    """The server of `bundle` with --max_mb 16 (room for an RLE bomb), --header_s 2 and --receive_s 4, its
    temporary files in a folder of its own: (url, process, that folder)."""
    tmp = tmp_path_factory.mktemp('abuse_tmp')
    with serving(bundle, tmp, '--max_mb', 16, '--header_s', 2, '--receive_s', 4) as (url, p): yield url, p, tmp

@pytest.fixture(scope='module')
def files(unseen, tmp_path_factory) -> dict:
    "Good uploads: DICOMs as the release stores them (JPEG 2000), one re-encoded natively, a PNG and a JPEG."
    tmp = tmp_path_factory.mktemp('abuse_files')
    ds = pydicom.dcmread(unseen[0]); ds.decompress(); ds.save_as(tmp/'native.dcm')
    grey = to_uint8(read_dicom(unseen[1], 512)[0])
    cv2.imwrite(str(tmp/'exported.jpg'), grey)
    return dict(j2k=unseen[0].read_bytes(), native=(tmp/'native.dcm').read_bytes(),
                png=as_png(unseen[2], tmp/'exported.png').read_bytes(), jpeg=(tmp/'exported.jpg').read_bytes(),
                more=[(f.name, f.read_bytes()) for f in unseen[3:6]])

def pid_status(pid: int, key: str) -> int:
    "A field of /proc/PID/status in KiB (VmRSS, VmHWM)."
    return int(re.search(rf'^{key}:\s+(\d+) kB', Path(f'/proc/{pid}/status').read_text(), re.M)[1])

def reset_peak(pid: int):
    "Reset the process's peak RSS (VmHWM) to its current RSS (Linux: 5 to /proc/PID/clear_refs)."
    Path(f'/proc/{pid}/clear_refs').write_text('5')

def health(url) -> dict: return httpx.get(f'{url}/health', timeout=30).json()

def settle(url, timeout: float = 60) -> dict:
    "/health once nothing waits for the models."
    t0 = time.time()
    while (h := health(url))['queue']['waiting'] and time.time() - t0 < timeout: time.sleep(0.2)
    return h

# --- bad files made here ---------------------------------------------------------------------------------------

def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack('>I', len(data)) + kind + data + struct.pack('>I', zlib.crc32(kind + data))

def png_chunks(data: bytes) -> list:
    "A PNG's chunks as [kind, payload] (CRCs dropped: `png_of` recomputes them)."
    out, k = [], 8
    while k + 8 <= len(data):
        n, kind = struct.unpack('>I4s', data[k:k + 8])
        out.append([kind, data[k + 8:k + 8 + n]]); k += 12 + n
    return out

def png_of(chunks) -> bytes: return PNG_SIGNATURE + b''.join(png_chunk(k, d) for k, d in chunks)

def ihdr(width, height, depth=8, colour=0, compression=0, filtering=0, interlace=0) -> bytes:
    return struct.pack('>IIBBBBB', width, height, depth, colour, compression, filtering, interlace)

def png_edits(png: bytes) -> dict:
    "Structural changes to a good grey PNG: header fields, CRCs, chunk lengths, missing and unknown chunks."
    ch = png_chunks(png)
    w, h = struct.unpack('>II', ch[0][1][:8])
    with_ihdr = lambda *a, **kw: png_of([[b'IHDR', ihdr(*a, **kw)], *ch[1:]])
    idat = [i for i, (k, _) in enumerate(ch) if k == b'IDAT']
    return {'IHDR 30000 x 30000': with_ihdr(30000, 30000), 'IHDR width 0': with_ihdr(0, h),
            'IHDR 1 x 1': with_ihdr(1, 1), 'IHDR width + 1': with_ihdr(w + 1, h),
            'IHDR bit depth 3': with_ihdr(w, h, depth=3), 'IHDR colour type 5': with_ihdr(w, h, colour=5),
            'IHDR palette without PLTE': with_ihdr(w, h, colour=3),
            'IHDR RGB over grey data': with_ihdr(w, h, colour=2),
            'IHDR 16-bit over 8-bit data': with_ihdr(w, h, depth=16), 'IHDR interlace 7': with_ihdr(w, h, interlace=7),
            'IHDR compression 1': with_ihdr(w, h, compression=1),
            'CRC broken': png[:29] + bytes([png[29] ^ 0xFF]) + png[30:],
            'chunk length 2 GB': png[:33] + struct.pack('>I', 0x7FFFFFFF) + png[37:],
            'IDAT emptied': png_of([c if i not in idat else [b'IDAT', b''] for i, c in enumerate(ch)]),
            'IDAT not zlib': png_of([c if i not in idat else [b'IDAT', os.urandom(400)] for i, c in enumerate(ch)]),
            'no IEND': png_of(ch[:-1]), 'unknown critical chunk': png_of([ch[0], [b'ABCD', b'x' * 10], *ch[1:]])}

def dicom_bytes(ds) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()

def dicom_edits() -> dict:
    "Header changes a broken or hostile DICOM may carry: name -> a function changing a data set in place."
    def put(**kw): return lambda ds: [setattr(ds, k, v) for k, v in kw.items()]
    def drop(*names): return lambda ds: [delattr(ds, n) for n in names if n in ds]
    def syntax(uid): return lambda ds: setattr(ds.file_meta, 'TransferSyntaxUID', uid)
    edits = {'Rows and Columns 65535': put(Rows=65535, Columns=65535), 'Rows 0': put(Rows=0),
             'Columns 1': put(Columns=1), 'Rows 3': put(Rows=3),
             'BitsAllocated 7': put(BitsAllocated=7), 'BitsAllocated 13': put(BitsAllocated=13),
             'BitsAllocated 0': put(BitsAllocated=0), 'BitsAllocated 64': put(BitsAllocated=64),
             'BitsStored 40': put(BitsStored=40), 'BitsStored 0': put(BitsStored=0), 'HighBit 63': put(HighBit=63),
             'PixelRepresentation 7': put(PixelRepresentation=7), 'PixelRepresentation 1': put(PixelRepresentation=1),
             'SamplesPerPixel 3': put(SamplesPerPixel=3), 'SamplesPerPixel 0': put(SamplesPerPixel=0),
             'NumberOfFrames 1000': put(NumberOfFrames=1000), 'NumberOfFrames 0': put(NumberOfFrames=0),
             'NumberOfFrames -3': put(NumberOfFrames='-3'),
             'no UIDs': drop('StudyInstanceUID', 'SeriesInstanceUID', 'SOPInstanceUID'),
             'no PixelData': drop('PixelData'), 'PixelData empty': put(PixelData=b''),
             'PixelData halved': lambda ds: setattr(ds, 'PixelData', ds.PixelData[:len(ds.PixelData) // 2]),
             'RescaleSlope inf': put(RescaleSlope='inf'), 'RescaleSlope 0': put(RescaleSlope='0'),
             'RescaleIntercept nan': put(RescaleIntercept='nan'),
             'WindowCenter nan, WindowWidth 0': put(WindowCenter='nan', WindowWidth='0'),
             'WindowWidth -5': put(WindowCenter='100', WindowWidth='-5'),
             'WindowCenter inf': put(WindowCenter='inf', WindowWidth='100'),
             'VOILUTFunction SIGMOID, WindowWidth 0': put(VOILUTFunction='SIGMOID', WindowCenter='1', WindowWidth='0'),
             'Modality MR, BodyPartExamined CHEST': put(Modality='MR', BodyPartExamined='CHEST'),
             'transfer syntax RLE': syntax(RLELossless), 'transfer syntax JPEG-LS': syntax(JPEGLSLossless),
             'transfer syntax deflated': syntax(DeflatedExplicitVRLittleEndian),
             'transfer syntax implicit VR': syntax(ImplicitVRLittleEndian), 'transfer syntax 1.2.3': syntax('1.2.3'),
             'transfer syntax empty': syntax('')}
    for v in ('nan', 'inf', '-1', '0', 'abc', '1e308'):
        edits[f'PixelSpacing {v}'] = put(PixelSpacing=[v, v])
    edits['PixelSpacing one value'] = put(PixelSpacing='0.1')
    edits['ImagerPixelSpacing nan'] = put(ImagerPixelSpacing=['nan', 'nan'])
    for pi in ('RGB', 'PALETTE COLOR', 'YBR_FULL_422', 'NONSENSE', ''):
        edits[f'PhotometricInterpretation {pi!r}'] = put(PhotometricInterpretation=pi)
    return edits

def edited(raw: bytes, edit) -> bytes | None:
    "A DICOM's bytes with `edit` applied to its data set; None if pydicom cannot write the result."
    from pydicom import config
    mode = config.settings.writing_validation_mode
    config.settings.writing_validation_mode = config.IGNORE
    try:
        ds = pydicom.dcmread(io.BytesIO(raw))
        edit(ds)
        return dicom_bytes(ds)
    except Exception: return None
    finally: config.settings.writing_validation_mode = mode

def flipped(data: bytes, rng, n: int, within: int | None = None) -> bytes:
    "`data` with `n` random bits flipped (in its first `within` bytes, if given: a DICOM's header)."
    b = bytearray(data)
    for _ in range(n):
        k = rng.randrange(min(within or len(b), len(b)))
        b[k] ^= 1 << rng.randrange(8)
    return bytes(b)

def mutants(files: dict, seed: int = 29) -> list:
    "[(kind, file name, bytes, ?dicom=true)]: a few hundred mutated DICOM, PNG and JPEG uploads."
    rng, out = random.Random(seed), []
    for base in ('native', 'j2k'):
        for name, edit in dicom_edits().items():
            if (data := edited(files[base], edit)) is not None:
                out.append((f'DICOM header: {name}', f'{base}.dcm', data, name == 'no UIDs' or rng.random() < 0.5))
        for k in range(40):
            out.append(('DICOM bit flips', f'{base}.dcm',
                        flipped(files[base], rng, rng.choice([1, 4, 16, 64]), 2048 if k % 2 else None), k % 3 == 0))
        for k in range(20):
            out.append(('DICOM truncated', f'{base}.dcm', files[base][:rng.randrange(1, len(files[base]))], False))
    out += [(f'PNG: {name}', 'image.png', data, False) for name, data in png_edits(files['png']).items()]
    for k in range(40):
        out.append(('PNG bit flips', 'image.png', flipped(files['png'], rng, rng.choice([1, 4, 16]), 200 if k % 2
                                                          else None), False))
    out += [('PNG truncated', 'image.png', files['png'][:rng.randrange(1, len(files['png']))], False)
            for _ in range(20)]
    out += [('JPEG bit flips', 'image.jpg', flipped(files['jpeg'], rng, rng.choice([1, 8]), 600), False)
            for _ in range(20)]
    out += [('JPEG truncated', 'image.jpg', files['jpeg'][:rng.randrange(1, len(files['jpeg']))], False)
            for _ in range(10)]
    return out

# --- bombs: small files that declare (or inflate to) huge images -------------------------------------------------

def png_bomb(side: int = 20000) -> bytes:
    "A grey PNG of side x side zeros: ~0.4 MB that decodes to side² bytes (400 MB)."
    c, rows = zlib.compressobj(9), bytes(side + 1) * 500                 # each row: filter byte 0, then zeros
    idat = b''.join(c.compress(rows) for _ in range(side // 500)) + c.flush()
    return png_of([[b'IHDR', ihdr(side, side)], [b'IDAT', idat], [b'IEND', b'']])

def jpeg_bomb(side: int = 60000) -> bytes:
    "A 64 x 64 JPEG whose frame header (SOF0) declares side x side pixels (3.6 gigapixels)."
    data = bytearray(cv2.imencode('.jpg', np.full((64, 64), 128, np.uint8))[1].tobytes())
    k = data.index(b'\xff\xc0')                         # SOF0: length (2), precision (1), height (2), width (2)
    data[k + 5:k + 9] = struct.pack('>HH', side, side)
    return bytes(data)

def bare_dicom(rows: int, cols: int, syntax: str, pixels: bytes, bits: int = 8):
    "A minimal DX data set of rows x cols, with the given transfer syntax and Pixel Data bytes."
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import generate_uid
    ds, meta = Dataset(), FileMetaDataset()
    meta.TransferSyntaxUID, meta.MediaStorageSOPClassUID = syntax, '1.2.840.10008.5.1.4.1.1.1.1'
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.file_meta, ds.SOPClassUID = meta, meta.MediaStorageSOPClassUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.Modality = generate_uid(), generate_uid(), 'DX'
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = rows, cols, 1, 'MONOCHROME2'
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits, bits - 1, 0
    ds.PixelData = pixels
    return ds

def native_bomb(side: int = 30000) -> bytes:
    "An uncompressed DICOM declaring side x side 16-bit pixels (1.8 GB) over 1 MB of Pixel Data."
    return dicom_bytes(bare_dicom(side, side, ExplicitVRLittleEndian, bytes(1 << 20), bits=16))

def rle_bomb(side: int = 20000) -> bytes:
    "An RLE Lossless DICOM of side x side zeros: ~6 MB of runs that decode to side² bytes (400 MB)."
    full, rest = divmod(side, 128)
    row = b'\x81\x00' * full + (bytes([257 - rest, 0]) if rest else b'')    # runs of 128 zeros, then the rest
    segment = row * side
    frame = struct.pack('<16I', 1, 64, *[0] * 14) + segment
    return dicom_bytes(bare_dicom(side, side, RLELossless, encapsulate([frame])))

def deflate_bomb(zeros: int = 1 << 30) -> bytes:
    """A Deflated Explicit VR DICOM of a 64 x 64 image whose data set inflates to over 1 GB: a private element of
    zeros (before Rows and Columns in tag order) deflated to ~1 MB."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset, write_file_meta_info
    ds = bare_dicom(64, 64, DeflatedExplicitVRLittleEndian, bytes(64 * 64))
    def encoded(part) -> bytes:
        fp = DicomBytesIO(); fp.is_little_endian, fp.is_implicit_VR = True, False
        write_dataset(fp, part); return fp.getvalue()
    head = pydicom.Dataset(); tail = pydicom.Dataset()
    for el in ds: (head if el.tag.group < 0x0009 else tail).add(el)
    creator = pydicom.Dataset(); creator.add_new(0x00090010, 'LO', 'SPINEXR BOMB')
    meta = DicomBytesIO(); meta.is_little_endian, meta.is_implicit_VR = True, False
    write_file_meta_info(meta, ds.file_meta, enforce_standard=True)
    c, out = zlib.compressobj(9, zlib.DEFLATED, -15), [b'\0' * 128, b'DICM', meta.getvalue()]
    out.append(c.compress(encoded(head) + encoded(creator) + struct.pack('<HH2sHI', 0x0009, 0x1010, b'OB', 0, zeros)))
    chunk = bytes(16 << 20)
    for _ in range(zeros // len(chunk)): out.append(c.compress(chunk))
    out += [c.compress(encoded(tail)), c.flush()]
    return b''.join(out)

BOMBS = {'PNG bomb': ('bomb.png', png_bomb), 'RLE DICOM bomb': ('bomb_rle.dcm', rle_bomb),
         'native DICOM bomb': ('bomb_native.dcm', native_bomb), 'deflate bomb': ('bomb_deflate.dcm', deflate_bomb),
         'JPEG bomb': ('bomb.jpg', jpeg_bomb)}

@pytest.fixture(scope='module')
def bombs() -> dict:
    "kind -> (file name, bytes), each made once."
    return {kind: (name, make()) for kind, (name, make) in BOMBS.items()}

# --- helpers -----------------------------------------------------------------------------------------------------

async def send_all(url, uploads, concurrency: int = 8) -> list:
    "POST each (name, bytes, ?dicom) with at most `concurrency` at once: [(status, JSON or text, seconds)]."
    gate = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(timeout=300, limits=httpx.Limits(max_connections=concurrency)) as c:
        async def one(name, data, dicom):
            async with gate:
                t = time.perf_counter()
                r = await c.post(f'{url}/predict', params=dict(overlay='false', dicom=str(dicom).lower()),
                                 files=dict(file=(name, data)))
                try: body = r.json()
                except ValueError: body = r.text
                return r.status_code, body, time.perf_counter() - t
        return await asyncio.gather(*(one(*u) for u in uploads))

def post(url, name, data, **kw) -> httpx.Response:
    return httpx.post(f'{url}/predict', files=dict(file=(name, data)), timeout=120, **kw)

def same_answer(got: dict, ref: dict) -> bool:
    return (abs(got['p_abnormal'] - ref['p_abnormal']) < 1e-5 and got['abnormal'] == ref['abnormal'] and
            [b['lesion_type'] for b in got['boxes']] == [b['lesion_type'] for b in ref['boxes']])

def raw_request(port: int, head: bytes, body: bytes = b'', timeout: float = 30) -> socket.socket:
    s = socket.create_connection(('127.0.0.1', port), timeout=timeout)
    s.sendall(head + body)
    return s

def upload_head(port: int, length: int) -> bytes:
    "The headers of a multipart upload of `length` bytes to /predict, and the start of its body."
    return (f'POST /predict HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: multipart/form-data; boundary=b0\r\n'
            f'Content-Length: {length}\r\n\r\n--b0\r\nContent-Disposition: form-data; name="file"; '
            f'filename="slow.dcm"\r\nContent-Type: application/dicom\r\n\r\n').encode()

def read_answer(s: socket.socket, timeout: float = 30) -> tuple:
    "(status, JSON body or b'' ) of the answer on `s`; (None, b'') if it closed without one."
    s.settimeout(timeout); data = b''
    try:
        while b'\r\n\r\n' not in data:
            if not (more := s.recv(65536)): break
            data += more
        head, _, body = data.partition(b'\r\n\r\n')
        n = int(m[1]) if (m := re.search(rb'content-length: (\d+)', head, re.I)) else 0
        while len(body) < n and (more := s.recv(65536)): body += more
    except OSError: pass
    if not data.startswith(b'HTTP/1.1 '): return None, b''
    status = int(data.split(b' ', 2)[1])
    try: return status, json.loads(body) if body else b''
    except ValueError: return status, body

def port_of(url: str) -> int: return int(url.rsplit(':', 1)[1])

# --- fuzz ---------------------------------------------------------------------------------------------------------

def test_fuzzed_uploads_never_get_a_5xx(server, files):
    """A few hundred mutated DICOMs (bit flips, truncations, header fields changed), PNGs and JPEGs: each answered
    200 or 4xx with a reason, none 5xx, no private path in any answer; the server healthy and answering as before."""
    url, p, tmp = server
    before = post(url, 'native.dcm', files['native'], params=dict(overlay='false')).json()
    cases = mutants(files)
    t0 = time.time()
    answers = asyncio.run(send_all(url, [(n, d, dicom) for _, n, d, dicom in cases]))
    secs = time.time() - t0
    table = Counter((kind, status) for (kind, *_), (status, _, _) in zip(cases, answers))
    for (kind, status), n in sorted(table.items()): print(f'  {kind:<45} {status}: {n}')
    statuses = Counter(s for s, _, _ in answers)
    fives = sum(n for s, n in statuses.items() if s >= 500)
    kinds = {k for k, *_ in cases}
    print(f'fuzz: {len(cases)} mutated uploads of {len(kinds)} kinds in {secs:.0f} s: {dict(sorted(statuses.items()))}'
          f'; 5xx: {fives}')
    TALLY['bad-input kinds'] += len(kinds); TALLY['faults injected'] += len(cases); TALLY['5xx'] += fives
    assert fives == 0, [(k, s, b) for (k, *_), (s, b, _) in zip(cases, answers) if s >= 500][:5]
    for (kind, *_), (status, body, _) in zip(cases, answers):
        assert status == 200 or (400 <= status < 500 and body['error'] and body['status'] == status), (kind, body)
        assert str(tmp) not in json.dumps(body) and 'Traceback' not in json.dumps(body), (kind, body)
    for (kind, *_, dicom), (status, body, _) in zip(cases, answers):           # no UIDs: an answer, no DICOM objects
        if kind == 'DICOM header: no UIDs' and status == 200:
            assert body['dicom_results'] is None and 'no DICOM presentation state or SR' in body['warnings'][-1]
    h = health(url)
    assert p.poll() is None and h['status'] == 'ok' and h['answered']['5xx'] == 0, h
    assert same_answer(post(url, 'native.dcm', files['native'], params=dict(overlay='false')).json(), before)
    assert uploads_left(tmp) == []

# --- bombs -------------------------------------------------------------------------------------------------------

def test_bombs_are_refused_before_decoding_with_memory_bounded(server, bombs):
    """Each bomb (a few MB or less that would decode to 0.4 to 3.6 GB) is refused from its header, quickly: the
    server's peak resident memory while it refuses one grows by less than 100 MiB over what it held before (its
    models), and stays under 2 GiB."""
    url, p, tmp = server
    settle(url)
    rows = []
    for kind, (name, data) in bombs.items():
        rss = pid_status(p.pid, 'VmRSS'); reset_peak(p.pid)
        t = time.perf_counter(); r = post(url, name, data); secs = time.perf_counter() - t
        peak = pid_status(p.pid, 'VmHWM')
        rows.append((kind, len(data), r.status_code, secs, rss, peak, r.json()['error']))
    print('bomb                 upload MB  status  seconds  RSS before MiB  peak RSS MiB  growth MiB  reason')
    for kind, size, status, secs, rss, peak, why in rows:
        print(f'{kind:<20} {size / 2**20:>9.2f}  {status:>6}  {secs:>7.2f}  {rss / 1024:>14.0f}  {peak / 1024:>12.0f}  '
              f'{(peak - rss) / 1024:>10.1f}  {why.split(": ", 1)[1][:70]}')
    TALLY['bad-input kinds'] += len(rows); TALLY['faults injected'] += len(rows)
    TALLY['5xx'] += sum(s >= 500 for _, _, s, *_ in rows)
    for kind, size, status, secs, rss, peak, why in rows:
        assert status in (413, 422), (kind, status, why)
        assert peak - rss < 100 * 1024 and peak < 2 * 2**20, (kind, rss, peak)     # KiB: nothing decoded
        assert secs < 20, (kind, secs)
    assert health(url)['status'] == 'ok' and uploads_left(tmp) == []

# --- load ----------------------------------------------------------------------------------------------------------

def test_fifty_clients_with_bombs_and_bad_files_mixed_in(server, files, bombs):
    """50 clients at once, 4 requests each: 100 good uploads, 50 bad files, 50 bombs. Every good one answered 200
    with the answer it gets alone; every bad one and bomb 4xx (or 503); memory bounded; nothing left behind."""
    url, p, tmp = server
    good = [('native.dcm', files['native']), ('exported.png', files['png']), ('exported.jpg', files['jpeg']),
            *files['more']]
    alone = {n: post(url, n, d, params=dict(overlay='false')).json() for n, d in good}
    bad = [('notes.dcm', b'not a DICOM file\n' * 40), ('cut.dcm', files['j2k'][:len(files['j2k']) // 2]),
           ('broken.png', PNG_SIGNATURE + b'garbage'), ('flat.png', cv2.imencode('.png', np.full((300, 200), 9,
                                                                                             np.uint8))[1].tobytes()),
           ('empty.dcm', b''), ('rows0.dcm', edited(files['native'], lambda ds: setattr(ds, 'Rows', 0)))]
    rng = random.Random(50)
    work = ([('good', *rng.choice(good)) for _ in range(100)] + [('bad', *rng.choice(bad)) for _ in range(50)] +
            [('bomb', *bombs[k]) for k in bombs for _ in range(10)])
    rng.shuffle(work)
    async def client(jobs):
        async with httpx.AsyncClient(timeout=600) as c:
            out = []
            for what, name, data in jobs:
                t = time.perf_counter()
                r = await c.post(f'{url}/predict', params=dict(overlay='false'), files=dict(file=(name, data)))
                out.append((what, name, r.status_code, r.json(), time.perf_counter() - t))
            return out
    async def everyone(): return await asyncio.gather(*(client(work[k::50]) for k in range(50)))
    settle(url); rss = pid_status(p.pid, 'VmRSS'); reset_peak(p.pid)
    t0 = time.time()
    results = [r for rs in asyncio.run(everyone()) for r in rs]
    secs, peak = time.time() - t0, pid_status(p.pid, 'VmHWM')
    by = Counter((what, status) for what, _, status, _, _ in results)
    lat = {w: np.percentile([t for what, _, _, _, t in results if what == w], [50, 95])
           for w in ('good', 'bad', 'bomb')}
    print(f'load: 50 clients, {len(results)} requests in {secs:.1f} s: {dict(sorted(by.items()))}; server RSS '
          f'{rss / 1024:.0f} MiB before, peak {peak / 1024:.0f} MiB; p50/p95 s: '
          + ', '.join(f'{w} {a:.2f}/{b:.2f}' for w, (a, b) in lat.items()))
    TALLY['faults injected'] += 100; TALLY['5xx'] += sum(n for (_, s), n in by.items() if s >= 500 and s != 503)
    for what, name, status, body, _ in results:
        if what == 'good': assert status == 200 and same_answer(body, alone[name]), (name, status, body)
        else: assert 400 <= status < 500 or status == 503, (what, name, status, body)
    assert peak - rss < 512 * 1024 and peak < 2 * 2**20 and health(url)['answered']['5xx'] == 0, (rss, peak)
    assert settle(url)['queue']['waiting'] == 0 and uploads_left(tmp) == []

# --- slow clients --------------------------------------------------------------------------------------------------

def test_slow_headers_and_idle_connections_are_cut(server):
    """A client that sends its headers a byte at a time, and connections that send nothing, are closed after
    --header_s (2 s); meanwhile and after, the server answers others at once."""
    url, p, _ = server
    port = port_of(url)
    idle = [socket.create_connection(('127.0.0.1', port)) for _ in range(30)]
    slow = socket.create_connection(('127.0.0.1', port), timeout=10)
    request = f'GET /health HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n'.encode()
    t0, status = time.time(), None
    for k in range(len(request)):                           # a byte every 0.2 s: 7 s for the whole request
        if select.select([slow], [], [], 0)[0]: break        # answered, or closed: stop sending
        slow.sendall(request[k:k + 1])
        if k == 3: assert health(url)['status'] == 'ok'     # others are answered meanwhile
        time.sleep(0.2)
    status, _ = read_answer(slow, 5)
    cut = time.time() - t0
    closed = 0
    for s in idle:
        s.settimeout(5)
        try: closed += s.recv(1) == b''
        except OSError: closed += 1
        s.close()
    print(f'slow headers: answered {status} and cut after {cut:.1f} s; {closed} of {len(idle)} idle connections closed')
    TALLY['faults injected'] += 1 + len(idle)
    assert status == 408 and cut < 4 and closed == len(idle)
    assert health(url)['status'] == 'ok'

def test_a_body_dribbled_in_is_refused_408(server):
    "A body sent 100 bytes every 0.25 s is refused (408) once --receive_s (4 s) have passed; no upload stays."
    url, p, tmp = server
    port = port_of(url)
    s = raw_request(port, upload_head(port, 100_000), timeout=15)
    t0 = time.time()
    while time.time() - t0 < 8 and not select.select([s], [], [], 0)[0]:      # until answered, or closed
        s.sendall(b'\0' * 100); time.sleep(0.25)
    status, body = read_answer(s, 10)
    secs = time.time() - t0
    print(f'dribbled body: {status} after {secs:.1f} s: {body}')
    TALLY['faults injected'] += 1
    assert status == 408 and 'within 4 s' in body['error'] and secs < 7
    assert settle(url)['queue']['waiting'] == 0 and uploads_left(tmp) == []

def test_forms_with_more_than_one_file_and_a_few_fields_are_refused(server, files):
    "A second file, a ninth field, or a field over 64 KB: 400 with starlette's reason; a form within them: 200."
    url, _, _ = server
    f = ('native.dcm', files['native'])
    cases = {'two files': (httpx.post(f'{url}/predict', files=[('file', f), ('file', f)], timeout=60),
                           'Too many files'),
             'nine fields': (httpx.post(f'{url}/predict', files=dict(file=f), data={f'f{k}': 'x' for k in range(9)},
                                        timeout=60), 'Too many fields'),
             'a 100 KB field': (httpx.post(f'{url}/predict', files=dict(file=f), data=dict(note='x' * 100_000),
                                           timeout=60), 'exceeded maximum size')}
    for kind, (r, why) in cases.items(): assert r.status_code == 400 and why in r.json()['error'], (kind, r.text)
    r = httpx.post(f'{url}/predict', files=dict(file=f), data=dict(note='x', study='y'), timeout=60,
                   params=dict(overlay='false'))
    assert r.status_code == 200
    TALLY['bad-input kinds'] += len(cases)

# --- a full queue, clients that leave --------------------------------------------------------------------------------

def test_a_full_queue_refuses_before_the_body_is_read(server, files):
    """64 uploads stalled halfway fill the queue (an upload being received holds its place): the next request is
    refused 503 with Retry-After while its own body is still unsent; the stalled ones are cut at --receive_s."""
    url, _, tmp = server
    port = port_of(url)
    stalled = [raw_request(port, upload_head(port, 1 << 20), b'\0' * 1000) for _ in range(64)]
    t0 = time.time()
    while health(url)['queue']['waiting'] < 64 and time.time() - t0 < 10: time.sleep(0.1)
    one_more = raw_request(port, upload_head(port, 1 << 20), b'\0' * 1000)   # 1 MB declared, 1 KB sent
    status, body = read_answer(one_more, 10)
    print(f'queue full: {status} {body}')
    r = post(url, 'native.dcm', files['native'])
    assert status == 503 and 'busy: 64 requests are waiting' in body['error']
    assert r.status_code == 503 and r.headers['retry-after'] == '2'
    for s in stalled[:32]: s.close()                        # half go away; the others are cut at --receive_s
    cut = Counter(read_answer(s, 10)[0] for s in stalled[32:])
    assert cut == {408: 32}, cut
    assert settle(url)['queue']['waiting'] == 0 and uploads_left(tmp) == []
    assert post(url, 'native.dcm', files['native'], params=dict(overlay='false')).status_code == 200
    TALLY['faults injected'] += 65

def test_a_client_that_leaves_gets_no_model_work(bundle, files, tmp_path):
    """48 uploads keep the models busy; one more, whose client leaves after 0.5 s while it waits in the queue, is
    dropped: the models never see it. The server takes one image per batch and decodes in one worker, so that its
    queue fills however fast the machine (with batches of 8 and decoding beside the models, a loaded CI machine
    answered as fast as the uploads came and never had more than 7 waiting)."""
    with serving(bundle, tmp_path/'tmp', '--batch', 1, '--workers', 1) as (url, _):
        waiting, codes, before, after = _leaving(url, files)
    print(f'a client that left while {waiting} waited: {after["skipped"] - before["skipped"]} job skipped; '
          f'{after["jobs_run"] - before["jobs_run"]} jobs run for 48 answered')
    assert codes == [200] * 48 and waiting >= 24
    assert (after['skipped'] - before['skipped'], after['jobs_run'] - before['jobs_run']) == (1, 48)
    TALLY['faults injected'] += 1

def _leaving(url: str, files: dict) -> tuple:
    "(requests waiting when the leaving one was sent, the 48 answers' codes, the queue's counts before and after)."
    before = settle(url)['queue']
    async def busy_and_leaving():
        async with httpx.AsyncClient(timeout=300, limits=httpx.Limits(max_connections=60)) as c:
            work = [asyncio.ensure_future(c.post(f'{url}/predict', params=dict(overlay='false'),
                                                 files=dict(file=('native.dcm', files['native'])))) for _ in range(48)]
            t0 = time.time()
            while health(url)['queue']['waiting'] < 24 and time.time() - t0 < 20: await asyncio.sleep(0.05)
            waiting = health(url)['queue']['waiting']
            try: await c.post(f'{url}/predict', files=dict(file=('leaving.dcm', files['native'])), timeout=0.5)
            except httpx.TimeoutException: pass
            return waiting, [r.status_code for r in await asyncio.gather(*work)]
    waiting, codes = asyncio.run(busy_and_leaving())
    return waiting, codes, before, settle(url)['queue']

# --- what every answer says ------------------------------------------------------------------------------------------

def test_security_headers_and_the_host_check(server):
    "nosniff, no-store and frame-ancestors on every answer; a rebound host name refused; /health's bundle path."
    url, _, _ = server
    port = port_of(url)
    for path in ('/', '/health', '/docs', '/predict', '/nowhere'):
        r = httpx.get(f'{url}{path}')
        assert (r.headers['x-content-type-options'], r.headers['cache-control']) == ('nosniff', 'no-store'), path
        assert "frame-ancestors 'none'" in r.headers['content-security-policy'], path
    assert httpx.get(f'{url}/health', headers=dict(host=f'localhost:{port}')).status_code == 200
    for host in (f'rebound.example:{port}', f'127.0.0.1:{port + 1}', 'localhost'):
        r = httpx.get(f'{url}/health', headers=dict(host=host))
        assert r.status_code == 400 and 'is not this server' in r.json()['error'], host
    assert Path(health(url)['bundle']['path']).is_absolute()          # on loopback: the full path

# --- too many clients; a killed server's uploads ---------------------------------------------------------------------

def test_too_many_clients_and_a_killed_servers_uploads(bundle, files, tmp_path):
    """With --clients 2, two stalled uploads in progress make a third request a JSON 503 with Retry-After. Killed
    (-9) with an upload in progress, the server leaves its upload folder; the next server removes it as it starts,
    and keeps a running server's."""
    tmp = tmp_path/'tmp'
    parent = tmp/f'spinexr-serve-{os.getuid()}'
    live = subprocess.Popen(['sleep', '600'])                   # a server still running, as far as its folder says
    live_dir = parent/f'{live.pid}-{Path(f"/proc/{live.pid}/stat").read_text().rsplit(")", 1)[1].split()[19]}'
    (live_dir/'upload-x').mkdir(parents=True)
    try:
        with serving(bundle, tmp, '--clients', 2, '--receive_s', 30) as (url, p):
            port = port_of(url)
            stalled = [raw_request(port, upload_head(port, 1 << 20), b'\0' * 1000) for _ in range(2)]
            t0 = time.time()
            while not list(parent.glob(f'{p.pid}-*/upload-*'))[1:] and time.time() - t0 < 10: time.sleep(0.1)
            r = httpx.get(f'{url}/health')
            assert r.status_code == 503 and r.headers['retry-after'] == '2', r.text
            assert 'spinexr_serve --clients' in r.json()['error']
            mine = next(parent.glob(f'{p.pid}-*'))
            assert len(list(mine.glob('upload-*'))) == 2
            p.send_signal(signal.SIGKILL); p.wait()
            for s in stalled: s.close()
        assert mine.exists()                                    # a killed server cannot clean up
        with serving(bundle, tmp) as (url, p):
            assert not mine.exists() and live_dir.exists()
            assert httpx.get(f'{url}/health').status_code == 200
    finally: live.kill(); live.wait()
    TALLY['faults injected'] += 2
