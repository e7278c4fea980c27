"""How a heavy stage runs: the one interface between the method (stages.py) and where it computes.

    result, cost = executor.run(stage, fn, ctx, *args, workers=N)

`fn(ctx, *args)` is a module-level stage function of stages.py returning the stage's artifact
(NerfCheckpoint, PseudoViews, {step: DreamBoothCheckpoint}, exports, metrics). `workers` is the
data-parallel width it asks for (a DreamBooth run: dreambooth.num_workers; everything else 1).

    InlineExecutor          a function call in this process (`db3d run`, tests, inline sweep trials);
                            data parallel only over a process group this process already joined
                            (e.g. under torchrun): `workers` is not started here
    RayTrainExecutor        db3d.distributed.executor: each call is a Ray Train run of `workers`
                            workers with the sweep's per-worker resources (trainer=ray_train)

Every artifact is content-addressed in the store and every stage resumes from its own state
files, so a retried call (a restarted worker group) continues where the killed one stopped.
The cost is what the stage's process measured: peak memory when it ran elsewhere (None inline,
where the caller's StageMeter measures this process itself).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol


@dataclass(frozen=True)
class StageCost:
    """Peak memory of the process that ran a stage, in MiB (None: not measured there)."""

    rss_mb: float | None = None
    cuda_mb: float | None = None


class Executor(Protocol):
    def run(self, stage: str, fn: Callable[..., Any], ctx, *args, workers: int = 1) -> tuple[Any, StageCost | None]:
        """fn(ctx, *args) for the stage named `stage`, on `workers` data-parallel workers."""


class InlineExecutor:
    """Each stage is a call in this process."""

    def run(self, stage: str, fn: Callable[..., Any], ctx, *args, workers: int = 1) -> tuple[Any, StageCost | None]:
        return fn(ctx, *args), None


INLINE = InlineExecutor()
