"""Chapter sources are clean; every chapter executes under the ci profile; the book builds with warnings as errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from support import run

ROOT = Path(__file__).resolve().parent.parent
SOURCES = sorted((ROOT / "notebooks").glob("*.ipynb"))
NOISE = ("Warning", "it/s]", "%|", "Loading weights", "Writing model shards")


def test_there_are_chapters():
    assert [p.stem for p in SOURCES][:1] == ["00_model_organism"]


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.stem)
def test_source_is_output_free_and_follows_the_chapter_shape(path):
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in code), "source carries outputs"
    assert sum("parameters" in c.metadata.get("tags", []) for c in nb.cells) == 1
    first = nb.cells[0]
    assert first.cell_type == "markdown" and "colab-badge.svg" in first.source
    assert f"notebooks/{path.name}" in first.source
    assert "google.colab" in code[0].source  # setup cell installs only on Colab
    assert f"chapter.start(\"{path.stem}\"" in code[2].source  # parameters are validated before anything else
    text = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    assert "## What we measured" in text and "## Try it at scale" in text
    assert "sys.path" not in "\n".join(c.source for c in code)


@pytest.mark.slow
def test_every_chapter_executes_cleanly(executed):
    for ch in run.chapters():
        nb = nbformat.read(ROOT / "book" / "chapters" / f"{ch}.ipynb", as_version=4)
        for c in nb.cells:
            for o in c.get("outputs", []):
                assert o.get("output_type") != "error", (ch, o)
                if o.get("output_type") == "stream":
                    assert not any(n in o["text"] for n in NOISE), (ch, o["text"][:300])


@pytest.mark.slow
def test_artifacts_carry_provenance(executed):
    jsons = [p for p in executed.rglob("*.json") if not p.name.endswith(".provenance.json")]
    for p in executed.rglob("*.provenance.json"):
        rec = json.loads(p.read_text())
        assert rec["model"]["name"] and rec["git_commit"] and rec["package_version"], p
    for p in jsons:
        body = json.loads(p.read_text())
        if isinstance(body, dict) and "provenance" in body:
            assert body["provenance"]["model"]["name"], p


@pytest.mark.slow
def test_book_builds_offline_with_warnings_as_errors(built_book):
    """The build itself happens once per session (tests/conftest.py: `built_book`, shared with tests/test_book.py)."""
    assert built_book.returncode == 0, built_book.log
    for ch in run.chapters():
        page = (built_book.html / "book" / "chapters" / f"{ch}.html").read_text()
        assert "colab-badge.svg" in page


def _strip_time(obj):
    if isinstance(obj, dict):
        return {k: _strip_time(v) for k, v in obj.items() if k not in ("time", "git_commit", "run_dir")}
    if isinstance(obj, list):
        return [_strip_time(v) for v in obj]
    return obj


@pytest.mark.slow
def test_rerun_with_same_seed_gives_identical_head_sets_and_tables(executed, tmp_path):
    """Determinism: chapter 02 (which samples random head sets and split-half partitions) re-run on a copy of the
    run directory with the same seed reproduces every head set and table byte for byte (timestamps aside)."""
    import shutil

    ch = "02_head_selection"
    if ch not in run.chapters():
        pytest.fail("chapter 02 is missing")
    copy = tmp_path / "run"
    shutil.copytree(executed, copy)
    before = {p.relative_to(executed): p for p in executed.rglob("*") if p.suffix in (".json", ".csv")}
    res = subprocess.run([sys.executable, "-m", "support.run", "--profile", "ci", "--chapters", ch, "--run-dir",
                          str(copy), "--out", str(tmp_path / "out")], cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    compared = 0
    for rel, p in before.items():
        q = copy / rel
        if not rel.name.startswith("02_") and "head" not in rel.name:
            continue
        if p.suffix == ".json":
            assert _strip_time(json.loads(p.read_text())) == _strip_time(json.loads(q.read_text())), rel
        else:
            assert p.read_text() == q.read_text(), rel
        compared += 1
    assert compared >= 2
