"""Report figures drawn with matplotlib (Agg, imported only when a figure is drawn).

    methods.png          per method, each main metric's mean with its bootstrap 95% CI (one panel
                         per metric, the trials as faint dots): every report with metrics has it
    cost__<metric>.png   the main quality metric against each trial's cost (GPU- or CPU-minutes),
                         a colour per method, the Pareto front (cheapest for its quality) as a line
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from .load import LOWER_IS_BETTER, METRIC_LABELS, ok_rows, parse_metric_column
from .stats import N_BOOT, SEED, bootstrap_ci

COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def metric_label(column: str) -> str:
    m = parse_metric_column(column)
    text = " ".join(p for p in (METRIC_LABELS.get(m.metric, m.metric), m.model, m.render) if p)
    return text + ("  (lower is better)" if m.metric in LOWER_IS_BETTER else "")


def plot_methods(df: pd.DataFrame, columns: list[str], path: Path, n_boot: int = N_BOOT, seed: int = SEED) -> Path | None:
    """One panel per metric column: per method the trials and the mean with its 95% CI; None without values."""
    ok = ok_rows(df)
    columns = [c for c in columns if c in ok.columns and ok[c].notna().any()]
    if not columns:
        return None
    plt = _pyplot()
    methods = sorted(ok["method"].unique())
    ncol = min(3, len(columns))
    nrow = math.ceil(len(columns) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.2 * ncol, 3.2 * nrow), squeeze=False)
    for ax, col in zip(axes.flat, columns):
        for i, method in enumerate(methods):
            values = pd.to_numeric(ok.loc[ok["method"] == method, col], errors="coerce").dropna().to_numpy()
            if not len(values):
                continue
            mean, lo, hi = bootstrap_ci(values, n_boot, seed)
            jitter = np.random.default_rng(i).uniform(-0.12, 0.12, len(values))
            ax.scatter(i + jitter, values, s=10, color=COLORS[i % len(COLORS)], alpha=0.35, linewidths=0)
            ax.errorbar([i], [mean], yerr=[[mean - lo], [hi - mean]], fmt="o", color=COLORS[i % len(COLORS)],
                        capsize=5, markersize=6, linewidth=2)
            ax.annotate(f"{mean:.3g} (n={len(values)})", (i, hi), textcoords="offset points", xytext=(0, 4),
                        ha="center", fontsize=7)
        ax.set_xticks(range(len(methods)), methods, rotation=15, fontsize=8)
        ax.set_xlim(-0.6, len(methods) - 0.4)
        ax.set_title(metric_label(col), fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    for ax in list(axes.flat)[len(columns):]:
        ax.axis("off")
    fig.suptitle("Per method: mean and bootstrap 95% CI over ok trials", fontsize=10)
    fig.tight_layout()
    return _save(fig, plt, path)


def plot_cost(table: pd.DataFrame, metric: str, unit: str, path: Path) -> Path | None:
    """`metric` against cost_minutes per trial (cost.cost_table), per method, the Pareto front marked."""
    rows = table[np.isfinite(table["cost_minutes"]) & np.isfinite(table[metric])]
    if rows.empty:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for i, method in enumerate(sorted(rows["method"].unique())):
        g = rows[rows["method"] == method]
        ax.scatter(g["cost_minutes"], g[metric], s=24, color=COLORS[i % len(COLORS)], label=method, alpha=0.8)
    front = rows[rows["pareto"]].sort_values("cost_minutes")
    ax.step(front["cost_minutes"], front[metric], where="post", color="black", linewidth=1, alpha=0.7)
    ax.scatter(front["cost_minutes"], front[metric], s=90, facecolors="none", edgecolors="black",
               label=f"Pareto front ({len(front)})")
    ax.set_xlabel(f"{unit} per trial")
    ax.set_ylabel(metric_label(metric))
    ax.set_title("Quality against cost per trial", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, plt, path)


def _save(fig, plt, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=100)
    plt.close(fig)
    return path
