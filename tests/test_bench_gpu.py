"""bench/bench_gpu.py: every step group runs on a tiny random config (CPU, in-process) and prints every figure as a
`name = value` line the Performance page can read; the real-size configs are the published ones."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from support import book

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def bench_gpu():
    spec = importlib.util.spec_from_file_location("bench_gpu", ROOT / "bench" / "bench_gpu.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


NUMBER = re.compile(r"^-?\d+(\.\d+)?([eE][-+]?\d+)?$")
TEXT = {"device", "device_name", "gpu_figures", "peak_memory", "fits_t4_by", "configs", "tiny_inference_dtype",
        "tiny_sft_precision", "tiny_grpo_attn"}


def expected_names(b) -> list[str]:
    c = "tiny"
    names = ["device", "device_name", "gpu_figures", "peak_memory", "fits_t4_by", "t4_budget_gib", "configs", "quick",
             "threads", "decode_rounds"]
    names += [f"{c}_{k}" for k in ("params", "layers", "heads", "kv_heads", "d_model", "vocab", "inference_dtype",
                                   "prompt_tokens", "new_tokens", "decode_same_tokens", "plain_ms_per_token",
                                   "traced_ms_per_token", "traced_over_plain", "eap_ig_tokens", "eap_ig_m",
                                   "eap_ig_seconds_per_example", "sft_seq_len", "sft_grad_accum", "sft_precision",
                                   "shft_heads")]
    for g in ("shft", "lora", "full_sft"):
        names += [f"{c}_{g}_{k}" for k in ("trainable_params", "first_step_seconds", "step_seconds")]
    names += [f"{c}_grpo_{k}" for k in ("batch", "prompt_tokens", "completion_tokens", "attn", "gradient_checkpointing",
                                        "plain_step_seconds", "credit_step_seconds", "credit_step_over_plain")]
    for steps in b.STEPS.values():
        for step in steps:
            names += [f"{c}_{step}_{k}" for k in ("peak_gib", "estimate_gib", "peak_over_estimate", "fits_t4")]
    return names


def test_every_step_prints_its_figures_on_a_tiny_config(bench_gpu):
    # A fresh process with glibc's mmap threshold pinned, as `make bench` runs it: inside pytest's long-lived process
    # the tiny steps reuse freed heap and the peak RSS can read 0 (seen in a CI run).
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    res = subprocess.run([sys.executable, str(ROOT / "bench" / "bench_gpu.py"), "--device", "cpu", "--config", "tiny",
                          "--quick", "--inline"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    out = res.stdout
    rows = book.result_lines(out)  # what `python -m support.book bench` stores for the Performance page
    got = dict(rows)
    assert len(got) == len(rows), "duplicate names"
    missing = [n for n in expected_names(bench_gpu) if n not in got]
    assert not missing, missing
    assert not [n for n in got if n.endswith("_error")]
    for name, value in got.items():
        if name not in TEXT:
            assert NUMBER.match(value) or value in ("True", "False"), (name, value)
    assert got["gpu_figures"] == "not measured (no GPU here)" and got["fits_t4_by"] == "estimate"
    assert got["tiny_decode_same_tokens"] == "True"  # tracing does not change the generated tokens
    assert int(got["tiny_new_tokens"]) >= 1 and int(got["tiny_shft_heads"]) == 8  # 30 capped at 2 layers x 4 heads
    assert int(got["tiny_lora_trainable_params"]) < int(got["tiny_full_sft_trainable_params"])
    for step in [s for steps in bench_gpu.STEPS.values() for s in steps]:
        assert float(got[f"tiny_{step}_estimate_gib"]) > 0 and float(got[f"tiny_{step}_peak_gib"]) > 0, step
        assert got[f"tiny_{step}_fits_t4"] == "True", step


def test_fits_t4_is_judged_by_the_measured_peak_on_cuda_and_by_the_estimate_on_cpu(bench_gpu):
    G = bench_gpu.GIB
    step = {"peak": 20 * G, "estimate": 10 * G}
    assert "c_s_fits_t4 = False" in bench_gpu.memory_lines("c", "s", step, cuda=True)
    assert "c_s_fits_t4 = True" in bench_gpu.memory_lines("c", "s", step, cuda=False)
    lines = bench_gpu.memory_lines("c", "s", {"peak": None, "estimate": 20 * G}, cuda=False)
    assert "c_s_fits_t4 = False" in lines and not any("peak_over_estimate" in ln for ln in lines)


@pytest.mark.parametrize("config,params", [("qwen2.5-0.5b", 494_032_768), ("qwen2.5-1.5b", 1_543_714_304)])
def test_the_real_size_configs_are_the_published_ones(bench_gpu, config, params):
    s = bench_gpu.model_shape(config)
    assert (s.n_layers, s.vocab, s.n_kv_heads, s.tied) == ({"qwen2.5-0.5b": 24, "qwen2.5-1.5b": 28}[config], 151936,
                                                          2, True)
    assert s.n_params == pytest.approx(params, rel=0.01)  # Qwen2.5's published parameter counts
