"""ToyWorld's text-to-image prior: a small pixel-space diffusion model that db3d trains itself.

It is an ordinary diffusers model behind db3d's Backbone interface (``backbone=toy``), so
DreamBooth (full and LoRA), SDS and img2img run on it unchanged:

    unet          ToyUNet: a UNet2DConditionModel that first folds every 2x2 pixel block into
                  channels (32 px x 3 -> 16 px x 12), works at 16, 8 and 4 px, and unfolds its
                  output again. Same forward signature as any diffusers UNet.
    text_encoder  a 2-layer T5 encoder (width 64), trained with the UNet from scratch.
    tokenizer     a unigram (T5) tokenizer built in memory: every ToyWorld word is one piece,
                  any other lowercase text falls back to characters (so "sks" is three pieces).
    scheduler     DDPM, 1000 steps, cosine (squaredcos_cap_v2) betas, v-prediction (an eps model
                  this small cannot recover x_0 at the cosine schedule's near-zero-signal end:
                  x_0 = (x_t - sqrt(1 - a) eps) / sqrt(a) amplifies its error by 1 / sqrt(a)).

The trained weights ship in ``db3d/models/toy_prior_weights/`` (fp16 safetensors, loaded as fp32);
``db3d toyworld train-prior`` reproduces them (its config is saved beside them).
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, UNet2DConditionModel
from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput
from transformers import T5Config, T5EncoderModel, T5Tokenizer

FOLD = 2  # pixels per side folded into channels
MAX_TOKENS = 32  # prompt length in tokens (a ToyWorld caption with view words is <= ~16)
TEXT_WIDTH = 64
SHIPPED = Path(__file__).parent / "toy_prior_weights"  # the trained prior that ships with db3d
WORDS_FILE = "tokenizer_words.json"  # the tokenizer's whole-word pieces, saved beside the weights


class ToyUNet(UNet2DConditionModel):
    """UNet2DConditionModel on 2x2-folded pixels: (B, 3, R, R) in, (B, 3, R, R) out.

    Its config describes the folded UNet (in_channels = 3 * FOLD^2, sample_size = R / FOLD);
    `from_pretrained` / `save_pretrained` are diffusers' own.
    """

    def forward(self, sample: torch.Tensor, timestep, encoder_hidden_states: torch.Tensor, *args,
                return_dict: bool = True, **kwargs):
        folded = F.pixel_unshuffle(sample, FOLD)  # (B, 12, R/2, R/2)
        out = super().forward(folded, timestep, encoder_hidden_states, *args, return_dict=True, **kwargs).sample
        out = F.pixel_shuffle(out, FOLD)  # (B, 3, R, R)
        return UNet2DConditionOutput(sample=out) if return_dict else (out,)


def toy_tokenizer(words: Sequence[str]) -> T5Tokenizer:
    """Whole-word pieces for `words` (ToyWorld's vocabulary: toyworld.captions.prior_words()), characters
    for anything else."""
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -4.0)]
    pieces += [(c, -6.0) for c in "abcdefghijklmnopqrstuvwxyz0123456789,.'-!?"]
    pieces += [("\u2581" + c, -5.0) for c in "abcdefghijklmnopqrstuvwxyz"]
    pieces += [("\u2581" + w, 0.0) for w in sorted(set(words)) if len(w) > 1]
    pieces += [(",", -1.0)]
    return T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=MAX_TOKENS)


def tokenizer_words(tokenizer: T5Tokenizer) -> list[str]:
    """The whole-word pieces of a toy_tokenizer (the inverse of its `words`, single letters aside)."""
    return sorted(p[1:] for p in tokenizer.get_vocab() if p.startswith("\u2581") and len(p) > 2)


def toy_unet(resolution: int = 32, blocks: tuple[int, ...] = (32, 64, 128)) -> ToyUNet:
    """The prior's UNet at `resolution` px: DownBlock2D, then cross-attention at the coarser levels."""
    n = len(blocks)
    return ToyUNet(
        sample_size=resolution // FOLD,
        in_channels=3 * FOLD * FOLD,
        out_channels=3 * FOLD * FOLD,
        block_out_channels=tuple(blocks),
        layers_per_block=1,
        down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (n - 1),
        up_block_types=("CrossAttnUpBlock2D",) * (n - 1) + ("UpBlock2D",),
        cross_attention_dim=TEXT_WIDTH,
        attention_head_dim=8,
        norm_num_groups=32,
    )


def toy_text_encoder(tokenizer: T5Tokenizer) -> T5EncoderModel:
    return T5EncoderModel(T5Config(d_model=TEXT_WIDTH, d_kv=16, d_ff=128, num_layers=2, num_heads=4,
                                   vocab_size=len(tokenizer), pad_token_id=0, eos_token_id=1,
                                   decoder_start_token_id=0, dropout_rate=0.0))


def toy_scheduler() -> DDPMScheduler:
    return DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2",
                         prediction_type="v_prediction", clip_sample=True)


def new_components(words: Sequence[str], resolution: int = 32, seed: int = 0) -> dict:
    """Randomly initialised prior (the start of training) whose tokenizer knows `words`."""
    torch.manual_seed(seed)
    tokenizer = toy_tokenizer(words)
    return dict(unet=toy_unet(resolution), text_encoder=toy_text_encoder(tokenizer), tokenizer=tokenizer,
                vae=None, scheduler=toy_scheduler(), words=sorted(set(words)))


def save_components(parts: dict, folder: Path, dtype: torch.dtype = torch.float32) -> None:
    """Write unet/, text_encoder/ and scheduler/ as diffusers / transformers folders, and the
    tokenizer's words (tokenizer_words.json)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / WORDS_FILE).write_text(json.dumps(tokenizer_words(parts["tokenizer"]), indent=0) + "\n")
    for name in ("unet", "text_encoder"):
        module = copy.deepcopy(parts[name])
        torch.nn.Module.to(module, dtype=dtype)
        module.save_pretrained(folder / name, safe_serialization=True)
    parts["scheduler"].save_pretrained(folder / "scheduler")


def load_components(folder: Path | str = "") -> dict:
    """Load a trained prior folder (default: the shipped one) through the diffusers loaders, as fp32."""
    folder = Path(folder).expanduser() if folder else SHIPPED
    unet_dir = folder / "unet"
    if not (unet_dir / "config.json").exists():
        raise FileNotFoundError(
            f"backbone=toy: no trained ToyWorld prior at '{folder}' (looked for {unet_dir}/config.json).\n"
            "  db3d ships one in db3d/models/toy_prior_weights/; if it is missing, reinstall db3d or rebuild it with "
            "`db3d toyworld train-prior out=DIR` and pass backbone.model=DIR.")
    words_file = folder / WORDS_FILE
    if not words_file.exists():
        raise FileNotFoundError(f"backbone=toy: the prior at '{folder}' has no {WORDS_FILE} (its tokenizer's words); "
                                "folders written by `db3d toyworld train-prior` have one")
    words = json.loads(words_file.read_text())
    unet = ToyUNet.from_pretrained(str(unet_dir), torch_dtype=torch.float32)
    text_encoder = T5EncoderModel.from_pretrained(str(folder / "text_encoder"), dtype=torch.float32)
    scheduler = DDPMScheduler.from_pretrained(str(folder / "scheduler"))
    return dict(unet=unet.eval(), text_encoder=text_encoder.eval(), tokenizer=toy_tokenizer(words), vae=None,
                scheduler=scheduler)


def weights_digest(folder: Path | str = "") -> str:
    """A short hash of the prior's weight files (the backbone's content key depends on it)."""
    folder = Path(folder).expanduser() if folder else SHIPPED
    h = hashlib.sha256()
    for name in ("unet/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors"):
        path = folder / name
        h.update(path.read_bytes() if path.exists() else b"missing")
    return h.hexdigest()[:16]
