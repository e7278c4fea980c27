"""ToyWorld's ground truth behind db3d.eval.truth.GroundTruth: a subject folder's true object, scored."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from db3d.core.cameras import CameraBatch
from db3d.toyworld import scores
from db3d.toyworld.evaluate import score_cameras, score_field
from db3d.toyworld.render import render_object
from db3d.toyworld.subjects import ground_truth
from db3d.toyworld.world import ToyObject


@dataclass
class ToyTruth:
    """The true object of one ToyWorld subject (a db3d.eval.truth.GroundTruth)."""

    obj: ToyObject
    _renders: dict = field(default_factory=dict, repr=False)  # (views, resolution) -> (V, R, R, 3) true renders

    def score_field(self, field_file: Path, n_samples: int, device: torch.device | str,
                    compare_png: Path | None = None, cache: Path | None = None) -> dict[str, float]:
        return score_field(field_file, self.obj, n_samples, device, compare_png, cache)

    def probe(self, render: Callable[[CameraBatch], torch.Tensor], views: int, resolution: int) -> dict[str, float]:
        # 1.-2. the scoring orbit at the probe's size; PSNR to the true object's fixed-light renders
        cams = score_cameras(views, resolution)
        if (views, resolution) not in self._renders:
            self._renders[(views, resolution)] = render_object(self.obj, cams).rgb  # (V, R, R, 3)
        p = scores.psnr(render(cams), self._renders[(views, resolution)])  # (V,)
        back = scores.back_half(cams.azimuth_deg.cpu())
        return {"quality.toy.psnr": float(p.mean()),
                "quality.toy.psnr_back": float(p[back].mean()) if back.any() else float(p.mean())}


def truth_for(subject_dir: Path | str) -> ToyTruth | None:
    """The ground truth of a ToyWorld subject folder; None for any other subject."""
    obj = ground_truth(subject_dir)
    return ToyTruth(obj) if obj is not None else None
