"""Side-by-side runs of several models on one dataset, the same way, on this machine.

    python -m recbole_mdgr.benchmark --models=SASRec,BERT4Rec,TIGER \\
        --dataset=amazon-beauty --data_path=../shared/datasets --out=docs/results/beauty.jsonl

Every other ``--key=value`` is a config override applied to all models (RecBole's
command-line convention). Each run appends one JSON line (the command, the machine, the
result dict and timings) to ``--out``; ``--table`` prints the markdown table of a file.

Decoding variants of one trained model, on its test split (e.g. beam search against
exact scoring of every item)::

    python -m recbole_mdgr.benchmark --checkpoint=saved/TIGER-....pth \
        --variants="tiger_decode=beam,beam_size=20;tiger_decode=exact"
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import torch

COLUMNS = [("recall@5", "R@5"), ("recall@10", "R@10"), ("recall@20", "R@20"),
           ("ndcg@5", "N@5"), ("ndcg@10", "N@10")]


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else the architecture."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> str:
    cpu = cpu_name()
    return (f"{os.cpu_count()} cores ({cpu}), torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads, no GPU" if not torch.cuda.is_available()
            else f"{os.cpu_count()} cores, GPU {torch.cuda.get_device_name()}")


def commit() -> str | None:
    """The git commit of the code that runs (None outside a git checkout)."""
    import subprocess

    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, cwd=os.path.dirname(__file__), check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


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


def parse_variants(text: str) -> list[dict]:
    """``"a=1,b=x;a=2"`` -> ``[{"a": 1, "b": "x"}, {"a": 2}]`` (values parsed as yaml)."""
    import yaml

    return [
        {k: yaml.safe_load(v) for k, v in (kv.split("=", 1) for kv in part.split(","))}
        for part in text.split(";") if part.strip()
    ]


def decode_variants(checkpoint: str, variants: list[dict]) -> list[dict]:
    """Test results of one checkpoint under each variant of its config (decoding knobs)."""
    from time import perf_counter

    from recbole_mdgr.quick_start import load_data_and_model
    from recbole_mdgr.utils import get_model, get_trainer

    config, trained, _, train_data, _, test_data = load_data_and_model(checkpoint)
    state = trained.state_dict()
    saved = {key: config[key] for variant in variants for key in variant}
    rows = []
    for variant in variants:  # each from the checkpoint's own config, not the previous one's
        for key, value in {**saved, **variant}.items():
            config[key] = value
        model = get_model(config["model"])(config, train_data._dataset).to(config["device"])
        model.load_state_dict(state)
        trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
        start = perf_counter()
        test = trainer.evaluate(test_data, load_best_model=False)
        seconds = perf_counter() - start
        timing = {"fit_seconds": 0.0, "test_seconds": seconds,
                  "test_ms_per_user": 1000.0 * seconds / len(test_data.dataset)}
        result = {"test_result": dict(test), "timing": timing,
                  "test_decode": dict(trainer.decode_summary)}
        rows.append({"model": ", ".join(f"{k}={v}" for k, v in variant.items()),
                     "checkpoint": checkpoint, "machine": machine(), "result": result})
    return rows


STACK_VARIANTS = [
    {"activation": "gelu", "dropout": 0.25, "attn_dropout": 0.25, "ffn_dropout": 0.25},
    {"activation": "gelu", "dropout": 0.25},
    {"activation": "relu", "dropout": 0.25},
    {"activation": "relu"},
    {"activation": "relu", "dropout": 0.25, "compile": True},
]


def throughput_main(args, overrides: list[str]) -> None:
    """``--throughput``: print the throughput table of ``--models`` (and ``--stack``)."""
    from recbole_mdgr.throughput import matmul_peak, model_throughput, report, stack_throughput

    config = {k.lstrip("-"): yaml_value(v) for k, v in (o.split("=", 1) for o in overrides)}
    print(machine())
    peak = matmul_peak()
    rows = []
    for model in [m for m in args.models.split(",") if m]:
        rows.append(model_throughput(model, args.dataset, config, steps=args.steps))
        print(f"{model}: {rows[-1]['seconds_per_step']:.3f} s/step", flush=True)
    if args.stack:  # MADRec's shape; the paper's dropout (0.25) at each place, then ours
        for knobs in STACK_VARIANTS:
            rows.append(stack_throughput(steps=max(3, args.steps // 2), **knobs))
            print(f"{rows[-1]['model']}: {rows[-1]['seconds_per_step']:.2f} s/step", flush=True)
    print(report(rows, peak))


def yaml_value(text: str):
    import yaml

    return yaml.safe_load(text)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="SASRec,BERT4Rec,TIGER")
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--out", default="benchmark.jsonl")
    parser.add_argument("--table", action="store_true", help="print the table of --out")
    parser.add_argument("--checkpoint", default=None, help="compare decoding variants of it")
    parser.add_argument("--variants", default="", help='"key=v,key=v;key=v" config variants')
    parser.add_argument("--throughput", action="store_true",
                        help="training tokens/s, GFLOP/s vs the matmul peak, inference users/s")
    parser.add_argument("--stack", action="store_true",
                        help="with --throughput: also a MADRec-shaped encoder-only stack")
    parser.add_argument("--steps", type=int, default=10, help="timed steps for --throughput")
    args, overrides = parser.parse_known_args(argv)
    if args.throughput:
        throughput_main(args, overrides)
        return
    if args.checkpoint:
        rows = decode_variants(args.checkpoint, parse_variants(args.variants))
        with open(args.out, "a") as f:
            f.writelines(json.dumps(row, default=float) + "\n" for row in rows)
        print(table(rows))
        return
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
               "machine": machine(), "commit": commit(), "date": time.strftime("%Y-%m-%d"),
               "result": json.loads(json.dumps(result, default=float))}
        with open(args.out, "a") as f:
            f.write(json.dumps(row) + "\n")
        print(table([row]))


if __name__ == "__main__":
    main()
