"""Result rows: one flat record per run (config as columns, identity, status, timings, costs, URIs).

The same row shape serves `db3d run`'s one-row summary and every sweep trial, so pandas, pyarrow
and DuckDB read them all alike. Files are written atomically: a temp name starting with '.' (which
pyarrow.dataset ignores), then a rename.
"""

from __future__ import annotations

import resource
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from db3d.core.artifacts import RunResult, atomic_write, atomic_write_text
from db3d.core.config import RunConfig, to_flat_dict, to_yaml

MB = 2.0 ** 20


def _rss_peak_mb() -> tuple[float, bool]:
    """(peak resident set of this process in MiB, whether it can be reset per stage).

    Linux: VmHWM, which writing 5 to /proc/self/clear_refs resets to the current RSS; elsewhere
    getrusage's ru_maxrss, the peak since the process started."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return float(line.split()[1]) * 1024 / MB, True
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return float(peak) / (MB if sys.platform == "darwin" else 1024.0), False


def _reset_peaks() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass  # not Linux, or not allowed: the peak then spans the process so far
    import torch  # heavy: the sweep driver and the Parquet sink import this module without torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.reset_peak_memory_stats()


class StageMeter(dict):
    """stage -> wall seconds, as run_method fills its `seconds` (a stage's time is written when the
    stage ends), recording as it goes each stage's peak memory since the previous stage ended:
    peak RSS of the process on the CPU (what it held before the stage included) and, once CUDA is
    in use, torch.cuda.max_memory_allocated. Writes go through to `target` too (a caller's dict
    that keeps the times of a run that stops part way)."""

    def __init__(self, target: dict):
        super().__init__(target)
        self.target = target
        self.rss_mb: dict[str, float] = {}
        self.cuda_mb: dict[str, float] = {}
        _reset_peaks()

    def __setitem__(self, stage: str, seconds: float) -> None:
        self.record(stage, seconds)

    def record(self, stage: str, seconds: float, cost=None) -> None:
        """A stage's wall time; its peak memory is `cost`'s (a db3d.method.executor.StageCost measured by
        the process that ran it elsewhere) or, when that is None, this process's since the last stage."""
        super().__setitem__(stage, seconds)
        self.target[stage] = seconds
        if cost is not None:
            if cost.rss_mb is not None:
                self.rss_mb[stage] = max(self.rss_mb.get(stage, 0.0), cost.rss_mb)
            if cost.cuda_mb is not None:
                self.cuda_mb[stage] = max(self.cuda_mb.get(stage, 0.0), cost.cuda_mb)
            return
        rss, cuda = process_peaks()
        self.rss_mb[stage] = max(self.rss_mb.get(stage, 0.0), rss)
        if cuda is not None:
            self.cuda_mb[stage] = max(self.cuda_mb.get(stage, 0.0), cuda)
        _reset_peaks()

    def columns(self) -> dict[str, float]:
        """peak_rss_mb.<stage> (and peak_cuda_mb.<stage>) with .total, the largest."""
        out = {}
        for name, peaks in (("peak_rss_mb", self.rss_mb), ("peak_cuda_mb", self.cuda_mb)):
            out.update({f"{name}.{k}": float(v) for k, v in peaks.items()})
            if peaks:
                out[f"{name}.total"] = float(max(peaks.values()))
        return out


def cost_totals(row: dict) -> dict[str, float]:
    """gpu_seconds.total and cpu_seconds.total: the sums over a row's stages."""
    out = {}
    for name in ("gpu_seconds", "cpu_seconds"):
        parts = [float(v) for k, v in row.items() if k.startswith(name + ".") and k != f"{name}.total"]
        if parts:
            out[f"{name}.total"] = float(sum(parts))
    return out


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
    return write_table_atomic(pa.Table.from_pylist(rows), path)


def write_table_atomic(table: pa.Table, path: Path) -> Path:
    """Write a table as one Parquet file: a temp name starting with '.', then a rename."""
    return atomic_write(path, lambda tmp: pq.write_table(table, tmp))


def reset_process_peaks() -> None:
    """Start a stage's peak-memory window in this process (peak RSS on Linux; CUDA's peak when in use)."""
    _reset_peaks()


def process_peaks() -> tuple[float, float | None]:
    """(peak RSS MiB, peak CUDA MiB or None) of this process since reset_process_peaks()."""
    import torch  # heavy: the sweep driver and the Parquet sink import this module without torch

    rss, _ = _rss_peak_mb()
    cuda = torch.cuda.max_memory_allocated() / MB if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    return rss, cuda


def save_config(cfg: RunConfig, out: Path) -> None:
    """config.yaml beside the outputs; an earlier, different one is kept as config.N.yaml."""
    text = to_yaml(cfg)
    path = out / "config.yaml"
    if path.exists() and path.read_text() != text:
        n = 1
        while (out / f"config.{n}.yaml").exists():
            n += 1
        path.rename(out / f"config.{n}.yaml")
    atomic_write_text(path, text)
