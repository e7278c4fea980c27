"""The sweep's progress line (db3d/distributed/sweep.py) from trial states and workers' progress
records, on a fake clock: no Ray, no sleeping."""

from __future__ import annotations

from types import SimpleNamespace

from db3d.core.progress import ProgressFile
from db3d.distributed.sweep import _Progress, progress_line


class Clock:
    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def _trials(**statuses):
    """(group, Tune id) -> (status, db3d trial id) for progress_line."""
    return {("g", tid): (status, f"key-{tid}") for tid, status in statuses.items()}


def test_progress_line_names_each_running_trials_stage_and_step():
    now = 5000.0
    trials = _trials(t1="RUNNING", t2="RUNNING", t3="TERMINATED", t4="ERROR", t5="PENDING", t6="RUNNING")
    records = [
        {"trial": "t1", "stage": "stage1", "step": 120, "total": 600, "time": now - 3, "closed": False},
        {"trial": "t1", "stage": "stage1", "step": 100, "total": 600, "time": now - 9, "closed": False},  # older
        # a Ray Train worker labels its record with its run's name, which names the db3d trial id
        {"trial": "train-key-t2", "stage": "DreamBooth partial", "step": 40, "total": 40, "time": now - 12,
         "closed": True},
        {"trial": "t3", "stage": "final NeRF", "step": 600, "total": 600, "time": now, "closed": True},
    ]
    line = progress_line(trials, records, total=8, elapsed=200.0, now=now)
    assert line.startswith("[db3d sweep] 1/8 done, 3 running, 1 failed, elapsed 200s, ETA 600s | ")
    assert "key-t1: stage1 120/600 (3s ago)" in line
    assert "key-t2: after DreamBooth partial 40/40 (12s ago)" in line
    assert "key-t6: starting" in line
    assert "t3" not in line.split("|", 1)[1] and "t5" not in line  # only running trials get a part


def test_progress_counts_the_event_trial_with_its_new_status_and_prints_at_least_every_interval(tmp_path):
    clock, lines = Clock(), []
    prog = _Progress(total=3, progress_dir=tmp_path, every_s=10.0, clock=clock, out=lines.append)
    a = SimpleNamespace(trial_id="a_00000", status="PENDING", config={})
    b = SimpleNamespace(trial_id="b_00000", status="PENDING", config={})
    prog.group = "sweep-p1"
    # Tune calls on_trial_start before it marks the trial RUNNING: the event's trial counts as running
    prog.event([a, b], a, "RUNNING")
    assert "0/3 done, 1 running, 0 failed" in lines[-1]
    a.status = "RUNNING"
    ProgressFile(tmp_path, clock=clock, label="a_00000").write("stage1", 7, 600, force=True)
    # on_step_end runs about every 0.1 s: a line at most every 10 s, and at least that often
    printed_at = []
    for _ in range(305):  # 30.5 s of Tune steps
        clock.now += 0.1
        before = len(lines)
        prog.observe([a, b])
        prog.tick()
        if len(lines) > before:
            printed_at.append(clock.now)
    gaps = [t1 - t0 for t0, t1 in zip([1000.0, *printed_at], printed_at)]
    assert len(printed_at) == 3 and all(9.9 < g < 10.2 for g in gaps), printed_at
    assert "a_00000: stage1 7/600" in lines[-1]
    # completion: counted as done at the event, before Tune sets TERMINATED
    prog.event([a, b], a, "TERMINATED")
    assert "1/3 done, 0 running" in lines[-1]
    # the next Tuner (Optuna: one per grid point) has its own trial ids "a_00000"...: counted apart
    prog.group = "sweep-p2"
    c = SimpleNamespace(trial_id="a_00000", status="PENDING", config={})
    prog.event([c], c, "ERROR")
    assert "1/3 done, 0 running, 1 failed" in lines[-1]
