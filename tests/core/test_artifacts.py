"""Atomic writes (db3d.core.artifacts.atomic_path): a reader sees the old file or the whole new one."""

from __future__ import annotations

import os

import pytest

from db3d.core.artifacts import atomic_path, atomic_write, atomic_write_json, atomic_write_text


def test_the_temp_file_is_hidden_beside_the_target_and_keeps_its_suffix(tmp_path):
    target = tmp_path / "sub" / "clip.mp4"  # the folder does not exist yet
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent and tmp.parent.is_dir()
        assert tmp.name.startswith(".") and tmp.suffix == ".mp4"
        assert str(os.getpid()) in tmp.name  # concurrent writers never share a temp file
        tmp.write_bytes(b"new")
        assert not target.exists()  # nothing visible until the write has finished
    assert target.read_bytes() == b"new"
    assert sorted(p.name for p in target.parent.iterdir()) == ["clip.mp4"]


def test_one_fixed_temp_name_when_not_per_process(tmp_path):
    target = tmp_path / "train_state.pt"
    with atomic_path(target, per_process=False) as tmp:
        assert tmp.name == ".train_state.tmp.pt"
        tmp.write_bytes(b"state")
    assert target.read_bytes() == b"state"


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp_file(tmp_path):
    target = tmp_path / "row.parquet"
    target.write_bytes(b"old")

    def half_then_fail(tmp):
        tmp.write_bytes(b"ha")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(target, half_then_fail)
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["row.parquet"]


def test_text_and_json_replace_the_file_and_return_its_path(tmp_path):
    target = tmp_path / "done.json"
    assert atomic_write_text(target, "first") == target
    assert atomic_write_json(target, {"b": 1, "a": [2]}) == target
    assert target.read_text() == '{\n  "a": [\n    2\n  ],\n  "b": 1\n}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["done.json"]
