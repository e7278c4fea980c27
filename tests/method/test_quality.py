"""The weight-free quality signal (db3d/method/quality.py) and ASHA on it: a constructed case where the
trial with the larger loss weight fits the true object, the other a wrong one at a tiny weight.

The Ray test starts a local Ray in this process (address="local", 2 CPUs, no dashboard) and shuts
it down; RAY_AUTH_MODE is set explicitly.
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

import pytest
import torch

from db3d.core.cameras import orbit_cameras
from db3d.core.config import compose
from db3d.distributed.spec import SweepError, load_spec, resolve_metric
from db3d.method.fit import ReconTerm, fit_nerf
from db3d.method.quality import (
    ProbeSettings,
    QualityProbe,
    available_signals,
    term_weights,
)
from db3d.toyworld.render import render_object
from db3d.toyworld.subjects import ground_truth, make_subjects
from db3d.toyworld.truth import truth_for

RES, STEPS, EVERY = 16, 16, 2
SETTINGS = ProbeSettings(views=4, resolution=RES)


@pytest.fixture(scope="module")
def toys(tmp_path_factory) -> list[Path]:
    """Two ToyWorld subjects (different objects), written once."""
    return make_subjects(tmp_path_factory.mktemp("toys"), n=2, captures=2, seed=1)


def _cfg(*extra: str):
    return compose(["preset=smoke", f"nerf.checkpoint_every={EVERY}", f"nerf.steps={STEPS}", "nerf.lambda_opacity=0", "nerf.lambda_distortion=0",
                    "nerf.lambda_orientation=0", "method.lambda_sds=0", *extra])


def _views(obj, n: int = 6) -> tuple[torch.Tensor, object]:
    """Training views of obj (V, 3, RES, RES) at orbit cameras between the probe's views."""
    cams = orbit_cameras(n, 15.0, 1.75, 50.0, RES, azimuth_offset_deg=30.0)
    return render_object(obj, cams).rgb.permute(0, 3, 1, 2).contiguous(), cams


def _fit(out: Path, cfg, target_obj, weight: float, on_progress=None):
    images, cams = _views(target_obj)
    recon = ReconTerm(images, cams, weight=weight, p=2, views_per_step=2)
    return fit_nerf(out, "k", cfg.nerf, RES, STEPS, 0, torch.device("cpu"), recon=recon, on_progress=on_progress)


# --- the probe ---------------------------------------------------------------------------------
def test_signals_of_a_toyworld_subject_and_the_unweighted_fallback(toys, tmp_path):
    cfg = _cfg("method.lambda_recon=4.0", "metrics.clip_models=[]", "metrics.dino=false")
    signals = available_signals(cfg, truth_for(toys[0]))
    assert signals == {"quality.toy.psnr": "max", "quality.toy.psnr_back": "max", "quality.loss.recon": "min"}
    assert "quality.toy.psnr" not in available_signals(cfg, truth_for(tmp_path))  # no ground truth: no PSNR
    assert term_weights(cfg) == {"recon": 4.0}
    probe = QualityProbe(cfg, truth_for(toys[0]), "a sks toy", SETTINGS)
    seen = []
    _fit(tmp_path / "fit", cfg, ground_truth(toys[0]), 4.0, lambda s, losses, field: seen.append(
        (s, losses, probe(s, losses, field))))
    assert [s for s, _, _ in seen] == list(range(EVERY, STEPS + 1, EVERY))
    for _, losses, q in seen:
        assert math.isclose(q["quality.loss.recon"], losses["recon"] / 4.0)  # the weight divided out
        assert 0 < q["quality.toy.psnr"] < 60 and math.isfinite(q["quality.toy.psnr_back"])
    assert seen[-1][2]["quality.toy.psnr"] > seen[0][2]["quality.toy.psnr"]  # fitting the truth improves it
    assert seen[-1][2]["quality.probe_seconds"] > seen[0][2]["quality.probe_seconds"] > 0


def test_a_probed_fit_is_the_same_fit(toys, tmp_path):
    """The probe renders without jitter and never draws from the fit's generator."""
    from db3d.nerf.io import load_field

    cfg = _cfg("method.lambda_recon=1.0")
    probe = QualityProbe(cfg, truth_for(toys[0]), "a sks toy", SETTINGS)
    a = _fit(tmp_path / "a", cfg, ground_truth(toys[0]), 1.0, probe)
    b = _fit(tmp_path / "b", cfg, ground_truth(toys[0]), 1.0, None)
    fa, fb = load_field(a.field_file, "cpu").state_dict(), load_field(b.field_file, "cpu").state_dict()
    assert fa.keys() == fb.keys() and all(torch.equal(fa[k], fb[k]) for k in fa)


def test_clip_signals_with_random_weights(tmp_path):
    """CLIP-T / CLIP-I / DINO on the probe views (random weights here: the machinery only)."""
    from db3d.nerf.field import field_config
    from db3d.nerf import NeRFField

    cfg = compose(["preset=smoke", "metrics.weights=random"])
    signals = available_signals(cfg, truth_for(tmp_path))
    assert {"quality.clip_t.ViT-B-32", "quality.clip_i.ViT-B-32", "quality.dino"} <= set(signals)
    photos = torch.rand(2, 3, 32, 32)
    probe = QualityProbe(cfg, truth_for(tmp_path), "a sks dog", SETTINGS, subject_images=photos)
    q = probe(2, {"sds": 3.0, "recon": 2.0}, NeRFField(field_config(cfg.nerf)))
    for k in ("quality.clip_t.ViT-B-32", "quality.clip_i.ViT-B-32", "quality.dino"):
        assert -1.0 <= q[k] <= 1.0, (k, q)
    assert q["quality.loss.sds"] == 3.0 / cfg.method.lambda_sds and "quality.toy.psnr" not in q


# --- the sweep's metric ------------------------------------------------------------------------
def _spec(tmp_path: Path, body: str):
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "s.yaml"
    path.write_text("name: s\nsubjects: {generated: 1}\n" + body)
    return load_spec(str(path))


def test_the_scheduler_metric_is_what_the_sweep_file_names(toys, tmp_path):
    cfg = _cfg("metrics.clip_models=[]", "metrics.dino=false")
    toy = [(cfg, str(toys[0])), (cfg, str(toys[1]))]
    asha = "scheduler: {asha: {grace_period: 1, max_t: 10}}\n"
    assert resolve_metric(_spec(tmp_path, asha), toy) == ("quality.toy.psnr", "max")  # the default: quality
    assert resolve_metric(_spec(tmp_path, asha + "metric: quality.loss.recon\n"), toy) == ("quality.loss.recon", "min")
    assert resolve_metric(_spec(tmp_path, asha + "metric: quality.toy.psnr_back\nmode: max\n"), toy)[0] == \
        "quality.toy.psnr_back"
    with pytest.raises(SweepError, match="higher-is-better"):
        resolve_metric(_spec(tmp_path, asha + "metric: quality.toy.psnr\nmode: min\n"), toy)


def test_a_sweep_naming_an_unavailable_metric_fails(toys, tmp_path):
    cfg = _cfg("metrics.clip_models=[]", "metrics.dino=false")
    plain = [(cfg, str(tmp_path))]  # no ground truth, no CLIP weights
    asha = "scheduler: {asha: {grace_period: 1, max_t: 10}}\n"
    with pytest.raises(SweepError, match="quality.toy.psnr cannot be computed"):
        resolve_metric(_spec(tmp_path, asha + "metric: quality.toy.psnr\n"), plain + [(cfg, str(toys[0]))])
    with pytest.raises(SweepError, match="none of"):  # no default quality metric either
        resolve_metric(_spec(tmp_path, asha), plain)
    with pytest.raises(SweepError, match="only quality"):  # a row column exists only at the end
        resolve_metric(_spec(tmp_path, asha + "metric: metric.toy.psnr.all\n"), [(cfg, str(toys[0]))])
    short = "scheduler: {asha: {grace_period: 1, max_t: 8}}\n"  # 8 reports (16 steps / 2): every trial stopped
    with pytest.raises(SweepError, match="max_t"):
        resolve_metric(_spec(tmp_path, short), [(cfg, str(toys[0]))])


# --- ASHA on the signal ------------------------------------------------------------------------
def _asha_run(tmp_path: Path, toys, metric_line: str) -> dict:
    """Two trials, run in order: `heavy` (lambda_recon 100, fits the true object) then `light`
    (lambda_recon 0.01, fits another object: a far smaller weighted loss, a worse render).
    Returns {name: (last nerf_step, last result)} and the scheduler's metric."""
    import ray
    from ray import tune

    from db3d.distributed.sweep import tune_setup
    from db3d.distributed.trial import Reporter

    spec = _spec(tmp_path, f"scheduler: {{asha: {{grace_period: 1, max_t: 100, reduction_factor: 2}}}}\n{metric_line}")
    cfg0 = _cfg("metrics.clip_models=[]", "metrics.dino=false")
    metric, mode = resolve_metric(spec, [(cfg0, str(toys[0]))])
    sweep = {"metric": metric, "mode": mode}
    truth, other = str(toys[0]), str(toys[1])

    def trainable(config):
        t = config["trial"]
        cfg = _cfg(f"method.lambda_recon={t['weight']}", "metrics.clip_models=[]", "metrics.dino=false")
        probe = QualityProbe(cfg, truth_for(truth), "a sks toy", SETTINGS)  # always scored against the truth
        _fit(Path(config["out"]) / t["name"], cfg, ground_truth(t["target"]), t["weight"], Reporter(probe, {}))

    trials = [{"name": "heavy", "weight": 100.0, "target": truth}, {"name": "light", "weight": 0.01, "target": other}]
    _, scheduler, tmetric, tmode = tune_setup(spec, sweep)
    os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import tests/
    ray.init(address="local", num_cpus=2, include_dashboard=False)
    try:
        grid = tune.Tuner(tune.with_resources(trainable, {"cpu": 1}),
                          param_space={"out": str(tmp_path / "fits"), "trial": tune.grid_search(trials)},
                          tune_config=tune.TuneConfig(scheduler=scheduler, metric=tmetric, mode=tmode,
                                                      max_concurrent_trials=1),
                          run_config=tune.RunConfig(storage_path=str(tmp_path / "ray"), verbose=0)).fit()
        out = {r.config["trial"]["name"]: r.metrics for r in grid}
    finally:
        ray.shutdown()
    return {"metric": (tmetric, tmode, scheduler._metric), **out}


def test_a_trial_with_larger_loss_weights_but_better_quality_survives_asha(toys, tmp_path):
    os.environ["RAY_AUTH_MODE"] = "disabled"
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    run = _asha_run(tmp_path / "q", toys, "metric: quality.toy.psnr\n")
    assert run["metric"] == (None, None, "quality.toy.psnr")  # ASHA's metric is the sweep file's
    heavy, light = run["heavy"], run["light"]
    assert heavy["nerf_loss"] > 100 * light["nerf_loss"]  # the weighted loss ranks heavy far worse...
    assert heavy["quality.toy.psnr"] > light["quality.toy.psnr"]  # ...its render is better
    assert heavy["nerf_step"] == STEPS and light["nerf_step"] < STEPS  # ASHA on quality keeps heavy, stops light
    # the weighted total would have kept the worse trial (light reaches the end)
    control = _asha_run(tmp_path / "l", toys, "metric: nerf_loss\n")
    assert control["metric"][2] == "nerf_loss" and control["light"]["nerf_step"] == STEPS
