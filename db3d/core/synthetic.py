"""A generated subject: views of a toy (red ball on a blue box with a yellow front marker).

Used by tests and the embedded default when no photos are given. numpy + PIL only.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SYNTHETIC_CLASS_NOUN = "toy"  # class noun to use with make_synthetic_subject's folders


def _render_toy(azimuth: float, elevation: float, size: int) -> Image.Image:
    """Orthographic view of a blue box with a yellow front marker and a red ball on top."""
    s = 2 * size  # supersample, then reduce: antialiased edges
    th, ph = np.radians(azimuth), np.radians(elevation)
    view = np.array([np.sin(th) * np.cos(ph), np.sin(ph), np.cos(th) * np.cos(ph)])  # to camera
    right = np.array([np.cos(th), 0.0, -np.sin(th)])
    up = np.cross(view, right)
    light = np.array([0.4, 0.8, 0.45]) / np.linalg.norm([0.4, 0.8, 0.45])
    centre = np.zeros(3)

    def project(p):  # world [3] -> pixel (x, y)
        q = np.asarray(p) - centre
        return (s / 2 + q @ right * 0.55 * s, s / 2 - q @ up * 0.55 * s)

    def shade(normal, colour):
        k = 0.45 + 0.55 * max(0.0, float(normal @ light))
        return tuple(int(round(c * k)) for c in colour)

    img = Image.new("RGB", (s, s), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    # 1. box faces facing the camera (a convex box: visible faces never overlap)
    lo, hi = np.array([-0.45, -0.6, -0.45]), np.array([0.45, 0.1, 0.45])
    for axis in range(3):
        for sign in (-1, 1):
            normal = np.zeros(3)
            normal[axis] = sign
            if normal @ view <= 1e-6:
                continue
            a, b = [i for i in range(3) if i != axis]
            corners = []
            for u, v in ((0, 0), (1, 0), (1, 1), (0, 1)):
                p = np.where(normal > 0, hi, lo).astype(float)
                p[a], p[b] = (lo[a], hi[a])[u], (lo[b], hi[b])[v]
                corners.append(project(p))
            draw.polygon(corners, fill=shade(normal, (40, 80, 200)))
            # 2. the yellow marker on the front (+z) face
            if axis == 2 and sign == 1:
                marker = [project((x, y, 0.45)) for x, y in
                          ((-0.15, -0.4), (0.15, -0.4), (0.15, -0.1), (-0.15, -0.1))]
                draw.polygon(marker, fill=shade(normal, (245, 210, 30)))
    # 3. the red ball on top, Lambert-shaded per pixel (seen from above, it occludes the box)
    radius, ball = 0.35, np.array([0.0, 0.45, 0.0])
    cx, cy = project(ball)
    r_px = radius * 0.55 * s
    ys, xs = np.mgrid[0:s, 0:s] + 0.5
    dx, dy = (xs - cx) / r_px, (cy - ys) / r_px  # [s,s] in camera units of the radius
    inside = dx**2 + dy**2 < 1
    dz = np.sqrt(np.clip(1 - dx**2 - dy**2, 0, None))
    normals = dx[..., None] * right + dy[..., None] * up + dz[..., None] * view  # [s,s,3]
    k = 0.45 + 0.55 * np.clip(normals @ light, 0, None)  # [s,s]
    pixels = np.asarray(img).copy()
    pixels[inside] = np.round(k[inside, None] * np.array([210, 30, 30])).astype(np.uint8)
    return Image.fromarray(pixels).reduce(2)


def make_synthetic_subject(out_dir: Path, n_images: int = 4, seed: int = 0, size: int = 256) -> Path:
    """Write `n_images` PNG views (00.png, ...) of a toy (red ball on a blue box, yellow front
    marker) from evenly spread azimuths into `out_dir` itself; deterministic under `seed`.
    Its class noun is SYNTHETIC_CLASS_NOUN. Returns `out_dir`."""
    if n_images < 1 or size < 8:
        raise ValueError(f"need n_images >= 1 and size >= 8, got {n_images}, {size}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    offset = rng.uniform(0, 360 / n_images)
    elevations = rng.uniform(10, 30, n_images)
    for i in range(n_images):
        azimuth = offset + 360 * i / n_images
        _render_toy(azimuth, float(elevations[i]), size).save(out_dir / f"{i:02d}.png")
    return out_dir
