"""Build chapter notebooks from a compact cell list (a development helper; the .ipynb files are the sources).

Usage in a build script:  from tools.nb import md, code, setup, params, write
"""

from __future__ import annotations

import nbformat

REPO = "reasoning-heads/reasoning-heads"

SETUP = '''# Setup (runs only on Colab): clone the book and install it; versions come from pyproject.toml, Colab's torch is kept.
import os, subprocess, sys
if "google.colab" in sys.modules and not os.path.exists("/content/reasoning-heads"):
    subprocess.run(["git", "clone", "--depth", "1", "https://github.com/%s", "/content/reasoning-heads"], check=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-e", "/content/reasoning-heads"], check=True)
if "google.colab" in sys.modules:
    os.chdir("/content/reasoning-heads")''' % REPO


def badge(chapter: str) -> str:
    url = f"https://colab.research.google.com/github/{REPO}/blob/main/notebooks/{chapter}.ipynb"
    return f"[![Open in Colab](https://colab.research.google.com/assets/colab-badge.svg)]({url})"


def md(text: str):
    return nbformat.v4.new_markdown_cell(text.strip("\n"))


def code(src: str, tags: list[str] | None = None):
    c = nbformat.v4.new_code_cell(src.strip("\n"))
    if tags:
        c.metadata["tags"] = tags
    return c


def setup():
    c = code(SETUP, tags=["hide-input"])
    c.metadata["jupyter"] = {"source_hidden": True}
    return c


def params(src: str):
    return code(src, tags=["parameters"])


def write(path: str, cells: list) -> None:
    nb = nbformat.v4.new_notebook()
    nb.cells = cells
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    for i, c in enumerate(nb.cells):
        c["id"] = f"cell-{i:02d}"
    nbformat.write(nb, path)
