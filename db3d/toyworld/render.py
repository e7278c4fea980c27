"""Ground-truth renders of ToyWorld objects: batched SDF sphere tracing from db3d cameras.

Rays come from ``db3d.core.cameras.generate_rays``, so every view follows db3d's camera conventions
(+z up, azimuth 0 = the object's front on +x, OpenGL camera frame). Each ray is clipped to the
object's bounding sphere and marched by the signed distance until it meets the surface
(``sd < eps``) or leaves the sphere; rays still marching are dropped from the batch at every step,
so a batch of views costs about what its object pixels cost.

Shading is Lambertian, ``rgb = albedo * (ambient + diffuse * max(0, n . l))``, composited over a
white background, with normals from central differences of the SDF and either

- ``light="fixed"``: one directional light in the world (``LIGHT_DIR``, from above the front
  left): the colour of a surface point is the same from every view, so a NeRF with albedo-only
  shading can reproduce the renders exactly; or
- ``light="camera"``: a point light at each camera's ``light_pos`` (db3d's random lights).

``supersample=s`` traces s x s rays per pixel and averages them (antialiased edges, fractional
alpha). Depth is the distance along the unit ray (0 on the background), the convention of
``db3d.nerf.render``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Callable, Literal

import torch
from torch import Tensor

from db3d.core.cameras import CameraBatch, generate_rays
from db3d.toyworld.world import ToyObject

LIGHT_DIR = (0.5, 0.3, 1.0)  # direction *towards* the fixed light (normalised when used)
AMBIENT = 0.45
DIFFUSE = 0.55


@dataclass
class ToyRender:
    """Renders of B views of one object."""

    rgb: Tensor  # (B, H, W, 3) shaded colour over a white background
    alpha: Tensor  # (B, H, W, 1) object coverage (0 or 1 per ray; fractional when supersampled)
    depth: Tensor  # (B, H, W, 1) distance along the ray to the surface, 0 on the background
    normal: Tensor  # (B, H, W, 3) world-space unit normals, 0 on the background
    albedo: Tensor  # (B, H, W, 3) unshaded surface colour over a white background
    feature: Tensor  # (B, H, W, 1) coverage of the front decal


def sphere_trace(
    sdf: Callable[[Tensor], Tensor],  # (N, 3) -> (N,)
    origins: Tensor,  # (R, 3)
    directions: Tensor,  # (R, 3) unit
    radius: float,
    max_steps: int = 64,
    eps: float = 1e-4,
) -> tuple[Tensor, Tensor]:  # t (R,), hit (R,) bool
    """March every ray from where it enters the sphere ``|x| = radius`` to the surface."""
    # 1. clip rays to the bounding sphere: |o + t d|^2 = r^2
    b = (origins * directions).sum(-1)  # (R,)
    c = (origins * origins).sum(-1) - radius * radius
    disc = b * b - c
    sq = disc.clamp(min=0.0).sqrt()
    t = (-b - sq).clamp(min=0.0)  # (R,) entry distance
    far = -b + sq  # (R,) exit distance
    hit = torch.zeros_like(t, dtype=torch.bool)
    active = torch.nonzero((disc > 0) & (far > t)).squeeze(-1)  # indices of marching rays
    # 2. step by the distance bound; drop rays that reach the surface or leave the sphere
    for _ in range(max_steps):
        if active.numel() == 0:
            break
        ta = t[active]
        d = sdf(origins[active] + ta[:, None] * directions[active])  # (A,)
        ta = ta + d
        t[active] = ta
        done = d < eps
        hit[active[done]] = True
        active = active[~done & (ta < far[active])]
    # 3. rays out of steps (grazing a silhouette) count as hits when already very close
    if active.numel() > 0:
        d = sdf(origins[active] + t[active, None] * directions[active])
        hit[active[d < 10.0 * eps]] = True
    return torch.where(hit, t, torch.zeros_like(t)), hit


def sdf_normals(sdf: Callable[[Tensor], Tensor], points: Tensor, eps: float = 2e-3) -> Tensor:
    """Unit normals ``grad sdf / |grad sdf|`` by central differences: (N, 3) -> (N, 3)."""
    offsets = torch.eye(3, device=points.device, dtype=points.dtype) * eps  # (3, 3)
    probes = torch.cat([points[:, None] + offsets, points[:, None] - offsets], dim=1)  # (N,6,3)
    d = sdf(probes.reshape(-1, 3)).reshape(-1, 6)
    grad = (d[:, :3] - d[:, 3:]) / (2.0 * eps)
    return torch.nn.functional.normalize(grad, dim=-1, eps=1e-8)


@torch.no_grad()
def render_object(
    obj: ToyObject,
    cams: CameraBatch,
    light: Literal["fixed", "camera"] = "fixed",
    ambient: float = AMBIENT,
    diffuse: float = DIFFUSE,
    supersample: int = 1,
    max_steps: int = 64,
) -> ToyRender:
    """Render ``obj`` from every camera of ``cams`` (on ``cams.device``)."""
    n, h, w, s = len(cams), cams.height, cams.width, supersample
    # 1. rays through every (sub)pixel centre: the same fov at s times the size
    fine = replace(cams, height=h * s, width=w * s) if s > 1 else cams
    origins, directions = generate_rays(fine)  # (B, hs, ws, 3) each
    origins, directions = origins.reshape(-1, 3), directions.reshape(-1, 3)
    n_rays = origins.shape[0]
    # 2. march to the surface (a little margin around the parts' bounding boxes)
    t, hit = sphere_trace(obj.sdf, origins, directions, obj.bound_radius + 0.05, max_steps)
    # 3. shade the hits: albedo, decal, normals, Lambertian light
    rgb = origins.new_ones(n_rays, 3)
    albedo = origins.new_ones(n_rays, 3)
    normal = origins.new_zeros(n_rays, 3)
    feature = origins.new_zeros(n_rays)
    idx = torch.nonzero(hit).squeeze(-1)
    if idx.numel() > 0:
        points = origins[idx] + t[idx, None] * directions[idx]  # (K, 3)
        nrm = sdf_normals(obj.sdf, points)
        alb = obj.albedo(points)
        if light == "fixed":
            to_light = torch.tensor(LIGHT_DIR, device=points.device, dtype=points.dtype)
            to_light = (to_light / math.sqrt(sum(x * x for x in LIGHT_DIR))).expand_as(points)
        elif light == "camera":
            ray_cam = idx // (h * s * w * s)  # camera of each hit ray
            to_light = cams.light_pos.to(points.dtype)[ray_cam] - points
            to_light = torch.nn.functional.normalize(to_light, dim=-1, eps=1e-8)
        else:
            raise ValueError(f"unknown light {light!r}")
        lit = ambient + diffuse * (nrm * to_light).sum(-1, keepdim=True).clamp(min=0.0)
        rgb[idx] = (alb * lit).clamp(0.0, 1.0)
        albedo[idx] = alb
        normal[idx] = nrm
        feature[idx] = obj.feature_mask(points).to(points.dtype)

    # 4. back to images, averaging each pixel's s x s rays
    def image(x: Tensor) -> Tensor:  # (B*hs*ws, C) -> (B, H, W, C)
        x = x.reshape(n, h, s, w, s, -1)
        return x.mean(dim=(2, 4))

    normal_img = image(normal)
    if s > 1:
        normal_img = torch.nn.functional.normalize(normal_img, dim=-1, eps=1e-8)
    return ToyRender(
        rgb=image(rgb),
        alpha=image(hit.to(origins.dtype)[:, None]),
        depth=image(t[:, None]),
        normal=normal_img,
        albedo=image(albedo),
        feature=image(feature[:, None]),
    )
