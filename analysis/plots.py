"""Metric-vs-swept-axis plots as PNG, drawn with matplotlib (Agg, imported only when a figure is drawn).

One figure per swept numeric axis x metric: a panel per model x render, x = the axis' levels
(values of a grid, or quantile bins of a random search, evenly spaced), y = the metric; per method
the trials as faint dots and the mean with its bootstrap 95% CI as a line with error bars.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pandas as pd

from .figures import COLORS, _pyplot, _save
from .load import LOWER_IS_BETTER, METRIC_LABELS, metric_columns, ok_rows, parse_metric_column
from .stats import N_BOOT, SEED, axis_levels, bootstrap_ci

PANEL_W, PANEL_H = 4.0, 3.0
"""Inches per panel (400 x 300 pixels at the saved 100 dpi)."""
TITLE_H, LEGEND_H = 0.45, 0.35
"""Inches above the panels for the figure's title and below them for the methods' legend."""
MAX_TICK_LABELS = 8
"""At most this many x labels per panel: with more levels, every k-th is labelled."""


def safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "plot"


def _series(rows: pd.DataFrame, col: str, labels: pd.Series, index: dict, n_boot: int, seed: int):
    """(level index per trial (T,), value per trial (T,), [(level index, mean, lo, hi)] by level)."""
    x = np.array([index[lab] for lab in labels[rows.index]], dtype=float)
    values = rows[col].to_numpy(dtype=float)
    means = sorted((index[lab], *bootstrap_ci(g[col], n_boot, seed))
                   for lab, g in rows.groupby(labels[rows.index], sort=False))
    return x, values, means


def _panel(ax, title: str, levels: list[str], series: list[dict], axis_name: str, y_name: str) -> None:
    """One panel. series: [{"color", "x" (T,), "values" (T,), "means": [(i, m, lo, hi)]}], methods with points."""
    ax.set_title(title, fontsize=9)
    ax.set_xlabel(axis_name, fontsize=9)
    ax.set_ylabel(y_name, fontsize=8)
    n = len(levels)
    if not series or not n:
        ax.text(0.5, 0.5, "no values", transform=ax.transAxes, ha="center", va="center", color="gray")
        ax.set_xticks([])
        ax.set_yticks([])
        return
    step = max(1, math.ceil(n / MAX_TICK_LABELS))
    ax.set_xticks(range(n), [lab if i % step == 0 else "" for i, lab in enumerate(levels)], fontsize=7,
                  rotation=15)
    ax.set_xlim(-0.5, n - 0.5)
    ax.tick_params(axis="y", labelsize=7)
    ax.grid(axis="y", alpha=0.3)
    k = len(series)
    for si, s in enumerate(series):
        # methods side by side at each level; the dots jittered a little within their method's slot
        dx = (si - (k - 1) / 2) * min(0.12, 0.6 / k)
        jitter = np.random.default_rng(si).uniform(-0.03, 0.03, len(s["x"]))
        ax.scatter(s["x"] + dx + jitter, s["values"], s=8, color=s["color"], alpha=0.45, linewidths=0)
        i, m, lo, hi = (np.array(v, dtype=float) for v in zip(*s["means"]))  # (L,) each
        ax.errorbar(i + dx, m, yerr=[m - lo, hi - m], fmt="o-", color=s["color"], capsize=4, markersize=5,
                    linewidth=1.5)


def plot_axis_metric(df: pd.DataFrame, axis: str, metric: str, path: Path,
                     n_boot: int = N_BOOT, seed: int = SEED) -> Path | None:
    """One figure: `metric` (every model x render column of it) against swept `axis`; None without values."""
    ok = ok_rows(df)
    cols = [c for c in metric_columns(ok) if parse_metric_column(c).metric == metric and ok[c].notna().any()]
    if not cols or ok[axis].notna().sum() == 0:
        return None
    labels, levels = axis_levels(ok[axis])
    index = {lab: i for i, lab in enumerate(levels)}
    methods = sorted(ok["method"].unique())
    axis_name, y_name = axis.removeprefix("config."), METRIC_LABELS.get(metric, metric)

    # 1. a grid of panels, room above for the title and below for the legend
    plt = _pyplot()
    ncol = min(3, len(cols))
    nrow = math.ceil(len(cols) / ncol)
    height = TITLE_H + PANEL_H * nrow + LEGEND_H
    fig, axes = plt.subplots(nrow, ncol, figsize=(PANEL_W * ncol, height), squeeze=False)

    # 2. a panel per model x render column, a colour per method (the same in every panel)
    for ax, col in zip(axes.flat, cols):
        m = parse_metric_column(col)
        series = []
        for mi, method in enumerate(methods):
            rows = ok[(ok["method"] == method) & ok[col].notna() & labels.notna()]
            if len(rows):
                x, values, means = _series(rows, col, labels, index, n_boot, seed)
                series.append({"color": COLORS[mi % len(COLORS)], "x": x, "values": values, "means": means})
        _panel(ax, " ".join(p for p in (m.model, m.render) if p), levels, series, axis_name, y_name)
    for ax in list(axes.flat)[len(cols):]:
        ax.axis("off")

    # 3. title, legend of every method, layout
    lower = metric in LOWER_IS_BETTER
    fig.suptitle(f"{y_name} vs {axis_name}" + ("  (lower is better)" if lower else ""), fontsize=11)
    handles = [plt.Line2D([], [], marker="s", linestyle="", markersize=8, color=COLORS[mi % len(COLORS)])
               for mi in range(len(methods))]
    fig.legend(handles, methods, loc="lower left", ncol=max(1, len(methods)), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, LEGEND_H / height, 1, 1))  # tight_layout leaves the suptitle its room
    return _save(fig, plt, path)


def plot_all(df: pd.DataFrame, axes: list[str], out_dir: Path, n_boot: int = N_BOOT, seed: int = SEED) -> list[dict]:
    """Every axis x metric figure under out_dir; [{"axis", "metric", "path"}]. Clears old PNGs there first."""
    out_dir = Path(out_dir)
    if out_dir.is_dir():
        for old in out_dir.glob("*.png"):
            old.unlink()
    ok = ok_rows(df)
    metrics = list(dict.fromkeys(parse_metric_column(c).metric for c in metric_columns(ok)))
    written = []
    for axis in axes:
        for metric in metrics:
            path = out_dir / f"{safe_name(axis.removeprefix('config.'))}__{safe_name(metric)}.png"
            if plot_axis_metric(df, axis, metric, path, n_boot, seed) is not None:
                written.append({"axis": axis, "metric": metric, "path": path})
    return written
