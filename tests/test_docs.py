"""The documentation site: `spinexr_docs` builds it offline from the notebooks, and Debian's chromium (headless,
driven by Playwright) opens every page over http://127.0.0.1 and checks that it rendered.

CI builds the site once with `spinexr_docs` and points `SPINEXR_DOCS_DIR` at it; without it the site is built here.
A missing chromium skips the browser tests with the apt line that installs it (fails them in CI);
`SPINEXR_SKIP_BROWSER=1` skips them."""
import functools, http.server, json, os, re, threading, time
from pathlib import Path

import pytest
from execnb.nbio import mk_cell, new_nb, read_nb, write_nb

from conftest import SHOTS, Visit, run_cli
from spinexr.docs import doc_notebooks, page_name

ROOT = Path(__file__).resolve().parents[1]

def _title(nb_path) -> str:
    "The notebook's title: the `# ` heading of its first markdown cell."
    for c in read_nb(nb_path).cells:
        if c.cell_type == 'markdown':
            m = re.search(r'^#\s+(.+?)\s*$', c.source, re.MULTILINE)
            if m: return m.group(1)
    return Path(nb_path).stem

# (html page, title) of every notebook, in sidebar order
PAGES = [(page_name(p).replace('.md', '.html'), _title(p)) for p in doc_notebooks(ROOT/'nbs')]

def run_docs(*args, cwd=ROOT, timeout=1800):
    return run_cli('spinexr_docs', *args, cwd=cwd, timeout=timeout)

# --- the site ---------------------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def site(tmp_path_factory):
    "The built site: `$SPINEXR_DOCS_DIR` if set (CI builds it once), else built here from nbs/."
    if os.environ.get('SPINEXR_DOCS_DIR'):
        d = Path(os.environ['SPINEXR_DOCS_DIR']).resolve()
        assert (d/'index.html').exists(), f'SPINEXR_DOCS_DIR={d} holds no built site (run spinexr_docs --out {d})'
        return d
    d = tmp_path_factory.mktemp('docs')/'site'
    r = run_docs('--out', d)
    assert r.returncode == 0, f'spinexr_docs failed:\n{r.stdout[-2000:]}\n{r.stderr[-4000:]}'
    return d

@pytest.fixture(scope='module')
def server(site):
    "The site served over http on 127.0.0.1 (a free port), in a thread."
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args): pass
    srv = http.server.ThreadingHTTPServer(('127.0.0.1', 0), functools.partial(Quiet, directory=str(site)))
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f'http://127.0.0.1:{srv.server_address[1]}/'
    srv.shutdown(); srv.server_close()

def test_there_are_pages():
    assert PAGES[0] == ('index.html', 'spinexr') and len(PAGES) >= 3
    assert ('methodology.html', 'Methodology') in PAGES and ('docs.html', 'Docs') in PAGES

def test_site_files(site):
    for page, _ in PAGES: assert (site/page).is_file(), f'{page} missing from {site}'
    index = json.loads((site/'search'/'search_index.json').read_text())
    assert {p for p, _ in PAGES} <= {d['location'].split('#')[0] for d in index['docs']}
    for f in site.glob('*.html'):  # no asset from elsewhere: every script, stylesheet and image is local
        html = f.read_text()
        assert not re.findall(r'<(?:script|link|img)[^>]+(?:src|href)="(?:https?:)?//', html), f.name
    assert not list(site.rglob('*.md')), 'Markdown sources leaked into the site'

@pytest.mark.parametrize('page,title', PAGES)
def test_page_renders(browser, server, page, title):
    v = Visit(browser, server + page)
    try:
        assert v.resp is not None and v.resp.ok, f'{page}: HTTP {v.resp and v.resp.status}'
        want = 'spinexr' if page == 'index.html' else f'{title} - spinexr'
        assert v.page.title() == want
        assert v.page.inner_text('article h1').strip().rstrip('¶').strip() == title
        broken = v.page.evaluate('Array.from(document.images).filter(i => !(i.complete && i.naturalWidth > 0))'
                                 '.map(i => i.src)')
        assert broken == [], f'{page}: broken images {broken}'
        # formulas were turned into MathML at build time: no TeX source left for a script to typeset
        tex = v.page.evaluate("Array.from(document.querySelectorAll('.arithmatex'))"
                              ".filter(e => !e.querySelector('math')).map(e => e.textContent)")
        assert tex == [], f'{page}: formulas not rendered: {tex[:3]}'
        n = v.page.evaluate("fetch('search/search_index.json').then(r => r.ok ? r.json() : null)"
                            ".then(j => j && j.docs.length)")
        assert n and n >= len(PAGES), f'{page}: search index not fetched'
        assert v.foreign_hosts() == set(), f'{page}: requests left 127.0.0.1: {v.foreign_hosts()}'
        assert v.failed == [] and v.errors == [], f'{page}: {v.failed} {v.errors}'
        SHOTS.mkdir(exist_ok=True)
        v.page.screenshot(path=str(SHOTS/f'docs-{Path(page).stem}.png'))
    finally: v.close()

def test_sidebar_in_notebook_order(browser, server):
    v = Visit(browser, server + 'index.html')
    try:
        links = v.page.evaluate("Array.from(document.querySelectorAll("
                                "'nav.md-nav--primary > ul > li > a.md-nav__link'))"
                                ".map(a => [a.getAttribute('href'), a.textContent.trim()])")
        assert [tuple(l) for l in links] == PAGES
    finally: v.close()

def test_index_has_the_readme_figure(browser, server):
    v = Visit(browser, server + 'index.html')
    try:
        sizes = v.page.evaluate("Array.from(document.querySelectorAll('article img'))"
                                ".map(i => [i.naturalWidth, i.naturalHeight])")
        assert sizes and all(w > 200 and h > 200 for w, h in sizes), sizes
        v.page.screenshot(path=str(SHOTS/'docs-index-full.png'), full_page=True)
    finally: v.close()

def test_show_doc_signatures(browser, server):
    v = Visit(browser, server + 'docs.html#spinexr_docs')
    try:
        assert v.page.is_visible('h3#spinexr_docs') and v.page.is_visible('h3#render_readme')
        code = v.page.inner_text('article')
        assert 'def spinexr_docs(' in code and 'no_execute:bool=False' in code
    finally: v.close()

def test_methodology_links_its_notebooks(browser, server):
    v = Visit(browser, server + 'methodology.html')
    try:
        hrefs = set(v.page.evaluate("Array.from(document.querySelectorAll('article a'))"
                                    ".map(a => a.getAttribute('href'))"))
        for nb, page in (('03_dicom', 'dicom.html'), ('05_metrics', 'metrics.html'),
                         ('01_annotations', 'annotations.html')):
            if (ROOT/'nbs'/f'{nb}.ipynb').exists(): assert page in hrefs, f'no link to {page}'
        assert not any(h.endswith('.ipynb') for h in hrefs if h), 'a link to a notebook file was left'
        assert v.page.evaluate("document.querySelectorAll('article math').length") > 20
    finally: v.close()

def test_search_finds_a_page(browser, server):
    "Material's search (a web worker that fetches search/search_index.json) answers over http."
    v = Visit(browser, server + 'index.html')
    try:
        v.page.click('input.md-search__input')
        v.page.keyboard.type('Youden', delay=20)
        v.page.wait_for_selector('.md-search-result__item a', timeout=15000)
        hrefs = v.page.evaluate("Array.from(document.querySelectorAll('.md-search-result__item a'))"
                                ".map(a => a.getAttribute('href'))")
        assert any('methodology.html' in h for h in hrefs), hrefs
        assert any(u.endswith('/search/search_index.json') for u in v.requests), 'the search worker fetched no index'
        assert v.foreign_hosts() == set() and v.failed == []
        v.page.screenshot(path=str(SHOTS/'docs-search.png'))
    finally: v.close()

# --- the command on small notebooks ---------------------------------------------------------------------

def small_nbs(folder: Path, *extra) -> Path:
    "A notebook folder with a home page and the given (name, cells) notebooks."
    folder.mkdir(parents=True)
    write_nb(new_nb([mk_cell('# Home\n\n> A tiny site.', 'markdown'), mk_cell('print("hello " + "from a run")')]),
             folder/'index.ipynb')
    for name, cells in extra: write_nb(new_nb([mk_cell(f'# {name}', 'markdown'), *cells]), folder/name)
    return folder

def test_failing_notebook_fails_the_build(tmp_path):
    nbs = small_nbs(tmp_path/'nbs', ('10_bad.ipynb', [mk_cell('x = 1'), mk_cell('1 / 0')]))
    r = run_docs('--nbs', nbs, '--out', tmp_path/'site')
    assert r.returncode != 0
    assert '10_bad.ipynb failed to execute' in r.stderr and 'ZeroDivisionError' in r.stderr
    assert not (tmp_path/'site').exists()
    # the same notebooks render without executing them: stored outputs only (none here)
    r = run_docs('--nbs', nbs, '--out', tmp_path/'site', '--no_execute')
    assert r.returncode == 0, r.stderr
    text = lambda page: re.sub(r'<[^>]+>', '', (tmp_path/'site'/page).read_text())  # highlighted code is in spans
    assert '1 / 0' in text('bad.html') and 'ZeroDivisionError' not in text('bad.html')
    assert 'print("hello " + "from a run")' in text('index.html').replace('&quot;', '"')
    assert 'hello from a run' not in text('index.html')

def test_hung_notebook_is_stopped_with_its_children(tmp_path):
    pid_file = tmp_path/'child.pid'
    nbs = small_nbs(tmp_path/'nbs', ('10_hang.ipynb', [
        mk_cell(f'import subprocess, time\np = subprocess.Popen(["sleep", "300"])\n'
                f'open({str(pid_file)!r}, "w").write(str(p.pid))'),
        mk_cell('time.sleep(300)')]))
    t0 = time.time()
    r = run_docs('--nbs', nbs, '--out', tmp_path/'site', '--timeout', 20)
    assert r.returncode != 0 and '10_hang.ipynb did not finish in 20 s' in r.stderr, r.stderr
    assert time.time() - t0 < 120
    pid = int(pid_file.read_text())
    time.sleep(0.5)
    assert not running(pid), f'the notebook\'s child process {pid} was left running'

def running(pid: int) -> bool:
    "Whether process `pid` exists and is not a zombie (an orphan in a container may never be reaped)."
    try: state = Path(f'/proc/{pid}/stat').read_text().rsplit(')', 1)[1].split()[0]
    except FileNotFoundError: return False
    return state not in ('Z', 'X')

def test_refuses_to_replace_a_folder_that_is_not_a_site(tmp_path):
    (tmp_path/'keep').mkdir(); (tmp_path/'keep'/'thesis.tex').write_text('precious')
    r = run_docs('--nbs', small_nbs(tmp_path/'nbs'), '--out', tmp_path/'keep')
    assert r.returncode != 0 and 'not a built site' in r.stderr
    assert (tmp_path/'keep'/'thesis.tex').read_text() == 'precious'

def test_needs_the_repository(tmp_path):
    r = run_docs(cwd=tmp_path)
    assert r.returncode != 0 and 'inside the repository' in r.stderr
