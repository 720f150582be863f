"""Dataset records and row converters: one record format per task family, one malformed-row contract.

Records (frozen dataclasses):

* `MCItem`: multiple choice: question stem, options (prefix-free texts), gold letter, optional rationale.
* `MathItem`: free-form answer: problem, normalised answer string, optional worked solution.
* `CountdownItem`: a multiset of numbers and a target; checked by `support.scoring.verify_countdown`.

Converters turn one raw row (a local JSON line or a hub row) into a record, or raise `BadRow` with the reason;
`support.tasks` turns that into a skip or a `MalformedRowError` (see its malformed-row policy).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

from .scoring import normalize_answer

ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


# --------------------------------------------------------------------------------------------------- records


@dataclass(frozen=True)
class MCItem:
    """A multiple-choice item; `answer` is the gold letter ('A', 'B', ...)."""

    id: str
    question: str
    options: tuple[str, ...]
    answer: str
    rationale: str | None
    source: str

    @property
    def letters(self) -> str:
        """The option letters, e.g. 'ABCD' for four options."""
        return ALPHABET[: len(self.options)]

    @property
    def gold_index(self) -> int:
        """0-based index of the gold option."""
        return self.letters.index(self.answer)


@dataclass(frozen=True)
class MathItem:
    """A free-form item; `answer` is a normalised string (see `normalize_answer`)."""

    id: str
    problem: str
    answer: str
    solution: str | None
    source: str


@dataclass(frozen=True)
class CountdownItem:
    """Reach `target` with + - * / and parentheses, using each of `numbers` once."""

    id: str
    numbers: tuple[int, ...]
    target: int
    source: str


Item = Any  # MCItem | MathItem | CountdownItem | str (WikiText lines) | registered tasks' own records


@dataclass
class LoadResult:
    """Loaded items plus the rows that were skipped as malformed, as (row_index, reason)."""

    name: str
    split: str
    items: list = field(default_factory=list)
    skipped: list[tuple[int, str]] = field(default_factory=list)
    origin: str = ""  # "local:<path>" or "hub:<id>[/<config>]"

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[Item]:
        return iter(self.items)

    def __getitem__(self, i):
        return self.items[i]


class MalformedRowError(ValueError):
    """A malformed row under ``on_error="raise"``."""

    def __init__(self, dataset: str, row: int, reason: str):
        super().__init__(f"{dataset}: malformed row {row}: {reason}")
        self.dataset, self.row, self.reason = dataset, row, reason


class BadRow(Exception):
    """Raised by converters; the loader turns it into a skip or a `MalformedRowError`."""


# --------------------------------------------------------------------------------------------------- converters


def _text(row: dict, *keys: str) -> str:
    """The first non-empty string among `keys`, stripped; '' if none."""
    for k in keys:
        v = row.get(k)
        if isinstance(v, str) and v.strip():
            return v.strip()
    return ""


def _labels_to_letters(labels: Sequence[str], n: int) -> str:
    """Map labels 'A..'/'1..' to letters; they must be the sequence for n options."""
    labels = [str(x).strip() for x in labels]
    if len(labels) != n:
        raise BadRow(f"{n} options but {len(labels)} labels")
    if labels == list(ALPHABET[:n]):
        return ALPHABET[:n]
    if labels == [str(i + 1) for i in range(n)]:
        return ALPHABET[:n]
    raise BadRow(f"labels {labels} are not A.. or 1.. for {n} options")


def _gold_letter(key: Any, labels: Sequence[str]) -> str:
    """The gold letter for an answer key given as a letter or a numeric label."""
    key = str(key).strip() if key is not None else ""
    if not key:
        raise BadRow("missing answer key")
    labels = [str(x).strip() for x in labels]
    if key not in labels:
        raise BadRow(f"gold {key!r} not among labels {labels}")
    return ALPHABET[labels.index(key)]


def _make_mc(rid: str, question: str, options: Sequence[str], answer: str, rationale: str | None, source: str,
             n_options: int | None = None) -> MCItem:
    """Validate and build an MCItem."""
    if not question:
        raise BadRow("missing or empty question")
    if len(options) < 2:
        raise BadRow(f"only {len(options)} option(s)")
    if n_options is not None and len(options) != n_options:
        raise BadRow(f"expected {n_options} options, got {len(options)}")
    if any(not o for o in options):
        raise BadRow("empty option text")
    if answer not in ALPHABET[: len(options)]:
        raise BadRow(f"gold letter {answer!r} not among {ALPHABET[:len(options)]}")
    return MCItem(rid, question, tuple(options), answer, rationale or None, source)


def mc_from_choices(row: dict, source: str, idx: int, n_options: int | None = None,
                    rationale: str | None = None) -> MCItem:
    """ARC / CommonsenseQA / QASC row -> MCItem, in either layout.

    local jsonl: ``{id, question: {stem, choices: [{text, label}]}, answerKey}``;
    hub:         ``{id, question: str, choices: {text: [...], label: [...]}, answerKey}``.
    """
    q = row.get("question")
    if isinstance(q, dict):
        stem, choices = _text(q, "stem"), q.get("choices")
        if not isinstance(choices, list) or not all(isinstance(c, dict) for c in choices):
            raise BadRow("missing choices")
        texts, labels = [c.get("text") for c in choices], [c.get("label") for c in choices]
    else:
        stem, choices = (q.strip() if isinstance(q, str) else ""), row.get("choices")
        if not isinstance(choices, dict):
            raise BadRow("missing choices")
        texts, labels = list(choices.get("text") or []), list(choices.get("label") or [])
    if not stem:
        raise BadRow("missing or empty question")
    texts = [str(t).strip() if t is not None else "" for t in texts]
    letters = _labels_to_letters(labels, len(texts))
    gold = _gold_letter(row.get("answerKey"), labels)
    rid = str(row.get("id") or f"{source}-{idx}")
    return _make_mc(rid, stem, texts, letters[ALPHABET.index(gold)], rationale, source, n_options)


def qasc_row(row: dict, source: str, idx: int) -> MCItem:
    """QASC: 8 options; rationale = combinedfact, else fact1 + fact2."""
    rationale = _text(row, "combinedfact") or " ".join(t for t in (_text(row, "fact1"), _text(row, "fact2")) if t)
    return mc_from_choices(row, source, idx, n_options=8, rationale=rationale)


_AQUA_OPT_RE = re.compile(r"^\s*([A-Z])\s*\)\s*(.*)$", re.S)


def aqua_row(row: dict, source: str, idx: int) -> MCItem:
    """AQUA-RAT: options 'A)21' -> '21'; gold `correct`; 5 options."""
    opts = row.get("options")
    if not isinstance(opts, list):
        raise BadRow("missing options")
    labels, texts = [], []
    for j, o in enumerate(opts):
        m = _AQUA_OPT_RE.match(str(o))
        if not m:
            raise BadRow(f"option {j} lacks an 'X)' prefix: {str(o)[:30]!r}")
        labels.append(m.group(1))
        texts.append(m.group(2).strip())
    _labels_to_letters(labels, len(texts))
    gold = _gold_letter(row.get("correct"), labels)
    return _make_mc(f"{source}-{idx}", _text(row, "question"), texts, gold, _text(row, "rationale"), source, 5)


def gsm8k_row(row: dict, source: str, idx: int) -> MathItem:
    """GSM8K: answer = number after '####' (commas removed), solution = the text before it."""
    problem, full = _text(row, "question"), row.get("answer")
    if not problem:
        raise BadRow("missing or empty question")
    if not isinstance(full, str) or "####" not in full:
        raise BadRow("missing answer ('####' marker)")
    solution, _, final = full.rpartition("####")
    final = final.strip().replace(",", "")
    if not final:
        raise BadRow("empty answer after '####'")
    return MathItem(f"{source}-{idx}", problem, normalize_answer(final), solution.strip() or None, source)


def math_row(row: dict, source: str, idx: int) -> MathItem:
    """MATH-500 / AIME / AMC: problem (or question), answer of any type -> normalised string, optional solution."""
    problem, ans = _text(row, "problem", "question"), row.get("answer")
    if not problem:
        raise BadRow("missing or empty problem")
    if ans is None or (isinstance(ans, str) and not ans.strip()):
        raise BadRow("missing answer")
    rid = row.get("unique_id") or row.get("id")
    rid = f"{source}-{rid}" if rid is not None and str(rid) != "" else f"{source}-{idx}"
    return MathItem(rid, problem, normalize_answer(ans), _text(row, "solution") or None, source)


def countdown_row(row: dict, source: str, idx: int) -> CountdownItem:
    """Countdown: d1 layout ``{input: "a,b,c", output: "t"}`` or hub layout ``{nums: [...], target: t}``."""
    raw = row.get("input", row.get("nums"))
    parts = raw.split(",") if isinstance(raw, str) else raw
    tgt = row.get("output", row.get("target"))
    try:
        nums = tuple(int(str(p).strip()) for p in parts)
        target = int(str(tgt).strip())
    except (TypeError, ValueError):
        raise BadRow(f"numbers {raw!r} / target {tgt!r} are not integers") from None
    if len(nums) < 2:
        raise BadRow(f"need at least 2 numbers, got {len(nums)}")
    return CountdownItem(f"{source}-{idx}", nums, target, source)


_BBH_OPT_RE = re.compile(r"^\(([A-Z])\)\s?(.*)$")


def bbh_row(row: dict, source: str, idx: int) -> MCItem | MathItem:
    """BBH: '(A) ...' option lines in `input` -> MCItem (target '(B)' -> 'B'); otherwise a free-form MathItem."""
    inp, target = row.get("input"), row.get("target")
    if not isinstance(inp, str) or not inp.strip():
        raise BadRow("missing or empty input")
    if target is None or not str(target).strip():
        raise BadRow("missing target")
    target = str(target).strip()
    lines = inp.rstrip().split("\n")
    k = len(lines)
    while k > 0 and _BBH_OPT_RE.match(lines[k - 1]):
        k -= 1
    if k == len(lines):
        return MathItem(f"{source}-{idx}", inp.strip(), target, None, source)
    opts = [_BBH_OPT_RE.match(ln) for ln in lines[k:]]
    labels, texts = [m.group(1) for m in opts], [m.group(2).strip() for m in opts]
    stem_lines = lines[:k]
    if stem_lines and stem_lines[-1].strip() == "Options:":
        stem_lines = stem_lines[:-1]
    _labels_to_letters(labels, len(texts))
    m = re.fullmatch(r"\(?([A-Z])\)?", target)
    if not m:
        raise BadRow(f"target {target!r} is not an option letter")
    gold = _gold_letter(m.group(1), labels)
    return _make_mc(f"{source}-{idx}", "\n".join(stem_lines).strip(), texts, gold, None, source)
