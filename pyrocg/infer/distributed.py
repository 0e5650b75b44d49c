"""Data-parallel training on ``torch.distributed`` (gloo on CPU, NCCL on GPU).

Launch with ``torchrun --nproc_per_node K -m pyrocg.cli train ... --distributed``. Every
process holds the full model; each global mini-batch of ``K x batch_size`` rows is cut into
``K`` equal shards, each process computes the gradient of its shard's loss, and one
all-reduce (of all gradients flattened into a single buffer) averages them. Because the loss
is a mean over the shard, one step equals single-process training on the global batch.
Normalisation buffers (running statistics) are broadcast from rank 0 after every step, as
DDP does by default. Rank 0 validates, logs and writes checkpoints.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import nn

__all__ = ["init_from_env", "is_distributed", "rank", "world_size", "is_main",
           "broadcast_module", "average_gradients"]


def is_distributed() -> bool:
    """Whether a ``torch.distributed`` process group is initialised.

    >>> from pyrocg.infer import distributed
    >>> distributed.is_distributed(), distributed.rank(), distributed.world_size(), distributed.is_main()
    (False, 0, 1, True)
    """
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's rank (0 without a process group).

    >>> from pyrocg.infer import distributed
    >>> distributed.is_distributed(), distributed.rank(), distributed.world_size(), distributed.is_main()
    (False, 0, 1, True)
    """
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    """The number of processes (1 without a process group).

    >>> from pyrocg.infer import distributed
    >>> distributed.is_distributed(), distributed.rank(), distributed.world_size(), distributed.is_main()
    (False, 0, 1, True)
    """
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    """Whether this is rank 0, the process that validates, logs and checkpoints.

    >>> from pyrocg.infer import distributed
    >>> distributed.is_distributed(), distributed.rank(), distributed.world_size(), distributed.is_main()
    (False, 0, 1, True)
    """
    return rank() == 0


def init_from_env(device: str | torch.device = "cpu") -> torch.device:
    """Join the process group described by torchrun's environment variables.

    :returns: this process's device (``cuda:LOCAL_RANK`` for CUDA).
    """
    missing = [v for v in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if v not in os.environ]
    if missing:
        raise ValueError(
            f"--distributed needs the environment torchrun sets (missing {missing}); launch with "
            "`torchrun --nproc_per_node K -m pyrocg.cli train ... --distributed`"
        )
    device = torch.device(device)
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    if not is_distributed():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device


def broadcast_module(module: nn.Module, buffers_only: bool = False) -> None:
    """Copy rank 0's parameters (and buffers) to every process."""
    tensors = list(module.buffers()) if buffers_only else list(module.state_dict().values())
    for t in tensors:
        if t.is_floating_point() or not buffers_only:
            dist.broadcast(t.data if isinstance(t, nn.Parameter) else t, src=0)


def average_gradients(params: list[nn.Parameter]) -> None:
    """Average gradients over processes with one all-reduce of a flat buffer."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world_size()
    offset = 0
    for g in grads:
        n = g.numel()
        g.copy_(flat[offset : offset + n].view_as(g))
        offset += n
