"""One-shot GPU check: what db3d costs on one GPU with real model shapes (random weights).

Prepared for a bare single-GPU machine with no network and its own PyTorch (possibly older than
db3d's pin): it needs torch, transformers, peft, safetensors, numpy, pillow, pyarrow, plus the
pure-Python wheels of `make wheels-gpu` (diffusers, hydra-core, omegaconf, antlr4 runtime, ...);
no Ray. Models are random-weight diffusers folders with the real architectures
(benchmarks/real_shapes.py), loaded through db3d's real loaders. It prints, in about 5 minutes
on an H200 (budget: under 8):

  1. DreamBooth steps/s and peak GPU memory, SD-1.5 UNet (batch 1 + 1 class image, 64x64 latents):
     full and LoRA, fp32 and bf16 autocast;
  2. SDS NeRF steps/s and peak memory (db3d.method.fit.fit_nerf, 64 px renders): the latent path (SD-1.5,
     VAE encoder at 512 px) and the pixel path (IF-shaped UNet at 64 px), fp32 vs bf16 autocast;
  3. the torch hash grid's throughput (points/s, forward + backward);
  4. `db3d run` (dreambooth3d, SD-1.5, full fine-tuning) at --fraction of the paper's steps, per stage;
  5. labelled as an extrapolation: the paper preset's run time per subject x prompt.

    python benchmarks/gpu_check.py            # on the GPU machine (sh benchmarks/gpu_check.sh)
    python benchmarks/gpu_check.py --dry      # CPU, tiny widths, seconds: the same code paths (CI)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

import torch  # noqa: E402
from real_shapes import n_params, write_model  # noqa: E402

# the paper preset's steps (db3d/conf/preset/paper.yaml), scaled by --fraction for the db3d run
PAPER = {"dreambooth.partial_steps": 150, "dreambooth.full_steps": 800, "dreambooth.multiview_steps": 150,
         "dreambooth.num_class_images": 100, "nerf.steps": 5000}
# stage -> the paper setting whose count its time grows with (the rest are taken as fixed)
STAGE_SCALE = {"dreambooth": "dreambooth.full_steps", "stage1": "nerf.steps", "stage3_nerf": "nerf.steps",
               "stage3_dreambooth": "dreambooth.multiview_steps"}


class Meter:
    """Wall time and peak memory of a block (GPU: max_memory_allocated; CPU: not measured)."""

    def __init__(self, device: torch.device):
        self.device = device

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def reset(self) -> None:
        self.sync()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)

    def peak_gib(self) -> str:
        if self.device.type != "cuda":
            return "n/a (cpu)"
        return f"{torch.cuda.max_memory_allocated(self.device) / 2**30:.1f} GiB"


def autocast_ctx(device: torch.device, dtype: torch.dtype | None):
    import contextlib

    return contextlib.nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)


def bench_dreambooth(bb, meter: Meter, steps: int, warmup: int, work: Path) -> list[str]:
    """1. DreamBooth steps/s: full / LoRA x fp32 / bf16 autocast, batch 1 + 1 class image."""
    from db3d.core.config import DreamBoothConfig
    from db3d.method.dreambooth import train_dreambooth

    res = bb.resolution
    images = torch.rand(2, 3, res, res, generator=torch.Generator().manual_seed(0))
    cls = torch.rand(2, 3, res, res, generator=torch.Generator().manual_seed(1))
    lines = []
    for mode in ("full", "lora"):
        for name, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
            cfg = DreamBoothConfig(mode=mode, batch_size=1, resume_every=0, learning_rate=5e-6)
            stamps = []
            meter.reset()
            with autocast_ctx(bb.device, dtype):
                train_dreambooth(bb, cfg, images, "a sks dog", work / f"db-{mode}-{name}", [warmup + steps], 0,
                                 f"check-{mode}-{name}", cls, "a dog",
                                 callback=lambda s, i, p: stamps.append(time.perf_counter()))
            rate = steps / (stamps[-1] - stamps[warmup - 1])
            lines.append(f"  DreamBooth {mode:4s} {name}: {rate:6.2f} steps/s, peak {meter.peak_gib()}")
            print(lines[-1], flush=True)
    return lines


def bench_sds(bb, label: str, meter: Meter, steps: int, warmup: int, work: Path, dry: bool) -> list[str]:
    """2. SDS NeRF steps/s of db3d.method.fit.fit_nerf (64 px renders), fp32 vs bf16 autocast.

    Timed as the difference of a (warmup + steps) and a warmup-only fit: setup costs cancel.
    """
    from db3d.core.config import NeRFConfig
    from db3d.method.fit import SDSTerm, fit_nerf

    nerf = NeRFConfig(checkpoint_every=0)  # the paper-scale field: 16 levels, 2^19 rows, 64 samples a ray
    render = 64
    if dry:
        nerf, render = NeRFConfig(checkpoint_every=0, n_samples=8, log2_hashmap_size=12, n_levels=4, hidden_dim=16), 16
    lines = []
    for name, dtype in (("fp32", None), ("bf16 autocast", torch.bfloat16)):
        b = replace(bb, autocast_dtype=dtype)
        term = SDSTerm(backbone=b, prompt="a sks dog", guidance_scale=100.0, t_min=0.02, t_max=0.98)
        times = []
        meter.reset()
        for n in (warmup, warmup + steps):
            meter.sync()
            start = time.perf_counter()
            fit_nerf(work / f"sds-{label}-{name}-{n}".replace(" ", "_"), "k", nerf, render, n, 0, bb.device, sds=term)
            meter.sync()
            times.append(time.perf_counter() - start)
        diff = times[1] - times[0]
        if diff > 0.1 * times[1]:
            rate, how = steps / diff, ""
        else:  # too few steps to separate them from the setup (dry runs): the whole fit, setup included
            rate, how = (warmup + steps) / times[1], " (setup included)"
        lines.append(f"  SDS NeRF {label} {name}: {rate:6.2f} steps/s{how}, peak {meter.peak_gib()}")
        print(lines[-1], flush=True)
    return lines


def bench_hash_grid(device: torch.device, meter: Meter, n_points: int, reps: int, log2_rows: int = 19) -> list[str]:
    """3. The torch hash grid (16 levels, 2^19 rows a level): points/s through forward + backward."""
    from db3d.nerf.encoding import HashGridEncoding

    enc = HashGridEncoding(n_levels=16, log2_hashmap_size=log2_rows, implementation="torch", device=device).to(device)
    x = torch.rand(n_points, 3, device=device)
    for i in range(reps + 1):
        if i == 1:
            meter.sync()
            start = time.perf_counter()
        enc(x).square().sum().backward()
    meter.sync()
    rate = n_points * reps / (time.perf_counter() - start)
    line = (f"  hash grid (torch): {rate / 1e6:.2f} M points/s forward + backward ({n_points} points a call, "
            f"16 levels x 2^{log2_rows} rows)")
    print(line, flush=True)
    return [line]


def bench_run(folder: Path, work: Path, fraction: float, dry: bool, device: str) -> list[str]:
    """4.-5. `db3d run` at fraction x the paper's steps (per-stage times) and the extrapolation."""
    steps = {k: max(1, round(v * fraction)) for k, v in PAPER.items()}
    overrides = ["backbone=sd", f"backbone.model={folder}", f"out={work / 'run'}", f"cache_dir={work / 'cache'}",
                 "method=dreambooth3d", "metrics.enabled=false", f"backbone.device={device}",
                 *[f"{k}={v}" for k, v in steps.items()]]
    if dry:  # tiny: the smoke preset's small NeRF and exports, a 64 px backbone
        overrides += ["preset=smoke", "backbone.resolution=64", "pseudo.n_views=2", "backbone.sample_steps=2",
                      "render.resolution=16", "nerf.n_samples=8", "export.turntable_frames=2",
                      "export.turntable_resolution=16", "export.mesh_resolution=16"]
    else:  # the paper preset: 64 px renders, SD at 512, guidance 100, 20 pseudo views, 50 DDIM steps
        overrides += ["preset=paper", "backbone.resolution=512"]
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    if dry:
        env["OMP_NUM_THREADS"] = "1"
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "db3d.cli", "run", *overrides], cwd=ROOT, env=env,
                          capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        return [f"  db3d run FAILED (exit {proc.returncode}): " + " | ".join(tail)]
    seconds = json.loads((work / "run" / "summary.json").read_text())["seconds"]
    counts = ", ".join(f"{k.removeprefix('dreambooth.')}={v}" for k, v in steps.items())
    lines = [f"  db3d run at {fraction:g} x paper steps ({counts}): {wall:.0f} s wall", "  per stage (s): " + ", ".join(f"{k} {v:.1f}" for k, v in seconds.items())]
    # 5. stages scale with their step counts; class images (inside dreambooth) with their count
    est = 0.0
    for stage, sec in seconds.items():
        key = STAGE_SCALE.get(stage)
        est += sec * (PAPER[key] / steps[key] if key else 1.0)
    lines.append(f"  EXTRAPOLATION (not measured): paper preset, one subject x prompt, dreambooth3d on this device "
                 f"~ {est / 60:.0f} min (each stage's time x paper steps / steps run; fixed costs scaled too, "
                 "so an upper estimate)")
    for line in lines:
        print(line, flush=True)
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry", action="store_true", help="CPU, models at 1/16 width, a few steps: seconds")
    ap.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    ap.add_argument("--fraction", type=float, default=0.05, help="db3d run steps as a fraction of the paper's")
    ap.add_argument("--if-width", type=int, default=512, help="IF-shaped UNet base width (512: ~2.3B params)")
    args = ap.parse_args()
    start = time.perf_counter()
    dry = args.dry
    if not dry and not torch.cuda.is_available():
        print("gpu_check: CUDA is not available here; use --dry for the CPU run of the same code paths")
        return 2
    device = torch.device("cpu" if dry else "cuda")
    scale, steps, warmup = (16, 1, 1) if dry else (1, 20, 5)
    if dry:
        torch.set_num_threads(1)  # tiny tensors: threads only contend (CI machines are shared)
    meter = Meter(device)
    work = args.work or Path(tempfile.mkdtemp(prefix="db3d-gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"gpu_check ({'dry, CPU, 1/16 widths' if dry else 'GPU'}): torch {torch.__version__}, "
          f"{torch.cuda.get_device_name(0) if not dry else 'cpu'}; scratch {work}", flush=True)
    if not dry:
        torch.backends.cuda.matmul.allow_tf32 = True  # as backbone.tf32=true
        torch.backends.cudnn.allow_tf32 = True

    from db3d.core.config import BackboneConfig
    from db3d.models.backbones import build_backbone

    # 0. the folders, written once (random weights, real architectures) and loaded by the real loaders
    t0 = time.perf_counter()
    sd_folder, if_folder = work / "models" / "sd15", work / "models" / "if"
    if not (sd_folder / "model_index.json").exists():
        write_model("sd15", sd_folder, scale=scale)
    if not (if_folder / "model_index.json").exists():
        write_model("if", if_folder, if_width=args.if_width, t5_layers=1 if dry else 2, scale=scale)
    sd = build_backbone(BackboneConfig(kind="sd", model=str(sd_folder), resolution=64 if dry else 512,
                                       device=device.type, sample_steps=2))
    pix = build_backbone(BackboneConfig(kind="if", model=str(if_folder), resolution=64, device=device.type,
                                        offload_text_encoder=True, sample_steps=2))
    print(f"models written and loaded in {time.perf_counter() - t0:.0f} s: SD-1.5 UNet {n_params(sd.unet) / 1e6:.0f}M, "
          f"IF-shaped UNet {n_params(pix.unet) / 1e6:.0f}M (T5-XXL width, {len(pix.text_encoder.encoder.block)} "
          "layers: prompts only)", flush=True)

    report = {"dreambooth (SD-1.5 UNet, 512 px)": bench_dreambooth(sd, meter, steps, warmup, work)}
    report["sds latent (SD-1.5, VAE at 512)"] = bench_sds(sd, "latent", meter, steps, warmup, work, dry)
    report["sds pixel (IF-shaped, 64 px)"] = bench_sds(pix, "pixel", meter, steps, warmup, work, dry)
    report["hash grid"] = bench_hash_grid(device, meter, 2**12 if dry else 2**20, 1 if dry else 20, 12 if dry else 19)
    del sd, pix
    if device.type == "cuda":
        torch.cuda.empty_cache()
    report["db3d run"] = bench_run(sd_folder.resolve(), work, 0.001 if dry else args.fraction, dry, device.type)
    print(f"gpu_check finished in {time.perf_counter() - start:.0f} s", flush=True)
    (work / "gpu_check.json").write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
