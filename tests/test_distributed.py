"""What the plugin does across processes, on 2 gloo processes on CPU."""

import json
import time

import torch.distributed as dist
import torch.multiprocessing as mp

from recbole_mdgr.distributed import rank0_first
from recbole_mdgr.model.base import DecodeStats


def _worker(rank, folder):
    dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank,
                            world_size=2)
    stats = DecodeStats()
    stats.add(users=3 + rank, nfe=4 + rank, generated=10 * (rank + 1), invalid=rank)
    stats.seconds = 0.5 * (rank + 1)
    stats.sum_over_processes()

    def build():
        if rank == 0:
            time.sleep(0.5)  # rank 1 would finish first if it did not wait
        return time.monotonic()

    finished = rank0_first(build)
    with open(f"{folder}/rank{rank}.json", "w") as f:
        json.dump({"stats": [stats.users, stats.nfe, stats.generated, stats.invalid,
                             stats.seconds], "finished": finished}, f)
    dist.destroy_process_group()


def test_decode_stats_are_summed_and_rank0_builds_first(tmp_path):
    mp.spawn(_worker, args=(str(tmp_path),), nprocs=2, join=True)
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    # users 3 + 4; nfe summed over users: 3 * 4 + 4 * 5; generated 10 + 20; invalid 0 + 1
    assert r0["stats"] == r1["stats"] == [7, 32.0, 30, 1, 1.5]
    assert r1["finished"] > r0["finished"]
