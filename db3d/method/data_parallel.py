"""Data parallelism over an initialised torch.distributed process group (no Ray here).

Any launcher that sets up the process group works: Ray Train's TorchTrainer (gloo on CPU, nccl
on GPU), torchrun, or torch.multiprocessing in the tests. Every rank holds the same weights,
draws its own batch, and averages its gradients with the others' before the update, so every
rank takes the same step: one step on world_size x batch samples. That is the maths of
DistributedDataParallel, written out (DDP's wrapper would hide the UNet that the backbone calls).
Without a process group (or with one rank) every helper is a no-op: (rank, world) = (0, 1).
"""

from __future__ import annotations

from typing import Iterable

import torch
import torch.distributed as dist
from torch import Tensor


def rank_and_world() -> tuple[int, int]:
    """(rank, world size) of the initialised default process group; (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def barrier() -> None:
    """Wait for every rank (no-op with one rank)."""
    if rank_and_world()[1] > 1:
        dist.barrier()


def broadcast_(tensors: Iterable[Tensor], src: int = 0) -> None:
    """Overwrite every rank's tensors, in place, with rank `src`'s (e.g. LoRA's random init)."""
    if rank_and_world()[1] > 1:
        for tensor in tensors:
            dist.broadcast(tensor.data, src=src)


def average_gradients_(params: Iterable[torch.nn.Parameter], bucket_numel: int = 1 << 24) -> None:
    """grad <- mean over ranks of grad, in place, for every parameter that has one.

    Every rank runs the same model on the same code path, so the set of parameters with a
    gradient (and its order) is the same on all of them. Gradients travel in flat buckets of
    at most `bucket_numel` elements (one all-reduce per bucket, not per tensor).
    """
    world = rank_and_world()[1]
    if world == 1:
        return
    grads = [p.grad for p in params if p.grad is not None]
    start = 0
    while start < len(grads):
        # 1. a bucket of consecutive gradients (at least one, however large)
        end, numel = start + 1, grads[start].numel()
        while end < len(grads) and numel + grads[end].numel() <= bucket_numel:
            numel += grads[end].numel()
            end += 1
        # 2. one flat all-reduce (sum), then divide: the mean of the ranks' gradients
        flat = torch.cat([g.reshape(-1) for g in grads[start:end]])  # (numel,)
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat /= world
        # 3. back into the parameters' gradients
        offset = 0
        for g in grads[start:end]:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()
        start = end


def gather_objects(obj) -> list:
    """[obj of rank 0, obj of rank 1, ...] on every rank ([obj] with one rank)."""
    world = rank_and_world()[1]
    if world == 1:
        return [obj]
    out = [None] * world
    dist.all_gather_object(out, obj)
    return out
