"""Data parallelism over an initialised torch.distributed process group (no Ray here).

Any launcher that sets up the process group works: Ray Train's TorchTrainer (gloo on CPU, nccl
on GPU), torchrun, or torch.multiprocessing in the tests. Every rank holds the same weights,
draws its own batch, and torch's DistributedDataParallel averages the gradients during the
backward pass, so every rank takes the same step: one step on world_size x batch samples.
Without a process group (or with one rank) every helper is a no-op: (rank, world) = (0, 1).
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel


def rank_and_world() -> tuple[int, int]:
    """(rank, world size) of the initialised default process group; (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def barrier() -> None:
    """Wait for every rank (no-op with one rank)."""
    if rank_and_world()[1] > 1:
        dist.barrier()


class _Trained(nn.Module):
    """The trained parameters as one module for DDP; its forward is `forward` (which may use them
    through any other module, e.g. the UNet that a backbone calls)."""

    def __init__(self, params: Sequence[nn.Parameter], forward: Callable[..., Tensor]):
        super().__init__()
        self.params = nn.ParameterList(params)  # the same Parameter objects, not copies
        self._forward = forward

    def forward(self, *args, **kwargs):
        return self._forward(*args, **kwargs)


def data_parallel(params: Sequence[nn.Parameter], forward: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """`forward` under DistributedDataParallel over `params`; `forward` itself with one rank.

    DDP watches exactly `params` (the trained ones: LoRA adapters, or the whole UNet and text
    encoder), not the frozen weights that they share with the base model, so at construction it
    broadcasts rank 0's trained weights to every rank (LoRA's random init differs per rank) and in
    every backward pass it all-reduces their gradients to the mean over ranks, in buckets.
    find_unused_parameters: a parameter without a gradient on every rank keeps grad None, as in
    a single process. Gradients are views of DDP's buckets (no second copy of them in memory).
    Call the result once per backward pass, on every rank.
    """
    if rank_and_world()[1] == 1:
        return forward
    return DistributedDataParallel(_Trained(params, forward), find_unused_parameters=True,
                                   gradient_as_bucket_view=True)


def gather_objects(obj) -> list:
    """[obj of rank 0, obj of rank 1, ...] on every rank ([obj] with one rank)."""
    world = rank_and_world()[1]
    if world == 1:
        return [obj]
    out = [None] * world
    dist.all_gather_object(out, obj)
    return out
