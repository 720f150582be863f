"""Real-dataset loaders: one record format per task family, local files first, the Hugging Face hub as fallback.

Records (frozen dataclasses):

* `MCItem` — multiple choice: question stem, options (prefix-free texts), gold letter, optional rationale.
* `MathItem` — free-form answer: problem, normalised answer string, optional worked solution.
* `CountdownItem` — a multiset of numbers and a target; checked by `verify_countdown` (a tiny parser, no `eval`).

Every loader returns a `LoadResult` (`.items`, `.skipped`, plus where the rows came from). `load_task(name, ...)`
dispatches through the `DATASETS` registry; `register(name, loader)` adds tasks (the toy organism's tasks).

Where the data comes from (`source`):

* ``"local"`` — files under `data_root()`: ``$RH_DATA_DIR``, else ``<project root>/../shared/data``.
* ``"hub"`` — ``datasets.load_dataset(<hub id>, <config>, split=...)`` (Colab); rows go through the same converters.
* ``"auto"`` (default) — local when the split's file exists under the data root, else the hub.

Malformed-row policy (part of the book's contract):

A row is *malformed* when its JSON line does not parse, its question/problem is missing or empty, its answer is
missing or empty, its gold letter is not among the option letters, its options disagree with the labels given
(label count differs from option count, labels not the sequence A, B, C... / 1, 2, 3..., an AQUA option without
its ``X)`` prefix), a dataset with a fixed option count (AQUA-RAT 5, CommonsenseQA 5, QASC 8) has another count,
fewer than two options are given, or a Countdown row's numbers/target are not integers.

* ``on_error="skip"`` (default): the row is left out and ``(row_index, reason)`` is appended to
  ``LoadResult.skipped`` — never silently; callers should report ``len(result.skipped)``.
* ``on_error="raise"``: a `MalformedRowError` (a `ValueError`) naming the dataset, the row index and the reason.

The row index is the 0-based line number in a line-file (blank lines are not rows, but are counted so the index
points at the file line), the position in a BBH task's ``examples`` list, or the position in a hub split.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal, localcontext
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import support

ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
SOURCES = ("auto", "local", "hub")
ON_ERROR = ("skip", "raise")


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


class _Bad(Exception):
    """Raised by converters; the loader turns it into a skip or a `MalformedRowError`."""


# --------------------------------------------------------------------------------------------------- paths


def project_root() -> Path:
    """The repository root (the folder holding the `support` package)."""
    return Path(support.__file__).resolve().parent.parent


def data_root() -> Path:
    """``$RH_DATA_DIR`` if set, else ``<project root>/../shared/data``."""
    env = os.environ.get("RH_DATA_DIR")
    return Path(env).expanduser() if env else (project_root().parent / "shared" / "data").resolve()


# --------------------------------------------------------------------------------------------------- answers

_NUM_RE = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)")
_FRAC_RE = re.compile(r"([+-]?\d+)\s*/\s*([+-]?\d+)")
_TEX_FRAC_RE = re.compile(r"([+-]?)\\[dt]?frac\{\s*([+-]?\d+)\s*\}\{\s*([+-]?\d+)\s*\}")


def _as_number(x: Any, fractions: bool = True) -> Fraction | None:
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


def _strip_wrappers(s: str) -> str:
    """Remove whitespace, `$`, `\\boxed{}`/`\\text{}` wrappers, `\\left`/`\\right`, spacing macros, a final '.'."""
    s = s.strip().strip("$").strip()
    for macro in ("\\boxed", "\\text", "\\mathrm", "\\textbf"):
        while s.startswith(macro + "{") and s.endswith("}"):
            s = s[len(macro) + 1 : -1].strip()
    s = re.sub(r"\\left|\\right|\\!|\\,|\\;|\\ ", "", s).replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    return re.sub(r"\s+", "", s).rstrip(".")


def normalize_answer(x: Any) -> str:
    """Canonical answer string: plain numbers as '25' / '2.5' ('025', 25, 25.0, '25.00' all give '25'; '1,600'
    gives '1600'); anything else (LaTeX, fractions, words) is only stripped, so MATH answers stay readable."""
    v = _as_number(x, fractions=False)
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
    va, vb = _as_number(a), _as_number(b)
    if va is not None and vb is not None:
        return va == vb
    return _strip_wrappers(str(a)) == _strip_wrappers(str(b))


# --------------------------------------------------------------------------------------------------- countdown

_TOKEN_RE = re.compile(r"\s*(?:(\d+)|(.))")


def _tokens(expr: str) -> list[str]:
    """Integers and the symbols + - * / ( ); anything else is malformed."""
    expr = expr.replace("×", "*").replace("÷", "/").replace("−", "-")
    out = []
    for num, sym in _TOKEN_RE.findall(expr.strip()):
        if num:
            out.append(num)
        elif sym in "+-*/()":
            out.append(sym)
        elif not sym.isspace():
            raise _Bad(f"unexpected character {sym!r}")
    return out


class _Parser:
    """expr := term (('+'|'-') term)* ; term := factor (('*'|'/') factor)* ; factor := INT | '(' expr ')'."""

    def __init__(self, tokens: list[str]):
        self.toks, self.i, self.used = tokens, 0, []

    def peek(self) -> str | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def take(self) -> str:
        tok = self.peek()
        if tok is None:
            raise _Bad("unexpected end of expression")
        self.i += 1
        return tok

    def expr(self) -> Fraction:
        v = self.term()
        while self.peek() in ("+", "-"):
            v = v + self.term() if self.take() == "+" else v - self.term()
        return v

    def term(self) -> Fraction:
        v = self.factor()
        while self.peek() in ("*", "/"):
            if self.take() == "*":
                v = v * self.factor()
            else:
                d = self.factor()
                if d == 0:
                    raise _Bad("division by zero")
                v = v / d
        return v

    def factor(self) -> Fraction:
        tok = self.take()
        if tok == "(":
            v = self.expr()
            if self.take() != ")":
                raise _Bad("missing ')'")
            return v
        if tok.isdigit():
            self.used.append(int(tok))
            return Fraction(int(tok))
        raise _Bad(f"unexpected token {tok!r}")


def evaluate_countdown(expression: str) -> tuple[Fraction, list[int]]:
    """Exact value of an arithmetic expression and the numbers it uses; raises ValueError when malformed."""
    if len(expression) > 500:
        raise ValueError("expression too long")
    try:
        p = _Parser(_tokens(expression))
        value = p.expr()
        if p.peek() is not None:
            raise _Bad(f"unexpected token {p.peek()!r}")
    except _Bad as e:
        raise ValueError(str(e)) from None
    except RecursionError:
        raise ValueError("expression nested too deeply") from None
    return value, p.used


def verify_countdown(expression: str, numbers: Iterable[int], target: int, exact: bool = True) -> bool:
    """True if `expression` evaluates to `target` using the given numbers.

    exact=True: the numbers used are exactly the given multiset (each once); exact=False: each at most once.
    Malformed expressions and division by zero give False. A trailing ``= <value>`` is ignored.
    """
    expression = re.sub(r"=\s*[-\d.]*\s*$", "", str(expression))
    try:
        value, used = evaluate_countdown(expression)
    except ValueError:
        return False
    have, need = Counter(used), Counter(int(n) for n in numbers)
    ok_numbers = have == need if exact else not (have - need)
    return ok_numbers and value == Fraction(int(target))


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
        raise _Bad(f"{n} options but {len(labels)} labels")
    if labels == list(ALPHABET[:n]):
        return ALPHABET[:n]
    if labels == [str(i + 1) for i in range(n)]:
        return ALPHABET[:n]
    raise _Bad(f"labels {labels} are not A.. or 1.. for {n} options")


def _gold_letter(key: Any, labels: Sequence[str]) -> str:
    """The gold letter for an answer key given as a letter or a numeric label."""
    key = str(key).strip() if key is not None else ""
    if not key:
        raise _Bad("missing answer key")
    labels = [str(x).strip() for x in labels]
    if key not in labels:
        raise _Bad(f"gold {key!r} not among labels {labels}")
    return ALPHABET[labels.index(key)]


def _make_mc(rid: str, question: str, options: Sequence[str], answer: str, rationale: str | None, source: str,
             n_options: int | None = None) -> MCItem:
    """Validate and build an MCItem."""
    if not question:
        raise _Bad("missing or empty question")
    if len(options) < 2:
        raise _Bad(f"only {len(options)} option(s)")
    if n_options is not None and len(options) != n_options:
        raise _Bad(f"expected {n_options} options, got {len(options)}")
    if any(not o for o in options):
        raise _Bad("empty option text")
    if answer not in ALPHABET[: len(options)]:
        raise _Bad(f"gold letter {answer!r} not among {ALPHABET[:len(options)]}")
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
            raise _Bad("missing choices")
        texts, labels = [c.get("text") for c in choices], [c.get("label") for c in choices]
    else:
        stem, choices = (q.strip() if isinstance(q, str) else ""), row.get("choices")
        if not isinstance(choices, dict):
            raise _Bad("missing choices")
        texts, labels = list(choices.get("text") or []), list(choices.get("label") or [])
    if not stem:
        raise _Bad("missing or empty question")
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
        raise _Bad("missing options")
    labels, texts = [], []
    for j, o in enumerate(opts):
        m = _AQUA_OPT_RE.match(str(o))
        if not m:
            raise _Bad(f"option {j} lacks an 'X)' prefix: {str(o)[:30]!r}")
        labels.append(m.group(1))
        texts.append(m.group(2).strip())
    _labels_to_letters(labels, len(texts))
    gold = _gold_letter(row.get("correct"), labels)
    return _make_mc(f"{source}-{idx}", _text(row, "question"), texts, gold, _text(row, "rationale"), source, 5)


def gsm8k_row(row: dict, source: str, idx: int) -> MathItem:
    """GSM8K: answer = number after '####' (commas removed), solution = the text before it."""
    problem, full = _text(row, "question"), row.get("answer")
    if not problem:
        raise _Bad("missing or empty question")
    if not isinstance(full, str) or "####" not in full:
        raise _Bad("missing answer ('####' marker)")
    solution, _, final = full.rpartition("####")
    final = final.strip().replace(",", "")
    if not final:
        raise _Bad("empty answer after '####'")
    return MathItem(f"{source}-{idx}", problem, normalize_answer(final), solution.strip() or None, source)


def math_row(row: dict, source: str, idx: int) -> MathItem:
    """MATH-500 / AIME / AMC: problem (or question), answer of any type -> normalised string, optional solution."""
    problem, ans = _text(row, "problem", "question"), row.get("answer")
    if not problem:
        raise _Bad("missing or empty problem")
    if ans is None or (isinstance(ans, str) and not ans.strip()):
        raise _Bad("missing answer")
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
        raise _Bad(f"numbers {raw!r} / target {tgt!r} are not integers") from None
    if len(nums) < 2:
        raise _Bad(f"need at least 2 numbers, got {len(nums)}")
    return CountdownItem(f"{source}-{idx}", nums, target, source)


_BBH_OPT_RE = re.compile(r"^\(([A-Z])\)\s?(.*)$")


def bbh_row(row: dict, source: str, idx: int) -> MCItem | MathItem:
    """BBH: '(A) ...' option lines in `input` -> MCItem (target '(B)' -> 'B'); otherwise a free-form MathItem."""
    inp, target = row.get("input"), row.get("target")
    if not isinstance(inp, str) or not inp.strip():
        raise _Bad("missing or empty input")
    if target is None or not str(target).strip():
        raise _Bad("missing target")
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
        raise _Bad(f"target {target!r} is not an option letter")
    gold = _gold_letter(m.group(1), labels)
    return _make_mc(f"{source}-{idx}", "\n".join(stem_lines).strip(), texts, gold, None, source)


# --------------------------------------------------------------------------------------------------- readers


def _read_lines(path: Path) -> Iterator[tuple[int, dict | None, str | None]]:
    """(line_index, row, parse_error) for each non-blank line of a JSON-lines file."""
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                yield i, None, f"unparseable JSON line ({e.msg})"
                continue
            yield (i, row, None) if isinstance(row, dict) else (i, None, "JSON line is not an object")


def _hub_rows(hub_id: str, config: str | None, split: str) -> Iterator[tuple[int, dict | None, str | None]]:
    """Rows of a hub split via `datasets.load_dataset`."""
    try:
        from datasets import load_dataset
    except ImportError as e:  # pragma: no cover - datasets is a runtime dependency
        raise ImportError("source='hub' needs the `datasets` package") from e
    ds = load_dataset(hub_id, config, split=split) if config else load_dataset(hub_id, split=split)
    for i, row in enumerate(ds):
        yield i, dict(row), None


def _convert(name: str, split: str, origin: str, rows: Iterable[tuple[int, dict | None, str | None]],
             convert: Callable[[dict, str, int], Any], limit: int | None, on_error: str) -> LoadResult:
    """Run `convert` over rows, applying the malformed-row policy and the item limit."""
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
    res = LoadResult(name=name, split=split, origin=origin)
    for i, row, err in rows:
        if limit is not None and len(res.items) >= limit:
            break
        try:
            if err:
                raise _Bad(err)
            res.items.append(convert(row, name, i))
        except _Bad as e:
            if on_error == "raise":
                raise MalformedRowError(name, i, str(e)) from None
            res.skipped.append((i, str(e)))
    return res


@dataclass(frozen=True)
class _Spec:
    """Where a JSON-lines dataset lives locally and on the hub, and how to convert one row."""

    folder: str
    files: dict[str, str]  # canonical split -> local file name
    hub: tuple[str, str | None]  # (hub id, config)
    hub_splits: dict[str, str]  # canonical split -> hub split name
    convert: Callable[[dict, str, int], Any]
    default_split: str = "test"


_SPLIT_ALIASES = {"validation": "dev", "valid": "dev", "val": "dev"}

_HUB_3SPLITS = {"test": "test", "dev": "validation", "train": "train"}

_SPECS: dict[str, _Spec] = {
    "gsm8k": _Spec("gsm8k", {"test": "test.jsonl", "train": "train.jsonl", "test_socratic": "test_socratic.jsonl"},
                   ("openai/gsm8k", "main"), {"test": "test", "train": "train"}, gsm8k_row),
    "aqua_rat": _Spec("aqua_rat", {"test": "test.json", "dev": "dev.json"}, ("deepmind/aqua_rat", "raw"),
                      _HUB_3SPLITS, aqua_row),
    "arc_challenge": _Spec("arc", {"test": "ARC-Challenge-Test.jsonl", "dev": "ARC-Challenge-Dev.jsonl"},
                           ("allenai/ai2_arc", "ARC-Challenge"), _HUB_3SPLITS, mc_from_choices),
    "arc_easy": _Spec("arc", {"test": "ARC-Easy-Test.jsonl", "dev": "ARC-Easy-Dev.jsonl"},
                      ("allenai/ai2_arc", "ARC-Easy"), _HUB_3SPLITS, mc_from_choices),
    "commonsenseqa": _Spec("commonsenseqa", {"dev": "dev_rand_split.jsonl"}, ("tau/commonsense_qa", None),
                           {"dev": "validation", "train": "train"},
                           lambda r, s, i: mc_from_choices(r, s, i, n_options=5), default_split="dev"),
    "qasc": _Spec("qasc", {"dev": "dev.jsonl"}, ("allenai/qasc", None), {"dev": "validation", "train": "train"},
                  qasc_row, default_split="dev"),
    "math500": _Spec("math500", {"test": "test.jsonl"}, ("HuggingFaceH4/MATH-500", None), {"test": "test"}, math_row),
    "aime24": _Spec("aime24", {"test": "test.jsonl"}, ("HuggingFaceH4/aime_2024", None), {"test": "train"}, math_row),
    "aime25": _Spec("aime25", {"test": "test.jsonl"}, ("yentinglin/aime_2025", None), {"test": "train"}, math_row),
    "amc23": _Spec("amc23", {"test": "test.jsonl"}, ("math-ai/amc23", None), {"test": "test"}, math_row),
    "countdown": _Spec("countdown", {"test": "countdown_cd3_test.jsonl"}, ("Jiayi-Pan/Countdown-Tasks-3to4", None),
                       {"test": "train"}, countdown_row),
}


def _canonical_split(split: str | None, default: str) -> str:
    s = default if split is None else str(split)
    return _SPLIT_ALIASES.get(s, s)


def _check_source(source: str) -> None:
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, got {source!r}")


def _missing(name: str, path: Path) -> FileNotFoundError:
    return FileNotFoundError(
        f"{name}: data file {path} not found (data root {data_root()}; set RH_DATA_DIR or use source='hub')")


def _load_spec(name: str, split: str | None, limit: int | None, source: str, on_error: str) -> LoadResult:
    """Load a JSON-lines dataset described by `_SPECS[name]`."""
    _check_source(source)
    spec = _SPECS[name]
    split = _canonical_split(split, spec.default_split)
    if split not in spec.files and split not in spec.hub_splits:
        raise ValueError(f"{name}: unknown split {split!r}; valid: {sorted(set(spec.files) | set(spec.hub_splits))}")
    path = data_root() / spec.folder / spec.files.get(split, f"<no local {split} file>")
    if source == "local" or (source == "auto" and path.is_file()):
        if not path.is_file():
            raise _missing(name, path)
        return _convert(name, split, f"local:{path}", _read_lines(path), spec.convert, limit, on_error)
    if split not in spec.hub_splits:
        raise _missing(name, path)
    hub_id, config = spec.hub
    rows = _hub_rows(hub_id, config, spec.hub_splits[split])
    return _convert(name, split, f"hub:{hub_id}" + (f"/{config}" if config else ""), rows, spec.convert, limit,
                    on_error)


def _spec_loader(name: str) -> Callable[..., LoadResult]:
    def loader(split: str | None = None, limit: int | None = None, source: str = "auto",
               on_error: str = "skip") -> LoadResult:
        return _load_spec(name, split, limit, source, on_error)

    loader.__name__ = f"load_{name}"
    loader.__doc__ = f"Load {name} (see `load_task`)."
    return loader


load_gsm8k = _spec_loader("gsm8k")
load_aqua_rat = _spec_loader("aqua_rat")
load_arc_challenge = _spec_loader("arc_challenge")
load_arc_easy = _spec_loader("arc_easy")
load_commonsenseqa = _spec_loader("commonsenseqa")
load_qasc = _spec_loader("qasc")
load_math500 = _spec_loader("math500")
load_aime24 = _spec_loader("aime24")
load_aime25 = _spec_loader("aime25")
load_amc23 = _spec_loader("amc23")
load_countdown = _spec_loader("countdown")


# --------------------------------------------------------------------------------------------------- BBH

#: The 27 BIG-Bench Hard tasks (fixed list, so the hub path works without local files).
BBH_TASKS: tuple[str, ...] = (
    "boolean_expressions", "causal_judgement", "date_understanding", "disambiguation_qa", "dyck_languages",
    "formal_fallacies", "geometric_shapes", "hyperbaton", "logical_deduction_five_objects",
    "logical_deduction_seven_objects", "logical_deduction_three_objects", "movie_recommendation",
    "multistep_arithmetic_two", "navigate", "object_counting", "penguins_in_a_table",
    "reasoning_about_colored_objects", "ruin_names", "salient_translation_error_detection", "snarks",
    "sports_understanding", "temporal_sequences", "tracking_shuffled_objects_five_objects",
    "tracking_shuffled_objects_seven_objects", "tracking_shuffled_objects_three_objects", "web_of_lies",
    "word_sorting",
)


def bbh_tasks() -> list[str]:
    """The 27 BBH task names."""
    return list(BBH_TASKS)


def _check_bbh(task: str) -> None:
    if task not in BBH_TASKS:
        raise ValueError(f"unknown BBH task {task!r}; valid choices: {', '.join(BBH_TASKS)}")


def load_bbh(task: str, split: str | None = None, limit: int | None = None, source: str = "auto",
             on_error: str = "skip") -> LoadResult:
    """One BBH task (split 'test' only): MCItem where `input` lists '(A) ...' options, else MathItem(answer=target)."""
    _check_bbh(task)
    _check_source(source)
    split = _canonical_split(split, "test")
    if split != "test":
        raise ValueError(f"BBH has only the 'test' split, got {split!r}")
    name, path = f"bbh:{task}", data_root() / "bbh" / "bbh" / f"{task}.json"
    if source == "local" or (source == "auto" and path.is_file()):
        if not path.is_file():
            raise _missing(name, path)
        examples = json.loads(path.read_text(encoding="utf-8")).get("examples", [])
        rows = ((i, r, None) if isinstance(r, dict) else (i, None, "example is not an object")
                for i, r in enumerate(examples))
        return _convert(name, split, f"local:{path}", rows, bbh_row, limit, on_error)
    return _convert(name, split, f"hub:lukaemon/bbh/{task}", _hub_rows("lukaemon/bbh", task, "test"), bbh_row,
                    limit, on_error)


def bbh_cot_prompt(task: str) -> str:
    """The task's 3-shot CoT prompt (local file; the canary header above the '-----' line is removed)."""
    _check_bbh(task)
    path = data_root() / "bbh" / "cot-prompts" / f"{task}.txt"
    if not path.is_file():
        raise _missing(f"bbh:{task}", path)
    text = path.read_text(encoding="utf-8")
    head, sep, body = text.partition("\n-----\n")
    return (body if sep else text).strip()


# --------------------------------------------------------------------------------------------------- WikiText


def _wikitext_result(split: str | None, limit: int | None, source: str) -> LoadResult:
    _check_source(source)
    split = _canonical_split(split, "dev")
    files, hub_splits = {"dev": "valid.txt", "test": "test.txt"}, {"dev": "validation", "test": "test"}
    if split not in files:
        raise ValueError(f"wikitext2: unknown split {split!r}; valid: 'valid', 'test'")
    path = data_root() / "wikitext2" / files[split]
    if source == "local" or (source == "auto" and path.is_file()):
        if not path.is_file():
            raise _missing("wikitext2", path)
        lines, origin = path.read_text(encoding="utf-8").split("\n"), f"local:{path}"
    else:  # note: the hub copy is the *raw* variant (no <unk>), unlike the local tokenised files
        lines = [r["text"] for _, r, _ in _hub_rows("Salesforce/wikitext", "wikitext-2-raw-v1", hub_splits[split])]
        origin = "hub:Salesforce/wikitext/wikitext-2-raw-v1"
    items = [ln.strip() for ln in lines if ln.strip()]
    items = items[:limit] if limit is not None else items
    return LoadResult("wikitext2", "valid" if split == "dev" else split, items, [], origin)


def load_wikitext(split: str = "valid", source: str = "auto", limit: int | None = None) -> list[str]:
    """WikiText-2 (`split` 'valid' or 'test'): the non-empty lines, stripped."""
    return _wikitext_result(split, limit, source).items


# --------------------------------------------------------------------------------------------------- registry

Loader = Callable[..., LoadResult]

DATASETS: dict[str, Loader] = {name: globals()[f"load_{name}"] for name in _SPECS}
DATASETS.update({
    f"bbh:{t}": (lambda t: lambda split=None, limit=None, source="auto", on_error="skip":
                 load_bbh(t, split, limit, source, on_error))(t)
    for t in BBH_TASKS
})
DATASETS["wikitext2"] = lambda split=None, limit=None, source="auto", on_error="skip": _wikitext_result(
    split, limit, source)

_BUILTIN = frozenset(DATASETS)


def register(name: str, loader: Loader, overwrite: bool = False) -> None:
    """Add a task to `DATASETS`.

    `loader(split=None, limit=None, source="auto", on_error="skip")` should return a `LoadResult` (a plain list
    is wrapped by `load_task`). Re-registering a non-built-in name replaces it; built-in names need overwrite=True.
    """
    if not isinstance(name, str) or not name:
        raise ValueError("task name must be a non-empty string")
    if not callable(loader):
        raise TypeError(f"loader for {name!r} is not callable")
    if name in _BUILTIN and not overwrite:
        raise ValueError(f"{name!r} is a built-in dataset; pass overwrite=True to replace it")
    DATASETS[name] = loader


def load_task(name: str, split: str | None = None, limit: int | None = None, source: str = "auto",
              on_error: str = "skip") -> LoadResult:
    """Load a registered dataset by name (see `DATASETS`); unknown names raise ValueError listing the choices."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; valid choices: {', '.join(sorted(DATASETS))}")
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    res = DATASETS[name](split=split, limit=limit, source=source, on_error=on_error)
    if not isinstance(res, LoadResult):
        items = list(res)
        res = LoadResult(name, split or "", items[:limit] if limit is not None else items, [], "registered")
    return res


def _toy_loader(task: str) -> Loader:
    """Loader for the organism's generated tasks (support.organism): MCItem or CountdownItem records."""

    def load(split=None, limit=None, source="auto", on_error="skip") -> LoadResult:
        from .organism import generate

        split = "train" if split == "train" else "test"
        items = []
        for it in generate(task, 200 if limit is None else limit, split):
            if task == "toy_countdown":
                items.append(CountdownItem(it.id, it.numbers, int(it.target), task))
            else:
                items.append(MCItem(it.id, it.question, it.options, it.answer, it.rationale, task))
        return LoadResult(task, split, items, [], "generated:support.organism")

    return load


for _t in ("toy_mc4", "toy_mc5", "toy_countdown"):
    DATASETS[_t] = _toy_loader(_t)
_BUILTIN = frozenset(DATASETS)


def task_names() -> list[str]:
    """Every loadable task name, real and generated."""
    return sorted(DATASETS)


__all__ = [
    "task_names", "MCItem", "MathItem", "CountdownItem", "LoadResult", "MalformedRowError", "DATASETS", "BBH_TASKS",
    "data_root", "project_root", "load_task", "register", "normalize_answer", "answers_equal",
    "verify_countdown", "evaluate_countdown", "load_bbh", "bbh_tasks", "bbh_cot_prompt", "load_wikitext",
    "mc_from_choices", "load_gsm8k", "load_aqua_rat", "load_arc_challenge", "load_arc_easy", "load_commonsenseqa",
    "load_qasc", "load_math500", "load_aime24", "load_aime25", "load_amc23", "load_countdown",
]
