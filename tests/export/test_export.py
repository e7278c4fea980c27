"""Exports: videos, turntables, field checkpoints, marching-cubes meshes, OBJ and GLB files."""

from __future__ import annotations

import json
import math
import struct
import warnings
from types import SimpleNamespace

import imageio.v2 as imageio
import numpy as np
import pytest
import torch
from torch import nn

from db3d.export.media import export_turntables, save_video, turntable
from db3d.export.mesh import (
    WORLD_TO_GLTF,
    Mesh,
    export_mesh,
    extract_mesh,
    glb_bytes,
    save_glb,
    save_obj,
)
from db3d.nerf.field import FieldConfig, FieldOutputs, NeRFField
from db3d.nerf.io import load_field, read_field_config, save_field

BALL_RADIUS = 0.5


class BallField(nn.Module):
    """A ball of radius R: density ``peak * sigmoid((R - |x|) / width)``, albedo = position colour."""

    def __init__(self, radius: float = BALL_RADIUS, peak: float = 20.0, width: float = 0.03):
        super().__init__()
        self.config = SimpleNamespace(bound_radius=1.0)
        self.radius, self.peak, self.width = radius, peak, width

    def density(self, x):  # (N, 3) -> (N,)
        return self.peak * torch.sigmoid((self.radius - x.norm(dim=-1)) / self.width)

    def forward(self, x, compute_normals=False):  # (N, 3)
        return FieldOutputs(density=self.density(x), albedo=((x + 1) / 2).clamp(0, 1), normal=None)


def tiny_field(seed: int = 0, channels: int = 3) -> NeRFField:
    torch.manual_seed(seed)
    config = FieldConfig(
        n_levels=4, log2_hashmap_size=10, base_resolution=4, max_resolution=32, hidden_dim=16,
        n_hidden_layers=1, background="fixed", background_color=(0.2, 0.4, 0.6, 0.8)[:channels],
        color_channels=channels,
    )
    field = NeRFField(config)
    with torch.no_grad():
        field.encoding.table.uniform_(-1.0, 1.0)  # features that matter, so densities differ
    return field


def edge_counts(faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Counts of undirected and of directed edges."""
    directed = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    _, undirected_counts = np.unique(np.sort(directed, axis=1), axis=0, return_counts=True)
    _, directed_counts = np.unique(directed, axis=0, return_counts=True)
    return undirected_counts, directed_counts


def signed_volume(mesh: Mesh) -> float:
    v = mesh.vertices.astype(np.float64)
    f = mesh.faces
    return float(np.einsum("ij,ij->i", v[f[:, 0]], np.cross(v[f[:, 1]], v[f[:, 2]])).sum() / 6)


# ---- meshes -------------------------------------------------------------------------------------


def test_ball_mesh_is_closed_round_outward_and_coloured():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the default threshold must work without a fallback
        mesh = extract_mesh(BallField(), resolution=48)
    assert mesh.vertices.dtype == np.float32 and mesh.faces.dtype == np.int64 and mesh.colors.dtype == np.uint8
    assert mesh.vertices.shape[1] == 3 and mesh.faces.shape[1] == 3 and mesh.colors.shape == mesh.vertices.shape
    undirected, directed = edge_counts(mesh.faces)
    assert (undirected == 2).all()  # closed: every edge shared by exactly two faces
    assert (directed == 1).all()  # consistently oriented
    n_edges = len(undirected)
    assert len(mesh.vertices) - n_edges + len(mesh.faces) == 2  # Euler characteristic of a sphere
    radii = np.linalg.norm(mesh.vertices, axis=1)
    assert abs(radii.mean() - BALL_RADIUS) < 0.03 * BALL_RADIUS
    true_volume = 4 / 3 * math.pi * BALL_RADIUS**3
    assert abs(signed_volume(mesh) - true_volume) < 0.05 * true_volume  # positive: faces outwards
    expected = np.round((mesh.vertices + 1) / 2 * 255)
    assert np.abs(mesh.colors.astype(np.float32) - expected).max() <= 1


def test_adaptive_threshold_when_the_fixed_one_gives_nothing():
    faint = BallField(peak=5.0)  # never reaches the default threshold of 10
    with pytest.warns(UserWarning, match="adaptive threshold"):
        mesh = extract_mesh(faint, resolution=32)
    assert len(mesh.faces) > 0 and len(mesh.vertices) > 0
    assert abs(np.linalg.norm(mesh.vertices, axis=1).mean() - BALL_RADIUS) < 0.03 * BALL_RADIUS
    with pytest.warns(UserWarning, match="adaptive threshold"):
        assert len(extract_mesh(BallField(), resolution=24, threshold=1e6).faces) > 0


def test_mesh_of_a_nerf_field(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a random field may need the adaptive threshold
        paths = export_mesh(tiny_field(), tmp_path, resolution=24)
        latent_mesh = extract_mesh(tiny_field(channels=4), resolution=16)
    assert set(paths) == {"mesh.obj", "mesh.glb"} and all(p.stat().st_size > 0 for p in paths.values())
    assert len(latent_mesh.faces) > 0 and (latent_mesh.colors == 204).all()  # latents: grey


def parse_glb(data: bytes) -> tuple[dict, bytes]:
    magic, version, length = struct.unpack_from("<III", data, 0)
    assert magic == 0x46546C67 and version == 2 and length == len(data)
    json_len, json_type = struct.unpack_from("<II", data, 12)
    assert json_type == 0x4E4F534A and json_len % 4 == 0
    gltf = json.loads(data[20:20 + json_len].decode())
    offset, binary = 20 + json_len, b""
    if offset < len(data):
        bin_len, bin_type = struct.unpack_from("<II", data, offset)
        assert bin_type == 0x004E4942 and bin_len % 4 == 0
        binary = data[offset + 8:offset + 8 + bin_len]
        assert offset + 8 + bin_len == len(data)
    return gltf, binary


def test_glb_and_obj_files(tmp_path):
    mesh = extract_mesh(BallField(), resolution=20)
    n_v, n_f = len(mesh.vertices), len(mesh.faces)

    gltf, binary = parse_glb(save_glb(mesh, tmp_path / "m.glb").read_bytes())
    assert gltf["asset"]["version"] == "2.0"
    assert gltf["buffers"][0]["byteLength"] == len(binary)
    prim = gltf["meshes"][0]["primitives"][0]
    attributes = prim["attributes"]
    pos, col, idx = (gltf["accessors"][i] for i in (attributes["POSITION"], attributes["COLOR_0"], prim["indices"]))
    assert pos["count"] == n_v and col["count"] == n_v and idx["count"] == 3 * n_f
    assert pos["componentType"] == 5126 and pos["type"] == "VEC3" and idx["componentType"] == 5125
    views = gltf["bufferViews"]
    assert all(v["byteOffset"] % 4 == 0 and v["byteOffset"] + v["byteLength"] <= len(binary) for v in views)
    pv, iv = views[pos["bufferView"]], views[idx["bufferView"]]
    positions = np.frombuffer(binary, "<f4", 3 * n_v, pv["byteOffset"]).reshape(n_v, 3)
    np.testing.assert_allclose(positions, mesh.vertices @ WORLD_TO_GLTF.T, atol=1e-6)
    np.testing.assert_allclose(pos["min"], positions.min(0), atol=1e-6)
    np.testing.assert_allclose(pos["max"], positions.max(0), atol=1e-6)
    indices = np.frombuffer(binary, "<u4", 3 * n_f, iv["byteOffset"])
    np.testing.assert_array_equal(indices, mesh.faces.reshape(-1))

    empty = Mesh(np.zeros((0, 3), np.float32), np.zeros((0, 3), np.int64), np.zeros((0, 3), np.uint8))
    gltf, binary = parse_glb(glb_bytes(empty))
    assert binary == b"" and "accessors" not in gltf

    lines = save_obj(mesh, tmp_path / "m.obj").read_text().splitlines()
    v_lines = [line.split() for line in lines if line.startswith("v ")]
    assert len(v_lines) == n_v and sum(line.startswith("f ") for line in lines) == n_f
    assert all(len(v) == 7 and 0.0 <= float(v[4]) <= 1.0 for v in v_lines)
    assert not list(tmp_path.glob(".*"))  # no temporary files left behind


def test_glb_and_obj_reload_with_trimesh(tmp_path):
    """Both files read back by trimesh: the same vertices (GLB in glTF's frame), faces and colours
    (OBJ: the sRGB bytes; GLB: linear floats, sRGB decoded by the IEC 61966-2-1 formula), and the
    GLB's dielectric material."""
    import trimesh

    mesh = extract_mesh(BallField(), resolution=20)
    mesh.colors[:4] = [[0, 0, 0], [3, 10, 11], [12, 200, 255], [40, 41, 42]]  # both sides of the sRGB knee
    save_glb(mesh, tmp_path / "m.glb")
    save_obj(mesh, tmp_path / "m.obj")

    scene = trimesh.load(tmp_path / "m.glb", process=False)
    (glb,) = scene.geometry.values()
    assert all(np.allclose(node["transform"], np.eye(4)) for node in scene.graph.to_flattened().values())
    to_gltf = np.array([[0, 1, 0], [0, 0, 1], [1, 0, 0]], np.float32)  # (x, y, z) -> (y, z, x)
    np.testing.assert_allclose(glb.vertices, mesh.vertices @ to_gltf.T, atol=1e-6)
    np.testing.assert_array_equal(glb.faces, mesh.faces)
    c = mesh.colors.astype(np.float64) / 255
    linear = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    colors = glb.visual.vertex_attributes["color"]  # COLOR_0 as stored: float32, not bytes
    assert colors.dtype == np.float32 and colors.shape == (len(mesh.vertices), 3)
    np.testing.assert_allclose(colors, linear, rtol=1e-6, atol=1e-8)
    assert glb.visual.material.metallicFactor == 0.0 and glb.visual.material.roughnessFactor == 1.0

    obj = trimesh.load(tmp_path / "m.obj", process=False)
    np.testing.assert_allclose(obj.vertices, mesh.vertices, atol=1e-6)  # world frame, as is
    np.testing.assert_array_equal(obj.faces, mesh.faces)
    np.testing.assert_array_equal(obj.visual.vertex_colors[:, :3], mesh.colors)


# ---- videos, turntables, checkpoints ------------------------------------------------------------


def test_save_video_mp4_and_gif(tmp_path):
    t, h, w = 6, 17, 23  # odd sizes: the mp4 is padded to even ones
    ramp = torch.linspace(0, 1, w).expand(h, w)
    frames = torch.stack(  # (T, 3, H, W), every frame different
        [torch.stack([ramp, ramp.roll(i * 3, 1), torch.full((h, w), i / t)]) for i in range(t)]
    )
    mp4 = save_video(frames, tmp_path / "clip.mp4", fps=10)
    gif = save_video(frames, tmp_path / "clip.gif", fps=10)
    with imageio.get_reader(mp4, format="FFMPEG") as reader:
        video = [frame for frame in reader]
    assert len(video) == t and video[0].shape == (h + 1, w + 1, 3)
    animation = imageio.mimread(gif)
    assert len(animation) == t and animation[0].shape[:2] == (h, w)
    assert not list(tmp_path.glob(".*"))
    with pytest.raises(ValueError):
        save_video(frames, tmp_path / "clip.avi")


@pytest.mark.parametrize("channels", [3, 4])  # RGB, and Latent-NeRF's 4 latent channels
def test_field_checkpoint_round_trip(tmp_path, channels):
    field = tiny_field(seed=1, channels=channels)
    path = save_field(field, tmp_path / "nerf.safetensors")
    assert read_field_config(path) == field.config  # the config travels in the metadata
    loaded = load_field(path, device="cpu")
    x = torch.rand(512, 3) * 2 - 1
    with torch.no_grad():
        assert torch.equal(loaded.density(x), field.density(x))
        assert torch.equal(loaded(x).albedo, field(x).albedo)
    assert loaded.config.background_color == (0.2, 0.4, 0.6, 0.8)[:channels]


def test_turntable_of_a_nerf_field(tmp_path):
    field = tiny_field()
    frames = turntable(field, n_frames=3, resolution=(12, 16), n_samples=16)
    assert frames.shape == (3, 3, 12, 16) and torch.isfinite(frames).all()
    assert frames.min() >= 0 and frames.max() <= 1
    assert field.training  # render_views restores the mode
    paths = export_turntables(field, tmp_path, n_frames=2, resolution=10, fps=5)
    names = {"turntable_rgb.mp4", "turntable_rgb.gif", "turntable_textureless.mp4", "turntable_textureless.gif"}
    assert set(paths) == names and all(p.exists() for p in paths.values())


@pytest.mark.filterwarnings("ignore:extract_mesh")  # a random field's density never reaches the threshold
def test_export_result_renders_the_albedo_turntable_once_with_the_same_files(tmp_path, monkeypatch):
    # the run's exports against the previous code path: both turntables rendered by
    # export_turntables and the albedo one rendered again for the grid
    from db3d.core.artifacts import NerfCheckpoint
    from db3d.core.config import RunConfig
    from db3d.export import media, result
    from db3d.export.media import save_grid

    cfg = RunConfig()
    cfg.export.turntable_frames, cfg.export.turntable_resolution, cfg.export.mesh_resolution = 4, 12, 16
    cfg.nerf.n_samples = 16
    (tmp_path / "final").mkdir()
    save_field(tiny_field(seed=2), tmp_path / "final" / "field.safetensors")
    final = NerfCheckpoint(path=str(tmp_path / "final"), key="k", steps=1)
    ctx = SimpleNamespace(cfg=cfg, bb=SimpleNamespace(device=torch.device("cpu")), store=tmp_path / "store", keys={})
    calls = []
    real_turntable = media.turntable

    def counted(*args, **kwargs):
        calls.append(kwargs.get("shading", "albedo"))
        return real_turntable(*args, **kwargs)

    monkeypatch.setattr(media, "turntable", counted)
    monkeypatch.setattr(result, "turntable", counted)
    paths = result.export_result(ctx, final, tmp_path / "new")
    assert sorted(calls) == ["albedo", "textureless"]  # previously albedo twice

    field = load_field(final.field_file).eval()
    orbit = dict(elevation_deg=cfg.nerf.orbit_elevation, distance=cfg.nerf.orbit_distance,
                 fov_y_deg=cfg.nerf.orbit_fov, n_samples=cfg.nerf.n_samples)
    old = tmp_path / "old"
    export_turntables(field, old, n_frames=4, resolution=12, fps=cfg.export.fps, **orbit)
    save_grid(real_turntable(field, 4, 12, **orbit)[:, :3].clamp(0, 1), old / "final_views.png")
    for name in ("turntable_rgb.mp4", "turntable_rgb.gif", "turntable_textureless.mp4",
                 "turntable_textureless.gif", "final_views.png"):
        assert paths[name].read_bytes() == (old / name).read_bytes(), name
