"""Sweeps: spec expansion, Parquet sink, and real Ray runs (local Ray in a subprocess per sweep).

Every Ray cluster here is started by the test's own `db3d sweep` subprocess (a local Ray, private
to it) or by `ray start --head` on private ports bound to 127.0.0.1; the tests end only the
processes they started, by PID / process group. RAY_AUTH_MODE is set explicitly.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pyarrow.dataset as ds
import pytest
import torch

from db3d.distributed.sink import read_results, write_trial_row
from db3d.distributed.spec import SweepError, expand, load_spec

ENV = {**os.environ, "RAY_AUTH_MODE": "disabled", "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1",
       "RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1"}


def _mini_sweep(tmp_path: Path, lambdas=(0.5, 1.0), extra: str = "", metrics: str = "false") -> Path:
    path = tmp_path / "mini.yaml"
    path.write_text(f"""name: mini
overrides: [preset=smoke, metrics.enabled={metrics}{extra}]
subjects: {{generated: 1}}
prompts: ["a {{0}} {{1}}"]
grid:
  method: [dreambooth3d]
  method.lambda_recon: [{', '.join(map(str, lambdas))}]
resources: {{cpu: 1, gpu: 0}}
max_concurrent: 2
""")
    return path


def _sweep(args: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "db3d.cli", "sweep", *args], env={**ENV, **kw.pop("env", {})},
                          capture_output=True, text=True, timeout=kw.pop("timeout", 400), **kw)


def _count(store: Path, stage: str) -> int:
    return sum(1 for p in store.glob(f"**/artifacts/{stage}/*") if p.is_dir())


# --- no Ray ------------------------------------------------------------------------------------
def test_demo_spec_expands_to_its_grid(tmp_path):
    points = expand(load_spec("demo"), tmp_path)
    assert len(points) == 2 * 1 * 2  # ToyWorld subjects x prompts x methods
    assert {p.class_noun for p in points} == {"toy"} and all("backbone=toy" in p.overrides for p in points)
    assert len({p.id for p in points}) == len(points)
    assert expand(load_spec("demo"), tmp_path) == points  # stable ids: restores find their rows


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
    proc = _sweep([f"sweep={spec}", f"out={tmp_path / 'o'}", "num_cpus=2"])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    df = read_results(tmp_path / "o" / "results")
    assert len(df) == 2 and set(df["status"]) == {"ok"} and df["trial_id"].is_unique
    assert df["config.method.lambda_sds"].between(0.5, 1.0).all() and df["config.method.lambda_sds"].nunique() == 2


def test_sweep_rejects_bad_input_before_ray_starts(tmp_path):
    proc = _sweep([f"sweep={_mini_sweep(tmp_path)}", f"out={tmp_path / 'o'}", "pseudo.t_pseudo=2"], timeout=60)
    assert proc.returncode == 2 and "pseudo.t_pseudo" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "o" / "ray").exists()


# --- Ray ---------------------------------------------------------------------------------------
def test_sweep_writes_rows_and_reuse_cuts_stage_executions(tmp_path):
    spec = _mini_sweep(tmp_path, metrics="true")
    shared, alone = tmp_path / "reuse", tmp_path / "noreuse"
    assert _sweep([f"sweep={spec}", f"out={shared}", "num_cpus=2"]).returncode == 0
    proc = _sweep([f"sweep={spec}", f"out={alone}", "num_cpus=2", "--no-reuse"])
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
    assert _count(shared, "stage1") == 1 and _count(alone, "stage1") == 2
    assert _count(shared, "dreambooth") == 2 and _count(alone, "dreambooth") == 4
    assert _count(shared, "final") == _count(alone, "final") == 2


def _wait_for(path_glob, root: Path, timeout: float = 120.0) -> list[Path]:
    end = time.time() + timeout
    while time.time() < end:
        found = list(root.glob(path_glob))
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError(f"nothing matched {path_glob} under {root} in {timeout}s")


def test_a_trial_whose_worker_is_killed_finishes_on_retry_with_one_row(tmp_path):
    spec = _mini_sweep(tmp_path, lambdas=(1.0,), extra=", nerf.steps=60")
    pids = tmp_path / "pids"
    proc = subprocess.Popen([sys.executable, "-m", "db3d.cli", "sweep", f"sweep={spec}", f"out={tmp_path / 'o'}",
                             "num_cpus=2", "max_failures=2"], env={**ENV, "DB3D_TRIAL_PID_DIR": str(pids)},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    pid_file = _wait_for("*.pid", pids)[0]
    _wait_for("artifacts/stage1/*/fit_state.pt", tmp_path / "o")  # mid-stage: stage 1 is under way
    os.kill(int(pid_file.read_text()), signal.SIGKILL)
    out, _ = proc.communicate(timeout=400)
    assert proc.returncode == 0, out[-3000:]
    df = read_results(tmp_path / "o" / "results")
    assert len(df) == 1 and df.loc[0, "status"] == "ok"


def test_a_sweep_whose_driver_dies_resumes_without_lost_or_duplicated_rows(tmp_path):
    spec = _mini_sweep(tmp_path, lambdas=(0.25, 0.5, 1.0))
    args = [sys.executable, "-m", "db3d.cli", "sweep", f"sweep={spec}", f"out={tmp_path / 'o'}", "num_cpus=2",
            "max_concurrent=1"]
    first = subprocess.Popen(args, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)  # its own process group: the driver and its local Ray
    _wait_for("results/*/*/part-*.parquet", tmp_path / "o", timeout=200)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait(timeout=30)
    before = read_results(tmp_path / "o" / "results")
    assert 1 <= len(before) < 3
    again = subprocess.run(args, env=ENV, capture_output=True, text=True, timeout=400)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "resuming" in again.stdout
    df = read_results(tmp_path / "o" / "results")
    assert len(df) == 3 and df["trial_id"].is_unique and set(df["status"]) == {"ok"}
    from sweep_checks import check_artifacts, check_results

    figures = check_results(tmp_path / "o", expected_trials=3)  # lost 0, duplicated 0, no partial Parquet
    check_artifacts(tmp_path / "o")  # the killed driver's trials left no half-written stage
    print(f"\ndriver SIGKILLed with {len(before)} of 3 rows written; after the rerun: {figures}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


NOT_UP_YET = ("No available agent to submit job", "Connection refused", "Failed to connect", "Cannot connect")


def submit_when_the_job_agent_is_up(submit: list[str], env: dict, attempts: int = 60, pause: float = 4.0):
    """`ray job submit`, retried while the head's dashboard or job agent is not up yet (Ray then
    creates no job), at most `attempts` times; any other failure is returned at once."""
    for attempt in range(1, attempts + 1):
        proc = subprocess.run(submit, env=env, capture_output=True, text=True, timeout=400)
        if proc.returncode == 0 or not any(s in proc.stdout + proc.stderr for s in NOT_UP_YET):
            return proc
        time.sleep(pause)
    raise AssertionError(f"the head's job agent did not come up in {attempts} attempts, {pause}s apart: "
                         f"{(proc.stdout + proc.stderr)[-1500:]}")


def test_ray_job_submit_to_a_head_on_loopback_runs_a_sweep(tmp_path):
    import shutil
    import tempfile

    ray_bin = Path(sys.executable).with_name("ray")
    port, dash, agent, client = _free_port(), _free_port(), _free_port(), _free_port()
    temp_dir = tempfile.mkdtemp(prefix="r", dir="/tmp")  # short: Ray's unix socket paths must stay < 108 chars
    env = {**ENV, "RAY_ADDRESS": "", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}  # node address 127.0.0.1 for real
    env.pop("RAY_ADDRESS")
    head = subprocess.Popen([str(ray_bin), "start", "--head", f"--port={port}", "--node-ip-address=127.0.0.1",
                             "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", "--include-dashboard=true",
                             # not the default agent port 52365 / client port 10001: another Ray on this
                             # machine may hold them, and a job agent that cannot bind never comes up
                             f"--dashboard-agent-listen-port={agent}", f"--ray-client-server-port={client}",
                             "--num-cpus=2", f"--temp-dir={temp_dir}", "--disable-usage-stats", "--block"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        spec = _mini_sweep(tmp_path, lambdas=(1.0,))
        submit = [str(ray_bin), "job", "submit", f"--address=http://127.0.0.1:{dash}", "--",
                  sys.executable, "-m", "db3d.cli", "sweep", f"sweep={spec}", f"out={tmp_path / 'o'}"]
        proc = submit_when_the_job_agent_is_up(submit, env)
        assert proc.returncode == 0 and "succeeded" in proc.stdout.lower(), proc.stdout[-3000:] + proc.stderr[-3000:]
        df = pd.read_parquet(next((tmp_path / "o" / "results").glob("*/*/*.parquet")))
        assert df.loc[0, "status"] == "ok"
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_trainer_mode_runs_each_trial_in_a_torch_trainer(tmp_path):
    spec = _mini_sweep(tmp_path, lambdas=(1.0,))
    proc = _sweep([f"sweep={spec}", f"out={tmp_path / 'o'}", "num_cpus=2", "trainer=ray_train"])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    df = read_results(tmp_path / "o" / "results")
    assert len(df) == 1 and df.loc[0, "status"] == "ok"
    assert any((tmp_path / "o" / "ray_train").iterdir())  # the TorchTrainer's run folder


CREDS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture
def moto_s3():
    """moto's S3 server on 127.0.0.1 with a bucket "db3d": (boto3 client, URI query string)."""
    moto_server = Path(sys.executable).with_name("moto_server")
    if not moto_server.exists():
        pytest.skip("moto[server] is not installed in this environment")
    boto3 = pytest.importorskip("boto3")
    port = _free_port()
    server = subprocess.Popen([str(moto_server), "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        s3 = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing")
        end = time.time() + 30
        while True:
            try:
                s3.create_bucket(Bucket="db3d")
                break
            except Exception:
                if time.time() > end:
                    raise
                time.sleep(0.3)
        yield s3, f"endpoint_override=127.0.0.1:{port}&scheme=http&region=us-east-1"
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_results_and_exports_on_an_s3_compatible_server(tmp_path, moto_s3):
    """out=s3://... against moto's S3 server on 127.0.0.1: rows and exports land in the bucket."""
    s3, query = moto_s3
    uri = f"s3://db3d/sweeps/mini?{query}"
    spec = _mini_sweep(tmp_path, lambdas=(1.0,))
    proc = _sweep([f"sweep={spec}", f"out={uri}", f"work={tmp_path / 'work'}", "num_cpus=2"], env=CREDS)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    os.environ.update(CREDS)
    try:
        df = read_results(uri.replace("sweeps/mini", "sweeps/mini/results"))
    finally:
        for key in CREDS:
            os.environ.pop(key, None)
    assert len(df) == 1 and df.loc[0, "status"] == "ok"
    assert df.loc[0, "uri.mesh.glb"].startswith("s3://db3d/sweeps/mini/trials/")
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="db3d")["Contents"]]
    assert any(k.endswith("exports/turntable_rgb.mp4") for k in keys)
    assert any(k.startswith("sweeps/mini/results/method=dreambooth3d/") for k in keys)


def test_stages_are_shared_through_the_bucket_without_a_shared_file_system(tmp_path, moto_s3):
    """Artifacts published to S3 under the sweep's lock actor: two trials share one DreamBooth
    run, and a node with an empty local store (the work folder wiped) fetches every stage."""
    s3, query = moto_s3
    uri, work = f"s3://db3d/sweeps/mini?{query}", tmp_path / "work"
    spec = _mini_sweep(tmp_path, lambdas=(0.5, 1.0))
    args = [f"sweep={spec}", f"out={uri}", f"work={work}", "num_cpus=2"]
    # 1. two concurrent trials: DreamBooth and stage 1 computed once, published to the bucket
    proc = _sweep(args, env=CREDS)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert _count(work, "stage1") == 1 and _count(work, "dreambooth") == 2 and _count(work, "final") == 2
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="db3d", Prefix="sweeps/mini/artifacts/")["Contents"]]
    done = {k.split("/")[3] for k in keys if k.endswith("/done.json")}
    assert {"dreambooth", "stage1", "stage2", "final"} <= done
    # 2. mark the published copies, wipe the local store: a fresh node at the same path
    for k in keys:
        if k.endswith("/done.json") and k.split("/")[3] in ("stage1", "final"):
            s3.put_object(Bucket="db3d", Key=k.rsplit("/", 1)[0] + "/fetched.txt", Body=b"from the bucket")
    shutil.rmtree(work)
    proc = _sweep(args, env=CREDS)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # 3. every stage came from the bucket (the marker is in each local folder), none recomputed
    for stage in ("stage1", "final"):
        folders = [p for p in (work / "artifacts" / stage).iterdir() if p.is_dir()]
        assert folders and all((p / "fetched.txt").exists() for p in folders)
    assert _count(work, "stage1") == 1 and _count(work, "dreambooth") == 2


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
    proc = _sweep([f"sweep={spec}", f"out={tmp_path / 'o'}", "num_cpus=2"])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    df = read_results(tmp_path / "o" / "results")
    assert len(df) == 4 and df["trial_id"].is_unique  # one row per trial, stopped ones included
    assert set(df["status"]) <= {"ok", "stopped"} and (df["status"] == "stopped").any()
    # same seed, same draws: the final NeRF's loss scales with lambda_SDS, so the smallest weight
    # has the smallest loss at every rung and is never stopped
    best = df.loc[df["config.method.lambda_sds"].idxmin()]
    assert best["status"] == "ok"


def test_num_workers_above_one_needs_the_ray_train_trainer(tmp_path):
    spec = _mini_sweep(tmp_path, lambdas=(1.0,), extra=", dreambooth.num_workers=2")
    proc = _sweep([f"sweep={spec}", f"out={tmp_path / 'o'}"], timeout=60)
    assert proc.returncode == 2 and "trainer=ray_train" in proc.stderr and "Traceback" not in proc.stderr


def test_dreambooth_on_two_train_workers_survives_a_killed_worker_and_writes_each_checkpoint_once(tmp_path, tiny_sd):
    """dreambooth.num_workers=2: each DreamBooth run is a 2-worker TorchTrainer (gloo). Rank 0 is
    killed mid-run; FailureConfig restarts the group, which resumes from the run's state."""
    from db3d.core.artifacts import DreamBoothCheckpoint, read_done
    from db3d.method.dreambooth import load_dreambooth

    extra = ", dreambooth.num_workers=2, dreambooth.full_steps=40, dreambooth.resume_every=2"
    spec = _mini_sweep(tmp_path, lambdas=(1.0,), extra=extra)
    pids, out = tmp_path / "pids", tmp_path / "o"
    proc = subprocess.Popen([sys.executable, "-m", "db3d.cli", "sweep", f"sweep={spec}", f"out={out}", "num_cpus=2",
                             "cpu=0.5", "trainer=ray_train", "max_failures=2"],
                            env={**ENV, "DB3D_TRIAL_PID_DIR": str(pids)}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    _wait_for("artifacts/dreambooth/*/train_state.pt", out, timeout=300)  # personalisation under way
    killed = int((pids / "dreambooth-rank0.pid").read_text())
    assert not list(out.glob("artifacts/dreambooth/*/step-000040"))  # the run has not finished
    os.kill(killed, signal.SIGKILL)
    log, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, log[-4000:]
    assert int((pids / "dreambooth-rank0.pid").read_text()) != killed  # a restarted worker group finished it
    assert "resuming from its saved training state" in log
    df = read_results(out / "results")
    assert len(df) == 1 and df.loc[0, "status"] == "ok", df.loc[0, "error"] if len(df) else log[-3000:]
    assert df.loc[0, "config.dreambooth.num_workers"] == 2 and df.loc[0, "seconds.dreambooth_train"] > 0
    # personalisation and stage 3's multi-view DreamBooth, each trained by 2 ranks, each its own trainer
    runs = [json.loads(p.read_text()) for p in out.glob("artifacts/dreambooth/*/run.json")]
    assert sorted(r["steps"] for r in runs) == [2, 40] and {r["world_size"] for r in runs} == {2}
    assert len(list((out / "ray_train").glob("dreambooth-*"))) == 2
    # every checkpoint is on disk once: the Ray Train checkpoints hard-link the artifacts' files
    ray_ckpts = sorted((out / "ray_train").glob("dreambooth-*/step-*"))
    assert sorted(p.name for p in ray_ckpts) == ["step-000002", "step-000002", "step-000040"]
    weights = sorted(out.glob("artifacts/dreambooth/*/step-*/unet/diffusion_pytorch_model.safetensors"))
    assert len(weights) == 3
    for ckpt in ray_ckpts:
        file = ckpt / "unet" / "diffusion_pytorch_model.safetensors"
        assert file.stat().st_nlink == 2 and any(os.path.samefile(file, w) for w in weights)
    # and the reported checkpoint loads
    final = next(p for p in ray_ckpts if p.name == "step-000040")
    ckpt = read_done(final, DreamBoothCheckpoint)
    model = load_dreambooth(tiny_sd, DreamBoothCheckpoint(**{**ckpt.__dict__, "path": str(final)}))
    z, t = torch.randn(1, 4, 32, 32), torch.tensor([500])
    emb = tiny_sd.encode_prompts(["a sks toy"])
    assert not torch.allclose(model.predict_eps(z, t, emb), tiny_sd.predict_eps(z, t, emb))
