"""Shared fixtures: tiny backbones (built once per session), the shared dataset, quiet logs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing in the tests may reach the network
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

if os.environ.get("PYTEST_XDIST_WORKER"):  # two test processes on a small machine: one torch thread each
    import torch

    torch.set_num_threads(1)

# `make test` runs pytest-xdist with --dist loadfile: each test module runs whole on one worker, so its
# module-scoped fixtures (a sweep several tests read) are built once. (--dist loadgroup does not group
# under pytest 9.2: pytest-xdist issue #1386; every test became its own unit and such fixtures were
# built on both workers.) Modules that start local Rays may run at the same time: see
# tests/distributed/sweep_run.py for why two local Rays on one machine do not clash.

# The heaviest modules first (a scheduling hint, from `--durations` on 2 cores; each runs whole sweeps):
# with `--no-loadscope-reorder` xdist hands out files in collection order, so the long ones start at
# once and the many short ones fill the gaps at the end, instead of a 3-minute file starting last.
# (xdist's default order is by number of tests, which put these last.) Modules not named keep their order.
HEAVIEST_FIRST = (
    "distributed/test_distributed.py",
    "distributed/test_sweep_chaos.py",
    "distributed/test_ray_train.py",
    "distributed/test_ray_cluster.py",
    "distributed/test_sweep_recovery.py",
    "distributed/test_sweep_quality.py",
    "method/test_stages.py",
    "toyworld/test_toyworld_bench.py",
    "method/test_quality.py",
    "distributed/test_local_ray.py",
)


def pytest_collection_modifyitems(session, config, items):
    tests = Path(__file__).resolve().parent

    def rank(item) -> int:
        name = Path(str(item.path)).resolve().relative_to(tests).as_posix()
        return HEAVIEST_FIRST.index(name) if name in HEAVIEST_FIRST else len(HEAVIEST_FIRST)

    items.sort(key=rank)  # stable: the order within a module, and of the rest, is kept


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
