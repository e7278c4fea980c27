"""GPU speed options checked for numerics on the CPU: bf16 autocast of the SDS UNet and VAE encoder,
channels_last, TF32, torch.compile, and LoRA's shared frozen weights.

Stated tolerance of bf16 autocast: the gradient that SDS sends back to the render agrees with fp32
to a cosine similarity >= 0.99 and a relative norm difference < 5% (tiny models, CPU bf16).
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from db3d.core.config import BackboneConfig, compose
from db3d.method.sds import sds_loss, to_model_space
from db3d.models.backbones import build_backbone


def _render_grad(bb, seed=0):
    """d(SDS loss) / d(render) for a fixed render (1,3,64,64), timestep and noise."""
    render = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(99)).requires_grad_(True)
    cond = bb.encode_prompts(["a sks toy"])
    uncond = bb.encode_prompts([""])
    x = to_model_space(bb, render)
    loss, _ = sds_loss(bb, x, cond, uncond, 7.5, (0.2, 0.8), torch.Generator().manual_seed(seed))
    loss.backward()
    return render.grad.flatten()


@pytest.mark.parametrize("kind", ["tiny-sd", "tiny-if"])
def test_bf16_autocast_sds_gradients_match_fp32(kind, tiny_sd, tiny_if):
    bb = tiny_sd if kind == "tiny-sd" else tiny_if
    ref = _render_grad(bb)
    fast = _render_grad(replace(bb, autocast_dtype=torch.bfloat16))
    assert not torch.equal(ref, fast)  # autocast did act
    cos = torch.nn.functional.cosine_similarity(ref, fast, dim=0).item()
    rel = ((fast.norm() - ref.norm()).abs() / ref.norm()).item()
    print(f"{kind}: bf16 vs fp32 SDS render gradient cosine {cos:.5f}, relative norm difference {rel:.4f}")
    assert cos >= 0.99 and rel < 0.05


def test_autocast_is_a_config_field_and_off_by_default():
    assert build_backbone(BackboneConfig(kind="tiny-sd")).autocast_dtype is None
    assert build_backbone(BackboneConfig(kind="tiny-sd", autocast="bf16")).autocast_dtype == torch.bfloat16
    with pytest.raises(Exception, match="backbone.autocast"):
        compose(["backbone.autocast=fp8"])


def test_channels_last_gives_the_same_noise_prediction(tiny_sd):
    fast = build_backbone(BackboneConfig(kind="tiny-sd", seed=0, sample_steps=4, channels_last=True))
    assert fast.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert fast.vae.encoder.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    z = torch.randn(2, 4, 32, 32, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([100, 700])
    emb = tiny_sd.encode_prompts(["a sks toy", "a toy"])
    torch.testing.assert_close(fast.predict_eps(z, t, emb), tiny_sd.predict_eps(z, t, emb), rtol=1e-4, atol=1e-5)


def test_tf32_switches_are_set_only_when_asked():
    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    try:
        torch.backends.cuda.matmul.allow_tf32 = False
        build_backbone(BackboneConfig(kind="tiny-sd"))
        assert torch.backends.cuda.matmul.allow_tf32 is False
        build_backbone(BackboneConfig(kind="tiny-sd", tf32=True))
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def test_compiled_unet_matches_and_trainable_copies_are_not_compiled(tiny_sd):
    bb = build_backbone(BackboneConfig(kind="tiny-sd", seed=0, sample_steps=4, compile=True))
    assert bb.unet._compiled_call_impl is not None and bb.compile_unet
    z = torch.randn(1, 4, 32, 32, generator=torch.Generator().manual_seed(2))
    t = torch.tensor([500])
    emb = tiny_sd.encode_prompts(["a sks toy"])
    torch.testing.assert_close(bb.predict_eps(z, t, emb), tiny_sd.predict_eps(z, t, emb), rtol=1e-4, atol=1e-5)
    copy = bb.trainable_unet()
    assert copy._compiled_call_impl is None
    assert all(p.data_ptr() != q.data_ptr() for p, q in zip(copy.parameters(), bb.unet.parameters()))


def test_lora_copies_share_the_frozen_weights(tiny_sd):
    shared = tiny_sd.trainable_unet(share_frozen=True)
    assert all(p is q for p, q in zip(shared.parameters(), tiny_sd.unet.parameters()))
    assert shared is not tiny_sd.unet and shared.training and not tiny_sd.unet.training
    half = replace(tiny_sd, dtype=torch.bfloat16)  # a half-precision backbone trains on an fp32 copy
    assert all(p.data_ptr() != q.data_ptr() for p, q in zip(half.trainable_unet(True).parameters(),
                                                            tiny_sd.unet.parameters()))
