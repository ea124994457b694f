"""A DICOMweb server that misbehaves, on a loopback port, faced by `spinexr.dicomweb` through dicomweb-client: paging
that ignores its offset, answers that trickle in a byte at a time, an HTTP error on the second page, UIDs that are
paths or not UIDs, one SOP Instance UID in two studies. Each fault ends as one line (`DicomwebError`, an `InputError`)
or a skipped instance with its reason: never a hang, a traceback, a request for a bad UID, or a file outside the
fetch folder."""
import io, json, re, stat, threading, time
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlsplit

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.uid import ExplicitVRLittleEndian

from spinexr.core import InputError
from spinexr.dicom_out import Algorithm
from spinexr.dicomweb import (QIDO_PAGE, RETRY_ATTEMPTS, DicomwebError, Instance, connect, fetch_instance,
                              http_reason, plan_study, store_instances, study_instances, study_uids)

DEADLINE = 0.5                      # seconds a request may take in all, here; each wait may take 2 s
ALGO = Algorithm(version='0', bundle_sha256='ab' * 32, threshold=0.5)

@dataclass
class Answer:
    "What the server sends: a status and a body, at once, or a byte each `every` s after the head ('body') or all."
    body: bytes = b'[]'
    status: int = 200
    ctype: str = 'application/dicom+json'
    trickle: str = ''               # '', 'body' or 'all'
    every: float = 0.05

class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args): pass
    def do_GET(self): self.answer()

    def do_POST(self):
        self.rfile.read(int(self.headers.get('Content-Length') or 0))
        self.answer()

    def answer(self):
        url = urlsplit(self.path)
        query = dict(parse_qsl(url.query))
        self.server.asked.append((self.command, url.path, query))
        a = self.server.route(self.command, url.path, query)
        head = (f'HTTP/1.1 {a.status} {HTTPStatus(a.status).phrase}\r\nContent-Type: {a.ctype}\r\n'
                f'Content-Length: {len(a.body)}\r\nConnection: close\r\n\r\n').encode()
        data = head + a.body
        at_once = {'': len(data), 'body': len(head), 'all': 0}[a.trickle]
        self.wfile.write(data[:at_once])
        for k in range(at_once, len(data)):      # bounded: the answer's length
            time.sleep(a.every)
            try: self.wfile.write(data[k:k + 1])
            except OSError: return               # the client has gone

@pytest.fixture
def pacs():
    "A loopback server: `.route(method, path, query) -> Answer` decides each answer; `.asked` lists the requests."
    srv = ThreadingHTTPServer(('127.0.0.1', 0), Handler)
    srv.daemon_threads, srv.asked = True, []
    srv.route = lambda method, path, query: Answer()
    srv.url = f'http://127.0.0.1:{srv.server_address[1]}/dicom-web'
    threading.Thread(target=srv.serve_forever, kwargs=dict(poll_interval=0.05), daemon=True).start()
    yield srv
    srv.shutdown()
    srv.server_close()

def client_of(pacs):
    return connect(pacs.url, timeout=2, env={}, deadline=DEADLINE)

def qido(**kw) -> dict:
    "A QIDO-RS item as a server writes it."
    return {f'{tag_for_keyword(k):08X}': dict(vr=dictionary_VR(tag_for_keyword(k)), Value=[v]) for k, v in kw.items()}

def as_json(items) -> bytes: return json.dumps(items).encode()

def searches(pacs, path_end: str) -> list:
    "The offsets of the searches the server was asked, on paths ending in `path_end`."
    return [int(q.get('offset', 0)) for m, p, q in pacs.asked if p.endswith(path_end) and q.get('limit') != '1']

def dicom_file(study, series, sop) -> bytes:
    "A small DICOM file with these ids."
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = '1.2.840.10008.5.1.4.1.1.1.1'
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, ds.Modality = study, series, sop, 'DX'
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()

def image(study, series, sop) -> Answer:
    "A WADO-RS answer: the instance, as a one-part multipart/related message."
    part = b'Content-Type: application/dicom\r\n\r\n' + dicom_file(study, series, sop)
    body = b'--frontier\r\n' + part + b'\r\n--frontier--\r\n'
    return Answer(body, ctype='multipart/related; type="application/dicom"; boundary=frontier')

def wado_path(path: str):
    "(study, series, sop) of a WADO-RS instance path, or None."
    parts = path.split('/')
    return (parts[3], parts[5], parts[7]) if len(parts) == 8 and parts[6] == 'instances' else None

def test_paging_that_ignores_the_offset_ends(pacs):
    "The same full page at every offset: an error after two pages; a server that ignores the limit too: all of it."
    full = [qido(StudyInstanceUID=f'1.2.{k}', SOPInstanceUID=f'1.2.3.{k}', Rows=9) for k in range(QIDO_PAGE)]
    pacs.route = lambda m, path, q: Answer(as_json(full))
    client = client_of(pacs)
    with pytest.raises(DicomwebError, match='ignores the offset of a search for studies'): study_uids(client)
    with pytest.raises(DicomwebError, match='ignores the offset of a search for instances'):
        study_instances(client, '1.2.3')
    assert searches(pacs, '/studies') == [0, 500] and searches(pacs, '/instances') == [0, 500]
    everything = full + [qido(StudyInstanceUID=f'1.3.{k}') for k in range(200)]
    pacs.route, pacs.asked = lambda m, path, q: Answer(as_json(everything)), []
    assert study_uids(client) == [f'1.2.{k}' for k in range(QIDO_PAGE)] + [f'1.3.{k}' for k in range(200)]
    assert searches(pacs, '/studies') == [0, 700]

@pytest.mark.parametrize('fault', ['search headers', 'image body'])
def test_an_answer_that_trickles_in_misses_its_deadline(pacs, tmp_path, fault):
    """Each byte within the 2 s timeout, the whole answer far beyond the deadline: the request is cut at the deadline
    and tried again as dicomweb-client does, and the call ends with one line."""
    search = as_json([qido(SeriesInstanceUID='1.2.3.4', SOPInstanceUID='1.2.3.4.5', Rows=9)] * 3)
    def route(m, path, q):
        if path.endswith('/instances'): return Answer(search, trickle='all' if fault == 'search headers' else '')
        if ids := wado_path(path):
            a = image(*ids)
            return Answer(a.body, ctype=a.ctype, trickle='body' if fault == 'image body' else '')
        return Answer()
    pacs.route = route
    client = client_of(pacs)
    trickled = search if fault == 'search headers' else image('1.2.3', '1.2.3.4', '1.2.3.4.5').body
    assert len(trickled) * Answer.every > 10                         # without a deadline: this long, at least
    t0 = time.monotonic()
    with pytest.raises(DicomwebError, match=rf'within the {DEADLINE:g} s deadline: GET {pacs.url}/studies/1.2.3/'):
        if fault == 'search headers': study_instances(client, '1.2.3')
        else: fetch_instance(client, study_instances(client, '1.2.3')[0], tmp_path/'fetched')
    assert time.monotonic() - t0 < RETRY_ATTEMPTS * DEADLINE + 3 + 2     # attempts, back-off (1 s, 2 s), slack
    tried = [p for m, p, q in pacs.asked if (p.endswith('/instances') if fault == 'search headers' else wado_path(p))]
    assert len(tried) == RETRY_ATTEMPTS
    assert not list(tmp_path.rglob('*.dcm'))

def test_an_http_error_on_any_page_is_one_line(pacs, tmp_path):
    "A 500 on the second page of a search, a 404 on a retrieval, a 500 on a store, a page that is not JSON."
    page = [qido(StudyInstanceUID=f'1.2.{k}', SOPInstanceUID=f'1.2.3.{k}', Rows=9) for k in range(QIDO_PAGE)]
    def route(m, path, q):
        if m == 'POST': return Answer(b'disk full', 500, 'text/plain')
        if wado_path(path): return Answer(b'no such instance', 404, 'text/plain')
        if path.endswith('/studies/1.2.4/instances'): return Answer(b'<html>', ctype='text/html')
        if int(q.get('offset', 0)) >= QIDO_PAGE: return Answer(b'database gone', 500, 'text/plain')
        return Answer(as_json(page))
    pacs.route = route
    client = client_of(pacs)
    result = tmp_path/'result.dcm'
    result.write_bytes(dicom_file('1.2.3', '1.2.3.9', '1.2.3.9.1'))
    calls = dict(studies=lambda: study_uids(client), instances=lambda: study_instances(client, '1.2.3'),
                 unreadable=lambda: study_instances(client, '1.2.4'),
                 fetch=lambda: fetch_instance(client, Instance('1.2.3', '1.2.3.4', '1.2.3.4.5', rows=9), tmp_path),
                 store=lambda: store_instances(client, '1.2.3', [result]))
    expected = dict(studies=rf'^HTTP 500 Internal Server Error from {pacs.url}/studies\?.*offset=500.*: database gone$',
                    instances=r'^HTTP 500 Internal Server Error from .*/studies/1\.2\.3/instances\?.*: database gone$',
                    unreadable=r'^JSONDecodeError: ', fetch=r'^HTTP 404 Not Found from .*: no such instance$',
                    store=r'^HTTP 500 Internal Server Error from .*/studies/1\.2\.3: disk full$')
    for name, call in calls.items():
        with pytest.raises(DicomwebError) as e: call()
        line = http_reason(e.value)
        assert isinstance(e.value, InputError) and '\n' not in line, name      # a command prints it as one line
        assert re.search(expected[name], line), (name, line)

def test_ids_that_are_not_uids_are_never_asked_for_nor_written(pacs, tmp_path):
    "Studies '../../etc' and '1.2.03' fail without a request; instances with such ids are skipped, with the reason."
    listed = {'1.2.3': [qido(SeriesInstanceUID='1.2.3.1', SOPInstanceUID='../../etc/passwd', Rows=9),
                        qido(SeriesInstanceUID='1.2.3.1', SOPInstanceUID='1.2.03', Rows=9),
                        qido(SeriesInstanceUID='/abs', SOPInstanceUID='1.2.3.1.2', Rows=9),
                        qido(SeriesInstanceUID='1.2.3.1', SOPInstanceUID='1.2.3.1.1', Rows=9)]}
    def route(m, path, q):
        if ids := wado_path(path): return image(*ids)
        if path.endswith('/instances'): return Answer(as_json(listed.get(path.split('/')[3], [])))
        return Answer(as_json([qido(StudyInstanceUID=s) for s in ('../../etc', '1.2.03', '1.2.3')]))
    pacs.route = route
    client = client_of(pacs)
    studies = study_uids(client)
    assert studies == ['../../etc', '1.2.03', '1.2.3']                 # as listed: each fails on its own
    for bad in studies[:2]:
        with pytest.raises(DicomwebError, match=r'Study Instance UID .* is not a DICOM UID'):
            study_instances(client, bad)
    plan = plan_study('1.2.3', study_instances(client, '1.2.3'), ALGO)
    assert [i.sop for i in plan.todo] == ['1.2.3.1.1']
    assert [why.split(' is ')[0] for _, why in plan.skipped] == [
        "its SOP Instance UID '../../etc/passwd'", "its SOP Instance UID '1.2.03'", "its Series Instance UID '/abs'"]
    folder = tmp_path/'fetched'
    for inst, _ in plan.skipped:
        with pytest.raises(DicomwebError, match='not asked for'): fetch_instance(client, inst, folder)
    got = fetch_instance(client, next(iter(plan.todo)), folder)
    assert sorted(p for p in tmp_path.rglob('*') if p.is_file()) == [got] == [folder/'1.2.3/1.2.3.1/1.2.3.1.1.dcm']
    assert not [p for m, p, q in pacs.asked if '..' in p or '1.2.03' in p or 'abs' in p], pacs.asked

def test_one_sop_uid_in_two_studies_is_two_files(pacs, tmp_path):
    "Each study's instance is fetched into its own file, readable by the owner only, in folders only the owner enters."
    listed = {s: [qido(SeriesInstanceUID=f'{s}.1', SOPInstanceUID='1.2.9', Rows=9)] for s in ('1.2.1', '1.2.2')}
    def route(m, path, q):
        if ids := wado_path(path): return image(*ids)
        return Answer(as_json(listed[path.split('/')[3]])) if path.endswith('/instances') else Answer()
    pacs.route = route
    client = client_of(pacs)
    folder = tmp_path/'fetched'
    plans = [plan_study(s, study_instances(client, s), ALGO) for s in listed]
    paths = [fetch_instance(client, inst, folder) for plan in plans for inst in plan.todo]
    assert paths == [folder/'1.2.1/1.2.1.1/1.2.9.dcm', folder/'1.2.2/1.2.2.1/1.2.9.dcm']
    assert [pydicom.dcmread(p).StudyInstanceUID for p in paths] == ['1.2.1', '1.2.2']
    assert {stat.S_IMODE(p.stat().st_mode) for p in paths} == {0o600}
    folders = [folder, *(q for q in folder.rglob('*') if q.is_dir())]
    assert len(folders) == 5 and {stat.S_IMODE(q.stat().st_mode) for q in folders} == {0o700}
