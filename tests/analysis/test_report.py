"""analysis/: the report over a synthetic results dataset with known means (no db3d, torch or ray)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # `analysis` is a top-level package beside `db3d`
    sys.path.insert(0, str(ROOT))

from analysis.report import default_out, main  # noqa: E402
from analysis.stats import bootstrap_ci  # noqa: E402
from analysis.tables import method_table  # noqa: E402

METHODS = {"dreambooth3d": 0.6, "dreambooth_fusion": 0.4}  # constructed mean R-precision per method
SUBJECTS = {"dog": "dog", "cat": "cat", "teapot": "teapot"}
PROMPTS = ["a photo of sks on the beach", "sks sleeping"]
LAMBDAS = [0.1, 1.0]
NOISE = [-0.05, -0.02, 0.0, 0.0, 0.02, 0.05]  # per subject x prompt; sums to zero
ERROR = "RuntimeError: <script>alert('x')</script> & out of memory"


def _write(results: Path, row: dict) -> None:
    """The producer's layout (db3d/distributed/sink.py): method/subject in the path, subject_name inside."""
    body = {k: v for k, v in row.items() if k not in ("method", "subject")}
    body["subject_name"] = row["subject"]
    path = results / f"method={row['method']}" / f"subject={row['subject']}" / f"part-{row['trial_id']}.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist([body]), path)


def _base(method: str, subject: str, prompt: str, lam: float, trial_id: str, seed: int = 0) -> dict:
    return {"method": method, "subject": subject, "class_noun": SUBJECTS[subject], "prompt": prompt,
            "backbone": "sd", "seed": seed, "git_revision": "abc123", "trial_id": trial_id, "sweep": "synthetic",
            "reuse": True, "config.method.name": method, "config.method.lambda_recon": lam,
            "config.method.lambda_sds": 1.0, "config.sds.guidance_scale": 100.0, "config.seed": seed,
            "config.subject": subject, "config.prompt": prompt, "config.out": f"/x/trials/{trial_id}",
            "config.nerf.elevation_range": "[-10.0, 60.0]"}


def build_results(root: Path, weights: str = "pretrained") -> Path:
    """2 methods x 3 subjects x 2 prompts x 2 lambda_recon ok trials with metrics, a failed trial, an ok
    trial without metric columns. R-precision: method mean + (+0.1 at lambda_recon=1, -0.1 at 0.1) + noise;
    Janus and CLIP rank (lower is better) rise with lambda_recon, so their best is 0.1."""
    results = root / "sweep" / "results"
    for method, base in METHODS.items():
        k = 0
        for subject in SUBJECTS:
            for prompt in PROMPTS:
                noise = NOISE[k]
                k += 1
                for lam in LAMBDAS:
                    tid = f"{method[:6]}-{subject}-{PROMPTS.index(prompt)}-{lam}"
                    effect = 0.1 if lam == 1.0 else -0.1
                    exports = root / "sweep" / "trials" / tid / "exports"
                    exports.mkdir(parents=True, exist_ok=True)
                    row = _base(method, subject, prompt, lam, tid)
                    row.update({"status": "ok", "error": "", "seconds.stage1": 10.0, "seconds.total": 30.0,
                                "metrics.weights": weights})
                    for name in ("turntable_rgb.mp4", "turntable_textureless.mp4", "mesh.glb", "final_views.png"):
                        (exports / name).write_bytes(b"\x00")
                        row[f"uri.{name}"] = str(exports / name)
                    row["metric.r_precision.ViT-B-32.color"] = base + effect + noise
                    row["metric.r_precision.ViT-B-32.textureless"] = base - 0.1 + effect + noise
                    row["metric.r_precision.ViT-L-14.color"] = base + 0.05 + effect + noise
                    row["metric.dino.dino_vits16.color"] = 0.5 + noise
                    row["metric.clip_i.ViT-B-32.color"] = 0.7 + noise
                    row["metric.clip_t.ViT-B-32.color"] = 0.25 + noise
                    row["metric.janus.ViT-B-32.color"] = 0.3 + effect + noise
                    row["metric.clip_rank.ViT-B-32.color"] = 1.5 + effect
                    _write(results, row)
    # a failed trial (sorts first, so the first file lacks most columns) and an ok one without metrics
    failed = _base("dreambooth3d", "cat", PROMPTS[0], 1.0, "000-failed", seed=1)
    failed.update(status="failed", error=ERROR)
    _write(results, failed)
    bare = _base("dreambooth3d", "dog", PROMPTS[1], 1.0, "zzz-no-metrics", seed=2)
    bare.update(status="ok", error="", **{"seconds.total": 5.0})
    _write(results, bare)
    (results / "method=dreambooth3d" / "subject=dog" / ".part-tmp.parquet").write_bytes(b"partial")  # skipped
    views = root / "sweep" / "views" / "method=dreambooth3d" / "subject=dog"  # per-view rows: not trials
    views.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"trial_id": ["x"], "view": [0]}), views / "part-x.parquet")
    return results


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    results = build_results(root)
    out = root / "out"
    assert main([str(results), f"out={out}"]) == 0
    return out, results


# ----------------------------------------------------------------------------- statistics


def test_bootstrap_ci_pure():
    assert bootstrap_ci([0.3] * 5) == (0.3, 0.3, 0.3)
    assert bootstrap_ci([0.7]) == (0.7, 0.7, 0.7)
    assert all(np.isnan(bootstrap_ci([])))
    assert bootstrap_ci([1.0, np.nan, 3.0])[0] == 2.0
    values = np.random.default_rng(1).normal(0.0, 0.1, 20)
    values = values - values.mean() + 0.5  # constructed mean 0.5
    assert bootstrap_ci(values, 500, seed=3) == bootstrap_ci(values, 500, seed=3)  # fixed seed
    mean, lo, hi = bootstrap_ci(values, 2000, seed=0)
    assert mean == pytest.approx(0.5) and lo < 0.5 < hi
    many = np.random.default_rng(2).normal(0.0, 0.1, 2000)
    many = many - many.mean() + 0.5
    m2, lo2, hi2 = bootstrap_ci(many, 2000, seed=0)
    assert lo2 < 0.5 < hi2
    assert m2 == pytest.approx(0.5) and hi2 - lo2 < (hi - lo) / 4  # width ~ 1/sqrt(n): 100x the trials, ~1/10


def _percentile_bootstrap(x: np.ndarray, n: int, seed: int, level: float = 0.95) -> tuple[float, float]:
    """The percentile bootstrap written out with numpy (the formula bootstrap_ci used before scipy):
    n resamples of len(x) indices from default_rng(seed), in batches of 2e6 // len(x) rows."""
    rng, means, batch = np.random.default_rng(seed), np.empty(n), max(1, 2_000_000 // x.size)
    for start in range(0, n, batch):
        stop = min(n, start + batch)
        means[start:stop] = x[rng.integers(0, x.size, size=(stop - start, x.size))].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def test_bootstrap_ci_matches_the_written_out_percentile_bootstrap():
    """scipy.stats.bootstrap draws the same resamples from the same seed: the same interval."""
    cases = [(np.array([0.1, 0.4, 0.5, 1.3, 0.9]), 2000, 0, 0.95),
             (np.random.default_rng(1).normal(0.5, 0.1, 20), 500, 3, 0.95),
             (np.random.default_rng(2).exponential(1.0, 300), 2000, 5, 0.9),
             (np.random.default_rng(3).normal(0.0, 1.0, 50_000), 300, 7, 0.95)]  # 40 resamples a batch
    for x, n, seed, level in cases:
        mean, lo, hi = bootstrap_ci(x, n, seed, level)
        assert mean == pytest.approx(float(x.mean()), rel=1e-12)
        assert (lo, hi) == pytest.approx(_percentile_bootstrap(x, n, seed, level), rel=1e-9, abs=1e-12)
    # and, for a large sample, close to the normal approximation mean +- z * sd / sqrt(n)
    x = np.random.default_rng(4).normal(2.0, 0.5, 4000)
    mean, lo, hi = bootstrap_ci(x, 4000, seed=0)
    half = 1.959963984540054 * x.std() / np.sqrt(x.size)
    assert lo == pytest.approx(mean - half, abs=0.1 * half) and hi == pytest.approx(mean + half, abs=0.1 * half)


def test_method_table_ci_shrinks_with_more_trials():
    rng = np.random.default_rng(0)
    col = "metric.r_precision.ViT-B-32.color"

    def frame(n):
        v = rng.normal(0.0, 0.1, n)
        return pd.DataFrame({"method": "m", "status": "ok", col: 0.6 + v - v.mean()})  # mean exactly 0.6

    small, large = method_table(frame(12)), method_table(frame(400))
    for t in (small, large):
        assert t["mean"].iloc[0] == pytest.approx(0.6) and t["ci_lo"].iloc[0] < 0.6 < t["ci_hi"].iloc[0]
    assert (large["ci_hi"] - large["ci_lo"]).iloc[0] < (small["ci_hi"] - small["ci_lo"]).iloc[0] / 3


# ----------------------------------------------------------------------------- the report


def test_paper_table_means_and_cis(report):
    out, _ = report
    t = pd.read_csv(out / "paper_table.csv")
    for method, base in METHODS.items():
        rows = t[t["method"] == method].set_index(["metric", "model", "render"])
        expected = {("r_precision", "ViT-B-32", "color"): base, ("r_precision", "ViT-B-32", "textureless"): base - 0.1,
                    ("r_precision", "ViT-L-14", "color"): base + 0.05, ("dino", "dino_vits16", "color"): 0.5,
                    ("clip_i", "ViT-B-32", "color"): 0.7, ("clip_t", "ViT-B-32", "color"): 0.25,
                    ("janus", "ViT-B-32", "color"): 0.3}
        for key, mean in expected.items():
            r = rows.loc[key]
            assert r["mean"] == pytest.approx(mean), (method, key)
            assert r["ci_lo"] < mean < r["ci_hi"], (method, key)
            assert r["n"] == 12  # the trial without metrics and the failed one are not counted
            assert r["weights"] == "pretrained"
    md = (out / "paper_table.md").read_text()
    assert "R-precision ViT-B-32 textureless" in md and "DINO dino_vits16 color" in md and "WARNING" not in md
    assert "| dreambooth3d | **0.600 [" in md and "**0.500 [0.48" not in md  # best in bold; a tie is not


def test_best_config_and_lower_is_better(report):
    out, _ = report
    best = pd.read_csv(out / "best_config.csv")
    db3 = best[best["method"] == "dreambooth3d"].set_index("metric")
    assert db3.loc["r_precision"].query("model == 'ViT-B-32' and render == 'color'")["config.method.lambda_recon"].item() == 1.0
    rp = db3.loc["r_precision"].query("model == 'ViT-B-32' and render == 'color'")
    assert rp["mean"].item() == pytest.approx(0.7) and rp["n"].item() == 6
    assert rp["config"].item() == "method.lambda_recon=1" and rp["margin"].item() == pytest.approx(0.2)
    assert db3.loc["janus", "config.method.lambda_recon"] == 0.1  # minimised
    assert db3.loc["janus", "mean"] == pytest.approx(0.2)
    assert db3.loc["clip_rank", "config.method.lambda_recon"] == 0.1
    values = pd.read_csv(out / "best_values.csv")
    assert set(values["axis"]) == {"method.lambda_recon"}  # seed, subject, prompt, out are not axes


def test_breakdowns(report):
    out, _ = report
    by_subject, by_prompt = pd.read_csv(out / "by_subject.csv"), pd.read_csv(out / "by_prompt.csv")
    assert len(by_subject) == 2 * 3 and len(by_prompt) == 2 * 2
    assert by_subject["n_trials"].sum() == 24 + 2 and by_subject["n_failed"].sum() == 1
    cat = by_subject.set_index(["method", "subject"]).loc[("dreambooth3d", "cat")]
    assert cat["n_trials"] == 5 and cat["n_ok"] == 4 and cat["n_with_metrics"] == 4
    assert by_prompt["metric.r_precision.ViT-B-32.color"].notna().all()
    for name in ("by_subject.md", "by_prompt.md", "best_config.md", "trials.csv", "failed_trials.csv"):
        assert (out / name).is_file()
    assert (out / "by_prompt.md").read_text().count("\n| dreambooth") == 4


def test_plots_are_pngs(report):
    from PIL import Image

    out, _ = report
    pngs = sorted((out / "plots").glob("*.png"))
    assert {p.name for p in pngs} >= {"method.lambda_recon__r_precision.png", "method.lambda_recon__janus.png"}
    for p in pngs:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        with Image.open(p) as im:
            im.verify()
    # a 400-pixel panel per model x render column; both methods' colours drawn in the panels (the
    # legend strip at the bottom cut off)
    for name, n_panels in (("method.lambda_recon__r_precision.png", 3), ("method.lambda_recon__janus.png", 1)):
        with Image.open(out / "plots" / name) as im:
            assert im.width == 400 * n_panels
            panels = np.asarray(im.convert("RGB"))[: im.height - 40].reshape(-1, 3)
        drawn = {tuple(int(v) for v in c) for c in np.unique(panels, axis=0)}
        assert {(31, 119, 180), (255, 127, 14)} <= drawn, name


def test_html(report):
    out, results = report
    page = (out / "report.html").read_text()
    assert 'class="warning"' not in page  # pretrained weights
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; out of memory" in page
    assert "<script" not in page
    assert "000-failed" in page and "1 ok trial(s) have no metrics" in page
    srcs = [s.split('"')[0] for s in page.split('<video src="')[1:]]
    assert len(srcs) == 48 and all(s.endswith(".mp4") for s in srcs)
    for s in srcs:  # relative to the page, and they resolve
        assert not s.startswith("/") and (out / s).is_file()
    assert 'src="plots/method.lambda_recon__r_precision.png"' in page


def test_random_weights_warning(tmp_path, capsys):
    results = build_results(tmp_path, weights="random")
    assert main([str(results.parent)]) == 0  # the sweep's folder: its results/ is read
    out = default_out(results)
    assert out == tmp_path / "sweep" / "report"  # beside the results folder
    page = (out / "report.html").read_text()
    assert 'class="warning"' in page and "random weights" in page
    assert "WARNING" in (out / "paper_table.md").read_text()
    cap = capsys.readouterr()
    assert str(out / "report.html") in cap.out and "random weights" in cap.err


def test_single_ok_row_without_metrics(tmp_path, capsys):
    results = tmp_path / "results"
    row = _base("dreambooth3d", "dog", PROMPTS[0], 1.0, "only")
    row.update(status="ok", error="")
    _write(results, row)
    out = tmp_path / "rep"
    assert main([str(results), f"out={out}"]) == 0
    page = (out / "report.html").read_text()
    assert "No metric columns" in page and 'class="warning"' not in page
    assert len(pd.read_csv(out / "by_subject.csv")) == 1
    assert pd.read_csv(out / "trials.csv").set_index("method").loc["all", "ok"] == 1
    assert "report.html" in capsys.readouterr().out


def test_empty_and_missing_results(tmp_path):
    (tmp_path / "results").mkdir()
    assert main([str(tmp_path / "results"), f"out={tmp_path / 'r'}"]) == 0
    assert "No trial rows yet" in (tmp_path / "r" / "report.html").read_text()
    assert main([str(tmp_path / "nope")]) == 2
    assert main([]) == 2


def test_analysis_imports_no_training_code():
    code = ("import sys, analysis.report; bad = [m for m in ('torch', 'ray', 'diffusers', 'db3d', 'matplotlib') "
            "if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=120)


def test_random_search_single_method_and_string_axis(tmp_path):
    """One method, lambda_recon drawn log-uniformly (every trial its own value), a string axis, a NaN."""
    from PIL import Image

    rng = np.random.default_rng(0)
    results = tmp_path / "results"
    for i in range(30):
        lam = float(10 ** rng.uniform(-1, 1))
        row = _base("dreambooth3d", ["dog", "cat"][i % 2], PROMPTS[i % 2], lam, f"t{i:02d}")
        row.update({"status": "ok", "error": "", "config.method.final_init": ["scratch", "stage1"][i % 2],
                    "metric.r_precision.ViT-B-32.color": float(np.log10(lam)) if i != 7 else float("nan"),
                    "metrics.weights": "pretrained"})
        _write(results, row)
    out = tmp_path / "rep"
    assert main([str(results), f"out={out}", "n_boot=200"]) == 0
    values = pd.read_csv(out / "best_values.csv").set_index("axis")
    lam = values.loc["method.lambda_recon"]
    assert lam["n_levels"] == 5 and lam["n"] == 6 and "-" in lam["best_value"]  # quantile bins, the top one
    assert values.loc["method.final_init", "n_levels"] == 2
    best = pd.read_csv(out / "best_config.csv").iloc[0]
    assert best["n"] == 1 and best["n_configs"] == 29  # each random-search setting is one trial
    assert best["config.method.lambda_recon"] == pytest.approx(10 ** best["mean"])  # the largest lambda wins
    pngs = sorted(p.name for p in (out / "plots").glob("*.png") if p.name != "methods.png")  # + the per-method chart
    assert pngs == ["method.lambda_recon__r_precision.png"]  # no plot against a string axis
    with Image.open(out / "plots" / pngs[0]) as im:
        assert im.format == "PNG" and im.width > 100


def test_load_results_unifies_schemas(tmp_path):
    """Files disagreeing on columns (and on a column's type) still read as one frame."""
    from analysis.load import load_results

    results = tmp_path / "results"
    a = _base("m", "dog", PROMPTS[0], 1.0, "a")
    a.update(status="failed", error="x", **{"config.sds.guidance_scale": "100"})  # a string here
    b = _base("m", "dog", PROMPTS[0], 1.0, "b")
    b.update(status="ok", error=None, **{"metric.dino.dino_vits16.color": 0.5})
    _write(results, a)
    _write(results, b)
    df = load_results(results)
    assert len(df) == 2 and set(df["subject"]) == {"dog"} and set(df["method"]) == {"m"}
    assert df.set_index("trial_id")["metric.dino.dino_vits16.color"].to_dict() == pytest.approx({"a": np.nan, "b": 0.5},
                                                                                                   nan_ok=True)


def test_parse_metric_column():
    from analysis.load import parse_metric_column

    m = parse_metric_column("metric.r_precision.ViT-L-14.textureless")
    assert (m.metric, m.model, m.render, m.lower_is_better) == ("r_precision", "ViT-L-14", "textureless", False)
    m = parse_metric_column("metric.janus.hf.co.model.color")  # a model name with dots
    assert (m.metric, m.model, m.render, m.lower_is_better) == ("janus", "hf.co.model", "color", True)
