"""The previous pure-torch hash grid (``HashGridEncoding(implementation="torch_reference")``), kept so
tests and ``benchmarks/bench_nerf.py`` can compare the current code with it: one weighted
``embedding_bag`` over all 8 corners of every level. Same values as ``encoding.hash_grid_torch`` up
to float rounding; slower.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from db3d.nerf.hash_layout import HASH_PRIMES, HashGridLayout


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


def hash_grid_torch_reference(
    x: Tensor,  # (N, 3) positions in [0, 1]^3 (clamped to it)
    table: Tensor,  # (P, F) all levels' rows, P = layout.offsets[-1]
    layout: HashGridLayout,
) -> Tensor:  # (N, L * F) level-major features
    """The previous pure-torch encoding, kept as a reference for tests and benchmarks.

    ``HashGridEncoding(implementation="torch_reference")`` uses it; ``hash_grid_torch`` computes the
    same values (to float rounding) faster. All levels at once. Per level and dimension, the two candidate grid coordinates and their
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
