"""Random-weight text-to-image models with the real architectures, written as diffusers folders.

Speed and memory do not depend on weight values, so a folder written here and loaded through
`backbone=sd|if backbone.model=FOLDER` (diffusers' real loaders) measures what the released
weights would cost. The configurations are the public ones as we know them:

    sd15    Stable Diffusion 1.5: UNet blocks (320, 640, 1280, 1280), 8 heads, cross-attention 768;
            VAE blocks (128, 256, 512, 512), 4 latent channels; CLIP ViT-L/14 text (12 x 768).
    sd21v   Stable Diffusion 2.1 (768-v): UNet head dims (5, 10, 20, 20), linear projections,
            cross-attention 1024, v-prediction; the same VAE; OpenCLIP ViT-H text (23 x 1024, gelu).
    if      DeepFloyd IF stage I shape: a pixel UNet with IF's block types (ResNet down/up sampling,
            simple cross-attention, text projection from T5 width 4096, attention pooling into the
            time embedding, 6 output channels); width `if_width` (IF-I-M-like at 256, ~0.4B params;
            IF-I-XL uses a wider UNet, 4.3B, which does not fit a 24 GB CPU machine beside T5).
            T5 v1.1 XXL width (d_model 4096, 64 heads, gated-gelu FF 10240) with `t5_layers` of
            its 24 layers (the full encoder is 4.7B params, 19 GB in fp32).

Tokenizers are db3d.models.tiny's in-memory byte-level ones (no vocabulary files offline); the text
encoders keep the real vocabulary sizes, so embedding tables have their real size.

    python benchmarks/real_shapes.py sd15 OUT_DIR     # writes OUT_DIR (model_index.json, unet/, ...)
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

from db3d.models.tiny import MAX_TOKENS, tiny_clip_tokenizer, tiny_t5_tokenizer

SD_VAE = dict(block_out_channels=[128, 256, 512, 512], in_channels=3, out_channels=3, latent_channels=4,
              down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
              layers_per_block=2, norm_num_groups=32, sample_size=512)
SD_DOWN = ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"]
SD_UP = ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"]


def sd_unet(version: str = "1.5", scale: int = 1) -> UNet2DConditionModel:
    """SD-1.5 or SD-2.1 UNet; `scale` > 1 divides every width (CPU dry runs of the same code)."""
    ch = [c // scale for c in (320, 640, 1280, 1280)]
    common = dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=ch,
                  down_block_types=SD_DOWN, up_block_types=SD_UP, norm_num_groups=32 // min(scale, 8) or 1)
    if version == "1.5":
        return UNet2DConditionModel(cross_attention_dim=768 // scale, attention_head_dim=8, **common)
    return UNet2DConditionModel(cross_attention_dim=1024 // scale, attention_head_dim=[5, 10, 20, 20],
                                use_linear_projection=True, **{**common, "sample_size": 96})


def sd_text_encoder(version: str = "1.5", scale: int = 1) -> CLIPTextModel:
    tok_ids = dict(bos_token_id=512, eos_token_id=513, pad_token_id=513, max_position_embeddings=MAX_TOKENS)
    if version == "1.5":  # CLIP ViT-L/14 text tower
        cfg = CLIPTextConfig(hidden_size=768 // scale, intermediate_size=3072 // scale, num_hidden_layers=12,
                             num_attention_heads=12, vocab_size=49408, hidden_act="quick_gelu", **tok_ids)
    else:  # OpenCLIP ViT-H text tower, penultimate layer (SD 2.x uses 23 of its 24 layers)
        cfg = CLIPTextConfig(hidden_size=1024 // scale, intermediate_size=4096 // scale, num_hidden_layers=23,
                             num_attention_heads=16, vocab_size=49408, hidden_act="gelu", **tok_ids)
    return CLIPTextModel(cfg)


def sd_scheduler(version: str = "1.5") -> DDPMScheduler:
    return DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                         prediction_type="epsilon" if version == "1.5" else "v_prediction", clip_sample=False,
                         steps_offset=1)


def if_unet(width: int = 256, scale: int = 1) -> UNet2DConditionModel:
    """IF stage-I-shaped pixel UNet at 64 px: blocks (w, 2w, 3w, 4w), 3 layers each, head dim 64."""
    ch = [c // scale for c in (width, 2 * width, 3 * width, 4 * width)]
    return UNet2DConditionModel(
        sample_size=64, in_channels=3, out_channels=6, layers_per_block=3, block_out_channels=ch,
        down_block_types=["ResnetDownsampleBlock2D"] + ["SimpleCrossAttnDownBlock2D"] * 3,
        mid_block_type="UNetMidBlock2DSimpleCrossAttn",
        up_block_types=["SimpleCrossAttnUpBlock2D"] * 3 + ["ResnetUpsampleBlock2D"],
        cross_attention_dim=ch[-1], encoder_hid_dim=4096 // scale, attention_head_dim=64 // scale,
        addition_embed_type="text", addition_embed_type_num_heads=64 // scale, cross_attention_norm="group_norm",
        resnet_time_scale_shift="scale_shift", act_fn="gelu", norm_num_groups=32 // min(scale, 8) or 1)


def if_text_encoder(layers: int, scale: int = 1) -> T5EncoderModel:
    """T5 v1.1 XXL width with `layers` of its 24 encoder layers."""
    return T5EncoderModel(T5Config(d_model=4096 // scale, d_kv=64 // scale, d_ff=10240 // scale, num_layers=layers,
                                   num_heads=64, vocab_size=32128, feed_forward_proj="gated-gelu",
                                   pad_token_id=0, eos_token_id=1, decoder_start_token_id=0))


def if_scheduler() -> DDPMScheduler:
    return DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", variance_type="learned_range",
                         prediction_type="epsilon", clip_sample=True, thresholding=False)


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def write_model(kind: str, out: Path, if_width: int = 256, t5_layers: int = 6, scale: int = 1,
                dtype: torch.dtype = torch.float32) -> dict:
    """Write a random-weight diffusers pipeline folder; return {component: parameter count}."""
    from diffusers import IFPipeline, StableDiffusionPipeline

    torch.manual_seed(0)
    with torch.no_grad():
        if kind in ("sd15", "sd21v"):
            version = "1.5" if kind == "sd15" else "2.1"
            vae_cfg = dict(SD_VAE, block_out_channels=[c // scale for c in SD_VAE["block_out_channels"]],
                           norm_num_groups=32 // min(scale, 8) or 1)
            parts = dict(unet=sd_unet(version, scale), vae=AutoencoderKL(**vae_cfg),
                         text_encoder=sd_text_encoder(version, scale))
            pipe = StableDiffusionPipeline(**{k: v.to(dtype) for k, v in parts.items()}, tokenizer=tiny_clip_tokenizer(),
                                           scheduler=sd_scheduler(version), safety_checker=None,
                                           feature_extractor=None, requires_safety_checker=False)
        elif kind == "if":
            parts = dict(unet=if_unet(if_width, scale), text_encoder=if_text_encoder(t5_layers, scale))
            pipe = IFPipeline(**{k: v.to(dtype) for k, v in parts.items()}, tokenizer=tiny_t5_tokenizer(),
                              scheduler=if_scheduler(), safety_checker=None, feature_extractor=None,
                              watermarker=None, requires_safety_checker=False)
        else:
            raise ValueError(f"kind={kind!r}: sd15, sd21v or if")
        pipe.save_pretrained(str(out), safe_serialization=True)
    return {k: n_params(v) for k, v in parts.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("kind", choices=["sd15", "sd21v", "if"])
    ap.add_argument("out", type=Path)
    ap.add_argument("--if-width", type=int, default=256)
    ap.add_argument("--t5-layers", type=int, default=6)
    args = ap.parse_args()
    start = time.perf_counter()
    counts = write_model(args.kind, args.out, args.if_width, args.t5_layers)
    print({k: f"{v / 1e6:.1f}M" for k, v in counts.items()}, f"written in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
