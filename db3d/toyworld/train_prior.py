"""`db3d toyworld train-prior`: train ToyWorld's text-to-image prior on renders of the world.

    db3d toyworld train-prior out=DIR [steps=2500] [minutes=60] [batch=128] [key=value ...]

1. Render the world (``enumerate_world``): every object as itself and as a few variants (new
   proportions and decals under the same caption), from random training cameras (the NeRF
   stages' camera distribution), captioned with view words. Cached in DIR/data.pt.
2. Train the UNet and the text encoder together with the v-prediction loss, with caption
   dropout (the empty prompt, for classifier-free guidance) and the generic caption "a toy" (the
   subjects' class prompt), keeping an exponential moving average of the weights.
3. Save a resumable state every `checkpoint_every` steps (DIR/state.pt) and the averaged weights
   as diffusers folders (DIR/unet, DIR/text_encoder, DIR/scheduler; fp16) with this config
   (DIR/train_config.json) and the loss curve (DIR/loss.csv).

Run again with the same DIR to resume. The shipped weights (db3d/models/toy_prior_weights) were made by
the command recorded in their train_config.json.
"""

from __future__ import annotations

import dataclasses
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from db3d.core.artifacts import atomic_write, atomic_write_json
from db3d.core.cameras import sample_random_cameras
from db3d.core.overrides import KeyValueError, key_values
from db3d.core.progress import bar
from db3d.models import diffusion
from db3d.models import toy_prior as prior
from db3d.toyworld.captions import camera_captions, prior_words
from db3d.toyworld.render import render_object
from db3d.toyworld.world import enumerate_world, variant


@dataclass
class PriorTrainConfig:
    out: str = ""
    """Output folder (required): data cache, resumable state, final weights."""
    resolution: int = 32
    """Image size in pixels (the toy backbone's resolution)."""
    n_objects: int = 120
    """World objects (enumerate_world(n_objects, world_seed))."""
    world_seed: int = 0
    """Seed of the world."""
    variants: int = 3
    """Extra instances per object with new proportions and decals (0: canonical objects only)."""
    views: int = 40
    """Random views rendered per instance."""
    supersample: int = 2
    """Rays per pixel side when rendering (antialiasing)."""
    steps: int = 2500
    """Optimiser steps."""
    minutes: float = 0.0
    """Stop (and save) after this many minutes of training in this process (0: no limit)."""
    batch: int = 128
    """Images per step."""
    learning_rate: float = 5e-4
    """AdamW learning rate after warm-up."""
    warmup: int = 100
    """Linear warm-up steps."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    ema_decay: float = 0.995
    """Decay of the weight average (warmed up as min(decay, (1 + step) / (10 + step)))."""
    caption_dropout: float = 0.1
    """Fraction of captions replaced by the empty prompt (classifier-free guidance)."""
    generic_fraction: float = 0.1
    """Fraction of captions replaced by "a toy, VIEW view" (the subjects' class prompt)."""
    checkpoint_every: int = 100
    """Steps between resumable states."""
    seed: int = 0
    """Seed of initial weights, batches and noise."""
    threads: int = 0
    """torch threads (0: torch's default)."""


def parse(argv: list[str]) -> PriorTrainConfig:
    """key=value arguments -> config; unknown keys and bad values fail naming the key."""
    defaults = dataclasses.asdict(PriorTrainConfig())
    try:
        given, rest = key_values(argv, defaults)
    except KeyValueError as err:
        raise ValueError(f"train-prior: {err.key}={err.value!r} is not a {err.kind}") from None
    if rest:
        raise ValueError(f"train-prior: unknown argument {rest[0]!r}; keys: {', '.join(defaults)}")
    cfg = PriorTrainConfig(**given)
    if not cfg.out:
        raise ValueError("train-prior: out=DIR is required")
    if cfg.resolution % 8 or cfg.batch < 1 or cfg.steps < 1:
        raise ValueError("train-prior: resolution must be a multiple of 8, batch and steps positive")
    return cfg


# ---------------------------------------------------------------------------------------------
DATA_KEYS = ("resolution", "n_objects", "world_seed", "variants", "views", "supersample", "seed")


def render_dataset(cfg: PriorTrainConfig) -> dict:
    """Renders (N, 3, R, R) uint8 and their captions: full (with view words) per image."""
    world = enumerate_world(cfg.n_objects, cfg.world_seed)
    rng = random.Random(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    images, captions, object_ids = [], [], []
    for i, obj in enumerate(bar(iterable=world, desc="render world", unit="obj")):
        for instance in [obj] + [variant(obj, rng) for _ in range(cfg.variants)]:
            cams = sample_random_cameras(cfg.views, cfg.resolution, elevation_range=(-10.0, 60.0),
                                         distance_range=(1.5, 2.0), generator=gen)
            r = render_object(instance, cams, supersample=cfg.supersample)
            images.append((r.rgb.permute(0, 3, 1, 2) * 255).round().to(torch.uint8))
            captions += camera_captions(obj.caption, cams)
            object_ids += [i] * cfg.views
    return {"images": torch.cat(images), "captions": captions, "object_ids": torch.tensor(object_ids),
            "config": {k: getattr(cfg, k) for k in DATA_KEYS}}


def load_or_render(cfg: PriorTrainConfig, folder: Path) -> dict:
    path = folder / "data.pt"
    want = {k: getattr(cfg, k) for k in DATA_KEYS}
    if path.exists():
        data = torch.load(path, weights_only=False)
        if data["config"] == want:
            return data
    data = render_dataset(cfg)
    atomic_write(path, lambda tmp: torch.save(data, tmp), per_process=False)  # large: one temp name
    return data


def _tokens(tokenizer, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    tok = tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt")
    return tok.input_ids, tok.attention_mask


# ---------------------------------------------------------------------------------------------
def train_prior(cfg: PriorTrainConfig) -> Path:
    """Train (or resume) the prior in cfg.out; return the folder of the averaged weights."""
    folder = Path(cfg.out)
    folder.mkdir(parents=True, exist_ok=True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    atomic_write_json(folder / "train_config.json", {
        "command": "db3d toyworld train-prior " + " ".join(f"{k}={v}" for k, v in dataclasses.asdict(cfg).items()
                                                           if k != "out"),
        "config": dataclasses.asdict(cfg)})
    # 1. data: renders, and each caption tokenised three ways (full, generic, empty)
    data = load_or_render(cfg, folder)
    images = data["images"]  # (N, 3, R, R) uint8
    parts = prior.new_components(prior_words(), cfg.resolution, cfg.seed)
    tokenizer, unet, text_encoder, sched = parts["tokenizer"], parts["unet"], parts["text_encoder"], parts["scheduler"]
    ids_full, mask_full = _tokens(tokenizer, data["captions"])
    generic = ["a toy, " + c.rsplit(", ", 1)[1] for c in data["captions"]]
    ids_gen, mask_gen = _tokens(tokenizer, generic)
    ids_empty, mask_empty = _tokens(tokenizer, [""])
    alphas = sched.alphas_cumprod.float()  # (T,)

    # 2. model, optimiser, weight average; resume when a state exists
    params = list(unet.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    ema = [p.detach().clone() for p in params]
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    step, losses = 0, []
    state_path = folder / "state.pt"
    if state_path.exists():
        state = torch.load(state_path, weights_only=False)
        unet.load_state_dict(state["unet"])
        text_encoder.load_state_dict(state["text_encoder"])
        opt.load_state_dict(state["opt"])
        for e, s in zip(ema, state["ema"]):
            e.copy_(s)
        gen.set_state(state["gen"])
        step, losses = state["step"], state["losses"]
        print(f"train-prior: resuming at step {step}", file=sys.stderr)
    unet.train()
    text_encoder.train()

    # 3. train
    start = time.time()
    progress = bar(total=cfg.steps, initial=step, desc="train prior", unit="step")
    while step < cfg.steps:
        idx = torch.randint(0, images.shape[0], (cfg.batch,), generator=gen)
        x0 = images[idx].float() / 127.5 - 1.0
        # captions: full, or generic, or empty (dropout)
        u = torch.rand(cfg.batch, generator=gen)
        ids, mask = ids_full[idx].clone(), mask_full[idx].clone()
        use_gen = u < cfg.generic_fraction
        ids[use_gen], mask[use_gen] = ids_gen[idx][use_gen], mask_gen[idx][use_gen]
        drop = u > 1.0 - cfg.caption_dropout
        ids[drop], mask[drop] = ids_empty, mask_empty
        t = torch.randint(0, sched.config.num_train_timesteps, (cfg.batch,), generator=gen)
        eps = torch.randn(x0.shape, generator=gen)
        x_t = diffusion.add_noise(x0, eps, alphas[t])
        lr = cfg.learning_rate * min(1.0, (step + 1) / max(1, cfg.warmup))
        for g in opt.param_groups:
            g["lr"] = lr
        emb = text_encoder(ids, attention_mask=mask)[0]
        target = diffusion.velocity(x0, eps, alphas[t])  # v = sqrt(a) eps - sqrt(1 - a) x_0
        loss = F.mse_loss(unet(x_t, t, encoder_hidden_states=emb).sample, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        decay = min(cfg.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            torch._foreach_lerp_(ema, [p.detach() for p in params], 1.0 - decay)
        step += 1
        losses.append(loss.item())
        progress.update(1)
        progress.set_postfix(loss=f"{sum(losses[-50:]) / len(losses[-50:]):.4f}")
        out_of_time = cfg.minutes > 0 and time.time() - start > 60 * cfg.minutes
        if step % cfg.checkpoint_every == 0 or step == cfg.steps or out_of_time:
            _save_state(state_path, step, unet, text_encoder, opt, ema, gen, losses)
        if out_of_time:
            print(f"train-prior: stopped after {cfg.minutes} min at step {step}; run again to resume",
                  file=sys.stderr)
            break
    progress.close()

    # 4. the averaged weights as diffusers folders, and the loss curve
    with torch.no_grad():
        for p, e in zip(params, ema):
            p.copy_(e)
    prior.save_components(parts, folder, dtype=torch.float16)
    (folder / "loss.csv").write_text("step,loss\n" + "".join(f"{i + 1},{x:.5f}\n" for i, x in enumerate(losses)))
    return folder


def _save_state(path: Path, step, unet, text_encoder, opt, ema, gen, losses) -> None:
    state = {"step": step, "unet": unet.state_dict(), "text_encoder": text_encoder.state_dict(),
             "opt": opt.state_dict(), "ema": ema, "gen": gen.get_state(), "losses": losses}
    atomic_write(path, lambda tmp: torch.save(state, tmp), per_process=False)  # each replaces the last


def main(argv: list[str]) -> int:
    try:
        cfg = parse(argv)
    except ValueError as err:
        print(err, file=sys.stderr)
        return 2
    out = train_prior(cfg)
    print(f"prior written to {out} (use backbone=toy backbone.model={out})")
    return 0
