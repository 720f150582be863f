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
                   title: str = "Training curve", caption: str = ""):
    """Loss against step, with optional held-out accuracy checkpoints on a second axis."""
    fig, ax = plt.subplots(figsize=(6.5, 3.5))
    ax.plot(steps, losses, color="tab:blue", label="training loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("next-token loss (nats)")
    ax.set_yscale("log")
    if evals:
        ax2 = ax.twinx()
        keys = [k for k in evals[0] if k != "step"]
        for k in keys:
            ax2.plot([e["step"] for e in evals], [e[k] for e in evals], marker="o", label=f"{k} accuracy")
        ax2.set_ylabel("held-out accuracy")
        ax2.set_ylim(0, 1)
        ax2.legend(loc="center right", fontsize=8)
    ax.legend(loc="upper right", fontsize=8)
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


def attention_grid(patterns: np.ndarray, tokens: Sequence[str], title: str, caption: str, max_tokens: int = 40):
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
