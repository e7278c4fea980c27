"""Sweeps that lose a process: a SIGKILLed trial worker is retried by Tune and writes one row; a
SIGKILLed driver is resumed by rerunning the same command, losing and duplicating no row."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from sweep_run import ENV, mini_sweep, wait_for

from db3d.distributed.sink import read_results


def test_a_trial_whose_worker_is_killed_finishes_on_retry_with_one_row(tmp_path):
    spec = mini_sweep(tmp_path, lambdas=(1.0,), extra=", nerf.steps=20")
    pids = tmp_path / "pids"
    proc = subprocess.Popen([sys.executable, "-m", "db3d.cli", "sweep", f"sweep={spec}", f"out={tmp_path / 'o'}",
                             "num_cpus=2", "max_failures=2"], env={**ENV, "DB3D_TRIAL_PID_DIR": str(pids)},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    pid_file = wait_for("*.pid", pids)[0]
    wait_for("artifacts/stage1/*/fit_state.pt", tmp_path / "o")  # mid-stage: stage 1 is under way
    os.kill(int(pid_file.read_text()), signal.SIGKILL)
    out, _ = proc.communicate(timeout=400)
    assert proc.returncode == 0, out[-3000:]
    df = read_results(tmp_path / "o" / "results")
    assert len(df) == 1 and df.loc[0, "status"] == "ok"


def test_a_sweep_whose_driver_dies_resumes_without_lost_or_duplicated_rows(tmp_path):
    spec = mini_sweep(tmp_path, lambdas=(0.25, 0.5, 1.0))
    args = [sys.executable, "-m", "db3d.cli", "sweep", f"sweep={spec}", f"out={tmp_path / 'o'}", "num_cpus=2",
            "max_concurrent=1"]
    first = subprocess.Popen(args, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)  # its own process group: the driver and its local Ray
    wait_for("results/*/*/part-*.parquet", tmp_path / "o", timeout=200)
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

