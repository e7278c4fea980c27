"""Multiresolution hash-grid encoding (Instant-NGP) with a tiny-cuda-nn and a pure-torch backend.

One class, ``HashGridEncoding(implementation="torch"|"tcnn")``. The torch backend reproduces
tiny-cuda-nn's "HashGrid" layout exactly (level scales, ``+0.5`` offset, dense levels where the
grid fits in the table, the ``(1, 2654435761, 805459861)`` XOR hash, 8-aligned level offsets,
level-major output), so a tcnn table can be copied into it; ``tests/nerf/test_nerf.py`` checks that on
a GPU. With ``implementation="tcnn"`` and tinycudann missing or no CUDA device, it warns and uses
torch.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

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


class _WeightedGather(torch.autograd.Function):
    """``out[b] = sum_k w[b, k] * table[idx[b, k]]``: one ``embedding_bag`` forward.

    The backward scatters with ``index_add`` (much faster on CPU than embedding_bag's own
    sort-based backward) and is built from differentiable ops, so double backward works.
    """

    @staticmethod
    def forward(ctx, table: Tensor, idx: Tensor, w: Tensor) -> Tensor:  # (P,F), (B,8), (B,8)
        ctx.save_for_backward(table, idx, w)
        return nn.functional.embedding_bag(idx, table, per_sample_weights=w, mode="sum")

    @staticmethod
    def backward(ctx, grad_out: Tensor):  # (B, F)
        table, idx, w = ctx.saved_tensors
        grad_table = grad_w = None
        flat = idx.reshape(-1)
        if ctx.needs_input_grad[0]:
            src = (w[..., None] * grad_out[:, None, :]).reshape(-1, table.shape[1])
            grad_table = torch.zeros_like(table).index_add(0, flat, src)
        if ctx.needs_input_grad[2]:
            corners = table.index_select(0, flat).reshape(*idx.shape, table.shape[1])
            grad_w = (corners * grad_out[:, None, :]).sum(-1)
        return grad_table, None, grad_w


def hash_grid_torch(
    x: Tensor,  # (N, 3) positions in [0, 1]^3 (clamped to it)
    table: Tensor,  # (P, F) all levels' rows, P = layout.offsets[-1]
    layout: HashGridLayout,
) -> Tensor:  # (N, L * F) level-major features
    """Reference multiresolution hash encoding with trilinear interpolation (pure torch).

    All levels at once. Per level and dimension, the two candidate grid coordinates and their
    linear weights are combined into the 8 corners (x bit slowest) by broadcasting in an
    ``(L, 2, 2, 2, N)`` layout, which keeps the points on the long contiguous axis (fast on CPU);
    one weighted gather from the concatenated table finishes it. Gradients reach the table and
    the positions (double backward too, for autograd normals). Inputs are clamped to [0, 1],
    where this matches tiny-cuda-nn.
    """
    device, n = x.device, x.shape[0]
    n_levels, n_dense = layout.n_levels, sum(layout.dense)  # dense levels come first
    rows = [b - a for a, b in zip(layout.offsets, layout.offsets[1:])]  # (L,) rows per level

    def per_level(values, dims: int, dtype=torch.int64) -> Tensor:  # (L', 1, ...) constants
        return torch.tensor(values, dtype=dtype, device=device).view(-1, *([1] * dims))

    # 1. grid coordinates: position * scale + 0.5, split into cell index and fraction
    pos = per_level(layout.scales, 2, x.dtype) * x.clamp(0.0, 1.0).t()[None] + 0.5  # (L, 3, N)
    cell = torch.floor(pos)
    frac = pos - cell  # (L, 3, N)
    cell = cell.long()

    # 2. trilinear weights: outer product over x, y, z of (1 - frac, frac)
    w = torch.stack([1.0 - frac, frac], dim=2)  # (L, 3, 2, N)
    w8 = w[:, 0, :, None, None] * w[:, 1, None, :, None] * w[:, 2, None, None, :]  # (L,2,2,2,N)

    # 3. row index per corner, written level block by level block:
    #    dense levels: x + y*R + z*R^2, wrapped once at the far faces as tcnn's modulo does;
    #    hashed levels (2^k rows): XOR of coordinate * prime, the modulo a mask on each term
    idx = torch.empty(n_levels, 2, 2, 2, n, dtype=torch.int64, device=device)
    if n_dense > 0:
        res = per_level(layout.resolutions[:n_dense], 2)
        c = cell[:n_dense]  # (Ld, 3, N)
        t = [torch.stack([c[:, d], c[:, d] + 1], dim=1) * res**d for d in range(3)]  # (Ld,2,N)
        block = idx[:n_dense]
        xy = t[0][:, :, None, None] + t[1][:, None, :, None]
        torch.add(xy, t[2][:, None, None, :], out=block)
        size = per_level(rows[:n_dense], 4)
        block.sub_((block >= size) * size)
        block.add_(per_level(layout.offsets[:n_dense], 4))
    if n_dense < n_levels:
        mask = per_level([r - 1 for r in rows[n_dense:]], 2)
        c = cell[n_dense:]  # (Lh, 3, N)
        t = [(torch.stack([c[:, d], c[:, d] + 1], dim=1) * prime) & mask
             for d, prime in enumerate(HASH_PRIMES)]
        block = idx[n_dense:]
        xy = t[0][:, :, None, None] ^ t[1][:, None, :, None]
        torch.bitwise_xor(xy, t[2][:, None, None, :], out=block)
        block.add_(per_level(layout.offsets[n_dense:-1], 4))

    # 4. weighted sum of the 8 corner features, bags of 8 in (L, N) order
    idx = idx.view(n_levels, 8, n).transpose(1, 2).reshape(-1, 8)  # (L*N, 8)
    w8 = w8.reshape(n_levels, 8, n).transpose(1, 2).reshape(-1, 8)
    feats = _WeightedGather.apply(table, idx, w8)  # (L*N, F)
    return feats.view(n_levels, n, -1).transpose(0, 1).reshape(n, -1)


def _load_tcnn():
    """Import tinycudann lazily; return the module or raise with the reason."""
    import tinycudann  # noqa: PLC0415  (optional dependency, CUDA only)

    return tinycudann


class HashGridEncoding(nn.Module):
    """Instant-NGP hash-grid encoding ``(N, 3) in [0,1]^3 -> (N, n_levels * features_per_level)``.

    ``implementation="tcnn"`` uses ``tinycudann.Encoding`` when it imports and ``device`` is CUDA;
    otherwise it warns (saying why) and uses the pure-torch backend. ``self.implementation``
    says which backend is live. The per-level scale comes from ``per_level_scale`` or, when that
    is None, from ``max_resolution``: ``exp((ln max - ln base) / (n_levels - 1))``.
    """

    def __init__(
        self,
        n_levels: int = 16,
        features_per_level: int = 2,
        log2_hashmap_size: int = 19,
        base_resolution: int = 16,
        per_level_scale: float | None = None,
        max_resolution: int = 2048,
        implementation: Literal["torch", "tcnn"] = "torch",
        device: torch.device | str | None = None,
        init_scale: float = 1e-4,
    ) -> None:
        super().__init__()
        if per_level_scale is None:
            per_level_scale = (
                math.exp(math.log(max_resolution / base_resolution) / (n_levels - 1))
                if n_levels > 1
                else 1.0
            )
        self.n_levels = n_levels
        self.features_per_level = features_per_level
        self.log2_hashmap_size = log2_hashmap_size
        self.base_resolution = base_resolution
        self.per_level_scale = per_level_scale
        self.requested_implementation = implementation
        self.layout = hash_grid_layout(
            n_levels, log2_hashmap_size, base_resolution, per_level_scale
        )
        self.implementation = "torch"
        self.tcnn_encoding = None
        if implementation == "tcnn":
            self._try_tcnn(device)
        elif implementation != "torch":
            raise ValueError(f"implementation must be 'torch' or 'tcnn', got {implementation!r}")
        if self.implementation == "torch":
            rows = self.layout.offsets[-1]
            table = torch.empty(rows, features_per_level, device=device)
            self.table = nn.Parameter(table.uniform_(-init_scale, init_scale))  # (P, F)

    @property
    def n_output_dims(self) -> int:
        return self.n_levels * self.features_per_level

    def _try_tcnn(self, device: torch.device | str | None) -> None:
        dev = torch.device(device) if device is not None else None
        reason = None
        if not torch.cuda.is_available():
            reason = "CUDA is not available"
        elif dev is not None and dev.type != "cuda":
            reason = f"device is {dev}, not CUDA"
        else:
            try:
                tcnn = _load_tcnn()
            except Exception as err:  # ImportError, or a broken CUDA build raising at import
                reason = f"tinycudann failed to import ({type(err).__name__}: {err})"
        if reason is not None:
            warnings.warn(
                f"HashGridEncoding(implementation='tcnn'): {reason}; falling back to the "
                "pure-torch hash grid (same maths and layout, much slower on GPU).",
                RuntimeWarning,
                stacklevel=3,
            )
            return
        config = {
            "otype": "HashGrid",
            "n_levels": self.n_levels,
            "n_features_per_level": self.features_per_level,
            "log2_hashmap_size": self.log2_hashmap_size,
            "base_resolution": self.base_resolution,
            "per_level_scale": self.per_level_scale,
        }
        with torch.cuda.device(dev or torch.device("cuda")):
            self.tcnn_encoding = tcnn.Encoding(3, config, dtype=torch.float32)
        self.implementation = "tcnn"

    def forward(self, x: Tensor) -> Tensor:  # (N, 3) in [0, 1] -> (N, L * F)
        if self.tcnn_encoding is not None:
            return self.tcnn_encoding(x.clamp(0.0, 1.0).contiguous()).float()
        return hash_grid_torch(x, self.table, self.layout)
