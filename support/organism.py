"""The toy model organism: a real Qwen2 architecture, trained from scratch on the tasks of `support.toydata`.

`python -m support.organism train` (or `make organism`) rebuilds both committed checkpoints in `data/organism/`,
deterministically, in one run:

- `toy-qwen2-base`: the option-retrieval curriculum (`toy_lookup` alone), then the task mix with think-off answers
  only (`/no_think`: the answer without a chain of thought). The "base model" of paper 001's comparisons.
- `toy-qwen2`: the base, trained further on think-on chains of thought with both modes kept (the distillation-like
  stage of paper 001): a reasoning model whose `/think` and `/no_think` modes can be compared, as with Qwen3.

Each checkpoint has the word-level tokenizer in `tokenizer/`, its training log and a model card with held-out
accuracy per task and mode and the length of its own think-on responses.

Prompts are ChatML user turns (no system preamble: the organism is too small to spend context on it); real
models get the full App. B prompt from `support.prompts`. The vocabulary also covers the App. B wording, so the
full prompt tokenizes without unknown words. The options are written `39 (C)`, the letter *after* the value:
retrieving "what followed the matching value" is the canonical induction pattern, which a small model learns
quickly; with App. B's `C. 39` layout retrieval did not form within the training budget (measured; see the card).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Iterator

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
    MODES,
    THINK_TAGS,
    TOY_TASKS,
    ToyItem,
    generate,
    lookup_item,
    mixture,
)

SPECIALS = ["<pad>", "<unk>", "<|endoftext|>", "<|im_start|>", "<|im_end|>"]

#: Architecture of the organism: a real Qwen2 config, scaled down: 8 layers × 8 query heads (64 heads, d_head 16),
#: grouped-query attention with 4 K/V heads (two query heads per K/V head).
TOY_CONFIG = dict(
    vocab_size=None, hidden_size=128, intermediate_size=256, num_hidden_layers=8, num_attention_heads=8,
    num_key_value_heads=4, max_position_embeddings=512, rope_theta=10000.0, tie_word_embeddings=False,
    rms_norm_eps=1e-6, hidden_act="silu",
)
NAME, BASE_NAME = "toy-qwen2", "toy-qwen2-base"
ORGANISM_ROOT = Path(__file__).resolve().parent.parent / "data" / "organism"
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
        pre_tokenizers.Split(Regex(r"<\|im_start\|>|<\|im_end\|>|<\|endoftext\|>|</?think>|/(?:no_)?think|"
                                   r"\([A-J]\)|\n|[.,:?()]"),
                             behavior="isolated"),
        pre_tokenizers.Split(Regex(r"[ \t]+"), behavior="removed"),
    ])
    words: set[str] = {str(i) for i in range(MAX_VALUE + 1)}
    corpus = [UNIFIED_SYSTEM, UNIFIED_INSTRUCTION, COUNTDOWN_SYSTEM, COUNTDOWN_INSTRUCTION, "system user assistant"]
    rng_items = [g for t in TOY_TASKS for m in MODES for g in generate(t, 50, "train", seed=99, mode=m)]
    rng_items += [lookup_item(random.Random(i)) for i in range(5)]
    corpus += [it.text for it in rng_items]
    corpus += [f"{L}. ({L}) Answer: {L} option {L}" for L in LETTERS[:5]]
    corpus += ["( ) + - * = ? . , : Numbers Target What is The result target which", " ".join(THINK_TAGS)]
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


def greedy_answers(model, tok, items: list[ToyItem], max_new_tokens: int = 256, batch_size: int = 64) -> list[str]:
    """Greedy responses to the items' prompts (`support.decoding.generate`), decoded without the prompt."""
    return generate_responses(model, tok, [it.prompt for it in items], max_new_tokens, batch_size)


def response_tokens(tok, responses: list[str]) -> list[int]:
    """Length of each decoded response in tokens (the end-of-turn token not counted)."""
    return [len(tok(r, add_special_tokens=False).input_ids) for r in responses]


def evaluate(model, tok, n: int = 200, seed: int = 0, tasks: tuple[str, ...] = TOY_TASKS,
             modes: tuple[str, ...] = MODES) -> list[dict]:
    """Held-out accuracy and mean response length per toy task and think mode (greedy): one row each."""
    rows = []
    for task in tasks:
        for mode in modes:
            items = generate(task, n, "test", seed, mode=mode)
            responses = greedy_answers(model, tok, items)
            lengths = response_tokens(tok, responses)
            rows.append({"task": task, "mode": mode, "n": n, "accuracy": round(accuracy(items, responses), 4),
                         "mean_tokens": round(float(np.mean(lengths)), 1)})
    return rows


@torch.no_grad()
def retrieval_attention(lm, items: list[ToyItem]) -> tuple[np.ndarray, np.ndarray]:
    """Where each head looks when the organism names the option (teacher-forced on the gold response).

    At the response position where the response first names the gold letter (the value before `(D)` in the hit line
    "28 (D) is 28 ." of the option check), a head doing canonical induction would attend to the prompt's `(D)`
    token, the one that followed the matching value. Returns two
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
        q = next(j for j in range(n_prompt, len(seq)) if letter_ids.get(seq[j]) == it.answer) - 1
        keys = [j for j in range(n_prompt) if seq[j] in letter_ids]
        gold = next(j for j in keys if letter_ids[seq[j]] == it.answer)
        _, cache = lm.bridge.run_with_cache(ids, names_filter=lambda n: n.endswith("hook_pattern"))
        for layer in range(lm.n_layers):
            row = cache[f"blocks.{layer}.attn.hook_pattern"][0, :, q, :].float().cpu().numpy()  # [head, key]
            mass[layer] += row[:, gold]
            hits[layer] += np.array([keys[int(np.argmax(row[h, keys]))] == gold for h in range(lm.n_heads)])
    return mass / len(items), hits / len(items)


@dataclass(frozen=True)
class Recipe:
    """How both checkpoints are trained (one run, one seed). Defaults are the committed checkpoints' recipe."""

    seed: int = 0
    batch_size: int = 32  # base stage (short think-off sequences)
    reason_batch_size: int = 16  # reasoning stage (long chains of thought: ~100 response tokens)
    threads: int = 1  # one thread: bit for bit reproducible, and as fast as two for a model this small
    curriculum_steps: int = 3000  # base stage: `toy_lookup` alone, at most this many steps ...
    curriculum_loss: float = 0.3  # ... or until its loss (mean of the last 50 steps) is below this: retrieval formed
    base_steps: int = 1200  # base stage: the task mix, think-off answers only
    base_lr: float = 3e-3
    reason_steps: int = 1400  # reasoning stage, from the base: think-on chains of thought, both modes kept
    reason_lr: float = 2e-3
    think_share: float = 0.75  # share of think-on items in the reasoning stage
    eval_every: int = 1000
    eval_n: int = 50

    def __post_init__(self):
        for k in ("batch_size", "reason_batch_size", "threads", "base_steps", "reason_steps", "eval_every", "eval_n"):
            if not (isinstance(getattr(self, k), int) and getattr(self, k) >= 1):
                raise ValueError(f"recipe {k} must be a positive integer, got {getattr(self, k)!r}")
        if not 0.0 <= self.think_share <= 1.0:
            raise ValueError(f"think_share must be in [0, 1], got {self.think_share!r}")


def _stage(model, tok, batches: Iterator[list[ToyItem]], steps: int, lr: float, name: str, recipe: Recipe,
           curve: list, evals: list, modes: tuple[str, ...], t0: float, stop_below: float | None = None) -> int:
    """One training stage: AdamW, linear warmup then cosine decay; loss curve and periodic greedy evaluations.

    With `stop_below`, the stage ends early once the mean loss of its last 50 steps is below it (deterministic: the
    data and the losses are). Returns the number of steps taken."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.98))
    warm = max(1, steps // 30)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps))))
    offset = curve[-1]["step"] if curve else 0
    recent: list[float] = []
    for step in range(1, steps + 1):
        model.train()
        loss = model(**_batch(tok, next(batches))).loss
        recent = (recent + [loss.item()])[-50:]
        done = stop_below is not None and len(recent) == 50 and sum(recent) / 50 < stop_below
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if step % 25 == 0 or step == 1 or done:
            curve.append({"step": offset + step, "stage": name, "loss": round(loss.item(), 5),
                          "seconds": round(time.time() - t0, 1)})
        if step % recipe.eval_every == 0 or step == steps or done:
            rows = evaluate(model, tok, n=recipe.eval_n, seed=1, tasks=("toy_mc4", "toy_countdown"), modes=modes)
            evals.append({"step": offset + step, "stage": name,
                          **{f"{r['task']}/{r['mode']}": r["accuracy"] for r in rows}})
            print(f"{name} step {step} loss {loss.item():.4f} {evals[-1]} ({time.time() - t0:.0f}s)", flush=True)
        if done:
            return step
    return steps


def _batches(stream: Iterator[ToyItem], batch_size: int) -> Iterator[list[ToyItem]]:
    while True:
        yield [next(stream) for _ in range(batch_size)]


def _save(model, tok, out: Path, log: dict) -> None:
    model.eval()
    model.save_pretrained(str(out), safe_serialization=True)
    tok.save_pretrained(str(out / "tokenizer"))
    (out / "training_log.json").write_text(json.dumps(log, indent=1))


#: Recipe fields that the base checkpoint depends on (the rest only shape the reasoning stage).
BASE_FIELDS = ("seed", "batch_size", "threads", "curriculum_steps", "curriculum_loss", "base_steps", "base_lr",
               "eval_every", "eval_n")


def _reusable_base(root: Path, recipe: Recipe) -> dict | None:
    """The training log of `root/toy-qwen2-base` if it was trained with this recipe's base fields, else None."""
    path = root / BASE_NAME / "training_log.json"
    if not path.exists():
        return None
    log = json.loads(path.read_text())
    same = all(log["recipe"].get(k) == getattr(recipe, k) for k in BASE_FIELDS)
    return log if same and log.get("mix") == MIX and log.get("config", {}).get("hidden_size") == TOY_CONFIG[
        "hidden_size"] else None


def train(root: Path = ORGANISM_ROOT, recipe: Recipe = Recipe(), reuse_base: bool = False) -> dict[str, dict]:
    """Train both checkpoints from scratch, deterministically, into `root/toy-qwen2-base` and `root/toy-qwen2`.

    With `reuse_base`, a base checkpoint already in `root` that was trained with the same base recipe is loaded
    instead of retrained (bit for bit what retraining gives: the stages share no optimizer or random state), and only
    the reasoning stage runs."""
    import tempfile

    torch.set_num_threads(recipe.threads)
    torch.use_deterministic_algorithms(True)
    root = Path(root)
    with tempfile.TemporaryDirectory() as tmp:
        tok = build_tokenizer(Path(tmp))
    base_log = _reusable_base(root, recipe) if reuse_base else None
    if base_log is not None:
        return _reason(root, recipe, tok, base_log)
    model = build_model(len(tok), recipe.seed)
    common = {"recipe": asdict(recipe), "mix": MIX, "curriculum": CURRICULUM,
              "distractor_offsets": list(DISTRACTOR_OFFSETS), "config": TOY_CONFIG | {"vocab_size": len(tok)},
              "n_parameters": sum(p.numel() for p in model.parameters())}
    curve, evals, t0 = [], [], time.time()
    lookup = _batches(mixture(recipe.seed + 1, CURRICULUM), recipe.batch_size)
    taken = _stage(model, tok, lookup, recipe.curriculum_steps, recipe.base_lr, "curriculum", recipe, curve, evals,
                   ("no_think",), t0, stop_below=recipe.curriculum_loss)
    common["curriculum_steps_taken"] = taken
    off = _batches(mixture(recipe.seed, MIX, think_share=0.0), recipe.batch_size)
    _stage(model, tok, off, recipe.base_steps, recipe.base_lr, "base", recipe, curve, evals, ("no_think",), t0)
    logs = {BASE_NAME: {**common, "name": BASE_NAME, "stages": ["curriculum", "base"], "curve": list(curve),
                        "evals": list(evals), "train_seconds": round(time.time() - t0)}}
    _save(model, tok, root / BASE_NAME, logs[BASE_NAME])
    return {BASE_NAME: logs[BASE_NAME], **_reason(root, recipe, tok, logs[BASE_NAME], model)}


def _reason(root: Path, recipe: Recipe, tok, base_log: dict, model=None) -> dict[str, dict]:
    """The reasoning stage, from the base model in memory or saved in `root`; saves and logs `toy-qwen2`."""
    from transformers import AutoModelForCausalLM

    if model is None:
        model = AutoModelForCausalLM.from_pretrained(str(root / BASE_NAME), attn_implementation="eager")
        base_log = {**base_log, "recipe": asdict(recipe)}  # only the base fields matter, and they are equal
        (root / BASE_NAME / "training_log.json").write_text(json.dumps(base_log, indent=1))
    common = {k: v for k, v in base_log.items() if k not in ("name", "stages", "curve", "evals", "train_seconds",
                                                             "heldout")}
    common["recipe"] = asdict(recipe)
    curve, evals = list(base_log["curve"]), list(base_log["evals"])
    t0 = time.time() - base_log["train_seconds"]
    on = _batches(mixture(recipe.seed + 2, MIX, think_share=recipe.think_share), recipe.reason_batch_size)
    _stage(model, tok, on, recipe.reason_steps, recipe.reason_lr, "reasoning", recipe, curve, evals, MODES, t0)
    log = {**common, "name": NAME, "stages": ["curriculum", "base", "reasoning"], "curve": curve, "evals": evals,
           "train_seconds": round(time.time() - t0)}
    _save(model, tok, root / NAME, log)
    return {NAME: log}


def write_card(out: Path, n: int = 300) -> dict:
    """Evaluate a saved checkpoint on held-out items of every toy task in both modes; write MODEL_CARD.md beside it."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = Path(out)
    tok = AutoTokenizer.from_pretrained(str(out / "tokenizer"))
    model = AutoModelForCausalLM.from_pretrained(str(out), attn_implementation="eager").eval()
    log = json.loads((out / "training_log.json").read_text())
    log["heldout"] = evaluate(model, tok, n=n, seed=0)
    (out / "training_log.json").write_text(json.dumps(log, indent=1))
    (out / "MODEL_CARD.md").write_text(model_card(log))
    return log


def heldout_table(log: dict) -> dict[tuple[str, str], dict]:
    """{(task, mode): row} from a training log's held-out evaluation."""
    return {(r["task"], r["mode"]): r for r in log.get("heldout", [])}


def status(log: dict) -> list[str]:
    """The card's computed verdicts against the organism's targets (issue: think-on mc4 0.5-0.9, think-off clearly
    lower, Countdown 0.3-0.7, think-on responses ≥ 80 tokens on average)."""
    t = heldout_table(log)
    if (("toy_mc4", "think")) not in t:
        return []
    on, off = t["toy_mc4", "think"]["accuracy"], t["toy_mc4", "no_think"]["accuracy"]
    cd = t["toy_countdown", "think"]["accuracy"]
    length = float(np.mean([r["mean_tokens"] for (task, mode), r in t.items() if mode == "think"]))

    def band(v: float, lo: float, hi: float) -> str:
        return "inside" if lo <= v <= hi else "OUTSIDE"

    return [f"- four-option accuracy, think on: {on:.3f}, {band(on, 0.5, 0.9)} the 0.5–0.9 target band (chance 0.25)",
            f"- think off: {off:.3f}, {'clearly lower' if on - off >= 0.1 else 'NOT clearly lower'} than think on",
            f"- Countdown, think on: {cd:.3f}, {band(cd, 0.3, 0.7)} the 0.3–0.7 target band",
            f"- mean think-on response: {length:.1f} tokens ({'≥' if length >= 80 else '<'} 80)"]


def base_status(log: dict) -> list[str]:
    """The base checkpoint's line of the card: it answers directly (it was never trained to think)."""
    t = heldout_table(log)
    if ("toy_mc4", "no_think") not in t:
        return []
    return [f"- the base checkpoint answers directly: four-option accuracy {t['toy_mc4', 'no_think']['accuracy']:.3f} "
            f"(chance 0.25), Countdown {t['toy_countdown', 'no_think']['accuracy']:.3f}; asked to think, it has never "
            "been trained to, so its think-on rows show what an untrained mode does"]


def model_card(log: dict) -> str:
    """Markdown model card: what the checkpoint is, config, recipe, curve, held-out accuracy per task and mode."""
    cfg = "\n".join(f"| {k} | {v} |" for k, v in log["config"].items())
    recipe = "\n".join(f"| {k} | {v} |" for k, v in log["recipe"].items())
    chance = {"toy_mc4": "0.25", "toy_mc5": "0.20", "toy_countdown": "–"}
    acc = "\n".join(f"| {r['task']} | {r['mode']} | {r['accuracy']:.3f} | {chance.get(r['task'], '–')} | "
                    f"{r['mean_tokens']:.1f} |" for r in log.get("heldout", []))
    curve = ", ".join(f"{c['step']}: {c['loss']:.3f}" for c in log["curve"][:: max(1, len(log["curve"]) // 12)])
    mix = ", ".join(f"{w:.0%} `{t}`" for t, w in MIX.items())
    what = ("the **base** checkpoint: the retrieval curriculum, then the task mix with think-off answers only"
            if log["name"] == BASE_NAME else
            f"the **reasoning** checkpoint: `{BASE_NAME}` trained further on think-on chains of thought, "
            "both modes kept")
    return f"""# {log['name']}: a Reasoning Heads model organism

A `Qwen2ForCausalLM` (RMSNorm, rotary, gated SiLU MLP, grouped-query attention) built from a config and trained
from scratch by `python -m support.organism train`: {what}. {log['n_parameters']:,} parameters; stages
{', '.join(log['stages'])}; {log['train_seconds']} s of training on a 2-core CPU,
{log['recipe']['threads']} thread(s) per run.
Word-level tokenizer in `tokenizer/` (load it with `AutoTokenizer`), ChatML chat template; a user turn ending in
`/think` asks for a chain of thought in `<think> ... </think>` before `Answer:`, one ending in `/no_think` for the
answer alone.

## Config
| key | value |
|---|---|
{cfg}

## Recipe
| key | value |
|---|---|
{recipe}

## Data
Generated by `support/toydata.py` (no third-party data). Mix: {mix}. `toy_mc4`/`toy_mc5`: 5-6 operand arithmetic,
restated, worked by tens and units, then the options checked in order against the result until the hit
(`8 (A) is not 28 .` ... `28 (D) is 28 .`); options
written `39 (C)` with distractors at offsets {log.get('distractor_offsets')}. `toy_countdown`: four numbers, a plan
(sorted numbers), then left-to-right proposals in a fixed operator order, each checked against the target,
backtracking until the first hit (1st-7th proposal). `toy_lookup` trains the option-retrieval step alone first
({log.get('curriculum_steps_taken')} steps, until its loss fell below {log['recipe'].get('curriculum_loss')}), and
`toy_arith` (six single facts such as `17 + 9 = 26`) trains the steps that the chains of thought chain together.
Loss on the assistant response only. Items whose content hash falls in
bucket 0 (of 10) are held out in both modes and never trained on.

## Design notes (measured while building the organism, 1 CPU thread, not re-run by CI)
- App. B's `C. 39` option layout, distractors at ±1/±2/±3/±10, 3000 mixed steps: held-out `toy_mc4` 0.25 (chance)
  in each of seven variants (loss masking, a lookup task, punctuation split, coarser offsets, Qwen3 with d_head 32,
  shorter prompts). The chain of thought got the arithmetic right 70% of the time; the letter was a guess.
- A lookup task alone, 1500 steps: letter retrieval 0.26 with the letter before the value, 0.62 with it after
  (`39 (C)`): "copy what followed the match" is the canonical induction pattern and is learned first.
- `39 (C)` mixed with arithmetic from step 1: retrieval still at chance after 2500 steps. Lookup first for 1000 steps,
  then the mix: teacher-forced letter accuracy on `toy_mc4` 0.52 with ±1/±2 distractors and 0.76 with distractors
  tens apart, after 3000 steps. Hence the curriculum and the offsets above (organism v1, 6 layers, 3-number tasks).
- Organism v2, first recipe (4-5 operands, then one `Check 59 (B) : yes .` line per option; Countdown hits at the
  1st-5th proposal; 1500 base and 3500 reasoning steps): the arithmetic was right on 57 of 60 held-out `toy_mc4`
  items, yet think-on accuracy was 0.26, because each check line must write an option's *value* after being given its
  letter ("copy what preceded `(C)`", the retrieval the organism cannot do) and it paired values with wrong letters.
  Countdown reached 0.74 with thought and 0.56 without (five candidate answers are easy to guess). Hence the
  `The result is 59 (B) .` line (value first, then its letter: induction), 5-6 operands, and 7 proposals.
- Organism v2, attempts 2-3 (that line, 1000-1400 reasoning steps, an adaptive curriculum, the options copied into
  the chain of thought): Countdown 0.36-0.68 with thought, `toy_mc4` 0.16-0.26 (chance). Teacher-forced on the gold
  chain of thought, the letter after `The result is 28` was right 25% of the time with the options four lines above;
  the lookup that works on `toy_lookup` items (0.73) fell to 0.21-0.48 with 2-8 lines of arithmetic between the
  options and the query; weighting the letter tokens ×10 in the loss did not help (0.24). The arithmetic itself was
  weak: the tens step was right 55% and the units step 15% of the time.
- Hence this recipe: `toy_arith` items in the mix (the tens and units steps then right 95% and 92% of the time) and
  the option check, which copies the options in order (a positional copy, right 100% of the time teacher-forced)
  and compares each with the result, so that the answer's letter is the last letter written. Trained side by side
  with the same recipe (100 held-out items each): `toy_mc4` 0.53 with thought with the option check, 0.34 with the
  copied options and `The result is` line (letter tokens weighted ×10), whose letter stayed at 0.24 teacher-forced.

## Training curve (step: loss)
{curve}

## Held-out accuracy ({log['heldout'][0]['n'] if log.get('heldout') else 0} items per task and mode, greedy)
| task | mode | accuracy | chance | mean response tokens |
|---|---|---|---|---|
{acc}

{chr(10).join(status(log) if log["name"] == NAME else base_status(log))}
"""


def build(root: Path = ORGANISM_ROOT, recipe: Recipe = Recipe(), n_card: int = 300,
          reuse_base: bool = False) -> dict[str, list]:
    """Train both checkpoints, then evaluate each and write its model card; returns the held-out rows."""
    train(root, recipe, reuse_base)
    return {name: write_card(Path(root) / name, n_card)["heldout"] for name in (BASE_NAME, NAME)}


def weights_digest(root: Path = ORGANISM_ROOT) -> dict[str, str]:
    """sha256 of each checkpoint's safetensors file: what `check` compares."""
    import hashlib

    return {name: hashlib.sha256((Path(root) / name / "model.safetensors").read_bytes()).hexdigest()
            for name in (BASE_NAME, NAME)}


def check(root: Path = ORGANISM_ROOT) -> bool:
    """Retrain both checkpoints with the default recipe into a temporary folder; True if the weights are bit for bit
    the committed ones (`make organism-check`: about half an hour on 2 CPU cores)."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        train(Path(tmp))
        got, want = weights_digest(Path(tmp)), weights_digest(root)
    for name in want:
        same = "identical" if got[name] == want[name] else "DIFFERENT"
        print(f"{name}: {same} (retrained {got[name][:16]}, committed {want[name][:16]})")
    return got == want


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m support.organism")
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="train both checkpoints from scratch, evaluate them and write their model cards")
    t.add_argument("--out", type=Path, default=ORGANISM_ROOT, help="folder receiving toy-qwen2-base and toy-qwen2")
    for f in fields(Recipe):
        t.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=f.default)
    t.add_argument("--card-n", type=int, default=300, help="held-out items per task and mode in the model card")
    t.add_argument("--reuse-base", action="store_true",
                   help="keep a base checkpoint in --out trained with the same base recipe; train the reasoning stage")
    sub.add_parser("check", help="retrain with the default recipe and compare the weights with the committed ones")
    c = sub.add_parser("card", help="rewrite the model cards from the training logs (no training, no evaluation)")
    c.add_argument("--out", type=Path, default=ORGANISM_ROOT)
    args = ap.parse_args(argv)
    if args.cmd == "check":
        return 0 if check() else 1
    if args.cmd == "card":
        for name in (BASE_NAME, NAME):
            log = json.loads((args.out / name / "training_log.json").read_text())
            (args.out / name / "MODEL_CARD.md").write_text(model_card(log))
        return 0
    recipe = Recipe(**{f.name: getattr(args, f.name) for f in fields(Recipe)})
    print(json.dumps(build(args.out, recipe, args.card_n, args.reuse_base), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
