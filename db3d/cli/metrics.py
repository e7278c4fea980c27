"""`db3d metrics RESULTS [metrics.key=value ...]`: recompute the metrics of finished runs.

RESULTS is a sweep's results folder (or a `db3d run` output folder). For every ok trial, the
resolved config saved beside its outputs and its final NeRF are reloaded, the evaluation views are
rendered again and scored with the metric settings given here (e.g. real CLIP weights from a local
folder once they are available: `metrics.weights=/models/clip`), and the trial's row (and its
per-view rows) are rewritten in place, atomically.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
from omegaconf import OmegaConf

from db3d.core.config import RunConfig, validate
from db3d.core.data import load_subject_images, resolve_subject
from db3d.core.results import write_rows


def _load_config(trial_out: Path, overrides: list[str]):
    base = OmegaConf.structured(RunConfig)
    merged = OmegaConf.merge(base, OmegaConf.load(trial_out / "config.yaml"), OmegaConf.from_dotlist(overrides))
    cfg = OmegaConf.to_object(merged)
    validate(cfg)
    return cfg


def recompute(results: Path, overrides: list[str]) -> int:
    from db3d.eval.evaluate import evaluate_nerf, load_models  # heavy (torch): `db3d metrics --help` reads this module
    from db3d.models.backbones import build_backbone  # heavy (torch): as above

    single = (results / "summary.parquet").exists()
    files = [results / "summary.parquet"] if single else sorted(results.glob("method=*/subject=*/part-*.parquet"))
    models, done = None, 0
    for file in files:
        row = pd.read_parquet(file).iloc[0].to_dict()
        if row.get("status") != "ok":
            continue
        out = Path(row.get("out") or results)
        cfg = _load_config(out, overrides)
        if models is None:  # one set of models for every trial
            bb = build_backbone(cfg.backbone)
            models = load_models(cfg.metrics, bb.device)
        subject = resolve_subject(cfg.subject, cfg.data_root or None, cfg.class_noun or None)
        images, _ = load_subject_images(subject, cfg.backbone.resolution)
        nerf = out / "exports" / "nerf.safetensors"
        latent = bool(row.get("key.nerf")) and cfg.method.name == "latent_nerf"
        metrics = evaluate_nerf(cfg, nerf, latent, bb, images, cfg.prompt, subject.templates, subject.class_noun,
                                models, out / "exports" / "eval_views")
        views = metrics.pop("views", [])
        row = {k: v for k, v in row.items() if not k.startswith(("metric.", "metrics."))} | metrics
        write_rows([row], file)
        if views:
            target = out / "views.parquet" if single else results.parent / "views" / file.relative_to(results)
            write_rows([{"trial_id": row.get("trial_id", ""), "prompt": cfg.prompt, **v} for v in views], target)
        done += 1
        print(f"[db3d metrics] {file}: {len(metrics)} metric columns ({metrics.get('metrics.weights')} weights)")
    print(f"[db3d metrics] recomputed {done} trial(s)")
    return 0


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    results, overrides = Path(argv[0]), argv[1:]
    bad = [o for o in overrides if not o.startswith("metrics.")]
    if bad or not results.exists():
        print(f"db3d metrics: {'no such folder ' + str(results) if not results.exists() else 'only metrics.* keys: ' + ', '.join(bad)}",
              file=sys.stderr)
        return 2
    try:
        return recompute(results, overrides)
    except FileNotFoundError as err:  # missing metric weights, moved outputs
        print(f"db3d metrics: {err}", file=sys.stderr)
        return 2
