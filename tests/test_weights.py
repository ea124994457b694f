"""The weights store end to end, as a user meets it: an empty store, a full-scale command that stops before training,
the same command training after `spinexr_weights import` of locally made files, and a damaged file refused.
No network."""
import json, os, time
from functools import partial
from pathlib import Path

import pytest

from conftest import run_cli

run = partial(run_cli, timeout=900)      # the commands train: allow them the time (env= passes through)

@pytest.fixture(scope='module')
def prep(prepared):
    return prepared(n_studies=30, size=256, prep_size=128)

@pytest.fixture(scope='module')
def carried(tmp_path_factory):
    "A store filled from locally made files, as `spinexr_weights fetch` would fill one on a connected machine."
    import timm
    from safetensors.torch import save_file
    from ultralytics import YOLO
    d = tmp_path_factory.mktemp('files')
    save_file(timm.create_model('resnet50', pretrained=False).state_dict(), str(d/'resnet50.safetensors'))
    YOLO('yolo11n.yaml', task='detect', verbose=False).save(str(d/'yolo11n.pt'))
    store = d/'carried'
    for f, name in (('resnet50.safetensors', 'resnet50'), ('yolo11n.pt', 'yolo11n')):
        r = run('spinexr_weights', 'import', d/f, '--name', name, '--store', store)
        assert r.returncode == 0, r.stderr
    return store

@pytest.fixture
def env(tmp_path):
    "An empty store of this test's own."
    return dict(os.environ, SPINEXR_WEIGHTS=str(tmp_path/'store'), SPINEXR_THREADS='1')

CLS = ['--arch', 'resnet50', '--size', '64', '--epochs', '1', '--bs', '8']
DET = ['--model', 'yolo11n.yaml', '--imgsz', '128', '--epochs', '1', '--batch', '8', '--workers', '0']

def test_empty_store_stops_before_training(prep, tmp_path, env):
    r = run('spinexr_weights', 'list', env=env)
    assert r.returncode == 0 and '0 entries' in r.stdout
    for cmd, args, name in (('spinexr_train_cls', CLS, 'resnet50'), ('spinexr_train_det', DET, 'yolo11n')):
        t0 = time.time()
        r = run(cmd, '--data', prep, '--out', tmp_path/cmd, *args, env=env)
        assert r.returncode == 1 and 'Traceback' not in r.stderr, r.stderr[-2000:]
        for hint in (f'spinexr_weights fetch --only {name}', 'spinexr_weights import', '--no_pretrained'):
            assert hint in r.stderr
        assert time.time() - t0 < 60 and not (tmp_path/cmd).exists()       # in seconds, and nothing left behind

def test_import_then_train(prep, carried, tmp_path, env):
    r = run('spinexr_weights', 'import', carried, env=env)
    assert r.returncode == 0, r.stderr
    listed = run('spinexr_weights', 'list', env=env)
    assert listed.returncode == 0 and 'resnet50' in listed.stdout and 'yolo11n' in listed.stdout
    manifest = json.loads((Path(env['SPINEXR_WEIGHTS'])/'weights.json').read_text())['weights']
    r = run('spinexr_train_cls', '--data', prep, '--out', tmp_path/'cls', *CLS, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    cfg = json.loads((tmp_path/'cls'/'config.json').read_text())
    assert cfg['used_pretrained'] is True and cfg['pretrained_sha256'] == manifest['resnet50']['sha256']
    # the recipe, and the flags given
    assert (cfg['lr'], cfg['wd'], cfg['schedule'], cfg['size'], cfg['epochs']) == (3e-4, 1e-2, 'one_cycle', 64, 1)
    r = run('spinexr_train_det', '--data', prep, '--out', tmp_path/'det', *DET, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    det = json.loads((tmp_path/'det'/'config.json').read_text())
    n, total = map(int, det['pretrained_tensors'].split('/'))
    assert det['used_pretrained'] and det['pretrained_sha256'] == manifest['yolo11n']['sha256']
    assert 0.85 * total < n < total
    assert not (tmp_path/'det'/'.start.pt').exists()

def test_damaged_store_file_is_refused(prep, carried, tmp_path, env):
    assert run('spinexr_weights', 'import', carried, env=env).returncode == 0
    f = Path(env['SPINEXR_WEIGHTS'])/'resnet50.pt'
    data = bytearray(f.read_bytes()); data[len(data) // 2] ^= 1; f.write_bytes(bytes(data))
    r = run('spinexr_weights', 'list', env=env)
    assert r.returncode == 1 and 'no longer match' in r.stderr
    r = run('spinexr_train_cls', '--data', prep, '--out', tmp_path/'cls', *CLS, env=env)
    assert r.returncode == 1 and 'resnet50.pt' in r.stderr and not (tmp_path/'cls').exists()

def test_fetch_offline_fails_fast(tmp_path, env):
    t0 = time.time()
    offline = {**env, 'HF_ENDPOINT': 'http://127.0.0.1:9'}                # a closed local port
    r = run('spinexr_weights', 'fetch', '--only', 'densenet121', env=offline)
    assert r.returncode == 1 and 'looks offline' in r.stderr and 'spinexr_weights import' in r.stderr
    assert time.time() - t0 < 30 and not Path(env['SPINEXR_WEIGHTS']).exists()

@pytest.mark.parametrize('cmd,cfg', [('spinexr_train_cls', 'ClsConfig'), ('spinexr_train_det', 'DetConfig')])
def test_help_lists_every_setting(cmd, cfg):
    "Every setting of the config has a flag, documented by the config's own comment."
    import dataclasses, importlib
    from fastcore.docments import docments
    cls = getattr(importlib.import_module('spinexr.classify' if cfg == 'ClsConfig' else 'spinexr.detect'), cfg)
    h = ' '.join(run(cmd, '--help').stdout.split())
    docs = docments(cls)
    for f in dataclasses.fields(cls):
        if f.name in cls.filled_in: continue
        flag = f'--no_{f.name}' if f.default is True else f'--{f.name}'
        assert flag in h, flag
        if docs.get(f.name) and f.name != 'pretrained': assert docs[f.name].split()[0] in h, (f.name, docs[f.name])
