"""Personalisation: one DreamBooth run per subject giving D_partial and D_full.

Content-addressed: the run lives under `<artifacts>/dreambooth/<key>/`, where the key hashes the
backbone, the subject's pixels, the prompts, the class images and the DreamBooth fields that the
run reads. A sweep over a later-stage setting finds the same folder and trains nothing.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .artifacts import DreamBoothCheckpoint, artifact_lock, content_key
from .backbones import Backbone
from .config import RunConfig
from .data import Subject, format_prompt
from .dreambooth import class_images, load_dreambooth, run_key, train_dreambooth


def default_cache_dir(cfg: RunConfig) -> Path:
    import os

    return Path(cfg.cache_dir or os.environ.get("DB3D_CACHE") or Path.home() / ".cache" / "db3d").expanduser()


def instance_prompt(cfg: RunConfig, subject: Subject) -> str:
    """"a sks dog": the identifier and the class noun (DreamBooth's training prompt)."""
    return format_prompt("a {0} {1}", cfg.dreambooth.identifier, subject.class_noun)


def class_prompt(subject: Subject) -> str:
    return f"a {subject.class_noun}"


def locked_class_images(bb: Backbone, prompt: str, n: int, seed: int, cache_dir: Path) -> torch.Tensor:
    """class_images under a lock on the cache entry (concurrent trials generate them once)."""
    with artifact_lock(Path(cache_dir) / "class_images" / content_key(bb.key, prompt, n, seed)):
        return class_images(bb, prompt, n, seed, cache_dir)


@dataclass(frozen=True)
class Personalized:
    partial: DreamBoothCheckpoint
    full: DreamBoothCheckpoint
    seconds: float
    """Wall time spent here (class images + training; ~0 when reused)."""


def dreambooth_run(cfg: RunConfig, bb: Backbone, subject: Subject, images: torch.Tensor, artifacts: Path,
                   steps: list[int], init: DreamBoothCheckpoint | None = None) -> dict[int, DreamBoothCheckpoint]:
    """One content-addressed DreamBooth run on `images` (from `init` if given), under its lock."""
    db = cfg.dreambooth
    # 1. class images for the prior-preservation loss (cached by backbone, class, count, seed)
    cls_imgs, cls_key = None, None
    if db.prior_preservation and db.num_class_images > 0 and db.prior_weight > 0:
        cls_imgs = locked_class_images(bb, class_prompt(subject), db.num_class_images, cfg.seed, default_cache_dir(cfg))
        cls_key = content_key(bb.key, class_prompt(subject), db.num_class_images, cfg.seed, bb.sample_steps)
    # 2. the run, keyed by what it reads
    key = run_key(bb, db, images, instance_prompt(cfg, subject), class_prompt(subject), cls_key, cfg.seed, init)
    with artifact_lock(artifacts / "dreambooth" / key):
        return train_dreambooth(bb, db, images, instance_prompt(cfg, subject), artifacts / "dreambooth" / key,
                                steps, cfg.seed, key, cls_imgs, class_prompt(subject), init=init)


def personalize(cfg: RunConfig, bb: Backbone, subject: Subject, images: torch.Tensor,
                artifacts: Path) -> Personalized:
    """Train (or reuse) the subject's DreamBooth; checkpoints at partial_steps and full_steps."""
    start = time.perf_counter()
    db = cfg.dreambooth
    # one run, two checkpoints (a zero-step checkpoint is the base model itself)
    steps = [s for s in (db.partial_steps, db.full_steps) if s > 0]
    ckpts = dreambooth_run(cfg, bb, subject, images, artifacts, steps) if steps else {}
    base = DreamBoothCheckpoint(path="", step=0, mode="base", key=bb.key, backbone_key=bb.key)
    return Personalized(partial=ckpts.get(db.partial_steps, base), full=ckpts.get(db.full_steps, base),
                        seconds=time.perf_counter() - start)


def backbone_for(bb: Backbone, ckpt: DreamBoothCheckpoint) -> Backbone:
    """The backbone with a checkpoint applied (the base model for a zero-step checkpoint)."""
    return bb if ckpt.mode == "base" else load_dreambooth(bb, ckpt)
