"""Result rows' cost columns (peak memory per stage) and one schema for the results dataset."""

from __future__ import annotations

import mmap

import pandas as pd
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from db3d.core.results import StageMeter, cost_totals
from db3d.distributed.sink import (
    harmonize,
    read_results,
    write_trial_row,
    write_view_rows,
)


def test_peak_memory_is_recorded_per_stage_and_positive():
    target: dict = {}
    meter = StageMeter(target)
    # the "big" stage touches 300 MiB of fresh pages (an anonymous mmap: never memory the process
    # already holds, which a long test session's heap may have free) and frees them before it ends
    block = mmap.mmap(-1, 300 * 2 ** 20)
    block.write(b"\1" * (300 * 2 ** 20))
    block.close()
    meter["big"] = 1.5
    meter["small"] = 0.5  # a stage that allocates nothing: its peak is what the process holds
    cols = meter.columns()
    assert target == {"big": 1.5, "small": 0.5} and dict(meter) == target  # times written through
    assert cols["peak_rss_mb.small"] > 0 and cols["peak_rss_mb.big"] > cols["peak_rss_mb.small"] + 250
    assert cols["peak_rss_mb.total"] == cols["peak_rss_mb.big"]
    assert "peak_cuda_mb.big" not in cols  # CUDA unused here
    meter["small"] = meter.get("small", 0.0) + 0.25  # a stage run twice (passes) keeps its larger peak
    assert target["small"] == 0.75 and meter.columns()["peak_rss_mb.small"] >= cols["peak_rss_mb.small"] * 0.5


def test_cost_totals_sum_the_stages():
    row = {"gpu_seconds.a": 2.0, "gpu_seconds.b": 3.0, "cpu_seconds.a": 4.0, "seconds.a": 4.0}
    assert cost_totals(row) == {"gpu_seconds.total": 5.0, "cpu_seconds.total": 4.0}


def _mixed(results):
    """A fusion row with seconds.nerf / key.nerf, then dreambooth3d rows with the stage columns, a
    failed row with neither, and a column that is an int in one part and a float in another."""
    base = dict(subject="dog", status="ok", error="", seed=0)
    write_trial_row(results, {**base, "method": "dreambooth_fusion", "trial_id": "a", "seconds.nerf": 3.0,
                              "key.nerf": "k1", "gpu_seconds.nerf": 0.0, "metric.x": 1})
    write_trial_row(results, {**base, "method": "dreambooth3d", "trial_id": "b", "seconds.stage1": 2.0,
                              "key.stage1": "k2", "metric.x": 0.5})
    write_trial_row(results, {**base, "method": "dreambooth3d", "trial_id": "c", "status": "failed", "error": "x",
                              "subject": "cat"})


def test_every_part_carries_every_column_for_plain_readers(tmp_path):
    results = tmp_path / "results"
    _mixed(results)
    parts = sorted(results.glob("method=*/subject=*/part-*.parquet"))
    names = set().union(*(pq.read_schema(p).names for p in parts))
    assert not all(set(pq.read_schema(p).names) == names for p in parts)  # before: each part its own columns
    schema = harmonize(results)
    assert set(schema.names) == names
    for p in parts:  # the same columns, in the same order, everywhere
        assert pq.read_schema(p).names == schema.names
    plain = pd.read_parquet(results)
    assert names <= set(plain.columns) and len(plain) == 3
    fusion = plain.set_index("trial_id").loc["a"]
    assert fusion["seconds.nerf"] == 3.0 and fusion["key.nerf"] == "k1"
    assert pd.isna(plain.set_index("trial_id").loc["b", "seconds.nerf"])  # null where a method has no stage
    assert plain["metric.x"].dtype == float  # int here, float there: promoted
    assert names <= set(ds.dataset(str(results)).schema.names)
    assert set(pq.read_schema(results / "_common_metadata").names) == names
    duckdb = pytest.importorskip("duckdb")
    rel = duckdb.sql(f"select * from read_parquet('{results}/*/*/*.parquet')")
    assert names <= set(rel.columns) and len(rel.fetchall()) == 3
    assert set(read_results(results)["trial_id"]) == {"a", "b", "c"}
    assert harmonize(results).equals(schema)  # idempotent
    assert harmonize(tmp_path / "none") is None


def test_views_dataset_is_harmonized_too(tmp_path):
    views = tmp_path / "views"
    row = {"trial_id": "t", "prompt": "p", "subject": "dog", "method": "m"}
    write_view_rows(views, row, [{"view": 0, "clip_t": 0.2}])
    write_view_rows(views, {**row, "trial_id": "u", "method": "n"}, [{"view": 0, "r_precision_hit": 1.0}])
    harmonize(views)
    assert {"clip_t", "r_precision_hit"} <= set(pd.read_parquet(views).columns)
