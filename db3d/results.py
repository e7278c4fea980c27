"""Result rows: one flat record per run (config as columns, identity, status, timings, URIs).

The same row shape serves `db3d run`'s one-row summary and every sweep trial, so pandas, pyarrow
and DuckDB read them all alike. Files are written atomically: a temp name starting with '.' (which
pyarrow.dataset ignores), then a rename.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from .artifacts import RunResult
from .config import RunConfig, to_flat_dict


def git_revision() -> str:
    """The db3d checkout's commit (with '+dirty' for local changes), or 'unknown'."""
    here = Path(__file__).resolve().parent
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        if rev.returncode != 0:
            return "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return rev.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def result_row(cfg: RunConfig, subject: str, class_noun: str, prompt: str, result: RunResult | None,
               status: str, error: str = "") -> dict:
    """A flat dict: config.* columns, identity, status/error, seconds.*, uri.* and keys."""
    row = {f"config.{k}": (str(v) if isinstance(v, (list, tuple)) else v) for k, v in to_flat_dict(cfg).items()}
    row.update(subject=subject, class_noun=class_noun, prompt=prompt, method=cfg.method.name,
               backbone=cfg.backbone.kind, seed=cfg.seed, git_revision=git_revision(), status=status, error=error)
    if result is not None:
        row["out"] = str(result.out)
        row.update({f"seconds.{k}": float(v) for k, v in result.seconds.items()})
        row["seconds.total"] = float(sum(result.seconds.values()))
        row.update({f"uri.{k}": str(v) for k, v in result.exports.items()})
        row["uri.nerf"] = str(result.final.field_file)
        row.update({f"key.{k}": v for k, v in result.keys.items() if v})
        row.update(result.diagnostics)
        row.update({k: v for k, v in result.metrics.items() if k != "views"})
    return row


def write_rows(rows: list[dict], path: Path) -> Path:
    """Write rows as one Parquet file, atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    pq.write_table(pa.Table.from_pylist(rows), tmp)
    os.replace(tmp, path)
    return path
