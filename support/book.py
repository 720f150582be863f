"""Publishing the book: the one repository URL, the Sphinx extension, tidying executed chapters, results at a glance.

- **Repository URL, one place.** `_config.yml`'s `repository.url` is the only place the repository is named for the
  book; `repository_url()` reads it (the Colab launch button, the repository button and the chapters' badges and
  setup cells must all agree with it: `tests/test_book.py` checks the notebooks).
- **Sphinx extension** (`sphinx.extra_extensions` in `_config.yml`): copies MathJax 3 from the
  `django-static-mathjax` package (PyPI, a `book` extra) into the build's `_static/mathjax/`, so that
  `mathjax_path: mathjax/tex-mml-chtml.js` works offline; points the Colab launch button of an executed chapter
  (`book/chapters/NN_x.ipynb`, a git-ignored build product) at its source, `notebooks/NN_x.ipynb`; and drops the
  inline scripts jupyter-book registers twice (a console error on every page otherwise).
- **Tidying executed chapters** (`tidy_executed`, called by the runner on every executed copy): the parameters are
  shown once, plumbing cells are collapsed, the remote Colab badge image is replaced by a local one (see the
  function's rules).
- **Results at a glance** (`write_glance`, `python -m support.book glance --run-dir runs/ci`): one row per claim
  from the run directory's summary tables, generated on every build, never typed by hand.
- **Performance** (`write_performance`, `python -m support.book performance`): the benchmarks' `name = value` lines,
  grouped by benchmark with the machine and date, from `bench/results/*.txt`, which `python -m support.book bench
  bench/<bench>.py [args]` writes (`make bench`); generated on every build, and a page saying so when there are none.
"""

from __future__ import annotations

import argparse
import ast
import csv
import json
import re
import shutil
import sys
from pathlib import Path
from typing import Any

import yaml

from .artifacts import PROJECT_ROOT

CONFIG = PROJECT_ROOT / "_config.yml"
#: Where executed chapters live, relative to the project root (the book's pages `book/chapters/NN_x`).
CHAPTERS_REL = "book/chapters"
#: The generated "Results at a glance" page (a build product beside the executed chapters, git-ignored).
GLANCE_PAGE = PROJECT_ROOT / CHAPTERS_REL / "results.md"
#: The local Colab badge (`book/images/`); executed copies point at it instead of colab.research.google.com.
BADGE_REMOTE = "https://colab.research.google.com/assets/colab-badge.svg"
BADGE_LOCAL = "../images/colab-badge.svg"  # relative to book/chapters/


# --------------------------------------------------------------------------------------------- repository URL


def book_config() -> dict[str, Any]:
    return yaml.safe_load(CONFIG.read_text())


def repository_url() -> str:
    """The repository URL, from `_config.yml` (`repository.url`): the single place it is set."""
    return str(book_config()["repository"]["url"]).rstrip("/")


def repository_branch() -> str:
    return str(book_config()["repository"].get("branch", "main"))


# ------------------------------------------------------------------------------------------- MathJax, offline

#: What of MathJax's `es5/` tree the book needs: the configured combined component (e.g. `tex-mml-chtml.js`) with the
#: loader files, and the folders it loads from on demand (TeX extensions through autoload, the CHTML fonts, the menu
#: and its accessibility parts). Skipped: the other combined components, the SVG output and the speech-rule engine
#: (`sre`, for the explorer, which is off by default).
MATHJAX_KEEP_TOP = {"core.js", "loader.js", "startup.js", "latest.js"}
MATHJAX_SKIP = {"sre", "output/svg", "output/svg.js"}


def mathjax_dir() -> Path:
    """MathJax 3's `es5/` folder as shipped by the `django-static-mathjax` package (PyPI)."""
    import importlib.util

    spec = importlib.util.find_spec("mathjax")
    es5 = Path(spec.origin).parent / "static" / "mathjax" / "es5" if spec and spec.origin else None
    if es5 is None or not (es5 / "tex-mml-chtml.js").is_file():
        raise FileNotFoundError("MathJax 3 files not found: install the book extra (pip install -e '.[book]', "
                                "which brings django-static-mathjax)")
    return es5


def copy_mathjax(static_dir: Path, entry: str = "tex-mml-chtml.js") -> Path:
    """Copy MathJax (the `entry` component and what it loads) into `static_dir/mathjax/`; returns the entry file."""
    src = mathjax_dir()
    if not (src / entry).is_file():
        raise FileNotFoundError(f"MathJax component {entry!r} is not in {src}")
    dest = Path(static_dir) / "mathjax"

    def ignore(folder: str, names: list[str]) -> set[str]:
        rel = Path(folder).relative_to(src)
        out = set()
        for n in names:
            p = (rel / n).as_posix().removeprefix("./")
            top_component = rel == Path(".") and n.endswith(".js") and n != entry and n not in MATHJAX_KEEP_TOP
            if top_component or p in MATHJAX_SKIP:
                out.add(n)
        return out

    shutil.copytree(src, dest, ignore=ignore, dirs_exist_ok=True)
    return dest / entry


def _copy_mathjax_on_build(app: Any, exc: Exception | None) -> None:
    path = str(app.config.mathjax_path or "")
    if exc is not None or getattr(app.builder, "format", "") != "html" or "://" in path or path.startswith("/"):
        return  # a CDN or absolute mathjax_path is the user's choice; nothing to copy
    if not path.startswith("mathjax/"):
        raise ValueError(f"mathjax_path {path!r}: expected mathjax/<component>.js (relative to _static)")
    copy_mathjax(Path(app.outdir) / "_static", path.removeprefix("mathjax/"))


# ------------------------------------------------------------------------------------- Colab launch button


def source_notebook_url(url: str) -> str:
    """Rewrite a launch URL of an executed chapter (`.../blob/<branch>/book/chapters/NN_x.ipynb`, the repository
    path sphinx-book-theme builds) to its source notebook; anything else (the download links) is left alone."""
    return re.sub(rf"(/blob/[^/]+/){re.escape(CHAPTERS_REL)}/(\d\d_[^/?#]+\.ipynb)", r"\1notebooks/\2", url)


def _launch_to_sources(app: Any, pagename: str, templatename: str, context: dict, doctree: Any) -> None:
    def fix(buttons: list) -> None:
        for b in buttons:
            if isinstance(b, dict):
                if isinstance(b.get("url"), str):
                    b["url"] = source_notebook_url(b["url"])
                fix(b.get("buttons", []))

    fix(context.get("header_buttons", []))


def _dedupe_scripts(app: Any, pagename: str, templatename: str, context: dict, doctree: Any) -> None:
    """Drop repeated `<script>`s: jupyter-book 1.x registers sphinx-thebe's and sphinx-togglebutton's inline
    configuration twice, and the second `const THEBE_JS_URL = ...` is a SyntaxError in every page's console."""
    seen, kept = set(), []
    for js in context.get("script_files", []):
        attrs = getattr(js, "attributes", {}) or {}
        key = (getattr(js, "filename", str(js)) or "", tuple(sorted((k, str(v)) for k, v in attrs.items())))
        if key not in seen:
            seen.add(key)
            kept.append(js)
    context["script_files"] = kept


def setup(app: Any) -> dict[str, Any]:
    """Sphinx entry point (`sphinx.extra_extensions: [support.book]`)."""
    app.connect("build-finished", _copy_mathjax_on_build)
    app.connect("html-page-context", _dedupe_scripts, priority=900)
    app.connect("html-page-context", _launch_to_sources, priority=900)  # after sphinx-book-theme's buttons (501)
    return {"parallel_read_safe": True, "parallel_write_safe": True}


# ------------------------------------------------------------------------------- tidying executed chapters

#: A code cell whose source has more lines than this, and which shows no figure, is plumbing: its input is
#: collapsed (`hide-input`, a toggle in the book) while its output stays visible.
PLUMBING_LINES = 15
RUN_PARAMETERS_HEADING = "# This run's parameters (as set by the runner)"
#: Output-metadata key of a figure's ordinary display beside its glued copy (`support.plots.GLUED_DISPLAY`; a
#: test checks they agree: `support.plots` imports matplotlib, which tidying does not need).
GLUED_DISPLAY = "rh_glued_display"
KEEP_VISIBLE = {"parameters", "injected-parameters", "remove-cell", "remove-input", "hide-input", "hide-cell"}


def _tags(cell: Any) -> list[str]:
    return cell.setdefault("metadata", {}).setdefault("tags", [])


#: The prefix MyST-NB's `glue(..., display=False)` puts before the mime types of what it stores.
GLUE_PREFIX = "application/papermill.record/"


def _shows_figure(cell: Any) -> bool:
    """Whether a code cell shows a figure: displays an image, or glues one for a `{glue:figure}`."""
    return any(k.removeprefix(GLUE_PREFIX).startswith("image/") for o in cell.get("outputs", [])
               for k in o.get("data", {}))


def _assignments(src: str) -> list[tuple[str, ast.expr]]:
    """Top-level `name = value` statements of a parameters cell."""
    return [(n.targets[0].id, n.value) for n in ast.parse(src).body
            if isinstance(n, ast.Assign) and len(n.targets) == 1 and isinstance(n.targets[0], ast.Name)]


def merged_parameters(defaults: str, injected: str) -> str:
    """The parameters cell as this run used it: the source's defaults cell (names, order and comments kept) with
    each value papermill injected put in place of the default; injected names the defaults lack are appended.
    Executing it is the same as executing the two cells in turn. Its first line becomes `RUN_PARAMETERS_HEADING`."""
    values = {name: ast.get_source_segment(injected, v) for name, v in _assignments(injected)}
    lines = [ln.encode() for ln in defaults.splitlines()]  # ast column offsets count UTF-8 bytes
    seen = set()
    for name, v in sorted(_assignments(defaults), key=lambda nv: (nv[1].lineno, nv[1].col_offset), reverse=True):
        if name not in values:
            continue
        seen.add(name)
        a, b = v.lineno - 1, v.end_lineno - 1
        head, tail = lines[a][:v.col_offset], lines[b][v.end_col_offset:]
        lines[a:b + 1] = [head + values[name].encode() + tail]
    out = [ln.decode() for ln in lines]
    out += [f"{name} = {values[name]}  # set by the runner" for name in values if name not in seen]
    if out and out[0].startswith("# Parameters"):
        out[0] = RUN_PARAMETERS_HEADING
    elif not (out and out[0] == RUN_PARAMETERS_HEADING):
        out.insert(0, RUN_PARAMETERS_HEADING)
    return "\n".join(out)


def tidy_executed(path: Path | str) -> dict[str, int]:
    """Post-process one executed chapter in place (a build product, never a source). Rules:

    1. Parameters shown once: when papermill injected a parameters cell, the page shows one cell, headed "This
       run's parameters": the source's defaults cell with the injected values in place (`merged_parameters`), and
       the injected cell is removed from the page (`remove-cell`; it stays in the notebook). Should the defaults not
       parse, the defaults cell is removed instead and the injected cell gets the heading.
    2. Plumbing collapsed: a code cell longer than `PLUMBING_LINES` lines that shows no figure gets `hide-input`,
       unless it carries a parameters or visibility tag already (the parameters stay visible).
    3. The Colab badge image is the book's local copy (no remote image on an offline page); the link is kept.
    4. Figures shown once: a figure that `support.plots.publish` glued for a numbered `{glue:figure}` is also
       displayed in the cell, with its caption, for Jupyter and Colab; those displays (output metadata
       `plots.GLUED_DISPLAY`) are removed, and the glued copy stays for the figure directive.

    Idempotent; returns counts of what it changed."""
    import nbformat

    path = Path(path)
    nb = nbformat.read(path, as_version=4)
    done = {"params_merged": 0, "collapsed": 0, "badges": 0}
    injected = [c for c in nb.cells if "injected-parameters" in c.get("metadata", {}).get("tags", [])]
    defaults = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    if injected and defaults:
        inj, dflt = injected[0], defaults[0]
        try:
            merged = merged_parameters(dflt.source, inj.source)
        except (SyntaxError, ValueError):
            merged = None
        hide, show = (inj, dflt) if merged is not None else (dflt, inj)
        if merged is None:
            merged = inj.source if inj.source.startswith(RUN_PARAMETERS_HEADING) else (
                RUN_PARAMETERS_HEADING + "\n" + re.sub(r"^# Parameters\n", "", inj.source))
        if "remove-cell" not in _tags(hide):
            _tags(hide).append("remove-cell")
            done["params_merged"] += 1
        show.source = merged
    for c in nb.cells:
        tags = _tags(c)
        if c.cell_type == "code" and c.get("outputs"):
            c.outputs = [o for o in c.outputs if GLUED_DISPLAY not in o.get("metadata", {})]
        if c.cell_type == "markdown" and BADGE_REMOTE in c.source:
            c.source = c.source.replace(BADGE_REMOTE, BADGE_LOCAL)
            done["badges"] += 1
        if (c.cell_type == "code" and not KEEP_VISIBLE & set(tags) and len(c.source.splitlines()) > PLUMBING_LINES
                and not _shows_figure(c)):
            tags.append("hide-input")
            done["collapsed"] += 1
    for c in nb.cells:  # no empty tag lists left behind
        if not c.metadata.get("tags"):
            c.metadata.pop("tags", None)
    nbformat.write(nb, path)
    return done


# ------------------------------------------------------------------------------------- results at a glance

CLAIM_COLUMNS = ("finding", "statistic", "quantity", "paper's claim", "claim", "relation")
PAPERS = "paper's"
VERDICTS = {"true": "holds", "yes": "holds", "false": "does not hold", "no": "does not hold"}


def _columns(header: list[str]) -> tuple[str, str | None, str | None] | None:
    """(claim, paper's, verdict) columns of a claim table, or None when the table is not one (no `ours` column)."""
    if "ours" not in header:
        return None
    claim = next((c for c in CLAIM_COLUMNS if c in header), header[0])
    paper = next((c for c in header if c.startswith("paper") and c != claim), None)
    verdict = next((c for c in header if c in ("holds here", "verdict")), None)
    return claim, paper, verdict


def glance_rows(run_dir: Path | str) -> list[dict[str, str]]:
    """One row per claim from every `<run_dir>/*_summary.csv` and `*_verdict.csv` that has an `ours` column, in
    chapter order: chapter, claim, ours, the paper's, verdict."""
    rows = []
    files = sorted({*Path(run_dir).glob("*_summary.csv"), *Path(run_dir).glob("*_verdict.csv")})
    for f in files:
        with open(f, newline="") as fh:
            table = list(csv.DictReader(fh))
        cols = _columns(list(table[0])) if table else None
        if cols is None:
            continue
        claim, paper, verdict = cols
        for r in table:
            v = (r.get(verdict) or "").strip() if verdict else ""
            rows.append({"chapter": f.stem.split("_")[0], "table": f.stem, "claim": r[claim], "ours": r["ours"],
                         PAPERS: r[paper] if paper else "(the claim itself)",
                         "verdict": VERDICTS.get(v.lower(), v) if v else "not judged"})
    return rows


def _md(text: Any) -> str:
    """A Markdown table cell: one line, with Markdown/MyST punctuation escaped (no accidental math or emphasis)."""
    s = " ".join(str(text).split())
    return re.sub(r"([\\|$*_`<>\[\]{}])", r"\\\1", s) or "–"


def _chapter_link(number: str) -> str:
    """`02` -> a link to chapter 02's page (the executed chapters sit beside the generated page)."""
    src = sorted((PROJECT_ROOT / "notebooks").glob(f"{number}_*.ipynb"))
    return f"[{number}]({src[0].name})" if src else number


def glance_markdown(run_dir: Path | str) -> str:
    run_dir = Path(run_dir)
    rows = glance_rows(run_dir)
    lines = ["# Results at a glance", "",
             "Every claim the chapters test, one row each: our measurement beside the paper's, and whether the claim "
             "holds on this run. This page is generated on every build from the run directory's summary tables "
             "(`support.book.write_glance`); it is never edited by hand.", ""]
    provs = sorted(run_dir.glob("*_summary.provenance.json"))
    if provs:
        p = json.loads(provs[0].read_text())
        model = p.get("model", {}).get("name", "?")
        lines += [f"Run: model `{model}`, profile `{p.get('params', {}).get('profile', '?')}`, package "
                  f"{p.get('package_version', '?')}, commit `{p.get('git_commit', '?')}`.", ""]
    if not rows:
        return "\n".join(lines + [f"No summary tables were found in the run directory `{run_dir.name}`: run the "
                                  "chapters first (`make book`).", ""])
    counts = {k: sum(r["verdict"] == k for r in rows) for k in ("holds", "does not hold")}
    lines += [f"{len(rows)} claims: {counts['holds']} hold, {counts['does not hold']} do not, "
              f"{len(rows) - sum(counts.values())} are measured without a verdict.", "",
              "| chapter | claim | ours | the paper's | verdict |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {_chapter_link(r['chapter'])} | {_md(r['claim'])} | {_md(r['ours'])} | "
                     f"{_md(r[PAPERS])} | {_md(r['verdict'])} |")
    return "\n".join(lines + [""])


def write_glance(run_dir: Path | str, out: Path | str = GLANCE_PAGE) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(glance_markdown(run_dir))
    return out


# ------------------------------------------------------------------------------------------------ performance

#: Where `python -m support.book bench` stores each benchmark's `name = value` lines (small text files, committed).
BENCH_DIR = PROJECT_ROOT / "bench"
BENCH_RESULTS = BENCH_DIR / "results"
#: The generated "Performance" page (a build product beside the executed chapters, git-ignored).
PERFORMANCE_PAGE = PROJECT_ROOT / CHAPTERS_REL / "performance.md"
#: A benchmark's result line: `name = value` (the benches print one per figure).
RESULT_LINE = re.compile(r"^([A-Za-z_][\w.\-]*)\s=\s(.*?)\s*$")


def machine() -> str:
    """One line about this machine: CPU model, logical cores, memory, OS, Python, torch when installed."""
    import os
    import platform

    cpu, mem = platform.processor() or platform.machine(), ""
    try:
        cpu = next(ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                   if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        kb = next(int(ln.split()[1]) for ln in Path("/proc/meminfo").read_text().splitlines()
                  if ln.startswith("MemTotal:"))
        mem = f", {kb / 2**20:.0f} GiB memory"
    except (OSError, StopIteration, ValueError):
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    parts = [f"{cpu}, {cores} cores available{mem}", f"{platform.system()} {platform.release()} {platform.machine()}",
             f"Python {platform.python_version()}"]
    try:
        from importlib.metadata import version

        parts.append(f"torch {version('torch')}")
    except Exception:
        pass
    return "; ".join(parts)


def _git_commit() -> str:
    import subprocess

    try:
        res = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=PROJECT_ROOT, capture_output=True,
                             text=True, timeout=10)
        dirty = subprocess.run(["git", "--no-optional-locks", "status", "--porcelain", "--untracked-files=no"],
                               cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "?"
    return (res.stdout.strip() + (" (with uncommitted changes)" if dirty else "")) if res.returncode == 0 else "?"


def result_lines(text: str) -> list[tuple[str, str]]:
    """The `name = value` lines of a benchmark's output, in order (anything else is skipped)."""
    return [(m.group(1), m.group(2)) for ln in text.splitlines() if (m := RESULT_LINE.match(ln.strip()))]


def run_bench(script: Path | str, args: list[str] | None = None, results: Path | str = BENCH_RESULTS) -> int:
    """Run one benchmark script (`python <script> <args>`, from the project root), pass its output through, and on
    success write its `name = value` lines to `<results>/<script stem>.txt` under a header (`# key: value` lines:
    the benchmark, its command, the machine, the date, the commit). A failing benchmark writes nothing and its exit
    code is returned."""
    import datetime
    import subprocess

    script, args = Path(script), list(args or [])
    cmd = [sys.executable, str(script), *args]
    started = datetime.datetime.now(datetime.timezone.utc)
    proc = subprocess.Popen(cmd, cwd=PROJECT_ROOT, stdout=subprocess.PIPE, text=True, bufsize=1)
    out = []
    for line in proc.stdout:  # passed through as it comes: the benches take minutes
        sys.stdout.write(line)
        sys.stdout.flush()
        out.append(line)
    rc = proc.wait()
    if rc != 0:
        print(f"{script.name} failed (exit code {rc}); {results} left as it was", file=sys.stderr)
        return rc
    lines = result_lines("".join(out))
    seconds = (datetime.datetime.now(datetime.timezone.utc) - started).total_seconds()
    rel = script.resolve().relative_to(PROJECT_ROOT) if script.resolve().is_relative_to(PROJECT_ROOT) else script
    header = {"bench": script.stem, "command": " ".join(["python", rel.as_posix(), *args]), "machine": machine(),
              "date": started.strftime("%Y-%m-%d %H:%M UTC"), "commit": _git_commit(), "seconds": f"{seconds:.0f}"}
    dest = Path(results) / f"{script.stem}.txt"
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text("".join(f"# {k}: {v}\n" for k, v in header.items()) + "".join(f"{n} = {v}\n" for n, v in lines))
    print(f"wrote {dest} ({len(lines)} lines)")
    return 0


def read_results(path: Path | str) -> tuple[dict[str, str], list[tuple[str, str]]]:
    """(header, [(name, value), ...]) of one results file written by `run_bench`."""
    header, text = {}, Path(path).read_text()
    for ln in text.splitlines():
        if ln.startswith("# ") and ":" in ln:
            k, v = ln[2:].split(":", 1)
            header.setdefault(k.strip(), v.strip())
    return header, result_lines("\n".join(ln for ln in text.splitlines() if not ln.startswith("#")))


def _bench_summary(stem: str) -> str:
    """The first line of a benchmark script's docstring (what it measures), or ''."""
    src = BENCH_DIR / f"{stem}.py"
    try:
        doc = ast.get_docstring(ast.parse(src.read_text())) or ""
    except (OSError, SyntaxError):
        return ""
    first = doc.strip().splitlines()[0].removeprefix("Benchmark:").strip() if doc.strip() else ""
    return first[:1].upper() + first[1:]


def performance_markdown(results: Path | str = BENCH_RESULTS) -> str:
    """The "Performance" page: every benchmark's `name = value` lines, grouped by benchmark, each group under the
    machine, date and commit it was measured on. Says so when there are no results."""
    results = Path(results)
    files = sorted(results.glob("*.txt")) if results.is_dir() else []
    lines = ["# Performance", "",
             "What the benchmarks in `bench/` measured, one section per benchmark, each with the machine and date it "
             "ran on. Run them with `make bench` (each writes `bench/results/<bench>.txt` through `python -m "
             "support.book bench bench/<bench>.py`); this page is generated from those files on every build "
             "(`python -m support.book performance`) and is never edited by hand. Times depend on the machine and on "
             "what else ran on it: compare ratios measured in one run, not seconds across machines.", ""]
    if not files:
        return "\n".join(lines + ["No benchmark results were found in `bench/results/`: run `make bench`, then "
                                  "rebuild the book.", ""])
    for f in files:
        header, rows = read_results(f)
        name = header.get("bench", f.stem)
        lines += [f"## {_md(name)}", ""]
        summary = _bench_summary(f.stem)
        if summary:
            lines += [_md(summary), ""]
        meta = [("machine", header.get("machine", "?")), ("date", header.get("date", "?")),
                ("commit", header.get("commit", "?")), ("command", header.get("command", "?"))]
        if header.get("seconds"):
            meta.append(("wall time", f"{header['seconds']} s"))
        lines += [f"- **{k}**: " + (f"`{v}`" if k == "command" and "`" not in v else _md(v)) for k, v in meta] + [""]
        if not rows:
            lines += ["(no `name = value` lines in this file)", ""]
            continue
        lines += ["| name | value |", "|---|---|"] + [f"| `{n}` | {_md(v)} |" for n, v in rows] + [""]
    return "\n".join(lines)


def write_performance(results: Path | str = BENCH_RESULTS, out: Path | str = PERFORMANCE_PAGE) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(performance_markdown(results))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m support.book", description="book publishing helpers")
    sub = ap.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("glance", help="write the 'Results at a glance' page from a run directory")
    g.add_argument("--run-dir", default="runs/ci")
    g.add_argument("--out", type=Path, default=GLANCE_PAGE)
    p = sub.add_parser("performance", help="write the 'Performance' page from the benchmarks' results files")
    p.add_argument("--results", type=Path, default=BENCH_RESULTS)
    p.add_argument("--out", type=Path, default=PERFORMANCE_PAGE)
    b = sub.add_parser("bench", help="run a benchmark script and store its name = value lines in bench/results/")
    b.add_argument("script", type=Path)
    b.add_argument("args", nargs=argparse.REMAINDER, help="passed on to the script")
    b.add_argument("--results", type=Path, default=BENCH_RESULTS)
    args = ap.parse_args(argv)
    if args.cmd == "bench":
        return run_bench(args.script, args.args, args.results)
    if args.cmd == "performance":
        out = write_performance(args.results, args.out)
        n = len(list(args.results.glob("*.txt"))) if args.results.is_dir() else 0
        print(f"wrote {out} ({n} benchmark results files from {args.results})")
        return 0
    out = write_glance(args.run_dir, args.out)
    print(f"wrote {out} ({len(glance_rows(args.run_dir))} claims from {args.run_dir})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
