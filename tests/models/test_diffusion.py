"""db3d/models/diffusion.py agrees with diffusers' schedulers: add_noise, velocity, a DDIM step."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler

from db3d.models import diffusion

CONFIG = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")


def _draws(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(3, 4, 8, 8, generator=g), torch.randn(3, 4, 8, 8, generator=g)


def test_add_noise_and_velocity_match_ddpm_scheduler():
    sched = DDPMScheduler(**CONFIG)
    x0, eps = _draws()
    t = torch.tensor([0, 480, 999])
    a = sched.alphas_cumprod[t]
    torch.testing.assert_close(diffusion.add_noise(x0, eps, a), sched.add_noise(x0, eps, t), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(diffusion.velocity(x0, eps, a), sched.get_velocity(x0, eps, t), atol=1e-6, rtol=1e-5)
    # and v_to_eps inverts the velocity exactly
    x_t = sched.add_noise(x0, eps, t)
    torch.testing.assert_close(diffusion.v_to_eps(sched.get_velocity(x0, eps, t), x_t, a), eps, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("step_index", [0, 5, 9])
def test_ddim_step_matches_diffusers_ddim_with_eta_0(step_index):
    sched = DDIMScheduler(**CONFIG, clip_sample=False, set_alpha_to_one=True)
    sched.set_timesteps(10)
    t = int(sched.timesteps[step_index])
    prev = t - sched.config.num_train_timesteps // 10
    x_t, eps = _draws(step_index)
    expected = sched.step(eps, t, x_t, eta=0.0).prev_sample
    a_t = sched.alphas_cumprod[torch.full((3,), t)]
    a_prev = sched.alphas_cumprod[torch.full((3,), prev)] if prev >= 0 else torch.ones(3)
    torch.testing.assert_close(diffusion.ddim_step(x_t, eps, a_t, a_prev), expected, atol=1e-5, rtol=1e-5)
