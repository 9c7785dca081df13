"""The user's command line: run_recbole_mdgr.py on the embedded ml-100k."""

import os
import subprocess
import sys
from pathlib import Path

RUNNER = str(Path(__file__).resolve().parents[1] / "run_recbole_mdgr.py")


def _run(tmp_path, *args):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, RUNNER, *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=900)


def test_tiger_runs_on_embedded_ml100k_through_the_runner(tmp_path):
    done = _run(tmp_path, "--model=TIGER", "--dataset=ml-100k", "--epochs=1",
                "--train_sample_mode=sequence", "--n_layers_enc=1", "--n_layers_dec=1",
                "--hidden_size=32", "--n_heads=2", "--head_dim=16", "--inner_size=64",
                "--sid_codebook_size=32", "--eval_batch_size=512", "--show_progress=False",
                f"--checkpoint_dir={tmp_path / 'saved'}")
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-3000:]
    assert "SID table: ml-100k | rq_kmeans 3 x [32, 32, 32]" in out
    assert "test result" in out and "recall@10" in out
    assert "nfe_per_user=4" in out  # 3 levels + the dedup token TIGER always adds
    assert any(f.startswith("TIGER-") for f in os.listdir(tmp_path / "saved"))


def test_unknown_model_on_the_command_line_names_the_choices(tmp_path):
    done = _run(tmp_path, "--model=Tiger", "--dataset=ml-100k")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "error: Unknown model 'Tiger'. Did you mean TIGER" in done.stderr


def test_runner_output_has_no_recbole_future_warnings(tmp_path):
    done = _run(tmp_path, "--model=SASRec", "--dataset=ml-100k", "--epochs=1",
                "--MAX_ITEM_LIST_LENGTH=5", "--hidden_size=8", "--inner_size=16",
                "--n_layers=1", "--eval_batch_size=2048", "--show_progress=False",
                f"--checkpoint_dir={tmp_path / 'saved'}")
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    assert "FutureWarning" not in done.stderr
    assert "test result" in done.stdout + done.stderr
