"""Configuration: presets carry the paper's values; bad input fails naming the field."""

from __future__ import annotations

import pytest

from db3d.core.config import ConfigError, RunConfig, compose, to_flat_dict, to_yaml


def test_paper_preset_carries_the_papers_values():
    cfg = compose(["preset=paper"])
    assert isinstance(cfg, RunConfig)
    db = cfg.dreambooth
    assert (db.partial_steps, db.full_steps, db.multiview_steps) == (150, 800, 150)
    assert cfg.render.resolution == 64 and cfg.sds.guidance_scale == 100.0 and cfg.pseudo.n_views == 20


def test_smoke_preset_and_groups():
    cfg = compose(["preset=smoke", "backbone=tiny-if", "method=dreambooth_fusion", "dreambooth.mode=lora"])
    assert cfg.dreambooth.full_steps < 10 and cfg.backbone.kind == "tiny-if"
    assert cfg.method.name == "dreambooth_fusion" and cfg.dreambooth.mode == "lora"
    assert compose(["preset=smoke", "method=latent_nerf"]).method.name == "latent_nerf"
    # a command-line key wins over the preset
    assert compose(["preset=smoke", "dreambooth.full_steps=7"]).dreambooth.full_steps == 7


@pytest.mark.parametrize("override, field", [
    (["nonsense_key=1"], "nonsense_key"),
    (["dreambooth.partial_steps=-1"], "dreambooth.partial_steps"),
    (["dreambooth.full_steps=abc"], "dreambooth.full_steps"),
    (["sds.guidance_scale=0"], "sds.guidance_scale"),
    (["sds.guidance_scale=-3"], "sds.guidance_scale"),
    (["pseudo.t_pseudo=1.5"], "pseudo.t_pseudo"),
    (["pseudo.t_pseudo=0"], "pseudo.t_pseudo"),
    (["backbone.kind=dalle"], "backbone.kind"),
    (["backbone=dalle"], "backbone"),
    (["backbone=sd", "backbone.model="], "backbone.model"),
    (["dreambooth.mode=lora", "dreambooth.train_text_encoder=true"], "dreambooth.train_text_encoder"),
    (["dreambooth.identifier=two words"], "dreambooth.identifier"),
    (["backbone=tiny-if", "method=latent_nerf"], "latent space"),
    (["nerf.distance_range=[2,1]"], "nerf.distance_range"),
    (["nerf.encoding=cuda"], "nerf.encoding"),
    (["sds.t_max_end=0.99"], "sds.t_max_end"),
    (["nerf.occupancy_every=0"], "nerf.occupancy_every"),
    (["nerf.occupancy_threshold=1.5"], "nerf.occupancy_threshold"),
])
def test_invalid_values_fail_naming_the_field(override, field):
    with pytest.raises(ConfigError) as err:
        compose(override)
    assert field in str(err.value)


def test_every_problem_is_reported_at_once():
    with pytest.raises(ConfigError) as err:
        compose(["sds.guidance_scale=0", "pseudo.t_pseudo=2"])
    assert len(err.value.problems) == 2


def test_flat_dict_and_yaml_round_trip():
    cfg = compose(["preset=smoke"])
    flat = to_flat_dict(cfg)
    assert flat["dreambooth.partial_steps"] == cfg.dreambooth.partial_steps and flat["backbone.kind"] == "tiny-sd"
    text = to_yaml(cfg)
    assert "partial_steps: 2" in text and "guidance_scale: 7.5" in text
