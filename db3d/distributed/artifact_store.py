"""Stage reuse without a shared file system: artifacts published to an object store, one lock
per artifact held by a Ray actor.

A sweep with `artifacts=URI` (default `<out>/artifacts` when out= is a URI) keeps each trial's
local artifact store at `<work>/artifacts` and mirrors it to `URI`:

    with artifact_lock(store / "stage1" / key):     # trial.py installs remote_lock_factory
        1. the sweep's ArtifactLocks actor grants the lock on "stage1/<key>"
        2. pull: when URI/stage1/<key>/ holds a done.json, copy its files that are missing here
        3. the stage runs (it finds the pulled done.json and reuses it, or computes)
        4. push: when the local folder now holds a done.json, copy new files up, done.json last
           (a reader never sees a half-published artifact as done)
        5. the actor releases the lock

Artifacts record absolute paths, so the local store root (the sweep's work folder, `work=`) must
be the same absolute path on every node. A trial killed while holding a lock leaves it held
until the sweep's driver (the actor's owner) exits.
"""

from __future__ import annotations

import contextlib
import hashlib
from pathlib import Path

import pyarrow.fs as pafs

from ..artifacts import flock_lock
from .storage import join, split


def _remote_files(uri: str) -> dict[str, int]:
    """{relative name: size} of the files under a URI folder (empty when there is none)."""
    fs, root = split(uri)
    infos = fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True))
    return {i.path[len(root):].lstrip("/"): i.size for i in infos if i.type == pafs.FileType.File}


def _done_last(names) -> list[str]:
    return sorted(names, key=lambda n: (Path(n).name == "done.json", n))


def pull(folder: Path, uri: str) -> list[str]:
    """Copy the published artifact's files missing in `folder` (done.json last); their names."""
    remote = _remote_files(uri)
    if not any(Path(n).name == "done.json" for n in remote):
        return []  # nothing finished there
    fs, root = split(uri)
    fetched = []
    for name in _done_last(remote):
        target = Path(folder) / name
        if target.exists():
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.pull.tmp")
        with fs.open_input_stream(f"{root}/{name}") as stream:
            tmp.write_bytes(stream.read())
        tmp.replace(target)
        fetched.append(name)
    return fetched


def push(folder: Path, uri: str) -> list[str]:
    """Publish a finished folder's new or changed files (done.json last); their names."""
    local = {p.relative_to(folder).as_posix(): p for p in Path(folder).rglob("*")
             if p.is_file() and not p.name.startswith(".")}
    if not any(Path(n).name == "done.json" for n in local):
        return []  # not finished: publish nothing
    remote = _remote_files(uri)
    fs, root = split(uri)
    sent = []
    for name in _done_last(local):
        if remote.get(name) == local[name].stat().st_size:
            continue
        fs.create_dir(f"{root}/{name}".rsplit("/", 1)[0], recursive=True)
        with fs.open_output_stream(f"{root}/{name}") as stream:
            stream.write(local[name].read_bytes())
        sent.append(name)
    return sent


@contextlib.contextmanager
def synced(folder: Path, root: Path, uri: str, lock):
    """Steps 1-5 of the module docstring; `lock(name)` is the lock context manager."""
    folder = Path(folder)
    name = folder.relative_to(root).as_posix()
    with lock(name):
        pull(folder, join(uri, name))
        yield
        push(folder, join(uri, name))


def locks_name(uri: str) -> str:
    """The named actor of a sweep's artifact store."""
    return "db3d-artifact-locks-" + hashlib.sha256(uri.encode()).hexdigest()[:12]


def start_locks(uri: str):
    """The sweep's ArtifactLocks actor (created by the driver, which owns it for the sweep)."""
    import ray

    @ray.remote(num_cpus=0)
    class ArtifactLocks:
        """One asyncio lock per artifact name; a waiting acquire does not block the actor."""

        def __init__(self):
            import asyncio

            self.asyncio, self.locks = asyncio, {}

        async def acquire(self, name: str) -> None:
            await self.locks.setdefault(name, self.asyncio.Lock()).acquire()

        async def release(self, name: str) -> None:
            self.locks[name].release()

    return ArtifactLocks.options(name=locks_name(uri), get_if_exists=True).remote()


def remote_lock_factory(root: Path, uri: str):
    """artifact_lock's factory for a trial: folders under `root` synced with `uri` under the
    sweep's actor lock; any other folder (the class-image cache) keeps flock."""
    import ray

    actor = ray.get_actor(locks_name(uri))

    @contextlib.contextmanager
    def actor_lock(name: str):
        ray.get(actor.acquire.remote(name))
        try:
            yield
        finally:
            ray.get(actor.release.remote(name))

    def factory(folder: Path):
        folder = Path(folder)
        if not folder.is_relative_to(root):
            return flock_lock(folder)
        return synced(folder, root, uri, actor_lock)

    return factory


@contextlib.contextmanager
def installed(sweep: dict):
    """While inside, artifact_lock syncs with the sweep's artifact URI (when it has one)."""
    from ..artifacts import set_lock_factory

    uri = sweep.get("artifacts") if sweep.get("reuse", True) else ""
    if not uri:
        yield
        return
    previous = set_lock_factory(remote_lock_factory(Path(sweep["out"]) / "artifacts", uri))
    try:
        yield
    finally:
        set_lock_factory(previous)
