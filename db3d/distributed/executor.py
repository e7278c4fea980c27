"""Stages on Ray Train (`trainer=ray_train`): db3d.method.executor's interface, one Train run a stage.

The Tune trial (trial.py) is the driver of its stage DAG: it runs stages.run_stages, whose every
heavy stage comes here as `run(stage, fn, ctx, *args, workers=N)`:

    1. a TorchTrainer of N workers (a DreamBooth run: dreambooth.num_workers, data parallel over the
       process group Ray Train sets up: gloo on CPU, nccl on GPU; every other stage one worker), each
       worker holding the sweep's per-trial resources (cpu=, gpu=)
    2. each worker rebuilds the backbone on its own device and calls fn(ctx, *args); the stage
       resumes from its own state files (fit_state.pt, train_state.pt), so FailureConfig's restart of
       a killed worker group continues the stage where it stopped
    3. rank 0 hands its result back through a small Ray actor (the stage's artifact: a dataclass of
       paths and keys, never weights), with its peak memory; a DreamBooth run also reports each
       checkpoint to Ray Train (hard links to the artifact's files: the weights are on disk once)
    4. the last NeRF stage's quality signal (on_progress) reaches Tune through ray.train.report and
       Ray's TuneReportCallback, so ASHA can stop the trial during that stage

No exception, pass or file carries control flow: the trial's call returns the stage's artifact.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path
from typing import Any, Callable

import ray

from db3d.core.artifacts import DreamBoothCheckpoint
from db3d.core.progress import PROGRESS_LABEL_ENV
from db3d.core.results import process_peaks, reset_process_peaks
from db3d.distributed.artifact_store import installed
from db3d.method.executor import StageCost


@ray.remote(num_cpus=0)
class _Outcome:
    """Holds one stage's result between its rank-0 worker and the trial (in Ray's object store)."""

    def __init__(self):
        self.value = None

    def put(self, value) -> None:
        self.value = value

    def get(self):
        return self.value


class TrainProgress:
    """on_progress for a stage on a Train worker: the trial's reporter, its reports sent through
    ray.train.report (TuneReportCallback forwards them to the trial's Tune session)."""

    def __init__(self, reporter):
        self.reporter = reporter

    def __call__(self, step: int, losses: dict, field) -> None:
        import ray.train  # heavy (~0.7 s): inline trials import this module too, and never need it

        self.reporter.update(step, losses, field)
        ray.train.report(dict(self.reporter.last))


def _link_checkpoint(checkpoint, dir_name: str):
    """checkpoint_upload_fn: the artifact folder's files hard-linked into the run's storage
    (copied where links cannot cross file systems). The artifact store stays the source of truth."""
    import ray.train  # heavy: as in TrainProgress

    src = Path(checkpoint.path)
    dest = Path(ray.train.get_context().get_storage().experiment_fs_path) / dir_name
    for file in sorted(f for f in src.rglob("*") if f.is_file()):
        target = dest / file.relative_to(src)
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():  # a restored run reporting the same step again
            if os.path.samefile(file, target):
                continue
            target.unlink()
        try:
            os.link(file, target)
        except OSError:
            shutil.copy2(file, target)
    return ray.train.Checkpoint.from_directory(str(dest))


def _report_dreambooth(ckpts: dict[int, DreamBoothCheckpoint], rank: int, world: int) -> None:
    """Every checkpoint of a DreamBooth run through ray.train.report (all ranks: it is a barrier)."""
    import ray.train  # heavy: as in TrainProgress

    for step, ckpt in sorted(ckpts.items()):
        checkpoint = ray.train.Checkpoint.from_directory(ckpt.path) if rank == 0 else None
        ray.train.report({"step": step, "world_size": world}, checkpoint=checkpoint,
                         checkpoint_dir_name=f"step-{step:06d}", checkpoint_upload_fn=_link_checkpoint,
                         delete_local_checkpoint_after_upload=False)


def _label(stage: str) -> str:
    """A stage's name in Ray Train run folders and PID markers: every DreamBooth run is "dreambooth"."""
    return "dreambooth" if "dreambooth" in stage else stage


def _stage_worker(config: dict) -> None:
    """One Ray Train worker of a stage: rebuild the backbone here, run the stage, hand back the result."""
    import ray.train  # heavy: as in TrainProgress
    import ray.train.torch  # heavy (~2 s): as above

    os.environ["DB3D_QUIET"] = "1"
    os.environ[PROGRESS_LABEL_ENV] = config["trial_id"]  # its progress records name the trial
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    marker = os.environ.get("DB3D_TRIAL_PID_DIR")  # tests: where a stage worker announces its PID
    if marker:
        Path(marker).mkdir(parents=True, exist_ok=True)
        (Path(marker) / f"{_label(config['stage'])}-rank{rank}.pid").write_text(str(os.getpid()))
    # 1. the stage's context on this worker's device (its own GPU when use_gpu)
    ctx = config["ctx"]
    if config["use_gpu"]:
        device = str(ray.train.torch.get_device())
        ctx = dataclasses.replace(ctx, cfg=dataclasses.replace(
            ctx.cfg, backbone=dataclasses.replace(ctx.cfg.backbone, device=device)))
    if config.get("reporter") is not None:
        ctx.on_progress = TrainProgress(config["reporter"])
    # 2. the stage itself (resuming from its state files), with its peak memory
    reset_process_peaks()
    with installed(config.get("sweep", {})):  # artifacts in an object store: its lock and sync
        result = config["fn"](ctx, *config["args"])
    rss, cuda = process_peaks()
    # 3. a DreamBooth run's checkpoints to Ray Train; the result to the trial
    if isinstance(result, dict) and result and all(isinstance(c, DreamBoothCheckpoint) for c in result.values()):
        _report_dreambooth(result, rank, world)
    if rank == 0:
        reporter = config.get("reporter")
        ray.get(config["outcome"].put.remote({"result": result, "rss_mb": rss, "cuda_mb": cuda,
                                              "last": dict(ctx.on_progress.reporter.last) if reporter else None}))


class RayTrainExecutor:
    """Each stage a Ray Train run (see the module doc); `sweep` is the trial's sweep dict."""

    def __init__(self, sweep: dict, trial_id: str, reporter=None):
        self.sweep, self.trial_id, self.reporter = sweep, trial_id, reporter
        self.calls = 0

    def run(self, stage: str, fn: Callable[..., Any], ctx, *args, workers: int = 1) -> tuple[Any, StageCost]:
        from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig  # heavy: trainer=ray_train
        from ray.train.torch import TorchTrainer  # heavy: as above
        from ray.tune.integration.ray_train import TuneReportCallback  # heavy: as above

        res = self.sweep.get("resources", {})
        gpu, cpu = float(res.get("gpu", 0)), float(res.get("cpu", 1))
        reporter = self.reporter if ctx.on_progress is not None else None  # the last NeRF stage's signal
        outcome = _Outcome.remote()
        name = f"{_label(stage)}-{self.trial_id}-{self.calls}"
        self.calls += 1
        trainer = TorchTrainer(
            _stage_worker,
            train_loop_config={"stage": stage, "fn": fn, "ctx": ctx.for_worker(), "args": args, "outcome": outcome,
                               "use_gpu": gpu > 0, "sweep": self.sweep, "reporter": reporter,
                               "trial_id": self.trial_id},
            scaling_config=ScalingConfig(num_workers=max(1, workers), use_gpu=gpu > 0,
                                         resources_per_worker={"CPU": cpu, **({"GPU": gpu} if gpu else {})}),
            run_config=RunConfig(name=name, storage_path=str(Path(self.sweep["out"]) / "ray_train"),
                                 failure_config=FailureConfig(max_failures=int(self.sweep.get("max_failures", 1))),
                                 checkpoint_config=CheckpointConfig(num_to_keep=None),  # Ray deletes none
                                 callbacks=[TuneReportCallback()] if reporter is not None else []),
        )
        trainer.fit()
        got = ray.get(outcome.get.remote())
        ray.kill(outcome)
        if got is None:
            raise RuntimeError(f"stage {stage} ({name}): the Ray Train run ended without a result from rank 0")
        if reporter is not None and got["last"]:
            reporter.last.update(got["last"])  # the trial's row carries the scheduler's last signal
        return got["result"], StageCost(rss_mb=got["rss_mb"], cuda_mb=got["cuda_mb"])
