"""A run's exports: what a person looks at after `db3d run` (and what sweeps link to).

    exports/turntable_rgb.{mp4,gif}, exports/turntable_textureless.{mp4,gif}
    exports/mesh.{glb,obj}, exports/nerf.safetensors
    exports/final_views.png (the orbit of the final NeRF), exports/pseudo_views.png (stage 2)
Latent-NeRF renders latents: its frames are decoded by the backbone's VAE before they are saved.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
import torch.nn.functional as F

from db3d.core.artifacts import NerfCheckpoint
from db3d.export.media import export_turntables, save_grid, save_video, turntable
from db3d.export.mesh import export_mesh
from db3d.models.backbones import resolve_device
from db3d.nerf.io import load_field


def export_result(ctx, final: NerfCheckpoint, out_dir: Path) -> dict[str, Path]:
    """Write every export of the final NeRF; returns {name: path}."""
    cfg, ex = ctx.cfg, ctx.cfg.export
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # the backbone only decodes a latent field's frames: an RGB field's exports never build it (a
    # stage on its own Ray Train worker would load it for its device alone)
    device = ctx.bb.device if final.latent else resolve_device(cfg.backbone.device)
    field = load_field(final.field_file, device).eval()
    paths: dict[str, Path] = {}
    orbit = dict(elevation_deg=cfg.nerf.orbit_elevation, distance=cfg.nerf.orbit_distance,
                 fov_y_deg=cfg.nerf.orbit_fov, n_samples=cfg.nerf.n_samples)
    # 1. turntables (RGB and textureless); latent fields are decoded to RGB first
    if final.latent:
        with torch.no_grad():
            latents = turntable(field, ex.turntable_frames, ctx.bb.model_resolution, **orbit)
            frames = ctx.bb.decode(latents.to(ctx.bb.device)).cpu()
            frames = F.interpolate(frames, size=(ex.turntable_resolution,) * 2, mode="bilinear", align_corners=False)
        for suffix in ("mp4", "gif"):
            paths[f"turntable_rgb.{suffix}"] = save_video(frames.clamp(0, 1), out_dir / f"turntable_rgb.{suffix}", ex.fps)
        textureless = turntable(field, ex.turntable_frames, ex.turntable_resolution, shading="textureless", **orbit)
        for suffix in ("mp4", "gif"):
            paths[f"turntable_textureless.{suffix}"] = save_video(
                textureless[:, :3].clamp(0, 1), out_dir / f"turntable_textureless.{suffix}", ex.fps)
    else:  # the albedo turntable is rendered once: its videos and the grid below share it
        frames = turntable(field, ex.turntable_frames, ex.turntable_resolution, **orbit)  # (T, 3, H, W)
        paths.update(export_turntables(field, out_dir, n_frames=ex.turntable_frames,
                                       resolution=ex.turntable_resolution, fps=ex.fps, rgb_frames=frames, **orbit))
    # 2. image grids: the final NeRF's orbit, and stage 2's pseudo views when there are any
    paths["final_views.png"] = save_grid(frames[:, :3].clamp(0, 1), out_dir / "final_views.png")
    pseudo = sorted((ctx.store / "stage2").glob(f"{ctx.keys.get('stage2', '')}/grid_views.png")) if ctx.keys.get("stage2") else []
    if pseudo:
        paths["pseudo_views.png"] = Path(shutil.copyfile(pseudo[0], out_dir / "pseudo_views.png"))
    # 3. the mesh (marching cubes on the density grid) and the NeRF itself
    paths.update(export_mesh(field, out_dir, resolution=ex.mesh_resolution))
    paths["nerf.safetensors"] = Path(shutil.copyfile(final.field_file, out_dir / "nerf.safetensors"))
    return {name: Path(p) for name, p in paths.items()}
