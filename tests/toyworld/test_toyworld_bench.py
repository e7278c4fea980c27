"""ToyWorld subjects and ground-truth scores: constructed cases with known answers."""

from __future__ import annotations

import random

import pytest
import torch

from db3d.core.cameras import cameras_at
from db3d.core.data import inspect_subject, resolve_subject
from db3d.toyworld import scores
from db3d.toyworld.evaluate import score_cameras, score_renders
from db3d.toyworld.render import render_object
from db3d.toyworld.subjects import (
    CAPTURE_ARC,
    from_json,
    ground_truth,
    make_subjects,
    to_json,
)
from db3d.toyworld.world import build_object, sample_object

N, RES = 8, 32


def _subject(decal="yellow"):
    return build_object("stack", ("box", "ball"), ("blue", "red"), feature_shape="square", feature_colour=decal,
                        proportions=((1.2, 0.8), (0.9, 0.9)))


@pytest.mark.parametrize("decal", ["yellow", "white"])  # a white decal on a white background
def test_perfect_render_scores_max_and_ranks_first(decal):
    obj = _subject(decal)
    gt = render_object(obj, score_cameras(N, RES)).rgb
    s = score_renders(gt, obj, N, RES, world_size=20)
    assert s["metric.toy.psnr.all"] > 90 and s["metric.toy.psnr.back"] > 90  # identical images (capped MSE)
    assert abs(s["metric.toy.ssim.all"] - 1.0) < 1e-6
    assert s["metric.toy.retrieval_rank"] == 1 and s["metric.toy.retrieval_candidates"] == 21
    assert s["metric.toy.janus"] < 0.01


@pytest.mark.parametrize("decal", ["yellow", "white"])
def test_front_on_both_sides_scores_high_janus(decal):
    # renders of the object turned by 180 degrees: every back view shows the front and its decal
    obj = _subject(decal)
    cams = score_cameras(N, RES)
    turned = cameras_at(cams.azimuth_deg + 180.0, cams.elevation_deg, 1.75, 50.0, RES)
    r = render_object(obj, turned)
    pred = r.rgb
    s = score_renders(pred, obj, N, RES, world_size=20, alpha=r.alpha)
    assert s["metric.toy.janus"] > 0.5
    assert s["metric.toy.psnr.back"] < 40
    # a blank (all white) prediction has neither decal nor object
    blank = score_renders(torch.ones_like(pred), obj, N, RES, world_size=20)
    assert blank["metric.toy.janus"] == 0.0
    assert blank["metric.toy.psnr.all"] < s["metric.toy.psnr.all"] + 20


def test_retrieval_rank_counts_closer_candidates():
    a = torch.zeros(2, 4, 4, 3)
    cands = [a + 0.3, a + 0.1, a + 0.2, a + 0.5]  # index 0 is the true one; 2 candidates are closer
    assert scores.retrieval_rank(a, cands, 0) == 3
    assert scores.retrieval_rank(a, cands, 1) == 1


def test_back_half_and_colour_mask():
    assert scores.back_half(torch.tensor([0.0, 45.0, 90.0, 135.0, 180.0, 270.0, 300.0])).tolist() == [
        False, False, False, True, True, False, False]
    img = torch.tensor([[[[0.95, 0.85, 0.10], [0.5, 0.45, 0.05], [0.15, 0.30, 0.85], [1.0, 1.0, 1.0]]]])
    assert scores.colour_mask(img, (0.95, 0.85, 0.10)).tolist() == [[[True, True, False, False]]]


def test_subjects_are_ordinary_subject_folders(tmp_path):
    folders = make_subjects(tmp_path, n=2, captures=4, seed=3)
    for folder in folders:
        report = inspect_subject(folder)
        assert report.ok and report.class_noun == "toy" and len(report.files) == 4
        sub = resolve_subject(folder.name, str(tmp_path))
        assert sub.class_noun == "toy" and sub.templates
        obj = ground_truth(folder)
        assert obj is not None and from_json(to_json(obj)) == obj
    assert ground_truth(tmp_path) is None
    # the same seed writes the same subjects
    again = make_subjects(tmp_path / "again", n=2, captures=4, seed=3)
    assert [ground_truth(f) for f in again] == [ground_truth(f) for f in folders]
    assert (folders[0] / "00.png").read_bytes() == (again[0] / "00.png").read_bytes()


def test_captures_show_the_front_decal():
    obj = sample_object(random.Random(5), vary=True)
    cams = cameras_at(torch.tensor([-CAPTURE_ARC, 0.0, CAPTURE_ARC]), torch.tensor([0.0, 15.0, 30.0]), 1.75, 50.0, 48)
    coverage = render_object(obj, cams).feature.flatten(1).mean(-1)
    assert (coverage > 0.005).all()


@pytest.mark.slow
def test_bench_runs_end_to_end_and_tabulates(tmp_path):
    """`db3d toyworld bench` at a tiny size: ToyWorld subjects, a local Ray sweep, rows, a table."""
    import os
    import subprocess
    import sys

    from db3d.distributed.sink import read_results

    spec = tmp_path / "tiny.yaml"
    spec.write_text("""name: tinybench
overrides: [backbone=toy, preset=toy, nerf.steps=4, dreambooth.partial_steps=2, dreambooth.full_steps=2,
            dreambooth.multiview_steps=2, dreambooth.num_class_images=2, pseudo.n_views=2, backbone.sample_steps=2,
            export.turntable_frames=2, export.mesh_resolution=16]
prompts: ["a {0} {1}"]
grid:
  method: [dreambooth3d, dreambooth_fusion]
resources: {cpu: 1, gpu: 0}
max_concurrent: 2
""")
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1",
           "RAY_USAGE_STATS_ENABLED": "0"}
    out = tmp_path / "bench"
    proc = subprocess.run([sys.executable, "-m", "db3d.cli", "toyworld", "bench", f"out={out}", "subjects=1",
                           f"sweep={spec}", "num_cpus=2"], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = read_results(out / "results")
    assert len(rows) == 2 and set(rows["status"]) == {"ok"}
    assert set(rows["subject"].astype(str)) == {"toy00"} and set(rows["class_noun"]) == {"toy"}
    assert rows["metric.toy.psnr.all"].between(3, 60).all() and rows["metric.toy.retrieval_rank"].ge(1).all()
    assert (rows["metric.toy.retrieval_candidates"] == 121).all()
    table = (out / "bench.md").read_text()
    assert "| dreambooth3d | 1 |" in table and "| dreambooth_fusion | 1 |" in table
    assert (out / "subjects" / "toy00" / "toyworld.json").exists()
    trial_dirs = list((out / "trials").glob("*/exports/toy_compare.png"))
    assert len(trial_dirs) == 2


def test_toyworld_cli(tmp_path, capsys):
    from db3d.cli.main import main

    assert main(["toyworld", "subjects", f"out={tmp_path / 's'}", "n=1", "captures=4"]) == 0
    assert sorted(p.name for p in (tmp_path / "s" / "toy00").iterdir()) == ["00.png", "01.png", "02.png", "03.png",
                                                                            "toyworld.json"]
    assert main(["toyworld", "samples", f"out={tmp_path / 'g.png'}", "captions=2", "n=2", "steps=2"]) == 0
    assert (tmp_path / "g.png").exists() and len((tmp_path / "g.txt").read_text().splitlines()) == 2
    assert main(["toyworld", "subjects"]) == 2
    assert main(["toyworld", "train-prior", "stepz=1", "out=x"]) == 2
    assert main(["toyworld", "nope"]) == 2
    assert "unknown argument" in capsys.readouterr().err
