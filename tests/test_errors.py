"""Bad input -> a clear error naming the file, field or key; no traceback from the runner."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from recbole_mdgr.errors import UserError, check_atomic_file, check_positive_int

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
