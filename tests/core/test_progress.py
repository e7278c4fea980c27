"""Progress bars and the progress records they write for a sweep's driver (db3d/core/progress.py),
on a fake clock."""

from __future__ import annotations

import json
import os

from db3d.core import progress
from db3d.core.progress import Bar, ProgressFile, read_records


class Clock:
    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def _only_record(folder) -> dict:
    (path,) = folder.glob("*.json")
    return json.loads(path.read_text())


def test_a_quiet_bar_counts_and_writes_its_record_at_most_every_interval(tmp_path, monkeypatch):
    monkeypatch.setenv("DB3D_QUIET", "1")  # as in sweep workers: no display, the count still moves
    clock = Clock()
    record = ProgressFile(tmp_path, every_s=5.0, clock=clock, label="trial-a")
    bar = Bar(total=10, initial=2, desc="stage1", record=record)
    assert _only_record(tmp_path) == {"trial": "trial-a", "stage": "stage1", "step": 2, "total": 10,
                                      "time": 1000.0, "closed": False}  # written when the bar opens
    clock.now += 1.0
    bar.update(1)
    assert _only_record(tmp_path)["step"] == 2  # 1 s after the last write: throttled
    clock.now += 4.0
    bar.update(2)
    assert _only_record(tmp_path)["step"] == 5 and bar.n == 5
    clock.now += 1.0
    bar.close()  # closing always writes
    assert _only_record(tmp_path) | {"time": 0} == {"trial": "trial-a", "stage": "stage1", "step": 5, "total": 10,
                                                  "time": 0, "closed": True}
    assert read_records(tmp_path) == [_only_record(tmp_path)]


def test_an_iterated_bar_counts_its_items_and_closes(tmp_path, monkeypatch):
    monkeypatch.setenv("DB3D_QUIET", "1")
    record = ProgressFile(tmp_path, every_s=0.0, clock=Clock(), label="t")
    items = list(Bar(iterable=range(3), desc="class images", record=record))
    assert items == [0, 1, 2]
    assert {k: _only_record(tmp_path)[k] for k in ("step", "total", "closed")} == {"step": 3, "total": 3,
                                                                                  "closed": True}


def test_bar_writes_where_the_environment_says_and_nowhere_otherwise(tmp_path, monkeypatch):
    monkeypatch.setenv("DB3D_QUIET", "1")
    monkeypatch.delenv(progress.PROGRESS_DIR_ENV, raising=False)
    assert progress.bar(total=3, desc="x").record is None
    folder = tmp_path / "progress"
    monkeypatch.setenv(progress.PROGRESS_DIR_ENV, str(folder))
    b = progress.bar(total=4, desc="DreamBooth full")
    b.update(1)
    b.close()
    rec = _only_record(folder)
    assert rec["stage"] == "DreamBooth full" and rec["step"] == 1 and rec["closed"] and rec["trial"]
    (folder / "broken.json").write_text("{half")  # a reader never fails on a half-written file
    assert len(read_records(folder)) == 1


def test_a_record_is_written_atomically_and_a_write_under_way_is_not_read(tmp_path):
    record = ProgressFile(tmp_path, clock=Clock(), label="t")
    assert record.write("stage", 1, 10)
    assert [p.name for p in tmp_path.iterdir()] == [record.path.name]  # no temp file left behind
    (tmp_path / ".other.123.tmp.json").write_text(json.dumps({"trial": "x"}))  # another worker mid-write
    assert [r["trial"] for r in read_records(tmp_path)] == ["t"]


def test_a_record_names_the_trial_its_runner_set_in_the_environment(tmp_path, monkeypatch):
    """The distributed layer sets DB3D_PROGRESS_LABEL (trial process, Ray Train workers); core asks no Ray."""
    from db3d.core.progress import PROGRESS_LABEL_ENV, ProgressFile, read_records

    monkeypatch.setenv(PROGRESS_LABEL_ENV, "0123abcd")
    ProgressFile(tmp_path).write("stage1", 3, 600, force=True)
    monkeypatch.delenv(PROGRESS_LABEL_ENV)
    ProgressFile(tmp_path / "other").write("stage1", 3, 600, force=True)
    assert [r["trial"] for r in read_records(tmp_path)] == ["0123abcd"]
    assert [r["trial"] for r in read_records(tmp_path / "other")] == [f"pid {os.getpid()}"]
