"""NeRF-side figures, printed (not a timed test); the previous pure-torch hash grid
(``encoding="torch_reference"``) beside the current one (``"torch"``) wherever both run, in the same
process, interleaved (old, new, old, new) and the better of the two tries kept:

1. hash-grid throughput (points/s, forward and forward+backward) at the toy preset's grid (8 levels,
   2^14 rows) and Instant-NGP's (16 levels, 2^19 rows): on the CPU the "torch" grid twice, its
   tensor ops and its compiled C kernel (db3d/nerf/cpu_kernel.py); on a CUDA machine also torch vs tcnn;
2. SDS NeRF steps/s of the ToyWorld toy preset (``backbone=toy preset=toy``: 32 px renders, 32
   samples a ray) and the same at 64 px renders, for the previous grid and the current one's tensor
   ops without the occupancy grid, the same with it calling the UNet module, with the traced UNet
   (backbone.trace), and the default (also the hash grid's C kernel); shaded renders (forward +
   backward) with finite-difference vs autograd normals, and the export's textureless turntable with each;
3. SDS NeRF steps/s and peak memory per backbone: tiny-sd and tiny-if (64 px renders); on CUDA also
   a full-size SD-1.5-architecture UNet + VAE with random weights (speed does not depend on values);
4. per-stage wall time of `db3d run` at the smoke preset, for each method.

    nice -n 10 python benchmarks/bench_nerf.py [--sds-steps 48] [--skip-run] [--skip-tiny] [--threads 1]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

IMPLEMENTATIONS = ("torch_reference", "torch")  # old, new


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _best_of(fns: dict, tries: int = 2) -> dict:
    """{name: best seconds of `tries` calls}, the calls interleaved across names (old, new, old, new)."""
    best = {name: float("inf") for name in fns}
    for _ in range(tries):
        for name, fn in fns.items():
            best[name] = min(best[name], fn())
    return best


@contextlib.contextmanager
def hash_grid_kernel(on: bool):
    """The torch hash grid with its compiled CPU kernel (DB3D_HASHGRID_KERNEL=c) or its tensor ops (torch)."""
    from db3d.nerf import cpu_kernel

    saved = os.environ.get(cpu_kernel.ENV_SWITCH)
    os.environ[cpu_kernel.ENV_SWITCH] = "c" if on else "torch"
    try:
        yield
    finally:
        if saved is None:
            del os.environ[cpu_kernel.ENV_SWITCH]
        else:
            os.environ[cpu_kernel.ENV_SWITCH] = saved


def hash_grid(device: torch.device, implementations=IMPLEMENTATIONS, n_levels: int = 16, log2_rows: int = 19,
              n_points: int = 2**16, reps: int = 5) -> None:
    """Points/s of each implementation; on the CPU "torch" twice: its tensor ops, then its C kernel."""
    from db3d.nerf import HashGridEncoding

    variants = {}  # label -> (encoding, C kernel on)
    for impl in implementations:
        enc = HashGridEncoding(n_levels=n_levels, log2_hashmap_size=log2_rows, implementation=impl, device=device)
        if impl == "torch" and device.type == "cpu":
            variants["torch tensor ops"] = (enc, False)
            variants["torch C kernel"] = (enc, True)
        else:
            variants[enc.implementation] = (enc, False)
    x = torch.rand(n_points, 3, device=device)

    def timed(enc, kernel: bool, backward: bool):
        def run() -> float:
            with hash_grid_kernel(kernel):
                enc(x).float().sum().backward()  # warm-up
                sync(device)
                start = time.perf_counter()
                for _ in range(reps):
                    y = enc(x)
                    if backward:
                        y.float().sum().backward()
                sync(device)
                return (time.perf_counter() - start) / reps
        return run

    fwd = _best_of({label: timed(enc, kernel, False) for label, (enc, kernel) in variants.items()})
    both = _best_of({label: timed(enc, kernel, True) for label, (enc, kernel) in variants.items()})
    cells = [f"{label}: {n_points / fwd[label] / 1e6:.2f} M points/s forward, "
             f"{n_points / both[label] / 1e6:.2f} M fwd+bwd" for label in variants]
    implementations = list(variants)
    first, last = implementations[0], implementations[-1]
    ratio = f"; {last} fwd+bwd at {both[first] / both[last]:.2f}x the speed of {first}" if first != last else ""
    print(f"hash grid on {device.type}, {n_levels} levels x 2^{log2_rows} rows, {n_points} points: "
          + " | ".join(cells) + ratio, flush=True)


def _fit_rate(device: torch.device, nerf, resolution: int, term, steps: int, tmp: Path, tag: str) -> float:
    """SDS NeRF steps/s: a fit of 2 + steps steps minus a fit of 2 (the setup cancels)."""
    from db3d.method.fit import fit_nerf

    times = []
    for n in (2, 2 + steps):
        sync(device)
        start = time.perf_counter()
        fit_nerf(tmp / f"{tag}-{n}", "k", replace(nerf, steps=n), resolution, n, 0, device, sds=term)
        sync(device)
        times.append(time.perf_counter() - start)
    if times[1] - times[0] < 0.1 * times[1]:  # too few steps to tell them from the setup: the whole fit
        return (2 + steps) / times[1]
    return steps / (times[1] - times[0])


def toy_sds_steps(steps: int, resolutions=(32, 64)) -> None:
    """SDS NeRF steps/s at the toy preset (its prior, 32 px) and at 64 px renders: the previous grid
    without an occupancy grid (the code before both), the current grid without one, and the
    default (current grid + occupancy grid). Each fit runs from a fresh field, as a stage does."""
    from db3d.models.backbones import build_backbone
    from db3d.core.config import compose
    from db3d.method.fit import SDSTerm
    from db3d.models import traced

    cfg = compose(["backbone=toy", "preset=toy"])
    device = torch.device("cpu")
    bb = build_backbone(cfg.backbone)
    s = cfg.sds
    term = SDSTerm(backbone=bb, prompt="a red ball on a blue box", guidance_scale=s.guidance_scale, t_min=s.t_min,
                   t_max=s.t_max, t_max_end=s.t_max_end, grad_clip=s.grad_clip, weight=cfg.method.lambda_sds)
    # (nerf config, UNet traced, hash grid's C kernel): a stage of >= traced.TRACE_MIN_CALLS steps traces the
    # UNet on the CPU (backbone.trace); these short fits are told to, so both the trace's cost and its saving
    # show. The "torch" grid's tensor ops (DB3D_HASHGRID_KERNEL=torch) were the default before the C kernel
    grid = f"torch + {cfg.nerf.occupancy_resolution}^3 occupancy grid"
    variants = {"torch_reference, no occupancy grid": (replace(cfg.nerf, encoding="torch_reference",
                                                               occupancy_resolution=0), False, False),
                "torch tensor ops, no occupancy grid": (replace(cfg.nerf, encoding="torch", occupancy_resolution=0),
                                                        False, False),
                f"{grid}, UNet module": (cfg.nerf, False, False),
                f"{grid}, traced UNet": (cfg.nerf, True, False),
                f"{grid}, traced UNet, C kernel (default)": (cfg.nerf, True, True)}
    first, last = next(iter(variants)), list(variants)[-1]

    def rate(nerf, trace: bool, kernel: bool, res: int, tmp: str, tag: str) -> float:
        saved = traced.TRACE_MIN_CALLS
        traced.TRACE_MIN_CALLS = 0 if trace else 10**9
        try:
            with hash_grid_kernel(kernel):
                return _fit_rate(device, nerf, res, term, steps, Path(tmp), tag)
        finally:
            traced.TRACE_MIN_CALLS = saved

    for res in resolutions:
        with tempfile.TemporaryDirectory() as tmp:
            fns = {name: (lambda nerf=nerf, trace=trace, kernel=kernel, name=name: 1.0 / rate(
                nerf, trace, kernel, res, tmp, f"{len(name)}-{res}-{time.monotonic_ns()}"))
                for name, (nerf, trace, kernel) in variants.items()}
            best = _best_of(fns)
        cells = " | ".join(f"{name}: {1.0 / best[name]:.2f} steps/s ({best[name] * 1e3:.0f} ms/step)"
                           for name in variants)
        print(f"SDS NeRF [toy preset, toy prior on cpu, {torch.get_num_threads()} threads] {res} px renders, "
              f"{cfg.nerf.n_samples} samples/ray, {cfg.nerf.batch_views} views, {steps} steps from a fresh field: "
              f"{cells}; the default at {best[first] / best[last]:.2f}x the speed of the first", flush=True)


def _with_encoding(nerf, impl: str):
    return replace(nerf, encoding=impl)


def shaded_renders(reps: int = 3) -> None:
    """Forward + backward of a Lambertian render (toy preset field, 32 px, 2 views): FD vs autograd normals."""
    from db3d.core.cameras import sample_random_cameras
    from db3d.core.config import compose
    from db3d.nerf.field import field_config
    from db3d.nerf import NeRFField, render_image

    nerf = compose(["backbone=toy", "preset=toy"]).nerf
    gen = torch.Generator().manual_seed(0)
    cams = sample_random_cameras(2, 32, tuple(nerf.elevation_range), tuple(nerf.distance_range),
                                 tuple(nerf.fov_range), gen)
    fns = {}
    for impl in IMPLEMENTATIONS:
        for normals in ("finite_difference", "autograd"):
            cfg = field_config(_with_encoding(nerf, impl))
            cfg.normals = normals
            torch.manual_seed(0)
            field = NeRFField(cfg)
            field.train()

            def run(field=field) -> float:
                start = time.perf_counter()
                for _ in range(reps):
                    out = render_image(field, cams, n_samples=nerf.n_samples, jitter=True, shading="lambertian",
                                       generator=gen)
                    out.rgb.sum().backward()
                return (time.perf_counter() - start) / reps
            fns[(impl, normals)] = run
    best = _best_of(fns)
    cells = " | ".join(f"{impl}, {normals} normals: {best[(impl, normals)] * 1e3:.0f} ms"
                       for impl, normals in fns)
    print(f"shaded render fwd+bwd [toy preset field, 32 px, 2 views, {nerf.n_samples} samples/ray]: {cells}",
          flush=True)


def textureless_turntable(field_path: str | None = None, frames: int = 12, resolution: int = 64) -> None:
    """The export's textureless turntable (toy preset field, no grad): normals at every sample by
    finite differences (the code before normals were gated by weight), finite differences where a
    sample shows (render.EVAL_NORMAL_MIN_WEIGHT, the default now), and autograd normals; and how far
    each one's frames are from the first's. ``field_path``: a trained field (``field.safetensors``)
    instead of a freshly initialised one."""
    from db3d.core.config import compose
    from db3d.export.media import turntable
    from db3d.nerf import NeRFField, render
    from db3d.nerf.field import field_config
    from db3d.nerf.io import load_field

    if field_path:
        base = load_field(Path(field_path))
    else:
        torch.manual_seed(0)
        base = NeRFField(field_config(compose(["backbone=toy", "preset=toy"]).nerf))
    variants = {"finite differences, every sample": ("finite_difference", 0.0),
                f"finite differences, weight > {render.EVAL_NORMAL_MIN_WEIGHT:g}": ("finite_difference",
                                                                                  render.EVAL_NORMAL_MIN_WEIGHT),
                "autograd, every sample": ("autograd", 0.0)}
    frames_of, default = {}, render.EVAL_NORMAL_MIN_WEIGHT

    def timed(name):
        normals, min_weight = variants[name]
        field = NeRFField(replace(base.config, normals=normals))
        field.load_state_dict(base.state_dict())
        field.eval()

        def run() -> float:
            render.EVAL_NORMAL_MIN_WEIGHT = min_weight
            try:
                start = time.perf_counter()
                frames_of[name] = turntable(field, frames, resolution, shading="textureless")
                return time.perf_counter() - start
            finally:
                render.EVAL_NORMAL_MIN_WEIGHT = default
        return run

    best = _best_of({name: timed(name) for name in variants})
    first = next(iter(variants))
    cells = []
    for name in variants:
        diff = (frames_of[name] - frames_of[first]).abs()
        cells.append(f"{name} {best[name]:.2f} s ({best[first] / best[name]:.2f}x; frames differ by mean "
                     f"{diff.mean():.5f}, max {diff.max():.4f})")
    print(f"textureless turntable [{'trained field' if field_path else 'initial toy preset field'}, {frames} frames, "
          f"{resolution} px]: " + " | ".join(cells), flush=True)


def sds_steps(kind: str, device: torch.device, steps: int, resolution: int = 64, n_samples: int = 32,
              implementations=("torch",)) -> None:
    from db3d.models.backbones import build_backbone
    from db3d.core.config import BackboneConfig, NeRFConfig
    from db3d.method.fit import SDSTerm

    bb = build_backbone(BackboneConfig(kind=kind, device=device.type)) if kind.startswith("tiny") else kind_gpu_sd(device)
    term = SDSTerm(backbone=bb, prompt="a sks toy", guidance_scale=100.0, t_min=0.02, t_max=0.98)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    with tempfile.TemporaryDirectory() as tmp:
        fns = {impl: (lambda impl=impl: 1.0 / _fit_rate(
            device, NeRFConfig(n_samples=n_samples, log2_hashmap_size=16, checkpoint_every=0, encoding=impl),
            resolution, term, steps, Path(tmp), f"{impl}-{time.monotonic_ns()}")) for impl in implementations}
        best = _best_of(fns, tries=1)
    mem = (f"peak GPU {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB" if device.type == "cuda"
           else f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
    name = kind if kind.startswith("tiny") else "SD-1.5 architecture (random weights), 512 px to the VAE"
    cells = " | ".join(f"{impl}: {1.0 / best[impl]:.2f} steps/s" for impl in implementations)
    print(f"SDS NeRF [{name} on {device.type}] {resolution} px renders, {n_samples} samples/ray: {cells}, {mem}",
          flush=True)


def kind_gpu_sd(device: torch.device):
    """A full-size SD-1.5 UNet + VAE + CLIP-L-sized text encoder with random weights, as a Backbone."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from db3d.models.backbones import Backbone
    from db3d.models.tiny import tiny_clip_tokenizer

    unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768).to(device).eval().requires_grad_(False)
    vae = AutoencoderKL(block_out_channels=[128, 256, 512, 512], down_block_types=["DownEncoderBlock2D"] * 4,
                        up_block_types=["UpDecoderBlock2D"] * 4, latent_channels=4, layers_per_block=2,
                        sample_size=512).to(device).eval().requires_grad_(False)
    text = CLIPTextModel(CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_attention_heads=12,
                                        num_hidden_layers=12, vocab_size=514, bos_token_id=512, eos_token_id=513,
                                        pad_token_id=513)).to(device).eval()
    sched = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    return Backbone(kind="sd", key="bench", unet=unet, text_encoder=text, tokenizer=tiny_clip_tokenizer(), vae=vae,
                    scheduler=sched, resolution=512, device=device, dtype=torch.float32, text_device=device)


def db3d_run_stages() -> None:
    for method in ("dreambooth3d", "dreambooth_fusion", "latent_nerf"):
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            subprocess.run([sys.executable, "-m", "db3d.cli", "run", "preset=smoke", f"method={method}",
                            f"out={tmp}/out", f"cache_dir={tmp}/cache"], check=True, capture_output=True)
            wall = time.perf_counter() - start
            seconds = json.loads((Path(tmp) / "out" / "summary.json").read_text())["seconds"]
        stages = ", ".join(f"{k} {v:.2f}" for k, v in seconds.items())
        print(f"db3d run smoke [{method}]: {wall:.1f} s wall (process start included); stages (s): {stages}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sds-steps", type=int, default=48,
                        help="steps a rate is measured over (a fit of 2 + N minus a fit of 2); at 10 the traced UNet's "
                             "~0.7 s trace, paid by both fits but not equally, showed the toy default at 21 ms "
                             "a step where 48 steps show 42-44")
    parser.add_argument("--skip-run", action="store_true", help="skip the db3d run smoke stages (4.)")
    parser.add_argument("--field", default=None, help="a trained field.safetensors for the textureless turntable")
    parser.add_argument("--skip-tiny", action="store_true", help="skip the tiny-sd / tiny-if figures (3.)")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch CPU threads (0: torch's default). On a machine shared with other work, 1: "
                             "with every core busy, 2 threads spend their time waiting for each other")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cpu = torch.device("cpu")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    hash_grid(cpu, n_levels=8, log2_rows=14)  # the toy preset's grid
    hash_grid(cpu, n_levels=8, log2_rows=14, n_points=2**18)  # its sample count at 64 px renders
    hash_grid(cpu)  # Instant-NGP's
    toy_sds_steps(args.sds_steps)
    shaded_renders()
    textureless_turntable(args.field)
    if not args.skip_tiny:
        for kind in ("tiny-sd", "tiny-if"):
            sds_steps(kind, cpu, args.sds_steps, implementations=IMPLEMENTATIONS)
    if torch.cuda.is_available():
        gpu = torch.device("cuda")
        hash_grid(gpu, n_points=2**18)
        hash_grid(gpu, implementations=("torch", "tcnn"), n_points=2**18)  # tcnn warns and falls back when missing
        sds_steps("sd", gpu, max(args.sds_steps, 20))
    else:
        print("no CUDA device: GPU figures (torch vs tcnn, full-size SD-1.5) skipped")
    if not args.skip_run:
        db3d_run_stages()


if __name__ == "__main__":
    main()
