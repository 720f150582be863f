"""Benchmark: one TRL GRPO step with coupled attention credit (paper 003, Eq. 17-18) vs one plain TRL GRPO step.

    .venv/bin/python bench/bench_rl.py                                          # the organism (toy-qwen2), CPU
    python bench/bench_rl.py --config qwen2.5-0.5b                              # real-size random Qwen2.5-0.5B
    python bench/bench_rl.py --device cuda --config qwen2.5-0.5b --prompts 8 --generations 8 --completion-len 128

Both steps are `support.rl.CreditGRPOTrainer`: ``CreditConfig(strategy="coupled")`` (one extra no-grad forward pass
with the RL layers' attention maps, WAAD/FAI per token, γ per response, (B, T) advantages) and
``CreditConfig(strategy="none")``, which leaves TRL's batch untouched (exactly `trl.GRPOTrainer`). A step is what
TRL's training loop does per optimizer step with ``steps_per_generation=1``: `training_step` (generate, reward,
normalise, [shape], loss forward, backward) then `optimizer.step()` and `zero_grad()`.

Same batch, same work: both trainers get the same prompts (Countdown items of `support.toydata`, `prompt_rows`), the
same `support.rl.grpo_config` (P prompts × G generations, temperature 1, no KL), and the torch seed is reset to the
same value before each pair of steps. Every completion has exactly `--completion-len` tokens: generation runs with
``min_new_tokens = max_completion_length`` (the end-of-turn logit is masked until the length is reached; checked from
TRL's completion-length metrics). The reward is seeded noise, a hash of (seed, completion text) in [0, 1), so group
advantages are non-zero, both signs occur, and the work does not depend on whether the policy solves the task (a
fixed-length completion of the organism rarely scores). Both trainers wrap one policy and one AdamW optimizer (so the
0.5B config fits in memory; the weights' values do not change the work, the lengths being fixed). Steps alternate
credit/plain (order flipped every repeat) after `--warmup` untimed pairs; median and minimum are reported.

Configs: ``toy`` is the organism `support.rl.policy("toy-qwen2")` (SDPA attention, as `rl.policy` loads every policy)
with its tokenizer; ``qwen2.5-0.5b`` is a random-weight Qwen2.5-0.5B built from its config only (no download) with a
word-level tokenizer over the prompts' words, padded with filler words to the model's 151936-token vocabulary.
``--attn`` picks the policy's attention (default sdpa, as `rl.policy`; under SDPA the credit pass also pays for
switching to eager attention and back; ``--attn eager`` measures the policy as it was loaded before).

The credit time is split with timers wrapped around `support.rhythm.attention_maps` (the extra forward pass),
`support.rhythm.signals` (per-row span/groups/WAAD/FAI/entropy) and `support.rl.batch_gamma` (per-row γ rules);
`credit_signal_seconds` is TRL's logged ``credit/seconds`` metric (all of `CreditGRPOTrainer.shape_batch`). Each
step is also split into generation, loss forward and backward (TRL's defaults hold: `grpo_config` leaves TRL's
gradient checkpointing on, so the backward recomputes the forward). Threads: 1 on the toy (a 1M-parameter model's
many small ops only lose to thread synchronisation: on a shared 2-core machine 2 threads made steps 3-50× slower and
erratic), 2 on the 0.5B config.

Attention memory is measured in a fresh subprocess on the step's (B, N) batch: the peak of
`support.rhythm.token_signals(..., layers=rl_layers(L, 5), chunk=--chunk)` above the memory held before the call
(CPU: peak RSS, VmHWM after resetting it via /proc/self/clear_refs, with glibc's mmap threshold pinned so freed tensors
go back to the OS; CUDA: `torch.cuda.max_memory_allocated`), next to the same batch's plain no-grad forward pass
(`forward_peak_bytes`), and the analytic sizes of the kept maps (chunk × |RL layers| × H × N × N × 4 bytes), of all
layers' maps, and of the chunk's fp32 logits (chunk × N × V × 4).

Prints one `name = value` line per figure, including `credit_step_over_plain` and whether it meets the target (1.25).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import zlib

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

CONFIGS = {
    "toy": None,  # the organism checkpoint, support.rl.policy("toy-qwen2")
    "qwen2.5-0.5b": dict(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                         num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768,
                         tie_word_embeddings=True, rope_theta=1000000.0),
}
DEFAULTS = {"toy": dict(prompts=8, generations=8, completion_len=48, repeats=5, warmup=1, threads=1),
            "qwen2.5-0.5b": dict(prompts=2, generations=4, completion_len=16, repeats=1, warmup=1, threads=2)}
TARGET = 1.25  # credit step / plain step on the organism
RUNS = {"credit": "coupled", "plain": "none"}


# ----------------------------------------------------------------------------------------------- setup
def word_tokenizer(words: list[str], vocab_size: int):
    """A word-level fast tokenizer: pad/unk/eos, the given words, then filler words up to `vocab_size` entries
    (so every id a random-weight model samples decodes)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = ["<pad>", "<unk>", "<|im_end|>"]
    vocab += sorted(set(words) - set(vocab))
    vocab += [f"w{i}" for i in range(vocab_size - len(vocab))]
    tk = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(vocab)}, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", unk_token="<unk>", eos_token="<|im_end|>")


def build(args):
    """(policy, tokenizer, prompt rows): the organism, or a random-weight model of the named config."""
    import torch

    from support import rl
    from support.toydata import generate

    items = generate("toy_countdown", args.prompts, split="train", seed=args.seed)
    if CONFIGS[args.config] is None:
        model, tok = rl.policy("toy-qwen2", device=args.device)
        rows = rl.prompt_rows(items, tok, template="organism")
    else:
        from transformers import AutoConfig, AutoModelForCausalLM

        rows = rl.prompt_rows(items, template="organism")  # the organism's ChatML Countdown turn (text)
        words = [w for r in rows for w in r["prompt"].split()] + [str(i) for i in range(1000)]
        tok = word_tokenizer(words, CONFIGS[args.config]["vocab_size"])
        cfg = AutoConfig.for_model("qwen2", **CONFIGS[args.config])
        torch.manual_seed(0)
        with torch.device(args.device):
            model = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager", dtype=torch.float32)
        for c in (model.config, model.generation_config):
            c.eos_token_id, c.pad_token_id = tok.eos_token_id, tok.pad_token_id
    model.set_attn_implementation(args.attn)
    return model, tok, rows


def seeded_reward(seed: int):
    """A reward of seeded noise: crc32(seed, completion text) mapped to [0, 1); deterministic, varied, task-blind."""
    def noise_reward(prompts, completions, **kw):
        return [(zlib.crc32(f"{seed}|{c}".encode()) % 10007) / 10007 for c in completions]
    return noise_reward


def trainers(args, out_dir: str):
    """{"credit", "plain"}: two CreditGRPOTrainers over one policy and one optimizer; plus the step's input rows."""
    from datasets import Dataset

    from support import rl

    model, tok, rows = build(args)
    cfg = rl.grpo_config(out_dir, max_steps=10**6, prompts_per_step=args.prompts, num_generations=args.generations,
                         max_completion_length=args.completion_len, seed=args.seed, logging_steps=10**9,
                         use_cpu=args.device == "cpu",
                         generation_kwargs={"min_new_tokens": args.completion_len},  # fixed-length completions
                         **({"gradient_checkpointing": False} if args.no_gradient_checkpointing else {}))
    out = {name: rl.CreditGRPOTrainer(model=model, reward_funcs=[seeded_reward(args.seed)], args=cfg,
                                      train_dataset=Dataset.from_list(rows), processing_class=tok,
                                      credit=rl.CreditConfig(strategy=strategy, chunk=args.chunk))
           for name, strategy in RUNS.items()}
    opt = out["credit"].create_optimizer()
    for t in out.values():
        t.optimizer = opt
        t.current_gradient_accumulation_steps = 1  # set by Trainer.train(); one micro-batch per optimizer step
    batch = [r for r in rows for _ in range(args.generations)]  # TRL's RepeatSampler order: G copies of each prompt
    return out, batch, model, tok


# ----------------------------------------------------------------------------------------------- timing
class Timers:
    """Wall time inside wrapped functions (attributes of modules or objects), accumulated until `take()`."""

    def __init__(self, sync):
        self.sync, self.acc = sync, {}

    def wrap(self, module, name: str, key: str) -> None:
        fn = getattr(module, name)

        def timed(*a, **kw):
            self.sync()
            t0 = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                self.sync()
                self.acc[key] = self.acc.get(key, 0.0) + time.perf_counter() - t0
        setattr(module, name, timed)

    def take(self) -> dict[str, float]:
        out, self.acc = self.acc, {}
        return out


def timing_worker(args) -> dict:
    """Credit and plain GRPO steps on one policy, interleaved; per-step seconds and the credit breakdown."""
    import torch

    from support import rhythm, rl

    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    timers = Timers(sync)
    timers.wrap(rhythm, "attention_maps", "forward")
    timers.wrap(rhythm, "signals", "rows")
    timers.wrap(rl, "batch_gamma", "gamma")
    times: dict[str, list] = {name: [] for name in RUNS}
    parts: dict[str, list] = {f"{run}_{k}": [] for run in RUNS for k in ("generate", "loss", "backward")}
    parts |= {k: [] for k in ("forward", "rows", "gamma", "credit")}
    with tempfile.TemporaryDirectory() as tmp:
        tr, batch, model, _ = trainers(args, tmp)
        opt = tr["credit"].optimizer
        for t in tr.values():  # where a step's time goes: generation, loss forward, backward (per trainer instance)
            timers.wrap(t, "_generate_single_turn", "generate")
            timers.wrap(t, "compute_loss", "loss")
            timers.wrap(t.accelerator, "backward", "backward")
        for rep in range(args.warmup + args.repeats):
            order = list(RUNS) if rep % 2 == 0 else list(RUNS)[::-1]
            for name in order:
                t = tr[name]
                torch.manual_seed(args.seed + rep)
                timers.take()
                sync()
                t0 = time.perf_counter()
                t.training_step(model, batch, None)
                opt.step()
                opt.zero_grad(set_to_none=True)
                sync()
                dt = time.perf_counter() - t0
                m = t._metrics["train"]
                lengths = (m["completions/min_length"][-1], m["completions/max_length"][-1])
                if lengths != (args.completion_len, args.completion_len):
                    raise RuntimeError(f"{name}: completion lengths {lengths}, expected {args.completion_len}")
                got = timers.take()
                if rep < args.warmup:
                    continue
                times[name].append(dt)
                for k in ("generate", "loss", "backward"):
                    parts[f"{name}_{k}"].append(got.get(k, 0.0))
                if name == "credit":
                    for k in ("forward", "rows", "gamma"):
                        parts[k].append(got.get(k, 0.0))
                    parts["credit"].append(m["credit/seconds"][-1])
        tok = tr["plain"].processing_class
        prompt_len = max(len(tok(r["prompt"])["input_ids"]) for r in batch)
    med = {k: statistics.median(v) for k, v in times.items()}
    res = {"prompt_tokens": prompt_len, "threads": torch.get_num_threads(), "attn": model.config._attn_implementation}
    for k, v in times.items():
        res[f"{k}_step_seconds"] = med[k]
        res[f"{k}_step_seconds_min"] = min(v)
    res["credit_signal_seconds"] = statistics.median(parts["credit"])
    res["credit_forward_seconds"] = statistics.median(parts["forward"])
    res["credit_rows_seconds"] = statistics.median(parts["rows"])
    res["credit_gamma_seconds"] = statistics.median(parts["gamma"])
    res["credit_other_seconds"] = res["credit_signal_seconds"] - sum(
        res[f"credit_{k}_seconds"] for k in ("forward", "rows", "gamma"))
    for run in RUNS:
        for k in ("generate", "loss", "backward"):
            res[f"{run}_{k}_seconds"] = statistics.median(parts[f"{run}_{k}"])
    res["gradient_checkpointing"] = bool(tr["plain"].args.gradient_checkpointing)
    res["credit_step_over_plain"] = med["credit"] / med["plain"]
    res["credit_step_over_plain_min"] = min(times["credit"]) / min(times["plain"])
    res["credit_step_extra_seconds"] = med["credit"] - med["plain"]
    res["credit_signal_over_plain_step"] = res["credit_signal_seconds"] / med["plain"]
    return res


# ----------------------------------------------------------------------------------------------- memory
def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def step_batch(args, tok):
    """The step's (B, N) tensors as TRL builds them: left-padded prompts, then completions of exactly T tokens."""
    import torch

    from support import rl
    from support.toydata import generate

    items = generate("toy_countdown", args.prompts, split="train", seed=args.seed)
    rows = rl.prompt_rows(items, tok if CONFIGS[args.config] is None else None, template="organism")
    prompts = [tok(r["prompt"])["input_ids"] for r in rows for _ in range(args.generations)]
    p = max(len(x) for x in prompts)
    g = torch.Generator().manual_seed(args.seed)
    B, T = len(prompts), args.completion_len
    ids = torch.full((B, p + T), tok.pad_token_id, dtype=torch.long)
    am = torch.zeros((B, p + T), dtype=torch.long)
    for i, x in enumerate(prompts):
        ids[i, p - len(x):p] = torch.tensor(x)
        am[i, p - len(x):] = 1
    ids[:, p:] = torch.randint(3, len(tok), (B, T), generator=g)
    resp = torch.zeros_like(am, dtype=torch.bool)
    resp[:, p:] = True
    return ids, am, resp


def memory_worker(args) -> dict:
    """Peak memory above the resting state of one call: token_signals ("attention") or a plain forward ("forward")."""
    import torch

    from support import rhythm
    from support.rl import CreditConfig

    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    c = CreditConfig(chunk=args.chunk)  # the trainer's signal settings
    model, tok, _ = build(args)
    model.eval()
    ids, am, resp = (x.to(dev) for x in step_batch(args, tok))
    L = int(model.config.num_hidden_layers)
    layers = rhythm.rl_layers(L, c.n_layers)
    if args.worker == "attention":
        def call(n):
            return rhythm.token_signals(model, ids[:n], am[:n], resp[:n], layers=layers, window=c.window,
                                        h_lo=c.h_lo, h_hi=c.h_hi, group_frac=c.group_frac, chunk=c.chunk)
    else:
        def call(n):
            with torch.no_grad():
                out = []
                for lo in range(0, n, args.chunk):  # the same chunks as the signal pass
                    x, m = ids[lo:min(n, lo + args.chunk)], am[lo:min(n, lo + args.chunk)]
                    pos = (m.cumsum(-1) - 1).clamp(min=0)
                    out.append(model(input_ids=x, attention_mask=m, position_ids=pos, use_cache=False).logits[:, -1])
                return out
    call(1)  # one sequence first: one-time costs (lazy imports, kernel setup) stay out of the peak
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        call(len(ids))
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
    else:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak RSS (VmHWM) to the current RSS
        base = _status_kb("VmRSS")
        call(len(ids))
        peak = (_status_kb("VmHWM") - base) * 1024
    B, N = ids.shape
    chunk = min(args.chunk, B)
    H, V = int(model.config.num_attention_heads), int(model.config.vocab_size)
    return {"peak_bytes": int(peak), "B": B, "N": N, "chunk": chunk, "layers": layers, "n_layers": L, "heads": H,
            "kept_bytes": chunk * len(layers) * H * N * N * 4, "all_bytes": chunk * L * H * N * N * 4,
            "logits_bytes": chunk * N * V * 4}


# ----------------------------------------------------------------------------------------------- driver
def run_worker(args, worker: str) -> dict:
    cmd = [sys.executable, __file__, "--worker", worker, "--device", args.device, "--config", args.config,
           "--repeats", str(args.repeats), "--warmup", str(args.warmup), "--chunk", str(args.chunk),
           "--prompts", str(args.prompts), "--generations", str(args.generations),
           "--completion-len", str(args.completion_len), "--threads", str(args.threads), "--seed", str(args.seed),
           "--attn", args.attn] + (["--no-gradient-checkpointing"] if args.no_gradient_checkpointing else [])
    env = {**os.environ, "TQDM_DISABLE": "1"}
    if worker != "timing":  # memory workers: every large tensor is its own mapping, so freed ones leave the RSS
        env["MALLOC_MMAP_THRESHOLD_"] = "65536"  # (it would slow the timed steps down: fresh pages per tensor)
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if p.returncode != 0:
        raise RuntimeError(f"worker {worker} failed:\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--config", default="toy", choices=sorted(CONFIGS))
    ap.add_argument("--repeats", type=int, default=None,
                    help="timed step pairs (toy 5; qwen2.5-0.5b 1: a 0.5B step takes ~100 s on a 2-core CPU)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed step pairs first (1)")
    ap.add_argument("--chunk", type=int, default=8, help="sequences per signal forward pass (CreditConfig.chunk)")
    ap.add_argument("--prompts", type=int, default=None, help="prompts per step (toy 8, qwen2.5-0.5b 2)")
    ap.add_argument("--generations", type=int, default=None, help="completions per prompt (toy 8, qwen2.5-0.5b 4)")
    ap.add_argument("--completion-len", type=int, default=None, help="tokens per completion (toy 48, qwen 16)")
    ap.add_argument("--attn", default="sdpa", choices=["eager", "sdpa"],
                    help="policy attention (sdpa: as support.rl.policy loads it)")
    ap.add_argument("--no-gradient-checkpointing", action="store_true",
                    help="turn off TRL's gradient checkpointing (on by default in GRPOConfig, and kept by grpo_config)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads (toy 1: a tiny model's many small ops only lose to thread synchronisation, "
                         "badly so on a shared machine; qwen2.5-0.5b 2)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-memory", action="store_true", help="skip the attention-memory subprocesses")
    ap.add_argument("--worker", default=None, choices=["timing", "attention", "forward"], help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    for k, v in DEFAULTS[args.config].items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.worker:
        print(json.dumps(timing_worker(args) if args.worker == "timing" else memory_worker(args)))
        return 0
    t = run_worker(args, "timing")
    print(f"config = {args.config}\ndevice = {args.device}\nattn = {t['attn']}\nthreads = {t['threads']}\n"
          f"prompts = {args.prompts}\ngenerations = {args.generations}\nbatch = {args.prompts * args.generations}\n"
          f"prompt_tokens = {t['prompt_tokens']}\ncompletion_tokens = {args.completion_len}\nchunk = {args.chunk}\n"
          f"repeats = {args.repeats}")
    print(f"gradient_checkpointing = {t['gradient_checkpointing']}")
    for k in ("credit_step_seconds", "credit_step_seconds_min", "plain_step_seconds", "plain_step_seconds_min",
              "plain_generate_seconds", "plain_loss_seconds", "plain_backward_seconds", "credit_generate_seconds",
              "credit_loss_seconds", "credit_backward_seconds",
              "credit_step_over_plain", "credit_step_over_plain_min", "credit_step_extra_seconds",
              "credit_signal_seconds", "credit_forward_seconds", "credit_rows_seconds", "credit_gamma_seconds",
              "credit_other_seconds", "credit_signal_over_plain_step"):
        print(f"{k} = {t[k]:.4g}")
    print(f"credit_step_over_plain_target = {TARGET}")
    print(f"credit_step_over_plain_target_met = {t['credit_step_over_plain'] <= TARGET}")
    if not args.no_memory:
        att, fwd = run_worker(args, "attention"), run_worker(args, "forward")
        print(f"signal_batch = {att['B']}x{att['N']}\nrl_layers = {','.join(map(str, att['layers']))}\n"
              f"n_layers = {att['n_layers']}\nheads = {att['heads']}\nattention_peak_bytes = {att['peak_bytes']}\n"
              f"forward_peak_bytes = {fwd['peak_bytes']}\n"
              f"attention_peak_over_forward = {att['peak_bytes'] / max(fwd['peak_bytes'], 1):.3g}\n"
              f"attention_maps_kept_bytes = {att['kept_bytes']}\n"
              f"attention_maps_all_layers_bytes = {att['all_bytes']}\nlogits_chunk_bytes = {att['logits_bytes']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
