"""Chapters 01 and 02 end to end on a real-size random-weight Qwen2.5-0.5B (issue 15: nothing may assume toy sizes).

The model directory (`support.models.save_random_model`: the released model's config, random weights in bf16, the
organism's word-level tokenizer padded to 151,936 entries) goes through the same path as a real checkpoint: the
runner, papermill, `load_model(<dir>)` and the TransformerBridge, at the smallest parameters the chapters accept.
Measured on the 2-core machine: building the directory 26 s, chapter 01 71 s, chapter 02 16 s.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from support.artifacts import PROJECT_ROOT
from support.heads import load_head_set
from support.models import REAL_CONFIGS, save_random_model
from support.params import ParameterError
from support.tracing import load_traces

SHAPE = REAL_CONFIGS["qwen2.5-0.5b"]
PARAMS = {"tasks": "[toy_mc4, toy_countdown]", "n_probe": "4", "n_probe_other": "4", "n_compare": "4",
          "max_new_tokens": "6", "n_show": "1", "probe_sizes": "[2, 4]", "M": "6"}


@pytest.fixture(scope="module")
def real_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("real_size")
    model_dir = save_random_model(root / "qwen2.5-0.5b-random")
    run_dir = root / "run"
    cmd = [sys.executable, "-m", "support.run", "--profile", "ci", "--chapters", "01_tracing", "02_head_selection",
           "-p", "model_name", str(model_dir), "--run-dir", str(run_dir), "--out", str(root / "out")]
    for k, v in PARAMS.items():
        cmd += ["-p", k, v]
    res = subprocess.run(cmd, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=900,
                         env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
    assert res.returncode == 0, (res.stdout + res.stderr)[-4000:]
    return model_dir, run_dir


@pytest.mark.slow
def test_chapter_01_traces_every_head_of_the_real_shape(real_run):
    model_dir, run_dir = real_run
    L, H = SHAPE["num_hidden_layers"], SHAPE["num_attention_heads"]
    index = json.loads((run_dir / "traces" / "toy_mc4" / "raw" / "index.json").read_text())
    assert index["provenance"]["model"]["name"] == str(model_dir) and index["provenance"]["model"]["kind"] == "local"
    traces = load_traces(run_dir / "traces" / "toy_mc4" / "raw")
    assert len(traces) == 4
    for tr in traces:
        assert tuple(tr.logits.shape[1:]) == (L, H, 4) and tr.logits.shape[0] == len(tr.tokens) == 6
        assert tr.entropy.isfinite().all() and (tr.entropy >= 0).all()


@pytest.mark.slow
def test_chapter_02_selects_heads_of_the_real_shape(real_run):
    model_dir, run_dir = real_run
    for kind in ("steadfast", "wavering"):
        hs = load_head_set(run_dir / "head_sets" / f"{kind}.json", None)
        assert (hs.n_layers, hs.n_heads) == (SHAPE["num_hidden_layers"], SHAPE["num_attention_heads"])
        assert len(hs) == 6 and all(0 <= l < hs.n_layers and 0 <= h < hs.n_heads for l, h in hs.heads)


def test_an_unknown_shape_is_refused_before_anything_is_built(tmp_path):
    with pytest.raises(ParameterError, match="valid choices: qwen2.5-0.5b, qwen2.5-1.5b"):
        save_random_model(tmp_path / "x", shape="qwen9-1t")
    assert not (tmp_path / "x").exists()
