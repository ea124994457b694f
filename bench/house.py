"""The house in figures: per module, its lines, its median and largest exported cell, its exported cells over 40
lines, its longest function, its lines over the limit (but those nbdev writes itself: `__all__` and the module
docstring) and its exported definitions with no test after them.
`python bench/house.py [REPO]` (default: this checkout).

A definition "has a test after it" when the next code cell of its notebook is not itself exported: a test, a
demonstration or a figure that runs it (nbdev's `show_doc` cells do not count)."""
import ast, json, statistics, sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]/'tests'))
from test_style import LINE_LIMIT as LIMIT      # settings.ini's line_limit, read in one place

def cells(nb: Path) -> list:
    "(exported?, source) of each code cell of a notebook."
    out = []
    for c in json.loads(nb.read_text())['cells']:
        if c['cell_type'] != 'code': continue
        s = ''.join(c['source'])
        if s.strip().startswith('show_doc('): continue
        first = [l for l in s.splitlines() if l.startswith('#|')]
        out.append((any(l.split()[1:2] == ['export'] or l.split()[1:2] == ['exports'] for l in first), s))
    return out

def definitions(src: str) -> list:
    "Top-level public function and class names defined in `src`."
    try: tree = ast.parse('\n'.join(l for l in src.splitlines() if not l.startswith(('#|', '%', '!'))))
    except SyntaxError: return []
    return [n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef)) and not n.name.startswith('_')]

def notebook_stats(nb: Path) -> dict:
    cs = cells(nb)
    exported = [(i, s) for i, (e, s) in enumerate(cs) if e]
    untested = sum(len(definitions(s)) for i, s in exported if i + 1 >= len(cs) or cs[i + 1][0])
    sizes = [len(s.splitlines()) for _, s in exported]
    return dict(largest_cell=max(sizes, default=0), sizes=sizes, cells_over_40=sum(n > 40 for n in sizes),
                untested=untested, defs=sum(len(definitions(s)) for _, s in exported))

def generated_lines(py: Path) -> set:
    "Line numbers nbdev writes itself: the module docstring (a notebook's summary) and `__all__`."
    tree, out = ast.parse(py.read_text()), set()
    for n in tree.body:
        doc = isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant) and n is tree.body[0]
        if doc or (isinstance(n, ast.Assign) and any(getattr(t, 'id', '') == '__all__' for t in n.targets)):
            out |= set(range(n.lineno, n.end_lineno + 1))
    return out

def longest_function(py: Path) -> int:
    tree = ast.parse(py.read_text())
    return max((n.end_lineno - n.lineno + 1 for n in ast.walk(tree)
                if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))),
               default=0)

def module_of(nb: Path, repo: Path):
    for c in json.loads(nb.read_text())['cells']:
        for l in ''.join(c['source']).splitlines():
            if l.startswith('#| default_exp'): return repo/'spinexr'/f"{l.split()[2].replace('.', '/')}.py"

def table(repo: Path) -> list:
    rows = []
    for nb in sorted((repo/'nbs').glob('[0-9]*.ipynb')):
        py = module_of(nb, repo)
        if py is None or not py.exists(): continue
        lines, gen = py.read_text().splitlines(), generated_lines(py)
        over = sum(len(l) > LIMIT for i, l in enumerate(lines, 1) if i not in gen)
        rows.append(dict(notebook=nb.stem, module=py.stem, lines=len(lines), **notebook_stats(nb),
                         longest_function=longest_function(py), over_limit=over))
    return rows

def tests_over_limit(repo: Path) -> int:
    return sum(len(l) > LIMIT for p in (repo/'tests').glob('*.py') for l in p.read_text().splitlines())

if __name__ == '__main__':
    repo = Path(sys.argv[1] if len(sys.argv) > 1 else '.')
    rows = table(repo)
    for r in rows: r['median_cell'] = statistics.median(r['sizes'] or [0])
    cols = ['notebook', 'lines', 'median_cell', 'largest_cell', 'cells_over_40', 'longest_function', 'over_limit',
            'defs', 'untested']
    print('| ' + ' | '.join(cols) + ' |'); print('|' + ' --- |' * len(cols))
    for r in rows: print('| ' + ' | '.join(str(r[c]) for c in cols) + ' |')
    tot = {c: sum(r[c] for r in rows) for c in ('lines', 'cells_over_40', 'over_limit', 'defs', 'untested')}
    every = [n for r in rows for n in r['sizes']]
    print(f"| total | {tot['lines']} | {statistics.median(every)} | {max(every)} | {tot['cells_over_40']} | "
          f"{max(r['longest_function'] for r in rows)} | {tot['over_limit']} | {tot['defs']} | {tot['untested']} |")
    print(f'tests/ lines over {LIMIT}: {tests_over_limit(repo)}')
