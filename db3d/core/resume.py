"""Resumable training states: the one file a long loop rewrites every few steps, so that a run
killed part way continues where it stopped, bit for bit.

A state is a dict saved with torch.save: the step reached, the optimizer's state, the loop's random
generator (every rank's under data parallelism) and whatever weights and logs the loop names
(`parts`). It is written atomically under one fixed temp name (see `atomic_path`), so a reader sees
the last whole state and a write killed part way leaves one temp file, which the next replaces.
Used by the NeRF loop (`fit_state.pt`) and DreamBooth (`train_state.pt`).
"""

from __future__ import annotations

from pathlib import Path

import torch

from db3d.core.artifacts import atomic_write


def save_resume_state(path: Path, step: int, optimizer: torch.optim.Optimizer, generator: torch.Generator,
                      rng_ranks: list[torch.Tensor] | None = None, **parts) -> Path:
    """Write `{"step", "optimizer", "rng", [+ "rng_ranks"], **parts}` to `path`, replacing the last state.

    rng_ranks: every rank's generator state when data parallel (rank r resumes from rng_ranks[r]).
    """
    state = {"step": step, **parts, "optimizer": optimizer.state_dict(), "rng": generator.get_state()}
    if rng_ranks is not None:
        state["rng_ranks"] = rng_ranks
    return atomic_write(path, lambda tmp: torch.save(state, tmp), per_process=False)


def load_resume_state(path: Path, optimizer: torch.optim.Optimizer, generator: torch.Generator,
                      rank: int = 0, world: int = 1) -> dict | None:
    """The state at `path` (tensors on the CPU) with `optimizer` and `generator` restored from it;
    None when there is none. The caller restores its `parts` (weights, logs) and reads "step".

    world > 1: `generator` gets this rank's state, and a state written by another number of ranks
    is refused (its batches could not be drawn again).
    """
    path = Path(path)
    if not path.exists():
        return None
    state = torch.load(path, map_location="cpu", weights_only=False)
    if world > 1 and len(state.get("rng_ranks", ())) != world:
        raise RuntimeError(f"{path}: a training state of {len(state.get('rng_ranks', ())) or 1} rank(s); "
                           f"this run has {world}")
    optimizer.load_state_dict(state["optimizer"])
    generator.set_state(state["rng_ranks"][rank] if world > 1 else state["rng"])
    return state
