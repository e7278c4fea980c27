"""DreamBooth3D's stages and its baselines, as functions over artifacts (Raj et al., ICCV 2023, Fig. 2).

    DreamBooth on {I_i}:     D_partial (150 steps), D_full (800 steps)            personalize.py
    stage 1:  NeRF_1     = SDS(D_partial, T) + L_nerf                             stage1()
    stage 2:  I^pseudo_v = img2img_{D_full}(render(NeRF_1, P_v), t_pseudo)       stage2()
    stage 3:  D_multi    = D_partial + 150 steps on {I^pseudo_v} U {I_i}          stage3()
              NeRF_final = l_SDS SDS(D_multi, T) + l_recon ||render(P_v) - I^pseudo_v||_p + l_nerf L_nerf
    baselines: dreambooth_fusion = SDS(D_full, T) + L_nerf;  latent_nerf = the same in latent space

Every artifact is content-addressed under `store/<stage>/<key>/`: the key hashes the input
artifacts' keys and the config fields that the stage reads, so a rerun or a sweep point that
changes only lambda_recon recomputes stage 3's final NeRF alone, and one that changes t_pseudo
recomputes stages 2 and 3.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch

from .artifacts import DreamBoothCheckpoint, NerfCheckpoint, PseudoViews, RunResult, artifact_lock, content_key
from .backbones import Backbone
from .config import RunConfig
from .data import Subject
from .fit import ReconTerm, SDSTerm, fit_diagnostics, fit_nerf
from .personalize import DreamBoothRunner, Personalized, backbone_for, dreambooth_run, personalize
from .pseudo_views import is_fog, load_pseudo_views, make_pseudo_views


@dataclass
class Context:
    """What every stage of one run shares."""

    cfg: RunConfig
    bb: Backbone  # the base backbone (DreamBooth checkpoints are applied per stage)
    subject: Subject
    images: torch.Tensor  # (N, 3, R, R) subject photos in [0, 1] at the backbone's resolution
    prompt: str
    store: Path  # artifact root
    on_progress: object = None  # (step, losses) of the method's last NeRF stage, for early stopping
    run_dreambooth: DreamBoothRunner = dreambooth_run  # runs one DreamBooth run (Ray Train: on N workers)
    seconds: dict = field(default_factory=dict)  # stage -> wall time of this run
    keys: dict = field(default_factory=dict)  # stage -> artifact key
    diagnostics: dict = field(default_factory=dict)  # flat row columns: per-term losses, stage 1's fog


def _timed(ctx: Context, name: str, fn, *args):
    start = time.perf_counter()
    result = fn(*args)
    ctx.seconds[name] = ctx.seconds.get(name, 0.0) + time.perf_counter() - start
    ctx.keys[name] = getattr(result, "key", None)
    return result


def _locked(folder: Path, fn, *args, **kwargs):
    """Run a stage's compute under its artifact lock: concurrent trials compute it once."""
    with artifact_lock(folder):
        return fn(folder, *args, **kwargs)


def _sds_term(ctx: Context, bb: Backbone) -> SDSTerm:
    s = ctx.cfg.sds
    return SDSTerm(backbone=bb, prompt=ctx.prompt, guidance_scale=s.guidance_scale, t_min=s.t_min, t_max=s.t_max,
                   t_max_end=s.t_max_end, grad_clip=s.grad_clip, weight=ctx.cfg.method.lambda_sds,
                   view_dependent=ctx.cfg.nerf.view_dependent_prompts)


def _nerf_fields(cfg: RunConfig) -> dict:
    return {"nerf": asdict(cfg.nerf), "sds": asdict(cfg.sds), "render": cfg.render.resolution, "seed": cfg.seed}


def _sds_nerf(ctx: Context, stage: str, ckpt: DreamBoothCheckpoint, lambda_sds: float = 1.0,
              latent: bool = False) -> NerfCheckpoint:
    """A NeRF fitted by SDS alone from `ckpt` (stage 1 and the baselines)."""
    cfg = ctx.cfg
    key = content_key(stage, ckpt.key, ctx.prompt, _nerf_fields(cfg), lambda_sds, cfg.method.lambda_nerf)
    bb = backbone_for(ctx.bb, ckpt)
    term = _sds_term(ctx, bb)
    term.weight = lambda_sds
    channels = bb.model_channels if latent else 0
    res = bb.model_resolution if latent else cfg.render.resolution
    return _locked(ctx.store / stage / key, fit_nerf, key, cfg.nerf, res, cfg.nerf.steps, cfg.seed, bb.device,
                   sds=term, lambda_nerf=cfg.method.lambda_nerf, latent_channels=channels, desc=stage,
                   on_progress=None if stage == "stage1" else ctx.on_progress)


# ---------------------------------------------------------------------------------------------
def stage1(ctx: Context, d_partial: DreamBoothCheckpoint) -> NerfCheckpoint:
    """NeRF_1 = SDS(D_partial, T) + L_nerf: 3D-consistent, subject-ish."""
    return _sds_nerf(ctx, "stage1", d_partial)


def stage2(ctx: Context, nerf1: NerfCheckpoint, d_full: DreamBoothCheckpoint) -> PseudoViews:
    """Render N orbit views of NeRF_1, noise them to t_pseudo, denoise with D_full."""
    cfg = ctx.cfg
    pseudo_fields = {k: v for k, v in asdict(cfg.pseudo).items() if k not in ("fog_edge_opacity", "on_fog")}
    key = content_key("stage2", nerf1.key, d_full.key, ctx.prompt, pseudo_fields, cfg.nerf.orbit_elevation,
                      cfg.nerf.orbit_distance, cfg.nerf.orbit_fov, cfg.render.resolution, cfg.seed,
                      cfg.backbone.sample_steps)  # img2img takes a share of the sampler's steps
    bb = backbone_for(ctx.bb, d_full)
    with artifact_lock(ctx.store / "stage2" / key):
        return make_pseudo_views(nerf1, bb, ctx.prompt, cfg.pseudo, cfg.nerf, cfg.render.resolution,
                                 ctx.store / "stage2" / key, key, cfg.seed, bb.device, cfg.nerf.view_dependent_prompts)


def multiview_dreambooth(ctx: Context, d_partial: DreamBoothCheckpoint, pseudo: PseudoViews) -> DreamBoothCheckpoint:
    """D_multi: D_partial fine-tuned further on I_aug = {I_v^pseudo} U {I_i}."""
    cfg, db = ctx.cfg, ctx.cfg.dreambooth
    if db.multiview_steps == 0:
        return d_partial
    views, _ = load_pseudo_views(pseudo, ctx.bb.resolution)
    augmented = torch.cat([views, ctx.images])
    init = None if d_partial.mode == "base" else d_partial
    ckpts = ctx.run_dreambooth(cfg, ctx.bb, ctx.subject, augmented, ctx.store, [db.multiview_steps], init)
    return ckpts[db.multiview_steps]


def final_nerf(ctx: Context, d_multi: DreamBoothCheckpoint, pseudo: PseudoViews,
               nerf1: NerfCheckpoint) -> NerfCheckpoint:
    """NeRF_final = l_SDS SDS(D_multi) + l_recon ||render(P_v) - I_v^pseudo||_p + l_nerf L_nerf."""
    cfg, m = ctx.cfg, ctx.cfg.method
    init = nerf1 if m.final_init == "stage1" else None
    key = content_key("final", d_multi.key, pseudo.key, ctx.prompt, _nerf_fields(cfg), asdict(m),
                      init.key if init else None)
    bb = backbone_for(ctx.bb, d_multi)
    views, cams = load_pseudo_views(pseudo, cfg.render.resolution)
    recon = ReconTerm(views, cams, weight=m.lambda_recon, p=m.recon_norm_p, views_per_step=m.recon_views_per_step)
    sds = _sds_term(ctx, bb) if m.lambda_sds > 0 else None
    return _locked(ctx.store / "final" / key, fit_nerf, key, cfg.nerf, cfg.render.resolution, cfg.nerf.steps,
                   cfg.seed, bb.device, sds=sds, recon=recon, lambda_nerf=m.lambda_nerf, init=init, desc="final NeRF",
                   on_progress=ctx.on_progress)


def stage3(ctx: Context, d_partial: DreamBoothCheckpoint, pseudo: PseudoViews, nerf1: NerfCheckpoint,
           d_full: DreamBoothCheckpoint) -> NerfCheckpoint:
    """D_multi on the pseudo views, then the final NeRF; a foggy NeRF_1 is never stage 3's target."""
    fog = is_fog(pseudo, ctx.cfg.pseudo)
    ctx.diagnostics.update({"stage1.opacity_mean": pseudo.stage1_opacity_mean,
                            "stage1.opacity_edge": pseudo.stage1_opacity_edge, "stage1.fog": fog})
    if fog and ctx.cfg.pseudo.on_fog == "fail":
        raise FoggyStage1(f"stage 1's NeRF is fog: its orbit renders' border opacity is {pseudo.stage1_opacity_edge:.2f} "
                          f"> pseudo.fog_edge_opacity={ctx.cfg.pseudo.fog_edge_opacity}; its pseudo views "
                          f"({pseudo.path}) would be noise (pseudo.on_fog=fallback fits SDS from D_full instead)")
    if fog and ctx.cfg.pseudo.on_fog == "fallback":
        warnings.warn(f"stage 1's NeRF is fog (border opacity {pseudo.stage1_opacity_edge:.2f}): the final NeRF is "
                      "SDS from D_full alone (pseudo.on_fog=fallback)", stacklevel=2)
        ctx.diagnostics["stage3.fallback"] = "dreambooth_fusion"
        return _timed(ctx, "stage3_nerf", dreambooth_fusion, ctx, d_full)
    d_multi = _timed(ctx, "stage3_dreambooth", multiview_dreambooth, ctx, d_partial, pseudo)
    return _timed(ctx, "stage3_nerf", final_nerf, ctx, d_multi, pseudo, nerf1)


class FoggyStage1(RuntimeError):
    """Stage 1 ended as view-filling fog and pseudo.on_fog=fail."""


# ---------------------------------------------------------------------------------------------
def dreambooth_fusion(ctx: Context, d_full: DreamBoothCheckpoint) -> NerfCheckpoint:
    """Baseline: SDS from the fully trained DreamBooth, one stage."""
    return _sds_nerf(ctx, "dreambooth_fusion", d_full)


def latent_nerf(ctx: Context, d_full: DreamBoothCheckpoint) -> NerfCheckpoint:
    """Baseline: the NeRF renders latents; SDS in the latent space of D_full."""
    if ctx.bb.space != "latent":
        raise ValueError(f"latent_nerf needs a latent backbone; backbone {ctx.bb.kind} works in pixel space")
    return _sds_nerf(ctx, "latent_nerf", d_full, latent=True)


def run_stages(ctx: Context) -> NerfCheckpoint:
    """The method named by cfg.method.name, from DreamBooth to the final NeRF (Fig. 2)."""
    method = ctx.cfg.method.name
    db: Personalized = _timed(ctx, "dreambooth", personalize, ctx.cfg, ctx.bb, ctx.subject, ctx.images, ctx.store,
                              ctx.run_dreambooth)
    ctx.keys["dreambooth"] = db.full.key
    if method == "dreambooth3d":
        nerf1 = _timed(ctx, "stage1", stage1, ctx, db.partial)
        pseudo = _timed(ctx, "stage2", stage2, ctx, nerf1, db.full)
        ctx.diagnostics.update(fit_diagnostics(nerf1, "stage1"))
        final = stage3(ctx, db.partial, pseudo, nerf1, db.full)
        ctx.diagnostics.update(fit_diagnostics(final, "final"))
        return final
    if method in ("dreambooth_fusion", "latent_nerf"):
        fn = dreambooth_fusion if method == "dreambooth_fusion" else latent_nerf
        final = _timed(ctx, "nerf", fn, ctx, db.full)
        ctx.diagnostics.update(fit_diagnostics(final, "final"))
        return final
    raise ValueError(f"method.name={method!r}: must be dreambooth3d, dreambooth_fusion or latent_nerf")


# ---------------------------------------------------------------------------------------------
def toy_ground_truth(subject: Subject):
    """The true object of a ToyWorld subject folder (None for any other subject)."""
    from .toyworld.subjects import ground_truth

    return ground_truth(subject.path)


def run_method(cfg: RunConfig, subject: Subject, prompt: str, out: Path, bb: Backbone | None = None,
               store: Path | None = None, on_progress=None, run_dreambooth: Callable | None = None,
               seconds: dict | None = None) -> RunResult:
    """One subject x prompt x method: every stage (resuming what is done), then the exports.

    `store` is the artifact root (default out/artifacts); sweeps share one across trials.
    `run_dreambooth` runs each DreamBooth run (default personalize.dreambooth_run, in this process).
    `seconds` (stage -> wall time) is filled as stages finish and added to: a caller's dict keeps
    the times of a run that raises part way and carries them into a later call.
    """
    from .backbones import build_backbone
    from .data import load_subject_images
    from .exports_run import export_result

    out = Path(out)
    start = time.perf_counter()
    bb = bb if bb is not None else build_backbone(cfg.backbone)
    images, _ = load_subject_images(subject, cfg.backbone.resolution)
    ctx = Context(cfg=cfg, bb=bb, subject=subject, images=images, prompt=prompt, on_progress=on_progress,
                  store=Path(store) if store is not None else out / "artifacts",
                  run_dreambooth=run_dreambooth or dreambooth_run, seconds=seconds if seconds is not None else {})
    ctx.seconds["load"] = ctx.seconds.get("load", 0.0) + time.perf_counter() - start
    final = run_stages(ctx)
    exports = _timed(ctx, "export", export_result, ctx, final, out / "exports")
    metrics = {}
    if cfg.metrics.enabled:
        from .evaluate import evaluate_nerf

        metrics = _timed(ctx, "metrics", evaluate_nerf, cfg, final.field_file, final.latent, bb, images, prompt,
                         subject.templates, subject.class_noun, None, out / "exports" / "eval_views")
    truth = toy_ground_truth(subject)
    if cfg.metrics.enabled and truth is not None and not final.latent:  # a ToyWorld subject: score against its true shape
        from .toyworld.evaluate import score_field

        metrics.update(_timed(ctx, "toy_metrics", score_field, final.field_file, truth, cfg.nerf.n_samples, bb.device,
                              out / "exports" / "toy_compare.png"))
    for name in ("export", "metrics", "toy_metrics"):
        ctx.keys.pop(name, None)
    return RunResult(out=str(out), method=cfg.method.name, subject=subject.name, class_noun=subject.class_noun,
                     prompt=prompt, final=final, exports=exports, seconds=dict(ctx.seconds), keys=dict(ctx.keys),
                     diagnostics=dict(ctx.diagnostics), metrics=metrics)
