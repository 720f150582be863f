"""environment.yml mirrors pyproject.toml; runtime dependencies are ranges, never exact pins."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

try:  # Python 3.11+
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser, from PyPI (a test extra)
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent


def _norm(req: str) -> tuple[str, str]:
    m = re.match(r"^\s*([A-Za-z0-9_.\-]+)\s*(.*)$", req)
    return m.group(1).lower().replace("_", "-"), m.group(2).replace(" ", "")


def _pyproject() -> dict[str, str]:
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(meta["dependencies"]) + [r for extra in meta["optional-dependencies"].values() for r in extra]
    return dict(_norm(r) for r in reqs)


def _environment() -> dict[str, str]:
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    return dict(_norm(r) for r in pip if not r.startswith("-e"))


def test_environment_mirrors_pyproject():
    assert _environment() == _pyproject()


def test_no_exact_pins_in_runtime_dependencies():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert not [r for r in meta["dependencies"] if "==" in r]


def test_jupyter_book_is_below_2():
    assert _pyproject()["jupyter-book"].endswith("<2")


def test_required_top_level_layout():
    for p in ["book", "notebooks", "support", "data", "tests", "bench", "_config.yml", "_toc.yml", "environment.yml",
              "pyproject.toml", "Makefile", "README.md", ".ci/run"]:
        assert (ROOT / p).exists(), p
    assert "make test" in (ROOT / ".ci/run").read_text()
    assert "make test" in (ROOT / "README.md").read_text()


def test_no_third_party_data_committed():
    import subprocess

    files = subprocess.run(["git", "ls-files", "data"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    names = ("gsm8k", "aqua", "arc", "math500", "aime", "amc23", "bbh", "countdown", "commonsenseqa", "qasc",
             "wikitext")
    assert not [f for f in files if any(n in f.lower() for n in names)]
