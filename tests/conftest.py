import os, sys
from pathlib import Path
import pytest

BIN = Path(sys.executable).parent

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
    "Path of a console command installed beside this Python."
    return str(BIN/name)

def pytest_configure(config):
    # VinDr-SpineXR's ids (and the phantom's) are 32-hex strings, not valid DICOM UIDs: pydicom warns on each.
    config.addinivalue_line('filterwarnings', 'ignore:Invalid value for VR UI:UserWarning')

def pytest_terminal_summary(terminalreporter):
    "The reliability suite's counts (bad-input kinds tried, faults injected, files lost), when it ran."
    mod = sys.modules.get('test_reliability')
    if mod is not None and mod.TALLY: terminalreporter.write_line(mod.tally_line())
