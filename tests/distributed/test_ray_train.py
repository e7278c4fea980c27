"""trainer=ray_train: each stage of a trial is a Ray Train run (db3d/distributed/executor.py),
DreamBooth on several data-parallel workers that survive a killed rank."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import torch
from sweep_run import ENV, mini_sweep, wait_for

from db3d.distributed.sink import read_results

FULL_STEPS = 20  # D_full's steps: enough left after the kill at the first resume state (step 2)


def test_each_stage_is_a_train_run_and_dreambooth_on_two_workers_survives_a_killed_worker(tmp_path, tiny_sd):
    """trainer=ray_train runs each stage of the trial as its own TorchTrainer (one Train run a stage,
    not one a trial). dreambooth.num_workers=2: each DreamBooth run is a 2-worker TorchTrainer (gloo).
    Rank 0 is killed mid-run; FailureConfig restarts the group, which resumes from the run's state, and
    every checkpoint is written once.

    One sweep carries both checks: a Train run costs ~10-15 s of process starts on 2 cores, so a second
    sweep for the one-worker case (dreambooth_fusion's stages are a subset of these) doubled the cost."""
    from db3d.core.artifacts import DreamBoothCheckpoint, read_done
    from db3d.method.dreambooth import load_dreambooth

    extra = f", dreambooth.num_workers=2, dreambooth.full_steps={FULL_STEPS}, dreambooth.resume_every=2"
    spec = mini_sweep(tmp_path, lambdas=(1.0,), extra=extra)
    pids, out = tmp_path / "pids", tmp_path / "o"
    proc = subprocess.Popen([sys.executable, "-m", "db3d.cli", "sweep", f"sweep={spec}", f"out={out}", "num_cpus=2",
                             "cpu=0.5", "trainer=ray_train", "max_failures=2"],
                            env={**ENV, "DB3D_TRIAL_PID_DIR": str(pids)}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    wait_for("artifacts/dreambooth/*/train_state.pt", out, timeout=300)  # personalisation under way
    killed = int((pids / "dreambooth-rank0.pid").read_text())
    assert not list(out.glob(f"artifacts/dreambooth/*/step-{FULL_STEPS:06d}"))  # the run has not finished
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
    assert sorted(r["steps"] for r in runs) == [2, FULL_STEPS] and {r["world_size"] for r in runs} == {2}
    assert len(list((out / "ray_train").glob("dreambooth-*"))) == 2
    # every other stage its own one-worker Train run too: one run a stage, not one a trial
    runs = {p.name.split("-")[0] for p in (out / "ray_train").iterdir() if p.is_dir()}
    assert {"dreambooth", "stage1", "stage2", "stage3_nerf", "export"} <= runs, runs
    # every checkpoint is on disk once: the Ray Train checkpoints hard-link the artifacts' files
    ray_ckpts = sorted((out / "ray_train").glob("dreambooth-*/step-*"))
    assert sorted(p.name for p in ray_ckpts) == ["step-000002", "step-000002", f"step-{FULL_STEPS:06d}"]
    weights = sorted(out.glob("artifacts/dreambooth/*/step-*/unet/diffusion_pytorch_model.safetensors"))
    assert len(weights) == 3
    for ckpt in ray_ckpts:
        file = ckpt / "unet" / "diffusion_pytorch_model.safetensors"
        assert file.stat().st_nlink == 2 and any(os.path.samefile(file, w) for w in weights)
    # and the reported checkpoint loads
    final = next(p for p in ray_ckpts if p.name == f"step-{FULL_STEPS:06d}")
    ckpt = read_done(final, DreamBoothCheckpoint)
    model = load_dreambooth(tiny_sd, DreamBoothCheckpoint(**{**ckpt.__dict__, "path": str(final)}))
    z, t = torch.randn(1, 4, 32, 32), torch.tensor([500])
    emb = tiny_sd.encode_prompts(["a sks toy"])
    assert not torch.allclose(model.predict_eps(z, t, emb), tiny_sd.predict_eps(z, t, emb))

