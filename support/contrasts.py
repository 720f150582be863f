"""Clean/corrupted prompt pairs for circuit discovery (paper 001 §3.1 step 1, App. A.2).

A circuit is defined by a pair set: a *clean* prompt that elicits the behaviour, a *corrupted* prompt that differs
only where the behaviour's input lives, and a metric at the next token (`support.circuits`). Two sources:

- **`lookup_pairs`** (the organism): a `toy_lookup` item teacher-forced up to its first queried value, so the next
  token is that value's letter, e.g. `(C)`. The corrupted prompt swaps the value with another option's value of the
  same token length in the option list, so the right letter becomes the other option's. Answers are the two letter
  tokens (metric `logit_diff`, or `kl`). Only the first query is used: later ones can be answered by elimination from
  the letters already given.
- **`check_pairs`** (the organism, the default of chapter 03): a held-out `toy_mc4` item in think mode,
  teacher-forced through its chain of thought up to the option check that hits, ``37 (A) is``, so the next token is
  the result (``37``: the option equals the computed result) rather than ``not``. The corrupted prompt writes another
  option's value on that line (``57 (A) is``), so the right next token becomes ``not``. Answers: (result, ``not``).
  The behaviour is an equality check of the option against the result computed lines earlier; the SFT organism does
  it (chapter 03 measures how well) and its base model, which never saw chains of thought, mostly does not.
- **`math_pairs`** (real models; paper 001 builds its circuits on AIME'24 problems): the problem under the model's
  chat template, followed by a fixed opening of the response (App. A.2 samples each model's own: "Okay, so I have
  this problem ..." after `<think>` for reasoning models, "To determine ..." for base models; one shared opening keeps
  the prompts equal across checkpoints). The corrupted prompt changes every number of the problem to another of the
  same digit count (seeded), so the pair differs only in the problem's quantities. No answer tokens: the metric is
  the KL divergence of the next-token distribution (the paper's). Pairs whose lengths differ after tokenization
  are right-aligned by `support.circuits`.

`think` selects the organism's `/think` or `/no_think` flag, or a Qwen3-style chat template's `enable_thinking`.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Any, Sequence

from .errors import ParameterError

_NUMBER = re.compile(r"\d+")
#: Pair sources: the organism's option checks or lookup items, or a math set of `support.tasks` (text with numbers).
SOURCES = ("toy_check", "toy_lookup", "aime24", "aime25", "amc23", "math500", "gsm8k")


@dataclass
class PairSet:
    """Clean and corrupted prompts (text), their (correct, incorrect) answer tokens where the metric needs them, and
    the ids of the items they came from."""

    clean: list[str]
    corrupted: list[str]
    answers: list[tuple[str, str]] | None
    ids: list[str]

    def __len__(self) -> int:
        return len(self.clean)


# ----------------------------------------------------------------------------------------------- the organism
def lookup_pair(seed: int, think: bool = False) -> tuple[str, str, tuple[str, str], str] | None:
    """(clean, corrupted, (correct letter, corrupted letter), id) from `toy_lookup` item seed `seed`; None when no
    other option has a value of the same length."""
    from .toydata import lookup_item

    it = lookup_item(random.Random(seed))
    v, letter = it.rationale.split("\n")[0].split()
    opts = it.question.split("\n")[:-1]
    vals = [o.split()[0] for o in opts]
    i = vals.index(v)
    js = [j for j in range(len(vals)) if j != i and len(vals[j]) == len(v)]
    if not js:
        return None
    j = js[0]
    swapped = list(opts)
    swapped[i], swapped[j] = f"{vals[j]} {opts[i].split()[1]}", f"{v} {opts[j].split()[1]}"
    prompt = it.prompt.replace("/no_think", "/think" if think else "/no_think")
    corrupted = prompt.replace("\n".join(opts), "\n".join(swapped))
    return prompt + v, corrupted + v, (letter, opts[j].split()[1]), f"toy_lookup/{seed}"


def lookup_pairs(seeds: Sequence[int], n: int, think: bool = False) -> PairSet:
    """The first `n` lookup pairs from `seeds` (seeds without a same-length partner option are skipped)."""
    out = [p for p in (lookup_pair(s, think) for s in seeds) if p is not None][:n]
    if len(out) < n:
        raise ParameterError(f"only {len(out)} lookup pairs from {len(seeds)} seeds; ask for at most {len(out)} or "
                             f"pass more seeds")
    clean, corrupted, answers, ids = map(list, zip(*out))
    return PairSet(clean, corrupted, answers, ids)


def _check_pair(it: Any, index: int, think: bool) -> tuple[str, str, tuple[str, str], str]:
    result, hit_letter = it.options[ord(it.answer) - ord("A")], it.answer
    line = f"\n{result} ({hit_letter}) is"
    cut = it.text.index(line) + len(line)
    other = next(o for o in it.options if o != result)
    clean = it.text[:cut]
    corrupted = clean[: cut - len(line)] + f"\n{other} ({hit_letter}) is"
    if not think:
        clean, corrupted = (x.replace(" /think<|im_end|>", " /no_think<|im_end|>", 1) for x in (clean, corrupted))
    return clean, corrupted, (result, "not"), f"toy_check/{index}"


def check_pair(index: int, think: bool = True) -> tuple[str, str, tuple[str, str], str]:
    """(clean, corrupted, (result, "not"), id) from the `index`-th held-out `toy_mc4` item (test split, seed 0).

    `think=False` asks the same question with the `/no_think` flag but keeps the teacher-forced chain of thought,
    so the pair differs from the think-on one only in the mode flag."""
    return _check_items([index], think)[0]


def _check_items(indices: Sequence[int], think: bool) -> list[tuple[str, str, tuple[str, str], str]]:
    from .toydata import generate

    idx = [int(i) for i in indices]
    if any(i < 0 for i in idx):
        raise ParameterError(f"check-pair indices must be >= 0, got {min(idx)}")
    items = generate("toy_mc4", max(idx) + 1, split="test", seed=0, mode="think") if idx else []
    return [_check_pair(items[i], i, think) for i in idx]


def check_pairs(indices: Sequence[int], think: bool = True) -> PairSet:
    """The option-check pairs of the held-out `toy_mc4` items at `indices` (see `check_pair`)."""
    clean, corrupted, answers, ids = map(list, zip(*_check_items(indices, think)))
    return PairSet(clean, corrupted, answers, ids)


#: The organism's pair sources and their id spellings (what a saved circuit's provenance records).
TOY_SOURCES = {"toy_check": "toy_check/<index>", "toy_lookup": "toy_lookup/<seed>"}


def pairs_from_ids(ids: Sequence[str], think: bool | None = None) -> PairSet:
    """The organism's pairs named by `ids` ("toy_check/<index>" or "toy_lookup/<seed>", what a saved circuit's
    provenance records). `think` defaults to each source's own default (check: on, lookup: off)."""
    parsed = []
    for x in ids:
        head, _, tail = str(x).partition("/")
        if head not in TOY_SOURCES or not tail.isdigit():
            raise ParameterError(f"not an organism pair id: {x!r}; valid spellings: {', '.join(TOY_SOURCES.values())}")
        parsed.append((head, int(tail)))
    checks = iter(_check_items([k for h, k in parsed if h == "toy_check"], True if think is None else think))
    out = [next(checks) if h == "toy_check" else lookup_pair(k, bool(think)) for h, k in parsed]
    if missing := [i for i, p in zip(ids, out) if p is None]:
        raise ParameterError(f"no pair for {missing}: these lookup items have no option of the same length")
    clean, corrupted, answers, got = map(list, zip(*out))
    return PairSet(clean, corrupted, answers, got)


# ----------------------------------------------------------------------------------------------- real models
def swap_numbers(text: str, rng: random.Random) -> str:
    """`text` with every run of digits replaced by a different run of the same length (no new leading zero)."""
    def other(m: re.Match) -> str:
        s = m.group(0)
        while True:
            first = s[0] if len(s) > 1 and s[0] == "0" else str(rng.randint(1 if len(s) > 1 else 0, 9))
            new = first + "".join(str(rng.randint(0, 9)) for _ in s[1:])
            if new != s:
                return new

    return _NUMBER.sub(other, text)


def math_pairs(items: Sequence[Any], n: int, tokenizer=None, template: str = "model", prefix: str = "",
               think: bool | None = None, seed: int = 0) -> PairSet:
    """Pairs from math items (`problem` or `question` text): the problem under `template` plus `prefix` (the opening
    of the response), against the same with every number changed (`swap_numbers`, seeded). Items without digits
    are skipped."""
    from .prompts import REASONING_SYSTEM, wrap

    rng = random.Random(seed)
    clean, corrupted, ids = [], [], []
    for it in items:
        text = (getattr(it, "problem", None) or getattr(it, "question", None) or "").strip()
        if not text or not _NUMBER.search(text):
            continue
        clean.append(wrap(REASONING_SYSTEM, text, template, tokenizer, think=think) + prefix)
        corrupted.append(wrap(REASONING_SYSTEM, swap_numbers(text, rng), template, tokenizer, think=think) + prefix)
        ids.append(str(getattr(it, "id", len(ids))))
        if len(clean) == n:
            return PairSet(clean, corrupted, None, ids)
    raise ParameterError(f"only {len(clean)} of {len(items)} items have numbers to corrupt; ask for at most "
                         f"{len(clean)} pairs or load more items")
