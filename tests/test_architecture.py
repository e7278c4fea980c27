"""The layers hold (import-linter's contracts in pyproject.toml), and the check fails on a back-import."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).with_name("lint-imports")


def _lint(root: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(root)}  # the tree under test first on the path
    return subprocess.run([str(LINT), "--config", str(root / "pyproject.toml"), "--no-cache"], cwd=root, env=env,
                          capture_output=True, text=True, timeout=300)


def test_the_layers_hold():
    proc = _lint(ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "3 kept, 0 broken" in proc.stdout


def _copy_tree(tmp: Path) -> Path:
    for name in ("db3d", "analysis"):
        shutil.copytree(ROOT / name, tmp / name, ignore=shutil.ignore_patterns("*.safetensors", "*.png", "__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp / "pyproject.toml")
    return tmp


def test_a_planted_back_import_breaks_the_contract(tmp_path):
    root = _copy_tree(tmp_path)
    backbones = root / "db3d" / "models" / "backbones.py"
    backbones.write_text(backbones.read_text() + "\n\ndef _planted():\n    from db3d.toyworld import subjects  # noqa\n")
    proc = _lint(root)
    assert proc.returncode != 0
    assert "db3d.models.backbones -> db3d.toyworld.subjects" in proc.stdout, proc.stdout
    assert "BROKEN" in proc.stdout


def test_analysis_importing_training_code_breaks_the_contract(tmp_path):
    root = _copy_tree(tmp_path)
    stats = root / "analysis" / "stats.py"
    stats.write_text(stats.read_text() + "\nfrom db3d.method import fit  # noqa\n")
    proc = _lint(root)
    assert proc.returncode != 0 and "analysis (report, study) reads the results dataset only" in proc.stdout, proc.stdout
