"""spinexr_experiment end to end on toy plans: a bad plan refused before anything is written; the same plan on the
local executor and on a local Ray giving the same figures; the MLflow store read back through MLflow's API; a
re-run that has nothing to do; a run killed mid-way that resumes; a failing job recorded while the others finish."""
import json, os, signal, subprocess, textwrap, time
from pathlib import Path

import pandas as pd
import pytest

from conftest import command, run_cli

TOY = '{size: 64, epochs: 1, pretrained: false, bs: 8}'
FIGURES = ['fold_auroc', 'fold_sensitivity', 'fold_specificity', 'test_auroc']

@pytest.fixture(scope='module')
def prep(prepared):
    return prepared(n_studies=40, size=256, prep_size=96)

def plan_file(folder: Path, body: str, prep=None) -> Path:
    "A plan.yaml in `folder`: `body` (dedented) after a `prep:` line when `prep` is given."
    folder.mkdir(parents=True, exist_ok=True)
    text = (f'prep: {prep}\n' if prep else '') + textwrap.dedent(body)
    (folder/'plan.yaml').write_text(text)
    return folder/'plan.yaml'

def experiment(plan, out, *args, timeout=1200):
    return run_cli('spinexr_experiment', plan, '--out', out, *args, timeout=timeout)

TWO_SETTINGS = f'''
folds: 2
models: [resnet50]
classifier: {TOY}
settings:
  recipe: {{}}
  no_pos_weight: {{imbalance: none}}
'''

@pytest.fixture(scope='module')
def local_run(prep, tmp_path_factory):
    d = tmp_path_factory.mktemp('local')
    r = experiment(plan_file(d, TWO_SETTINGS, prep), d/'exp', '--parallel', '2')
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return d/'exp', r

# --- a bad plan -------------------------------------------------------------------------------------------------

BAD = [
    ('folds: 2\nmodels: [resnet50]\nsettings:\n  a: {focal_gamma: 2}\n', 'plan.yaml:5:',
     "'focal_gamma' is not a setting of a classifier"),
    ('folds: 2\nmodels: [resnet50, yolo11q]\n', 'plan.yaml:3:', "unknown model 'yolo11q'"),
    ('folds: 1\nmodels: [resnet50]\n', 'plan.yaml:2:', 'folds must be an integer of at least 2'),
    ('folds: 2\nmodels: [resnet50]\nsettings:\n  a: {epochs: many}\n', 'plan.yaml:5:',
     "epochs must be int, got 'many'"),
    ('folds: 2\nmodels: [resnet50]\nsettings:\n  a: {weights: /no/such.pt}\n', 'plan.yaml:5:',
     'weights file not found: /no/such.pt'),
    ('folds: 2\nmodels: [resnet50]\nepochs: 3\n', 'plan.yaml:4:', "unknown key 'epochs'"),
    ('folds: 2\nmodels: [resnet50]\nsettings:\n  a: {imbalance: balanced}\n', 'plan.yaml:5:',
     "unknown imbalance 'balanced'"),
]

@pytest.mark.parametrize('body,where,why', BAD)
def test_bad_plan_is_refused_before_anything_is_written(prep, tmp_path, body, where, why):
    r = experiment(plan_file(tmp_path, body, prep), tmp_path/'exp')
    assert r.returncode == 1
    assert where in r.stderr and why in r.stderr, r.stderr
    assert not (tmp_path/'exp').exists()

def test_missing_store_weights_and_unreachable_tracking(prep, tmp_path):
    plan = plan_file(tmp_path, 'folds: 2\nmodels: [resnet50]\n', prep)          # the recipe wants ImageNet weights
    env = {**os.environ, 'SPINEXR_WEIGHTS': str(tmp_path/'empty-store')}
    r = run_cli('spinexr_experiment', plan, '--out', tmp_path/'exp', env=env)
    assert r.returncode == 1 and 'plan.yaml:3:' in r.stderr and 'spinexr_weights' in r.stderr, r.stderr
    plan = plan_file(tmp_path, f'folds: 2\nmodels: [resnet50]\nclassifier: {TOY}\n', prep)
    r = experiment(plan, tmp_path/'exp', '--tracking_uri', 'http://127.0.0.1:9')
    assert r.returncode == 1 and 'http://127.0.0.1:9 cannot be reached' in r.stderr, r.stderr
    assert not (tmp_path/'exp').exists()

# --- the toy plan, locally and on Ray ---------------------------------------------------------------------------

def test_local_run_writes_tables_and_report(local_run):
    out, r = local_run
    res = pd.read_csv(out/'results.csv')
    assert len(res) == 4 and (res.status == 'ok').all()
    assert sorted(zip(res.setting, res.fold)) == [('no_pos_weight', 0), ('no_pos_weight', 1), ('recipe', 0),
                                                  ('recipe', 1)]
    assert res[FIGURES].notna().all().all() and res[FIGURES].apply(lambda c: c.between(0, 1)).all().all()
    summary = pd.read_csv(out/'summary.csv')
    auroc = summary[(summary.setting == 'recipe') & (summary.figure == 'fold_auroc')].iloc[0]
    assert auroc.n == 2 and auroc.ci_low <= auroc['mean'] <= auroc.ci_high
    assert auroc['mean'] == pytest.approx(res[res.setting == 'recipe'].fold_auroc.mean())
    cmp = pd.read_csv(out/'comparisons.csv')
    d = cmp[(cmp.setting == 'no_pos_weight') & (cmp.figure == 'fold_auroc')].iloc[0]
    by = res.set_index(['setting', 'fold']).fold_auroc
    assert d.reference == 'recipe' and d.difference == pytest.approx((by['no_pos_weight'] - by['recipe']).mean())
    page = (out/'report.html').read_text()
    assert 'no_pos_weight' in page and 'data:image/png;base64,' in page
    assert '4 jobs ok, 0 failed' in r.stdout

def test_ray_gives_the_same_figures(local_run, prep, tmp_path):
    "The local run's first setting again, on Ray: the same jobs give the same figures (one setting keeps CI short)."
    out, _ = local_run
    one = TWO_SETTINGS.replace('  no_pos_weight: {imbalance: none}\n', '')
    r = experiment(plan_file(tmp_path, one, prep), tmp_path/'exp', '--executor', 'ray', '--parallel', '2')
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert '(ray, 2 at once, 1 threads each)' in r.stdout
    local, ray = (pd.read_csv(o/'results.csv').set_index(['setting', 'fold']).sort_index()
                  for o in (out, tmp_path/'exp'))
    assert list(ray.index) == [('recipe', 0), ('recipe', 1)]
    pd.testing.assert_frame_equal(local.loc[ray.index, FIGURES], ray[FIGURES], check_exact=False, atol=1e-6)

def test_runs_are_in_mlflow(local_run):
    from mlflow import MlflowClient
    out, _ = local_run
    client = MlflowClient(tracking_uri=f'sqlite:///{out.absolute()}/mlruns/mlflow.db')
    exp = client.get_experiment_by_name('plan')
    runs = client.search_runs([exp.experiment_id])
    assert sorted(r.info.run_name for r in runs) == sorted(f'resnet50/{s}/fold{f}-seed0'
                                                          for s in ('recipe', 'no_pos_weight') for f in (0, 1))
    res = pd.read_csv(out/'results.csv').set_index(['setting', 'fold'])
    for run in runs:
        p, m = run.data.params, run.data.metrics
        assert (p['arch'], p['size'], p['epochs']) == ('resnet50', '64', '1') and run.info.status == 'FINISHED'
        assert m['fold_auroc'] == pytest.approx(res.fold_auroc[(p['setting'], int(p['fold']))])
        history = client.get_metric_history(run.info.run_id, 'valid_loss')
        assert [h.step for h in history] == [0]

def test_rerun_has_nothing_to_do(local_run):
    out, _ = local_run
    before = {p: p.stat().st_mtime_ns for p in (out/'runs').rglob('*') if p.is_file()}
    r = experiment(out/'plan.yaml', out)
    assert r.returncode == 0, r.stderr[-2000:]
    assert '4 jobs, 4 already done, 0 to run' in r.stdout
    assert {p: p.stat().st_mtime_ns for p in (out/'runs').rglob('*') if p.is_file()} == before
    from mlflow import MlflowClient
    client = MlflowClient(tracking_uri=f'sqlite:///{out.absolute()}/mlruns/mlflow.db')
    assert len(client.search_runs([client.get_experiment_by_name('plan').experiment_id])) == 4   # not logged twice

# --- killed, resumed, and a job that fails ----------------------------------------------------------------------

def test_killed_run_resumes_and_a_failing_job_is_recorded(prep, tmp_path):
    garbage = tmp_path/'garbage.pt'
    garbage.write_bytes(b'not a state dict')
    plan = plan_file(tmp_path, f'''
        folds: 2
        models: [resnet50]
        classifier: {TOY}
        settings:
          recipe: {{}}
          broken: {{pretrained: true, weights: {garbage}}}
        ''', prep)
    out = tmp_path/'exp'
    first = out/'runs'/'resnet50'/'recipe'/'fold0-seed0'/'job.json'
    p = subprocess.Popen([command('spinexr_experiment'), plan, '--out', out, '--parallel', '1'],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        t0 = time.time()
        while not (first.is_file() and json.loads(first.read_text()).get('status') == 'ok'):
            assert p.poll() is None and time.time() - t0 < 600, 'the first job did not finish'
            time.sleep(0.5)
        os.killpg(p.pid, signal.SIGKILL)
    finally:
        if p.poll() is None: os.killpg(p.pid, signal.SIGKILL)
        p.wait()
    done_at = first.stat().st_mtime_ns
    r = experiment(plan, out, '--parallel', '1')
    assert r.returncode == 1, r.stdout[-3000:]
    assert '4 jobs, 1 already done, 3 to run' in r.stdout
    assert first.stat().st_mtime_ns == done_at
    res = pd.read_csv(out/'results.csv')
    assert res.set_index(['setting', 'fold']).status.to_dict() == {('recipe', 0): 'ok', ('recipe', 1): 'ok',
                                                                   ('broken', 0): 'failed', ('broken', 1): 'failed'}
    assert res[res.status == 'failed'].error.str.contains('garbage.pt').all(), res.error.tolist()
    assert '2 jobs ok, 2 failed' in r.stdout
    assert set(pd.read_csv(out/'summary.csv').setting) == {'recipe'}
    assert 'garbage.pt' in (out/'report.html').read_text()
