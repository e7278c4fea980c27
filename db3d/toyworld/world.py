"""ToyWorld objects: 1-3 coloured primitives, stacked or side by side, with a marked front.

Conventions follow ``db3d.core.cameras``: +z up, the object's **front faces +x** (azimuth 0), its left
side is +y (image right in the front view). Every object is centred on the origin and scaled so
that its parts' bounding boxes fit inside a sphere of radius ``OBJECT_RADIUS`` (0.8), well inside
a unit NeRF bounding sphere.

The front is marked by a decal (``FrontFeature``): a disc, square, diamond or triangle painted on
the front half (+x side) of one part, sized to cover about a third of that part's front view, so
it survives 32-64 px renders and is invisible from the back.

Geometry is a smooth union of exact primitive SDFs (``db3d.toyworld.shapes``); the albedo of a
point is the colour of its nearest part, or the decal's colour inside the decal.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import torch
from torch import Tensor

from db3d.toyworld.captions import (
    COLOURS,
    KINDS,
    PART_COLOURS,
    Kind,
    Layout,
    object_caption,
)
from db3d.toyworld.shapes import DECAL_SHAPES, in_decal, sd_primitive, smooth_min

# albedo of every colour word (linear RGB in [0, 1])
COLOUR_RGB: dict[str, tuple[float, float, float]] = {
    "red": (0.85, 0.12, 0.10),
    "green": (0.15, 0.65, 0.20),
    "blue": (0.15, 0.30, 0.85),
    "yellow": (0.95, 0.85, 0.10),
    "orange": (0.95, 0.50, 0.05),
    "purple": (0.55, 0.20, 0.70),
    "black": (0.08, 0.08, 0.08),
    "white": (0.95, 0.95, 0.95),
}
assert set(COLOUR_RGB) == set(COLOURS)

# canonical half extents (hx, hy, hz) of each kind before the object is scaled to fit
CANONICAL_HALF: dict[str, tuple[float, float, float]] = {
    "ball": (0.45, 0.45, 0.45),
    "box": (0.40, 0.40, 0.40),
    "cylinder": (0.38, 0.38, 0.42),
    "cone": (0.42, 0.42, 0.45),
}
OBJECT_RADIUS = 0.8  # every object fits in this sphere (world units)
STACK_SHRINK = 0.8  # each part of a stack is this much smaller than the one below it
STACK_SINK = 0.1  # an upper part sinks this fraction of its half height into the one below
SIDE_GAP = 0.1  # gap between side-by-side parts, before scaling
BLEND = 0.02  # smooth-union radius of the parts (world units, after scaling)
DECAL_SCALE = 0.6  # decal radius / the smaller front half extent of its part
# layouts of sampled objects and their probabilities: (layout, number of parts, weight)
LAYOUT_WEIGHTS: tuple[tuple[Layout, int, float], ...] = (
    ("single", 1, 0.15), ("stack", 2, 0.4), ("stack", 3, 0.1), ("side", 2, 0.35))
STACK_BASES: tuple[Kind, ...] = ("box", "cylinder")  # kinds that can carry another part


@dataclass(frozen=True)
class Primitive:
    """One part of an object."""

    kind: Kind
    half: tuple[float, float, float]  # half extents (hx, hy, hz) of its bounding box
    position: tuple[float, float, float]  # centre of its bounding box (world)
    colour: str  # a COLOURS word


@dataclass(frozen=True)
class FrontFeature:
    """The decal that marks the object's front (+x)."""

    shape: str  # a shapes.DECAL_SHAPES name
    colour: str  # a COLOURS word, different from every part's colour
    part: int  # index of the primitive it is painted on
    centre: tuple[float, float]  # (y, z) world position of the decal's centre
    size: float  # radius of the equal-area disc (world units)


@dataclass(frozen=True)
class ToyObject:
    """A ToyWorld object: parts, front feature, caption and a per-object seed."""

    primitives: tuple[Primitive, ...]  # bottom to top (stack) or -y to +y (side)
    layout: Layout
    feature: FrontFeature
    caption: str
    seed: int = 0

    @property
    def bound_radius(self) -> float:
        """Radius of a sphere about the origin holding every part's bounding box."""
        return max(math.dist((0, 0, 0), [abs(c) + h for c, h in zip(p.position, p.half)])
                   for p in self.primitives)

    def part_distances(self, points: Tensor) -> Tensor:  # (N, 3) -> (N, P)
        """Signed distance of every point to every part."""
        out = []
        for prim in self.primitives:
            centre = torch.tensor(prim.position, device=points.device, dtype=points.dtype)
            out.append(sd_primitive(prim.kind, points - centre, prim.half))
        return torch.stack(out, dim=-1)

    def sdf(self, points: Tensor) -> Tensor:  # (N, 3) -> (N,)
        """Signed distance to the object (smooth union of its parts; negative inside)."""
        d = self.part_distances(points)
        out = d[:, 0]
        for i in range(1, d.shape[1]):
            out = smooth_min(out, d[:, i], BLEND)
        return out

    def feature_mask(self, points: Tensor) -> Tensor:  # (N, 3) -> (N,) bool
        """Whether surface points lie on the front decal."""
        return self._feature_mask(points, self.part_distances(points).argmin(dim=-1))

    def _feature_mask(self, points: Tensor, nearest: Tensor) -> Tensor:  # (N,3), (N,) -> (N,)
        f = self.feature
        front_x = self.primitives[f.part].position[0]
        u, v = points[:, 1] - f.centre[0], points[:, 2] - f.centre[1]
        return (nearest == f.part) & (points[:, 0] > front_x) & in_decal(f.shape, u, v, f.size)

    def albedo(self, points: Tensor) -> Tensor:  # (N, 3) -> (N, 3)
        """Colour of the nearest part, or the decal's colour on the decal."""
        nearest = self.part_distances(points).argmin(dim=-1)  # (N,)
        palette = torch.tensor([COLOUR_RGB[p.colour] for p in self.primitives],
                               device=points.device, dtype=points.dtype)  # (P, 3)
        colour = palette[nearest]
        decal = torch.tensor(COLOUR_RGB[self.feature.colour], device=points.device,
                             dtype=points.dtype)
        on_decal = self._feature_mask(points, nearest)
        return torch.where(on_decal[:, None], decal.expand_as(colour), colour)


def _front_area(kind: str, half: tuple[float, float, float]) -> float:
    """Area of a part's silhouette seen from the front (along -x)."""
    _, hy, hz = half
    if kind == "ball":
        return math.pi * hy * hy
    if kind == "cone":
        return 2.0 * hy * hz
    return 4.0 * hy * hz


def _decal_placement(prim: Primitive) -> tuple[tuple[float, float], float]:
    """Centre (y, z) and radius of the decal on a part's front: centred, low on a cone."""
    _, y, z = prim.position
    _, hy, hz = prim.half
    if prim.kind == "cone":  # lower, where the cone is wide: its radius there is 0.725 hy
        return (y, z - 0.45 * hz), 0.45 * min(hy, hz)
    return (y, z), DECAL_SCALE * min(hy, hz)


def _layout_parts(layout: Layout, halves: list[tuple[float, float, float]]) -> list[tuple]:
    """Positions of parts with the given half extents, resting on z = 0 (before centring)."""
    positions = []
    if layout == "side":
        (_, hy0, hz0), (_, hy1, hz1) = halves
        positions = [(0.0, -(0.5 * SIDE_GAP + hy0), hz0), (0.0, 0.5 * SIDE_GAP + hy1, hz1)]
    else:  # single or stack: each part sits on the one below, sunk a little
        top = 0.0
        for i, (_, _, hz) in enumerate(halves):
            z = top + hz - (STACK_SINK * hz if i > 0 else 0.0)
            positions.append((0.0, 0.0, z))
            top = z + hz
    return positions


def build_object(
    layout: Layout,
    kinds: tuple[Kind, ...],  # bottom to top (stack) or -y to +y (side)
    colours: tuple[str, ...],
    feature_shape: str = "disc",
    feature_colour: str | None = None,  # None: the colour most unlike the front part's
    proportions: tuple[tuple[float, float], ...] | None = None,  # per part (width, height) x
    seed: int = 0,
) -> ToyObject:
    """Lay out, centre and scale the parts of one object, place its decal and caption it."""
    if len(kinds) != len(colours) or any(k not in KINDS for k in kinds):
        raise ValueError(f"bad parts {kinds} {colours}")
    if len(set(colours)) != len(colours):
        raise ValueError(f"parts need distinct colours, got {colours}")
    if feature_shape not in DECAL_SHAPES:
        raise ValueError(f"unknown feature shape {feature_shape!r}")
    # 1. part sizes: canonical, shrinking up a stack, times optional proportions (a ball stays
    #    round: its width factor applies to every axis)
    halves = []
    for i, kind in enumerate(kinds):
        hx, hy, hz = CANONICAL_HALF[kind]
        s = STACK_SHRINK ** i if layout == "stack" else 1.0
        w, h = proportions[i] if proportions is not None else (1.0, 1.0)
        h = w if kind == "ball" else h
        halves.append((hx * s * w, hy * s * w, hz * s * h))
    # 2. positions, then centre the bounding box on the origin and scale it into the sphere
    positions = _layout_parts(layout, halves)
    lo = [min(p[a] - h[a] for p, h in zip(positions, halves)) for a in range(3)]
    hi = [max(p[a] + h[a] for p, h in zip(positions, halves)) for a in range(3)]
    centre = [(a + b) / 2 for a, b in zip(lo, hi)]
    scale = OBJECT_RADIUS / math.dist(lo, hi) * 2.0
    prims = tuple(
        Primitive(kind=k, colour=c,
                  half=tuple(scale * x for x in h),
                  position=tuple(scale * (x - m) for x, m in zip(p, centre)))
        for k, c, h, p in zip(kinds, colours, halves, positions))
    # 3. the decal goes on the part with the largest front view (the first on ties)
    areas = [_front_area(p.kind, p.half) for p in prims]
    part = max(range(len(prims)), key=lambda i: (areas[i], -i))
    if feature_colour is None:
        base = COLOUR_RGB[colours[part]]
        free = [c for c in COLOURS if c not in colours]
        feature_colour = max(free, key=lambda c: math.dist(COLOUR_RGB[c], base))
    if feature_colour in colours:
        raise ValueError(f"feature colour {feature_colour!r} is a part's colour")
    decal_centre, decal_size = _decal_placement(prims[part])
    feature = FrontFeature(shape=feature_shape, colour=feature_colour, part=part,
                           centre=decal_centre, size=decal_size)
    caption = object_caption(layout, list(zip(colours, kinds)))
    return ToyObject(primitives=prims, layout=layout, feature=feature, caption=caption, seed=seed)


def sample_object(rng: random.Random, vary: bool = False) -> ToyObject:
    """One random object. ``vary`` also draws proportions and the decal's shape and colour.

    Without ``vary`` an object is determined by its caption (canonical proportions, a disc decal
    in the colour most unlike its front part): the world's objects. With it, objects differ from
    the caption's canonical one in ways the caption cannot say: subjects.
    """
    # 1. layout and parts: stacks rest on boxes and cylinders, colours are distinct
    layouts, counts, weights = zip(*LAYOUT_WEIGHTS)
    i = rng.choices(range(len(layouts)), weights=weights)[0]
    layout, n = layouts[i], counts[i]
    if layout == "stack":
        kinds = tuple(rng.choice(STACK_BASES) for _ in range(n - 1)) + (rng.choice(KINDS),)
    else:
        kinds = tuple(rng.choice(KINDS) for _ in range(n))
    colours = tuple(rng.sample(PART_COLOURS, n))
    obj = build_object(layout, kinds, colours, seed=rng.randrange(2**31))
    # 2. subjects: new proportions, decal shape and colour (the caption stays)
    return variant(obj, rng) if vary else obj


def enumerate_world(n: int = 120, seed: int = 0) -> tuple[ToyObject, ...]:
    """The world: ``n`` objects with distinct captions, the same for the same ``seed``."""
    rng = random.Random(seed)
    objects: list[ToyObject] = []
    seen: set[str] = set()
    for _ in range(100 * n):
        if len(objects) == n:
            break
        obj = sample_object(rng)
        if obj.caption not in seen:
            seen.add(obj.caption)
            objects.append(obj)
    if len(objects) < n:
        raise ValueError(f"could not find {n} distinct objects")
    return tuple(objects)


def variant(obj: ToyObject, rng: random.Random) -> ToyObject:
    """Another instance with ``obj``'s caption: new proportions and a new decal shape and colour."""
    kinds = tuple(p.kind for p in obj.primitives)
    colours = tuple(p.colour for p in obj.primitives)
    proportions = tuple((rng.uniform(0.75, 1.3), rng.uniform(0.75, 1.3)) for _ in kinds)
    shape = rng.choice(DECAL_SHAPES)
    feature_colour = rng.choice([c for c in COLOURS if c not in colours])
    return build_object(obj.layout, kinds, colours, feature_shape=shape, feature_colour=feature_colour,
                        proportions=proportions, seed=rng.randrange(2**31))
