"""Sweep figures, printed (not a timed test):

1. a 1 subject x 2 prompts x 4 lambda_recon sweep (dreambooth3d, smoke preset, tiny-sd) with and
   without stage reuse: wall time and stage executions (DreamBooth runs, stage-1 NeRFs, ...), and
   beside the measured speed-up the ideal one for the same sweep (ideal_reuse_speedup: every
   trial's stage seconds summed, over the seconds of the unique stages, from the no-reuse rows), so
   what reuse costs (locks, per-trial fixed costs, Ray) shows as the share of the ideal reached;
2. Ray's overhead per trial: the same single trial as `db3d run` and as a one-trial sweep.

Each configuration runs in its own process with its own local Ray, one after the other.

    python benchmarks/bench_sweep.py [--num-cpus 2] [--stages "dreambooth.full_steps=60 nerf.steps=40"]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from db3d.distributed.sink import read_results

ENV = {**os.environ, "RAY_AUTH_MODE": "disabled", "TQDM_DISABLE": "1", "RAY_USAGE_STATS_ENABLED": "0"}

SWEEP = """name: bench
overrides: [preset=smoke, metrics.enabled=false{extra}]
subjects: {{generated: 1}}
prompts: ["a {{0}} {{1}}", "a {{0}} {{1}} on a wooden table"]
grid:
  method: [dreambooth3d]
  method.lambda_recon: [{lambdas}]
resources: {{cpu: 1, gpu: 0}}
max_concurrent: {concurrent}
"""


def timed(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, env=ENV, check=True, capture_output=True)
    return time.perf_counter() - start


def ideal_reuse_speedup(rows) -> tuple[float, float, float]:
    """(summed stage seconds, unique stage seconds, their ratio) from a no-reuse sweep's rows.

    A stage with a content key (key.<stage>) is counted once per distinct key (its seconds averaged
    over the trials that computed it); a stage without one (exports, metrics) once per trial."""
    total = unique = 0.0
    for col in [c for c in rows.columns if c.startswith("seconds.") and c != "seconds.total"]:
        stage = col.split(".", 1)[1]
        seconds = rows[col].fillna(0.0)
        total += float(seconds.sum())
        key = f"key.{stage}"
        unique += float(seconds.groupby(rows[key]).mean().sum()) if key in rows else float(seconds.sum())
    return total, unique, total / unique if unique else float("nan")


def count(root: Path, stage: str) -> int:
    return sum(1 for p in root.glob(f"**/artifacts/{stage}/*") if p.is_dir())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-cpus", type=int, default=2)
    parser.add_argument("--stages", default="", help="extra overrides for heavier stages, e.g. "
                        "'dreambooth.full_steps=60 nerf.steps=40' (at the smoke preset fixed costs dominate)")
    args = parser.parse_args()
    db3d = [sys.executable, "-m", "db3d.cli"]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        spec = tmp / "bench.yaml"
        extra = "".join(f", {o}" for o in args.stages.split())
        spec.write_text(SWEEP.format(lambdas="0.25, 0.5, 1.0, 2.0", concurrent=args.num_cpus, extra=extra))
        # 1. reuse on / off
        figures = {}
        for name, extra in (("reuse", []), ("no reuse", ["--no-reuse"])):
            out = tmp / name.replace(" ", "_")
            wall = timed(db3d + ["sweep", f"sweep={spec}", f"out={out}", f"num_cpus={args.num_cpus}", *extra])
            execs = {s: count(out, s) for s in ("dreambooth", "stage1", "stage2", "final")}
            figures[name] = wall
            print(f"8-trial sweep, {name:8s}: {wall:6.1f} s wall; stage executions {execs}", flush=True)
        measured = figures["no reuse"] / figures["reuse"]
        total, unique, ideal = ideal_reuse_speedup(read_results(tmp / "no_reuse" / "results"))
        print(f"reuse speed-up: {measured:.2f}x wall time; ideal {ideal:.2f}x (stage seconds {total:.1f} summed "
              f"over trials, {unique:.1f} unique); reuse reaches {measured / ideal:.0%} of its ideal")
        # 2. one trial directly and through Ray
        one = tmp / "one.yaml"
        one.write_text(SWEEP.format(lambdas="1.0", concurrent=1, extra="").replace(', "a {0} {1} on a wooden table"', ""))
        direct = timed(db3d + ["run", "preset=smoke", "metrics.enabled=false", f"out={tmp / 'direct'}",
                               f"cache_dir={tmp / 'c1'}"])
        swept = timed(db3d + ["sweep", f"sweep={one}", f"out={tmp / 'swept'}", f"num_cpus={args.num_cpus}"])
        print(f"one trial: db3d run {direct:.1f} s, as a one-trial sweep {swept:.1f} s "
              f"(Ray start + Tune overhead {swept - direct:.1f} s; both include process start)")


if __name__ == "__main__":
    main()
