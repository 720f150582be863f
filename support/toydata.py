"""The model organism's tasks, generated: items, held-out splits and the training mix (no model code here).

- `toy_mc4` / `toy_mc5`: multiple-choice arithmetic (2-3 operands, + and -, values 0..99) with a chain of thought
  that computes the result, names the matching option, and ends with `Answer: <LETTER>`. Distractors sit tens
  apart around the true value (±10..±40), so the organism must compute the result to pick the option.
- `toy_countdown`: reach a target from three numbers with + - *; the chain of thought evaluates left to right and
  the last line is `Answer: ( a op b ) op c`, verifiable by `support.scoring.verify_countdown`.
- `toy_lookup` (training only): the options, then "Find 39 12 ...", answered with every value's letter.

The options are written `39 (C)`, the letter *after* the value (see `support.prompts.option_lines`). Held-out items
are those whose content hash falls in the test bucket, so train and test never share a question. `support.organism`
trains on `mixture`; `support.tasks` serves `generate` as the `toy_*` datasets.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from typing import Iterator

from .prompts import LETTERS, option_lines, organism_block, user_turn

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
COUNTDOWN_SYSTEM = (
    "You are a helpful reasoning assistant. You must perform explicit step-by-step reasoning before giving the final "
    "answer."
)
COUNTDOWN_INSTRUCTION = (
    "Use each number exactly once with + - * to reach the target. Please think step by step. After reasoning, "
    "output on the last line exactly in the format: Answer: <EXPRESSION>."
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


def lookup_item(rng: random.Random, n_options: int = 4) -> ToyItem:
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


def countdown_question(numbers, target: int) -> str:
    """The organism's Countdown question (its whole user turn)."""
    return f"Numbers : {' '.join(map(str, numbers))} . Target : {target} ."


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
    question = countdown_question(shown, y)
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
            it = lookup_item(rng, rng.choice((4, 5)))
        else:
            it = _countdown_item(rng) if task == "toy_countdown" else _mc_item(rng, int(task[-1]))
        if _bucket(it.id) == "train":
            yield it
