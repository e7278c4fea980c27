"""Metrics: pure functions on constructed embeddings, offline model loading, and the whole
evaluation with random-weight ViT-B/32 and DINO ViT-S/16 on random images (CPU, no network)."""

from __future__ import annotations

import math
import socket

import pytest
import torch

from db3d.eval.metrics import (
    MetricRow,
    clip_r_precision,
    clip_text_similarity,
    evaluate_views,
    janus_score,
    mean_pairwise_cosine,
    r_precision,
    similarity_by_offset,
    strip_identifier,
    subject_similarity,
    view_consistency,
)
from db3d.eval.models import (
    CLIP_WEIGHT_FILES,
    DINO_HF_REPO,
    MetricWeightsNotFound,
    load_clip,
    load_dino,
    preprocess_images,
    resolve_clip_weights,
    resolve_dino_weights,
)


def refuse(*args, **kwargs):
    raise AssertionError(f"metrics touched the network: {args[1:]}")


@pytest.fixture(scope="module", autouse=True)
def no_network():
    """Any connection or DNS lookup in this file fails the test (model loading included)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket.socket, "connect", refuse)
        mp.setattr(socket.socket, "connect_ex", refuse)
        mp.setattr(socket, "getaddrinfo", refuse)
        yield


@pytest.fixture(scope="module")
def clip_b32(no_network):
    torch.manual_seed(0)
    return load_clip("ViT-B/32", weights="random", device="cpu")


@pytest.fixture(scope="module")
def dino(no_network):
    torch.manual_seed(0)
    return load_dino(weights="random", device="cpu")


def ring(k: int, turns: int = 1, d: int = 16, seed: int = 0) -> torch.Tensor:
    """(k,d) embeddings on a circle around a common centre, `turns` times round in k steps."""
    g = torch.Generator().manual_seed(seed)
    basis = torch.linalg.qr(torch.randn(d, 3, generator=g))[0].T  # (3,d) orthonormal
    theta = torch.arange(k) * 2 * math.pi * turns / k
    return 1.0 * basis[0] + torch.cos(theta)[:, None] * basis[1] + torch.sin(theta)[:, None] * basis[2]


def test_the_network_guard_is_on():
    with pytest.raises(AssertionError, match="network"):
        socket.create_connection(("127.0.0.1", 9))


# ----------------------------------------------------------------------------- R-precision


def test_r_precision_perfect_and_adversarial():
    text = torch.eye(4)  # 4 orthogonal captions, the true one is index 2
    perfect = text[[2, 2, 2]] + 0.1 * torch.rand(3, 4)  # every view nearest to caption 2
    assert r_precision(perfect, text, 2) == (1.0, 1.0)
    adversarial = torch.tensor([[1.0, 0.0, -1.0, 0.0], [0.0, 1.0, -1.0, 0.0]])  # caption 2 is last
    assert r_precision(adversarial, text, 2) == (0.0, 4.0)
    half = torch.tensor([[0.0, 0.0, 1.0, 0.0], [1.0, 0.0, 0.5, 0.0]])  # a hit; true caption 2nd
    assert r_precision(half, text, 2) == (0.5, 1.5)


def test_r_precision_ties_count_against_the_true_caption():
    text = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])  # captions 0 and 1 identical
    views = torch.tensor([[1.0, 0.0]])
    for true_index in (0, 1):  # whatever the order
        assert r_precision(views, text, true_index) == (0.0, 2.0)
    zeros = torch.zeros(2, 2)  # degenerate embeddings tie everything: worst rank, never a hit
    assert r_precision(zeros, text, 2) == (0.0, 3.0)
    with pytest.raises(ValueError):
        r_precision(views, text, 3)
    with pytest.raises(ValueError):
        r_precision(torch.full((1, 2), float("nan")), text, 0)


def test_mean_pairwise_cosine():
    a = torch.tensor([[2.0, 0.0], [0.0, 3.0]])
    assert mean_pairwise_cosine(a, a[:1]) == pytest.approx(0.5)
    assert mean_pairwise_cosine(a, -a) == pytest.approx(-0.5)


# ----------------------------------------------------------------------------- Janus


def test_janus_score_ring_low_and_front_back_copy_high():
    k = 8
    distinct = ring(k, turns=1)  # a smooth orbit: the back is the least like the front
    janus = ring(k, turns=2)  # view i and view i + k/2 are identical
    assert torch.allclose(janus[: k // 2], janus[k // 2 :], atol=1e-6)
    s = similarity_by_offset(distinct)
    assert s.shape == (k // 2 + 1,) and s[0] == pytest.approx(1.0)
    assert torch.all(s[1:] < s[:-1])  # similarity falls with the azimuth offset
    low, high = janus_score(distinct), janus_score(janus)
    assert low < 0.5 < 1.0 <= high
    assert janus_score(torch.randn(k, 64, generator=torch.Generator().manual_seed(1)) + 5) < high
    with pytest.raises(ValueError):
        janus_score(ring(7))
    unrelated = torch.tensor([[1.0, 0.0], [-1.0, 0.0]]).repeat(2, 1)  # neighbours opposite
    assert math.isnan(janus_score(unrelated))


# ----------------------------------------------------------------------------- prompts


@pytest.mark.parametrize(
    "prompt, expected",
    [
        ("a sks dog sleeping", "a dog sleeping"),
        ("sks dog on the beach", "dog on the beach"),
        ("a photo of sks, a dog", "a photo of, a dog"),
        ("a sksy dog next to a sks dog", "a sksy dog next to a dog"),
        ("a dog", "a dog"),
    ],
)
def test_strip_identifier(prompt, expected):
    assert strip_identifier(prompt, "sks") == expected


def test_strip_identifier_rejects_an_empty_identifier():
    with pytest.raises(ValueError):
        strip_identifier("a dog", " ")


# ----------------------------------------------------------------------------- preprocessing


def test_preprocess_images_resizes_crops_and_normalises():
    x = torch.full((2, 3, 40, 60), 0.5)
    out = preprocess_images(x, size=32, resize=36, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    assert out.shape == (2, 3, 32, 32) and torch.allclose(out, torch.zeros_like(out), atol=1e-5)
    photos = [torch.rand(3, 50, 30), torch.rand(3, 20, 20)]  # a list of any sizes
    assert preprocess_images(photos, 16, 16, (0, 0, 0), (1, 1, 1)).shape == (2, 3, 16, 16)
    with pytest.raises(ValueError):
        preprocess_images(torch.rand(2, 4, 8, 8), 8, 8, (0, 0, 0), (1, 1, 1))


# ----------------------------------------------------------------------------- models end to end


def test_random_models_record_their_weights(clip_b32, dino):
    assert (clip_b32.name, clip_b32.weights, clip_b32.size) == ("ViT-B-32", "random", 224)
    assert clip_b32.mean == pytest.approx((0.48145466, 0.4578275, 0.40821073))
    assert (dino.name, dino.weights, dino.size, dino.resize) == ("dino_vits16", "random", 224, 248)
    assert dino.mean == pytest.approx((0.485, 0.456, 0.406))
    emb = dino.embed_images(torch.rand(2, 3, 64, 64))
    assert emb.shape == (2, 384) and torch.allclose(emb.norm(dim=-1), torch.ones(2), atol=1e-5)
    text = clip_b32.embed_texts(["a dog", "a cat"])
    assert text.shape == (2, 512) and torch.allclose(text.norm(dim=-1), torch.ones(2), atol=1e-5)
    with pytest.raises(ValueError):
        dino.embed_texts(["a dog"])


def test_model_level_metrics(clip_b32, dino):
    g = torch.Generator().manual_seed(0)
    views, photos = torch.rand(4, 3, 64, 64, generator=g), torch.rand(3, 3, 80, 80, generator=g)
    captions = ["a dog", "a cat", "a car", "a dog"]
    rows = clip_r_precision(clip_b32, views, captions, "a cat")
    assert [r.metric for r in rows] == ["r_precision", "clip_rank"]
    assert 0 <= rows[0].value <= 1 and 1 <= rows[1].value <= 3  # duplicates dropped: 3 captions
    with pytest.raises(ValueError):
        clip_r_precision(clip_b32, views, captions, "a bird")
    assert subject_similarity(dino, views, photos).metric == "dino"
    assert subject_similarity(clip_b32, views, list(photos)).metric == "clip_i"
    assert -1 <= clip_text_similarity(clip_b32, views, "a dog").value <= 1
    row = view_consistency(dino, views)
    assert isinstance(row, MetricRow) and (row.model, row.weights, row.n_views) == ("dino_vits16", "random", 4)


def test_evaluate_views_rows(clip_b32, dino):
    g = torch.Generator().manual_seed(1)
    colour = torch.rand(6, 3, 64, 64, generator=g)  # 6 views, 60 degrees apart
    textureless = torch.rand(6, 3, 64, 64, generator=g)
    photos = torch.rand(3, 3, 96, 96, generator=g)
    captions = ["a sks dog sleeping", "a cat on a sofa", "a red car", "a bowl of soup"]
    rows = evaluate_views(colour, textureless, photos, "a sks dog sleeping", captions, "sks", [clip_b32], dino)

    clip_metrics = ["r_precision", "clip_rank", "clip_i", "clip_t", "janus"]
    expected = {("ViT-B-32", m, r) for m in clip_metrics for r in ("colour", "textureless")}
    expected |= {("dino_vits16", m, r) for m in ("dino", "janus") for r in ("colour", "textureless")}
    assert {(r["model"], r["metric"], r["render"]) for r in rows} == expected and len(rows) == len(expected)
    for r in rows:
        assert set(r) == {"metric", "model", "weights", "value", "render", "n_views"}
        assert r["weights"] == "random" and r["n_views"] == 6 and math.isfinite(r["value"])
        if r["metric"] == "r_precision":
            assert 0 <= r["value"] <= 1
        elif r["metric"] == "clip_rank":
            assert 1 <= r["value"] <= 4
        elif r["metric"] != "janus":
            assert -1 <= r["value"] <= 1

    import pandas as pd  # the rows make a table as they are

    assert pd.DataFrame(rows).shape == (len(expected), 6)
    only_colour = evaluate_views(colour[:5], None, photos, "a sks dog sleeping", captions, "sks", [clip_b32])
    assert {r["render"] for r in only_colour} == {"colour"}
    assert math.isnan(next(r["value"] for r in only_colour if r["metric"] == "janus"))  # 5 views
    with pytest.raises(ValueError):
        evaluate_views(colour, None, photos, "a sks bird", captions, "sks", [clip_b32])


# ----------------------------------------------------------------------------- weights offline


def test_missing_weights_raise_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(MetricWeightsNotFound) as err:
        load_clip("ViT-B-32", weights=None, cache_dir=str(tmp_path))
    message = str(err.value)
    assert isinstance(err.value, FileNotFoundError)
    assert "timm/vit_base_patch32_clip_224.openai" in message and "hf download" in message
    with pytest.raises(MetricWeightsNotFound, match="does not exist"):
        load_clip("ViT-B-16", weights=str(tmp_path / "nowhere.safetensors"))
    with pytest.raises(MetricWeightsNotFound, match="holds none of"):
        load_dino(weights=str(tmp_path))
    with pytest.raises(MetricWeightsNotFound) as err:
        load_dino(weights=None, cache_dir=str(tmp_path))
    assert DINO_HF_REPO in str(err.value) and "dino_deitsmall16_pretrain.pth" in str(err.value)
    with pytest.raises(ValueError, match="supported"):
        load_clip("RN50", weights="random")


def fake_hf_cache(root, repo: str, filename: str):
    """The Hugging Face cache layout with one (empty) file of `repo`; returns the file's path."""
    folder = root / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text("abc123")
    file = folder / "snapshots" / "abc123" / filename
    file.parent.mkdir(parents=True)
    file.write_bytes(b"")
    return file


def test_weights_are_found_in_the_hf_cache_and_in_folders(tmp_path):
    clip_file = fake_hf_cache(tmp_path, "timm/vit_base_patch16_clip_224.openai", CLIP_WEIGHT_FILES[0])
    assert resolve_clip_weights("ViT-B/16", None, cache_dir=str(tmp_path)) == str(clip_file)
    assert resolve_clip_weights("ViT-B-16", str(clip_file.parent)) == str(clip_file)
    dino_file = fake_hf_cache(tmp_path, DINO_HF_REPO, "model.safetensors")
    assert resolve_dino_weights(None, cache_dir=str(tmp_path)) == str(dino_file)
    assert resolve_clip_weights("ViT-L-14", "random") == "random"


def test_dino_weights_load_from_a_local_folder(tmp_path, dino):
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in dino.model.state_dict().items()}, tmp_path / "model.safetensors")
    loaded = load_dino(weights=str(tmp_path))
    assert loaded.weights == str(tmp_path / "model.safetensors")
    x = torch.rand(2, 3, 32, 32)
    assert torch.allclose(loaded.embed_images(x), dino.embed_images(x), atol=1e-5)


@pytest.mark.parametrize("name, dim", [("ViT-B-16", 512), ("ViT-L-14", 768)])
def test_larger_clip_models_build_with_random_weights(name, dim):  # ~4 s each on one thread
    model = load_clip(name, weights="random")
    assert model.name == name and model.size == 224
    assert model.embed_images(torch.rand(1, 3, 64, 64)).shape == (1, dim)
    assert model.embed_texts(["a dog"]).shape == (1, dim)


def test_random_weights_are_the_same_in_every_process_and_leave_the_callers_rng_alone(clip_b32, dino):
    """metrics.weights=random models are seeded: a trial and a Ray Train stage worker, whose RNGs
    have seen different histories, score with the same random model."""
    torch.manual_seed(1234)
    torch.randn(17)  # another RNG history than the fixtures'
    expected_next = torch.random.get_rng_state()
    clip_again, dino_again = load_clip("ViT-B-32", weights="random"), load_dino(weights="random")
    assert torch.equal(torch.random.get_rng_state(), expected_next)  # the caller's RNG is untouched
    for a, b in ((clip_b32, clip_again), (dino, dino_again)):
        for (name, p), q in zip(a.model.state_dict().items(), b.model.state_dict().values()):
            assert torch.equal(p, q), name
