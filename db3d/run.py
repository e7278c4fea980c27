"""`db3d run`: one subject x prompt through the pipeline, resumable in its output folder.

Today it runs the personalisation half of DreamBooth3D (D_partial and D_full from one DreamBooth
run) and writes samples of the prompt from both; the NeRF stages plug in after step 4.
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

import torch

from .artifacts import atomic_write_json, atomic_write_text
from .backbones import build_backbone
from .config import RunConfig, to_yaml
from .data import SYNTHETIC_CLASS_NOUN, Subject, check_prompt, load_subject_images, make_synthetic_subject, resolve_subject
from .export import save_grid
from .personalize import backbone_for, instance_prompt, personalize


def resolve_inputs(cfg: RunConfig) -> tuple[Subject, str]:
    """The subject and the prompt, validated; nothing is loaded or trained yet."""
    if cfg.subject:
        subject = resolve_subject(cfg.subject, cfg.data_root or None, cfg.class_noun or None)
    else:  # the embedded default: a generated subject inside the output folder
        folder = make_synthetic_subject(Path(cfg.out) / "generated_subject", n_images=4, seed=cfg.seed)
        subject = resolve_subject(str(folder), None, cfg.class_noun or SYNTHETIC_CLASS_NOUN)
    prompt = cfg.prompt or instance_prompt(cfg, subject)
    check_prompt(prompt, cfg.dreambooth.identifier)
    return subject, prompt


def save_config(cfg: RunConfig, out: Path) -> None:
    """config.yaml beside the outputs; an earlier, different one is kept as config.N.yaml."""
    text = to_yaml(cfg)
    path = out / "config.yaml"
    if path.exists() and path.read_text() != text:
        n = 1
        while (out / f"config.{n}.yaml").exists():
            n += 1
        path.rename(out / f"config.{n}.yaml")
    atomic_write_text(path, text)


def run(cfg: RunConfig) -> dict:
    out = Path(cfg.out)
    # 1. inputs, validated before any model loads
    subject, prompt = resolve_inputs(cfg)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out)
    times: dict[str, float] = {}
    torch.manual_seed(cfg.seed)

    # 2. backbone and the subject's images at its resolution
    t0 = time.perf_counter()
    bb = build_backbone(cfg.backbone)
    images, _masks = load_subject_images(subject, cfg.backbone.resolution)
    times["load"] = time.perf_counter() - t0

    # 3. DreamBooth: D_partial and D_full from one run (content-addressed under out/artifacts)
    db = personalize(cfg, bb, subject, images, out / "artifacts")
    times["dreambooth"] = db.seconds

    # 4. samples of the prompt from each checkpoint
    t0 = time.perf_counter()
    uncond = bb.encode_prompts([""])
    samples = {}
    for name, ckpt in (("partial", db.partial), ("full", db.full)):
        model = backbone_for(bb, ckpt)
        cond = model.encode_prompts([prompt] * 4)
        imgs = model.sample(cond, uncond.expand(4, -1, -1), 7.5, torch.Generator().manual_seed(cfg.seed),
                            model.sample_steps)
        samples[name] = str(save_grid(imgs, out / f"samples_{name}.png"))
    times["samples"] = time.perf_counter() - t0

    # 5. summary
    summary = {
        "subject": subject.name, "class_noun": subject.class_noun, "prompt": prompt,
        "backbone": cfg.backbone.kind, "seed": cfg.seed, "seconds": times,
        "dreambooth_partial": db.partial.path, "dreambooth_full": db.full.path, "samples": samples,
        "python": platform.python_version(), "torch": torch.__version__,
    }
    atomic_write_json(out / "summary.json", summary)
    print(json.dumps({"out": str(out), "subject": subject.name, "prompt": prompt, "seconds": times}, indent=1))
    return summary
