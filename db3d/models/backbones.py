"""Text-to-image backbones behind one small interface.

Latent models (Stable Diffusion 1.x/2.x, eps or v-prediction) and pixel models (DeepFloyd IF
stage I, 6-channel output: noise + learned variance) look the same to the rest of db3d:

    emb = bb.encode_prompts(["a sks dog"])          # (B, L, D), cached per prompt
    z   = bb.encode_images(images)                  # [0,1] (B,3,R,R) -> model space (B,C,r,r)
    eps = bb.predict_eps(z_t, t, emb, uncond, w)    # CFG in one batched UNet call; v -> eps
    img = bb.img2img(images, emb, uncond, t_start)  # SDEdit from an exact timestep

`build_backbone(cfg)` dispatches on `cfg.kind`: the tiny kinds are built in-process from
`db3d.models.tiny`; `sd` / `if` load a diffusers folder or a cached hub id with local files only.
"""

from __future__ import annotations

import contextlib
import copy
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch import Tensor

from db3d.core.artifacts import content_key
from db3d.core.config import BackboneConfig
from db3d.models import diffusion

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


IF_MAX_TOKENS = 77
"""T5 prompt length of DeepFloyd IF (diffusers' IFPipeline.encode_prompt pads and truncates to 77)."""


def cast(module: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """Cast floating-point weights (plain nn.Module.to: diffusers' override warns on every dtype)."""
    return torch.nn.Module.to(module, dtype=dtype)


def uncompiled_copy(module: torch.nn.Module) -> torch.nn.Module:
    """A deep copy without nn.Module.compile's compiled forward (which would call the original)."""
    dup = copy.deepcopy(module)
    for m in dup.modules():
        if getattr(m, "_compiled_call_impl", None) is not None:
            m._compiled_call_impl = None
    return dup


def shared_copy(module: torch.nn.Module) -> torch.nn.Module:
    """A copy of the module tree that shares every parameter and buffer with `module` (no weights
    copied): LoRA wraps the copy's layers and trains only its adapters, the frozen weights stay one."""
    memo = {id(t): t for t in (*module.parameters(), *module.buffers())}
    dup = copy.deepcopy(module, memo)
    for m in dup.modules():
        if getattr(m, "_compiled_call_impl", None) is not None:
            m._compiled_call_impl = None
    return dup


def full_finetune_gib(n_params: int, optimizer: str = "adamw") -> float:
    """GiB that full fine-tuning holds besides activations: fp32 weights + gradients (4 + 4 bytes a
    parameter) and AdamW's two moments (8 bytes; 2 with 8-bit AdamW). The frozen copy comes on top."""
    return n_params * (8 + (2 if optimizer == "adamw8bit" else 8)) / 2**30


class BackboneNotFound(FileNotFoundError):
    """Real weights could not be found locally; the message says where we looked and what to do."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"backbone.device={name}: CUDA is not available on this machine")
    return torch.device(name)


@dataclass
class Backbone:
    kind: str
    key: str
    """Content key of the base weights (kind, model, variant, dtype, tiny seed)."""
    unet: torch.nn.Module
    text_encoder: torch.nn.Module
    tokenizer: object
    vae: torch.nn.Module | None
    scheduler: object
    """A diffusers DDPMScheduler: the training noise schedule (betas, prediction type)."""
    resolution: int
    device: torch.device
    dtype: torch.dtype
    text_device: torch.device
    sample_steps: int = 50
    """DDIM steps of a full sample; img2img from t uses the proportional share."""
    autocast_dtype: torch.dtype | None = None
    """bf16 / fp16: the SDS UNet call and VAE encoder run under torch.autocast (None: off)."""
    compile_unet: bool = False
    """backbone.compile: frozen UNets (the base and every loaded checkpoint) are torch.compiled."""
    trace_unet: bool = True
    """backbone.trace: long NeRF fits on the CPU call the UNet through TorchScript traces (models/traced.py)."""
    _prompt_cache: dict = field(default_factory=dict, repr=False)

    # -- facts about the model -------------------------------------------------------------
    @property
    def space(self) -> str:
        return "pixel" if self.vae is None else "latent"

    @property
    def prediction_type(self) -> str:
        return self.scheduler.config.prediction_type

    @property
    def num_train_timesteps(self) -> int:
        return self.scheduler.config.num_train_timesteps

    @property
    def alphas_cumprod(self) -> Tensor:
        """(T,) float32 alpha_bar on the backbone's device."""
        if "alphas_cumprod" not in self._prompt_cache:
            self._prompt_cache["alphas_cumprod"] = self.scheduler.alphas_cumprod.to(self.device, torch.float32)
        return self._prompt_cache["alphas_cumprod"]

    @property
    def model_channels(self) -> int:
        return 3 if self.vae is None else self.unet.config.in_channels

    @property
    def model_resolution(self) -> int:
        if self.vae is None:
            return self.resolution
        return self.resolution // (2 ** (len(self.vae.config.block_out_channels) - 1))

    # -- prompts ---------------------------------------------------------------------------
    @property
    def max_tokens(self) -> int:
        """Prompt length L: 77 for IF's T5 (as diffusers' IFPipeline pads; its tokenizer says 512),
        the tokenizer's own length for CLIP (77)."""
        return IF_MAX_TOKENS if self.space == "pixel" else self.tokenizer.model_max_length

    def tokenize(self, prompts: list[str]) -> tuple[Tensor, Tensor]:
        """input_ids, attention_mask: (B, L) padded to max_tokens."""
        tok = self.tokenizer(prompts, padding="max_length", max_length=self.max_tokens,
                             truncation=True, add_special_tokens=True, return_tensors="pt")
        return tok.input_ids, tok.attention_mask

    def embed_tokens(self, input_ids: Tensor, attention_mask: Tensor, text_encoder=None) -> Tensor:
        """(B, L) ids -> (B, L, D) hidden states; differentiable when the encoder is trained."""
        enc = text_encoder if text_encoder is not None else self.text_encoder
        dev = next(enc.parameters()).device
        kwargs = {"attention_mask": attention_mask.to(dev)} if self.space == "pixel" else {}
        return enc(input_ids.to(dev), **kwargs)[0].to(self.device, torch.float32)

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> Tensor:
        """(B, L, D) float32 embeddings, each prompt encoded once and cached."""
        missing = [p for p in dict.fromkeys(prompts) if ("prompt", p) not in self._prompt_cache]
        if missing:
            ids, mask = self.tokenize(missing)
            emb = self.embed_tokens(ids, mask)
            for p, e in zip(missing, emb):
                self._prompt_cache[("prompt", p)] = e
        return torch.stack([self._prompt_cache[("prompt", p)] for p in prompts])

    def offload_text_encoder(self) -> None:
        """Keep the text encoder on the CPU from now on (prompts already embedded stay cached)."""
        self.text_encoder.to("cpu")
        self.text_device = torch.device("cpu")

    def autocast(self):
        """torch.autocast in autocast_dtype on the backbone's device, or a no-op context when off."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)

    # -- image space <-> model space -------------------------------------------------------
    def latent_distribution(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """[0,1] images (B,3,R,R) -> (mean, std) of model-space samples (B,C,r,r); std = 0 for pixels."""
        x = images.to(self.device, torch.float32) * 2 - 1
        if self.vae is None:
            return x, torch.zeros_like(x)
        dist = self.vae.encode(x.to(self.dtype)).latent_dist
        s = self.vae.config.scaling_factor
        return dist.mean.float() * s, dist.std.float() * s

    def encode_images(self, images: Tensor) -> Tensor:
        """[0,1] images (B,3,R,R) -> model space (B,C,r,r) (the latent mean; differentiable)."""
        return self.latent_distribution(images)[0]

    def decode(self, z: Tensor) -> Tensor:
        """Model space (B,C,r,r) -> [0,1] images (B,3,R,R)."""
        if self.vae is None:
            x = z
        else:
            x = self.vae.decode((z / self.vae.config.scaling_factor).to(self.dtype)).sample.float()
        return ((x + 1) / 2).clamp(0, 1)

    # -- noise prediction ------------------------------------------------------------------
    def unet_output(self, x_t: Tensor, t: Tensor, emb: Tensor, unet=None) -> Tensor:
        """Raw model output (eps or v), first C channels (IF's learned variance dropped)."""
        unet = unet if unet is not None else self.unet
        dtype = next(unet.parameters()).dtype
        t = t.to(self.device).reshape(-1).expand(x_t.shape[0]) if t.numel() == 1 else t.to(self.device)
        out = unet(x_t.to(dtype), t, encoder_hidden_states=emb.to(dtype)).sample
        return out[:, : x_t.shape[1]].float()

    def predict_eps(self, x_t: Tensor, t: Tensor, cond: Tensor, uncond: Tensor | None = None,
                    guidance_scale: float = 1.0, unet=None) -> Tensor:
        """eps_hat (B,C,r,r) with classifier-free guidance in one batched UNet call.

        guidance_scale uses the convention eps_u + w (eps_c - eps_u): w = 1 is unguided.
        """
        t = t.to(self.device).reshape(-1).expand(x_t.shape[0]) if t.numel() == 1 else t.to(self.device)
        if uncond is None or guidance_scale == 1.0:
            out = self.unet_output(x_t, t, cond, unet)
            return self._to_eps(out, x_t, t)
        uncond = uncond.expand(cond.shape[0], -1, -1) if uncond.shape[0] == 1 else uncond
        out = self.unet_output(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([uncond, cond]), unet)
        eps_u, eps_c = self._to_eps(out, torch.cat([x_t, x_t]), torch.cat([t, t])).chunk(2)
        return diffusion.cfg_combine(eps_u, eps_c, guidance_scale)

    def _to_eps(self, out: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        if self.prediction_type == "v_prediction":
            return diffusion.v_to_eps(out, x_t.float(), self.alphas_cumprod[t])
        return out

    def training_target(self, x0: Tensor, eps: Tensor, t: Tensor) -> Tensor:
        """What the UNet is trained to output: eps, or v for v-prediction models."""
        if self.prediction_type == "v_prediction":
            return diffusion.velocity(x0, eps, self.alphas_cumprod[t])
        return eps

    # -- sampling --------------------------------------------------------------------------
    @torch.no_grad()
    def img2img(self, images: Tensor, cond: Tensor, uncond: Tensor, t_start: int, guidance_scale: float,
                generator: torch.Generator, n_steps: int | None = None, unet=None) -> Tensor:
        """SDEdit: noise [0,1] images (B,3,R,R) to exactly t_start, denoise with DDIM -> [0,1] images."""
        # 1. encode and noise to t_start (noise drawn on the CPU generator: same on every device)
        z0 = self.encode_images(images)
        eps = torch.randn(z0.shape, generator=generator).to(self.device)
        a = self.alphas_cumprod
        x = diffusion.add_noise(z0, eps, a[torch.full((z0.shape[0],), t_start, device=self.device)])
        return self._denoise(x, cond, uncond, t_start, guidance_scale, n_steps, unet)

    @torch.no_grad()
    def sample(self, cond: Tensor, uncond: Tensor, guidance_scale: float, generator: torch.Generator | None,
               n_steps: int, unet=None, noise: Tensor | None = None) -> Tensor:
        """Text-to-image from pure noise at the last timestep -> [0,1] images (B,3,R,R).

        noise: the initial x_T (B,C,r,r) when given (e.g. drawn per image), else drawn from generator.
        """
        shape = (cond.shape[0], self.model_channels, self.model_resolution, self.model_resolution)
        x = (noise if noise is not None else torch.randn(shape, generator=generator)).to(self.device)
        return self._denoise(x, cond, uncond, self.num_train_timesteps - 1, guidance_scale, n_steps, unet)

    def _denoise(self, x: Tensor, cond: Tensor, uncond: Tensor, t_start: int, guidance_scale: float,
                 n_steps: int | None, unet) -> Tensor:
        # 2. DDIM from t_start to x_0 on timesteps that begin exactly at t_start
        if n_steps is None:
            n_steps = max(1, round(self.sample_steps * t_start / self.num_train_timesteps))
        ts = diffusion.img2img_timesteps(t_start, n_steps)
        a = self.alphas_cumprod
        one = torch.ones((), device=self.device)
        for i, t in enumerate(ts):
            tt = torch.full((x.shape[0],), t, device=self.device, dtype=torch.long)
            eps = self.predict_eps(x, tt, cond, uncond, guidance_scale, unet)
            a_prev = a[ts[i + 1]] if i + 1 < len(ts) else one
            x = diffusion.ddim_step(x, eps, a[tt], a_prev.expand(x.shape[0]), clip_x0=self.space == "pixel")
        # 3. back to images
        return self.decode(x)

    # -- variants ---------------------------------------------------------------------------
    def with_weights(self, unet: torch.nn.Module, text_encoder: torch.nn.Module | None = None) -> "Backbone":
        """The same backbone with another UNet (and text encoder); shares everything else."""
        if text_encoder is None:
            return replace(self, unet=unet, _prompt_cache=self._prompt_cache)
        return replace(self, unet=unet, text_encoder=text_encoder, _prompt_cache={})

    def trainable_unet(self, share_frozen: bool = False) -> torch.nn.Module:
        """A float32 copy of the UNet for fine-tuning (the frozen one is never modified; not compiled).

        share_frozen (LoRA): on an fp32 backbone the copy shares the frozen weights instead of copying
        them (LoRA trains its adapters only), which saves a whole UNet of memory (17 GB for IF-I-XL).
        """
        if share_frozen and self.dtype == torch.float32:
            return shared_copy(self.unet).train()
        return cast(uncompiled_copy(self.unet).to(device=self.device), torch.float32).train()

    def save_pretrained(self, path: Path) -> None:
        """Write a diffusers pipeline folder that `backbone=sd|if backbone.model=path` loads."""
        from diffusers import IFPipeline, StableDiffusionPipeline  # heavy: diffusers (~4 s), on first use

        if self.kind == "toy":
            from db3d.models import toy_prior as prior  # heavy: diffusers (~4 s), on first use

            return prior.save_components(dict(unet=self.unet, text_encoder=self.text_encoder,
                                              tokenizer=self.tokenizer, scheduler=self.scheduler), Path(path))
        if self.space == "latent":
            pipe = StableDiffusionPipeline(vae=self.vae, text_encoder=self.text_encoder, tokenizer=self.tokenizer,
                                           unet=self.unet, scheduler=self.scheduler, safety_checker=None,
                                           feature_extractor=None, requires_safety_checker=False)
        else:
            pipe = IFPipeline(tokenizer=self.tokenizer, text_encoder=self.text_encoder, unet=self.unet,
                              scheduler=self.scheduler, safety_checker=None, feature_extractor=None,
                              watermarker=None, requires_safety_checker=False)
        pipe.save_pretrained(str(path), safe_serialization=True)


# ---------------------------------------------------------------------------------------------
def backbone_key(cfg: BackboneConfig) -> str:
    """The content key of the backbone `cfg` names, without loading it (artifact keys build on it)."""
    from db3d.models import toy_prior  # heavy: diffusers (~4 s), on first use

    if cfg.kind in ("tiny-sd", "tiny-if"):
        return content_key("backbone", cfg.kind, cfg.seed, cfg.resolution, cfg.dtype)
    if cfg.kind == "toy":
        return content_key("backbone", cfg.kind, toy_prior.weights_digest(cfg.model), cfg.resolution, cfg.dtype)
    if cfg.kind in ("sd", "if"):
        return content_key("backbone", cfg.kind, cfg.model, cfg.variant, cfg.dtype)
    raise ValueError(f"backbone.kind={cfg.kind!r}: must be tiny-sd, tiny-if, toy, sd or if")


def build_backbone(cfg: BackboneConfig) -> Backbone:
    """Build or load the backbone named by cfg.kind, frozen, on its device."""
    device = resolve_device(cfg.device)
    dtype = DTYPES[cfg.dtype]
    key = backbone_key(cfg)
    if cfg.kind in ("tiny-sd", "tiny-if"):
        from db3d.models import tiny  # heavy: diffusers (~4 s), on first use

        build = tiny.tiny_sd_components if cfg.kind == "tiny-sd" else tiny.tiny_if_components
        parts = build(cfg.seed, cfg.resolution)
    elif cfg.kind == "toy":
        from db3d.models import toy_prior as prior  # heavy: diffusers (~4 s), on first use

        parts = prior.load_components(cfg.model)
    else:
        parts = _load_pretrained(cfg, dtype)

    # 1. frozen weights: eval mode, no gradients, requested dtype; the text encoder first, and kept on
    #    the CPU when offloaded, so it never sits on the GPU beside the UNet (T5-XXL: 19 GB in fp32)
    text_device = torch.device("cpu") if cfg.offload_text_encoder else device
    for name in ("text_encoder", "unet", "vae"):
        module = parts.get(name)
        if module is not None:
            module.requires_grad_(False).eval()
            if next(module.parameters()).dtype != dtype:
                cast(module, dtype)  # before the move: a half-precision model moves half the bytes
            module.to(device=text_device if name == "text_encoder" else device)
    # 2. speed options (all opt-in)
    if cfg.channels_last:
        for name in ("unet", "vae"):
            if parts.get(name) is not None:
                parts[name].to(memory_format=torch.channels_last)
    if not cfg.sdpa:
        parts["unet"].set_default_attn_processor()
    if cfg.tf32:  # process-wide switches; they only affect CUDA matmuls and cuDNN convolutions
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if cfg.compile:
        parts["unet"].compile()  # in place: the module keeps its type, config and parameters
    return Backbone(kind=cfg.kind, key=key, unet=parts["unet"], text_encoder=parts["text_encoder"],
                    tokenizer=parts["tokenizer"], vae=parts["vae"], scheduler=parts["scheduler"],
                    resolution=cfg.resolution, device=device, dtype=dtype, text_device=text_device,
                    sample_steps=cfg.sample_steps, autocast_dtype=DTYPES.get(cfg.autocast),
                    compile_unet=cfg.compile, trace_unet=cfg.trace)


def _load_pretrained(cfg: BackboneConfig, dtype: torch.dtype) -> dict:
    """Load a diffusers folder or a cached hub id, offline. Raise BackboneNotFound with advice."""
    from diffusers import DDPMScheduler, IFPipeline, StableDiffusionPipeline  # heavy: diffusers (~4 s), on first use

    local = Path(cfg.model).expanduser()
    is_local = local.exists()
    if is_local and not (local / "model_index.json").exists():
        raise BackboneNotFound(
            f"backbone.model={cfg.model}: the folder exists but has no model_index.json, so it is not a "
            "diffusers pipeline folder. Point it at the folder that holds model_index.json, unet/, "
            "text_encoder/, tokenizer/ and scheduler/ (e.g. one written by `pipe.save_pretrained(...)`)."
        )
    source = str(local) if is_local else cfg.model
    kwargs: dict = {"local_files_only": True, "dtype": dtype}
    if cfg.variant:
        kwargs["variant"] = cfg.variant
    try:
        if cfg.kind == "sd":
            pipe = StableDiffusionPipeline.from_pretrained(source, safety_checker=None, feature_extractor=None,
                                                           requires_safety_checker=False, **kwargs)
        else:
            pipe = IFPipeline.from_pretrained(source, safety_checker=None, feature_extractor=None,
                                              watermarker=None, requires_safety_checker=False, **kwargs)
    except (OSError, ValueError) as err:
        cache = os.environ.get("HF_HUB_CACHE") or os.path.join(
            os.environ.get("HF_HOME", os.path.expanduser("~/.cache/huggingface")), "hub")
        example = "stable-diffusion-v1-5/stable-diffusion-v1-5" if cfg.kind == "sd" else "DeepFloyd/IF-I-XL-v1.0"
        raise BackboneNotFound(
            f"backbone={cfg.kind} backbone.model={cfg.model}: could not load it offline.\n"
            f"  looked for: a local folder '{local}' ({'found' if is_local else 'absent'}), then the hub id "
            f"'{cfg.model}' in the Hugging Face cache '{cache}' (local files only; db3d never downloads).\n"
            f"  to provide it: on a machine with network run `huggingface-cli download {example}` "
            f"(IF needs its licence accepted first) and copy the cache here, or point backbone.model at a local "
            f"diffusers folder.\n  loader said: {str(err).splitlines()[0] if str(err) else type(err).__name__}"
        ) from err
    # Training and sampling use the DDPM formulation of the model's own noise schedule.
    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    vae = getattr(pipe, "vae", None) if cfg.kind == "sd" else None
    return dict(unet=pipe.unet, vae=vae, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer, scheduler=scheduler)
