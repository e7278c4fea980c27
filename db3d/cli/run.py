"""`db3d run`: one subject x prompt x method through every stage, resumable in its output folder.

    out/config.yaml         the resolved config (an earlier, different one is kept as config.N.yaml)
    out/artifacts/          content-addressed stage outputs (DreamBooth, stage1, stage2, final, ...)
    out/exports/            turntables (mp4, gif), mesh (glb, obj), NeRF (safetensors), image grids
    out/summary.json        identity, per-stage wall times, artifact paths
    out/summary.parquet     the same as one row (config as flat columns), like every sweep trial
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

from db3d.core.artifacts import atomic_write_json
from db3d.core.config import RunConfig
from db3d.core.data import (
    SYNTHETIC_CLASS_NOUN,
    Subject,
    check_prompt,
    make_synthetic_subject,
    resolve_subject,
)
from db3d.core.results import result_row, save_config, write_rows
from db3d.eval.models import check_metric_weights
from db3d.method.personalize import instance_prompt
from db3d.method.stages import run_method
from db3d.models.backbones import build_backbone
from db3d.toyworld.truth import truth_for


def resolve_inputs(cfg: RunConfig) -> tuple[RunConfig, Subject, str]:
    """The subject and the prompt, validated; nothing is loaded or trained yet. The returned config
    names them explicitly (subject folder, class noun, prompt), as it is saved beside the outputs."""
    if cfg.prompt:  # before anything is generated or written
        check_prompt(cfg.prompt, cfg.dreambooth.identifier)
    if cfg.subject:
        subject = resolve_subject(cfg.subject, cfg.data_root or None, cfg.class_noun or None)
    else:  # the embedded default: a generated subject inside the output folder
        folder = make_synthetic_subject(Path(cfg.out) / "generated_subject", n_images=4, seed=cfg.seed)
        subject = resolve_subject(str(folder), None, cfg.class_noun or SYNTHETIC_CLASS_NOUN)
    prompt = cfg.prompt or instance_prompt(cfg, subject)
    check_prompt(prompt, cfg.dreambooth.identifier)
    cfg = replace(cfg, subject=str(subject.path), class_noun=subject.class_noun, prompt=prompt)
    return cfg, subject, prompt


def run(cfg: RunConfig) -> dict:
    out = Path(cfg.out)
    # 1. inputs, validated before any model loads, in the order a user needs them: the config was
    #    composed already; then the subject and data; then the weights (missing CLIP / DINO weights
    #    fail now, not after hours of training). A generated subject (no subject=) is written into
    #    `out`, so its weights are checked before it is made.
    if cfg.subject:
        cfg, subject, prompt = resolve_inputs(cfg)
        check_metric_weights(cfg)
    else:
        if cfg.prompt:
            check_prompt(cfg.prompt, cfg.dreambooth.identifier)
        check_metric_weights(cfg)
        cfg, subject, prompt = resolve_inputs(cfg)
    start = time.perf_counter()
    bb = build_backbone(cfg.backbone)  # missing real weights fail here, before anything is written
    backbone_seconds = time.perf_counter() - start
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out)
    torch.manual_seed(cfg.seed)
    # 2. every stage of the method, then the exports; a failure still leaves its row
    try:
        result = run_method(cfg, subject, prompt, out, bb=bb, truth=truth_for(subject.path))
        result.seconds["backbone"] = backbone_seconds
    except Exception as err:
        write_rows([result_row(cfg, subject.name, subject.class_noun, prompt, None, "failed",
                               f"{type(err).__name__}: {err}")], out / "summary.parquet")
        raise
    # 3. summary as JSON and as one Parquet row
    summary = {"subject": subject.name, "class_noun": subject.class_noun, "prompt": prompt,
               "method": cfg.method.name, "backbone": cfg.backbone.kind, "seed": cfg.seed,
               "seconds": result.seconds, "exports": {k: str(v) for k, v in result.exports.items()},
               "final": asdict(result.final), "keys": result.keys,
               "metrics": {k: v for k, v in result.metrics.items() if k != "views"}}
    atomic_write_json(out / "summary.json", summary)
    write_rows([result_row(cfg, subject.name, subject.class_noun, prompt, result, "ok")], out / "summary.parquet")
    if result.metrics.get("views"):
        write_rows(result.metrics["views"], out / "views.parquet")
    print(json.dumps({"out": str(out), "method": cfg.method.name, "prompt": prompt,
                      "seconds": {k: round(v, 2) for k, v in result.seconds.items()}}, indent=1))
    return summary
