"""The papers' own numbers, each with the table or figure it comes from: every "paper's" column and verdict reads here.

Sources (full texts in `../shared/papers/`):

- **000**: Dynamic Entropy Tracing and Selective Head Fine-Tuning (LLaMA-2-7B-chat and Qwen3-8B);
- **001**: Thinking Sparks (EAP-IG circuits across post-training);
- **003**: Preplan-and-Anchor (WAAD, FAI, attention-credit GRPO).

Nothing here is measured by us; chapters print these beside their own measurements, labelled as the paper's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

LLAMA2 = "LLaMA-2-7B-chat"
QWEN3 = "Qwen3-8B"


@dataclass(frozen=True)
class Ref:
    """One reported number (or range, or qualitative finding) and where the paper reports it."""

    value: Any
    source: str  # e.g. "000 Fig. 3"
    model: str = ""
    note: str = ""

    def __str__(self) -> str:
        v = f"{self.value[0]}–{self.value[1]}" if isinstance(self.value, tuple) else str(self.value)
        where = ", ".join(x for x in (self.model, self.source) if x)
        return f"{v} ({where})" if where else v


# ----------------------------------------------------------------------------------------------- paper 000
#: Head budget and probe-set size (Sec. 3.3, App. F).
BUDGET_M = Ref(30, "000 Sec. 3.3", note="of 1024 (LLaMA-2) or 1152 (Qwen3) heads")
PROBE_N = Ref(40, "000 Sec. 3.3")
#: Split-half stability of per-head mean entropy (Sec. 3.3, Fig. 3).
SPLIT_HALF_RHO = Ref(0.973, "000 Fig. 3", LLAMA2)
SPLIT_HALF_IQR = Ref((0.969, 0.975), "000 Fig. 3", LLAMA2)
#: Candidate frequency distribution (App. C, Fig. 6): a heavy tail.
FREQUENCY_CORE = Ref("a compact core", "000 App. C, Fig. 6", note="candidates on most probe examples, often F > 0.75")
#: The qualitative dichotomy of the entropy heatmaps (Fig. 2, 7, 8).
DICHOTOMY = {
    "white": Ref("several, as white bands", "000 Fig. 2, 7, 8"),
    "blue": Ref("several, as blue bands", "000 Fig. 2, 7, 8"),
    "raw_range": Ref("not reported", "000 Fig. 2, 7, 8"),
    "persistence": Ref("stable vs no persistent winner", "000 Fig. 2, 7, 8"),
}
#: Overlap of the top-30 wavering set selected on N examples with the one selected on 40 (App. H.4).
PROBE_SIZE_OVERLAP = {
    20: {LLAMA2: Ref("83.3%", "000 Table 8", LLAMA2), QWEN3: Ref("86.7%", "000 Table 9", QWEN3)},
    60: {LLAMA2: Ref("90.0%", "000 Table 8", LLAMA2), QWEN3: Ref("93.3%", "000 Table 9", QWEN3)},
}
#: Cross-task overlap of top-30 wavering sets (App. H.1, Table 3).
CROSS_TASK_OVERLAP = {
    LLAMA2: {"CoT <-> AQUA": "80.0%", "CoT <-> ARC": "63.3%", "AQUA <-> ARC": "60.0%", "three-way": "56.7%"},
    QWEN3: {"CoT <-> AQUA": "60.0%", "CoT <-> ARC": "66.7%", "AQUA <-> ARC": "53.3%", "three-way": "53.3%"},
}
CROSS_TASK_RANGE = Ref("53–80%", "000 Table 3")

#: Table 1 (M = 30): recall, F1, accuracy per dataset (in TABLE1_DATASETS order), per model and regime.
TABLE1_DATASETS = ("CoT-Collection", "AQUA-RAT", "arc-cot")
_TABLE1_TEXT = """
LLaMA-2-7B-chat | base        | 0.467 0.423 0.542 | 0.239 0.151 0.204 | 0.435 0.423 0.440
LLaMA-2-7B-chat | Full SFT    | 0.594 0.574 0.709 | 0.272 0.274 0.275 | 0.566 0.567 0.570
LLaMA-2-7B-chat | LoRA        | 0.526 0.539 0.672 | 0.179 0.197 0.188 | 0.573 0.611 0.591
LLaMA-2-7B-chat | Random-head | 0.524 0.525 0.664 | 0.226 0.240 0.229 | 0.550 0.551 0.556
LLaMA-2-7B-chat | SH-only     | 0.542 0.545 0.659 | 0.240 0.267 0.244 | 0.475 0.476 0.480
LLaMA-2-7B-chat | WH-only     | 0.577 0.578 0.696 | 0.245 0.253 0.259 | 0.581 0.582 0.590
Qwen3-8B        | base        | 0.594 0.599 0.793 | 0.519 0.516 0.531 | 0.716 0.745 0.710
Qwen3-8B        | Full SFT    | 0.693 0.668 0.829 | 0.564 0.563 0.555 | 0.802 0.794 0.790
Qwen3-8B        | LoRA        | 0.701 0.692 0.857 | 0.608 0.607 0.614 | 0.802 0.801 0.790
Qwen3-8B        | Random-head | 0.713 0.689 0.845 | 0.593 0.590 0.599 | 0.804 0.797 0.793
Qwen3-8B        | SH-only     | 0.693 0.680 0.822 | 0.600 0.590 0.594 | 0.782 0.773 0.770
Qwen3-8B        | WH-only     | 0.705 0.698 0.849 | 0.614 0.603 0.612 | 0.810 0.804 0.800
"""
TABLE1 = {(row[0].strip(), row[1].strip()): tuple(float(x) for x in " ".join(row[2:]).split())
          for row in (line.split("|") for line in _TABLE1_TEXT.strip().splitlines())}
#: The hierarchy Table 1 supports: WH ≈ Full > LoRA > Random > SH, and WH > SH, WH > base.
HIERARCHY = (("WH-only", "≈", "Full SFT"), ("Full SFT", ">", "LoRA"), ("LoRA", ">", "Random-head"),
             ("Random-head", ">", "SH-only"), ("WH-only", ">", "SH-only"), ("WH-only", ">", "base"))
#: Accuracy over 3 training seeds (App. H.2, Table 6; LLaMA-2, CoT-Collection).
TABLE6_SEEDS = {"Full SFT": "0.706 ± 0.011", "WH-only": "0.693 ± 0.008", "SH-only": "0.656 ± 0.010",
                "Random-head": "0.660 ± 0.014"}
#: Cross-task transfer (App. H.1, Tables 4/5): wavering heads selected on another dataset, fine-tuned on the target.
TRANSFER = Ref("mean Δ vs native heads −0.012 (LLaMA-2) / −0.008 (Qwen3), above SH-only in every cell; "
               "degradation correlates with head-set mismatch (r ≈ −0.87)", "000 App. H.1, Tables 4/5")
#: Random-head draws (App. H.3, Table 7; LLaMA-2, CoT-Collection, 3 draws of 30 heads).
TABLE7_DRAWS = Ref("0.662 ± 0.012, best < WH-only 0.696", "000 Table 7", LLAMA2)
#: Entropy drop after SHFT (Fig. 5): means, Mann-Whitney p, rank-biserial r and Cliff's δ.
FIG5 = {"mean_wh": 0.098, "mean_sh": 0.012, "p": "< 0.05", "r_rb": 0.313, "cliffs_delta": 0.354}
#: WikiText perplexity after each regime (Table 2), "LLaMA-2 / Qwen3".
TABLE2_PPL = {"base": "13.496 / 22.808", "Full SFT": "47.550 / 60.191", "WH-only": "13.058 / 18.837",
              "LoRA": "12.651 / 17.556"}
#: Fig. 4: accuracy against head budget.
FIG4 = Ref("WH rises and saturates near M = 30 of 1024 heads, SH stays flat", "000 Fig. 4", LLAMA2)


def table1_frame():
    """Table 1 as a frame: one row per (model, regime), columns (dataset, metric) with metrics rec, f1, acc."""
    import pandas as pd

    cols = pd.MultiIndex.from_tuples([("", "model"), ("", "regime")] +
                                     [(d, m) for d in TABLE1_DATASETS for m in ("rec", "f1", "acc")])
    return pd.DataFrame([[model, regime, *vals] for (model, regime), vals in TABLE1.items()], columns=cols)


def probe_size_ref(n: int, model: str) -> str:
    """Table 8/9's overlap for probe size `n` and `model`, or "–" where the paper has none."""
    ref = PROBE_SIZE_OVERLAP.get(n, {}).get(model)
    return str(ref.value) if ref else "–"


def cross_task_text() -> str:
    """Table 3 in one line, both models."""
    return "; ".join(f"{m}: " + ", ".join(f"{k} {v}" for k, v in row.items()) for m, row in CROSS_TASK_OVERLAP.items())


# ----------------------------------------------------------------------------------------------- paper 003
QWEN3_4B = "Qwen3-4B-Base"
QWEN3_8B_BASE = "Qwen3-8B-Base"
#: Table 1: Jaccard similarity of greedy roll-outs after forcing top-k alternatives at high- vs low-FAI positions
#: (70 GSM8K problems).
P003_TABLE1 = {"top_jaccard": Ref(0.534, "003 Table 1", QWEN3_4B),
               "bottom_jaccard": Ref(0.631, "003 Table 1", QWEN3_4B),
               "pr_top_lt_bottom": Ref("87.14%", "003 Table 1", QWEN3_4B)}
#: Table 2: couplings, (random, observed, lift) as printed.
P003_TABLE2 = {
    "entropy at WAAD peaks": ("0.2386", "0.3608", "+51.97%"),
    "receiver & global FAI peaks co-occur": ("22.41%", "60.84%", "+171.49%"),
    "FAI peak follows/coincides with WAAD peak": ("36.87%", "52.53%", "+42.47%"),
}
#: Table 3: final Countdown accuracy (%) per credit strategy (Qwen3-4B-Base).
P003_TABLE3_COUNTDOWN = {"none": 52.6, "random": 55.0, "entropy": 57.7, "local": 59.9, "global": 60.4,
                         "coupled": 63.1}
#: Table 5: math average (%) per variant (Qwen3-8B-Base): top vs bottom 40% and the coupled q-ratio ablation.
P003_TABLE5_AVG = {"none": 39.4, "global-bottom": 33.1, "local-bottom": 37.6, "coupled-bottom": 32.5, "global": 42.1,
                   "local": 41.3, "coupled": 43.2, "coupled q=0.2": 40.6, "coupled q=0.6": 40.2,
                   "coupled q=0.8": 40.7, "coupled q=1.0": 39.8}
#: §5.3.1 settings: γ_amp, W, FAI horizon for RL, q, k.
P003_SETTINGS = {"gamma_amp": 1.5, "window": 10, "horizon": (10, 50), "q": 0.4, "k": (1, 2, 3)}

# ----------------------------------------------------------------------------------------------- paper 001
QWEN25_MATH_15B = "Qwen2.5-Math-1.5B"
#: Table 1: number of emergent heads per post-training method in AIME'24 circuits (the baseline row counts the
#: base model's own circuit heads); all on the Qwen2.5-Math-1.5B family.
P001_TABLE1_HEADS = {"Qwen-2.5-Math-1.5B (Baseline)": 56, "DeepSeek-R1-Distill-Qwen-1.5B": 32,
                     "SFT with OpenR1-Math-220k": 34, "GRPO with OpenR1-Math-220k": 19, "GRPO with GSM8K": 20}
#: §4.1: ablating the distilled model's emergent heads, AIME'24 pass@1 (DeepSeek-R1-Distill-Qwen-1.5B).
P001_DISTILL_ABLATION = Ref("AIME'24 pass@1 from 30 to 26.6", "001 §4.1", "DeepSeek-R1-Distill-Qwen-1.5B")
#: §6: think on/off (Qwen3-8B): no exclusive thinking heads; think off activates a larger set of heads.
P001_THINK_ON_OFF = Ref("no think-on-only heads; think off activates a much larger set", "001 §6", QWEN3)
#: Table 2: pass@1 (T = 0.6) after zero-ablating head sets of the distilled models, per benchmark.
P001_TABLE2_BENCHMARKS = ("AIME'24", "AIME'25", "GPQA", "AMC")
P001_TABLE2 = {
    ("DeepSeek-R1-Distill-Qwen-1.5B", "No Ablation"): (30.0, 26.6, 18.6, 66.2),
    ("DeepSeek-R1-Distill-Qwen-1.5B", "Ablation with Reasoning Heads"): (26.6, 16.6, 17.1, 59.0),
    ("DeepSeek-R1-Distill-Qwen-1.5B", "Ablation with Base Model Heads"): (30.0, 23.3, 12.1, 53.0),
    ("DeepSeek-R1-Distill-Qwen-1.5B", "Ablation with TriviaQA Heads"): (0.0, 0.0, 0.0, 0.0),
    ("DeepSeek-R1-Distill-Qwen-7B", "No Ablation"): (40.0, 43.3, 35.3, 81.9),
    ("DeepSeek-R1-Distill-Qwen-7B", "Ablation with Reasoning Heads"): (53.3, 46.6, 35.8, 78.3),
    ("DeepSeek-R1-Distill-Qwen-7B", "Ablation with Base Model Heads"): (53.3, 43.3, 37.3, 83.1),
    ("DeepSeek-R1-Distill-Qwen-7B", "Ablation with TriviaQA Heads"): (50.0, 50.0, 34.3, 79.5),
}
#: Table 3: Qwen3-8B pass@1 (T = 0.6) with think on, think off, and think off with its think-off-only circuit
#: heads zero-ablated or scaled ×0.5.
P001_TABLE3_BENCHMARKS = ("AIME'24", "AIME'25", "AMC", "GPQA", "MATH")
P001_TABLE3 = {"Think On": (80.0, 73.3, 89.1, 63.1, 93.8), "Think Off": (30.0, 13.3, 67.4, 44.9, 81.4),
               "Think Off & Ablation": (36.6, 20.0, 61.4, 49.4, 83.6),
               "Think Off & Scale Down": (20.0, 23.3, 56.6, 51.0, 81.8)}
#: §4.2: ablating the SFT model's ~10 mid-to-late emergent heads; scaling them ×1.3 in the base model.
P001_SFT_HEADS = Ref("ablation: every benchmark close to zero; ×1.3: MATH up, AMC slightly down, AIME'24 down",
                     "001 §4.2", QWEN25_MATH_15B)
#: §5: scaling GRPO-emergent heads in the base model (GSM8K circuits, 100-step checkpoint).
P001_GRPO_SCALING = Ref("×1.3: MATH 56 → 60, AIME'24 and AMC down; ×0.5: AIME'24 13.3 → 3.3, MATH 56 → 63, "
                        "AMC 38.5 → 42.1", "001 §5", QWEN25_MATH_15B)
#: §5: GRPO's final emergent heads are few and do not much overlap with SFT's.
P001_GRPO_VS_SFT = Ref("few, targeted GRPO heads that do not much overlap with SFT's mid-to-late heads", "001 §5",
                       QWEN25_MATH_15B)
#: §6, Fig. 5: coverage of think-off Qwen3-8B on AIME'24, up to 64 samples.
P001_FIG5 = Ref("baseline keeps a slight pass@k lead as k grows; ablation leads success@k only at k ≤ 2; "
                "scale-down under-performs throughout", "001 §6, Fig. 5", QWEN3)
