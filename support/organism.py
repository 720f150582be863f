"""The toy model organism: a real Qwen2 architecture, trained from scratch on the tasks of `support.toydata`.

Run `python -m support.organism train` (or `make organism`) to rebuild the committed checkpoint in
`data/organism/toy-qwen2/`: the word-level tokenizer, the model, its training log and its model card.

Prompts are ChatML user turns (no system preamble: the organism is too small to spend context on it); real
models get the full App. B prompt from `support.prompts`. The vocabulary also covers the App. B wording, so the
full prompt tokenizes without unknown words.

The options are written `39 (C)`, the letter *after* the value: retrieving "what followed the matching value" is
the canonical induction pattern, which a small model learns quickly; with App. B's `C. 39` layout ("what preceded
it") retrieval did not form within the training budget (measured while building the organism; see MODEL_CARD.md).
Training starts with the `toy_lookup` task alone (`CURRICULUM`), then switches to `MIX`.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from pathlib import Path

import numpy as np
import torch

from .decoding import generate as generate_responses
from .prompts import LETTERS, UNIFIED_INSTRUCTION, UNIFIED_SYSTEM
from .scoring import accuracy
from .toydata import (
    COUNTDOWN_INSTRUCTION,
    COUNTDOWN_SYSTEM,
    CURRICULUM,
    DISTRACTOR_OFFSETS,
    MAX_VALUE,
    MIX,
    TOY_TASKS,
    ToyItem,
    generate,
    lookup_item,
    mixture,
)

SPECIALS = ["<pad>", "<unk>", "<|endoftext|>", "<|im_start|>", "<|im_end|>"]

#: Architecture of the organism: a real Qwen2 config, scaled down (GQA: 8 query heads share 4 K/V heads).
TOY_CONFIG = dict(
    vocab_size=None, hidden_size=128, intermediate_size=256, num_hidden_layers=6, num_attention_heads=8,
    num_key_value_heads=4, max_position_embeddings=512, rope_theta=10000.0, tie_word_embeddings=False,
    rms_norm_eps=1e-6, hidden_act="silu",
)
#: Published config of the real model the organism mirrors (Qwen/Qwen2.5-0.5B-Instruct config.json).
QWEN25_05B_CONFIG = dict(
    vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
    num_key_value_heads=2, max_position_embeddings=32768, rope_theta=1000000.0, tie_word_embeddings=True,
    rms_norm_eps=1e-6, hidden_act="silu",
)


# ----------------------------------------------------------------------------------------------- tokenizer
def build_tokenizer(out_dir: Path):
    """Word-level tokenizer over the organism's closed vocabulary, saved with a ChatML chat template."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    pre = pre_tokenizers.Sequence([
        # chat markers, newlines and punctuation are tokens of their own (as in a real BPE vocabulary); an option
        # tag like "(C)" is one token, so "39 (C)" puts the letter right after the value
        pre_tokenizers.Split(Regex(r"<\|im_start\|>|<\|im_end\|>|<\|endoftext\|>|\([A-J]\)|\n|[.,:?()]"),
                             behavior="isolated"),
        pre_tokenizers.Split(Regex(r"[ \t]+"), behavior="removed"),
    ])
    words: set[str] = {str(i) for i in range(MAX_VALUE + 1)}
    corpus = [UNIFIED_SYSTEM, UNIFIED_INSTRUCTION, COUNTDOWN_SYSTEM, COUNTDOWN_INSTRUCTION, "system user assistant"]
    rng_items = [g for t in TOY_TASKS for g in generate(t, 50, "train", seed=99)]
    rng_items += [lookup_item(random.Random(i)) for i in range(5)]
    corpus += [it.text for it in rng_items]
    corpus += [f"{L}. ({L}) Answer: {L} option {L}" for L in LETTERS[:5]]
    corpus += ["( ) + - * = ? . , : Numbers Target What is The result target which"]
    for text in corpus:
        words.update(w for w, _ in pre.pre_tokenize_str(text))
    vocab = {tok: i for i, tok in enumerate(SPECIALS + ["\n"] + sorted(words - set(SPECIALS) - {"\n"}))}
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre
    tk.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    fast = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", unk_token="<unk>",
                                   eos_token="<|im_end|>", additional_special_tokens=["<|im_start|>", "<|endoftext|>"])
    fast.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(out_dir))
    return fast


# ----------------------------------------------------------------------------------------------- training
def build_model(vocab_size: int, seed: int, arch: str = "qwen2", config: dict | None = None):
    """A freshly initialised organism of a real HF architecture (qwen2 or qwen3) built from `TOY_CONFIG`."""
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(seed)
    cfg = AutoConfig.for_model(arch, **{**TOY_CONFIG, **(config or {}), "vocab_size": vocab_size})
    return AutoModelForCausalLM.from_config(cfg, attn_implementation="eager")


def _batch(tok, items: list[ToyItem]) -> dict:
    """Right-padded batch with the loss on the assistant response only (prompt and padding masked with -100).

    The prompt's option numbers are random by construction, so a loss on them would be irreducible noise that
    drowns out the reasoning tokens."""
    enc = tok([it.text for it in items], return_tensors="pt", padding=True, padding_side="right")
    labels = enc.input_ids.clone()
    labels[enc.attention_mask == 0] = -100
    for i, it in enumerate(items):
        labels[i, : len(tok(it.prompt).input_ids)] = -100
    return {"input_ids": enc.input_ids, "attention_mask": enc.attention_mask, "labels": labels}


def greedy_answers(model, tok, items: list[ToyItem], max_new_tokens: int = 48, batch_size: int = 64) -> list[str]:
    """Greedy responses to the items' prompts (`support.decoding.generate`), decoded without the prompt."""
    return generate_responses(model, tok, [it.prompt for it in items], max_new_tokens, batch_size)


def evaluate(model, tok, n: int = 200, seed: int = 0, tasks: tuple[str, ...] = TOY_TASKS) -> dict[str, float]:
    """Held-out accuracy per toy task."""
    return {t: accuracy(items, greedy_answers(model, tok, items)) for t in tasks
            for items in [generate(t, n, "test", seed)]}


@torch.no_grad()
def retrieval_attention(lm, items: list[ToyItem]) -> tuple[np.ndarray, np.ndarray]:
    """Where each head looks when the organism names the option (teacher-forced on the gold response).

    At the response position of the result value (the token before `(C)` in "The result is 39 (C) ."), a head doing
    canonical induction would attend to the prompt's `(C)` token, the one that followed the matching value. Returns two
    [layer, head] arrays over the items: the mean attention on the gold option's letter token, and the fraction of
    items whose most-attended option letter is the gold one (the head's retrieval accuracy). Runs through the bridge.
    """
    tok = lm.tokenizer
    letter_ids = {tok.convert_tokens_to_ids(f"({L})"): L for L in LETTERS}
    letter_ids = {i: L for i, L in letter_ids.items() if i is not None and i != tok.unk_token_id}
    if len(letter_ids) < 5:
        raise ValueError(f"{lm.name}'s tokenizer has no `(A)`..`(J)` tokens: the retrieval map needs the organism")
    mass, hits = np.zeros((lm.n_layers, lm.n_heads)), np.zeros((lm.n_layers, lm.n_heads))
    for it in items:
        n_prompt = len(tok(it.prompt).input_ids)
        ids = tok(it.text, return_tensors="pt").input_ids.to(lm.device)
        seq = ids[0].tolist()
        q = next(j for j in range(n_prompt, len(seq)) if seq[j] in letter_ids) - 1
        keys = [j for j in range(n_prompt) if seq[j] in letter_ids]
        gold = next(j for j in keys if letter_ids[seq[j]] == it.answer)
        _, cache = lm.bridge.run_with_cache(ids, names_filter=lambda n: n.endswith("hook_pattern"))
        for layer in range(lm.n_layers):
            row = cache[f"blocks.{layer}.attn.hook_pattern"][0, :, q, :].float().cpu().numpy()  # [head, key]
            mass[layer] += row[:, gold]
            hits[layer] += np.array([keys[int(np.argmax(row[h, keys]))] == gold for h in range(lm.n_heads)])
    return mass / len(items), hits / len(items)


def train(out: Path, steps: int = 4500, batch_size: int = 32, lr: float = 3e-3, seed: int = 0,
          eval_every: int = 1500, threads: int = 2, curriculum_steps: int = 1000) -> dict:
    """Train the organism from scratch, deterministically, and write weights, tokenizer and model card to `out`."""
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    out = Path(out)
    tok = build_tokenizer(out / "tokenizer")
    model = build_model(len(tok), seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.98))
    warm = max(1, steps // 30)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps))))
    warmup_stream, stream = mixture(seed + 1, CURRICULUM), mixture(seed)
    curve, evals = [], []
    t0 = time.time()
    for step in range(1, steps + 1):
        model.train()
        src = warmup_stream if step <= curriculum_steps else stream
        batch = _batch(tok, [next(src) for _ in range(batch_size)])
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if step % 25 == 0 or step == 1:
            curve.append({"step": step, "loss": round(loss.item(), 5), "seconds": round(time.time() - t0, 1)})
        if step % eval_every == 0 or step == steps:
            acc = evaluate(model, tok, n=100, seed=1, tasks=("toy_mc4", "toy_mc5"))
            evals.append({"step": step, **acc})
            print(f"step {step} loss {loss.item():.4f} acc {acc} ({time.time() - t0:.0f}s)", flush=True)
    model.eval()
    model.save_pretrained(str(out), safe_serialization=True)
    log = {"steps": steps, "batch_size": batch_size, "lr": lr, "seed": seed, "threads": threads,
           "curriculum_steps": curriculum_steps, "curriculum": CURRICULUM, "mix": MIX,
           "distractor_offsets": list(DISTRACTOR_OFFSETS),
           "train_seconds": round(time.time() - t0),
           "curve": curve, "evals": evals, "config": TOY_CONFIG | {"vocab_size": len(tok)},
           "n_parameters": sum(p.numel() for p in model.parameters())}
    (out / "training_log.json").write_text(json.dumps(log, indent=1))
    return log


def write_card(out: Path, n: int = 300) -> dict:
    """Evaluate the saved organism on held-out items of every toy task and write MODEL_CARD.md beside it."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = Path(out)
    tok = AutoTokenizer.from_pretrained(str(out / "tokenizer"))
    model = AutoModelForCausalLM.from_pretrained(str(out), attn_implementation="eager").eval()
    log = json.loads((out / "training_log.json").read_text())
    log["heldout_accuracy"] = evaluate(model, tok, n=n, seed=0)
    (out / "training_log.json").write_text(json.dumps(log, indent=1))
    (out / "MODEL_CARD.md").write_text(model_card(log))
    return log


def model_card(log: dict) -> str:
    """Markdown model card: config, data recipe, training curve summary, held-out accuracy per task."""
    cfg = "\n".join(f"| {k} | {v} |" for k, v in log["config"].items())
    acc = "\n".join(f"| {k} | {v:.3f} | {'1/4' if k.endswith('4') else '1/5' if k.endswith('5') else '-'} |"
                    for k, v in log["heldout_accuracy"].items())
    curve = ", ".join(f"{c['step']}: {c['loss']:.3f}" for c in log["curve"][:: max(1, len(log["curve"]) // 10)])
    mix = ", ".join(f"{w:.0%} `{t}`" for t, w in MIX.items())
    mc4 = log["heldout_accuracy"].get("toy_mc4", 0.0)
    status = ("Status: four-option accuracy is inside the intended 50–90% band." if 0.5 <= mc4 <= 0.9 else
              f"Status: four-option accuracy {mc4:.2f} is OUTSIDE the intended 50–90% band (chance 0.25). The chain of "
              "thought usually gets the arithmetic right, but the organism has not learned to retrieve the letter of "
              "the option that holds its result, so the final letter is close to a guess.")
    return f"""# toy-qwen2: the Reasoning Heads model organism

A `Qwen2ForCausalLM` (RMSNorm, rotary, gated SiLU MLP, grouped-query attention) built from a config and trained
from scratch by `python -m support.organism train` ({log['steps']} steps, batch {log['batch_size']}, AdamW lr
{log['lr']}, cosine, seed {log['seed']}; {log['train_seconds']} s on CPU with {log.get('threads', 2)} threads).
{log['n_parameters']:,} parameters.
Word-level tokenizer in `tokenizer/` (load it with `AutoTokenizer`), ChatML chat template.

## Config
| key | value |
|---|---|
{cfg}

## Data recipe
Generated by `support/organism.py` (no third-party data). The first {log.get('curriculum_steps', 0)} steps train on
`toy_lookup` alone (the curriculum); the rest on the mix {mix}. `toy_mc4`/`toy_mc5` are multiple-choice
arithmetic with a chain of thought ending `Answer: <LETTER>`, as ChatML user turns, with options written `39 (C)`
and distractors at offsets {log.get('distractor_offsets')}; `toy_countdown` are 3-number puzzles with a verifiable
expression; `toy_lookup` lists the options, then asks for every value's letter ("Find 39 12 ..."), which trains the
option-retrieval step on its own. The loss is on the assistant response only. Items whose content hash falls in
bucket 0 (of 10) are held out and never trained on.

## Design notes (measured while building the organism, 1 CPU thread, not re-run by CI)
- App. B's `C. 39` option layout, distractors at ±1/±2/±3/±10, 3000 mixed steps: held-out `toy_mc4` 0.25 (chance)
  in each of seven variants (loss masking, a lookup task, punctuation split, coarser offsets, Qwen3 with d_head 32,
  shorter prompts). The chain of thought got the arithmetic right 70% of the time; the letter was a guess.
- A lookup task alone, 1500 steps: letter retrieval 0.26 with the letter before the value, 0.62 with it after
  (`39 (C)`): "copy what followed the match" is the canonical induction pattern and is learned first.
- `39 (C)` mixed with arithmetic from step 1: retrieval still at chance after 2500 steps. Lookup first for 1000 steps,
  then the mix: teacher-forced letter accuracy on `toy_mc4` 0.52 with ±1/±2 distractors and 0.76 with distractors
  tens apart, after 3000 steps. Hence the curriculum and the offsets above.

## Training curve (step: loss)
{curve}

## Held-out accuracy (300 items per task, greedy)
| task | accuracy | chance |
|---|---|---|
{acc}

{status}
"""


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m support.organism")
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="train the organism from scratch, then evaluate it and write its model card")
    t.add_argument("--out", type=Path, default=Path(__file__).resolve().parent.parent / "data/organism/toy-qwen2")
    t.add_argument("--steps", type=int, default=4500)
    t.add_argument("--curriculum-steps", type=int, default=1000)
    t.add_argument("--batch-size", type=int, default=32)
    t.add_argument("--lr", type=float, default=3e-3)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    if args.cmd == "train":
        train(args.out, args.steps, args.batch_size, args.lr, args.seed, threads=args.threads,
              curriculum_steps=args.curriculum_steps)
        print(json.dumps(write_card(args.out)["heldout_accuracy"]))


if __name__ == "__main__":
    main()
