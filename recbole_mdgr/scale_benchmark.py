"""A synthetic catalogue of a million items: SID build, then generation, per plugin model.

    python -m recbole_mdgr.scale_benchmark [--items 1000000] [--users 256] [--dim 64]
        [--quantizers rq_kmeans,opq] [--models TIGER,MADRec,MDGR]

Random item vectors are quantized with ``rq_kmeans`` (3 x 256) and ``opq`` (8 x 300); each
plugin model (untrained, its yaml defaults) then generates top-20 lists for ``--users``
random histories of 20 items. Printed: build seconds, decode ms per user, and the process's
peak memory (RSS high-water mark) after each stage, next to what one dense
``[users, n_items]`` float32 score matrix would take: the inference path allocates none.
Run it alone on the machine (it is CPU-heavy for minutes).
"""

from __future__ import annotations

import argparse
import os
import resource
from time import perf_counter

import numpy as np
import torch
import yaml

from recbole_mdgr.config import properties_dir
from recbole_mdgr.errors import UserError
from recbole_mdgr.tokenizer.kmeans import build_threads
from recbole_mdgr.tokenizer.quantizers import make_quantizer
from recbole_mdgr.tokenizer.settings import SIDSettings
from recbole_mdgr.tokenizer.sid_table import build_table
from recbole_mdgr.utils import get_model

QUANTIZERS = {"rq_kmeans": (3, 256), "opq": (8, 300)}
HISTORY = 20


class _Config(dict):
    """A dict that answers None for keys it does not hold, as RecBole's Config does."""

    def __getitem__(self, key):
        return self.get(key)

    def __contains__(self, key):
        return dict.get(self, key) is not None


class _Dataset:
    def __init__(self, table):
        self.sid_table = table

    def num(self, field):
        return self.sid_table.n_items

    def __len__(self):  # training samples (MDGR's curriculum clock); none here
        return 0


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def model_config(model: str, quantizer: str) -> _Config:
    config = _Config()
    for path in ("overall.yaml", f"model/{model}.yaml"):
        with open(os.path.join(properties_dir(), path)) as f:
            config.update(yaml.safe_load(f) or {})
    levels, size = QUANTIZERS[quantizer]
    config.update({
        "USER_ID_FIELD": "user_id", "ITEM_ID_FIELD": "item_id", "LIST_SUFFIX": "_list",
        "ITEM_LIST_LENGTH_FIELD": "item_length", "NEG_PREFIX": "neg_",
        "MAX_ITEM_LIST_LENGTH": HISTORY, "device": torch.device("cpu"), "seed": 0,
        "sid_quantizer": quantizer, "sid_levels": levels, "sid_codebook_size": size,
    })
    return config


def history_batch(table, users: int, seed: int = 0):
    from recbole.data.interaction import Interaction

    gen = torch.Generator().manual_seed(seed)
    seq = torch.randint(1, table.n_items, (users, HISTORY), generator=gen)
    length = torch.full((users,), HISTORY)
    return Interaction({"item_id_list": seq, "item_length": length,
                        "item_id_list_sid": table.lookup(seq)})


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--users", type=int, default=256)
    parser.add_argument("--dim", type=int, default=64, help="item vector dimension")
    parser.add_argument("--quantizers", default=",".join(QUANTIZERS),
                        help=f"comma-separated, of {', '.join(QUANTIZERS)}")
    parser.add_argument("--models", default="TIGER,MADRec,MDGR", help="comma-separated")
    args = parser.parse_args(argv)
    quantizers = [q for q in args.quantizers.split(",") if q]
    unknown = sorted(set(quantizers) - set(QUANTIZERS))
    if unknown:
        raise UserError(f"--quantizers: unknown {unknown}; choose from {', '.join(QUANTIZERS)}")
    models = [m for m in args.models.split(",") if m]
    for name in models:
        get_model(name)  # an unknown name fails here, before minutes of building
    dense_mb = args.users * args.items * 4 / 2**20
    print(f"{args.items:,} items, {args.users} users, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; one dense [users, items] float32 matrix: "
          f"{dense_mb:,.0f} MB")
    vectors = np.random.default_rng(0).standard_normal((args.items, args.dim)).astype(np.float32)
    print("| quantizer | build s | collision rate | model | decode ms/user | NFE | peak MB |")
    print("|---|---|---|---|---|---|---|")
    for quantizer in quantizers:
        levels, size = QUANTIZERS[quantizer]
        settings = SIDSettings(quantizer=quantizer, levels=levels,
                               codebook_sizes=(size,) * levels, threads=torch.get_num_threads())
        start = perf_counter()
        with build_threads(settings.threads):
            raw = make_quantizer(settings).fit_encode(vectors, settings.seed)
        table = build_table(raw, settings.codebook_sizes, dedup="always")
        build = perf_counter() - start
        print(f"| {quantizer} {levels}x{size} | {build:.1f} | "
              f"{table.stats['collision_rate']:.4f} | (SID table) | - | - | {peak_mb():,.0f} |",
              flush=True)
        batch = history_batch(table, args.users)
        for model_name in models:
            config = model_config(model_name, quantizer)
            torch.manual_seed(0)
            model = get_model(model_name)(config, _Dataset(table)).eval()
            start = perf_counter()
            model.generate(batch, 20)
            ms = 1000 * (perf_counter() - start) / args.users
            nfe = model.decode_stats.summary()["nfe_per_user"]
            print(f"| {quantizer} {levels}x{size} | - | - | {model_name} | {ms:.1f} | "
                  f"{nfe:.0f} | {peak_mb():,.0f} |", flush=True)
            del model


if __name__ == "__main__":
    from recbole_mdgr.errors import reported_as_errors

    with reported_as_errors():
        main()
