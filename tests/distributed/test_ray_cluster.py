"""Sweeps against infrastructure beyond one process: `ray job submit` to a `ray start --head` on
127.0.0.1, and results, exports and stages through an S3-compatible server (moto, on 127.0.0.1)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from sweep_run import ENV, count_stage, free_port, mini_sweep, run_sweep

from db3d.distributed.sink import read_results

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
    port, dash, agent, client = free_port(), free_port(), free_port(), free_port()
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
        spec = mini_sweep(tmp_path, lambdas=(1.0,))
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


CREDS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture
def moto_s3():
    """moto's S3 server on 127.0.0.1 with a bucket "db3d": (boto3 client, URI query string)."""
    moto_server = Path(sys.executable).with_name("moto_server")
    if not moto_server.exists():
        pytest.skip("moto[server] is not installed in this environment")
    boto3 = pytest.importorskip("boto3")
    port = free_port()
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


def test_stages_are_shared_through_the_bucket_without_a_shared_file_system(tmp_path, moto_s3):
    """out=s3://... against moto's S3 server on 127.0.0.1: rows and exports land in the bucket, and
    artifacts are published there under the sweep's lock actor: two trials share one DreamBooth run,
    and a node with an empty local store (the work folder wiped) fetches every stage."""
    s3, query = moto_s3
    uri, work = f"s3://db3d/sweeps/mini?{query}", tmp_path / "work"
    spec = mini_sweep(tmp_path, lambdas=(0.5, 1.0))
    args = [f"sweep={spec}", f"out={uri}", f"work={work}", "num_cpus=2"]
    # 1. two concurrent trials: DreamBooth and stage 1 computed once, published to the bucket
    proc = run_sweep(args, env=CREDS)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert count_stage(work, "stage1") == 1 and count_stage(work, "dreambooth") == 2 and count_stage(work, "final") == 2
    os.environ.update(CREDS)
    try:
        df = read_results(uri.replace("sweeps/mini", "sweeps/mini/results"))
    finally:
        for key in CREDS:
            os.environ.pop(key, None)
    assert len(df) == 2 and set(df["status"]) == {"ok"}  # the rows, in the bucket
    assert df["uri.mesh.glb"].str.startswith("s3://db3d/sweeps/mini/trials/").all()  # the exports, too
    exports = [o["Key"] for o in s3.list_objects_v2(Bucket="db3d", Prefix="sweeps/mini/trials/")["Contents"]]
    assert sum(k.endswith("exports/turntable_rgb.mp4") for k in exports) == 2
    assert s3.list_objects_v2(Bucket="db3d", Prefix="sweeps/mini/results/method=dreambooth3d/")["KeyCount"] >= 2
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="db3d", Prefix="sweeps/mini/artifacts/")["Contents"]]
    done = {k.split("/")[3] for k in keys if k.endswith("/done.json")}
    assert {"dreambooth", "stage1", "stage2", "final"} <= done
    # 2. mark the published copies, wipe the local store: a fresh node at the same path
    for k in keys:
        if k.endswith("/done.json") and k.split("/")[3] in ("stage1", "final"):
            s3.put_object(Bucket="db3d", Key=k.rsplit("/", 1)[0] + "/fetched.txt", Body=b"from the bucket")
    shutil.rmtree(work)
    proc = run_sweep(args, env=CREDS)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # 3. every stage came from the bucket (the marker is in each local folder), none recomputed
    for stage in ("stage1", "final"):
        folders = [p for p in (work / "artifacts" / stage).iterdir() if p.is_dir()]
        assert folders and all((p / "fetched.txt").exists() for p in folders)
    assert count_stage(work, "stage1") == 1 and count_stage(work, "dreambooth") == 2

