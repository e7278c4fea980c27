"""Full-size shapes on the CPU through the real loaders: every stage of `db3d run` at reduced steps.

For each model it (1) writes a random-weight diffusers folder with the real architecture
(benchmarks/real_shapes.py), then (2) runs

    db3d run backbone=sd|if backbone.model=FOLDER method=dreambooth3d dreambooth.mode=lora ...

in a child process at the fewest steps that pass every stage (DreamBooth, stage 1 SDS, stage 2
pseudo views, stage 3 multi-view DreamBooth + final NeRF, exports, metrics with random CLIP / DINO
weights), and prints the per-stage wall times (summary.json) and each child's peak RSS
(os.wait4). Not part of the test suite: slow on 2 cores (`make full-size-cpu`).

    python benchmarks/full_size_cpu.py [--models sd15 sd21v if] [--work DIR] [--sd-resolution 512]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BACKBONE = {"sd15": "sd", "sd21v": "sd", "if": "if"}
# the fewest steps that still run every stage (a step of each NeRF, 2 pseudo views, one class image)
REDUCED = ["preset=smoke", "method=dreambooth3d", "dreambooth.mode=lora", "dreambooth.learning_rate=1e-4",
           "dreambooth.partial_steps=1", "dreambooth.full_steps=2", "dreambooth.multiview_steps=1",
           "dreambooth.num_class_images=1", "dreambooth.resume_every=0", "backbone.sample_steps=2",
           "pseudo.n_views=2", "nerf.steps=2", "render.resolution=64", "backbone.device=cpu"]


def run_child(cmd: list[str], log) -> tuple[int, float, float]:
    """Run cmd; return (exit code, wall seconds, peak RSS in GiB of that child alone)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
                                 "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"})
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, time.perf_counter() - start, usage.ru_maxrss / 2**20  # ru_maxrss: KiB


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["sd15", "sd21v", "if"], choices=list(BACKBONE))
    ap.add_argument("--work", type=Path, default=Path("outputs/full_size_cpu"))
    ap.add_argument("--sd-resolution", type=int, default=512,
                    help="backbone.resolution of the SD runs (SD-2.1-v is trained at 768; 512 halves the VAE cost)")
    ap.add_argument("--if-width", type=int, default=256, help="IF UNet base width (256: IF-I-M-like)")
    ap.add_argument("--t5-layers", type=int, default=6, help="T5-XXL-width encoder layers (of 24)")
    ap.add_argument("--extra", nargs="*", default=[], help="more db3d run overrides")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    rows = []
    for model in args.models:
        folder, out = args.work / "models" / model, args.work / "runs" / model
        log_path = args.work / f"{model}.log"
        with open(log_path, "a") as log:
            # 1. the random-weight diffusers folder (kept: a rerun reuses it)
            write = (0, 0.0, 0.0)
            if not (folder / "model_index.json").exists():
                write = run_child([sys.executable, str(ROOT / "benchmarks" / "real_shapes.py"), model, str(folder),
                                   "--if-width", str(args.if_width), "--t5-layers", str(args.t5_layers)], log)
                if write[0] != 0:
                    print(f"{model}: writing the folder failed (see {log_path})")
                    return 1
            # 2. db3d run through every stage and export
            res = args.sd_resolution if BACKBONE[model] == "sd" else 64
            cmd = [sys.executable, "-m", "db3d.cli", "run", f"backbone={BACKBONE[model]}",
                   f"backbone.model={folder.resolve()}", f"backbone.resolution={res}", f"out={out}",
                   f"cache_dir={args.work / 'cache'}", *REDUCED, *args.extra]
            print(f"{model}: {' '.join(cmd[2:])}", flush=True)
            rc, wall, rss = run_child(cmd, log)
        if rc != 0:
            print(f"{model}: db3d run failed with exit code {rc} (see {log_path})")
            return 1
        seconds = json.loads((out / "summary.json").read_text())["seconds"]
        rows.append((model, write, wall, rss, seconds))
        print(f"{model}: folder written in {write[1]:.0f} s (peak RSS {write[2]:.2f} GiB); db3d run {wall:.0f} s, "
              f"peak RSS {rss:.2f} GiB", flush=True)
        print("  per stage (s): " + ", ".join(f"{k} {v:.1f}" for k, v in seconds.items()), flush=True)
    print(json.dumps([{"model": m, "write_s": round(w[1], 1), "write_peak_rss_gib": round(w[2], 2),
                       "run_s": round(wall, 1), "run_peak_rss_gib": round(rss, 2),
                       "stages_s": {k: round(v, 1) for k, v in s.items()}} for m, w, wall, rss, s in rows], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
