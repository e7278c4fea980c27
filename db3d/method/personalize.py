"""Personalisation: one DreamBooth run per subject giving D_partial and D_full.

Content-addressed: the run lives under `<artifacts>/dreambooth/<key>/`, where the key hashes the
backbone, the subject's pixels, the prompts, the class images and the DreamBooth fields that the
run reads. A sweep over a later-stage setting finds the same folder and trains nothing.

Data parallel under torch.distributed (N > 1 ranks, e.g. a Ray Train worker group): every rank
calls dreambooth_run; rank 0 takes the run's lock and writes, and the key names N, since the run
trains on N x batch_size images a step.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from db3d.core.artifacts import (
    DreamBoothCheckpoint,
    artifact_lock,
    cache_root,
    content_key,
    read_done,
)
from db3d.core.config import RunConfig
from db3d.core.data import Subject, format_prompt
from db3d.method.data_parallel import rank_and_world
from db3d.method.class_images import class_images
from db3d.method.dreambooth import (
    checkpoint_folder,
    load_dreambooth,
    run_key,
    train_dreambooth,
)
from db3d.models.backbones import Backbone


def default_cache_dir(cfg: RunConfig) -> Path:
    return Path(cfg.cache_dir).expanduser() if cfg.cache_dir else cache_root()


def instance_prompt(cfg: RunConfig, subject: Subject) -> str:
    """"a sks dog": the identifier and the class noun (DreamBooth's training prompt)."""
    return format_prompt("a {0} {1}", cfg.dreambooth.identifier, subject.class_noun)


def class_prompt(subject: Subject) -> str:
    return f"a {subject.class_noun}"


@dataclass(frozen=True)
class Personalized:
    partial: DreamBoothCheckpoint
    full: DreamBoothCheckpoint
    seconds: float
    """Wall time spent here (class images + training; ~0 when reused)."""


def _class_key(cfg: RunConfig, bb: Backbone, subject: Subject) -> str | None:
    """Key of the class images of the prior-preservation loss; None when the run uses none.

    Not the run seed (cfg.seed): runs of a seed sweep share their class images (dreambooth.class_seed).
    """
    db = cfg.dreambooth
    if db.prior_preservation and db.num_class_images > 0 and db.prior_weight > 0:
        return content_key(bb.key, class_prompt(subject), db.num_class_images, db.class_seed, bb.sample_steps)
    return None


def dreambooth_folder(cfg: RunConfig, bb: Backbone, subject: Subject, images: torch.Tensor, artifacts: Path,
                      init: DreamBoothCheckpoint | None = None, world_size: int = 1) -> Path:
    """<artifacts>/dreambooth/<key> of the run on `images` by `world_size` data-parallel ranks."""
    key = run_key(bb, cfg.dreambooth, images, instance_prompt(cfg, subject), class_prompt(subject),
                  _class_key(cfg, bb, subject), cfg.seed, init, world_size)
    return Path(artifacts) / "dreambooth" / key


def finished_dreambooth(cfg: RunConfig, bb: Backbone, subject: Subject, images: torch.Tensor, artifacts: Path,
                        steps: list[int], init: DreamBoothCheckpoint | None = None,
                        world_size: int = 1) -> dict[int, DreamBoothCheckpoint] | None:
    """The run's checkpoints when every step in `steps` is done (nothing trains), else None."""
    folder = dreambooth_folder(cfg, bb, subject, images, artifacts, init, world_size)
    ckpts = {s: read_done(checkpoint_folder(folder, s), DreamBoothCheckpoint) for s in steps}
    return ckpts if all(c is not None for c in ckpts.values()) else None


def dreambooth_run(cfg: RunConfig, bb: Backbone, subject: Subject, images: torch.Tensor, artifacts: Path,
                   steps: list[int], init: DreamBoothCheckpoint | None = None) -> dict[int, DreamBoothCheckpoint]:
    """One content-addressed DreamBooth run on `images` (from `init` if given), under its lock.

    Data parallel when torch.distributed runs N > 1 ranks: all call this, rank 0 holds the lock.
    """
    db = cfg.dreambooth
    rank, world = rank_and_world()
    # 1. class images for the prior-preservation loss (cached by backbone, class, count, class seed)
    cls_imgs = None
    if _class_key(cfg, bb, subject) is not None:
        # concurrent trials share the drawing, batch by batch (class_images' own locks)
        cls_imgs = class_images(bb, class_prompt(subject), db.num_class_images, db.class_seed, default_cache_dir(cfg),
                                batch_size=max(1, db.batch_size))
    # 2. the run, keyed by what it reads (the other ranks follow rank 0 in at train_dreambooth's first barrier)
    folder = dreambooth_folder(cfg, bb, subject, images, artifacts, init, world)
    with artifact_lock(folder) if rank == 0 else contextlib.nullcontext():
        return train_dreambooth(bb, db, images, instance_prompt(cfg, subject), folder, steps, cfg.seed, folder.name,
                                cls_imgs, class_prompt(subject), init=init)


DreamBoothRunner = Callable[..., "dict[int, DreamBoothCheckpoint]"]
"""dreambooth_run's signature: how a method runs DreamBooth (sweeps on Ray Train pass their own)."""


def personalize(cfg: RunConfig, bb: Backbone, subject: Subject, images: torch.Tensor,
                artifacts: Path, run: DreamBoothRunner = dreambooth_run) -> Personalized:
    """Train (or reuse) the subject's DreamBooth; checkpoints at partial_steps and full_steps."""
    start = time.perf_counter()
    steps = personalization_steps(cfg)
    ckpts = run(cfg, bb, subject, images, artifacts, steps) if steps else {}
    return personalized(cfg, ckpts, bb.key, time.perf_counter() - start)


def personalization_steps(cfg: RunConfig) -> list[int]:
    """One run, two checkpoints: the steps of D_partial and D_full that train (0 is the base model)."""
    return [s for s in (cfg.dreambooth.partial_steps, cfg.dreambooth.full_steps) if s > 0]


def personalized(cfg: RunConfig, ckpts: dict[int, DreamBoothCheckpoint], backbone_key: str,
                 seconds: float = 0.0) -> Personalized:
    """D_partial and D_full from the run's checkpoints; a zero-step checkpoint is the base model itself."""
    db = cfg.dreambooth
    base = DreamBoothCheckpoint(path="", step=0, mode="base", key=backbone_key, backbone_key=backbone_key)
    return Personalized(partial=ckpts.get(db.partial_steps, base), full=ckpts.get(db.full_steps, base),
                        seconds=seconds)


def backbone_for(bb: Backbone, ckpt: DreamBoothCheckpoint) -> Backbone:
    """The backbone with a checkpoint applied (the base model for a zero-step checkpoint)."""
    return bb if ckpt.mode == "base" else load_dreambooth(bb, ckpt)
