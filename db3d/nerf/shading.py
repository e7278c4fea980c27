"""Shading: Lambertian under a point light, and DreamFusion's albedo / textureless / shaded mix.

DreamFusion renders ``c = albedo * (ambient + diffuse * max(0, n . l))`` with ``l`` the unit
vector from the point to a point light, and during optimisation randomly shows the albedo alone
or replaces the albedo by white ("textureless") so that geometry, not texture, must explain the
image. ``sample_shading_mode`` draws that choice.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from db3d.core.config import NeRFConfig

ShadingMode = Literal["albedo", "textureless", "lambertian"]
SHADING_MODES: tuple[ShadingMode, ...] = ("albedo", "textureless", "lambertian")

AMBIENT = 0.1
"""Ambient light l_a (DreamFusion and stable-dreamfusion: 0.1); the default of every shading call."""
DIFFUSE = 0.9
"""Point-light intensity l_p (stable-dreamfusion: 1 - ambient); the default of every shading call."""


@dataclass(frozen=True)
class ShadingConfig:
    """How renders are lit during optimisation. The mode probabilities take their defaults from
    ``NeRFConfig`` (documented there; ``shading_config`` copies a run's)."""

    p_albedo: float = NeRFConfig.p_albedo
    # probability of an albedo-only render (no lighting)
    p_textureless: float = NeRFConfig.p_textureless
    # probability of a textureless render: white albedo, Lambertian lighting (DreamFusion)
    p_lambertian: float = NeRFConfig.p_lambertian
    # probability of a shaded render: albedo * Lambertian lighting (DreamFusion)
    ambient: float = AMBIENT
    # ambient light l_a
    diffuse: float = DIFFUSE
    # point-light intensity l_p


def shading_config(nerf: NeRFConfig) -> ShadingConfig:
    """The shading of a run's NeRF section: its three mode probabilities (the names are shared)."""
    return ShadingConfig(p_albedo=nerf.p_albedo, p_textureless=nerf.p_textureless, p_lambertian=nerf.p_lambertian)


def lambertian(
    normal: Tensor,  # (..., 3) unit normals
    points: Tensor,  # (..., 3) surface / sample positions
    light_pos: Tensor,  # (..., 3) point-light position (broadcastable)
    ambient: float = AMBIENT,
    diffuse: float = DIFFUSE,
) -> Tensor:  # (..., 1)
    """Light reaching a Lambertian point: ``ambient + diffuse * max(0, n . l)``."""
    light_dir = torch.nn.functional.normalize(light_pos - points, dim=-1, eps=1e-8)
    cos = (normal * light_dir).sum(-1, keepdim=True).clamp(min=0.0)
    return ambient + diffuse * cos


def shade(
    albedo: Tensor,  # (..., 3)
    mode: ShadingMode,
    normal: Tensor | None = None,  # (..., 3), needed unless mode == "albedo"
    points: Tensor | None = None,  # (..., 3)
    light_pos: Tensor | None = None,  # (..., 3) broadcastable
    ambient: float = AMBIENT,
    diffuse: float = DIFFUSE,
) -> Tensor:  # (..., 3)
    """Sample colour under one shading mode."""
    if mode == "albedo":
        return albedo
    if normal is None or points is None or light_pos is None:
        raise ValueError(f"shading mode {mode!r} needs normals, points and a light position")
    light = lambertian(normal, points, light_pos, ambient, diffuse)
    if mode == "textureless":
        return light.expand_as(albedo)
    if mode == "lambertian":
        return albedo * light
    raise ValueError(f"unknown shading mode {mode!r}; expected one of {SHADING_MODES}")


def needs_normals(mode: ShadingMode) -> bool:
    return mode != "albedo"


def sample_shading_mode(
    config: ShadingConfig, rng: random.Random | torch.Generator | None = None
) -> ShadingMode:
    """Draw one shading mode with ``config``'s probabilities (normalised to sum to 1)."""
    probs = [config.p_albedo, config.p_textureless, config.p_lambertian]
    total = sum(probs)
    if total <= 0 or min(probs) < 0:
        raise ValueError(f"shading probabilities must be >= 0 with a positive sum, got {probs}")
    if isinstance(rng, torch.Generator):
        u = torch.rand(1, generator=rng).item()
    else:
        u = (rng or random).random()
    acc = 0.0
    for mode, p in zip(SHADING_MODES, probs):
        acc += p / total
        if u < acc:
            return mode
    return [m for m, p in zip(SHADING_MODES, probs) if p > 0][-1]  # float round-off at u ~ 1
