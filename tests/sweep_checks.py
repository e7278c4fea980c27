"""What a sweep leaves behind after failures: one row per trial, no partial Parquet visible to
readers, no half-written stage in the artifact store. Shared by the chaos and driver-kill tests."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
from PIL import Image
from safetensors.torch import load_file

from db3d.distributed.sink import read_results


def _visible(path: Path, root: Path) -> bool:
    """What a reader sees: pyarrow, pandas and DuckDB skip names starting with '.' or '_'."""
    return not any(part.startswith((".", "_")) for part in path.relative_to(root).parts)


def check_file(path: Path) -> None:
    """Raise unless the file is complete for its kind (loads / parses / verifies)."""
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        load_file(str(path))
    elif suffix == ".json":
        json.loads(path.read_text())
    elif suffix in (".png", ".jpg", ".jpeg", ".gif", ".webp"):
        with Image.open(path) as im:
            im.verify()
    elif suffix == ".parquet":
        pq.read_table(path)


EXPECTED = {  # done.json type -> files its `path` must hold
    "NerfCheckpoint": ["field.safetensors"],
    "PseudoViews": ["cameras.json", "views/*.png", "renders/*.png"],
    "DreamBoothCheckpoint": ["**/*.safetensors"],
}


def check_artifacts(out: Path) -> dict[str, int]:
    """Every done.json under OUT/artifacts names a folder whose files are all complete.
    Returns {stage: finished artifacts}."""
    counts: dict[str, int] = {}
    for done in sorted((out / "artifacts").rglob("done.json")):  # DreamBooth: one per saved step
        data = json.loads(done.read_text())
        folder = Path(data["path"])
        assert folder.is_dir(), f"{done} names {folder}, which does not exist"
        for pattern in EXPECTED.get(data.get("type"), []):
            assert list(folder.glob(pattern)), f"{done}: no {pattern} in {folder}"
        for f in folder.rglob("*"):
            if f.is_file() and _visible(f, folder) and not f.name.endswith(".lock"):
                try:
                    check_file(f)
                except Exception as err:  # any kind of truncation or corruption
                    raise AssertionError(f"{done}: {f} is incomplete ({type(err).__name__}: {err})") from None
        stage = done.relative_to(out / "artifacts").parts[0]
        counts[stage] = counts.get(stage, 0) + 1
    return counts


def check_results(out: Path, expected_trials: int, status: str | None = "ok") -> dict:
    """One row per trial (none lost, none duplicated), every visible Parquet file complete.
    Returns {"rows", "lost", "duplicated", "hidden_temp_files"}."""
    results = out / "results"
    files = [p for p in results.rglob("*") if p.is_file()]
    visible = [p for p in files if _visible(p, results)]
    for p in visible:
        assert p.suffix == ".parquet" and p.name.startswith("part-"), f"a stray file readers would see: {p}"
        assert pq.read_table(p).num_rows == 1, p
    df = read_results(results)
    figures = {"rows": len(df), "lost": expected_trials - df["trial_id"].nunique(),
               "duplicated": len(df) - df["trial_id"].nunique(), "hidden_temp_files": len(files) - len(visible)}
    assert figures["lost"] == 0 and figures["duplicated"] == 0, figures
    if status is not None:
        assert set(df["status"]) == {status}, df[["trial_id", "status", "error"]].to_string()
    return figures
