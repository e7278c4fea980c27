"""Diffusion maths as pure functions (no modules, no state).

Notation: `a_t` is alpha_bar_t, the cumulative product of (1 - beta) up to timestep t.
    forward:      x_t = sqrt(a_t) x_0 + sqrt(1 - a_t) eps
    v-prediction: v   = sqrt(a_t) eps - sqrt(1 - a_t) x_0
"""

from __future__ import annotations

import torch
from torch import Tensor


def _bcast(a: Tensor, x: Tensor) -> Tensor:
    """(B,) -> (B, 1, 1, 1) to broadcast over an image batch x."""
    return a.reshape(-1, *([1] * (x.dim() - 1))).to(x.dtype)


def add_noise(x0: Tensor, eps: Tensor, a_t: Tensor) -> Tensor:
    """x_t from x_0 (B,C,H,W), eps (B,C,H,W) and a_t (B,)."""
    a = _bcast(a_t, x0)
    return a.sqrt() * x0 + (1 - a).sqrt() * eps


def velocity(x0: Tensor, eps: Tensor, a_t: Tensor) -> Tensor:
    """The v-prediction target v = sqrt(a_t) eps - sqrt(1 - a_t) x_0."""
    a = _bcast(a_t, x0)
    return a.sqrt() * eps - (1 - a).sqrt() * x0


def v_to_eps(v: Tensor, x_t: Tensor, a_t: Tensor) -> Tensor:
    """eps = sqrt(a_t) v + sqrt(1 - a_t) x_t (exact inverse of the v parameterisation)."""
    a = _bcast(a_t, x_t)
    return a.sqrt() * v + (1 - a).sqrt() * x_t


def predict_x0(x_t: Tensor, eps: Tensor, a_t: Tensor) -> Tensor:
    """x_0 estimate (x_t - sqrt(1 - a_t) eps) / sqrt(a_t)."""
    a = _bcast(a_t, x_t)
    return (x_t - (1 - a).sqrt() * eps) / a.sqrt()


def cfg_combine(eps_uncond: Tensor, eps_cond: Tensor, guidance_scale: float) -> Tensor:
    """Classifier-free guidance eps_u + w (eps_c - eps_u); w = 1 is the conditional model alone."""
    return eps_uncond + guidance_scale * (eps_cond - eps_uncond)


def ddim_step(x_t: Tensor, eps: Tensor, a_t: Tensor, a_prev: Tensor, clip_x0: bool = False) -> Tensor:
    """Deterministic DDIM (eta = 0) step from a_t to a_prev (a_prev = 1 gives x_0).

    clip_x0 clamps the x_0 estimate to [-1, 1] (pixel-space models) and re-derives eps from it.
    """
    x0 = predict_x0(x_t, eps, a_t)
    if clip_x0:
        x0 = x0.clamp(-1.0, 1.0)
        a = _bcast(a_t, x_t)
        eps = (x_t - a.sqrt() * x0) / (1 - a).sqrt()
    ap = _bcast(a_prev, x_t)
    return ap.sqrt() * x0 + (1 - ap).sqrt() * eps


def img2img_timesteps(t_start: int, n_steps: int) -> list[int]:
    """Descending integer timesteps that start exactly at t_start and end near 0 (n_steps >= 1)."""
    n_steps = max(1, min(n_steps, t_start + 1))
    ts = torch.linspace(t_start, 0, n_steps + 1)[:-1].round().long().tolist()
    out: list[int] = []
    for t in ts:  # keep strictly decreasing after rounding
        if not out or t < out[-1]:
            out.append(int(t))
    return out
