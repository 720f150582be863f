"""Benchmark: EAP / EAP-IG edge attribution (support.circuits.attribute) time and peak memory vs m and sequence length.

    .venv/bin/python bench/bench_circuits.py                                  # organism grid, then Qwen2.5-0.5B
    python bench/bench_circuits.py --configs toy --ms 1,8,32 --lengths 16,32,64
    python bench/bench_circuits.py --configs qwen2.5-0.5b --ms 1,4 --lengths 32 --pairs 1 --threads 2
    python bench/bench_circuits.py --device cuda --configs qwen2.5-0.5b --ms 1,16 --lengths 128,512 --pairs 4

Configs: ``toy`` is the organism (`load_model("toy-qwen2")`: 8 layers, 8 query heads on 4 K/V heads, d = 128);
``qwen2.5-0.5b`` is a random-weight Qwen2.5-0.5B built from its published config (`support.organism.
QWEN25_05B_CONFIG`: 24 layers, 14 query heads on 2 K/V heads, d = 896, vocabulary 151936; no download), bridged with a
small word-level tokenizer (only its pad id is used: the prompts are token ids). The weights' values do not change
the work.

Work: `--pairs` clean/corrupted pairs of `T` random tokens differing at two positions, one batch, the paper's KL
metric, convention k = 1..m; m = 1 is plain EAP's cost. A call is two no-grad capture passes (clean, corrupted), m
forward+backward passes with the embedding on the IG path, and one [S, B·T·d] × [B·T·d, R] matmul into the scores.
Reported per (T, m): seconds per example (the fastest of `--repeats` calls, after one untimed warm-up call) and
the same divided by one plain forward pass of the batch (`over_forward`).

Memory is measured in a fresh subprocess per config: the peak above the memory held before each call (CPU: peak
RSS, VmHWM after resetting it via /proc/self/clear_refs, with glibc's mmap threshold pinned so freed tensors go back
to the OS; CUDA: `torch.cuda.max_memory_allocated`). Next to it, the analytic size of the two float32 buffers the
method keeps (Δz for S senders and summed gradients for R receivers): `eapig_bytes_per_token` = (S + R)·d·4, the
part of the footprint that grows with B·T and does not depend on m; `peak_bytes_per_token` is the measured peak
divided by B·T at the longest sequence (it includes the fixed part, such as the float32 logits row over a 151936-token
vocabulary, so it overstates the per-token cost at short sequences).

Prints one `name = value` line per figure; per-grid lines are named `<config>_T<T>_m<m>_<figure>`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

CONFIGS = ("toy", "qwen2.5-0.5b")
DEFAULTS = {"toy": dict(ms="1,8,32", lengths="16,32,64", pairs=4, repeats=2, threads=1),
            "qwen2.5-0.5b": dict(ms="1,4", lengths="32", pairs=1, repeats=1, threads=2)}


# ----------------------------------------------------------------------------------------------- setup
def word_tokenizer():
    """A small word-level tokenizer (pad id 0): the bridge needs one to boot; prompts are passed as token ids."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = ["<pad>", "<unk>", "<eos>"] + [f"w{i}" for i in range(61)]
    tk = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(vocab)}, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", unk_token="<unk>", eos_token="<eos>")


def build(config: str, device: str):
    """The bridge to attribute on."""
    if config == "toy":
        from support.models import load_model

        return load_model("toy-qwen2", device=device).bridge
    from support.models import bridge, random_hf_model
    from support.organism import QWEN25_05B_CONFIG

    hf = random_hf_model("qwen2", **QWEN25_05B_CONFIG).to(device)
    return bridge(hf, word_tokenizer(), "random-qwen2.5-0.5b")


def random_pairs(n: int, T: int, vocab: int, seed: int = 0) -> tuple[list, list]:
    """n clean/corrupted token-id pairs of length T differing at two positions (ids avoid 0, the pad id)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    clean = torch.randint(1, vocab, (n, T), generator=g)
    corrupted = clean.clone()
    corrupted[:, [T // 4, T // 2]] = torch.randint(1, vocab, (n, 2), generator=g)
    return clean.tolist(), corrupted.tolist()


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


# ----------------------------------------------------------------------------------------------- workers
def worker(args) -> dict:
    """Timing or memory of `attribute` over the (T, m) grid, in this process."""
    import torch

    from support import circuits as C

    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    b = build(args.configs, args.device)
    g = C.empty_graph(b)
    S, R = g.scores.shape
    d, V = int(b.cfg.d_model), int(b.cfg.d_vocab)
    ms = [int(x) for x in args.ms.split(",")]
    lengths = [int(x) for x in args.lengths.split(",")]
    out = {"layers": g.n_layers, "heads": g.n_heads, "kv_heads": g.n_kv_heads, "d_model": d, "vocab": V,
           "senders": S, "receivers": R, "edges": g.n_edges, "threads": torch.get_num_threads(), "grid": []}

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    warm = random_pairs(1, 8, V)
    C.attribute(b, *warm, metric="kl", m=1, batch_size=1)  # one-time costs (lazy imports, kernel setup)
    for T in lengths:
        clean, corrupted = random_pairs(args.pairs, T, V)

        def call(m):
            return C.attribute(b, clean, corrupted, metric="kl", m=m, batch_size=args.pairs)

        if args.worker == "timing":
            fwd = []
            for _ in range(max(args.repeats, 2)):
                with torch.no_grad():
                    sync()
                    t0 = time.perf_counter()
                    b(torch.tensor(clean, device=dev))
                    sync()
                    fwd.append(time.perf_counter() - t0)
            for m in ms:
                secs = []
                for _ in range(args.repeats):
                    sync()
                    t0 = time.perf_counter()
                    graph = call(m)
                    sync()
                    secs.append(time.perf_counter() - t0)
                gap = graph.meta["metric_clean"] - graph.meta["metric_corrupted"]
                out["grid"].append({"T": T, "m": m, "seconds_per_example": min(secs) / args.pairs,
                                    "forward_seconds_per_example": min(fwd) / args.pairs,
                                    "completeness_error": abs(graph.meta["input_attribution"] - gap) / abs(gap)})
        else:
            for m in ms:
                if dev.type == "cuda":
                    torch.cuda.synchronize()
                    torch.cuda.reset_peak_memory_stats()
                    base = torch.cuda.memory_allocated()
                    call(m)
                    torch.cuda.synchronize()
                    peak = torch.cuda.max_memory_allocated() - base
                else:
                    with open("/proc/self/clear_refs", "w") as f:
                        f.write("5")  # reset the peak RSS (VmHWM) to the current RSS
                    base = _status_kb("VmRSS")
                    call(m)
                    peak = (_status_kb("VmHWM") - base) * 1024
                out["grid"].append({"T": T, "m": m, "peak_bytes": int(peak),
                                    "buffer_bytes": (S + R) * d * 4 * args.pairs * T})
    return out


def run_worker(args, mode: str) -> dict:
    cmd = [sys.executable, __file__, "--worker", mode, "--configs", args.configs, "--device", args.device,
           "--ms", args.ms, "--lengths", args.lengths, "--pairs", str(args.pairs), "--repeats", str(args.repeats),
           "--threads", str(args.threads)]
    env = {**os.environ, "TQDM_DISABLE": "1"}
    if mode == "memory":  # every large tensor is its own mapping, so freed ones leave the RSS
        env["MALLOC_MMAP_THRESHOLD_"] = "65536"  # (it would slow the timed calls down: fresh pages per tensor)
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if p.returncode != 0:
        raise RuntimeError(f"{mode} worker for {args.configs} failed:\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------------------------- driver
def report(config: str, args, t: dict, mem: dict | None) -> None:
    print(f"config = {config}\ndevice = {args.device}\nthreads = {t['threads']}\npairs_per_batch = {args.pairs}")
    for k in ("layers", "heads", "kv_heads", "d_model", "vocab", "senders", "receivers", "edges"):
        print(f"{k} = {t[k]}")
    bpt = (t["senders"] + t["receivers"]) * t["d_model"] * 4
    print(f"eapig_bytes_per_token = {bpt}")
    for row in t["grid"]:
        key = f"{config}_T{row['T']}_m{row['m']}"
        print(f"{key}_seconds_per_example = {row['seconds_per_example']:.4g}")
        print(f"{key}_over_forward = {row['seconds_per_example'] / row['forward_seconds_per_example']:.4g}")
        print(f"{key}_completeness_error = {row['completeness_error']:.3g}")
    if mem is not None:
        for row in mem["grid"]:
            key = f"{config}_T{row['T']}_m{row['m']}"
            print(f"{key}_peak_bytes = {row['peak_bytes']}\n{key}_buffer_bytes = {row['buffer_bytes']}")
        longest = max(r["T"] for r in mem["grid"])
        peak = max(r["peak_bytes"] for r in mem["grid"] if r["T"] == longest)
        print(f"{config}_peak_bytes_per_token = {peak / (args.pairs * longest):.4g}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--configs", default="toy,qwen2.5-0.5b", help=f"comma-separated, from {list(CONFIGS)}")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--ms", default=None, help="IG steps to time (toy 1,8,32; qwen2.5-0.5b 1,4)")
    ap.add_argument("--lengths", default=None, help="sequence lengths (toy 16,32,64; qwen2.5-0.5b 32)")
    ap.add_argument("--pairs", type=int, default=None, help="pairs per batch (toy 4; qwen2.5-0.5b 1)")
    ap.add_argument("--repeats", type=int, default=None, help="timed calls per point, fastest kept (toy 2; 0.5B 1)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads (toy 1: a tiny model's small ops only lose to thread synchronisation on a "
                         "shared machine; qwen2.5-0.5b 2)")
    ap.add_argument("--no-memory", action="store_true", help="skip the memory subprocesses")
    ap.add_argument("--worker", default=None, choices=["timing", "memory"], help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        for k, v in DEFAULTS[args.configs].items():
            if getattr(args, k) is None:
                setattr(args, k, v)
        print(json.dumps(worker(args)))
        return 0
    for config in args.configs.split(","):
        if config not in CONFIGS:
            raise SystemExit(f"unknown config {config!r}; valid choices: {list(CONFIGS)}")
        sub = argparse.Namespace(**{**vars(args), "configs": config})
        for k, v in DEFAULTS[config].items():
            if getattr(sub, k) is None:
                setattr(sub, k, v)
        t = run_worker(sub, "timing")
        report(config, sub, t, None if args.no_memory else run_worker(sub, "memory"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
