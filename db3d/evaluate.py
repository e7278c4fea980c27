"""Metrics of a run's final NeRF, computed inside the run (and so inside every sweep trial).

    1. render n_views at 30 degrees elevation over 360 degrees of azimuth, colour and textureless
    2. CLIP R-precision / CLIP-I / CLIP-T / Janus per CLIP model, DINO per render (db3d.metrics)
    3. flatten to columns `metric.<metric>.<model>.<render>` plus `metrics.weights` for the row

Random-weight models (the embedded default) are marked `metrics.weights = random`: such numbers
show the machinery, never quality, and the report says so.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from .config import MetricsConfig
from .export import load_field, turntable

EVAL_ELEVATION = 30.0
"""DreamFusion's R-precision views: 30 degrees elevation."""


def load_models(cfg: MetricsConfig, device: torch.device) -> tuple[list, object | None]:
    """The CLIP models and DINO named by the config, offline (a clear error when weights are missing)."""
    from .metrics_models import load_clip, load_dino

    weights = cfg.weights or None
    clips = [load_clip(name, weights if weights != "random" else "random", device) for name in cfg.clip_models]
    dino = load_dino(weights if weights != "random" else "random", device) if cfg.dino else None
    return clips, dino


def candidate_captions(cfg: MetricsConfig, templates, identifier: str, class_noun: str, prompt: str) -> list[str]:
    if cfg.captions:
        lines = [line.strip() for line in Path(cfg.captions).read_text().splitlines() if line.strip()]
        return lines + [prompt]
    return [t.format(identifier, class_noun) for t in templates] + [prompt]


def evaluate_nerf(cfg, field_file: Path, latent: bool, bb, subject_images: torch.Tensor, prompt: str,
                  templates, class_noun: str, models=None) -> dict:
    """{column: value} for the run's Parquet row."""
    from .metrics import evaluate_views

    m = cfg.metrics
    device = bb.device
    field = load_field(field_file, device).eval()
    orbit = dict(elevation_deg=EVAL_ELEVATION, distance=cfg.nerf.orbit_distance, fov_y_deg=cfg.nerf.orbit_fov,
                 n_samples=cfg.nerf.n_samples)
    # 1. the evaluation views (latent fields are decoded by the backbone's VAE)
    if latent:
        with torch.no_grad():
            colour = bb.decode(turntable(field, m.n_views, bb.model_resolution, **orbit).to(device)).cpu()
        colour = F.interpolate(colour, size=(m.resolution, m.resolution), mode="bilinear", align_corners=False)
    else:
        colour = turntable(field, m.n_views, m.resolution, **orbit)
    textureless = turntable(field, m.n_views, m.resolution, shading="textureless", **orbit)[:, :3]
    # 2. the metrics
    clips, dino = models if models is not None else load_models(m, device)
    captions = candidate_captions(m, templates, cfg.dreambooth.identifier, class_noun, prompt)
    rows = evaluate_views(colour.clamp(0, 1), textureless.clamp(0, 1), subject_images, prompt, captions,
                          cfg.dreambooth.identifier, clips, dino)
    # 3. flat columns
    out = {f"metric.{r['metric']}.{r['model']}.{'color' if r['render'] == 'colour' else r['render']}": r["value"]
           for r in rows}
    out["metrics.weights"] = "random" if m.weights == "random" else "pretrained"
    out["metrics.models"] = ",".join(sorted({r["model"] for r in rows}))
    out["metrics.n_views"] = m.n_views
    return out
