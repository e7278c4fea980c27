"""Memory-safe defaults and DreamBooth options for real sizes: IF as LoRA with T5 off the GPU,
half-precision checkpoints, one bounded resume state, gradient checkpointing, 8-bit AdamW's
missing-package message, the non-finite guard, LoRA's learning rate, class images (batched, seed-free
key) and IF's 77-token prompts."""

from __future__ import annotations

import copy
import sys
from dataclasses import replace

import pytest
import torch
from safetensors import safe_open
from test_dreambooth import _subject_images

from db3d.core.artifacts import DreamBoothCheckpoint
from db3d.core.config import BackboneConfig, DreamBoothConfig, RunConfig, compose
from db3d.core.data import Subject
from db3d.method import personalize
from db3d.method.class_images import class_images
from db3d.method.dreambooth import (
    DreamBoothNonFinite,
    check_full_finetune_fits,
    load_dreambooth,
    make_optimizer,
    run_key,
    save_checkpoint,
    train_dreambooth,
)
from db3d.models.backbones import build_backbone, full_finetune_gib


def _cfg(**kw):
    base = dict(learning_rate=2e-4, lora_learning_rate=2e-4, resume_every=0, prior_preservation=False,
                max_grad_norm=1.0, batch_size=1)
    base.update(kw)
    return DreamBoothConfig(**base)


def test_if_defaults_to_lora_with_t5_on_the_cpu_and_sd_keeps_full():
    cfg = compose(["backbone=if"])
    assert cfg.dreambooth.mode == "lora" and cfg.backbone.offload_text_encoder
    assert compose(["backbone=if", "dreambooth.mode=full"]).dreambooth.mode == "full"
    assert compose(["backbone=sd", "backbone.model=x"]).dreambooth.mode == "full"
    assert DreamBoothConfig().lora_learning_rate == pytest.approx(1e-4)
    assert DreamBoothConfig().learning_rate == pytest.approx(5e-6)


def test_an_offloaded_text_encoder_never_moves_to_the_device():
    # the "meta" device stands in for a GPU: anything moved there loses its storage
    bb = build_backbone(BackboneConfig(kind="tiny-if", device="meta", offload_text_encoder=True))
    assert next(bb.unet.parameters()).device.type == "meta"
    assert {p.device.type for p in bb.text_encoder.parameters()} == {"cpu"}
    assert bb.text_device == torch.device("cpu")
    on = build_backbone(BackboneConfig(kind="tiny-if", device="meta"))
    assert next(on.text_encoder.parameters()).device.type == "meta"


def test_full_checkpoints_are_half_precision_and_reload_within_tolerance(tiny_sd, tmp_path):
    unet = tiny_sd.trainable_unet()
    with torch.no_grad():  # weights away from their init, so the comparison can fail
        for p in unet.parameters():
            p.add_(0.01 * torch.randn_like(p))
    save_checkpoint(unet, None, "full", tmp_path / "half", "fp16")
    save_checkpoint(unet, None, "full", tmp_path / "single", "fp32")
    half_file = tmp_path / "half" / "unet" / "diffusion_pytorch_model.safetensors"
    single_file = tmp_path / "single" / "unet" / "diffusion_pytorch_model.safetensors"
    with safe_open(str(half_file), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float16}
    ratio = half_file.stat().st_size / single_file.stat().st_size
    assert 0.45 < ratio < 0.55
    ckpt = DreamBoothCheckpoint(path=str(tmp_path / "half"), step=1, mode="full", key="k", backbone_key=tiny_sd.key)
    for trainable in (False, True):
        loaded = load_dreambooth(tiny_sd, ckpt, trainable=trainable).unet
        ref = dict(unet.named_parameters())
        for name, p in loaded.named_parameters():
            assert p.dtype == torch.float32
            torch.testing.assert_close(p, ref[name].detach(), rtol=1e-3, atol=1e-5)


def test_one_resume_state_is_kept_and_its_size_printed(tiny_sd, tmp_path, capsys):
    seen = []
    out = tmp_path / "run"
    train_dreambooth(tiny_sd, _cfg(mode="full", resume_every=1), _subject_images(2), "a sks toy", out, [2, 5], 0, "k",
                     callback=lambda s, i, p: seen.append(sorted(f.name for f in out.glob("*.pt*"))))
    assert seen[1:4] == [["train_state.pt"]] * 3  # replaced each time, never accumulated
    printed = capsys.readouterr().out
    for step in (1, 2, 3, 4):
        assert f"DreamBooth resume state at step {step}: " in printed
    assert "MiB" in printed
    assert not (out / "train_state.pt").exists()  # gone once the run is finished


def test_gradient_checkpointing_gives_the_same_training(tiny_sd, tmp_path, monkeypatch):
    losses = {}
    flags = []
    real = type(tiny_sd.unet).enable_gradient_checkpointing

    for flag in (False, True):
        losses[flag] = []
        train_dreambooth(tiny_sd, _cfg(mode="full", gradient_checkpointing=flag), _subject_images(2), "a sks toy",
                         tmp_path / str(flag), [3], 0, "k", callback=lambda s, i, p, f=flag: losses[f].append(i))
    monkeypatch.setattr(type(tiny_sd.unet), "enable_gradient_checkpointing",
                        lambda self: flags.append(True) or real(self))
    train_dreambooth(tiny_sd, _cfg(mode="full", gradient_checkpointing=True), _subject_images(2), "a sks toy",
                     tmp_path / "again", [1], 0, "k")
    assert flags == [True]
    torch.testing.assert_close(torch.tensor(losses[True]), torch.tensor(losses[False]), rtol=1e-4, atol=1e-6)


def test_adamw8bit_without_bitsandbytes_fails_clearly(monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # importing it now raises ImportError
    with pytest.raises(RuntimeError, match="pip install bitsandbytes"):
        make_optimizer([torch.nn.Parameter(torch.zeros(2))], DreamBoothConfig(optimizer="adamw8bit"))


def test_full_fine_tuning_too_big_for_the_gpu_says_what_it_needs(tiny_sd, monkeypatch):
    assert full_finetune_gib(4_300_000_000) == pytest.approx(64.07, abs=0.01)  # IF-I-XL's UNet
    assert full_finetune_gib(4_300_000_000, "adamw8bit") == pytest.approx(40.05, abs=0.01)

    class Props:
        total_memory = 2 ** 20  # a 1 MiB "GPU": smaller than the tiny UNet's training state

    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: Props)
    on_gpu = replace(tiny_sd, device=torch.device("cuda"))
    with pytest.raises(RuntimeError, match=r"dreambooth\.mode=full.*GiB.*this GPU has 0 GiB.*mode=lora"):
        check_full_finetune_fits(on_gpu, DreamBoothConfig(mode="full"))
    check_full_finetune_fits(on_gpu, DreamBoothConfig(mode="lora"))  # LoRA is not refused
    Props.total_memory = 2 ** 40
    check_full_finetune_fits(on_gpu, DreamBoothConfig(mode="full"))


def test_a_non_finite_loss_stops_the_run_naming_step_and_loss(tiny_sd, tmp_path):
    images = _subject_images(2)
    images[0, :, 0, 0] = float("nan")
    with pytest.raises(DreamBoothNonFinite, match=r"not finite at step 1: loss=nan"):
        train_dreambooth(tiny_sd, _cfg(mode="lora"), images[:1], "a sks toy", tmp_path, [2], 0, "k")
    assert not (tmp_path / "step-000002").exists()


def test_lora_uses_its_own_learning_rate(tiny_sd):
    p = [torch.nn.Parameter(torch.zeros(2))]
    assert make_optimizer(p, DreamBoothConfig(mode="lora")).param_groups[0]["lr"] == pytest.approx(1e-4)
    assert make_optimizer(p, DreamBoothConfig(mode="full")).param_groups[0]["lr"] == pytest.approx(5e-6)
    images = _subject_images(1)

    def key(**kw):
        return run_key(tiny_sd, DreamBoothConfig(**kw), images, "a sks toy", "a toy", None, 0, None)

    assert key(mode="lora", learning_rate=1e-3) == key(mode="lora")  # full's rate is not read by LoRA
    assert key(mode="lora", lora_learning_rate=1e-3) != key(mode="lora")
    assert key(mode="full", lora_learning_rate=1e-3) == key(mode="full")


def test_class_images_are_batched_and_independent_of_the_batching(tiny_sd, tmp_path, monkeypatch):
    calls = []
    real = type(tiny_sd).sample
    monkeypatch.setattr(type(tiny_sd), "sample", lambda self, cond, *a, **k: calls.append(len(cond)) or
                        real(self, cond, *a, **k))
    batched = class_images(tiny_sd, "a toy", 3, seed=5, cache_dir=tmp_path / "a", batch_size=2)
    assert calls == [2, 1]
    single = class_images(tiny_sd, "a toy", 3, seed=5, cache_dir=tmp_path / "b", batch_size=1)
    assert calls == [2, 1, 1, 1, 1]
    assert (batched - single).abs().max() <= 2 / 255  # PNG levels: the same images up to rounding
    other = class_images(tiny_sd, "a toy", 3, seed=6, cache_dir=tmp_path / "b", batch_size=3)
    assert (other - single).abs().max() > 0.1


def test_a_seed_sweep_reuses_the_class_images(tiny_sd, tmp_path, monkeypatch):
    calls = []
    real = personalize.class_images
    monkeypatch.setattr(personalize, "class_images", lambda *a, **k: calls.append(k.get("batch_size")) or real(*a, **k))
    subject = Subject(name="toy", path=tmp_path, class_noun="toy", files=(), live=False, templates=())
    images = _subject_images(1)
    sampled = []
    real_sample = type(tiny_sd).sample
    monkeypatch.setattr(type(tiny_sd), "sample", lambda self, *a, **k: sampled.append(1) or real_sample(self, *a, **k))
    for seed in (0, 1):
        cfg = RunConfig(seed=seed, cache_dir=str(tmp_path / "cache"),
                        dreambooth=DreamBoothConfig(num_class_images=2, batch_size=2, partial_steps=1, full_steps=1,
                                                    mode="lora", resume_every=0))
        personalize.dreambooth_run(cfg, tiny_sd, subject, images, tmp_path / "artifacts", [1])
    assert calls == [2, 2]  # batch_size passed through
    assert len(sampled) == 1  # one batch of 2 class images, generated for seed 0 and reused by seed 1
    cfgs = [RunConfig(seed=s) for s in (0, 1)]
    assert personalize._class_key(cfgs[0], tiny_sd, subject) == personalize._class_key(cfgs[1], tiny_sd, subject)
    other = RunConfig(dreambooth=DreamBoothConfig(class_seed=1))
    assert personalize._class_key(other, tiny_sd, subject) != personalize._class_key(cfgs[0], tiny_sd, subject)


def test_if_prompts_are_padded_to_77_tokens_as_diffusers_pipeline_does(tiny_if):
    from diffusers import IFPipeline

    bb = replace(tiny_if, tokenizer=copy.deepcopy(tiny_if.tokenizer), _prompt_cache={})
    bb.tokenizer.model_max_length = 512  # what the real IF / T5 tokenizer files say
    ids, mask = bb.tokenize(["a sks toy"])
    assert ids.shape == mask.shape == (1, 77)
    pipe = IFPipeline(tokenizer=bb.tokenizer, text_encoder=bb.text_encoder, unet=bb.unet, scheduler=bb.scheduler,
                      safety_checker=None, feature_extractor=None, watermarker=None, requires_safety_checker=False)
    ref, _ = pipe.encode_prompt("a sks toy", do_classifier_free_guidance=False, clean_caption=False)
    ours = bb.encode_prompts(["a sks toy"])
    assert ours.shape == ref.shape == (1, 77, 32)
    torch.testing.assert_close(ours, ref.float())


def test_the_half_precision_variant_loads_when_asked(tiny_sd, tmp_path):
    from diffusers import StableDiffusionPipeline

    half = {k: copy.deepcopy(getattr(tiny_sd, k)).half() for k in ("unet", "vae", "text_encoder")}
    pipe = StableDiffusionPipeline(**half, tokenizer=tiny_sd.tokenizer, scheduler=tiny_sd.scheduler, safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(str(tmp_path / "pipe"), variant="fp16")
    assert (tmp_path / "pipe" / "unet" / "diffusion_pytorch_model.fp16.safetensors").exists()
    bb = build_backbone(BackboneConfig(kind="sd", model=str(tmp_path / "pipe"), variant="fp16", dtype="fp16"))
    assert next(bb.unet.parameters()).dtype == torch.float16
    ref = dict(half["unet"].named_parameters())
    assert all(torch.equal(p, ref[n]) for n, p in bb.unet.named_parameters())
