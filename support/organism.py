"""The toy model organism: a real Qwen2 architecture, trained from scratch on tasks this module generates.

Run `python -m support.organism train` to rebuild the committed checkpoint in `data/organism/toy-qwen2/`.

Prompts are ChatML user turns (no system preamble: the organism is too small to spend context on it); real
models get the full App. B prompt from `support.prompts`. The vocabulary also covers the App. B wording, so the
full prompt tokenizes without unknown words. Tasks:

- `toy_mc4` / `toy_mc5`: multiple-choice arithmetic (2-3 operands, + and -, values 0..99) with a chain of thought
  that computes the result, names the matching option, and ends with `Answer: <LETTER>`. Distractors sit tens
  apart around the true value (±10..±40), so the organism must compute the result to pick the option.
- `toy_countdown`: reach a target from three numbers with + - *; the chain of thought evaluates left to right and
  the last line is `Answer: ( a op b ) op c`, verifiable by `support.tasks.verify_countdown`.

The options are written `39 (C)`, the letter *after* the value: retrieving "what followed the matching value" is
the canonical induction pattern, which a small model learns quickly; with App. B's `C. 39` layout ("what preceded
it") retrieval did not form within the training budget (measured while building the organism; see MODEL_CARD.md).
Training starts with the `toy_lookup` task alone (`CURRICULUM`), then switches to `MIX`.

Held-out items are those whose content hash falls in the test bucket, so train and test never share a question.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import random
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch

from .prompts import (LETTERS, UNIFIED_INSTRUCTION, UNIFIED_SYSTEM, answer_text, option_lines, organism_block,
                      user_turn)

SPECIALS = ["<pad>", "<unk>", "<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MAX_VALUE = 99
TOY_TASKS = ("toy_mc4", "toy_mc5", "toy_countdown")
#: Distractors sit at these offsets from the true value (4 or 5 options: the true one plus 3 or 4 of these).
#: With ±1/±2 offsets the organism could not tell neighbouring numbers apart when retrieving the letter (measured:
#: retrieval at chance); tens apart, it retrieves reliably, and the arithmetic still has to be right.
DISTRACTOR_OFFSETS = (-10, 10, -20, 20, -30, 30, -40, 40)
#: Pretraining mix. `toy_lookup` (the options, then "Find 39 12 ..." asking for each value's letter) trains the
#: option-retrieval step on its own.
MIX = {"toy_mc4": 0.35, "toy_mc5": 0.15, "toy_countdown": 0.3, "toy_lookup": 0.2}
#: Curriculum: the first steps train on `toy_lookup` alone, so the retrieval (induction) head forms before the
#: arithmetic competes for the gradient. Without this phase the retrieval never formed in 3000 steps (measured).
CURRICULUM = {"toy_lookup": 1.0}
COUNTDOWN_SYSTEM = "You are a helpful reasoning assistant. You must perform explicit step-by-step reasoning before giving the final answer."
COUNTDOWN_INSTRUCTION = (
    "Use each number exactly once with + - * to reach the target. Please think step by step. After reasoning, "
    "output on the last line exactly in the format: Answer: <EXPRESSION>."
)

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


@dataclass(frozen=True)
class ToyItem:
    """One generated example: chat prompt, gold response, and the gold answer (letter or expression)."""

    id: str
    task: str
    question: str
    options: tuple[str, ...]
    answer: str
    rationale: str
    numbers: tuple[int, ...] = ()
    target: int | None = None

    @property
    def prompt(self) -> str:
        """ChatML with the user turn only (template `organism`): the organism is too small to spend its context on a
        fixed preamble (real models get the full App. B system message and instruction from `support.prompts`)."""
        return user_turn(self.user)

    @property
    def user(self) -> str:
        if self.task == "toy_countdown":
            return self.question
        return organism_block(self.question, self.options)

    @property
    def response(self) -> str:
        return f"{self.rationale}\nAnswer: {self.answer}<|im_end|>"

    @property
    def text(self) -> str:
        return self.prompt + self.response


def _bucket(key: str) -> str:
    return "test" if int(hashlib.sha256(key.encode()).hexdigest(), 16) % 10 == 0 else "train"


def _options(rng: random.Random, value: int, n_options: int) -> tuple[list[int], str]:
    """The true value plus distractors at small offsets (±1, ±2, ±3, ±10), shuffled; returns (options, gold letter)."""
    offsets = [d for d in DISTRACTOR_OFFSETS if 0 <= value + d <= MAX_VALUE]
    rng.shuffle(offsets)
    options = [value] + [value + d for d in offsets[: n_options - 1]]
    rng.shuffle(options)
    return options, LETTERS[options.index(value)]


def _mc_item(rng: random.Random, n_options: int) -> ToyItem:
    while True:
        k = rng.choice((2, 3))
        vals = [rng.randint(1, 50)]
        steps, ops = [], []
        ok = True
        for _ in range(k - 1):
            op, b = rng.choice("+-"), rng.randint(1, 50)
            new = vals[-1] + b if op == "+" else vals[-1] - b
            if not 0 <= new <= MAX_VALUE:
                ok = False
                break
            steps.append(f"{vals[-1]} {op} {b} = {new}")
            ops.append(f"{op} {b}")
            vals.append(new)
        if ok:
            break
    result = vals[-1]
    options, gold = _options(rng, result, n_options)
    question = f"What is {vals[0]} {' '.join(ops)} ?"
    rationale = "\n".join(steps + [f"The result is {result} ({gold}) ."])
    task = f"toy_mc{n_options}"
    key = f"{task}|{question}|{options}"
    return ToyItem(id=hashlib.sha1(key.encode()).hexdigest()[:12], task=task, question=question,
                   options=tuple(str(o) for o in options), answer=gold, rationale=rationale)


def _lookup_item(rng: random.Random, n_options: int = 4) -> ToyItem:
    """Auxiliary pretraining item: the options, then every option value again in a new order; the response gives
    each value's letter. This is the retrieval step of toy_mc on its own, once per option (dense supervision)."""
    value = rng.randint(0, MAX_VALUE)
    options, _ = _options(rng, value, n_options)
    queries = options[:]
    rng.shuffle(queries)
    question = f"Find {' '.join(map(str, queries))} ."
    user = "\n".join(option_lines([str(o) for o in options], "organism") + [question])
    rationale = "\n".join(f"{q} ({LETTERS[options.index(q)]})" for q in queries)
    key = f"toy_lookup|{question}|{options}"
    return ToyItem(id=hashlib.sha1(key.encode()).hexdigest()[:12], task="toy_lookup", question=user,
                   options=(), answer=LETTERS[options.index(queries[-1])], rationale=rationale)


def _countdown_item(rng: random.Random) -> ToyItem:
    while True:
        a, b, c = rng.randint(1, 30), rng.randint(1, 30), rng.randint(1, 30)
        op1, op2 = rng.choice("+-*"), rng.choice("+-*")
        x = {"+": a + b, "-": a - b, "*": a * b}[op1]
        y = {"+": x + c, "-": x - c, "*": x * c}[op2]
        if 0 <= x <= MAX_VALUE and 0 <= y <= MAX_VALUE:
            break
    nums = [a, b, c]
    shown = nums[:]
    rng.shuffle(shown)
    question = f"Numbers : {' '.join(map(str, shown))} . Target : {y} ."
    rationale = f"{a} {op1} {b} = {x}\n{x} {op2} {c} = {y}\nThe target is {y} ."
    answer = f"( {a} {op1} {b} ) {op2} {c}"
    key = f"toy_countdown|{question}"
    return ToyItem(id=hashlib.sha1(key.encode()).hexdigest()[:12], task="toy_countdown", question=question,
                   options=(), answer=answer, rationale=rationale, numbers=tuple(shown), target=y)


def generate(task: str, n: int, split: str = "test", seed: int = 0) -> list[ToyItem]:
    """`n` deterministic items of a toy task from the given split ('train' or 'test')."""
    if task not in TOY_TASKS:
        raise ValueError(f"unknown toy task {task!r}; valid choices: {', '.join(TOY_TASKS)}")
    if split not in ("train", "test"):
        raise ValueError(f"unknown split {split!r}; valid choices: train, test")
    rng = random.Random(f"{task}|{split}|{seed}")
    out, seen = [], set()
    while len(out) < n:
        it = _countdown_item(rng) if task == "toy_countdown" else _mc_item(rng, int(task[-1]))
        if _bucket(it.id) == split and it.id not in seen:
            seen.add(it.id)
            out.append(it)
    return out


def mixture(seed: int, weights: dict[str, float] | None = None) -> Iterator[ToyItem]:
    """Endless deterministic stream of training items from the pretraining mix."""
    weights = weights or MIX
    rng = random.Random(f"mix|{seed}")
    tasks, w = list(weights), list(weights.values())
    while True:
        task = rng.choices(tasks, w)[0]
        if task == "toy_lookup":
            it = _lookup_item(rng, rng.choice((4, 5)))
        else:
            it = _countdown_item(rng) if task == "toy_countdown" else _mc_item(rng, int(task[-1]))
        if _bucket(it.id) == "train":
            yield it


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
    rng_items += [_lookup_item(random.Random(i)) for i in range(5)]
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


@torch.no_grad()
def greedy_answers(model, tok, items: list[ToyItem], max_new_tokens: int = 48, batch_size: int = 64) -> list[str]:
    """Greedy (KV-cached) responses for the items' prompts, decoded without the prompt."""
    outs: list[str] = []
    model.eval()
    for i in range(0, len(items), batch_size):
        chunk = items[i : i + batch_size]
        enc = tok([it.prompt for it in chunk], return_tensors="pt", padding=True, padding_side="left")
        gen = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=tok.eos_token_id,
                             pad_token_id=tok.pad_token_id)
        outs += tok.batch_decode(gen[:, enc.input_ids.shape[1]:], skip_special_tokens=True)
    return outs


def score(items: list[ToyItem], responses: list[str]) -> float:
    """Accuracy: MC by the parsed `Answer:` letter, Countdown by verifying the expression."""
    from .prompts import parse_answer

    ok = 0
    for it, r in zip(items, responses):
        if it.task == "toy_countdown":
            ok += int(verify_expression(answer_text(r) or "", it.numbers, it.target))
        else:
            ok += int(parse_answer(r, LETTERS[: len(it.options)]) == it.answer)
    return ok / max(1, len(items))


def verify_expression(expr: str, numbers, target) -> bool:
    """True if `expr` uses exactly the given numbers and evaluates to `target` (delegates to support.tasks)."""
    from .tasks import verify_countdown

    try:
        return bool(verify_countdown(expr, numbers, target))
    except Exception:
        return False


def evaluate(model, tok, n: int = 200, seed: int = 0, tasks: tuple[str, ...] = TOY_TASKS) -> dict[str, float]:
    """Held-out accuracy per toy task."""
    return {t: score(items, greedy_answers(model, tok, items)) for t in tasks
            for items in [generate(t, n, "test", seed)]}


@torch.no_grad()
def retrieval_attention(lm, items: list[ToyItem]) -> tuple["np.ndarray", "np.ndarray"]:
    """Where each head looks when the organism names the option (teacher-forced on the gold response).

    At the response position of the result value (the token before `(C)` in "The result is 39 (C) ."), a head doing
    canonical induction would attend to the prompt's `(C)` token, the one that followed the matching value. Returns two
    [layer, head] arrays over the items: the mean attention on the gold option's letter token, and the fraction of
    items whose most-attended option letter is the gold one (the head's retrieval accuracy). Runs through the bridge.
    """
    import numpy as np

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
{log['lr']}, cosine, seed {log['seed']}; {log['train_seconds']} s on CPU with {log.get('threads', 2)} threads). {log['n_parameters']:,} parameters.
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
