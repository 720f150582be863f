"""Benchmark: generation tokens/s with and without a head intervention (support.interventions) on the same prompts.

    .venv/bin/python bench/bench_interventions.py                          # the organism (toy-qwen2), CPU, 1 thread
    python bench/bench_interventions.py --device cuda --model Qwen/Qwen2.5-0.5B-Instruct --batch 16 --new-tokens 256

The intervention is paper 001's kind (§3.1 steps 3-4): `Ablate` on `--heads` heads and `Scale(×1.3)` on as many
others, spread over every layer, so each layer carries one hook (the worst case: one hook call per layer and step).
On the bridged model the hooks sit on ``blocks.L.attn.hook_z``; the decoding paths run the HF modules the bridge
wraps, so the same HookPoints fire there.

Two generation paths, both with the KV cache:

- ``generate``: the batched HF `generate` call `support.decoding.generate` makes (left padding, greedy), on `--batch`
  organism prompts, with ``min_new_tokens = max_new_tokens = --new-tokens`` so both runs produce exactly
  batch × new-tokens tokens whatever the intervention does to the text;
- ``greedy_decode``: `support.decoding.greedy_decode`, the hand-written one-sequence loop tracing uses, on one prompt
  (it stops at EOS, so tokens/s counts the tokens each run actually produced).

Runs alternate plain/intervened (order flipped every repeat) after one untimed pair; the median over `--repeats` is
reported, and the ratio of the fastest runs (`_min`), which is less sensitive to a busy machine.
`intervened_over_plain_<path>` = intervened seconds per token / plain seconds per token (> 1: the intervention slows
generation down). Threads: 1 by default (the organism's small ops only lose to thread
synchronisation on a shared machine).

Prints one `name = value` line per figure.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def intervention(n_layers: int, n_heads: int, k: int):
    """Ablate k heads and scale k others by 1.3, spread round-robin over the layers (every layer touched)."""
    from support.interventions import Ablate, Scale

    heads = [(i % n_layers, (i // n_layers) % n_heads) for i in range(2 * k)]
    return [Ablate(heads[::2]), Scale(heads[1::2], 1.3)]


def timed(fn) -> tuple[float, int]:
    """(seconds, tokens) of one call of fn() -> tokens."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t = time.perf_counter()
    n = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - t, n


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="toy-qwen2", help="any support.models.load_model name (toy-qwen2)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=8, help="prompts per generate call (8)")
    ap.add_argument("--new-tokens", type=int, default=48, help="tokens per sequence (48)")
    ap.add_argument("--heads", type=int, default=6, help="heads ablated, and as many scaled (6 + 6)")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)

    import torch

    from support.decoding import DecodeConfig, encode_prompt, greedy_decode
    from support.interventions import intervene
    from support.models import load_model
    from support.toydata import generate as toy_items

    torch.set_num_threads(args.threads)
    lm = load_model(args.model, device=args.device)
    tok = lm.tokenizer
    ops = intervention(lm.n_layers, lm.n_heads, args.heads)
    prompts = [it.prompt for it in toy_items("toy_mc4", args.batch, "test", 0)]
    enc = tok(prompts, return_tensors="pt", padding=True, padding_side="left").to(lm.device)
    one = encode_prompt(lm, prompts[0])
    T = args.new_tokens

    @torch.no_grad()
    def run_generate() -> int:
        out = lm.hf_model.generate(**enc, max_new_tokens=T, min_new_tokens=T, do_sample=False,
                                   eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
        return int(out.shape[0] * (out.shape[1] - enc["input_ids"].shape[1]))

    def run_greedy() -> int:
        return len(greedy_decode(lm, one, DecodeConfig(max_new_tokens=T)).tokens)

    results: dict[str, dict[str, list[float]]] = {}
    for path, fn in (("generate", run_generate), ("greedy_decode", run_greedy)):
        per = {"plain": [], "intervened": []}
        for r in range(args.repeats + 1):
            for kind in (("plain", "intervened") if r % 2 else ("intervened", "plain")):
                if kind == "plain":
                    s, n = timed(fn)
                else:
                    with intervene(lm, ops):
                        s, n = timed(fn)
                if r:  # the first pair is the untimed warm-up
                    per[kind].append(s / n)
        results[path] = per

    with intervene(lm, ops) as sites:
        hooked = len({layer for op in ops for layer, _ in op.heads})
    print(f"model = {args.model}\ndevice = {args.device}\nthreads = {args.threads}\nrepeats = {args.repeats}")
    print(f"layers = {lm.n_layers}\nheads_per_layer = {lm.n_heads}\nhook_site = {sites.kind}\nhooked_layers = {hooked}")
    print(f"ablated_heads = {len(ops[0].heads)}\nscaled_heads = {len(ops[1].heads)}\nscale = 1.3")
    print(f"generate_batch = {args.batch}\nnew_tokens = {T}")
    for path, per in results.items():
        plain, inter = statistics.median(per["plain"]), statistics.median(per["intervened"])
        print(f"plain_{path}_tokens_per_s = {1 / plain:.4g}")
        print(f"intervened_{path}_tokens_per_s = {1 / inter:.4g}")
        name = "intervened_over_plain_generation" if path == "generate" else f"intervened_over_plain_{path}"
        print(f"{name} = {inter / plain:.4g}")
        print(f"{name}_min = {min(per['intervened']) / min(per['plain']):.4g}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
