"""Benchmark: each chapter's core step on real-size Qwen2.5-0.5B and 1.5B: time, peak memory, estimate, T4 fit.

    python bench/bench_gpu.py                                            # both configs on the GPU, full sizes
    python bench/bench_gpu.py --config qwen2.5-1.5b --steps decode,grpo  # one config, some steps
    .venv/bin/python bench/bench_gpu.py --device cpu --config qwen2.5-0.5b --quick   # CPU check: a few minutes

Without a GPU the defaults are the CPU check's (``qwen2.5-0.5b``, ``--quick``); ``--full`` forces the full sizes.

Models: random weights built from the published configs only (`support.models.random_hf_model`; no download):
``qwen2.5-0.5b`` (as `support.organism.QWEN25_05B_CONFIG`: d 896, 24 layers, 14 query heads on 2 K/V heads, MLP 4864,
vocabulary 151936, tied embeddings) and ``qwen2.5-1.5b`` (d 1536, 28 layers, 12 query heads on 2 K/V heads, MLP 8960,
vocabulary 151936, tied); ``tiny`` is a 2-layer model for the tests. Tokenizer: `bench_rl.word_tokenizer`, a word-level
tokenizer padded with filler words to the model's vocabulary (prompts are random filler words or token ids). The
weights' values do not change the work (lengths are fixed: every decode runs to its token budget unless a random
model emits the end token, which is reported by the token counts).

Steps (one line group each, names prefixed by the config), on `--device` (default cuda when present, else cpu):

* ``plain_decode`` / ``traced_decode``: chapter 01's `support.tracing.trace` (hook_z recording and the readout over
  4 option tokens A-D) and `support.tracing.plain_decode` (the same KV-cache greedy loop without hooks) on one prompt
  of random words: milliseconds per generated token, the fastest of `rounds` interleaved calls after one warm-up
  each, and `traced_over_plain`;
* ``eap_ig``: chapter 03's `support.circuits.attribute` (EAP-IG, KL metric, `--m` steps) on one clean/corrupted pair
  of random token ids differing at two positions: seconds per example, after one small warm-up call;
* ``shft`` / ``lora`` / ``full_sft``: chapter 04's regimes, `support.finetune.prepare` ("wh" on `--heads` seeded
  random heads, "lora" r=8, "full") then `support.training.train(max_steps=2)` on random examples of `sft_seq_len`
  tokens (batch 1, half the tokens masked as prompt): the second optimizer step's seconds (the first allocates the
  AdamW state); fp32 master weights under the training loop's autocast (bf16 on GPUs that support it);
* ``grpo_plain`` / ``grpo_credit``: chapter 05's GRPO step without and with coupled attention credit, measured by
  bench/bench_rl.py's own timing worker (imported, with this config registered; its fixed-length completions and
  noise reward), with a peak-memory meter around each step (`training_step` through `optimizer.step`).

Inference steps run in the dtype chapters load models in on this device (`support.models.pick_dtype`: bf16 on GPUs
that support it, fp32 on CPU); GRPO runs fp32 (`support.rl.grpo_config`).

Memory: each step group runs in a fresh subprocess (decoding and EAP-IG share one; each training regime and GRPO
have their own), which first runs its work once on the tiny config (lazy imports and one-time setup stay out of the
figures). ``<step>_peak_gib`` is the peak during the step above the worker's memory before the model existed
(weights included): CUDA, `torch.cuda.max_memory_allocated` after `reset_peak_memory_stats`; CPU, peak RSS (VmHWM
after resetting it through /proc/self/clear_refs, glibc's mmap threshold pinned so that freed tensors leave the RSS;
CPU times are therefore a little pessimistic). ``<step>_estimate_gib`` is `support.memory`'s estimate from the config:
`inference_footprint` for plain decoding, `tracing.footprint` (chapter 01's guard: the traced Z buffer and readout as
kept bytes) for traced decoding, `circuits.footprint` (chapter 03's guard: weights + `activation_bytes` + the Δz and
gradient buffers, (S + R)·T·d·4) for EAP-IG, `train_footprint` for the SFT regimes, and for GRPO
`train_footprint` of every parameter (gradient checkpointing on, TRL's default) or, for the credit step when larger,
the credit pass: weights, AdamW state, `inference_footprint` of one chunk plus its kept attention maps and fp32
logits. ``<step>_fits_t4`` says whether the step fits a 16 GiB T4 (`T4_GIB`): by the measured peak on CUDA, by the
estimate on CPU (which has no GPU to measure).

Prints `name = value` lines (`python -m support.book bench bench/bench_gpu.py ...` stores them for the book's
Performance page). A failing step group prints `<config>_<group>_error` and the script exits non-zero.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

from support.models import REAL_CONFIGS

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

BENCH_DIR = Path(__file__).resolve().parent
GIB = 1024 ** 3
#: The budget `<step>_fits_t4` checks against (a 16 GB T4; about 15 GiB of it is usable by tensors).
T4_GIB = 16.0
CONFIGS = {
    "tiny": dict(vocab_size=2048, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=True),
    **REAL_CONFIGS,  # support.models: the released models' shapes
}
REAL = tuple(REAL_CONFIGS)
#: Work sizes: the full ones (GPU) and `--quick` (CPU: the 0.5B config in a few minutes).
SIZES = {
    "full": dict(prompt_tokens=128, new_tokens=128, rounds=3, eap_tokens=128, sft_seq_len=512, grad_accum=8,
                 grpo_prompts=2, grpo_generations=4, grpo_completion_len=32, grpo_repeats=2, grpo_warmup=1),
    "quick": dict(prompt_tokens=32, new_tokens=8, rounds=2, eap_tokens=32, sft_seq_len=64, grad_accum=1,
                  grpo_prompts=1, grpo_generations=2, grpo_completion_len=8, grpo_repeats=1, grpo_warmup=1),
}
#: Step groups (what `--steps` names), the worker that runs each, and the measured steps each reports.
GROUPS = {"decode": "inference", "eap_ig": "inference", "shft": "shft", "lora": "lora", "full_sft": "full_sft",
          "grpo": "grpo"}
STEPS = {"decode": ("plain_decode", "traced_decode"), "eap_ig": ("eap_ig",), "shft": ("shft",), "lora": ("lora",),
         "full_sft": ("full_sft",), "grpo": ("grpo_plain", "grpo_credit")}
REGIMES = {"shft": "wh", "lora": "lora", "full_sft": "full"}  # support.finetune.prepare's regime names
OPTIONS = "A-D"


# ----------------------------------------------------------------------------------------------- setup
def bench_module(name: str):
    """A sibling benchmark script loaded as a private module (its functions reused; nothing of it runs)."""
    spec = importlib.util.spec_from_file_location(f"_bench_gpu_{name}", BENCH_DIR / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def sizes(args) -> dict:
    return SIZES["quick" if args.quick else "full"]


def build_model(config: str, device: str, dtype=None):
    """Random-weight HF model of the named config (eager attention, eval mode), built directly on `device`."""
    import torch

    from support.models import random_hf_model

    with torch.device(device):
        model = random_hf_model("qwen2", **CONFIGS[config])
    return model if dtype is None else model.to(dtype)


def tokenizer(config: str):
    """bench_rl's word-level tokenizer over the option labels, padded with filler words `w<i>` to the vocabulary."""
    return bench_module("bench_rl").word_tokenizer(list("ABCD"), CONFIGS[config]["vocab_size"])


def model_shape(config: str):
    from transformers import AutoConfig

    from support import memory as M

    return M.Shape.from_config(AutoConfig.for_model("qwen2", **CONFIGS[config]))


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def warm_up(args) -> None:
    """Run this worker once on the tiny config at `--quick` sizes first, so that lazy imports and one-time setup
    (kernels, thread pools, the libraries' code pages in the RSS) stay out of the measured figures."""
    if args.inline or args.config == "tiny":
        return
    import gc

    WORKERS[args.worker](argparse.Namespace(**{**vars(args), "config": "tiny", "quick": True}))
    gc.collect()


class Meter:
    """Peak memory above this worker's starting point (before any model): CUDA `max_memory_allocated`, CPU peak RSS
    (VmHWM, reset through /proc/self/clear_refs). `peak()` is None where the CPU peak cannot be measured."""

    def __init__(self, device):
        import torch

        self.torch, self.dev = torch, torch.device(device)
        self.cuda = self.dev.type == "cuda"
        self.ok = self.cuda or os.access("/proc/self/clear_refs", os.W_OK)
        if self.cuda:
            torch.cuda.synchronize(self.dev)
            self.base = torch.cuda.memory_allocated(self.dev)
        else:
            self.base = _status_kb("VmRSS") * 1024 if self.ok else 0

    def sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize(self.dev)

    def reset(self) -> None:
        self.sync()
        if self.cuda:
            self.torch.cuda.reset_peak_memory_stats(self.dev)
        elif self.ok:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # the peak RSS (VmHWM) starts again from the current RSS

    def peak(self) -> int | None:
        self.sync()
        if self.cuda:
            return int(self.torch.cuda.max_memory_allocated(self.dev) - self.base)
        return _status_kb("VmHWM") * 1024 - self.base if self.ok else None


# ----------------------------------------------------------------------------------------------- workers
def inference_worker(args) -> dict:
    """Plain and traced greedy decoding per token, then one EAP-IG attribution (whichever `args.steps` asks for)."""
    import torch

    from support import circuits as C
    from support import memory as M
    from support import readout, tracing
    from support.decoding import DecodeConfig
    from support.models import LoadedModel, bridge, pick_dtype

    warm_up(args)
    dev = torch.device(args.device)
    meter = Meter(dev)
    dtype = pick_dtype(dev)
    z = sizes(args)
    hf = build_model(args.config, args.device, dtype)
    tok = tokenizer(args.config)
    for c in (hf.config, hf.generation_config):
        c.eos_token_id, c.pad_token_id = tok.eos_token_id, tok.pad_token_id
    lm = LoadedModel(name=f"random-{args.config}", bridge=bridge(hf, tok, f"random-{args.config}"), hf_model=hf,
                     tokenizer=tok, kind="local")
    s = model_shape(args.config)
    out: dict = {"dtype": str(dtype).removeprefix("torch.")}
    rng = random.Random(args.seed)

    def timed(fn):
        meter.reset()
        t0 = time.perf_counter()
        res = fn()
        meter.sync()
        return time.perf_counter() - t0, meter.peak(), res

    if "decode" in args.steps:
        prompt = " ".join(f"w{rng.randrange(1000)}" for _ in range(z["prompt_tokens"]))
        cfg = DecodeConfig(max_new_tokens=z["new_tokens"])
        ro = readout.build_readout(lm, OPTIONS)
        methods = {"plain_decode": lambda: tracing.plain_decode(lm, prompt, cfg).tokens,
                   "traced_decode": lambda: tracing.trace(lm, prompt, readout=ro, decode=cfg).tokens}
        for fn in methods.values():
            fn()  # warm-up: one-time costs (lazy imports, kernel selection) stay out of the figures
        best = {m: float("inf") for m in methods}
        peak: dict = {m: None for m in methods}
        tokens: dict = {}
        for r in range(z["rounds"]):
            for m in (list(methods) if r % 2 == 0 else list(methods)[::-1]):
                secs, p, tokens[m] = timed(methods[m])
                best[m] = min(best[m], secs)
                peak[m] = p if peak[m] is None else max(peak[m], p)
        n = len(tokens["plain_decode"])
        seq = len(tok(prompt)["input_ids"]) + n
        ro_bytes = ro.P.numel() * ro.P.element_size() if ro.P is not None else 0
        est = {"plain_decode": M.inference_footprint(s, 1, seq, dtype, what="plain greedy decoding"),
               "traced_decode": tracing.footprint(hf.config, seq - n, cfg.cap, dtype, ro_bytes)}  # chapter 01's guard
        out.update(prompt_tokens=seq - n, new_tokens=n,
                   decode_same_tokens=tokens["traced_decode"] == tokens["plain_decode"],
                   plain_ms_per_token=1e3 * best["plain_decode"] / n,
                   traced_ms_per_token=1e3 * best["traced_decode"] / n,
                   traced_over_plain=best["traced_decode"] / best["plain_decode"])
        for m in methods:
            out[m] = {"peak": peak[m], "estimate": est[m].total}
        del ro

    if "eap_ig" in args.steps:
        T, V = z["eap_tokens"], s.vocab
        g = torch.Generator().manual_seed(args.seed)

        def pair(t):
            clean = torch.randint(3, V, (1, t), generator=g)  # not pad/unk/eos
            corrupted = clean.clone()
            corrupted[:, [t // 4, t // 2]] = torch.randint(3, V, (1, 2), generator=g)
            return clean.tolist(), corrupted.tolist()

        C.attribute(lm, *pair(8), metric="kl", m=1, batch_size=1)  # warm-up
        clean, corrupted = pair(T)
        secs, p, _ = timed(lambda: C.attribute(lm, clean, corrupted, metric="kl", m=args.m, batch_size=1))
        est = C.footprint(hf.config, 1, T, dtype)  # chapter 03's guard
        out.update(eap_ig_tokens=T, eap_ig_m=args.m, eap_ig_seconds_per_example=secs,
                   eap_ig={"peak": p, "estimate": est.total})
    return out


def train_worker(args) -> dict:
    """One SFT regime: prepare, then `support.training.train` for 2 optimizer steps; the second step's seconds."""
    import torch

    from support import finetune as ft
    from support import memory as M
    from support import training as tr

    warm_up(args)
    dev = torch.device(args.device)
    meter = Meter(dev)
    z = sizes(args)
    model = build_model(args.config, args.device)  # fp32 master weights (support.finetune.MASTER_DTYPE)
    geom = ft.geometry(model)
    heads = []
    if args.worker == "shft":
        pool = [(l, h) for l in range(geom.n_layers) for h in range(geom.n_heads)]
        heads = sorted(random.Random(f"bench|{args.seed}").sample(pool, min(args.heads, len(pool))))
    ft.prepare(REGIMES[args.worker], model, heads or None)
    trainable = tr.count_trainable(model)
    g = torch.Generator().manual_seed(args.seed)
    n, half = z["sft_seq_len"], z["sft_seq_len"] // 2
    examples = []
    for i in range(8):
        ids = torch.randint(3, int(model.config.vocab_size), (n,), generator=g).tolist()
        examples.append(tr.SFTExample(str(i), tuple(ids), tuple([-100] * half + ids[half:])))
    cfg = tr.TrainConfig(lr=5e-5, max_steps=2, grad_accum=z["grad_accum"], log_every=10**9)
    amp = tr.amp_dtype(cfg.precision, dev)
    marks: list[float] = []

    def mark(step, loss):
        meter.sync()
        marks.append(time.perf_counter())

    meter.reset()
    t0 = time.perf_counter()
    tr.train(model, examples, cfg, callback=mark)
    peak = meter.peak()
    act = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[amp]
    est = M.train_footprint(model_shape(args.config), trainable, cfg.batch_size, n, act)
    return {"trainable_params": trainable, "heads": len(heads), "precision": act, "seq_len": n,
            "grad_accum": cfg.grad_accum, "first_step_seconds": marks[0] - t0, "step_seconds": marks[1] - marks[0],
            args.worker: {"peak": peak, "estimate": est.total}}


def grpo_worker(args) -> dict:
    """bench_rl's timing worker (credit and plain GRPO steps, interleaved) on this config, with a peak-memory meter
    around each step: from `training_step` through `optimizer.step`."""
    from transformers import AutoConfig

    from support import rhythm, rl

    warm_up(args)
    z = sizes(args)
    R = bench_module("bench_rl")
    R.CONFIGS[args.config] = CONFIGS[args.config]
    R.DEFAULTS.setdefault(args.config, dict(R.DEFAULTS["qwen2.5-0.5b"]))
    meter = Meter(args.device)
    peaks: dict[str, int | None] = {}
    build_trainers = R.trainers

    def trainers(a, out_dir):
        out, batch, model, tok = build_trainers(a, out_dir)
        state = {"run": None}
        for name, t in out.items():
            def training_step(*x, _f=t.training_step, _name=name, **kw):
                state["run"] = _name
                meter.reset()
                return _f(*x, **kw)
            t.training_step = training_step
        opt = out["credit"].optimizer

        def step(*x, _f=opt.step, **kw):
            res = _f(*x, **kw)
            p, run = meter.peak(), state["run"]
            peaks[run] = p if peaks.get(run) is None else max(peaks[run], p)
            return res
        opt.step = step
        return out, batch, model, tok

    R.trainers = trainers
    argv = ["--worker", "timing", "--device", args.device, "--config", args.config,
            "--prompts", str(z["grpo_prompts"]), "--generations", str(z["grpo_generations"]),
            "--completion-len", str(z["grpo_completion_len"]), "--repeats", str(z["grpo_repeats"]),
            "--warmup", str(z["grpo_warmup"]), "--threads", str(args.threads), "--seed", str(args.seed)]
    saved = [(mod, dict(vars(mod))) for mod in (rhythm, rl)]  # bench_rl's timers wrap functions of these modules
    buf = io.StringIO()
    try:
        with contextlib.redirect_stdout(buf):
            R.main(argv)
    finally:
        for mod, attrs in saved:
            for k, v in attrs.items():
                if getattr(mod, k, None) is not v:
                    setattr(mod, k, v)
    t = json.loads(buf.getvalue().strip().splitlines()[-1])
    B, N = z["grpo_prompts"] * z["grpo_generations"], t["prompt_tokens"] + z["grpo_completion_len"]
    c, cfg = rl.CreditConfig(), AutoConfig.for_model("qwen2", **CONFIGS[args.config])
    gc = bool(t["gradient_checkpointing"])
    plain = rl.footprint(cfg, z["grpo_prompts"], z["grpo_generations"], N, credit=False, gradient_checkpointing=gc)
    credit = rl.footprint(cfg, z["grpo_prompts"], z["grpo_generations"], N, credit=True, n_layers=c.n_layers,
                          chunk=c.chunk, gradient_checkpointing=gc).total  # chapter 05's guard
    return {"batch": B, "prompt_tokens": t["prompt_tokens"], "completion_tokens": z["grpo_completion_len"],
            "attn": t["attn"], "gradient_checkpointing": t["gradient_checkpointing"],
            "plain_step_seconds": t["plain_step_seconds"], "credit_step_seconds": t["credit_step_seconds"],
            "credit_step_over_plain": t["credit_step_over_plain"],
            "grpo_plain": {"peak": peaks.get("plain"), "estimate": plain.total},
            "grpo_credit": {"peak": peaks.get("credit"), "estimate": credit}}


WORKERS = {"inference": inference_worker, "shft": train_worker, "lora": train_worker, "full_sft": train_worker,
           "grpo": grpo_worker}


def run_worker(args, config: str, worker: str, steps: list[str]) -> dict:
    """One step group in a fresh subprocess (clean peak memory), or in this process with `--inline` (tests)."""
    sub = argparse.Namespace(**{**vars(args), "config": config, "worker": worker, "steps": steps})
    if args.inline:
        import torch

        threads = torch.get_num_threads()
        torch.set_num_threads(args.threads)
        try:
            return WORKERS[worker](sub)
        finally:
            torch.set_num_threads(threads)
    cmd = [sys.executable, __file__, "--worker", worker, "--config", config, "--device", args.device,
           "--steps", ",".join(steps), "--threads", str(args.threads), "--heads", str(args.heads), "--m", str(args.m),
           "--seed", str(args.seed), "--quick" if args.quick else "--full"]
    env = {**os.environ, "TQDM_DISABLE": "1"}
    if args.device == "cpu":  # every large tensor is its own mapping, so freed ones leave the RSS
        env["MALLOC_MMAP_THRESHOLD_"] = "65536"
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if p.returncode != 0:
        raise RuntimeError(p.stderr.strip().splitlines()[-1] if p.stderr.strip() else f"exit code {p.returncode}")
    return json.loads(p.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------------------------- driver
def device_name(device: str) -> str:
    import torch

    if device == "cuda":
        return torch.cuda.get_device_name()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
    except (OSError, StopIteration):
        import platform

        cpu = platform.processor() or platform.machine()
    return f"{cpu} ({len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()} cores)"


def fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def memory_lines(prefix: str, step: str, m: dict, cuda: bool) -> list[str]:
    peak, est = m["peak"], m["estimate"]
    lines = [f"{prefix}_{step}_peak_gib = {peak / GIB:.3f}" if peak is not None
             else f"{prefix}_{step}_peak_gib = not measured (no /proc/self/clear_refs)",
             f"{prefix}_{step}_estimate_gib = {est / GIB:.3f}"]
    if peak is not None:
        lines.append(f"{prefix}_{step}_peak_over_estimate = {peak / est:.3g}")
    judged = peak if cuda and peak is not None else est
    lines.append(f"{prefix}_{step}_fits_t4 = {judged <= T4_GIB * GIB}")
    return lines


def report(config: str, groups: list[str], res: dict, errors: dict, cuda: bool) -> list[str]:
    s = model_shape(config)
    c = config
    lines = [f"{c}_params = {s.n_params}", f"{c}_layers = {s.n_layers}", f"{c}_heads = {s.n_heads}",
             f"{c}_kv_heads = {s.n_kv_heads}", f"{c}_d_model = {s.d_model}", f"{c}_vocab = {s.vocab}"]
    inf = res.get("inference")
    if inf is not None:
        lines.append(f"{c}_inference_dtype = {inf['dtype']}")
    if "decode" in groups and inf is not None:
        for k in ("prompt_tokens", "new_tokens", "decode_same_tokens", "plain_ms_per_token", "traced_ms_per_token",
                  "traced_over_plain"):
            lines.append(f"{c}_{k} = {fmt(inf[k])}")
        for step in STEPS["decode"]:
            lines += memory_lines(c, step, inf[step], cuda)
    if "eap_ig" in groups and inf is not None:
        for k in ("eap_ig_tokens", "eap_ig_m", "eap_ig_seconds_per_example"):
            lines.append(f"{c}_{k} = {fmt(inf[k])}")
        lines += memory_lines(c, "eap_ig", inf["eap_ig"], cuda)
    train = [g for g in ("shft", "lora", "full_sft") if g in groups and g in res]
    if train:
        t = res[train[0]]
        lines += [f"{c}_sft_seq_len = {t['seq_len']}", f"{c}_sft_grad_accum = {t['grad_accum']}",
                  f"{c}_sft_precision = {t['precision']}"]
    for g in train:
        t = res[g]
        if g == "shft":
            lines.append(f"{c}_shft_heads = {t['heads']}")
        lines += [f"{c}_{g}_trainable_params = {t['trainable_params']}",
                  f"{c}_{g}_first_step_seconds = {fmt(t['first_step_seconds'])}",
                  f"{c}_{g}_step_seconds = {fmt(t['step_seconds'])}"]
        lines += memory_lines(c, g, t[g], cuda)
    if "grpo" in groups and "grpo" in res:
        t = res["grpo"]
        for k in ("batch", "prompt_tokens", "completion_tokens", "attn", "gradient_checkpointing",
                  "plain_step_seconds", "credit_step_seconds", "credit_step_over_plain"):
            lines.append(f"{c}_grpo_{k} = {fmt(t[k])}")
        for step in STEPS["grpo"]:
            lines += memory_lines(c, step, t[step], cuda)
    for worker, msg in errors.items():
        lines.append(f"{c}_{worker}_error = {' '.join(str(msg).split())[:300]}")
    return lines


def main(argv: list[str] | None = None) -> int:
    import torch

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default=None, choices=["cpu", "cuda"], help="default: cuda when present, else cpu")
    ap.add_argument("--config", default=None, choices=sorted(CONFIGS) + ["all"],
                    help="all = qwen2.5-0.5b and qwen2.5-1.5b (default on cuda); qwen2.5-0.5b is the cpu default")
    size = ap.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true",
                      help="small work (prompt 32 tokens, 8 new, EAP-IG on 32 tokens, SFT on 64, GRPO 1x2 completions "
                           "of 8 tokens, no gradient accumulation): the CPU check, and the default on cpu")
    size.add_argument("--full", action="store_true", help="the full sizes (the default on cuda) even on cpu (slow)")
    ap.add_argument("--steps", default=",".join(GROUPS), help=f"comma-separated, from {list(GROUPS)}")
    ap.add_argument("--heads", type=int, default=30, help="SHFT head budget M (paper 000: 30)")
    ap.add_argument("--m", type=int, default=8, help="EAP-IG integration steps (the chapter's default is 100)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads on CPU (default 2; tiny 1)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--inline", action="store_true",
                    help="run the workers in this process (tests; peak memory then includes earlier steps' leftovers)")
    ap.add_argument("--worker", default=None, choices=sorted(WORKERS), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device here")
    args.quick = args.quick or (args.device == "cpu" and not args.full)
    steps = [x for x in args.steps.split(",") if x]
    if bad := [x for x in steps if x not in GROUPS]:
        raise SystemExit(f"unknown steps {bad}; valid choices: {list(GROUPS)}")
    if args.worker:
        args.threads = args.threads or 2
        torch.set_num_threads(args.threads)
        args.steps = steps
        print(json.dumps(WORKERS[args.worker](args)))
        return 0
    config = args.config or ("all" if args.device == "cuda" else "qwen2.5-0.5b")
    configs = list(REAL) if config == "all" else [config]
    args.threads = args.threads or (1 if configs == ["tiny"] else 2)
    cuda = args.device == "cuda"
    z = sizes(args)
    print(f"device = {args.device}\ndevice_name = {device_name(args.device)}")
    print("gpu_figures = measured" if cuda else "gpu_figures = not measured (no GPU here)")
    print("peak_memory = " + ("torch.cuda.max_memory_allocated above the worker's start" if cuda
                              else "peak RSS above the worker's start (VmHWM)"))
    print(f"fits_t4_by = {'measured peak' if cuda else 'estimate'}\nt4_budget_gib = {T4_GIB}")
    print(f"configs = {','.join(configs)}\nquick = {args.quick}\nthreads = {args.threads}")
    print(f"decode_rounds = {z['rounds']}", flush=True)
    failed = False
    for c in configs:
        res, errors = {}, {}
        workers = list(dict.fromkeys(GROUPS[x] for x in steps))
        for w in workers:
            try:
                res[w] = run_worker(args, c, w, [x for x in steps if GROUPS[x] == w])
            except Exception as e:  # reported as a line; the other groups still run
                errors[w] = f"{type(e).__name__}: {e}" if args.inline else str(e)
                failed = True
        for line in report(c, steps, res, errors, cuda):
            print(line, flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
