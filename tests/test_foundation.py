"""Integration tests of the foundation: console commands, the phantom release and its split.
Determinism and the loader's bad rows: tests/test_reliability.py."""
import configparser
from pathlib import Path

import pydicom
import pytest

from conftest import run_cli
from spinexr.annotations import load_release, image_table, split_train_val
from spinexr.core import LESION_TYPES

ROOT = Path(__file__).resolve().parents[1]

def console_scripts():
    cfg = configparser.ConfigParser(delimiters=['='])
    cfg.read(ROOT/'settings.ini')
    return [line.split('=')[0].strip() for line in cfg['DEFAULT']['console_scripts'].split()]

@pytest.mark.parametrize('name', console_scripts())
def test_every_command_has_help(name):
    r = run_cli(name, '--help', timeout=120)
    assert r.returncode == 0, r.stderr
    assert 'usage:' in r.stdout and len(r.stdout.splitlines()) > 3

def run_phantom(out, *args):
    r = run_cli('spinexr_phantom', out, *args, timeout=300)
    assert r.returncode == 0, r.stderr
    return r.stdout

@pytest.fixture(scope='module')
def phantoms(tmp_path_factory):
    d = tmp_path_factory.mktemp('phantoms')
    out = run_phantom(d/'a', '--n_studies', '40', '--size', '320', '--seed', '1')
    return d, out

def test_phantom_reads_as_a_release(phantoms):
    d, out = phantoms
    assert 'images in 40 studies' in out
    ann = load_release(d/'a')
    files = sorted((d/'a').glob('*_images/*.dicom'))
    assert len(files) == ann.image_id.nunique() >= 40
    assert set(ann.lesion_type) <= set(LESION_TYPES)
    for f in files:
        ds = pydicom.dcmread(f)
        assert ds.SOPInstanceUID == f.stem and len(f.stem) == 32
        assert (ds.BitsAllocated, ds.BitsStored, ds.RescaleSlope, ds.RescaleIntercept) == (16, 12, 1, 0)
        assert ds.PhotometricInterpretation in ('MONOCHROME1', 'MONOCHROME2')
        px = ds.pixel_array
        assert px.shape == (ds.Rows, ds.Columns) and max(px.shape) == 320 and px.max() < 4096
    imgs = image_table(ann)
    assert 0.3 < imgs.abnormal.mean() < 0.7
    assert imgs.groupby('study_id').split.nunique().max() == 1

def test_phantom_refuses_a_folder_it_did_not_write(tmp_path):
    (tmp_path/'mine.txt').write_text('keep')
    r = run_cli('spinexr_phantom', tmp_path, '--size', 128)
    assert r.returncode != 0 and 'not a phantom' in r.stderr
    assert (tmp_path/'mine.txt').read_text() == 'keep'

def test_split_of_the_phantom(phantoms):
    imgs = split_train_val(image_table(load_release(phantoms[0]/'a')), 0.15, seed=0)
    assert set(imgs.split) == {'train', 'val', 'test'}
    sides = imgs.groupby('study_id').split.nunique()
    assert sides.max() == 1
