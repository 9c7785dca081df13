"""Bad input -> a clear error naming the file, field or key; no traceback from the runner."""

import math
import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

from recbole_mdgr.errors import UserError, check_atomic_file, check_number, check_positive_int

from conftest import write_tiny_dataset

RUNNER = str(Path(__file__).resolve().parents[1] / "run_recbole_mdgr.py")
HEADER = "user_id:token\titem_id:token\ttimestamp:float\n"


def _write(tmp_path, text, name="f.inter", mode="w"):
    path = tmp_path / name
    if mode == "wb":
        path.write_bytes(text)
    else:
        path.write_text(text)
    return str(path)


@pytest.mark.parametrize("content, message", [
    ("", r"f\.inter is empty: its first line must be a header"),
    (HEADER, r"f\.inter has a header but no rows"),
    (HEADER + "\n\n", r"f\.inter has a header but no rows"),
    ("user_id\titem_id:token\n", r"header column 1 is 'user_id': every header cell must be name:type"),
    ("user_id:token\titem_id:tokn\n", r"header column 2 is 'item_id:tokn'"),
    (HEADER + "u1\ti1\t1\nu1\ti2\t2\textra\n", r"line 3: 4 cells separated by '\\t' but the header has 3"),
    (HEADER + "u1\ti1\t1\nu1\ti2\tyesterday\n", r"line 3: field timestamp \(float\) holds 'yesterday', not a number"),
])
def test_atomic_file_defects_are_named_with_file_and_line(tmp_path, content, message):
    path = _write(tmp_path, content)
    with pytest.raises(UserError, match=message):
        check_atomic_file(path)


def test_non_utf8_bytes_are_named_with_their_line(tmp_path):
    path = _write(tmp_path, HEADER.encode() + b"u1\ti1\t1\nu2\tcaf\xe9\t2\n", mode="wb")
    with pytest.raises(UserError, match=r"f\.inter, line 3: bytes that are not utf-8"):
        check_atomic_file(path)
    # the same bytes are fine when the file's encoding is given
    assert check_atomic_file(path, encoding="latin-1") == ["user_id", "item_id", "timestamp"]


def test_a_well_formed_file_passes_with_short_rows_and_empty_cells(tmp_path):
    path = _write(tmp_path, HEADER + "u1\ti1\t\nu2\ti2\n")  # RecBole fills the gaps
    assert check_atomic_file(path) == ["user_id", "item_id", "timestamp"]


def _run(cwd, *args, env=None):
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, RUNNER, *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def _assert_clean_error(done, *needles):
    assert done.returncode == 2, (done.stdout + done.stderr)[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    assert "error: " in done.stderr
    for needle in needles:
        assert needle in done.stderr, done.stderr[-3000:]


def test_runner_reports_bad_input_without_a_traceback(tmp_path):
    # 1. a dataset folder that is not there (and a name RecBole cannot download)
    done = _run(tmp_path, "--model=SASRec", "--dataset=mine", f"--data_path={tmp_path}")
    _assert_clean_error(done, f"dataset folder {tmp_path / 'mine'} not found",
                        "--data_path=<folder that holds mine/>")
    # 2. the folder without its .inter file
    (tmp_path / "mine").mkdir()
    done = _run(tmp_path, "--model=TIGER", "--dataset=mine", f"--data_path={tmp_path}")
    _assert_clean_error(done, f"{tmp_path / 'mine' / 'mine.inter'} not found")
    # 3. a non-numeric timestamp, found before RecBole reads the file
    (tmp_path / "mine" / "mine.inter").write_text(HEADER + "u1\ti1\t1\nu1\ti2\tnoon\n")
    done = _run(tmp_path, "--model=SASRec", "--dataset=mine", f"--data_path={tmp_path}")
    _assert_clean_error(done, "mine.inter, line 3: field timestamp (float) holds 'noon'")
    # 4. a config file that is not there
    done = _run(tmp_path, "--model=SASRec", "--dataset=mine", "--config_files=nope.yaml")
    _assert_clean_error(done, "config file nope.yaml not found")
    # 5. model knobs refused when the config is read, before any data
    done = _run(tmp_path, "--model=MDGR", "--dataset=mine", "--mdgr_parallel=0")
    _assert_clean_error(done, "mdgr_parallel must be >= 1")
    done = _run(tmp_path, "--model=TIGER", "--dataset=mine", "--attn_dropout_prob=1.5")
    _assert_clean_error(done, "attn_dropout_prob must be a rate in [0, 1), got 1.5")
    done = _run(tmp_path, "--model=MADRec", "--dataset=mine", "--sid_quantizer=kmeans")
    _assert_clean_error(done, "unknown sid_quantizer 'kmeans'")
    done = _run(tmp_path, "--model=TIGER", "--dataset=mine", "--beam_size=5")
    _assert_clean_error(done, "beam_size=5 is smaller than the largest topk (20)")
    # 6. the traceback on demand
    done = _run(tmp_path, "--model=TIGER", "--dataset=mine", "--beam_size=5",
                env={"RECBOLE_MDGR_TRACEBACK": "1"})
    assert done.returncode != 0 and "Traceback" in done.stderr


@pytest.mark.parametrize("model", ["SASRec", "TIGER"])
def test_custom_dataset_without_a_yaml_trains(tmp_path, monkeypatch, caplog, model):
    """No load_col, no sid_text_fields, the default 256-word codebooks for 40 items."""
    import logging

    from recbole_mdgr.quick_start import run_recbole_mdgr

    caplog.set_level(logging.INFO)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.argv", ["pytest"])
    write_tiny_dataset(tmp_path, name="myshop")
    cfg = {"data_path": str(tmp_path), "checkpoint_dir": str(tmp_path / "saved"),
           "epochs": 1, "show_progress": False, "MAX_ITEM_LIST_LENGTH": 10,
           "n_layers": 1, "n_layers_enc": 1, "n_layers_dec": 1, "hidden_size": 16,
           "inner_size": 32, "head_dim": 8, "n_heads": 2}
    result = run_recbole_mdgr(model, "myshop", config_dict=cfg)
    assert set(result["test_result"]) >= {"recall@10", "ndcg@10"}
    if model == "TIGER":
        log = "\n".join(r.getMessage() for r in caplog.records)
        assert "sid_text_fields not set: using the text fields of myshop.item, " \
               "['title', 'categories', 'brand']" in log
        assert "sid_codebook_size [256, 256, 256] is too large for 40 items: using " \
               "[20, 20, 20]" in log


def test_items_without_any_text_and_users_too_short_are_refused_by_name(tmp_path, monkeypatch):
    from recbole_mdgr.quick_start import run_recbole_mdgr

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.argv", ["pytest"])
    write_tiny_dataset(tmp_path, name="blank", missing_text=range(40))
    cfg = {"data_path": str(tmp_path), "checkpoint_dir": str(tmp_path / "saved"),
           "show_progress": False}
    with pytest.raises(UserError, match=r"none of the 40 items has text in the sid_text_fields "
                                        r"\['title', 'categories', 'brand'\] of blank\.item"):
        run_recbole_mdgr("TIGER", "blank", config_dict=cfg)
    write_tiny_dataset(tmp_path, name="short", lengths=[1] * 30)
    with pytest.raises(UserError, match="gives no training samples: .* at least 3 interactions"):
        run_recbole_mdgr("SASRec", "short", config_dict=cfg)


def test_too_short_names_the_split_it_was_given():
    from recbole_mdgr.quick_start import _too_short

    loo = _too_short({"dataset": "d", "eval_args": {"split": {"LS": "valid_and_test"}}})
    assert "leave-one-out" in str(loo)
    ratio = _too_short({"dataset": "d", "eval_args": {"split": {"RS": [0.8, 0.1, 0.1]}}})
    assert "leave-one-out" not in str(ratio)
    assert "eval_args split {'RS': [0.8, 0.1, 0.1]}" in str(ratio)


@pytest.mark.parametrize("value", [0, -3, 2.0, "4", True, None])
def test_check_positive_int_refuses_by_key(value):
    with pytest.raises(UserError, match=r"^beam_size must be a positive integer, got "):
        check_positive_int("beam_size", value)


def test_check_positive_int_accepts_integers_and_a_documented_none():
    check_positive_int("beam_size", 1)
    check_positive_int("valid_users", None, none="every user")
    with pytest.raises(UserError, match=r"or ~ \(every user\), got 0"):
        check_positive_int("valid_users", 0, none="every user")


@pytest.mark.parametrize("value, low, high, low_open, ok", [
    (0.5, 0.0, 1.0, False, True), (0.0, 0.0, 1.0, False, True), (0.0, 0.0, 1.0, True, False),
    (1.0, 0.0, 1.0, True, True), (1.5, 0.0, 1.0, False, False), (3, 0.0, math.inf, True, True),
    (None, 0.0, 1.0, False, False), ("0.5", 0.0, 1.0, False, False),
    (True, 0.0, 1.0, False, False), (math.nan, 0.0, 1.0, False, False),
])
def test_check_number_accepts_only_numbers_in_range(value, low, high, low_open, ok):
    if ok:
        assert check_number("k", value, low, high, low_open=low_open) == float(value)
    else:
        with pytest.raises(UserError, match=r"^k must be a number in [\[(]"):
            check_number("k", value, low, high, low_open=low_open)


@pytest.mark.parametrize("model, key, value, message", [
    ("MDGR", "mdgr_gamma", None, r"mdgr_gamma must be a number in \(0.0, infinity\], got None"),
    ("MDGR", "mdgr_history_mix", "half", r"mdgr_history_mix must be a number in \[0.0, 1.0\]"),
    ("MADRec", "madrec_min_t", None, r"madrec_min_t must be a number in \(0.0, 1.0\]"),
    ("TIGER", "tiger_exact_rows", 0, r"tiger_exact_rows must be a positive integer, got 0"),
])
def test_model_keys_of_the_wrong_type_are_refused_by_name(tmp_path, model, key, value, message):
    from recbole_mdgr.quick_start import checked_config

    write_tiny_dataset(tmp_path)
    with pytest.raises(UserError, match=message):
        checked_config(model, "tiny", None, {"data_path": str(tmp_path), key: value})


def test_data_keys_of_the_sid_models_are_refused_for_recboles_models(tmp_path):
    from recbole_mdgr.quick_start import checked_config

    write_tiny_dataset(tmp_path)
    folder = str(tmp_path)
    for key, value in (("train_drop_ratio", 0.5), ("next_k", 2)):
        with pytest.raises(UserError, match=rf"{key}={value} is supported by the SID models"):
            checked_config("SASRec", "tiny", None, {"data_path": folder, key: value})
    checked_config("SASRec", "tiny", None, {"data_path": folder, "train_drop_ratio": 0.0})


def test_distributed_runs_check_their_input_before_any_process_starts(tmp_path, monkeypatch):
    import torch.multiprocessing as mp

    from recbole_mdgr.quick_start import run

    monkeypatch.setattr(mp, "spawn", lambda *a, **k: pytest.fail("spawned on bad input"))
    with pytest.raises(UserError, match=r"--nproc=0: a run needs at least one process"):
        run("SASRec", "ml-100k", nproc=0)
    with pytest.raises(UserError, match=r"NoSuchModel"):
        run("NoSuchModel", "ml-100k", nproc=2)
    with pytest.raises(UserError, match=r"dataset folder .*mine not found"):
        run("SASRec", "mine", config_dict={"data_path": str(tmp_path)}, nproc=2)


@pytest.mark.parametrize("text, message", [
    ("tiger_decode", r"'tiger_decode' is not key=value"),
    ("beam_size=30,=4", r"'=4' is not key=value"),
    ("", r"--checkpoint needs --variants="),
    (" ; ", r"--checkpoint needs --variants="),
])
def test_bad_variants_are_refused_by_name(text, message):
    from recbole_mdgr.benchmark import parse_variants

    with pytest.raises(UserError, match=message):
        parse_variants(text)


def test_tokenizer_cli_checks_its_input_like_the_runner(tmp_path, monkeypatch):
    from recbole_mdgr.tokenizer.__main__ import main

    write_tiny_dataset(tmp_path)
    monkeypatch.chdir(tmp_path)
    base = ["--dataset", "tiny", "--data_path", str(tmp_path), "--no_cache"]
    with pytest.raises(UserError, match=r"config file nope.yaml not found"):
        main(base + ["--config_files", "nope.yaml"])
    (tmp_path / "typo.yaml").write_text("sid_vector_source: interaction\n")
    with pytest.raises(UserError, match=r"sid_vector_source must be one of .* got 'interaction'"):
        main(base + ["--config_files", "typo.yaml"])  # not quietly the default
    with pytest.raises(UserError, match=r"dataset folder .*other not found"):
        main(["--dataset", "other", "--data_path", str(tmp_path)])


def test_embedding_ids_without_their_file_are_refused(tmp_path):
    from recbole_mdgr.tokenizer.settings import SIDSettings

    with pytest.raises(UserError, match=r"sid_embedding_ids ids.txt names the items of the rows "
                                        r"of sid_embedding_file, and that is not set"):
        SIDSettings(embedding_ids="ids.txt").check()


def _missing(config: dict) -> defaultdict:
    """A config whose missing keys read as ``~``, as RecBole's Config does."""
    return defaultdict(lambda: None, config)


@pytest.mark.parametrize("config, message", [
    ({"sid_codebook_size": "big"}, r"sid_codebook_size must be an integer >= 2, got 'big'"),
    ({"sid_codebook_size": [256, 1]}, r"sid_codebook_size must be an integer >= 2, got 1"),
    ({"sid_codebook_size": []}, r"sid_codebook_size must give at least one level"),
    ({"sid_levels": 2.5}, r"sid_levels must be an integer >= 1, got 2.5"),
    ({"sid_kmeans_iters": 0}, r"sid_kmeans_iters must be an integer >= 1, got 0"),
    ({"sid_threads": True}, r"sid_threads must be an integer >= 1, got True"),
    ({"sid_rqvae_hidden": [256, "wide"]}, r"sid_rqvae_hidden must be an integer >= 1"),
    ({"sid_rqvae_lr": 0}, r"sid_rqvae_lr must be a number in \(0, infinity\]"),
    ({"sid_rq_normalize": "False"}, r"sid_rq_normalize must be True or False, got 'False'"),
])
def test_sid_settings_of_the_wrong_type_are_refused_by_key(config, message):
    """Each ``sid_*`` number is read by key: a string, a fraction or a bool where an integer
    belongs is refused (``int()`` would truncate 2.5, or raise a bare ValueError), and a
    quoted "False" does not read as True."""
    from recbole_mdgr.tokenizer.settings import SIDSettings

    with pytest.raises(UserError, match=message):
        SIDSettings.from_config(_missing(config))
    assert SIDSettings.from_config(_missing({"sid_codebook_size": [8, 8]})).levels == 2


def test_keys_refused_when_the_config_is_read_not_after_the_data(tmp_path):
    from recbole_mdgr.quick_start import checked_config

    write_tiny_dataset(tmp_path)
    folder = str(tmp_path)
    with pytest.raises(UserError, match=r"train_drop_ratio must be in \[0, 1\), got 1.0"):
        checked_config("TIGER", "tiny", None, {"data_path": folder, "train_drop_ratio": 1.0})
    with pytest.raises(UserError, match=r"train_drop_seed must be an integer >= 0, got 'x'"):
        checked_config("TIGER", "tiny", None, {"data_path": folder, "train_drop_ratio": 0.5,
                                               "train_drop_seed": "x"})
    with pytest.raises(UserError, match=r"hidden_act must be one of \('gelu', 'relu'\), got "
                                        r"'swish'"):
        checked_config("MDGR", "tiny", None, {"data_path": folder, "hidden_act": "swish"})


def test_interactions_without_a_configured_column_are_named(tmp_path):
    from recbole_mdgr.errors import check_atomic_files

    folder = tmp_path / "shop"
    folder.mkdir()
    (folder / "shop.inter").write_text("user_id:token\titem_id:token\n1\t2\n")
    config = _missing({"dataset": "shop", "data_path": str(folder), "USER_ID_FIELD": "user_id",
                       "ITEM_ID_FIELD": "item_id", "TIME_FIELD": "timestamp"})
    with pytest.raises(UserError, match=r"shop.inter has no column 'timestamp' \(TIME_FIELD\); "
                                        r"its columns are user_id, item_id: rename the column "
                                        r"or set TIME_FIELD"):
        check_atomic_files(config)
    config["benchmark_filename"] = ["train", "test"]  # RecBole's pre-split files
    with pytest.raises(UserError, match=r"shop.train.inter not found"):
        check_atomic_files(config)


def test_benchmark_and_probe_inputs_are_refused_by_name(tmp_path, monkeypatch):
    import recbole_mdgr.config
    from recbole_mdgr.benchmark import decode_variants, suite_rows
    from recbole_mdgr.mask_probe import probe

    for call in (lambda: decode_variants("x.pth", [{}], split="train"),
                 lambda: probe("x.pth", split="train")):
        with pytest.raises(UserError, match=r"--split must be test or valid, got 'train'"):
            call()
    (tmp_path / "suite").mkdir()
    (tmp_path / "suite" / "mine.yaml").write_text("rows:\n  a row:\n    config: {epochs: 1}\n")
    monkeypatch.setattr(recbole_mdgr.config, "properties_dir", lambda: str(tmp_path))
    with pytest.raises(UserError, match=r"mine.yaml: row 'a row' needs a `model`"):
        suite_rows("mine", "")
