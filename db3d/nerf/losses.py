"""NeRF regularisers and the reconstruction loss, as pure functions, plus named weight schedules.

``L_nerf`` in DreamBooth3D is DreamFusion's / mip-NeRF 360's regularisation: orientation
(normals must not face away from the camera), opacity sparsity and the distortion loss. The
reconstruction loss compares renders with the pseudo views at their known cameras (stage 3).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor


def orientation_loss(
    weights: Tensor,  # (R, S) compositing weights
    normals: Tensor,  # (R, S, 3) unit normals at the samples
    directions: Tensor,  # (R, 3) unit ray directions (camera -> scene)
    detach_weights: bool = True,
) -> Tensor:  # ()
    """Ref-NeRF / DreamFusion orientation loss ``mean_rays sum_i sg(w_i) max(0, n_i . d)^2``.

    A normal facing away from the camera has ``n . d > 0``. DreamFusion stops the gradient
    through the weights (``detach_weights``), so the loss moves normals, not densities.
    """
    w = weights.detach() if detach_weights else weights
    facing_away = (normals * directions[:, None, :]).sum(-1).clamp(min=0.0)  # (R, S)
    return (w * facing_away.square()).sum(-1).mean()


def opacity_sparsity_loss(opacity: Tensor) -> Tensor:  # (...) in [0, 1] -> ()
    """Mean accumulated opacity: pushes empty space to stay empty."""
    return opacity.mean()


def opacity_entropy_loss(opacity: Tensor, eps: float = 1e-5) -> Tensor:  # (...) -> ()
    """Mean binary entropy of the opacity: pushes each ray to fully empty or fully opaque."""
    o = opacity.clamp(eps, 1.0 - eps)
    return (-(o * torch.log(o) + (1.0 - o) * torch.log(1.0 - o))).mean()


def distortion_loss(
    weights: Tensor,  # (R, S)
    starts: Tensor,  # (R, S) interval starts, sorted along each ray
    ends: Tensor,  # (R, S) interval ends
) -> Tensor:  # ()
    """mip-NeRF 360 distortion loss, averaged over rays.

    With midpoints m_i = (s_i + e_i) / 2::

        L = sum_{i,j} w_i w_j |m_i - m_j|  +  1/3 sum_i w_i^2 (e_i - s_i)

    The double sum is computed in O(S) with exclusive prefix sums (midpoints sorted):
    ``sum_{i,j} w_i w_j |m_i - m_j| = 2 sum_i w_i (m_i W_{<i} - (wm)_{<i})`` where
    ``W_{<i} = sum_{j<i} w_j`` and ``(wm)_{<i} = sum_{j<i} w_j m_j``. Mip-NeRF 360 measures the
    intervals in a normalised ray coordinate: pass e.g. ``(t - near) / (far - near)``.
    """
    mid = 0.5 * (starts + ends)
    w_cum = torch.cumsum(weights, -1) - weights  # W_{<i}
    wm_cum = torch.cumsum(weights * mid, -1) - weights * mid  # (wm)_{<i}
    inter = 2.0 * (weights * (mid * w_cum - wm_cum)).sum(-1)
    intra = (weights.square() * (ends - starts)).sum(-1) / 3.0
    return (inter + intra).mean()


def reconstruction_loss(
    pred: Tensor,  # (B, H, W, 3) or (R, 3)
    target: Tensor,  # same shape as pred
    p: float = 2.0,
    mask: Tensor | None = None,  # (B, H, W, 1) or (R, 1), weights in [0, 1]
    reduction: Literal["mean", "image_sum"] = "mean",
) -> Tensor:  # ()
    """``|pred - target|^p`` (p=1: L1, p=2: MSE), optionally mask-weighted, reduced by

    - ``mean``: over every element (of the mask's weight);
    - ``image_sum``: summed over each image's pixels and channels, then averaged over the B images
      (pred (B, H, W, 3)): the units of the SDS term, whose detach-trick loss gives every element
      of an image its full gradient (see db3d/method/fit.py).

    DreamBooth3D's ``||render(P_v) - I_v^pseudo||_p`` with the norm's p a config field.
    """
    err = (pred - target).abs().pow(p)
    if mask is not None:
        err = err * mask.expand_as(err)
    if reduction == "image_sum":
        if err.dim() != 4:
            raise ValueError(f"reduction='image_sum' needs images (B, H, W, C), got shape {tuple(err.shape)}")
        return err.flatten(1).sum(1).mean()
    if reduction != "mean":
        raise ValueError(f"reduction={reduction!r}: must be 'mean' or 'image_sum'")
    if mask is None:
        return err.mean()
    return err.sum() / mask.expand_as(err).sum().clamp(min=1e-8)


@dataclass(frozen=True)
class LinearSchedule:
    """A weight that goes linearly from ``start`` to ``end`` over ``steps``, then stays at ``end``.

    Constant when ``start == end``; ``steps <= 0`` means ``end`` from step 0.
    """

    start: float
    end: float
    steps: int

    def __call__(self, step: int) -> float:
        if self.start == self.end or self.steps <= 0:
            return float(self.end)
        frac = min(max(step / self.steps, 0.0), 1.0)
        return float(self.start + (self.end - self.start) * frac)
