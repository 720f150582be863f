"""Shared fixtures. Tests run offline; the real datasets come from $RH_DATA_DIR or ../shared/data."""

from __future__ import annotations

import os

import pytest

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
