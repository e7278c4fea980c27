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
    plots/methods.png              per method, the main metrics' means with bootstrap 95% CIs
    success.{csv,md}               seed robustness: per method (and per method x swept setting) the
                                   success rate under a rule (success=RULE) with a Wilson 95% interval,
                                   and min / median / max of the main metric over seeds
    cost.{csv,md}, plots/cost__<metric>.png   each trial's cost (GPU- or CPU-minutes) and peak
                                   memory against the main metric, the Pareto front marked
    compute.csv                    the sweep's compute per method and status (ok / stopped / failed
                                   / all): with and without early stopping, the totals compare

Works on partial sweeps: failed or missing trials, no metric columns yet, a single method.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from . import html as page_html
from .cost import compute_by_status, cost_table
from .figures import plot_cost, plot_methods
from .load import (load_results, main_metric, main_metrics, metric_columns, ok_rows, parse_metric_column,
                   random_weight_rows, results_folder, swept_axes)
from .plots import plot_all
from .robustness import default_rule, success_table
from .stats import N_BOOT, SEED
from .tables import (best_configs, best_grid, best_level_grid, breakdown, failed_table, frame_grid, markdown_doc,
                     method_table, numeric_axes, paper_grids, trial_counts)

USAGE = ('usage: db3d report RESULTS [out=DIR] [n_boot=2000] [seed=0] '
         '[success="metric.toy.psnr.all >= 14 and metric.toy.janus <= 0.5"]')

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


def build_report(results: Path, out: Path | None = None, n_boot: int = N_BOOT, seed: int = SEED,
                 success: str | None = None) -> Report:
    """Write every table, plot and report.html into `out` (default: `default_out(results)`).
    success: the seed-robustness rule (robustness.py); None: robustness.default_rule."""
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

    # 7. per method: the main metrics with intervals; seed robustness; cost per result
    headline = main_metric(ok) if len(ok) else None
    method_figures, sections = [], []
    if metrics and plot_methods(df, main_metrics(ok), out / "plots" / "methods.png", n_boot, seed) is not None:
        written["plots/methods.png"] = out / "plots" / "methods.png"
        method_figures.append(("Main metrics per method (mean, bootstrap 95% CI; dots: trials)", "plots/methods.png"))
    sections.append(_robustness(df, ok, axes, headline, success, save, save_md, warning))
    sections.append(_cost(df, ok, headline, out, save, save_md, written, warning))

    # 8. the page
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
        gallery=page_html.gallery_html(ok, out, bases, axes, headline), files=files,
        method_figures=method_figures, sections=sections)
    written["report.html"] = out / "report.html"
    written["report.html"].write_text(text, encoding="utf-8")
    return Report(out, written, warning, len(df), len(ok))


def _robustness(df, ok, axes, headline, rule, save, save_md, warning) -> str:
    """success.{csv,md} and the page's section: per method, then per method x swept setting."""
    rule = rule if rule is not None else default_rule(df.columns)
    heading = "Seed robustness"
    if not rule or df.empty:
        return page_html.section_html(heading, [], [], "No success rule (pass success=RULE) or no trials.")
    try:
        per_method = success_table(df, rule, headline, [])
        per_setting = success_table(df, rule, headline, axes) if axes else per_method.iloc[0:0]
    except ValueError as err:
        return page_html.section_html(heading, [], [], str(err))
    table = pd.concat([per_method.assign(level="method"), per_setting.assign(level="setting")], ignore_index=True)
    save("success.csv", table)
    main = headline.removeprefix("metric.") if headline else "main metric"
    cols = {"n": "trials", "successes": "successes", "seeds": "seeds", "main_min": f"{main} min",
            "main_median": f"{main} median", "main_max": f"{main} max"}
    grids = []
    for title, frame in (("Success rate per method", per_method), ("Success rate per method and setting", per_setting)):
        if frame.empty:
            continue
        shown = frame.assign(rate=[f"{r:.2f} [{lo:.2f}, {hi:.2f}]" for r, lo, hi in
                                   zip(frame["rate"], frame["ci_lo"], frame["ci_hi"])])
        shown = shown.drop(columns=["ci_lo", "ci_hi"]).rename(columns={"rate": "rate [Wilson 95%]", **cols})
        grids.append(frame_grid(title, shown))
    save_md("success.md", f"Seed robustness: success = {rule}", grids)
    note = (f"success = {rule}. Ok and failed trials count (a failed trial is a failure); trials stopped early "
            f"do not. The spread is over the ok trials of a row (seeds, subjects, prompts).")
    return page_html.section_html(heading, grids, [], note)


def _cost(df, ok, headline, out, save, save_md, written, warning) -> str:
    """cost.{csv,md}, compute.csv, plots/cost__<metric>.png and the page's section."""
    heading = "Cost per result"
    if not headline or ok.empty:
        return page_html.section_html(heading, [], [], "No ok trials with a metric yet.")
    m = parse_metric_column(headline)
    table, unit = cost_table(ok, headline, m.lower_is_better)
    save("cost.csv", table)
    per_method = table.groupby("method").agg(trials=("trial_id", "size"), median_cost=("cost_minutes", "median"),
                                             on_front=("pareto", "sum")).reset_index()
    if "peak_rss_mb.total" in table:
        per_method["peak_rss_mb"] = table.groupby("method")["peak_rss_mb.total"].max().to_numpy()
    if "peak_cuda_mb.total" in table:
        per_method["peak_cuda_mb"] = table.groupby("method")["peak_cuda_mb.total"].max().to_numpy()
    grids = [frame_grid(f"Cost per trial ({unit}) and peak memory per method", per_method.rename(
        columns={"median_cost": f"median {unit}"})),
        frame_grid("Pareto front (no trial is cheaper and at least as good)", table[table["pareto"]])]
    compute, compute_unit = compute_by_status(df)
    save("compute.csv", compute)
    grids.append(frame_grid(f"Sweep compute by status ({compute_unit}; stopped trials: until they were stopped)",
                            compute))
    save_md("cost.md", "Cost per result", grids)
    figures = []
    name = f"plots/cost__{headline.removeprefix('metric.')}.png"
    if plot_cost(table, headline, unit, out / name) is not None:
        written[name] = out / name
        figures.append((f"{headline.removeprefix('metric.')} against {unit} per trial (rings: Pareto front)", name))
    note = "With stage reuse a trial pays only for the stages it computed: its marginal cost in this sweep."
    return page_html.section_html(heading, grids, figures, note)


def parse_args(argv: list[str]) -> dict:
    """RESULTS [out=DIR] [n_boot=N] [seed=N]; also --out DIR / --out=DIR and results=DIR."""
    opts: dict = {"results": None, "out": None, "n_boot": N_BOOT, "seed": SEED, "success": None}
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
        elif key in ("results", "out", "success"):
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
    report = build_report(results, out, opts["n_boot"], opts["seed"], opts["success"])
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
