"""Tiny randomly initialised text-to-image models, built in-process (no file, no network).

They have the real architectures (diffusers UNet2DConditionModel, AutoencoderKL, transformers
CLIP / T5 text encoders) at toy width, following diffusers' own pipeline tests, so every code
path (DreamBooth, SDS, img2img, save/load through diffusers) runs on a CPU in milliseconds.
Their images are noise: they show the machinery, not quality.

Tokenizers are built from in-memory vocabularies: CLIP's 256 byte-level characters, their `</w>`
forms and two special tokens with no merges; T5 from a list of (piece, score) pairs.
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTokenizer,
    T5Config,
    T5EncoderModel,
    T5Tokenizer,
)

MAX_TOKENS = 77
"""Prompt length in tokens (as CLIP's and IF's T5 tokenizers use)."""


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2 / CLIP byte-level alphabet: every byte mapped to a printable character."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def tiny_clip_tokenizer() -> CLIPTokenizer:
    """514 tokens: byte characters, their end-of-word forms, start and end of text."""
    chars = list(_bytes_to_unicode().values())
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=MAX_TOKENS)


def tiny_t5_tokenizer() -> T5Tokenizer:
    """Special tokens, the word-start marker and lowercase letters, digits and punctuation."""
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -1.0)]
    pieces += [(c, -2.0) for c in "abcdefghijklmnopqrstuvwxyz0123456789,.'-!?"]
    pieces += [("\u2581" + c, -1.5) for c in "abcdefghijklmnopqrstuvwxyz"]
    return T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=MAX_TOKENS)


def tiny_sd_components(seed: int, resolution: int) -> dict:
    """UNet blocks (32, 64), VAE blocks (32, 64) (scale factor 2), CLIP text width 32."""
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=resolution // 2,
        block_out_channels=(32, 64),
        layers_per_block=2,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        norm_num_groups=32,
    )
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(
        block_out_channels=[32, 64],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
        up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
        latent_channels=4,
        sample_size=resolution,
    )
    torch.manual_seed(seed + 2)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            bos_token_id=512, eos_token_id=513, pad_token_id=513, hidden_size=32, intermediate_size=37,
            layer_norm_eps=1e-5, num_attention_heads=4, num_hidden_layers=2, vocab_size=514,
            max_position_embeddings=MAX_TOKENS,
        )
    )
    scheduler = DDPMScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        prediction_type="epsilon", clip_sample=False, steps_offset=1,
    )
    return dict(unet=unet.eval(), vae=vae.eval(), text_encoder=text_encoder.eval(),
                tokenizer=tiny_clip_tokenizer(), scheduler=scheduler)


def tiny_if_components(seed: int, resolution: int) -> dict:
    """IF stage-I-like pixel UNet (6 output channels: noise and learned variance), T5 width 32."""
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=resolution,
        layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
        mid_block_type="UNetMidBlock2DSimpleCrossAttn",
        up_block_types=("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
        in_channels=3,
        out_channels=6,
        cross_attention_dim=32,
        encoder_hid_dim=32,
        attention_head_dim=8,
        addition_embed_type="text",
        addition_embed_type_num_heads=2,
        cross_attention_norm="group_norm",
        resnet_time_scale_shift="scale_shift",
        act_fn="gelu",
    )
    torch.manual_seed(seed + 2)
    tokenizer = tiny_t5_tokenizer()
    text_encoder = T5EncoderModel(
        T5Config(d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4, vocab_size=len(tokenizer),
                 pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    )
    scheduler = DDPMScheduler(
        num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", variance_type="learned_range",
        prediction_type="epsilon", clip_sample=True, thresholding=False,
    )
    return dict(unet=unet.eval(), vae=None, text_encoder=text_encoder.eval(), tokenizer=tokenizer,
                scheduler=scheduler)
