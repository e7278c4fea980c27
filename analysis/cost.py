"""Cost per result: what each trial cost, and which trials no other beats on both cost and quality.

    trial cost     GPU-minutes (gpu_seconds.total / 60) when any trial held a GPU, else CPU-minutes
                   (cpu_seconds.total / 60), else wall minutes (seconds.total / 60) for rows written
                   before cost columns existed. With stage reuse a trial pays only for the stages it
                   computed: its marginal cost in that sweep.
    Pareto front   trials for which no other trial is at most as costly and at least as good, and
                   strictly better on one of the two
    sweep compute  the cost of every row by method and status: trials an early-stopping scheduler
                   stopped carry what they cost until then, so two sweeps' totals (with and without
                   ASHA) compare
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def _total(df: pd.DataFrame, prefix: str) -> pd.Series:
    if f"{prefix}.total" in df.columns:
        return pd.to_numeric(df[f"{prefix}.total"], errors="coerce").astype(float)
    parts = [c for c in df.columns if isinstance(c, str) and c.startswith(prefix + ".")]
    if not parts:
        return pd.Series(np.nan, index=df.index)
    return df[parts].apply(pd.to_numeric, errors="coerce").sum(axis=1, min_count=1).astype(float)


def trial_cost(df: pd.DataFrame) -> tuple[pd.Series, str]:
    """(minutes per row, unit label: "GPU-minutes" | "CPU-minutes" | "wall minutes")."""
    gpu = _total(df, "gpu_seconds")
    if gpu.fillna(0).gt(0).any():
        return gpu / 60.0, "GPU-minutes"
    cpu = _total(df, "cpu_seconds")
    if cpu.fillna(0).gt(0).any():
        return cpu / 60.0, "CPU-minutes"
    wall = pd.to_numeric(df["seconds.total"], errors="coerce").astype(float) if "seconds.total" in df else \
        pd.Series(np.nan, index=df.index)
    return wall / 60.0, "wall minutes"


def pareto_front(cost, quality, lower_is_better: bool = False) -> np.ndarray:
    """Boolean mask of the non-dominated points (lower cost, better quality); NaN points are never on it."""
    c = np.asarray(cost, dtype=float)
    q = np.asarray(quality, dtype=float)
    q = -q if lower_is_better else q  # higher is better from here on
    ok = np.isfinite(c) & np.isfinite(q)
    front = np.zeros(len(c), dtype=bool)
    for i in np.flatnonzero(ok):
        others = ok & (c <= c[i]) & (q >= q[i]) & ((c < c[i]) | (q > q[i]))
        front[i] = not others.any()
    return front


def cost_table(ok: pd.DataFrame, metric: str, lower_is_better: bool) -> tuple[pd.DataFrame, str]:
    """Per ok trial: method, trial id, cost, the metric, peak memory, whether it is on the Pareto front."""
    minutes, unit = trial_cost(ok)
    out = pd.DataFrame({"method": ok["method"].to_numpy(), "trial_id": ok["trial_id"].to_numpy(),
                        "cost_minutes": minutes.to_numpy(), metric: pd.to_numeric(ok[metric], errors="coerce").to_numpy()})
    for col in ("peak_rss_mb.total", "peak_cuda_mb.total"):
        if col in ok.columns:
            out[col] = pd.to_numeric(ok[col], errors="coerce").to_numpy()
    out["pareto"] = pareto_front(out["cost_minutes"], out[metric], lower_is_better)
    out["cost_unit"] = unit
    return out.sort_values(["cost_minutes", "method"]).reset_index(drop=True), unit


def compute_by_status(df: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """Per method and status (ok / stopped / failed): trials, those with a recorded cost, and their
    total cost in the unit of ``trial_cost``; a row "all" per method sums them."""
    minutes, unit = trial_cost(df)
    frame = pd.DataFrame({"method": df["method"].astype(str).to_numpy(), "status": df["status"].astype(str).to_numpy(),
                          "cost": minutes.to_numpy()})
    parts = []
    for keys, group in [*frame.groupby(["method", "status"]), *((k, g.assign(status="all"))
                                                               for k, g in frame.groupby("method"))]:
        method = keys[0] if isinstance(keys, tuple) else keys
        parts.append({"method": method, "status": group["status"].iloc[0], "trials": len(group),
                      "with_cost": int(group["cost"].notna().sum()), f"total {unit}": float(group["cost"].sum())})
    order = {"ok": 0, "stopped": 1, "failed": 2, "all": 9}
    table = pd.DataFrame(parts)
    table = table.sort_values(["method", "status"], key=lambda c: c.map(order).fillna(5) if c.name == "status" else c)
    return table.reset_index(drop=True), unit
