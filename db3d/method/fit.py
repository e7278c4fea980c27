"""The one NeRF loop: SDS term + optional reconstruction term on known cameras + regularisers.

    L = lambda_SDS * SDS(render(P_random); D, prompt)  +  lambda_recon * ||render(P_v) - I_v||_p
        + lambda_nerf * (l_orient * orientation + l_opacity * entropy + l_sparsity * sparsity
                         + l_dist * distortion)

Every term is in one unit system, a per-image sum averaged over the step's images. SDS's
detach-trick loss hands every element of an image its gradient w(t) (eps_hat - eps); the
reconstruction term sums |render - I_v|^p over the view's pixels and channels; each regulariser
sums its per-ray value over the image's rays. lambda_recon = 1 therefore weighs a pixel's
reconstruction error like a pixel's SDS gradient at any render resolution (a mean over pixels would
be H*W*3 times weaker: 3,072x at 32 px, inert in practice), and the regularisers' weights mean the
same at 32 and 64 px. The regularisers act on the SDS render, or on the reconstruction render of a
fit without SDS. Every `checkpoint_every` steps the loop logs each term's value and the L2 norm of
its gradient on the field's parameters (`fit_log.json` beside the field; the trial row reads it).

Every NeRF stage calls `fit_nerf`: stage 1 (SDS from D_partial), the final NeRF of stage 3 (SDS from
D_multi + reconstruction on pseudo views), the baselines (SDS only; Latent-NeRF renders latents),
and the reconstruction-only check of the renderer. Resumable (a state file every
`checkpoint_every` steps), deterministic under a seed (all randomness from one CPU generator).

Empty space is skipped (nerf.occupancy_resolution > 0): an occupancy grid, re-read from the field
every `occupancy_every` steps (db3d/nerf/occupancy.py), tells every training render which samples
to evaluate; the grid is part of the resumable state.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from db3d.core.artifacts import NerfCheckpoint, atomic_write_json, mark_done, read_done
from db3d.core.cameras import (
    CameraBatch,
    sample_random_cameras,
    view_direction_suffix,
    view_prompt,
)
from db3d.core.config import NeRFConfig
from db3d.core.resume import load_resume_state, save_resume_state
from db3d.core.progress import bar as progress_bar
from db3d.method.sds import sds_loss, to_model_space
from db3d.models import traced
from db3d.models.backbones import Backbone
from db3d.nerf import (
    LinearSchedule,
    NeRFField,
    distortion_loss,
    field_config,
    opacity_entropy_loss,
    opacity_sparsity_loss,
    orientation_loss,
    reconstruction_loss,
    render_image,
    sample_shading_mode,
    shading_config,
)
from db3d.nerf.io import load_field, save_field
from db3d.nerf.occupancy import OccupancyGrid

STATE_FILE = "fit_state.pt"
LOG_FILE = "fit_log.json"


@dataclass
class SDSTerm:
    """Score distillation from `backbone` (already carrying its DreamBooth weights)."""

    backbone: Backbone
    prompt: str
    guidance_scale: float
    t_min: float
    t_max: float
    t_max_end: float = -1.0
    weight: float = 1.0
    grad_clip: float = 0.0
    view_dependent: bool = True


@dataclass
class ReconTerm:
    """Reconstruction of known images at known cameras (stage 3's pseudo views)."""

    images: Tensor  # (V, 3, H, W) in [0, 1]
    cameras: CameraBatch  # V cameras, H x W
    weight: float = 1.0
    p: int = 1
    views_per_step: int = 1


def nerf_regularisers(out, nerf: NeRFConfig, lambda_nerf: float) -> dict[str, Tensor]:
    """lambda_nerf * L_nerf on one render, each term a per-image sum (see the top of this file).

    out: an ImageRender of B images with per-sample tensors kept (normals too when orientation is on).
    """
    terms: dict[str, Tensor] = {}
    rays, n_px = out.rays, out.opacity[0].numel()  # rays per image: a mean over rays x n_px = per-image sum
    if nerf.lambda_orientation > 0 and rays.sample_normals is not None:
        terms["orientation"] = lambda_nerf * nerf.lambda_orientation * n_px * orientation_loss(
            rays.weights, rays.sample_normals, rays.directions)
    if nerf.lambda_opacity > 0:
        terms["opacity"] = lambda_nerf * nerf.lambda_opacity * n_px * opacity_entropy_loss(out.opacity)
    if nerf.lambda_sparsity > 0:
        terms["sparsity"] = lambda_nerf * nerf.lambda_sparsity * n_px * opacity_sparsity_loss(out.opacity)
    if nerf.lambda_distortion > 0:
        span = (rays.far - rays.near).clamp_min(1e-6)  # normalised ray coordinate (mip-NeRF 360)
        terms["distortion"] = lambda_nerf * nerf.lambda_distortion * n_px * distortion_loss(
            rays.weights, (rays.t_starts - rays.near) / span, (rays.t_ends - rays.near) / span)
    return terms


def term_grad_norms(losses: dict[str, Tensor], params: list[Tensor]) -> dict[str, float]:
    """L2 norm of each loss term's gradient on `params` (the graph is kept for the real backward)."""
    norms = {}
    for name, value in losses.items():
        grads = torch.autograd.grad(value, params, retain_graph=True, allow_unused=True)
        norms[name] = float(torch.sqrt(sum((g.float() ** 2).sum() for g in grads if g is not None)))
    return norms


def _learning_rates(nerf: NeRFConfig) -> tuple[float, float]:
    """(hash grid, MLPs and background) learning rates at step 0."""
    return nerf.learning_rate, nerf.mlp_learning_rate or nerf.learning_rate


def fit_nerf(
    out_dir: Path,
    key: str,
    nerf: NeRFConfig,
    resolution: int,
    steps: int,
    seed: int,
    device: torch.device,
    sds: SDSTerm | None = None,
    recon: ReconTerm | None = None,
    lambda_nerf: float = 1.0,
    latent_channels: int = 0,
    init: NerfCheckpoint | None = None,
    desc: str = "NeRF",
    on_progress=None,
) -> NerfCheckpoint:
    """Optimise a NeRF; return its checkpoint (written under out_dir, which resumes a rerun).

    on_progress(step, {loss name: value}, field) runs every `checkpoint_every` steps (sweeps score
    the field on fixed views, db3d/method/quality.py, and report to Tune, whose ASHA may stop the trial)."""
    out_dir = Path(out_dir)
    done = read_done(out_dir, NerfCheckpoint)
    if done is not None:
        return done  # 0. already fitted
    out_dir.mkdir(parents=True, exist_ok=True)
    if sds is None and recon is None:
        raise ValueError("fit_nerf needs an SDS term, a reconstruction term, or both")

    # 1. the field (from scratch, or from an earlier NeRF's weights) and its optimiser
    torch.manual_seed(seed)
    if init is not None:
        field = load_field(init.field_file, device)
    else:
        field = NeRFField(field_config(nerf, latent_channels), device=device)
    field.train()
    grid_params = list(field.encoding.parameters())
    grid_ids = {id(p) for p in grid_params}
    other_params = [p for p in field.parameters() if id(p) not in grid_ids]
    lr_grid, lr_mlp = _learning_rates(nerf)
    optimizer = torch.optim.Adam([{"params": grid_params, "lr": lr_grid, "base_lr": lr_grid},
                                  {"params": other_params, "lr": lr_mlp, "base_lr": lr_mlp}],
                                 betas=(0.9, 0.99), eps=1e-15)
    params = grid_params + other_params
    log: list[dict] = []  # per checkpoint: step, each term's value and gradient norm
    gen = torch.Generator().manual_seed(seed)
    shading_cfg = shading_config(nerf)
    t_max = None  # the SDS t range's upper end, annealed linearly when t_max_end is set
    if sds is not None:
        t_max = LinearSchedule(sds.t_max, sds.t_max_end if sds.t_max_end > 0 else sds.t_max, steps)
    uncond = sds.backbone.encode_prompts([""]) if sds else None
    unet = traced.for_fit(sds.backbone, steps) if sds else None  # None: the backbone's own UNet module
    orient = nerf.lambda_orientation > 0 and lambda_nerf > 0 and not latent_channels  # normals for every render
    # empty-space skipping (None when nerf.occupancy_resolution is 0); read from the field at step 0
    occupancy = OccupancyGrid.for_fit(nerf.occupancy_resolution, nerf.occupancy_threshold, nerf.n_samples,
                                      field.config.bound_radius, device)
    recon_background = None  # the pseudo views were rendered in eval mode: over the field's eval background
    if recon is not None and field.config.background == "random_solid":
        recon_background = field.background_color

    # 2. resume from the last state, if one was written
    step = 0
    occupancy_read = False  # the grid has seen the field (an update, or a resumed state)
    state_path = out_dir / STATE_FILE
    state = load_resume_state(state_path, optimizer, gen)
    if state is not None:
        field.load_state_dict(state["field"])
        step = state["step"]
        log = state.get("log", [])
        if occupancy is not None and state.get("occupancy") is not None:
            occupancy.load_state_dict(state["occupancy"])
            occupancy_read = True

    bar = progress_bar(total=steps, initial=step, desc=desc)
    while step < steps:
        losses: dict[str, Tensor] = {}
        if occupancy is not None and (step % nerf.occupancy_every == 0 or not occupancy_read):
            occupancy.update(field, seed, step)
            occupancy_read = True
        # 3. SDS on random views: render, to model space, distil
        reg_render = None  # the render L_nerf acts on
        if sds is not None:
            cams = sample_random_cameras(nerf.batch_views, resolution, tuple(nerf.elevation_range),
                                         tuple(nerf.distance_range), tuple(nerf.fov_range), gen, device=device)
            mode = "albedo" if latent_channels else sample_shading_mode(shading_cfg, gen)
            out = render_image(field, cams, n_samples=nerf.n_samples, jitter=True, shading=mode, generator=gen,
                               compute_normals=orient, occupancy=occupancy)
            image = out.rgb.permute(0, 3, 1, 2)  # (B, C, H, W)
            prompts = [sds.prompt] * len(cams)
            if sds.view_dependent:  # one prompt per camera: "..., back view" etc.
                suffixes = view_direction_suffix(cams.azimuth_deg.cpu(), cams.elevation_deg.cpu())
                prompts = [view_prompt(sds.prompt, s) for s in suffixes]
            cond = sds.backbone.encode_prompts(prompts)
            if latent_channels:  # Latent-NeRF: the render is already in model space
                x = image
            else:
                x = to_model_space(sds.backbone, image)
            loss, info = sds_loss(sds.backbone, x, cond, uncond, sds.guidance_scale, (sds.t_min, t_max(step)), gen,
                                  sds.grad_clip, unet=unet)
            losses["sds"] = sds.weight * loss
            reg_render = out
        # 4. reconstruction of known views at their cameras, over the background they were rendered on
        if recon is not None:
            idx = torch.randperm(len(recon.cameras), generator=gen)[: recon.views_per_step]
            cams_v = recon.cameras[idx].to(device)
            out_v = render_image(field, cams_v, n_samples=nerf.n_samples, jitter=True, shading="albedo",
                                 generator=gen, background=recon_background,
                                 compute_normals=orient and reg_render is None, occupancy=occupancy)
            target = recon.images[idx].to(device).permute(0, 2, 3, 1)  # (V, H, W, 3)
            losses["recon"] = recon.weight * reconstruction_loss(out_v.rgb, target, p=recon.p,
                                                                 reduction="image_sum")  # SDS's units (top)
            if reg_render is None:
                reg_render = out_v
        # 5. NeRF regularisers (lambda_nerf * L_nerf), whichever data terms are on
        losses.update(nerf_regularisers(reg_render, nerf, lambda_nerf))
        # 6. update (learning rates decayed exponentially to lr_decay of their start); log at checkpoints
        checkpoint = nerf.checkpoint_every and (step + 1) % nerf.checkpoint_every == 0
        if checkpoint or step == 0:
            log.append({"step": step + 1, "loss": {k: float(v.item()) for k, v in losses.items()},
                        "grad_norm": term_grad_norms(losses, params)})
        for group in optimizer.param_groups:
            group["lr"] = group["base_lr"] * nerf.lr_decay ** (step / max(steps - 1, 1))
        total = sum(losses.values())
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
        step += 1
        bar.update(1)
        bar.set_postfix({k: f"{v.item():.4f}" for k, v in losses.items()})
        if step < steps and checkpoint:
            save_resume_state(state_path, step, optimizer, gen, field=field.state_dict(), log=log,
                              occupancy=None if occupancy is None else occupancy.state_dict())
        if on_progress is not None and checkpoint:
            on_progress(step, {k: float(v.item()) for k, v in losses.items()}, field)
    bar.close()

    # 7. the fitted field and its log, then the marker that says so
    save_field(field, out_dir / "field.safetensors")
    atomic_write_json(out_dir / LOG_FILE, log)
    state_path.unlink(missing_ok=True)
    ckpt = NerfCheckpoint(path=str(out_dir), key=key, steps=steps, latent=bool(latent_channels))
    mark_done(out_dir, ckpt)
    return ckpt


def read_fit_log(ckpt: NerfCheckpoint) -> list[dict]:
    """The per-checkpoint log of a fitted NeRF (empty for NeRFs fitted before the log existed)."""
    path = Path(ckpt.path) / LOG_FILE
    return json.loads(path.read_text()) if path.exists() else []


def fit_diagnostics(ckpt: NerfCheckpoint, stage: str) -> dict[str, float]:
    """Flat row columns of the last logged step: `nerf.<stage>.loss.<term>`, `nerf.<stage>.grad_norm.<term>`."""
    log = read_fit_log(ckpt)
    if not log:
        return {}
    last = log[-1]
    out = {f"nerf.{stage}.loss.{k}": v for k, v in last["loss"].items()}
    out.update({f"nerf.{stage}.grad_norm.{k}": v for k, v in last["grad_norm"].items()})
    return out

