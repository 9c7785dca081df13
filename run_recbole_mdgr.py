"""Train and evaluate a model with RecBole's flags: plugin models (MDGR, MADRec, TIGER)
or any RecBole model (SASRec, BERT4Rec, ...).

    python run_recbole_mdgr.py                      # quick start: MDGR on ml-100k, minutes
    python run_recbole_mdgr.py --model=TIGER --dataset=ml-100k
    python run_recbole_mdgr.py --model=SASRec --dataset=amazon-beauty --data_path=../shared/datasets

Any other ``--key=value`` overrides a config key, as in RecBole.
"""

import argparse
import sys

from recbole_mdgr.config import preset_file
from recbole_mdgr.errors import reported_as_errors
from recbole_mdgr.quick_start import run

DEFAULT_MODEL = "MDGR"

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", "-m", type=str, default=DEFAULT_MODEL, help="name of model")
    parser.add_argument("--dataset", "-d", type=str, default="ml-100k", help="name of dataset")
    parser.add_argument("--config_files", type=str, default=None,
                        help="config files, separated by spaces")
    parser.add_argument("--nproc", type=int, default=1, help="number of processes")
    parser.add_argument("--ip", type=str, default="localhost", help="ip of the master node")
    parser.add_argument("--port", type=str, default="5678", help="port of the master node")
    parser.add_argument("--world_size", type=int, default=-1, help="total processes")
    parser.add_argument("--group_offset", type=int, default=0,
                        help="global rank offset of this group")
    args, _ = parser.parse_known_args()

    with reported_as_errors():
        config_file_list = args.config_files.strip().split(" ") if args.config_files else None
        config_dict = None
        if len(sys.argv) == 1:
            config_dict = {"preset": "quick-start"}
            print(f"No arguments: quick start, {args.model} on {args.dataset} with the preset "
                  f"{preset_file('quick-start')} (pass any flag for the full-size defaults)")
        run(args.model, args.dataset, config_file_list=config_file_list, config_dict=config_dict,
            nproc=args.nproc, world_size=args.world_size, ip=args.ip, port=args.port,
            group_offset=args.group_offset)
