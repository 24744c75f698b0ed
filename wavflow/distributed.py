"""The processes of a run under `torchrun`: joining the group, each rank's device, its own
random stream, and what every rank must agree on (when to stop, the RNG states to save,
statistics of data-dependent initialisation).

References:
    Li et al., "PyTorch Distributed: Experiences on Accelerating Data Parallel Training",
    arXiv:2006.15704.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor


def rank_seed(seed: int, rank: int) -> int:
    """The seed of one rank's training draws (student noise, dropout): (seed, rank) combined,
    as the data sampler combines (seed, step, rank), so ranks draw different noise and none
    replays the draws that set the initial weights from `seed` itself."""
    return int(np.random.SeedSequence([seed, rank]).generate_state(1, np.uint64)[0])


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    """ "auto" -> this rank's CUDA device if there is one, else the CPU."""
    if name == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def init_distributed(device_name: str) -> tuple[int, int, int]:
    """Join the process group when launched by `torchrun` (NCCL for CUDA devices, else gloo),
    unless it is joined already; returns (rank, world, local_rank)."""
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        if int(os.environ.get("WORLD_SIZE", "1")) == 1:
            return 0, 1, 0
        use_nccl = pick_device(device_name, local_rank).type == "cuda"
        if use_nccl:  # NCCL's own buffers go to the current device
            torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl" if use_nccl else "gloo")
    return dist.get_rank(), dist.get_world_size(), local_rank


def on_any_rank(flag: bool, device: torch.device, world: int) -> bool:
    """Whether `flag` holds on some rank: ranks that stop at different steps would hang DDP."""
    if world == 1:
        return flag
    value = torch.tensor(float(flag), device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def mean_over_ranks(value: Tensor) -> Tensor:
    """The mean of `value` over the processes of a DDP run; `value` itself in one process."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return value
    value = value.clone()
    dist.all_reduce(value)
    return value / dist.get_world_size()


def rng_states(device: torch.device, world: int) -> dict[str, list[Tensor]]:
    """Every rank's RNG states, by rank: "torch" (CPU) and, on CUDA, "cuda" (its device's)."""
    own = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        own["cuda"] = torch.cuda.get_rng_state(device)
    if world == 1:
        return {key: [value] for key, value in own.items()}
    gathered = {}
    for key, value in own.items():  # NCCL gathers CUDA tensors only, gloo either kind
        parts = [torch.empty_like(value, device=device) for _ in range(world)]
        dist.all_gather(parts, value.to(device))
        gathered[key] = [part.cpu() for part in parts]
    return gathered


def set_rng_states(rng: dict[str, Any], device: torch.device, rank: int, seed: int) -> None:
    """Restore this rank's RNG states from a checkpoint's `rng` (as `rng_states` wrote it)."""
    if isinstance(rng["torch"], Tensor):  # saved before per-rank states: rank 0's CPU state
        rng = {"torch": [rng["torch"]]}
    if rank >= len(rng["torch"]):  # resumed on more ranks than saved it: a fresh stream
        torch.manual_seed(rank_seed(seed, rank))
        return
    # set_rng_state takes CPU byte tensors, wherever `map_location` put the checkpoint.
    torch.set_rng_state(rng["torch"][rank].cpu())
    if device.type == "cuda" and "cuda" in rng:
        torch.cuda.set_rng_state(rng["cuda"][rank].cpu(), device)
