"""What the plugin does across processes, on 2 gloo processes on CPU."""

import json
import time

import pytest
import torch.distributed as dist
import torch.multiprocessing as mp

from recbole_mdgr.distributed import rank0_first, shared_from_rank0
from recbole_mdgr.errors import UserError
from recbole_mdgr.model.base import DecodeStats

from conftest import tiny_config, write_tiny_dataset


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
    # each process's own checkpoint name, as RecBole makes it from the clock: rank 0's wins
    name = shared_from_rank0(f"saved/TIGER-09-38-2{rank}.pth")
    with open(f"{folder}/rank{rank}.json", "w") as f:
        json.dump({"stats": [stats.users, stats.nfe, stats.generated, stats.invalid,
                             stats.seconds], "finished": finished, "name": name}, f)
    dist.destroy_process_group()


def test_decode_stats_are_summed_rank0_builds_first_and_its_names_are_shared(tmp_path):
    mp.spawn(_worker, args=(str(tmp_path),), nprocs=2, join=True)
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    # users 3 + 4; nfe summed over users: 3 * 4 + 4 * 5; generated 10 + 20; invalid 0 + 1
    assert r0["stats"] == r1["stats"] == [7, 32.0, 30, 1, 1.5]
    assert r1["finished"] > r0["finished"]
    assert r0["name"] == r1["name"] == "saved/TIGER-09-38-20.pth"
    assert shared_from_rank0("one process") == "one process"


def _free_port() -> str:
    import socket

    with socket.socket() as s:
        s.bind(("localhost", 0))
        return str(s.getsockname()[1])


@pytest.mark.parametrize("model", ["SASRec", "TIGER"])
def test_the_runner_on_two_gloo_processes_matches_one_process(tiny, model):
    """RecBole's distributed mode on CPU (it assumes GPUs and nccl). With learning_rate 0
    both runs hold the same weights (DDP copies rank 0's), so the metrics must agree: each
    process evaluates half the users and RecBole averages their metrics weighted by users;
    each half is rounded to 4 decimals first, hence the 1e-4 tolerance."""
    from recbole_mdgr.quick_start import run

    tmp, cfg = tiny
    cfg = {**cfg, "epochs": 1, "learning_rate": 0.0, "save_dataset": False,
           **({"n_layers_enc": 1, "n_layers_dec": 1, "head_dim": 8, "n_heads": 2,
               "sid_levels": 2, "sid_codebook_size": 8} if model == "TIGER" else {})}
    one = run(model, "tiny", config_dict=cfg)
    two = run(model, "tiny", config_dict=cfg, nproc=2, port=_free_port())
    assert set(two["test_result"]) == set(one["test_result"])
    for key, value in one["test_result"].items():
        assert abs(two["test_result"][key] - value) <= 1.01e-4, key
    if model == "TIGER":  # decode stats summed over both processes: every user counted once
        assert two["test_decode"]["users"] == one["test_decode"]["users"] == 30
        assert two["test_decode"]["nfe_per_user"] == one["test_decode"]["nfe_per_user"]


def test_an_error_inside_the_processes_is_their_message_not_a_traceback(tmp_path, monkeypatch,
                                                                         capfd):
    """Users with one interaction each pass the parent's checks (the files exist and parse)
    and are refused in each spawned process by ``build_run``: every process prints the
    message and exits 2, and the parent turns that into one ``UserError``, with no
    ``ProcessRaisedException`` traceback relayed from a child."""
    from recbole_mdgr.quick_start import run

    monkeypatch.chdir(tmp_path)
    write_tiny_dataset(tmp_path, name="short", lengths=[1] * 30)
    with pytest.raises(UserError, match=r"process [01] of the run stopped on the error it "
                                        r"printed above"):
        run("SASRec", "short", config_dict=tiny_config(tmp_path), nproc=2, port=_free_port())
    err = capfd.readouterr().err
    assert "dataset short gives no training samples" in err
    assert "error (process " in err
    assert "Traceback" not in err
