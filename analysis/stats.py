"""Statistics over trials, as pure functions: bootstrap confidence intervals, axis levels, best configs.

A trial is the unit of resampling: `bootstrap_ci` draws trials with replacement, so a CI says how
much the mean would move with a different draw of subjects x prompts x seeds from the same sweep.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

N_BOOT = 2000
"""Bootstrap resamples per interval."""
SEED = 0
"""Bootstrap seed: the same data always give the same interval."""
MAX_LEVELS = 12
"""An axis with more distinct values than this (random search) is binned into quantile bins."""
N_BINS = 5


def wilson_interval(successes: float, n: float, level: float = 0.95) -> tuple[float, float]:
    """Wilson score `level` interval of a binomial proportion (k of n); (nan, nan) for n = 0.

    Whole counts go to scipy (`binomtest(k, n).proportion_ci(method="wilson")`, exact ends: 0 for
    no successes, 1 for all). scipy takes whole counts only, and a study tally with ties counted
    as half a win has halves: a fractional count uses the same closed form directly.
    """
    if n <= 0:
        return math.nan, math.nan
    from scipy.stats import binomtest, norm  # noqa: PLC0415  (heavy import, only when used)

    if float(successes).is_integer() and float(n).is_integer():
        ci = binomtest(int(successes), int(n)).proportion_ci(confidence_level=level, method="wilson")
        return float(ci.low), float(ci.high)
    # the closed form: centre (p + z^2/2n) / (1 + z^2/n), half-width z sqrt(p(1-p)/n + z^2/4n^2) / (1 + z^2/n)
    z = float(norm.ppf(0.5 + level / 2))
    p = successes / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def bootstrap_ci(values, n: int = N_BOOT, seed: int = SEED, level: float = 0.95) -> tuple[float, float, float]:
    """(mean, lo, hi): the mean of `values` and its percentile bootstrap `level` interval
    (scipy.stats.bootstrap, method="percentile", `n` resamples from numpy's generator seeded `seed`).

    Non-finite values are dropped. One value gives (v, v, v); none gives (nan, nan, nan).
    """
    x = np.asarray(pd.to_numeric(pd.Series(values, dtype=object), errors="coerce"), dtype=float)
    x = x[np.isfinite(x)]
    if x.size == 0:
        return math.nan, math.nan, math.nan
    mean = float(x.mean())
    if x.size == 1 or n <= 0:
        return mean, mean, mean
    from scipy.stats import bootstrap  # noqa: PLC0415  (heavy import, only when used)

    batch = max(1, 2_000_000 // x.size)  # resamples per batch: bounded memory for large sweeps
    res = bootstrap((x,), np.mean, n_resamples=n, batch=batch, vectorized=True, confidence_level=level,
                    method="percentile", rng=np.random.default_rng(seed))
    return mean, float(res.confidence_interval.low), float(res.confidence_interval.high)


def summarize(values, n: int = N_BOOT, seed: int = SEED) -> dict:
    """{"n", "mean", "ci_lo", "ci_hi"} over the finite values."""
    x = pd.to_numeric(pd.Series(values, dtype=object), errors="coerce").astype(float)
    mean, lo, hi = bootstrap_ci(x, n, seed)
    return {"n": int(np.isfinite(x).sum()), "mean": mean, "ci_lo": lo, "ci_hi": hi}


def fmt(x, digits: int = 3) -> str:
    """A number for a table: 3 decimals, '' for missing, %g for very large or small magnitudes."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return ""
    if isinstance(x, (bool, np.bool_)):
        return str(bool(x))
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    if isinstance(x, (float, np.floating)):
        ax = abs(float(x))
        return f"{x:.{digits}g}" if ax and (ax >= 1e4 or ax < 10 ** -digits) else f"{x:.{digits}f}"
    return str(x)


def fmt_ci(mean: float, lo: float, hi: float) -> str:
    """'0.512 [0.401, 0.623]', or '' when there is no value."""
    if not math.isfinite(mean):
        return ""
    return f"{fmt(mean)} [{fmt(lo)}, {fmt(hi)}]"


def axis_levels(values: pd.Series, max_levels: int = MAX_LEVELS, n_bins: int = N_BINS) -> tuple[pd.Series, list[str]]:
    """(label per row, ordered labels) of a swept axis.

    Few distinct values (a grid): one level per value, in numeric order when numeric. Many (random
    search): quantile bins labelled by their range, so each level pools several trials.
    """
    v = values
    numeric = pd.to_numeric(v, errors="coerce") if not pd.api.types.is_bool_dtype(v) else v.astype(float)
    is_num = numeric.notna().sum() == v.notna().sum() and v.notna().any()
    distinct = sorted(numeric.dropna().unique()) if is_num else sorted(v.dropna().astype(str).unique())
    if is_num and len(distinct) > max_levels:
        bins = pd.qcut(numeric, q=n_bins, duplicates="drop")
        order = [f"{fmt(iv.left)}-{fmt(iv.right)}" for iv in bins.cat.categories]
        labels = bins.cat.rename_categories(order).astype(object)
        return pd.Series(labels, index=v.index).where(numeric.notna(), None), order
    if is_num:
        names = {d: _value_label(d, v) for d in distinct}
        return numeric.map(names).where(numeric.notna(), None), [names[d] for d in distinct]
    return v.astype(object).where(v.notna(), None).map(lambda s: None if s is None else str(s)), distinct


def _value_label(d: float, original: pd.Series) -> str:
    if pd.api.types.is_bool_dtype(original):
        return str(bool(d))
    return str(int(d)) if float(d).is_integer() and abs(d) < 1e15 else f"{d:.6g}"


def config_label(values: dict) -> str:
    """'method.lambda_recon=10, pseudo.t_pseudo=0.6' from {config column: value}."""
    if not values:
        return "(no swept axes)"
    return ", ".join(f"{k.removeprefix('config.')}={_short(v)}" for k, v in values.items())


def _short(v) -> str:
    return f"{v:.6g}" if isinstance(v, float) else str(v)


def best_config(rows: pd.DataFrame, metric: str, axes: list[str], lower_is_better: bool,
                n: int = N_BOOT, seed: int = SEED) -> dict | None:
    """The joint setting of `axes` whose trials have the best mean `metric`.

    Returns {"config": label, "values": {axis: value}, "n", "mean", "ci_lo", "ci_hi", "margin", "n_configs"}
    (margin: how far the best mean is ahead of the runner-up's, in the good direction; nan with one
    setting), or None without a finite value. Ties go to the setting with more trials.
    """
    rows = rows[np.isfinite(pd.to_numeric(rows[metric], errors="coerce").astype(float))]
    if rows.empty:
        return None
    if not axes:
        groups = [((), rows)]
    else:
        keys = rows[axes].astype(object).where(rows[axes].notna(), None)
        groups = list(rows.groupby([keys[a].map(repr) for a in axes], sort=True, dropna=False))
    stats = []
    for _, g in groups:
        m = float(pd.to_numeric(g[metric]).mean())
        stats.append((-m if lower_is_better else m, len(g), g))
    stats.sort(key=lambda s: (s[0], s[1]), reverse=True)
    top, _, g = stats[0]
    margin = top - stats[1][0] if len(stats) > 1 else math.nan
    values = {a: _plain(g[a].iloc[0]) for a in axes}
    return {"config": config_label(values), "values": values, **summarize(g[metric], n, seed), "margin": margin,
            "n_configs": len(groups)}


def best_level(rows: pd.DataFrame, metric: str, axis: str, lower_is_better: bool,
               n: int = N_BOOT, seed: int = SEED) -> dict | None:
    """The level (value or bin) of one axis with the best mean `metric`, the other axes pooled."""
    rows = rows[np.isfinite(pd.to_numeric(rows[metric], errors="coerce").astype(float))]
    if rows.empty or rows[axis].notna().sum() == 0:
        return None
    labels, order = axis_levels(rows[axis])
    means = pd.to_numeric(rows[metric]).groupby(labels).agg(["mean", "size"])
    means = means.reindex([o for o in order if o in means.index])
    signed = -means["mean"] if lower_is_better else means["mean"]
    best = max(means.index, key=lambda lab: (signed[lab], means.loc[lab, "size"]))
    return {"level": best, **summarize(rows.loc[labels == best, metric], n, seed), "n_levels": len(means)}


def _plain(v):
    """numpy scalars -> Python scalars (for CSV and labels)."""
    return v.item() if isinstance(v, np.generic) else v
