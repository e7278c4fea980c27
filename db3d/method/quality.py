"""A weight-free quality signal during the last NeRF stage, for early stopping (ASHA) and tracking.

Every `nerf.checkpoint_every` steps fit.py calls on_progress(step, losses, field); a sweep's trial
hands that to a `QualityProbe`, which

    1. renders V fixed views of the field (albedo over white, a small resolution, no jitter: the
       fit's random generator is not touched, so a probed fit is the same fit)
    2. scores them with what the run has:
         quality.toy.psnr, quality.toy.psnr_back    ToyWorld subjects: PSNR (dB) to the true object
                                                    on ToyWorld's scoring orbit (all / back views)
         quality.clip_t.<model>, quality.clip_i.<model>, quality.dino
                                                    metric weights found (or weights=random: the
                                                    machinery only): CLIP-T / CLIP-I / DINO of the views
    3. adds the fallback, the unweighted per-term loss values quality.loss.<term> = loss / its weight
       (lambda_recon, lambda_sds, lambda_nerf * lambda_<regulariser>): free, but not quality (the
       SDS value measures gradient size; it grows with guidance)

None of these depends on the loss weights, so trials with different weights compare on one scale
(the weighted total `nerf_loss` does not). `available_signals` says, before any run, which
signals a config will produce and whether higher or lower is better.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from db3d.core.cameras import orbit_cameras
from db3d.core.config import RunConfig
from db3d.eval.evaluate import EVAL_ELEVATION, load_models
from db3d.eval.metrics import mean_pairwise_cosine, strip_identifier
from db3d.eval.models import MetricWeightsNotFound, resolve_clip_weights, resolve_dino_weights
from db3d.eval.truth import GroundTruth
from db3d.nerf.render import render_views

TOY_SIGNALS = {"quality.toy.psnr": "max", "quality.toy.psnr_back": "max"}
LOSS_PREFIX = "quality.loss."
PROBE_SECONDS = "quality.probe_seconds"
"""Wall time the probe spent in this trial (renders + scores), to state its overhead."""


@dataclass
class ProbeSettings:
    """The sweep file's `quality:` key."""

    views: int = 4
    """Fixed views on the scoring orbit (evenly spaced in azimuth, view 0 at the front)."""
    resolution: int = 32
    """Side of the probe renders (ToyWorld's prior works at 32 px)."""
    n_samples: int = 0
    """Samples per ray; 0: the run's nerf.n_samples."""


def term_weights(cfg: RunConfig) -> dict[str, float]:
    """{loss term: its weight} in the method's last NeRF stage (stages.py: the final NeRF of
    dreambooth3d, the one SDS NeRF of the baselines); terms of weight 0 are left out."""
    m, n = cfg.method, cfg.nerf
    if m.name == "dreambooth3d":
        weights = {"sds": m.lambda_sds, "recon": m.lambda_recon}
    else:  # the baselines fit SDS at weight 1 (stages._sds_nerf)
        weights = {"sds": 1.0}
    weights.update({"orientation": m.lambda_nerf * n.lambda_orientation, "opacity": m.lambda_nerf * n.lambda_opacity,
                    "sparsity": m.lambda_nerf * n.lambda_sparsity, "distortion": m.lambda_nerf * n.lambda_distortion})
    return {k: float(w) for k, w in weights.items() if w > 0}


def _clip_weights_found(cfg: RunConfig) -> bool:
    if cfg.metrics.weights == "random":
        return True
    try:
        for name in cfg.metrics.clip_models:
            resolve_clip_weights(name, cfg.metrics.weights or None)
        if cfg.metrics.dino:
            resolve_dino_weights(cfg.metrics.weights or None)
    except (MetricWeightsNotFound, FileNotFoundError):
        return False
    return True


def available_signals(cfg: RunConfig, truth: GroundTruth | None) -> dict[str, str]:
    """{signal name: "max" | "min"} the probe produces for this config and subject (its ground truth, if
    any: db3d.eval.truth), without loading anything."""
    latent = cfg.method.name == "latent_nerf"  # its field renders latents: the loss fallback only
    out: dict[str, str] = {}
    if not latent and truth is not None:
        out.update(TOY_SIGNALS)
    if not latent and (cfg.metrics.clip_models or cfg.metrics.dino) and _clip_weights_found(cfg):
        out.update({f"quality.{k}.{name}": "max" for name in cfg.metrics.clip_models for k in ("clip_t", "clip_i")})
        if cfg.metrics.dino:
            out["quality.dino"] = "max"
    main = {"sds", "recon"}  # always computed when weighted; regularisers only when their inputs exist
    out.update({LOSS_PREFIX + t: "min" for t in term_weights(cfg) if t in main})
    return out


class QualityProbe:
    """Scores a NeRF during its fit (see the module doc); call it with (step, losses, field)."""

    def __init__(self, cfg: RunConfig, truth: GroundTruth | None, prompt: str, settings: ProbeSettings | None = None,
                 subject_images: torch.Tensor | None = None):
        self.cfg, self.prompt, self.settings = cfg, prompt, settings or ProbeSettings()
        self.signals = available_signals(cfg, truth)
        self.truth = truth if "quality.toy.psnr" in self.signals else None
        self.weights = term_weights(cfg)
        self.subject_images = subject_images  # (M, 3, H, W) in [0, 1], for CLIP-I / DINO
        self.seconds = 0.0
        self._models = None  # (CLIP models, DINO), loaded on first use

    def unweighted(self, losses: dict[str, float]) -> dict[str, float]:
        return {LOSS_PREFIX + k: v / self.weights[k] for k, v in losses.items() if self.weights.get(k)}

    @torch.no_grad()
    def __call__(self, step: int, losses: dict[str, float], field) -> dict[str, float]:
        start = time.perf_counter()
        out = self.unweighted(losses)
        if self.truth is not None:
            out.update(self._toy(field))
        if any(k.startswith(("quality.clip", "quality.dino")) for k in self.signals):
            out.update(self._clip(field))
        self.seconds += time.perf_counter() - start
        out[PROBE_SECONDS] = self.seconds
        return out

    def _renders(self, field, cams, device) -> torch.Tensor:  # -> (V, R, R, 3) in [0, 1], on the CPU
        n_samples = self.settings.n_samples or self.cfg.nerf.n_samples
        white = torch.ones(3, device=device)
        out = render_views(field, cams, n_samples=n_samples, shading="albedo", background=white)
        return out.rgb.clamp(0, 1).cpu()

    def _toy(self, field) -> dict[str, float]:
        device = next(field.parameters()).device
        return self.truth.probe(lambda cams: self._renders(field, cams.to(device), device), self.settings.views,
                                self.settings.resolution)

    def _clip(self, field) -> dict[str, float]:
        # 1.-2. the evaluation orbit (30 degrees elevation); CLIP-T to the identifier-free prompt,
        #       CLIP-I / DINO to the subject photos
        device = next(field.parameters()).device
        if self._models is None:
            self._models = load_models(self.cfg.metrics, device)
        clips, dino = self._models
        n = self.cfg.nerf
        cams = orbit_cameras(self.settings.views, EVAL_ELEVATION, n.orbit_distance, n.orbit_fov,
                             self.settings.resolution, device=device)
        views = self._renders(field, cams, device).permute(0, 3, 1, 2)  # (V, 3, R, R)
        text = strip_identifier(self.prompt, self.cfg.dreambooth.identifier)
        out = {}
        for model in clips:
            emb = model.embed_images(views)
            out[f"quality.clip_t.{model.name}"] = mean_pairwise_cosine(emb, model.embed_texts([text]))
            if self.subject_images is not None:
                out[f"quality.clip_i.{model.name}"] = mean_pairwise_cosine(emb, model.embed_images(self.subject_images))
        if dino is not None and self.subject_images is not None:
            out["quality.dino"] = mean_pairwise_cosine(dino.embed_images(views), dino.embed_images(self.subject_images))
        return out
