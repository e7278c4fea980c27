"""Configuration dataclasses: the one place every knob of db3d is declared and documented.

Each field carries its doc on the line below it, citing the paper's value where there is one.
Hydra composes YAML from `db3d/conf/` (groups `backbone=`, `method=`, `preset=`) on top of these
schemas, so an unknown key or a value of the wrong type fails at composition; `validate()` then
checks ranges and choices, naming the field, before any model loads.

Choice fields are plain `str` typed as the `Literal` aliases below: OmegaConf 2.3 rejects
`Literal` annotations in structured configs, so the allowed values live in the aliases and
`validate()` enforces them.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Literal, get_args

from db3d.core.overrides import CONFIG_GROUPS, check_override_keys

BackboneKind = Literal["tiny-sd", "tiny-if", "toy", "sd", "if"]
DType = Literal["fp32", "fp16", "bf16"]
MethodName = Literal["dreambooth3d", "dreambooth_fusion", "latent_nerf"]
FinetuneMode = Literal["full", "lora"]
Optimizer = Literal["adamw", "adamw8bit"]
AutocastDType = Literal["", "bf16", "fp16"]
EncodingBackend = Literal["torch", "tcnn"]
FinalInit = Literal["scratch", "stage1"]
NeRFBackground = Literal["mlp", "random_solid", "white"]
DensityBlob = Literal["linear", "gaussian"]
OnFog = Literal["fallback", "fail", "ignore"]


@dataclass
class BackboneConfig:
    kind: str = "tiny-sd"
    """BackboneKind: tiny-sd / tiny-if (random weights built in-process; tests), toy (ToyWorld's
    trained 32 px pixel prior, shipped with db3d; the demo), sd (Stable Diffusion 1.x/2.x, eps or
    v-prediction), if (DeepFloyd IF stage I, 64x64 pixels)."""
    model: str = ""
    """sd / if: a local diffusers folder or a hub id already in the Hugging Face cache (loaded
    offline). toy: a folder written by `db3d toyworld train-prior` (empty: the shipped prior).
    Empty for the tiny kinds."""
    variant: str = ""
    """Weight file variant to load, e.g. "fp16" for DeepFloyd IF's half-precision files."""
    resolution: int = 64
    """Image resolution in pixels that the backbone sees. Paper (DreamFusion / IF stage I): 64.
    Stable Diffusion is trained at 512; 64 px gives 8x8 latents and poor images."""
    dtype: str = "fp32"
    """DType of the frozen weights: fp32 / fp16 / bf16 (GPU speed option; trained weights stay fp32)."""
    device: str = "auto"
    """auto (cuda when available, else cpu), cpu, cuda, cuda:N."""
    channels_last: bool = False
    """Store the UNet and the VAE in channels_last memory format (GPU speed option; same numerics)."""
    sdpa: bool = True
    """Use torch's scaled_dot_product_attention processors (diffusers' default on torch 2)."""
    offload_text_encoder: bool = False
    """Keep the text encoder on the CPU: it is never moved to the GPU (it only embeds a few prompts,
    each cached). IF sets it: T5-XXL is 19 GB in fp32."""
    autocast: str = ""
    """"" (off), bf16 or fp16: torch.autocast around the SDS UNet call and the VAE encoder (GPU speed
    option; the weights keep backbone.dtype). bf16 SDS gradients match fp32 to a cosine >= 0.99 on
    the tiny model (tests/models/test_gpu_options.py)."""
    tf32: bool = False
    """Allow TF32 matmuls and convolutions on CUDA (Ampere and later; GPU speed option)."""
    compile: bool = False
    """torch.compile the frozen UNet (GPU speed option; the first calls pay the compilation).
    Trainable copies (DreamBooth) are not compiled."""
    trace: bool = True
    """CPU speed option: a NeRF fit of >= 200 steps calls the frozen UNet through TorchScript traces,
    one per input shape (db3d/models/traced.py): bit-identical outputs, the toy preset's SDS UNet
    call 24.1 -> 17.8 ms. Ignored on CUDA, under autocast and with compile."""
    seed: int = 0
    """Seed of the tiny backbones' random weights (ignored by sd / if)."""
    sample_steps: int = 50
    """Deterministic (DDIM, eta=0) steps for a full sample, e.g. class images. img2img uses a
    proportional share of them."""


@dataclass
class DreamBoothConfig:
    identifier: str = "sks"
    """Rare token that names the subject (DreamBooth paper: "sks")."""
    mode: str = "full"
    """FinetuneMode: full (all UNet weights, as in the paper) or lora (peft adapters)."""
    lora_rank: int = 4
    """LoRA rank when mode=lora."""
    train_text_encoder: bool = False
    """Also fine-tune the text encoder (full mode only)."""
    learning_rate: float = 5e-6
    """AdamW learning rate of mode=full (DreamBooth on SD: 5e-6)."""
    lora_learning_rate: float = 1e-4
    """AdamW learning rate of mode=lora (diffusers' DreamBooth-LoRA example: 1e-4); learning_rate
    is not used in LoRA mode."""
    optimizer: str = "adamw"
    """Optimizer: adamw (torch, fused) or adamw8bit (bitsandbytes' 8-bit AdamW: moments in 1 byte
    per value instead of 4; needs `pip install bitsandbytes` and, in practice, CUDA)."""
    gradient_checkpointing: bool = False
    """Recompute the UNet's activations in the backward pass (less memory, ~30% slower steps)."""
    checkpoint_dtype: str = "fp16"
    """DType of saved mode=full checkpoints: fp16 (half the disk: 1.7 GB for SD-1.5, 8.6 GB for
    IF-I-XL), bf16 or fp32. Training itself stays in fp32; LoRA files are small and kept fp32."""
    batch_size: int = 1
    """Subject images per step and per worker (the prior term adds as many class images); with
    num_workers N a step averages the gradients of N x batch_size images."""
    num_workers: int = 1
    """Data-parallel DreamBooth workers N (DDP: each draws its own batch, gradients averaged, rank 0
    writes). Sweeps with trainer=ray_train run each DreamBooth run as a TorchTrainer of N workers;
    `db3d run` and inline sweeps train in one process. A run on N > 1 workers has its own artifact key."""
    partial_steps: int = 150
    """Steps of the partial DreamBooth D_partial used by stage 1 and 3 (paper: 150)."""
    full_steps: int = 800
    """Steps of the fully trained DreamBooth D_full used by stage 2 (paper: 800)."""
    multiview_steps: int = 150
    """Extra steps of D_partial on pseudo views + inputs in stage 3 (paper: +150)."""
    prior_preservation: bool = True
    """Add the class-specific prior-preservation loss (DreamBooth paper, eq. 2)."""
    prior_weight: float = 1.0
    """lambda of the prior-preservation term (DreamBooth paper: 1)."""
    num_class_images: int = 100
    """Class images generated once by the base model for the prior term (DreamBooth: 200 x N),
    batch_size at a time."""
    class_seed: int = 0
    """Seed of the class images. Not the run seed: a seed sweep reuses the same class images."""
    max_grad_norm: float = 1.0
    """Gradient clipping norm (0 turns it off)."""
    resume_every: int = 50
    """Write a resumable training state every this many steps (0: only at checkpoints). Only the
    last state is kept (its size is printed; weights + AdamW moments: ~10 GB for SD-1.5 full)."""


@dataclass
class RenderConfig:
    resolution: int = 64
    """NeRF render size in pixels during SDS (DreamFusion / DreamBooth3D: 64x64)."""


@dataclass
class SDSConfig:
    guidance_scale: float = 100.0
    """Classifier-free guidance w in eps_uncond + w (eps_cond - eps_uncond) (DreamFusion: 100)."""
    t_min: float = 0.02
    """Lowest diffusion time sampled, as a fraction of the training timesteps (DreamFusion: 0.02)."""
    t_max: float = 0.98
    """Highest diffusion time sampled (DreamFusion: 0.98)."""
    t_max_end: float = -1.0
    """When in (t_min, t_max]: t_max anneals linearly to it over the stage (-1: no annealing)."""
    grad_clip: float = 0.0
    """Per-sample L2 bound of the SDS gradient (0: off)."""


@dataclass
class NeRFConfig:
    steps: int = 5000
    """Optimisation steps of each NeRF stage (DreamFusion: 15000; stable-dreamfusion: 5000-10000)."""
    learning_rate: float = 1e-2
    """Adam learning rate of the hash grid and MLPs (Instant-NGP / stable-dreamfusion: 1e-2 / 1e-3)."""
    batch_views: int = 1
    """Random cameras rendered per step (azimuths stratified over the batch)."""
    n_samples: int = 64
    """Samples per ray inside the bounding sphere."""
    occupancy_resolution: int = 64
    """Cells per side of the NeRF loop's occupancy grid over the bounding cube (db3d/nerf/occupancy.py;
    Instant-NGP / nerfacc: 128): training renders evaluate the field only at samples in occupied
    cells. 0: off, every sample evaluated. Measured on 2 CPU cores (benchmarks/bench_nerf.py, toy
    preset, fresh field): the SDS step 75 -> 52 ms at 32 px and 267 -> 115 ms at 64 px renders; the
    held-out ToyWorld bench moved -0.12 dB (dreambooth3d) and -0.03 dB (fusion) in mean PSNR (README)."""
    occupancy_every: int = 16
    """Steps between occupancy-grid updates (nerfacc: 16)."""
    occupancy_threshold: float = 0.01
    """A cell counts as empty when its density, over the longest interval a ray takes (sphere
    diameter / n_samples), is less opaque than this (nerfacc's occ_thre: 0.01)."""
    encoding: str = "torch"
    """Hash-grid backend: torch (anywhere) or tcnn (tiny-cuda-nn on CUDA; loud fallback to torch). On the
    CPU, torch runs through a C kernel compiled at first use, bit-identical to its tensor ops
    (db3d/nerf/cpu_kernel.py; DB3D_HASHGRID_KERNEL=torch switches it off): the toy preset's SDS step
    66 -> 50 ms on 2 cores."""
    normals: str = "finite_difference"
    """Normals of shaded / textureless renders and the orientation loss: finite_difference (central
    differences of density at step 1e-2, 6 extra density calls a sample; threestudio's and
    stable-dreamfusion's choice for hash grids: smooth at the step's scale) or autograd (the density's
    exact gradient, from a backward pass of the same field call; double backward while training).
    Measured on 2 CPU cores (benchmarks/bench_nerf.py): autograd makes a Lambertian render's forward +
    backward 2.0x and the export's textureless turntable 2.3x faster, but on a trained ToyWorld field
    its frames differ from finite differences' by 0.06 on average (max 0.7 of the [0, 1] range): the
    hash grid's exact gradient is much rougher. The default stays until a normal-quality figure says
    otherwise."""
    log2_hashmap_size: int = 19
    """Rows per hash-grid level, log2 (Instant-NGP: 19). The smoke preset uses a small table."""
    n_levels: int = 16
    """Hash-grid levels (Instant-NGP: 16)."""
    max_resolution: int = 2048
    """Finest hash-grid resolution over the bounding cube (stable-dreamfusion: 2048). On ToyWorld at
    32 px, 256 scored within noise of 2048 (2 subjects x 2 methods)."""
    hidden_dim: int = 64
    """Width of the density/albedo MLP (stable-dreamfusion: 64)."""
    elevation_range: list[float] = field(default_factory=lambda: [-10.0, 60.0])
    """Training camera elevation in degrees (DreamFusion: [-10, 90])."""
    distance_range: list[float] = field(default_factory=lambda: [1.5, 2.0])
    """Camera distance from the origin, bounding radius 1 (DreamFusion: [1, 1.5] of its scene scale)."""
    fov_range: list[float] = field(default_factory=lambda: [40.0, 70.0])
    """Vertical field of view in degrees (DreamFusion: focal multiplier U[0.7, 1.35] ~ [40, 70])."""
    orbit_elevation: float = 15.0
    """Elevation of the fixed orbit (pseudo views, turntables, evaluation views)."""
    orbit_distance: float = 1.75
    """Radius of that orbit."""
    orbit_fov: float = 50.0
    """Field of view on that orbit."""
    background: str = "mlp"
    """NeRFBackground: mlp (a learned function of the view direction, DreamFusion), random_solid
    (one random colour per training image), white (fixed; for priors trained on white, e.g. ToyWorld)."""
    p_albedo: float = 0.2
    """Probability of an albedo-only render (DreamFusion mixes albedo / textureless / shaded)."""
    p_textureless: float = 0.4
    """Probability of a textureless (white albedo, Lambertian) render."""
    p_lambertian: float = 0.4
    """Probability of a shaded (albedo x Lambertian) render."""
    view_dependent_prompts: bool = True
    """Append "front / side / back / overhead view" by camera direction (DreamFusion)."""
    density_blob: str = "linear"
    """DensityBlob: the density bias at initialisation. linear: DreamFusion's
    lambda_tau * (1 - |x| / c), negative beyond c, so empty space starts empty; gaussian:
    lambda_tau * exp(-|x|^2 / 2c^2), never negative (every point starts at density >= ln 2: the
    untrained field's 32 px renders were 0.999 opaque on average, a wall of fog)."""
    density_blob_scale: float = 5.0
    """lambda_tau, the bias at the centre (DreamFusion: 5; stable-dreamfusion: 5-10)."""
    density_blob_radius: float = 0.4
    """c, where the linear bias crosses 0, in units of the bounding radius (DreamFusion: 0.5;
    stable-dreamfusion: 0.2-0.5). 0.4: at the nearest, narrowest training camera (distance 1.5,
    fov 40, whose frame spans +-0.55 at the origin) the untrained field's frame border is 0.09
    opaque (0.30 with c = 0.5) and its centre 0.91; every other corner of the range <= 0.013."""
    # L_nerf. Every term is a per-image sum (a per-ray value summed over the image's rays, averaged
    # over the step's images), the units of the SDS term (fit.py). Defaults are calibrated for the
    # paper preset (guidance 100) on measured gradient norms on the field's parameters: with the
    # trained ToyWorld prior at guidance 100, shaded renders, 60 steps, the median norm per unit of
    # weight relative to SDS's was orientation 0.027, entropy 0.57, distortion 0.092, sparsity 0.81;
    # each default weight puts its term at about 3% of SDS's gradient (the old mean-over-rays terms
    # at 1e-2 / 1e-3 were 1e-7 to 1e-5 of it: off). SDS's gradient grows with guidance (toy prior,
    # guidance 7.5: 6-13x smaller), so lower-guidance presets scale these down (preset/toy.yaml).
    lambda_orientation: float = 1.0
    """Weight of the orientation loss sum_i sg(w_i) max(0, n_i . d)^2 per ray (Ref-NeRF / DreamFusion):
    ~3% of SDS's gradient at guidance 100. Computes normals for every render while > 0."""
    lambda_opacity: float = 0.05
    """Weight of the opacity entropy loss (pushes each ray's opacity to 0 or 1): ~3% of SDS's gradient."""
    lambda_sparsity: float = 0.0
    """Weight of the opacity sparsity loss (each ray's opacity): 1 makes a covered pixel cost what
    a unit SDS gradient moves. Against fog that fills the view (threestudio's lambda_sparsity). 0: off."""
    lambda_distortion: float = 0.3
    """Weight of the mip-NeRF 360 distortion loss (ray coordinate normalised to [0, 1]), part of the
    paper's L_nerf: ~3% of SDS's gradient at guidance 100."""
    mlp_learning_rate: float = 0.0
    """Adam learning rate of the MLPs (0: nerf.learning_rate; stable-dreamfusion: the hash grid's / 10)."""
    lr_decay: float = 1.0
    """Learning rates decay exponentially to this fraction of their start over the stage (1: constant)."""
    checkpoint_every: int = 200
    """Write a resumable NeRF state every this many steps."""


@dataclass
class ExportConfig:
    turntable_frames: int = 36
    """Frames of the turntable videos (one orbit)."""
    turntable_resolution: int = 128
    """Side of the turntable frames in pixels."""
    fps: int = 12
    """Frames per second of the videos."""
    mesh_resolution: int = 128
    """Density grid side for marching cubes."""


@dataclass
class MetricsConfig:
    enabled: bool = True
    """Compute the evaluation metrics on the final NeRF inside every run / trial."""
    clip_models: list[str] = field(default_factory=lambda: ["ViT-B-32"])
    """open_clip models for R-precision, CLIP-I, CLIP-T (DreamFusion / DreamBooth3D: B/16, B/32, L/14)."""
    dino: bool = True
    """Also DINO ViT-S/16 subject fidelity (DreamBooth's DINO metric)."""
    weights: str = ""
    """Empty: pretrained weights from the Hugging Face cache (offline); a folder: weights files in it;
    "random": the same architectures with random weights (machinery only; every row says so)."""
    n_views: int = 8
    """Views at 30 degrees elevation, evenly spaced in azimuth, averaged (and read for the Janus score)."""
    resolution: int = 128
    """Render side of the evaluation views (resized to each model's input)."""
    captions: str = ""
    """A text file of candidate captions for R-precision (e.g. 153 COCO captions); a sweep writes
    its own prompt set there (DreamFusion's protocol); empty: the subject's prompt templates."""


@dataclass
class PseudoViewConfig:
    n_views: int = 20
    """Views of the stage-1 NeRF rendered on the orbit and translated (paper: ~20)."""
    t_pseudo: float = 0.5
    """Noise level of the img2img translation, as a fraction of the timesteps. The paper leaves
    it open; a sweep axis."""
    guidance_scale: float = 7.5
    """Classifier-free guidance of the img2img translation with D_full."""
    fog_edge_opacity: float = 0.3
    """NeRF_1 counts as fog when its orbit renders' frame-border pixels are on average more opaque
    than this (an object leaves the border empty; fog covers it). Measured on the 8 ToyWorld bench
    subjects' DreamBooth+Fusion NeRFs: the three below 10 dB had border opacity 0.33-0.61 (3.1-9.6
    dB), the five others 0.00-0.25 (10.6-15.0 dB); stage-1 NeRFs of dreambooth3d: 0.00-0.18."""
    on_fog: str = "fallback"
    """OnFog, what stage 3 does with a foggy NeRF_1, whose pseudo views would be noise:
    fallback (the final NeRF is SDS from D_full alone, the DreamBooth+Fusion recipe; the row says
    so), fail (the trial fails, naming the measurement), ignore (stage 3 as usual)."""


@dataclass
class MethodConfig:
    name: str = "dreambooth3d"
    """MethodName: dreambooth3d (three stages), dreambooth_fusion (one SDS stage on D_full),
    latent_nerf (SDS in Stable Diffusion latent space)."""
    lambda_sds: float = 1.0
    """Weight of the SDS term in the final NeRF (paper: lambda_SDS)."""
    lambda_recon: float = 1.0
    """Weight of the reconstruction term on the pseudo views (paper: lambda_recon, value open). The
    term is a per-image sum like SDS's (fit.py): its L1 gradient is 1 per render pixel and channel.
    SDS's gradient at the render, measured (RMS per pixel, untrained field, 8 views): toy prior 0.44
    at guidance 7.5 and 6.0 at guidance 100 (pixel space); tiny-if 36 at 100 (random weights);
    tiny-sd 3.7 at 100 and 1.3 at 7.5 (latent space: through the upsample and the VAE encoder's
    Jacobian; random VAE: Stable Diffusion's own could not be measured here). So 1 weighs the
    reconstruction about 2x above SDS at the toy preset and 6x below it at guidance 100; scale with
    guidance for other backbones. On ToyWorld 0.3-3 gave +2.5 dB over ~0."""
    lambda_nerf: float = 1.0
    """Weight of the NeRF regularisers (paper: lambda_nerf)."""
    recon_norm_p: int = 1
    """Norm p of the reconstruction loss ||render(P_v) - I_v^pseudo||_p (open in the paper)."""
    recon_views_per_step: int = 1
    """Pseudo views rendered for the reconstruction term at each step."""
    final_init: str = "scratch"
    """The final NeRF starts from scratch (the paper's F_gamma, default) or from stage1's weights."""
    stage1_steps: int = 0
    """SDS steps of stage 1's NeRF (dreambooth3d); 0: nerf.steps, as every other NeRF stage. Stage 1
    only has to give stage 2 views to translate from t_pseudo."""


@dataclass
class RunConfig:
    subject: str = ""
    """A subject folder, or a subject name inside data_root. Empty: a generated subject."""
    data_root: str = ""
    """A dataset root in the DreamBooth layout (subject folders + prompts_and_classes.txt)."""
    class_noun: str = ""
    """Class noun, when the subject is not in a dataset root with a class table."""
    prompt: str = ""
    """Prompt with the identifier, e.g. "a sks dog sleeping". Empty: "a {identifier} {class}"."""
    out: str = "outputs/run"
    """Output folder: resolved config, artifacts, exports. Rerun with the same out to resume."""
    cache_dir: str = ""
    """Cache of reusable artifacts (class images, ToyWorld's scoring renders). Empty: ~/.cache/db3d (or $DB3D_CACHE)."""
    seed: int = 0
    """Seed of everything random in the run (training noise, timesteps, cameras)."""
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    dreambooth: DreamBoothConfig = field(default_factory=DreamBoothConfig)
    render: RenderConfig = field(default_factory=RenderConfig)
    sds: SDSConfig = field(default_factory=SDSConfig)
    pseudo: PseudoViewConfig = field(default_factory=PseudoViewConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    nerf: NeRFConfig = field(default_factory=NeRFConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)


class ConfigError(ValueError):
    """Invalid configuration; `problems` lists one message per offending field."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


# field path -> Literal alias of its allowed values
_CHOICES = {
    "backbone.kind": BackboneKind,
    "backbone.dtype": DType,
    "backbone.autocast": AutocastDType,
    "nerf.background": NeRFBackground,
    "dreambooth.mode": FinetuneMode,
    "dreambooth.optimizer": Optimizer,
    "dreambooth.checkpoint_dtype": DType,
    "method.name": MethodName,
    "nerf.encoding": EncodingBackend,
    "method.final_init": FinalInit,
    "nerf.density_blob": DensityBlob,
    "pseudo.on_fog": OnFog,
}


def _get(cfg: RunConfig, path: str):
    obj = cfg
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def validate(cfg: RunConfig) -> None:
    """Check ranges and choices; raise ConfigError naming every bad field. Loads nothing."""
    problems: list[str] = []
    for path, alias in _CHOICES.items():
        value = _get(cfg, path)
        if value not in get_args(alias):
            problems.append(f"{path}={value!r}: must be one of {', '.join(get_args(alias))}")
    db = cfg.dreambooth
    for name in ("partial_steps", "full_steps", "multiview_steps", "num_class_images", "resume_every"):
        if getattr(db, name) < 0:
            problems.append(f"dreambooth.{name}={getattr(db, name)}: must be >= 0")
    for path in ("dreambooth.batch_size", "dreambooth.num_workers", "dreambooth.lora_rank", "backbone.resolution",
                 "backbone.sample_steps", "render.resolution", "pseudo.n_views", "nerf.steps",
                 "nerf.batch_views", "nerf.n_samples", "nerf.hidden_dim", "nerf.n_levels",
                 "method.recon_views_per_step", "export.turntable_frames", "export.turntable_resolution",
                 "export.fps", "export.mesh_resolution", "metrics.n_views", "metrics.resolution"):
        if _get(cfg, path) < 1:
            problems.append(f"{path}={_get(cfg, path)}: must be >= 1")
    if cfg.method.stage1_steps < 0:
        problems.append(f"method.stage1_steps={cfg.method.stage1_steps}: must be >= 0 (0: nerf.steps)")
    if cfg.nerf.occupancy_resolution < 0 or cfg.nerf.occupancy_every < 1:
        problems.append(f"nerf.occupancy_resolution={cfg.nerf.occupancy_resolution}, nerf.occupancy_every="
                        f"{cfg.nerf.occupancy_every}: need resolution >= 0 (0: off) and every >= 1")
    if not 0.0 <= cfg.nerf.occupancy_threshold < 1.0:
        problems.append(f"nerf.occupancy_threshold={cfg.nerf.occupancy_threshold}: must lie in [0, 1)")
    if cfg.nerf.max_resolution < 16:  # the hash grid's coarsest level is 16
        problems.append(f"nerf.max_resolution={cfg.nerf.max_resolution}: must be >= 16")
    if db.full_steps < db.partial_steps:
        problems.append(f"dreambooth.full_steps={db.full_steps}: must be >= partial_steps={db.partial_steps}")
    for name in ("learning_rate", "lora_learning_rate"):
        if getattr(db, name) <= 0:
            problems.append(f"dreambooth.{name}={getattr(db, name)}: must be > 0")
    if db.prior_weight < 0:
        problems.append(f"dreambooth.prior_weight={db.prior_weight}: must be >= 0")
    if not db.identifier.strip() or " " in db.identifier.strip():
        problems.append(f"dreambooth.identifier={db.identifier!r}: must be one non-empty word")
    if db.train_text_encoder and db.mode == "lora":
        problems.append("dreambooth.train_text_encoder=true: only supported with dreambooth.mode=full")
    if cfg.sds.guidance_scale <= 0:
        problems.append(f"sds.guidance_scale={cfg.sds.guidance_scale}: must be > 0")
    if not 0.0 <= cfg.sds.t_min < cfg.sds.t_max <= 1.0:
        problems.append(f"sds.t_min={cfg.sds.t_min}, sds.t_max={cfg.sds.t_max}: need 0 <= t_min < t_max <= 1")
    if cfg.sds.t_max_end > 0 and not cfg.sds.t_min < cfg.sds.t_max_end <= cfg.sds.t_max:
        problems.append(f"sds.t_max_end={cfg.sds.t_max_end}: must lie in (t_min, t_max], or be -1 (no annealing)")
    if not 0.0 < cfg.pseudo.t_pseudo < 1.0:
        problems.append(f"pseudo.t_pseudo={cfg.pseudo.t_pseudo}: must lie in (0, 1)")
    for name in ("lambda_sds", "lambda_recon", "lambda_nerf"):
        if getattr(cfg.method, name) < 0:
            problems.append(f"method.{name}={getattr(cfg.method, name)}: must be >= 0")
    for name in ("lambda_orientation", "lambda_opacity", "lambda_sparsity", "lambda_distortion"):
        if getattr(cfg.nerf, name) < 0:
            problems.append(f"nerf.{name}={getattr(cfg.nerf, name)}: must be >= 0")
    for name in ("elevation_range", "distance_range", "fov_range"):
        lo_hi = getattr(cfg.nerf, name)
        if len(lo_hi) != 2 or lo_hi[0] > lo_hi[1]:
            problems.append(f"nerf.{name}={list(lo_hi)}: must be [low, high] with low <= high")
    if min(cfg.nerf.distance_range) <= 0 or cfg.nerf.orbit_distance <= 0:
        problems.append("nerf.distance_range / nerf.orbit_distance: must be > 0")
    if min(cfg.nerf.p_albedo, cfg.nerf.p_textureless, cfg.nerf.p_lambertian) < 0 or \
            cfg.nerf.p_albedo + cfg.nerf.p_textureless + cfg.nerf.p_lambertian <= 0:
        problems.append("nerf.p_albedo / p_textureless / p_lambertian: must be >= 0 with a positive sum")
    if cfg.nerf.density_blob_radius <= 0:
        problems.append(f"nerf.density_blob_radius={cfg.nerf.density_blob_radius}: must be > 0")
    if cfg.nerf.mlp_learning_rate < 0:
        problems.append(f"nerf.mlp_learning_rate={cfg.nerf.mlp_learning_rate}: must be >= 0 (0: nerf.learning_rate)")
    if not 0.0 < cfg.nerf.lr_decay <= 1.0:
        problems.append(f"nerf.lr_decay={cfg.nerf.lr_decay}: must lie in (0, 1]")
    if cfg.nerf.learning_rate <= 0:
        problems.append(f"nerf.learning_rate={cfg.nerf.learning_rate}: must be > 0")
    if cfg.pseudo.guidance_scale <= 0:
        problems.append(f"pseudo.guidance_scale={cfg.pseudo.guidance_scale}: must be > 0")
    if cfg.method.name == "latent_nerf" and cfg.backbone.kind in ("tiny-if", "toy", "if"):
        problems.append(f"method=latent_nerf needs a latent backbone (tiny-sd or sd), not backbone.kind={cfg.backbone.kind}: "
                        "IF works in pixel space, so there is no latent space to render")
    if cfg.metrics.enabled and cfg.metrics.captions and not os.path.isfile(cfg.metrics.captions):
        problems.append(f"metrics.captions={cfg.metrics.captions}: no such file")
    if cfg.method.recon_norm_p not in (1, 2):
        problems.append(f"method.recon_norm_p={cfg.method.recon_norm_p}: must be 1 or 2")
    if cfg.backbone.kind in ("sd", "if") and not cfg.backbone.model:
        problems.append(f"backbone.model: required for backbone.kind={cfg.backbone.kind} "
                        "(a local diffusers folder or a hub id in the Hugging Face cache)")
    dev = cfg.backbone.device
    if not (dev in ("auto", "cpu", "cuda") or (dev.startswith("cuda:") and dev[5:].isdigit())):
        problems.append(f"backbone.device={dev!r}: must be auto, cpu, cuda or cuda:N")
    if problems:
        raise ConfigError(problems)


def to_flat_dict(cfg) -> dict:
    """{"dreambooth.partial_steps": 150, ...}: the config as flat columns (for Parquet rows)."""
    flat: dict = {}

    def walk(obj, prefix: str) -> None:
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if dataclasses.is_dataclass(value):
                walk(value, f"{prefix}{f.name}.")
            else:
                flat[f"{prefix}{f.name}"] = value

    walk(cfg, "")
    return flat


def section_dict(obj) -> dict:
    """A config section as a plain dict (the input of a content key)."""
    return dataclasses.asdict(obj)


def register_configs() -> None:
    """Register the schema with Hydra's ConfigStore as `run_schema` (used by conf/run.yaml)."""
    from hydra.core.config_store import ConfigStore  # heavy (~0.2 s): only composing needs Hydra

    ConfigStore.instance().store(name="run_schema", node=RunConfig)


def compose(overrides: list[str]) -> RunConfig:
    """Compose conf/run.yaml with command-line style overrides into a validated RunConfig.

    Unknown keys fail first, with the nearest valid key; wrong types in Hydra / OmegaConf (one
    line each); ranges and choices in validate().
    """
    from hydra import compose as hydra_compose  # heavy (~0.2 s): only composing needs Hydra
    from hydra import initialize_config_module  # heavy: as above
    from hydra.core.global_hydra import GlobalHydra  # heavy: as above
    from omegaconf import OmegaConf  # heavy (~0.1 s): as above

    problems = check_override_keys(list(overrides), sorted([*to_flat_dict(RunConfig()), *CONFIG_GROUPS]))
    if problems:
        raise ConfigError(problems)
    register_configs()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_module(config_module="db3d.conf", version_base="1.3"):
            dcfg = hydra_compose(config_name="run", overrides=list(overrides))
        cfg = OmegaConf.to_object(dcfg)
    except Exception as err:  # Hydra / OmegaConf: unknown key, wrong type, missing group option
        messages, cause = [], err
        while cause is not None:  # one line: Hydra's internals (full_key, search path) cut off
            text = " ".join(str(cause).split())
            for cut in (" full_key:", " Config search path:", " See https://hydra.cc"):
                text = text.split(cut)[0]
            messages.append(text)
            cause = cause.__cause__
        raise ConfigError([": ".join(dict.fromkeys(m for m in messages if m))]) from err
    validate(cfg)
    return cfg


def quote(value: str) -> str:
    """A string as a quoted Hydra override value (commas, spaces, '=' and quotes survive)."""
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"


def to_yaml(cfg: RunConfig) -> str:
    from omegaconf import OmegaConf  # heavy (~0.1 s): only writing a config needs it

    return OmegaConf.to_yaml(OmegaConf.structured(cfg))
