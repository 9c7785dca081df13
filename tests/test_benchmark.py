"""The side-by-side benchmark: every output file and column, and re-runs that skip."""

import csv
import json
import os
import subprocess
import sys

import pytest

from recbole_mdgr.report import COLUMNS, PLOTS

from conftest import write_tiny_dataset

TINY = ["--epochs=1", "--n_layers=1", "--n_layers_enc=1", "--n_layers_dec=1",
        "--hidden_size=16", "--inner_size=32", "--head_dim=8", "--n_heads=2",
        "--sid_levels=2", "--sid_codebook_size=8", "--MAX_ITEM_LIST_LENGTH=10",
        "--show_progress=False"]


def _bench(tmp_path, out):
    cmd = [sys.executable, "-m", "recbole_mdgr.benchmark", "--models=TIGER,SASRec",
           "--dataset=tiny", f"--data_path={tmp_path}", f"--out={out}",
           "--throughput_steps=1", f"--checkpoint_dir={tmp_path / 'saved'}", *TINY]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=900)


def test_benchmark_writes_every_output_and_a_rerun_skips_finished_models(tmp_path):
    write_tiny_dataset(tmp_path)
    out = tmp_path / "bench"
    done = _bench(tmp_path, out)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    assert "[1/2] TIGER on tiny, preset None: training" in done.stdout

    for model in ("TIGER", "SASRec"):
        row = json.loads((out / "runs" / f"{model}.json").read_text())
        assert row["model"] == model and row["dataset"] == "tiny"
        assert row["result"]["training"]["epochs"] == 1
        assert 0 < row["throughput"]["share_of_peak"] < 1.5
        assert row["peak_memory_mb"] > 10
    with open(out / "results.csv") as f:
        table = list(csv.reader(f))
    assert table[0] == [name for name, _ in COLUMNS]
    assert [r[0] for r in table[1:]] == ["TIGER", "SASRec"]  # the --models order
    for r in table[1:]:
        cells = dict(zip(table[0], r))
        # topk is [5, 10, 20]: R@40 was not measured; every other column was
        assert cells.pop("R@40") == ""
        assert all(v != "" for v in cells.values()), cells
        assert cells["ended by"] == "max_epochs" and cells["epochs"] == "1"
    nfe = {r[0]: float(dict(zip(table[0], r))["NFE"]) for r in table[1:]}
    assert nfe == {"TIGER": 3.0, "SASRec": 1.0}  # 2 levels + TIGER's dedup token
    results = json.loads((out / "results.json").read_text())
    assert [r["model"] for r in results] == ["TIGER", "SASRec"]
    md = (out / "results.md").read_text()
    assert md.startswith("| model | R@5 |") and "| TIGER |" in md and "| SASRec |" in md
    for name in PLOTS.values():
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name

    before = {m: (out / "runs" / f"{m}.json").stat().st_mtime_ns for m in ("TIGER", "SASRec")}
    again = _bench(tmp_path, out)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "[1/2] TIGER: already in" in again.stdout and "[2/2] SASRec: already in" in again.stdout
    assert "training" not in again.stdout.split("| model |")[0]
    after = {m: (out / "runs" / f"{m}.json").stat().st_mtime_ns for m in ("TIGER", "SASRec")}
    assert after == before


def test_benchmark_refuses_an_unknown_preset_before_running(tmp_path):
    done = subprocess.run([sys.executable, "-m", "recbole_mdgr.benchmark", "--models=TIGER",
                           "--preset=gpu-huge", f"--out={tmp_path / 'b'}"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "no preset TIGER-gpu-huge or gpu-huge for TIGER" in done.stderr
    assert not (tmp_path / "b").exists()


def test_every_shipped_suite_names_known_models_and_config_keys():
    import yaml

    from recbole_mdgr.benchmark import run_path, suite_rows
    from recbole_mdgr.config import Config, properties_dir
    from recbole_mdgr.utils import get_model

    folder = os.path.join(properties_dir(), "suite")
    suites = sorted(f[:-5] for f in os.listdir(folder) if f.endswith(".yaml"))
    assert {"mdgr-noise", "sid-ablation", "text-encoder", "recall-at-40"} <= set(suites)
    for suite in suites:
        rows = suite_rows(suite, "")
        # distinct result files, at least one per suite
        assert len({run_path("o", name) for name in rows}) == len(rows) >= 1
        for name, row in rows.items():
            get_model(row["model"])
            known = Config(row["model"], "ml-100k").final_config_dict
            unknown = set(row.get("config") or {}) - set(known)
            assert not unknown, (suite, name, unknown)
    with open(os.path.join(folder, "mdgr-noise.yaml")) as f:
        suite = yaml.safe_load(f)
    noise = suite["rows"]
    # the rows pin the preset's noise of the day they were measured (the paper's), except
    # the two switches below; MDGR-cpu itself has moved on since
    pinned = dict(suite["mdgr_cpu_until_2026_12_05"])
    assert pinned.pop("mdgr_curriculum") is True and pinned["mdgr_suffix_mask_prob"] == 0.0
    # the four cells: (curriculum, history-aware) on/off, the rest equal
    cells = {}
    for name, row in noise.items():
        config = dict(row["config"])
        switches = (config.pop("mdgr_curriculum", True), config.pop("mdgr_history_aware", True))
        if config == {**pinned, "train_time_budget": 15, "sid_vector_source": "content",
                      "sid_svd_solver": "randomized"}:
            cells[switches] = name
    assert set(cells) == {(True, True), (True, False), (False, True), (False, False)}, cells
    assert {row["preset"] for row in noise.values()} == {"MDGR-cpu"}


# shipped suites and the results folder their header command writes
SUITE_FOLDERS = {
    "madrec-levers": "beauty-madrec-levers", "madrec-schedule": "beauty-madrec-schedule",
    "sid-vectors": "beauty-sid-vectors", "data-constrained": "ml100k-data-constrained",
    "mdgr-order": "beauty-mdgr-order", "mdgr-noise": "beauty-mdgr-noise",
    "mdgr-codebook": "beauty-mdgr-codebook", "mdgr-encoder": "beauty-mdgr-encoder",
    "ml100k-cpu": "ml100k-cpu", "next-two": "ml100k-next-two", "text-encoder": "beauty-text-encoder",
    "tiger-schedule": "beauty-tiger-seeds",
}


@pytest.mark.parametrize("suite, folder", SUITE_FOLDERS.items())
def test_shipped_suite_rows_still_ask_for_what_their_recorded_runs_ran(suite, folder):
    """When a preset moves on, the rows run before must pin what it set then: else the row
    no longer describes its result, and a re-run of the suite would refuse the folder. Checked
    on every recorded run, with the keys its preset set (runs made before the field existed
    had it added from the preset file at their commit)."""
    from recbole_mdgr.benchmark import (build_parser, recorded_overrides, run_path, stale_runs,
                                        suite_rows)

    out = os.path.join(os.path.dirname(os.path.dirname(__file__)), "docs", "results", folder)
    checked = 0
    for name, row in suite_rows(suite, "").items():
        path = run_path(out, name)
        if not os.path.isfile(path):
            continue
        with open(path) as f:
            run = json.load(f)
        assert "preset_config" in run or run["preset"] is None, path
        args, _ = build_parser().parse_known_args([f"--dataset={run['dataset']}"])
        args.preset = run["preset"]
        assert stale_runs(out, {name: row}, args, recorded_overrides(run)) == [], name
        checked += 1
    assert checked > 0


def test_an_unknown_suite_lists_the_shipped_ones():
    import pytest

    from recbole_mdgr.benchmark import suite_rows
    from recbole_mdgr.errors import UserError

    with pytest.raises(UserError, match="unknown suite 'nope'; shipped suites: .*mdgr-noise"):
        suite_rows("nope", "")


def test_scale_benchmark_runs_only_the_asked_quantizers_and_models(capsys):
    from recbole_mdgr.errors import UserError
    from recbole_mdgr.scale_benchmark import main

    main(["--items=3000", "--users=4", "--dim=16", "--quantizers=opq", "--models=TIGER"])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| opq")
            or line.startswith("| rq_kmeans")]
    assert [r.split(" | ")[3] for r in rows] == ["(SID table)", "TIGER"]
    assert all(r.startswith("| opq 8x300 |") for r in rows)
    with pytest.raises(UserError, match=r"--quantizers: unknown \['pq'\]"):
        main(["--quantizers=pq"])


def test_rows_of_a_suite_run_in_the_asked_order_and_unknown_ones_are_named():
    from recbole_mdgr.benchmark import pick_rows, suite_rows
    from recbole_mdgr.errors import UserError

    rows = suite_rows("data-constrained", "")
    picked = pick_rows(rows, "TIGER drop 0%; MADRec drop 50%;TIGER drop 50%")
    assert list(picked) == ["TIGER drop 0%", "MADRec drop 50%", "TIGER drop 50%"]
    assert picked["MADRec drop 50%"]["config"]["train_drop_ratio"] == 0.5
    with pytest.raises(UserError, match="no row named 'TIGER drop 99%'; the rows are: "
                                        "MADRec drop 0%; MADRec drop 25%"):
        pick_rows(rows, "TIGER drop 0%;TIGER drop 99%")


def test_table_rewrites_the_reports_from_the_runs_and_refuses_an_empty_folder(tmp_path, capsys):
    from recbole_mdgr.benchmark import main
    from recbole_mdgr.errors import UserError

    run = {"model": "SASRec", "result": {"test_result": {"recall@10": 0.0827},
                                         "timing": {"fit_seconds": 60.0}}}
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "SASRec.json").write_text(json.dumps(run))
    main(["--table", f"--out={tmp_path}"])
    assert "| SASRec | - | 8.27 |" in capsys.readouterr().out
    assert "| SASRec | - | 8.27 |" in (tmp_path / "results.md").read_text()
    assert (tmp_path / "recall_at_k.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(UserError, match="no finished runs"):
        main(["--table", f"--out={tmp_path / 'empty'}"])


def test_a_rerun_refuses_finished_runs_made_with_other_settings(tmp_path):
    from recbole_mdgr.benchmark import main, stale_runs, build_parser
    from recbole_mdgr.errors import UserError

    out = tmp_path / "bench"
    (out / "runs").mkdir(parents=True)
    old = {"model": "TIGER", "dataset": "ml-1m", "preset": None, "config": {},  # no overrides
           "command": "python -m recbole_mdgr.benchmark --models=TIGER --dataset=ml-1m "
                      "--epochs=3 --show_progress=False"}                    # field: read back
    (out / "runs" / "TIGER.json").write_text(json.dumps(old))
    with pytest.raises(UserError) as refused:
        main(["--models=TIGER", "--dataset=ml-100k", f"--out={out}", "--epochs=5"])
    message = str(refused.value)
    assert f"{out / 'runs' / 'TIGER.json'}: dataset 'ml-1m', asked now 'ml-100k'" in message
    assert "overrides {'epochs': 3}, asked now {'epochs': 5}" in message
    assert "preset" not in message.split("Delete")[0] and "Delete those files" in message
    assert sorted(os.listdir(out)) == ["runs"]  # nothing ran, no report was written

    # the same settings (show_progress and data_path aside) are not stale; the new
    # `overrides` field is read as is, and a row's config counts
    args, overrides = build_parser().parse_known_args(
        ["--models=TIGER", "--dataset=ml-1m", "--epochs=3", "--data_path=/x"])
    rows = {"TIGER": {"model": "TIGER"}}
    assert stale_runs(str(out), rows, args, overrides) == []
    (out / "runs" / "TIGER.json").write_text(json.dumps({**old, "overrides": ["--epochs=4"]}))
    assert stale_runs(str(out), rows, args, overrides) == [
        f"{out / 'runs' / 'TIGER.json'}: overrides {{'epochs': 4}}, asked now {{'epochs': 3}}"]
    rows = {"TIGER": {"model": "TIGER", "config": {"train_drop_ratio": 0.5}}}
    (out / "runs" / "TIGER.json").write_text(json.dumps({**old, "overrides": ["--epochs=3"]}))
    assert stale_runs(str(out), rows, args, overrides) == [
        f"{out / 'runs' / 'TIGER.json'}: config {{}}, asked now {{'train_drop_ratio': 0.5}}"]

    # a preset whose file changed since the run (runs record the keys it set then)
    from recbole_mdgr.benchmark import default_settings, preset_settings

    now = preset_settings("TIGER-cpu")
    assert now["train_time_budget"] > 0 and preset_settings(None) == {}
    args.preset = "TIGER-cpu"
    rows = {"TIGER": {"model": "TIGER"}}
    run = {**old, "preset": "TIGER-cpu", "overrides": ["--epochs=3"]}
    (out / "runs" / "TIGER.json").write_text(json.dumps({**run, "preset_config": now}))
    assert stale_runs(str(out), rows, args, overrides) == []
    was = {**now, "stopping_step": -1}
    del was["train_time_budget"]
    (out / "runs" / "TIGER.json").write_text(json.dumps({**run, "preset_config": was}))
    assert stale_runs(str(out), rows, args, overrides) == [
        f"{out / 'runs' / 'TIGER.json'}: preset TIGER-cpu set stopping_step: -1, and sets "
        f"{now['stopping_step']!r} now",
        f"{out / 'runs' / 'TIGER.json'}: preset TIGER-cpu set train_time_budget: None, and "
        f"sets {now['train_time_budget']!r} now"]
    # a preset key the row's config sets (or the command line) was not the run's setting
    rows = {"TIGER": {"model": "TIGER", "config": {"stopping_step": 7}}}
    (out / "runs" / "TIGER.json").write_text(json.dumps(
        {**run, "config": {"stopping_step": 7}, "preset_config": {**now, "stopping_step": -1}}))
    assert stale_runs(str(out), rows, args, overrides) == []
    rows = {"TIGER": {"model": "TIGER"}}  # --epochs=3 on the command line wins too
    (out / "runs" / "TIGER.json").write_text(json.dumps({**run, "preset_config": {
        **now, "epochs": 999}}))
    assert stale_runs(str(out), rows, args, overrides) == []
    (out / "runs" / "TIGER.json").write_text(json.dumps(run))  # recorded before the field
    assert stale_runs(str(out), rows, args, overrides) == []
    # preset and row config make one setting: a row that pins what the preset set when the
    # run was made is the same setting; a row that changes it is not
    (out / "runs" / "TIGER.json").write_text(json.dumps({**run, "preset_config": was}))
    rows = {"TIGER": {"model": "TIGER",
                      "config": {"stopping_step": -1, "train_time_budget": None}}}
    assert stale_runs(str(out), rows, args, overrides) == []
    rows = {"TIGER": {"model": "TIGER",
                      "config": {"stopping_step": 3, "train_time_budget": None}}}
    assert stale_runs(str(out), rows, args, overrides) == [
        f"{out / 'runs' / 'TIGER.json'}: stopping_step -1 (preset TIGER-cpu and row config), "
        f"asked now 3"]
    # a key neither the preset nor the row set was the model's default: pinning it to that
    # default is the same setting
    (out / "runs" / "TIGER.json").write_text(json.dumps({**run, "preset_config": now}))
    default = default_settings("TIGER")["tiger_decode"]
    rows = {"TIGER": {"model": "TIGER", "config": {"tiger_decode": default}}}
    assert stale_runs(str(out), rows, args, overrides) == []
    rows = {"TIGER": {"model": "TIGER", "config": {"tiger_decode": "not-" + default}}}
    assert stale_runs(str(out), rows, args, overrides) == [
        f"{out / 'runs' / 'TIGER.json'}: tiger_decode {default!r} (preset TIGER-cpu and row "
        f"config), asked now {'not-' + default!r}"]
    args.preset = None  # no preset: the row config alone
    (out / "runs" / "TIGER.json").write_text(json.dumps({**old, "overrides": ["--epochs=3"],
                                                         "preset_config": {}}))
    rows = {"TIGER": {"model": "TIGER", "config": {"train_drop_ratio": 0.5}}}
    assert stale_runs(str(out), rows, args, overrides) == [
        f"{out / 'runs' / 'TIGER.json'}: train_drop_ratio "
        f"{default_settings('TIGER')['train_drop_ratio']!r} (row config), asked now 0.5"]


def test_data_constrained_runs_report_the_share_of_the_full_data_metric_they_keep(tmp_path):
    from recbole_mdgr.report import RETAINED_MD, RETAINED_PLOT, retained_rows, write_reports

    def run(name, model, ratio, r5, n5):
        return {"model": name, "base_model": model, "config": {"train_drop_ratio": ratio},
                "result": {"test_result": {"recall@5": r5, "ndcg@5": n5},
                           "timing": {"fit_seconds": 60.0}}}

    runs = [run("TIGER drop 50%", "TIGER", 0.5, 0.03, 0.01),
            run("TIGER drop 0%", "TIGER", 0.0, 0.04, 0.02),
            run("MADRec drop 25%", "MADRec", 0.25, 0.02, 0.01),  # no full-data run yet
            {"model": "SASRec", "result": {"test_result": {"recall@5": 0.05}}}]  # not a drop run
    assert retained_rows(runs) == [
        ("MADRec", 0.25, {"recall@5": (2.0, None), "ndcg@5": (1.0, None),
                          "recall@10": (None, None)}),
        ("TIGER", 0.0, {"recall@5": (4.0, 100.0), "ndcg@5": (2.0, 100.0),
                        "recall@10": (None, None)}),
        ("TIGER", 0.5, {"recall@5": (3.0, 75.0), "ndcg@5": (1.0, 50.0),
                        "recall@10": (None, None)})]

    (tmp_path / "runs").mkdir()
    for r in runs[:3]:
        (tmp_path / "runs" / f"{r['model']}.json").write_text(json.dumps(r))
    write_reports(str(tmp_path))
    table = (tmp_path / RETAINED_MD).read_text()
    assert "| TIGER | 50% | 3.0 | 75.0 | 1.0 | 50.0 | - | - |" in table
    assert "| MADRec | 25% | 2.0 | - | 1.0 | - | - | - |" in table
    assert (tmp_path / RETAINED_PLOT).read_bytes()[:4] == b"\x89PNG"

    (tmp_path / "runs" / "SASRec.json").write_text(json.dumps({**runs[3], "model": "SASRec"}))
    for name in ("TIGER drop 50%", "TIGER drop 0%", "MADRec drop 25%"):
        os.remove(tmp_path / "runs" / f"{name}.json")
    assert not any(p.endswith(RETAINED_MD) for p in write_reports(str(tmp_path)))
    assert not (tmp_path / RETAINED_MD).exists() and not (tmp_path / RETAINED_PLOT).exists()


def test_throughput_gives_each_model_its_preset_and_the_overrides(monkeypatch, capsys):
    """``--throughput --preset=cpu`` times each model with its own ``<model>-cpu`` preset
    (``cpu`` alone is no preset), the other flags reaching RecBole's command-line parser."""
    import recbole_mdgr.throughput as throughput
    from recbole_mdgr.benchmark import main

    calls = []

    def fake_throughput(model, dataset, config_dict, steps):
        calls.append((model, dataset, config_dict, steps, list(sys.argv[1:])))
        return {"model": model, "seconds_per_step": 0.5}

    monkeypatch.setattr(throughput, "matmul_peak", lambda: 100.0)
    monkeypatch.setattr(throughput, "model_throughput", fake_throughput)
    monkeypatch.setattr(throughput, "report", lambda rows, peak: "table")
    monkeypatch.setattr(sys, "argv", ["benchmark"])
    main(["--throughput", "--models=MADRec,TIGER", "--preset=cpu", "--dataset=ml-100k",
          "--steps=3", "--n_layers=2"])
    assert calls == [("MADRec", "ml-100k", {"preset": "MADRec-cpu"}, 3, ["--n_layers=2"]),
                     ("TIGER", "ml-100k", {"preset": "TIGER-cpu"}, 3, ["--n_layers=2"])]
    assert capsys.readouterr().out.endswith("table\n")


def test_runs_from_two_machines_are_labelled_with_their_processor_where_time_is_compared(
        tmp_path):
    from recbole_mdgr.report import cpu_of, timed_labels, write_reports

    def run(model, cpu):
        return {"model": model, "machine": f"2 cores ({cpu}), torch 2.13.0+cpu, 2 threads, "
                                           "no GPU",
                "result": {"test_result": {"recall@10": 0.07},
                           "timing": {"fit_seconds": 60.0}}}

    xeon, epyc = run("TIGER", "Intel(R) Xeon(R) Processor"), run("MDGR", "AMD EPYC")
    assert cpu_of(xeon) == "Intel Xeon" and cpu_of(epyc) == "AMD EPYC"
    assert cpu_of({"machine": "2 cores, GPU NVIDIA A100"}) == "NVIDIA A100"
    assert cpu_of({"model": "old run without a machine line"}) == ""
    assert timed_labels([xeon, run("SASRec", "Intel(R) Xeon(R) Processor")]) == [
        "TIGER", "SASRec"]  # one machine: the plain names
    assert timed_labels([xeon, epyc]) == ["TIGER [Intel Xeon]", "MDGR [AMD EPYC]"]

    (tmp_path / "runs").mkdir()
    for r in (xeon, epyc):
        (tmp_path / "runs" / f"{r['model']}.json").write_text(json.dumps(r))
    write_reports(str(tmp_path))
    table = (tmp_path / "results.md").read_text()
    assert table.splitlines()[0].endswith("| CPU |")
    assert "| AMD EPYC |" in table and "| Intel Xeon |" in table
    assert "more than one processor" in table
    with open(tmp_path / "results.csv") as f:
        assert next(csv.reader(f))[-1] == "CPU"

    os.remove(tmp_path / "runs" / "MDGR.json")
    write_reports(str(tmp_path))
    table = (tmp_path / "results.md").read_text()
    assert "CPU" not in table.splitlines()[0] and "more than one processor" not in table


def test_rewriting_the_reports_keeps_the_tables_row_order_and_appends_new_rows(tmp_path):
    from recbole_mdgr.report import load_runs, write_reports

    (tmp_path / "runs").mkdir()

    def add(model):
        (tmp_path / "runs" / f"{model}.json").write_text(json.dumps(
            {"model": model, "result": {"test_result": {}, "timing": {"fit_seconds": 1.0}}}))

    for model in ("b", "c", "a"):
        add(model)
    write_reports(str(tmp_path), ["c", "b", "a"])  # a suite's order
    assert [r["model"] for r in load_runs(str(tmp_path))] == ["c", "b", "a"]
    add("d")
    write_reports(str(tmp_path), ["a", "d"])  # one row asked again, one new: no reshuffle
    assert [r["model"] for r in load_runs(str(tmp_path))] == ["c", "b", "a", "d"]
    with open(tmp_path / "results.json") as f:
        assert [r["model"] for r in json.load(f)] == ["c", "b", "a", "d"]
    (tmp_path / "results.json").write_text("not json")  # a damaged report is rebuilt
    assert [r["model"] for r in load_runs(str(tmp_path), ["d"])] == ["d", "a", "b", "c"]


def test_seeds_expand_every_row_and_the_report_gives_mean_and_spread_over_them():
    from recbole_mdgr.benchmark import with_seeds
    from recbole_mdgr.errors import UserError
    from recbole_mdgr.report import seed_groups, seeds_markdown

    rows = {"TIGER-cpu": {"model": "TIGER", "config": {"lr_schedule": "budget_linear"}},
            "SASRec": {"model": "SASRec"}}
    assert with_seeds(rows, None) is rows
    seeded = with_seeds(rows, "2020, 2021")
    assert list(seeded) == ["TIGER-cpu, seed 2020", "TIGER-cpu, seed 2021",
                            "SASRec, seed 2020", "SASRec, seed 2021"]
    assert seeded["TIGER-cpu, seed 2021"] == {
        "model": "TIGER", "config": {"lr_schedule": "budget_linear", "seed": 2021}}
    assert seeded["SASRec, seed 2020"]["config"] == {"seed": 2020}
    for bad in ("2020,x", ",", "1,1"):
        with pytest.raises(UserError, match="--seeds takes distinct integers"):
            with_seeds(rows, bad)

    def run(name, config, r5, r10, preset_config=None, overrides=()):
        return {"model": name, "base_model": "TIGER", "dataset": "amazon-beauty",
                "preset": "TIGER-cpu", "preset_config": preset_config or {"epochs": 300},
                "config": config, "overrides": ["--data_path=x", *overrides],
                "result": {"test_result": {"recall@5": r5, "recall@10": r10}}}

    runs = [run("TIGER-cpu", {"lr_schedule": "budget_linear"}, 0.037, 0.061),
            run("TIGER-cpu, seed 2021", {"lr_schedule": "budget_linear", "seed": 2021},
                0.039, 0.063),
            run("TIGER-cpu constant", {}, 0.030, 0.059),  # another setting
            run("TIGER-cpu, other preset", {"lr_schedule": "budget_linear"}, 0.03, 0.05,
                preset_config={"epochs": 10}),  # the preset's keys differ
            run("TIGER-cpu, --seed", {}, 0.032, 0.061, overrides=["--seed=7"]),  # seed by flag
            run("SASRec", {}, 0.05, 0.08), run("SASRec again", {}, 0.05, 0.08)]
    for r in runs[-2:]:
        r["base_model"] = "SASRec"  # one setting, one seed: a re-run, not a spread
    groups = seed_groups(runs)
    assert [(name, [r["model"] for r in group]) for name, group in groups] == [
        ("TIGER-cpu", ["TIGER-cpu", "TIGER-cpu, seed 2021"]),
        ("TIGER-cpu constant", ["TIGER-cpu constant", "TIGER-cpu, --seed"])]
    table = seeds_markdown(groups).splitlines()
    assert table[0] == ("| setting | runs | seeds | R@5 mean ± sd | R@10 mean ± sd | "
                        "R@20 mean ± sd | N@10 mean ± sd | R@10 min-max |")
    # R@5 3.7 and 3.9: mean 3.80, sd 0.2 / sqrt(2) = 0.14; R@20 and N@10 not measured
    assert table[2] == "| TIGER-cpu | 2 | default, 2021 | 3.80 ± 0.14 | 6.20 ± 0.14 | - | - | 6.10-6.30 |"
    assert table[3].startswith("| TIGER-cpu constant | 2 | default, 7 | 3.10 ± 0.14 | 6.00 ± 0.14 |")


def test_benchmark_with_seeds_runs_each_seed_and_reports_them_together(tmp_path):
    import torch

    write_tiny_dataset(tmp_path)
    out = tmp_path / "bench"
    cmd = [sys.executable, "-m", "recbole_mdgr.benchmark", "--models=SASRec", "--seeds=1,2",
           "--dataset=tiny", f"--data_path={tmp_path}", f"--out={out}", "--throughput_steps=0",
           f"--checkpoint_dir={tmp_path / 'saved'}", *TINY]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    assert "[1/2] SASRec, seed 1 on tiny" in done.stdout
    for seed in (1, 2):
        row = json.loads((out / "runs" / f"SASRec,_seed_{seed}.json").read_text())
        assert row["config"] == {"seed": seed}
        saved = torch.load(row["result"]["saved_model_file"], weights_only=False)
        assert saved["config"]["seed"] == seed  # the seed reached RecBole's run
    md = (out / "results.md").read_text()
    assert "## Over seeds" in md and "| SASRec | 2 | 1, 2 |" in md
