"""`db3d` CLI: check-data on the shared dataset, run on a generated subject, clean errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import db3d.cli.run
from db3d.cli import main as cli
from db3d.models import backbones


def test_check_data_lists_all_shared_subjects(shared_dataset, capsys):
    assert cli.main(["check-data", str(shared_dataset)]) == 0
    out = capsys.readouterr().out
    for name, cls in (("dog", "dog"), ("bear_plushie", "stuffed animal"), ("teapot", "teapot"), ("cat", "cat")):
        assert any(line.startswith(f"{name}:") and cls in line for line in out.splitlines()), name
    assert sum(1 for line in out.splitlines() if "images=" in line) == 26


def test_check_data_bad_folder_exits_nonzero_without_traceback(tmp_path):
    bad = tmp_path / "subject"
    bad.mkdir()
    (bad / "00.jpg").write_bytes(b"")
    (bad / "01.jpg").write_text("not an image")
    proc = subprocess.run([sys.executable, "-m", "db3d.cli", "check-data", str(bad)], capture_output=True, text=True)
    assert proc.returncode != 0
    assert "00.jpg" in proc.stdout + proc.stderr and "01.jpg" in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr


def _no_model_loads(monkeypatch):
    def fail(*a, **k):
        raise AssertionError("a model was loaded before the input was validated")

    monkeypatch.setattr(backbones, "build_backbone", fail)
    monkeypatch.setattr(db3d.cli.run, "build_backbone", fail)


@pytest.mark.parametrize("args, needle", [
    (["subject=/does/not/exist"], "does/not/exist"),
    (["prompt=a dog without the token"], "identifier"),
    (["pseudo.t_pseudo=3"], "pseudo.t_pseudo"),
    (["no_such_key=1"], "no_such_key"),
    (["metrics.weights=/no/clip/weights/here"], "/no/clip/weights/here"),
])
def test_run_rejects_bad_input_before_any_model_loads(args, needle, tmp_path, monkeypatch, capsys):
    _no_model_loads(monkeypatch)
    # nothing is written: the output folder is never created
    assert cli.main(["run", "preset=smoke", f"out={tmp_path / 'out'}", *args]) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_run_with_missing_real_weights_says_how_to_provide_them(tmp_path, capsys):
    rc = cli.main(["run", "preset=smoke", "backbone=sd", f"backbone.model={tmp_path}/no_weights",
                   f"out={tmp_path / 'out'}", f"cache_dir={tmp_path / 'cache'}"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "no_weights" in err and "huggingface-cli download" in err


def test_run_smoke_on_a_generated_subject_and_resume(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["run", "preset=smoke", f"out={out}", f"cache_dir={tmp_path / 'cache'}", "metrics.enabled=false"]
    assert cli.main(args) == 0
    for name in ("config.yaml", "summary.json", "summary.parquet"):
        assert (out / name).exists(), name
    summary = json.loads((out / "summary.json").read_text())
    assert summary["prompt"] == "a sks toy" and summary["class_noun"] == "toy"
    for name in ("turntable_rgb.mp4", "turntable_textureless.gif", "mesh.glb", "mesh.obj", "nerf.safetensors",
                 "final_views.png", "pseudo_views.png"):
        assert Path(summary["exports"][name]).exists(), name
    done = Path(summary["final"]["path"]) / "done.json"
    stamp = done.stat().st_mtime_ns
    # rerun with the same out: every stage is found by key, nothing is trained again
    assert cli.main(args) == 0
    assert done.stat().st_mtime_ns == stamp
    # the saved config is the resolved one
    assert "partial_steps: 2" in (out / "config.yaml").read_text()


# --- errors in the order a user needs them; --help everywhere; the nearest key -------------------
def _subject(tmp_path: Path) -> Path:
    from db3d.core.data import make_synthetic_subject

    return make_synthetic_subject(tmp_path / "subject", n_images=3, seed=0)


@pytest.mark.parametrize("case", ["config", "subject", "weights"])
def test_run_errors_come_config_then_subject_then_weights_one_line_each(case, tmp_path, monkeypatch, capsys):
    _no_model_loads(monkeypatch)
    args = {"config": ["nerf.stpes=10", "subject=/no/such/subject", "metrics.weights=/no/clip/weights"],
            "subject": ["subject=/no/such/subject", "metrics.weights=/no/clip/weights"],
            "weights": [f"subject={_subject(tmp_path)}", "class_noun=toy", "metrics.weights=/no/clip/weights"]}[case]
    assert cli.main(["run", "backbone=tiny-if", f"out={tmp_path / 'out'}", *args]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    expected = {"config": "did you mean nerf.steps=10?", "subject": "/no/such/subject",
                "weights": "/no/clip/weights"}[case]
    assert expected in err, err
    later = {"config": ["/no/such/subject", "weights"], "subject": ["weights"], "weights": []}[case]
    assert not any(word in err for word in later), err  # a later problem never hides an earlier one
    if case == "weights":
        assert "metrics.weights=DIR" in err and " weights=<" not in err
    assert not (tmp_path / "out").exists()


def test_the_missing_weights_hint_names_the_key_that_exists(tmp_path):
    from db3d.eval.models import MetricWeightsNotFound, resolve_clip_weights

    with pytest.raises(MetricWeightsNotFound) as err:
        resolve_clip_weights("ViT-B-32", str(tmp_path / "none"))
    assert "metrics.weights=<file or folder>" in str(err.value) and "with weights=" not in str(err.value)


@pytest.mark.parametrize("arg, hint", [("nerf.stpes=10", "nerf.steps=10"), ("weights=/models/clip", "metrics.weights"),
                                       ("nref.steps=3", "nerf.steps=3"), ("dreambooth.ful_steps=3", "dreambooth.full_steps")])
def test_an_unknown_key_is_answered_with_the_nearest_valid_key(arg, hint, tmp_path, monkeypatch, capsys):
    _no_model_loads(monkeypatch)
    assert cli.main(["run", f"out={tmp_path / 'out'}", arg]) == 2
    err = capsys.readouterr().err
    assert f"did you mean {hint}" in err and "+" + arg.split("=")[0] not in err and len(err.splitlines()) == 1, err


@pytest.mark.parametrize("command, needle", [
    ("run", "nerf.{steps"), ("run", "backbone=if|sd|tiny-if|tiny-sd|toy"), ("sweep", "max_concurrent"),
    ("metrics", "RESULTS"), ("report", "RESULTS"), ("study", "build RESULTS out=DIR raters=N"),
    ("toyworld", "train-prior"), ("check-data", "PATH"), ("doctor", "Takes nothing"),
])
def test_help_on_every_command_exits_zero_and_lists_what_it_takes(command, needle, capsys):
    assert cli.main([command, "--help"]) == 0
    out = capsys.readouterr().out
    assert needle in out, out


def test_db3d_help_names_every_command_and_run_help_is_not_a_hydra_error():
    top = subprocess.run([sys.executable, "-m", "db3d.cli", "--help"], capture_output=True, text=True)
    assert top.returncode == 0
    header = top.stdout.splitlines()[0]
    assert all(c in header for c in cli.COMMANDS), header
    run = subprocess.run([sys.executable, "-m", "db3d.cli", "run", "--help"], capture_output=True, text=True)
    assert run.returncode == 0 and "LexerNoViableAltException" not in run.stdout + run.stderr
    assert "metrics.{enabled" in run.stdout
