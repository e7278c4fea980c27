"""`db3d metrics`: recompute a finished run's metrics with other settings, rows rewritten in place."""

from __future__ import annotations

import pandas as pd

from db3d.cli import main as cli


def test_metrics_are_recomputed_from_the_saved_nerf(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(["run", "preset=smoke", "method=dreambooth_fusion", f"out={out}",
                     f"cache_dir={tmp_path / 'cache'}"]) == 0
    before = pd.read_parquet(out / "summary.parquet")
    assert before.loc[0, "metrics.n_views"] == 4 and len(pd.read_parquet(out / "views.parquet")) == 8
    assert cli.main(["metrics", str(out), "metrics.n_views=6", "metrics.dino=false"]) == 0
    after = pd.read_parquet(out / "summary.parquet")
    assert after.loc[0, "metrics.n_views"] == 6
    assert "metric.dino.dino_vits16.color" not in after.columns  # the old columns are replaced
    assert after.loc[0, "status"] == "ok" and after.loc[0, "seconds.total"] == before.loc[0, "seconds.total"]
    assert len(pd.read_parquet(out / "views.parquet")) == 12


def test_metrics_rejects_other_keys(tmp_path, capsys):
    assert cli.main(["metrics", str(tmp_path), "nerf.steps=3"]) == 2
    assert "metrics.*" in capsys.readouterr().err
