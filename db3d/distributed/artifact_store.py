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
be the same absolute path on every node. Locks are leases: the holder renews its lease every
LEASE_S / 4 seconds from a background thread, so a trial killed while holding a lock (SIGKILL, a
lost node) frees it LEASE_S seconds later, and a waiting or retried trial takes over.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import threading
import time
import uuid
from pathlib import Path

import pyarrow.fs as pafs

from db3d.core.artifacts import atomic_write_bytes, flock_lock, set_lock_factory

from .storage import join, split

LEASE_S = 60.0  # a lock whose holder has not renewed it for this long is free


class Leases:
    """Lock table with leases (pure Python: the actor's state, testable without Ray).

    `try_acquire(name, token)` takes the lock when it is free, expired, or already the token's."""

    def __init__(self, lease_s: float = LEASE_S, clock=time.monotonic):
        self.lease_s, self.clock, self.held = lease_s, clock, {}  # name -> (token, last renewal)

    def try_acquire(self, name: str, token: str) -> bool:
        holder = self.held.get(name)
        if holder is None or holder[0] == token or self.clock() - holder[1] > self.lease_s:
            self.held[name] = (token, self.clock())
            return True
        return False

    def renew(self, name: str, token: str) -> None:
        if self.held.get(name, (None,))[0] == token:
            self.held[name] = (token, self.clock())

    def release(self, name: str, token: str) -> None:
        if self.held.get(name, (None,))[0] == token:
            del self.held[name]


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
        with fs.open_input_stream(f"{root}/{name}") as stream:
            atomic_write_bytes(target, stream.read())
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
    import ray  # heavy (~0.5 s): `db3d sweep` imports this module before it needs Ray

    @ray.remote(num_cpus=0)
    class ArtifactLocks:
        """Leased locks per artifact name; a waiting acquire polls asynchronously (never blocks the actor)."""

        def __init__(self):
            self.leases = Leases()

        async def acquire(self, name: str, token: str) -> None:
            while not self.leases.try_acquire(name, token):
                await asyncio.sleep(0.2)

        def renew(self, name: str, token: str) -> None:
            self.leases.renew(name, token)

        def release(self, name: str, token: str) -> None:
            self.leases.release(name, token)

    return ArtifactLocks.options(name=locks_name(uri), get_if_exists=True).remote()


def remote_lock_factory(root: Path, uri: str):
    """artifact_lock's factory for a trial: folders under `root` synced with `uri` under the
    sweep's actor lock; any other folder (the class-image cache) keeps flock."""
    import ray  # heavy: as in start_locks

    actor = ray.get_actor(locks_name(uri))

    @contextlib.contextmanager
    def actor_lock(name: str):
        token = uuid.uuid4().hex
        ray.get(actor.acquire.remote(name, token))
        stop = threading.Event()

        def heartbeat():  # keep the lease while the stage runs
            while not stop.wait(LEASE_S / 4):
                actor.renew.remote(name, token)

        beat = threading.Thread(target=heartbeat, daemon=True)
        beat.start()
        try:
            yield
        finally:
            stop.set()
            beat.join()
            ray.get(actor.release.remote(name, token))

    def factory(folder: Path):
        folder = Path(folder)
        if not folder.is_relative_to(root):
            return flock_lock(folder)
        return synced(folder, root, uri, actor_lock)

    return factory


@contextlib.contextmanager
def installed(sweep: dict):
    """While inside, artifact_lock syncs with the sweep's artifact URI (when it has one)."""
    uri = sweep.get("artifacts") if sweep.get("reuse", True) else ""
    if not uri:
        yield
        return
    previous = set_lock_factory(remote_lock_factory(Path(sweep["out"]) / "artifacts", uri))
    try:
        yield
    finally:
        set_lock_factory(previous)
