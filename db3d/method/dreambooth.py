"""DreamBooth personalisation (Ruiz et al., CVPR 2023) of a backbone's UNet.

    L = E ||eps_theta(x_t, t, c_"a sks dog") - eps||^2 + lambda_prior E ||eps_theta(x'_t, t, c_"a dog") - eps'||^2

(v targets for v-prediction models). One run saves checkpoints at the configured steps: the
paper's partial (150) and full (800) DreamBooth come from one run. Stage 3's multi-view
DreamBooth is the same function continued from a checkpoint (`init=`) on a new image set.

Fixed inputs are computed once, not every step: the VAE latent distribution of every image
(a latent is then drawn as mean + std * noise) and the prompt embeddings (unless the text
encoder is trained). An interrupted run resumes from its last saved training state.

Data parallel when torch.distributed is initialised with N > 1 ranks (a Ray Train worker group,
torchrun): every rank draws its own batch of `batch_size` images (the batch size is per rank;
the step averages N x batch_size), torch's DistributedDataParallel over the trained parameters
averages the gradients in the backward pass so every rank holds the same weights, and only rank 0
writes checkpoints, resume states and run.json.
"""

from __future__ import annotations

import copy
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import Tensor

from db3d.core.artifacts import (
    DreamBoothCheckpoint,
    atomic_write_json,
    content_key,
    mark_done,
    read_done,
)
from db3d.core.config import DreamBoothConfig
from db3d.core.progress import bar as progress_bar
from db3d.core.resume import load_resume_state, save_resume_state
from db3d.method.data_parallel import barrier, data_parallel, gather_objects, rank_and_world
from db3d.models import diffusion
from db3d.models.backbones import DTYPES, Backbone, cast, full_finetune_gib, shared_copy

LORA_WEIGHTS = "pytorch_lora_weights.safetensors"
STATE_FILE = "train_state.pt"


class DreamBoothNonFinite(FloatingPointError):
    """The DreamBooth loss became NaN or Inf: the run stops instead of saving broken weights."""


def learning_rate_of(cfg: DreamBoothConfig) -> float:
    """The AdamW learning rate of cfg.mode: lora_learning_rate for LoRA, learning_rate for full."""
    return cfg.lora_learning_rate if cfg.mode == "lora" else cfg.learning_rate


def make_optimizer(params: list, cfg: DreamBoothConfig) -> torch.optim.Optimizer:
    """AdamW (torch's fused kernel) or bitsandbytes' 8-bit AdamW (dreambooth.optimizer)."""
    lr = learning_rate_of(cfg)
    if cfg.optimizer == "adamw8bit":
        try:
            import bitsandbytes as bnb  # optional: only for dreambooth.optimizer=adamw8bit (CUDA)
        except ImportError as err:
            raise RuntimeError(
                "dreambooth.optimizer=adamw8bit needs the bitsandbytes package, which is not installed: "
                "`pip install bitsandbytes` (CUDA machines), or use dreambooth.optimizer=adamw") from err
        return bnb.optim.AdamW8bit(params, lr=lr, weight_decay=1e-2)
    # fused AdamW: one kernel over all tensors (CPU and CUDA; ~10% of a tiny-model step on CPU)
    return torch.optim.AdamW(params, lr=lr, weight_decay=1e-2, fused=True)


def check_full_finetune_fits(bb: Backbone, cfg: DreamBoothConfig) -> None:
    """On CUDA, refuse mode=full when its weights, gradients and AdamW moments alone exceed the GPU,
    saying how much it needs (e.g. IF-I-XL's 4.3B UNet: ~64 GiB + its frozen copy)."""
    if cfg.mode != "full" or bb.device.type != "cuda":
        return
    n = sum(p.numel() for p in bb.unet.parameters())
    need = full_finetune_gib(n, cfg.optimizer)
    frozen = sum(p.numel() * p.element_size() for p in bb.unet.parameters()) / 2**30
    total = torch.cuda.get_device_properties(bb.device).total_memory / 2**30
    if need + frozen > total:
        raise RuntimeError(
            f"dreambooth.mode=full: the {n / 1e9:.2f}B-parameter UNet needs ~{need:.0f} GiB for fp32 weights, "
            f"gradients and AdamW moments ({cfg.optimizer}) plus {frozen:.0f} GiB for the frozen copy, before "
            f"activations; this GPU has {total:.0f} GiB. Use dreambooth.mode=lora (the default for IF), "
            f"dreambooth.optimizer=adamw8bit, or a GPU with at least {need + frozen + 8:.0f} GiB.")


# ---------------------------------------------------------------------------------------------
# loading and saving fine-tuned weights
def _lora_targets(bb: Backbone) -> list[str]:
    targets = ["to_q", "to_k", "to_v", "to_out.0"]
    if bb.space == "pixel":  # IF's attention also projects the text tokens it attends to
        targets += ["add_k_proj", "add_v_proj"]
    return targets


def _add_lora(bb: Backbone, unet: torch.nn.Module, rank: int) -> None:
    from peft import LoraConfig  # heavy (~5 s with diffusers): only LoRA runs need it

    unet.requires_grad_(False)
    unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian",
                                target_modules=_lora_targets(bb)))


def _save_half(module, folder: Path, dtype: torch.dtype) -> None:
    """module.save_pretrained, with the weights written in `dtype` one tensor at a time (no second
    full-size copy of the model in memory)."""
    if dtype == torch.float32:
        module.save_pretrained(folder, safe_serialization=True)
        return
    from diffusers import ModelMixin  # heavy (~4 s): only when half-precision weights are saved
    from safetensors.torch import save_file  # with diffusers, as above

    state = {k: (v.detach().to("cpu", dtype) if v.is_floating_point() else v.detach().cpu()).contiguous()
             for k, v in module.state_dict().items()}
    if isinstance(module, ModelMixin):  # diffusers' save_pretrained takes no state dict: its two files by hand
        folder.mkdir(parents=True, exist_ok=True)
        module.save_config(folder)
        save_file(state, folder / "diffusion_pytorch_model.safetensors", metadata={"format": "pt"})
    else:  # transformers
        module.save_pretrained(folder, safe_serialization=True, state_dict=state)


def save_checkpoint(unet, text_encoder, mode: str, folder: Path, dtype: str = "fp32") -> None:
    """Full: folder/unet (+ folder/text_encoder) as diffusers folders, weights in `dtype` (fp16 halves
    the disk); LoRA: diffusers LoRA file (small; fp32)."""
    if mode == "full":
        _save_half(unet, folder / "unet", DTYPES[dtype])
        if text_encoder is not None:
            _save_half(text_encoder, folder / "text_encoder", DTYPES[dtype])
    else:
        from diffusers import StableDiffusionPipeline  # heavy (~4 s): only when a LoRA file is saved
        from peft.utils import get_peft_model_state_dict  # heavy: as above

        # peft key names (lora_A / lora_B) under the "unet." prefix: what load_lora_weights reads.
        # (convert_state_dict_to_diffusers renames to_k but not IF's add_k_proj, which breaks loading)
        layers = get_peft_model_state_dict(unet, adapter_name=unet.active_adapters()[0])
        StableDiffusionPipeline.save_lora_weights(save_directory=str(folder), unet_lora_layers=layers,
                                                  weight_name=LORA_WEIGHTS, safe_serialization=True)


def checkpoint_folder(out_dir: Path, step: int) -> Path:
    """Where a run writes its checkpoint of `step`."""
    return Path(out_dir) / f"step-{step:06d}"


def load_dreambooth(bb: Backbone, ckpt: DreamBoothCheckpoint, trainable: bool = False,
                    share_frozen: bool = True) -> Backbone:
    """The backbone with the checkpoint's weights (fp32 + train mode when trainable).

    A LoRA checkpoint's UNet shares the frozen base weights unless share_frozen is False (a full
    fine-tuning continued from a LoRA checkpoint trains every weight, so it needs its own).
    """
    text_encoder = None
    if ckpt.mode == "full":
        unet = type(bb.unet).from_pretrained(Path(ckpt.path) / "unet")  # UNet2DConditionModel or a subclass
        if ckpt.text_encoder:
            text_encoder = type(bb.text_encoder).from_pretrained(Path(ckpt.path) / "text_encoder")
    else:
        # the adapters wrap a module tree that shares the frozen weights (no second UNet in memory)
        unet = bb.trainable_unet(share_frozen=share_frozen) if trainable else shared_copy(bb.unet)
        unet.load_lora_adapter(str(ckpt.path), prefix="unet", weight_name=LORA_WEIGHTS)
    dtype = torch.float32 if trainable else bb.dtype
    for module, device in ((unet, bb.device), (text_encoder, bb.text_device)):
        if module is not None:
            module.to(device=device).train(trainable).requires_grad_(False)
            if next(module.parameters()).dtype != dtype:
                cast(module, dtype)
    if bb.compile_unet and not trainable:
        unet.compile()
    return bb.with_weights(unet, text_encoder)


# ---------------------------------------------------------------------------------------------
@dataclass
class _Fixed:
    """Inputs computed once per run."""

    mean: Tensor  # (N, C, r, r) model-space mean of each image (subject images, then class images)
    std: Tensor  # (N, C, r, r) its standard deviation (0 in pixel space)
    n_instance: int
    ids: Tensor  # (2, L) token ids: instance prompt, class prompt
    mask: Tensor  # (2, L)
    emb: Tensor  # (2, L, D) their embeddings (recomputed each step when the text encoder trains)


@torch.no_grad()
def _precompute(bb: Backbone, images: Tensor, class_imgs: Tensor | None, instance_prompt: str,
                class_prompt: str, chunk: int = 16) -> _Fixed:
    all_imgs = images if class_imgs is None else torch.cat([images, class_imgs])
    means, stds = zip(*(bb.latent_distribution(all_imgs[i:i + chunk]) for i in range(0, len(all_imgs), chunk)))
    ids, mask = bb.tokenize([instance_prompt, class_prompt or instance_prompt])
    return _Fixed(torch.cat(means), torch.cat(stds), len(images), ids, mask,
                  bb.encode_prompts([instance_prompt, class_prompt or instance_prompt]))


def _draw_batch(fixed: _Fixed, batch_size: int, use_prior: bool, gen: torch.Generator, bb: Backbone):
    """One step's samples: x0, eps (B,C,r,r), t (B,), which (B,) 0 subject / 1 class prompt.

    B = batch_size subject images, then as many class images with the prior term. Latents are
    drawn from the VAE posterior; every draw comes from `gen` (CPU), in a fixed order.
    """
    n_inst, n_cls = fixed.n_instance, len(fixed.mean) - fixed.n_instance
    idx = torch.randint(n_inst, (batch_size,), generator=gen)
    which = torch.zeros(batch_size, dtype=torch.long)
    if use_prior:
        idx = torch.cat([idx, n_inst + torch.randint(n_cls, (batch_size,), generator=gen)])
        which = torch.cat([which, torch.ones(batch_size, dtype=torch.long)])
    z_noise = torch.randn(fixed.mean[idx].shape, generator=gen).to(bb.device)
    x0 = fixed.mean[idx] + fixed.std[idx] * z_noise
    eps = torch.randn(x0.shape, generator=gen).to(bb.device)
    t = torch.randint(bb.num_train_timesteps, (len(idx),), generator=gen).to(bb.device)
    return x0, eps, t, which.to(bb.device)


def train_dreambooth(
    bb: Backbone,
    cfg: DreamBoothConfig,
    images: Tensor,
    instance_prompt: str,
    out_dir: Path,
    save_steps: Sequence[int],
    seed: int,
    key: str,
    class_imgs: Tensor | None = None,
    class_prompt: str = "",
    init: DreamBoothCheckpoint | None = None,
    callback: Callable[[int, float, float], None] | None = None,
) -> dict[int, DreamBoothCheckpoint]:
    """Fine-tune on `images` (N,3,R,R in [0,1]); return {step: checkpoint} for every save step.

    `key` names this run's inputs (backbone, images, prompts, config, init); each checkpoint's
    key is derived from it and its step. `callback(step, instance_loss, prior_loss)` runs after
    every optimiser step, with this rank's losses. Rerunning with the same out_dir resumes
    (finished checkpoints are kept).

    Under torch.distributed with N > 1 ranks, every rank calls this with the same arguments and
    out_dir; `batch_size` is per rank, rank r draws from a generator seeded seed + r, and all
    ranks return the same checkpoints, written by rank 0 (see the module docstring).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rank, world = rank_and_world()
    barrier()  # N ranks: rank 0 holds the run's lock from here, so all read the same done markers
    save_steps = sorted(set(int(s) for s in save_steps))
    total = save_steps[-1]
    use_prior = cfg.prior_preservation and class_imgs is not None and len(class_imgs) > 0 and cfg.prior_weight > 0
    ckpts = {s: read_done(checkpoint_folder(out_dir, s), DreamBoothCheckpoint) for s in save_steps}
    if all(c is not None for c in ckpts.values()):
        return ckpts  # 0. already finished

    # 1. trainable copies (fp32) of the UNet (+ text encoder), from the init checkpoint if any
    check_full_finetune_fits(bb, cfg)
    base = load_dreambooth(bb, init, trainable=True, share_frozen=cfg.mode == "lora") if init is not None else bb
    unet = base.unet if init is not None else bb.trainable_unet(share_frozen=cfg.mode == "lora")
    if cfg.mode == "full":
        unet.requires_grad_(True)
    elif init is None or init.mode == "full":
        _add_lora(bb, unet, cfg.lora_rank)
    else:  # continue training the loaded adapter
        for name, p in unet.named_parameters():
            p.requires_grad_("lora_" in name)
    unet.train()
    if cfg.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    text_encoder = None
    if cfg.train_text_encoder:
        text_encoder = cast(copy.deepcopy(base.text_encoder).to(device=bb.device), torch.float32)
        text_encoder.requires_grad_(True).train()
        if cfg.gradient_checkpointing:
            text_encoder.gradient_checkpointing_enable()
    params = [p for p in unet.parameters() if p.requires_grad]
    if text_encoder is not None:
        params += list(text_encoder.parameters())

    # 2. fixed inputs, computed once
    fixed = _precompute(base, images, class_imgs if use_prior else None, instance_prompt, class_prompt)
    gen = torch.Generator().manual_seed(seed + rank)  # rank 0 (and a single process): `seed` itself

    def denoise(x_t: Tensor, t: Tensor, which: Tensor) -> Tensor:  # (B,C,r,r), (B,), (B,) -> (B,C,r,r)
        """The model's output for subject (which 0) and class (which 1) samples: one UNet call."""
        emb = bb.embed_tokens(fixed.ids, fixed.mask, text_encoder) if text_encoder is not None else fixed.emb
        return bb.unet_output(x_t, t, emb[which], unet)

    # N ranks: DDP over the trained parameters; all start from rank 0's (LoRA's init is random)
    model = data_parallel(params, denoise)
    optimizer = make_optimizer(params, cfg)

    # 3. resume from the last training state, if one was written
    step = 0
    state_path = out_dir / STATE_FILE
    state = load_resume_state(state_path, optimizer, gen, rank, world)
    if state is not None:
        named = dict(unet.named_parameters())
        for name, value in state["unet"].items():
            named[name].data.copy_(value)
        if text_encoder is not None and "text_encoder" in state:
            text_encoder.load_state_dict(state["text_encoder"])
        step = state["step"]

    # 4. the training loop
    a_bar = bb.alphas_cumprod
    bar = progress_bar(total=total, initial=step, desc=f"DreamBooth {cfg.mode}")
    while step < total:
        # 4a. this rank's batch of subject images (and as many class images), latents from the VAE posterior
        x0, eps, t, which = _draw_batch(fixed, cfg.batch_size, use_prior, gen, bb)  # (B,C,r,r) x2, (B,), (B,)
        # 4b. forward diffusion at a random timestep
        x_t = diffusion.add_noise(x0, eps, a_bar[t])
        # 4c. one UNet call for subject + class images
        pred = model(x_t, t, which)
        err = ((pred - bb.training_target(x0, eps, t)) ** 2).flatten(1).mean(1)
        inst_loss = err[: cfg.batch_size].mean()
        prior_loss = err[cfg.batch_size:].mean() if use_prior else torch.zeros((), device=bb.device)
        loss = inst_loss + cfg.prior_weight * prior_loss
        if not torch.isfinite(loss):
            raise DreamBoothNonFinite(
                f"DreamBooth loss is not finite at step {step + 1}: loss={loss.item()} (instance "
                f"{inst_loss.item()}, prior {prior_loss.item()}), mode={cfg.mode}, lr={learning_rate_of(cfg)}. "
                "Lower the learning rate, check the images for NaNs, or use backbone.dtype=fp32.")
        # 4d. update
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # N ranks: DDP leaves the gradient of all N x batch_size samples on every rank
        if cfg.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        optimizer.step()
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{inst_loss.item():.4f}", prior=f"{prior_loss.item():.4f}")
        if callback is not None:
            callback(step, inst_loss.item(), prior_loss.item())
        # 4e. checkpoints and resumable state (rank 0 writes; the others wait for the files)
        if step in ckpts and ckpts[step] is None:
            folder = checkpoint_folder(out_dir, step)
            ckpt = DreamBoothCheckpoint(path=str(folder), step=step, mode=cfg.mode, key=content_key(key, step),
                                        backbone_key=bb.key, text_encoder=text_encoder is not None)
            if rank == 0:
                save_checkpoint(unet, text_encoder, cfg.mode, folder, cfg.checkpoint_dtype)
                mark_done(folder, ckpt)
            barrier()
            ckpts[step] = ckpt
        if step < total and (step in ckpts or (cfg.resume_every and step % cfg.resume_every == 0)):
            rngs = gather_objects(gen.get_state()) if world > 1 else None  # every rank's generator
            if rank == 0:
                _save_state(state_path, step, unet, text_encoder, optimizer, gen, rngs)
    bar.close()
    if rank == 0:
        state_path.unlink(missing_ok=True)
        atomic_write_json(out_dir / "run.json", {"key": key, "steps": total, "mode": cfg.mode,
                                                 "prior": use_prior, "instance_prompt": instance_prompt,
                                                 "class_prompt": class_prompt,
                                                 **({"world_size": world} if world > 1 else {})})
    barrier()
    return ckpts


def _save_state(path: Path, step: int, unet, text_encoder, optimizer, gen: torch.Generator,
                rng_ranks: list[Tensor] | None = None) -> None:
    """The resumable state (the trained UNet weights, + the text encoder's); `rng_ranks`: every
    rank's generator state when data parallel. Each replaces the last (db3d/core/resume.py)."""
    parts = {"unet": {n: p.detach().cpu().clone() for n, p in unet.named_parameters() if p.requires_grad}}
    if text_encoder is not None:
        parts["text_encoder"] = text_encoder.state_dict()
    save_resume_state(path, step, optimizer, gen, rng_ranks, **parts)
    print(f"DreamBooth resume state at step {step}: {path.stat().st_size / 2**20:.1f} MiB ({path})", flush=True)


def run_key(bb: Backbone, cfg: DreamBoothConfig, images: Tensor, instance_prompt: str, class_prompt: str,
            class_key: str, seed: int, init: DreamBoothCheckpoint | None, world_size: int = 1) -> str:
    """Content key of a DreamBooth run: what it reads, not the whole config.

    `world_size` > 1 (data parallel: N x batch_size samples a step, N generators) is part of it.
    """
    digest = hashlib.sha256(images.detach().cpu().float().contiguous().numpy().tobytes()).hexdigest()
    fields = {k: getattr(cfg, k) for k in ("identifier", "mode", "lora_rank", "train_text_encoder",
                                            "batch_size", "prior_preservation", "prior_weight", "max_grad_norm")}
    fields["learning_rate"] = learning_rate_of(cfg)  # of this mode (a full run's key is as before)
    if cfg.optimizer != "adamw":
        fields["optimizer"] = cfg.optimizer
    if cfg.mode == "full" and cfg.checkpoint_dtype != "fp32":
        fields["checkpoint_dtype"] = cfg.checkpoint_dtype  # its checkpoints hold other bytes
    if world_size > 1:
        fields["world_size"] = world_size
    return content_key("dreambooth", bb.key, fields, digest, instance_prompt, class_prompt, class_key, seed,
                       init.key if init else None)

