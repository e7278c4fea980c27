"""DreamBooth: loss drops, prior term, checkpoints at their steps, LoRA round trip, resume."""

from __future__ import annotations

import pytest
import torch

from db3d.core.artifacts import DreamBoothCheckpoint
from db3d.core.config import DreamBoothConfig
from db3d.method.class_images import class_images
from db3d.method.dreambooth import (
    _add_lora,
    load_dreambooth,
    save_checkpoint,
    train_dreambooth,
)
from db3d.models import diffusion


def _subject_images(n=3, res=64, seed=0):
    """Flat-coloured squares on white: an easy, fixed target for the instance loss."""
    g = torch.Generator().manual_seed(seed)
    imgs = torch.ones(n, 3, res, res)
    for i in range(n):
        colour = torch.rand(3, 1, 1, generator=g)
        imgs[i, :, res // 4: 3 * res // 4, res // 4: 3 * res // 4] = colour
    return imgs


@torch.no_grad()
def _eval_loss(bb, images, prompt, n=16, seed=123):
    """Instance loss on a fixed set of (latent, t, eps): comparable before and after training."""
    g = torch.Generator().manual_seed(seed)
    x0 = bb.encode_images(images).repeat(n // len(images) + 1, 1, 1, 1)[:n]
    eps = torch.randn(x0.shape, generator=g)
    t = torch.randint(50, 950, (n,), generator=g)
    x_t = diffusion.add_noise(x0, eps, bb.alphas_cumprod[t])
    emb = bb.encode_prompts([prompt] * n)
    return float(((bb.predict_eps(x_t, t, emb) - eps) ** 2).mean())


def _cfg(**kw):
    base = dict(learning_rate=2e-4, resume_every=0, prior_preservation=True, max_grad_norm=1.0, batch_size=2)
    base.update(kw)
    return DreamBoothConfig(**base)


def test_instance_loss_drops_and_checkpoints_appear_at_their_steps(tiny_sd, tmp_path):
    images = _subject_images()
    before = _eval_loss(tiny_sd, images, "a sks toy")
    ckpts = train_dreambooth(tiny_sd, _cfg(prior_preservation=False), images, "a sks toy", tmp_path, [5, 30],
                             seed=0, key="k")
    assert sorted(ckpts) == [5, 30]
    assert (tmp_path / "step-000005" / "unet" / "diffusion_pytorch_model.safetensors").exists()
    assert (tmp_path / "step-000030" / "done.json").exists()
    partial, full = (load_dreambooth(tiny_sd, ckpts[s]) for s in (5, 30))
    after_partial = _eval_loss(partial, images, "a sks toy")
    after_full = _eval_loss(full, images, "a sks toy")
    print(f"instance loss: base {before:.4f}, step 5 {after_partial:.4f}, step 30 {after_full:.4f}")
    assert after_full < 0.9 * before
    assert ckpts[5].key != ckpts[30].key
    # reloading a checkpoint gives identical outputs every time, and the frozen base is untouched
    again = load_dreambooth(tiny_sd, ckpts[30])
    z = torch.randn(2, 4, 32, 32)
    t = torch.tensor([300, 600])
    emb = tiny_sd.encode_prompts(["a sks toy"] * 2)
    assert torch.equal(full.predict_eps(z, t, emb), again.predict_eps(z, t, emb))
    assert abs(_eval_loss(tiny_sd, images, "a sks toy") - before) < 1e-9


def test_partial_checkpoint_equals_a_run_that_stops_there(tiny_if, tmp_path):
    images = _subject_images()
    long = train_dreambooth(tiny_if, _cfg(prior_preservation=False), images, "a sks toy", tmp_path / "a", [3, 6], 0, "k")
    short = train_dreambooth(tiny_if, _cfg(prior_preservation=False), images, "a sks toy", tmp_path / "b", [3], 0, "k")
    z = torch.randn(2, 3, 64, 64)
    t = torch.tensor([300, 600])
    emb = tiny_if.encode_prompts(["a sks toy"] * 2)
    e_long = load_dreambooth(tiny_if, long[3]).predict_eps(z, t, emb)
    e_short = load_dreambooth(tiny_if, short[3]).predict_eps(z, t, emb)
    assert torch.equal(e_long, e_short)


def test_prior_term_is_computed_on_class_images(tiny_sd, tmp_path, monkeypatch):
    images = _subject_images()
    cls = class_images(tiny_sd, "a toy", 2, seed=0, cache_dir=tmp_path / "cache")
    assert cls.shape == (2, 3, 64, 64)
    seen = []
    with_prior = train_dreambooth(tiny_sd, _cfg(), images, "a sks toy", tmp_path / "p", [4], 0, "k", cls, "a toy",
                                  callback=lambda s, inst, prior: seen.append(prior))
    assert len(seen) == 4 and all(p > 0 for p in seen)
    seen.clear()
    without = train_dreambooth(tiny_sd, _cfg(prior_preservation=False), images, "a sks toy", tmp_path / "n", [4], 0,
                               "k", cls, "a toy", callback=lambda s, inst, prior: seen.append(prior))
    assert seen == [0.0] * 4
    # the class batch is part of the one UNet call (2 subject + 2 class images per step)
    batches = []
    real = type(tiny_sd).unet_output
    monkeypatch.setattr(type(tiny_sd), "unet_output",
                        lambda self, x, t, emb, unet=None: batches.append((x.shape[0], unet is None)) or real(self, x, t, emb, unet))
    train_dreambooth(tiny_sd, _cfg(), images, "a sks toy", tmp_path / "q", [1], 0, "k", cls, "a toy")
    monkeypatch.undo()
    assert batches == [(4, False)]  # one call, on the trainable copy, never the frozen UNet
    a = load_dreambooth(tiny_sd, with_prior[4]).unet.state_dict()
    b = load_dreambooth(tiny_sd, without[4]).unet.state_dict()
    assert any(not torch.equal(a[k], b[k]) for k in a)


def test_class_images_are_cached(tiny_sd, tmp_path, monkeypatch):
    first = class_images(tiny_sd, "a toy", 3, seed=1, cache_dir=tmp_path)
    monkeypatch.setattr(type(tiny_sd), "sample", lambda *a, **k: pytest.fail("class images were sampled again"))
    second = class_images(tiny_sd, "a toy", 3, seed=1, cache_dir=tmp_path)
    assert torch.equal(first, second)


def test_class_images_draw_the_batches_nobody_holds_then_wait_for_the_others(tiny_sd, tmp_path):
    import threading
    import time

    from db3d.core.artifacts import content_key, flock_lock

    fresh = class_images(tiny_sd, "a toy", 4, seed=2, cache_dir=tmp_path / "fresh", batch_size=1)
    cache = tmp_path / "shared"
    key = content_key("class_images", tiny_sd.key, "a toy", 4, 2, tiny_sd.resolution, tiny_sd.sample_steps, 7.5)
    folder = cache / "class_images" / key
    files = [folder / f"{i:04d}.png" for i in range(4)]
    result = {}
    with flock_lock(folder / "batch-0002"):  # another process is drawing batch 2
        worker = threading.Thread(target=lambda: result.update(
            images=class_images(tiny_sd, "a toy", 4, seed=2, cache_dir=cache, batch_size=1)))
        worker.start()
        deadline = time.monotonic() + 60
        while not all(files[i].exists() for i in (0, 1, 3)) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.2)
        assert [f.exists() for f in files] == [True, True, False, True]  # the free batches, not the held one
        assert worker.is_alive()  # waiting for batch 2
    worker.join(60)  # the holder let go without drawing it: the waiter draws it itself
    assert not worker.is_alive()
    assert torch.equal(result["images"], fresh)  # the same images as one process drawing them all


def test_lora_round_trip(tiny_if, tmp_path):
    unet = tiny_if.trainable_unet()
    _add_lora(tiny_if, unet, rank=4)
    with torch.no_grad():  # move the adapters away from their init so the test can fail
        for name, p in unet.named_parameters():
            if "lora_" in name:
                p.add_(0.05 * torch.randn_like(p))
    assert any("add_k_proj" in n for n, _ in unet.named_parameters() if "lora_" in n)
    save_checkpoint(unet, None, "lora", tmp_path)
    assert (tmp_path / "pytorch_lora_weights.safetensors").exists()
    ckpt = DreamBoothCheckpoint(path=str(tmp_path), step=1, mode="lora", key="x", backbone_key=tiny_if.key)
    loaded = load_dreambooth(tiny_if, ckpt)
    z = torch.randn(2, 3, 64, 64)
    t = torch.tensor([200, 800])
    emb = tiny_if.encode_prompts(["a sks toy"] * 2)
    unet.eval()
    expected = tiny_if.predict_eps(z, t, emb, unet=unet)
    assert torch.allclose(loaded.predict_eps(z, t, emb), expected, atol=1e-5)
    assert not torch.allclose(tiny_if.predict_eps(z, t, emb), expected, atol=1e-4)


def test_lora_training_and_continuation_on_new_images(tiny_sd, tmp_path):
    images = _subject_images()
    cfg = _cfg(mode="lora", learning_rate=1e-3, prior_preservation=False)
    first = train_dreambooth(tiny_sd, cfg, images, "a sks toy", tmp_path / "a", [3], 0, "k")
    # stage 3's multi-view DreamBooth: the same function, continued from a checkpoint on new images
    more = train_dreambooth(tiny_sd, cfg, _subject_images(5, seed=9), "a sks toy", tmp_path / "b", [2], 0, "k2",
                            init=first[3])
    z = torch.randn(1, 4, 32, 32)
    t = torch.tensor([500])
    emb = tiny_sd.encode_prompts(["a sks toy"])
    e1 = load_dreambooth(tiny_sd, first[3]).predict_eps(z, t, emb)
    e2 = load_dreambooth(tiny_sd, more[2]).predict_eps(z, t, emb)
    assert not torch.allclose(e1, e2)


class _Interrupt(Exception):
    pass


def test_resume_after_interruption_matches_an_uninterrupted_run(tiny_sd, tmp_path):
    images = _subject_images()
    cfg = _cfg(resume_every=2)
    cls = class_images(tiny_sd, "a toy", 2, seed=0, cache_dir=tmp_path / "cache")

    def stop_at(step):
        def cb(s, inst, prior):
            if s == step:
                raise _Interrupt

        return cb

    with pytest.raises(_Interrupt):
        train_dreambooth(tiny_sd, cfg, images, "a sks toy", tmp_path / "r", [3, 6], 0, "k", cls, "a toy",
                         callback=stop_at(5))
    assert (tmp_path / "r" / "step-000003" / "done.json").exists()
    assert not (tmp_path / "r" / "step-000006").exists()
    resumed_steps = []
    resumed = train_dreambooth(tiny_sd, cfg, images, "a sks toy", tmp_path / "r", [3, 6], 0, "k", cls, "a toy",
                               callback=lambda s, i, p: resumed_steps.append(s))
    assert resumed_steps == [5, 6]  # continued from the state written at step 4
    straight = train_dreambooth(tiny_sd, cfg, images, "a sks toy", tmp_path / "s", [3, 6], 0, "k", cls, "a toy")
    a = load_dreambooth(tiny_sd, resumed[6]).unet.state_dict()
    b = load_dreambooth(tiny_sd, straight[6]).unet.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not (tmp_path / "r" / "train_state.pt").exists()
    # a finished run is not trained again
    again = train_dreambooth(tiny_sd, cfg, images, "a sks toy", tmp_path / "r", [3, 6], 0, "k", cls, "a toy",
                             callback=lambda *a: pytest.fail("trained again"))
    assert again == resumed
