"""Multiresolution hash-grid encoding (Instant-NGP) with a tiny-cuda-nn and a pure-torch backend.

One class, ``HashGridEncoding(implementation="torch"|"tcnn"|"torch_reference")``. The torch backend
(``hash_grid_torch``) reproduces tiny-cuda-nn's "HashGrid" layout exactly (``hash_layout``: level
scales, ``+0.5`` offset, dense levels where the grid fits in the table, the XOR hash, 8-aligned level
offsets; level-major output), so a tcnn table can be copied into it; ``tests/nerf/test_nerf.py`` checks that on
a GPU. With ``implementation="tcnn"`` and tinycudann missing or no CUDA device, it warns and uses
torch. ``"torch_reference"`` is the previous, slower pure-torch code (``hash_grid_reference``),
kept so tests and ``benchmarks/bench_nerf.py`` can compare the two; both use the same table.
On the CPU, the torch backend runs through a compiled C kernel (``cpu_kernel``, ``_HashGridKernel``)
whenever the positions need no gradient: the same values and table gradients bit for bit, faster.
"""

from __future__ import annotations

import itertools
import math
import warnings
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from db3d.core.config import NeRFConfig
from db3d.nerf import cpu_kernel
from db3d.nerf.hash_grid_reference import hash_grid_torch_reference
from db3d.nerf.hash_layout import BASE_RESOLUTION, FEATURES_PER_LEVEL, HASH_PRIMES, HashGridLayout, hash_grid_layout

@dataclass(frozen=True)
class _LevelPlan:
    """What the per-corner index needs beyond the per-dimension terms (see ``_corner_row``)."""

    n_dense: int  # dense levels come first
    n_feat: int  # features per level F
    offsets: Tensor  # (L, 1) first table row of each level
    dense_size: Tensor  # (Ld, 1) rows of each dense level (their index wraps once past it)


def _corner_row(lab: Tensor, tz: Tensor, plan: _LevelPlan, out: Tensor) -> Tensor:  # (L, N) each
    """Table row of one corner from its x-y term and its z term, into ``out``.

    Dense levels add the terms (``x + y R + z R^2``) modulo the level's rows, as tiny-cuda-nn
    does (the far faces wrap); hashed levels XOR them (each term already masked to the level).
    """
    nd = plan.n_dense
    if nd > 0:
        dense = torch.add(lab[:nd], tz[:nd], out=out[:nd])
        dense.sub_((dense >= plan.dense_size) * plan.dense_size)  # < 2 x rows: one wrap is the modulo
    if nd < out.shape[0]:
        torch.bitwise_xor(lab[nd:], tz[nd:], out=out[nd:])
    return out.add_(plan.offsets)


def _corner_xy(tx: Tensor, ty: Tensor, plan: _LevelPlan, out: Tensor) -> Tensor:  # (L, N) each
    """The x-y part of a corner's index, into ``out``: sum (dense levels) or XOR (hashed levels)."""
    nd = plan.n_dense
    if nd > 0:
        torch.add(tx[:nd], ty[:nd], out=out[:nd])
    if nd < out.shape[0]:
        torch.bitwise_xor(tx[nd:], ty[nd:], out=out[nd:])
    return out


def _corners(wx: Tensor, wy: Tensor, wz: Tensor, tx: Tensor, ty: Tensor, tz: Tensor, plan: _LevelPlan):
    """Yield ``(a, b, c, wab, w, row)`` for the 8 corners: bits, x-y weight, weight, table row.

    The yielded tensors are reused buffers of shape ``(L, N)`` (``row`` flattened), overwritten by
    the next corner; nothing here needs gradients (the callers' differentiable path builds its own).
    """
    wab, w, lab, row = torch.empty_like(wx[0]), torch.empty_like(wx[0]), torch.empty_like(tx[0]), torch.empty_like(tx[0])
    for a, b in itertools.product((0, 1), repeat=2):
        torch.mul(wx[a], wy[b], out=wab)
        _corner_xy(tx[a], ty[b], plan, lab)
        for c in (0, 1):
            torch.mul(wab, wz[c], out=w)
            yield a, b, c, wab, w, _corner_row(lab, tz[c], plan, row).view(-1)


class _HashInterp(torch.autograd.Function):
    """``out[l, f, n] = sum_(a,b,c) wx[a] wy[b] wz[c] * table[row_abc[l, n], f]``: the trilinear lookup.

    Inputs are per dimension: weights ``w_d[bit] = (1 - frac, frac)`` and index terms
    ``t_d[bit]`` (``(2, L, N)`` each, points on the contiguous axis). The 8 corners' weights and
    table indices are formed one corner at a time into reused ``(L, N)`` buffers, in the forward
    and again in the backward, so nothing of size 8 x L x N is ever stored and the loop allocates
    almost nothing: on CPU, fresh large temporaries (pages to fault in) cost more than the
    arithmetic, which is what made the reference slow; on GPU it saves memory. Feature ``f`` of a
    corner is one 1-D ``index_select`` at ``row * F`` from the view ``table.view(-1)[f:]``, and its
    gradient one 1-D ``index_add_`` at ``row`` into the column ``grad[:, f]`` (on CPU, faster than
    into the flat view once the table outgrows the caches). The same ops run on CUDA.

    Double backward (autograd normals with ``create_graph``): the backward then takes a slower
    path of differentiable ops, ``_backward_differentiable``.
    """

    @staticmethod
    def forward(ctx, table, wx, wy, wz, tx, ty, tz, plan: _LevelPlan):  # -> (L, F, N)
        n_feat = table.shape[1]
        flat = table.reshape(-1)  # (P*F,) a view of the contiguous table
        _, n_levels, n = wx.shape
        out = torch.empty(n_levels, n_feat, n, dtype=table.dtype, device=table.device)
        vals = torch.empty(n_levels, n, dtype=table.dtype, device=table.device)  # one corner's feature
        lin = torch.empty(n_levels * n, dtype=tx.dtype, device=tx.device)  # its flat-table index
        for a, b, c, _, w, row in _corners(wx, wy, wz, tx, ty, tz, plan):
            torch.mul(row, n_feat, out=lin)
            for f in range(n_feat):
                torch.index_select(flat[f:], 0, lin, out=vals.view(-1))
                if a == b == c == 0:
                    torch.mul(w, vals, out=out[:, f])
                else:
                    out[:, f].addcmul_(w, vals)
        ctx.plan = plan
        ctx.save_for_backward(table, wx, wy, wz, tx, ty, tz)
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):  # (L, F, N)
        table, wx, wy, wz, tx, ty, tz = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph: the gradient itself must be differentiable
            return _backward_differentiable(ctx, grad_out, table, wx, wy, wz, tx, ty, tz)
        plan, n_feat = ctx.plan, table.shape[1]
        g = grad_out.contiguous()
        want_table, want_w = ctx.needs_input_grad[0], any(ctx.needs_input_grad[1:4])
        flat = table.reshape(-1)
        grad_table = torch.zeros_like(table) if want_table else None  # (P, F)
        grad_w = torch.zeros(3, 2, *wx.shape[1:], dtype=g.dtype, device=g.device) if want_w else None
        src, dot = torch.empty_like(wx[0]), torch.empty_like(wx[0])  # (L, N) buffers
        lin = torch.empty_like(tx[0]).view(-1)
        for a, b, c, wab, w, row in _corners(wx, wy, wz, tx, ty, tz, plan):
            if want_table:  # d out / d table[row, f] = the corner's weight: scatter weight x gradient
                for f in range(n_feat):
                    torch.mul(w, g[:, f], out=src)
                    grad_table[:, f].index_add_(0, row, src.view(-1))
            if want_w:  # d out / d w_d[bit]: (the corner's features . gradient) x the other two weights
                torch.mul(row, n_feat, out=lin)
                dot.zero_()
                for f in range(n_feat):
                    torch.index_select(flat[f:], 0, lin, out=src.view(-1))
                    dot.addcmul_(src, g[:, f])
                grad_w[2, c].addcmul_(wab, dot)
                dot.mul_(wz[c])
                grad_w[0, a].addcmul_(wy[b], dot)
                grad_w[1, b].addcmul_(wx[a], dot)
        gx, gy, gz = (None, None, None) if grad_w is None else grad_w
        return grad_table, gx, gy, gz, None, None, None, None


def _backward_differentiable(ctx, grad_out, table, wx, wy, wz, tx, ty, tz):
    """``_HashInterp``'s backward from differentiable ops, for double backward (slower: it keeps
    every corner's index and contribution, 8 x F x L x N, for one scatter)."""
    plan, n_feat = ctx.plan, table.shape[1]
    g = grad_out.contiguous()
    want_table, want_w = ctx.needs_input_grad[0], any(ctx.needs_input_grad[1:4])
    flat = table.reshape(-1)
    index, contrib = [], []  # flat index and weight x gradient of every corner and feature
    gx, gy, gz = ([0.0, 0.0] for _ in range(3))  # per-bit weight gradients, (L, N) each
    for a, b in itertools.product((0, 1), repeat=2):
        wab = wx[a] * wy[b]
        lab = _corner_xy(tx[a], ty[b], plan, torch.empty_like(tx[0]))
        for c in (0, 1):
            lin = _corner_row(lab, tz[c], plan, torch.empty_like(lab)).view(-1) * n_feat  # flat index
            if want_table:
                w = wab * wz[c]
                index += [lin + f for f in range(n_feat)]
                contrib += [(w * g[:, f]).reshape(-1) for f in range(n_feat)]
            if want_w:
                dot = sum(flat.index_select(0, lin + f).view_as(wab) * g[:, f] for f in range(n_feat))
                gz[c] = gz[c] + wab * dot
                dot_z = dot * wz[c]
                gx[a] = gx[a] + wy[b] * dot_z
                gy[b] = gy[b] + wx[a] * dot_z
    grad_table = None
    if want_table:
        zeros = torch.zeros(table.numel(), dtype=g.dtype, device=g.device)
        grad_table = zeros.index_add(0, torch.cat(index), torch.cat(contrib)).view_as(table)
    grads_w = [torch.stack(gd) if want_w else None for gd in (gx, gy, gz)]
    return grad_table, *grads_w, None, None, None, None


class _HashGridKernel(torch.autograd.Function):
    """``hash_grid_torch`` through the compiled CPU kernel (``cpu_kernel``, ``hash_interp.c``): the same
    values bit for bit, each point's 8 corners formed in registers instead of a dozen tensor ops over
    all points. Only the table gets a gradient (positions that need one take the tensor ops); its
    backward recomputes the corners from ``x`` (nothing of size L x N is kept) and, for double
    backward, returns the tensor ops' differentiable gradient."""

    @staticmethod
    def forward(ctx, table: Tensor, x: Tensor, layout: HashGridLayout):  # (P, F), (N, 3) in [0, 1] -> (N, L * F)
        constants = cpu_kernel.level_constants(layout, table.dtype)  # cached per layout and dtype
        ctx.layout, ctx.constants = layout, constants
        ctx.save_for_backward(table, x)
        return cpu_kernel.forward(x, table, constants)

    @staticmethod
    def backward(ctx, grad_out: Tensor):  # (N, L * F)
        table, x = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None, None, None
        if torch.is_grad_enabled():  # create_graph: the tensor ops' differentiable backward
            with torch.enable_grad():
                feats = hash_grid_torch(x, table, ctx.layout, kernel=False)
                (grad_table,) = torch.autograd.grad(feats, table, grad_out, create_graph=True)
            return grad_table, None, None
        return cpu_kernel.backward(x, table, ctx.constants, grad_out), None, None


def hash_grid_torch(
    x: Tensor,  # (N, 3) positions in [0, 1]^3 (clamped to it)
    table: Tensor,  # (P, F) all levels' rows, P = layout.offsets[-1]
    layout: HashGridLayout,
    kernel: bool = True,
) -> Tensor:  # (N, L * F) level-major features
    """Multiresolution hash encoding with trilinear interpolation (pure torch, CPU or CUDA).

    All levels at once, with the points on the long contiguous axis of every tensor:

    1. grid coordinates ``x * scale + 0.5`` per level, split into cell and fraction, ``(3, L, N)``;
    2. per dimension, the two linear weights ``(1 - frac, frac)``, ``(3, 2, L, N)``;
    3. per dimension, the two index terms of the cell's near and far vertex: dense levels
       ``coordinate * R^d`` (x: plus nothing; the level offset comes later), hashed levels
       ``(coordinate * prime) & (rows - 1)``; int32 when the table fits (it always has so far);
    4. ``_HashInterp`` combines them corner by corner (the 8 corners' weights are products, the
       indices sums or XORs) and gathers the table rows.

    Gradients reach the table and the positions (double backward too, for autograd normals).
    Inputs are clamped to [0, 1], where this matches tiny-cuda-nn. Same values as
    ``hash_grid_torch_reference`` up to float rounding.

    On the CPU, when the positions need no gradient, steps 1-4 run in the compiled kernel instead
    (``_HashGridKernel``: the same values bit for bit; ``kernel=False`` or DB3D_HASHGRID_KERNEL=torch
    forces the tensor ops).
    """
    if kernel and not (x.requires_grad and torch.is_grad_enabled()) and cpu_kernel.usable(x, table):
        return _HashGridKernel.apply(table, x.clamp(0.0, 1.0).contiguous(), layout)
    device, n = x.device, x.shape[0]
    n_levels, nd = layout.n_levels, sum(layout.dense)  # dense levels come first
    n_feat = table.shape[1]
    rows = [b - a for a, b in zip(layout.offsets, layout.offsets[1:])]  # (L,) rows per level
    index_dtype = torch.int32 if table.numel() < 2**31 else torch.int64

    def per_level(values, dtype=torch.int64) -> Tensor:  # (L', 1) constants
        return torch.tensor(values, dtype=dtype, device=device).view(-1, 1)

    # 1. grid coordinates: position * scale + 0.5, split into cell index and fraction
    xt = x.clamp(0.0, 1.0).t().contiguous()  # (3, N): every tensor below has the points innermost
    pos = xt[:, None, :] * per_level(layout.scales, x.dtype) + 0.5  # (3, L, N)
    cell = torch.floor(pos)
    frac = pos - cell  # (3, L, N)

    # 2. linear weights of the near (bit 0) and far (bit 1) vertex: (1 - frac, frac)
    w = torch.stack([1.0 - frac, frac], dim=1)  # (3, 2, L, N)

    # 3. index terms of the near and far vertex per dimension, (3, 2, L, N). Hashed levels have 2^k
    #    rows, so (c * prime) & (2^k - 1) = (c * (prime & (2^k - 1))) & (2^k - 1): with the prime
    #    reduced, the products fit in int32 (several times faster than int64 on CPU) unless
    #    (resolution + 1) * 2^k reaches 2^31; then they are formed in int64
    t = torch.empty(3, 2, n_levels, n, dtype=index_dtype, device=device)
    groups = []
    if nd > 0:
        groups.append((slice(0, nd), [[r**d for r in layout.resolutions[:nd]] for d in range(3)], None))
    if nd < n_levels:
        masks = [r - 1 for r in rows[nd:]]
        groups.append((slice(nd, n_levels), [[p & m for m in masks] for p in HASH_PRIMES], masks))
    for levels, factors, masks in groups:
        largest = max(layout.resolutions[levels]) * max(max(f) for f in factors)
        term_dtype = torch.int32 if largest < 2**31 and index_dtype == torch.int32 else torch.int64
        mask = None if masks is None else per_level(masks, term_dtype)
        for d in range(3):
            factor = per_level(factors[d], term_dtype)
            term = cell[d, levels].to(term_dtype).mul_(factor)  # (L', N) the near vertex's term
            if mask is not None:
                term.bitwise_and_(mask)
            t[d, 0, levels] = term
            term.add_(factor)  # the far vertex: one factor more ((a + b) & m = ((a & m) + b) & m)
            if mask is not None:
                term.bitwise_and_(mask)
            t[d, 1, levels] = term
    plan = _LevelPlan(nd, n_feat, per_level(layout.offsets[:-1], index_dtype),
                      per_level(rows[:nd], index_dtype))

    # 4. the weighted gather; (L, F, N) -> (N, L * F) level-major
    feats = _HashInterp.apply(table.contiguous(), w[0], w[1], w[2], t[0], t[1], t[2], plan)
    return feats.view(n_levels * n_feat, n).t().contiguous()


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
        n_levels: int = NeRFConfig.n_levels,
        features_per_level: int = FEATURES_PER_LEVEL,
        log2_hashmap_size: int = NeRFConfig.log2_hashmap_size,
        base_resolution: int = BASE_RESOLUTION,
        per_level_scale: float | None = None,
        max_resolution: int = NeRFConfig.max_resolution,
        implementation: Literal["torch", "tcnn", "torch_reference"] = NeRFConfig.encoding,
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
        self.implementation = "torch_reference" if implementation == "torch_reference" else "torch"
        self.tcnn_encoding = None
        if implementation == "tcnn":
            self._try_tcnn(device)
        elif implementation not in ("torch", "torch_reference"):
            raise ValueError(f"implementation must be 'torch', 'tcnn' or 'torch_reference', got {implementation!r}")
        if self.implementation != "tcnn":
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
        if self.implementation == "torch_reference":
            return hash_grid_torch_reference(x, self.table, self.layout)
        return hash_grid_torch(x, self.table, self.layout)
