"""The classifier command end to end on a tiny phantom: run directory, DDP on CPU, bad input.
Damaged and unsafe model files, kill -9, reproducibility: tests/test_reliability.py."""
import json, os

import pandas as pd
import pytest
import torch

from conftest import command, run_cli
from spinexr.classify import load_classifier

TINY = ['--arch', 'resnet50', '--size', '64', '--epochs', '1', '--bs', '8', '--no_pretrained']

@pytest.fixture(scope='module')
def prep(prepared):
    return prepared(n_studies=40, size=256, prep_size=96)

def train(prep, out, *extra, launcher=(), env=None):
    "spinexr_train_cls at a tiny scale; `launcher`: a console command and its arguments that start it (torchrun)."
    cmd = (*launcher, command('spinexr_train_cls')) if launcher else ('spinexr_train_cls',)
    return run_cli(*cmd, '--data', prep, '--out', out, *TINY, *extra, timeout=900, env=env)

def test_run_directory(prep, tmp_path):
    store = f'sqlite:///{tmp_path}/mlflow.db'
    r = train(prep, tmp_path/'run', '--tracking_uri', store)
    assert r.returncode == 0, r.stderr[-2000:]
    assert 'test AUROC' in r.stdout
    files = {p.name for p in (tmp_path/'run').iterdir()}
    assert {'config.json', 'model.pt', 'history.csv', 'curves.png', 'metrics.json', 'preds_val.csv', 'preds_test.csv',
            'preds_val_tta.csv', 'preds_test_tta.csv'} <= files
    assert '.checkpoints' not in files
    m = json.loads((tmp_path/'run'/'metrics.json').read_text())
    for k in ('auroc', 'sensitivity', 'specificity', 'f1', 'threshold', 'ci'): assert k in m['test']
    assert m['test']['threshold_source'].startswith('youden on preds_val')
    from mlflow import MlflowClient                  # --tracking_uri: the run, read back through MLflow's API
    client = MlflowClient(tracking_uri=store)
    [run] = client.search_runs([client.get_experiment_by_name('spinexr_train_cls').experiment_id])
    assert (run.info.run_name, run.data.params['arch']) == ('run', 'resnet50')
    assert run.data.metrics['test.auroc'] == pytest.approx(m['test']['auroc'])
    epochs = len(pd.read_csv(tmp_path/'run'/'history.csv'))
    assert len(client.get_metric_history(run.info.run_id, 'valid_loss')) == epochs
    labels = pd.read_csv(prep/'labels.csv')
    preds = pd.read_csv(tmp_path/'run'/'preds_test.csv')
    assert sorted(preds.image_id) == sorted(labels.image_id[labels.split == 'test'])
    assert preds.prob.between(0, 1).all()
    state = torch.load(tmp_path/'run'/'model.pt', weights_only=True)   # a plain state_dict
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    model, cfg = load_classifier(tmp_path/'run')
    assert cfg.arch == 'resnet50' and cfg.used_pretrained is False

def test_ddp_on_cpu_with_two_gloo_processes(prep, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS='1')
    r = train(prep, tmp_path/'ddp', launcher=['torchrun', '--nproc_per_node', '2'], env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count('test AUROC') == 1          # only rank 0 reports and writes
    assert (tmp_path/'ddp'/'model.pt').exists() and (tmp_path/'ddp'/'metrics.json').exists()
    load_classifier(tmp_path/'ddp')

@pytest.mark.parametrize('args,message', [
    (['--arch', 'vgg16'], "arch must be one of"),
    (['--weights', '/nonexistent/w.pth'], 'weights file not found'),
])
def test_bad_settings(prep, tmp_path, args, message):
    r = run_cli('spinexr_train_cls', '--data', prep, '--out', tmp_path/'run', *TINY, *args, timeout=300)
    assert r.returncode == 1 and message in r.stderr and 'Traceback' not in r.stderr

def test_not_a_prep_tree(tmp_path):
    r = run_cli('spinexr_train_cls', '--data', tmp_path, '--out', tmp_path/'run', *TINY)
    assert r.returncode == 1 and 'no labels.csv' in r.stderr and 'Traceback' not in r.stderr
