import json, os, shutil, subprocess, sys
from urllib.parse import urlparse
from collections import Counter
from pathlib import Path
import numpy as np
import pandas as pd
import pytest

BIN = Path(sys.executable).parent    # the console commands of the package under test are installed here

@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    "Keep spinexr's cache (ultralytics settings, fonts) out of the home directory during tests."
    monkeypatch.setenv('SPINEXR_CACHE', str(tmp_path_factory.getbasetemp()/'cache'))

def tree_digest(root: Path) -> dict:
    "Path -> (sha1, mtime_ns) of every file under root: any change to the tree changes it."
    import hashlib
    return {str(p.relative_to(root)): (hashlib.sha1(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(root.rglob('*')) if p.is_file()}

def command(name: str) -> str:
    "Path of a console command installed beside this Python (`run_cli` runs it; tests that must `Popen` call this)."
    return str(BIN/name)

_command = command   # for run_cli, whose first parameter is named `command`

def run_cli(command: str, *args, timeout: float = 300, env: dict | None = None, **kw) -> subprocess.CompletedProcess:
    "Run the console command `command` (beside this Python) with `args`, each str()-ed; its output captured as text."
    return subprocess.run([_command(command), *map(str, args)], capture_output=True, text=True, timeout=timeout,
                          env=env, **kw)

def run_prep(*args, timeout: float = 300) -> subprocess.CompletedProcess:
    "`spinexr_prep ARGS --quiet`."
    return run_cli('spinexr_prep', *args, '--quiet', timeout=timeout)

# --- shared phantom releases and prep trees ----------------------------------------------------------------
# Session-scoped (one per pytest-xdist worker): tests only read them. A test that changes a release works on a copy
# in its tmp_path (`release_copy`, or shutil.copytree); the source data is never modified.

@pytest.fixture(scope='session')
def phantom_release(tmp_path_factory):
    """`phantom_release(name='phantom', **cfg)`: the phantom release of `PhantomConfig(**cfg)` in a folder `name`, made
    once per session; read it only."""
    from spinexr.phantom import PhantomConfig, make_phantom
    made = {}
    def get(name: str = 'phantom', **cfg) -> Path:
        key = (name, *sorted(cfg.items()))
        if key not in made:
            root = tmp_path_factory.mktemp('release')/name
            make_phantom(root, PhantomConfig(**cfg), workers=2, progress=False)
            made[key] = root
        return made[key]
    return get

@pytest.fixture(scope='session')
def release(phantom_release) -> Path:
    "A small phantom release: 8 studies at 400 px, JPEG 2000 as the real one, a third MONOCHROME1."
    return phantom_release(n_studies=8, seed=5, size=400, mono1_frac=0.35)

@pytest.fixture
def release_copy(release, tmp_path) -> Path:
    "A copy of `release` in this test's tmp_path, for a test that changes it."
    return Path(shutil.copytree(release, tmp_path/'rel'))

@pytest.fixture(scope='session')
def prepared(tmp_path_factory):
    ("`prepared(**kw)`: `spinexr.prep.prepared_phantom(**kw)`, the prep tree of a phantom, made once per session, in "
     "a folder the session's pytest-xdist workers share (prepared_phantom and tiny_bundle lock while they make one).")
    from spinexr.prep import prepared_phantom
    base = tmp_path_factory.getbasetemp()
    root = (base.parent if os.environ.get('PYTEST_XDIST_WORKER') else base)/'prepared'
    root.mkdir(exist_ok=True)
    return lambda **kw: prepared_phantom(root=root, **kw)

CHROMIUM = '/usr/bin/chromium'       # Debian's, driven by Playwright (no `playwright install`)
CHROMIUM_ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
                 '--disable-component-update', '--disable-sync', '--no-first-run']
SHOTS = Path(__file__).resolve().parents[1]/'screenshots'   # ignored by git

# What the tests need from the system, installed by one apt line (README's test section names it; .ci/run runs it)
APT_LINE = 'apt-get install -y chromium orthanc orthanc-dicomweb dicom3tools'

def require_system(path: str, package: str):
    "Skip the test when the system program `path` is not installed, saying how to install it; in CI (`CI` set), fail."
    if Path(path).exists(): return
    msg = f"{path} not found: install Debian's {package} ({APT_LINE})"
    if os.environ.get('CI'): pytest.fail(msg)
    pytest.skip(msg)

@pytest.fixture(scope='module')
def browser():
    "Debian's chromium, headless, driven by Playwright (one per test module)."
    if os.environ.get('SPINEXR_SKIP_BROWSER') == '1': pytest.skip('SPINEXR_SKIP_BROWSER=1: browser check skipped')
    require_system(CHROMIUM, 'chromium')
    try: from playwright.sync_api import sync_playwright
    except ImportError: pytest.fail('playwright is not installed (pip install playwright; it drives Debian\'s '
                                    'chromium, so `playwright install` is not needed)')
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()

class Visit:
    "A page opened in a fresh browser context, with every request, failed response and script error it caused."
    def __init__(self, browser, url):
        self.ctx = browser.new_context(viewport={'width': 1280, 'height': 900})
        self.page, self.requests, self.failed, self.errors = self.ctx.new_page(), [], [], []
        self.page.on('request', lambda r: self.requests.append(r.url))
        self.page.on('response', lambda r: r.status >= 400 and self.failed.append(f'{r.status} {r.url}'))
        self.page.on('requestfailed', lambda r: self.failed.append(f'failed {r.url}'))
        self.page.on('pageerror', lambda e: self.errors.append(str(e)))
        self.resp = self.page.goto(url, wait_until='networkidle')
    def foreign_hosts(self) -> set:
        return {urlparse(u).hostname for u in self.requests
                if urlparse(u).scheme in ('http', 'https', 'ws', 'wss') and urlparse(u).hostname != '127.0.0.1'}
    def close(self): self.ctx.close()

def pytest_configure(config):
    # VinDr-SpineXR's ids (and the phantom's) are 32-hex strings, not valid DICOM UIDs: pydicom warns on each.
    config.addinivalue_line('filterwarnings', 'ignore:Invalid value for VR UI:UserWarning')
    # Under pytest-xdist (README's `-n 2`) the workers share the cores: a torch thread per core in each would
    # oversubscribe them. Set before torch is imported; the commands the tests start inherit it.
    workers = int(os.environ.get('PYTEST_XDIST_WORKER_COUNT') or 1)
    if workers > 1 and 'SPINEXR_THREADS' not in os.environ:
        os.environ['SPINEXR_THREADS'] = str(max(1, len(os.sched_getaffinity(0)) // workers))
        os.environ.setdefault('OMP_NUM_THREADS', os.environ['SPINEXR_THREADS'])

# The reliability suite's counts (bad-input kinds tried, faults injected, files lost, prep's peak RSS), summed
# over the processes that ran its tests: this one, or each pytest-xdist worker, which hands its counts over.
_WORKER_COUNTS = []

def _counts():
    mod = sys.modules.get('test_reliability')
    return None if mod is None else dict(tally=dict(mod.TALLY), rss={str(k): v for k, v in mod.RSS_MIB.items()})

def pytest_sessionfinish(session):
    out = getattr(session.config, 'workeroutput', None)      # set on an xdist worker only
    if out is not None and _counts(): out['reliability'] = json.dumps(_counts())

@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error):                       # xdist: a worker finished
    c = getattr(node, 'workeroutput', {}).get('reliability')
    if c: _WORKER_COUNTS.append(json.loads(c))

def pytest_terminal_summary(terminalreporter):
    parts = _WORKER_COUNTS or ([_counts()] if _counts() else [])
    tally, rss = Counter(), {}
    for c in parts: tally.update(c['tally']); rss.update(c['rss'])
    if not tally: return
    mib = ', '.join(f'{v:.1f} MiB for {n} images' for n, v in sorted(rss.items(), key=lambda kv: int(kv[0])))
    terminalreporter.write_line(f"reliability: {tally['bad-input kinds']} bad-input kinds tried, "
                                f"{tally['faults injected']} faults injected, {tally['5xx']} 5xx answers to bad input, "
                                f"{tally['files lost']} files lost"
                                + (f'; spinexr_prep peak RSS {mib}' if mib else ''))

def matched_boxes(a: pd.DataFrame, b: pd.DataFrame) -> list:
    "For each box of `a`, best first: (IoU, score difference) with its best unused match in `b` (same image, class)."
    from pycocotools import mask
    xywh = lambda d: np.c_[d.xmin, d.ymin, d.xmax - d.xmin, d.ymax - d.ymin].astype(float)
    out, used = [], set()
    for r in a.sort_values('score', ascending=False).itertuples():
        c = b[(b.image_id == r.image_id) & (b.lesion_type == r.lesion_type) & ~b.index.isin(used)]
        if not len(c): out.append((0.0, 1.0)); continue
        ious = mask.iou(xywh(pd.DataFrame([r._asdict()])), xywh(c), [0] * len(c))[0]
        k = int(ious.argmax()); used.add(c.index[k])
        out.append((float(ious[k]), abs(float(c.score.iloc[k]) - r.score)))
    return out
