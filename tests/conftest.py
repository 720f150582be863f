"""Shared fixtures. Tests run offline; the real datasets come from $RH_DATA_DIR or ../shared/data."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


@pytest.fixture(scope="session")
def toy():
    """The embedded organism, loaded once through the real TransformerBridge path."""
    from support.models import load_model

    return load_model("toy-qwen2", device="cpu")


def save_tiny(tmp_path, arch: str):
    """Save a tiny random HF model of `arch` plus a word-level tokenizer as a local model directory."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from support.models import random_hf_model

    words = ["<pad>", "<unk>", "<eos>"] + [str(i) for i in range(100)] + list("ABCDE") + ["Answer:", "+", "="]
    tk = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", unk_token="<unk>", eos_token="<eos>")
    model = random_hf_model(arch, vocab_size=128)
    d = tmp_path / f"tiny-{arch}"
    model.save_pretrained(d)
    tok.save_pretrained(d / "tokenizer")
    return d


@pytest.fixture
def tiny_dir(tmp_path):
    """Factory: `tiny_dir(arch)` saves a tiny random model of `arch` as a local model directory."""
    return lambda arch: save_tiny(tmp_path, arch)


@pytest.fixture(scope="session")
def executed(tmp_path_factory):
    """Execute every chapter once per session under the ci profile, into book/chapters (what the book build reads);
    returns the run directory."""
    rd = tmp_path_factory.mktemp("run")
    res = subprocess.run([sys.executable, "-m", "support.run", "--profile", "ci", "--run-dir", str(rd)],
                         cwd=ROOT, capture_output=True, text=True, timeout=3600)
    print(res.stdout)
    assert res.returncode == 0, res.stdout + res.stderr
    return rd


@dataclass
class Book:
    html: Path  # the built HTML book (index.html, book/chapters/*.html, ...)
    returncode: int
    log: str


@pytest.fixture(scope="session")
def built_book(request, tmp_path_factory) -> Book:
    """The HTML book, built once per session (`make html`'s steps) from the chapters that `executed` ran: the
    "Results at a glance" page from its run directory, then jupyter-book with warnings as errors.
    With RH_BOOK_HTML=<folder> set, that already built book is used instead (nothing is executed or built)."""
    if os.environ.get("RH_BOOK_HTML"):
        return Book(Path(os.environ["RH_BOOK_HTML"]).resolve(), 0, "given by RH_BOOK_HTML")
    from support import book

    run_dir = request.getfixturevalue("executed")
    book.write_glance(run_dir)
    book.write_performance()  # the "Performance" page, from bench/results/ (a page saying so when there are none)
    out = tmp_path_factory.mktemp("book")
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    res = subprocess.run([str(Path(sys.executable).parent / "jupyter-book"), "build", str(ROOT), "--path-output",
                          str(out), "--warningiserror", "--keep-going", "--quiet"],
                         cwd=ROOT, capture_output=True, text=True, env=env, timeout=900)
    return Book(out / "_build" / "html", res.returncode, res.stdout[-3000:] + res.stderr[-3000:])
