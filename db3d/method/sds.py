"""Score distillation sampling (DreamFusion, Poole et al. 2022) on any backbone.

    grad_x = w(t) * (eps_hat(x_t; y, t) - eps),   x_t = sqrt(a_t) x + sqrt(1 - a_t) eps
    w(t)   = 1 - a_t (DreamFusion),  t ~ U[t_min, t_max] * T
    eps_hat = eps_u + w_cfg * (eps_c - eps_u)        (guidance convention: w_cfg = 1 is unguided)

applied with the detach trick  loss = 0.5 * ||x - (x - grad).detach()||^2 / B,  whose gradient with
respect to x is exactly grad / B. Latent backbones get x from the VAE encoder (the gradient flows
back through it); pixel backbones get the render itself in [-1, 1]; Latent-NeRF renders x directly.
v-prediction backbones are converted to eps inside `Backbone.predict_eps`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from db3d.models import diffusion
from db3d.models.backbones import Backbone


class SDSNonFinite(FloatingPointError):
    """The SDS gradient held NaN or Inf: the run stops here instead of writing a broken NeRF."""


@dataclass
class SDSInfo:
    t: Tensor  # (B,) integer timesteps drawn
    w: Tensor  # (B,) weights w(t)
    grad: Tensor  # (B, C, h, w) the gradient applied to x (before the 1/B of the mean)
    grad_norm: float


def sds_weight(a_t: Tensor) -> Tensor:
    """DreamFusion's w(t) = 1 - alpha_bar_t, (B,) -> (B,)."""
    return 1.0 - a_t


def sample_t(n: int, t_min: float, t_max: float, num_train_timesteps: int, generator: torch.Generator) -> Tensor:
    """(n,) integer timesteps uniform in [t_min * T, t_max * T] (fractions of the schedule)."""
    lo = int(round(t_min * (num_train_timesteps - 1)))
    hi = max(lo, int(round(t_max * (num_train_timesteps - 1))))
    return torch.randint(lo, hi + 1, (n,), generator=generator)


def to_model_space(bb: Backbone, images: Tensor) -> Tensor:
    """Differentiable: [0,1] renders (B,3,H,W) -> model space at the backbone's resolution.

    The VAE encoder runs under backbone.autocast when set (its output is float32 either way).
    """
    if images.shape[-1] != bb.resolution:
        images = F.interpolate(images, size=(bb.resolution, bb.resolution), mode="bilinear", align_corners=False)
    with bb.autocast():
        return bb.encode_images(images)


def sds_loss(bb: Backbone, x: Tensor, cond: Tensor, uncond: Tensor, guidance_scale: float,
             t_range: tuple[float, float], generator: torch.Generator, grad_clip: float = 0.0,
             unet=None) -> tuple[Tensor, SDSInfo]:
    """SDS on model-space x (B,C,h,w) that carries the graph back to the NeRF.

    cond: (B, L, D) prompt embeddings (view-dependent); uncond: (1 or B, L, D).
    grad_clip > 0 rescales each sample's gradient to at most that L2 norm.
    """
    b = x.shape[0]
    # 1. a timestep and noise per sample (drawn on the CPU generator: identical on every device)
    t = sample_t(b, t_range[0], t_range[1], bb.num_train_timesteps, generator).to(bb.device)
    eps = torch.randn(x.shape, generator=generator).to(x.device)
    a_t = bb.alphas_cumprod[t]
    # 2. the denoiser's guided noise estimate; no gradient through the UNet (under backbone.autocast)
    with torch.no_grad():
        x_t = diffusion.add_noise(x.detach().float(), eps, a_t)
        with bb.autocast():
            eps_hat = bb.predict_eps(x_t, t, cond, uncond, guidance_scale, unet).float()
    # 3. grad = w(t) (eps_hat - eps)
    w = sds_weight(a_t)
    grad = w.reshape(-1, 1, 1, 1) * (eps_hat - eps)
    if not torch.isfinite(grad).all():
        bad = (~torch.isfinite(grad)).flatten(1).any(1).nonzero().flatten().tolist()
        raise SDSNonFinite(
            f"SDS gradient is not finite for samples {bad} (t={t.tolist()}, guidance={guidance_scale}); "
            f"x range [{x.min().item():.3g}, {x.max().item():.3g}], eps_hat finite={bool(torch.isfinite(eps_hat).all())}. "
            "Lower the guidance or the learning rate, or check the backbone's dtype (fp16 overflow).")
    if grad_clip > 0:
        norms = grad.flatten(1).norm(dim=1).clamp_min(1e-12)
        grad = grad * (grad_clip / norms).clamp(max=1.0).reshape(-1, 1, 1, 1)
    # 4. the detach trick: d loss / d x = grad / B
    target = (x - grad).detach()
    loss = 0.5 * ((x.float() - target) ** 2).sum() / b
    return loss, SDSInfo(t=t, w=w, grad=grad, grad_norm=float(grad.flatten(1).norm(dim=1).mean()))
