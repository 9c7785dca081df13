"""The two things the plugin does across processes of a distributed run (RecBole's mode).

Both are no-ops in a single process, so every code path calls them unconditionally.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


def is_multiprocess() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank0_first(build: Callable[[], T]) -> T:
    """Run ``build`` on rank 0, then on the other ranks once it is done.

    For work that caches its result (the SID table): rank 0 builds and writes the cache,
    the others then read it instead of all building at once.
    """
    if not is_multiprocess():
        return build()
    if dist.get_rank() != 0:
        dist.barrier()
    result = build()
    if dist.get_rank() == 0:
        dist.barrier()
    return result


def sum_over_processes(values: list[float], device=None) -> list[float]:
    """Element-wise sum of ``values`` over all processes (float64)."""
    if not is_multiprocess():
        return list(values)
    backend_device = torch.device("cuda", torch.cuda.current_device()) \
        if dist.get_backend() == "nccl" else torch.device("cpu")
    t = torch.tensor(values, dtype=torch.float64, device=device or backend_device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()
