"""A non-editable install (the wheel `pip wheel .` builds, as cluster/Dockerfile installs it) carries
the named sweeps, the report, the Hydra configs and the ToyWorld prior: its commands work away from
the checkout."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_wheel_finds_its_sweeps_report_and_prior(tmp_path):
    # 1. the wheel, installed into a folder of its own (dependencies: this venv's)
    wheels, site = tmp_path / "wheels", tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(wheels),
                    str(ROOT)], check=True, capture_output=True, timeout=300)
    (wheel,) = wheels.glob("db3d-*.whl")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(wheel)],
                   check=True, capture_output=True, timeout=300)
    env = {**os.environ, "PYTHONPATH": str(site)}  # the installed copy first, the checkout nowhere
    work = tmp_path / "elsewhere"
    work.mkdir()

    def run(*args, **kw):
        return subprocess.run([sys.executable, *args], cwd=work, env=env, capture_output=True, text=True, timeout=300)

    # 2. it is the installed copy that runs, and it finds its package data
    probe = run("-c", "import db3d, analysis, sweeps; from db3d.distributed.spec import SWEEPS_DIR, load_spec; "
                      "from db3d.models.toy_prior import SHIPPED, load_components; "
                      "print(db3d.__file__); print(analysis.__file__); print(sorted(p.name for p in SWEEPS_DIR.glob('*.yaml'))); "
                      "print(load_spec('demo').name); print(len(load_components()['tokenizer']))")
    assert probe.returncode == 0, probe.stderr
    lines = probe.stdout.splitlines()
    assert lines[0].startswith(str(site)) and lines[1].startswith(str(site)), lines
    assert "demo.yaml" in lines[2] and "toyworld_weights.yaml" in lines[2] and lines[3] == "demo"
    assert int(lines[4]) > 50  # the prior's tokenizer, from the words shipped beside its weights
    # 3. its commands
    for args in (["sweep", "--help"], ["report", "--help"], ["run", "--help"]):
        proc = run("-m", "db3d.cli", *args)
        assert proc.returncode == 0, (args, proc.stderr[-2000:])
    bad = run("-m", "db3d.cli", "sweep", "sweep=no_such_sweep", f"out={tmp_path / 'o'}")
    assert bad.returncode == 2 and "demo" in bad.stderr  # the error lists the installed named sweeps
