"""The published book: self-contained math, the one repository URL, tidy executed chapters, results at a glance, and
every page checked in a real browser (headless Chromium driven through the DevTools protocol).

The browser test reads the book built once per session by `built_book` (tests/conftest.py: from the chapters the
`executed` fixture ran). `RH_BOOK_HTML=book/_build/html pytest tests/test_book.py` checks an already built book.
Screenshots of every page land in `book/_build/screenshots/` (git-ignored), or in $RH_SCREENSHOTS.
"""

from __future__ import annotations

import base64
import csv
import functools
import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import nbformat
import pytest
import yaml

from support import book

ROOT = Path(__file__).resolve().parent.parent
SOURCES = sorted((ROOT / "notebooks").glob("*.ipynb"))
CHROMIUM_INSTALL = "apt-get install -y chromium"
SCREENSHOTS = Path(os.environ.get("RH_SCREENSHOTS", ROOT / "book" / "_build" / "screenshots"))


# ------------------------------------------------------------------------------------------ configuration


def test_math_is_served_from_the_book_itself():
    cfg = book.book_config()
    path = cfg["sphinx"]["config"]["mathjax_path"]
    assert "://" not in path and path.startswith("mathjax/"), "mathjax_path must point into _static, not a CDN"
    assert "support.book" in cfg["sphinx"]["extra_extensions"]
    # Sphinx 7 configures MathJax 3 (mathjax3_config; MyST adds its processing classes there): the copy must be 3.x
    es5 = book.mathjax_dir()
    assert (es5 / path.removeprefix("mathjax/")).is_file()
    assert re.search(r'VERSION="3\.\d+\.\d+"', (es5 / "core.js").read_text()), "expected MathJax 3.x"


def test_copy_mathjax_brings_the_component_and_its_fonts(tmp_path):
    entry = book.copy_mathjax(tmp_path)
    assert entry == tmp_path / "mathjax" / "tex-mml-chtml.js" and entry.stat().st_size > 100_000
    assert list((tmp_path / "mathjax" / "output" / "chtml" / "fonts" / "woff-v2").glob("MathJax_Main-Regular.woff"))
    assert (tmp_path / "mathjax" / "input" / "tex" / "extensions").is_dir()  # autoloaded TeX packages
    assert not (tmp_path / "mathjax" / "tex-svg.js").exists() and not (tmp_path / "mathjax" / "sre").exists()


def test_launch_buttons_and_repository_are_configured_once():
    cfg = book.book_config()
    assert cfg["launch_buttons"]["colab_url"] == "https://colab.research.google.com"
    assert cfg["html"]["use_repository_button"] and cfg["html"]["use_download_button"]
    assert book.repository_url().startswith("https://github.com/")
    url = "https://colab.research.google.com/github/o/r/blob/main/book/chapters/01_tracing.ipynb"
    assert book.source_notebook_url(url) == "https://colab.research.google.com/github/o/r/blob/main/notebooks/01_tracing.ipynb"
    assert book.source_notebook_url("https://github.com/o/r") == "https://github.com/o/r"
    download = "../../_sources/book/chapters/01_tracing.ipynb"  # the executed copy, served by the book itself
    assert book.source_notebook_url(download) == download


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.stem)
def test_every_notebook_uses_the_configured_repository(path):
    """_config.yml's repository.url is the single place; each chapter's badge and setup cell must agree with it."""
    url, branch = book.repository_url(), book.repository_branch()
    org_repo = url.split("github.com/", 1)[1]
    nb = nbformat.read(path, as_version=4)
    badge = f"https://colab.research.google.com/github/{org_repo}/blob/{branch}/notebooks/{path.name}"
    assert badge in nb.cells[0].source, f"{path.name}: the Colab badge should link {badge} (_config.yml repository)"
    setup = next(c for c in nb.cells if c.cell_type == "code").source
    clones = re.findall(r"https://github\.com/[^\s\"']+", setup)
    assert clones, f"{path.name}: the setup cell clones no repository"
    assert all(c.rstrip("/").removesuffix(".git") == url for c in clones), (path.name, clones, url)


def test_toc_lists_the_generated_and_reference_pages():
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [c["file"] for part in toc["parts"] for c in part["chapters"]]
    assert "book/chapters/results" in files and "book/references" in files
    assert Path(book.GLANCE_PAGE).relative_to(ROOT).with_suffix("").as_posix() == "book/chapters/results"


def test_bibliography_has_the_papers_and_the_methods():
    bib = (ROOT / "book" / "references.bib").read_text()
    keys = set(re.findall(r"@\w+\{([^,]+),", bib))
    assert {"zhang2026entropy", "park2025sparks", "li2025attention", "hanna2024faith", "shao2024deepseekmath",
            "hu2021lora", "nostalgebraist2020logitlens", "nanda2022transformerlens"} <= keys
    assert "{bibliography}" in (ROOT / "book" / "references.md").read_text()
    cfg = book.book_config()
    assert cfg["bibtex_bibfiles"] == ["book/references.bib"]


# ------------------------------------------------------------------------------------ tidying executed chapters


def _executed_like(tmp_path: Path) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_markdown_cell(f"[![Open in Colab]({book.BADGE_REMOTE})](https://x/notebooks/01.ipynb)\n# T"),
        nbformat.v4.new_code_cell("import os"),
        nbformat.v4.new_code_cell("seed = 0\nn = 5", metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell("# Parameters\nseed = 1\n", metadata={"tags": ["injected-parameters"]}),
        nbformat.v4.new_code_cell("\n".join(f"x{i} = {i}" for i in range(30))),  # long plumbing, no figure
        nbformat.v4.new_code_cell("\n".join(f"y{i} = {i}" for i in range(30)), outputs=[nbformat.v4.new_output(
            "display_data", data={"image/png": "iVBOR", "text/plain": "<Figure>"})]),  # long, shows a figure
    ]
    path = tmp_path / "01_x.ipynb"
    nbformat.write(nb, path)
    return path


def test_tidy_executed_shows_parameters_once_and_collapses_plumbing(tmp_path):
    path = _executed_like(tmp_path)
    done = book.tidy_executed(path)
    assert done == {"params_merged": 1, "collapsed": 1, "badges": 1}
    cells = nbformat.read(path, as_version=4).cells
    tags = [c.metadata.get("tags", []) for c in cells]
    assert tags[2] == ["parameters"]  # shown: all parameters, with this run's values
    assert cells[2].source == book.RUN_PARAMETERS_HEADING + "\nseed = 1\nn = 5"
    assert tags[3] == ["injected-parameters", "remove-cell"]  # papermill's cell: kept in the notebook, not shown
    assert tags[4] == ["hide-input"] and tags[5] == [] and tags[1] == []
    assert book.BADGE_LOCAL in cells[0].source and book.BADGE_REMOTE not in cells[0].source
    assert (ROOT / "book" / "chapters" / book.BADGE_LOCAL).resolve().is_file()
    before = path.read_text()
    assert book.tidy_executed(path) == {"params_merged": 0, "collapsed": 0, "badges": 0}  # idempotent
    assert path.read_text() == before


def test_merged_parameters_keep_names_order_and_comments():
    defaults = ('# Parameters (papermill): defaults\nprofile = "ci"\ntasks = ["a",\n         "b"]  # first is primary\n'
                'norm = "raw"  # the paper’s readout, β ≥ 0\nM = 6\n')
    injected = '# Parameters\ntasks = ["x", "y"]\nM = 30\nrun_dir = "runs/ci"\n'
    merged = book.merged_parameters(defaults, injected)
    assert merged.splitlines() == [book.RUN_PARAMETERS_HEADING, 'profile = "ci"',
                                   'tasks = ["x", "y"]  # first is primary',
                                   'norm = "raw"  # the paper’s readout, β ≥ 0', "M = 30",
                                   'run_dir = "runs/ci"  # set by the runner']
    ns_two, ns_one = {}, {}
    exec(defaults + "\n" + injected, ns_two)
    exec(merged, ns_one)
    assert {k: v for k, v in ns_one.items() if k != "__builtins__"} == {
        k: v for k, v in ns_two.items() if k != "__builtins__"}


def test_tidy_keeps_the_defaults_when_nothing_was_injected(tmp_path):
    path = _executed_like(tmp_path)
    nb = nbformat.read(path, as_version=4)
    del nb.cells[3]
    nbformat.write(nb, path)
    book.tidy_executed(path)
    cell = nbformat.read(path, as_version=4).cells[2]
    assert cell.metadata["tags"] == ["parameters"] and cell.source == "seed = 0\nn = 5"


# --------------------------------------------------------------------------------------- results at a glance


def _write_csv(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def test_glance_has_one_row_per_claim_from_the_summary_tables(tmp_path):
    _write_csv(tmp_path / "03_summary.csv", [
        {"finding": "emergent heads appear", "ours": "4 heads", "paper's": "many", "holds here": "True"},
        {"finding": "ablation hurts | more", "ours": "$0.2$", "paper's": "yes", "holds here": "False"}])
    _write_csv(tmp_path / "02_summary.csv", [{"statistic": "split-half ρ", "ours": "0.9", "paper's": "0.93"}])
    _write_csv(tmp_path / "04_verdict.csv", [{"paper's claim": "WH ≈ Full", "ours": "0.5 vs 0.5", "holds here": "yes"}])
    _write_csv(tmp_path / "01_trace_summary.csv", [{"task": "toy_mc4", "examples": "60"}])  # not a claim table
    rows = book.glance_rows(tmp_path)
    assert [(r["chapter"], r["claim"], r["verdict"]) for r in rows] == [
        ("02", "split-half ρ", "not judged"), ("03", "emergent heads appear", "holds"),
        ("03", "ablation hurts | more", "does not hold"), ("04", "WH ≈ Full", "holds")]
    assert rows[0]["paper's"] == "0.93" and rows[3]["paper's"] == "(the claim itself)"
    out = book.write_glance(tmp_path, tmp_path / "results.md")
    md = out.read_text()
    assert md.startswith("# Results at a glance") and "4 claims: 2 hold, 1 do not, 1 are measured" in md
    assert "ablation hurts \\| more" in md and "\\$0.2\\$" in md  # no broken table, no accidental math
    assert "[03](03_circuits.ipynb)" in md
    assert md == book.glance_markdown(tmp_path)  # deterministic


def test_glance_of_an_empty_run_dir_says_so(tmp_path):
    md = book.glance_markdown(tmp_path)
    assert "No summary tables were found" in md


def test_glance_cli_writes_the_page(tmp_path):
    _write_csv(tmp_path / "06_summary.csv", [{"finding": "f", "ours": "o", "paper's": "p", "holds here": "True"}])
    res = subprocess.run([sys.executable, "-m", "support.book", "glance", "--run-dir", str(tmp_path), "--out",
                          str(tmp_path / "g.md")], cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "| [06](06_ablations.ipynb) | f | o | p | holds |" in (tmp_path / "g.md").read_text()


def test_makefile_generates_the_glance_page_before_the_build():
    mk = (ROOT / "Makefile").read_text()
    html = mk[mk.index("\nhtml:"):]
    html = html[:html.index("\n\n")]
    assert html.index("support.book glance") < html.index("jupyter-book build")


# ------------------------------------------------------------------------------------------ the built book


def _page_text(page: Path) -> str:
    import html as html_lib

    return html_lib.unescape(re.sub(r"<[^>]+>", "", page.read_text()))


@pytest.mark.slow
def test_built_chapters_show_parameters_once_and_launch_their_sources(built_book):
    assert built_book.returncode == 0, built_book.log
    url, branch = book.repository_url(), book.repository_branch()
    org_repo = url.split("github.com/", 1)[1]
    for src in SOURCES:
        page = built_book.html / "book" / "chapters" / f"{src.stem}.html"
        raw, text = page.read_text(), _page_text(page)
        assert text.count("This run's parameters") == 1, src.stem
        assert "# Parameters (papermill)" not in text and "\n# Parameters\n" not in text, src.stem
        colab = f"https://colab.research.google.com/github/{org_repo}/blob/{branch}/notebooks/{src.name}"
        assert colab in raw, f"{src.stem}: no Colab launch button for the source notebook"
        assert f"/blob/{branch}/book/chapters/" not in raw
        assert f'href="{url}"' in raw  # the repository button
    results = _page_text(built_book.html / "book" / "chapters" / "results.html")
    assert "Results at a glance" in results and "claims:" in results, results[:500]


# ------------------------------------------------------------------------------------ the book in a browser


def chromium() -> str | None:
    for name in (os.environ.get("RH_CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


class Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # no request log in the test output
        pass


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:  # the browser cancels requests when it navigates on
        pass


class Browser:
    """Headless Chromium with one page, driven through the DevTools protocol (websocket-client)."""

    def __init__(self, exe: str, profile: Path, width: int = 1280, height: int = 900):
        import websocket

        self.proc = subprocess.Popen(
            [exe, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--disable-extensions", "--disable-default-apps", "--remote-debugging-port=0",
             "--remote-allow-origins=*", f"--user-data-dir={profile}", f"--window-size={width},{height}",
             "about:blank"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port_file, deadline = profile / "DevToolsActivePort", time.time() + 60
        while not (port_file.exists() and port_file.read_text().strip()):
            if time.time() > deadline or self.proc.poll() is not None:
                self.close()
                raise RuntimeError("Chromium did not open its DevTools port")
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        targets = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10).read())
        page = next(t for t in targets if t["type"] == "page")
        self.ws = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=60, suppress_origin=True)
        self.next_id, self.events = 0, []
        for domain in ("Page", "Runtime", "Log"):
            self.call(f"{domain}.enable")
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)

    def _recv(self, timeout: float) -> dict:
        self.ws.settimeout(max(timeout, 0.01))
        return json.loads(self.ws.recv())

    def call(self, method: str, timeout: float = 60, **params) -> dict:
        self.next_id += 1
        my = self.next_id
        self.ws.send(json.dumps({"id": my, "method": method, "params": params}))
        deadline = time.time() + timeout
        while True:
            msg = self._recv(deadline - time.time())
            if msg.get("id") == my:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            self.events.append(msg)

    def wait_for(self, event: str, timeout: float = 60) -> dict:
        deadline = time.time() + timeout
        while True:
            for i, e in enumerate(self.events):
                if e.get("method") == event:
                    return self.events.pop(i)
            self.events.append(self._recv(deadline - time.time()))

    def evaluate(self, expression: str, timeout: float = 60):
        r = self.call("Runtime.evaluate", timeout=timeout, expression=expression, returnByValue=True,
                      awaitPromise=True)
        if "exceptionDetails" in r:
            raise RuntimeError(f"page script failed: {r['exceptionDetails']}")
        return r["result"].get("value")

    def open(self, url: str) -> None:
        self.events = []
        self.call("Page.navigate", url=url)
        self.wait_for("Page.loadEventFired")

    def errors(self) -> list[str]:
        """Console errors, uncaught exceptions and failed loads logged since the last `open`."""
        out = []
        for e in self.events:
            m, p = e.get("method"), e.get("params", {})
            if m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                out.append("console: " + " ".join(str(a.get("value", a.get("description", ""))) for a in p["args"]))
            elif m == "Runtime.exceptionThrown":
                d = p["exceptionDetails"]
                out.append(f"exception: {d.get('exception', {}).get('description') or d.get('text')}")
            elif m == "Log.entryAdded" and p["entry"].get("level") == "error":
                out.append(f"log: {p['entry'].get('text')} {p['entry'].get('url', '')}".strip())
        return out

    def screenshot(self, path: Path) -> None:
        data = self.call("Page.captureScreenshot", format="png")["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))

    def close(self) -> None:
        try:
            self.ws.close()
        except Exception:
            pass
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


#: Waits for MathJax (when the page loads it) to finish typesetting; then reports what a reader would see.
INSPECT = r"""(async () => {
  const t0 = Date.now();
  const mj = () => window.MathJax && MathJax.startup && MathJax.startup.promise;
  const wantsMath = !!document.querySelector('script[src*="mathjax"]');
  while (wantsMath && !mj() && Date.now() - t0 < 30000) await new Promise(r => setTimeout(r, 100));
  let mathjax = wantsMath ? (mj() ? 'ok' : 'MathJax did not start') : 'not loaded';
  if (mj()) { try { await MathJax.startup.promise; } catch (e) { mathjax = 'failed: ' + e; } }
  const math = [...document.querySelectorAll('.math')];
  const unrendered = math.filter(m => !m.querySelector('mjx-container')).map(m => m.textContent.trim().slice(0, 80));
  const clone = document.body.cloneNode(true);
  clone.querySelectorAll('pre, code, script, style, textarea, mjx-container, .highlight').forEach(e => e.remove());
  const text = clone.textContent;
  const raw = [];
  for (const tok of ['\\(', '\\[', '$$']) {
    const i = text.indexOf(tok);
    if (i >= 0) raw.push(tok + ' in: ' + text.slice(Math.max(0, i - 40), i + 40).replace(/\s+/g, ' '));
  }
  const imgs = [...document.images].map(i => ({src: i.currentSrc || i.src, ok: i.complete && i.naturalWidth > 0}));
  const external = [...document.querySelectorAll('script[src], link[rel=stylesheet][href], img[src]')]
    .map(e => e.src || e.href).filter(u => new URL(u, location.href).origin !== location.origin);
  const links = [...document.querySelectorAll('a[href]')].map(a => a.href);
  return {title: document.title, mathjax, math: math.length, unrendered, raw, imgs, external, links,
          rendered: document.querySelectorAll('mjx-container').length};
})()"""

SEARCH = r"""(async () => {
  const t0 = Date.now();
  const hits = () => [...document.querySelectorAll('#search-results ul.search li, ul.search li')];
  while (hits().length === 0 && Date.now() - t0 < 30000) await new Promise(r => setTimeout(r, 200));
  return hits().map(li => li.textContent.trim().slice(0, 120));
})()"""


@pytest.fixture(scope="module")
def visited(built_book, tmp_path_factory):
    """Serve the built book on localhost, open every page in headless Chromium, and record what each showed."""
    exe = chromium()
    if exe is None:
        pytest.skip(f"Chromium not found: install it with `{CHROMIUM_INSTALL}` (Debian; .ci/run does this)")
    assert built_book.returncode == 0, built_book.log
    html = built_book.html
    pages = sorted(p.relative_to(html).as_posix() for p in html.rglob("*.html")
                   if not any(part.startswith("_") for part in p.relative_to(html).parts))
    redirects = {p: m.group(1) for p in pages  # jupyter-book's index.html only forwards to the root page
                 if (m := re.search(r'http-equiv="Refresh" content="0; url=([^"]+)"', (html / p).read_text(), re.I))}
    pages = [p for p in pages if p not in redirects]
    server = Server(("127.0.0.1", 0), functools.partial(Quiet, directory=str(html)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}/"
    browser = Browser(exe, Path(tempfile.mkdtemp(dir=tmp_path_factory.mktemp("chromium"))))
    shots = SCREENSHOTS
    shutil.rmtree(shots, ignore_errors=True)
    try:
        seen = {}
        for page in pages:
            browser.open(base + page)
            info = browser.evaluate(INSPECT, timeout=90)
            info["errors"] = browser.errors()
            browser.screenshot(shots / (page.removesuffix(".html").replace("/", "__") + ".png"))
            seen[page] = info
        browser.open(base + "search.html?q=wavering")
        search = browser.evaluate(SEARCH, timeout=60)
        search_errors = browser.errors()
        browser.screenshot(shots / "search__wavering.png")
        statuses = {}
        hrefs = {u for info in seen.values() for u in info["links"]}
        hrefs |= {urllib.parse.urljoin(base + p, target) for p, target in redirects.items()}
        for url in sorted({u.split("#")[0] for u in hrefs if u.startswith(base)}):
            try:
                statuses[url] = urllib.request.urlopen(url, timeout=10).status
            except urllib.error.HTTPError as e:
                statuses[url] = e.code
        yield {"base": base, "pages": seen, "search": search, "search_errors": search_errors, "links": statuses,
               "shots": shots}
    finally:
        browser.close()
        server.shutdown()
        server.server_close()


@pytest.mark.slow
def test_every_page_loads_without_console_errors(visited):
    assert len(visited["pages"]) >= 10, sorted(visited["pages"])  # intro, how to run, 7 chapters, results, refs
    bad = {p: i["errors"] for p, i in visited["pages"].items() if i["errors"]}
    assert not bad, bad


@pytest.mark.slow
def test_every_equation_is_rendered_by_mathjax_from_the_book(visited):
    pages = visited["pages"]
    assert sum(i["math"] for i in pages.values()) > 20  # the chapters and the intro do have equations
    for page, info in pages.items():
        assert not info["unrendered"], (page, info["mathjax"], info["unrendered"][:5])
        assert not info["raw"], (page, info["raw"])
        if info["math"]:
            assert info["mathjax"] == "ok" and info["rendered"] >= info["math"], (page, info["mathjax"])
    external = {p: i["external"] for p, i in pages.items() if i["external"]}
    assert not external, f"the book loads scripts, styles or images from elsewhere: {external}"


@pytest.mark.slow
def test_every_figure_is_present(visited):
    chapters = [p for p in visited["pages"] if p.startswith("book/chapters/") and p[14:16].isdigit()]
    assert len(chapters) == len(SOURCES)
    assert sum(len(visited["pages"][p]["imgs"]) for p in chapters) > len(chapters)  # figures, not only badges
    broken = {p: [i["src"] for i in info["imgs"] if not i["ok"]] for p, info in visited["pages"].items()}
    assert not any(broken.values()), {p: b for p, b in broken.items() if b}


@pytest.mark.slow
def test_internal_links_resolve(visited):
    assert len(visited["links"]) > 20
    bad = {u.removeprefix(visited["base"]): s for u, s in visited["links"].items() if s != 200}
    assert not bad, bad


@pytest.mark.slow
def test_search_finds_wavering(visited):
    assert visited["search"], "the book's search returned nothing for 'wavering'"
    assert not visited["search_errors"], visited["search_errors"]


@pytest.mark.slow
def test_a_screenshot_of_every_page_is_saved(visited):
    for page in visited["pages"]:
        shot = visited["shots"] / (page.removesuffix(".html").replace("/", "__") + ".png")
        assert shot.stat().st_size > 5_000, shot  # a rendered page, not an empty image


# ---------------------------------------------------------------------------------------- publishing workflow

WORKFLOW = ROOT / ".github" / "workflows" / "book.yml"


def _check_workflow(path: Path) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).parent / "check-jsonschema"
    return subprocess.run([str(exe), "--builtin-schema", "vendor.github-workflows", str(path)], capture_output=True,
                          text=True, timeout=120)


def test_pages_workflow_is_valid_and_publishes_the_built_book(tmp_path):
    res = _check_workflow(WORKFLOW)
    assert res.returncode == 0, res.stdout + res.stderr
    wf = yaml.safe_load(WORKFLOW.read_text())
    steps = wf["jobs"]["build"]["steps"]
    assert any("make book" in s.get("run", "") for s in steps)
    upload = next(s for s in steps if s.get("uses", "").startswith("actions/upload-pages-artifact"))
    assert upload["with"]["path"] == "book/_build/html"
    assert any(s.get("uses", "").startswith("actions/deploy-pages") for s in wf["jobs"]["deploy"]["steps"])
    broken = tmp_path / "broken.yml"  # the validator does reject a malformed workflow
    broken.write_text("on: push\njobs:\n  build:\n    runs-on: ubuntu-latest\n    steps: make book\n")
    assert _check_workflow(broken).returncode != 0
