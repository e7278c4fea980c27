"""Volume rendering of a field inside a bounding sphere.

Each ray is clipped to the sphere (``intersect_sphere``), cut into ``n_samples`` equal intervals
(one sample per interval: jittered while training, the interval midpoint otherwise), and
alpha-composited front to back::

    alpha_i = 1 - exp(-density_i * delta_i),   T_i = prod_{j<i} (1 - alpha_j),   w_i = T_i alpha_i
    rgb = sum_i w_i c_i + (1 - sum_i w_i) * background

Rays that miss the sphere cost nothing and show the background. Without an occupancy grid every
sample of every other ray is evaluated; with one (the NeRF loop's, ``db3d/nerf/occupancy.py``),
only the samples in occupied cells are. Large images render in chunks of rays (4096 by
default: ~4096 x n_samples points per field call; see ``field_calls_per_sample`` for normals).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from db3d.core.cameras import CameraBatch, generate_rays
from db3d.core.config import NeRFConfig
from db3d.nerf.occupancy import OccupancyGrid
from db3d.nerf.shading import AMBIENT, DIFFUSE, ShadingMode, needs_normals, shade


EVAL_NORMAL_MIN_WEIGHT = 1e-4
"""Gradient-free renders compute normals only at samples whose compositing weight exceeds this
(Instant-NGP and nerfacc stop rays once transmittance falls below the same 1e-4): a pixel moves by
at most n_samples x 1e-4. Measured in benchmarks/bench_nerf.py (textureless turntable)."""


def field_calls_per_sample(field, shading: ShadingMode) -> int:
    """About how many field evaluations' worth of memory a sample of a ``shading`` render takes:
    1 for albedo; with normals 7 for finite differences (6 density probes) and 2 for autograd
    normals (a forward and a backward of the same call). For sizing chunks of rays."""
    if not needs_normals(shading):
        return 1
    normals = getattr(getattr(field, "config", None), "normals", "finite_difference")
    return 2 if normals == "autograd" else 7


@dataclass
class RayRender:
    """Renders of R rays, with the per-sample quantities that regularisers need."""

    rgb: Tensor  # (R, C) composited over the background (C = 3, or the field's color_channels)
    opacity: Tensor  # (R, 1) sum of weights
    depth: Tensor  # (R, 1) expected distance sum_i w_i t_i (0 where empty)
    normal: Tensor | None  # (R, 3) weight-averaged normals (unnormalised), if computed
    weights: Tensor  # (R, S) compositing weights w_i
    t_starts: Tensor  # (R, S) interval starts along the ray (world units)
    t_ends: Tensor  # (R, S) interval ends
    sample_normals: Tensor | None  # (R, S, 3) per-sample normals, if computed
    directions: Tensor  # (R, 3) unit ray directions
    near: Tensor  # (R, 1) sphere entry distance (0 for rays that miss)
    far: Tensor  # (R, 1) sphere exit distance (0 for rays that miss)


@dataclass
class ImageRender:
    """Images of B cameras; per-sample tensors are flattened over B*H*W rays when kept."""

    rgb: Tensor  # (B, H, W, C)
    opacity: Tensor  # (B, H, W, 1)
    depth: Tensor  # (B, H, W, 1)
    normal: Tensor | None  # (B, H, W, 3)
    rays: RayRender | None  # per-ray/per-sample tensors of all B*H*W rays (keep_samples=True)


def intersect_sphere(
    origins: Tensor,  # (R, 3)
    directions: Tensor,  # (R, 3) unit
    radius: float,
) -> tuple[Tensor, Tensor, Tensor]:  # near (R,), far (R,), hit (R,) bool
    """Distances along each ray where it enters and leaves the sphere ``|x| = radius``.

    Solves ``|o + t d|^2 = r^2``; ``near`` is clamped at 0 for origins inside the sphere.
    Rays that miss (or whose chord lies behind the origin) get ``near = far = 0``, ``hit`` False.
    """
    b = (origins * directions).sum(-1)  # (R,) o . d
    c = (origins * origins).sum(-1) - radius * radius
    disc = b * b - c
    sq = torch.sqrt(disc.clamp(min=0.0))
    near = (-b - sq).clamp(min=0.0)
    far = -b + sq
    hit = (disc > 0) & (far > near)
    zero = torch.zeros_like(near)
    return torch.where(hit, near, zero), torch.where(hit, far, zero), hit


def stratified_intervals(
    near: Tensor,  # (R,)
    far: Tensor,  # (R,)
    n_samples: int,
    jitter: bool,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor, Tensor]:  # starts (R,S), ends (R,S), t (R,S)
    """Equal intervals between near and far, one sample per interval.

    With ``jitter`` the sample is uniform inside its interval (stratified sampling); without it,
    the midpoint (deterministic renders).
    """
    u = torch.linspace(0.0, 1.0, n_samples + 1, device=near.device, dtype=near.dtype)
    edges = near[:, None] + (far - near)[:, None] * u  # (R, S+1)
    starts, ends = edges[:, :-1], edges[:, 1:]
    if jitter:
        r = torch.rand(starts.shape, generator=generator, device="cpu", dtype=near.dtype)
        frac = r.to(near.device)
    else:
        frac = torch.full_like(starts, 0.5)
    return starts, ends, starts + (ends - starts) * frac


def composite_weights(density: Tensor, deltas: Tensor) -> Tensor:  # (R, S), (R, S) -> (R, S)
    """``w_i = T_i * alpha_i`` with ``alpha_i = 1 - exp(-density_i delta_i)``."""
    tau = density * deltas  # optical thickness of each interval
    alpha = 1.0 - torch.exp(-tau)
    # T_i = exp(-sum_{j<i} tau_j): exclusive cumulative sum, stable for huge densities
    trans = torch.exp(-torch.cumsum(torch.cat([torch.zeros_like(tau[:, :1]), tau[:, :-1]], 1), 1))
    return alpha * trans


def render_rays(
    field,
    origins: Tensor,  # (R, 3)
    directions: Tensor,  # (R, 3) unit
    n_samples: int = NeRFConfig.n_samples,
    jitter: bool = False,
    shading: ShadingMode = "albedo",
    light_pos: Tensor | None = None,  # (R, 3) or (3,), needed unless shading == "albedo"
    ambient: float = AMBIENT,
    diffuse: float = DIFFUSE,
    background: Tensor | None = None,  # (R, C) or (C,); None asks field.background(directions)
    compute_normals: bool = False,
    radius: float | None = None,
    generator: torch.Generator | None = None,
    normal_min_weight: float = 0.0,
    occupancy: OccupancyGrid | None = None,
) -> RayRender:
    """Render R rays through ``field`` (``field(x, compute_normals) -> FieldOutputs``).

    Normals are computed when the shading needs them or ``compute_normals`` is set.
    ``radius`` defaults to ``field.config.bound_radius``.

    ``normal_min_weight > 0`` (gradient-free renders only, see ``render_views``): normals only at
    samples whose compositing weight exceeds it, the others shaded with a zero normal (ambient
    light). A sample's share of the pixel is its weight, so the pixel moves by less than
    ``n_samples * normal_min_weight``; empty space and occluded samples (most of them) then cost one
    field call instead of seven (finite differences). Not while training: a near-zero weight can
    still have a large gradient in density (empty space in front of a surface), which needs the
    sample's true colour.

    ``occupancy`` (the NeRF loop's grid, ``db3d/nerf/occupancy.py``): the field is evaluated only at
    samples in occupied cells; the others render as empty space (density 0). Every per-sample
    tensor keeps its (R, S) shape.
    """
    n_rays, device, dtype = origins.shape[0], origins.device, origins.dtype
    n_col = getattr(field.config, "color_channels", 3)
    want_normals = compute_normals or needs_normals(shading)
    if radius is None:
        radius = field.config.bound_radius

    # 1. clip rays to the bounding sphere and place the samples
    near, far, hit = intersect_sphere(origins, directions, radius)
    starts, ends, t = stratified_intervals(near, far, n_samples, jitter, generator)  # (R, S)

    # 2. query the field on the rays that meet the sphere
    density = torch.zeros(n_rays, n_samples, device=device, dtype=dtype)
    colour = torch.zeros(n_rays, n_samples, n_col, device=device, dtype=dtype)
    sample_normals = None
    if want_normals:
        sample_normals = torch.zeros(n_rays, n_samples, 3, device=device, dtype=dtype)
    hit_idx = torch.nonzero(hit).squeeze(-1)
    if hit_idx.numel() > 0:
        o, d, th = origins[hit_idx], directions[hit_idx], t[hit_idx]
        points = o[:, None, :] + th[..., None] * d[:, None, :]  # (Rh, S, 3)
        flat_points = points.reshape(-1, 3)  # (Rh * S, 3)
        gated = want_normals and normal_min_weight > 0.0 and hasattr(field, "normals")
        if gated and torch.is_grad_enabled():
            raise ValueError("normal_min_weight > 0 is for gradient-free renders (render_views)")
        # the samples the field is evaluated at: all, or those in the occupancy grid's occupied cells
        evaluated = None if occupancy is None else torch.nonzero(occupancy.query(flat_points)).squeeze(-1)
        out = field(flat_points if evaluated is None else flat_points[evaluated],
                    compute_normals=want_normals and not gated)
        dens, albedo = out.density, out.albedo
        normal = out.normal if want_normals and not gated else None
        if evaluated is not None:  # skipped samples: density 0, colour and normal 0 (weight 0)
            n_flat = flat_points.shape[0]
            dens = torch.zeros(n_flat, device=device, dtype=dens.dtype).index_put((evaluated,), dens)
            albedo = torch.zeros(n_flat, n_col, device=device, dtype=albedo.dtype).index_put((evaluated,), albedo)
            if normal is not None:
                normal = torch.zeros(n_flat, 3, device=device, dtype=normal.dtype).index_put((evaluated,), normal)
        albedo = albedo.reshape(-1, n_samples, n_col)
        normal = None if normal is None else normal.reshape(-1, n_samples, 3)
        if gated:  # normals where the sample shows: weight above normal_min_weight
            w = composite_weights(dens.reshape(-1, n_samples), (ends - starts)[hit_idx])  # (Rh, S)
            keep = (w > normal_min_weight).reshape(-1)  # (Rh * S,)
            flat = torch.zeros(keep.shape[0], 3, device=device, dtype=dtype)
            if keep.any():
                flat[keep] = field.normals(flat_points[keep]).to(dtype)
            normal = flat.reshape(-1, n_samples, 3)
        lp = None
        if light_pos is not None:
            lp = light_pos.to(dtype).reshape(-1, 3).expand(n_rays, 3)[hit_idx][:, None, :]
        c = shade(albedo, shading, normal, points, lp, ambient, diffuse)
        density = density.index_put((hit_idx,), dens.reshape(-1, n_samples))
        colour = colour.index_put((hit_idx,), c)
        if want_normals:
            sample_normals = sample_normals.index_put((hit_idx,), normal)

    # 3. alpha compositing
    weights = composite_weights(density, ends - starts)  # (R, S)
    opacity = weights.sum(-1, keepdim=True)  # (R, 1)
    rgb = (weights[..., None] * colour).sum(1)  # (R, C)
    depth = (weights * t).sum(-1, keepdim=True)
    normal_img = (weights[..., None] * sample_normals).sum(1) if want_normals else None

    # 4. background behind the remaining transmittance
    if background is None:
        background = field.background(directions)
    rgb = rgb + (1.0 - opacity) * background.to(dtype).expand(n_rays, n_col)
    return RayRender(
        rgb=rgb,
        opacity=opacity,
        depth=depth,
        normal=normal_img,
        weights=weights,
        t_starts=starts,
        t_ends=ends,
        sample_normals=sample_normals,
        directions=directions,
        near=near[:, None],
        far=far[:, None],
    )


def _cat_renders(parts: list[RayRender]) -> RayRender:
    if len(parts) == 1:  # one chunk (every training render of the toy preset): nothing to copy
        return parts[0]

    def cat(name):
        vals = [getattr(p, name) for p in parts]
        return None if vals[0] is None else torch.cat(vals, 0)

    return RayRender(**{name: cat(name) for name in RayRender.__dataclass_fields__})


def render_image(
    field,
    cams: CameraBatch,
    n_samples: int = NeRFConfig.n_samples,
    jitter: bool = False,
    shading: ShadingMode = "albedo",
    ambient: float = AMBIENT,
    diffuse: float = DIFFUSE,
    background: Tensor | None = None,  # (C,) or (B, C): one colour per image
    compute_normals: bool = False,
    chunk: int = 4096,
    keep_samples: bool = True,
    generator: torch.Generator | None = None,
    normal_min_weight: float = 0.0,  # see render_rays; render_views sets it
    occupancy: OccupancyGrid | None = None,  # see render_rays; the NeRF loop passes its grid
) -> ImageRender:
    """Render every pixel of every camera, ``chunk`` rays at a time (lights: ``cams.light_pos``).

    ``background`` overrides the field's background model; a "random_solid" field in training
    mode gets one random colour per image. ``keep_samples=False`` drops the per-sample tensors
    (for exports and evaluation).
    """
    n_cams, h, w = len(cams), cams.height, cams.width
    n_col = getattr(field.config, "color_channels", 3)
    origins, directions = generate_rays(cams)  # (B, H, W, 3) each
    origins, directions = origins.reshape(-1, 3), directions.reshape(-1, 3)
    light = cams.light_pos[:, None, :].expand(n_cams, h * w, 3).reshape(-1, 3)
    bg = None
    cfg_background = getattr(field.config, "background", None)
    if background is None and cfg_background == "random_solid" and field.training:
        background = torch.rand(n_cams, n_col, generator=generator)  # one colour per image
    if background is not None:
        bg = background.to(origins).reshape(-1, n_col).expand(n_cams, n_col)
        bg = bg[:, None, :].expand(n_cams, h * w, n_col).reshape(-1, n_col)
    parts = []
    for i in range(0, origins.shape[0], chunk):
        sl = slice(i, i + chunk)
        part = render_rays(
            field,
            origins[sl],
            directions[sl],
            n_samples=n_samples,
            jitter=jitter,
            shading=shading,
            light_pos=light[sl],
            ambient=ambient,
            diffuse=diffuse,
            background=None if bg is None else bg[sl],
            compute_normals=compute_normals,
            generator=generator,
            normal_min_weight=normal_min_weight,
            occupancy=occupancy,
        )
        if not keep_samples:
            part.weights = part.t_starts = part.t_ends = part.sample_normals = None
        parts.append(part)
    rays = _cat_renders(parts)
    return ImageRender(
        rgb=rays.rgb.reshape(n_cams, h, w, n_col),
        opacity=rays.opacity.reshape(n_cams, h, w, 1),
        depth=rays.depth.reshape(n_cams, h, w, 1),
        normal=None if rays.normal is None else rays.normal.reshape(n_cams, h, w, 3),
        rays=rays if keep_samples else None,
    )


@torch.no_grad()
def render_views(
    field,
    cams: CameraBatch,
    n_samples: int = 128,
    shading: ShadingMode = "albedo",
    background: Tensor | None = None,
    compute_normals: bool = False,
    chunk: int = 4096,
    normal_min_weight: float | None = None,  # None: EVAL_NORMAL_MIN_WEIGHT; 0: normals at every sample
) -> ImageRender:
    """Deterministic, gradient-free renders in eval mode (turntables, pseudo views, exports).

    Shaded and textureless renders take normals only where a sample shows (``render_rays``'s
    ``normal_min_weight``, EVAL_NORMAL_MIN_WEIGHT by default)."""
    was_training = field.training
    field.eval()
    try:
        return render_image(
            field,
            cams,
            n_samples=n_samples,
            jitter=False,
            shading=shading,
            background=background,
            compute_normals=compute_normals,
            chunk=chunk,
            keep_samples=False,
            normal_min_weight=EVAL_NORMAL_MIN_WEIGHT if normal_min_weight is None else normal_min_weight,
        )
    finally:
        field.train(was_training)
