"""Meshes from a NeRF: marching cubes on the density, vertex colours from the albedo; OBJ and GLB.

The field is sampled on a dense grid over its bounding cube ``[-r, r]^3`` (zero outside the
bounding sphere anyway), padded with one layer of zeros so every surface closes, and
``skimage.measure.marching_cubes`` extracts the level set ``density = threshold``. Faces are
oriented outwards (counter-clockwise seen from outside: positive signed volume).

The default threshold is 10, stable-dreamfusion's ``density_thresh``: with ~64 samples across a
unit sphere (interval ~0.03) a density of 10 makes a sample ~26% opaque, so the level set sits
where renders turn solid. A field whose density never crosses it (a young or faint NeRF) gets a
level halfway between the grid's minimum and maximum density instead, with a warning.

``Mesh`` keeps db3d's world frame (+z up, front +x). ``save_obj`` writes it as is; ``save_glb``
rotates it into glTF's frame (+y up, front +z) as the glTF spec asks, and writes the vertex
colours (sRGB bytes) as linear floats, as glTF's COLOR_0 is linear. trimesh writes both files.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from skimage.measure import marching_cubes

from db3d.core.artifacts import atomic_write_bytes
from db3d.nerf.io import field_device

DEFAULT_THRESHOLD = 10.0
"""Density level of the extracted surface (stable-dreamfusion's density_thresh: 10)."""

WORLD_TO_GLTF = np.array([[0, 1, 0], [0, 0, 1], [1, 0, 0]], dtype=np.float32)
"""Rotation (det +1) taking db3d's (x front, y left, z up) to glTF's (x = y, y = z up, z = x front)."""


@dataclass
class Mesh:
    """A triangle mesh with per-vertex colours."""

    vertices: np.ndarray  # (V, 3) float32, world coordinates
    faces: np.ndarray  # (F, 3) int64 vertex indices, counter-clockwise seen from outside
    colors: np.ndarray  # (V, 3) uint8 sRGB

    @property
    def is_empty(self) -> bool:
        return len(self.faces) == 0


def _empty_mesh() -> Mesh:
    return Mesh(np.zeros((0, 3), np.float32), np.zeros((0, 3), np.int64), np.zeros((0, 3), np.uint8))


@torch.no_grad()
def density_grid(
    field: torch.nn.Module,
    resolution: int,
    device: torch.device | str,
    chunk: int = 2**17,
) -> tuple[np.ndarray, np.ndarray]:  # (N, N, N) float32 densities, (N,) axis coordinates
    """``field.density`` at the N^3 points of a grid over ``[-r, r]^3`` (index order x, y, z)."""
    r = field.config.bound_radius
    axis = torch.linspace(-r, r, resolution, device=device)  # (N,)
    out = torch.empty(resolution, resolution, resolution)  # (N, N, N) on the CPU
    ys, zs = torch.meshgrid(axis, axis, indexing="ij")  # (N, N) each
    slab = max(1, chunk // resolution**2)  # x-planes per density call
    for start in range(0, resolution, slab):
        xs = axis[start:start + slab]  # (k,)
        points = torch.stack(torch.broadcast_tensors(xs[:, None, None], ys, zs), -1)  # (k, N, N, 3)
        density = field.density(points.reshape(-1, 3)).float().cpu()  # (k * N * N,)
        out[start:start + slab] = density.reshape(-1, resolution, resolution)
    return out.numpy(), axis.cpu().numpy()


def _adaptive_level(volume: np.ndarray) -> float | None:
    """Halfway between the grid's minimum and maximum density; None for a constant field."""
    lo, hi = float(volume.min()), float(volume.max())
    return None if not hi > lo else lo + 0.5 * (hi - lo)


def _marching_cubes(volume: np.ndarray, level: float, spacing: float) -> tuple[np.ndarray, np.ndarray]:
    """Level set of a zero-padded volume, in grid units times ``spacing``, faces outwards."""
    verts, faces, _, _ = marching_cubes(volume, level=level, spacing=(spacing,) * 3)
    verts, faces = verts.astype(np.float64), faces.astype(np.int64)
    used = np.unique(faces)  # drop vertices left unreferenced by removed degenerate faces
    if len(used) < len(verts):
        remap = np.zeros(len(verts), np.int64)
        remap[used] = np.arange(len(used))
        verts, faces = verts[used], remap[faces]
    # skimage winds faces by the left-hand rule for a density that is high inside: flip when the
    # signed volume says the normals point in (checked, not assumed)
    signed = np.einsum("ij,ij->i", verts[faces[:, 0]], np.cross(verts[faces[:, 1]], verts[faces[:, 2]]))
    if signed.sum() < 0:
        faces = faces[:, [0, 2, 1]]
    return verts, faces


@torch.no_grad()
def extract_mesh(
    field: torch.nn.Module,
    resolution: int = 128,
    threshold: float | None = None,  # None: DEFAULT_THRESHOLD
    device: torch.device | str | None = None,  # None: the field's device
    chunk: int = 2**17,
) -> Mesh:
    """Marching-cubes mesh of ``density = threshold``, coloured by the albedo at its vertices.

    ``field`` needs ``density(x (N,3)) -> (N,)``, ``field(x) -> outputs.albedo (N,3)`` and
    ``config.bound_radius``. Vertices of a field whose colour is not RGB (Latent-NeRF) are grey.
    Falls back to an adaptive level (with a warning) when the density
    never crosses ``threshold`` on the grid; returns an empty mesh (with a warning) for a
    constant density.
    """
    device = torch.device(device) if device is not None else field_device(field)
    level = DEFAULT_THRESHOLD if threshold is None else float(threshold)
    was_training = field.training
    field.eval()
    try:
        # 1. densities on the grid, padded with zeros so the surface closes at the cube's faces
        volume, axis = density_grid(field, resolution, device, chunk)
        volume = np.nan_to_num(volume, nan=0.0, posinf=np.finfo(np.float32).max)
        volume = np.pad(volume, 1, mode="constant", constant_values=0.0)
        spacing = float(axis[1] - axis[0])
        origin = float(axis[0]) - spacing  # world coordinate of padded index 0

        # 2. marching cubes at the level; an adaptive level when it is out of range or gives nothing
        lo, hi = float(volume.min()), float(volume.max())
        verts, faces = _marching_cubes(volume, level, spacing) if lo < level < hi else (None, None)
        if faces is None or len(faces) == 0:
            new_level = _adaptive_level(volume)
            if new_level is None:
                warnings.warn(f"extract_mesh: density is constant ({lo:.3g}); empty mesh", stacklevel=2)
                return _empty_mesh()
            warnings.warn(
                f"extract_mesh: threshold {level:.3g} gives no surface (density range on the grid "
                f"[{lo:.3g}, {hi:.3g}]); using the adaptive threshold {new_level:.3g}, halfway "
                "between min and max",
                stacklevel=2,
            )
            verts, faces = _marching_cubes(volume, new_level, spacing)
            if len(faces) == 0:
                warnings.warn("extract_mesh: no surface at the adaptive threshold; empty mesh",
                              stacklevel=2)
                return _empty_mesh()
        verts = verts + origin  # (V, 3) world coordinates

        # 3. vertex colours: the albedo at each vertex (grey for a latent field's 4 channels)
        points = torch.from_numpy(verts.astype(np.float32)).to(device)
        albedo = torch.cat(
            [field(points[i:i + chunk]).albedo.float().cpu() for i in range(0, len(points), chunk)]
        )  # (V, 3)
        if albedo.shape[1] != 3:
            albedo = torch.full((len(albedo), 3), 0.8)
        colors = (albedo.clamp(0, 1).numpy() * 255).round().astype(np.uint8)
    finally:
        field.train(was_training)
    return Mesh(vertices=verts.astype(np.float32), faces=faces, colors=colors)


# ---- files --------------------------------------------------------------------------------------


OBJ_HEADER = "db3d mesh: world frame +z up, front +x; vertex colours sRGB in [0, 1]"
LINEAR_COLOR = "_COLOR_LINEAR"
"""The custom vertex attribute that carries the GLB's linear float colours (renamed COLOR_0)."""


def _trimesh(vertices: np.ndarray, faces: np.ndarray, **kwargs):
    """A trimesh.Trimesh of exactly these arrays (process=False: no merging or reordering)."""
    import trimesh  # noqa: PLC0415  heavy (~0.5 s): imported only when a mesh file is written

    return trimesh.Trimesh(vertices=vertices, faces=faces, process=False, validate=False, **kwargs)


def save_obj(mesh: Mesh, path: Path) -> Path:
    """Wavefront OBJ (trimesh's writer): ``v x y z r g b`` (sRGB colours in [0, 1]) and 1-based
    ``f a b c`` lines, in db3d's world frame."""
    from trimesh.exchange.obj import export_obj  # noqa: PLC0415  heavy: trimesh, only when a file is written

    if mesh.is_empty:  # trimesh would write a bare 'v' and 'f' line: the header alone
        return atomic_write_bytes(path, f"# {OBJ_HEADER}\n".encode())
    tm = _trimesh(mesh.vertices, mesh.faces, vertex_colors=mesh.colors)
    text = export_obj(tm, include_normals=False, include_color=True, include_texture=False, digits=6,
                      header=OBJ_HEADER)
    return atomic_write_bytes(path, text.encode())


def srgb_to_linear(c: np.ndarray) -> np.ndarray:  # values in [0, 1]
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


def _finish_gltf(tree: dict) -> None:
    """trimesh's glTF tree -> db3d's: the linear float colours as COLOR_0 and a dielectric material.

    trimesh writes vertex colours as 8-bit COLOR_0, which would crush the dark end of linear
    colours (sRGB 0-12 all become 0 or 1), so they travel as a float custom attribute, renamed
    here. glTF's default material is metallic, which renders vertex colours dark: hence ours.
    """
    tree["asset"]["generator"] = "db3d"
    if not tree.get("meshes"):  # an empty mesh: a valid file with an empty node
        return
    tree["materials"] = [{"pbrMetallicRoughness": {"baseColorFactor": [1, 1, 1, 1],
                                                   "metallicFactor": 0.0, "roughnessFactor": 1.0}}]
    for gltf_mesh in tree["meshes"]:
        for prim in gltf_mesh["primitives"]:
            prim["attributes"]["COLOR_0"] = prim["attributes"].pop(LINEAR_COLOR)
            prim["material"] = 0


def glb_bytes(mesh: Mesh) -> bytes:
    """A binary glTF 2.0 file (trimesh's writer): one mesh, POSITION + COLOR_0 (linear float VEC3)
    + uint32 indices, in glTF's frame (+y up, front +z)."""
    import trimesh  # noqa: PLC0415  heavy (~0.5 s): only when a mesh file is written
    from trimesh.exchange.gltf import export_glb  # noqa: PLC0415  heavy: as above

    positions = mesh.vertices.astype(np.float32) @ WORLD_TO_GLTF.T  # (V, 3) glTF frame
    colors = srgb_to_linear(mesh.colors.astype(np.float64) / 255.0).astype(np.float32)  # (V, 3) linear
    tm = _trimesh(positions, mesh.faces, vertex_attributes={LINEAR_COLOR: colors})
    return export_glb(trimesh.Scene(tm), include_normals=False, tree_postprocessor=_finish_gltf)


def save_glb(mesh: Mesh, path: Path) -> Path:
    """Binary glTF 2.0 (see ``glb_bytes``), written atomically."""
    return atomic_write_bytes(path, glb_bytes(mesh))


def export_mesh(
    field: torch.nn.Module,
    out_dir: Path,
    resolution: int = 128,
    threshold: float | None = None,
) -> dict[str, Path]:
    """Extract the mesh and write ``mesh.obj`` and ``mesh.glb``; returns ``{file name: path}``."""
    mesh = extract_mesh(field, resolution=resolution, threshold=threshold)
    out_dir = Path(out_dir)
    return {
        "mesh.obj": save_obj(mesh, out_dir / "mesh.obj"),
        "mesh.glb": save_glb(mesh, out_dir / "mesh.glb"),
    }
