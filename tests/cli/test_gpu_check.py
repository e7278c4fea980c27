"""The one-shot GPU check runs its CPU-safe parts (`--dry`): every section prints a figure, so the
script cannot rot between the rare runs on a GPU machine."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_gpu_check_dry_mode_prints_every_section(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--dry", "--work", str(tmp_path)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    for mode in ("full", "lora"):
        for dtype in ("fp32", "bf16"):
            assert re.search(rf"DreamBooth {mode}\s+{dtype}:\s+\d+\.\d+ steps/s", out), out
    for path in ("latent", "pixel"):
        for name in ("fp32", "bf16 autocast"):
            assert re.search(rf"SDS NeRF {path} {name}:\s+\d+\.\d+ steps/s", out), out
    assert re.search(r"hash grid \(torch\): \d+\.\d+ M points/s", out), out
    assert "db3d run FAILED" not in out, out
    stages = re.search(r"per stage \(s\): (.*)", out)
    assert stages, out
    for stage in ("backbone", "dreambooth", "stage1", "stage2", "stage3_dreambooth", "stage3_nerf", "export"):
        assert re.search(rf"\b{stage} \d+\.\d", stages.group(1)), out
    assert re.search(r"EXTRAPOLATION \(not measured\): paper preset.*~ \d+ min", out), out
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert len(report["dreambooth (SD-1.5 UNet, 512 px)"]) == 4 and len(report["db3d run"]) == 3
