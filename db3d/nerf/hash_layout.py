"""The hash grid's layout, as tiny-cuda-nn's "HashGrid" lays it out: level scales and resolutions, the
rows of each level (dense where the level's grid fits in its rows, hashed with HASH_PRIMES
otherwise) and their offsets in one table. Every backend (torch, its C kernel, tcnn) reads it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

FEATURES_PER_LEVEL = 2
"""Features per hash-grid level F (Instant-NGP: 2); the default of FieldConfig and HashGridEncoding."""
BASE_RESOLUTION = 16
"""Coarsest grid resolution N_min (Instant-NGP, Magic3D: 16); the default of FieldConfig and HashGridEncoding."""

HASH_PRIMES = (1, 2654435761, 805459861)  # Instant-NGP / tiny-cuda-nn's coherent prime hash


@dataclass(frozen=True)
class HashGridLayout:
    """Per-level geometry of a hash grid, as tiny-cuda-nn lays it out."""

    scales: tuple[float, ...]  # (L,) grid scale: position * scale + 0.5 -> grid coordinates
    resolutions: tuple[int, ...]  # (L,) vertices per side: ceil(scale) + 1
    offsets: tuple[int, ...]  # (L+1,) first table row of each level; offsets[-1] = total rows
    dense: tuple[bool, ...]  # (L,) level indexed densely (resolution^3 fits in its rows)

    @property
    def n_levels(self) -> int:
        return len(self.scales)


def hash_grid_layout(
    n_levels: int, log2_hashmap_size: int, base_resolution: int, per_level_scale: float
) -> HashGridLayout:
    """Level scales, resolutions and table offsets, following tiny-cuda-nn's ``GridEncoding``."""
    if per_level_scale < 1.0:
        raise ValueError(f"per_level_scale must be >= 1 (finer levels last), got {per_level_scale}")
    scales, resolutions, offsets, dense = [], [], [0], []
    for level in range(n_levels):
        scale = 2.0 ** (level * math.log2(per_level_scale)) * base_resolution - 1.0
        resolution = int(math.ceil(scale)) + 1
        dense_rows = min(resolution**3, 2**31 - 1)
        rows = min(-(-dense_rows // 8) * 8, 2**log2_hashmap_size)
        scales.append(scale)
        resolutions.append(resolution)
        dense.append(resolution**3 <= rows)
        offsets.append(offsets[-1] + rows)
    return HashGridLayout(tuple(scales), tuple(resolutions), tuple(offsets), tuple(dense))
