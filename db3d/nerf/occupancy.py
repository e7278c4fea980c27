"""Occupancy grid: empty-space skipping for the NeRF loop (Instant-NGP's density grid, nerfacc's
``OccGridEstimator``), in pure torch.

A cube of ``resolution^3`` cells over the field's bounding cube ``[-r, r]^3`` keeps, per cell, a
decaying maximum of the density seen at a random point inside it::

    occ_c <- max(decay * occ_c, density(x_c)),   x_c uniform in cell c   (every `every` steps)
    occupied_c = dilate(occ_c > min(threshold, mean(occ)))               (one cell each way)

``render_rays`` then evaluates the field only at samples in occupied cells; the others get density
0 (and so weight 0). The threshold is the density whose optical thickness over the longest
interval a ray can take (the sphere's diameter / n_samples) is ``alpha_threshold`` (nerfacc:
``occ_thre`` 0.01 on density x step): a skipped sample would have moved its pixel by less than
that. Capping it at the grid's mean keeps a nearly empty field from being skipped entirely, and
the one-cell dilation keeps the cells next to a surface evaluated, so SDS can still grow the shape
there (the grid re-reads the field at the next update). Deterministic: each update's points come
from a generator seeded by (seed, step), so a resumed fit draws the same ones.

Measured on trained ToyWorld fields (toy preset, 64^3 cells, dilated): 12-36% of the samples on
rays that meet the sphere are evaluated, and the skipped ones held 1e-5 to 7e-3 of the optical
thickness (benchmarks/bench_nerf.py prints the SDS step with and without the grid).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

DECAY = 0.95
"""Per-update decay of a cell's remembered density (nerfacc's ``ema_decay``)."""
UPDATE_CHUNK = 2**16
"""Points per field call while updating (bounds the update's memory)."""


class OccupancyGrid:
    """Which cells of the bounding cube the field can be skipped in (see the top of this file)."""

    def __init__(self, resolution: int, radius: float, density_threshold: float,
                 device: torch.device | str | None = None):
        if resolution < 1:
            raise ValueError(f"occupancy grid resolution must be >= 1, got {resolution}")
        self.resolution, self.radius, self.density_threshold = resolution, radius, density_threshold
        self.occ = torch.zeros(resolution**3, device=device)  # (res^3,) decaying max density per cell
        self.occupied = torch.ones(resolution**3, dtype=torch.bool, device=device)  # all, until the first update
        axis = torch.arange(resolution, dtype=torch.float32)
        self.ijk = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)  # (res^3, 3)
        """Each cell's integer corner, in cell_index's order (CPU: the update's points are drawn there)."""

    @classmethod
    def for_fit(cls, resolution: int, alpha_threshold: float, n_samples: int, radius: float,
                device: torch.device | str | None = None) -> "OccupancyGrid | None":
        """The grid of a NeRF fit (None when ``resolution`` is 0: every sample evaluated)."""
        if resolution <= 0:
            return None
        longest_interval = 2.0 * radius / n_samples  # a chord is at most the diameter
        return cls(resolution, radius, alpha_threshold / longest_interval, device)

    def cell_index(self, points: Tensor) -> Tensor:  # (N, 3) world positions -> (N,) long
        res = self.resolution
        ijk = ((points / self.radius + 1.0) * (0.5 * res)).long().clamp_(0, res - 1)  # (N, 3)
        return (ijk[:, 0] * res + ijk[:, 1]) * res + ijk[:, 2]

    def query(self, points: Tensor) -> Tensor:  # (N, 3) -> (N,) bool
        """True where a point lies in an occupied cell."""
        return self.occupied[self.cell_index(points)]

    @torch.no_grad()
    def update(self, field, seed: int, step: int) -> None:
        """Re-read the field's density at one random point per cell; decay, threshold and dilate."""
        res, device = self.resolution, self.occ.device
        # 1. one point per cell, uniform inside it (cells in cell_index's order)
        gen = torch.Generator().manual_seed(seed * 1_000_003 + step)
        u = torch.rand(self.ijk.shape, generator=gen)
        points = ((self.ijk + u) / res * 2.0 - 1.0) * self.radius  # (res^3, 3)
        # 2. the field's density there; outside its bounding sphere the field's density is 0 by
        #    construction (NeRFField._raw, the same test), so only the points inside are evaluated
        #    (about pi/6 of the cube's)
        r = field.config.bound_radius
        inside = (points * points).sum(-1) <= r * r  # (res^3,)
        kept = points[inside]
        density = torch.zeros(points.shape[0], device=device)
        if kept.shape[0]:
            density[inside.to(device)] = torch.cat([field.density(kept[i:i + UPDATE_CHUNK].to(device)).float()
                                                    for i in range(0, kept.shape[0], UPDATE_CHUNK)])
        # 3. decaying maximum, threshold (at most the mean), dilation by one cell
        self.occ = torch.maximum(self.occ * DECAY, density)
        cells = (self.occ > min(self.density_threshold, float(self.occ.mean()))).reshape(1, 1, res, res, res)
        if not cells.any():  # a field of exactly zero density: evaluate everything rather than nothing
            self.occupied = torch.ones_like(self.occupied)
            return
        self.occupied = F.max_pool3d(cells.float(), 3, stride=1, padding=1).reshape(-1) > 0

    def fraction_occupied(self) -> float:
        return float(self.occupied.float().mean())

    def state_dict(self) -> dict[str, Tensor]:
        return {"occ": self.occ.cpu(), "occupied": self.occupied.cpu()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        if state["occ"].numel() != self.resolution**3:
            raise ValueError(f"occupancy state of {state['occ'].numel()} cells; this grid has {self.resolution}^3")
        self.occ = state["occ"].to(self.occ.device)
        self.occupied = state["occupied"].to(self.occupied.device)
