"""NeRF for score distillation: hash-grid field, shading, volume rendering in a sphere, losses."""

from db3d.nerf.encoding import HashGridEncoding, hash_grid_torch
from db3d.nerf.hash_layout import hash_grid_layout
from db3d.nerf.field import FieldConfig, FieldOutputs, NeRFField, field_config
from db3d.nerf.losses import (
    LinearSchedule,
    distortion_loss,
    opacity_entropy_loss,
    opacity_sparsity_loss,
    orientation_loss,
    reconstruction_loss,
)
from db3d.nerf.render import (
    ImageRender,
    RayRender,
    intersect_sphere,
    render_image,
    render_rays,
    render_views,
)
from db3d.nerf.shading import ShadingConfig, lambertian, sample_shading_mode, shade, shading_config

__all__ = [
    "FieldConfig",
    "FieldOutputs",
    "HashGridEncoding",
    "ImageRender",
    "LinearSchedule",
    "NeRFField",
    "RayRender",
    "ShadingConfig",
    "distortion_loss",
    "field_config",
    "hash_grid_layout",
    "hash_grid_torch",
    "intersect_sphere",
    "lambertian",
    "opacity_entropy_loss",
    "opacity_sparsity_loss",
    "orientation_loss",
    "reconstruction_loss",
    "render_image",
    "render_rays",
    "render_views",
    "sample_shading_mode",
    "shade",
    "shading_config",
]
