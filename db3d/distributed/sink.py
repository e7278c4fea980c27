"""Sweep results: a hive-partitioned Parquet dataset under OUT/results/.

    OUT/results/method=dreambooth3d/subject=dog/part-<trial id>.parquet

One file per trial, named by the trial's content id and replaced atomically (written under a
name starting with '.', which pyarrow.dataset skips, then renamed): a retried or restored trial
overwrites its own file, so the dataset holds exactly one final row per trial.

Trials of different methods write different columns (fusion's seconds.nerf, dreambooth3d's
seconds.stage1, ...), and readers without options (pandas.read_parquet, pyarrow.dataset, DuckDB)
take the schema of one file. So when a sweep ends, `harmonize` rewrites every part to the union
of all parts' columns (nulls where a trial has no such column, the same column order everywhere)
and writes that schema to RESULTS/_common_metadata.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from db3d.core.results import write_rows, write_table_atomic

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


def _parts(fs, root: str) -> list[str]:
    """The dataset's part files (method=*/subject=*/part-*.parquet; in-progress '.' names skipped)."""
    if fs.get_file_info(root).type == pafs.FileType.NotFound:
        return []
    infos = fs.get_file_info(pafs.FileSelector(root, recursive=True))
    return sorted(i.path for i in infos if i.type == pafs.FileType.File and i.base_name.startswith("part-")
                  and i.base_name.endswith(".parquet") and "/method=" in i.path and "/subject=" in i.path)


def union_schema(schemas: list[pa.Schema]) -> pa.Schema:
    """Every column of every schema, in first-seen order; types promoted (null -> any, int -> float);
    a column whose types cannot be unified (a number here, a string there) becomes a string."""
    try:
        return pa.unify_schemas(schemas, promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        fields: dict[str, pa.Field] = {}
        for schema in schemas:
            for f in schema:
                if f.name not in fields or pa.types.is_null(fields[f.name].type):
                    fields[f.name] = f
                elif not pa.types.is_null(f.type) and f.type != fields[f.name].type:
                    try:
                        fields[f.name] = pa.unify_schemas([pa.schema([fields[f.name]]), pa.schema([f])],
                                                          promote_options="permissive").field(0)
                    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
                        fields[f.name] = pa.field(f.name, pa.string())
        return pa.schema(list(fields.values()))


def _conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """`table` with exactly `schema`'s columns, in its order (missing ones all null)."""
    columns = []
    for f in schema:
        if f.name not in table.column_names:
            columns.append(pa.nulls(len(table), f.type))
            continue
        col = table.column(f.name)
        if col.type != f.type:
            col = col.cast(f.type) if not pa.types.is_string(f.type) else pa.array(
                [None if v is None else str(v) for v in col.to_pylist()], pa.string())
        columns.append(col)
    return pa.Table.from_arrays(columns, schema=schema)


def harmonize(results) -> pa.Schema | None:
    """Rewrite every part of the dataset at `results` (a folder or a URI) to the union schema of all
    parts and write it to `_common_metadata`; returns that schema (None for an empty dataset).
    Run when no trial is writing (the sweep's end): a part is replaced atomically, but a trial
    writing meanwhile would bring its own columns back."""
    fs, root = split(str(results)) if is_uri(str(results)) else (pafs.LocalFileSystem(), str(Path(results).resolve()))
    parts = _parts(fs, root)
    if not parts:
        return None
    schemas = [pq.read_schema(p, filesystem=fs).remove_metadata() for p in parts]
    schema = union_schema(schemas)
    for part, own in zip(parts, schemas):
        if own.equals(schema):
            continue
        table = _conform(pq.read_table(part, filesystem=fs), schema)
        if isinstance(fs, pafs.LocalFileSystem):
            write_table_atomic(table, Path(part))
        else:
            pq.write_table(table, part, filesystem=fs)  # object stores replace whole objects
    pq.write_metadata(schema, f"{root}/_common_metadata", filesystem=fs)
    return schema
