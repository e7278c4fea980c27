"""The report's seed robustness, cost per result and metric directions, on hand-made tables."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from test_report import _write  # noqa: E402  (the producer's Parquet layout)

from analysis.cost import compute_by_status, cost_table, pareto_front, trial_cost  # noqa: E402
from analysis.load import load_results, main_metric, metric_columns, parse_metric_column  # noqa: E402
from analysis.report import main  # noqa: E402
from analysis.robustness import parse_rule, success, success_table, wilson_interval  # noqa: E402

RULE = "metric.toy.psnr.all >= 14 and metric.toy.janus <= 0.5"


def test_wilson_interval_known_values():
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)  # z^2 / (n + z^2)
    assert wilson_interval(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert wilson_interval(10, 10) == pytest.approx((0.7225, 1.0), abs=1e-4)
    lo, hi = wilson_interval(30, 100)
    assert lo < 0.3 < hi and hi - lo < wilson_interval(3, 10)[1] - wilson_interval(3, 10)[0]  # narrows with n
    assert all(math.isnan(v) for v in wilson_interval(0, 0))


def test_success_rule_parsing():
    assert parse_rule(RULE) == [("metric.toy.psnr.all", ">=", 14.0), ("metric.toy.janus", "<=", 0.5)]
    with pytest.raises(ValueError, match="cannot read"):
        parse_rule("metric.toy.psnr.all >= high")


def _table() -> pd.DataFrame:
    """Two methods x two lambda settings x 3 seeds, with known successes; a failed and a stopped trial."""
    rows = []
    psnr = {("a", 1.0): [15, 16, 13], ("a", 2.0): [14, 14.5, 20], ("b", 1.0): [10, 11, 12], ("b", 2.0): [15, 9, 8]}
    janus = {("a", 1.0): [0.2, 0.1, 0.1], ("a", 2.0): [0.6, 0.4, 0.3], ("b", 1.0): [0.1, 0.1, 0.1],
             ("b", 2.0): [0.2, 0.9, 0.9]}
    for (method, lam), values in psnr.items():
        for seed, (p, j) in enumerate(zip(values, janus[(method, lam)])):
            rows.append({"method": method, "config.method.lambda_recon": lam, "config.seed": seed, "status": "ok",
                         "trial_id": f"{method}{lam}{seed}", "metric.toy.psnr.all": p, "metric.toy.janus": j})
    rows.append({"method": "a", "config.method.lambda_recon": 1.0, "config.seed": 3, "status": "failed",
                 "trial_id": "fail", "metric.toy.psnr.all": np.nan, "metric.toy.janus": np.nan})
    rows.append({"method": "b", "config.method.lambda_recon": 1.0, "config.seed": 3, "status": "stopped",
                 "trial_id": "stop", "metric.toy.psnr.all": np.nan, "metric.toy.janus": np.nan})
    return pd.DataFrame(rows)


def test_success_rates_and_intervals_on_a_hand_made_table():
    df = _table()
    hits = success(df, RULE).to_numpy()
    assert hits.sum() == 2 + 2 + 0 + 1  # a/1: 15,16 (13 fails); a/2: 14.5, 20 (14 has janus 0.6); b/2: 15
    per_method = success_table(df, RULE, "metric.toy.psnr.all", []).set_index("method")
    assert per_method.loc["a", "n"] == 7 and per_method.loc["a", "successes"] == 4  # the failed trial counts
    assert per_method.loc["b", "n"] == 6 and per_method.loc["b", "successes"] == 1  # the stopped one does not
    assert (per_method.loc["a", "ci_lo"], per_method.loc["a", "ci_hi"]) == pytest.approx(wilson_interval(4, 7))
    assert per_method.loc["a", "rate"] == pytest.approx(4 / 7) and per_method.loc["a", "seeds"] == 4
    assert (per_method.loc["a", ["main_min", "main_median", "main_max"]].tolist() ==
            [13.0, pytest.approx(np.median([15, 16, 13, 14, 14.5, 20])), 20.0])
    per_setting = success_table(df, RULE, "metric.toy.psnr.all", ["config.method.lambda_recon"])
    cell = per_setting.set_index(["method", "config.method.lambda_recon"])
    assert cell.loc[("a", 2.0), "successes"] == 2 and cell.loc[("a", 2.0), "n"] == 3
    assert cell.loc[("b", 1.0), "successes"] == 0 and cell.loc[("b", 1.0), "ci_hi"] == pytest.approx(
        wilson_interval(0, 3)[1])
    assert cell.loc[("b", 2.0), ["main_min", "main_median", "main_max"]].tolist() == [8.0, 9.0, 15.0]


def test_pareto_front_of_a_hand_made_table():
    cost = [1.0, 2.0, 2.0, 3.0, 4.0, 5.0, np.nan, 0.5]
    quality = [10.0, 12.0, 11.0, 12.0, 15.0, 14.0, 20.0, 5.0]
    assert pareto_front(cost, quality).tolist() == [True, True, False, False, True, False, False, True]
    # lower is better (a Janus score): the cheapest point with the lowest value dominates the rest
    assert pareto_front([1.0, 2.0, 3.0], [0.5, 0.2, 0.3], lower_is_better=True).tolist() == [True, True, False]
    assert pareto_front([1.0, 1.0], [3.0, 3.0]).tolist() == [True, True]  # equal points: neither dominates


def test_trial_cost_prefers_gpu_then_cpu_minutes():
    df = pd.DataFrame({"gpu_seconds.total": [0.0, 0.0], "cpu_seconds.nerf": [60.0, 30.0],
                       "cpu_seconds.stage1": [60.0, np.nan], "seconds.total": [200.0, 100.0]})
    minutes, unit = trial_cost(df)
    assert unit == "CPU-minutes" and minutes.tolist() == [2.0, 0.5]
    minutes, unit = trial_cost(df.assign(**{"gpu_seconds.total": [120.0, 6.0]}))
    assert unit == "GPU-minutes" and minutes.tolist() == [2.0, 0.1]
    table, _ = cost_table(pd.DataFrame({"method": ["a", "b"], "trial_id": ["x", "y"], "cpu_seconds.total": [60.0, 120.0],
                                        "metric.toy.psnr.all": [12.0, 11.0]}), "metric.toy.psnr.all", False)
    assert table.set_index("trial_id")["pareto"].to_dict() == {"x": True, "y": False}


def test_sweep_compute_counts_stopped_trials_until_they_stopped():
    df = pd.DataFrame({"method": ["a", "a", "a", "b"], "status": ["ok", "stopped", "stopped", "failed"],
                       "cpu_seconds.total": [600.0, 60.0, 120.0, np.nan]})
    table, unit = compute_by_status(df)
    assert unit == "CPU-minutes"
    by = table.set_index(["method", "status"])
    got = {key: (row["trials"], row["with_cost"], row["total CPU-minutes"]) for key, row in by.iterrows()}
    assert got == {("a", "ok"): (1, 1, 10.0), ("a", "stopped"): (2, 2, 3.0), ("a", "all"): (3, 3, 13.0),
                   ("b", "failed"): (1, 0, 0.0), ("b", "all"): (1, 0, 0.0)}
    assert table["status"].tolist() == ["ok", "stopped", "all", "failed", "all"]


def test_toy_metric_directions_and_counts():
    assert parse_metric_column("metric.toy.retrieval_rank").lower_is_better
    assert parse_metric_column("metric.toy.janus").lower_is_better
    m = parse_metric_column("metric.toy.psnr.back")
    assert (m.metric, m.model, m.render, m.lower_is_better) == ("toy.psnr", "", "back", False)
    df = pd.DataFrame({"metric.toy.psnr.all": [1.0], "metric.toy.retrieval_candidates": [121], "status": ["ok"]})
    assert metric_columns(df) == ["metric.toy.psnr.all"]  # a constant count is no metric
    assert main_metric(df) == "metric.toy.psnr.all"


def test_a_toyworld_report_ranks_lower_is_better_and_has_every_section(tmp_path):
    """The demo's shape: two methods, no swept setting, 3 seeds; dreambooth3d better at PSNR, rank and
    Janus. Best configs minimise rank and Janus; retrieval_candidates is no metric; the page has
    the per-method chart, success rates with intervals and the quality-vs-cost figure."""
    results = tmp_path / "sweep" / "results"
    for method, (psnr, rank, janus, cost) in {"dreambooth3d": (14.5, 1, 0.2, 300.0),
                                              "dreambooth_fusion": (11.0, 7, 0.8, 100.0)}.items():
        for seed in range(3):
            for subject in ("toy00", "toy01"):
                _write(results, {"method": method, "subject": subject, "prompt": "a sks toy", "status": "ok",
                                 "error": "", "trial_id": f"{method}-{subject}-{seed}", "seed": seed,
                                 "config.seed": seed, "config.method.name": method, "seconds.total": cost,
                                 "cpu_seconds.total": cost + seed, "peak_rss_mb.total": 900.0 + seed,
                                 "metric.toy.psnr.all": psnr + 0.5 * seed, "metric.toy.retrieval_rank": rank + seed,
                                 "metric.toy.retrieval_candidates": 121, "metric.toy.janus": janus + 0.05 * seed})
    out = tmp_path / "rep"
    assert main([str(results), f"out={out}", "n_boot=200"]) == 0
    best = pd.read_csv(out / "best_config.csv")
    assert "toy.retrieval_candidates" not in set(best["metric"])
    better = best.drop_duplicates("metric").set_index("metric")["better"].to_dict()
    assert better == {"toy.psnr": "higher", "toy.retrieval_rank": "lower", "toy.janus": "lower"}
    paper = pd.read_csv(out / "paper_table.csv")
    assert set(paper["metric"]) == {"toy.psnr", "toy.retrieval_rank", "toy.janus"}
    succ = pd.read_csv(out / "success.csv").set_index("method")
    # default rule: PSNR >= 14 and Janus <= 0.5: dreambooth3d all 6 trials, fusion none
    assert succ.loc["dreambooth3d", "successes"] == 6 and succ.loc["dreambooth_fusion", "successes"] == 0
    assert succ.loc["dreambooth3d", "seeds"] == 3 and succ.loc["dreambooth3d", "main_max"] == pytest.approx(15.5)
    cost = pd.read_csv(out / "cost.csv")
    assert set(cost["cost_unit"]) == {"CPU-minutes"}
    front = cost[cost["pareto"]]
    assert set(front["method"]) == {"dreambooth3d", "dreambooth_fusion"}  # fusion cheapest, dreambooth3d best
    page = (out / "report.html").read_text()
    for src in ("plots/methods.png", "plots/cost__toy.psnr.all.png"):
        assert f'src="{src}"' in page and (out / src).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Seed robustness" in page and "Wilson 95%" in page and "Pareto front" in page
    md = [line for line in (out / "best_config.md").read_text().splitlines() if line.startswith("| toy.")]
    assert md and all(("| lower |" in line) == (not line.startswith("| toy.psnr")) for line in md)
    df = load_results(results)
    assert len(df) == 12
