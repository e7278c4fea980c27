"""Metric-vs-swept-axis plots as PNG, drawn with Pillow (no matplotlib in the environment).

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
from PIL import Image, ImageDraw, ImageFont

from .load import LOWER_IS_BETTER, METRIC_LABELS, metric_columns, ok_rows, parse_metric_column
from .stats import N_BOOT, SEED, axis_levels, bootstrap_ci

PANEL_W, PANEL_H = 400, 300
MARGIN_L, MARGIN_R, MARGIN_T, MARGIN_B = 62, 16, 30, 58
COLORS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
          (227, 119, 194), (127, 127, 127)]


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType sizes
        return ImageFont.load_default()


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """Round tick values covering [lo, hi]."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return [lo] if math.isfinite(lo) else []
    raw = (hi - lo) / max(1, n - 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    return [round(first + i * step, 12) for i in range(int((hi - first) / step + 1e-9) + 1)]


def _text_w(draw: ImageDraw.ImageDraw, text: str, font) -> int:
    box = draw.textbbox((0, 0), text, font=font)
    return box[2] - box[0]


def _fit(draw, text: str, font, width: int) -> str:
    if _text_w(draw, text, font) <= width:
        return text
    while text and _text_w(draw, text + "...", font) > width:
        text = text[:-1]
    return text + "..."


def _panel(img: Image.Image, x0: int, y0: int, title: str, levels: list[str], series: list[dict],
           axis_name: str, y_name: str) -> None:
    """Draw one panel at (x0, y0). series: [{"color", "points": [(level index, value)], "means": [(i, m, lo, hi)]}]."""
    draw = ImageDraw.Draw(img)
    font, small = _font(12), _font(10)
    left, top = x0 + MARGIN_L, y0 + MARGIN_T
    right, bottom = x0 + PANEL_W - MARGIN_R, y0 + PANEL_H - MARGIN_B
    draw.text((x0 + PANEL_W // 2, y0 + 8), _fit(draw, title, font, PANEL_W - 10), fill="black", font=font, anchor="mt")
    ys = [v for s in series for _, v in s["points"]] + [b for s in series for m in s["means"] for b in m[2:]]
    ys = [y for y in ys if math.isfinite(y)]
    draw.rectangle([left, top, right, bottom], outline=(90, 90, 90))
    if not ys or not levels:
        draw.text(((left + right) // 2, (top + bottom) // 2), "no values", fill="gray", font=font, anchor="mm")
        return
    lo, hi = min(ys), max(ys)
    pad = (hi - lo) * 0.08 if hi > lo else max(abs(lo) * 0.1, 0.05)
    lo, hi = lo - pad, hi + pad
    n = len(levels)

    def px(i: float) -> float:
        return left + (right - left) * (i + 0.5) / n

    def py(v: float) -> float:
        return bottom - (bottom - top) * (v - lo) / (hi - lo)

    for t in nice_ticks(lo, hi):
        y = py(t)
        draw.line([left, y, right, y], fill=(232, 232, 232))
        draw.line([left - 4, y, left, y], fill="black")
        draw.text((left - 6, y), f"{t:g}", fill="black", font=small, anchor="rm")
    step = max(1, math.ceil(n / 8))
    for i, lab in enumerate(levels):
        draw.line([px(i), bottom, px(i), bottom + 4], fill="black")
        if i % step == 0:
            draw.text((px(i), bottom + 6), _fit(draw, lab, small, int(max(40, (right - left) / n * step - 4))),
                      fill="black", font=small, anchor="mt")
    draw.text(((left + right) // 2, bottom + 24), _fit(draw, axis_name, font, PANEL_W - 20), fill="black",
              font=font, anchor="mt")
    label = Image.new("RGBA", (bottom - top, 16), (255, 255, 255, 0))
    ImageDraw.Draw(label).text(((bottom - top) // 2, 8), _fit(draw, y_name, small, bottom - top), fill="black",
                               font=small, anchor="mm")
    rot = label.rotate(90, expand=True)
    img.paste(rot, (x0 + 2, top), rot)
    k = len(series)
    for si, s in enumerate(series):
        dx = (si - (k - 1) / 2) * min(0.12, 0.6 / max(k, 1))
        faint = tuple(int(c + (255 - c) * 0.55) for c in s["color"])
        rng = np.random.default_rng(si)
        for i, v in s["points"]:
            x, y = px(i + dx + rng.uniform(-0.03, 0.03)), py(v)
            draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=faint)
        pts = [(px(i + dx), py(m)) for i, m, _, _ in s["means"]]
        if len(pts) > 1:
            draw.line(pts, fill=s["color"], width=2)
        for (i, m, a, b), (x, y) in zip(s["means"], pts):
            draw.line([x, py(a), x, py(b)], fill=s["color"], width=2)
            draw.line([x - 4, py(a), x + 4, py(a)], fill=s["color"], width=2)
            draw.line([x - 4, py(b), x + 4, py(b)], fill=s["color"], width=2)
            draw.ellipse([x - 4, y - 4, x + 4, y + 4], fill=s["color"])


def safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "plot"


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
    ncol = min(3, len(cols))
    nrow = math.ceil(len(cols) / ncol)
    legend_h = 28
    img = Image.new("RGB", (PANEL_W * ncol, 34 + PANEL_H * nrow + legend_h), "white")
    draw = ImageDraw.Draw(img)
    lower = metric in LOWER_IS_BETTER
    title = f"{METRIC_LABELS.get(metric, metric)} vs {axis.removeprefix('config.')}" + \
        ("  (lower is better)" if lower else "")
    draw.text((img.width // 2, 8), title, fill="black", font=_font(15), anchor="mt")
    for p, col in enumerate(cols):
        m = parse_metric_column(col)
        series = []
        for mi, method in enumerate(methods):
            rows = ok[(ok["method"] == method) & ok[col].notna() & labels.notna()]
            pts = [(index[lab], float(v)) for lab, v in zip(labels[rows.index], rows[col])]
            means = []
            for lab, g in rows.groupby(labels[rows.index], sort=False):
                mean, lo, hi = bootstrap_ci(g[col], n_boot, seed)
                means.append((index[lab], mean, lo, hi))
            means.sort()
            if pts:
                series.append({"color": COLORS[mi % len(COLORS)], "points": pts, "means": means})
        _panel(img, (p % ncol) * PANEL_W, 34 + (p // ncol) * PANEL_H, " ".join(x for x in (m.model, m.render) if x),
               levels, series, axis.removeprefix("config."), METRIC_LABELS.get(metric, metric))
    x, y = 12, img.height - legend_h + 6
    for mi, method in enumerate(methods):
        color = COLORS[mi % len(COLORS)]
        draw.rectangle([x, y + 3, x + 12, y + 13], fill=color)
        draw.text((x + 16, y + 8), method, fill="black", font=_font(12), anchor="lm")
        x += 16 + _text_w(draw, method, _font(12)) + 18
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format="PNG")
    return path


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
