"""Progress bars on long work, and the small progress records that a sweep's driver reads.

``bar()`` is a tqdm bar (off in sweep workers: DB3D_QUIET=1 or TQDM_DISABLE=1, read per bar) that
keeps counting when the display is off. When ``DB3D_PROGRESS_DIR`` is set (the sweep driver sets it
for its workers, distributed/sweep.py), the bar also writes where it is to
``<dir>/<host>-<pid>.json``, one file per worker process, at most every ``WRITE_EVERY_S`` seconds
and whenever a bar opens or closes::

    {"trial": "<Tune trial id, or the Ray Train run name>", "stage": "<the bar's desc>",
     "step": 120, "total": 600, "time": <unix seconds>, "closed": false}

Every long loop of a run (class images, DreamBooth, each NeRF stage, the ToyWorld prior) reports
through ``bar()``, so no loop needs its own reporting. ``read_records`` reads the folder back.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Callable, Iterable

from tqdm.auto import tqdm

from db3d.core.artifacts import atomic_write_text

PROGRESS_DIR_ENV = "DB3D_PROGRESS_DIR"
PROGRESS_LABEL_ENV = "DB3D_PROGRESS_LABEL"  # the trial a process's records belong to
WRITE_EVERY_S = 5.0  # a worker rewrites its record at most this often (the driver prints every 10 s)


def _quiet() -> bool:
    return os.environ.get("DB3D_QUIET") == "1" or os.environ.get("TQDM_DISABLE") == "1"


def _trial_label() -> str:
    """Which trial this process works for: DB3D_PROGRESS_LABEL, set by the layer that runs trials
    (db3d/distributed: the trial process and each of its Ray Train stage workers), else the PID."""
    return os.environ.get(PROGRESS_LABEL_ENV) or f"pid {os.getpid()}"


class ProgressFile:
    """This process's progress record in ``folder``, rewritten atomically, at most every ``every_s``."""

    def __init__(self, folder: Path, every_s: float = WRITE_EVERY_S, clock: Callable[[], float] = time.time,
                 label: str | None = None):
        self.path = Path(folder) / f"{socket.gethostname()}-{os.getpid()}.json"
        self.every_s, self.clock = every_s, clock
        self.fixed_label, self.label = label, label  # None: read from the environment at every forced write
        self.last_write = float("-inf")

    def write(self, stage: str, step: int, total: int | None, closed: bool = False, force: bool = False) -> bool:
        """Write the record unless one was written less than ``every_s`` ago (``force``: write anyway,
        and ask again which trial this is: a reused worker process may serve another trial now)."""
        now = self.clock()
        if not force and now - self.last_write < self.every_s:
            return False
        if self.label is None or (force and self.fixed_label is None):
            self.label = self.fixed_label or _trial_label()
        record = {"trial": self.label, "stage": stage, "step": int(step), "total": total, "time": now,
                  "closed": closed}
        try:
            atomic_write_text(self.path, json.dumps(record))
        except OSError:  # progress is best effort: never fail the work over it
            return False
        self.last_write = now
        return True


_FILES: dict[str, ProgressFile] = {}  # folder -> this process's record there (one per process)


def progress_file() -> ProgressFile | None:
    """The record this process writes, when DB3D_PROGRESS_DIR is set (read per bar)."""
    folder = os.environ.get(PROGRESS_DIR_ENV)
    if not folder:
        return None
    if folder not in _FILES:
        _FILES[folder] = ProgressFile(Path(folder))
    return _FILES[folder]


class Bar:
    """A tqdm bar that counts even when its display is off and reports to a ``ProgressFile``.

    Used like tqdm: ``update``, ``set_postfix``, ``close``, or iterated (``iterable=``).
    """

    def __init__(self, iterable: Iterable | None = None, total: int | None = None, initial: int = 0,
                 desc: str = "", record: ProgressFile | None = None, **kwargs):
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.iterable, self.total, self.n, self.desc = iterable, total, initial, desc
        self.record = record
        self.tqdm = tqdm(iterable=iterable, total=total, initial=initial, desc=desc, leave=False,
                         disable=_quiet(), **kwargs)
        self._report(force=True)

    def _report(self, force: bool = False, closed: bool = False) -> None:
        if self.record is not None:
            self.record.write(self.desc, self.n, self.total, closed=closed, force=force)

    def update(self, n: int = 1) -> None:
        self.n += n
        self.tqdm.update(n)
        self._report()

    def set_postfix(self, *args, **kwargs) -> None:
        self.tqdm.set_postfix(*args, **kwargs)

    def close(self) -> None:
        self.tqdm.close()
        self._report(force=True, closed=True)

    def __iter__(self):
        for item in self.tqdm:  # tqdm passes the items through (also when disabled)
            yield item
            self.n += 1
            self._report()
        self._report(force=True, closed=True)

    def __enter__(self) -> "Bar":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def bar(**kwargs) -> Bar:
    """A progress bar (tqdm's keywords: total, initial, desc, iterable, unit, ...)."""
    return Bar(record=progress_file(), **kwargs)


def read_records(folder: Path) -> list[dict]:
    """Every worker's latest record in ``folder`` (unreadable or half-written files, and the hidden
    temp files of writes under way, skipped)."""
    records = []
    for path in sorted(Path(folder).glob("*.json")):
        if path.name.startswith("."):  # atomic_write_text's temp file: the record is not there yet
            continue
        try:
            records.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
    return records
