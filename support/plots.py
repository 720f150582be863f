"""All book figures: seeded, captioned, readable labels, saved to the run directory.

Every figure function returns a matplotlib Figure whose caption is attached as `fig._rh_caption`; `save` writes
the PNG (and the caption beside it) into the run directory so figures are artifacts too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.rcParams.update({"figure.dpi": 100, "savefig.dpi": 200, "font.size": 10, "axes.titlesize": 11,
                            "axes.labelsize": 10, "figure.autolayout": True})
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

SEED = 0


def finish(fig, ax, title: str, caption: str):
    """Title the axes and attach the caption (shown under the figure by `show`)."""
    if ax is not None:
        ax.set_title(title)
    fig._rh_caption = caption
    return fig


def save(fig, run_dir: Path | str, name: str) -> Path:
    """Write `<run_dir>/figures/<name>.png` plus its caption as `<name>.txt`."""
    out = Path(run_dir) / "figures"
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.png"
    fig.savefig(path, bbox_inches="tight")
    (out / f"{name}.txt").write_text(getattr(fig, "_rh_caption", ""))
    return path


def show(fig, run_dir: Path | str | None = None, name: str | None = None) -> None:
    """Display a figure with its caption in a notebook (and save it when a run directory is given)."""
    if run_dir is not None and name:
        save(fig, run_dir, name)
    plt.show()
    cap = getattr(fig, "_rh_caption", "")
    if cap:
        print(f"Figure: {cap}")
    plt.close(fig)


def training_curve(steps: Sequence[int], losses: Sequence[float], evals: Sequence[dict] | None = None,
                   title: str = "Training curve", caption: str = "", stages: dict[str, int] | None = None):
    """Loss against step, with held-out accuracy checkpoints on a second axis (one line per evaluated series,
    drawn where it was measured) and dotted lines where a training stage starts (`stages`: name -> first step)."""
    fig, ax = plt.subplots(figsize=(7, 3.6))
    ax.plot(steps, losses, color="tab:blue", label="training loss", lw=1)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("next-token loss (nats)")
    ax.set_yscale("log")
    for name, start in (stages or {}).items():
        ax.axvline(start, color="grey", ls=":", lw=1)
        ax.text(start, ax.get_ylim()[1], f" {name}", va="top", ha="left", fontsize=8, color="grey")
    if evals:
        ax2 = ax.twinx()
        keys = list(dict.fromkeys(k for e in evals for k in e if k not in ("step", "stage")))
        for k in keys:
            pts = [(e["step"], e[k]) for e in evals if k in e]
            ax2.plot(*zip(*pts), marker="o", ms=4, label=f"{k} accuracy")
        ax2.set_ylabel("held-out accuracy")
        ax2.set_ylim(0, 1)
        ax2.legend(loc="center left", fontsize=7)
    ax.legend(loc="upper right", fontsize=8)
    return finish(fig, ax, title, caption)


def length_histogram(lengths: dict[str, Sequence[int]], title: str, caption: str, threshold: float | None = None):
    """Distribution of response lengths (tokens), one outlined histogram per series; optional dashed threshold."""
    fig, ax = plt.subplots(figsize=(6.5, 3.2))
    hi = max(max(v) for v in lengths.values() if len(v))
    bins = np.linspace(0, hi + 1, 40)
    for name, v in lengths.items():
        ax.hist(v, bins=bins, histtype="step", lw=1.5, label=f"{name} (mean {np.mean(v):.0f})")
    if threshold is not None:
        ax.axvline(threshold, color="black", ls="--", lw=1, label=f"{threshold:g} tokens")
    ax.set_xlabel("response length (tokens)")
    ax.set_ylabel("responses")
    ax.legend(fontsize=8)
    return finish(fig, ax, title, caption)


def layer_head_heatmap(values: np.ndarray, title: str, caption: str, cmap: str = "Blues", cbar_label: str = "",
                       vmin: float | None = None, vmax: float | None = None, marks: dict | None = None):
    """A layer × head heatmap (rows: layers, columns: heads). `marks` maps a label to [(layer, head), ...]."""
    L, H = values.shape
    fig, ax = plt.subplots(figsize=(max(4.0, 0.45 * H + 2), max(3.0, 0.4 * L + 1.2)))
    im = ax.imshow(values, cmap=cmap, aspect="auto", vmin=vmin, vmax=vmax, origin="upper")
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_xticks(range(H))
    ax.set_yticks(range(L))
    fig.colorbar(im, ax=ax, label=cbar_label)
    for (label, heads), color in zip((marks or {}).items(), ("tab:red", "tab:orange", "tab:green")):
        for i, (l, h) in enumerate(heads):
            ax.add_patch(plt.Rectangle((h - 0.5, l - 0.5), 1, 1, fill=False, edgecolor=color, lw=2,
                                       label=label if i == 0 else None))
    if marks:
        ax.legend(loc="upper left", bbox_to_anchor=(1.25, 1.0), fontsize=8)
    return finish(fig, ax, title, caption)


def attention_grid(patterns: np.ndarray, tokens: Sequence[str], title: str, caption: str, max_tokens: int = 128):
    """Layer × head grid of attention patterns [L, H, q, k] for one prompt (last `max_tokens` positions)."""
    L, H = patterns.shape[:2]
    p = patterns[..., -max_tokens:, -max_tokens:]
    fig, axes = plt.subplots(L, H, figsize=(1.3 * H, 1.3 * L), squeeze=False)
    for l in range(L):
        for h in range(H):
            ax = axes[l][h]
            ax.imshow(p[l, h], cmap="viridis", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if l == L - 1:
                ax.set_xlabel(f"H{h}", fontsize=8)
            if h == 0:
                ax.set_ylabel(f"L{l}", fontsize=8)
    fig.suptitle(title)
    return finish(fig, None, title, caption)


# ----------------------------------------------------------------------------------------------- tracing & selection
def heatmap_panels(panels: dict, title: str, caption: str, cmap: str = "Blues", vmin: float | None = 0.0,
                   vmax: float | None = 1.0, cbar_label: str = "", marks: dict | None = None):
    """Several layer × head heatmaps side by side on one colour scale (e.g. one per example, or raw vs final-norm).

    `marks` maps a legend label to [(layer, head), ...], boxed in every panel.
    """
    n = len(panels)
    first = next(iter(panels.values()))
    L, H = first.shape
    fig, axes = plt.subplots(1, n, figsize=(max(3.2, 0.38 * H + 1.6) * n, max(2.8, 0.36 * L + 1.4)), squeeze=False,
                             layout="constrained")
    im = None
    for ax, (name, vals) in zip(axes[0], panels.items()):
        im = ax.imshow(vals, cmap=cmap, aspect="auto", vmin=vmin, vmax=vmax)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("head")
        ax.set_xticks(range(H))
        ax.set_yticks(range(L))
        for (label, heads), color in zip((marks or {}).items(), ("tab:red", "tab:orange", "tab:green")):
            for i, (l, h) in enumerate(heads):
                ax.add_patch(plt.Rectangle((h - 0.5, l - 0.5), 1, 1, fill=False, edgecolor=color, lw=1.8,
                                           label=label if i == 0 else None))
    axes[0][0].set_ylabel("layer")
    if marks:
        axes[0][-1].legend(loc="upper left", bbox_to_anchor=(1.02, -0.12), fontsize=8)
    fig.colorbar(im, ax=list(axes[0]), label=cbar_label, shrink=0.9)
    fig.suptitle(title)
    return finish(fig, None, title, caption)


def entropy_strip(Hn: np.ndarray, title: str, caption: str, cmap: str = "Blues"):
    """Heads × decoding steps of one example's normalised entropy [T, L, H] (App. G: blue and white bands)."""
    T, L, H = Hn.shape
    fig, ax = plt.subplots(figsize=(max(5.0, 0.06 * T + 2.5), max(3.0, 0.09 * L * H + 1.2)))
    im = ax.imshow(Hn.reshape(T, L * H).T, cmap=cmap, aspect="auto", vmin=0, vmax=1, interpolation="nearest")
    ax.set_xlabel("decoding step t")
    ax.set_ylabel(f"head ({H} per layer)")
    ticks = list(range(0, L * H, H))
    ax.set_yticks([t + (H - 1) / 2 for t in ticks], [f"L{l}" for l in range(L)])
    for y in ticks[1:]:
        ax.axhline(y - 0.5, color="0.6", lw=0.5)
    fig.colorbar(im, ax=ax, label="normalised entropy (Eq. 11)")
    return finish(fig, ax, title, caption)


def entropy_traces(traces: dict, log_k: float, title: str, caption: str, ylabel: str = "entropy (nats)"):
    """Per-head entropy over decoding steps; `traces` maps a legend label to a [T] array."""
    fig, ax = plt.subplots(figsize=(7.0, 3.4))
    styles = ("-", "--", "-.", ":")
    for i, (label, y) in enumerate(traces.items()):
        ax.plot(np.arange(1, len(y) + 1), y, styles[i % 4], lw=1.6, label=label)
    ax.axhline(log_k, color="0.5", lw=0.8, ls=":", label=f"log|K| = {log_k:.2f}")
    ax.set_xlabel("decoding step t")
    ax.set_ylabel(ylabel)
    ax.set_ylim(-0.03 * log_k, 1.08 * log_k)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return finish(fig, ax, title, caption)


def option_traces(panels: dict, labels, title: str, caption: str):
    """Option logits over decoding steps, one panel per head; `panels` maps a panel title to a [T, |K|] array."""
    n = len(panels)
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 3.2), squeeze=False, sharex=True)
    for ax, (name, z) in zip(axes[0], panels.items()):
        z = np.asarray(z)
        for k, lab in enumerate(labels):
            ax.plot(np.arange(1, z.shape[0] + 1), z[:, k], lw=1.4, label=str(lab))
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("decoding step t")
    axes[0][0].set_ylabel("option logit z[k] (Eq. 1)")
    axes[0][-1].legend(title="option", fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.suptitle(title)
    return finish(fig, None, title, caption)


def split_half_plot(rhos: np.ndarray, half_a: np.ndarray, half_b: np.ndarray, title: str, caption: str,
                    paper_rho: float | None = None):
    """Fig. 3: (a) distribution of split-half Spearman rho, (b) per-head mean entropy, half A against half B."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(9.0, 3.6))
    a.hist(rhos, bins=min(30, max(5, len(rhos) // 5)), color="tab:blue", alpha=0.8)
    q25, q75 = np.percentile(rhos, [25, 75])
    a.axvspan(q25, q75, color="tab:blue", alpha=0.15, label=f"IQR {q25:.3f}–{q75:.3f}")
    a.axvline(np.median(rhos), color="k", lw=1, label=f"median {np.median(rhos):.3f}")
    if paper_rho is not None:
        a.axvline(paper_rho, color="tab:red", ls="--", lw=1, label=f"paper's ρ = {paper_rho}")
    a.set_xlabel("split-half Spearman ρ")
    a.set_ylabel("partitions")
    a.set_title("(a) split-half ρ", fontsize=9)
    a.legend(fontsize=7)
    b.scatter(half_a, half_b, s=14, alpha=0.7)
    lo, hi = float(min(half_a.min(), half_b.min())), float(max(half_a.max(), half_b.max()))
    b.plot([lo, hi], [lo, hi], color="0.5", lw=0.8, ls="--")
    b.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(4))
    b.set_xlabel("mean entropy per head, half A (nats)")
    b.set_ylabel("half B (nats)")
    b.set_title("(b) one random partition", fontsize=9)
    fig.suptitle(title)
    return finish(fig, None, title, caption)


def frequency_plot(freqs: dict, M: int, title: str, caption: str):
    """Fig. 6: candidate frequency F of every head, sorted, one panel per kind; the budget M is marked."""
    n = len(freqs)
    fig, axes = plt.subplots(n, 1, figsize=(7.0, 2.3 * n), squeeze=False, sharex=True)
    for ax, (name, f) in zip(axes[:, 0], freqs.items()):
        f = np.asarray(f)
        ax.bar(np.arange(1, len(f) + 1), f, color=["tab:blue" if i < M else "0.7" for i in range(len(f))])
        ax.axvline(M + 0.5, color="tab:red", ls="--", lw=1, label=f"budget M = {M}")
        ax.set_ylabel("frequency F")
        ax.set_ylim(0, 1.02)
        ax.set_title(name, fontsize=9)
        ax.legend(fontsize=8)
    axes[-1, 0].set_xlabel("head rank")
    fig.suptitle(title)
    return finish(fig, None, title, caption)


def budget_curve(budgets: Sequence[int], series: dict, title: str, caption: str, refs: dict | None = None,
                 ylabel: str = "accuracy"):
    """Fig. 4 (paper 000): score against the head budget M, one line per head set (mean ± std when given).

    `series`: {name: (means, stds or None)}; `refs`: {name: value} drawn as horizontal reference lines.
    """
    fig, ax = plt.subplots(figsize=(5.6, 3.6))
    colors = {"WH-only": "tab:orange", "SH-only": "tab:blue"}
    for name, (mean, std) in series.items():
        mean = np.asarray(mean, dtype=float)
        std = None if std is None else np.asarray(std, dtype=float)
        ax.errorbar(budgets, mean, yerr=std, marker="o", capsize=3, label=name, color=colors.get(name))
    for i, (name, v) in enumerate((refs or {}).items()):
        ax.axhline(v, ls="--", lw=1, color=f"{0.3 + 0.2 * i:.1f}", label=name)
    ax.set_xlabel("head budget M")
    ax.set_ylabel(ylabel)
    ax.set_xticks(list(budgets))
    ax.legend(fontsize=8)
    return finish(fig, ax, title, caption)


def entropy_drop_plot(groups: dict, title: str, caption: str, stats: dict | None = None):
    """Fig. 5 (paper 000): ΔH = H_pre − H_post per selected head, one box (with every head as a point) per set."""
    rng = np.random.default_rng(SEED)
    fig, ax = plt.subplots(figsize=(4.8, 3.6))
    names = list(groups)
    data = [np.asarray(groups[n], dtype=float) for n in names]
    ax.boxplot(data, widths=0.5, showfliers=False)
    for i, d in enumerate(data, 1):
        ax.scatter(i + rng.uniform(-0.12, 0.12, len(d)), d, s=16, alpha=0.75,
                   color=["tab:orange", "tab:blue", "tab:green"][(i - 1) % 3], zorder=3)
    ax.set_xticks(range(1, len(names) + 1), names)
    ax.axhline(0.0, color="0.5", lw=0.8, ls=":")
    ax.set_ylabel("ΔH = H_pre − H_post (nats)")
    if stats:
        ax.text(0.02, 0.98, f"Mann–Whitney U p = {stats['p']:.3g}\n|r_rb| = {abs(stats['r_rb']):.3f}, "
                f"Cliff's δ = {stats['cliffs_delta']:.3f}", transform=ax.transAxes, va="top", fontsize=8)
    return finish(fig, ax, title, caption)


# ----------------------------------------------------------------------------------------------- paper 003 (chapter 05)
def rhythm_maps(a_loc: np.ndarray, a_glob: np.ndarray, start: int, title: str, caption: str, gamma: float = 0.5):
    """Fig. 2 (left): the local and global aggregate attention maps over the response (rows and columns from
    `start`), on a power-law colour scale (`gamma`) so that the faint long-range mass stays visible."""
    from matplotlib.colors import PowerNorm

    fig, axes = plt.subplots(1, 2, figsize=(10, 4.6), layout="constrained")
    for ax, (name, a) in zip(axes, (("local-focused heads Ā_loc", a_loc), ("global-focused heads Ā_glob", a_glob))):
        sub = np.asarray(a)[start:, start:]
        im = ax.imshow(sub, cmap="magma_r", norm=PowerNorm(gamma, vmin=0, vmax=max(float(sub.max()), 1e-9)))
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("attended response position s")
        ax.set_ylabel("response position t")
        fig.colorbar(im, ax=ax, shrink=0.8, label="attention")
    fig.suptitle(title)
    return finish(fig, None, title, caption)


def rhythm_sequences(tokens: Sequence[str], series: dict, title: str, caption: str, marks: dict | None = None,
                     max_tokens: int = 140):
    """Fig. 2 (right): token-level sequences (WAAD, FAI, entropy, ...) stacked on one shared token axis.

    `marks` maps a series name to positions drawn as dots on that series (e.g. its peaks)."""
    n = min(len(tokens), max_tokens)
    fig, axes = plt.subplots(len(series), 1, figsize=(max(8.0, 0.11 * n), 1.5 * len(series) + 1.2), sharex=True,
                             layout="constrained")
    axes = np.atleast_1d(axes)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (ax, (name, y)) in enumerate(zip(axes, series.items())):
        y = np.asarray(y, dtype=float)[:n]
        ax.plot(range(n), y, color=colors[i % len(colors)], lw=1.2)
        pos = [p for p in (marks or {}).get(name, []) if p < n]
        ax.scatter(pos, y[pos], color="black", s=14, zorder=3)
        ax.set_ylabel(name, fontsize=8)
        ax.grid(alpha=0.3)
    axes[-1].set_xticks(range(n))
    axes[-1].set_xticklabels([t.replace("Ġ", "").replace("\n", "\\n") for t in tokens[:n]], rotation=90, fontsize=6)
    fig.suptitle(title)
    return finish(fig, None, title, caption)


def ema_of_peak(values: Sequence[float], alpha: float = 0.3) -> np.ndarray:
    """App. A.2 / Fig. 4's smoothing: the exponential moving average of the running peak of a curve."""
    out, ema, peak = [], None, -np.inf
    for v in values:
        peak = max(peak, float(v))
        ema = peak if ema is None else alpha * peak + (1 - alpha) * ema
        out.append(ema)
    return np.array(out)


def grpo_curves(curves: dict, title: str, caption: str, ylabel: str = "held-out accuracy", smooth: bool = False):
    """Fig. 4-style curves: {label: (steps, mean, spread)} with a shaded ± spread band (over seeds); `smooth` plots
    the EMA of the running peak (App. A.2) instead of the raw values."""
    fig, ax = plt.subplots(figsize=(7, 4))
    for label, (steps, mean, spread) in curves.items():
        mean, spread = np.asarray(mean, float), np.asarray(spread, float)
        y = ema_of_peak(mean) if smooth else mean
        ax.plot(steps, y, marker="o", ms=3, label=label)
        if not smooth:
            ax.fill_between(steps, mean - spread, mean + spread, alpha=0.15)
    ax.set_xlabel("GRPO step")
    ax.set_ylabel(ylabel + (" (EMA of peak)" if smooth else ""))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    return finish(fig, ax, title, caption)


def cohort_areas(cohorts, summary, title: str, caption: str, curve: tuple | None = None,
                 curve_label: str = "GRPO training reward"):
    """Paper 001 Fig. 2A/B: stacked areas of active heads per cohort (the checkpoint where a head first appears)
    over checkpoints, the number of newly active heads (blue) and of maintained base heads (red, dashed); `curve`
    = (steps, values) is drawn in a second panel (Fig. 2B). `cohorts`/`summary`: `circuits.emergence` frames."""
    labels = list(summary["checkpoint"])
    cols = 2 if curve is not None else 1
    fig, axes = plt.subplots(1, cols, figsize=(6.5 * cols, 4), squeeze=False)
    ax = axes[0, 0]
    x = np.arange(len(labels))
    stacks = [[int(cohorts[(cohorts.checkpoint == k) & (cohorts.cohort == c)]["heads"].sum()) for k in labels]
              for c in labels]
    colors = plt.get_cmap("viridis")(np.linspace(0.1, 0.9, len(labels)))
    ax.stackplot(x, stacks, labels=[f"cohort {c}" for c in labels], colors=colors, alpha=0.55)
    ax.plot(x, summary["new"], color="tab:blue", marker="o", label="newly active vs base")
    ax.plot(x, summary["maintained"], color="tab:red", ls="--", marker="s", label="base heads maintained")
    ax.set_xticks(x)
    ax.set_xticklabels(labels, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("attention heads in the circuit")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    ax.set_title(title)
    if curve is not None:
        ax2 = axes[0, 1]
        ax2.plot(curve[0], curve[1], marker="o", ms=3, color="tab:green")
        ax2.set_xlabel("GRPO step")
        ax2.set_ylabel(curve_label)
        ax2.grid(alpha=0.3)
        ax2.set_title(curve_label)
    return finish(fig, None, title, caption)


def circuit_drawing(nx_graph, n_layers: int, n_heads: int, title: str, caption: str, highlight=None):
    """A circuit as a layered drawing: x = layer (input left, logits right), y = head index (MLPs on top); arc
    width ∝ |score|, colour = sign (blue +, red −). `highlight`: head names (a{l}.h{h}) drawn in orange. Positions
    are fixed by the layout, so the drawing is deterministic."""
    pos = {}
    for n in nx_graph.nodes:
        if n == "input":
            pos[n] = (-1.0, (n_heads - 1) / 2)
        elif n == "logits":
            pos[n] = (float(n_layers), (n_heads - 1) / 2)
        elif n.startswith("m"):
            pos[n] = (int(n[1:]) + 0.45, n_heads + 0.5)
        else:
            layer, head = n[1:].split(".h")
            pos[n] = (float(layer), float(head))
    fig, ax = plt.subplots(figsize=(9, 5))
    arcs = list(nx_graph.edges(data=True))
    w = np.array([abs(d["score"]) for _, _, d in arcs]) if arcs else np.zeros(0)
    wmax = float(w.max()) if len(w) and w.max() > 0 else 1.0
    for (u, v, d), wi in zip(arcs, w):
        (x0, y0), (x1, y1) = pos[u], pos[v]
        ax.annotate("", xy=(x1, y1), xytext=(x0, y0),
                    arrowprops=dict(arrowstyle="-", color="tab:blue" if d["score"] > 0 else "tab:red",
                                    lw=0.3 + 2.5 * wi / wmax, alpha=0.25 + 0.6 * wi / wmax,
                                    connectionstyle="arc3,rad=0.08"))
    hl = set(highlight or ())
    for n, (x, y) in pos.items():
        kind = "io" if n in ("input", "logits") else ("mlp" if n.startswith("m") else "head")
        color = "tab:orange" if n in hl else {"io": "black", "mlp": "tab:gray", "head": "tab:cyan"}[kind]
        ax.scatter([x], [y], s=160 if kind == "io" else 90, color=color, zorder=3,
                   marker="s" if kind == "mlp" else "o", edgecolors="k", linewidths=0.5)
        if kind != "head":
            ax.text(x, y + 0.45, n, ha="center", fontsize=7)
    ax.set_xticks(range(n_layers))
    ax.set_yticks(range(n_heads))
    ax.set_xlabel("layer")
    ax.set_ylabel("head (MLPs on top)")
    ax.set_xlim(-1.5, n_layers + 0.5)
    ax.set_ylim(-1, n_heads + 1.3)
    ax.grid(alpha=0.15)
    return finish(fig, ax, title, caption)


# ----------------------------------------------------------------------------------------------- chapter 06
def delta_heatmap(values: np.ndarray, rows: Sequence[str], cols: Sequence[str], title: str, caption: str,
                  marks: np.ndarray | None = None, cbar_label: str = "Δ pass@1 vs baseline"):
    """Conditions × (task, mode) changes on a diverging scale centred at 0, each cell annotated; `marks` [rows,
    cols] bool: cells whose change exceeds its noise (bold, with a ▲/▼)."""
    v = np.asarray(values, dtype=float)
    lim = float(np.nanmax(np.abs(v))) if np.isfinite(v).any() and np.nanmax(np.abs(v)) > 0 else 1.0
    fig, ax = plt.subplots(figsize=(1.25 * len(cols) + 3.2, 0.32 * len(rows) + 1.6))
    im = ax.imshow(v, cmap="RdBu", vmin=-lim, vmax=lim, aspect="auto")
    for i in range(v.shape[0]):
        for j in range(v.shape[1]):
            if np.isfinite(v[i, j]):
                real = marks is not None and bool(marks[i, j])
                arrow = ("▲" if v[i, j] > 0 else "▼") if real else ""
                ax.text(j, i, f"{v[i, j]:+.2f}{arrow}", ha="center", va="center", fontsize=7,
                        fontweight="bold" if real else "normal")
    ax.set_xticks(range(len(cols)), cols, rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(len(rows)), rows, fontsize=8)
    fig.colorbar(im, ax=ax, label=cbar_label, shrink=0.8)
    return finish(fig, ax, title, caption)


def coverage_curves(cov, title: str, caption: str):
    """Fig. 5 (paper 001): pass@k (left) and success@k (right) against k, one line per condition (a tidy frame
    with columns condition, k, pass_at_k, success_at_k, as `support.interventions.coverage` returns)."""
    fig, axes = plt.subplots(1, 2, figsize=(9.5, 3.6), sharey=True)
    for name, df in cov.groupby("condition", sort=False):
        for ax, col in zip(axes, ("pass_at_k", "success_at_k")):
            ax.plot(df.k, df[col], marker="o", ms=3, label=name)
    for ax, label in zip(axes, ("pass@k", "success@k")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("k (samples)")
        ax.set_title(label)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("share of problems")
    axes[1].legend(fontsize=8)
    fig.suptitle(title)
    return finish(fig, None, title, caption)


def overlap_heatmap(jaccard: np.ndarray, names: Sequence[str], title: str, caption: str,
                    q: np.ndarray | None = None, null: np.ndarray | None = None):
    """Pairwise Jaccard overlap of head sets; off-diagonal cells show J (and the null mean below it when given),
    with * for q < 0.05 and ** for q < 0.01 (Benjamini-Hochberg over the pairs)."""
    J = np.asarray(jaccard, dtype=float)
    n = len(names)
    fig, ax = plt.subplots(figsize=(0.8 * n + 2.6, 0.7 * n + 1.4))
    im = ax.imshow(J, cmap="Purples", vmin=0, vmax=1)
    for i in range(n):
        for j in range(n):
            if i == j:
                continue
            qq = q[i, j] if q is not None and np.isfinite(q[i, j]) else 1.0
            star = "**" if qq < 0.01 else "*" if qq < 0.05 else ""
            sub = f"\n({null[i, j]:.2f})" if null is not None and np.isfinite(null[i, j]) else ""
            ax.text(j, i, f"{J[i, j]:.2f}{star}{sub}", ha="center", va="center", fontsize=7,
                    color="white" if J[i, j] > 0.6 else "black")
    ax.set_xticks(range(n), names, rotation=35, ha="right")
    ax.set_yticks(range(n), names)
    fig.colorbar(im, ax=ax, label="Jaccard |A∩B| / |A∪B|", shrink=0.8)
    return finish(fig, ax, title, caption)


def grouped_points(groups: dict, title: str, caption: str, ylabel: str, ref: float | None = None,
                   ref_label: str = ""):
    """One column of points per group (every member shown, the group mean as a black bar); `ref` is drawn as a
    dotted horizontal line (e.g. the chance level)."""
    rng = np.random.default_rng(SEED)
    fig, ax = plt.subplots(figsize=(0.9 * len(groups) + 2.4, 3.6))
    if ref is not None:
        ax.axhline(ref, color="0.4", lw=1, ls=":", label=ref_label or None)
    for i, (name, vals) in enumerate(groups.items()):
        v = np.asarray(vals, dtype=float)
        ax.scatter(i + rng.uniform(-0.15, 0.15, len(v)), v, s=18, alpha=0.8, zorder=3)
        if len(v):
            ax.hlines(v.mean(), i - 0.3, i + 0.3, color="k", lw=2, zorder=4)
    ax.set_xticks(range(len(groups)), list(groups), rotation=25, ha="right")
    ax.set_ylabel(ylabel)
    if ref is not None and ref_label:
        ax.legend(fontsize=8, loc="best")
    ax.grid(alpha=0.2, axis="y")
    return finish(fig, ax, title, caption)


# ------------------------------------------------------------------------------- the book: numbered figures, tables
#: Output-metadata key of a figure's ordinary display (and of its caption's) beside its glued copy. Jupyter and Colab
#: show these; the runner drops them from the executed chapters the book is built from (`support.book.tidy_executed`),
#: where the glued copy appears instead, in a numbered `{glue:figure}`.
GLUED_DISPLAY = "rh_glued_display"
#: MyST-NB's glue key of a figure's caption (Markdown): `<name>_caption`.
CAPTION_SUFFIX = "_caption"


def _glue():
    """MyST-NB's `glue` when it can work here (MyST-NB installed: the `book` extra; an IPython kernel running),
    else None (a plain Python process, or Colab without the book extra: nothing to glue into)."""
    try:
        from IPython import get_ipython
        from myst_nb import glue
    except ImportError:
        return None
    return glue if get_ipython() is not None else None


def publish(fig, name: str, run_dir: Path | str | None = None) -> None:
    """Show a figure so that the book can number it and the text can refer to it.

    Saves it like `save` when a run directory is given; glues it (MyST-NB, `display=False`) under `name` and its
    caption, as Markdown, under `name + "_caption"`; and displays it with its caption as `show` does, tagged
    `GLUED_DISPLAY` (Jupyter and Colab show that; the book shows the glued copy). The next Markdown cell places it:

        ```{glue:figure} 00_training_curve
        :name: fig-00-training-curve

        {glue:md}`00_training_curve_caption`
        ```

    and the text refers to it as {numref}`fig-00-training-curve` ("Fig. 1"). Without MyST-NB or outside an IPython
    kernel this is `show(fig, run_dir, name)`."""
    glue = _glue()
    if glue is None:
        show(fig, run_dir, name)
        return
    from IPython.display import Markdown, display

    if run_dir is not None:
        save(fig, run_dir, name)
    cap = getattr(fig, "_rh_caption", "")
    glue(name, fig, display=False)
    glue(name + CAPTION_SUFFIX, Markdown(cap), display=False)
    display(fig, metadata={GLUED_DISPLAY: name})
    if cap:
        display({"text/plain": f"Figure: {cap}", "text/markdown": f"*Figure:* {cap}"}, raw=True,
                metadata={GLUED_DISPLAY: name})
    plt.close(fig)


def publish_note(name: str, text: str) -> None:
    """Glue a note in place of a figure a run does not make (e.g. the organism's training curve, for a real model),
    so that the chapter's `{glue:figure}` of `name` still has something to show; prints the note as well."""
    print(text)
    glue = _glue()
    if glue is not None:
        from IPython.display import Markdown

        glue(name, Markdown(f"*{text}*"), display=False)
        glue(name + CAPTION_SUFFIX, Markdown("(not made in this run)"), display=False)


def _significant(v, digits: int = 3) -> str:
    """A number rounded to `digits` significant places, without an exponent between 1e-3 and 1e6; anything else as
    text (an integer stays as it is)."""
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (float, np.floating)):
        return str(v)
    if not np.isfinite(v):
        return str(v)
    if v == 0:
        return "0"
    mag = int(np.floor(np.log10(abs(v))))
    if mag < -3 or mag >= 6:
        return f"{v:.{digits - 1}e}"
    decimals = digits - 1 - mag
    r = round(float(v), decimals)
    if abs(r) >= 10 ** (mag + 1):  # rounding carried into the next power of ten (0.9996 -> 1.00)
        decimals -= 1
    return f"{r:.{max(decimals, 0)}f}"


def table(df, caption: str = "", digits: int = 3):
    """A frame as the book shows it: every float rounded to `digits` significant places (NaN as –), the caption
    above it, HTML special characters escaped, and a plain 0..n-1 index hidden. Returns a pandas Styler (display it,
    or end a cell with it); the frame itself is untouched, so `ch.table` keeps saving the raw numbers."""
    import pandas as pd

    st = df.style.format(lambda v: _significant(v, digits), na_rep="–", escape="html")
    if isinstance(df.index, pd.RangeIndex) and df.index.start == 0 and df.index.step == 1:
        st = st.hide(axis="index")
    if caption:
        import html

        st = st.set_caption(html.escape(caption))
    return st
