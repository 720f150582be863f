"""Real-dataset loaders: one record format per task family, local files first, the Hugging Face hub as fallback.

Records and row converters live in `support.records` (`MCItem`, `MathItem`, `CountdownItem`); answers are scored by
`support.scoring`. The organism's generated tasks (`toy_mc4`, `toy_mc5`, `toy_countdown`) come from `support.toydata`.

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import support

from .records import (
    BadRow,
    CountdownItem,
    LoadResult,
    MalformedRowError,
    MathItem,
    MCItem,
    aqua_row,
    bbh_row,
    countdown_row,
    gsm8k_row,
    math_row,
    mc_from_choices,
    qasc_row,
)
from .toydata import FINETUNE_TASKS, TOY_TASKS, generate

SOURCES = ("auto", "local", "hub")
ON_ERROR = ("skip", "raise")


# --------------------------------------------------------------------------------------------------- paths


def project_root() -> Path:
    """The repository root (the folder holding the `support` package)."""
    return Path(support.__file__).resolve().parent.parent


def data_root() -> Path:
    """``$RH_DATA_DIR`` if set, else ``<project root>/../shared/data``."""
    env = os.environ.get("RH_DATA_DIR")
    return Path(env).expanduser() if env else (project_root().parent / "shared" / "data").resolve()


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
                raise BadRow(err)
            res.items.append(convert(row, name, i))
        except BadRow as e:
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
    """Loader for the organism's generated tasks: `support.toydata.ToyItem` records, think-on, in the organism's own
    prompt and response format (they carry options/answer or numbers/target, so `support.scoring` scores them)."""

    def load(split=None, limit=None, source="auto", on_error="skip") -> LoadResult:
        split = "train" if split == "train" else "test"
        items = generate(task, 200 if limit is None else limit, split)
        return LoadResult(task, split, items, [], "generated:support.toydata")

    return load


for _t in TOY_TASKS + FINETUNE_TASKS:
    DATASETS[_t] = _toy_loader(_t)
_BUILTIN = frozenset(DATASETS)


def task_names() -> list[str]:
    """Every loadable task name, real and generated."""
    return sorted(DATASETS)


__all__ = [
    "task_names", "MCItem", "MathItem", "CountdownItem", "LoadResult", "MalformedRowError", "DATASETS", "BBH_TASKS",
    "data_root", "project_root", "load_task", "register", "load_bbh", "bbh_tasks", "bbh_cot_prompt", "load_wikitext",
    "mc_from_choices", "load_gsm8k", "load_aqua_rat", "load_arc_challenge", "load_arc_easy", "load_commonsenseqa",
    "load_qasc", "load_math500", "load_aime24", "load_aime25", "load_amc23", "load_countdown",
]
