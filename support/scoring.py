"""Answers: one parser and verifier per answer family, each giving a reward in [0, 1] with a reason.

Families:

- **multiple choice**: the letter on the last `Answer: X` line (paper 000, App. B.1) against the gold letter;
- **Countdown**: the expression after `Answer:` must use the given numbers and reach the target (paper 003's RL task;
  the organism's `toy_countdown`). The expression is parsed with `ast` and evaluated exactly with fractions: only
  integers, + − × ÷ and parentheses are allowed. Nothing is ever `eval`-ed, and a bad expression scores 0 with a
  reason instead of raising;
- **numeric / free form**: a `\\boxed{}` answer, else the `Answer:` line, compared numerically when both sides are
  numbers ('025' == 25 == 25.0, '1,600' == 1600, '\\frac{1}{2}' == 0.5), else as normalised strings (GSM8K, MATH-500,
  AIME, AMC).

`score(item, response)` picks the family from the item's fields, so decoding, tracing, fine-tuning, GRPO rewards and
pass@k all score the same way. Also here: Table 1's accuracy / macro recall / macro F1 (`mc_metrics`).
This module is pure Python (plus numpy for the metrics).
"""

from __future__ import annotations

import ast
import re
from collections import Counter
from dataclasses import dataclass
from decimal import Decimal, localcontext
from fractions import Fraction
from typing import Any, Iterable, Sequence

LETTERS = "ABCDEFGHIJ"
FAMILIES = ("letter", "countdown", "numeric")


@dataclass(frozen=True)
class Score:
    """A reward in [0, 1] and why: "ok", or what was missing or wrong."""

    reward: float
    reason: str = "ok"

    def __bool__(self) -> bool:
        return self.reward >= 1.0


# ----------------------------------------------------------------------------------------------- parsing
_ANSWER_RE = re.compile(r"answer\s*[:：]\s*\(?\s*([A-Za-z])\b", re.IGNORECASE)


def parse_answer(text: str, letters: str = "ABCD") -> str | None:
    """The option letter on the last non-empty line that contains `Answer:` (App. B.1).

    A trailing remark after the answer line is tolerated; the letter is case-insensitive and must be one of `letters`.
    Returns None when missing or invalid.
    """
    for line in reversed([ln.strip() for ln in text.splitlines() if ln.strip()]):
        m = _ANSWER_RE.search(line)
        if m:
            letter = m.group(1).upper()
            return letter if letter in letters.upper() else None
    return None


def answer_text(text: str) -> str | None:
    """Free-form answer: what follows `Answer:` on the last line that has one (e.g. a Countdown expression)."""
    for line in reversed(text.splitlines()):
        m = re.search(r"answer\s*[:：](.*)$", line, re.IGNORECASE)
        if m:
            return m.group(1).strip()
    return None


def boxed(text: str) -> str | None:
    """The content of the last `\\boxed{...}` (balanced braces), or None."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    i, depth = start + len("\\boxed{"), 1
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i:j].strip()
    return None


def parse(text: str, labels: Sequence[str]) -> str | None:
    """An option letter when every label is one letter, else the text after the last `Answer:` (None if absent)."""
    if all(len(s) == 1 and s.isalpha() for s in labels):
        return parse_answer(text, "".join(labels))
    return answer_text(text) or None


# ----------------------------------------------------------------------------------------------- numbers
_NUM_RE = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)")
_FRAC_RE = re.compile(r"([+-]?\d+)\s*/\s*([+-]?\d+)")
_TEX_FRAC_RE = re.compile(r"([+-]?)\\[dt]?frac\{\s*([+-]?\d+)\s*\}\{\s*([+-]?\d+)\s*\}")


def _strip_wrappers(s: str) -> str:
    """Remove whitespace, `$`, `\\boxed{}`/`\\text{}` wrappers, `\\left`/`\\right`, spacing macros, a final '.'."""
    s = s.strip().strip("$").strip()
    for macro in ("\\boxed", "\\text", "\\mathrm", "\\textbf"):
        while s.startswith(macro + "{") and s.endswith("}"):
            s = s[len(macro) + 1 : -1].strip()
    s = re.sub(r"\\left|\\right|\\!|\\,|\\;|\\ ", "", s).replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    return re.sub(r"\s+", "", s).rstrip(".")


def as_number(x: Any, fractions: bool = True) -> Fraction | None:
    """Exact value of ints, floats, '1,234', '025', '2.50' and (if `fractions`) '3/4', '\\frac{3}{4}'; else None."""
    if isinstance(x, bool):
        return None
    if isinstance(x, int):
        return Fraction(x)
    if isinstance(x, float):
        return Fraction(str(x)) if x == x and abs(x) != float("inf") else None
    s = _strip_wrappers(str(x))
    if re.fullmatch(r"[+-]?\d{1,3}(,\d{3})+(\.\d*)?", s):
        s = s.replace(",", "")
    if _NUM_RE.fullmatch(s):
        return Fraction(s)
    if not fractions:
        return None
    for rx, sign_group in ((_FRAC_RE, False), (_TEX_FRAC_RE, True)):
        m = rx.fullmatch(s)
        if m:
            sign, p, q = (m.group(1), m.group(2), m.group(3)) if sign_group else ("", m.group(1), m.group(2))
            if int(q) == 0:
                return None
            v = Fraction(int(p), int(q))
            return -v if sign == "-" else v
    return None


def normalize_answer(x: Any) -> str:
    """Canonical answer string: plain numbers as '25' / '2.5' ('025', 25, 25.0, '25.00' all give '25'; '1,600'
    gives '1600'); anything else (LaTeX, fractions, words) is only stripped, so MATH answers stay readable."""
    v = as_number(x, fractions=False)
    if v is None:
        return str(x).strip()
    if v.denominator == 1:
        return str(v.numerator)
    with localcontext() as ctx:
        ctx.prec = 60
        text = format(Decimal(v.numerator) / Decimal(v.denominator), "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


def answers_equal(a: Any, b: Any) -> bool:
    """Numeric comparison when both parse as numbers ('025' == 25 == 25.0), else normalised-string equality."""
    va, vb = as_number(a), as_number(b)
    if va is not None and vb is not None:
        return va == vb
    return _strip_wrappers(str(a)) == _strip_wrappers(str(b))


# ----------------------------------------------------------------------------------------------- countdown
_CD_CHARS = re.compile(r"[\d\s+\-*/()]*")
_CD_OPS = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b, ast.Mult: lambda a, b: a * b}
MAX_EXPRESSION = 500


def _cd_value(node: ast.AST, used: list[int]) -> Fraction:
    """Exact value of an allowed expression node; ValueError for anything else (in order, collecting numbers)."""
    if isinstance(node, ast.Constant) and type(node.value) is int:
        used.append(node.value)
        return Fraction(node.value)
    if isinstance(node, ast.BinOp) and type(node.op) in (*_CD_OPS, ast.Div):
        a, b = _cd_value(node.left, used), _cd_value(node.right, used)
        if isinstance(node.op, ast.Div):
            if b == 0:
                raise ValueError("division by zero")
            return a / b
        return _CD_OPS[type(node.op)](a, b)
    if isinstance(node, ast.UnaryOp):
        raise ValueError("signs are not allowed: every number is used as given")
    raise ValueError(f"not allowed in an expression: {type(node).__name__}")


def evaluate_countdown(expression: str) -> tuple[Fraction, list[int]]:
    """Exact value of an arithmetic expression and the numbers it uses, left to right; ValueError when malformed.

    Only integers, + - * / (also × ÷ −) and parentheses; no signs, powers, floor division or names.
    """
    expr = str(expression).replace("×", "*").replace("÷", "/").replace("−", "-")
    if len(expr) > MAX_EXPRESSION:
        raise ValueError("expression too long")
    if not _CD_CHARS.fullmatch(expr):
        bad = next(c for c in expr if not _CD_CHARS.fullmatch(c))
        raise ValueError(f"unexpected character {bad!r}")
    if "**" in expr or "//" in expr:
        raise ValueError("only + - * / are allowed")
    expr = re.sub(r"\b0+(?=\d)", "", expr).strip()  # '07' is 7 (Python rejects leading zeros)
    try:
        tree = ast.parse(expr, mode="eval")
    except SyntaxError as e:
        raise ValueError(f"malformed expression ({e.msg})") from None
    except (RecursionError, MemoryError):
        raise ValueError("expression nested too deeply") from None
    used: list[int] = []
    try:
        value = _cd_value(tree.body, used)
    except RecursionError:
        raise ValueError("expression nested too deeply") from None
    return value, used


def check_countdown(expression: str, numbers: Iterable[int], target: int, exact: bool = True) -> Score:
    """Score a Countdown expression: 1 if it reaches `target` with the given numbers, else 0 and the reason.

    exact=True: the numbers used are exactly the given multiset (each once); exact=False: each at most once.
    A trailing ``= <value>`` is ignored.
    """
    expression = re.sub(r"=\s*[-\d.]*\s*$", "", str(expression))
    try:
        value, used = evaluate_countdown(expression)
    except ValueError as e:
        return Score(0.0, f"malformed expression: {e}")
    have, need = Counter(used), Counter(int(n) for n in numbers)
    if not (have == need if exact else not (have - need)):
        rule = "exactly once each" if exact else "at most once each"
        return Score(0.0, f"uses {sorted(used)}; must use {sorted(need.elements())} {rule}")
    if value != Fraction(int(target)):
        return Score(0.0, f"evaluates to {value}, not the target {target}")
    return Score(1.0)


def verify_countdown(expression: str, numbers: Iterable[int], target: int, exact: bool = True) -> bool:
    """True if `expression` evaluates to `target` using the given numbers (see `check_countdown`)."""
    return bool(check_countdown(expression, numbers, target, exact))


# ----------------------------------------------------------------------------------------------- scoring
def score_letter(response: str, gold: str, letters: str = "ABCD") -> Score:
    """Multiple choice: 1 if the last `Answer:` letter is the gold one."""
    got = parse_answer(response, letters)
    if got is None:
        return Score(0.0, f"no valid `Answer: <{letters[0]}-{letters[-1]}>` line")
    return Score(1.0) if got == gold else Score(0.0, f"answered {got}, gold {gold}")


def score_countdown(response: str, numbers: Iterable[int], target: int, exact: bool = True) -> Score:
    """Countdown: the expression on the last `Answer:` line, checked by `check_countdown`."""
    expr = answer_text(response)
    if not expr:
        return Score(0.0, "no `Answer: <expression>` line")
    return check_countdown(expr, numbers, target, exact)


def score_numeric(response: str, gold: Any) -> Score:
    """Free form: the last `\\boxed{}` answer, else the `Answer:` line, compared by `answers_equal`."""
    got = boxed(response) or answer_text(response)
    if not got:
        return Score(0.0, "no \\boxed{} answer and no `Answer:` line")
    return Score(1.0) if answers_equal(got, gold) else Score(0.0, f"answered {got!r}, gold {gold!r}")


def family(item: Any) -> str:
    """Which answer family an item belongs to: letter (it has options), countdown (numbers and a target), numeric."""
    if getattr(item, "options", None):
        return "letter"
    if getattr(item, "numbers", None) and getattr(item, "target", None) is not None:
        return "countdown"
    if getattr(item, "answer", None) is not None:
        return "numeric"
    raise ValueError(f"cannot score {type(item).__name__}: it has no options, no numbers/target and no answer; "
                     f"valid families: {', '.join(FAMILIES)}")


def score(item: Any, response: str) -> Score:
    """Score one response to one item (MCItem, MathItem, CountdownItem or a toy item) by its answer family."""
    fam = family(item)
    if fam == "letter":
        return score_letter(response, item.answer, LETTERS[: len(item.options)])
    if fam == "countdown":
        return score_countdown(response, item.numbers, item.target)
    return score_numeric(response, item.answer)


def accuracy(items: Sequence[Any], responses: Sequence[str]) -> float:
    """Mean reward over items (0 for an empty list)."""
    if len(items) != len(responses):
        raise ValueError(f"{len(items)} items but {len(responses)} responses")
    return sum(score(it, r).reward for it, r in zip(items, responses)) / max(1, len(items))


def mc_metrics(golds: Sequence[str], preds: Sequence[str | None], letters: str = LETTERS) -> dict[str, float]:
    """Accuracy, macro recall, macro F1 on answer letters (paper 000, Table 1); `n_invalid` counts missing answers.

    Invalid answers are wrong (a miss for their gold letter) and form no class of their own. Macro averages run
    over the letters that occur as gold or valid prediction (scikit-learn's default label set, zero_division=0).
    """
    import numpy as np

    if len(golds) != len(preds) or not golds:
        raise ValueError(f"need equally many gold and predicted answers (got {len(golds)} and {len(preds)}), ≥ 1")
    valid = [p if p is not None and p in letters else None for p in preds]
    labels = sorted(set(golds) | {p for p in valid if p is not None})
    rec, f1 = [], []
    for c in labels:
        tp = sum(g == c and p == c for g, p in zip(golds, valid))
        fn = sum(g == c and p != c for g, p in zip(golds, valid))
        fp = sum(p == c and g != c for g, p in zip(golds, valid))
        r = tp / (tp + fn) if tp + fn else 0.0
        pr = tp / (tp + fp) if tp + fp else 0.0
        rec.append(r)
        f1.append(2 * pr * r / (pr + r) if pr + r else 0.0)
    n = len(golds)
    return {"acc": sum(g == p for g, p in zip(golds, valid)) / n, "rec": float(np.mean(rec)),
            "f1": float(np.mean(f1)), "n_invalid": sum(p is None for p in valid), "n": n}
