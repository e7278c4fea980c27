"""`db3d report RESULTS [out=DIR]`: tables, plots and an HTML page from a sweep's Parquet results.

    RESULTS   the hive-partitioned dataset a sweep writes (SWEEP_OUT/results; SWEEP_OUT works too)
    out=DIR   where to write; default: a `report/` folder beside RESULTS (SWEEP_OUT/report), so
              the page's relative links to SWEEP_OUT/trials/*/exports/*.mp4 stay short and the
              sweep folder moves as one piece
    n_boot=N  bootstrap resamples per interval (default 2000); seed=N its seed (default 0)

Writes, into DIR:
    report.html                    everything below, with warnings, failed trials and turntables
    paper_table.{csv,md}           per method: R-precision per CLIP model x render, DINO / CLIP-I /
                                   CLIP-T and the rest, mean with bootstrap 95% CI over trials
    by_subject.{csv,md}            per method x subject: trial counts and metric means
    by_prompt.{csv,md}             per method x prompt: the same
    best_config.{csv,md}           per metric x method: the best joint setting of the swept axes
    best_values.csv                per metric x method x axis: the best value (or bin) of that axis
    trials.csv, failed_trials.csv  counts per method; the failed trials and their errors
    plots/<axis>__<metric>.png     metric against each swept numeric config column (old PNGs in
                                   plots/ are removed first)

Works on partial sweeps: failed or missing trials, no metric columns yet, a single method.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from . import html as page_html
from .load import load_results, metric_columns, ok_rows, random_weight_rows, results_folder, swept_axes
from .plots import plot_all
from .stats import N_BOOT, SEED
from .tables import (best_configs, best_grid, best_level_grid, breakdown, failed_table, frame_grid, markdown_doc,
                     method_table, numeric_axes, paper_grids, trial_counts)

USAGE = "usage: db3d report RESULTS [out=DIR] [n_boot=2000] [seed=0]"

RANDOM_WARNING = ("{n} of {total} ok trials have metrics computed with random weights: these numbers "
                  "show the machinery only, not the quality of any method. Evaluate with pretrained "
                  "CLIP / DINO weights before reading them.")


def default_out(results: Path) -> Path:
    """RESULTS/../report: beside the results folder, inside the sweep's folder."""
    return Path(results).resolve().parent / "report"


@dataclass(frozen=True)
class Report:
    """What `build_report` wrote: {name relative to out: path}, and the random-weights warning ('' if none)."""

    out: Path
    files: dict[str, Path]
    warning: str
    n_trials: int
    n_ok: int


def build_report(results: Path, out: Path | None = None, n_boot: int = N_BOOT, seed: int = SEED) -> Report:
    """Write every table, plot and report.html into `out` (default: `default_out(results)`)."""
    results = Path(results)
    out = Path(out) if out is not None else default_out(results)
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}

    # 1. read the trials; which are ok, which metrics exist, which config columns were swept
    df = load_results(results)
    ok = ok_rows(df)
    metrics = metric_columns(df)
    axes = swept_axes(ok)
    n_random = random_weight_rows(ok)
    warning = RANDOM_WARNING.format(n=n_random, total=len(ok)) if n_random else ""
    counts = trial_counts(df)
    notes = []
    if df.empty:
        notes.append("No trial rows yet: trials write their row when they finish (or fail).")
    elif not metrics:
        notes.append("No metric columns in the results yet: the tables show trial counts only.")
    no_metrics = int(counts.loc[counts["method"] == "all", "ok_without_metrics"].iloc[0]) if len(df) else 0
    if metrics and no_metrics:
        notes.append(f"{no_metrics} ok trial(s) have no metrics; they count in the trial table only.")
    notes.append("Trials that have not finished have no row yet and appear nowhere.")

    def save(name: str, frame: pd.DataFrame) -> None:
        written[name] = out / name
        frame.to_csv(written[name], index=False)

    def save_md(name: str, title: str, grids) -> None:
        written[name] = out / name
        written[name].write_text(markdown_doc(title, grids, warning), encoding="utf-8")

    # 2. the paper's table per method, with bootstrap CIs
    long = method_table(df, n_boot, seed)
    save("paper_table.csv", long)
    paper = paper_grids(long)
    save_md("paper_table.md", "Results per method", paper)

    # 3. breakdowns per subject and per prompt
    grids = {}
    for by in ("subject", "prompt"):
        frame = breakdown(df, by)
        save(f"by_{by}.csv", frame)
        grids[by] = frame_grid(f"Per {by} (means over ok trials)", frame)
        save_md(f"by_{by}.md", f"Per {by}", [grids[by]])

    # 4. the best configuration per metric (janus and clip_rank minimise)
    joint, marginal = best_configs(df, n_boot, seed)
    save("best_config.csv", joint)
    save("best_values.csv", marginal)
    best = [best_grid(joint), best_level_grid(marginal)] if len(joint) else []
    save_md("best_config.md", "Best configurations", best)

    # 5. trial counts and failures
    save("trials.csv", counts)
    failed = failed_table(df)
    save("failed_trials.csv", failed)

    # 6. plots against the swept numeric settings
    plots = plot_all(df, numeric_axes(df), out / "plots", n_boot, seed)
    for p in plots:
        written[f"plots/{p['path'].name}"] = p["path"]

    # 7. the page
    headline = next((c for c in metrics if c.startswith("metric.r_precision.") and c.endswith(".color")),
                    metrics[0] if metrics else None)
    meta = [("results", str(results.resolve())), ("generated", datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")),
            ("trials", f"{len(df)} ({len(ok)} ok, {len(df) - len(ok)} not ok)"),
            ("swept axes", ", ".join(a.removeprefix("config.") for a in axes) or "(none)"),
            ("bootstrap", f"{n_boot} resamples of trials, seed {seed}, percentile 95% intervals")]
    for col, label in (("sweep", "sweep"), ("backbone", "backbone"), ("git_revision", "git revision"),
                       ("metrics.weights", "metric weights")):
        if col in df.columns:
            meta.append((label, ", ".join(sorted(set(df[col].dropna().astype(str)))) or "(none)"))
    bases = [results.resolve().parent, results.resolve().parent.parent]
    files = [(name, name) for name in written if not name.startswith("plots/")]
    text = page_html.page(
        title=f"db3d report: {results.resolve().parent.name or results.name}", meta=meta,
        warnings=[warning] if warning else [], notes=notes, counts=counts, failed=failed, paper=paper, best=best,
        breakdowns=[grids["subject"], grids["prompt"]],
        plots=[(f"{p['metric']} vs {p['axis'].removeprefix('config.')}", f"plots/{p['path'].name}") for p in plots],
        gallery=page_html.gallery_html(ok, out, bases, axes, headline), files=files)
    written["report.html"] = out / "report.html"
    written["report.html"].write_text(text, encoding="utf-8")
    return Report(out, written, warning, len(df), len(ok))


def parse_args(argv: list[str]) -> dict:
    """RESULTS [out=DIR] [n_boot=N] [seed=N]; also --out DIR / --out=DIR and results=DIR."""
    opts: dict = {"results": None, "out": None, "n_boot": N_BOOT, "seed": SEED}
    args = list(argv)
    while args:
        a = args.pop(0)
        if a in ("-h", "--help"):
            raise SystemExit(0)
        if a.startswith("--") and "=" not in a and args:
            a = f"{a[2:]}={args.pop(0)}"
        key, sep, value = a.lstrip("-").partition("=")
        if not sep:
            if opts["results"] is not None:
                raise ValueError(f"unexpected argument {a!r}")
            opts["results"] = a
        elif key in ("results", "out"):
            opts[key] = value
        elif key in ("n_boot", "seed"):
            opts[key] = int(value)
        else:
            raise ValueError(f"unknown option {key!r}")
    if not opts["results"]:
        raise ValueError("RESULTS is required")
    return opts


def main(argv: list[str] | None = None) -> int:
    """Entry point of `db3d report`; returns the exit status."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        opts = parse_args(argv)
    except SystemExit:
        print(__doc__.strip())
        return 0
    except ValueError as err:
        print(f"db3d report: {err}\n{USAGE}", file=sys.stderr)
        return 2
    results = results_folder(Path(opts["results"]))
    if not results.is_dir():
        print(f"db3d report: no results folder at {results} (a sweep writes SWEEP_OUT/results)\n{USAGE}",
              file=sys.stderr)
        return 2
    out = Path(opts["out"]) if opts["out"] else default_out(results)
    report = build_report(results, out, opts["n_boot"], opts["seed"])
    n_plots = sum(1 for k in report.files if k.startswith("plots/"))
    print(f"db3d report: {report.n_trials} trials ({report.n_ok} ok) -> {len(report.files)} files in "
          f"{report.out.resolve()}")
    for name, path in report.files.items():
        if not name.startswith("plots/"):
            print(f"  {path}")
    if n_plots:
        print(f"  {report.out.resolve() / 'plots'}/ ({n_plots} PNG)")
    if report.warning:
        print(f"db3d report: WARNING: {report.warning}", file=sys.stderr)
    print(f"open {report.files['report.html'].resolve()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
