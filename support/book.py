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
KEEP_VISIBLE = {"parameters", "injected-parameters", "remove-cell", "remove-input", "hide-input", "hide-cell"}


def _tags(cell: Any) -> list[str]:
    return cell.setdefault("metadata", {}).setdefault("tags", [])


def _shows_figure(cell: Any) -> bool:
    return any(k.startswith("image/") for o in cell.get("outputs", []) for k in o.get("data", {}))


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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m support.book", description="book publishing helpers")
    sub = ap.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("glance", help="write the 'Results at a glance' page from a run directory")
    g.add_argument("--run-dir", default="runs/ci")
    g.add_argument("--out", type=Path, default=GLANCE_PAGE)
    args = ap.parse_args(argv)
    out = write_glance(args.run_dir, args.out)
    print(f"wrote {out} ({len(glance_rows(args.run_dir))} claims from {args.run_dir})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
