"""ToyWorld's prior: its model and tokenizer, training (exact resume), and loading as backbone=toy."""

from __future__ import annotations

import json

import pytest
import torch

from db3d.core.config import BackboneConfig
from db3d.models import toy_prior as prior
from db3d.models.backbones import build_backbone
from db3d.toyworld.captions import prior_words
from db3d.toyworld.train_prior import PriorTrainConfig, parse, train_prior

TINY = dict(resolution=32, n_objects=3, variants=1, views=4, supersample=1, batch=4, warmup=2, checkpoint_every=2)


def test_tokenizer_keeps_world_words_whole_and_splits_the_identifier():
    tok = prior.toy_tokenizer(prior_words())
    pieces = tok.convert_ids_to_tokens(tok("a red ball on a blue box, back view").input_ids)
    assert pieces == ["\u2581a", "\u2581red", "\u2581ball", "\u2581on", "\u2581a", "\u2581blue", "\u2581box", ",",
                      "\u2581back", "\u2581view", "</s>"]
    assert len(tok("a sks toy").input_ids) == 3 + 2 + 1  # a | s k s | toy | </s>


def test_shipped_prior_keeps_the_world_words_whole(tmp_path):
    """The shipped prior's tokenizer words are ToyWorld's (models never import toyworld: the words travel
    with the weights), and a saved prior's words file round-trips through the loader."""
    shipped = json.loads((prior.SHIPPED / prior.WORDS_FILE).read_text())
    assert shipped == prior_words()
    tok = prior.load_components()["tokenizer"]
    assert prior.tokenizer_words(tok) == [w for w in prior_words() if len(w) > 1]


def test_toy_unet_folds_pixels_and_round_trips_through_diffusers(tmp_path):
    parts = prior.new_components(prior_words(), 32, seed=0)
    x = torch.randn(2, 3, 32, 32)
    emb = parts["text_encoder"](prior.toy_tokenizer(prior_words())(["a red ball"] * 2, return_tensors="pt").input_ids)[0]
    out = parts["unet"](x, torch.tensor([10, 500]), encoder_hidden_states=emb).sample
    assert out.shape == x.shape and parts["unet"].config.in_channels == 12
    prior.save_components(parts, tmp_path)  # fp32
    loaded = prior.load_components(tmp_path)
    again = loaded["unet"](x, torch.tensor([10, 500]), encoder_hidden_states=emb).sample
    assert torch.equal(out, again)
    assert prior.weights_digest(tmp_path) != prior.weights_digest(tmp_path / "missing")


def test_missing_prior_says_where_it_looked(tmp_path):
    with pytest.raises(FileNotFoundError, match="train-prior"):
        prior.load_components(tmp_path / "nothing")


def test_parse_rejects_unknown_keys_and_bad_values():
    assert parse(["out=x", "steps=3"]).steps == 3
    with pytest.raises(ValueError, match="unknown argument"):
        parse(["out=x", "stepz=3"])
    with pytest.raises(ValueError, match="not a int"):
        parse(["out=x", "steps=many"])
    with pytest.raises(ValueError, match="out=DIR"):
        parse(["steps=3"])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """6 steps straight, and 4 steps then a resumed run to 6."""
    straight = tmp_path_factory.mktemp("straight")
    resumed = tmp_path_factory.mktemp("resumed")
    train_prior(PriorTrainConfig(out=str(straight), steps=6, **TINY))
    train_prior(PriorTrainConfig(out=str(resumed), steps=4, **TINY))
    train_prior(PriorTrainConfig(out=str(resumed), steps=6, **TINY))
    return straight, resumed


def test_training_resumes_exactly(trained):
    straight, resumed = trained
    a, b = prior.load_components(straight), prior.load_components(resumed)
    for pa, pb in zip(a["unet"].parameters(), b["unet"].parameters()):
        assert torch.equal(pa, pb)
    lines = (resumed / "loss.csv").read_text().splitlines()
    assert lines[0] == "step,loss" and len(lines) == 7
    cfg = json.loads((resumed / "train_config.json").read_text())
    assert cfg["config"]["steps"] == 6 and cfg["command"].startswith("db3d toyworld train-prior ")


def test_trained_folder_loads_as_backbone_and_samples(trained):
    folder, _ = trained
    bb = build_backbone(BackboneConfig(kind="toy", model=str(folder), resolution=32, device="cpu"))
    assert bb.space == "pixel" and bb.model_channels == 3
    gen = torch.Generator().manual_seed(0)
    img = bb.sample(bb.encode_prompts(["a toy"]), bb.encode_prompts([""]), 3.0, gen, n_steps=2)
    assert img.shape == (1, 3, 32, 32) and 0.0 <= float(img.min()) and float(img.max()) <= 1.0
    other = build_backbone(BackboneConfig(kind="toy", model=str(trained[1]), resolution=32, device="cpu"))
    assert other.key == bb.key  # identical weights, identical content key


@pytest.mark.parametrize("mode", ["full", "lora"])
def test_dreambooth_runs_on_the_toy_prior(trained, tmp_path, mode):
    from db3d.core.config import DreamBoothConfig
    from db3d.method.dreambooth import load_dreambooth, train_dreambooth

    bb = build_backbone(BackboneConfig(kind="toy", model=str(trained[0]), resolution=32, device="cpu"))
    images = torch.ones(2, 3, 32, 32)
    images[:, :, 8:24, 8:24] = torch.tensor([0.9, 0.1, 0.1])[:, None, None]
    cfg = DreamBoothConfig(mode=mode, learning_rate=1e-3, batch_size=2, prior_preservation=False, resume_every=0)
    ckpts = train_dreambooth(bb, cfg, images, "a sks toy", tmp_path, [3], 0, "k")
    tuned = load_dreambooth(bb, ckpts[3])
    assert type(tuned.unet) is prior.ToyUNet
    x, t, emb = torch.randn(1, 3, 32, 32), torch.tensor([400]), bb.encode_prompts(["a sks toy"])
    assert not torch.allclose(tuned.predict_eps(x, t, emb), bb.predict_eps(x, t, emb), atol=1e-5)


# --- the shipped prior ------------------------------------------------------------------------
def _front_renders(obj, res=32):
    """Ground-truth renders from the front arc at a few distances (the prior's training range)."""
    from db3d.core.cameras import cameras_at
    from db3d.toyworld.render import render_object

    az = torch.tensor([-40.0, -20.0, 0.0, 20.0, 40.0]).repeat(3)
    views = [cameras_at(az[:5], torch.full((5,), 15.0), d, 55.0, res) for d in (1.5, 1.75, 2.0)]
    return torch.cat([render_object(obj, c).rgb for c in views]).permute(0, 3, 1, 2)  # (15, 3, R, R)


def test_shipped_prior_draws_each_captions_object():
    """Samples for a caption are closer to that caption's object than to the other objects'."""
    from db3d.toyworld.world import enumerate_world

    bb = build_backbone(BackboneConfig(kind="toy", resolution=32, device="cpu"))
    world = enumerate_world()
    objects = [world[i] for i in (0, 3, 6, 9, 12, 15)]
    n = 3
    prompts = [f"{o.caption}, front view" for o in objects for _ in range(n)]
    gen = torch.Generator().manual_seed(0)
    samples = bb.sample(bb.encode_prompts(prompts), bb.encode_prompts([""]), 5.0, gen, n_steps=20)
    refs = [_front_renders(o) for o in objects]
    # distance of each sample to each object: the best-matching ground-truth view
    dist = torch.stack([torch.stack([((ref - s[None]) ** 2).flatten(1).mean(-1).min() for ref in refs])
                        for s in samples])  # (K n, K)
    truth = torch.arange(len(objects)).repeat_interleave(n)
    accuracy = float((dist.argmin(-1) == truth).float().mean())
    per_caption = dist.reshape(len(objects), n, len(objects)).mean(1)  # (K, K)
    own_closer = sum(int(per_caption[k, k] < per_caption[k][torch.arange(len(objects)) != k].min())
                     for k in range(len(objects)))
    print(f"sample -> object accuracy {accuracy:.2f} (chance {1 / len(objects):.2f}); "
          f"captions whose own object is closest on average: {own_closer}/{len(objects)}")
    assert accuracy >= 0.5
    assert own_closer >= 4
