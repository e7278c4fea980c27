"""Score a run's final NeRF against its ToyWorld subject's true shape (db3d.toyworld.scores).

    1. render the NeRF (albedo over white) and the ground truth (fixed light) on one orbit
    2. PSNR / SSIM over every view and over the back half
    3. retrieval rank of the subject among itself + the world's objects, by PSNR to their renders
    4. Janus score: decal colour on the back views, relative to the front view's decal

Columns `metric.toy.<name>` go into the run's row (the same Parquet schema as every sweep).

Step 3's candidates (every world object rendered on the scoring orbit: 120 objects x 16 views,
~9-10 s on one core) cost more than the rest of the scoring together and are the same for every
run, so they are kept in the run's cache folder (cache_dir, beside the class images:
`cache/toyworld_renders/<key>/`, the key naming the world's objects, the cameras and the
renderer's source), rendered once per folder, in chunks that processes scoring at the same time
share, and loaded after that: the same tensors, bit for bit.
`db3d run` defaults to ~/.cache/db3d (once per machine, whatever the out folder); a sweep's trials
share the sweep's OUT/cache (once per sweep and node).
"""

from __future__ import annotations

import hashlib
import inspect
from functools import lru_cache
from pathlib import Path

import torch

from db3d.core.artifacts import atomic_path, atomic_write_json, content_key, share_chunks
from db3d.core.cameras import orbit_cameras
from db3d.core.progress import bar as progress_bar
from db3d.export.media import save_grid
from db3d.nerf.io import load_field
from db3d.nerf.render import render_views
from db3d.toyworld import render, scores, shapes, world
from db3d.toyworld.render import render_object
from db3d.toyworld.world import COLOUR_RGB, ToyObject, enumerate_world

N_VIEWS = 16
RESOLUTION = 64
ELEVATION = 15.0
DISTANCE = 1.75
FOV = 50.0
WORLD_SIZE = 120


def score_cameras(n_views: int = N_VIEWS, resolution: int = RESOLUTION):
    return orbit_cameras(n_views, ELEVATION, DISTANCE, FOV, resolution)


def _render_world(n_views: int, resolution: int, world_size: int) -> tuple[torch.Tensor, ...]:
    cams = score_cameras(n_views, resolution)
    return tuple(render_object(o, cams).rgb for o in enumerate_world(world_size))  # (V, H, W, 3) each


_world_renders = lru_cache(maxsize=4)(_render_world)


WORLD_RENDERS = "toyworld_renders"
"""Folder of the cache that keeps the world's scoring renders (world_renders)."""
WORLD_CHUNK = 8
"""Objects a stored chunk of the world's renders holds: trials that score at the same time (a sweep's
first ones) draw different chunks (core.artifacts.share_chunks) instead of one drawing while the others wait."""


@lru_cache(maxsize=1)
def _renderer_digest() -> str:
    """A digest of the code that draws the world (objects, shapes, renderer): a changed renderer
    gets a new key rather than another renderer's stored images."""
    text = "".join(inspect.getsource(module) for module in (render, shapes, world))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def world_renders_key(n_views: int, resolution: int, world_size: int) -> str:
    """Content key of the world's renders on score_cameras(n_views, resolution), stored in chunks."""
    cameras = {"n_views": n_views, "resolution": resolution, "elevation": ELEVATION, "distance": DISTANCE, "fov": FOV}
    return content_key(WORLD_RENDERS, enumerate_world(world_size), cameras, _renderer_digest(),
                       {"chunk": WORLD_CHUNK})


@lru_cache(maxsize=4)
def _stored_world_renders(cache: Path, n_views: int, resolution: int, world_size: int) -> tuple[torch.Tensor, ...]:
    """_world_renders, drawn once per cache folder (chunk by chunk, shared by the processes that need
    them at the same time) and loaded after that: each object's render is the same whoever draws it."""
    key = world_renders_key(n_views, resolution, world_size)
    folder = cache / WORLD_RENDERS / key
    chunks = [range(start, min(world_size, start + WORLD_CHUNK)) for start in range(0, world_size, WORLD_CHUNK)]
    file = lambda chunk: folder / f"renders-{chunk.start:04d}.pt"  # noqa: E731 - (n, V, H, W, 3)
    if not (folder / "done.json").exists():
        objects, cams = enumerate_world(world_size), score_cameras(n_views, resolution)

        def draw(chunk: range) -> None:
            renders = torch.stack([render_object(objects[i], cams).rgb for i in chunk])  # (n, V, H, W, 3)
            with atomic_path(file(chunk)) as tmp:
                torch.save(renders, tmp)

        todo = [chunk for chunk in chunks if not file(chunk).exists()]
        bar = progress_bar(total=len(todo), desc="ToyWorld scoring renders")
        share_chunks(folder, todo, lambda chunk: not file(chunk).exists(), draw, lambda: bar.update(1))
        bar.close()
        atomic_write_json(folder / "done.json", {"type": "ToyWorldRenders", "key": key, "objects": world_size,
                                                 "views": n_views, "resolution": resolution, "chunk": WORLD_CHUNK})
    return tuple(torch.cat([torch.load(file(chunk), weights_only=True) for chunk in chunks]).unbind(0))


def world_renders(n_views: int = N_VIEWS, resolution: int = RESOLUTION, world_size: int = WORLD_SIZE,
                  cache: Path | str | None = None) -> tuple[torch.Tensor, ...]:
    """The first world_size objects of the world rendered on score_cameras(n_views, resolution):
    one (V, H, W, 3) tensor each. Kept per process; with a cache folder also on disk, so every later
    run or sweep trial with that folder (each a new process) loads them."""
    if cache is None:
        return _world_renders(n_views, resolution, world_size)
    return _stored_world_renders(Path(cache).expanduser().resolve(), n_views, resolution, world_size)


def score_renders(pred: torch.Tensor, obj: ToyObject, n_views: int = N_VIEWS, resolution: int = RESOLUTION,
                  world_size: int = WORLD_SIZE, compare_png=None, alpha: torch.Tensor | None = None,
                  cache: Path | str | None = None) -> dict[str, float]:
    """Scores of renders pred (V, H, W, 3) (opacity alpha (V, H, W, 1) if known) taken from
    score_cameras(V, H) against obj.

    compare_png: also save a grid, ground truth above the renders, one column per view.
    cache: a folder that keeps the world's renders (world_renders); the scores are the same."""
    cams = score_cameras(n_views, resolution)
    gt = render_object(obj, cams)
    if compare_png is not None:
        save_grid(torch.cat([gt.rgb, pred]).permute(0, 3, 1, 2), compare_png, columns=n_views)
    back = scores.back_half(cams.azimuth_deg)
    front = ~back
    p_all, s_all = scores.psnr(pred, gt.rgb), scores.ssim(pred, gt.rgb)
    candidates = [gt.rgb] + list(world_renders(n_views, resolution, world_size, cache))
    return {
        "metric.toy.psnr.all": float(p_all.mean()),
        "metric.toy.psnr.back": float(p_all[back].mean()),
        "metric.toy.ssim.all": float(s_all.mean()),
        "metric.toy.ssim.back": float(s_all[back].mean()),
        "metric.toy.retrieval_rank": scores.retrieval_rank(pred, candidates, 0),
        "metric.toy.retrieval_candidates": len(candidates),
        "metric.toy.janus": scores.janus_score(pred[back], gt.feature[back], gt.feature[front],
                                               COLOUR_RGB[obj.feature.colour],
                                               None if alpha is None else alpha[back]),
    }


@torch.no_grad()
def score_field(field_file, obj: ToyObject, n_samples: int = 64, device: torch.device | str = "cpu",
                compare_png=None, cache: Path | str | None = None) -> dict:
    """Render a saved NeRF on the scoring orbit and score it against obj (compare_png, cache: see
    score_renders)."""
    field = load_field(field_file, torch.device(device)).eval()
    white = torch.ones(getattr(field.config, "color_channels", 3))
    cams = score_cameras().to(device)
    rgb, alpha = [], []
    for start in range(0, len(cams), 8):
        out = render_views(field, cams[start:start + 8], n_samples=n_samples, shading="albedo", background=white)
        rgb.append(out.rgb.clamp(0, 1).cpu())
        alpha.append(out.opacity.cpu())
    return score_renders(torch.cat(rgb), obj, compare_png=compare_png, alpha=torch.cat(alpha), cache=cache)
