"""Integration tests of reading inputs (`spinexr.inputs`, `spinexr.dicom`): a bomb of each kind (a PNG, a JPEG, a
native, an RLE, a JPEG 2000 and a deflated DICOM, each declaring far more than it holds) is refused before decoding,
and a fresh process refusing it stays small; odd headers, thin images and the colour screen."""
import io, json, struct, subprocess, sys, textwrap, zlib
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.encaps import encapsulate, get_frame

from spinexr.dicom import MAX_PIXELS, DicomError, TooManyPixels, read_dicom, to_uint8
from spinexr.inputs import check_pixels, colour_screen, image_pixels, input_kind, read_input
from spinexr.phantom import draw_radiograph, write_dicom

IDS = dict(image_id='1.2.3', study_id='1.2.4', series_id='1.2.5')
GROWTH_MB = 300                 # what refusing a bomb may add to a fresh process's peak RSS


def radiograph(H=384, W=288, seed=0) -> np.ndarray:
    return to_uint8(draw_radiograph(np.random.default_rng(seed), H, W)[0])


def png_bomb(path: Path, side: int = 30000) -> Path:
    "A valid PNG of side x side grey zeros: about 1 MB, written a slice at a time."
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack('>I', len(data)) + kind + data + struct.pack('>I', zlib.crc32(kind + data))
    z, row, parts = zlib.compressobj(9), bytes(side + 1), []          # each row: filter byte 0, then zeros
    for _ in range(0, side, 1000): parts.append(z.compress(row * 1000))
    idat = b''.join(parts) + z.flush()
    path.write_bytes(b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', struct.pack('>IIBBBBB', side, side, 8, 0, 0, 0, 0))
                     + chunk(b'IDAT', idat) + chunk(b'IEND', b''))
    return path


def jpeg_bomb(path: Path) -> Path:
    "A JPEG whose frame header declares 50000 x 40000 pixels over the data of 64 x 48."
    data = bytearray(cv2.imencode('.jpg', radiograph(64, 48))[1].tobytes())
    p = data.find(b'\xff\xc0')
    data[p + 5:p + 9] = struct.pack('>HH', 50000, 40000)
    path.write_bytes(data)
    return path


def dicom_bomb(path: Path, syntax: str) -> Path:
    "A 256 x 192 DICOM in `syntax` whose header declares 60000 x 60000 pixels."
    ds = pydicom.dcmread(write_dicom(path, (radiograph(256, 192).astype(np.uint16) * 16), IDS, syntax=syntax))
    ds.Rows = ds.Columns = 60000
    ds.save_as(path)
    return path


def j2k_siz_bomb(path: Path) -> Path:
    "A JPEG 2000 DICOM with a small header whose codestream's SIZ declares 60000 x 60000 pixels."
    ds = pydicom.dcmread(write_dicom(path, (radiograph(256, 192).astype(np.uint16) * 16), IDS, syntax='jpeg2000'))
    cs = bytearray(get_frame(ds.PixelData, 0, number_of_frames=1))
    p = cs.find(b'\xff\x4f\xff\x51')                                  # SOC, SIZ: Lsiz, Rsiz, Xsiz, Ysiz
    cs[p + 8:p + 16] = struct.pack('>II', 60000, 60000)
    ds.PixelData = encapsulate([bytes(cs)])
    ds.save_as(path)
    return path


def deflate_bomb(path: Path, n_bytes: int = 1 << 30, rows: int = 512, cols: int = 512) -> Path:
    "pydicom's deflated test file declaring rows x cols, its Pixel Data `n_bytes` zeros (about 1 MB per GB)."
    from pydicom.filereader import _read_file_meta_info, read_preamble
    raw = Path(get_testdata_file('image_dfl.dcm')).read_bytes()
    fp = io.BytesIO(raw); read_preamble(fp, False); _read_file_meta_info(fp)
    data = zlib.decompress(raw[fp.tell():], -zlib.MAX_WBITS)
    for el, v in ((b'\x10\x00', rows), (b'\x11\x00', cols)):
        k = data.index(b'\x28\x00' + el + b'US\x02\x00') + 8
        data = data[:k] + struct.pack('<H', v) + data[k + 2:]
    k = data.rindex(b'\xe0\x7f\x10\x00') + 8
    z, zeros = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS), bytes(1 << 24)
    parts = [raw[:fp.tell()], z.compress(data[:k] + struct.pack('<I', n_bytes))]
    parts += [z.compress(zeros[:min(1 << 24, n_bytes - i)]) for i in range(0, n_bytes, 1 << 24)]
    path.write_bytes(b''.join(parts + [z.flush()]))
    return path


@pytest.fixture(scope='module')
def bombs(tmp_path_factory):
    "Each kind of bomb, with a good file of the same kind (read after it, for comparison)."
    d = tmp_path_factory.mktemp('bombs')
    good = {'png': d/'good.png', 'jpeg': d/'good.jpg'}
    cv2.imwrite(str(good['png']), radiograph()); cv2.imwrite(str(good['jpeg']), radiograph())
    for s in ('explicit', 'rle', 'jpeg2000'):
        good[s] = write_dicom(d/f'good_{s}.dcm', radiograph().astype(np.uint16) * 16, IDS, syntax=s)
    good['deflated'] = Path(get_testdata_file('image_dfl.dcm'))
    return {  # kind: (bomb, a good file of its kind, the reason expected, whether it is a TooManyPixels)
        'PNG 30000 x 30000': (png_bomb(d/'bomb.png'), good['png'],
                              'the PNG header declares 30000 x 30000 pixels (height x width) (900,000,000 pixels), '
                              'more than the budget', True),
        'JPEG 50000 x 40000': (jpeg_bomb(d/'bomb.jpg'), good['jpeg'], 'the JPEG header declares 50000 x 40000', True),
        'native DICOM': (dicom_bomb(d/'native.dcm', 'explicit'), good['explicit'],
                         'the header declares 60000 x 60000 pixels (3,600,000,000 pixels), more than the budget', True),
        'RLE DICOM': (dicom_bomb(d/'rle.dcm', 'rle'), good['rle'],
                      'the header declares 60000 x 60000 pixels (3,600,000,000 pixels), more than the budget', True),
        'JPEG 2000 DICOM, SIZ': (j2k_siz_bomb(d/'siz.dcm'), good['jpeg2000'],
                                 'the header declares 256 x 192 pixels, but its JPEG 2000 codestream declares '
                                 '60000 x 60000 pixels', True),
        'deflated DICOM, 1 GB of zeros': (deflate_bomb(d/'deflated.dcm'), good['deflated'],
                                          'the deflated data set inflates to more than', False),
        'deflated DICOM, huge header': (deflate_bomb(d/'deflated_huge.dcm', 1 << 20, 60000, 60000), good['deflated'],
                                        'the header declares 60000 x 60000 pixels', True)}


MEASURE = textwrap.dedent('''
    import json, sys, time
    import cv2, pydicom, spinexr.dicom, spinexr.inputs
    def status(key): return int(next(l.split()[1] for l in open('/proc/self/status') if l.startswith(key)))
    path = sys.argv[1]
    with open('/proc/self/clear_refs', 'w') as f: f.write('5')     # the peak (VmHWM) starts again from now
    base, t = status('VmRSS:'), time.perf_counter()
    try: spinexr.inputs.read_input(path, 256); out = dict(error=None)
    except Exception as e: out = dict(error=str(e), type=[c.__name__ for c in type(e).__mro__])
    peak = status('VmHWM:')
    print(json.dumps(dict(out, seconds=time.perf_counter() - t, growth_kb=peak - base, base_kb=base)))''')


def measured(path: Path) -> dict:
    ("read_input(path, 256) in a fresh Python process: the error, and how far its peak RSS (reset after the imports, "
     "so that an import's own peak cannot hide a decode) rose above its RSS then.")
    res = subprocess.run([sys.executable, '-c', MEASURE, str(path)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_bombs_refused_in_bounded_memory(bombs, tmp_path):
    """Each bomb is refused with its reason by read_input in a fresh process, whose peak RSS grows by under 300 MB
    over its imports'; reading a legitimate 6000 x 5000 colour PNG the same way shows that the measure sees a decode."""
    big = tmp_path/'big.png'
    grey = cv2.resize(radiograph(600, 500), (5000, 6000), interpolation=cv2.INTER_LINEAR)
    cv2.imwrite(str(big), cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR))        # a grey radiograph saved in colour
    control = measured(big)
    assert control['error'] is None and control['growth_kb'] > 50 * 1024, control      # 90 MB decoded: seen
    rows = []
    for kind, (bomb, good, reason, too_many) in bombs.items():
        out = measured(bomb)
        rows.append((kind, bomb.stat().st_size, out['growth_kb'] / 1024, out['seconds']))
        assert out['error'] and reason in out['error'] and str(bomb) in out['error'], (kind, out)
        assert ('TooManyPixels' in out['type']) == too_many and 'InputError' in out['type'], (kind, out['type'])
        assert out['growth_kb'] < GROWTH_MB * 1024, (kind, out)
    rows.append(('(control: a good 6000 x 5000 colour PNG, read)', big.stat().st_size, control['growth_kb'] / 1024,
                 control['seconds']))
    print(f"\nfresh process, RSS after imports {control['base_kb'] / 1024:.0f} MB")
    print('kind | file size | peak RSS growth | time')
    for kind, size, mb, s in rows: print(f'{kind} | {size / 1e6:.2f} MB | {mb:.1f} MB | {s:.3f} s')


def test_check_pixels_refuses_each_bomb_from_its_header(bombs):
    "check_pixels (what a server calls before queueing an upload) refuses the same files, with the same reasons."
    for kind, (bomb, good, reason, too_many) in bombs.items():
        with pytest.raises(DicomError if not too_many else TooManyPixels) as e: check_pixels(bomb)
        assert reason in str(e.value), (kind, str(e.value))
        assert check_pixels(good) == check_pixels(good, MAX_PIXELS)
    h, w = check_pixels(bombs['PNG 30000 x 30000'][1])
    with pytest.raises(TooManyPixels) as e: check_pixels(bombs['PNG 30000 x 30000'][1], max_pixels=h * w - 1)
    assert (e.value.pixels, e.value.max_pixels) == (h * w, h * w - 1) and '--max_pixels' in str(e.value)
    assert image_pixels(bombs['JPEG 50000 x 40000'][0]) == (50000, 40000)


def test_kind_is_the_content(bombs, tmp_path):
    "input_kind reads the content; read_input reads a file as what it is, whatever its name; anything else is refused."
    heads = {k: Path(v[1]).read_bytes()[:132] for k, v in bombs.items()}
    assert [input_kind(heads[k]) for k in ('PNG 30000 x 30000', 'JPEG 50000 x 40000', 'RLE DICOM')] == \
        ['png', 'jpeg', 'dicom']
    for name, data in (('notes.png', b'hello world\n' * 20), ('x.dcm.jpg', b'GIF89a' + bytes(200)),
                       ('a.jpeg', b'<html><body>not an image</body></html>')):
        (tmp_path/name).write_bytes(data)
        assert input_kind(data[:132]) is None
        with pytest.raises(Exception) as e: read_input(tmp_path/name, 128)
        assert 'not a DICOM, PNG or JPEG file' in str(e.value) and name in str(e.value)
    dcm = bombs['RLE DICOM'][1]
    (tmp_path/'renamed.jpg').write_bytes(dcm.read_bytes())
    assert read_input(tmp_path/'renamed.jpg', 128)[1]['kind'] == 'dicom'


def test_thin_images_refused(tmp_path):
    "A 20000 x 3 PNG, and a 4000 x 20 one that a resize to 256 would make 1 px wide, are refused with the reason."
    cv2.imwrite(str(tmp_path/'line.png'), (np.random.default_rng(0).random((3, 20000)) * 255).astype(np.uint8))
    with pytest.raises(Exception) as e: read_input(tmp_path/'line.png', 256)
    assert 'image of 3 x 20000 pixels: too small to be a radiograph' in str(e.value)
    cv2.imwrite(str(tmp_path/'thin.png'), (np.random.default_rng(0).random((4000, 20)) * 255).astype(np.uint8))
    with pytest.raises(Exception) as e: read_input(tmp_path/'thin.png', 256)
    assert 'too thin to be a radiograph (resized to a long side of 256 it would be 256 x 1 pixels' in str(e.value)
    f = write_dicom(tmp_path/'thin.dcm', np.tile(radiograph(16, 48).astype(np.uint16), (1, 60)), IDS, syntax='explicit')
    with pytest.raises(DicomError) as e: read_dicom(f, 256)
    assert 'image of 16 x 2880 pixels: too thin' in str(e.value)


def test_header_numbers_that_are_not_finite(tmp_path):
    "Pixel Spacing nan/inf, a window of inf, text in a DS: the file is read and its facts are valid JSON with nulls."
    f = write_dicom(tmp_path/'odd.dcm', radiograph().astype(np.uint16) * 16, IDS, syntax='explicit',
                    window=(2047.5, 3000))
    raw = f.read_bytes()
    def patch(raw, tag: bytes, text: bytes) -> bytes:
        k = raw.index(tag + b'DS') + 8
        n = struct.unpack('<H', raw[k - 2:k])[0]
        return raw[:k] + text.ljust(n)[:n] + raw[k + n:]
    raw = patch(raw, b'\x28\x00\x30\x00', b'nan\\inf')                    # (0028,0030) Pixel Spacing
    raw = patch(raw, b'\x28\x00\x50\x10', b'inf')                         # (0028,1050) Window Center
    (tmp_path/'odd.dcm').write_bytes(raw)
    img, info = read_input(tmp_path/'odd.dcm', 128)
    facts = json.loads(json.dumps(info['dicom'], allow_nan=False))       # no NaN, no Infinity
    assert facts['pixel_spacing_mm'] is None and facts['voi']['kind'] == 'percentile' and img.max() > img.min()
    (tmp_path/'garbage.dcm').write_bytes(patch(raw, b'\x28\x00\x30\x00', b'abc\\x1'))
    assert read_input(tmp_path/'garbage.dcm', 128)[1]['dicom']['pixel_spacing_mm'] is None


def test_colour_screen_marks_and_photographs(tmp_path):
    "A grey radiograph JPEG with coloured boxes and text is read with a warning; colour photographs are refused."
    g = radiograph(768, 576)
    img = cv2.cvtColor(g, cv2.COLOR_GRAY2BGR)
    cv2.rectangle(img, (100, 200), (300, 330), (0, 0, 255), 2)
    cv2.rectangle(img, (250, 400), (450, 520), (0, 255, 0), 3)
    cv2.putText(img, 'L4 fracture? 14.2 mm', (60, 180), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (0, 255, 255), 2)
    cv2.imwrite(str(tmp_path/'marked.jpg'), img, [cv2.IMWRITE_JPEG_QUALITY, 80])
    grey, info = read_input(tmp_path/'marked.jpg', 256)
    assert len(info['warnings']) == 1 and info['warnings'][0].startswith('coloured marks (')
    assert np.abs(grey.astype(int) - read_input_grey(tmp_path, g).astype(int)).mean() < 3      # read as grey
    photo = np.dstack([g, g[::-1], np.full_like(g, 60)])                   # test_serve's "colour photograph"
    cv2.imwrite(str(tmp_path/'photo.jpg'), photo)
    with pytest.raises(Exception) as e: read_input(tmp_path/'photo.jpg', 256)
    assert str(e.value).startswith(f'{tmp_path/"photo.jpg"}: a colour image (')
    yy, xx = np.mgrid[0:480, 0:640]
    sunset = np.dstack([60 + 0 * xx, 80 + yy / 4, 200 + xx / 20]).clip(0, 255).astype(np.uint8)
    assert colour_screen(sunset)[0].startswith('a colour image (broad coloured areas cover 100% of it)')


def read_input_grey(tmp_path: Path, g: np.ndarray) -> np.ndarray:
    "The same radiograph without marks, through read_input at 256."
    cv2.imwrite(str(tmp_path/'plain.png'), g)
    return read_input(tmp_path/'plain.png', 256)[0]
