"""Sweeps: spec expansion, the Parquet sink, and local sweeps end to end (rows, stage reuse,
Optuna, ASHA on an explicit loss metric). Helpers and the Ray rules: sweep_run.py."""

from __future__ import annotations

from pathlib import Path

import pyarrow.dataset as ds
import pytest
from sweep_run import count_stage, mini_sweep, run_sweep

from db3d.distributed.sink import read_results, write_trial_row
from db3d.distributed.spec import SweepError, expand, load_spec


def test_demo_spec_expands_to_its_grid(tmp_path):
    points = expand(load_spec("demo"), tmp_path)
    assert len(points) == 2 * 1 * 2  # ToyWorld subjects x prompts x methods
    assert {p.class_noun for p in points} == {"toy"} and all("backbone=toy" in p.overrides for p in points)
    assert len({p.id for p in points}) == len(points)
    assert expand(load_spec("demo"), tmp_path) == points  # stable ids: restores find their rows


def test_neighbouring_trials_differ_in_subject_then_prompt_so_they_do_not_wait_on_each_others_stages(
        shared_dataset, tmp_path):
    """Tune starts trials in expand's order, two at a time here: two trials of one subject would share
    its DreamBooth run (one computing, one waiting on the lock), two of one prompt its stage 1."""
    spec = load_spec("loss_weights")  # 3 subjects x 1 prompt x grid cells
    points = expand(spec, tmp_path, data_root=str(shared_dataset))
    assert len(points) == 6
    for a, b in zip(points, points[1:]):
        if a.overrides == b.overrides:  # within a cell: a new subject each time
            assert a.subject_name != b.subject_name
    two = tmp_path / "two.yaml"  # one subject, two prompts, four cells: neighbours differ in prompt
    two.write_text('name: two\nsubjects: {generated: 1}\nprompts: ["a {0} {1}", "a {0} {1} on a table"]\n'
                   'grid: {method.lambda_recon: [0.25, 0.5, 1.0, 2.0]}\n')
    points = expand(load_spec(str(two)), tmp_path)
    assert len(points) == 8 and all(a.prompt != b.prompt for a, b in zip(points, points[1:]))
    assert [p.overrides[-1] for p in points[:2]] == ["method.lambda_recon=0.25"] * 2
    # the demo: both subjects' dreambooth3d first (the longer method), then fusion reusing their DreamBooth
    demo = expand(load_spec("demo"), tmp_path)
    assert [(p.subject_name, p.overrides[-1]) for p in demo] == [
        ("toy00", "method=dreambooth3d"), ("toy01", "method=dreambooth3d"),
        ("toy00", "method=dreambooth_fusion"), ("toy01", "method=dreambooth_fusion")]


def test_dataset_spec_uses_the_table(shared_dataset, tmp_path):
    spec = load_spec("loss_weights")
    points = expand(spec, tmp_path, data_root=str(shared_dataset))
    assert {p.subject_name for p in points} == {"dog", "cat", "teapot"}
    assert {p.class_noun for p in points} == {"dog", "cat", "teapot"}
    assert all("sks" in p.prompt for p in points)
    assert len(expand(load_spec("paper_eval"), tmp_path, data_root=str(shared_dataset))) == 26 * 4 * 3


def test_a_sweeps_prompt_set_is_its_r_precision_caption_set(tmp_path):
    from db3d.distributed.sweep import _sweep_captions

    two = tmp_path / "two.yaml"
    two.write_text('name: two\nsubjects: {generated: 1}\nprompts: ["a {0} {1}", "a {0} {1} on a wooden table"]\n')
    spec = load_spec(str(two))
    points = expand(spec, tmp_path)
    (override,) = _sweep_captions(points, [], spec, tmp_path)
    assert override.startswith("metrics.captions=")
    assert (tmp_path / "captions.txt").read_text().splitlines() == ["a sks toy", "a sks toy on a wooden table"]
    assert _sweep_captions(points, ["metrics.captions=/x.txt"], spec, tmp_path) == []


def test_bad_specs_fail_naming_the_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ngridd: {}\n")
    with pytest.raises(SweepError, match="gridd"):
        load_spec(str(bad))
    bad.write_text("name: x\nsearch: {method.lambda_recon: {gaussian: [0, 1]}}\n")
    with pytest.raises(SweepError, match="method.lambda_recon"):
        load_spec(str(bad))
    with pytest.raises(SweepError, match="demo"):
        load_spec("no_such_sweep")


def test_sink_replaces_a_trials_row_and_reads_with_pandas_pyarrow_duckdb(tmp_path):
    base = dict(method="dreambooth3d", subject="dog", trial_id="t1", status="failed", error="boom")
    write_trial_row(tmp_path, base)
    write_trial_row(tmp_path, {**base, "status": "ok", "error": ""})  # a retry replaces the row
    write_trial_row(tmp_path, {**base, "trial_id": "t2", "method": "latent_nerf", "status": "ok", "error": ""})
    (tmp_path / "method=dreambooth3d" / "subject=dog" / ".part-t3.parquet.123.tmp").write_bytes(b"half")
    df = read_results(tmp_path)
    assert sorted(df["trial_id"]) == ["t1", "t2"] and set(df["status"]) == {"ok"}
    assert set(df["method"].astype(str)) == {"dreambooth3d", "latent_nerf"}
    assert ds.dataset(str(tmp_path), format="parquet", partitioning="hive").count_rows() == 2
    duckdb = pytest.importorskip("duckdb")
    n = duckdb.sql(f"select count(*) from read_parquet('{tmp_path}/*/*/*.parquet', hive_partitioning=true)").fetchall()[0][0]
    assert n == 2


def test_optuna_needs_a_metric_and_a_space(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nsearch_alg: optuna\nsearch: {method.lambda_sds: {uniform: [0.5, 1]}}\n")
    with pytest.raises(SweepError, match="metric"):
        load_spec(str(bad))


def test_optuna_search_runs_per_grid_cell(tmp_path):
    spec = tmp_path / "opt.yaml"
    spec.write_text("""name: opt
overrides: [preset=smoke, metrics.enabled=false]
subjects: {generated: 1}
prompts: ["a {0} {1}"]
grid:
  method: [dreambooth_fusion]
search:
  method.lambda_sds: {uniform: [0.5, 1.0]}
search_alg: optuna
metric: seconds.total
mode: min
num_samples: 2
resources: {cpu: 1, gpu: 0}
""")
    proc = run_sweep([f"sweep={spec}", f"out={tmp_path / 'o'}", "num_cpus=2"])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    df = read_results(tmp_path / "o" / "results")
    assert len(df) == 2 and set(df["status"]) == {"ok"} and df["trial_id"].is_unique
    assert df["config.method.lambda_sds"].between(0.5, 1.0).all() and df["config.method.lambda_sds"].nunique() == 2


def test_sweep_rejects_bad_input_before_ray_starts(tmp_path):
    proc = run_sweep([f"sweep={mini_sweep(tmp_path)}", f"out={tmp_path / 'o'}", "pseudo.t_pseudo=2"], timeout=60)
    assert proc.returncode == 2 and "pseudo.t_pseudo" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "o" / "ray").exists()


def test_sweep_writes_rows_and_reuse_cuts_stage_executions(tmp_path):
    spec = mini_sweep(tmp_path, metrics="true")
    shared, alone = tmp_path / "reuse", tmp_path / "noreuse"
    assert run_sweep([f"sweep={spec}", f"out={shared}", "num_cpus=2"]).returncode == 0
    proc = run_sweep([f"sweep={spec}", f"out={alone}", "num_cpus=2", "--no-reuse"])
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    for out in (shared, alone):
        df = read_results(out / "results")
        assert len(df) == 2 and set(df["status"]) == {"ok"}
        assert sorted(df["config.method.lambda_recon"]) == [0.5, 1.0]
        assert all(Path(u).exists() for u in df["uri.turntable_rgb.mp4"])
        assert set(df["metrics.weights"]) == {"random"} and df["metric.r_precision.ViT-B-32.color"].notna().all()
        views = read_results(out / "views")  # one row per evaluation view and render kind
        assert len(views) == 2 * 4 * 2 and set(views["render"]) == {"color", "textureless"}
        assert all(Path(u).exists() for u in views["uri"])
    # DreamBooth (personalisation + multi-view) and stage 1 run once per subject x prompt with reuse
    assert count_stage(shared, "stage1") == 1 and count_stage(alone, "stage1") == 2
    assert count_stage(shared, "dreambooth") == 2 and count_stage(alone, "dreambooth") == 4
    assert count_stage(shared, "final") == count_stage(alone, "final") == 2


def test_asha_stops_trials_whose_nerf_loss_lags(tmp_path):
    """ASHA on the weighted total loss, named explicitly (the default is a quality signal: test_quality.py)."""
    spec = tmp_path / "asha.yaml"
    spec.write_text("""name: asha
overrides: [preset=smoke, metrics.enabled=false, nerf.steps=8, nerf.checkpoint_every=2]
subjects: {generated: 1}
prompts: ["a {0} {1}"]
grid:
  method: [dreambooth3d]
  method.lambda_sds: [0.01, 5.0, 10.0, 20.0]
metric: nerf_loss
scheduler:
  asha: {grace_period: 1, max_t: 100, reduction_factor: 2}
resources: {cpu: 1, gpu: 0}
max_concurrent: 1
""")
    proc = run_sweep([f"sweep={spec}", f"out={tmp_path / 'o'}", "num_cpus=2"])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    df = read_results(tmp_path / "o" / "results")
    assert len(df) == 4 and df["trial_id"].is_unique  # one row per trial, stopped ones included
    assert set(df["status"]) <= {"ok", "stopped"} and (df["status"] == "stopped").any()
    # a stopped trial's row says what it cost until it was stopped (Tune's time_total_s), so sweeps'
    # compute compares with and without early stopping
    stopped = df[df["status"] == "stopped"]
    assert stopped["seconds.total"].gt(0).all() and (stopped["cpu_seconds.total"] == stopped["seconds.total"]).all()
    # same seed, same draws: the final NeRF's loss scales with lambda_SDS, so the smallest weight
    # has the smallest loss at every rung and is never stopped
    best = df.loc[df["config.method.lambda_sds"].idxmin()]
    assert best["status"] == "ok"


def test_num_workers_above_one_needs_the_ray_train_trainer(tmp_path):
    spec = mini_sweep(tmp_path, lambdas=(1.0,), extra=", dreambooth.num_workers=2")
    proc = run_sweep([f"sweep={spec}", f"out={tmp_path / 'o'}"], timeout=60)
    assert proc.returncode == 2 and "trainer=ray_train" in proc.stderr and "Traceback" not in proc.stderr

