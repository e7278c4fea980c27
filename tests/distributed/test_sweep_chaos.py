"""Chaos: trial workers SIGKILLed at random points of a small sweep, and a NaN injected into SDS.

Every sweep runs in its own subprocess with its own local Ray (RAY_AUTH_MODE set explicitly); the
only processes killed are trial workers of that sweep, found through the PID files trials write
(DB3D_TRIAL_PID_DIR) and checked to descend from the sweep's own process.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import psutil
from sweep_checks import check_artifacts, check_results
from sweep_run import ENV, mini_sweep

from db3d.distributed.sink import read_results

INJECTIONS = 10


def _descendants(pid: int) -> set[int]:
    try:
        return {p.pid for p in psutil.Process(pid).children(recursive=True)}
    except psutil.Error:
        return set()


def test_trial_workers_killed_at_random_points_leave_one_ok_row_each_and_no_half_written_stage(tmp_path):
    spec = mini_sweep(tmp_path, lambdas=(0.5, 1.0, 2.0))  # 3 trials sharing DreamBooth and stage 1
    pids, out = tmp_path / "pids", tmp_path / "o"
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    start = time.time()
    proc = subprocess.Popen([sys.executable, "-m", "db3d.cli", "sweep", f"sweep={spec}", f"out={out}", "num_cpus=2",
                             "max_failures=50"], env={**ENV, "DB3D_TRIAL_PID_DIR": str(pids)},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    killed: list[tuple[float, str]] = []  # (seconds into the sweep, the trial)
    due: dict[int, float] = {}  # worker pid -> when it is killed (a random point of its life)
    try:
        while proc.poll() is None and len(killed) < INJECTIONS and time.time() - start < 900:
            time.sleep(0.2)
            ours = _descendants(proc.pid)
            for pid_file in pids.glob("*.pid") if pids.exists() else []:
                try:
                    pid = int(pid_file.read_text())
                except ValueError:  # being written
                    continue
                if pid in ours and pid not in due:
                    due[pid] = time.time() + rng.uniform(0.5, 4.0)  # a retried worker often dies again: 10 kills fit in any sweep
                if pid in ours and due.get(pid, float("inf")) <= time.time() and len(killed) < INJECTIONS:
                    os.kill(pid, signal.SIGKILL)
                    due[pid] = float("inf")
                    killed.append((round(time.time() - start, 1), pid_file.stem))
        log, _ = proc.communicate(timeout=900)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
    wall = time.time() - start
    assert proc.returncode == 0, log[-4000:]
    assert len(killed) >= INJECTIONS, f"only {len(killed)} injections: the sweep ended first"
    figures = check_results(out, expected_trials=3)  # one ok row per trial, no partial Parquet visible
    stages = check_artifacts(out)  # every done.json names complete files
    assert stages.get("final") == 3 and stages.get("stage1") == 1 and stages.get("dreambooth", 0) >= 2, stages
    print(f"\nchaos (seed {seed}): {len(killed)} SIGKILLs of trial workers at {killed}; {figures}; "
          f"finished stages {stages}; sweep wall time {wall:.0f}s")


def test_a_nan_in_sds_fails_that_trial_with_the_reason_in_its_row_while_the_others_finish(tmp_path):
    spec = tmp_path / "nan.yaml"
    spec.write_text("""name: nan
overrides: [preset=smoke, metrics.enabled=false]
subjects: {generated: 1}
prompts: ["a {0} {1}"]
grid:
  method: [dreambooth_fusion]
  sds.guidance_scale: [nan, 7.5]   # NaN guidance: the guided noise estimate, so the SDS gradient, is NaN
resources: {cpu: 1, gpu: 0}
max_concurrent: 2
""")
    proc = subprocess.run([sys.executable, "-m", "db3d.cli", "sweep", f"sweep={spec}", f"out={tmp_path / 'o'}",
                           "num_cpus=2", "max_failures=0"], env=ENV, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]  # a failed trial: exit 1
    assert "1/2 trials ok, 0 stopped early, 1 failed" in proc.stdout
    df = read_results(tmp_path / "o" / "results")
    assert len(df) == 2 and df["trial_id"].is_unique
    bad = df[df["config.sds.guidance_scale"].isna()].iloc[0]
    good = df[df["config.sds.guidance_scale"] == 7.5].iloc[0]
    assert bad["status"] == "failed" and "SDSNonFinite" in bad["error"] and "not finite" in bad["error"]
    assert good["status"] == "ok" and not good["error"]
    check_artifacts(tmp_path / "o")


def test_the_checks_catch_a_half_written_stage_and_a_partial_parquet_file(tmp_path):
    """The checks above could fail: a truncated file named by a done.json, a visible partial part file."""
    import json

    import pytest
    import torch
    from safetensors.torch import save_file

    from db3d.distributed.sink import write_trial_row

    out = tmp_path / "o"
    folder = out / "artifacts" / "final" / "abc"
    folder.mkdir(parents=True)
    save_file({"w": torch.zeros(64, 64)}, str(folder / "field.safetensors"))
    (folder / "done.json").write_text(json.dumps({"type": "NerfCheckpoint", "path": str(folder), "key": "abc"}))
    assert check_artifacts(out) == {"final": 1}
    data = (folder / "field.safetensors").read_bytes()
    (folder / "field.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(AssertionError, match="incomplete"):
        check_artifacts(out)
    (folder / "field.safetensors").unlink()
    with pytest.raises(AssertionError, match="field.safetensors"):
        check_artifacts(out)

    results = out / "results"
    write_trial_row(results, {"method": "m", "subject": "s", "trial_id": "t1", "status": "ok", "error": ""})
    part = results / "method=m" / "subject=s" / ".part-t2.parquet.99.tmp"  # a killed writer's temp file
    part.write_bytes(b"PAR1 half")
    assert check_results(out, expected_trials=1) == {"rows": 1, "lost": 0, "duplicated": 0, "hidden_temp_files": 1}
    part.rename(results / "method=m" / "subject=s" / "part-t2.parquet")  # visible to readers: caught
    with pytest.raises(Exception):
        check_results(out, expected_trials=1)
