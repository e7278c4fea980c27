"""ToyWorld: the world, its SDFs, the sphere-tracing renderer, captions, and camera consistency.

The last test is the consistency check of the issue: a NeRFField fitted to 20 ToyWorld renders by
the reconstruction loss alone (tests/nerf/test_nerf_reconstruction.py's recipe) reaches >= 25 dB on 4
held-out views, so the renderer and db3d's NeRF share one camera convention.
"""

from __future__ import annotations

import math
import random
import time

import pytest
import torch
from nerf_fit import consistency_cameras, fit

from db3d.core.cameras import orbit_cameras, sample_random_cameras
from db3d.nerf.render import render_views
from db3d.toyworld import (
    COLOUR_RGB,
    KINDS,
    VIEW_WORDS,
    build_object,
    camera_captions,
    enumerate_world,
    object_caption,
    render_object,
    sample_object,
    view_captions,
    vocabulary,
)
from db3d.toyworld.world import OBJECT_RADIUS

WHITE = torch.ones(3)


@pytest.fixture(scope="module")
def world():
    return enumerate_world(120, seed=0)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(-10.0 * torch.log10(((a - b) ** 2).mean()))


# ---- world ----------------------------------------------------------------------------------


def test_world_is_deterministic_and_distinct(world):
    assert enumerate_world(120, seed=0) == world  # frozen dataclasses compare by value
    assert len(world) == 120
    assert len({o.caption for o in world}) == 120
    assert len({o.seed for o in world}) == 120
    assert enumerate_world(120, seed=1) != world
    assert {(o.layout, len(o.primitives)) for o in world} == {
        ("single", 1), ("stack", 2), ("stack", 3), ("side", 2)}
    for o in world:
        assert o.bound_radius <= OBJECT_RADIUS + 1e-6
        colours = [p.colour for p in o.primitives]
        assert len(set(colours)) == len(colours) and o.feature.colour not in colours
    # subjects: same vocabulary, varied proportions and decals
    rng = random.Random(0)
    subjects = [sample_object(rng, vary=True) for _ in range(20)]
    assert len({s.feature.shape for s in subjects}) > 1
    assert all(s.bound_radius <= OBJECT_RADIUS + 1e-6 for s in subjects)


def test_sdf_sign_and_unit_gradient():
    gen = torch.Generator().manual_seed(0)
    for kind in KINDS:
        obj = build_object("single", (kind,), ("red",))
        prim = obj.primitives[0]
        # 1. negative at the centre, positive outside the bounding sphere
        assert obj.sdf(torch.zeros(1, 3)).item() < -0.1
        far = torch.nn.functional.normalize(torch.randn(256, 3, generator=gen), dim=-1)
        assert (obj.sdf(far * (obj.bound_radius + 0.05)) > 0).all()
        # 2. |grad sdf| = 1 in a shell around the surface (exact SDFs)
        pts = (torch.rand(20000, 3, generator=gen) * 2 - 1) * (obj.bound_radius + 0.1)
        pts = pts[obj.sdf(pts).abs() < 0.05].requires_grad_(True)
        (grad,) = torch.autograd.grad(obj.sdf(pts).sum(), pts)
        norm = grad.norm(dim=-1)
        assert pts.shape[0] > 500
        assert ((norm - 1.0).abs() < 0.02).float().mean() > 0.95, kind
        if kind == "ball":  # exactly |p| - r
            r = prim.half[0]
            torch.testing.assert_close(obj.sdf(pts.detach()), pts.detach().norm(dim=-1) - r)
    # 3. a stack is solid at every part's centre and colours points by their part
    obj = build_object("stack", ("box", "cylinder", "ball"), ("blue", "green", "red"))
    centres = torch.tensor([p.position for p in obj.primitives])
    assert (obj.sdf(centres) < 0).all()
    tops = centres + torch.tensor([[0.0, 0.0, 1e-3]])  # off the decal (it is on the +x side)
    torch.testing.assert_close(obj.albedo(tops - torch.tensor([[0.05, 0, 0]])),
                               torch.tensor([COLOUR_RGB[c] for c in ("blue", "green", "red")]))


# ---- renderer -------------------------------------------------------------------------------


def test_ball_matches_its_analytic_silhouette_and_depth():
    obj = build_object("single", ("ball",), ("red",))
    r, d, res, fov = obj.primitives[0].half[0], 3.0, 64, 40.0
    cams = orbit_cameras(4, elevation_deg=25.0, distance=d, fov_y_deg=fov, resolution=res)
    out = render_object(obj, cams)
    f = float(cams.focal[0])
    # perspective silhouette of a sphere: a disc of radius f r / sqrt(d^2 - r^2)
    expected = math.pi * f * f * r * r / (d * d - r * r)
    area = out.alpha.sum(dim=(1, 2, 3))
    assert ((area - expected).abs() / expected < 0.03).all(), (area, expected)
    # the 4 central pixels see the sphere's near point at distance d - r
    centre = out.depth[:, res // 2 - 1: res // 2 + 1, res // 2 - 1: res // 2 + 1]
    assert (centre - (d - r)).abs().max() < 0.01
    # background: white, zero alpha and depth
    bg = out.alpha[..., 0] == 0
    assert (out.rgb[bg] == 1).all() and (out.depth[..., 0][bg] == 0).all()


def test_render_outputs_lights_and_supersampling(world):
    obj = world[1]
    cams = sample_random_cameras(3, 24, distance_range=(2.0, 2.4),
                                 generator=torch.Generator().manual_seed(0))
    fixed = render_object(obj, cams)
    headlight = render_object(obj, cams, light="camera")
    smooth = render_object(obj, cams, supersample=3)
    for out in (fixed, headlight, smooth):
        assert out.rgb.shape == out.albedo.shape == out.normal.shape == (3, 24, 24, 3)
        assert out.alpha.shape == out.depth.shape == out.feature.shape == (3, 24, 24, 1)
        assert 0 <= out.rgb.min() and out.rgb.max() <= 1
    assert set(fixed.alpha.unique().tolist()) == {0.0, 1.0}
    assert ((smooth.alpha > 0) & (smooth.alpha < 1)).any()  # antialiased edges
    assert (smooth.alpha - fixed.alpha).abs().mean() < 0.05
    assert not torch.allclose(fixed.rgb, headlight.rgb)
    torch.testing.assert_close(fixed.albedo, headlight.albedo)  # light changes shading only


@pytest.mark.gpu
def test_cuda_render_matches_cpu(world):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    cams = orbit_cameras(4, elevation_deg=20.0, distance=2.4, fov_y_deg=45.0, resolution=32)
    cpu = render_object(world[2], cams)
    gpu = render_object(world[2], cams.to("cuda"))
    assert gpu.rgb.device.type == "cuda"
    assert (gpu.alpha.cpu() != cpu.alpha).float().mean() < 0.01  # silhouette pixels may flip
    assert (gpu.rgb.cpu() - cpu.rgb).abs().mean() < 0.01


def test_front_feature_seen_from_the_front_only(world):
    cams = orbit_cameras(2, elevation_deg=10.0, distance=2.8, fov_y_deg=42.0, resolution=64)
    for obj in world:  # azimuth 0 (front) and 180 (back)
        out = render_object(obj, cams)
        decal = torch.tensor(COLOUR_RGB[obj.feature.colour])
        coloured = ((out.albedo - decal).abs().max(dim=-1).values < 1e-6).float()  # (2, H, W)
        share = coloured.sum(dim=(1, 2)) / out.alpha.sum(dim=(1, 2, 3))
        torch.testing.assert_close(coloured, out.feature[..., 0])
        assert share[0] >= 0.10, (obj.caption, share)
        assert share[1] <= 0.002, (obj.caption, share)


def test_batched_render_equals_one_camera_at_a_time(world):
    """Batching (used for throughput: see benchmarks/bench_toyworld.py) changes nothing."""
    cams = sample_random_cameras(6, 24, distance_range=(1.8, 2.4), fov_range=(40.0, 50.0),
                                 generator=torch.Generator().manual_seed(0))
    batched = render_object(world[0], cams).rgb
    single = torch.cat([render_object(world[0], cams[i:i + 1]).rgb for i in range(len(cams))])
    torch.testing.assert_close(batched, single, atol=1e-4, rtol=0)


# ---- captions -------------------------------------------------------------------------------


def test_captions_and_view_words(world):
    assert object_caption("stack", [("blue", "box"), ("red", "ball")]) == "a red ball on a blue box"
    assert object_caption("side", [("red", "ball"), ("green", "cone")]) == \
        "a red ball next to a green cone"
    assert object_caption("stack", [("blue", "box"), ("green", "cylinder"), ("orange", "cone")]) \
        == "an orange cone on a green cylinder on a blue box"
    with pytest.raises(ValueError):
        object_caption("side", [("red", "ball")])
    assert build_object("side", ("ball", "cone"), ("red", "green")).caption == \
        "a red ball next to a green cone"
    got = view_captions("a red ball", [0.0, 90.0, 180.0, 270.0, 0.0], [10, 10, 10, 10, 75])
    assert got == ["a red ball, front view", "a red ball, side view", "a red ball, back view",
                   "a red ball, side view", "a red ball, overhead view"]
    cams = orbit_cameras(8, elevation_deg=15.0, distance=2.5, fov_y_deg=40.0, resolution=16)
    caps = camera_captions(world[0].caption, cams)
    assert caps[0].endswith(", front view") and caps[4].endswith(", back view")
    words = set(vocabulary())
    for obj in world:
        assert set(obj.caption.split()) <= words
    assert {w for v in VIEW_WORDS for w in v.split()} <= words


# ---- camera consistency: a NeRF fits ToyWorld renders -----------------------------------------


def test_nerf_fits_toyworld_renders(world):
    """tests/nerf/test_nerf_reconstruction.py's recipe on ToyWorld ground truth (2x2 supersampled)."""
    res, n_samples, steps, batch_rays = 64, 32, 300, 1024
    obj = world[1]  # a stack with its decal in view of several training cameras
    t0 = time.time()
    # 1. 20 random training cameras, 4 held-out orbit cameras at other azimuths
    train, test = consistency_cameras(res)
    gt_train = render_object(obj, train, supersample=2).rgb
    gt_test = render_object(obj, test, supersample=2).rgb
    t1 = time.time()
    # 2.-3. the small field, Instant-NGP-style Adam, random rays, the reconstruction loss alone
    field = fit(train, gt_train, steps, batch_rays, n_samples)
    t2 = time.time()
    pred = render_views(field, test, n_samples=n_samples, background=WHITE).rgb
    score, blank = psnr(pred, gt_test), psnr(torch.ones_like(gt_test), gt_test)
    print(f"\nToyWorld '{obj.caption}': held-out PSNR {score:.2f} dB over {len(test)} views "
          f"(blank image {blank:.2f} dB; data {t1 - t0:.1f}s, fit {t2 - t1:.1f}s)")
    assert blank < 15.0
    assert score >= 25.0


# ---- ground-truth scoring: the world's renders kept in a cache folder ---------------------------


def test_stored_world_renders_give_the_same_scores(tmp_path, monkeypatch):
    from db3d.toyworld import evaluate

    n, res, size = 4, 16, 6
    obj = sample_object(random.Random(3), vary=True)
    r = render_object(obj, evaluate.score_cameras(n, res))
    pred = (0.8 * r.rgb + 0.1).clamp(0, 1)
    old = evaluate.score_renders(pred, obj, n, res, world_size=size, alpha=r.alpha)  # in-process renders only
    cold = evaluate.score_renders(pred, obj, n, res, world_size=size, alpha=r.alpha, cache=tmp_path)
    key = evaluate.world_renders_key(n, res, size)
    assert (tmp_path / evaluate.WORLD_RENDERS / key / "done.json").exists()
    # a new process (no in-process cache) loads them and never renders the world
    evaluate._stored_world_renders.cache_clear()
    monkeypatch.setattr(evaluate, "_render_world", lambda *a: pytest.fail("the world was rendered again"))
    warm = evaluate.score_renders(pred, obj, n, res, world_size=size, alpha=r.alpha, cache=tmp_path)
    assert old == cold == warm
    stored = evaluate.world_renders(n, res, size, cache=tmp_path)
    assert all(torch.equal(a, b) for a, b in zip(stored, evaluate._world_renders(n, res, size)))
    assert len(stored) == size
    assert key != evaluate.world_renders_key(n, res + 1, size) != evaluate.world_renders_key(n, res, size + 1)


def test_world_renders_draw_the_chunks_nobody_holds_then_wait_for_the_others(tmp_path, monkeypatch):
    """Trials scoring at the same time share the world's renders chunk by chunk (the same tensors as
    one process drawing them all): a process draws the free chunks, then waits for a held one."""
    import threading

    from db3d.core.artifacts import flock_lock
    from db3d.toyworld import evaluate

    n, res, size = 2, 8, 6
    monkeypatch.setattr(evaluate, "WORLD_CHUNK", 2)  # chunks of objects 0-1, 2-3, 4-5
    folder = tmp_path / evaluate.WORLD_RENDERS / evaluate.world_renders_key(n, res, size)
    files = [folder / f"renders-{start:04d}.pt" for start in (0, 2, 4)]
    result = {}
    with flock_lock(folder / "batch-0002"):  # another process is drawing objects 2-3
        worker = threading.Thread(target=lambda: result.update(renders=evaluate.world_renders(n, res, size, tmp_path)))
        worker.start()
        deadline = time.monotonic() + 60
        while not (files[0].exists() and files[2].exists()) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.2)
        assert [f.exists() for f in files] == [True, False, True]  # the free chunks, not the held one
        assert worker.is_alive() and not (folder / "done.json").exists()  # waiting for objects 2-3
    worker.join(60)  # the holder let go without drawing them: the waiter draws them itself
    assert not worker.is_alive() and (folder / "done.json").exists()
    assert len(result["renders"]) == size
    assert all(torch.equal(a, b) for a, b in zip(result["renders"], evaluate._world_renders(n, res, size)))
