"""Artifacts mirrored to an object store (distributed/artifact_store.py), without Ray: a file://
URI stands for the bucket and a threading lock for the sweep's lock actor."""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path

from db3d.core.artifacts import artifact_lock, flock_lock, set_lock_factory
from db3d.distributed.artifact_store import push, synced


def _lock():
    held = threading.Lock()

    @contextlib.contextmanager
    def lock(name):
        with held:
            yield

    return lock


def _compute(folder: Path, runs: list) -> None:
    """A stage: reuse the folder's done.json, else compute (counted) and mark it done."""
    if (folder / "done.json").exists():
        return
    runs.append(folder.name)
    (folder / "sub").mkdir(parents=True, exist_ok=True)
    (folder / "sub" / "weights.bin").write_bytes(b"w" * 100)
    (folder / "done.json").write_text("{}")


def test_a_second_node_fetches_the_published_artifact_instead_of_recomputing(tmp_path):
    uri = f"file://{tmp_path / 'bucket'}"
    runs: list = []
    for node in ("node-a", "node-b"):  # each with its own empty local store
        root = tmp_path / node / "artifacts"
        folder = root / "stage1" / "abc"
        with synced(folder, root, uri, _lock()):
            _compute(folder, runs)
        assert (folder / "sub" / "weights.bin").read_bytes() == b"w" * 100
    assert runs == ["abc"]  # computed once, fetched by the second node
    assert (tmp_path / "bucket" / "stage1" / "abc" / "done.json").exists()


def test_an_unfinished_folder_is_not_published_and_done_json_goes_last(tmp_path):
    folder, uri = tmp_path / "a", f"file://{tmp_path / 'bucket'}"
    folder.mkdir()
    (folder / "state.pt").write_bytes(b"s")
    assert push(folder, uri) == []  # no done.json: nothing published
    _compute(folder, [])
    sent = push(folder, uri)  # in upload order
    assert sorted(sent) == ["done.json", "state.pt", "sub/weights.bin"] and sent[-1] == "done.json"
    assert push(folder, uri) == []  # published already


def test_the_lock_factory_is_swappable(tmp_path):
    seen = []

    @contextlib.contextmanager
    def factory(folder):
        seen.append(Path(folder).name)
        yield

    previous = set_lock_factory(factory)
    try:
        with artifact_lock(tmp_path / "x"):
            pass
    finally:
        set_lock_factory(previous)
    assert seen == ["x"] and previous is flock_lock
    with artifact_lock(tmp_path / "y"):  # flock again
        assert (tmp_path / "y.lock").exists()


def test_leases_free_a_lock_whose_holder_stopped_renewing():
    from db3d.distributed.artifact_store import Leases

    now = [0.0]
    leases = Leases(lease_s=60.0, clock=lambda: now[0])
    assert leases.try_acquire("stage1/k", "a")
    assert not leases.try_acquire("stage1/k", "b")  # held
    now[0] = 50.0
    leases.renew("stage1/k", "a")
    now[0] = 100.0
    assert not leases.try_acquire("stage1/k", "b")  # renewed at 50: still held at 100
    leases.release("stage1/k", "b")  # not b's: no effect
    assert not leases.try_acquire("stage1/k", "b")
    now[0] = 111.0  # a died after its last renewal at 50
    assert leases.try_acquire("stage1/k", "b")
    leases.release("stage1/k", "b")
    assert leases.try_acquire("stage1/k", "c")
