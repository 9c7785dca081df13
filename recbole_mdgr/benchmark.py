"""Side-by-side runs of several models on one dataset, the same way, on this machine.

    python -m recbole_mdgr.benchmark --dataset=amazon-beauty --data_path=../shared/datasets \
        --models=MDGR,MADRec,TIGER,SASRec,BERT4Rec --preset=cpu --out=docs/results/beauty-cpu

Every model gets the same split, seed, metrics and training-time budget
(``properties/overall.yaml`` plus the preset), one run at a time, each in its own process
(so its peak memory is its own). ``--preset=cpu`` gives each model its shipped preset
``<model>-cpu``. Every other ``--key=value`` is a config override for all models (RecBole's
command-line convention). Before training, each run times a few training steps against the
fp32 matmul peak measured in the same process (``--throughput_steps``).

``--out`` is a folder: ``runs/<model>.json`` per finished model (command, machine, commit,
date, RecBole's result dict, throughput, peak memory), written only when the model is done,
so a re-run skips finished models and a long benchmark can be finished in several
sittings. A re-run refuses a folder whose finished runs were asked for with another
dataset, preset (its name, or the keys its file sets, which runs record), row config or
override (``stale_runs``): one table, one setting. After
each model, ``results.json``, ``results.csv``, ``results.md`` and the plots are rewritten
(``recbole_mdgr/report.py``). ``--table`` prints the table of a folder.

Decoding variants of one trained model, on its test split (e.g. beam search against
exact scoring of every item)::

    python -m recbole_mdgr.benchmark --checkpoint=saved/TIGER-....pth \
        --variants="tiger_decode=beam,beam_size=20;tiger_decode=exact"

``--split=valid`` scores them on the validation split instead (the users ``valid_users``
sampled, when the checkpoint's config sets it): the split to choose decoding knobs on.
Rows are appended to ``--out/variants.jsonl``; ``variants.md`` and ``decoding_variants.png``
(Recall@10 against decoded users/s) are rewritten from it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import torch

from recbole_mdgr.errors import UserError
from recbole_mdgr.report import RUNS


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


def parse_variants(text: str) -> list[dict]:
    """``"a=1,b=x;a=2"`` -> ``[{"a": 1, "b": "x"}, {"a": 2}]`` (values parsed as yaml)."""
    import yaml

    variants = []
    for part in (p for p in text.split(";") if p.strip()):
        variant = {}
        for pair in part.split(","):
            key, sep, value = pair.partition("=")
            if not sep or not key.strip():
                raise UserError(f"--variants: {pair.strip()!r} is not key=value (variants are "
                                '"key=v,key=v;key=v", e.g. "tiger_decode=beam;tiger_decode=exact")')
            variant[key.strip()] = yaml.safe_load(value)
        variants.append(variant)
    if not variants:
        raise UserError('--checkpoint needs --variants="key=v,key=v;key=v" (one variant per '
                        '";"), e.g. --variants="exclude_history=False;exclude_history=True"')
    return variants


def current_keys(model: str, dataset: str) -> set:
    """The keys the plugin's yaml files define today for ``model`` on ``dataset`` (a
    checkpoint saved before a key existed does not hold it, yet the key applies)."""
    import yaml

    from recbole_mdgr.config import plugin_yaml_files

    keys = set()
    for file in plugin_yaml_files(model, dataset):
        with open(file) as f:
            keys |= set(yaml.safe_load(f) or {})
    return keys


def decode_variants(checkpoint: str, variants: list[dict], split: str = "test") -> list[dict]:
    """Results on ``split`` (``test`` or ``valid``) of one checkpoint under each variant of
    its config (decoding knobs, ``exclude_history``); a row's metrics are under
    ``result[f"{split}_result"]``. RecBole's own models too (their rows have no decode
    figures)."""
    from time import perf_counter

    from recbole_mdgr.quick_start import check_model_keys, load_data_and_model
    from recbole_mdgr.utils import get_model, get_trainer

    if split not in ("test", "valid"):
        raise UserError(f"--split must be test or valid, got {split!r}")
    config, trained, _, train_data, valid_data, test_data = load_data_and_model(checkpoint)
    known = set(config.final_config_dict) | current_keys(config["model"], config["dataset"])
    unknown = sorted({key for variant in variants for key in variant} - known)
    if unknown:
        raise UserError(f"--variants: {', '.join(unknown)} is no config key of "
                        f"{config['model']} ({checkpoint}); check the spelling against "
                        "properties/overall.yaml and the model's yaml")
    model_class = get_model(config["model"])
    data = test_data if split == "test" else valid_data
    code, day = commit(), time.strftime("%Y-%m-%d")  # the code that runs, taken at the start
    state = trained.state_dict()
    saved = {key: config[key] for variant in variants for key in variant}
    rows = []
    for variant in variants:  # each from the checkpoint's own config, not the previous one's
        for key, value in {**saved, **variant}.items():
            config[key] = value
        check_model_keys(config)  # what the runner refuses, a variant cannot set either
        model = model_class(config, train_data._dataset).to(config["device"])
        model.load_state_dict(state)
        trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
        start = perf_counter()
        scores = trainer.evaluate(data, load_best_model=False)
        seconds = perf_counter() - start
        timing = {"fit_seconds": 0.0, f"{split}_seconds": seconds,
                  f"{split}_ms_per_user": 1000.0 * seconds / len(data.dataset)}
        result = {f"{split}_result": dict(scores), "timing": timing,
                  f"{split}_decode": dict(getattr(trainer, "decode_summary", {}))}
        rows.append({"model": ", ".join(f"{k}={v}" for k, v in variant.items()),
                     "split": split, "users": len(data.dataset), "checkpoint": checkpoint,
                     "machine": machine(), "commit": code, "date": day, "result": result})
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

    models = [m for m in args.models.split(",") if m]
    presets = {model: preset_for(model, args.preset) for model in models}  # fail before timing
    sys.argv = [sys.argv[0]] + overrides  # RecBole's command-line parser reads these
    print(machine())
    peak = matmul_peak()
    rows = []
    for model in models:
        rows.append(model_throughput(model, args.dataset, run_config(presets[model]),
                                     steps=args.steps))
        print(f"{model}: {rows[-1]['seconds_per_step']:.3f} s/step", flush=True)
    if args.stack:  # MADRec's shape; the paper's dropout (0.25) at each place, then ours
        for knobs in STACK_VARIANTS:
            rows.append(stack_throughput(steps=max(3, args.steps // 2), **knobs))
            print(f"{rows[-1]['model']}: {rows[-1]['seconds_per_step']:.2f} s/step", flush=True)
    print(report(rows, peak))


def yaml_value(text: str):
    import yaml

    return yaml.safe_load(text)


def preset_for(model: str, preset: str | None) -> str | None:
    """The shipped preset a model runs with: ``<model>-<preset>`` if there is one (e.g.
    ``TIGER-cpu`` for ``--preset=cpu``), else ``<preset>`` itself."""
    if not preset:
        return None
    from recbole_mdgr.config import available_presets

    names = available_presets()
    for name in (f"{model}-{preset}", preset):
        if name in names:
            return name
    raise UserError(f"no preset {model}-{preset} or {preset} for {model}; shipped presets: "
                    f"{', '.join(names)}")


def suite_rows(suite: str | None, models: str) -> dict[str, dict]:
    """The rows to run: ``name -> {"model": ..., "config": {...}, "preset": ...}``.

    Without ``--suite``, one row per ``--models`` entry. A suite is a shipped yaml,
    ``properties/suite/<name>.yaml``, whose ``rows`` name a model and its config overrides
    (an ablation, a sweep), e.g. ``{"MDGR random masking": {"model": "MDGR", "config":
    {"mdgr_curriculum": False}}}``.
    """
    import yaml

    from recbole_mdgr.config import properties_dir

    if not suite:
        return {m: {"model": m} for m in models.split(",") if m}
    folder = os.path.join(properties_dir(), "suite")
    path = os.path.join(folder, f"{suite}.yaml")
    if not os.path.isfile(path):
        names = sorted(f[:-5] for f in os.listdir(folder) if f.endswith(".yaml"))
        raise UserError(f"unknown suite {suite!r}; shipped suites: {', '.join(names)}")
    with open(path) as f:
        rows = (yaml.safe_load(f) or {}).get("rows") or {}
    for name, row in rows.items():
        if not isinstance(row, dict) or "model" not in row:
            raise UserError(f"{path}: row {name!r} needs a `model`")
    return rows


def pick_rows(rows: dict[str, dict], names: str) -> dict[str, dict]:
    """``--rows "name;name"``: those rows of a suite, in that order (a long suite finished
    in the order its comparisons need)."""
    picked = [n.strip() for n in names.split(";") if n.strip()]
    unknown = [n for n in picked if n not in rows]
    if unknown:
        raise UserError(f"--rows: no row named {', '.join(map(repr, unknown))}; the rows are: "
                        f"{'; '.join(rows)}")
    return {n: rows[n] for n in picked}


def with_seeds(rows: dict[str, dict], seeds: str | None) -> dict[str, dict]:
    """``--seeds=2020,2021``: every row once per seed, named ``"<row>, seed <s>"``, with
    ``seed`` in its config (the weights, the batch order, dropout and the sampled validation
    users; the SIDs keep ``sid_seed``). The report puts such runs side by side as mean and
    spread (``report.seed_groups``)."""
    if not seeds:
        return rows
    try:
        values = [int(s) for s in seeds.split(",") if s.strip()]
    except ValueError:
        values = []
    if not values or len(set(values)) < len(values):
        raise UserError(f"--seeds takes distinct integers separated by commas (e.g. "
                        f"--seeds=2020,2021,2022), got {seeds!r}")
    return {f"{name}, seed {s}": {**row, "config": {**(row.get("config") or {}), "seed": s}}
            for name, row in rows.items() for s in values}


def run_path(out: str, name: str) -> str:
    return os.path.join(out, RUNS, name.replace("/", "_").replace(" ", "_") + ".json")


# Overrides that change where files are or what is printed, not what a run measures.
NOT_SETTINGS = ("show_progress", "data_path", "checkpoint_dir")


def settings(overrides: list[str]) -> dict:
    """``["--lr=0.1", ...]`` -> ``{"lr": 0.1}``: the command-line config overrides that
    change what a run measures (values parsed as yaml)."""
    pairs = (o[2:].split("=", 1) for o in overrides if o.startswith("--") and "=" in o)
    return {k: yaml_value(v) for k, v in pairs if k not in NOT_SETTINGS}


def run_config(preset: str | None, config: dict | None = None) -> dict:
    """The config dict a run hands RecBole: its preset's name (if any) and its row config."""
    return {**({"preset": preset} if preset else {}), **(config or {})}


def recorded_overrides(run: dict) -> list:
    """The config overrides (``--key=value`` tokens) a finished run was given: its
    ``overrides`` field, or, for a run that predates the field, read back from its recorded
    command."""
    overrides = run.get("overrides")
    if overrides is None:
        tokens = (run.get("command") or "").split()[3:]
        overrides = build_parser().parse_known_args(tokens)[1]
    return overrides


def stored_settings(run: dict) -> dict:
    """What a finished run was asked for: dataset, preset, row config and overrides."""
    return {"dataset": run.get("dataset"), "preset": run.get("preset"),
            "config": run.get("config") or {}, "overrides": settings(recorded_overrides(run))}


def preset_settings(preset: str | None) -> dict:
    """The keys a shipped preset sets now (``{}`` for none): a run records them, so that a
    re-run after the preset's file changed is not taken for the same setting."""
    if not preset:
        return {}
    import yaml

    from recbole_mdgr.config import preset_file

    with open(preset_file(preset)) as f:
        return yaml.safe_load(f) or {}


def default_settings(model: str) -> dict:
    """The keys the plugin's overall.yaml and ``model``'s property file set now ({} for
    RecBole's own models, which have no plugin file): what a run's preset and row config
    leave unset. A default changed since a run is not seen."""
    import yaml

    from recbole_mdgr.config import plugin_yaml_files

    settings_ = {}
    for path in plugin_yaml_files(model, ""):
        with open(path) as f:
            settings_.update(yaml.safe_load(f) or {})
    return settings_


def stale_runs(out: str, rows: dict[str, dict], args, overrides: list[str]) -> list[str]:
    """Finished runs in ``out`` that a re-run would skip although the row, dataset, preset
    or overrides asked for now differ from theirs: one line per difference. For runs that
    recorded the keys their preset set, the model's defaults, the preset's keys and the
    row's config are compared together, as the settings they make (a row that now pins what
    the preset used to set, or what the model's default was, is the same setting); keys the
    overrides set are compared as overrides."""
    asked = settings(overrides)
    lines = []
    for name, row in rows.items():
        path = run_path(out, name)
        if not os.path.isfile(path):
            continue
        with open(path) as f:
            run = json.load(f)
        stored = stored_settings(run)
        preset = preset_for(row["model"], row.get("preset", args.preset))
        now = {"dataset": args.dataset, "config": row.get("config") or {}, "overrides": asked,
               "preset": preset}
        effective = "preset_config" in run and stored["preset"] == preset
        lines += [f"{path}: {key} {stored[key]!r}, asked now {now[key]!r}"
                  for key in now if stored[key] != now[key]
                  and not (effective and key == "config")]
        if effective:  # compare what preset + row config set, whichever of the two sets it
            defaults = default_settings(row["model"])  # what a key neither sets is
            was = {**defaults, **run["preset_config"], **stored["config"]}
            current = {**defaults, **preset_settings(preset), **now["config"]}
            for key in sorted({*was, *current} - set(asked)):  # the command line wins
                if was.get(key) == current.get(key):
                    continue
                if key in stored["config"] or key in now["config"]:
                    source = f"preset {preset} and row config" if preset else "row config"
                    lines.append(f"{path}: {key} {was.get(key)!r} ({source}), asked now "
                                 f"{current.get(key)!r}")
                else:
                    lines.append(f"{path}: preset {preset} set {key}: {was.get(key)!r}, and "
                                 f"sets {current.get(key)!r} now")
    return lines


def run_one(name: str, args, overrides: list[str]) -> None:
    """Child process of :func:`side_by_side`: throughput figures, then train and test one
    row; its result goes to ``<out>/runs/<row>.json``, written only when complete."""
    import gc
    import resource

    from recbole_mdgr.quick_start import run_recbole_mdgr
    from recbole_mdgr.throughput import matmul_peak, model_throughput

    started = {"commit": commit(), "date": time.strftime("%Y-%m-%d")}  # the code that runs
    row = with_seeds(suite_rows(args.suite, args.models), args.seeds)[name]
    model = row["model"]
    preset = preset_for(model, row.get("preset", args.preset))
    config_dict = run_config(preset, row.get("config"))
    sys.argv = [sys.argv[0]] + overrides  # RecBole's command-line parser reads these
    throughput = {}
    if args.throughput_steps > 0:
        peak = matmul_peak()
        throughput = model_throughput(model, args.dataset, config_dict,
                                      steps=args.throughput_steps)
        throughput.update(peak_gflops=peak, share_of_peak=throughput["gflops_per_s"] / peak)
        gc.collect()
    result = run_recbole_mdgr(model=model, dataset=args.dataset, config_dict=config_dict)
    out = {"model": name, "base_model": model, "config": row.get("config") or {},
           "dataset": args.dataset, "preset": preset, "preset_config": preset_settings(preset),
           "command": args.command,
           "overrides": overrides,
           "machine": machine(), **started,
           "result": result, "throughput": throughput,
           "peak_memory_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    path = run_path(args.out, name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".part", "w") as f:
        json.dump(json.loads(json.dumps(out, default=float)), f, indent=1)
    os.replace(path + ".part", path)


def side_by_side(args, overrides: list[str]) -> int:
    """Each row in its own process, one at a time; finished rows are skipped."""
    import subprocess

    from recbole_mdgr.report import load_runs, markdown, write_reports
    from recbole_mdgr.utils import get_model

    rows = suite_rows(args.suite, args.models)
    order = list(with_seeds(rows, args.seeds))  # the report's row order: the suite's
    if args.rows:
        rows = pick_rows(rows, args.rows)
    rows = with_seeds(rows, args.seeds)
    for row in rows.values():  # unknown names and presets fail before anything runs
        get_model(row["model"])
        preset_for(row["model"], row.get("preset", args.preset))
    stale = stale_runs(args.out, rows, args, overrides)
    if stale:
        raise UserError("finished runs in the results folder were made with other settings "
                        "than asked now, so a re-run would skip them and mix the two in one "
                        "table:\n  " + "\n  ".join(stale) + "\nDelete those files to run "
                        "them again with these settings, or choose another --out.")
    command = "python -m recbole_mdgr.benchmark " + " ".join(sys.argv[1:])
    failed = []
    for i, (name, row) in enumerate(rows.items(), 1):
        path = run_path(args.out, name)
        if os.path.isfile(path):
            print(f"[{i}/{len(rows)}] {name}: already in {path}, skipped (delete the file "
                  "to run it again)", flush=True)
            continue
        print(f"[{i}/{len(rows)}] {name} on {args.dataset}, preset "
              f"{preset_for(row['model'], row.get('preset', args.preset))}: training",
              flush=True)
        child = [sys.executable, "-m", "recbole_mdgr.benchmark", f"--one={name}",
                 f"--dataset={args.dataset}", f"--out={args.out}", f"--command={command}",
                 f"--throughput_steps={args.throughput_steps}", f"--models={args.models}"]
        child += [f"--seeds={args.seeds}"] if args.seeds else []
        child += [f"--preset={args.preset}"] if args.preset else []
        child += [f"--suite={args.suite}"] if args.suite else []
        done = subprocess.run(child + overrides)
        if done.returncode != 0:
            failed.append(name)
            print(f"[{i}/{len(rows)}] {name} failed (exit {done.returncode}); going on",
                  flush=True)
            continue
        write_reports(args.out, order)
    if not load_runs(args.out):
        return 1
    paths = write_reports(args.out, order)
    print(markdown(load_runs(args.out, order)))
    print("written: " + ", ".join(paths))
    if failed:
        print(f"failed: {', '.join(failed)} (run the same command again to retry them)")
    return 1 if failed else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="MDGR,MADRec,TIGER,SASRec,BERT4Rec")
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--out", default="benchmark", help="results folder")
    parser.add_argument("--preset", default=None,
                        help="per model, the shipped preset <model>-<preset>, else <preset>")
    parser.add_argument("--suite", default=None,
                        help="rows from properties/suite/<name>.yaml instead of --models")
    parser.add_argument("--rows", default=None,
                        help='with --suite: only these rows, in this order ("name;name")')
    parser.add_argument("--seeds", default=None,
                        help="run every row once per seed (\"2020,2021\"); the report adds "
                             "mean and spread over them")
    parser.add_argument("--throughput_steps", type=int, default=5,
                        help="training steps timed before each run (0: none)")
    parser.add_argument("--table", action="store_true",
                        help="rewrite the reports and plots of --out from its runs; print the table")
    parser.add_argument("--checkpoint", default=None, help="compare decoding variants of it")
    parser.add_argument("--variants", default="", help='"key=v,key=v;key=v" config variants')
    parser.add_argument("--split", default="test", choices=("test", "valid"),
                        help="with --checkpoint: the split the variants are scored on")
    parser.add_argument("--throughput", action="store_true",
                        help="training tokens/s, GFLOP/s vs the matmul peak, inference users/s")
    parser.add_argument("--stack", action="store_true",
                        help="with --throughput: also a MADRec-shaped encoder-only stack")
    parser.add_argument("--steps", type=int, default=10, help="timed steps for --throughput")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--command", default=None, help=argparse.SUPPRESS)
    return parser


def main(argv=None) -> None:
    args, overrides = build_parser().parse_known_args(argv)
    from recbole_mdgr.compat import quiet_recbole_warnings
    from recbole_mdgr.report import load_runs, markdown

    quiet_recbole_warnings()  # the throughput probe builds datasets before the run does
    if args.throughput:
        throughput_main(args, overrides)
    elif args.one:
        run_one(args.one, args, overrides)
    elif args.checkpoint:
        from recbole_mdgr.report import variants_markdown, write_variant_reports

        rows = decode_variants(args.checkpoint, parse_variants(args.variants), args.split)
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "variants.jsonl"), "a") as f:
            f.writelines(json.dumps(row, default=float) + "\n" for row in rows)
        print(variants_markdown(rows))
        if load_runs(args.out):  # the NFE plot draws the variants next to the runs
            from recbole_mdgr.report import write_reports

            write_reports(args.out)
        else:
            write_variant_reports(args.out)
    elif args.table:  # the reports and plots rewritten from the folder's runs, the table shown
        from recbole_mdgr.report import write_reports

        rows = load_runs(args.out)
        if not rows:
            raise UserError(f"--table: no finished runs in {args.out}/runs/")
        write_reports(args.out)
        print(markdown(rows))
    else:
        sys.exit(side_by_side(args, overrides))


if __name__ == "__main__":
    from recbole_mdgr.errors import reported_as_errors

    with reported_as_errors():
        main()
