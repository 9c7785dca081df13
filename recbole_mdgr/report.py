"""The results of a side-by-side benchmark folder: table, CSV, JSON and plots.

A benchmark folder holds one ``runs/<model>.json`` per finished model (written by
``recbole_mdgr.benchmark``); :func:`write_reports` turns them into ``results.json``,
``results.csv``, ``results.md`` and PNG plots next to them. Runs that dropped training data
(``train_drop_ratio``, the data-constrained suite) also get ``retained.md`` and its plot: each
metric against the same model's run on the full data.
"""

from __future__ import annotations

import csv
import json
import os
import re

RUNS = "runs"
PLOTS = {
    "recall_at_k": "recall_at_k.png",
    "valid_curves": "valid_ndcg10_vs_minutes.png",
    "recall_vs_nfe": "recall10_vs_nfe.png",
    "recall_vs_speed": "recall10_vs_users_per_s.png",
}
VARIANT_PLOT = "decoding_variants.png"  # only in a folder with decoding variants


def _metric(key, own_split=False):
    """``key`` in % from a row's test result, or with ``own_split`` from the result of the
    split the row was scored on (a decoding variant's ``split``)."""
    def get(row):
        split = _split(row) if own_split else "test"
        value = (row["result"].get(f"{split}_result") or {}).get(key)
        return None if value is None else round(100 * float(value), 2)
    return get


def _path(*keys, scale=1.0, digits=2):
    def get(row):
        value = row
        for key in keys:
            if not isinstance(value, dict) or value.get(key) is None:
                return None
            value = value[key]
        if isinstance(value, str):
            return value
        value = round(scale * float(value), digits)
        return int(value) if digits == 0 else value
    return get


def _seconds_per_epoch(row):
    training = row["result"].get("training") or {}
    epochs = training.get("epochs")
    return round(row["result"]["timing"]["fit_seconds"] / epochs, 1) if epochs else None


def _nfe(row):
    decode = row["result"].get("test_decode")
    return round(float(decode["nfe_per_user"]), 2) if decode else 1


# (column, how to read it from a run); metrics in %, "-" where a run did not measure it
COLUMNS = [
    ("model", lambda row: row["model"]),
    ("R@5", _metric("recall@5")), ("R@10", _metric("recall@10")),
    ("R@20", _metric("recall@20")), ("R@40", _metric("recall@40")),
    ("N@5", _metric("ndcg@5")), ("N@10", _metric("ndcg@10")), ("N@20", _metric("ndcg@20")),
    ("MRR@10", _metric("mrr@10")),
    ("params", _path("result", "parameters", digits=0)),
    ("fit min", _path("result", "timing", "fit_seconds", scale=1 / 60, digits=1)),
    ("epochs", _path("result", "training", "epochs", digits=0)),
    ("ended by", _path("result", "training", "stopped_by")),
    ("fit s/epoch", _seconds_per_epoch),
    ("train tokens/s", _path("throughput", "tokens_per_s", digits=0)),
    ("GFLOP/s", _path("throughput", "gflops_per_s", digits=1)),
    ("% of peak", _path("throughput", "share_of_peak", scale=100, digits=0)),
    ("users/s", _path("throughput", "inference_users_per_s", digits=1)),
    ("NFE", _nfe),
    ("test ms/user", _path("result", "timing", "test_ms_per_user", digits=2)),
    ("peak MB", _path("peak_memory_mb", digits=0)),
]
# next-k runs (``next_k`` > 1): average session recall, after MRR@10, only when some run has it
SESSION_COLUMNS = [(f"SR@{k}", _metric(f"session_recall@{k}")) for k in (5, 10, 20)]


def cpu_of(row: dict) -> str:
    """The processor named in a run's ``machine`` line ("AMD EPYC", "Intel Xeon", a GPU's
    name), or "" when the line names none."""
    line = row.get("machine") or ""
    if ", GPU " in line:
        return line.split(", GPU ", 1)[1]
    found = re.search(r"cores \((.*)\), torch", line)
    if not found:
        return ""
    words = found.group(1).replace("(R)", "").replace("(TM)", "").split()
    return " ".join(w for w in words if w not in ("Processor", "CPU"))


def mixed_machines(rows: list[dict]) -> bool:
    """Whether the runs come from more than one processor (so their times do not compare)."""
    return len({cpu_of(row) for row in rows}) > 1


def timed_labels(rows: list[dict]) -> list[str]:
    """The runs' names on a plot whose axis is a time: with the processor in brackets when
    the runs come from more than one."""
    mixed = mixed_machines(rows)
    return [f"{row['model']} [{cpu_of(row) or '?'}]" if mixed else row["model"]
            for row in rows]


MIXED_MACHINES_NOTE = ("These runs come from more than one processor (column `CPU`): compare "
                       "minutes, s/epoch, tokens/s, GFLOP/s, users/s and ms/user only between "
                       "runs of the same one; the share of peak is measured against each "
                       "run's own machine.")


def columns(rows: list[dict]) -> list[tuple]:
    """:data:`COLUMNS`, with :data:`SESSION_COLUMNS` when some run measured them and a
    ``CPU`` column when the runs come from more than one processor."""
    session = [c for c in SESSION_COLUMNS if any(c[1](row) is not None for row in rows)]
    at = [name for name, _ in COLUMNS].index("MRR@10") + 1
    cpu = [("CPU", lambda row: cpu_of(row) or None)] if mixed_machines(rows) else []
    return COLUMNS[:at] + session + COLUMNS[at:] + cpu


def previous_order(folder: str) -> list[str]:
    """The row order of the folder's last ``results.json`` ([] without one)."""
    path = os.path.join(folder, "results.json")
    try:
        with open(path) as f:
            return [row["model"] for row in json.load(f)]
    except (OSError, ValueError, KeyError, TypeError):
        return []


def load_runs(folder: str, order: list[str] | None = None) -> list[dict]:
    """The finished runs in ``folder/runs``: in the order of the folder's last
    ``results.json``, so that a re-run or a new row never reshuffles a table; the rows new
    to it after those, in ``order`` (a suite's order), then alphabetical."""
    runs_dir = os.path.join(folder, RUNS)
    if not os.path.isdir(runs_dir):
        return []
    rows = []
    for name in sorted(os.listdir(runs_dir)):
        if name.endswith(".json"):
            with open(os.path.join(runs_dir, name)) as f:
                rows.append(json.load(f))
    rank: dict[str, int] = {}
    for model in previous_order(folder) + list(order or []):
        rank.setdefault(model, len(rank))
    return sorted(rows, key=lambda r: (rank.get(r["model"], len(rank)), r["model"]))


def table_rows(rows: list[dict]) -> list[list]:
    readers = [get for _, get in columns(rows)]
    return [[get(row) for get in readers] for row in rows]


def markdown(rows: list[dict]) -> str:
    head = [name for name, _ in columns(rows)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for values in table_rows(rows):
        cells = ["-" if v is None else (f"{v:,.0f}" if isinstance(v, (int, float))
                                        and v >= 1000 else str(v)) for v in values]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def provenance(rows: list[dict]) -> str:
    """One line per run: its command, machine, commit and date."""
    return "\n".join(f"- {r['model']}: `{r.get('command', '?')}` on {r.get('machine', '?')}, "
                     f"commit {r.get('commit', '?')}, {r.get('date', '?')}" for r in rows)


SEED_SUFFIX = re.compile(r",? seed \d+$")
SEED_METRICS = (("R@5", "recall@5"), ("R@10", "recall@10"), ("R@20", "recall@20"),
                ("N@10", "ndcg@10"))


def seed_groups(rows: list[dict]) -> list[tuple[str, list[dict]]]:
    """Runs of one setting that differ only in ``seed``: the same model, dataset, settings
    (the preset's keys and the row config together, as the run used them: a row that pins
    what its preset set later is the same setting) and overrides once ``seed`` is left out.
    ``[(name, runs)]`` for every group of two or more whose seeds all differ (two runs with
    one seed are a re-run, e.g. of changed code, not a spread over seeds), named after its
    first run without a trailing ``seed N``."""
    groups: dict[str, list[dict]] = {}
    for row in rows:
        settings = {**(row.get("preset_config") or {}), **(row.get("config") or {})}
        settings.pop("seed", None)
        overrides = [o for o in row.get("overrides") or [] if not o.startswith("--seed=")]
        key = json.dumps([row.get("base_model", row["model"]), row.get("dataset"),
                          row.get("preset"), settings, overrides], sort_keys=True, default=str)
        groups.setdefault(key, []).append(row)
    return [(SEED_SUFFIX.sub("", runs[0]["model"]), runs) for runs in groups.values()
            if len(runs) > 1 and len({str(_seed_of(r)) for r in runs}) == len(runs)]


def _seed_of(row: dict):
    seed = (row.get("config") or {}).get("seed")
    flags = [o.split("=", 1)[1] for o in row.get("overrides") or [] if o.startswith("--seed=")]
    return seed if seed is not None else (flags[-1] if flags else "default")


def _mean_sd(values: list[float]) -> str:
    if len(values) < 2:
        return "-"
    mean = sum(values) / len(values)
    sd = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5
    return f"{mean:.2f} ± {sd:.2f}"


def seeds_markdown(groups: list[tuple[str, list[dict]]]) -> str:
    """One line per group: each test metric as mean ± standard deviation (n - 1) over its
    runs, R@10's range, and the seeds."""
    head = ["setting", "runs", "seeds"] + [f"{n} mean ± sd" for n, _ in SEED_METRICS] + [
        "R@10 min-max"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, runs in groups:
        values = {key: [v for v in map(_metric(key), runs) if v is not None]
                  for _, key in SEED_METRICS}
        recall = values["recall@10"]
        cells = ([name, str(len(runs)), ", ".join(str(_seed_of(r)) for r in runs)]
                 + [_mean_sd(values[key]) for _, key in SEED_METRICS]
                 + [f"{min(recall):.2f}-{max(recall):.2f}" if recall else "-"])
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_reports(folder: str, order: list[str] | None = None) -> list[str]:
    """Write ``results.json``, ``results.csv``, ``results.md`` and the plots; their paths."""
    rows = load_runs(folder, order)
    paths = [os.path.join(folder, f) for f in ("results.json", "results.csv", "results.md")]
    with open(paths[0], "w") as f:
        json.dump(rows, f, indent=1)
    with open(paths[1], "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([name for name, _ in columns(rows)])
        writer.writerows(["" if v is None else v for v in values] for values in table_rows(rows))
    with open(paths[2], "w") as f:
        f.write(markdown(rows) + "\n\nMetrics in % (test split, best-validation checkpoint). "
                + (MIXED_MACHINES_NOTE + " " if mixed_machines(rows) else "")
                + "Runs:\n" + provenance(rows) + "\n")
        groups = seed_groups(rows)
        if groups:
            f.write("\n## Over seeds\n\nRuns of one setting that differ only in `seed`: "
                    "each test metric (%) as mean ± standard deviation (n - 1) over them.\n\n"
                    + seeds_markdown(groups) + "\n")
    return (paths + plot_all(folder, rows) + write_variant_reports(folder)
            + write_retained_reports(folder, rows))


RETAINED_MD, RETAINED_PLOT = "retained.md", "retained_vs_drop.png"
RETAINED_METRICS = ("recall@5", "ndcg@5", "recall@10")  # the paper's Figure 3 shows @5


def retained_rows(rows: list[dict]) -> list[tuple]:
    """The data-constrained runs (a ``train_drop_ratio`` in their row config) as ``(model,
    drop ratio, {metric: (value in %, retained in %)})``, sorted by model and ratio. Retained
    is the value over the same base model's value at ratio 0, in %; None without that run."""
    runs = [(r.get("base_model", r["model"]), float(r["config"]["train_drop_ratio"]), r)
            for r in rows if (r.get("config") or {}).get("train_drop_ratio") is not None]
    full = {model: run for model, ratio, run in runs if ratio == 0}
    out = []
    for model, ratio, run in sorted(runs, key=lambda t: t[:2]):
        values = {}
        for key in RETAINED_METRICS:
            value, base = _metric(key)(run), full.get(model) and _metric(key)(full[model])
            values[key] = (value, round(100 * value / base, 1) if value is not None and base
                           else None)
        out.append((model, ratio, values))
    return out


def write_retained_reports(folder: str, rows: list[dict]) -> list[str]:
    """``retained.md`` and ``retained_vs_drop.png`` when some runs dropped training data
    (removed otherwise, so that no report outlives its runs)."""
    retained = retained_rows(rows)
    if not retained:
        for name in (RETAINED_MD, RETAINED_PLOT):
            if os.path.isfile(os.path.join(folder, name)):
                os.remove(os.path.join(folder, name))
        return []
    names = {"recall@5": "R@5", "ndcg@5": "N@5", "recall@10": "R@10"}
    head = ["model", "dropped"] + [f"{names[k]}{extra}" for k in RETAINED_METRICS
                                   for extra in ("", " retained %")]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for model, ratio, values in retained:
        cells = [model, f"{100 * ratio:g}%"] + ["-" if v is None else str(v)
                                                for k in RETAINED_METRICS for v in values[k]]
        lines.append("| " + " | ".join(cells) + " |")
    path = os.path.join(folder, RETAINED_MD)
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n\nTest metrics in %; retained = the metric over the same "
                "model's run on the full training data (dropped 0%), in %. Runs: "
                "results.md.\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.8), sharey=True)
    for ax, key in zip(axes, RETAINED_METRICS[:2]):
        for model in dict.fromkeys(model for model, _, _ in retained):
            points = [(100 * ratio, values[key][1]) for m, ratio, values in retained
                      if m == model and values[key][1] is not None]
            if points:
                ax.plot(*zip(*points), "o-", label=model)
        ax.set(xlabel="training items dropped (%)", ylabel=f"retained test {names[key]} (%)",
               title=f"{names[key]} retained")
        ax.legend()
    fig.tight_layout()
    plot = os.path.join(folder, RETAINED_PLOT)
    fig.savefig(plot, dpi=110)
    plt.close(fig)
    return [path, plot]


def load_variants(folder: str) -> dict[str, list[dict]]:
    """``folder/variants.jsonl`` (``benchmark --checkpoint --variants``), grouped by the
    checkpoint's model file name."""
    path = os.path.join(folder, "variants.jsonl")
    if not os.path.isfile(path):
        return {}
    groups: dict[str, list[dict]] = {}
    with open(path) as f:
        for line in f:
            if line.strip():
                row = json.loads(line)
                name = os.path.basename(row["checkpoint"]).split("-")[0]
                groups.setdefault(name, []).append(row)
    return groups


def _split(row) -> str:
    return row.get("split", "test")


def _variant_decode(key, of=float, digits=2):
    def get(row):
        value = (row["result"].get(f"{_split(row)}_decode") or {}).get(key)
        return None if value is None else round(of(value), digits)
    return get


# a decoding variant's row: its metrics on the split it was scored on, and its decoding cost
VARIANT_COLUMNS = [
    ("checkpoint", lambda row: os.path.basename(row["checkpoint"])),
    ("variant", lambda row: row["model"]),
    ("split", lambda row: _split(row) + (f" ({row['users']} users)" if "users" in row else "")),
    ("R@5", _metric("recall@5", True)), ("R@10", _metric("recall@10", True)),
    ("R@20", _metric("recall@20", True)), ("N@10", _metric("ndcg@10", True)),
    ("NFE", _variant_decode("nfe_per_user")),
    ("users/s", _variant_decode("decode_ms_per_user", of=lambda ms: 1000.0 / ms, digits=1)),
]


def variants_markdown(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(name for name, _ in VARIANT_COLUMNS) + " |",
             "|" + "---|" * len(VARIANT_COLUMNS)]
    for row in rows:
        lines.append("| " + " | ".join("-" if v is None else str(v) for v in
                                       (get(row) for _, get in VARIANT_COLUMNS)) + " |")
    return "\n".join(lines)


def variant_lines(rows: list[dict], metric: str = "recall@10"):
    """Decoding variants as ``{(model, split, shared keys, last key): [(users/s, value,
    last)]}``: the variants of one checkpoint and split that differ only in their last key's
    value are one line, sorted by users/s (``mdgr_warmup_steps=4,mdgr_parallel=1..4``: one line per
    warm-up length); ``last`` is that key's ``key=value``."""
    speed, value_of = VARIANT_COLUMNS[-1][1], _metric(metric, own_split=True)
    lines: dict[tuple, list] = {}
    for row in rows:
        x, y = speed(row), value_of(row)
        if x is None or y is None:
            continue
        parts = [part.strip() for part in row["model"].split(",")]
        key = (os.path.basename(row["checkpoint"]).split("-")[0], _split(row),
               ", ".join(parts[:-1]), parts[-1].split("=")[0])
        lines.setdefault(key, []).append((x, y, parts[-1]))
    return {key: sorted(points) for key, points in lines.items()}


def write_variant_reports(folder: str) -> list[str]:
    """``variants.md`` and ``decoding_variants.png`` from ``folder/variants.jsonl``."""
    rows = [row for group in load_variants(folder).values() for row in group]
    if not rows:
        return []
    path = os.path.join(folder, "variants.md")
    with open(path, "w") as f:
        f.write(variants_markdown(rows) + "\n\nMetrics in % on the split named; users/s is "
                "decoding alone (`decode_ms_per_user`). Rows: `benchmark --checkpoint "
                "--variants` (docs/benchmarks.md), each with its commit, machine and date "
                "in variants.jsonl.\n")
    lines = variant_lines(rows)
    if not lines:
        return [path]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for (name, split, shared, last), points in lines.items():
        xs, ys, _ = zip(*points)
        ax.plot(xs, ys, "o-", ms=4, label=f"{name} {split}, " + (f"{shared}, " if shared else "")
                + f"{last}=")
        for x, y, label in points:
            ax.annotate(label.split("=")[-1], (x, y), textcoords="offset points",
                        xytext=(3, 3), fontsize=7)
    ax.set(xlabel="decoded users/s", ylabel="Recall@10 (%)",
           title="decoding variants (point label: the last key's value)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    plot = os.path.join(folder, VARIANT_PLOT)
    fig.savefig(plot, dpi=110)
    plt.close(fig)
    return [path, plot]


def variant_series(group: list[dict], metric: str):
    """One checkpoint's decoding variants on the recall-vs-NFE plot: the variants that set
    an NFE key (``*_nfe=...``) as a line sorted by NFE ``[(nfe, value)]``, the others (an
    unmasking order, a beam width) as labelled points ``[(variant, nfe, value)]``."""
    line, others = [], []
    for r in group:
        value = _metric(metric)(r)
        if value is None:
            continue
        keys = [part.split("=")[0].strip() for part in r["model"].split(",")]
        if any(k.endswith("_nfe") for k in keys):
            line.append((_nfe(r), value))
        else:
            others.append((r["model"], _nfe(r), value))
    return sorted(line), others


def plot_all(folder: str, rows: list[dict]) -> list[str]:
    """The PNG plots of ``rows`` (each only when some run has its data)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []

    def save(fig, key):
        path = os.path.join(folder, PLOTS[key])
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)

    fig, ax = plt.subplots(figsize=(6, 4))
    for row in rows:
        ks = sorted(int(k.split("@")[1]) for k in row["result"]["test_result"]
                    if k.startswith("recall@"))
        ax.plot(ks, [100 * row["result"]["test_result"][f"recall@{k}"] for k in ks], "o-",
                label=row["model"])
    ax.set(xlabel="K", ylabel="test Recall@K (%)", title="Recall@K")
    ax.legend()
    save(fig, "recall_at_k")

    curves = [(label, r["result"].get("training", {}).get("valid_curve"))
              for label, r in zip(timed_labels(rows), rows)]
    if any(c for _, c in curves):
        fig, ax = plt.subplots(figsize=(6, 4))
        for model, curve in curves:
            if curve:
                ax.plot([p["minutes"] for p in curve], [100 * p["valid_score"] for p in curve],
                        "o-", ms=3, label=model)
        ax.set(xlabel="wall-clock minutes of fit", ylabel="validation score (%)",
               title="Validation score (valid_metric) while training")
        ax.legend()
        save(fig, "valid_curves")

    decoders = [r for r in rows if r["result"].get("test_decode")]
    metric = "session_recall@10" if any(_metric("session_recall@10")(r) is not None
                                        for r in rows) else "recall@10"
    variants = load_variants(folder)
    for key, x_of, label in (
            ("recall_vs_nfe", _nfe, "NFE per user"),
            ("recall_vs_speed", _path("throughput", "inference_users_per_s"),
             "inference users/s")):
        labels = timed_labels(decoders) if key == "recall_vs_speed" else [
            r["model"] for r in decoders]
        points = [(name, x_of(r), _metric(metric)(r)) for name, r in zip(labels, decoders)]
        points = [p for p in points if p[1] is not None and p[2] is not None]
        if not points:
            continue
        fig, ax = plt.subplots(figsize=(6, 4))
        for model, x, y in points:
            ax.plot([x], [y], "o")
            ax.annotate(model, (x, y), textcoords="offset points", xytext=(4, 4))
        if key == "recall_vs_nfe":  # decoding variants of one checkpoint
            for name, group in variants.items():
                line, others = variant_series(group, metric)
                if line:
                    ax.plot(*zip(*line), "s--", ms=4, label=f"{name}, NFE sweep")
                    ax.legend()
                for variant, x, y in others:
                    ax.plot([x], [y], "x", color="gray")
                    ax.annotate(variant, (x, y), textcoords="offset points", xytext=(-6, 0),
                                ha="right", va="center", fontsize=7)
        ax.set(xlabel=label, ylabel=f"test {metric} (%)", title=f"{metric} vs {label}")
        save(fig, key)
    return written
