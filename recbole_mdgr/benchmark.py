"""Side-by-side runs of several models on one dataset, the same way, on this machine.

    python -m recbole_mdgr.benchmark --models=SASRec,BERT4Rec,TIGER \\
        --dataset=amazon-beauty --data_path=../shared/datasets --out=docs/results/beauty.jsonl

Every other ``--key=value`` is a config override applied to all models (RecBole's
command-line convention). Each run appends one JSON line (the command, the machine, the
result dict and timings) to ``--out``; ``--table`` prints the markdown table of a file.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys

import torch

COLUMNS = [("recall@5", "R@5"), ("recall@10", "R@10"), ("recall@20", "R@20"),
           ("ndcg@5", "N@5"), ("ndcg@10", "N@10")]


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    return (f"{os.cpu_count()} cores ({cpu}), torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads, no GPU" if not torch.cuda.is_available()
            else f"{os.cpu_count()} cores, GPU {torch.cuda.get_device_name()}")


def table(rows: list[dict]) -> str:
    """Markdown table of benchmark rows (metrics in %)."""
    head = ["model"] + [c for _, c in COLUMNS] + ["train min", "test ms/user", "NFE/user",
                                                  "invalid SIDs"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        test, timing = row["result"]["test_result"], row["result"]["timing"]
        decode = row["result"].get("test_decode", {})
        cells = [row["model"]] + [f"{100 * test[k]:.2f}" for k, _ in COLUMNS]
        cells += [f"{timing['fit_seconds'] / 60:.1f}", f"{timing['test_ms_per_user']:.2f}",
                  f"{decode['nfe_per_user']:.0f}" if decode else "1",
                  f"{100 * decode['invalid_sid_share']:.2f}%" if decode else "-"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="SASRec,BERT4Rec,TIGER")
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--out", default="benchmark.jsonl")
    parser.add_argument("--table", action="store_true", help="print the table of --out")
    args, overrides = parser.parse_known_args(argv)
    if args.table:
        with open(args.out) as f:
            print(table([json.loads(line) for line in f if line.strip()]))
        return

    from recbole_mdgr.quick_start import run_recbole_mdgr

    command = "python -m recbole_mdgr.benchmark " + " ".join(sys.argv[1:])
    # only the overrides reach RecBole's command-line parser
    sys.argv = [sys.argv[0]] + overrides
    for model in args.models.split(","):
        result = run_recbole_mdgr(model=model, dataset=args.dataset)
        row = {"model": model, "dataset": args.dataset, "command": command,
               "machine": machine(), "result": json.loads(json.dumps(result, default=float))}
        with open(args.out, "a") as f:
            f.write(json.dumps(row) + "\n")
        print(table([row]))


if __name__ == "__main__":
    main()
