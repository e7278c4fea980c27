"""NeRF-side figures, printed (not a timed test):

1. hash-grid throughput (points/s, forward and forward+backward): torch backend on the CPU; on a
   CUDA machine torch vs tcnn (when tiny-cuda-nn is installed);
2. SDS NeRF steps/s and peak memory per backbone: tiny-sd and tiny-if (64 px renders); on CUDA also
   a full-size SD-1.5-architecture UNet + VAE with random weights (speed does not depend on values);
3. per-stage wall time of `db3d run` at the smoke preset, for each method.

    python benchmarks/bench_nerf.py [--sds-steps 10] [--skip-run]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch


def hash_grid(device: torch.device, implementation: str, n_points: int = 2**16, reps: int = 5) -> None:
    from db3d.nerf import HashGridEncoding

    enc = HashGridEncoding(n_levels=16, log2_hashmap_size=19, implementation=implementation, device=device)
    x = torch.rand(n_points, 3, device=device)
    for _ in range(2):
        enc(x).sum().backward()
    rates = {}
    for name, backward in (("forward", False), ("forward+backward", True)):
        sync(device)
        start = time.perf_counter()
        for _ in range(reps):
            y = enc(x)
            if backward:
                y.float().sum().backward()
        sync(device)
        rates[name] = reps * n_points / (time.perf_counter() - start)
    print(f"hash grid [{enc.implementation} on {device.type}] 16 levels, 2^19 rows: "
          f"{rates['forward'] / 1e6:.2f} M points/s forward, {rates['forward+backward'] / 1e6:.2f} M points/s fwd+bwd")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def sds_steps(kind: str, device: torch.device, steps: int, resolution: int = 64, n_samples: int = 32) -> None:
    from db3d.core.config import BackboneConfig, NeRFConfig
    from db3d.method.fit import SDSTerm, fit_nerf
    from db3d.models.backbones import build_backbone

    bb = build_backbone(BackboneConfig(kind=kind, device=device.type)) if kind.startswith("tiny") else kind_gpu_sd(device)
    nerf = NeRFConfig(steps=steps, n_samples=n_samples, log2_hashmap_size=16, checkpoint_every=0)
    term = SDSTerm(backbone=bb, prompt="a sks toy", guidance_scale=100.0, t_min=0.02, t_max=0.98)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    with tempfile.TemporaryDirectory() as tmp:
        # one warm-up step in its own folder, then the timed run
        fit_nerf(Path(tmp) / "warm", "w", NeRFConfig(steps=1, n_samples=n_samples, log2_hashmap_size=16), resolution,
                 1, 0, device, sds=term)
        sync(device)
        start = time.perf_counter()
        fit_nerf(Path(tmp) / "run", "r", nerf, resolution, steps, 0, device, sds=term)
        sync(device)
        rate = steps / (time.perf_counter() - start)
    mem = (f"peak GPU {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB" if device.type == "cuda"
           else f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
    name = kind if kind.startswith("tiny") else "SD-1.5 architecture (random weights), 512 px to the VAE"
    print(f"SDS NeRF [{name} on {device.type}] {resolution} px renders, {n_samples} samples/ray: "
          f"{rate:.2f} steps/s, {mem}")


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
    parser.add_argument("--sds-steps", type=int, default=10)
    parser.add_argument("--skip-run", action="store_true")
    args = parser.parse_args()
    cpu = torch.device("cpu")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    hash_grid(cpu, "torch")
    for kind in ("tiny-sd", "tiny-if"):
        sds_steps(kind, cpu, args.sds_steps)
    if torch.cuda.is_available():
        gpu = torch.device("cuda")
        hash_grid(gpu, "torch")
        hash_grid(gpu, "tcnn")  # warns and falls back to torch when tiny-cuda-nn is missing
        sds_steps("sd", gpu, max(args.sds_steps, 20))
    else:
        print("no CUDA device: GPU figures (torch vs tcnn, full-size SD-1.5) skipped")
    if not args.skip_run:
        db3d_run_stages()


if __name__ == "__main__":
    main()
