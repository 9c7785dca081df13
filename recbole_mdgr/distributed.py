"""What the plugin does across the processes of a distributed run (RecBole's mode).

``rank0_first``, ``sum_over_processes`` and ``shared_from_rank0`` are no-ops in a single
process, so every code path calls them unconditionally; ``init_cpu_process_group`` and
``CPUDistributedMixin`` set up and train a run on CPUs with gloo (RecBole assumes CUDA).
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


def init_cpu_process_group(config: dict) -> None:
    """RecBole's distributed setup for a machine without CUDA: gloo on CPU.

    RecBole 1.2.1's ``Config._init_device`` asserts one GPU id per process and starts nccl,
    so ``--nproc=2`` on a CPU machine died with a bare ``AssertionError``. The rest mirrors
    it: rank from ``local_rank + offset``, tcp rendezvous at ``ip:port``, quiet ranks > 0.
    """
    dist.init_process_group(
        backend="gloo", rank=config["local_rank"] + config["offset"],
        world_size=config["world_size"], init_method=f"tcp://{config['ip']}:{config['port']}")
    config["device"] = torch.device("cpu")
    config["single_spec"] = False
    if config["local_rank"] != 0:
        config["state"] = "error"
        config["show_progress"] = False
        config["verbose"] = False


def shared_from_rank0(value: T) -> T:
    """Rank 0's ``value`` on every process (a picklable object); ``value`` itself in one."""
    if not is_multiprocess():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


class CPUDistributedMixin:
    """Mix into a RecBole ``Trainer``: every process uses rank 0's checkpoint file name, and
    under gloo on CPU the model is wrapped in ``DistributedDataParallel`` without
    ``device_ids`` (RecBole passes the GPU index, which DDP refuses for a CPU module).

    RecBole names the checkpoint after each process's clock to the second, so two processes
    that started a second apart looked for a file rank 0 never wrote when they reloaded the
    best model for the test."""

    def __init__(self, config, model):
        self._init_trainer(config, model)
        self.saved_model_file = shared_from_rank0(self.saved_model_file)

    def _init_trainer(self, config, model):
        if config["single_spec"] or config["device"].type != "cpu":
            super().__init__(config, model)
            return
        import recbole.trainer.trainer as recbole_trainer

        ddp = recbole_trainer.DistributedDataParallel
        recbole_trainer.DistributedDataParallel = \
            lambda module, device_ids=None, **kwargs: ddp(module, **kwargs)
        try:
            super().__init__(config, model)
        finally:
            recbole_trainer.DistributedDataParallel = ddp
