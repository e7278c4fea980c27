"""`db3d sweep`'s own arguments (distributed/sweep.py: parse_args, through core's key_values): no Ray."""

from __future__ import annotations

import pytest

from db3d.distributed.spec import SweepError
from db3d.distributed.sweep import parse_args


def test_sweep_keys_dashed_or_not_and_the_rest_as_run_overrides_in_order():
    opts, overrides = parse_args(["sweep=s", "--out=o=1", "nerf.steps=4", "-gpu=1", "gpu", "preset=smoke"])
    assert opts == {"sweep": "s", "out": "o=1", "gpu": "1"}
    assert overrides == ["nerf.steps=4", "gpu", "preset=smoke"]


def test_no_reuse_is_reuse_false_in_its_place():
    assert parse_args(["sweep=s", "out=o", "reuse=true", "--no-reuse"])[0]["reuse"] == "false"
    assert parse_args(["sweep=s", "out=o", "--no-reuse", "reuse=true"])[0]["reuse"] == "true"  # the last wins
    with pytest.raises(SweepError, match="sweep=NAME_OR_PATH and out=DIR"):
        parse_args(["sweep=s", "nerf.steps=4"])


def test_workers_get_the_progress_folder_and_a_short_train_poll_unless_the_user_set_one(tmp_path, monkeypatch):
    from db3d.core.progress import PROGRESS_DIR_ENV
    from db3d.distributed.sweep import TRAIN_HEALTH_CHECK_ENV, worker_env

    monkeypatch.delenv(TRAIN_HEALTH_CHECK_ENV, raising=False)
    env = worker_env(tmp_path)
    assert env[PROGRESS_DIR_ENV] == str(tmp_path) and float(env[TRAIN_HEALTH_CHECK_ENV]) < 2.0  # Ray's default: 2 s
    monkeypatch.setenv(TRAIN_HEALTH_CHECK_ENV, "3")
    assert worker_env(tmp_path)[TRAIN_HEALTH_CHECK_ENV] == "3"


def test_a_trials_cache_is_the_sweeps_unless_its_overrides_name_one(tmp_path):
    """cache_dir=OUT/cache by default; a cache_dir in the sweep's overrides (one shared across sweeps)
    is kept, not overwritten."""
    from db3d.core.config import compose
    from db3d.distributed.trial import cache_override

    sweep = {"out": str(tmp_path / "o")}
    mine = tmp_path / "shared cache"
    for overrides, expected in ((["preset=smoke"], tmp_path / "o" / "cache"),
                                (["preset=smoke", f"cache_dir='{mine}'"], mine)):
        cfg = compose(overrides + cache_override(overrides, sweep))
        assert cfg.cache_dir == str(expected)
