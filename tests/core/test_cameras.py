"""Camera conventions, look-at, orbits, random cameras, rays and view prompts, by construction."""

from __future__ import annotations

import math

import pytest
import torch

from db3d.core.cameras import (
    CameraBatch,
    generate_rays,
    look_at,
    orbit_cameras,
    sample_random_cameras,
    spherical_to_cartesian,
    view_direction_suffix,
    view_prompt,
)


def _ray_point_distance(origins, directions, point):  # (..., 3) x2, (3,) -> (...)
    rel = point - origins
    along = (rel * directions).sum(-1, keepdim=True)
    return (rel - along * directions).norm(dim=-1)


def test_spherical_convention():
    az = torch.tensor([0.0, 90.0, 180.0, 0.0])
    el = torch.tensor([0.0, 0.0, 0.0, 90.0])
    pos = spherical_to_cartesian(az, el, torch.full((4,), 2.0))
    expected = torch.tensor([[2.0, 0, 0], [0, 2.0, 0], [-2.0, 0, 0], [0, 0, 2.0]])
    torch.testing.assert_close(pos, expected, atol=1e-5, rtol=0)


def test_look_at_points_at_origin_and_is_a_rotation():
    gen = torch.Generator().manual_seed(0)
    eye = torch.randn(16, 3, generator=gen) * 3
    eye = torch.cat([eye, torch.tensor([[0.0, 0.0, 2.0], [0.0, 0.0, -1.5]])])  # straight up/down
    c2w = look_at(eye)
    rot = c2w[:, :3, :3]
    eye3 = torch.eye(3).expand_as(rot)
    torch.testing.assert_close(rot.transpose(1, 2) @ rot, eye3, atol=1e-5, rtol=0)
    assert torch.allclose(torch.linalg.det(rot), torch.ones(len(eye)), atol=1e-5)
    forward = -c2w[:, :3, 2]  # cameras look along their -z
    torch.testing.assert_close(forward, -eye / eye.norm(dim=-1, keepdim=True), atol=1e-5, rtol=0)
    torch.testing.assert_close(c2w[:, :3, 3], eye)
    # camera up has a non-negative world-z component (no upside-down cameras)
    assert (c2w[:-2, 2, 1] >= -1e-6).all()


def test_look_at_explicit_target():
    eye = torch.tensor([[1.0, 2.0, 3.0]])
    target = torch.tensor([[1.0, 2.0, 0.0]]) + torch.tensor([[0.5, 0.0, 0.0]])
    c2w = look_at(eye, target)
    forward = -c2w[0, :3, 2]
    torch.testing.assert_close(forward, torch.nn.functional.normalize(target - eye, dim=-1)[0])


def test_centre_pixel_ray_passes_through_origin():
    gen = torch.Generator().manual_seed(1)
    cams = sample_random_cameras(6, 33, distance_range=(2.0, 3.0), generator=gen)
    origins, dirs = generate_rays(cams)
    assert origins.shape == dirs.shape == (6, 33, 33, 3)
    torch.testing.assert_close(dirs.norm(dim=-1), torch.ones(6, 33, 33), atol=1e-5, rtol=0)
    dist = _ray_point_distance(origins[:, 16, 16], dirs[:, 16, 16], torch.zeros(3))
    assert dist.max() < 1e-5
    # even resolution: the four central pixels straddle the origin symmetrically
    cams = orbit_cameras(3, 20.0, 2.5, 50.0, 32)
    origins, dirs = generate_rays(cams)
    mean_dir = torch.nn.functional.normalize(dirs[:, 15:17, 15:17].mean(dim=(1, 2)), dim=-1)
    assert _ray_point_distance(origins[:, 0, 0], mean_dir, torch.zeros(3)).max() < 1e-5


def test_image_orientation_up_and_right():
    # camera at azimuth 0 (on +x, looking at the object's front): world +z is up in the image,
    # world +y is on the right of the image; the corner rays span the field of view
    cams = orbit_cameras(1, 0.0, 3.0, 60.0, (31, 41))
    origins, dirs = generate_rays(cams)

    def pixel_of(point):
        d = _ray_point_distance(origins[0], dirs[0], torch.tensor(point))
        flat = int(d.argmin())
        return divmod(flat, cams.width)  # (row, col)

    row, col = pixel_of([0.0, 0.0, 0.5])
    assert row < 15 and col == 20
    row, col = pixel_of([0.0, 0.5, 0.0])
    assert row == 15 and col > 20
    # vertical field of view: angle between the top and bottom edge rays of the middle column
    top = generate_rays(cams)[1][0, 0, 20]
    bottom = generate_rays(cams)[1][0, -1, 20]
    angle = math.degrees(math.acos(float((top * bottom).sum())))
    assert angle == pytest.approx(60.0 * 30 / 31, abs=0.5)  # pixel centres: (H-1)/H of the fov


def test_orbit_cameras_even_spacing():
    cams = orbit_cameras(20, 15.0, 2.2, 45.0, 64, azimuth_offset_deg=10.0)
    assert len(cams) == 20 and cams.height == cams.width == 64
    torch.testing.assert_close(cams.positions.norm(dim=-1), torch.full((20,), 2.2))
    torch.testing.assert_close(cams.azimuth_deg, (10.0 + 18.0 * torch.arange(20.0)) % 360)
    z = cams.positions[:, 2]
    torch.testing.assert_close(z, torch.full((20,), 2.2 * math.sin(math.radians(15.0))))
    expected = spherical_to_cartesian(cams.azimuth_deg, cams.elevation_deg, cams.distance)
    torch.testing.assert_close(cams.positions, expected)


def test_random_cameras_stratified_azimuths_cover_every_sector():
    gen = torch.Generator().manual_seed(0)
    batch, sector = 8, 45.0
    for _ in range(50):
        cams = sample_random_cameras(batch, 16, generator=gen)
        az = cams.azimuth_deg
        # camera i lies in sector i counted from camera 0's sector: (i - 1, i + 1) sectors away
        rel = torch.remainder(az - az[0], 360.0) / sector
        i = torch.arange(batch, dtype=torch.float32)
        assert ((rel[1:] > i[1:] - 1) & (rel[1:] < i[1:] + 1)).all()
        # no gap between neighbouring azimuths reaches two sectors
        s = torch.sort(az).values
        gaps = torch.cat([s[1:] - s[:-1], (s[:1] + 360.0) - s[-1:]])
        assert gaps.max() < 2 * sector
    # the global offset is random: azimuth 0's sector differs between draws
    firsts = {
        round(float(sample_random_cameras(4, 8, generator=gen).azimuth_deg[0])) for _ in range(5)
    }
    assert len(firsts) > 1


def test_random_cameras_ranges_and_light():
    gen = torch.Generator().manual_seed(3)
    cams = sample_random_cameras(
        256, (24, 32), elevation_range=(-10, 80), distance_range=(1.5, 2.0), fov_range=(40, 70),
        generator=gen, light_distance_scale=(1.0, 1.5),
    )
    assert (cams.height, cams.width) == (24, 32)
    assert cams.elevation_deg.min() >= -10 and cams.elevation_deg.max() <= 80
    assert cams.distance.min() >= 1.5 and cams.distance.max() <= 2.0
    assert cams.fov_y_deg.min() >= 40 and cams.fov_y_deg.max() <= 70
    torch.testing.assert_close(cams.positions.norm(dim=-1), cams.distance)
    light_r = cams.light_pos.norm(dim=-1)
    ratio = light_r / cams.distance  # the light is around the camera (DreamFusion), as far or farther
    assert ratio.min() >= 1.0 - 1e-5 and ratio.max() <= 1.5 + 1e-5
    assert light_r.min() > 1.0  # never inside the unit bounding sphere, i.e. inside the object
    cos = torch.nn.functional.cosine_similarity(cams.light_pos, cams.positions, dim=-1)
    assert cos.mean() > 0.8 and cos.min() > 0.0  # the light sits near the camera direction
    # same seed, same cameras
    a = sample_random_cameras(4, 8, generator=torch.Generator().manual_seed(7))
    b = sample_random_cameras(4, 8, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(a.c2w, b.c2w)


def test_camera_batch_to_and_index():
    cams = orbit_cameras(5, 10.0, 2.0, 40.0, 8)
    moved = cams.to("cpu")
    assert isinstance(moved, CameraBatch) and moved.device.type == "cpu"
    sub = cams[1:3]
    assert len(sub) == 2 and sub.height == 8
    torch.testing.assert_close(sub.c2w, cams.c2w[1:3])
    assert len(cams[4]) == 1
    torch.testing.assert_close(cams.focal, torch.full((5,), 4.0 / math.tan(math.radians(20.0))))


@pytest.mark.parametrize(
    "azimuth, elevation, expected",
    [
        (0.0, 0.0, "front view"),
        (30.0, 20.0, "front view"),
        (-40.0, 0.0, "front view"),
        (330.0, 0.0, "front view"),
        (90.0, 0.0, "side view"),
        (-90.0, 30.0, "side view"),
        (270.0, 0.0, "side view"),
        (180.0, 0.0, "back view"),
        (-170.0, 10.0, "back view"),
        (200.0, 0.0, "back view"),
        (0.0, 61.0, "overhead view"),
        (180.0, 89.0, "overhead view"),
        (90.0, 60.0, "side view"),
    ],
)
def test_view_direction_suffix(azimuth, elevation, expected):
    assert view_direction_suffix(torch.tensor([azimuth]), torch.tensor([elevation])) == [expected]


def test_view_direction_suffix_batch_and_prompt():
    cams = orbit_cameras(4, 10.0, 2.0, 40.0, 8)  # azimuths 0, 90, 180, 270
    suffixes = view_direction_suffix(cams.azimuth_deg, cams.elevation_deg)
    assert suffixes == ["front view", "side view", "back view", "side view"]
    suffixes = view_direction_suffix([0.0, 0.0], 70.0, overhead_threshold_deg=75.0)
    assert suffixes == ["front view"] * 2
    assert view_prompt("a sks dog", "side view") == "a sks dog, side view"
