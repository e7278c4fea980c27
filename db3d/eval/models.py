"""Embedding models for the evaluation metrics, loaded offline only.

    clip = load_clip("ViT-B-32", weights=None, device="cpu")   # open_clip; B-16, B-32, L-14
    dino = load_dino(weights="random", device="cpu")           # timm ViT-S/16 (DINO)
    img = clip.embed_images(renders)     # renders (N,3,H,W) in [0,1] -> (N,D) unit norm, CPU fp32
    txt = clip.embed_texts(["a dog"])    # (T,D) unit norm, CPU fp32

`weights` is one of:
  - None: the Hugging Face cache (where open_clip and timm put downloads), looked up without
    touching the network; nothing there -> `MetricWeightsNotFound` saying what to download.
  - a local file (.safetensors / .bin / .pth state dict) or a folder holding one of the usual names.
  - "random": the same architecture with random weights (tests; never a real number).

Every `EmbedModel` records `name` and `weights` ("random" or the file loaded); the metric rows copy
them so that a number from random weights can never pass for a real one. Images are resized and
normalised with the model's own constants as tensor ops (no PIL), so renders stay tensors.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

CLIP_MODELS = ("ViT-B-16", "ViT-B-32", "ViT-L-14")
"""open_clip architectures DreamFusion's CLIP R-precision used (OpenAI weights by default)."""
CLIP_WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
"""File names open_clip's Hugging Face repos use; looked for in a weights folder and the cache."""

DINO_NAME = "dino_vits16"
"""The name metric rows carry for DINO ViT-S/16 (DreamBooth's DINO metric)."""
DINO_TIMM = "vit_small_patch16_224.dino"
DINO_HF_REPO = "timm/vit_small_patch16_224.dino"
DINO_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "dino_deitsmall16_pretrain.pth")
"""timm's hub files, then the original facebookresearch/dino checkpoint (same key names)."""


class MetricWeightsNotFound(FileNotFoundError):
    """Weights of a metric model are not on this machine; the message says where we looked and how
    to provide them."""


@dataclass
class EmbedModel:
    """A loaded image (and, for CLIP, text) embedder with its own preprocessing constants."""

    kind: str
    """"clip" or "dino"."""
    name: str
    """What metric rows record: "ViT-B-32", "ViT-L-14", ..., or "dino_vits16"."""
    weights: str
    """"random", or the path of the file the weights came from."""
    model: torch.nn.Module
    tokenizer: Callable | None
    """open_clip tokenizer (list[str] -> (T,77) long); None for DINO."""
    size: int
    """Side of the square crop the model sees (224)."""
    resize: int
    """Shortest side after resizing, before the centre crop (CLIP: = size; DINO: size / crop_pct)."""
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    device: torch.device
    batch_size: int = 32

    @torch.inference_mode()
    def embed_images(self, images: Tensor | Sequence[Tensor]) -> Tensor:
        """images (N,3,H,W) in [0,1], or a list of (3,H,W) of any sizes -> (N,D) unit norm, CPU fp32."""
        x = preprocess_images(images, self.size, self.resize, self.mean, self.std)  # (N,3,S,S)
        out = []
        for i in range(0, x.shape[0], self.batch_size):
            batch = x[i : i + self.batch_size].to(self.device)
            emb = self.model.encode_image(batch) if self.kind == "clip" else self.model(batch)  # (B,D)
            out.append(F.normalize(emb.float(), dim=-1).cpu())
        return torch.cat(out)

    @torch.inference_mode()
    def embed_texts(self, texts: Sequence[str]) -> Tensor:
        """texts -> (T,D) unit norm, CPU fp32 (CLIP only)."""
        if self.kind != "clip" or self.tokenizer is None:
            raise ValueError(f"{self.name} embeds images only; text needs a CLIP model")
        tokens = self.tokenizer(list(texts)).to(self.device)  # (T,77)
        emb = self.model.encode_text(tokens)  # (T,D)
        return F.normalize(emb.float(), dim=-1).cpu()


def preprocess_images(
    images: Tensor | Sequence[Tensor],
    size: int,
    resize: int,
    mean: Sequence[float],
    std: Sequence[float],
) -> Tensor:
    """[0,1] images (N,3,H,W) or a list of (3,H,W) -> normalised (N,3,size,size).

    The torchvision recipe of open_clip and timm as tensor ops: bicubic antialiased resize of the
    shortest side to `resize`, centre crop `size` x `size`, clamp to [0,1], (x - mean) / std.
    """
    if isinstance(images, Tensor) and images.ndim == 4:
        batches = [images]
    else:
        batches = [im[None] for im in images]  # each (1,3,H,W)
    out = []
    for x in batches:
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"images must be (N,3,H,W) or a list of (3,H,W); got {tuple(x.shape)}")
        # 1. resize the shortest side to `resize`
        h, w = x.shape[-2:]
        scale = resize / min(h, w)
        new_hw = (resize, max(resize, round(w * scale))) if h <= w else (max(resize, round(h * scale)), resize)
        x = F.interpolate(x.float(), size=new_hw, mode="bicubic", align_corners=False, antialias=True)
        # 2. centre crop (torchvision's rounding)
        top = int(round((new_hw[0] - size) / 2.0))
        left = int(round((new_hw[1] - size) / 2.0))
        x = x[:, :, top : top + size, left : left + size].clamp(0, 1)
        out.append(x)
    x = torch.cat(out)  # (N,3,size,size)
    m = torch.tensor(mean, dtype=x.dtype).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - m) / s


# ----------------------------------------------------------------------------- resolving weights


def clip_model_name(name: str) -> str:
    """"ViT-B/32" or "ViT-B-32" -> "ViT-B-32"; ValueError for architectures we do not support."""
    clean = name.replace("/", "-")
    if clean not in CLIP_MODELS:
        raise ValueError(f"CLIP model {name!r}: supported are {', '.join(CLIP_MODELS)}")
    return clean


def _from_hf_cache(repo: str, filenames: Sequence[str], cache_dir: str | None) -> str | None:
    """Path of the first of `filenames` in the local Hugging Face cache of `repo`; no network."""
    from huggingface_hub import try_to_load_from_cache  # ~0.07 s: only a cache lookup needs it

    for filename in filenames:
        found = try_to_load_from_cache(repo, filename, cache_dir=cache_dir)
        if isinstance(found, str) and Path(found).is_file():
            return found
    return None


def _from_path(weights: str, filenames: Sequence[str], what: str, how: str) -> str:
    """A file as it is, or the first of `filenames` inside a folder; else MetricWeightsNotFound."""
    path = Path(weights).expanduser()
    if path.is_file():
        return str(path)
    if path.is_dir():
        for filename in filenames:
            if (path / filename).is_file():
                return str(path / filename)
        raise MetricWeightsNotFound(
            f"{what} weights: the folder {path} holds none of {', '.join(filenames)}.\n{how}"
        )
    raise MetricWeightsNotFound(f"{what} weights: {path} does not exist.\n{how}")


def resolve_clip_weights(name: str, weights: str | None, tag: str = "openai", cache_dir: str | None = None) -> str:
    """"random", or the local file holding `name`'s weights (see `load_clip`)."""
    import open_clip  # heavy (~4 s with timm): every run imports this module, few load CLIP

    name = clip_model_name(name)
    if weights == "random":
        return "random"
    hub = open_clip.get_pretrained_cfg(name, tag).get("hf_hub", "").strip("/")
    repo = "/".join(hub.split("/")[:2])  # "timm/vit_base_patch32_clip_224.openai"
    how = (
        f"Provide them with metrics.weights=<file or folder>, e.g. on a machine with network run\n"
        f"  hf download {repo or '<repo>'} {CLIP_WEIGHT_FILES[0]} --local-dir <folder>\n"
        f"and copy <folder> here; or fill the Hugging Face cache there with\n"
        f"  python -c \"import open_clip; open_clip.create_model('{name}', pretrained='{tag}')\"\n"
        f"and copy ~/.cache/huggingface/hub across. metrics.weights=random builds the architecture with "
        f"random weights (tests only)."
    )
    if weights is not None:
        return _from_path(weights, CLIP_WEIGHT_FILES, f"CLIP {name}", how)
    if not repo:
        raise ValueError(f"open_clip knows no Hugging Face repo for {name} pretrained={tag!r}")
    found = _from_hf_cache(repo, CLIP_WEIGHT_FILES, cache_dir)
    if found is None:
        where = cache_dir or "the Hugging Face cache ($HF_HUB_CACHE, default ~/.cache/huggingface/hub)"
        raise MetricWeightsNotFound(
            f"CLIP {name} ({tag}) weights: looked for {' or '.join(CLIP_WEIGHT_FILES)} of {repo} in "
            f"{where} and found nothing (metrics never download).\n{how}"
        )
    return found


def resolve_dino_weights(weights: str | None, cache_dir: str | None = None) -> str:
    """"random", or the local file holding DINO ViT-S/16's weights (see `load_dino`)."""
    if weights == "random":
        return "random"
    how = (
        f"Provide them with metrics.weights=<file or folder>, e.g. on a machine with network run\n"
        f"  hf download {DINO_HF_REPO} {DINO_WEIGHT_FILES[0]} --local-dir <folder>\n"
        f"and copy <folder> here (the original dino_deitsmall16_pretrain.pth from "
        f"facebookresearch/dino works too); or fill the Hugging Face cache there with\n"
        f"  python -c \"import timm; timm.create_model('{DINO_TIMM}', pretrained=True)\"\n"
        f"and copy ~/.cache/huggingface/hub across. metrics.weights=random builds the architecture with "
        f"random weights (tests only)."
    )
    if weights is not None:
        return _from_path(weights, DINO_WEIGHT_FILES, "DINO ViT-S/16", how)
    found = _from_hf_cache(DINO_HF_REPO, DINO_WEIGHT_FILES[:2], cache_dir)
    hub_file = Path(torch.hub.get_dir()) / "checkpoints" / DINO_WEIGHT_FILES[2]
    if found is None and hub_file.is_file():
        found = str(hub_file)
    if found is None:
        where = cache_dir or "the Hugging Face cache ($HF_HUB_CACHE, default ~/.cache/huggingface/hub)"
        raise MetricWeightsNotFound(
            f"DINO ViT-S/16 weights: looked for {' or '.join(DINO_WEIGHT_FILES[:2])} of {DINO_HF_REPO} "
            f"in {where}, and for {hub_file}, and found nothing (metrics never download).\n{how}"
        )
    return found


# ----------------------------------------------------------------------------- loading


RANDOM_WEIGHTS_SEED = 0
"""Seed of metrics.weights=random models: the same random model in every process (a trial, a Ray
Train stage worker, `db3d metrics`), so their rows compare across runs and executors."""


@contextlib.contextmanager
def _seeded(on: bool):
    """Build under torch's RNG seeded with RANDOM_WEIGHTS_SEED (when on), leaving the caller's RNG as it was."""
    if not on:
        yield
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_WEIGHTS_SEED)
        yield


def load_clip(
    name: str,
    weights: str | None = None,
    device: str | torch.device = "cpu",
    tag: str = "openai",
    cache_dir: str | None = None,
) -> EmbedModel:
    """An open_clip model ("ViT-B-16", "ViT-B-32", "ViT-L-14"; "/" spellings too), offline.

    `tag` names the pretrained weights the file holds ("openai" by default, as in DreamFusion): it
    picks the cache repo when `weights` is None, and the activation (OpenAI's weights need
    QuickGELU) and normalisation constants in every case, random weights included.
    """
    import open_clip  # heavy: as in resolve_clip_weights

    # 1. find the weights (no network)
    name = clip_model_name(name)
    path = resolve_clip_weights(name, weights, tag, cache_dir)
    pretrained_cfg = open_clip.get_pretrained_cfg(name, tag)
    # 2. build the architecture and load the state dict (strict)
    with _seeded(path == "random"):
        model = open_clip.create_model(
            name,
            pretrained=None if path == "random" else path,
            force_quick_gelu=bool(pretrained_cfg.get("quick_gelu", False)),
            device=device,
        )
    model.eval().requires_grad_(False)
    # 3. the tokenizer: open_clip's BPE vocabulary ships inside the package
    tokenizer = open_clip.get_tokenizer(name)
    image_size = model.visual.image_size
    size = int(image_size if isinstance(image_size, int) else image_size[0])
    return EmbedModel(
        kind="clip",
        name=name,
        weights=path,
        model=model,
        tokenizer=tokenizer,
        size=size,
        resize=size,
        mean=tuple(pretrained_cfg.get("mean", open_clip.OPENAI_DATASET_MEAN)),
        std=tuple(pretrained_cfg.get("std", open_clip.OPENAI_DATASET_STD)),
        device=torch.device(device),
    )


def load_dino(
    weights: str | None = None, device: str | torch.device = "cpu", cache_dir: str | None = None
) -> EmbedModel:
    """DINO ViT-S/16 (timm `vit_small_patch16_224.dino`, CLS token, 384-d), offline."""
    import timm  # heavy (~3 s): only when DINO is loaded

    # 1. find the weights (no network)
    path = resolve_dino_weights(weights, cache_dir)
    # 2. build the architecture; timm loads a local file strictly through its checkpoint filter
    if path == "random":
        with _seeded(True):
            model = timm.create_model(DINO_TIMM, pretrained=False, num_classes=0)
    else:
        model = timm.create_model(DINO_TIMM, pretrained=True, num_classes=0, pretrained_cfg_overlay={"file": path})
    model = model.to(device).eval().requires_grad_(False)
    # 3. the preprocessing constants of the pretrained config (ImageNet mean/std, crop_pct)
    cfg = model.pretrained_cfg
    size = int(cfg["input_size"][-1])
    return EmbedModel(
        kind="dino",
        name=DINO_NAME,
        weights=path,
        model=model,
        tokenizer=None,
        size=size,
        resize=int(math.floor(size / cfg.get("crop_pct", 1.0))),
        mean=tuple(cfg["mean"]),
        std=tuple(cfg["std"]),
        device=torch.device(device),
    )


def check_metric_weights(cfg) -> None:
    """Find the metric models' weights of a RunConfig (no loading) when metrics are on and not random."""
    m = cfg.metrics
    if not m.enabled or m.weights == "random":
        return
    for name in m.clip_models:
        resolve_clip_weights(name, m.weights or None)
    if m.dino:
        resolve_dino_weights(m.weights or None)
