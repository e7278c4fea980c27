"""Stage 2: pseudo multi-view images from the stage-1 NeRF and the fully trained DreamBooth.

    1. render N views of NeRF_1 on a fixed-radius orbit (known cameras P_v)
    2. noise each render to exactly t_pseudo (SDEdit / img2img)
    3. denoise with D_full, prompted with the view direction  -> I_v^pseudo
The renders are 3D-consistent but only subject-ish; D_full restores the subject's identity while
the partial noise keeps each view's pose. Images and cameras are saved for stage 3.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from db3d.core.artifacts import (
    NerfCheckpoint,
    PseudoViews,
    atomic_write_json,
    mark_done,
    read_done,
)
from db3d.core.cameras import (
    CameraBatch,
    orbit_cameras,
    view_direction_suffix,
    view_prompt,
)
from db3d.core.config import NeRFConfig, PseudoViewConfig
from db3d.export.media import save_grid, to_uint8
from db3d.models.backbones import Backbone
from db3d.nerf import render_views
from db3d.nerf.io import load_field


def t_pseudo_step(t_pseudo: float, num_train_timesteps: int) -> int:
    """The integer timestep of the fraction t_pseudo."""
    return int(round(t_pseudo * (num_train_timesteps - 1)))


def opacity_stats(opacity: Tensor) -> tuple[float, float]:  # (V, H, W, 1) -> (mean, frame-border mean)
    """How much of the orbit views NeRF_1 covers: over all pixels, and over the frame's border pixels.

    An object on the orbit (distance 1.75, fov 50: the frame spans +-0.82 at the origin) leaves the
    border nearly empty; fog that fills the view covers it.
    """
    o = opacity[..., 0]
    border = torch.cat([o[:, 0], o[:, -1], o[:, 1:-1, 0], o[:, 1:-1, -1]], dim=1)  # (V, 4H - 4)
    return float(o.mean()), float(border.mean())


def is_fog(pv: PseudoViews, pseudo: PseudoViewConfig) -> bool:
    """NeRF_1 is mostly fog: its orbit renders cover the frame's border (see opacity_stats)."""
    return pv.stage1_opacity_edge > pseudo.fog_edge_opacity


def make_pseudo_views(nerf1: NerfCheckpoint, d_full: Backbone, prompt: str, pseudo: PseudoViewConfig,
                      nerf: NeRFConfig, render_resolution: int, out_dir: Path, key: str, seed: int,
                      device: torch.device, view_dependent: bool = True) -> PseudoViews:
    out_dir = Path(out_dir)
    done = read_done(out_dir, PseudoViews)
    if done is not None:
        return done
    # 1. render NeRF_1 on the orbit (albedo: the colours D_full should translate)
    field = load_field(nerf1.field_file, device)
    cams = orbit_cameras(pseudo.n_views, nerf.orbit_elevation, nerf.orbit_distance, nerf.orbit_fov,
                         render_resolution, device=device)
    rendered = render_views(field, cams, n_samples=nerf.n_samples, shading="albedo")
    renders = rendered.rgb.permute(0, 3, 1, 2).clamp(0, 1)  # (V, 3, r, r)
    opacity_mean, opacity_edge = opacity_stats(rendered.opacity)
    up = F.interpolate(renders, size=(d_full.resolution, d_full.resolution), mode="bilinear", align_corners=False)
    # 2.-3. img2img from exactly t_pseudo with D_full, one view-dependent prompt per view
    prompts = [prompt] * len(cams)
    if view_dependent:
        prompts = [view_prompt(prompt, s) for s in view_direction_suffix(cams.azimuth_deg.cpu(), cams.elevation_deg.cpu())]
    t_start = t_pseudo_step(pseudo.t_pseudo, d_full.num_train_timesteps)
    uncond = d_full.encode_prompts([""])
    views = []
    for i in range(len(cams)):  # one view at a time: the same noise per view whatever N
        gen = torch.Generator().manual_seed(seed * 7919 + i)
        views.append(d_full.img2img(up[i:i + 1], d_full.encode_prompts([prompts[i]]), uncond, t_start,
                                    pseudo.guidance_scale, gen))
    views_t = torch.cat(views)  # (V, 3, R, R)
    # 4. save images, renders and cameras
    for sub, imgs in (("views", views_t), ("renders", up)):
        (out_dir / sub).mkdir(parents=True, exist_ok=True)
        for i, arr in enumerate(to_uint8(imgs)):
            Image.fromarray(arr).save(out_dir / sub / f"{i:02d}.png")
    save_grid(views_t, out_dir / "grid_views.png")
    save_grid(up, out_dir / "grid_renders.png")
    atomic_write_json(out_dir / "cameras.json", {
        "n_views": pseudo.n_views, "elevation_deg": nerf.orbit_elevation, "distance": nerf.orbit_distance,
        "fov_y_deg": nerf.orbit_fov, "azimuth_deg": cams.azimuth_deg.cpu().tolist(), "prompts": prompts,
        "t_pseudo": pseudo.t_pseudo, "t_start": t_start,
        "stage1_opacity_mean": opacity_mean, "stage1_opacity_edge": opacity_edge,
    })
    pv = PseudoViews(path=str(out_dir), key=key, n_views=pseudo.n_views, t_pseudo=pseudo.t_pseudo,
                     stage1_opacity_mean=opacity_mean, stage1_opacity_edge=opacity_edge)
    mark_done(out_dir, pv)
    return pv


def load_pseudo_views(pv: PseudoViews, resolution: int) -> tuple[Tensor, CameraBatch]:
    """Images (V, 3, res, res) in [0, 1] and their cameras, rendered at `resolution`."""
    meta = json.loads((Path(pv.path) / "cameras.json").read_text())
    files = sorted((Path(pv.path) / "views").glob("*.png"))
    arrays = [np.asarray(Image.open(f).convert("RGB").resize((resolution, resolution), Image.LANCZOS),
                         dtype=np.float32) / 255.0 for f in files]
    images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    cams = orbit_cameras(meta["n_views"], meta["elevation_deg"], meta["distance"], meta["fov_y_deg"], resolution)
    return images, cams
