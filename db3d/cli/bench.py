"""`db3d toyworld bench out=DIR [subjects=8] [subjects_seed=1] [sweep=toyworld] [...]`: methods
scored against true shape.

    1. write the sweep (sweeps/toyworld.yaml by default) with `subjects: {toyworld: N, seed: S}`
       beside the results (another seed draws other subjects: a held-out set), and run it with
       `db3d sweep` (local Ray or RAY_ADDRESS; any sweep key or run override passes through, e.g.
       max_concurrent=2 nerf.steps=200)
    2. read the Parquet rows and tabulate per method the means and bootstrap 95% intervals of
       PSNR (all views, back half), SSIM, retrieval rank (and the share ranked first) and the
       Janus score; the paired differences between the first two methods over the same subjects;
       per subject PSNR and stage 1's fog flag -> OUT/bench.md (and printed). `db3d report OUT`
       reads the same rows.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
import yaml

from analysis.stats import bootstrap_ci  # the report's bootstrap (trials resampled)
from db3d.core.overrides import key_values
from db3d.distributed.sink import read_results
from db3d.distributed.spec import SWEEPS_DIR
from db3d.distributed.sweep import main as sweep_main

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
    return "\n".join(lines) + "\n" + note + paired(ok) + per_subject(ok)


PAIRED = (("metric.toy.psnr.all", "PSNR all (dB)", "higher"), ("metric.toy.psnr.back", "PSNR back (dB)", "higher"),
          ("metric.toy.janus", "Janus score", "lower"))


def paired(ok: pd.DataFrame, first: str = "dreambooth3d", second: str = "dreambooth_fusion") -> str:
    """Paired differences first - second over the trials (subject x prompt x seed) both methods ran."""
    index = ["subject", "prompt", "seed"]
    a = ok[ok["method"] == first].set_index(index)
    b = ok[ok["method"] == second].set_index(index)
    common = a.index.intersection(b.index)
    if len(common) == 0:
        return ""
    lines = [f"\nPaired over {len(common)} subjects, {first} - {second} (mean [bootstrap 95%], wins):\n"]
    for col, name, better in PAIRED:
        d = (a.loc[common, col] - b.loc[common, col]).astype(float)
        mean, lo, hi = bootstrap_ci(d)
        wins = int((d > 0).sum() if better == "higher" else (d < 0).sum())
        lines.append(f"- {name}: {mean:+.2f} [{lo:+.2f}, {hi:+.2f}] ({better} is better; {first} better on "
                     f"{wins} of {len(d)})")
    return "\n".join(lines) + "\n"


def per_subject(ok: pd.DataFrame) -> str:
    """PSNR (all views) per subject and method, with stage 1's fog flag where the row has one."""
    cols = ["subject", "method", "metric.toy.psnr.all", "metric.toy.psnr.back"]
    extra = [c for c in ("stage1.opacity_edge", "stage1.fog", "stage3.fallback") if c in ok]
    rows = ok[cols + extra].sort_values(["subject", "method"])
    lines = ["\nPer subject (PSNR all / back in dB" + (", stage 1's border opacity and fog flag" if extra else "")
             + "):\n", "| subject | method | PSNR all | PSNR back |" + "".join(f" {c} |" for c in extra),
             "|---|---|---|---|" + "---|" * len(extra)]
    for _, r in rows.iterrows():
        cells = "".join(f" {r[c]:.3f} |" if isinstance(r[c], float) else f" {r[c]} |" for c in extra)
        lines.append(f"| {r['subject']} | {r['method']} | {r['metric.toy.psnr.all']:.2f} | "
                     f"{r['metric.toy.psnr.back']:.2f} |" + cells)
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    defaults = {"out": "", "subjects": "8", "subjects_seed": "", "sweep": "toyworld"}
    given, passthrough = key_values(argv, defaults)  # the rest: sweep keys and run overrides
    opts = {**defaults, **given}
    if not opts["out"]:
        print("bench: out=DIR is required", file=sys.stderr)
        return 2
    out = Path(opts["out"]).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    # 1. the sweep with N ToyWorld subjects, then run it
    source = Path(opts["sweep"]) if Path(opts["sweep"]).exists() else SWEEPS_DIR / f"{opts['sweep']}.yaml"
    spec = yaml.safe_load(source.read_text())
    spec["subjects"] = {**spec.get("subjects", {}), "toyworld": int(opts["subjects"])}
    if opts["subjects_seed"]:
        spec["subjects"]["seed"] = int(opts["subjects_seed"])
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
