"""Predicted-vs-measured scatter plots (PNG, matplotlib Agg, written atomically)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from search_space.io import save_png


def plot_predicted_vs_measured(measured: np.ndarray, predicted: np.ndarray, std: np.ndarray | None,
                               path: str | Path, title: str = "") -> Path:
    """Scatter of predicted against measured accuracy (percent) with +-1 std bars and y = x."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed; must precede pyplot's import
    import matplotlib.pyplot as plt

    m, p = 100 * np.asarray(measured), 100 * np.asarray(predicted)
    fig, ax = plt.subplots(figsize=(5, 5), dpi=120)
    if std is not None:
        ax.errorbar(m, p, yerr=100 * np.asarray(std), fmt="none", ecolor="tab:blue", alpha=0.15, lw=0.8)
    ax.scatter(m, p, s=8, alpha=0.6, color="tab:blue", edgecolors="none")
    lo, hi = float(min(m.min(), p.min())), float(max(m.max(), p.max()))
    pad = 0.03 * (hi - lo or 1.0)
    ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="grey", lw=1, ls="--", label="y = x")
    ax.set_xlim(lo - pad, hi + pad)
    ax.set_ylim(lo - pad, hi + pad)
    ax.set_xlabel("measured accuracy (%)")
    ax.set_ylabel("predicted accuracy (%)")
    ax.set_title(title, fontsize=9)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    return save_png(fig, path, dpi=120)
