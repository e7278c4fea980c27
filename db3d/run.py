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

from .artifacts import atomic_write_json, atomic_write_text
from .backbones import build_backbone
from .config import RunConfig, to_yaml
from .data import SYNTHETIC_CLASS_NOUN, Subject, check_prompt, make_synthetic_subject, resolve_subject
from .personalize import instance_prompt
from .results import result_row, write_rows
from .stages import run_method


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


def check_metric_weights(cfg: RunConfig) -> None:
    """Find the metric models' weights (no loading) when metrics are on and not random."""
    m = cfg.metrics
    if not m.enabled or m.weights == "random":
        return
    from .metrics_models import resolve_clip_weights, resolve_dino_weights

    for name in m.clip_models:
        resolve_clip_weights(name, m.weights or None)
    if m.dino:
        resolve_dino_weights(m.weights or None)


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
        result = run_method(cfg, subject, prompt, out, bb=bb)
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
