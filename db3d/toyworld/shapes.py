"""Signed distances of ToyWorld's primitives, their smooth union, and the 2D decal shapes.

Pure functions of points in the primitive's local frame (its centre at the origin, axis +z).
Every primitive is described by the half extents ``(hx, hy, hz)`` of its bounding box:

    ball      radius hx (hx = hy = hz)
    box       half sides (hx, hy, hz), edges rounded by 10% of the smallest half side
    cylinder  radius hx (hx = hy), half height hz, axis z
    cone      base radius hx (hx = hy) at z = -hz, apex at z = +hz

The distances are exact (Inigo Quilez's formulas), so ``|grad sdf| = 1`` away from edges.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

BOX_ROUNDING = 0.1  # edge rounding of boxes, as a fraction of the smallest half side


def sd_ball(p: Tensor, radius: float) -> Tensor:  # (N, 3) -> (N,)
    return p.norm(dim=-1) - radius


def sd_box(p: Tensor, half: tuple[float, float, float]) -> Tensor:  # (N, 3) -> (N,)
    """Rounded box with half sides ``half``."""
    r = BOX_ROUNDING * min(half)
    q = p.abs() - (torch.tensor(half, device=p.device, dtype=p.dtype) - r)  # (N, 3)
    outside = q.clamp(min=0.0).norm(dim=-1)
    inside = q.max(dim=-1).values.clamp(max=0.0)
    return outside + inside - r


def sd_cylinder(p: Tensor, radius: float, half_height: float) -> Tensor:  # (N, 3) -> (N,)
    """Capped cylinder along z."""
    d = torch.stack([p[:, :2].norm(dim=-1) - radius, p[:, 2].abs() - half_height], dim=-1)
    return d.clamp(min=0.0).norm(dim=-1) + d.max(dim=-1).values.clamp(max=0.0)


def sd_cone(p: Tensor, radius: float, half_height: float) -> Tensor:  # (N, 3) -> (N,)
    """Cone along z: base disc of ``radius`` at z = -half_height, apex at z = +half_height.

    Quilez's capped cone with top radius 0, in the 2D half-plane (q_x = distance to the axis,
    q_y = z): ``ca`` is the offset to the base cap, ``cb`` to the slanted side.
    """
    r, h = radius, half_height
    qx, qy = p[:, :2].norm(dim=-1), p[:, 2]
    # 1. offset to the caps: the base disc below the middle, the apex point above it
    ca_x = torch.where(qy < 0.0, (qx - r).clamp(min=0.0), qx)
    ca_y = qy.abs() - h
    # 2. offset to the side segment from (r, -h) to (0, h)
    t = ((r * qx + 2.0 * h * (h - qy)) / (r * r + 4.0 * h * h)).clamp(0.0, 1.0)
    cb_x = qx - r * t
    cb_y = qy - h + 2.0 * h * t
    # 3. inside when below the side and between the caps
    sign = torch.where((cb_x < 0.0) & (ca_y < 0.0), -1.0, 1.0).to(p.dtype)
    d2 = torch.minimum(ca_x * ca_x + ca_y * ca_y, cb_x * cb_x + cb_y * cb_y)
    return sign * d2.clamp(min=1e-12).sqrt()


def sd_primitive(kind: str, p: Tensor, half: tuple[float, float, float]) -> Tensor:
    """Signed distance of one primitive of ``kind`` with bounding half extents ``half``."""
    hx, _, hz = half
    if kind == "ball":
        return sd_ball(p, hx)
    if kind == "box":
        return sd_box(p, half)
    if kind == "cylinder":
        return sd_cylinder(p, hx, hz)
    if kind == "cone":
        return sd_cone(p, hx, hz)
    raise ValueError(f"unknown primitive {kind!r}")


def smooth_min(a: Tensor, b: Tensor, k: float) -> Tensor:  # (N,), (N,) -> (N,)
    """Polynomial smooth minimum (smooth union of two SDFs) with blend radius ``k``."""
    if k <= 0.0:
        return torch.minimum(a, b)
    h = (0.5 + 0.5 * (b - a) / k).clamp(0.0, 1.0)
    return b + (a - b) * h - k * h * (1.0 - h)


def in_decal(shape: str, u: Tensor, v: Tensor, size: float) -> Tensor:  # (N,), (N,) -> (N,) bool
    """Whether 2D offsets ``(u, v)`` from a decal's centre lie inside it.

    ``size`` is the disc radius; the other shapes have the disc's area (pi size^2) so that every
    decal covers the same share of the front view. ``u`` runs along +y, ``v`` along +z (up).
    """
    if shape == "disc":
        return u * u + v * v <= size * size
    if shape == "square":
        half = size * math.sqrt(math.pi) / 2.0
        return (u.abs() <= half) & (v.abs() <= half)
    if shape == "diamond":
        return u.abs() + v.abs() <= size * math.sqrt(math.pi / 2.0)
    if shape == "triangle":  # pointing up, circumradius R: apex (0, R), base at v = -R/2
        big_r = size * math.sqrt(4.0 * math.pi / (3.0 * math.sqrt(3.0)))
        return (v >= -0.5 * big_r) & (math.sqrt(3.0) * u.abs() + v <= big_r)
    raise ValueError(f"unknown decal shape {shape!r}")


DECAL_SHAPES: tuple[str, ...] = ("disc", "square", "diamond", "triangle")
