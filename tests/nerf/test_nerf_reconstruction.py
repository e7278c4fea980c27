"""End-to-end check of cameras + renderer + reconstruction loss: fit a NeRF to known views.

Ground truth is an analytic scene of soft coloured spheres with Lambertian shading from a fixed
world light baked into their colour, rendered with ``render_image`` at many samples per ray from
cameras of ``db3d.core.cameras``. A small ``NeRFField`` (albedo-only shading, white background) is fit
to 20 training views with ``reconstruction_loss`` alone and must reach >= 25 dB PSNR on 4
held-out views from other angles.
"""

from __future__ import annotations

import time
from types import SimpleNamespace

import torch
from nerf_fit import consistency_cameras, fit, psnr
from torch import Tensor, nn

from db3d.nerf.field import FieldOutputs
from db3d.nerf.render import render_views

RES = 64  # the paper's render size
N_SAMPLES = 32  # samples per ray, training and held-out renders alike
STEPS = 300  # Adam steps on random rays (about 8 s on 2 idle cores)
BATCH_RAYS = 1024  # random training rays per step, drawn from all 20 views
WHITE = torch.ones(3)


class SoftSpheres(nn.Module):
    """Analytic scene: coloured spheres with soft surfaces and baked Lambertian shading."""

    def __init__(self) -> None:
        super().__init__()
        self.config = SimpleNamespace(bound_radius=1.0)
        self.centres = torch.tensor([[0.0, 0.0, 0.0], [0.3, 0.45, 0.25], [-0.35, -0.35, 0.3],
                                     [0.25, -0.3, -0.35]])
        self.radii = torch.tensor([0.38, 0.22, 0.25, 0.2])
        self.colours = torch.tensor([[0.85, 0.2, 0.15], [0.15, 0.7, 0.25], [0.2, 0.35, 0.9],
                                     [0.95, 0.8, 0.1]])
        self.light_dir = nn.functional.normalize(torch.tensor([0.6, 0.3, 0.75]), dim=0)
        self.density_scale, self.softness = 30.0, 0.03

    def forward(self, x: Tensor, compute_normals: bool = False) -> FieldOutputs:  # x: (N, 3)
        rel = x[:, None, :] - self.centres  # (N, K, 3)
        dist = rel.norm(dim=-1)  # (N, K)
        occ = torch.sigmoid((self.radii - dist) / self.softness)  # (N, K) soft inside-ness
        density = self.density_scale * occ.sum(-1)
        normal = rel / dist[..., None].clamp(min=1e-6)
        light = 0.35 + 0.65 * (normal * self.light_dir).sum(-1).clamp(min=0.0)  # (N, K)
        shaded = self.colours * light[..., None]  # (N, K, 3)
        wk = occ / occ.sum(-1, keepdim=True).clamp(min=1e-8)
        albedo = (wk[..., None] * shaded).sum(1)
        return FieldOutputs(density=density, albedo=albedo, normal=None)

    def background(self, directions: Tensor) -> Tensor:
        return WHITE.expand(directions.shape[0], 3)


def make_views():
    """20 random training cameras and 4 held-out orbit cameras (other azimuths and elevation)."""
    train, test = consistency_cameras(RES)
    scene = SoftSpheres()
    gt_train = render_views(scene, train, n_samples=128, background=WHITE).rgb
    gt_test = render_views(scene, test, n_samples=128, background=WHITE).rgb
    return train, test, gt_train, gt_test


def test_nerf_fits_known_views():
    t0 = time.time()
    train, test, gt_train, gt_test = make_views()
    t1 = time.time()
    field = fit(train, gt_train, STEPS, BATCH_RAYS, N_SAMPLES)
    t2 = time.time()
    pred = render_views(field, test, n_samples=N_SAMPLES, background=WHITE).rgb
    score = psnr(pred, gt_test)
    blank = psnr(torch.ones_like(gt_test), gt_test)  # the threshold is far above "empty scene"
    print(f"\nheld-out PSNR {score:.2f} dB over {len(test)} views (blank image: {blank:.2f} dB; "
          f"data {t1 - t0:.1f}s, fit {t2 - t1:.1f}s for {STEPS} steps, "
          f"eval {time.time() - t2:.1f}s)")
    assert blank < 20.0
    assert score >= 25.0
