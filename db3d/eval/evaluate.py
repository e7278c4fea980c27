"""Metrics of a run's final NeRF, computed inside the run (and so inside every sweep trial).

    1. render n_views at 30 degrees elevation over 360 degrees of azimuth, colour and textureless
    2. CLIP R-precision / CLIP-I / CLIP-T / Janus per CLIP model, DINO per render (db3d.eval.metrics)
    3. flatten to columns `metric.<metric>.<model>.<render>` plus `metrics.weights` for the row

Random-weight models (the embedded default) are marked `metrics.weights = random`: such numbers
show the machinery, never quality, and the report says so.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

from db3d.core.config import MetricsConfig
from db3d.eval.metrics import evaluate_views, r_precision, strip_identifier
from db3d.eval.models import load_clip, load_dino
from db3d.export.media import to_uint8, turntable
from db3d.nerf.io import load_field

EVAL_ELEVATION = 30.0
"""DreamFusion's R-precision views: 30 degrees elevation."""


def load_models(cfg: MetricsConfig, device: torch.device) -> tuple[list, object | None]:
    """The CLIP models and DINO named by the config, offline (a clear error when weights are missing)."""
    weights = cfg.weights or None
    clips = [load_clip(name, weights if weights != "random" else "random", device) for name in cfg.clip_models]
    dino = load_dino(weights if weights != "random" else "random", device) if cfg.dino else None
    return clips, dino


def scores_anything(cfg: MetricsConfig) -> bool:
    """Whether the config names any model to score with (ToyWorld's preset names none: its runs are
    scored against their ground truth instead)."""
    return bool(cfg.clip_models) or bool(cfg.dino)


def candidate_captions(cfg: MetricsConfig, templates, identifier: str, class_noun: str, prompt: str) -> list[str]:
    if cfg.captions:
        lines = [line.strip() for line in Path(cfg.captions).read_text().splitlines() if line.strip()]
        return lines + [prompt]
    return [t.format(identifier, class_noun) for t in templates] + [prompt]


def per_view_rows(model, views: dict, captions: list[str], true_caption: str, azimuths: list[float],
                  files: dict) -> list[dict]:
    """One row per evaluation view and render kind: CLIP-T of the view, and whether it retrieves
    the true caption (its R-precision hit), with the view's azimuth and image file."""
    text = model.embed_texts(captions)  # (C, D) unit rows
    true_index = captions.index(true_caption)
    rows = []
    for kind, imgs in views.items():
        emb = model.embed_images(imgs)  # (K, D)
        for i in range(emb.shape[0]):
            hit, rank = r_precision(emb[i:i + 1], text, true_index)
            rows.append({"view": i, "azimuth_deg": azimuths[i], "render": kind, "model": model.name,
                         "weights": model.weights, "clip_t": float(emb[i] @ text[true_index]),
                         "r_precision_hit": hit, "clip_rank": rank, "uri": str(files[kind][i])})
    return rows


def evaluate_nerf(cfg, field_file: Path, latent: bool, bb, subject_images: torch.Tensor, prompt: str,
                  templates, class_noun: str, models=None, views_dir: Path | None = None) -> dict:
    """{column: value} for the run's Parquet row; with views_dir, also "views": per-view rows (and
    the evaluation renders saved there as PNG)."""
    m = cfg.metrics
    device = bb.device
    clips, dino = models if models is not None else load_models(m, device)
    if not clips and dino is None:  # nothing to score with (e.g. ToyWorld, scored against its ground truth)
        return {}
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
    captions = candidate_captions(m, templates, cfg.dreambooth.identifier, class_noun, prompt)
    rows = evaluate_views(colour.clamp(0, 1), textureless.clamp(0, 1), subject_images, prompt, captions,
                          cfg.dreambooth.identifier, clips, dino)
    # 3. flat columns
    out = {f"metric.{r['metric']}.{r['model']}.{'color' if r['render'] == 'colour' else r['render']}": r["value"]
           for r in rows}
    out["metrics.weights"] = "random" if m.weights == "random" else "pretrained"
    out["metrics.models"] = ",".join(sorted({r["model"] for r in rows}))
    out["metrics.n_views"] = m.n_views
    # 4. per-view rows (first CLIP model), with the renders saved beside them
    if views_dir is not None and clips:
        views = {"color": colour.clamp(0, 1), "textureless": textureless.clamp(0, 1)}
        files: dict[str, list[Path]] = {}
        for kind, imgs in views.items():
            Path(views_dir).mkdir(parents=True, exist_ok=True)
            files[kind] = [Path(views_dir) / f"{kind}_{i:02d}.png" for i in range(len(imgs))]
            for arr, f in zip(to_uint8(imgs), files[kind]):
                Image.fromarray(arr).save(f)
        ident = cfg.dreambooth.identifier
        stripped = list(dict.fromkeys(strip_identifier(c, ident) for c in captions))
        azimuths = [360.0 * i / m.n_views for i in range(m.n_views)]
        out["views"] = per_view_rows(clips[0], views, stripped, strip_identifier(prompt, ident), azimuths, files)
    return out
