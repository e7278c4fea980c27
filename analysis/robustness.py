"""Seed robustness: how often a setting works, and how far its result moves with the seed.

    success rule   "metric.toy.psnr.all >= 14 and metric.toy.janus <= 0.5": clauses `COLUMN OP NUMBER`
                   (OP one of >= <= > < == !=) joined by `and`; a missing or NaN value fails its clause
    success rate   per method (and per method x swept setting): successes / trials with a Wilson 95%
                   interval; ok and failed trials count (a failed trial is a failure), trials stopped
                   early by a scheduler do not (their outcome is unknown)
    spread         min / median / max of the main metric over the ok trials (seeds, subjects, prompts)

Pure functions over the trial frame; reads no files.
"""

from __future__ import annotations

import math
import operator
import re

import numpy as np
import pandas as pd

from .stats import wilson_interval

OPS = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt, "==": operator.eq, "!=": operator.ne}
CLAUSE = re.compile(r"^\s*(\S+)\s*(>=|<=|==|!=|>|<)\s*([-+0-9.eE]+|nan|inf)\s*$")
def parse_rule(rule: str) -> list[tuple[str, str, float]]:
    """[(column, op, threshold)] of a success rule; ValueError naming a clause it cannot read."""
    clauses = []
    for part in re.split(r"\s+and\s+", rule.strip()):
        m = CLAUSE.match(part)
        if not m:
            raise ValueError(f"success rule: cannot read {part!r}; write COLUMN OP NUMBER joined by 'and'")
        clauses.append((m.group(1), m.group(2), float(m.group(3))))
    return clauses


def success(df: pd.DataFrame, rule: str) -> pd.Series:
    """Per row: True where every clause of the rule holds (ok rows only; other rows are False)."""
    hit = pd.Series(df["status"].astype(str).eq("ok").to_numpy(), index=df.index)
    for col, op, value in parse_rule(rule):
        if col not in df.columns:
            raise ValueError(f"success rule: no column {col!r} in the results")
        x = pd.to_numeric(df[col], errors="coerce").astype(float)
        hit &= OPS[op](x, value).fillna(False) & x.notna()
    return hit


def default_rule(columns) -> str:
    """ToyWorld: PSNR >= 14 dB and Janus <= 0.5; CLIP: R-precision (colour) >= 0.5; else ''."""
    cols = set(columns)
    if {"metric.toy.psnr.all", "metric.toy.janus"} <= cols:
        return "metric.toy.psnr.all >= 14 and metric.toy.janus <= 0.5"
    rp = sorted(c for c in cols if c.startswith("metric.r_precision.") and c.endswith(".color"))
    return f"{rp[0]} >= 0.5" if rp else ""


def success_table(df: pd.DataFrame, rule: str, main: str | None, axes: list[str]) -> pd.DataFrame:
    """One row per method (axes=[]) or per method x setting of `axes`: n, successes, rate with its
    Wilson 95% interval, the number of seeds, and min / median / max of `main` over the ok trials."""
    counted = df[df["status"].astype(str) != "stopped"].copy()
    counted["_success"] = success(counted, rule)
    keys = ["method", *axes]
    out = []
    for key, g in counted.groupby(keys, sort=True, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        k, n = int(g["_success"].sum()), len(g)
        lo, hi = wilson_interval(k, n)
        row = dict(zip(keys, key)) | {"n": n, "successes": k, "rate": k / n if n else math.nan, "ci_lo": lo,
                                      "ci_hi": hi}
        row["seeds"] = int(g["config.seed"].nunique()) if "config.seed" in g else (
            int(g["seed"].nunique()) if "seed" in g else 1)
        values = pd.to_numeric(g.loc[g["status"] == "ok", main], errors="coerce").dropna() if main else pd.Series([])
        row.update({"main_min": float(values.min()) if len(values) else np.nan,
                    "main_median": float(values.median()) if len(values) else np.nan,
                    "main_max": float(values.max()) if len(values) else np.nan})
        out.append(row)
    cols = keys + ["n", "successes", "rate", "ci_lo", "ci_hi", "seeds", "main_min", "main_median", "main_max"]
    return pd.DataFrame(out, columns=cols)
