"""The Colab setup cell, run offline: it clones the book and installs it only on Colab, and keeps Colab's torch.

Every chapter's first code cell (tag `hide-input`) clones the repository and runs `pip install -e` on the clone when
`google.colab` is imported. These tests run that cell as it is written, in a fresh interpreter of this environment
(where torch is installed, as it is on Colab), with nothing downloaded:

- **Colab** is an empty `google.colab` package in a temporary folder on `PYTHONPATH`, imported before the cell runs
  (its `google/__init__.py` extends its path, so installed `google.*` packages still import).
- **The clone**: the cell reads `RH_REPO` (clone source) and `RH_HOME` (target folder) from the environment, defaulting
  to the repository URL and `/content/reasoning-heads`. Here `RH_REPO` is this checkout as a `file://` URL, so the
  clone holds the committed `HEAD` (what a reader on Colab clones), and `RH_HOME` a temporary folder.
- **pip** runs exactly as the cell runs it (`python -m pip install -q -e <clone>`) and is steered only through
  `PIP_*` environment variables: `--dry-run --report <json>` (nothing is installed; the report lists what would
  be), `--no-index` with `--find-links` to a folder holding one fake wheel, `torch-999.0` (a newer torch on offer,
  as PyPI offers one on Colab), no build isolation (`PIP_NO_BUILD_ISOLATION=0`, pip's inverted switch: the clone's
  metadata is built with this environment's setuptools, so no build requirement is fetched), and no pip
  configuration files. The real resolver decides, against the installed packages: if the cell's command would
  reinstall or upgrade torch, the fake wheel is what it would take, and the report names it.

The assertion: the report installs the book, editable, and nothing named torch. The control runs the same cell with
`PIP_UPGRADE=1` and `PIP_UPGRADE_STRATEGY=eager` (what `pip install -U` with eager upgrades would do) and finds the
fake torch in the report, so the assertion can fail. A second run of the cell, with the clone already there, neither
clones nor installs. Each pip run takes a few seconds.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
SOURCES = sorted((ROOT / "notebooks").glob("*.ipynb"))
FAKE_TORCH = "999.0"


def setup_cell(path: Path) -> str:
    return next(c for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code").source


def fake_wheel(folder: Path, name: str, version: str) -> Path:
    """A minimal pure-Python wheel `name-version` (metadata and an empty package: enough for pip to resolve it)."""
    dist = f"{name}-{version}"
    files = {f"{name}/__init__.py": "",
             f"{dist}.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
             f"{dist}.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\n"
                                          "Tag: py3-none-any\n"}
    files[f"{dist}.dist-info/RECORD"] = "".join(f"{p},,\n" for p in files) + f"{dist}.dist-info/RECORD,,\n"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{dist}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        for p, text in files.items():
            z.writestr(p, text)
    return path


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory) -> Path:
    if shutil.which("git") is None:
        pytest.skip("git is not installed (apt-get install git)")
    if subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True).returncode:
        pytest.skip(f"{ROOT} is not a git checkout: nothing to clone")
    if subprocess.run([sys.executable, "-m", "pip", "--version"], capture_output=True).returncode:
        pytest.skip("pip is not installed in this environment (python -m ensurepip)")
    try:
        metadata.version("torch")
    except metadata.PackageNotFoundError:
        pytest.skip("torch is not installed here, so there is no torch to keep")
    d = tmp_path_factory.mktemp("colab")
    google = d / "fake" / "google"
    (google / "colab").mkdir(parents=True)
    (google / "__init__.py").write_text("__path__ = __import__('pkgutil').extend_path(__path__, __name__)\n")
    (google / "colab" / "__init__.py").write_text("")
    fake_wheel(d / "wheels", "torch", FAKE_TORCH)
    return d


def run_cell(sandbox: Path, home: Path, report: Path, **env_extra: str) -> subprocess.CompletedProcess:
    """Run chapter 00's setup cell on "Colab" in a fresh interpreter; pip reports what it would install."""
    script = sandbox / "setup_cell.py"
    script.write_text("import google.colab  # noqa: F401  (what makes the cell act)\n"
                      + setup_cell(SOURCES[0]) + "\nprint('cwd:', os.getcwd())\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env.update({"PYTHONPATH": str(sandbox / "fake"), "RH_REPO": ROOT.as_uri(), "RH_HOME": str(home),
                "PIP_CONFIG_FILE": os.devnull, "PIP_DRY_RUN": "1", "PIP_REPORT": str(report), "PIP_NO_INDEX": "1",
                "PIP_FIND_LINKS": str(sandbox / "wheels"), "PIP_NO_BUILD_ISOLATION": "0",
                "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1", "GIT_TERMINAL_PROMPT": "0", **env_extra})
    res = subprocess.run([sys.executable, str(script)], cwd=sandbox, env=env, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    return res


def installs(report: Path) -> dict[str, dict]:
    return {item["metadata"]["name"].lower(): item for item in json.loads(report.read_text())["install"]}


def test_every_chapter_has_the_same_setup_cell():
    cells = {p.name: setup_cell(p) for p in SOURCES}
    assert len(set(cells.values())) == 1, sorted(cells)
    cell = cells[SOURCES[0].name]
    for text in ('"google.colab" in sys.modules', 'os.environ.get("RH_REPO", "https://github.com/',
                 'os.environ.get("RH_HOME", "/content/reasoning-heads")', '"pip", "install", "-q", "-e", RH_HOME'):
        assert text in cell, text
    assert "-U" not in cell and "--upgrade" not in cell and "torch" not in cell.split("\n", 1)[1]


def test_setup_cell_installs_the_book_offline_and_keeps_torch(sandbox):
    home, report = sandbox / "first" / "reasoning-heads", sandbox / "first.json"
    res = run_cell(sandbox, home, report)
    assert (home / "pyproject.toml").is_file() and (home / "support" / "__init__.py").is_file()
    assert f"cwd: {home}" in res.stdout  # the chapter then runs inside the clone
    got = installs(report)
    assert "torch" not in got, f"the setup cell would reinstall torch: {got['torch']['metadata']['version']}"
    book = got.pop("reasoning-heads")
    assert book["download_info"]["dir_info"].get("editable") is True
    assert not got, f"the setup cell would install more than the book: {sorted(got)}"
    # run again, as a reader re-running the cell does: the clone exists, so nothing is cloned or installed
    again = sandbox / "again.json"
    run_cell(sandbox, home, again)
    assert not again.exists()


def test_control_an_eager_upgrade_would_take_the_offered_torch(sandbox):
    report = sandbox / "upgrade.json"
    run_cell(sandbox, sandbox / "upgrade" / "reasoning-heads", report, PIP_UPGRADE="1", PIP_UPGRADE_STRATEGY="eager")
    got = installs(report)
    assert got.get("torch", {}).get("metadata", {}).get("version") == FAKE_TORCH, sorted(got)
