"""ToyWorld figures, printed (not timed tests).

    python benchmarks/bench_toyworld.py

1. render throughput: 1,000 renders at 32x32, batched by object;
2. the prior: seconds per training step at batch 128 (the shipped recipe), and seconds per
   sampled image (25 DDIM steps, guidance on) with the shipped weights.
"""

from __future__ import annotations

import time

import torch

from db3d.core.cameras import sample_random_cameras
from db3d.toyworld import enumerate_world, render_object
from db3d.toyworld.captions import prior_words


def main() -> None:
    world = enumerate_world(120, seed=0)
    cams = sample_random_cameras(100, 32, distance_range=(1.8, 2.4), fov_range=(40.0, 50.0),
                                 generator=torch.Generator().manual_seed(0))
    render_object(world[0], cams[:2])  # warm-up
    for supersample in (1, 2):
        start = time.perf_counter()
        for obj in world[:10]:
            render_object(obj, cams, supersample=supersample)
        seconds = time.perf_counter() - start
        print(f"1000 ToyWorld renders at 32x32, supersample {supersample}: {seconds:.2f} s "
              f"({1000 / seconds:.0f} renders/s, {torch.get_num_threads()} threads)")


def prior() -> None:
    from db3d.core.config import BackboneConfig
    from db3d.models import toy_prior
    from db3d.models.backbones import build_backbone

    # training step: the shipped recipe's model and batch, on random images (the step's cost)
    parts = toy_prior.new_components(prior_words(), 32)
    unet, enc, tok = parts["unet"].train(), parts["text_encoder"].train(), parts["tokenizer"]
    params = list(unet.parameters()) + list(enc.parameters())
    opt = torch.optim.AdamW(params, lr=6e-4)
    ids = tok(["a red ball on a blue box, front view"] * 128, padding="max_length",
              max_length=tok.model_max_length, return_tensors="pt").input_ids
    x, t = torch.randn(128, 3, 32, 32), torch.randint(0, 1000, (128,))
    times = []
    for _ in range(6):
        start = time.perf_counter()
        loss = unet(x, t, encoder_hidden_states=enc(ids)[0]).sample.pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - start)
    step = sorted(times[1:])[len(times[1:]) // 2]
    print(f"prior training step (batch 128, {torch.get_num_threads()} threads): {step:.2f} s median; "
          f"3,000 steps ~ {3000 * step / 60:.0f} min")
    # sampling with the shipped weights
    bb = build_backbone(BackboneConfig(kind="toy", resolution=32, device="cpu"))
    cond = bb.encode_prompts(["a red ball, front view"] * 16)
    start = time.perf_counter()
    bb.sample(cond, bb.encode_prompts([""]), 5.0, torch.Generator().manual_seed(0), 25)
    print(f"prior sampling: {(time.perf_counter() - start) / 16 * 1000:.0f} ms per 32x32 image (25 steps, CFG)")


if __name__ == "__main__":
    main()
    prior()
