"""Benchmark: cost of head-wise entropy tracing relative to plain KV-cached greedy decoding (printed ratios).

Three methods on the same prompts, producing the same tokens (checked):

- plain:  support.tracing.plain_decode, the hand-written KV-cache greedy loop with no hooks (the baseline);
- traced: support.tracing.trace, the same loop plus hook_z recording at the newest position and the precomputed
          W_O W_U[:, K] readout (Eq. 1-3);
- naive:  support.tracing.naive_trace, a full `run_with_cache` forward on the whole sequence at every step with a
          full-vocabulary logit lens of every head's hook_result.

Each method runs `--rounds` times, interleaved; the fastest round of each is kept (robust to other processes on a
shared CPU). Prints `name = value` lines, including `traced_over_plain` (target <= 1.15 on the toy, CPU) and
`naive_over_plain`.

    python bench/bench_tracing.py [--model toy-qwen2] [--n 8] [--rounds 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402  (after the offline switches above)

from support import decoding, readout  # noqa: E402
from support import tracing as T  # noqa: E402
from support.models import load_model, toy_models  # noqa: E402
from support.toydata import generate  # noqa: E402


def default_model() -> str:
    if "toy-qwen2" in toy_models():
        return "toy-qwen2"
    raise SystemExit("no embedded organism (data/organism/toy-qwen2); pass --model <dir or name>")


def timed(fn) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def main(argv: list[str] | None = None) -> dict[str, float]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--task", default="toy_mc4")
    ap.add_argument("--n", type=int, default=8, help="prompts")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--options", default="A-D")
    ap.add_argument("--norm", default="raw", choices=readout.NORMS)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (default 1: single-token steps of a small model are latency-bound, and extra "
                         "threads only add synchronisation noise on a shared 2-core machine)")
    ap.add_argument("--no-naive", action="store_true", help="skip the (slow) naive method")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    lm = load_model(args.model or default_model(), device="cpu")
    prompts = [it.prompt for it in generate(args.task, args.n, "test", seed=123)]
    cfg = decoding.DecodeConfig(max_new_tokens=args.max_new_tokens)
    ro = readout.build_readout(lm, args.options, norm=args.norm)
    T.plain_decode(lm, prompts[0], cfg)  # warm-up
    T.trace(lm, prompts[0], readout=ro, decode=cfg)

    methods = {
        "plain": lambda p: T.plain_decode(lm, p, cfg).tokens,
        "traced": lambda p: T.trace(lm, p, readout=ro, decode=cfg).tokens,
    }
    if not args.no_naive:
        methods["naive"] = lambda p: T.naive_trace(lm, p, ro, cfg)[1]
    best = {m: float("inf") for m in methods}
    tokens: dict[str, list] = {}
    for r in range(args.rounds):
        order = list(methods) if r % 2 == 0 else list(methods)[::-1]
        for m in order:
            secs, toks = timed(lambda: [methods[m](p) for p in prompts])
            best[m] = min(best[m], secs)
            tokens[m] = toks
    for m in methods:
        if tokens[m] != tokens["plain"]:
            raise SystemExit(f"{m} decoding produced different tokens from plain decoding")

    n_tok = sum(len(t) for t in tokens["plain"])
    res = {
        "model": lm.name, "prompts": len(prompts), "generated_tokens": n_tok,
        "layers": lm.n_layers, "heads": lm.n_heads, "options": len(ro.options), "norm": args.norm,
        "threads": torch.get_num_threads(),
        "plain_s": best["plain"], "traced_s": best["traced"],
        "plain_ms_per_token": 1e3 * best["plain"] / n_tok, "traced_ms_per_token": 1e3 * best["traced"] / n_tok,
        "traced_over_plain": best["traced"] / best["plain"],
    }
    if "naive" in best:
        res.update(naive_s=best["naive"], naive_ms_per_token=1e3 * best["naive"] / n_tok,
                   naive_over_plain=best["naive"] / best["plain"])
    for k, v in res.items():
        print(f"{k} = {v:.4g}" if isinstance(v, float) else f"{k} = {v}")
    return res


if __name__ == "__main__":
    main()
