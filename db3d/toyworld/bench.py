"""`db3d toyworld bench out=DIR [subjects=8] [sweep=toyworld] [...]`: methods scored against true shape.

    1. write the sweep (sweeps/toyworld.yaml by default) with `subjects: {toyworld: N}` beside the
       results, and run it with `db3d sweep` (local Ray or RAY_ADDRESS; any sweep key or run
       override passes through, e.g. max_concurrent=2 nerf.steps=200)
    2. read the Parquet rows and tabulate per method the means and bootstrap 95% intervals of
       PSNR (all views, back half), SSIM, retrieval rank (and the share ranked first) and the
       Janus score -> OUT/bench.md (and printed). `db3d report OUT` reads the same rows.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
import yaml


COLUMNS = (  # (row column, table heading, format)
    ("metric.toy.psnr.all", "PSNR all (dB)", "{:.2f}"),
    ("metric.toy.psnr.back", "PSNR back (dB)", "{:.2f}"),
    ("metric.toy.ssim.all", "SSIM all", "{:.3f}"),
    ("metric.toy.retrieval_rank", "retrieval rank", "{:.2f}"),
    ("top1", "ranked first", "{:.2f}"),
    ("metric.toy.janus", "Janus score", "{:.3f}"),
)


def table(rows: pd.DataFrame) -> str:
    """A markdown table: one line per method, mean [95% CI] per column, over ok trials."""
    from analysis.stats import bootstrap_ci  # the report's bootstrap (trials resampled)

    ok = rows[rows["status"] == "ok"].copy() if "status" in rows else rows.copy()
    if ok.empty or "metric.toy.psnr.all" not in ok:
        return "no scored trials (are the subjects ToyWorld subjects, and metrics.enabled true?)\n"
    ok["top1"] = (ok["metric.toy.retrieval_rank"] == 1).astype(float)
    candidates = int(ok["metric.toy.retrieval_candidates"].max())
    lines = ["| method | n | " + " | ".join(h for _, h, _ in COLUMNS) + " |",
             "|---" * (len(COLUMNS) + 2) + "|"]
    for method, group in ok.groupby("method"):
        cells = []
        for col, _, fmt in COLUMNS:
            mean, lo, hi = bootstrap_ci(group[col])
            cells.append(f"{fmt.format(mean)} [{fmt.format(lo)}, {fmt.format(hi)}]")
        lines.append(f"| {method} | {len(group)} | " + " | ".join(cells) + " |")
    note = (f"\nMeans over trials (subject x prompt x seed) with bootstrap 95% intervals. Retrieval rank: the "
            f"true object among {candidates} candidates (itself + the world's objects) by PSNR of the "
            "renders, 1 is best. Janus score: decal colour on the back views relative to the front's decal "
            "(0: none; ~1: a second front).\n")
    return "\n".join(lines) + "\n" + note


def main(argv: list[str]) -> int:
    from db3d.distributed.spec import SWEEPS_DIR
    from db3d.distributed.sweep import main as sweep_main
    from db3d.distributed.sink import read_results

    opts = {"out": "", "subjects": "8", "sweep": "toyworld"}
    passthrough = []
    for arg in argv:
        key, sep, value = arg.partition("=")
        if sep and key in opts:
            opts[key] = value
        else:
            passthrough.append(arg)
    if not opts["out"]:
        print("bench: out=DIR is required", file=sys.stderr)
        return 2
    out = Path(opts["out"]).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    # 1. the sweep with N ToyWorld subjects, then run it
    source = Path(opts["sweep"]) if Path(opts["sweep"]).exists() else SWEEPS_DIR / f"{opts['sweep']}.yaml"
    spec = yaml.safe_load(source.read_text())
    spec["subjects"] = {**spec.get("subjects", {}), "toyworld": int(opts["subjects"])}
    spec_file = out / "bench_sweep.yaml"
    spec_file.write_text(yaml.safe_dump(spec, sort_keys=False))
    code = sweep_main([f"sweep={spec_file}", f"out={out}"] + passthrough)
    if code not in (0, 1):
        return code
    # 2. the table
    text = table(read_results(out / "results"))
    (out / "bench.md").write_text(text)
    print(text)
    return code
