"""DreamBooth on N Ray Train workers: `trainer=ray_train` with `dreambooth.num_workers=N > 1`.

A trial's method then runs in passes, each a TorchTrainer launched by the trial (the Tune
function; Train V2 launches trainers inside the Tune function):

    1. a method pass (one worker: the NeRF stages, exports, metrics) reaches a DreamBooth run that
       is not finished: dreambooth_or_request() saves the run's inputs to a request file and
       stops the pass (NeedDreamBooth); every stage it finished is in the artifact store
    2. the trial launches run_dreambooth_trainer(): a TorchTrainer of N workers (Ray Train sets
       up the process group: gloo on CPU, nccl on GPU). Each worker rebuilds the backbone and
       calls the library's dreambooth_run: every rank draws its own batch of
       dreambooth.batch_size images, gradients are averaged (effective batch N x batch_size),
       rank 0 writes the checkpoints
    3. rank 0 reports every checkpoint through ray.train.report: the Ray checkpoint folder (under
       the run's storage, as Train V2 requires) holds hard links to the artifact's files, so the
       weights are on disk once; FailureConfig restarts a failed worker group, which resumes from
       the run's own resume state (train_state.pt, every rank's generator included)
    4. the trial starts the next method pass, which finds the run finished by its key and goes on

dreambooth3d takes three passes (personalisation, then stage 3's multi-view DreamBooth, then the
rest); dreambooth_fusion and latent_nerf two.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path

import torch

from ..dreambooth import STATE_FILE
from ..personalize import dreambooth_folder, dreambooth_run, finished_dreambooth
from .artifact_store import installed

REQUEST_FILE = "dreambooth_request.pt"


class NeedDreamBooth(Exception):
    """A method pass needs a DreamBooth run on N workers that is not finished yet."""

    def __init__(self, request: dict):
        super().__init__(f"DreamBooth run {request['key']} on {request['cfg'].dreambooth.num_workers} workers")
        self.request = request


def dreambooth_or_request(cfg, bb, subject, images: torch.Tensor, artifacts: Path, steps: list[int],
                          init=None) -> dict:
    """personalize.dreambooth_run's signature, for a method pass inside a trial.

    One worker (num_workers=1): the run itself, here. N workers: the finished run's checkpoints,
    or NeedDreamBooth carrying everything the N workers need (the backbone is rebuilt there).
    """
    n = cfg.dreambooth.num_workers
    if n <= 1:
        return dreambooth_run(cfg, bb, subject, images, artifacts, steps, init)
    done = finished_dreambooth(cfg, bb, subject, images, artifacts, steps, init, world_size=n)
    if done is not None:
        return done
    key = dreambooth_folder(cfg, bb, subject, images, artifacts, init, world_size=n).name
    raise NeedDreamBooth({"cfg": cfg, "subject": subject, "images": images.detach().cpu(),  # (N,3,R,R) in [0,1]
                          "artifacts": str(artifacts), "steps": list(steps), "init": init, "key": key})


def save_request(request: dict, path: Path) -> None:
    tmp = Path(path).with_name(f".{Path(path).name}.tmp")
    torch.save(request, tmp)
    os.replace(tmp, path)


def load_request(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)  # our own file: dataclasses + tensors


def _link_checkpoint(checkpoint, dir_name: str):
    """checkpoint_upload_fn: the artifact folder's files hard-linked into the run's storage
    (copied where links cannot cross file systems). The artifact store stays the source of truth."""
    import ray.train

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


def _dreambooth_loop(config: dict) -> None:
    """Ray Train worker: one rank of the data-parallel DreamBooth run in config["request"]."""
    import ray.train
    import ray.train.torch

    from ..backbones import build_backbone

    os.environ["DB3D_QUIET"] = "1"
    rank = ray.train.get_context().get_world_rank()
    marker = os.environ.get("DB3D_TRIAL_PID_DIR")  # tests: where a DreamBooth worker announces its PID
    if marker:
        Path(marker).mkdir(parents=True, exist_ok=True)
        (Path(marker) / f"dreambooth-rank{rank}.pid").write_text(str(os.getpid()))
    # 1. the run's inputs; the backbone on this worker's device (its own GPU when use_gpu)
    request = load_request(Path(config["request"]))
    cfg = request["cfg"]
    if config.get("use_gpu"):
        device = str(ray.train.torch.get_device())
        cfg = dataclasses.replace(cfg, backbone=dataclasses.replace(cfg.backbone, device=device))
    bb = build_backbone(cfg.backbone)
    folder = dreambooth_folder(cfg, bb, request["subject"], request["images"], Path(request["artifacts"]),
                               request["init"], world_size=ray.train.get_context().get_world_size())
    if rank == 0 and (folder / STATE_FILE).exists():  # a restarted worker group (FailureConfig)
        print(f"[db3d] DreamBooth run {folder.name}: resuming from its saved training state", flush=True)
    # 2. the library's run: data parallel over the process group Ray Train set up
    with installed(config.get("sweep", {})):  # artifacts in an object store: its lock and sync
        ckpts = dreambooth_run(cfg, bb, request["subject"], request["images"], Path(request["artifacts"]),
                               request["steps"], request["init"])
    # 3. every checkpoint through ray.train.report (a barrier: all ranks report, rank 0 the checkpoint)
    for step, ckpt in sorted(ckpts.items()):
        checkpoint = ray.train.Checkpoint.from_directory(ckpt.path) if rank == 0 else None
        ray.train.report({"step": step, "world_size": ray.train.get_context().get_world_size()},
                         checkpoint=checkpoint, checkpoint_dir_name=f"step-{step:06d}",
                         checkpoint_upload_fn=_link_checkpoint,
                         delete_local_checkpoint_after_upload=False)


def run_dreambooth_trainer(request_file: Path, sweep: dict, name: str):
    """The request's DreamBooth run as a TorchTrainer of dreambooth.num_workers workers.

    Each worker holds the sweep's per-trial resources (cpu=, gpu=); returns Ray Train's Result,
    whose checkpoint is the last step's (hard links to the artifact's files).
    """
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    n = load_request(request_file)["cfg"].dreambooth.num_workers
    gpu = float(sweep.get("resources", {}).get("gpu", 0))
    cpu = float(sweep.get("resources", {}).get("cpu", 1))
    trainer = TorchTrainer(
        _dreambooth_loop,
        train_loop_config={"request": str(request_file), "use_gpu": gpu > 0, "sweep": sweep},
        scaling_config=ScalingConfig(num_workers=n, use_gpu=gpu > 0,
                                     resources_per_worker={"CPU": cpu, **({"GPU": gpu} if gpu else {})}),
        run_config=RunConfig(name=name, storage_path=str(Path(sweep["out"]) / "ray_train"),
                             failure_config=FailureConfig(max_failures=int(sweep.get("max_failures", 1))),
                             checkpoint_config=CheckpointConfig(num_to_keep=None)),  # Ray deletes none
    )
    return trainer.fit()
