"""Read a sweep's results dataset and name its columns.

    RESULTS/method=<method>/subject=<subject>/part-<trial id>.parquet     (one row per trial)

Files may disagree on their columns (a failed row has no `seconds.*`, `uri.*` or `metric.*`; metrics
land later than the rest), so the schema is the union of every file's schema, not the first file's.
Reads Parquet only: nothing here imports db3d.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

PARTITIONS = pa.schema([("method", pa.string()), ("subject", pa.string())])

LOWER_IS_BETTER = frozenset({"janus", "clip_rank", "toy.janus", "toy.retrieval_rank"})
"""Metrics where smaller is better; every other metric is higher-is-better."""

NOT_METRICS = frozenset({"toy.retrieval_candidates"})
"""`metric.*` columns that are counts, not scores (how many candidates a rank was taken among)."""

NAMESPACES = frozenset({"toy"})
"""metric.<namespace>.<name>[.<subset>]: ToyWorld's ground-truth scores (metric.toy.psnr.all)."""

PAPER_METRICS = ("r_precision", "dino", "clip_i", "clip_t")
"""The paper's table: CLIP R-precision (DreamFusion) and DreamBooth's DINO / CLIP-I / CLIP-T."""

METRIC_LABELS = {"r_precision": "R-precision", "clip_rank": "CLIP rank", "clip_i": "CLIP-I", "clip_t": "CLIP-T",
                 "dino": "DINO", "janus": "Janus", "toy.psnr": "toy PSNR (dB)", "toy.ssim": "toy SSIM",
                 "toy.janus": "toy Janus", "toy.retrieval_rank": "toy retrieval rank"}

NOT_AXES = frozenset({
    "config.subject", "config.data_root", "config.class_noun", "config.prompt", "config.out", "config.cache_dir",
    "config.method.name", "config.seed", "config.backbone.seed",
})
"""Config columns that vary between trials but are identity or replicates, not swept hyperparameters."""


@dataclass(frozen=True)
class MetricColumn:
    """`metric.<metric>.<model>.<render>`, e.g. metric.r_precision.ViT-B-32.color."""

    column: str
    metric: str
    model: str
    render: str

    @property
    def lower_is_better(self) -> bool:
        return self.metric in LOWER_IS_BETTER

    @property
    def label(self) -> str:
        parts = [METRIC_LABELS.get(self.metric, self.metric), self.model, self.render]
        return " ".join(p for p in parts if p)


def parse_metric_column(column: str) -> MetricColumn:
    """Split a metric column; a model name may itself contain dots (the render is the last part).
    ToyWorld's metric.toy.<name>[.<subset>] has no model: metric toy.<name>, render the subset."""
    parts = column.removeprefix("metric.").split(".")
    if parts[0] in NAMESPACES and len(parts) >= 2:
        return MetricColumn(column, f"{parts[0]}.{parts[1]}", "", ".".join(parts[2:]))
    if len(parts) >= 3:
        return MetricColumn(column, parts[0], ".".join(parts[1:-1]), parts[-1])
    return MetricColumn(column, parts[0], parts[1] if len(parts) == 2 else "", "")


def _files(results: Path) -> list[Path]:
    """The dataset's files, `method=*/subject=*/*.parquet`, skipping names starting with '.' or '_'
    (in-progress writes, as pyarrow does)."""
    return [f for f in sorted(results.glob("method=*/subject=*/*.parquet"))
            if not any(p.startswith((".", "_")) for p in f.relative_to(results).parts)]


def results_folder(path: Path) -> Path:
    """`path`, or `path/results` when given a sweep's folder (SWEEP_OUT) rather than its dataset."""
    path = Path(path)
    if not any(path.glob("method=*")) and (path / "results").is_dir():
        return path / "results"
    return path


def load_results(results: Path) -> pd.DataFrame:
    """Every trial row of the dataset under `results` (an empty frame when nothing has finished).

    Adds `subject` as the subject's real name (`subject_name` when the producer wrote it; the
    partition value is a filesystem-safe version of it) and makes metric columns float.
    """
    results = Path(results)
    files = _files(results)
    if not files:
        return _tidy(pd.DataFrame())
    part = ds.partitioning(PARTITIONS, flavor="hive")
    schemas = [pq.read_schema(f) for f in files]
    try:
        fields = [f for f in PARTITIONS if all(f.name not in s.names for s in schemas)]
        schema = pa.unify_schemas([pa.schema(fields)] + schemas, promote_options="permissive")
        table = ds.dataset([str(f) for f in files], format="parquet", partitioning=part, schema=schema,
                           partition_base_dir=str(results)).to_table()
        df = table.to_pandas()
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        # columns whose types cannot be unified (e.g. a number in one file, a string in another)
        frames = [ds.dataset(str(f), format="parquet").to_table().to_pandas().assign(
                  **_partition_values(f.relative_to(results))) for f in files]
        df = pd.concat(frames, ignore_index=True, sort=False)
    return _tidy(df)


def _partition_values(rel: Path) -> dict:
    values = {}
    for p in rel.parts[:-1]:
        if "=" in p:
            k, v = p.split("=", 1)
            values[k] = v
    return values


def _tidy(df: pd.DataFrame) -> pd.DataFrame:
    df = df.copy()
    if "subject_name" in df.columns:
        name = df["subject_name"].astype("string")
        df["subject"] = name.where(name.notna() & (name != ""), df.get("subject")) if "subject" in df else name
    for col in ("method", "subject", "prompt", "status", "error", "trial_id"):
        if col not in df.columns:
            df[col] = "ok" if col == "status" else ""
        df[col] = df[col].astype("string").fillna("")
    for col in metric_columns(df):
        df[col] = pd.to_numeric(df[col], errors="coerce").astype(float)
    return df.reset_index(drop=True)


def ok_rows(df: pd.DataFrame) -> pd.DataFrame:
    return df[df["status"] == "ok"]


def failed_rows(df: pd.DataFrame) -> pd.DataFrame:
    return df[df["status"] != "ok"]


def metric_columns(df: pd.DataFrame) -> list[str]:
    """`metric.*` columns, in a stable order: the paper's metrics first, then by name."""
    cols = [c for c in df.columns if isinstance(c, str) and c.startswith("metric.")
            and parse_metric_column(c).metric not in NOT_METRICS]
    order = {m: i for i, m in enumerate(("toy.psnr", "toy.ssim") + PAPER_METRICS + ("clip_rank", "janus"))}

    def key(c: str):
        m = parse_metric_column(c)
        return order.get(m.metric, len(order)), m.metric, m.model, m.render != "color", m.render

    return sorted(cols, key=key)


MAIN_RENDERS = ("color", "all", "")
"""The views a main metric reads: colour renders (CLIP / DINO), every view (ToyWorld), or the metric's only one."""


def main_metrics(df: pd.DataFrame, limit: int = 6) -> list[str]:
    """The headline metric columns with values, ToyWorld's first, colour / all-view ones only."""
    cols = [c for c in metric_columns(df) if parse_metric_column(c).render in MAIN_RENDERS and df[c].notna().any()]
    return cols[:limit]


def main_metric(df: pd.DataFrame) -> str | None:
    """The one quality metric a report leads with: ToyWorld PSNR, else CLIP R-precision (colour), else the first."""
    cols = [c for c in metric_columns(df) if df[c].notna().any()]
    for want in ("metric.toy.psnr.all",):
        if want in cols:
            return want
    rp = [c for c in cols if c.startswith("metric.r_precision.") and c.endswith(".color")]
    return rp[0] if rp else (cols[0] if cols else None)


def swept_axes(ok: pd.DataFrame) -> list[str]:
    """`config.*` columns that take more than one value in these rows (identity/seed columns aside)."""
    axes = []
    for col in ok.columns:
        if not (isinstance(col, str) and col.startswith("config.")) or col in NOT_AXES:
            continue
        values = ok[col].dropna()
        if values.astype(str).nunique() > 1:
            axes.append(col)
    return sorted(axes)


def is_numeric_axis(values: pd.Series) -> bool:
    """True for numbers and booleans (plotted against), False for strings (grouped only)."""
    v = values.dropna()
    if pd.api.types.is_bool_dtype(v) or pd.api.types.is_numeric_dtype(v):
        return True
    return len(v) > 0 and pd.to_numeric(v, errors="coerce").notna().all()


def random_weight_rows(ok: pd.DataFrame) -> int:
    """How many ok rows carry metrics computed with random weights (`metrics.weights*` == "random")."""
    cols = [c for c in ok.columns if isinstance(c, str) and c.startswith("metrics.weights")]
    if not cols:
        return 0
    flags = np.zeros(len(ok), dtype=bool)
    for c in cols:
        flags |= ok[c].astype("string").str.strip().str.lower().eq("random").fillna(False).to_numpy()
    return int(flags.sum())


def weights_label(rows: pd.DataFrame) -> str:
    """"random", "pretrained" (or whatever single value the rows hold), "mixed", or "" without a column."""
    if "metrics.weights" not in rows.columns:
        return ""
    values = sorted(set(rows["metrics.weights"].dropna().astype(str)))
    return values[0] if len(values) == 1 else ("mixed" if values else "")
