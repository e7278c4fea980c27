"""A subject whose true object is known: the interface that scores a NeRF against ground truth.

ToyWorld's subjects carry one (db3d.toyworld.truth.ToyTruth, found from the subject folder by
db3d.toyworld.truth.truth_for); photos of real subjects carry none. The method and the evaluator
only call this interface, so they never import the world that implements it: the caller (the
`db3d run` command, a sweep's trial) resolves the subject's truth and passes it down.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Protocol

import torch

from db3d.core.cameras import CameraBatch


class GroundTruth(Protocol):
    def score_field(self, field_file: Path, n_samples: int, device: torch.device | str,
                    compare_png: Path | None = None, cache: Path | None = None) -> dict[str, float]:
        """metric.toy.* of a saved NeRF rendered on the scoring orbit (compare_png: truth above renders;
        cache: the run's cache folder, where renders that every run shares may be kept)."""

    def probe(self, render: Callable[[CameraBatch], torch.Tensor], views: int, resolution: int) -> dict[str, float]:
        """quality.toy.psnr / quality.toy.psnr_back of `render(cams)` -> (V, R, R, 3) in [0, 1] on the
        CPU, at `views` fixed scoring cameras of `resolution` px (the sweep's early-stopping signal)."""
