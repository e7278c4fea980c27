"""SDS: the gradient is w(t) (eps_hat - eps), for eps and v-prediction backbones; NaN guard."""

from __future__ import annotations

import copy

import pytest
import torch

from db3d.method.sds import SDSNonFinite, sample_t, sds_loss, to_model_space
from db3d.models import diffusion


def _v_backbone(bb):
    from diffusers import DDPMScheduler

    vbb = copy.copy(bb)
    vbb.scheduler = DDPMScheduler.from_config(bb.scheduler.config, prediction_type="v_prediction")
    vbb._prompt_cache = {}
    return vbb


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_sds_gradient_equals_weighted_noise_residual(tiny, prediction):
    bb = tiny if prediction == "epsilon" else _v_backbone(tiny)
    renders = torch.rand(2, 3, 32, 32, requires_grad=True)  # NeRF renders at 32 px, upsampled inside
    x = to_model_space(bb, renders)
    x.retain_grad()
    cond = bb.encode_prompts(["a sks toy, front view", "a sks toy, back view"])
    uncond = bb.encode_prompts([""])
    loss, info = sds_loss(bb, x, cond, uncond, 20.0, (0.02, 0.98), torch.Generator().manual_seed(5))
    loss.backward()
    # recompute the expected gradient from the same draws
    g = torch.Generator().manual_seed(5)
    t = sample_t(2, 0.02, 0.98, bb.num_train_timesteps, g)
    eps = torch.randn(x.shape, generator=g)
    a = bb.alphas_cumprod[t]
    x_t = diffusion.add_noise(x.detach(), eps, a)
    out = bb.unet_output(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([uncond.expand(2, -1, -1), cond]))
    if prediction == "v_prediction":  # convert v to eps by hand: eps = sqrt(a) v + sqrt(1-a) x_t
        a2 = torch.cat([a, a]).reshape(-1, 1, 1, 1)
        out = a2.sqrt() * out + (1 - a2).sqrt() * torch.cat([x_t, x_t])
    eps_u, eps_c = out.chunk(2)
    eps_hat = eps_u + 20.0 * (eps_c - eps_u)
    expected = (1 - a).reshape(-1, 1, 1, 1) * (eps_hat - eps)
    assert torch.equal(info.t, t)
    assert torch.allclose(x.grad * 2, expected, atol=1e-4, rtol=1e-4)  # mean over the batch of 2
    assert renders.grad is not None and renders.grad.abs().sum() > 0  # reaches the render


def test_timesteps_stay_in_range():
    t = sample_t(10000, 0.02, 0.98, 1000, torch.Generator().manual_seed(0))
    assert t.min() >= 20 and t.max() <= 979 and len(t.unique()) > 900


def test_grad_clip_bounds_each_sample(tiny_if):
    x = torch.rand(2, 3, 64, 64, requires_grad=True) * 2 - 1
    cond = tiny_if.encode_prompts(["a sks toy"] * 2)
    _, info = sds_loss(tiny_if, x, cond, tiny_if.encode_prompts([""]), 100.0, (0.02, 0.98),
                       torch.Generator().manual_seed(0), grad_clip=0.5)
    assert torch.all(info.grad.flatten(1).norm(dim=1) <= 0.5 + 1e-5)


def test_non_finite_gradient_stops_with_a_diagnostic(tiny_if):
    x = torch.full((1, 3, 64, 64), float("nan"), requires_grad=True)
    with pytest.raises(SDSNonFinite, match="guidance"):
        sds_loss(tiny_if, x, tiny_if.encode_prompts(["a sks toy"]), tiny_if.encode_prompts([""]), 100.0,
                 (0.02, 0.98), torch.Generator().manual_seed(0))
