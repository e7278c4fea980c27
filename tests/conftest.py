"""Shared fixtures: tiny backbones (built once per session), the shared dataset, quiet logs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing in the tests may reach the network
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

RAY_MODULES = {"test_distributed", "test_local_ray", "test_sweep_chaos", "test_sweep_quality", "test_quality",
               "test_toyworld_bench"}
"""Test modules that start local Ray clusters. Under pytest-xdist (`make test`: -n 2 --dist loadgroup)
they share one worker, one test at a time: two local Rays on one machine contend for fixed ports
(the dashboard agent's), and a Ray test's trials want the machine's CPUs to themselves."""

if os.environ.get("PYTEST_XDIST_WORKER"):  # two test processes on a small machine: one torch thread each
    import torch

    torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.module.__name__.rsplit(".", 1)[-1] in RAY_MODULES:
            item.add_marker(pytest.mark.xdist_group("ray"))


def dataset_root() -> Path:
    return Path(os.environ.get("DB3D_DATASET", Path(__file__).resolve().parents[1].parent / "shared" / "dreambooth_dataset"))


@pytest.fixture(scope="session")
def shared_dataset() -> Path:
    root = dataset_root()
    if not (root / "prompts_and_classes.txt").exists():
        pytest.skip(f"shared DreamBooth dataset not found at {root}")
    return root


@pytest.fixture(scope="session")
def tiny_sd():
    from db3d.core.config import BackboneConfig
    from db3d.models.backbones import build_backbone

    return build_backbone(BackboneConfig(kind="tiny-sd", seed=0, sample_steps=4))


@pytest.fixture(scope="session")
def tiny_if():
    from db3d.core.config import BackboneConfig
    from db3d.models.backbones import build_backbone

    return build_backbone(BackboneConfig(kind="tiny-if", seed=0, sample_steps=4))


@pytest.fixture(params=["tiny-sd", "tiny-if"])
def tiny(request, tiny_sd, tiny_if):
    return tiny_sd if request.param == "tiny-sd" else tiny_if
