"""A NeRF fitted to known views by the reconstruction loss alone (shared by the renderer and
ToyWorld consistency tests): a small hash grid, Instant-NGP-style Adam, random rays."""

from __future__ import annotations

import torch
from torch import Tensor

from db3d.core.cameras import generate_rays, orbit_cameras, sample_random_cameras
from db3d.nerf.field import FieldConfig, NeRFField
from db3d.nerf.losses import reconstruction_loss
from db3d.nerf.render import render_rays

WHITE = torch.ones(3)


def consistency_cameras(res: int):
    """20 random training cameras and 4 held-out orbit cameras (other azimuths and elevation)."""
    gen = torch.Generator().manual_seed(0)
    train = sample_random_cameras(20, res, elevation_range=(-15.0, 65.0), distance_range=(2.6, 3.0),
                                  fov_range=(40.0, 45.0), generator=gen)
    test = orbit_cameras(4, elevation_deg=20.0, distance=2.8, fov_y_deg=42.0, resolution=res,
                         azimuth_offset_deg=30.0)
    return train, test


def psnr(a: Tensor, b: Tensor) -> float:
    return float(-10.0 * torch.log10(((a - b) ** 2).mean()))


def fit(train, gt_train: Tensor, steps: int, batch_rays: int, n_samples: int, seed: int = 0) -> NeRFField:
    """Fit a small NeRFField to the training views with the reconstruction loss alone."""
    torch.manual_seed(seed)
    # 1. a small hash grid (10 levels, 2^15 rows, finest resolution 160) and a 1-layer MLP;
    #    no density blob (nothing to bootstrap), the scene's fixed white background
    cfg = FieldConfig(n_levels=10, log2_hashmap_size=15, base_resolution=8, max_resolution=160,
                      hidden_dim=32, n_hidden_layers=1, density_blob_scale=0.0,
                      background="fixed")
    field = NeRFField(cfg)
    # 2. every training pixel's ray and colour
    origins, dirs = generate_rays(train)  # (V, H, W, 3) each
    origins, dirs, target = origins.reshape(-1, 3), dirs.reshape(-1, 3), gt_train.reshape(-1, 3)
    # 3. Instant-NGP-style Adam: larger rate for the table, exponential decay to 1/10
    opt = torch.optim.Adam([
        {"params": field.encoding.parameters(), "lr": 3e-2},
        {"params": field.mlp.parameters(), "lr": 1e-2, "weight_decay": 1e-6},
    ], betas=(0.9, 0.99), eps=1e-15)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.1 ** (s / steps))
    gen = torch.Generator().manual_seed(seed)
    # 4. random rays, jittered samples, albedo-only renders, L2 reconstruction loss
    for _ in range(steps):
        idx = torch.randint(0, origins.shape[0], (batch_rays,), generator=gen)
        out = render_rays(field, origins[idx], dirs[idx], n_samples=n_samples, jitter=True,
                          shading="albedo", background=WHITE, generator=gen)
        loss = reconstruction_loss(out.rgb, target[idx], p=2.0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return field
