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

Each heavy stage runs through `ctx.execute(name, fn, *artifacts)` (executor.py): a call in this
process (`db3d run`, tests) or a Ray Train run on the sweep's workers (trainer=ray_train), where
a DreamBooth run takes dreambooth.num_workers data-parallel workers. The functions here stay the
paper's figure either way; the process that calls run_stages only orchestrates.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from db3d.core.artifacts import DreamBoothCheckpoint, NerfCheckpoint, PseudoViews, RunResult, artifact_lock, content_key
from db3d.core.config import RunConfig
from db3d.core.data import Subject, load_subject_images
from db3d.eval.evaluate import evaluate_nerf, scores_anything
from db3d.eval.truth import GroundTruth
from db3d.export.result import export_result
from db3d.method.data_parallel import rank_and_world
from db3d.method.dreambooth import STATE_FILE
from db3d.method.executor import INLINE, Executor, StageCost
from db3d.method.fit import ReconTerm, SDSTerm, fit_diagnostics, fit_nerf
from db3d.method.personalize import (Personalized, backbone_for, default_cache_dir, dreambooth_folder, dreambooth_run,
                                     personalization_steps, personalized)
from db3d.method.pseudo_views import is_fog, load_pseudo_views, make_pseudo_views
from db3d.models.backbones import Backbone, backbone_key, build_backbone, resolve_device


@dataclass
class Context:
    """What every stage of one run shares."""

    cfg: RunConfig
    subject: Subject
    images: torch.Tensor  # (N, 3, R, R) subject photos in [0, 1] at the backbone's resolution
    prompt: str
    store: Path  # artifact root
    backbone: Backbone | None = None  # the base backbone, built on first use (`bb`) where a stage runs
    on_progress: object = None  # (step, losses, field) of the method's last NeRF stage, for early stopping
    executor: Executor = INLINE  # where each heavy stage runs (executor.py)
    seconds: dict = field(default_factory=dict)  # stage -> wall time of this run (a StageMeter in sweeps)
    keys: dict = field(default_factory=dict)  # stage -> artifact key
    diagnostics: dict = field(default_factory=dict)  # flat row columns: per-term losses, stage 1's fog

    @property
    def bb(self) -> Backbone:
        """The base backbone (DreamBooth checkpoints are applied per stage), loaded where it is first used."""
        if self.backbone is None:
            self.backbone = build_backbone(self.cfg.backbone)
        return self.backbone

    def for_worker(self) -> "Context":
        """The context a stage needs elsewhere: no backbone (rebuilt there), stages run inline there."""
        return replace(self, backbone=None, executor=INLINE, on_progress=None, seconds={}, keys=dict(self.keys),
                       diagnostics={})

    def execute(self, name: str, fn, *args, workers: int = 1):
        """fn(self, *args) through the executor, its wall time (and peak memory) recorded under `name`."""
        start = time.perf_counter()
        result, cost = self.executor.run(name, fn, self, *args, workers=workers)
        _record(self, name, time.perf_counter() - start, cost)
        self.keys[name] = getattr(result, "key", None)
        return result


def _record(ctx: Context, name: str, seconds: float, cost: StageCost | None = None) -> None:
    record = getattr(ctx.seconds, "record", None)  # a StageMeter also keeps each stage's peak memory
    if record is not None:
        record(name, ctx.seconds.get(name, 0.0) + seconds, cost)
    else:
        ctx.seconds[name] = ctx.seconds.get(name, 0.0) + seconds


def _sds_term(ctx: Context, bb: Backbone) -> SDSTerm:
    s = ctx.cfg.sds
    return SDSTerm(backbone=bb, prompt=ctx.prompt, guidance_scale=s.guidance_scale, t_min=s.t_min, t_max=s.t_max,
                   t_max_end=s.t_max_end, grad_clip=s.grad_clip, weight=ctx.cfg.method.lambda_sds,
                   view_dependent=ctx.cfg.nerf.view_dependent_prompts)


def _nerf_fields(cfg: RunConfig) -> dict:
    return {"nerf": asdict(cfg.nerf), "sds": asdict(cfg.sds), "render": cfg.render.resolution, "seed": cfg.seed}


def _locked(folder: Path, fn, *args, **kwargs):
    """Run a stage's compute under its artifact lock: concurrent trials compute it once."""
    with artifact_lock(folder):
        return fn(folder, *args, **kwargs)


def _sds_nerf(ctx: Context, stage: str, ckpt: DreamBoothCheckpoint, latent: bool = False) -> NerfCheckpoint:
    """A NeRF fitted by SDS alone from `ckpt` (stage 1 and the baselines)."""
    cfg = ctx.cfg
    steps = cfg.method.stage1_steps if stage == "stage1" and cfg.method.stage1_steps > 0 else cfg.nerf.steps
    own_steps = () if steps == cfg.nerf.steps else (("steps", steps),)  # keys of nerf.steps fits unchanged
    key = content_key(stage, ckpt.key, ctx.prompt, _nerf_fields(cfg), 1.0, cfg.method.lambda_nerf, *own_steps)
    bb = backbone_for(ctx.bb, ckpt)
    term = _sds_term(ctx, bb)
    term.weight = 1.0
    channels = bb.model_channels if latent else 0
    res = bb.model_resolution if latent else cfg.render.resolution
    return _locked(ctx.store / stage / key, fit_nerf, key, cfg.nerf, res, steps, cfg.seed, bb.device,
                   sds=term, lambda_nerf=cfg.method.lambda_nerf, latent_channels=channels, desc=stage,
                   on_progress=None if stage == "stage1" else ctx.on_progress)


def train_dreambooth(ctx: Context, images: torch.Tensor, steps: list[int],
                     init: DreamBoothCheckpoint | None = None) -> dict[int, DreamBoothCheckpoint]:
    """One DreamBooth run on `images` (from `init`), checkpoints at `steps` (personalize.dreambooth_run)."""
    rank, world = rank_and_world()
    folder = dreambooth_folder(ctx.cfg, ctx.bb, ctx.subject, images, ctx.store, init, world_size=world)
    if rank == 0 and (folder / STATE_FILE).exists():  # e.g. a restarted worker group
        print(f"[db3d] DreamBooth run {folder.name}: resuming from its saved training state", flush=True)
    return dreambooth_run(ctx.cfg, ctx.bb, ctx.subject, images, ctx.store, steps, init)


def _dreambooth(ctx: Context, name: str, images: torch.Tensor, steps: list[int],
                init: DreamBoothCheckpoint | None = None) -> dict[int, DreamBoothCheckpoint]:
    """A DreamBooth run through the executor, on dreambooth.num_workers data-parallel workers (whose
    time is `dreambooth_train`: each of the N workers holds the trial's resources)."""
    n = ctx.cfg.dreambooth.num_workers
    ckpts = ctx.execute("dreambooth_train" if n > 1 else name, train_dreambooth, images, steps, init, workers=n)
    ctx.keys[name] = max(ckpts.values(), key=lambda c: c.step).key if ckpts else None
    return ckpts


# ---------------------------------------------------------------------------------------------
def personalization(ctx: Context) -> Personalized:
    """D_partial and D_full: one DreamBooth run on the subject's photos, two checkpoints."""
    steps = personalization_steps(ctx.cfg)
    ckpts = _dreambooth(ctx, "dreambooth", ctx.images, steps) if steps else {}
    db = personalized(ctx.cfg, ckpts, backbone_key(ctx.cfg.backbone))
    ctx.keys["dreambooth"] = db.full.key
    return db


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
    db = ctx.cfg.dreambooth
    if db.multiview_steps == 0:
        ctx.keys["stage3_dreambooth"] = d_partial.key
        return d_partial
    views, _ = load_pseudo_views(pseudo, ctx.cfg.backbone.resolution)
    augmented = torch.cat([views, ctx.images])
    init = None if d_partial.mode == "base" else d_partial
    return _dreambooth(ctx, "stage3_dreambooth", augmented, [db.multiview_steps], init)[db.multiview_steps]


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
        return ctx.execute("stage3_nerf", dreambooth_fusion, d_full)
    d_multi = multiview_dreambooth(ctx, d_partial, pseudo)
    return ctx.execute("stage3_nerf", final_nerf, d_multi, pseudo, nerf1)


class FoggyStage1(RuntimeError):
    """Stage 1 ended as view-filling fog and pseudo.on_fog=fail."""


# ---------------------------------------------------------------------------------------------
def dreambooth_fusion(ctx: Context, d_full: DreamBoothCheckpoint) -> NerfCheckpoint:
    """Baseline: SDS from the fully trained DreamBooth, one stage."""
    return _sds_nerf(ctx, "dreambooth_fusion", d_full)


def latent_nerf(ctx: Context, d_full: DreamBoothCheckpoint) -> NerfCheckpoint:
    """Baseline: the NeRF renders latents; SDS in the latent space of D_full."""
    return _sds_nerf(ctx, "latent_nerf", d_full, latent=True)


def run_stages(ctx: Context) -> NerfCheckpoint:
    """The method named by cfg.method.name, from DreamBooth to the final NeRF (Fig. 2)."""
    method = ctx.cfg.method.name
    if method == "latent_nerf" and ctx.cfg.backbone.kind not in ("sd", "tiny-sd"):
        raise ValueError(f"latent_nerf needs a latent backbone; backbone {ctx.cfg.backbone.kind} works in pixel space")
    db = personalization(ctx)
    if method == "dreambooth3d":
        nerf1 = ctx.execute("stage1", stage1, db.partial)
        pseudo = ctx.execute("stage2", stage2, nerf1, db.full)
        ctx.diagnostics.update(fit_diagnostics(nerf1, "stage1"))
        final = stage3(ctx, db.partial, pseudo, nerf1, db.full)
        ctx.diagnostics.update(fit_diagnostics(final, "final"))
        return final
    if method in ("dreambooth_fusion", "latent_nerf"):
        fn = dreambooth_fusion if method == "dreambooth_fusion" else latent_nerf
        final = ctx.execute("nerf", fn, db.full)
        ctx.diagnostics.update(fit_diagnostics(final, "final"))
        return final
    raise ValueError(f"method.name={method!r}: must be dreambooth3d, dreambooth_fusion or latent_nerf")


# ---------------------------------------------------------------------------------------------
def exports(ctx: Context, final: NerfCheckpoint, out_dir: Path) -> dict[str, Path]:
    """Turntables, mesh, NeRF file and image grids of the final NeRF (export/result.py)."""
    return export_result(ctx, final, out_dir)


def metrics(ctx: Context, final: NerfCheckpoint, views_dir: Path) -> dict:
    """CLIP / DINO metrics of the final NeRF on the evaluation orbit (eval/evaluate.py); none, and no
    backbone built for them, when the config names no model."""
    if not scores_anything(ctx.cfg.metrics):
        return {}
    return evaluate_nerf(ctx.cfg, final.field_file, final.latent, ctx.bb, ctx.images, ctx.prompt,
                         ctx.subject.templates, ctx.subject.class_noun, None, views_dir)


def truth_metrics(ctx: Context, final: NerfCheckpoint, truth: GroundTruth, compare_png: Path) -> dict:
    """metric.toy.*: the final NeRF against the subject's true object (eval/truth.py); renders that
    every run's scoring shares are kept in the run's cache folder (cache_dir, like class images)."""
    return truth.score_field(final.field_file, ctx.cfg.nerf.n_samples, resolve_device(ctx.cfg.backbone.device),
                             compare_png, cache=default_cache_dir(ctx.cfg))


def run_method(cfg: RunConfig, subject: Subject, prompt: str, out: Path, bb: Backbone | None = None,
               store: Path | None = None, on_progress=None, executor: Executor = INLINE,
               seconds: dict | None = None, truth: GroundTruth | None = None) -> RunResult:
    """One subject x prompt x method: every stage (resuming what is done), then the exports.

    `bb`: the base backbone if the caller has it (else each stage's process builds it on first use).
    `store` is the artifact root (default out/artifacts); sweeps share one across trials.
    `executor` runs each heavy stage (default: in this process; sweeps on Ray Train pass theirs).
    `truth`: the subject's ground truth (db3d.eval.truth; ToyWorld's subjects): the final NeRF is scored
    against it (metric.toy.*) when metrics are on.
    `seconds` (stage -> wall time) is filled as stages finish and added to: a caller's dict keeps
    the times of a run that raises part way and carries them into a later call.
    """
    out = Path(out)
    start = time.perf_counter()
    images, _ = load_subject_images(subject, cfg.backbone.resolution)
    ctx = Context(cfg=cfg, backbone=bb, subject=subject, images=images, prompt=prompt, on_progress=on_progress,
                  store=Path(store) if store is not None else out / "artifacts", executor=executor,
                  seconds=seconds if seconds is not None else {})
    _record(ctx, "load", time.perf_counter() - start)
    final = run_stages(ctx)
    result_exports = ctx.execute("export", exports, final, out / "exports")
    scores = {}
    if cfg.metrics.enabled:
        scores = ctx.execute("metrics", metrics, final, out / "exports" / "eval_views")
    if cfg.metrics.enabled and truth is not None and not final.latent:  # e.g. a ToyWorld subject: its true shape
        scores.update(ctx.execute("toy_metrics", truth_metrics, final, truth, out / "exports" / "toy_compare.png"))
    for name in ("export", "metrics", "toy_metrics"):
        ctx.keys.pop(name, None)
    return RunResult(out=str(out), method=cfg.method.name, subject=subject.name, class_noun=subject.class_noun,
                     prompt=prompt, final=final, exports=result_exports, seconds=dict(ctx.seconds), keys=dict(ctx.keys),
                     diagnostics=dict(ctx.diagnostics), metrics=scores)
