"""The book's generated pages and presentation helpers, without building the book: the "Performance" page and the
benchmark wrapper that feeds it, numbered figures (MyST-NB glue through `support.plots.publish`, placed by
`{glue:figure}` cells and shown once after `support.book.tidy_executed`), formatted tables, and citations that
resolve to `book/references.bib`."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
import yaml

from support import book

ROOT = Path(__file__).resolve().parent.parent
SOURCES = sorted((ROOT / "notebooks").glob("*.ipynb"))


# ------------------------------------------------------------------------------------------------ performance

RESULTS_A = """# bench: bench_tracing
# command: python bench/bench_tracing.py
# machine: Test CPU, 2 cores available; Linux x86_64; Python 3.11
# date: 2026-01-02 03:04 UTC
# commit: abc1234
# seconds: 42
model = toy-qwen2
traced_over_plain = 1.08
plain_ms_per_token = 2.5
"""
RESULTS_B = """# bench: bench_rl
# machine: Other CPU
# date: 2026-01-03 00:00 UTC
credit_step_over_plain = 1.2
note = a|b $x$
"""


def _results(tmp_path: Path) -> Path:
    d = tmp_path / "results"
    d.mkdir()
    (d / "bench_tracing.txt").write_text(RESULTS_A)
    (d / "bench_rl.txt").write_text(RESULTS_B)
    return d


def test_performance_page_groups_every_line_by_bench_with_machine_and_date(tmp_path):
    md = book.performance_markdown(_results(tmp_path))
    assert md.startswith("# Performance")
    rl, tracing = md.index("## bench\\_rl"), md.index("## bench\\_tracing")
    assert rl < tracing  # one section per bench, in name order
    sec_rl, sec_tracing = md[rl:tracing], md[tracing:]
    assert "| `credit_step_over_plain` | 1.2 |" in sec_rl and "Other CPU" in sec_rl
    assert "| `note` | a\\|b \\$x\\$ |" in sec_rl  # no broken table, no accidental math
    for line in ("| `model` | toy-qwen2 |", "| `traced_over_plain` | 1.08 |", "| `plain_ms_per_token` | 2.5 |"):
        assert line in sec_tracing
    assert "Test CPU, 2 cores available" in sec_tracing and "2026-01-02 03:04 UTC" in sec_tracing
    assert "abc1234" in sec_tracing and "42 s" in sec_tracing
    assert "- **command**: `python bench/bench_tracing.py`" in sec_tracing  # as code: no smart dashes in --options
    assert "Cost of head-wise entropy tracing" in sec_tracing  # the bench script's own one-line summary
    assert md == book.performance_markdown(tmp_path / "results")  # deterministic


@pytest.mark.parametrize("where", ["missing", "empty"])
def test_performance_page_without_results_says_so(tmp_path, where):
    d = tmp_path / "results"
    if where == "empty":
        d.mkdir()
    md = book.performance_markdown(d)
    assert md.startswith("# Performance") and "No benchmark results were found" in md and "make bench" in md
    out = book.write_performance(d, tmp_path / "page" / "performance.md")
    assert out.read_text() == md


def test_performance_cli_writes_the_page(tmp_path):
    res = subprocess.run([sys.executable, "-m", "support.book", "performance", "--results", str(_results(tmp_path)),
                          "--out", str(tmp_path / "p.md")], cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "| `traced_over_plain` | 1.08 |" in (tmp_path / "p.md").read_text()


def test_bench_wrapper_stores_the_name_value_lines_under_a_header(tmp_path):
    script = tmp_path / "bench_fake.py"
    script.write_text("import sys\nprint('loading...')\nprint('speed = 3.5')\nprint(f'args = {sys.argv[1:]}')\n"
                      "print('not a result line')\nprint('ratio_min = 1.02')\n")
    res = subprocess.run([sys.executable, "-m", "support.book", "bench", "--results", str(tmp_path / "r"), str(script),
                          "--n", "2"], cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "loading..." in res.stdout and "speed = 3.5" in res.stdout  # the bench's output is passed through
    header, rows = book.read_results(tmp_path / "r" / "bench_fake.txt")
    assert rows == [("speed", "3.5"), ("args", "['--n', '2']"), ("ratio_min", "1.02")]
    assert header["bench"] == "bench_fake" and header["command"].endswith("bench_fake.py --n 2")
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d UTC", header["date"]) and "cores" in header["machine"]
    assert "commit" in header and "seconds" in header


def test_a_failing_bench_writes_nothing(tmp_path):
    script = tmp_path / "bench_broken.py"
    script.write_text("print('x = 1')\nraise SystemExit(3)\n")
    assert book.run_bench(script, [], tmp_path / "r") == 3
    assert not (tmp_path / "r" / "bench_broken.txt").exists()


def test_the_build_generates_the_performance_page_and_make_bench_feeds_it():
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [c["file"] for part in toc["parts"] for c in part["chapters"]]
    assert book.PERFORMANCE_PAGE.relative_to(ROOT).with_suffix("").as_posix() in files
    mk = (ROOT / "Makefile").read_text()
    html = mk[mk.index("\nhtml:"):]
    html = html[:html.index("\n\n")]
    assert html.index("support.book performance") < html.index("jupyter-book build")
    bench = mk[mk.index("\nbench:"):]
    runs = [ln.strip() for ln in bench[1:bench.index("\n\n")].splitlines()[1:]]
    assert runs and all(re.fullmatch(r"\$\(BIN\)/python -m support\.book bench bench/bench_\w+\.py( .*)?", r)
                        for r in runs), runs  # every benchmark stores its results for the page


def test_stored_bench_results_parse():
    files = sorted((ROOT / "bench" / "results").glob("*.txt"))
    for f in files:
        header, rows = book.read_results(f)
        assert header.get("bench") == f.stem and header.get("machine") and header.get("date"), f.name
        assert rows, f"{f.name}: no name = value lines"
        assert (ROOT / "bench" / f"{f.stem}.py").is_file(), f"{f.name}: no bench/{f.stem}.py"


# ------------------------------------------------------------------------------------------ numbered figures


def test_the_glue_constants_agree():
    from myst_nb.ext.glue import GLUE_PREFIX

    from support import plots

    assert book.GLUE_PREFIX == GLUE_PREFIX and book.GLUED_DISPLAY == plots.GLUED_DISPLAY


def test_publish_outside_a_kernel_saves_and_shows(tmp_path):
    import matplotlib.pyplot as plt

    from support import plots

    fig = plots.finish(plt.figure(), None, "t", "cap")
    plots.publish(fig, "t_fig", tmp_path)
    assert (tmp_path / "figures" / "t_fig.png").is_file() and (tmp_path / "figures" / "t_fig.txt").read_text() == "cap"


def test_publish_in_a_kernel_glues_the_figure_and_the_book_shows_it_once(tmp_path, monkeypatch):
    """In a real kernel (as papermill runs the chapters): the figure and its caption are glued for MyST-NB and
    displayed for Jupyter; tidying the executed notebook keeps the glued copies only."""
    from nbclient import NotebookClient

    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(
        "import matplotlib.pyplot as plt\nfrom support import plots\n"
        "fig, ax = plt.subplots()\nax.plot([0, 1])\n"
        f"plots.publish(plots.finish(fig, ax, 't', 'Loss per `step`.'), 't_fig', {str(tmp_path)!r})\n"
        "plots.publish_note('missing_fig', 'not made here')"),
        nbformat.v4.new_markdown_cell("```{glue:figure} t_fig\n:name: fig-t\n\n{glue:md}`t_fig_caption`\n```")]
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}).execute()
    outs = nb.cells[0].outputs
    glued = {o.metadata["scrapbook"]["name"]: o for o in outs if "scrapbook" in o.get("metadata", {})}
    assert set(glued) == {"t_fig", "t_fig_caption", "missing_fig", "missing_fig_caption"}
    assert book.GLUE_PREFIX + "image/png" in glued["t_fig"].data
    assert glued["t_fig_caption"].data[book.GLUE_PREFIX + "text/markdown"] == "Loss per `step`."
    assert "not made here" in glued["missing_fig"].data[book.GLUE_PREFIX + "text/markdown"]
    shown = [o for o in outs if book.GLUED_DISPLAY in o.get("metadata", {})]
    assert any("image/png" in o.data for o in shown) and any("Loss per" in o.data.get("text/markdown", "")
                                                                for o in shown)
    assert (tmp_path / "figures" / "t_fig.png").is_file()
    path = tmp_path / "01_x.ipynb"
    nbformat.write(nb, path)
    book.tidy_executed(path)
    outs = nbformat.read(path, as_version=4).cells[0].outputs
    assert not any(book.GLUED_DISPLAY in o.get("metadata", {}) for o in outs)  # shown once: the glued copy
    assert len([o for o in outs if "scrapbook" in o.get("metadata", {})]) == 4


def _sources(path: Path) -> tuple[str, str]:
    nb = nbformat.read(path, as_version=4)
    return ("\n".join(c.source for c in nb.cells if c.cell_type == "code"),
            "\n".join(c.source for c in nb.cells if c.cell_type == "markdown"))


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.stem)
def test_every_published_figure_is_placed_and_every_reference_resolves(path):
    code, md = _sources(path)
    published = set(re.findall(r"plots\.publish(?:_note)?\(\s*(?:fig,\s*)?[\"']([\w.-]+)[\"']", code))
    placed = dict(re.findall(r"```\{glue:figure\} ([\w.-]+)\n:name: ([\w-]+)\n", md))
    assert set(placed) == published, (path.name, sorted(published ^ set(placed)))
    for key, label in placed.items():
        assert f"{{glue:md}}`{key}_caption`" in md, (path.name, key)
    refs = set(re.findall(r"\{numref\}`([\w-]+)`", md))
    assert refs <= set(placed.values()), (path.name, sorted(refs - set(placed.values())))


def test_figure_labels_are_unique_across_the_book():
    labels = [label for p in SOURCES for label in re.findall(r"```\{glue:figure\} [\w.-]+\n:name: ([\w-]+)\n",
                                                             _sources(p)[1])]
    assert len(labels) == len(set(labels)), labels


# ------------------------------------------------------------------------------------------------- tables


def test_table_rounds_floats_to_three_significant_places_and_leaves_the_frame_alone():
    import numpy as np
    import pandas as pd

    from support import plots

    df = pd.DataFrame({"x": [0.123456, 1234.5, np.nan, 0.99996], "n": [1, 2, 3, 4], "s": ["a<b", "c", "d", "e"],
                       "ok": [True, False, True, False]})
    html = plots.table(df, "Cap: q < 0.05").to_html()
    for text in (">0.123<", ">1230<", ">–<", ">1.00<", ">1<", "a&lt;b", ">True<", "Cap: q &lt; 0.05"):
        assert text in html, text
    assert df.x.iloc[0] == 0.123456  # the frame (what ch.table saves) is untouched
    assert [plots._significant(v) for v in (12.3456, -0.05678, 0.000123, 1e7, 0.0, 99.95)] == [
        "12.3", "-0.0568", "1.23e-04", "1.00e+07", "0", "100"]


# ---------------------------------------------------------------------------------------------- citations


def test_every_citation_is_in_the_bibliography():
    keys = set(re.findall(r"@\w+\{([^,]+),", (ROOT / "book" / "references.bib").read_text()))
    texts = {p.name: _sources(p)[1] for p in SOURCES} | {p.name: p.read_text() for p in (ROOT / "book").glob("*.md")}
    cited = {(name, k.strip()) for name, t in texts.items() for ks in re.findall(r"\{cite(?::\w+)?\}`([^`]+)`", t)
             for k in ks.split(",")}
    missing = sorted((n, k) for n, k in cited if k not in keys)
    assert not missing, missing
    for stem in ("00_model_organism", "03_circuits", "05_attention_credit_rl", "06_ablations"):
        assert any(n == f"{stem}.ipynb" for n, _ in cited), f"{stem} cites nothing"
