"""Ground-truth scores of a NeRF's renders against a ToyWorld object (pure functions of images).

Images are (V, H, W, 3) in [0, 1] over a white background, rendered from the same cameras as
the ground truth (``render_object(..., light="fixed")``: a surface point has one colour from
every view, so an albedo render of a NeRF can match it exactly).

    psnr / ssim        per view, averaged over all views and over the back half (azimuth in
                       (90, 270): the side DreamBooth photos rarely show)
    retrieval_rank     rank of the true object among candidates by mean PSNR to their renders
                       (1 = the renders are closest to the true object): a ground-truth R-precision
    janus_score        front decal seen where the ground truth has none: the fraction of back-view
                       pixels that have the decal's colour (and no ground-truth decal), relative to
                       the decal's share of the front view. 0: no extra decal; ~1: a full second
                       front on the back (the Janus problem)
"""

from __future__ import annotations

import torch
from torch import Tensor

DECAL_COLOUR_TOLERANCE = 0.12  # RGB distance to a shaded decal colour that counts as "decal"
SHADE_RANGE = (0.45, 1.0)  # brightness factors of the fixed-light renders (ambient .. ambient + diffuse)


def psnr(pred: Tensor, gt: Tensor) -> Tensor:  # (V,H,W,3), (V,H,W,3) -> (V,)
    mse = ((pred - gt) ** 2).flatten(1).mean(-1).clamp_min(1e-10)
    return -10.0 * torch.log10(mse)


def ssim(pred: Tensor, gt: Tensor) -> Tensor:  # (V,H,W,3), (V,H,W,3) -> (V,)
    """Structural similarity per view (scikit-image, 7x7 windows, data range 1)."""
    from skimage.metrics import structural_similarity  # heavy (~0.15 s, scipy): only ToyWorld scoring needs it

    return torch.tensor([structural_similarity(p.numpy(), g.numpy(), channel_axis=-1, data_range=1.0,
                                               win_size=7) for p, g in zip(pred.double(), gt.double())])


def back_half(azimuth_deg: Tensor) -> Tensor:  # (V,) -> (V,) bool
    """Views that look at the object's back (azimuth 0 = front)."""
    a = azimuth_deg % 360.0
    return (a > 90.0) & (a < 270.0)


def retrieval_rank(pred: Tensor, candidates: list[Tensor], true_index: int) -> int:
    """1 + the number of candidates (V,H,W,3 renders each) strictly closer to pred than the true one."""
    scores = torch.stack([psnr(pred, c).mean() for c in candidates])
    return int((scores > scores[true_index]).sum()) + 1


def colour_mask(images: Tensor, rgb: tuple[float, float, float], tol: float = DECAL_COLOUR_TOLERANCE) -> Tensor:
    """(V,H,W,3) -> (V,H,W) bool: pixels within tol of rgb * k for a shading factor k in SHADE_RANGE."""
    c = torch.tensor(rgb, dtype=images.dtype)
    # closest point of the segment {k c} to each pixel
    k = ((images * c).sum(-1) / (c @ c).clamp_min(1e-8)).clamp(*SHADE_RANGE)
    return (images - k[..., None] * c).norm(dim=-1) < tol


def janus_score(pred_back: Tensor, gt_back_feature: Tensor, gt_front_feature: Tensor,
                decal_rgb: tuple[float, float, float], pred_back_alpha: Tensor | None = None) -> float:
    """Extra decal on the back, in units of the front view's decal.

    pred_back (Vb,H,W,3): the NeRF's back views; gt_back_feature (Vb,H,W,1): ground-truth decal
    coverage there (about 0); gt_front_feature (Vf,H,W,1): decal coverage of front views;
    pred_back_alpha (Vb,H,W,1): the NeRF's opacity, so that a white decal is not confused with the
    white background (without it, near-white pixels count as background).
    """
    if pred_back_alpha is None:
        on_object = (1.0 - pred_back).abs().amax(-1) > 0.03
    else:
        on_object = pred_back_alpha[..., 0] > 0.5
    extra = colour_mask(pred_back, decal_rgb) & (gt_back_feature[..., 0] < 0.5) & on_object
    front = gt_front_feature[..., 0].flatten(1).mean(-1).mean().clamp_min(1e-6)
    return float(extra.float().flatten(1).mean(-1).mean() / front)

