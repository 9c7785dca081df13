"""Build (or load) a dataset's SID table and print its statistics.

Example::

    python -m recbole_mdgr.tokenizer --dataset amazon-beauty --data_path ../shared/datasets \\
        --quantizer opq --levels 8 --codebook_size 300

Any other ``--key=value`` is passed to the config as RecBole's command line does.
"""

from __future__ import annotations

import argparse
import logging

from recbole_mdgr.config import Config
from recbole_mdgr.data import SIDSequentialDataset


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
    config = Config(
        model="SASRec",
        dataset=args.dataset,
        config_file_list=args.config_files.split() if args.config_files else None,
        config_dict={k: v for k, v in options.items() if v is not None},
    )
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    # the table is built with the dataset, after its split (sid_vector_source: interactions
    # reads the training split); it logs the stats block
    dataset = SIDSequentialDataset(config)
    dataset.build()
    print(dataset.sid_table)


if __name__ == "__main__":
    from recbole_mdgr.errors import reported_as_errors

    with reported_as_errors():
        main()
