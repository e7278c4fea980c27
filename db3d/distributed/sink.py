"""Sweep results: a hive-partitioned Parquet dataset under OUT/results/.

    OUT/results/method=dreambooth3d/subject=dog/part-<trial id>.parquet

One file per trial, named by the trial's content id and replaced atomically (written under a
name starting with '.', which pyarrow.dataset skips, then renamed): a retried or restored trial
overwrites its own file, so the dataset holds exactly one final row per trial.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pyarrow.dataset as ds

from ..results import write_rows


def _safe(value: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", str(value))


def trial_file(results: Path, method: str, subject: str, trial_id: str) -> Path:
    return Path(results) / f"method={_safe(method)}" / f"subject={_safe(subject)}" / f"part-{trial_id}.parquet"


def write_trial_row(results: Path, row: dict) -> Path:
    """Write (or replace) the one row of a trial. `method` and `subject` live in the partition path."""
    body = {k: v for k, v in row.items() if k not in ("method", "subject")}
    body["subject_name"] = row["subject"]
    return write_rows([body], trial_file(results, row["method"], row["subject"], row["trial_id"]))


def write_view_rows(views_root: Path, row: dict, views: list[dict]) -> Path | None:
    """The trial's per-view rows (OUT/views/method=/subject=/part-<trial>.parquet), replaced whole."""
    if not views:
        return None
    rows = [{"trial_id": row["trial_id"], "prompt": row["prompt"], "subject_name": row["subject"], **v} for v in views]
    return write_rows(rows, trial_file(views_root, row["method"], row["subject"], row["trial_id"]))


def read_results(results: Path) -> pd.DataFrame:
    """Every trial row (empty frame when nothing has finished)."""
    results = Path(results)
    if not any(results.glob("method=*/subject=*/part-*.parquet")):
        return pd.DataFrame()
    table = ds.dataset(str(results), format="parquet", partitioning="hive").to_table()
    return table.to_pandas()
