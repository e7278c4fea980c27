"""Evaluation metrics on rendered views of a NeRF, as in DreamFusion and DreamBooth3D.

Pure functions on embeddings (unit-normalised here, so any scale works):

    r_precision(image_emb (K,D), text_emb (C,D), true_index) -> (precision, mean_rank)
    mean_pairwise_cosine(a (N,D), b (M,D)) -> float        # DINO, CLIP-I, CLIP-T
    similarity_by_offset(emb (K,D)) -> (K//2+1,)            # similarity vs azimuth offset
    janus_score(emb (K,D)) -> float                          # multi-view consistency
    strip_identifier("a sks dog sleeping", "sks") -> "a dog sleeping"

Model-level wrappers take an `EmbedModel` (db3d.eval.models) and return `MetricRow`s that
record the model name and its weights ("random" or a path), so a number from random weights can
never pass for a real one. `evaluate_views` runs every metric on colour and textureless renders and
returns dict rows ready for Parquet: one row per metric x model x render kind.

Metrics (the "metric" column):
  r_precision  CLIP R-precision (DreamFusion): fraction of views whose most similar caption among
               the candidates is the true one. Ties count against the true caption.
  clip_rank    mean rank (1 = best) of the true caption over the views.
  clip_i       DreamBooth CLIP-I: mean pairwise cosine, render vs subject-photo CLIP embeddings.
  dino         DreamBooth DINO: the same with DINO ViT-S/16 embeddings.
  clip_t       DreamBooth CLIP-T: mean cosine of render embeddings and the prompt with the
               identifier removed ("a sks dog sleeping" -> "a dog sleeping").
  janus        multi-view consistency (see `janus_score`): high = the back looks like the front.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, replace
from typing import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from db3d.eval.models import EmbedModel

# ----------------------------------------------------------------------------- pure maths


def _unit(x: Tensor, what: str) -> Tensor:
    """(N,D) -> (N,D) float64 unit rows; ValueError on bad shapes or non-finite values."""
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"{what}: expected a non-empty (N,D) tensor, got {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise ValueError(f"{what}: contains NaN or inf")
    return F.normalize(x.detach().double().cpu(), dim=-1)


def r_precision(image_emb: Tensor, text_emb: Tensor, true_index: int) -> tuple[float, float]:
    """CLIP R-precision of K views against C candidate captions, and the true caption's mean rank.

    image_emb (K,D), text_emb (C,D); row `true_index` of text_emb is the true caption. A view's rank
    of the true caption is 1 + the number of other captions at least as similar (cosine), so ties
    count against the true caption, deterministically and whatever the caption order: constant or
    zero embeddings score 0, never 1. Returns (fraction of views with rank 1, mean rank).
    """
    img = _unit(image_emb, "image_emb")  # (K,D)
    txt = _unit(text_emb, "text_emb")  # (C,D)
    if not 0 <= true_index < txt.shape[0]:
        raise ValueError(f"true_index={true_index}: out of range for {txt.shape[0]} captions")
    sims = img @ txt.T  # (K,C)
    true = sims[:, true_index : true_index + 1]  # (K,1)
    at_least = sims >= true  # (K,C)
    at_least[:, true_index] = False
    rank = 1 + at_least.sum(dim=1)  # (K,)
    return float((rank == 1).double().mean()), float(rank.double().mean())


def mean_pairwise_cosine(a: Tensor, b: Tensor) -> float:
    """Mean cosine similarity over all pairs of rows of a (N,D) and b (M,D); in [-1, 1]."""
    return float((_unit(a, "a") @ _unit(b, "b").T).mean())


def similarity_by_offset(emb: Tensor) -> Tensor:
    """emb (K,D) of K views equally spaced over 360 degrees of azimuth, in azimuth order ->
    s (K//2+1,) with s[d] = mean_i cos(emb_i, emb_{(i+d) mod K}): similarity vs azimuth offset
    d * 360/K degrees. s[0] = 1; a real object's curve falls with d; a Janus one rises again."""
    e = _unit(emb, "emb")  # (K,D)
    return torch.stack([(e * e.roll(-d, dims=0)).sum(-1).mean() for d in range(e.shape[0] // 2 + 1)])


def janus_score(emb: Tensor) -> float:
    """Multi-view consistency score that flags the Janus problem.

    emb (K,D): embeddings of K views equally spaced over a full azimuth orbit (K even, >= 4), in
    azimuth order. With s = similarity_by_offset(emb):

        janus = s[K/2] / s[1]
              = mean_i cos(view_i, view opposite i) / mean_i cos(view_i, its next neighbour)

    i.e. how much the view 180 degrees away looks like this one, relative to how much the adjacent
    view does. Near or above 1: the back looks like the front (Janus, multiple faces), or the
    object is rotationally symmetric (a vase), so compare methods on the same subject and prompt.
    Clearly below 1 (typical of a real object) or negative: the back differs from the front.
    NaN when s[1] <= 0 (adjacent views unrelated: the orbit carries no consistency to measure).
    """
    k = emb.shape[0]
    if k < 4 or k % 2:
        raise ValueError(f"janus_score: needs an even number >= 4 of views on a full orbit, got {k}")
    s = similarity_by_offset(emb)  # (K//2+1,)
    if s[1] <= 0:
        return float("nan")
    return float(s[k // 2] / s[1])


def strip_identifier(prompt: str, identifier: str) -> str:
    """Remove the identifier token (a whole word) and tidy spaces: "a sks dog" -> "a dog"."""
    if not identifier.strip():
        raise ValueError("strip_identifier: empty identifier")
    out = re.sub(rf"\s*(?<!\w){re.escape(identifier.strip())}(?!\w)", "", prompt)
    return " ".join(out.split())


# ----------------------------------------------------------------------------- rows


@dataclass(frozen=True)
class MetricRow:
    """One number and where it came from."""

    metric: str
    """"r_precision", "clip_rank", "clip_i", "clip_t", "dino" or "janus" (see the module doc)."""
    model: str
    """"ViT-B-16", "ViT-B-32", "ViT-L-14" or "dino_vits16"."""
    weights: str
    """"random" or the weights file: random-weight numbers say so."""
    value: float
    render: str = ""
    """"colour" or "textureless" (set by evaluate_views)."""
    n_views: int = 0

    def as_dict(self) -> dict:
        return asdict(self)


def _row(model: EmbedModel, metric: str, value: float, n_views: int) -> MetricRow:
    return MetricRow(metric=metric, model=model.name, weights=model.weights, value=float(value), n_views=n_views)


def _unique(texts: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(texts))


def _check_clip(model: EmbedModel, what: str) -> None:
    if model.kind != "clip":
        raise ValueError(f"{what} needs a CLIP model, got {model.name}")


# ----------------------------------------------------------------------------- model-level


def clip_r_precision(
    model: EmbedModel, images: Tensor, captions: Sequence[str], true_caption: str
) -> list[MetricRow]:
    """images (K,3,H,W) in [0,1]; captions: candidates containing true_caption (duplicates are
    dropped first, else a repeated true caption would tie with itself). -> [r_precision, clip_rank]."""
    _check_clip(model, "CLIP R-precision")
    captions = _unique(captions)
    if true_caption not in captions:
        raise ValueError(f"true caption {true_caption!r} is not among the {len(captions)} candidates")
    precision, rank = r_precision(model.embed_images(images), model.embed_texts(captions), captions.index(true_caption))
    k = images.shape[0]
    return [_row(model, "r_precision", precision, k), _row(model, "clip_rank", rank, k)]


def subject_similarity(model: EmbedModel, renders: Tensor, photos: Tensor | Sequence[Tensor]) -> MetricRow:
    """DreamBooth's CLIP-I (a CLIP model) or DINO (a DINO model): mean pairwise cosine of render
    (K,3,H,W) and subject-photo (M,3,H',W', or a list of (3,H,W)) embeddings."""
    value = mean_pairwise_cosine(model.embed_images(renders), model.embed_images(photos))
    return _row(model, "clip_i" if model.kind == "clip" else "dino", value, renders.shape[0])


def clip_text_similarity(model: EmbedModel, renders: Tensor, text: str) -> MetricRow:
    """DreamBooth's CLIP-T: mean cosine of render embeddings and `text` (the identifier-free prompt)."""
    _check_clip(model, "CLIP-T")
    value = mean_pairwise_cosine(model.embed_images(renders), model.embed_texts([text]))
    return _row(model, "clip_t", value, renders.shape[0])


def view_consistency(model: EmbedModel, renders: Tensor) -> MetricRow:
    """janus_score of renders (K,3,H,W) on a full orbit, in azimuth order."""
    return _row(model, "janus", janus_score(model.embed_images(renders)), renders.shape[0])


# ----------------------------------------------------------------------------- entry point


def evaluate_views(
    colour: Tensor | None,
    textureless: Tensor | None,
    subject_images: Tensor | Sequence[Tensor],
    prompt: str,
    captions: Sequence[str],
    identifier: str,
    clip_models: Sequence[EmbedModel],
    dino: EmbedModel | None = None,
) -> list[dict]:
    """Every metric on the renders of one NeRF: dict rows (MetricRow fields) for Parquet.

    colour, textureless: (K,3,H,W) in [0,1], K views equally spaced over 360 degrees of azimuth in
    azimuth order (e.g. 30 degrees elevation); either may be None. subject_images: the subject's
    photos, (M,3,H,W) in [0,1] or a list of (3,H,W). prompt: with the identifier ("a sks dog
    sleeping"). captions: candidates for R-precision; the identifier is stripped from the prompt and
    from each candidate, and the stripped prompt must be among them.

    Rows per render kind: for each CLIP model r_precision, clip_rank, clip_i, clip_t, janus; for
    DINO dino, janus. janus is NaN when K is odd or < 4 (not an orbit it can read).
    """
    # 1. the texts: the prompt without the identifier is the true caption and the CLIP-T text
    true_caption = strip_identifier(prompt, identifier)
    candidates = _unique(strip_identifier(c, identifier) for c in captions)
    if true_caption not in candidates:
        raise ValueError(f"the prompt {true_caption!r} (identifier removed) is not among the captions {candidates}")
    true_index = candidates.index(true_caption)
    renders = {"colour": colour, "textureless": textureless}
    renders = {kind: views for kind, views in renders.items() if views is not None}
    if not renders:
        raise ValueError("evaluate_views: no renders (colour and textureless are both None)")

    rows: list[MetricRow] = []
    for model in [*clip_models, *([dino] if dino is not None else [])]:
        # 2. embed the subject photos (and, for CLIP, the captions) once per model
        photo_emb = model.embed_images(subject_images)  # (M,D)
        text_emb = model.embed_texts(candidates) if model.kind == "clip" else None  # (C,D)
        for kind, views in renders.items():
            # 3. embed the views and score them
            k = views.shape[0]
            view_emb = model.embed_images(views)  # (K,D)
            janus = janus_score(view_emb) if k >= 4 and k % 2 == 0 else float("nan")
            if model.kind == "clip":
                precision, rank = r_precision(view_emb, text_emb, true_index)
                new = [
                    _row(model, "r_precision", precision, k),
                    _row(model, "clip_rank", rank, k),
                    _row(model, "clip_i", mean_pairwise_cosine(view_emb, photo_emb), k),
                    _row(model, "clip_t", mean_pairwise_cosine(view_emb, text_emb[true_index : true_index + 1]), k),
                ]
            else:
                new = [_row(model, "dino", mean_pairwise_cosine(view_emb, photo_emb), k)]
            new.append(_row(model, "janus", janus, k))
            rows += [replace(row, render=kind) for row in new]
    return [row.as_dict() for row in rows]
