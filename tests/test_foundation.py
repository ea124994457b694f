"Integration tests of the foundation: console commands, the phantom release, the annotation loader on real-format files."
import configparser, hashlib, subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest

from conftest import command
from spinexr.annotations import load_release, read_annotations, image_table, split_train_val
from spinexr.core import InputError, LESION_TYPES

ROOT = Path(__file__).resolve().parents[1]

def console_scripts():
    cfg = configparser.ConfigParser(delimiters=['='])
    cfg.read(ROOT/'settings.ini')
    return [line.split('=')[0].strip() for line in cfg['DEFAULT']['console_scripts'].split()]

@pytest.mark.parametrize('name', console_scripts())
def test_every_command_has_help(name):
    r = subprocess.run([command(name), '--help'], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert 'usage:' in r.stdout and len(r.stdout.splitlines()) > 3

def run_phantom(out, *args):
    r = subprocess.run([command('spinexr_phantom'), str(out), *args], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return r.stdout

@pytest.fixture(scope='module')
def phantoms(tmp_path_factory):
    d = tmp_path_factory.mktemp('phantoms')
    args = ['--n_studies', '40', '--size', '320']
    out = run_phantom(d/'a', *args, '--seed', '1')
    run_phantom(d/'b', *args, '--seed', '1', '--workers', '1')
    run_phantom(d/'c', *args, '--seed', '2')
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

def digest(folder):
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob('*')) if p.is_file() and p.name != 'phantom.json'}

def test_phantom_is_deterministic(phantoms):
    d, _ = phantoms
    for split in ('train', 'test'):
        a, b, c = ((d/x/'annotations'/f'{split}.csv').read_bytes() for x in 'abc')
        assert a == b and a != c
    assert digest(d/'a') == digest(d/'b')   # DICOMs too, whatever the number of workers

def test_phantom_refuses_a_folder_it_did_not_write(tmp_path):
    (tmp_path/'mine.txt').write_text('keep')
    r = subprocess.run([command('spinexr_phantom'), str(tmp_path), '--size', '128'], capture_output=True, text=True)
    assert r.returncode != 0 and 'not a phantom' in r.stderr
    assert (tmp_path/'mine.txt').read_text() == 'keep'

# Each malformation of a real-format CSV is an error naming the line in the file.
def corrupt(src, dst, line, col, value):
    df = pd.read_csv(src, dtype=str, keep_default_na=False)
    df.loc[line - 2, col] = value
    df.to_csv(dst, index=False)
    return dst

def first_row(csv, normal):
    df = pd.read_csv(csv, dtype=str, keep_default_na=False)
    return int(np.flatnonzero((df.lesion_type == 'No finding') == normal)[0]) + 2

@pytest.mark.parametrize('normal,col,value,message', [
    (False, 'lesion_type', 'Fracture', "unknown lesion_type 'Fracture'"),
    (False, 'xmin', '', 'four finite numbers'),
    (False, 'ymax', 'nan', "ymax 'nan' is not a number"),
    (False, 'xmax', '-5', 'inverted or empty box'),
    (False, 'image_id', '../../x', "image_id '../../x' is not a safe id"),
    (False, 'series_id', 'a b', 'not a safe id'),
    (True, 'xmin', '3', 'must have empty box fields'),
    (True, 'rad_id', '', 'empty rad_id'),
])
def test_loader_names_the_bad_row(phantoms, tmp_path, normal, col, value, message):
    src = phantoms[0]/'a'/'annotations'/'train.csv'
    line = first_row(src, normal)
    with pytest.raises(InputError) as e:
        read_annotations(corrupt(src, tmp_path/'bad.csv', line, col, value))
    assert f'row {line}' in str(e.value) and message in str(e.value) and 'bad.csv' in str(e.value)

def test_loader_rejects_missing_columns(phantoms, tmp_path):
    df = pd.read_csv(phantoms[0]/'a'/'annotations'/'train.csv', dtype=str)
    df.drop(columns='rad_id').to_csv(tmp_path/'bad.csv', index=False)
    with pytest.raises(InputError, match=r"missing columns \['rad_id'\]"): read_annotations(tmp_path/'bad.csv')

def test_split_of_the_phantom(phantoms):
    imgs = split_train_val(image_table(load_release(phantoms[0]/'a')), 0.15, seed=0)
    assert set(imgs.split) == {'train', 'val', 'test'}
    sides = imgs.groupby('study_id').split.nunique()
    assert sides.max() == 1
