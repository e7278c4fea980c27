"""Tables over trial rows: the paper's table per method, per-subject / per-prompt breakdowns, best configs.

Every table is a DataFrame (written as CSV, numbers unrounded) plus a display `Grid` of strings
(written as Markdown and HTML). Only ok rows enter a metric; a trial without metrics counts in the
trial columns and nowhere else.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from .load import (PAPER_METRICS, failed_rows, is_numeric_axis, metric_columns, ok_rows, parse_metric_column,
                   swept_axes, weights_label)
from .stats import N_BOOT, SEED, best_config, best_level, fmt, fmt_ci, summarize


@dataclass
class Grid:
    """A display table: header, string cells, and the cells to emphasise (the best method per column)."""

    title: str
    columns: list[str]
    rows: list[list[str]]
    best: set[tuple[int, int]] = field(default_factory=set)
    note: str = ""


# ----------------------------------------------------------------------------- per method


def method_table(df: pd.DataFrame, n_boot: int = N_BOOT, seed: int = SEED) -> pd.DataFrame:
    """Long form: one row per method x metric column with n, mean and bootstrap 95% CI over trials."""
    ok = ok_rows(df)
    out = []
    for col in metric_columns(ok):
        m = parse_metric_column(col)
        for method, g in ok.groupby("method", sort=True):
            s = summarize(g[col], n_boot, seed)
            if s["n"] == 0:
                continue
            has = g[np.isfinite(g[col].to_numpy(dtype=float))]
            out.append({"method": method, "metric": m.metric, "model": m.model, "render": m.render,
                        "better": "lower" if m.lower_is_better else "higher", **s,
                        "weights": weights_label(has), "column": col})
    cols = ["method", "metric", "model", "render", "better", "n", "mean", "ci_lo", "ci_hi", "weights", "column"]
    return pd.DataFrame(out, columns=cols)


def paper_grids(long: pd.DataFrame) -> list[Grid]:
    """Methods as rows: R-precision per CLIP model x render; DINO / CLIP-I / CLIP-T; the rest."""
    groups = [("CLIP R-precision (mean [95% CI])", ["r_precision"]),
              ("Subject and prompt fidelity: DINO / CLIP-I / CLIP-T", ["dino", "clip_i", "clip_t"]),
              ("Other metrics (CLIP rank and Janus: lower is better)",
               sorted(set(long["metric"]) - set(PAPER_METRICS), key=lambda m: (m not in ("clip_rank", "janus"), m)))]
    grids = []
    for title, metrics in groups:
        sub = long[long["metric"].isin(metrics)]
        if sub.empty:
            continue
        cols = list(dict.fromkeys(sub["column"]))  # metric_columns' order
        methods = sorted(sub["method"].unique())
        rows, best = [], set()
        for i, method in enumerate(methods):
            row = [method]
            for col in cols:
                hit = sub[(sub["method"] == method) & (sub["column"] == col)]
                row.append(fmt_ci(*hit[["mean", "ci_lo", "ci_hi"]].iloc[0]) + f" (n={hit['n'].iloc[0]})"
                           if len(hit) else "")
            rows.append(row)
        for j, col in enumerate(cols, start=1):
            c = sub[sub["column"] == col]
            if len(methods) > 1 and len(c) > 1:
                signed = -c["mean"] if c["better"].iloc[0] == "lower" else c["mean"]
                top = signed.max()
                winners = c.loc[signed >= top - 1e-9 * max(1.0, abs(top)), "method"]
                if len(winners) == 1:  # a tie is no win: nothing in bold
                    best.add((methods.index(winners.iloc[0]), j))
        grids.append(Grid(title, ["method"] + [parse_metric_column(c).label for c in cols], rows, best))
    return grids


# ----------------------------------------------------------------------------- breakdowns


def breakdown(df: pd.DataFrame, by: str) -> pd.DataFrame:
    """One row per method x `by` (subject or prompt): trial counts and each metric's mean over ok trials."""
    cols = metric_columns(df)
    out = []
    for (method, key), g in df.groupby(["method", by], sort=True, dropna=False):
        ok = ok_rows(g)
        row = {"method": method, by: key, "n_trials": len(g), "n_ok": len(ok), "n_failed": len(failed_rows(g)),
               "n_with_metrics": int(ok[cols].notna().any(axis=1).sum()) if cols else 0}
        row.update({c: float(ok[c].mean()) if ok[c].notna().any() else np.nan for c in cols})
        out.append(row)
    return pd.DataFrame(out, columns=["method", by, "n_trials", "n_ok", "n_failed", "n_with_metrics"] + cols)


def frame_grid(title: str, frame: pd.DataFrame, note: str = "") -> Grid:
    """Any frame as a display grid: metric columns get their labels, numbers 3 decimals."""
    headers = [parse_metric_column(c).label if c.startswith("metric.") else c.removeprefix("config.")
               for c in frame.columns]
    rows = [[fmt(v) if not isinstance(v, str) else v for v in r] for r in frame.itertuples(index=False)]
    return Grid(title, headers, rows, note=note)


# ----------------------------------------------------------------------------- best configurations


def best_configs(df: pd.DataFrame, n_boot: int = N_BOOT, seed: int = SEED) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(joint, per-axis) best settings of the swept `config.*` columns per metric column x method.

    joint: the setting of all swept axes together with the best mean (a grid cell; with random
    search, cells hold one trial each, so read it with its n). per-axis: for each axis alone, the
    value (or quantile bin) with the best mean, the other axes pooled. Janus and CLIP rank minimise.
    """
    ok = ok_rows(df)
    joint, marginal = [], []
    for col in metric_columns(ok):
        m = parse_metric_column(col)
        for method, g in ok.groupby("method", sort=True):
            axes = swept_axes(g)
            base = {"metric": m.metric, "model": m.model, "render": m.render, "method": method,
                    "better": "lower" if m.lower_is_better else "higher"}
            b = best_config(g, col, axes, m.lower_is_better, n_boot, seed)
            if b is None:
                continue
            joint.append({**base, "config": b["config"], "n": b["n"], "mean": b["mean"], "ci_lo": b["ci_lo"],
                          "ci_hi": b["ci_hi"], "margin": b["margin"], "n_configs": b["n_configs"], "column": col,
                          **b["values"]})
            for axis in axes:
                lv = best_level(g, col, axis, m.lower_is_better, n_boot, seed)
                if lv is not None:
                    marginal.append({**base, "axis": axis.removeprefix("config."), "best_value": lv["level"],
                                     "n": lv["n"], "mean": lv["mean"], "ci_lo": lv["ci_lo"], "ci_hi": lv["ci_hi"],
                                     "n_levels": lv["n_levels"], "column": col})
    jcols = ["metric", "model", "render", "method", "better", "config", "n", "mean", "ci_lo", "ci_hi", "margin",
             "n_configs", "column"]
    mcols = ["metric", "model", "render", "method", "better", "axis", "best_value", "n", "mean", "ci_lo", "ci_hi",
             "n_levels", "column"]
    jf = pd.DataFrame(joint)
    extra = [c for c in jf.columns if c not in jcols]
    return jf.reindex(columns=jcols + sorted(extra)), pd.DataFrame(marginal, columns=mcols)


def best_grid(joint: pd.DataFrame) -> Grid:
    rows = [[r.metric, r.model, r.render, r.method, r.better, r.config, fmt_ci(r.mean, r.ci_lo, r.ci_hi), str(r.n),
             fmt(r.margin), str(r.n_configs)] for r in joint.itertuples(index=False)]
    return Grid("Best configuration per metric (all swept axes together)",
                ["metric", "model", "render", "method", "better", "configuration", "mean [95% CI]", "n",
                 "margin over next", "configs"], rows,
                note="margin: how far the best mean is ahead of the next configuration's (0: a tie; "
                     "empty: one configuration). With random search each configuration is one trial: read n.")


def best_level_grid(marginal: pd.DataFrame) -> Grid:
    rows = [[r.metric, r.model, r.render, r.method, r.axis, str(r.best_value), fmt_ci(r.mean, r.ci_lo, r.ci_hi),
             str(r.n), str(r.n_levels)] for r in marginal.itertuples(index=False)]
    return Grid("Best value per swept axis (other axes pooled; many-valued axes in quantile bins)",
                ["metric", "model", "render", "method", "axis", "best value", "mean [95% CI]", "n", "levels"], rows)


# ----------------------------------------------------------------------------- trials


def trial_counts(df: pd.DataFrame) -> pd.DataFrame:
    """Per method (and 'all'): trials, ok, failed, ok without metrics."""
    cols = metric_columns(df)
    out = []
    for method, g in list(df.groupby("method", sort=True)) + [("all", df)]:
        ok = ok_rows(g)
        no_metrics = int((~ok[cols].notna().any(axis=1)).sum()) if cols else len(ok)
        out.append({"method": method, "trials": len(g), "ok": len(ok), "failed": len(failed_rows(g)),
                    "ok_without_metrics": no_metrics})
    return pd.DataFrame(out, columns=["method", "trials", "ok", "failed", "ok_without_metrics"])


def failed_table(df: pd.DataFrame) -> pd.DataFrame:
    cols = ["trial_id", "method", "subject", "prompt", "status", "error"]
    return failed_rows(df).reindex(columns=cols).fillna("").sort_values(["method", "subject", "trial_id"])


def numeric_axes(df: pd.DataFrame) -> list[str]:
    ok = ok_rows(df)
    return [a for a in swept_axes(ok) if is_numeric_axis(ok[a])]


# ----------------------------------------------------------------------------- Markdown


def _md_cell(s: str) -> str:
    return str(s).replace("\\", "\\\\").replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def grid_markdown(grid: Grid) -> str:
    lines = [f"### {_md_cell(grid.title)}", ""]
    if grid.note:
        lines += [_md_cell(grid.note), ""]
    if not grid.rows:
        return "\n".join(lines + ["(no rows)", ""])
    lines.append("| " + " | ".join(_md_cell(c) for c in grid.columns) + " |")
    lines.append("|" + "|".join("---" for _ in grid.columns) + "|")
    for i, row in enumerate(grid.rows):
        cells = [f"**{_md_cell(c)}**" if (i, j) in grid.best and c else _md_cell(c) for j, c in enumerate(row)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines + [""])


def markdown_doc(title: str, grids: list[Grid], warning: str = "") -> str:
    head = [f"# {title}", ""] + ([f"> **WARNING:** {_md_cell(warning)}", ""] if warning else [])
    return "\n".join(head + [grid_markdown(g) for g in grids]) if grids else "\n".join(head + ["(no data)", ""])
