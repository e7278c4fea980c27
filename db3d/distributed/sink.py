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
from .storage import is_uri, join, split, write_table_uri


def _safe(value: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", str(value))


def trial_file(results, method: str, subject: str, trial_id: str):
    """The trial's file under a local folder (a Path) or a URI (a str)."""
    parts = (f"method={_safe(method)}", f"subject={_safe(subject)}", f"part-{trial_id}.parquet")
    return join(results, *parts) if is_uri(str(results)) else Path(results).joinpath(*parts)


def _write(rows: list[dict], target):
    return write_table_uri(rows, target) if isinstance(target, str) else write_rows(rows, target)


def write_trial_row(results, row: dict):
    """Write (or replace) the one row of a trial. `method` and `subject` live in the partition path."""
    body = {k: v for k, v in row.items() if k not in ("method", "subject")}
    body["subject_name"] = row["subject"]
    return _write([body], trial_file(results, row["method"], row["subject"], row["trial_id"]))


def write_view_rows(views_root, row: dict, views: list[dict]):
    """The trial's per-view rows (OUT/views/method=/subject=/part-<trial>.parquet), replaced whole."""
    if not views:
        return None
    rows = [{"trial_id": row["trial_id"], "prompt": row["prompt"], "subject_name": row["subject"], **v} for v in views]
    return _write(rows, trial_file(views_root, row["method"], row["subject"], row["trial_id"]))


def read_results(results) -> pd.DataFrame:
    """Every trial row (empty frame when nothing has finished); a local folder or a URI."""
    if is_uri(str(results)):
        fs, path = split(str(results))
        if fs.get_file_info(path).type == 0:  # NotFound
            return pd.DataFrame()
        return ds.dataset(path, filesystem=fs, format="parquet", partitioning="hive").to_table().to_pandas()
    results = Path(results)
    if not any(results.glob("method=*/subject=*/part-*.parquet")):
        return pd.DataFrame()
    table = ds.dataset(str(results), format="parquet", partitioning="hive").to_table()
    return table.to_pandas()
