"""Head selection from entropy traces (paper 000, Sec. 3.3; App. F stages 2-4, Eq. 11-17) and its statistics.

Pipeline, per probe example x with raw entropy H[t, l, h] (from support.tracing):

1. Min-max normalise over all heads and steps (Eq. 11) -> H~ in [0, 1], used only for thresholding.
2. Per-example candidates (Eq. 13-15). Steadfast (low entropy): share of steps with H~ < tau_low is >= alpha,
   longest run of such steps >= c, mean H~ <= mu; paper values tau_low=0.05, alpha=0.6, c=10, mu=0.25.
   Wavering (high entropy) flips the inequalities: H~ > tau_high, share >= alpha, run >= c, mean H~ >= mu_high.
   The paper gives no numbers for the wavering side; our defaults mirror the steadfast ones around 1/2
   (tau_high = 1 - 0.05, mu_high = 1 - 0.25, same alpha and c) and are parameters (`Criteria`).
3. Selection frequency F (Eq. 16) and mean time-averaged entropy m-bar (Eq. 17). Rank by F descending, ties
   broken by m-bar (ascending for steadfast, descending for wavering), then by (layer, head) for determinism. Keep
   the top M (M = 30 in the paper). **The paper reads two ways here** (`TIE_BREAKS`, `Criteria.tie_break`):
   Sec. 3.3 breaks ties with "the global time-averaged entropy H-bar" (the ORIGINAL, unnormalised entropy: our
   default ``"raw"``), while Eq. 17 literally averages Eq. 14's m, the mean of the NORMALISED entropy
   (``"normalised"``). Per-example normalisation rescales every example differently, so the two orders can differ;
   because the candidate criteria rarely fire on small models, many heads tie at F = 0 and this choice then decides
   the sets. `candidate_warning` says when fewer than M heads were candidates at all.

Statistics: split-half stability (Sec. 3.3, Fig. 3), candidate-frequency distribution (App. C, Fig. 6), probe-size
sensitivity (App. H.4, Table 8) and cross-task overlap of wavering sets (App. H.1, Table 3).
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from .heads import Head, HeadSet, check_budget, head_set_path, random_heads, write_head_set

KINDS = ("steadfast", "wavering")
#: Readings of the m-bar tie-break (module docstring, step 3): Sec. 3.3's raw entropy or Eq. 17's normalised m.
TIE_BREAKS = ("raw", "normalised")


@dataclass(frozen=True)
class Criteria:
    """Per-example candidate thresholds (Eq. 13-15) for one kind of head."""

    kind: str  # "steadfast" (low entropy) or "wavering" (high entropy)
    tau: float  # threshold on normalised entropy: below it (steadfast) or above it (wavering)
    alpha: float  # minimal share of steps past the threshold (Eq. 13)
    c: int  # minimal longest run of consecutive steps past the threshold
    mu: float  # bound on the mean normalised entropy (Eq. 14): <= mu (steadfast), >= mu (wavering)
    tie_break: str = "raw"  # m-bar of Eq. 17 on the raw entropy (Sec. 3.3) or on the normalised one (`TIE_BREAKS`)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown head kind {self.kind!r}; valid choices: {', '.join(KINDS)}")
        if self.tie_break not in TIE_BREAKS:
            raise ValueError(f"unknown tie_break {self.tie_break!r}; valid choices: {', '.join(TIE_BREAKS)}")
        for name in ("tau", "alpha", "mu"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and 0.0 <= v <= 1.0):
                raise ValueError(f"{self.kind} criterion {name} must be in [0, 1], got {v!r}")
        if not (isinstance(self.c, (int, np.integer)) and self.c >= 1):
            raise ValueError(f"{self.kind} criterion c (run length) must be an integer >= 1, got {self.c!r}")


#: App. F values (tau_low = 0.05, alpha = 0.6, c = 10, mu = 0.25).
STEADFAST = Criteria("steadfast", tau=0.05, alpha=0.6, c=10, mu=0.25)
#: Our choice (the paper gives none): the steadfast criteria mirrored around 1/2.
WAVERING = Criteria("wavering", tau=0.95, alpha=0.6, c=10, mu=0.75)
DEFAULT_CRITERIA = {"steadfast": STEADFAST, "wavering": WAVERING}


def _as_array(H) -> np.ndarray:
    a = H.detach().cpu().numpy() if hasattr(H, "detach") else np.asarray(H)
    a = a.astype(np.float64)
    if a.ndim != 3:
        raise ValueError(f"an entropy trace must have shape [T, L, H], got {a.shape}")
    return a


def _check_probe(entropies: Sequence) -> list[np.ndarray]:
    arrs = [_as_array(h) for h in entropies]
    if not arrs:
        raise ValueError("empty probe set: selection needs the entropy traces of at least one example")
    shapes = {a.shape[1:] for a in arrs}
    if len(shapes) != 1:
        raise ValueError(f"all traces must have the same [L, H]; got {sorted(shapes)}")
    return arrs


# ----------------------------------------------------------------------------------------------- per example
def normalise(H) -> np.ndarray:
    """Eq. 11: per-example min-max normalisation over all heads and steps, clipped to [0, 1].

    A constant trace (H_max == H_min) carries no contrast and maps to all zeros.
    """
    a = _as_array(H)
    lo, hi = a.min(), a.max()
    if hi - lo <= 1e-12:
        return np.zeros_like(a)
    return np.clip((a - lo) / (hi - lo), 0.0, 1.0)


def longest_run(mask: np.ndarray) -> np.ndarray:
    """Longest run of consecutive True along axis 0 of a [T, ...] boolean array."""
    run = np.zeros(mask.shape[1:], dtype=np.int64)
    best = run.copy()
    for m in mask:
        run = (run + 1) * m
        np.maximum(best, run, out=best)
    return best


@dataclass
class ExampleStats:
    """Eq. 13-15 quantities of one example for one criteria set, each [L, H]."""

    f: np.ndarray  # share of steps past the threshold
    r: np.ndarray  # longest run of steps past the threshold
    m: np.ndarray  # mean normalised entropy (Eq. 14)
    m_raw: np.ndarray  # mean ORIGINAL entropy (enters Eq. 17)
    candidate: np.ndarray  # bool: Eq. 15 holds


def example_stats(H, crit: Criteria) -> ExampleStats:
    """Candidate test of Eq. 13-15 on one example's raw entropy trace [T, L, H]."""
    raw = _as_array(H)
    Hn = normalise(raw)
    past = Hn < crit.tau if crit.kind == "steadfast" else Hn > crit.tau
    f, r, m = past.mean(0), longest_run(past), Hn.mean(0)
    if crit.kind == "steadfast":
        cand = (f >= crit.alpha) & (r >= crit.c) & (m <= crit.mu)
    else:
        cand = (f >= crit.alpha) & (r >= crit.c) & (m >= crit.mu)
    return ExampleStats(f=f, r=r, m=m, m_raw=raw.mean(0), candidate=cand)


# ----------------------------------------------------------------------------------------------- ranking
@dataclass
class Ranking:
    """Dataset-level scores for one kind: F (Eq. 16), m-bar (Eq. 17), per-example candidates and the order."""

    kind: str
    F: np.ndarray  # [L, H]
    mbar: np.ndarray  # [L, H], on the original entropy (tie_break "raw") or the normalised one
    S: np.ndarray  # [N, L, H] bool candidates
    order: list[Head]  # all heads, best first
    tie_break: str = "raw"

    def top(self, M: int = 30) -> list[Head]:
        """The top-M heads; ValueError if M is not in 1..L*H."""
        check_budget(M, *self.F.shape)
        return self.order[:M]


def rank_heads(entropies: Sequence, crit: Criteria) -> Ranking:
    """Eq. 16-17 over a probe set of raw entropy traces ([T_x, L, H] each), then the frequency-first order."""
    arrs = _check_probe(entropies)
    stats = [example_stats(a, crit) for a in arrs]
    S = np.stack([s.candidate for s in stats])
    F = S.mean(0)
    mbar = np.stack([s.m_raw if crit.tie_break == "raw" else s.m for s in stats]).mean(0)
    L, H = F.shape
    ll, hh = np.meshgrid(np.arange(L), np.arange(H), indexing="ij")
    sign = 1.0 if crit.kind == "steadfast" else -1.0
    # np.lexsort: last key is primary -> F desc, then m-bar (asc/desc), then layer, then head.
    idx = np.lexsort((hh.ravel(), ll.ravel(), sign * mbar.ravel(), -F.ravel()))
    order = [(int(i // H), int(i % H)) for i in idx]
    return Ranking(kind=crit.kind, F=F, mbar=mbar, S=S, order=order, tie_break=crit.tie_break)


def candidate_warning(ranking: Ranking, M: int) -> str | None:
    """A warning when fewer than `M` heads were candidates on any probe example (F > 0): the rest of the top M is
    then chosen by the m-bar tie-break alone. Includes the distribution of F. None when M heads have F > 0."""
    F = ranking.F.ravel()
    n = int((F > 0).sum())
    if n >= M:
        return None
    levels, counts = np.unique(np.round(F, 3), return_counts=True)
    dist = ", ".join(f"F={v:g}: {c}" for v, c in zip(levels[::-1], counts[::-1]))
    return (f"only {n} of {F.size} heads were {ranking.kind} candidates on any probe example, fewer than M = {M}: "
            f"the other {M - n} are picked by the m-bar tie-break alone (tie_break '{ranking.tie_break}'). "
            f"Distribution of F: {dist}")


# ----------------------------------------------------------------------------------------------- head sets
def head_sets(entropies: Sequence, M: int = 30, seed: int = 0, steadfast: Criteria = STEADFAST,
              wavering: Criteria = WAVERING) -> dict[str, HeadSet]:
    """Wavering, steadfast and random top-M head sets from a probe set's raw entropy traces."""
    arrs = _check_probe(entropies)
    L, H = arrs[0].shape[1:]
    check_budget(M, L, H)
    out: dict[str, HeadSet] = {}
    for crit in (wavering, steadfast):
        rk = rank_heads(arrs, crit)
        top = rk.top(M)
        out[crit.kind] = HeadSet(kind=crit.kind, heads=top, n_layers=L, n_heads=H,
                                 F=[float(rk.F[h]) for h in top], mbar=[float(rk.mbar[h]) for h in top],
                                 criteria=asdict(crit))
    out["random"] = HeadSet(kind="random", heads=random_heads(L, H, M, seed), n_layers=L, n_heads=H, seed=seed)
    return out


def write_head_sets(run_dir: Path | str, sets: Mapping[str, HeadSet], prov: Mapping,
                    task: str | None = None) -> dict[str, Path]:
    """Write every head set of `head_sets` to `head_sets/[<task>/]<kind>.json` with one provenance record."""
    return {kind: write_head_set(head_set_path(run_dir, kind, task), hs, prov) for kind, hs in sets.items()}


# ----------------------------------------------------------------------------------------------- statistics
def mean_entropy(entropies: Sequence) -> np.ndarray:
    """[N, L, H]: each example's time-averaged ORIGINAL entropy per head."""
    return np.stack([a.mean(0) for a in _check_probe(entropies)])


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two flattened arrays (average ranks for ties)."""
    from scipy.stats import spearmanr

    return float(spearmanr(np.ravel(a), np.ravel(b)).statistic)


@dataclass
class SplitHalf:
    """Split-half stability (Sec. 3.3, Fig. 3): Spearman rho of per-head mean entropy between random halves."""

    rhos: np.ndarray
    half_a: np.ndarray  # [L*H] per-head mean entropy in half A of the first split (for the scatter plot)
    half_b: np.ndarray

    @property
    def median(self) -> float:
        return float(np.median(self.rhos))

    @property
    def iqr(self) -> tuple[float, float]:
        q25, q75 = np.percentile(self.rhos, [25, 75])
        return float(q25), float(q75)


def split_half(entropies: Sequence, n_splits: int = 200, seed: int = 0) -> SplitHalf:
    """Partition the probe set at random into two halves `n_splits` times; rho of per-head mean entropy."""
    per = mean_entropy(entropies)
    N = per.shape[0]
    if N < 4:
        raise ValueError(f"split-half analysis needs at least 4 probe examples, got {N}")
    if n_splits < 1:
        raise ValueError(f"n_splits must be >= 1, got {n_splits}")
    rng = np.random.default_rng(seed)
    rhos, first = [], None
    for _ in range(n_splits):
        perm = rng.permutation(N)
        a, b = per[perm[: N // 2]].mean(0).ravel(), per[perm[N // 2:]].mean(0).ravel()
        first = first or (a, b)
        rhos.append(spearman(a, b))
    return SplitHalf(rhos=np.array(rhos), half_a=first[0], half_b=first[1])


def frequency_distribution(ranking: Ranking) -> np.ndarray:
    """Candidate frequency F of every head, sorted descending (App. C, Fig. 6: a heavy tail)."""
    return np.sort(ranking.F.ravel())[::-1]


def overlap(a: Sequence[Head], b: Sequence[Head]) -> float:
    """|A intersect B| / |A| for two head sets of the same size M."""
    if len(a) != len(b) or not a:
        raise ValueError(f"overlap needs two non-empty sets of equal size, got {len(a)} and {len(b)}")
    return len(set(map(tuple, a)) & set(map(tuple, b))) / len(a)


def chance_overlap(M: int, n_layers: int, n_heads: int) -> float:
    """Expected overlap fraction of two independent random M-head sets: M / (L*H)."""
    check_budget(M, n_layers, n_heads)
    return M / (n_layers * n_heads)


def probe_size_overlap(entropies: Sequence, sizes: Sequence[int] = (20, 60), ref: int = 40, M: int = 30,
                       crit: Criteria = WAVERING, n_draws: int = 20, seed: int = 0) -> dict[int, np.ndarray]:
    """App. H.4: overlap of the top-M set selected on N examples with the one selected on `ref` examples.

    Each draw takes a random order of the probe pool and uses its first N (nested subsets), so the pool must hold
    max(sizes, ref) examples. Returns {N: overlaps over draws}.
    """
    arrs = _check_probe(entropies)
    need = max([*sizes, ref])
    if need > len(arrs):
        raise ValueError(f"probe-size analysis needs {need} examples, only {len(arrs)} traced")
    if min([*sizes, ref]) < 1:
        raise ValueError(f"probe sizes must be >= 1, got {sizes}, ref={ref}")
    rng = np.random.default_rng(seed)
    out: dict[int, list[float]] = {n: [] for n in sizes}
    for _ in range(n_draws):
        perm = rng.permutation(len(arrs))
        base = rank_heads([arrs[i] for i in perm[:ref]], crit).top(M)
        for n in sizes:
            out[n].append(overlap(rank_heads([arrs[i] for i in perm[:n]], crit).top(M), base))
    return {n: np.array(v) for n, v in out.items()}


def cross_task_overlap(sets: Mapping[str, Sequence[Head]]) -> list[dict]:
    """App. H.1, Table 3: pairwise overlap of top-M sets across tasks, plus the all-way core (>= 3 tasks)."""
    names = list(sets)
    if len(names) < 2:
        raise ValueError(f"cross-task overlap needs head sets of at least 2 tasks, got {names}")
    M = len(next(iter(sets.values())))
    rows = []
    for a, b in itertools.combinations(names, 2):
        n = len(set(map(tuple, sets[a])) & set(map(tuple, sets[b])))
        rows.append({"pair": f"{a} <-> {b}", "shared": n, "M": M, "overlap": n / M})
    if len(names) >= 3:
        core = set.intersection(*(set(map(tuple, s)) for s in sets.values()))
        rows.append({"pair": f"{len(names)}-way core", "shared": len(core), "M": M, "overlap": len(core) / M})
    return rows
