"""A tiny mixed-method ToyWorld sweep end to end: ASHA on the quality signal, cost columns, one
schema for the results dataset, and the experiment trackers' local stores.

The sweep runs as a `db3d sweep` subprocess that starts its own local Ray (RAY_AUTH_MODE set).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from db3d.distributed.sink import read_results
from db3d.distributed.spec import expand, load_spec

ENV = {**os.environ, "RAY_AUTH_MODE": "disabled", "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1",
       "RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1", "WANDB_SILENT": "true", "WANDB_MODE": "offline"}
TINY = ("backbone=toy, preset=smoke, 'metrics.clip_models=[]', metrics.dino=false, nerf.background=white, "
        "nerf.steps=8, nerf.checkpoint_every=2, export.turntable_frames=4")


def test_toyworld_weights_sweep_file_parses_and_expands(tmp_path):
    spec = load_spec("toyworld_weights")
    assert spec.metric == "quality.toy.psnr" and set(spec.scheduler) == {"asha"}
    assert set(spec.search) == {"method.lambda_recon", "method.lambda_sds", "sds.guidance_scale", "pseudo.t_pseudo"}
    points = expand(spec, tmp_path)
    assert len(points) == 4 and all("method=dreambooth3d" in p.overrides for p in points)
    from db3d.core.config import compose
    from db3d.distributed.spec import resolve_metric

    configs = [(compose(list(p.overrides)), p.subject) for p in points]
    assert resolve_metric(spec, configs) == ("quality.toy.psnr", "max")  # every subject has ground truth


def _tiny_sweep(tmp_path: Path, name: str, methods: str, scheduler: str, tracking: str, samples: int,
                cache: Path) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(f"""name: {name}
overrides: [{TINY}, "cache_dir='{cache}'"]
subjects: {{toyworld: 1, captures: 2}}
prompts: ["a {{0}} {{1}}"]
grid:
  method: [{methods}]
search:
  method.lambda_recon: {{loguniform: [0.1, 10.0]}}
  pseudo.t_pseudo: {{uniform: [0.3, 0.7]}}
num_samples: {samples}
{scheduler}
quality: {{views: 4, resolution: 16}}
tracking: [{tracking}]
resources: {{cpu: 1, gpu: 0}}
max_concurrent: 1
""")
    return path


def _run(tmp: Path, spec: Path) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "db3d.cli", "sweep", f"sweep={spec}", f"out={tmp / 'o'}", "num_cpus=2"],
                          env=ENV, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return proc


def _available_trackers() -> list[str]:
    import importlib.util

    return [t for t, pkg in (("tensorboard", "tensorboardX"), ("mlflow", "mlflow"), ("wandb", "wandb"))
            if importlib.util.find_spec(pkg) is not None]


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory):
    """One cache_dir named by both sweeps' overrides: class images and ToyWorld's scoring renders
    drawn by the first sweep, loaded by the second."""
    return tmp_path_factory.mktemp("shared cache")


@pytest.fixture(scope="module")
def asha_sweep(tmp_path_factory, shared_cache):
    """dreambooth3d x 3 drawn settings, ASHA on the default quality metric."""
    tmp = tmp_path_factory.mktemp("asha")
    proc = _run(tmp, _tiny_sweep(tmp, "asha", "dreambooth3d",
                                 "scheduler: {asha: {grace_period: 1, max_t: 5, reduction_factor: 2}}", "", 3,
                                 shared_cache))
    return tmp / "o", proc.stdout


@pytest.fixture(scope="module")
def tiny_sweep(tmp_path_factory, shared_cache):
    """Both methods (a mixed-method results folder), no scheduler, every installed tracker."""
    tmp = tmp_path_factory.mktemp("tiny")
    trackers = _available_trackers()
    proc = _run(tmp, _tiny_sweep(tmp, "tiny", "dreambooth3d, dreambooth_fusion", "", ", ".join(trackers), 1,
                                 shared_cache))
    return tmp / "o", trackers, proc.stdout


def test_sweeps_that_name_a_cache_dir_share_it(asha_sweep, tiny_sweep, shared_cache):
    from db3d.toyworld.evaluate import WORLD_RENDERS

    for out in (asha_sweep[0], tiny_sweep[0]):
        assert not (out / "cache").exists()  # not the default OUT/cache
        configs = [p.read_text() for p in out.glob("trials/*/config.yaml")]
        assert configs and all(str(shared_cache) in c for c in configs)
    renders = [p for p in (shared_cache / WORLD_RENDERS).iterdir() if p.is_dir()]
    assert len(renders) == 1 and (renders[0] / "done.json").exists()  # one world, drawn once for both
    assert any((shared_cache / "class_images").iterdir())


def test_asha_on_the_quality_signal_runs(asha_sweep):
    out, stdout = asha_sweep
    assert "quality.toy.psnr (max)" in stdout  # the scheduler's metric, chosen by default
    df = read_results(out / "results")
    assert len(df) == 3 and df["trial_id"].is_unique and set(df["status"]) <= {"ok", "stopped"}
    assert (df["status"] == "ok").any()  # max_t lies past the last report: finishing trials write their row
    assert df["quality.toy.psnr"].notna().all() and df["quality.toy.psnr"].between(0, 60).all()
    ok = df[df["status"] == "ok"]
    assert ok["metric.toy.psnr.all"].notna().all() and ok["quality.probe_seconds"].gt(0).all()
    stopped = df[df["status"] == "stopped"]
    assert stopped["nerf_step"].lt(8).all()  # stopped before the last of 8 steps


def test_rows_carry_cost_and_peak_memory(tiny_sweep):
    df = read_results(tiny_sweep[0] / "results")
    ok = df[df["status"] == "ok"]
    assert ok["peak_rss_mb.total"].gt(50).all()  # a Python process with torch holds far more than 50 MiB
    for stage in ("dreambooth", "export"):
        assert ok[f"peak_rss_mb.{stage}"].gt(0).all() and ok[f"seconds.{stage}"].gt(0).all()
    assert (ok["peak_rss_mb.total"] >= ok["peak_rss_mb.export"]).all()
    assert ok["cpu_seconds.total"].gt(0).all() and (ok["gpu_seconds.total"] == 0).all()  # cpu: 1, gpu: 0


def test_every_reader_finds_every_column_of_every_part(tiny_sweep):
    results = tiny_sweep[0] / "results"
    parts = sorted(results.glob("method=*/subject=*/part-*.parquet"))
    names = set().union(*(pq.read_schema(p).names for p in parts))
    assert {"seconds.nerf", "key.nerf", "gpu_seconds.nerf", "seconds.stage1", "key.stage1"} <= names  # both methods
    plain = pd.read_parquet(results)
    assert names <= set(plain.columns)
    assert names <= set(ds.dataset(str(results)).schema.names)
    duckdb = pytest.importorskip("duckdb")
    rel = duckdb.sql(f"select * from read_parquet('{results}/*/*/*.parquet')")
    assert names <= set(rel.columns) and len(rel.fetchall()) == 2
    fusion = plain[plain["method"] == "dreambooth_fusion"]
    assert fusion["seconds.nerf"].notna().all() and fusion["seconds.stage1"].isna().all()
    assert set(pq.read_schema(results / "_common_metadata").names) == names


def _tb_values(path: Path) -> list:
    """Every summary value in a TensorBoard event file (TFRecord framing: length, crc, data, crc)."""
    import struct

    from tensorboardX.proto.event_pb2 import Event

    data, values, i = path.read_bytes(), [], 0
    while i + 12 <= len(data):
        (n,) = struct.unpack("<Q", data[i:i + 8])
        event = Event.FromString(data[i + 12:i + 12 + n])
        values += list(event.summary.value)
        i += 12 + n + 4
    return values


def test_trackers_receive_scalars_and_the_turntable(tiny_sweep):
    out, trackers, _ = tiny_sweep
    assert trackers, "no tracker package installed"
    if "tensorboard" in trackers:
        events = sorted((out / "ray").glob("**/events.out.tfevents.*"))
        assert events
        values = [v for e in events for v in _tb_values(e)]
        assert any("quality.toy.psnr" in v.tag for v in values if v.HasField("simple_value"))
        gifs = [v.image.encoded_image_string for v in values if v.tag == "turntable" and v.HasField("image")]
        assert gifs and all(g.startswith(b"GIF8") for g in gifs)
    if "mlflow" in trackers:
        from mlflow.tracking import MlflowClient

        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        client = MlflowClient(tracking_uri=(out / "mlruns").resolve().as_uri())
        runs = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
        assert len(runs) == 2 and all("quality.toy.psnr" in r.data.metrics for r in runs)
        finished = [r for r in runs if "metric.toy.psnr.all" in r.data.metrics]
        assert len(finished) == 2 and all(any(a.path.endswith(".gif") for a in client.list_artifacts(r.info.run_id))
                                for r in finished)
    if "wandb" in trackers:
        runs = sorted((out / "wandb").glob("**/offline-run-*"))
        assert len(runs) == 2
        gifs = list((out / "wandb").glob("**/media/videos/**/*.gif"))
        assert gifs and all(any(r.glob("run-*.wandb")) for r in runs)
