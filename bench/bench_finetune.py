"""Benchmark: SHFT vs LoRA r8 vs full SFT — trainable parameters, optimizer-state bytes, peak memory, step time.

    .venv/bin/python bench/bench_finetune.py                                   # toy organism config, CPU
    python bench/bench_finetune.py --device cuda --config qwen2.5-0.5b         # real-size random Qwen2.5-0.5B

Each regime runs in a fresh subprocess (clean peak-memory accounting) on random weights built from the config,
through `support.training.train` (App. E loop: batch 1, gradient accumulation, AdamW, cosine; bf16 autocast on
GPUs that support it, fp32 otherwise). Regimes:

* ``shft``        — SHFT on M random heads (slice deltas; the book's implementation);
* ``shft_masked`` — the naive alternative: whole q/k/v/o weights of the touched layers trainable with gradient
  masks, i.e. full-size optimizer state (what `support.finetune` avoids);
* ``shft_matched``— SHFT with the largest M whose parameter count does not exceed LoRA's;
* ``lora``        — peft LoRA r=8, alpha=16 on q_proj/v_proj;  ``full`` — every parameter.

Prints one `name = value` line per figure, including `shft_step_over_lora` and `shft_optim_bytes_over_lora`.
Step time is the median (and the minimum) over the timed steps, measured with all regimes in one process and their
steps interleaved round-robin (robust to load on a shared machine); parameters, optimizer state and memory come from
one fresh subprocess per regime; CPU peak memory is the subprocess' peak RSS (ru_maxrss), GPU peak
memory is `torch.cuda.max_memory_allocated` during training.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import time

CONFIGS = {
    "toy": dict(vocab_size=186, hidden_size=128, intermediate_size=256, num_hidden_layers=6, num_attention_heads=8,
                num_key_value_heads=4, max_position_embeddings=512, tie_word_embeddings=False),
    "qwen2.5-0.5b": dict(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                         num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768,
                         tie_word_embeddings=True, rope_theta=1000000.0),
}
DEFAULTS = {"toy": dict(heads=8, seq_len=128), "qwen2.5-0.5b": dict(heads=30, seq_len=512)}
REGIMES = ("shft", "shft_masked", "shft_matched", "lora", "full")


def build(config: str, device: str):
    """Random-weight Qwen2 model of the named config, built directly on `device` (fp32 master weights)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.for_model("qwen2", **CONFIGS[config])
    torch.manual_seed(0)
    with torch.device(device):
        return AutoModelForCausalLM.from_config(cfg, attn_implementation="eager", dtype=torch.float32)


def matched_heads(geom, heads_pool: list, lora_n: int) -> list:
    """Largest prefix of a random head order whose SHFT count stays ≤ LoRA's count."""
    from support import finetune as ft

    best: list = []
    for m in range(1, len(heads_pool) + 1):
        if ft.shft_param_count(heads_pool[:m], geom) > lora_n:
            break
        best = heads_pool[:m]
    return best


def mask_full_projections(model, heads) -> None:
    """Naive SHFT: whole q/k/v/o weights (and biases) of touched layers trainable, gradients masked to the slices."""
    import torch

    from support import finetune as ft

    geom = ft.geometry(model)
    for p in model.parameters():
        p.requires_grad_(False)
    attns = ft.attention_modules(model)
    for layer in sorted({l for l, _ in heads}):
        hs = [h for l, h in heads if l == layer]
        groups = sorted({h // geom.group_size for h in hs})
        q = ft._rows(hs, geom.d_head, "cpu")
        kv = ft._rows(groups, geom.d_head, "cpu")
        for name, idx, dim in (("q_proj", q, 0), ("k_proj", kv, 0), ("v_proj", kv, 0), ("o_proj", q, 1)):
            lin = getattr(attns[layer], name)
            for pname, p in lin.named_parameters():
                mask = torch.zeros_like(p, dtype=torch.bool)
                mask.index_fill_(dim if pname == "weight" else 0, idx.to(p.device), True)
                p.requires_grad_(True)
                p.register_hook(lambda g, m=mask: g * m)


def setup(args, regime: str):
    """Build a fresh model and prepare it for `regime`; returns (model, heads, examples)."""
    import torch

    from support import finetune as ft
    from support import training as tr

    model = build(args.config, args.device)
    geom = ft.geometry(model)
    pool = [(l, h) for l in range(geom.n_layers) for h in range(geom.n_heads)]
    random.Random(f"bench|{args.seed}").shuffle(pool)  # a random order; the first M heads are the SHFT set
    heads = sorted(pool[: args.heads])
    if regime == "shft_matched":
        heads = sorted(matched_heads(geom, pool, ft.lora_param_count(geom, r=8)))
    if regime in ("shft", "shft_matched"):
        ft.prepare("random", model, heads)
    elif regime == "shft_masked":
        mask_full_projections(model, heads)
    else:
        ft.prepare(regime, model)
        heads = []
    g = torch.Generator().manual_seed(0)
    half = args.seq_len // 2
    examples = []
    for i in range(8):
        ids = torch.randint(0, CONFIGS[args.config]["vocab_size"], (args.seq_len,), generator=g).tolist()
        examples.append(tr.SFTExample(str(i), tuple(ids), tuple([-100] * half + ids[half:])))
    return model, heads, examples


def memory_worker(args) -> dict:
    """Parameters, optimizer-state bytes and peak memory of one regime (runs in its own process)."""
    import torch

    from support import finetune as ft
    from support import training as tr

    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    model, heads, examples = setup(args, args.regime)
    n_train = tr.count_trainable(model)
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base_mem = torch.cuda.memory_allocated()
    rss0 = _rss_mb()
    cfg = tr.TrainConfig(lr=5e-5, max_steps=2, grad_accum=args.grad_accum, log_every=10**9)
    res = tr.train(model, examples, cfg)
    out = {"trainable_params": n_train, "optim_bytes": res.optimizer_bytes, "heads": len(heads),
           "min_layer": min((l for l, _ in heads), default=-1)}
    if args.regime in ("shft", "shft_matched"):
        out["formula_ok"] = int(n_train == ft.shft_param_count(heads, ft.geometry(model)))
    if dev.type == "cuda":
        out["peak_mem_mb"] = torch.cuda.max_memory_allocated() / 2**20
        out["train_mem_mb"] = (torch.cuda.max_memory_allocated() - base_mem) / 2**20
    else:
        out["peak_mem_mb"] = _peak_rss_mb()
        out["train_mem_mb"] = _peak_rss_mb() - rss0
    return out


def timing_worker(args) -> dict:
    """Median optimizer-step time per regime, all regimes in one process, steps interleaved round-robin
    (so load changes on a shared machine hit every regime alike). Same loop as `support.training.train`."""
    import math

    import torch
    from transformers import get_cosine_schedule_with_warmup

    from support import training as tr

    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    total = args.warmup + args.steps
    cfg = tr.TrainConfig(lr=5e-5, max_steps=total, grad_accum=args.grad_accum)
    per_step = cfg.batch_size * cfg.grad_accum
    runs = {}
    for r in args.regimes:
        model, _, examples = setup(args, r)
        params = dict((n, p) for n, p in model.named_parameters() if p.requires_grad)
        opt = torch.optim.AdamW(params.values(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        sched = get_cosine_schedule_with_warmup(opt, math.ceil(cfg.warmup_ratio * total), total)
        runs[r] = (model.train(), examples, params, opt, sched, [])
    amp = tr.amp_dtype(cfg.precision, dev)
    scaler = torch.amp.GradScaler(dev.type) if amp == torch.float16 else None
    order = tr.data_order(8, total * per_step, cfg.seed)
    for step in range(total):
        for r, (model, examples, params, opt, sched, times) in runs.items():
            sync()
            t0 = time.perf_counter()
            tr._step(model, examples, order[step * per_step:(step + 1) * per_step], cfg, opt, sched, scaler, amp, 0,
                     dev, params)
            sync()
            times.append(time.perf_counter() - t0)
    return {r: {"step_ms": 1000 * statistics.median(v[-1][args.warmup:]),
                "step_ms_min": 1000 * min(v[-1][args.warmup:])} for r, v in runs.items()}


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_worker(args, worker: str) -> dict:
    cmd = [sys.executable, __file__, "--worker", worker, "--regimes", *args.regimes, "--device", args.device,
           "--config", args.config, "--heads", str(args.heads), "--seq-len", str(args.seq_len),
           "--steps", str(args.steps), "--warmup", str(args.warmup), "--grad-accum", str(args.grad_accum),
           "--threads", str(args.threads), "--seed", str(args.seed)]
    env = {**os.environ, "TRANSFORMERS_VERBOSITY": "error", "TQDM_DISABLE": "1"}
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if p.returncode != 0:
        raise RuntimeError(f"worker {worker} failed:\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--config", default="toy", choices=sorted(CONFIGS))
    ap.add_argument("--heads", type=int, default=None, help="SHFT head budget M (toy 8, qwen2.5-0.5b 30)")
    ap.add_argument("--seq-len", type=int, default=None, help="tokens per example (toy 128, qwen2.5-0.5b 512)")
    ap.add_argument("--steps", type=int, default=8, help="timed optimizer steps")
    ap.add_argument("--warmup", type=int, default=2, help="untimed optimizer steps first")
    ap.add_argument("--grad-accum", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0, help="seed of the random head draw")
    ap.add_argument("--regimes", nargs="+", default=list(REGIMES), choices=REGIMES)
    ap.add_argument("--worker", default=None, choices=REGIMES + ("timing",), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    for k, v in DEFAULTS[args.config].items():
        if getattr(args, k.replace("-", "_")) is None:
            setattr(args, k, v)
    if args.worker:
        args.regime = args.worker
        print(json.dumps(timing_worker(args) if args.worker == "timing" else memory_worker(args)))
        return 0
    res = {r: run_worker(args, r) for r in args.regimes}
    for r, ms in run_worker(args, "timing").items():
        res[r].update(ms)
    print(f"config = {args.config}\ndevice = {args.device}\nheads = {args.heads}\nseq_len = {args.seq_len}\n"
          f"grad_accum = {args.grad_accum}\ntimed_steps = {args.steps}")
    for r, m in res.items():
        for k, v in m.items():
            if k != "regime":
                print(f"{r}_{k} = {round(v, 3) if isinstance(v, float) else v}")
    if "lora" in res:
        lora = res["lora"]
        for r in ("shft", "shft_matched", "shft_masked", "full"):
            if r in res:
                print(f"{r}_step_over_lora = {res[r]['step_ms'] / lora['step_ms']:.3f}")
                print(f"{r}_step_over_lora_min = {res[r]['step_ms_min'] / lora['step_ms_min']:.3f}")
                print(f"{r}_optim_bytes_over_lora = {res[r]['optim_bytes'] / lora['optim_bytes']:.3f}")
    if "shft" in res and "shft_masked" in res:
        print(f"shft_optim_bytes_over_masked = {res['shft']['optim_bytes'] / res['shft_masked']['optim_bytes']:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
