"""ToyWorld: a procedural world of simple 3D objects with known shape, renders and captions.

``world``: objects (1-3 coloured primitives, stacked or side by side, a decal on the front) with
an SDF and albedo; ``render``: ground-truth renders from db3d cameras by sphere tracing;
``captions``: the caption vocabulary and view-dependent captions.
"""

from db3d.toyworld.captions import (
    COLOURS,
    KINDS,
    PART_COLOURS,
    VIEW_WORDS,
    camera_captions,
    object_caption,
    view_captions,
    vocabulary,
)
from db3d.toyworld.render import ToyRender, render_object, sdf_normals, sphere_trace
from db3d.toyworld.world import (
    COLOUR_RGB,
    FrontFeature,
    Primitive,
    ToyObject,
    build_object,
    enumerate_world,
    sample_object,
)

__all__ = [
    "COLOURS",
    "COLOUR_RGB",
    "KINDS",
    "PART_COLOURS",
    "VIEW_WORDS",
    "FrontFeature",
    "Primitive",
    "ToyObject",
    "ToyRender",
    "build_object",
    "camera_captions",
    "enumerate_world",
    "object_caption",
    "render_object",
    "sample_object",
    "sdf_normals",
    "sphere_trace",
    "view_captions",
    "vocabulary",
]
