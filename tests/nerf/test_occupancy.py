"""The NeRF loop's occupancy grid (db3d/nerf/occupancy.py): its cells follow the field's density,
a render through it matches the render without it where the skipped samples were empty, and the
skipped samples are never evaluated."""

from __future__ import annotations

import math

import torch

from db3d.core.cameras import sample_random_cameras
from db3d.nerf import NeRFField, render_image
from db3d.nerf.field import FieldConfig
from db3d.nerf.occupancy import OccupancyGrid

N_SAMPLES = 32


def _blob_field(blob_scale: float = 5.0, radius: float = 0.4) -> NeRFField:
    """A field whose density is exactly softplus(blob_scale * (1 - |x| / radius)): the MLP's output
    layer is zeroed, so only the linear density blob is left."""
    torch.manual_seed(0)
    field = NeRFField(FieldConfig(n_levels=4, log2_hashmap_size=12, max_resolution=64, hidden_dim=16,
                                  density_blob_scale=blob_scale, density_blob_radius=radius, background="fixed"))
    with torch.no_grad():
        field.mlp[-1].weight.zero_()
        field.mlp[-1].bias.zero_()
    return field


def _cell_centres(res: int) -> torch.Tensor:  # (res^3, 3) in cell_index's order
    axis = (torch.arange(res) + 0.5) / res * 2.0 - 1.0
    return torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)


def test_cells_follow_the_density_and_points_map_to_their_cell():
    res = 16
    grid = OccupancyGrid.for_fit(res, 0.01, N_SAMPLES, radius=1.0)
    assert grid.query(torch.tensor([[0.9, 0.9, 0.9]])).item()  # before any update: every cell
    grid.update(_blob_field(), seed=0, step=0)
    # the threshold: density 0.01 / (2 / 32), or the grid's mean when lower; softplus(5 (1 - r / 0.4)) = thr -> r_thr
    thr = min(0.01 * N_SAMPLES / 2.0, float(grid.occ.mean()))
    r_thr = 0.4 * (1.0 - math.log(math.expm1(thr)) / 5.0)
    cell, half_diagonal = 2.0 / res, math.sqrt(3.0) / res
    r = _cell_centres(res).norm(dim=-1)
    occupied = grid.occupied
    assert occupied[r < r_thr - half_diagonal].all()  # the whole cell is denser than the threshold
    assert not occupied[r > r_thr + half_diagonal + cell * math.sqrt(3.0)].any()  # beyond it and the dilation
    assert 0.02 < grid.fraction_occupied() < 0.3
    # query reads the cell a point lies in
    points = torch.tensor([[0.0, 0.0, 0.0], [0.95, -0.95, 0.95], [-0.99, 0.0, 0.0]])
    assert grid.query(points).tolist() == [True, False, False]
    idx = grid.cell_index(_cell_centres(res))
    assert torch.equal(idx, torch.arange(res**3))


def test_an_update_evaluates_the_field_only_inside_its_sphere_and_equals_evaluating_every_cell():
    """Outside the bounding sphere the field's density is 0 by construction, so the update skips
    those points (about half the cube's); its grid equals one that evaluated every cell."""
    res, field = 16, _blob_field(blob_scale=0.5, radius=3.0)  # density > 0 everywhere inside the sphere
    with torch.no_grad():
        field.mlp[-1].bias[0] = 2.0
    seen: list[torch.Tensor] = []
    density = field.density
    field.density = lambda x: (seen.append(x), density(x))[1]
    grid = OccupancyGrid.for_fit(res, 0.01, N_SAMPLES, radius=field.config.bound_radius)
    grid.update(field, seed=3, step=5)
    points = torch.cat(seen)
    assert (points.norm(dim=-1) <= field.config.bound_radius).all()
    assert 0.45 < points.shape[0] / res**3 < 0.6  # the sphere's share of the cube, pi/6
    # the first update's grid is the density itself: the same as the field's at every point of the cube
    gen = torch.Generator().manual_seed(3 * 1_000_003 + 5)  # the update's draw (seed, step)
    axis = torch.arange(res, dtype=torch.float32)
    ijk = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)
    cube = ((ijk + torch.rand(ijk.shape, generator=gen)) / res * 2.0 - 1.0) * field.config.bound_radius
    with torch.no_grad():
        every = density(cube)  # (res^3,)
    assert torch.allclose(grid.occ, every, rtol=1e-6, atol=1e-9)
    assert torch.equal(grid.occ > 0, every > 0) and 0.45 < float((every > 0).float().mean()) < 0.6


def test_a_field_with_no_density_is_evaluated_everywhere_rather_than_nowhere():
    grid = OccupancyGrid.for_fit(8, 0.01, N_SAMPLES, radius=1.0)
    field = _blob_field(blob_scale=0.0)
    with torch.no_grad():
        field.mlp[-1].bias[0] = -1e3  # density softplus(-1000) = 0 everywhere
    grid.update(field, seed=0, step=0)
    assert float(grid.occ.max()) == 0.0
    assert grid.fraction_occupied() == 1.0


def test_a_render_through_the_grid_matches_the_full_render_and_skips_the_empty_samples():
    field = _blob_field()
    grid = OccupancyGrid.for_fit(32, 0.01, N_SAMPLES, radius=1.0)
    grid.update(field, seed=0, step=0)
    cams = sample_random_cameras(2, 24, (-10.0, 60.0), (1.5, 2.0), (40.0, 70.0), torch.Generator().manual_seed(1))
    evaluated = []
    real_forward = field.forward

    def counting(x, *args, **kwargs):
        evaluated.append(x.shape[0])
        return real_forward(x, *args, **kwargs)

    field.forward = counting
    renders = {}
    for name, occupancy in (("full", None), ("grid", grid)):
        out = render_image(field, cams, n_samples=N_SAMPLES, jitter=True, generator=torch.Generator().manual_seed(2),
                           occupancy=occupancy)
        out.rgb.sum().backward()  # the skipped samples are zeros in the graph, not a break in it
        renders[name] = out
    full, skipped = evaluated
    print(f"occupancy grid: {skipped} of {full} samples evaluated")
    assert skipped < 0.5 * full
    # a skipped sample is less opaque than the threshold (alpha 0.01); a pixel crosses a few of them
    # (this untrained blob's long softplus tail is the worst case: measured mean 2.0e-3, max 7.0e-3)
    diff = (renders["grid"].rgb - renders["full"].rgb).abs()
    print(f"pixel difference: mean {diff.mean():.2e}, max {diff.max():.2e}")
    assert diff.max() < 0.02 and diff.mean() < 5e-3
    assert renders["grid"].rays.weights.shape == renders["full"].rays.weights.shape
    assert field.mlp[0].weight.grad is not None


def test_the_grid_state_round_trips():
    field = _blob_field()
    a = OccupancyGrid.for_fit(8, 0.01, N_SAMPLES, radius=1.0)
    a.update(field, seed=3, step=16)
    b = OccupancyGrid.for_fit(8, 0.01, N_SAMPLES, radius=1.0)
    b.load_state_dict(a.state_dict())
    assert torch.equal(a.occ, b.occ) and torch.equal(a.occupied, b.occupied)
    c = OccupancyGrid.for_fit(8, 0.01, N_SAMPLES, radius=1.0)
    c.update(field, seed=3, step=16)  # the same (seed, step): the same points, the same grid
    assert torch.equal(a.occ, c.occ)
    assert OccupancyGrid.for_fit(0, 0.01, N_SAMPLES, radius=1.0) is None  # resolution 0: off
