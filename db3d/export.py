"""Exports that people look at: image grids (turntables and meshes come with the NeRF stages)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image
from torch import Tensor


def to_uint8(images: Tensor) -> np.ndarray:
    """[0,1] images (B,3,H,W) -> uint8 (B,H,W,3)."""
    return (images.detach().float().clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype(np.uint8)


def save_grid(images: Tensor, path: Path, columns: int | None = None) -> Path:
    """Save [0,1] images (B,3,H,W) as one PNG grid (written atomically)."""
    arr = to_uint8(images)
    b, h, w, _ = arr.shape
    cols = columns or int(np.ceil(np.sqrt(b)))
    rows = int(np.ceil(b / cols))
    grid = np.full((rows * h, cols * w, 3), 255, dtype=np.uint8)
    for i, img in enumerate(arr):
        r, c = divmod(i, cols)
        grid[r * h:(r + 1) * h, c * w:(c + 1) * w] = img
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    Image.fromarray(grid).save(tmp, format="PNG")
    os.replace(tmp, path)
    return path
