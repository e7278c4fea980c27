"""trainer=ray_train: each stage of a trial is a Ray Train run (db3d/distributed/executor.py),
DreamBooth on several data-parallel workers that survive a killed rank."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import torch
from sweep_run import ENV, mini_sweep, run_sweep, wait_for

from db3d.distributed.sink import read_results


def test_trainer_mode_runs_each_trial_in_a_torch_trainer(tmp_path):
    """One fusion trial (DreamBooth, one NeRF stage, the exports): each stage its own Ray Train run.
    The three-stage method on Ray Train, with 2 DreamBooth workers, is the test below."""
    spec = mini_sweep(tmp_path, lambdas=(1.0,), method="dreambooth_fusion")
    proc = run_sweep([f"sweep={spec}", f"out={tmp_path / 'o'}", "num_cpus=2", "trainer=ray_train"])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    df = read_results(tmp_path / "o" / "results")
    assert len(df) == 1 and df.loc[0, "status"] == "ok"
    assert any((tmp_path / "o" / "ray_train").iterdir())  # the TorchTrainer's run folder
    runs = {p.name.split("-")[0] for p in (tmp_path / "o" / "ray_train").iterdir() if p.is_dir()}
    assert {"dreambooth", "nerf"} <= runs, runs  # one Train run per stage, not one per trial


def test_dreambooth_on_two_train_workers_survives_a_killed_worker_and_writes_each_checkpoint_once(tmp_path, tiny_sd):
    """dreambooth.num_workers=2: each DreamBooth run is a 2-worker TorchTrainer (gloo). Rank 0 is
    killed mid-run; FailureConfig restarts the group, which resumes from the run's state."""
    from db3d.core.artifacts import DreamBoothCheckpoint, read_done
    from db3d.method.dreambooth import load_dreambooth

    extra = ", dreambooth.num_workers=2, dreambooth.full_steps=40, dreambooth.resume_every=2"
    spec = mini_sweep(tmp_path, lambdas=(1.0,), extra=extra)
    pids, out = tmp_path / "pids", tmp_path / "o"
    proc = subprocess.Popen([sys.executable, "-m", "db3d.cli", "sweep", f"sweep={spec}", f"out={out}", "num_cpus=2",
                             "cpu=0.5", "trainer=ray_train", "max_failures=2"],
                            env={**ENV, "DB3D_TRIAL_PID_DIR": str(pids)}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    wait_for("artifacts/dreambooth/*/train_state.pt", out, timeout=300)  # personalisation under way
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

