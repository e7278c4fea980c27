"""DreamBooth training speed and peak memory, printed (not a timed test).

CPU: the tiny SD configuration (UNet blocks (32, 64), 64 px, batch 1, no prior preservation),
measured side by side in one process, alternating rounds:
  reference  a loop in the style of diffusers' examples/dreambooth/train_dreambooth.py: every step
             its dataset opens and transforms the image file, the VAE encodes the batch and the
             text encoder embeds the prompt (no accelerate, no DataLoader workers);
  db3d       db3d.method.dreambooth.train_dreambooth: latents' distribution and embeddings computed once.
GPU (when CUDA is available): a full-size SD-1.5-architecture UNet with random weights (speed
does not depend on weight values), fp32 and bf16 autocast, batch 1 at 64x64 latents.

    python benchmarks/bench_dreambooth.py [--steps 40] [--rounds 3]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import tempfile
import time
from pathlib import Path

import torch

from db3d.core.config import BackboneConfig, DreamBoothConfig
from db3d.method.dreambooth import train_dreambooth
from db3d.models.backbones import build_backbone


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reference_loop(bb, files: list[Path], prompt: str, steps: int, warmup: int) -> float:
    """Steps/s of a train_dreambooth.py-style step: image file, VAE and text encoder every step."""
    from PIL import Image, ImageOps
    from torchvision import transforms

    transform = transforms.Compose([transforms.Resize(64), transforms.CenterCrop(64), transforms.ToTensor(),
                                    transforms.Normalize([0.5], [0.5])])
    unet = bb.trainable_unet().requires_grad_(True)
    opt = torch.optim.AdamW(unet.parameters(), lr=5e-6, weight_decay=1e-2)
    ids = bb.tokenizer([prompt], padding="max_length", max_length=bb.tokenizer.model_max_length,
                       truncation=True, return_tensors="pt").input_ids
    sched = bb.scheduler
    for i in range(warmup + steps):
        if i == warmup:
            start = time.perf_counter()
        image = ImageOps.exif_transpose(Image.open(files[i % len(files)])).convert("RGB")
        pixel_values = transform(image)[None]
        latents = bb.vae.encode(pixel_values).latent_dist.sample() * bb.vae.config.scaling_factor
        noise = torch.randn_like(latents)
        t = torch.randint(0, sched.config.num_train_timesteps, (1,))
        noisy = sched.add_noise(latents, noise, t)
        emb = bb.text_encoder(ids)[0]
        pred = unet(noisy, t, encoder_hidden_states=emb).sample
        loss = torch.nn.functional.mse_loss(pred.float(), noise.float())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    return steps / (time.perf_counter() - start)


def db3d_loop(bb, images, prompt: str, steps: int, warmup: int) -> float:
    stamps: list[float] = []
    cfg = DreamBoothConfig(batch_size=1, prior_preservation=False, resume_every=0)
    with tempfile.TemporaryDirectory() as tmp:
        train_dreambooth(bb, cfg, images, prompt, Path(tmp), [warmup + steps], seed=0, key="bench",
                         callback=lambda s, a, b: stamps.append(time.perf_counter()))
    # time from the end of the warm-up steps to the last step, excluding the final checkpoint write
    return steps / (stamps[-1] - stamps[warmup - 1])


def cpu_benchmark(steps: int, rounds: int, warmup: int) -> None:
    from db3d.core.data import load_subject_images, resolve_subject
    from db3d.core.synthetic import make_synthetic_subject

    bb = build_backbone(BackboneConfig(kind="tiny-sd", resolution=64, device="cpu"))
    folder = make_synthetic_subject(Path(tempfile.mkdtemp()) / "subject", n_images=4, size=512)
    subject = resolve_subject(str(folder), class_noun="toy")
    images, _ = load_subject_images(subject, 64)
    prompt = "a sks toy"
    results = {"reference": [], "db3d": []}
    for r in range(rounds):  # alternate, so machine noise hits both alike
        results["reference"].append(reference_loop(bb, list(subject.files), prompt, steps, warmup))
        results["db3d"].append(db3d_loop(bb, images, prompt, steps, warmup))
        print(f"round {r + 1}: reference {results['reference'][-1]:.2f} steps/s, db3d {results['db3d'][-1]:.2f} steps/s",
              flush=True)
    ref, ours = statistics.median(results["reference"]), statistics.median(results["db3d"])
    print(f"\nCPU tiny-sd, 64 px, batch 1, no prior ({torch.get_num_threads()} threads, {steps} steps x {rounds} rounds):")
    print(f"  reference-style loop : {ref:6.2f} steps/s (median)")
    print(f"  db3d train_dreambooth: {ours:6.2f} steps/s (median)")
    print(f"  ratio db3d/reference : {ours / ref:6.2f}x")
    print(f"  peak RSS of this process: {peak_rss_mib():.0f} MiB")


def gpu_benchmark(steps: int) -> None:
    from diffusers import UNet2DConditionModel

    device = torch.device("cuda")
    # SD-1.5 UNet architecture (diffusers' default UNet2DConditionModel config, cross-attention 768)
    unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768).to(device)
    n_params = sum(p.numel() for p in unet.parameters()) / 1e6
    opt = torch.optim.AdamW(unet.parameters(), lr=5e-6)
    x = torch.randn(1, 4, 64, 64, device=device)
    emb = torch.randn(1, 77, 768, device=device)
    for name, dtype in (("fp32", None), ("bf16 autocast", torch.bfloat16)):
        torch.cuda.reset_peak_memory_stats()
        for i in range(5 + steps):
            if i == 5:
                torch.cuda.synchronize()
                start = time.perf_counter()
            t = torch.randint(0, 1000, (1,), device=device)
            with torch.autocast("cuda", dtype=dtype, enabled=dtype is not None):
                pred = unet(x, t, encoder_hidden_states=emb).sample
            loss = (pred.float() - x).pow(2).mean()
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        rate = steps / (time.perf_counter() - start)
        peak = torch.cuda.max_memory_allocated() / 2**30
        print(f"GPU {torch.cuda.get_device_name()}: SD-1.5 UNet ({n_params:.0f}M params), {name}: "
              f"{rate:.2f} steps/s, peak {peak:.1f} GiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=5)
    args = parser.parse_args()
    cpu_benchmark(args.steps, args.rounds, args.warmup)
    if torch.cuda.is_available():
        gpu_benchmark(args.steps)
    else:
        print("no CUDA device: GPU figures skipped (run this on a GPU machine for them)")


if __name__ == "__main__":
    main()
