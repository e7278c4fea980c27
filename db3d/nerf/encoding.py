"""Multiresolution hash-grid encoding (Instant-NGP) with a tiny-cuda-nn and a pure-torch backend.

One class, ``HashGridEncoding(implementation="torch"|"tcnn")``. The torch backend reproduces
tiny-cuda-nn's "HashGrid" layout exactly (level scales, ``+0.5`` offset, dense levels where the
grid fits in the table, the ``(1, 2654435761, 805459861)`` XOR hash, 8-aligned level offsets,
level-major output), so a tcnn table can be copied into it; ``tests/test_nerf.py`` checks that on
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
_U32 = 0xFFFFFFFF


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


class _CornerGather(torch.autograd.Function):
    """``out[n, l, f] = sum_k w[k, l, n] * table[idx[k, l, n], f]`` over the 8 corners k.

    Corner-major, level-major layout keeps every elementwise op on long contiguous rows (fast
    on CPU); each feature column is gathered separately. The backward scatters with
    ``index_add`` and is built from differentiable ops, so double backward works.
    """

    @staticmethod
    def forward(ctx, table: Tensor, idx: Tensor, w: Tensor) -> Tensor:
        # table (P, F); idx (8, L, N) int64 rows; w (8, L, N) -> (N, L, F)
        ctx.save_for_backward(table, idx, w)
        flat = idx.reshape(-1)
        cols = table.t().contiguous()  # (F, P)
        out = [(cols[f].index_select(0, flat).view_as(w) * w).sum(0) for f in range(len(cols))]
        return torch.stack(out, dim=-1).transpose(0, 1)  # (L, N, F) -> (N, L, F) view

    @staticmethod
    def backward(ctx, grad_out: Tensor):  # (N, L, F)
        table, idx, w = ctx.saved_tensors
        flat, n_feat = idx.reshape(-1), table.shape[1]
        grad = grad_out.permute(2, 1, 0).contiguous()  # (F, L, N)
        grad_table = grad_w = None
        if ctx.needs_input_grad[0]:
            zeros = table.new_zeros(table.shape[0])
            cols = [zeros.index_add(0, flat, (w * grad[f]).reshape(-1)) for f in range(n_feat)]
            grad_table = torch.stack(cols, dim=-1)  # (P, F)
        if ctx.needs_input_grad[2]:
            cols = table.t()
            grad_w = sum(cols[f].index_select(0, flat).view_as(w) * grad[f] for f in range(n_feat))
        return grad_table, None, grad_w


def hash_grid_torch(
    x: Tensor,  # (N, 3) positions in [0, 1]^3 (clamped to it)
    table: Tensor,  # (P, F) all levels' rows, P = layout.offsets[-1]
    layout: HashGridLayout,
) -> Tensor:  # (N, L * F) level-major features
    """Reference multiresolution hash encoding with trilinear interpolation (pure torch).

    All levels at once, in a corner-major ``(2, 2, 2, L, N)`` layout: per dimension the two
    candidate grid coordinates and their linear weights, combined into the 8 corners by
    broadcasting over the leading axes, then one weighted gather from the concatenated table.
    Gradients reach the table and the positions (double backward too, for autograd normals).
    Inputs are clamped to [0, 1], where this equals tiny-cuda-nn.
    """
    device = x.device
    n_levels, n_dense = layout.n_levels, sum(layout.dense)  # dense levels come first

    def col(values, dtype=torch.int64):  # per-level constant shaped to broadcast over (L, N)
        return torch.tensor(values, dtype=dtype, device=device)[:, None]

    # 1. grid coordinates: position * scale + 0.5, split into cell index and fraction
    pos = col(layout.scales, x.dtype) * x.clamp(0.0, 1.0).t()[:, None, :] + 0.5  # (3, L, N)
    cell = torch.floor(pos)
    frac = pos - cell  # (3, L, N)
    cell = cell.long()

    # 2. trilinear weights: outer product over x (slowest), y, z of (1 - frac, frac)
    w = torch.stack([1.0 - frac, frac], dim=1)  # (3, 2, L, N)
    w8 = (w[0][:, None, None] * w[1][None, :, None] * w[2][None, None, :]).reshape(8, n_levels, -1)

    # 3. row index per corner: dense x + y*R + z*R^2 where the level fits (one wrap at the far
    #    faces, as tcnn's modulo does for inputs in [0, 1]), XOR prime hash otherwise; the
    #    hashed levels hold 2^k rows, so the modulo is a mask applied per term before the XOR
    parts = []
    if n_dense > 0:
        res, c = col(layout.resolutions[:n_dense]), cell[:, :n_dense]  # c: (3, Ld, N)
        t = [torch.stack([c[d], c[d] + 1]) * res**d for d in range(3)]  # 3 x (2, Ld, N)
        dense = t[0][:, None, None] + t[1][None, :, None] + t[2][None, None, :]  # (2,2,2,Ld,N)
        size = col([b - a for a, b in zip(layout.offsets, layout.offsets[1:n_dense + 1])])
        dense = torch.where(dense >= size, dense - size, dense)
        parts.append(dense + col(layout.offsets[:n_dense]))
    if n_dense < n_levels:
        mask = col([b - a - 1 for a, b in zip(layout.offsets[n_dense:], layout.offsets[n_dense + 1:])])
        c = cell[:, n_dense:]  # (3, Lh, N)
        t = [(torch.stack([c[d], c[d] + 1]) * HASH_PRIMES[d]) & mask for d in range(3)]
        hashed = t[0][:, None, None] ^ t[1][None, :, None] ^ t[2][None, None, :]
        parts.append(hashed + col(layout.offsets[n_dense:-1]))
    idx = torch.cat(parts, dim=3) if len(parts) > 1 else parts[0]  # (2, 2, 2, L, N)

    # 4. weighted sum of the corner features
    feats = _CornerGather.apply(table, idx.reshape(8, n_levels, -1), w8)  # (N, L, F)
    return feats.reshape(x.shape[0], -1)


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
            return self.tcnn_encoding(x.contiguous()).float()
        return hash_grid_torch(x, self.table, self.layout)
