"""The house style that a reader relies on, held in CI: no line of code longer than settings.ini's `line_limit`, in what
people write (the notebooks' code cells, tests/, bench/, setup.py). The modules in spinexr/ are written by
`nbdev_export` from the notebooks (CI checks that they are in sync), so the limit reaches them through the notebooks;
the lines nbdev writes itself (`__all__`, the module docstring from a notebook's summary) are its own."""
import json
from configparser import ConfigParser
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

def line_limit(root: Path = ROOT) -> int:
    "The project's line limit: `line_limit` in settings.ini, its one home."
    cfg = ConfigParser(); cfg.read(root/'settings.ini')
    return cfg.getint('DEFAULT', 'line_limit')

LINE_LIMIT = line_limit()

def long_lines(name: str, text: str) -> list:
    return [f'{name}:{i}: {len(l)} characters' for i, l in enumerate(text.splitlines(), 1) if len(l) > LINE_LIMIT]

def notebook_code(path: Path) -> str:
    "The code cells of a notebook, one after the other (line numbers count within that text)."
    cells = json.loads(path.read_text())['cells']
    return '\n'.join(''.join(c['source']) for c in cells if c['cell_type'] == 'code')

def test_no_code_line_over_the_limit():
    found = []
    for nb in sorted((ROOT/'nbs').glob('*.ipynb')):
        found += long_lines(f'nbs/{nb.name} (code cells)', notebook_code(nb))
    for p in [*sorted((ROOT/'tests').glob('*.py')), *sorted((ROOT/'bench').glob('*.py')), ROOT/'setup.py']:
        found += long_lines(str(p.relative_to(ROOT)), p.read_text())
    assert not found, f'{len(found)} lines over {LINE_LIMIT} characters:\n' + '\n'.join(found[:40])

def test_the_check_sees_a_long_line():
    assert long_lines('x.py', 'ok\n' + 'x' * (LINE_LIMIT + 1)) == [f'x.py:2: {LINE_LIMIT + 1} characters']
    assert long_lines('x.py', 'x' * LINE_LIMIT) == []
