"""Class images for DreamBooth's prior-preservation loss: drawn once by the base backbone, cached as
PNGs, shared batch by batch by the processes that need them at the same time."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from db3d.core.artifacts import atomic_write, atomic_write_json, content_key, share_chunks
from db3d.core.progress import bar as progress_bar
from db3d.models.backbones import Backbone


def class_images(bb: Backbone, class_prompt: str, n: int, seed: int, cache_dir: Path,
                 guidance_scale: float = 7.5, batch_size: int = 8) -> Tensor:
    """n images (n,3,R,R) in [0,1] of `class_prompt`, sampled once by the base backbone.

    Cached as PNGs under cache_dir/class_images/<key>/, keyed by the backbone, prompt, count,
    seed (the class-image seed, not the run's), resolution and sampler; an interrupted generation
    continues where it stopped. Sampled `batch_size` images per UNet call, each from its own
    initial noise, so an image does not depend on the batching (up to float rounding).

    Processes that need the same images share the work batch by batch (core.artifacts.share_chunks:
    each draws the batches nobody holds, then waits for the others'). A batch is the same images with
    the same noise whoever draws it, so the result does not depend on how the work was shared.
    """
    key = content_key("class_images", bb.key, class_prompt, n, seed, bb.resolution, bb.sample_steps, guidance_scale)
    folder = Path(cache_dir) / "class_images" / key
    folder.mkdir(parents=True, exist_ok=True)
    files = [folder / f"{i:04d}.png" for i in range(n)]
    batches = [range(start, min(n, start + batch_size)) for start in range(0, n, batch_size)]
    missing = lambda batch: [i for i in batch if not files[i].exists()]  # noqa: E731
    embeddings = []  # the prompts' embeddings, encoded once a batch is drawn

    def draw(idx: list[int]) -> None:
        if not embeddings:
            embeddings.extend([bb.encode_prompts([class_prompt]), bb.encode_prompts([""])])
        cond, uncond = embeddings
        # one generator per image: the same noise whatever the batching, interruption or sharing
        shape = (bb.model_channels, bb.model_resolution, bb.model_resolution)
        noise = torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(seed * 100003 + i))
                             for i in idx])  # (b, C, r, r)
        imgs = bb.sample(cond.expand(len(idx), -1, -1), uncond, guidance_scale, None, bb.sample_steps,
                         noise=noise)  # (b, 3, R, R)
        for i, img in zip(idx, imgs):
            arr = (img.permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)
            atomic_write(files[i], lambda tmp: Image.fromarray(arr).save(tmp, format="PNG"))

    todo = [b for b in batches if missing(b)]
    if todo:
        bar = progress_bar(total=len(todo), desc=f"class images '{class_prompt}'")
        share_chunks(folder, todo, lambda batch: bool(missing(batch)), lambda batch: draw(missing(batch)),
                     lambda: bar.update(1))
        bar.close()
        atomic_write_json(folder / "meta.json", {"prompt": class_prompt, "n": n, "seed": seed, "backbone": bb.key})
    arrays = [np.asarray(Image.open(f).convert("RGB"), dtype=np.float32) / 255.0 for f in files]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
