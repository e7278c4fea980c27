"""Cameras: conventions, look-at, orbits, random training cameras, rays and view prompts.

Conventions (used everywhere in db3d):

- World frame is right-handed with **+z up**. The object sits at the origin and every camera
  looks at the origin.
- A camera at azimuth ``a`` and elevation ``e`` (degrees) and distance ``r`` sits at
  ``r * (cos e cos a, cos e sin a, sin e)``. **Azimuth 0 is the front of the object**: the camera
  on the +x axis, looking along -x. Azimuth grows counter-clockwise seen from above (+90 is the
  camera on +y, i.e. the object's left side). Elevation 0 is the horizon, +90 straight overhead.
- Camera-to-world matrices ``c2w (B,4,4)`` use the OpenGL / NeRF camera frame: the columns are
  the camera's right (+x), up (+y) and backward (+z) axes and its position; the camera looks
  along its own -z. Image row 0 is the top of the image, column 0 the left.
- ``fov_y_deg`` is the full vertical field of view; pixels are square, so
  ``focal = 0.5 * height / tan(fov_y / 2)`` in pixels. Rays go through pixel centres.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Sequence

import torch
from torch import Tensor


@dataclass(frozen=True)
class CameraBatch:
    """A batch of B pinhole cameras sharing one image size, plus a point light per camera."""

    c2w: Tensor  # (B, 4, 4) camera-to-world, OpenGL camera frame
    fov_y_deg: Tensor  # (B,) full vertical field of view in degrees
    height: int
    width: int
    azimuth_deg: Tensor  # (B,) in [0, 360)
    elevation_deg: Tensor  # (B,)
    distance: Tensor  # (B,) camera distance to the origin
    light_pos: Tensor  # (B, 3) world position of the point light

    def __len__(self) -> int:
        return self.c2w.shape[0]

    @property
    def device(self) -> torch.device:
        return self.c2w.device

    @property
    def focal(self) -> Tensor:  # (B,) focal length in pixels
        return 0.5 * self.height / torch.tan(torch.deg2rad(self.fov_y_deg) / 2)

    @property
    def positions(self) -> Tensor:  # (B, 3) camera centres in world space
        return self.c2w[:, :3, 3]

    def to(self, device: torch.device | str) -> "CameraBatch":
        """The same cameras with every tensor on ``device``."""
        return replace(
            self,
            c2w=self.c2w.to(device),
            fov_y_deg=self.fov_y_deg.to(device),
            azimuth_deg=self.azimuth_deg.to(device),
            elevation_deg=self.elevation_deg.to(device),
            distance=self.distance.to(device),
            light_pos=self.light_pos.to(device),
        )

    def __getitem__(self, index: int | slice | Tensor) -> "CameraBatch":
        """A sub-batch (an int keeps the batch dimension)."""
        if isinstance(index, int):
            index = slice(index, index + 1)
        return replace(
            self,
            c2w=self.c2w[index],
            fov_y_deg=self.fov_y_deg[index],
            azimuth_deg=self.azimuth_deg[index],
            elevation_deg=self.elevation_deg[index],
            distance=self.distance[index],
            light_pos=self.light_pos[index],
        )


def spherical_to_cartesian(
    azimuth_deg: Tensor,  # (B,)
    elevation_deg: Tensor,  # (B,)
    distance: Tensor,  # (B,)
) -> Tensor:  # (B, 3)
    """Camera position for the convention in the module docstring."""
    az, el = torch.deg2rad(azimuth_deg), torch.deg2rad(elevation_deg)
    return distance[:, None] * torch.stack(
        [torch.cos(el) * torch.cos(az), torch.cos(el) * torch.sin(az), torch.sin(el)], dim=-1
    )


def look_at(
    eye: Tensor,  # (B, 3)
    target: Tensor | None = None,  # (B, 3); None means the origin
    up: Sequence[float] | Tensor = (0.0, 0.0, 1.0),  # (3,) or (B, 3)
) -> Tensor:  # (B, 4, 4)
    """Camera-to-world matrices of cameras at ``eye`` looking at ``target`` (OpenGL frame).

    When the viewing direction is parallel to ``up`` (a camera straight overhead), +y of the world
    is used as the up hint instead, so the matrix stays a rotation.
    """
    if target is None:
        target = torch.zeros_like(eye)
    up = torch.as_tensor(up, dtype=eye.dtype, device=eye.device).expand_as(eye)
    forward = torch.nn.functional.normalize(target - eye, dim=-1)  # (B, 3)
    right = torch.cross(forward, up, dim=-1)
    degenerate = right.norm(dim=-1, keepdim=True) < 1e-6
    alt_up = torch.tensor([0.0, 1.0, 0.0], dtype=eye.dtype, device=eye.device).expand_as(eye)
    right = torch.where(degenerate, torch.cross(forward, alt_up, dim=-1), right)
    right = torch.nn.functional.normalize(right, dim=-1)
    cam_up = torch.cross(right, forward, dim=-1)
    c2w = torch.eye(4, dtype=eye.dtype, device=eye.device).repeat(eye.shape[0], 1, 1)
    c2w[:, :3, 0] = right
    c2w[:, :3, 1] = cam_up
    c2w[:, :3, 2] = -forward
    c2w[:, :3, 3] = eye
    return c2w


def _hw(resolution: int | tuple[int, int]) -> tuple[int, int]:
    return (resolution, resolution) if isinstance(resolution, int) else tuple(resolution)


def orbit_cameras(
    n: int,
    elevation_deg: float,
    distance: float,
    fov_y_deg: float,
    resolution: int | tuple[int, int],  # side, or (height, width)
    azimuth_offset_deg: float = 0.0,
    device: torch.device | str = "cpu",
) -> CameraBatch:
    """``n`` cameras on a fixed-radius orbit, azimuths evenly spaced over 360 degrees.

    Used for stage 2's pseudo views and for turntables. Camera ``i`` sits at azimuth
    ``azimuth_offset_deg + 360 * i / n``; the light sits at each camera (headlight).
    """
    azimuth = (azimuth_offset_deg + 360.0 * torch.arange(n, dtype=torch.float32) / n) % 360.0
    return cameras_at(azimuth, torch.full((n,), float(elevation_deg)), distance, fov_y_deg, resolution, device)


def cameras_at(
    azimuth_deg: Tensor,  # (B,)
    elevation_deg: Tensor,  # (B,)
    distance: float,
    fov_y_deg: float,
    resolution: int | tuple[int, int],  # side, or (height, width)
    device: torch.device | str = "cpu",
) -> CameraBatch:
    """Cameras at the given azimuths and elevations looking at the origin; headlights."""
    height, width = _hw(resolution)
    azimuth = torch.as_tensor(azimuth_deg, dtype=torch.float32).reshape(-1) % 360.0
    elevation = torch.as_tensor(elevation_deg, dtype=torch.float32).reshape(-1).expand_as(azimuth).clone()
    dist = torch.full_like(azimuth, float(distance))
    eye = spherical_to_cartesian(azimuth, elevation, dist)
    cams = CameraBatch(
        c2w=look_at(eye),
        fov_y_deg=torch.full_like(azimuth, float(fov_y_deg)),
        height=height,
        width=width,
        azimuth_deg=azimuth,
        elevation_deg=elevation,
        distance=dist,
        light_pos=eye.clone(),
    )
    return cams.to(device)


def _uniform(n: int, lo_hi: tuple[float, float], generator: torch.Generator | None) -> Tensor:
    lo, hi = lo_hi
    return lo + (hi - lo) * torch.rand(n, generator=generator)


def sample_random_cameras(
    batch: int,
    resolution: int | tuple[int, int],
    elevation_range: tuple[float, float] = (-10.0, 90.0),
    distance_range: tuple[float, float] = (1.0, 1.5),
    fov_range: tuple[float, float] = (40.0, 70.0),
    generator: torch.Generator | None = None,
    light_distance_scale: tuple[float, float] = (1.0, 1.5),
    light_jitter_std: float = 0.3,
    device: torch.device | str = "cpu",
) -> CameraBatch:
    """Random training cameras looking at the origin (DreamFusion's sampling).

    Defaults follow DreamFusion's appendix: elevation in [-10, 90] deg, distance in [1, 1.5]
    (in units of the scene's bounding radius: scale them with it) and a focal-length multiplier
    in [0.7, 1.35] of the image width, i.e. fov_y in about [40, 70] deg. Azimuths are stratified:
    sector ``i`` of ``360 / batch`` degrees gets one uniform sample and one random global offset
    rotates all of them, so every batch covers the full circle. DreamFusion samples the point
    light "from a distribution centered around the camera location": here its direction is the
    camera's unit direction plus Gaussian noise of std ``light_jitter_std``, renormalised, and its
    distance from the origin is the camera's distance times a factor uniform in
    ``light_distance_scale``: the light is as far as the camera or farther, never inside the
    object's bounding sphere (a light at 0.8-1.5 from the origin sat inside it 29% of the time).
    Sampling draws on the
    CPU from ``generator`` and the result is moved to ``device``.
    """
    height, width = _hw(resolution)
    sector = 360.0 / batch
    offset = torch.rand(1, generator=generator) * 360.0
    jitter = torch.rand(batch, generator=generator)
    azimuth = (offset + sector * (torch.arange(batch, dtype=torch.float32) + jitter)) % 360.0
    elevation = _uniform(batch, elevation_range, generator)
    dist = _uniform(batch, distance_range, generator)
    fov = _uniform(batch, fov_range, generator)
    eye = spherical_to_cartesian(azimuth, elevation, dist)
    light_dir = eye / eye.norm(dim=-1, keepdim=True)
    light_dir = light_dir + light_jitter_std * torch.randn(batch, 3, generator=generator)
    light_dir = light_dir / light_dir.norm(dim=-1, keepdim=True).clamp_min(1e-8)
    light_pos = light_dir * (dist * _uniform(batch, light_distance_scale, generator))[:, None]
    cams = CameraBatch(
        c2w=look_at(eye),
        fov_y_deg=fov,
        height=height,
        width=width,
        azimuth_deg=azimuth,
        elevation_deg=elevation,
        distance=dist,
        light_pos=light_pos,
    )
    return cams.to(device)


def generate_rays(cams: CameraBatch) -> tuple[Tensor, Tensor]:
    """World-space rays through every pixel centre.

    Returns ``origins (B,H,W,3)`` and unit ``directions (B,H,W,3)``.
    """
    device, dtype = cams.c2w.device, cams.c2w.dtype
    j = torch.arange(cams.height, device=device, dtype=dtype) + 0.5  # (H,) rows, top first
    i = torch.arange(cams.width, device=device, dtype=dtype) + 0.5  # (W,) columns, left first
    jj, ii = torch.meshgrid(j, i, indexing="ij")  # (H, W)
    focal = cams.focal.to(dtype)[:, None, None]  # (B, 1, 1)
    x = (ii[None] - 0.5 * cams.width) / focal  # (B, H, W)
    y = -(jj[None] - 0.5 * cams.height) / focal
    dirs_cam = torch.stack([x, y, -torch.ones_like(x)], dim=-1)  # (B, H, W, 3)
    rot = cams.c2w[:, None, None, :3, :3]  # (B, 1, 1, 3, 3)
    directions = (rot @ dirs_cam[..., None])[..., 0]
    directions = directions / directions.norm(dim=-1, keepdim=True)
    origins = cams.c2w[:, None, None, :3, 3].expand_as(directions)
    return origins, directions


def view_direction_suffix(
    azimuth_deg: Tensor | Sequence[float] | float,  # (B,)
    elevation_deg: Tensor | Sequence[float] | float,  # (B,)
    overhead_threshold_deg: float = 60.0,
    front_range: float = 45.0,
) -> list[str]:
    """DreamFusion's view-dependent prompt suffix for each camera.

    "overhead view" when elevation > ``overhead_threshold_deg`` (DreamFusion: 60); otherwise
    "front view" within +-``front_range`` deg of azimuth 0, "back view" within +-``front_range``
    deg of azimuth 180, else "side view".
    """
    az = torch.as_tensor(azimuth_deg, dtype=torch.float64).reshape(-1)
    el = torch.as_tensor(elevation_deg, dtype=torch.float64).reshape(-1)
    if el.numel() == 1 and az.numel() > 1:
        el = el.expand_as(az)
    az = torch.remainder(az + 180.0, 360.0) - 180.0  # [-180, 180)
    out = []
    for a, e in zip(az.tolist(), el.tolist()):
        if e > overhead_threshold_deg:
            out.append("overhead view")
        elif abs(a) < front_range:
            out.append("front view")
        elif abs(a) > 180.0 - front_range:
            out.append("back view")
        else:
            out.append("side view")
    return out


def view_prompt(prompt: str, suffix: str) -> str:
    """``"{prompt}, {suffix}"``, e.g. ``"a sks dog, side view"``."""
    return f"{prompt}, {suffix}"


def fov_to_focal(fov_y_deg: float, height: int) -> float:
    """Focal length in pixels for a full vertical field of view."""
    return 0.5 * height / math.tan(math.radians(fov_y_deg) / 2)
