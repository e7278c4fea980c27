"""NeRF field: hash grid -> small MLP -> density (blob-biased) and albedo; normals; background.

The density's pre-activation gets a spatial bias at initialisation, DreamFusion's
``tau(x) = lambda_tau * (1 - |x| / c)``: positive inside radius c (a blob for SDS to carve), negative
outside it, so empty space starts empty (softplus(-lambda_tau) at |x| = 2c). A Gaussian bias, which
never goes negative, leaves every point at density >= softplus(0) = ln 2 and fills the frame with fog.

Positions live in world space; the field covers the bounding sphere of radius
``FieldConfig.bound_radius`` centred at the origin and has zero density outside it. Normals are
``-grad(density) / |grad(density)|``, by central finite differences (stable-dreamfusion's choice,
cheap and stable) or by autograd.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from db3d.core.config import NeRFConfig
from db3d.nerf.encoding import HashGridEncoding
from db3d.nerf.hash_layout import BASE_RESOLUTION, FEATURES_PER_LEVEL

BACKGROUNDS = {"mlp": "mlp", "random_solid": "random_solid", "white": "fixed"}
"""NeRFConfig.background -> FieldConfig.background ("white" is a "fixed" background of colour 1, 1, 1)."""

FROM_NERF_CONFIG = {
    "n_levels": "n_levels",
    "log2_hashmap_size": "log2_hashmap_size",
    "max_resolution": "max_resolution",
    "encoding_implementation": "encoding",
    "normals": "normals",
    "hidden_dim": "hidden_dim",
    "density_blob": "density_blob",
    "density_blob_scale": "density_blob_scale",
    "density_blob_radius": "density_blob_radius",
}
"""FieldConfig field -> the NeRFConfig field it is copied from (``field_config``); ``background``
is mapped through ``BACKGROUNDS``. Each of these takes its default from NeRFConfig, where it is
documented; the other FieldConfig fields are the field's own."""


@dataclass
class FieldConfig:
    """Architecture of ``NeRFField``. Fields shared with the run config (``FROM_NERF_CONFIG``) take
    their defaults from ``NeRFConfig``, which documents them; the others follow Instant-NGP /
    stable-dreamfusion."""

    bound_radius: float = 1.0
    # radius of the bounding sphere (world units); density is zero outside it
    n_levels: int = NeRFConfig.n_levels
    # hash-grid levels L (NeRFConfig.n_levels)
    features_per_level: int = FEATURES_PER_LEVEL
    # features per level F (hash_layout.FEATURES_PER_LEVEL)
    log2_hashmap_size: int = NeRFConfig.log2_hashmap_size
    # log2 of the rows per level T (NeRFConfig.log2_hashmap_size)
    base_resolution: int = BASE_RESOLUTION
    # coarsest grid resolution N_min (hash_layout.BASE_RESOLUTION)
    max_resolution: int = NeRFConfig.max_resolution
    # finest grid resolution N_max over the bounding cube (NeRFConfig.max_resolution)
    encoding_implementation: Literal["torch", "tcnn", "torch_reference"] = NeRFConfig.encoding
    # hash-grid backend (NeRFConfig.encoding): "tcnn" when tiny-cuda-nn is installed and the device
    # is CUDA; "torch_reference" is the previous, slower torch code (same values), for tests and benchmarks
    hidden_dim: int = NeRFConfig.hidden_dim
    # width of the density/albedo MLP (NeRFConfig.hidden_dim)
    n_hidden_layers: int = 2
    # hidden layers of that MLP (stable-dreamfusion: 3 layers of 64 in total)
    density_activation: Literal["softplus", "exp"] = "softplus"
    # density activation (DreamFusion: softplus; stable-dreamfusion: truncated exp)
    density_blob: Literal["linear", "gaussian"] = NeRFConfig.density_blob
    # spatial bias of the density's pre-activation (NeRFConfig.density_blob): "linear" is DreamFusion's
    # lambda_tau * (1 - |x| / c) (also stable-dreamfusion's softplus branch), negative beyond c;
    # "gaussian" is lambda_tau * exp(-|x|^2 / (2 c^2)) (stable-dreamfusion's exp branch), never negative
    density_blob_scale: float = NeRFConfig.density_blob_scale
    # lambda_tau, the bias at the centre (NeRFConfig.density_blob_scale)
    density_blob_radius: float = NeRFConfig.density_blob_radius
    # c in world units: the bias is 0 at |x| = c (NeRFConfig.density_blob_radius); for "gaussian" the std
    color_channels: int = 3
    # channels of the colour output: 3 for RGB albedo; 4 for Latent-NeRF, whose field renders
    # Stable Diffusion latents directly
    color_activation: Literal["sigmoid", "identity"] | None = None
    # colour activation; None: sigmoid for 3 channels (albedo in [0, 1]), identity otherwise
    # (unbounded latents)
    normals: Literal["finite_difference", "autograd"] = NeRFConfig.normals
    # how normals are computed (NeRFConfig.normals): autograd, or central differences of density
    normal_fd_eps: float = 1e-2
    # finite-difference step in world units (stable-dreamfusion: 1e-2)
    background: Literal["mlp", "random_solid", "fixed"] = BACKGROUNDS[NeRFConfig.background]
    # "mlp": learned colour from the view direction (DreamFusion); "random_solid": a random
    # colour while training (render_image: one per image), background_color in eval; "fixed":
    # background_color (NeRFConfig.background, through BACKGROUNDS)
    background_color: tuple[float, ...] = (1.0, 1.0, 1.0)
    # colour of the "fixed" background and of "random_solid" in eval mode (color_channels long)
    background_hidden_dim: int = 32
    # width of the background MLP (one hidden layer)
    background_n_frequencies: int = 4
    # sinusoidal frequencies of the view-direction encoding for the background MLP


def field_config(nerf: NeRFConfig, latent_channels: int = 0) -> FieldConfig:
    """The field of a run's NeRF section: the ``FROM_NERF_CONFIG`` fields copied, ``background``
    mapped through ``BACKGROUNDS``, every other field at its FieldConfig default.

    latent_channels > 0: a Latent-NeRF field, rendering that many latent channels over a fixed
    background of zeros (whatever nerf.background says).
    """
    if nerf.background not in BACKGROUNDS:
        raise ValueError(f"nerf.background={nerf.background!r}: must be one of {', '.join(BACKGROUNDS)}")
    kwargs = {name: getattr(nerf, source) for name, source in FROM_NERF_CONFIG.items()}
    kwargs["background"] = BACKGROUNDS[nerf.background]
    if latent_channels:
        kwargs.update(color_channels=latent_channels, background="fixed", background_color=(0.0,) * latent_channels)
    return FieldConfig(**kwargs)


@dataclass
class FieldOutputs:
    """What the field returns for N points."""

    density: Tensor  # (N,) non-negative volume density, 0 outside the bounding sphere
    albedo: Tensor  # (N, C) colour channels, C = color_channels (RGB albedo in [0, 1])
    normal: Tensor | None  # (N, 3) unit normals (pointing out of the surface), if requested


def frequency_encoding(x: Tensor, n_frequencies: int) -> Tensor:  # (N, D) -> (N, D * (1 + 2F))
    """NeRF positional encoding ``[x, sin(2^k pi x), cos(2^k pi x)]``, k < n_frequencies."""
    freqs = 2.0 ** torch.arange(n_frequencies, device=x.device, dtype=x.dtype) * math.pi
    xf = (x[..., None] * freqs).flatten(-2)  # (N, D * F)
    return torch.cat([x, torch.sin(xf), torch.cos(xf)], dim=-1)


def density_blob(x: Tensor, scale: float, radius: float, kind: str = "linear",
                 r2: Tensor | None = None) -> Tensor:  # (N, 3) -> (N,)
    """Density pre-activation bias centred at the origin.

    ``linear``:   ``scale * (1 - |x| / radius)``  (DreamFusion; negative beyond ``radius``)
    ``gaussian``: ``scale * exp(-|x|^2 / (2 radius^2))``  (never negative)

    ``r2``: ``|x|^2`` when the caller has it already.
    """
    if r2 is None:
        r2 = (x * x).sum(-1)
    if kind == "linear":
        return scale * (1.0 - torch.sqrt(r2 + 1e-12) / radius)
    if kind == "gaussian":
        return scale * torch.exp(-r2 / (2.0 * radius * radius))
    raise ValueError(f"density_blob={kind!r}: must be 'linear' or 'gaussian'")


def _mlp(n_in: int, hidden: int, n_hidden_layers: int, n_out: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(n_hidden_layers):
        layers += [nn.Linear(n_in if i == 0 else hidden, hidden), nn.ReLU(inplace=True)]
    layers.append(nn.Linear(hidden if n_hidden_layers > 0 else n_in, n_out))
    return nn.Sequential(*layers)


class NeRFField(nn.Module):
    """Density + albedo field on a hash grid, with normals and a background model."""

    def __init__(self, config: FieldConfig | None = None, device: torch.device | str | None = None):
        super().__init__()
        self.config = cfg = config or FieldConfig()
        self.encoding = HashGridEncoding(
            n_levels=cfg.n_levels,
            features_per_level=cfg.features_per_level,
            log2_hashmap_size=cfg.log2_hashmap_size,
            base_resolution=cfg.base_resolution,
            max_resolution=cfg.max_resolution,
            implementation=cfg.encoding_implementation,
            device=device,
        )
        n_col = cfg.color_channels
        self.mlp = _mlp(self.encoding.n_output_dims, cfg.hidden_dim, cfg.n_hidden_layers, 1 + n_col)
        if cfg.background == "mlp":
            n_in = 3 * (1 + 2 * cfg.background_n_frequencies)
            self.background_mlp = _mlp(n_in, cfg.background_hidden_dim, 1, n_col)
        elif cfg.background not in ("random_solid", "fixed"):
            raise ValueError(f"unknown background {cfg.background!r}")
        if cfg.normals not in ("finite_difference", "autograd"):
            raise ValueError(f"unknown normals {cfg.normals!r}")
        if len(cfg.background_color) != n_col:
            raise ValueError(f"background_color has {len(cfg.background_color)} channels, "
                             f"color_channels is {n_col}")
        activation = cfg.color_activation or ("sigmoid" if n_col == 3 else "identity")
        if activation not in ("sigmoid", "identity"):
            raise ValueError(f"unknown color_activation {activation!r}")
        self.color_activation = activation
        self.register_buffer(
            "background_color", torch.tensor(cfg.background_color, dtype=torch.float32)
        )
        if device is not None:
            self.to(device)

    # ---- density and albedo -------------------------------------------------------------------

    def _raw(self, x: Tensor) -> tuple[Tensor, Tensor]:  # (N, 3) -> (N,), (N, C)
        """Density (activated, zero outside the sphere) and colour before its activation."""
        cfg = self.config
        r = cfg.bound_radius
        h = self.mlp(self.encoding((x / r + 1.0) * 0.5))  # (N, 1+C); cube [-r, r]^3 -> [0, 1]^3
        r2 = (x * x).sum(-1)  # (N,) for the blob and the sphere test
        pre = h[:, 0] + density_blob(x, cfg.density_blob_scale, cfg.density_blob_radius, cfg.density_blob, r2)
        if cfg.density_activation == "exp":
            density = torch.exp(pre.clamp(max=15.0))  # truncated exp: no overflow
        else:
            density = nn.functional.softplus(pre)
        inside = r2 <= r * r
        return torch.where(inside, density, torch.zeros_like(density)), h[:, 1:]

    def density(self, x: Tensor) -> Tensor:  # (N, 3) -> (N,)
        return self._raw(x)[0]

    def normals(self, x: Tensor) -> Tensor:  # (N, 3) -> (N, 3)
        """Unit normals ``-grad(density)/|grad(density)|`` (finite differences or autograd)."""
        if self.config.normals == "finite_difference":
            eps = self.config.normal_fd_eps
            offsets = torch.eye(3, device=x.device, dtype=x.dtype) * eps  # (3, 3)
            probes = torch.cat([x[:, None] + offsets, x[:, None] - offsets], dim=1)  # (N, 6, 3)
            d = self.density(probes.reshape(-1, 3)).reshape(-1, 6)
            grad = (d[:, :3] - d[:, 3:]) / (2.0 * eps)  # (N, 3)
        else:
            # a fresh leaf, so this works under no_grad too; create_graph while training lets
            # normal-based losses (orientation) reach the parameters
            create_graph = torch.is_grad_enabled() and self.training
            with torch.enable_grad():
                xg = x.detach().requires_grad_(True)
                (grad,) = torch.autograd.grad(self.density(xg).sum(), xg, create_graph=create_graph)
        return -nn.functional.normalize(grad, dim=-1, eps=1e-8)

    def forward(self, x: Tensor, compute_normals: bool = False) -> FieldOutputs:  # x: (N, 3)
        if compute_normals and self.config.normals == "autograd":
            density, colour, normal = self._raw_with_normals(x)
        else:
            density, colour = self._raw(x)
            normal = self.normals(x) if compute_normals else None
        if self.color_activation == "sigmoid":
            colour = torch.sigmoid(colour)
        return FieldOutputs(density=density, albedo=colour, normal=normal)

    def _raw_with_normals(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:  # (N, 3) -> (N,), (N, C), (N, 3)
        """``_raw`` and autograd normals from one field evaluation: the density's gradient with
        respect to the positions is a backward pass of the call that made it (no second forward,
        no 6 finite-difference probes). While training, with create_graph, so losses on the
        normals reach the parameters; otherwise the outputs leave the graph."""
        outer_grad = torch.is_grad_enabled()  # the caller may backpropagate through density / colour
        create_graph = outer_grad and self.training
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            density, colour = self._raw(xg)
            (grad,) = torch.autograd.grad(density.sum(), xg, create_graph=create_graph, retain_graph=outer_grad)
        if not outer_grad:  # under no_grad: nothing of this call's graph is kept
            density, colour, grad = density.detach(), colour.detach(), grad.detach()
        return density, colour, -nn.functional.normalize(grad, dim=-1, eps=1e-8)

    # ---- background ---------------------------------------------------------------------------

    def background(self, directions: Tensor) -> Tensor:  # (R, 3) unit view directions -> (R, C)
        """Background colour seen along each ray (see ``FieldConfig.background``)."""
        kind, n_col = self.config.background, self.config.color_channels
        n_rays = directions.shape[0]
        if kind == "mlp":
            enc = frequency_encoding(directions, self.config.background_n_frequencies)
            out = self.background_mlp(enc)
            return torch.sigmoid(out) if self.color_activation == "sigmoid" else out
        if kind == "random_solid" and self.training:
            colour = torch.rand(n_col, device=directions.device, dtype=directions.dtype)
            return colour.expand(n_rays, n_col)
        return self.background_color.to(directions.dtype).expand(n_rays, n_col)
