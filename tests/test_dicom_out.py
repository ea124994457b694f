"""DICOM results as a hospital's systems take them: `spinexr_predict --dicom` on files with the release's headers
(presentation states and SRs read back, checked by dciodvfy, one rendered), and `spinexr_predict --dicomweb` round
trips through Debian's Orthanc with its DICOMweb plugin, started here on a loopback port."""
import json, os, shutil, socket, subprocess, time
from pathlib import Path

import httpx
import numpy as np
import pydicom
import pytest
from conftest import SHOTS, command, require_system, run_cli

from spinexr.dicom_out import (conformance, dciodvfy_path, presentation_state_boxes, render_presentation_state,
                               report_findings, result_paths)
from spinexr.bundle import bundle_sha256, tiny_bundle
from spinexr.phantom import as_distributed

ORTHANC = '/usr/sbin/Orthanc'
DICOMWEB_PLUGIN = '/usr/share/orthanc/plugins/libOrthancDicomWeb.so'
CR_IMAGE_STORAGE = '1.2.840.10008.5.1.4.1.1.1'

@pytest.fixture(scope='module')
def bundle(prepared):
    "A bundle trained for a moment on a phantom (machinery, not a model), made once per session's prep tree."
    return tiny_bundle(prepared(n_studies=100, size=512, prep_size=256))

@pytest.fixture(scope='module')
def distributed(phantom_release, tmp_path_factory) -> Path:
    "Unseen phantom DICOMs (half MONOCHROME1) with the release's headers: no SOP Class in the data set, no Modality."
    src = phantom_release(n_studies=5, seed=91, size=512, mono1_frac=0.5)
    out = tmp_path_factory.mktemp('distributed')
    for p in sorted(src.glob('*_images/*.dicom')): as_distributed(p, out/p.name)
    return out

def boxes_shown(rec, min_score):
    "The boxes of a predictions.json record that the overlay and the DICOM objects hold, scores as the label has them."
    return [dict(b, score=round(b['score'], 2)) for b in rec['boxes'] if b['score'] >= min_score]

def check_objects(rec, gsps, sr, threshold, min_score, sha):
    "The presentation state and SR of `rec`, read back from the files, say what the JSON says."
    assert presentation_state_boxes(gsps) == boxes_shown(rec, min_score)
    got = report_findings(sr)
    assert got['boxes'] == [b for b in rec['boxes'] if b['score'] >= min_score]
    assert (got['abnormal'], got['p_abnormal'], got['threshold']) == (rec['abnormal'], rec['p_abnormal'], threshold)
    assert (got['source_uid'], got['device_serial_number']) == (rec['dicom']['sop_uid'], sha)

def test_dicom_objects(bundle, distributed, tmp_path):
    """`--dicom`: per DICOM input a GSPS and an SR, named after the image, that reference the source exactly as it
    is stored (32-hex ids; SOP Class from the file meta), whose boxes read back are the JSON's, that dciodvfy passes
    apart from the source's own ids, and that a second run rewrites instead of adding; a PNG gets a warning."""
    import cv2
    inputs = Path(shutil.copytree(distributed, tmp_path/'in'))
    src = sorted(inputs.glob('*.dicom'))
    cv2.imwrite(str(inputs/'photo.png'), np.tile(np.linspace(0, 255, 64, dtype=np.uint8), (80, 1)))
    out, min_score = tmp_path/'out', 0.0    # every box: the tiny bundle's score little
    r = run_cli('spinexr_predict', bundle, inputs, '--out', out, '--dicom', '--min_score', min_score)
    assert r.returncode == 0, r.stderr[-3000:]
    pj = json.loads((out/'predictions.json').read_text())
    by_id = {x['image_id']: x for x in pj['images']}
    assert 'dicom_results' not in by_id['photo'] and any('not a DICOM file' in w for w in by_id['photo']['warnings'])
    sha = bundle_sha256(bundle)
    n_boxes, report = 0, []
    for p in src:
        rec = by_id[p.stem]
        paths = result_paths(out/'dicom', p.stem)
        assert {k: str(v.relative_to(out)) for k, v in paths.items()} == rec['dicom_results']
        check_objects(rec, paths['gsps'], paths['sr'], pj['threshold'], min_score, sha)
        source = pydicom.dcmread(p, stop_before_pixels=True)
        assert 'SOPClassUID' not in source                                    # as the release distributes it
        gsps, sr = (pydicom.dcmread(paths[k]) for k in ('gsps', 'sr'))
        ref = gsps.ReferencedSeriesSequence[0]
        assert (gsps.StudyInstanceUID, ref.SeriesInstanceUID, ref.ReferencedImageSequence[0].ReferencedSOPInstanceUID,
                ref.ReferencedImageSequence[0].ReferencedSOPClassUID) == (
            source.StudyInstanceUID, source.SeriesInstanceUID, source.SOPInstanceUID, CR_IMAGE_STORAGE)
        assert gsps.PresentationLUTShape == ('INVERSE' if source.PhotometricInterpretation == 'MONOCHROME1'
                                             else 'IDENTITY')
        assert sr.StudyInstanceUID == source.StudyInstanceUID and sr.SeriesInstanceUID != gsps.SeriesInstanceUID
        for ds in (gsps, sr): assert ds.SOPInstanceUID.startswith('2.25.') and ds.SOPInstanceUID.is_valid
        n_boxes += len(presentation_state_boxes(paths['gsps']))
        if dciodvfy_path() or os.environ.get('CI'):
            require_system('/usr/bin/dciodvfy', 'dicom3tools')
            ids = (source.StudyInstanceUID, source.SeriesInstanceUID, source.SOPInstanceUID)
            for kind in ('gsps', 'sr'):
                c = conformance(paths[kind], ids)
                assert c['errors'] == [], (kind, c['errors'])
                report.append((kind, c))
    assert n_boxes > 0, 'the objects hold no box at all: the test would check nothing'
    if report:     # dciodvfy's verdicts, for the closing note: warnings, and the errors quoting the source's ids
        SHOTS.mkdir(exist_ok=True)
        lines = []
        for kind in ('gsps', 'sr'):
            cs = [c for k, c in report if k == kind]
            lines += [f'## {kind}: {cs[0]["kind"]}, {len(cs)} files',
                      f'errors of ours: {sum(len(c["errors"]) for c in cs)}',
                      f'errors quoting the source ids: {sum(len(c["source_id_errors"]) for c in cs)}, e.g.',
                      *sorted({l.split(' - ')[1] + ' - ' + l.rsplit(' in ', 1)[-1] for c in cs
                               for l in c['source_id_errors'] if 'Illegal root' in l}),
                      'warnings:', *sorted({w for c in cs for w in c['warnings']}), '']
        (SHOTS/'dciodvfy.txt').write_text('\n'.join(lines))
    # one presentation state rendered from the files as read back (not from the JSON)
    best = max(src, key=lambda p: len(presentation_state_boxes(result_paths(out/'dicom', p.stem)['gsps'])))
    pic = render_presentation_state(result_paths(out/'dicom', best.stem)['gsps'], best, size=900)
    SHOTS.mkdir(exist_ok=True)
    cv2.imwrite(str(SHOTS/'gsps.png'), cv2.cvtColor(pic, cv2.COLOR_RGB2BGR))
    assert pic.std() > 10
    # a second run: the same files with the same UIDs, nothing added
    uids = {p.name: pydicom.dcmread(p).SOPInstanceUID for p in (out/'dicom').iterdir()}
    r = run_cli('spinexr_predict', bundle, inputs, '--out', out, '--dicom', '--min_score', min_score)
    assert r.returncode == 0, r.stderr[-3000:]
    assert {p.name: pydicom.dcmread(p).SOPInstanceUID for p in (out/'dicom').iterdir()} == uids
    assert len(uids) == 2 * len(src)

# --- a real PACS: Debian's Orthanc with its DICOMweb plugin ----------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]

@pytest.fixture(scope='module')
def orthanc(tmp_path_factory):
    "Orthanc on a free loopback port, DICOMweb at /dicom-web, storage in a throwaway folder: its base URL."
    require_system(ORTHANC, 'orthanc')
    require_system(DICOMWEB_PLUGIN, 'orthanc-dicomweb')
    root, port = tmp_path_factory.mktemp('orthanc'), free_port()
    config = dict(Name='spinexr-test', StorageDirectory=str(root/'db'), IndexDirectory=str(root/'db'),
                  HttpPort=port, DicomServerEnabled=False, RemoteAccessAllowed=False, AuthenticationEnabled=False,
                  Plugins=[DICOMWEB_PLUGIN], DicomWeb=dict(Enable=True, Root='/dicom-web/'), SaveJobs=False)
    (root/'orthanc.json').write_text(json.dumps(config))
    log = open(root/'orthanc.log', 'w')
    p = subprocess.Popen([ORTHANC, str(root/'orthanc.json')], stdout=log, stderr=subprocess.STDOUT, cwd=root)
    url = f'http://127.0.0.1:{port}'
    try:
        t0 = time.time()
        while True:
            if p.poll() is not None:
                pytest.fail(f'Orthanc exited {p.returncode}: {(root/"orthanc.log").read_text()[-2000:]}')
            try:
                if httpx.get(f'{url}/system', timeout=2).status_code == 200: break
            except httpx.TransportError: pass
            assert time.time() - t0 < 60, 'Orthanc did not answer within 60 s'
            time.sleep(0.2)
        yield url
    finally:
        p.terminate()
        try: p.wait(20)
        except subprocess.TimeoutExpired: p.kill(); p.wait()
        log.close()

def text_report(study: str) -> pydicom.Dataset:
    "A non-image instance (a Basic Text SR, as a reading radiologist's report would be) in `study`."
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = '1.2.840.10008.5.1.4.1.1.88.11'
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.Modality = study, generate_uid(), 'SR'
    ds.PatientID, ds.PatientName = '', ''
    return ds

def qido(url, path, **params) -> list:
    r = httpx.get(f'{url}/dicom-web/{path}', params=params, timeout=20)
    assert r.status_code in (200, 204), (r.status_code, r.text[:300])
    return r.json() if r.status_code == 200 and r.content else []

def test_dicomweb_round_trip(bundle, distributed, orthanc, tmp_path):
    """Images uploaded to Orthanc, predicted from it (QIDO-RS, WADO-RS) and their GSPS and SR stored back into
    their studies (STOW-RS), whose boxes, fetched back, equal predictions.json's; a second run stores nothing; a
    report in a study is skipped, a study that is not there fails, the rest go on; a server that is down is
    named at once."""
    import io
    files = sorted(distributed.glob('*.dicom'))
    for p in files:      # as a PACS receives them: Orthanc's REST upload takes the release's headers as they are
        r = httpx.post(f'{orthanc}/instances', content=p.read_bytes(), timeout=30)
        assert r.status_code == 200, r.text
    heads = {p.stem: pydicom.dcmread(p, stop_before_pixels=True) for p in files}
    studies = sorted({str(h.StudyInstanceUID) for h in heads.values()})
    assert len(studies) >= 2
    report = text_report(studies[0])
    buf = io.BytesIO(); report.save_as(buf, enforce_file_format=True)
    assert httpx.post(f'{orthanc}/instances', content=buf.getvalue(), timeout=30).status_code == 200
    web, missing = f'{orthanc}/dicom-web', '9' * 32
    out = tmp_path/'run1'
    t0 = time.time()
    r = run_cli('spinexr_predict', bundle, '--dicomweb', web, '--study', *studies, missing, '--out', out,
                '--min_score', 0)
    first_run = time.time() - t0
    assert r.returncode == 1, r.stderr[-3000:]                            # the missing study fails; the rest go on
    assert f'failed: study {missing}: no image in the study' in r.stderr
    assert f'skipped: study {studies[0]}' in r.stderr and 'not an image (Modality SR)' in r.stderr
    rows = {row['instance']: row for row in _csv(out/'dicomweb.csv')}
    assert {i for i, row in rows.items() if row['status'] == 'stored'} == set(heads)
    pj = json.loads((out/'predictions.json').read_text())
    sha = bundle_sha256(bundle)
    for rec in pj['images']:                                               # what the PACS now holds, read back
        study = str(heads[rec['image_id']].StudyInstanceUID)
        got = {}
        for modality in ('PR', 'SR'):
            found = qido(orthanc, f'studies/{study}/instances', Modality=modality, includefield='00081115')
            mine = [f for f in found if f.get('00080018', {}).get('Value', [None])[0] in
                    {pydicom.dcmread(out/rec['dicom_results'][k]).SOPInstanceUID for k in ('gsps', 'sr')}]
            assert len(mine) == 1, (modality, found)
            uid = mine[0]['00080018']['Value'][0]
            series = mine[0]['0020000E']['Value'][0]
            body = httpx.get(f'{web}/studies/{study}/series/{series}/instances/{uid}',
                             headers={'Accept': 'multipart/related; type="application/dicom"'}, timeout=30)
            assert body.status_code == 200
            got[modality] = tmp_path/f'{uid}.dcm'
            got[modality].write_bytes(_first_part(body))
        check_objects(rec, got['PR'], got['SR'], pj['threshold'], 0.0, sha)
    counts = {s: len(qido(orthanc, f'studies/{s}/instances')) for s in studies}
    assert sum(counts.values()) == len(files) + 1 + 2 * len(files)       # images, the report, two objects each
    # a second run over every study on the server: everything already there, nothing stored, nothing fetched
    out2 = tmp_path/'run2'
    r = run_cli('spinexr_predict', bundle, '--dicomweb', web, '--out', out2, '--min_score', 0)
    assert r.returncode == 0, r.stderr[-3000:]
    rows2 = _csv(out2/'dicomweb.csv')
    assert {row['instance'] for row in rows2 if row['status'] == 'already stored'} == set(heads)
    assert not any(row['status'] in ('stored', 'failed') for row in rows2)
    assert {s: len(qido(orthanc, f'studies/{s}/instances')) for s in studies} == counts
    assert not (out2/'fetched').exists() and not (out/'fetched').exists()     # patient data is not left behind
    # one new image, fetched and kept with --keep_fetched: owner-only, under its study and series
    new = pydicom.dcmread(files[0]); new.SOPInstanceUID = '1.2.826.0.1.3680043.10.999.1'
    buf = io.BytesIO(); new.save_as(buf, enforce_file_format=True)
    assert httpx.post(f'{orthanc}/instances', content=buf.getvalue(), timeout=30).status_code == 200
    out4 = tmp_path/'run4'
    r = run_cli('spinexr_predict', bundle, '--dicomweb', web, '--study', str(new.StudyInstanceUID), '--out', out4,
                '--min_score', 0, '--keep_fetched')
    assert r.returncode == 0, r.stderr[-3000:]
    kept = list((out4/'fetched').rglob('*.dcm'))
    assert [p.name for p in kept] == [f'{new.SOPInstanceUID}.dcm'], kept
    assert kept[0].stat().st_mode & 0o777 == 0o600 and (out4/'fetched').stat().st_mode & 0o777 == 0o700
    # a server that is down: named before the models load
    t0 = time.time()
    r = run_cli('spinexr_predict', bundle, '--dicomweb', f'http://127.0.0.1:{free_port()}/dicom-web', '--out',
                tmp_path/'run3', timeout=60)
    assert r.returncode == 1 and 'does not answer a study search: cannot connect' in r.stderr, r.stderr[-2000:]
    assert time.time() - t0 < min(20, first_run), 'a server that is down must be reported at once'
    # what the command line refuses at once
    r = run_cli('spinexr_predict', bundle, distributed, '--dicomweb', web)
    assert r.returncode == 1 and 'one of them' in r.stderr
    r = run_cli('spinexr_predict', bundle, distributed, '--study', studies[0])
    assert r.returncode == 1 and '--study needs --dicomweb' in r.stderr

def _csv(path) -> list:
    import csv
    with open(path, newline='') as f: return list(csv.DictReader(f))

def _first_part(response) -> bytes:
    "The body of the first part of a multipart/related WADO-RS answer."
    from email.parser import BytesParser
    from email.policy import HTTP
    head = f'Content-Type: {response.headers["content-type"]}\r\n\r\n'.encode()
    msg = BytesParser(policy=HTTP).parsebytes(head + response.content)
    return next(msg.iter_parts()).get_payload(decode=True)
