"""The chapter runner: `python -m support.run --profile ci [--chapters ...] [-p name value ...]`.

Executes chapter notebooks with papermill under a named profile (profiles.yaml), writes executed copies into
`book/chapters/` (tidied for the book by `support.book.tidy_executed`) and artifacts into the run directory, prints
a per-chapter runtime table, and fails loudly: a failing chapter is named with its failing cell, its partial
notebook is kept, the other chapters still run and are reported, and the exit code is non-zero. Unknown profiles,
chapters or parameters fail before anything runs.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from . import book
from .artifacts import PROJECT_ROOT
from .params import SCHEMA, ParameterError, check_names, profiles

NOTEBOOKS = PROJECT_ROOT / "notebooks"
OUT_DIR = PROJECT_ROOT / "book" / "chapters"

#: Environment for chapter kernels: no progress bars or library chatter in rendered outputs, never any download.
KERNEL_ENV = {
    "TQDM_DISABLE": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TRANSFORMERS_VERBOSITY": "error",
    "TOKENIZERS_PARALLELISM": "false",
    "MPLBACKEND": "module://matplotlib_inline.backend_inline",
}


#: Chapters that read another chapter's artifacts but come before it in the book: run them after it.
RUN_AFTER = {"03_circuits": "05_attention_credit_rl"}  # 03 reads chapter 05's GRPO checkpoints


def chapters() -> list[str]:
    """Chapter ids (notebook stems), in book order."""
    return sorted(p.stem for p in NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))


def run_order(selected: list[str]) -> list[str]:
    """`selected` in execution order: book order, except that a chapter of `RUN_AFTER` runs right after the chapter
    it reads when both are selected."""
    order = [c for c in selected if not (c in RUN_AFTER and RUN_AFTER[c] in selected)]
    for c in selected:
        if c in RUN_AFTER and RUN_AFTER[c] in selected:
            order.insert(order.index(RUN_AFTER[c]) + 1, c)
    return order


@dataclass
class Outcome:
    chapter: str
    ok: bool
    seconds: float
    detail: str = ""


def parse_value(text: str) -> Any:
    """`-p` values are YAML scalars or lists: 20 -> int, 0.5 -> float, [5, 10] -> list, toy-qwen2 -> str."""
    return yaml.safe_load(text)


def plan(profile: str, selected: list[str] | None, overrides: dict[str, Any], run_dir: str | None
         ) -> list[tuple[str, dict[str, Any]]]:
    """Resolve and validate everything before executing anything: [(chapter, parameters), ...]."""
    profs = profiles()
    if profile not in profs:
        raise ParameterError(f"unknown profile {profile!r}; valid choices: {sorted(profs)}")
    known = chapters()
    selected = selected or known
    bad = [c for c in selected if c not in known]
    if bad:
        raise ParameterError(f"unknown chapter(s) {bad}; valid choices: {known}")
    unused = [n for n in overrides if not any(n in SCHEMA.get(c, {}) for c in selected)]
    if unused:
        valid = sorted({n for c in selected for n in SCHEMA.get(c, {})})
        raise ParameterError(f"unknown parameter(s) {unused} for chapters {selected}; valid: {valid}")
    rd = run_dir or str(Path("runs") / profile)
    out = []
    for ch in run_order(selected):
        params = dict(profs[profile].get("chapters", {}).get(ch, {}))
        params.update({k: v for k, v in overrides.items() if k in SCHEMA.get(ch, {})})
        params.setdefault("profile", profile)
        params.setdefault("run_dir", rd)
        check_names(ch, list(params))
        for name, value in params.items():
            SCHEMA[ch][name].check(name, value)
        out.append((ch, params))
    return out


#: GPU memory of the cards the real profiles target (GiB) and the activation dtype chapters pick there.
CARDS = {"colab-t4": (16.0, "fp16"), "a100": (80.0, "bf16")}
#: Prompt tokens assumed where the dataset decides (a long AQUA-RAT, ARC or AIME prompt in a chat template).
PLAN_PROMPT_TOKENS = 512


def notebook_defaults(chapter: str) -> dict[str, Any]:
    """The values a chapter's `parameters` cell assigns (its `ci` values), read with papermill without running it."""
    import ast

    import papermill as pm

    found = pm.inspect_notebook(str(NOTEBOOKS / f"{chapter}.ipynb"))
    return {name: ast.literal_eval(p["default"]) for name, p in found.items()}


def memory_plan(profile: str) -> list[dict[str, Any]]:
    """The heavy step of each model-running chapter under `profile` (`CARDS`), estimated from the model's shape
    (`models.MODEL_SHAPES`) with the chapters' own guards' estimates: tracing (01), one EAP-IG batch (03), one full-SFT
    step (04), one attention-credit GRPO step (05). A row fits when the estimate stays under the guard's share of the
    card (`memory.HEADROOM`); prompts are taken as `PLAN_PROMPT_TOKENS` tokens."""
    from . import circuits, finetune, rl, tracing
    from .memory import HEADROOM, GiB
    from .models import model_config

    if profile not in CARDS:
        raise ParameterError(f"no card for profile {profile!r}; valid choices: {', '.join(CARDS)}")
    card, act = CARDS[profile]  # memory.BYTES reads the dtype names
    P = PLAN_PROMPT_TOKENS
    rows = []
    for ch, params in plan(profile, None, {}, None):
        v = notebook_defaults(ch) | params
        if ch == "01_tracing":
            fp = tracing.footprint(model_config(v["model_name"]), P, v["max_new_tokens"], act)
            setting = f"1 prompt of {P} + {v['max_new_tokens']} tokens"
        elif ch == "03_circuits":
            fp = circuits.footprint(model_config(v["model_name"]), v["batch_size"], P, act)
            setting = f"batch_size {v['batch_size']} × {P} tokens"
        elif ch == "04_selective_sft":
            fp = finetune.footprint(model_config(v["model_name"]), ["full"], v["batch_size"], v["max_length"], act)
            setting = f"full SFT, batch_size {v['batch_size']} × {v['max_length']} tokens, {act} autocast"
        elif ch == "05_attention_credit_rl":
            fp = rl.footprint(model_config(v["model_name"]), v["prompts_per_step"], v["num_generations"],
                              P + v["max_new_tokens"], gradient_checkpointing=v["gradient_checkpointing"],
                              micro_batch=v["micro_batch"] or None, chunk=v["credit_chunk"])
            setting = (f"{v['prompts_per_step']}×{v['num_generations']} completions of {P} + {v['max_new_tokens']} "
                       f"tokens, {v['micro_batch'] or 'all'} per pass")
        else:
            continue
        rows.append({"chapter": ch, "model": v["model_name"], "step": fp.what, "setting": setting,
                     "estimate GiB": round(fp.total / GiB, 2), "card GiB": card,
                     "fits": fp.total <= HEADROOM * card * GiB})
    return rows


def execute(chapter: str, params: dict[str, Any], out_dir: Path = OUT_DIR) -> Outcome:
    """Run one chapter with papermill; on failure keep the partial notebook and name the failing cell."""
    import papermill as pm

    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    try:
        pm.execute_notebook(
            str(NOTEBOOKS / f"{chapter}.ipynb"), str(out_dir / f"{chapter}.ipynb"), parameters=params,
            cwd=str(PROJECT_ROOT), progress_bar=False, log_output=False, kernel_name="python3",
        )
        book.tidy_executed(out_dir / f"{chapter}.ipynb")  # parameters shown once, plumbing collapsed (book.py)
        return Outcome(chapter, True, time.time() - t0)
    except Exception as e:  # PapermillExecutionError carries the failing cell
        cell = getattr(e, "exec_count", None)
        ename, evalue = getattr(e, "ename", type(e).__name__), getattr(e, "evalue", str(e))
        where = f"cell [{cell}]" if cell is not None else "before any cell ran"
        partial = out_dir / f"{chapter}.ipynb"
        if partial.is_relative_to(PROJECT_ROOT):
            partial = partial.relative_to(PROJECT_ROOT)
        detail = f"{where}: {ename}: {str(evalue).splitlines()[0] if evalue else ''} (partial notebook: {partial})"
        return Outcome(chapter, False, time.time() - t0, detail)


def report(outcomes: list[Outcome]) -> str:
    """Per-chapter runtime table."""
    lines = [f"{'chapter':<28}{'status':<8}{'seconds':>9}", "-" * 45]
    for o in outcomes:
        lines.append(f"{o.chapter:<28}{'ok' if o.ok else 'FAILED':<8}{o.seconds:>9.1f}")
    lines.append("-" * 45)
    lines.append(f"{'total':<36}{sum(o.seconds for o in outcomes):>9.1f}")
    for o in outcomes:
        if not o.ok:
            lines.append(f"FAILED {o.chapter}: {o.detail}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m support.run", description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="ci", help="profile name from support/profiles.yaml")
    ap.add_argument("--chapters", nargs="*", help="chapter ids (default: all)")
    ap.add_argument("-p", "--param", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                    help="override a chapter parameter (YAML value)")
    ap.add_argument("--run-dir", help="run directory for artifacts (default: runs/<profile>)")
    ap.add_argument("--out", type=Path, default=OUT_DIR, help="where executed notebooks go")
    ap.add_argument("--list", action="store_true", help="list profiles, chapters and parameters, then exit")
    ap.add_argument("--memory", action="store_true",
                    help="estimate each chapter's heavy step under --profile against its card, then exit")
    args = ap.parse_args(argv)
    if args.list:
        for name, prof in profiles().items():
            print(f"profile {name}: {prof.get('description', '')}")
        for ch in chapters():
            print(f"chapter {ch}: {sorted(SCHEMA.get(ch, {}))}")
        return 0
    if args.memory:
        try:
            rows = memory_plan(args.profile)
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        for r in rows:
            print(f"{r['chapter']:<24}{r['model']:<44}{r['estimate GiB']:>8.2f} of {r['card GiB']:g} GiB  "
                  f"{'fits' if r['fits'] else 'DOES NOT FIT'}  ({r['setting']})")
        return 0
    try:
        todo = plan(args.profile, args.chapters, {k: parse_value(v) for k, v in args.param}, args.run_dir)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    os.environ.update(KERNEL_ENV)
    from tqdm.auto import tqdm

    outcomes = []
    bar = tqdm(todo, desc=f"chapters ({args.profile})", unit="chapter", disable=False, file=sys.stderr)
    for ch, params in bar:
        bar.set_postfix_str(ch)
        outcomes.append(execute(ch, params, args.out))
    bar.close()
    print(report(outcomes))
    return 0 if all(o.ok for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
