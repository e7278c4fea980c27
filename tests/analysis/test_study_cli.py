"""`db3d study` misuse: one line on stderr, a non-zero exit, nothing changed on disk before the
arguments are checked. Uses the synthetic sweep of test_study.py."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_study import results  # noqa: F401  (the module-scoped synthetic sweep fixture)

from analysis.study import build_study, main


def _run(capsys, *argv) -> tuple[int, str]:
    code = main(list(map(str, argv)))
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err


def _one_line(err: str) -> bool:
    return len(err.strip().splitlines()) == 1


def _snapshot(folder: Path) -> dict[str, bytes]:
    """Every file's bytes, but SQLite's own -wal/-shm side files (a reader may create them)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and not p.name.endswith(("-wal", "-shm"))}


@pytest.fixture
def study(results, tmp_path) -> Path:  # noqa: F811
    return build_study(results, tmp_path / "study", raters=2, seed=0)


@pytest.mark.parametrize("argv, code, needle", [
    (["build", "{results}", "out={out}", "raters=2", "methods=dreambooth3d,dreambooth3d"], 2, "more than once"),
    (["build", "{results}", "out={out}", "raters=2", "methods=dreambooth3d"], 2, "two methods"),
    (["build", "{results}", "out={out}", "raters=two"], 2, "raters='two'"),
    (["build", "{results}", "out={out}", "raters=0"], 2, "raters=0"),
    (["build", "{results}", "out={out}"], 2, "raters="),
    (["build", "{results}", "out={out}", "raters=2", "raters=3"], 2, "twice"),
    (["build", "out={out}", "raters=2"], 2, "RESULTS"),
    (["build", "{missing}", "out={out}", "raters=2"], 1, "no such results folder"),
    (["serve", "{out}", "port=70000"], 2, "port=70000 is out of range"),
    (["serve", "{out}", "port=http"], 2, "port='http'"),
    (["serve", "{out}", "origin=study.example.org"], 2, "origin="),
    (["serve", "{out}"], 1, "not a study folder"),
    (["export", "{out}"], 1, "not a study folder"),
    (["frobnicate", "{out}"], 2, "unknown command"),
])
def test_misuse_ends_in_one_line_and_writes_nothing(results, tmp_path, capsys, argv, code, needle):  # noqa: F811
    out = tmp_path / "out"
    argv = [a.format(results=results, out=out, missing=tmp_path / "nope") for a in argv]
    got, err = _run(capsys, *argv)
    assert got == code and needle in err and _one_line(err), err
    assert not out.exists(), "nothing may be written before the arguments are checked"


def test_export_validates_before_it_rewrites_anything(study, capsys):
    assert main(["export", str(study)]) == 0
    capsys.readouterr()
    before = _snapshot(study)
    for argv, needle in [(["ties=bogus"], "ties='bogus'"), (["reference=nope"], "reference='nope'"),
                         (["colour=red"], "unknown argument")]:
        code, err = _run(capsys, "export", study, *argv)
        assert code == 2 and needle in err and _one_line(err), err
        assert _snapshot(study) == before, argv


def test_a_corrupt_database_is_refused_by_serve_and_export_and_left_alone(study, tmp_path, capsys):
    broken = tmp_path / "broken"
    shutil.copytree(study, broken)
    for name in os.listdir(broken):  # no WAL side files: the database is what's on disk
        if name.startswith("study.sqlite-"):
            os.remove(broken / name)
    (broken / "study.sqlite").write_bytes(b"SQLite format 3\x00" + b"\x07" * 5000)
    before = _snapshot(broken)
    for cmd in ("serve", "export"):
        code, err = _run(capsys, cmd, broken, *(["port=0"] if cmd == "serve" else []))
        assert code == 1 and "study.sqlite" in err and _one_line(err), err
    assert _snapshot(broken) == before
    other = tmp_path / "other"  # a SQLite database that is not a study's
    other.mkdir()
    import sqlite3

    sqlite3.connect(other / "study.sqlite").execute("CREATE TABLE t (x)").connection.close()
    code, err = _run(capsys, "export", other)
    assert code == 1 and "not a study database" in err and _one_line(err)
    assert not (other / "answers.parquet").exists()


def _results_with(tmp_path: Path, rows: list[tuple[str, dict]]) -> Path:
    res = tmp_path / "res"
    for name, row in rows:
        part = res / "method=dreambooth3d" / "subject=toy0" / f"part-{name}.parquet"
        part.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist([row]), part)
    return res


def test_results_with_missing_columns_or_mixed_types_end_in_one_line(tmp_path, capsys):
    missing = _results_with(tmp_path / "a", [("t1", {"status": "ok", "prompt": "a sks toy"})])  # no trial_id
    code, err = _run(capsys, "build", missing, f"out={tmp_path / 'o1'}", "raters=2")
    assert code == 1 and "trial_id" in err and _one_line(err), err
    mixed = _results_with(tmp_path / "b", [("t1", {"trial_id": "t1", "status": "ok", "prompt": "p", "x": 1.5}),
                                            ("t2", {"trial_id": "t2", "status": "ok", "prompt": "p", "x": b"\x00"})])
    code, err = _run(capsys, "build", mixed, f"out={tmp_path / 'o2'}", "raters=2")
    assert code == 1 and "cannot read the results" in err and _one_line(err), err
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()


def test_build_copies_only_real_images_and_never_follows_symlinks(results, tmp_path):  # noqa: F811
    dog = Path(build_study.__globals__["read_results"](results).query("subject == 'dog'")["config.subject"]
               .dropna().iloc[0])
    outside = tmp_path / "outside.png"
    shutil.copyfile(next(dog.glob("*.jpg")), outside)
    outside.write_bytes(outside.read_bytes() + b"OUTSIDE-MARKER")
    link, fake = dog / "00-link.png", dog / "00-fake.png"
    os.symlink(outside, link)
    fake.write_text("not an image at all")
    try:
        study = build_study(results, tmp_path / "s", raters=1)
    finally:
        link.unlink()
        fake.unlink()
    media = [p.read_bytes() for p in (study / "media").iterdir()]
    assert not any(b"OUTSIDE-MARKER" in m or m == b"not an image at all" for m in media)
    import json

    items = json.loads((study / "manifest.json").read_text())["items"]
    assert {len(it["photos"]) for it in items if it["subject"] == "dog" and it["photos"]} == {2}


def test_help_exits_zero_and_lists_the_arguments(capsys):
    assert main(["--help"]) == 0 and "build RESULTS out=DIR raters=N" in capsys.readouterr().out
    for cmd, needle in [("build", "methods"), ("serve", "origin"), ("export", "ties")]:
        assert main([cmd, "--help"]) == 0 and needle in capsys.readouterr().out
