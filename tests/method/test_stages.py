"""The method end to end: three methods, stage 2 from t_pseudo, stage reuse, resume, Parquet."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch

from db3d.cli.run import run
from db3d.core.config import compose
from db3d.core.data import resolve_subject
from db3d.core.synthetic import make_synthetic_subject
from db3d.method import fit as fit_module
from db3d.method.fit import ReconTerm, fit_nerf
from db3d.method.pseudo_views import t_pseudo_step
from db3d.method.stages import run_method
from db3d.models.backbones import Backbone

EXPORTS = ("turntable_rgb.mp4", "turntable_rgb.gif", "turntable_textureless.mp4", "turntable_textureless.gif",
           "mesh.glb", "mesh.obj", "nerf.safetensors", "final_views.png")


@pytest.fixture(scope="module")
def subject(tmp_path_factory):
    folder = make_synthetic_subject(tmp_path_factory.mktemp("subject") / "toy", n_images=3, seed=1)
    return resolve_subject(str(folder), class_noun="toy")


def _cfg(tmp_path, *extra, metrics: bool = False):
    return compose(["preset=smoke", f"cache_dir={tmp_path / 'cache'}", f"out={tmp_path / 'out'}",
                    f"metrics.enabled={str(metrics).lower()}", *extra])


def _artifact_dirs(out: Path) -> set[str]:
    """stage/key folders holding finished work (a done.json, or a DreamBooth checkpoint's)."""
    root = out / "artifacts"
    return {"/".join(p.relative_to(root).parts[:2]) for p in root.glob("*/*/**/done.json")}


@pytest.mark.parametrize("method, backbone", [("dreambooth3d", "tiny-sd"), ("dreambooth_fusion", "tiny-if"),
                                              ("latent_nerf", "tiny-sd")])
def test_each_method_end_to_end(method, backbone, subject, tmp_path):
    cfg = _cfg(tmp_path, f"method={method}", f"backbone={backbone}", metrics=True)
    result = run_method(cfg, subject, "a sks toy on a table", tmp_path / "out")
    # metrics computed inside the run, with random-weight models that say so
    assert result.metrics["metrics.weights"] == "random"
    for column in ("metric.r_precision.ViT-B-32.color", "metric.clip_t.ViT-B-32.textureless",
                   "metric.dino.dino_vits16.color"):
        assert column in result.metrics, column
    assert 0.0 <= result.metrics["metric.r_precision.ViT-B-32.color"] <= 1.0
    views = result.metrics["views"]  # per-view rows, renders saved beside them
    assert len(views) == 2 * cfg.metrics.n_views and all(Path(v["uri"]).exists() for v in views)
    assert {v["r_precision_hit"] for v in views} <= {0.0, 1.0}
    for name in EXPORTS:
        assert Path(result.exports[name]).stat().st_size > 0, name
    assert result.final.latent == (method == "latent_nerf")
    stages = {"dreambooth3d": {"dreambooth", "stage1", "stage2", "stage3_dreambooth", "stage3_nerf"},
              "dreambooth_fusion": {"dreambooth", "nerf"}, "latent_nerf": {"dreambooth", "nerf"}}[method]
    assert stages <= set(result.seconds)
    if method == "dreambooth3d":
        assert Path(result.exports["pseudo_views.png"]).exists()


def test_stage2_starts_from_t_pseudo_on_the_stage1_renders(subject, tmp_path, monkeypatch):
    seen = []
    real = Backbone.img2img

    def spy(self, images, cond, uncond, t_start, *args, **kwargs):
        seen.append((t_start, images.shape))
        return real(self, images, cond, uncond, t_start, *args, **kwargs)

    monkeypatch.setattr(Backbone, "img2img", spy)
    cfg = _cfg(tmp_path, "pseudo.t_pseudo=0.37", "pseudo.n_views=3")
    run_method(cfg, subject, "a sks toy", tmp_path / "out")
    assert [t for t, _ in seen] == [t_pseudo_step(0.37, 1000)] * 3 == [int(round(0.37 * 999))] * 3
    assert all(shape == (1, 3, 64, 64) for _, shape in seen)  # one 64 px render per view


def test_stage_reuse_recomputes_only_what_changed(subject, tmp_path):
    out = tmp_path / "out"
    run_method(_cfg(tmp_path), subject, "a sks toy", out)
    first = _artifact_dirs(out)
    assert {d.split("/")[0] for d in first} == {"dreambooth", "stage1", "stage2", "final"}
    # lambda_recon: only the final NeRF is new
    run_method(_cfg(tmp_path, "method.lambda_recon=0.25"), subject, "a sks toy", out)
    second = _artifact_dirs(out)
    assert {d.split("/")[0] for d in second - first} == {"final"} and len(second - first) == 1
    # t_pseudo: stage 2, the multi-view DreamBooth on its views, and the final NeRF are new; stage 1 is not
    run_method(_cfg(tmp_path, "pseudo.t_pseudo=0.8"), subject, "a sks toy", out)
    third = _artifact_dirs(out)
    assert sorted(d.split("/")[0] for d in third - second) == ["dreambooth", "final", "stage2"]


def test_stage1_steps_sets_the_length_of_stage1s_fit_alone(subject, tmp_path):
    import json

    out = tmp_path / "out"
    run_method(_cfg(tmp_path), subject, "a sks toy", out)  # smoke: nerf.steps=4
    first = _artifact_dirs(out)
    run_method(_cfg(tmp_path, "method.stage1_steps=4"), subject, "a sks toy", out)  # = nerf.steps: stage 1 reused
    second = _artifact_dirs(out)
    assert {d.split("/")[0] for d in second - first} == {"final"}  # (the final NeRF's key names the method config)
    run_method(_cfg(tmp_path, "method.stage1_steps=2"), subject, "a sks toy", out)
    new = _artifact_dirs(out) - second
    assert sorted(d.split("/")[0] for d in new) == ["dreambooth", "final", "stage1", "stage2"]
    steps = {d.split("/")[0]: json.loads((out / "artifacts" / d / "done.json").read_text())["steps"]
             for d in new if d.startswith(("stage1", "final"))}
    assert steps == {"stage1": 2, "final": 4}


class _Killed(Exception):
    pass


@pytest.mark.parametrize("occupancy", ["nerf.occupancy_every=3", "nerf.occupancy_resolution=0"])
def test_a_nerf_stage_killed_mid_way_resumes_to_the_same_result(tmp_path, monkeypatch, occupancy):
    """Killed at step 5 of 6 and resumed from step 4's state. With the occupancy grid updated at
    steps 0 and 3, the resumed fit must read the grid from the state (a fresh update at step 4 would
    differ); and without a grid."""
    cfg = _cfg(tmp_path, "nerf.steps=6", "nerf.checkpoint_every=2", occupancy)
    g = torch.Generator().manual_seed(0)
    images = torch.rand(3, 3, 16, 16, generator=g)
    from db3d.core.cameras import orbit_cameras

    recon = ReconTerm(images, orbit_cameras(3, 15.0, 1.75, 50.0, 16), weight=1.0, p=1)
    straight = fit_nerf(tmp_path / "a", "k", cfg.nerf, 16, 6, 0, torch.device("cpu"), recon=recon)
    calls = {"n": 0}
    real = fit_module.render_image

    def dies_at_step_5(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:
            raise _Killed
        return real(*args, **kwargs)

    monkeypatch.setattr(fit_module, "render_image", dies_at_step_5)
    with pytest.raises(_Killed):
        fit_nerf(tmp_path / "b", "k", cfg.nerf, 16, 6, 0, torch.device("cpu"), recon=recon)
    assert (tmp_path / "b" / "fit_state.pt").exists() and not (tmp_path / "b" / "done.json").exists()
    monkeypatch.setattr(fit_module, "render_image", real)
    resumed = fit_nerf(tmp_path / "b", "k", cfg.nerf, 16, 6, 0, torch.device("cpu"), recon=recon)
    from safetensors.torch import load_file

    a, b = load_file(straight.field_file), load_file(resumed.field_file)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_reconstruction_term_alone_fits_known_views(tmp_path):
    """fit_nerf's reconstruction path (stage 3's) on a constant-colour target: the error falls."""
    from db3d.core.cameras import orbit_cameras
    from db3d.nerf import render_views
    from db3d.nerf.io import load_field

    cfg = _cfg(tmp_path, "nerf.steps=40", "nerf.learning_rate=0.03")
    cams = orbit_cameras(4, 15.0, 1.75, 50.0, 16)
    target = torch.zeros(4, 3, 16, 16)
    target[:, 0] = 0.9  # red everywhere: the field's background/density must explain it
    recon = ReconTerm(target, cams, weight=1.0, p=2, views_per_step=2)
    ckpt = fit_nerf(tmp_path / "r", "k", cfg.nerf, 16, 40, 0, torch.device("cpu"), recon=recon)
    field = load_field(ckpt.field_file, "cpu")
    err = ((render_views(field, cams, n_samples=16).rgb.permute(0, 3, 1, 2) - target) ** 2).mean()
    assert err < 0.05, float(err)


def test_reconstruction_term_is_a_per_image_sum_like_sds(tmp_path):
    """The final NeRF's recon term grows with the pixel count (SDS's units, fit.py), so a given
    lambda_recon weighs it against SDS alike at any render resolution; a mean would not grow."""
    from db3d.core.cameras import orbit_cameras

    cfg = _cfg(tmp_path, "nerf.steps=1", "nerf.checkpoint_every=1")
    first = {}
    for side in (8, 16):
        target = torch.zeros(2, 3, side, side)  # black views: the initial field renders far from them
        recon = ReconTerm(target, orbit_cameras(2, 15.0, 1.75, 50.0, side), weight=0.5, p=1)
        fit_nerf(tmp_path / f"r{side}", "k", cfg.nerf, side, 1, 0, torch.device("cpu"), recon=recon,
                 on_progress=lambda step, losses, field, side=side: first.setdefault(side, losses["recon"]))
    assert 3.0 < first[16] / first[8] < 5.0, first  # 4x the pixels, ~4x the loss
    assert first[8] > 0.5 * 8 * 8 * 3 * 0.2, first  # a sum over 192 elements, each error >= ~0.2


def test_sparsity_term_empties_the_volume(tiny_sd, tmp_path):
    """nerf.lambda_sparsity pushes opacity down (against fog); off, the blob stays."""
    from db3d.core.cameras import orbit_cameras
    from db3d.method.fit import SDSTerm
    from db3d.nerf import render_views
    from db3d.nerf.io import load_field

    term = SDSTerm(backbone=tiny_sd, prompt="a sks toy", guidance_scale=7.5, t_min=0.02, t_max=0.98)
    opacity = {}
    for weight in (0.0, 1.0):
        cfg = _cfg(tmp_path, "nerf.steps=8", "nerf.learning_rate=0.03", f"nerf.lambda_sparsity={weight}")
        ckpt = fit_nerf(tmp_path / f"s{weight}", "k", cfg.nerf, 16, 8, 0, torch.device("cpu"), sds=term)
        field = load_field(ckpt.field_file, "cpu")
        opacity[weight] = float(render_views(field, orbit_cameras(4, 15.0, 1.75, 50.0, 16), n_samples=16).opacity.mean())
    assert opacity[1.0] < 0.5 * opacity[0.0], opacity


def test_db3d_run_writes_a_parquet_row_and_a_failed_row_on_error(subject, tmp_path, monkeypatch):
    cfg = _cfg(tmp_path, f"subject={subject.path}", "class_noun=toy")
    run(cfg)
    df = pd.read_parquet(tmp_path / "out" / "summary.parquet")
    assert len(df) == 1 and df.loc[0, "status"] == "ok" and df.loc[0, "method"] == "dreambooth3d"
    assert df.loc[0, "config.dreambooth.partial_steps"] == 2 and df.loc[0, "seconds.total"] > 0
    assert Path(df.loc[0, "uri.mesh.glb"]).exists()
    # each NeRF stage's last logged loss terms and gradient norms, and stage 1's coverage
    for col in ("nerf.stage1.grad_norm.sds", "nerf.final.grad_norm.sds", "nerf.final.loss.recon",
                "nerf.final.grad_norm.opacity", "stage1.opacity_edge"):
        assert df.loc[0, col] >= 0, col
    assert df.loc[0, "nerf.final.grad_norm.sds"] > 0 and not df.loc[0, "stage1.fog"]
    import db3d.cli.run as run_module

    def broken(*a, **k):
        raise RuntimeError("boom")

    monkeypatch.setattr(run_module, "run_method", broken)
    with pytest.raises(RuntimeError):
        run(_cfg(tmp_path, f"subject={subject.path}", "class_noun=toy", f"out={tmp_path / 'out2'}"))
    df = pd.read_parquet(tmp_path / "out2" / "summary.parquet")
    assert df.loc[0, "status"] == "failed" and "boom" in df.loc[0, "error"]


def test_sds_t_max_anneals_over_the_stage(tiny_sd, tmp_path, monkeypatch):
    from db3d.method.fit import SDSTerm

    seen = []
    real = fit_module.sds_loss
    monkeypatch.setattr(fit_module, "sds_loss", lambda bb, x, c, u, g, t_range, *a, **k:
                        seen.append(t_range) or real(bb, x, c, u, g, t_range, *a, **k))
    cfg = _cfg(tmp_path, "nerf.steps=5")
    term = SDSTerm(backbone=tiny_sd, prompt="a sks toy", guidance_scale=7.5, t_min=0.02, t_max=0.98, t_max_end=0.5)
    fit_nerf(tmp_path / "n", "k", cfg.nerf, 16, 5, 0, torch.device("cpu"), sds=term)
    highs = [hi for _, hi in seen]
    assert highs[0] == pytest.approx(0.98) and highs == sorted(highs, reverse=True) and highs[-1] < 0.7


def _fake_pseudo_views(folder: Path, n: int = 2, res: int = 32):
    """A stage-2 folder as make_pseudo_views writes it: views/NN.png and cameras.json."""
    import json

    from PIL import Image

    from db3d.core.artifacts import PseudoViews

    (folder / "views").mkdir(parents=True)
    for i in range(n):
        Image.new("RGB", (res, res), (200, 40 * i, 90)).save(folder / "views" / f"{i:02d}.png")
    (folder / "cameras.json").write_text(json.dumps({"n_views": n, "elevation_deg": 15.0, "distance": 1.75,
                                                     "fov_y_deg": 50.0}))
    return PseudoViews(path=str(folder), key="pv", n_views=n, t_pseudo=0.5, stage1_opacity_mean=0.2,
                       stage1_opacity_edge=0.01)


@pytest.mark.parametrize("mode", ["full", "lora"])
def test_d_multi_starts_from_d_partials_weights(subject, tmp_path, monkeypatch, mode):
    """Stage 3's multi-view DreamBooth continues D_partial (the paper), not the base model: with
    the optimiser's step disabled for that run, D_multi's UNet equals D_partial's, tensor by tensor."""
    from db3d.core.data import load_subject_images
    from db3d.method.personalize import backbone_for, personalize
    from db3d.method.stages import Context, multiview_dreambooth
    from db3d.models.backbones import build_backbone

    cfg = _cfg(tmp_path, f"dreambooth.mode={mode}", "dreambooth.prior_preservation=false")
    bb = build_backbone(cfg.backbone)
    images, _ = load_subject_images(subject, cfg.backbone.resolution)
    store = tmp_path / "store"
    db = personalize(cfg, bb, subject, images, store)
    ctx = Context(cfg=cfg, backbone=bb, subject=subject, images=images, prompt="a sks toy", store=store)
    monkeypatch.setattr(torch.optim.AdamW, "step", lambda self, *a, **k: None)
    d_multi = multiview_dreambooth(ctx, db.partial, _fake_pseudo_views(tmp_path / "pv"))
    assert d_multi.key != db.partial.key and d_multi.step == cfg.dreambooth.multiview_steps
    partial = backbone_for(bb, db.partial).unet.state_dict()
    multi = backbone_for(bb, d_multi).unet.state_dict()
    base = bb.unet.state_dict()
    assert partial.keys() == multi.keys()
    assert all(torch.equal(partial[k], multi[k]) for k in partial)
    # and D_partial is not the base model: trained full weights, or trained LoRA factors
    if mode == "full":
        assert any(not torch.equal(partial[k], base[k]) for k in base)
    else:
        lora_b = [k for k in partial if "lora_B" in k]
        assert lora_b and any(partial[k].abs().sum() > 0 for k in lora_b)


def test_stage2_key_names_the_sampler_steps(subject, tmp_path):
    """img2img takes a share of backbone.sample_steps: changing it must not reuse stale pseudo views."""
    keys = []
    for steps in (4, 6):
        cfg = _cfg(tmp_path / str(steps), "backbone=tiny-sd", f"backbone.sample_steps={steps}",
                   "dreambooth.prior_preservation=false")
        result = run_method(cfg, subject, "a sks toy", tmp_path / str(steps) / "out")
        keys.append(result.keys["stage2"])
        assert result.diagnostics["stage1.opacity_edge"] >= 0.0 and "stage1.fog" in result.diagnostics
    assert keys[0] != keys[1]


@pytest.mark.parametrize("on_fog", ["fallback", "fail"])
def test_a_foggy_stage1_never_becomes_stage3s_target(subject, tmp_path, on_fog):
    """fog_edge_opacity=0 calls any stage-1 NeRF fog: fallback fits SDS from D_full (the row says
    so, and the fusion baseline's NeRF is the same artifact); fail stops with the measurement."""
    from db3d.method.stages import FoggyStage1

    cfg = _cfg(tmp_path, "backbone=tiny-sd", "pseudo.fog_edge_opacity=0.0", f"pseudo.on_fog={on_fog}",
               "dreambooth.prior_preservation=false")
    if on_fog == "fail":
        with pytest.raises(FoggyStage1, match="border opacity"):
            run_method(cfg, subject, "a sks toy", tmp_path / "out")
        return
    result = run_method(cfg, subject, "a sks toy", tmp_path / "out")
    assert result.diagnostics["stage1.fog"] is True
    assert result.diagnostics["stage3.fallback"] == "dreambooth_fusion"
    assert "stage3_dreambooth" not in result.seconds  # no fine-tune on noise
    fusion = run_method(_cfg(tmp_path, "backbone=tiny-sd", "method=dreambooth_fusion",
                             "dreambooth.prior_preservation=false"), subject, "a sks toy", tmp_path / "out")
    assert fusion.final.key == result.final.key


def test_truth_scoring_keeps_the_worlds_renders_in_the_runs_cache_folder(tmp_path, monkeypatch):
    """The world's scoring renders are the same for every run: they go to cache_dir (kept across
    out folders, like class images), not to the run's artifact store."""
    from types import SimpleNamespace

    from db3d.core.artifacts import NerfCheckpoint
    from db3d.method import stages

    seen = []

    class Truth:  # a GroundTruth that records where its shared renders would be kept
        def score_field(self, field_file, n_samples, device, compare_png=None, cache=None):
            seen.append(cache)
            return {"metric.toy.psnr.all": 1.0}

    final = NerfCheckpoint(path=str(tmp_path / "final"), key="k", steps=1)
    for cache_dir, env in ((str(tmp_path / "mine"), None), ("", str(tmp_path / "env"))):
        if env:
            monkeypatch.setenv("DB3D_CACHE", env)
        cfg = compose(["preset=smoke", f"cache_dir={cache_dir}", f"out={tmp_path / 'out'}"])
        ctx = SimpleNamespace(cfg=cfg, store=tmp_path / "out" / "artifacts")
        assert stages.truth_metrics(ctx, final, Truth(), tmp_path / "c.png") == {"metric.toy.psnr.all": 1.0}
    assert seen == [tmp_path / "mine", tmp_path / "env"]
