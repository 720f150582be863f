"""support.memory: the estimate against measured CPU peaks, and the guard's one clear message."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from support import memory as M
from support.models import random_hf_model

ROOT = Path(__file__).resolve().parent.parent
SIZES = dict(vocab_size=4096, hidden_size=256, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=8,
             num_key_value_heads=2)

# Peak RSS above the process's memory before the model exists, in a fresh process (glibc's mmap threshold pinned,
# so freed tensors go back to the OS and the peak is the peak of live tensors).
PEAK = textwrap.dedent("""
    import json, sys, torch
    torch.set_num_threads(1)
    from support.models import random_hf_model
    from support import memory as M

    def kb(key):
        for line in open("/proc/self/status"):
            if line.startswith(key):
                return int(line.split()[1])

    mode, B, T, sizes = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), json.loads(sys.argv[4])
    w = random_hf_model("qwen2", vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                        num_attention_heads=2, num_key_value_heads=1)
    w.config._attn_implementation = "eager"
    x = torch.randint(0, 64, (1, 8))
    w(input_ids=x, labels=x).loss.backward()  # one-time costs (lazy imports, kernels) stay out of the peak
    del w
    open("/proc/self/clear_refs", "w").write("5")
    base = kb("VmRSS")
    m = random_hf_model("qwen2", **sizes)
    m.config._attn_implementation = "eager"  # as the bridge runs it
    ids = torch.randint(0, sizes["vocab_size"], (B, T))
    s = M.Shape.from_config(m.config)
    if mode == "train":
        opt = torch.optim.AdamW(m.parameters(), lr=1e-4)
        for _ in range(2):  # the second step holds the optimizer state during the forward/backward peak
            m(input_ids=ids, labels=ids).loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        est = M.train_footprint(s, sum(p.numel() for p in m.parameters()), B, T)
    else:
        with torch.no_grad():
            m.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=32, do_sample=False)
        est = M.inference_footprint(s, B, T + 32)
    print(json.dumps({"measured": (kb("VmHWM") - base) * 1024, "estimate": est.total}))
""")


def measured_and_estimate(mode: str, batch: int, seq: int) -> tuple[int, int]:
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-c", PEAK, mode, str(batch), str(seq), json.dumps(SIZES)], cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    return out["measured"], out["estimate"]


def test_shape_counts_the_parameters_exactly():
    for arch, extra in (("qwen2", {}), ("qwen3", {}), ("llama", {"num_key_value_heads": 4})):
        m = random_hf_model(arch, **extra)
        assert M.Shape.from_config(m.config).n_params == pytest.approx(sum(p.numel() for p in m.parameters()),
                                                                      rel=0.01), arch


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc to measure peak RSS")
@pytest.mark.parametrize("mode,batch,seq", [("train", 4, 256), ("train", 1, 1024), ("generate", 8, 128)])
def test_estimate_is_within_tolerance_of_the_measured_peak(mode, batch, seq):
    measured, estimate = measured_and_estimate(mode, batch, seq)
    assert measured > 20 * 2 ** 20  # the step really allocated (the weights alone are 22 MiB)
    assert abs(estimate / measured - 1) <= M.TOLERANCE, (estimate / 2 ** 20, measured / 2 ** 20)


def test_guard_passes_what_fits_and_names_the_setting_that_would():
    s = M.Shape.from_config(random_hf_model("qwen2", **SIZES).config)

    def step(batch):
        return M.train_footprint(s, s.n_params, batch, 512, what="full SFT step")

    assert M.guard(step, "batch_size", 8, "cpu", available=10 * step(8).total).total == step(8).total
    budget = int(step(2).total / M.HEADROOM) + 1  # batch 2 fits, 4 does not
    msg = r"full SFT step: ~.* GiB \(weights .*does not fit.*batch_size=2 would"
    with pytest.raises(M.MemoryBudgetError, match=msg):
        M.guard(step, "batch_size", 16, "cpu", available=budget)
    with pytest.raises(M.MemoryBudgetError, match="not even with batch_size=1.*smaller model"):
        M.guard(step, "batch_size", 16, "cpu", available=step(1).total // 2)
    assert isinstance(M.MemoryBudgetError("x"), ValueError)  # a ParameterError: bad input, before heavy work


def test_free_bytes_reads_the_machine():
    assert 0 < M.free_bytes("cpu") < 2 ** 50


def test_the_chapters_guards_name_their_own_setting():
    from support import finetune as ft
    from support import rl

    cfg = random_hf_model("qwen2", **SIZES).config
    assert ft.check_memory(cfg, ["full"], 4, 256, "fp32", "cpu").total > 0  # 6M parameters fit this machine
    with pytest.raises(M.MemoryBudgetError, match="GRPO step .*prompts_per_step="):
        rl.check_memory(cfg, 4096, 8, 2048, "cpu")
    with pytest.raises(M.MemoryBudgetError, match="full SFT step .*batch_size="):
        ft.check_memory(cfg, ["base", "full"], 4096, 8192, "fp32", "cpu")


def test_tracing_and_circuit_guards_name_their_own_setting(monkeypatch):
    """Chapters 01 and 03: tracing halves max_new_tokens, EAP-IG halves batch_size (the estimates themselves are
    measured against peaks by bench/bench_gpu.py: 1.04 traced decoding, 1.11 EAP-IG on Qwen2.5-0.5B)."""
    from support import circuits as C
    from support import tracing

    cfg = random_hf_model("qwen2", **SIZES).config
    t = tracing.footprint(cfg, 100, 256)
    assert t.parts["kept"] == 256 * 4 * 8 * 32 * 4  # the [cap, L, H, d_head] hook_z buffer, fp32
    assert tracing.footprint(cfg, 100, 512).total > t.total
    e1, e4 = C.footprint(cfg, 1, 128), C.footprint(cfg, 4, 128)
    assert e4.parts["kept"] == 4 * e1.parts["kept"] and e4.parts["weights"] == e1.parts["weights"]
    assert tracing.check_memory(cfg, 100, 256, "cpu").total == t.total  # fits this machine
    monkeypatch.setattr(M, "free_bytes", lambda device: int(tracing.footprint(cfg, 100, 64).total / M.HEADROOM) + 1)
    with pytest.raises(M.MemoryBudgetError, match=r"traced greedy decoding .*max_new_tokens=64 would"):
        tracing.check_memory(cfg, 100, 1024, "cpu")
    monkeypatch.setattr(M, "free_bytes", lambda device: int(C.footprint(cfg, 2, 128).total / M.HEADROOM) + 1)
    with pytest.raises(M.MemoryBudgetError, match=r"EAP-IG batch .*batch_size=2 would"):
        C.check_memory(cfg, 16, 128, "cpu")
