"""One NeRF config tree: the run's NeRFConfig is the one home of every default that the nerf
package's FieldConfig, ShadingConfig, HashGridEncoding and renderer share with it."""

from __future__ import annotations

import dataclasses
import inspect

import pytest

from db3d.core.config import NeRFConfig
from db3d.nerf import FieldConfig, HashGridEncoding, ShadingConfig, field_config, render_image, render_rays
from db3d.nerf.field import BACKGROUNDS, FROM_NERF_CONFIG
from db3d.nerf.shading import shading_config

NERF_FIELDS = {f.name for f in dataclasses.fields(NeRFConfig)}
FIELD_FIELDS = {f.name for f in dataclasses.fields(FieldConfig)}
SHADING_FIELDS = {f.name for f in dataclasses.fields(ShadingConfig)}


def _changed(value):
    """A valid value other than `value`, of its type."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1 if isinstance(value, int) else value * 0.5 + 0.125
    return {"torch": "tcnn", "linear": "gaussian", "finite_difference": "autograd"}[value]


def test_every_field_config_field_that_nerf_config_names_is_taken_from_it():
    shared = FIELD_FIELDS & NERF_FIELDS
    assert shared - {"background"} <= set(FROM_NERF_CONFIG), shared - set(FROM_NERF_CONFIG)
    assert set(FROM_NERF_CONFIG) <= FIELD_FIELDS and set(FROM_NERF_CONFIG.values()) <= NERF_FIELDS
    assert "background" in shared and set(BACKGROUNDS) == {"mlp", "random_solid", "white"}
    for name, source in FROM_NERF_CONFIG.items():  # each copied value reaches the field config
        value = _changed(getattr(NeRFConfig(), source))
        assert getattr(field_config(NeRFConfig(**{source: value})), name) == value, name


def test_field_config_defaults_cannot_drift_from_nerf_config():
    assert field_config(NeRFConfig()) == FieldConfig()  # every field, shared or not
    for name, source in FROM_NERF_CONFIG.items():
        assert getattr(FieldConfig(), name) == getattr(NeRFConfig(), source), name
    assert FieldConfig().background == BACKGROUNDS[NeRFConfig().background]


@pytest.mark.parametrize("background, kind, colour", [("mlp", "mlp", (1.0, 1.0, 1.0)),
                                                      ("random_solid", "random_solid", (1.0, 1.0, 1.0)),
                                                      ("white", "fixed", (1.0, 1.0, 1.0))])
def test_field_config_backgrounds_and_latent_fields(background, kind, colour):
    cfg = field_config(NeRFConfig(background=background))
    assert (cfg.background, cfg.background_color, cfg.color_channels) == (kind, colour, 3)
    latent = field_config(NeRFConfig(background=background), latent_channels=4)
    assert (latent.background, latent.background_color, latent.color_channels) == ("fixed", (0.0,) * 4, 4)
    with pytest.raises(ValueError, match="nerf.background='black'"):
        field_config(NeRFConfig(background="black"))


def test_shading_config_is_taken_from_nerf_config():
    shared = SHADING_FIELDS & NERF_FIELDS
    assert shared == {"p_albedo", "p_textureless", "p_lambertian"}
    assert shading_config(NeRFConfig()) == ShadingConfig()
    for name in shared:
        assert getattr(ShadingConfig(), name) == getattr(NeRFConfig(), name)
        value = _changed(getattr(NeRFConfig(), name))
        assert getattr(shading_config(NeRFConfig(**{name: value})), name) == value, name


def test_encoding_and_renderer_defaults_are_the_configs():
    enc = inspect.signature(HashGridEncoding.__init__).parameters
    field = FieldConfig()
    for name, own in (("n_levels", "n_levels"), ("features_per_level", "features_per_level"),
                      ("log2_hashmap_size", "log2_hashmap_size"), ("base_resolution", "base_resolution"),
                      ("max_resolution", "max_resolution"), ("implementation", "encoding_implementation")):
        assert enc[name].default == getattr(field, own), name
    shading = ShadingConfig()
    for fn in (render_rays, render_image):
        params = inspect.signature(fn).parameters
        assert params["n_samples"].default == NeRFConfig().n_samples
        assert (params["ambient"].default, params["diffuse"].default) == (shading.ambient, shading.diffuse)
