"""Build (or load) a dataset's SID table and print its statistics.

Example::

    python -m recbole_mdgr.tokenizer --dataset amazon-beauty --data_path ../shared/datasets \\
        --quantizer opq --levels 8 --codebook_size 300

Any other ``--key=value`` is passed to the config as RecBole's command line does.
``--svd_accuracy`` also compares the randomized SVD behind the vectors (TF-IDF text or
interactions) with the exact one (``sid_svd_solver: arpack``). ``--collisions_by_popularity``
prints, for bands of items ranked by training interactions, how many share their code.
"""

from __future__ import annotations

import argparse
import logging

import numpy as np

from recbole_mdgr.data import SIDSequentialDataset
from recbole_mdgr.errors import UserError, check_atomic_files
from recbole_mdgr.quick_start import checked_config
from recbole_mdgr.tokenizer.build import training_popularity
from recbole_mdgr.tokenizer.embed import svd_accuracy, svd_rank, vector_source
from recbole_mdgr.tokenizer.settings import SIDSettings
from recbole_mdgr.tokenizer.sid_table import collision_groups


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--data_path", default=None, help="folder holding <dataset>/")
    parser.add_argument("--config_files", default=None, help="space-separated yaml files")
    parser.add_argument("--quantizer", default=None, help="sid_quantizer")
    parser.add_argument("--levels", type=int, default=None, help="sid_levels")
    parser.add_argument(
        "--codebook_size", type=int, nargs="+", default=None,
        help="sid_codebook_size: one int, or one per level",
    )
    parser.add_argument("--encoder", default=None, help="sid_text_encoder")
    parser.add_argument("--seed", type=int, default=None, help="sid_seed")
    parser.add_argument("--no_cache", action="store_true", help="sid_cache: False")
    parser.add_argument("--svd_accuracy", action="store_true",
                        help="compare the randomized SVD of the vectors with the exact one")
    parser.add_argument("--collisions_by_popularity", action="store_true",
                        help="code collisions by band of item popularity (training split)")
    args, _ = parser.parse_known_args(argv)

    options = {
        "data_path": args.data_path,
        "sid_quantizer": args.quantizer,
        "sid_levels": args.levels,
        "sid_text_encoder": args.encoder,
        "sid_seed": args.seed,
        "sid_cache": False if args.no_cache else None,
        "sid_codebook_size": (
            None
            if args.codebook_size is None
            else args.codebook_size[0] if len(args.codebook_size) == 1 else args.codebook_size
        ),
    }
    config = checked_config(  # the runner's checks of config files and keys
        "SASRec", args.dataset, args.config_files.split() if args.config_files else None,
        {k: v for k, v in options.items() if v is not None})
    SIDSettings.from_config(config).check()  # a mistyped key is refused, not defaulted
    check_atomic_files(config)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    # the table is built with the dataset, after its split (sid_vector_source: interactions
    # reads the training split); it logs the stats block
    dataset = SIDSequentialDataset(config)
    dataset.build()
    print(dataset.sid_table)
    if args.svd_accuracy:
        print_svd_accuracy(dataset, SIDSettings.from_config(config))
    if args.collisions_by_popularity:
        print_collisions_by_popularity(dataset)


def print_svd_accuracy(dataset, settings: SIDSettings) -> None:
    """For each SVD the settings' vectors come from: how close the randomized one is."""
    inputs = vector_source(settings, dataset).svd_inputs
    if not inputs:
        raise UserError("--svd_accuracy: these item vectors come from no SVD (an embedding "
                        "file or field, or a sentence encoder)")
    for name, matrix in inputs.items():
        x = matrix()
        k = svd_rank(x, settings.embedding_dim)
        r = svd_accuracy(x, k, settings.seed)
        print(f"{name} {x.shape[0]} x {x.shape[1]}, k={k}: {r['share_in_exact_subspace']:.3f} "
              f"of the randomized SVD's directions lie in the exact top-{k} subspace; s_k "
              f"{r['s_k']:.4f} (exact {r['s_k_exact']:.4f}); randomized {r['seconds']:.1f} s, "
              f"exact (sid_svd_solver: arpack) {r['seconds_exact']:.1f} s")


POPULARITY_BANDS = (0.01, 0.03, 0.1, 0.3, 1.0)  # upper ends, as shares of the catalogue
CROWD = 10  # a code shared by this many items or more is a crowded one


def collisions_by_popularity(codes: np.ndarray, degree: np.ndarray) -> list[dict]:
    """Per band of items ranked by ``degree`` (most popular first; bands end at
    :data:`POPULARITY_BANDS` of the catalogue): the degree range, the share of items whose
    code (before dedup) is their own, the share in groups of :data:`CROWD` or more items,
    the largest group; last, all items with each item weighted by its degree (how targets
    are drawn). ``codes [n, levels]`` and ``degree [n]`` cover the real items."""
    inverse, counts = collision_groups(codes)
    group = counts[inverse]
    order = np.argsort(-degree, kind="stable")
    ends = [max(1, round(b * len(order))) for b in POPULARITY_BANDS]
    rows = []
    for start, end in zip([0] + ends[:-1], ends):
        idx = order[start:end]
        if len(idx):
            rows.append({"items": f"{start + 1}-{end}", "degree": (int(degree[idx].min()),
                         int(degree[idx].max())), "own": float((group[idx] == 1).mean()),
                         "crowded": float((group[idx] >= CROWD).mean()),
                         "largest": int(group[idx].max())})
    weight = degree / max(degree.sum(), 1)
    rows.append({"items": "all, by interactions", "degree": (int(degree.min()),
                 int(degree.max())), "own": float(weight @ (group == 1)),
                 "crowded": float(weight @ (group >= CROWD)), "largest": int(group.max())})
    return rows


def print_collisions_by_popularity(dataset) -> None:
    table = dataset.sid_table
    levels = len(table.stats["utilisation"])  # the positions before the dedup token
    codes = table.codes[1:, :levels].cpu().numpy()
    degree = training_popularity(dataset)
    print(f"code collisions by popularity (items ranked by training interactions; "
          f"crowded: a code shared by {CROWD} or more items)")
    print(f"{'items':>22} {'interactions':>14} {'own code':>9} {'crowded':>8} {'largest':>8}")
    for r in collisions_by_popularity(codes, degree):
        lo, hi = r["degree"]
        print(f"{r['items']:>22} {f'{lo}-{hi}':>14} {r['own']:>9.3f} {r['crowded']:>8.3f} "
              f"{r['largest']:>8}")


if __name__ == "__main__":
    from recbole_mdgr.errors import reported_as_errors

    with reported_as_errors():
        main()
