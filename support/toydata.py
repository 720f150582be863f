"""The model organism's tasks, generated: items, held-out splits, think on/off, and the training mixes (no model code).

Every item can be asked in two modes, as Qwen3 does: the user turn ends with `/think` or `/no_think`, and the
response is `<think> ... </think>` followed by `Answer: ...`, with an empty think block in `/no_think` mode.

- `toy_mc4` / `toy_mc5`: multiple-choice arithmetic with 5-6 operands (+ and -, every value in 0..99). The chain of
  thought restates the sum, works each step out by tens and units ("23 + 45 = 23 + 40 + 5 = 63 + 5 = 68"), then
  checks the options in order against the result and stops at the hit ("8 (A) is not 28 ." ... "28 (D) is 28 ."),
  whose letter is the answer. Distractors sit tens apart around the true value (±10..±40), so the result has to be
  computed to pick the option.
- `toy_countdown`: reach a target from four numbers with + - *. The chain of thought plans (the numbers sorted,
  largest first), then proposes left-to-right chains in a fixed order of operators (+, -, *), checks each against the
  target, backtracks on a miss or an overflow ("big"), and stops at the first hit, which the answer writes as
  `( ( a op b ) op c ) op d` (verifiable by `support.scoring.verify_countdown`). Targets are chosen so that the hit
  is the 1st to 7th proposal: a search with a real plan-then-execute structure and 0-6 backtracks.
- `toy_mc4_lb` (fine-tuning only, never in the pretraining mix): a one-operand `toy_mc4` ("What is 37 ?", so no
  arithmetic) with the options written the other way round, `(C) 39`, letter *before* value, and the option check
  written `(C) 39 is 39 .`. The check now has to fetch the value that follows a letter, where the organism learned to
  fetch the letter that follows a value; the base model answers almost nothing right (chapter 04 measures it). It is
  chapter 04's task "the organism does poorly and can learn" (issue 14).
- `toy_lookup` (training only): the options, then "Find 39 12 ...", answered with every value's letter; it trains
  the option-retrieval step on its own (the curriculum that made letters learnable).
- `toy_arith` (training only): six single arithmetic facts ("17 + 9 = 26"), the steps the chains of thought chain
  together, learned on their own.

The options are written `39 (C)`, the letter *after* the value (see `support.prompts.option_lines`). Held-out items
are those whose content hash falls in the test bucket, so train and test never share a question, in either mode.
`support.organism` trains on `mixture`; `support.tasks` serves `generate` as the `toy_*` datasets.
"""

from __future__ import annotations

import hashlib
import itertools
import random
from dataclasses import dataclass, replace
from typing import Iterator

from .prompts import LETTERS, option_lines, organism_block, user_turn

MAX_VALUE = 99
TOY_TASKS = ("toy_mc4", "toy_mc5", "toy_countdown")
#: Tasks held out of pretraining altogether (not in `MIX`): a shifted format to fine-tune on. Served like TOY_TASKS.
FINETUNE_TASKS = ("toy_mc4_lb",)
#: Option layout of each multiple-choice task: letter after the value (the organism's own) or before it.
MC_LAYOUT = {"toy_mc4": "organism", "toy_mc5": "organism", "toy_mc4_lb": "letter_first"}
#: Operands per question of each multiple-choice task (default `MC_OPERANDS`).
TASK_OPERANDS = {"toy_mc4_lb": (1,)}
MODES = ("think", "no_think")
#: Distractors sit at these offsets from the true value (4 or 5 options: the true one plus 3 or 4 of these).
#: With ±1/±2 offsets the organism could not tell neighbouring numbers apart when retrieving the letter (measured:
#: retrieval at chance); tens apart, it retrieves reliably, and the arithmetic still has to be right.
DISTRACTOR_OFFSETS = (-10, 10, -20, 20, -30, 30, -40, 40)
#: Operands per multiple-choice question (4 or 5 worked steps).
MC_OPERANDS = (5, 6)
#: Second operands of the multiple-choice steps: never a multiple of ten, so every step is worked by tens and units.
OPERANDS = tuple(b for b in range(11, 50) if b % 10)
#: Countdown: operators in proposal order, how many numbers, their range, and how late the hit may come.
CD_OPS = ("+", "-", "*")
CD_NUMBERS = 4
CD_RANGE = (1, 25)
CD_MAX_PROPOSALS = 7
#: The training mix of the tasks. `toy_lookup` trains the option-retrieval step on its own.
MIX = {"toy_mc4": 0.25, "toy_mc5": 0.1, "toy_countdown": 0.25, "toy_lookup": 0.15, "toy_arith": 0.25}
#: Arithmetic facts per `toy_arith` item.
ARITH_FACTS = 6
#: Curriculum: the first steps train on `toy_lookup` alone, so the retrieval (induction) head forms before the
#: arithmetic competes for the gradient. Without this phase the retrieval never formed in 3000 steps (measured).
CURRICULUM = {"toy_lookup": 1.0}
THINK_TAGS = ("<think>", "</think>", "/think", "/no_think")
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
    """One generated example: chat prompt, gold response (think on or off), and the gold answer."""

    id: str
    task: str
    question: str
    options: tuple[str, ...]
    answer: str
    rationale: str
    numbers: tuple[int, ...] = ()
    target: int | None = None
    think: bool = True

    @property
    def mode(self) -> str:
        return "think" if self.think else "no_think"

    @property
    def prompt(self) -> str:
        """A ChatML user turn (template `organism`), ending with the mode flag `/think` or `/no_think`. The organism
        is too small to spend its context on a fixed preamble (real models get the App. B prompt)."""
        return user_turn(f"{self.user} /{self.mode}")

    @property
    def user(self) -> str:
        if self.task in ("toy_countdown", "toy_lookup", "toy_arith"):
            return self.question
        return organism_block(self.question, self.options, layout=MC_LAYOUT[self.task])

    @property
    def response(self) -> str:
        """`<think>` chain of thought `</think>` then the answer line; the think block is empty in `/no_think` mode."""
        if self.task in ("toy_lookup", "toy_arith"):
            return f"{self.rationale}<|im_end|>"
        thought = f"{self.rationale}\n" if self.think else ""
        return f"<think>\n{thought}</think>\nAnswer: {self.answer}<|im_end|>"

    @property
    def text(self) -> str:
        return self.prompt + self.response

    def in_mode(self, think: bool) -> "ToyItem":
        """The same question asked in the other mode (same id: the split never separates the two)."""
        return replace(self, think=think)


def _bucket(key: str) -> str:
    return "test" if int(hashlib.sha256(key.encode()).hexdigest(), 16) % 10 == 0 else "train"


def _id(key: str) -> str:
    return hashlib.sha1(key.encode()).hexdigest()[:12]


def _options(rng: random.Random, value: int, n_options: int) -> tuple[list[int], str]:
    """The true value plus distractors tens apart (`DISTRACTOR_OFFSETS`), shuffled; returns (options, gold letter)."""
    offsets = [d for d in DISTRACTOR_OFFSETS if 0 <= value + d <= MAX_VALUE]
    rng.shuffle(offsets)
    options = [value] + [value + d for d in offsets[: n_options - 1]]
    rng.shuffle(options)
    return options, LETTERS[options.index(value)]


# ----------------------------------------------------------------------------------------------- multiple choice
def step_line(a: int, op: str, b: int) -> tuple[str, int]:
    """One worked step by tens then units: ("23 + 45 = 23 + 40 + 5 = 63 + 5 = 68", 68). Stays within 0..b's span."""
    tens, units = b - b % 10, b % 10
    mid = a + tens if op == "+" else a - tens
    res = mid + units if op == "+" else mid - units
    if tens == 0 or units == 0:
        return f"{a} {op} {b} = {res}", res
    return f"{a} {op} {b} = {a} {op} {tens} {op} {units} = {mid} {op} {units} = {res}", res


def _mc_item(rng: random.Random, n_options: int, think: bool = True, task: str | None = None) -> ToyItem:
    task = task or f"toy_mc{n_options}"
    while True:
        k = rng.choice(TASK_OPERANDS.get(task, MC_OPERANDS))
        vals, lines, ops = [rng.randint(1, 50)], [], []
        for _ in range(k - 1):
            op, b = rng.choice("+-"), rng.choice(OPERANDS)
            new = vals[-1] + b if op == "+" else vals[-1] - b
            if not 0 <= new <= MAX_VALUE:
                break
            lines.append(step_line(vals[-1], op, b)[0])
            ops.append(f"{op} {b}")
            vals.append(new)
        if len(vals) == k:
            break
    result = vals[-1]
    options, gold = _options(rng, result, n_options)
    expr = f"{vals[0]} {' '.join(ops)}"
    scan = scan_lines(options, result, letter_first=MC_LAYOUT[task] == "letter_first")
    rationale = "\n".join([f"Compute {expr} ."] + lines + scan)
    question = f"What is {expr} ?"
    return ToyItem(id=_id(f"{task}|{question}|{options}"), task=task, question=question,
                   options=tuple(str(o) for o in options), answer=gold, rationale=rationale, think=think)


def scan_lines(options: list[int], result: int, letter_first: bool = False) -> list[str]:
    """The options checked in their order against the result, stopping at the hit: ["8 (A) is not 28 .", ...,
    "28 (D) is 28 ."] (`letter_first`: "(A) 8 is not 28 ."). The answer's letter is then the last letter written."""
    out = []
    for value, letter in zip(options, LETTERS):
        opt = f"({letter}) {value}" if letter_first else f"{value} ({letter})"
        if value == result:
            return out + [f"{opt} is {result} ."]
        out.append(f"{opt} is not {result} .")
    raise ValueError(f"{result} is not among the options {options}")


def lookup_item(rng: random.Random, n_options: int = 4) -> ToyItem:
    """Auxiliary training item: the options, then every option value again in a new order; the response gives
    each value's letter. This is the retrieval step of toy_mc on its own, once per option (dense supervision)."""
    value = rng.randint(0, MAX_VALUE)
    options, _ = _options(rng, value, n_options)
    queries = options[:]
    rng.shuffle(queries)
    question = f"Find {' '.join(map(str, queries))} ."
    user = "\n".join(option_lines([str(o) for o in options], "organism") + [question])
    rationale = "\n".join(f"{q} ({LETTERS[options.index(q)]})" for q in queries)
    return ToyItem(id=_id(f"toy_lookup|{question}|{options}"), task="toy_lookup", question=user, options=(),
                   answer=LETTERS[options.index(queries[-1])], rationale=rationale, think=False)


def arith_item(rng: random.Random) -> ToyItem:
    """Auxiliary training item: single arithmetic facts, asked in the prompt and answered one per line. Half are
    the multiple-choice steps (a ± tens, a ± units), half the Countdown steps (a + - * b, b in 1..25): the facts
    that the chains of thought chain together, learned on their own (without them, the reasoning stage got the
    units step right 15% of the time, measured teacher-forced)."""
    facts = []
    while len(facts) < ARITH_FACTS:
        a = rng.randint(0, MAX_VALUE)
        if rng.random() < 0.5:
            op, b = rng.choice("+-"), rng.choice((rng.randint(1, 9), 10 * rng.randint(1, 4)))
        else:
            op, b = rng.choice(CD_OPS), rng.randint(*CD_RANGE)
        r = _apply(a, op, b)
        if 0 <= r <= MAX_VALUE:
            facts.append((a, op, b, r))
    question = "Compute " + " , ".join(f"{a} {op} {b}" for a, op, b, _ in facts) + " ."
    rationale = "\n".join(f"{a} {op} {b} = {r}" for a, op, b, r in facts)
    return ToyItem(id=_id(f"toy_arith|{question}"), task="toy_arith", question=question, options=(), answer="",
                   rationale=rationale, think=False)


# ----------------------------------------------------------------------------------------------- countdown
def countdown_question(numbers, target: int) -> str:
    """The organism's Countdown question (its whole user turn, before the mode flag)."""
    return f"Numbers : {' '.join(map(str, numbers))} . Target : {target} ."


def _apply(a: int, op: str, b: int) -> int:
    return a + b if op == "+" else a - b if op == "-" else a * b


def proposal(numbers: tuple[int, ...], ops: tuple[str, ...]) -> tuple[str, int | None]:
    """One left-to-right chain, written out: ("Try 20 + 12 = 32 , 32 - 5 = 27 , 27 * 3 = 81 .", 81).

    A step that leaves 0..99 is written `= big` and ends the chain (value None)."""
    acc, parts = numbers[0], []
    for op, b in zip(ops, numbers[1:]):
        new = _apply(acc, op, b)
        if not 0 <= new <= MAX_VALUE:
            parts.append(f"{acc} {op} {b} = big")
            return "Try " + " , ".join(parts) + " .", None
        parts.append(f"{acc} {op} {b} = {new}")
        acc = new
    return "Try " + " , ".join(parts) + " .", acc


def _countdown_item(rng: random.Random, think: bool = True) -> ToyItem:
    """Four numbers and a target reached by the j-th proposal (j = 1..CD_MAX_PROPOSALS) in the fixed search order."""
    order = list(itertools.product(CD_OPS, repeat=CD_NUMBERS - 1))
    while True:
        shown = [rng.randint(*CD_RANGE) for _ in range(CD_NUMBERS)]
        nums = tuple(sorted(shown, reverse=True))
        tried = [proposal(nums, ops) for ops in order[:CD_MAX_PROPOSALS]]
        j = rng.randrange(CD_MAX_PROPOSALS)
        target = tried[j][1]
        if target is not None and all(v != target for _, v in tried[:j]):
            break
    lines = [f"Plan : {' '.join(map(str, nums))} to {target} ."]
    for text, value in tried[:j]:
        lines.append(f"{text} {'big' if value is None else value} is not {target} .")
    lines.append(f"{tried[j][0]} {target} is {target} .")
    ops = order[j]
    answer = f"( ( {nums[0]} {ops[0]} {nums[1]} ) {ops[1]} {nums[2]} ) {ops[2]} {nums[3]}"
    question = countdown_question(shown, target)
    return ToyItem(id=_id(f"toy_countdown|{question}"), task="toy_countdown", question=question, options=(),
                   answer=answer, rationale="\n".join(lines), numbers=tuple(shown), target=target, think=think)


# ----------------------------------------------------------------------------------------------- streams
def _item(rng: random.Random, task: str, think: bool) -> ToyItem:
    if task == "toy_lookup":
        return lookup_item(rng, rng.choice((4, 5)))
    if task == "toy_arith":
        return arith_item(rng)
    if task == "toy_countdown":
        return _countdown_item(rng, think)
    return _mc_item(rng, 4 if task == "toy_mc4_lb" else int(task[-1]), think, task)


def check_mode(mode: str) -> bool:
    """'think' -> True, 'no_think' -> False; anything else fails naming the choices."""
    if mode not in MODES:
        raise ValueError(f"unknown think mode {mode!r}; valid choices: {', '.join(MODES)}")
    return mode == "think"


def generate(task: str, n: int, split: str = "test", seed: int = 0, mode: str = "think") -> list[ToyItem]:
    """`n` deterministic items of a toy task from the given split ('train' or 'test'), asked in `mode`.

    The questions do not depend on the mode: `generate(..., mode="no_think")` asks the same questions."""
    if task not in TOY_TASKS + FINETUNE_TASKS:
        raise ValueError(f"unknown toy task {task!r}; valid choices: {', '.join(TOY_TASKS + FINETUNE_TASKS)}")
    if split not in ("train", "test"):
        raise ValueError(f"unknown split {split!r}; valid choices: train, test")
    think = check_mode(mode)
    rng = random.Random(f"{task}|{split}|{seed}")
    out, seen = [], set()
    while len(out) < n:
        it = _item(rng, task, think)
        if _bucket(it.id) == split and it.id not in seen:
            seen.add(it.id)
            out.append(it)
    return out


def mixture(seed: int, weights: dict[str, float] | None = None, think_share: float = 1.0) -> Iterator[ToyItem]:
    """Endless deterministic stream of training items: tasks drawn by `weights`, each in think mode with
    probability `think_share` (else `/no_think`)."""
    weights = weights or MIX
    rng = random.Random(f"mix|{seed}")
    tasks, w = list(weights), list(weights.values())
    while True:
        task = rng.choices(tasks, w)[0]
        think = rng.random() < think_share
        it = _item(rng, task, think)
        if _bucket(it.id) == "train":
            yield it
