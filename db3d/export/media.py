"""Exports that people look at: image grids, videos and turntables (NeRF save/load: db3d/nerf/io.py).

Everything here writes atomically (``db3d.core.artifacts.atomic_path``): to a temporary name
starting with ``.`` in the target folder, then ``os.replace``, so a reader never sees half a file.
Meshes live in ``db3d/export/mesh.py``.

Turntable cameras follow ``db3d/core/cameras.py``: an orbit around the origin (+z up, azimuth 0 the
front). The defaults match ``NeRFConfig``'s fixed orbit (elevation 15, distance 1.75 bounding
radii, fov 50 degrees: the pseudo-view cameras, inside the training ranges), so the turntable sees
what training saw; pass the run's ``orbit_*`` values when they differ.
"""

from __future__ import annotations

from pathlib import Path

import imageio.v2 as imageio
import numpy as np
import torch
from PIL import Image
from torch import Tensor

from db3d.core.artifacts import atomic_path, atomic_write
from db3d.core.cameras import orbit_cameras
from db3d.nerf.io import field_device
from db3d.nerf.render import field_calls_per_sample, render_views

TURNTABLE_DISTANCE = 1.75
"""Turntable camera distance in units of the field's bounding radius (NeRFConfig.orbit_distance)."""
TURNTABLE_FOV_DEG = 50.0
"""Turntable vertical field of view in degrees (NeRFConfig.orbit_fov)."""
POINTS_PER_CALL = 2**17
"""Sample points per field call in turntables: the torch hash grid holds ~6 KB a point."""


# ---- images and videos --------------------------------------------------------------------------


def to_uint8(images: Tensor) -> np.ndarray:
    """[0,1] images (B,3,H,W) -> uint8 (B,H,W,3)."""
    return (images.detach().float().clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype(np.uint8)


def save_grid(images: Tensor, path: Path, columns: int | None = None) -> Path:
    """Save [0,1] images (B,3,H,W) as one PNG grid (written atomically)."""
    arr = to_uint8(images)
    b, h, w, _ = arr.shape
    cols = columns or int(np.ceil(np.sqrt(b)))
    rows = int(np.ceil(b / cols))
    grid = np.full((rows * h, cols * w, 3), 255, dtype=np.uint8)
    for i, img in enumerate(arr):
        r, c = divmod(i, cols)
        grid[r * h:(r + 1) * h, c * w:(c + 1) * w] = img
    return atomic_write(path, lambda tmp: Image.fromarray(grid).save(tmp, format="PNG"))


def _pad_even(frames: np.ndarray) -> np.ndarray:  # (T,H,W,3) -> (T,H',W',3), H' and W' even
    """Repeat the last row / column where H or W is odd (H.264 with yuv420p needs even sizes)."""
    _, h, w, _ = frames.shape
    return np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")


def save_video(frames: Tensor, path: Path, fps: int = 20) -> Path:
    """Write [0,1] frames (T,3,H,W) as an ``.mp4`` (H.264) or ``.gif``, chosen by the suffix.

    mp4: ffmpeg through imageio, libx264 + yuv420p (plays everywhere), odd sizes padded by one
    edge row/column (``macro_block_size=2`` so imageio never rescales). gif: Pillow, looping
    forever, ``1000 / fps`` ms a frame (GIF stores 10 ms steps); note that Pillow merges a frame
    identical to the previous one into it (longer duration), so a static clip has fewer frames.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".mp4", ".gif"):
        raise ValueError(f"save_video writes .mp4 or .gif, got {path.name!r}")
    if frames.ndim != 4 or frames.shape[1] != 3 or frames.shape[0] == 0:
        raise ValueError(f"save_video needs RGB frames (T>0, 3, H, W), got {tuple(frames.shape)}")
    arr = to_uint8(frames)  # (T, H, W, 3)
    with atomic_path(path) as tmp:  # tmp keeps the suffix: ffmpeg picks the container from it
        if suffix == ".mp4":
            writer = imageio.get_writer(
                tmp, format="FFMPEG", mode="I", fps=fps, codec="libx264",
                pixelformat="yuv420p", quality=8, macro_block_size=2,
            )
            with writer:
                for frame in _pad_even(arr):
                    writer.append_data(frame)
        else:
            images = [Image.fromarray(frame) for frame in arr]
            images[0].save(
                tmp, format="GIF", save_all=True, append_images=images[1:],
                duration=max(1, round(1000 / fps)), loop=0,
            )
    return path


# ---- turntables ---------------------------------------------------------------------------------


def turntable(
    field: torch.nn.Module,
    n_frames: int,
    resolution: int | tuple[int, int],  # side, or (height, width)
    elevation_deg: float = 15.0,
    distance: float | None = None,  # world units; None: TURNTABLE_DISTANCE * bound radius
    fov_y_deg: float = TURNTABLE_FOV_DEG,
    n_samples: int = 64,
    shading: str = "albedo",  # "albedo" | "textureless" | "lambertian" (headlight)
    background: Tensor | None = None,  # (3,); None: the field's own background
    azimuth_offset_deg: float = 0.0,
    frames_per_batch: int = 8,
    chunk: int | None = None,  # rays per field call; None: about POINTS_PER_CALL points
) -> Tensor:  # (T, C, H, W) on the CPU; C = 3 (RGB in [0, 1]) unless the field renders latents
    """Render ``n_frames`` views on an orbit (frame 0 at the front), on the field's device.

    A latent field (``color_channels`` 4, Latent-NeRF) gives latents: decode them before
    ``save_video``.
    """
    device = field_device(field)
    if chunk is None:  # shaded renders hold more per point: a backward pass, or 6 extra density calls
        chunk = max(1, POINTS_PER_CALL // (n_samples * field_calls_per_sample(field, shading)))
    if distance is None:
        distance = TURNTABLE_DISTANCE * field.config.bound_radius
    cams = orbit_cameras(
        n_frames, elevation_deg, distance, fov_y_deg, resolution,
        azimuth_offset_deg=azimuth_offset_deg, device=device,
    )
    frames = []
    for start in range(0, n_frames, frames_per_batch):
        out = render_views(
            field, cams[start:start + frames_per_batch], n_samples=n_samples,
            shading=shading, background=background, chunk=chunk,
        )
        rgb = out.rgb if out.rgb.shape[-1] != 3 else out.rgb.clamp(0, 1)  # latents unclamped
        frames.append(rgb.permute(0, 3, 1, 2).cpu())  # (b, C, H, W)
    return torch.cat(frames, 0)


def export_turntables(
    field: torch.nn.Module,
    out_dir: Path,
    n_frames: int = 120,
    resolution: int = 256,
    fps: int = 20,
    elevation_deg: float = 15.0,
    distance: float | None = None,  # None: TURNTABLE_DISTANCE * bound radius
    fov_y_deg: float = TURNTABLE_FOV_DEG,
    n_samples: int = 64,
    formats: tuple[str, ...] = ("mp4", "gif"),
    rgb_frames: Tensor | None = None,  # (T, 3, H, W): this very albedo turntable, already rendered
) -> dict[str, Path]:
    """Write ``turntable_rgb.*`` (albedo) and ``turntable_textureless.*`` (white, headlit geometry).

    For an RGB field; a latent field's albedo turntable needs decoding (``turntable`` + a VAE).
    ``rgb_frames``: the albedo frames ``turntable(field, n_frames, resolution, ...)`` with these
    arguments, when the caller has them (``export_result`` also puts them in a grid): they are
    not rendered again.

    Returns ``{file name: path}``, e.g. ``{"turntable_rgb.mp4": out_dir / "turntable_rgb.mp4"}``.
    """
    out_dir = Path(out_dir)
    written: dict[str, Path] = {}
    for name, shading in (("rgb", "albedo"), ("textureless", "textureless")):
        if name == "rgb" and rgb_frames is not None:
            frames = rgb_frames
        else:
            frames = turntable(
                field, n_frames, resolution, elevation_deg=elevation_deg, distance=distance,
                fov_y_deg=fov_y_deg, n_samples=n_samples, shading=shading,
            )
        for fmt in formats:
            file_name = f"turntable_{name}.{fmt}"
            written[file_name] = save_video(frames, out_dir / file_name, fps=fps)
    return written
