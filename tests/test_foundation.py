"""Config layering, model lookup, checkpoints, and the built-in models through our runner."""

import os

import pytest

from recbole_mdgr.compat import load_checkpoint
from recbole_mdgr.config import Config
from recbole_mdgr.errors import UserError
from recbole_mdgr.quick_start import load_data_and_model, run_recbole_mdgr
from recbole_mdgr.utils import available_models, get_model, get_trainer


def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return str(path)


def test_each_config_layer_overrides_the_ones_below(tiny, monkeypatch):
    tmp, cfg = tiny
    props = tmp / "props"
    keys = ["k_overall", "k_model", "k_dataset", "k_file", "k_dict", "k_cmd"]
    layers = ["overall", "model", "dataset", "file", "dict", "cmd"]
    # layer i sets every key from index i on to its own name
    def values(i):
        return {k: layers[i] for k in keys[i:]}

    body = "\n".join(f"{k}: {v}" for k, v in values(0).items())
    _write(props / "overall.yaml", body + "\neval_batch_size: 77\ntrain_neg_sample_args: ~\n")
    _write(props / "model" / "SASRec.yaml",
           "\n".join(f"{k}: {v}" for k, v in values(1).items()) + "\n")
    _write(props / "dataset" / "tiny.yaml",
           "\n".join(f"{k}: {v}" for k, v in values(2).items()) + "\n")
    cfg_file = _write(tmp / "my.yaml", "\n".join(f"{k}: {v}" for k, v in values(3).items()))
    monkeypatch.setattr("recbole_mdgr.config.properties_dir", lambda: str(props))
    monkeypatch.setattr("sys.argv", ["run", "--k_cmd=cmd"])
    config = Config("SASRec", "tiny", config_file_list=[cfg_file],
                    config_dict={**{k: v for k, v in cfg.items() if k != "eval_batch_size"},
                                 **values(4)})
    assert [config[k] for k in keys] == layers
    # RecBole's own default (4096) is below the plugin's overall.yaml
    assert config["eval_batch_size"] == 77
    # RecBole's model yaml still applies where nothing overrides it
    assert config["n_heads"] == 2


def test_shipped_protocol_is_leave_one_out_in_time_order(tiny):
    """What overall.yaml promises, as behaviour: each user's last item is its test target,
    the one before its validation target, and ranking is over all items."""
    from recbole.data import create_dataset as recbole_create_dataset
    from recbole.data import data_preparation as recbole_data_preparation

    tmp, cfg = tiny
    config = Config("SASRec", "tiny", config_dict=cfg)
    _, valid, test = recbole_data_preparation(config, recbole_create_dataset(config))
    rows = [line.split("\t") for line in (tmp / "tiny" / "tiny.inter").read_text().splitlines()[1:]]
    by_user = {}
    for user, item, time in rows:
        by_user.setdefault(user, []).append((float(time), item))
    for split, back in ((test, 1), (valid, 2)):
        feat = split._dataset.inter_feat
        users = split._dataset.id2token("user_id", feat["user_id"].numpy())
        items = split._dataset.id2token("item_id", feat["item_id"].numpy())
        want = {u: sorted(seq)[-back][1] for u, seq in by_user.items()}
        assert dict(zip(users, items)) == want
    assert type(test).__name__ == "FullSortEvalDataLoader"


def test_unknown_model_error_lists_available_models():
    with pytest.raises(ValueError) as err:
        get_model("SASRek")
    message = str(err.value)
    assert "Unknown model 'SASRek'" in message
    assert "Did you mean SASRec" in message
    assert "BERT4Rec" in message and "SASRec" in message
    assert "SASRec" in available_models()


def test_builtin_models_come_from_recbole_with_checkpoint_safe_trainer():
    from recbole.model.sequential_recommender.sasrec import SASRec
    from recbole.trainer import Trainer
    from recbole.utils import ModelType

    from recbole_mdgr.compat import CheckpointCompatMixin

    assert get_model("SASRec") is SASRec
    trainer_class = get_trainer(ModelType.SEQUENTIAL, "SASRec")
    assert issubclass(trainer_class, Trainer)
    assert issubclass(trainer_class, CheckpointCompatMixin)


def test_sasrec_trains_saves_and_reloads_to_identical_metrics(tiny):
    tmp, cfg = tiny
    result = run_recbole_mdgr("SASRec", "tiny", config_dict=cfg)
    assert set(result) >= {"best_valid_score", "best_valid_result", "test_result"}
    assert set(result["test_result"]) == {
        f"{m}@{k}" for m in ("recall", "ndcg", "mrr", "hit") for k in (5, 10, 20)
    }
    saved = [f for f in os.listdir(tmp / "saved") if f.startswith("SASRec-")]
    assert len(saved) == 1
    path = str(tmp / "saved" / saved[0])
    config, model, dataset, train_data, valid_data, test_data = load_data_and_model(path)
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    again = trainer.evaluate(test_data, load_best_model=False)
    assert dict(again) == dict(result["test_result"])
    # resuming from the checkpoint restores the epoch counter and the weights
    trainer.resume_checkpoint(path)
    assert trainer.start_epoch == load_checkpoint(path)["epoch"] + 1

    # and in a fresh interpreter, where no Config was ever constructed
    import subprocess
    import sys

    code = (
        "from recbole_mdgr.quick_start import load_data_and_model; "
        "from recbole_mdgr.utils import get_trainer; "
        f"c, m, d, tr, va, te = load_data_and_model({path!r}); "
        "r = get_trainer(c['MODEL_TYPE'], c['model'])(c, m).evaluate(te, load_best_model=False); "
        "print(dict(r))"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == str(dict(result["test_result"]))


def test_bert4rec_runs_through_the_plugin_runner(tiny):
    tmp, cfg = tiny
    result = run_recbole_mdgr("BERT4Rec", "tiny", config_dict=cfg)
    assert set(result["test_result"]) == {
        f"{m}@{k}" for m in ("recall", "ndcg", "mrr", "hit") for k in (5, 10, 20)
    }
    # its checkpoint reloads (RecBole's own loader, through compat) to the same metrics
    config, model, _, _, _, test_data = load_data_and_model(result["saved_model_file"])
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    assert dict(trainer.evaluate(test_data, load_best_model=False)) == dict(result["test_result"])


def test_missing_checkpoint_file_is_named():
    with pytest.raises(UserError, match="no-such.pth"):
        load_checkpoint("no-such.pth")


def test_dataset_neither_on_disk_nor_downloadable_says_where_to_put_it(tiny, monkeypatch):
    from urllib.error import URLError

    from recbole_mdgr.data import create_dataset

    tmp, cfg = tiny

    def offline(url, folder):
        raise URLError("offline")

    monkeypatch.setattr("recbole.data.dataset.dataset.download_url", offline)
    config = Config("SASRec", "amazon-beauty", config_dict={**cfg, "data_path": str(tmp / "none")})
    with pytest.raises(UserError, match="pass --data_path=<folder that holds amazon-beauty/>"):
        create_dataset(config)


def test_objective_function_runs_without_importing_ray(tiny):
    import subprocess
    import sys

    tmp, cfg = tiny
    # a fresh interpreter: other tests may have imported ray through RecBole
    code = (
        "import sys; from recbole_mdgr.quick_start import objective_function; "
        f"r = objective_function(config_dict={{**{cfg!r}, 'model': 'SASRec', "
        "'dataset': 'tiny'}); "
        "assert set(r) == {'model', 'best_valid_score', 'valid_score_bigger', "
        "'best_valid_result', 'test_result'}, r; "
        "assert r['model'] == 'SASRec'; "
        "ray = sys.modules.get('ray'); "
        "assert ray is None or ray.__recbole_mdgr_stand_in__, 'ray was imported'; print('ok')"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-2000:]


def test_presets_sit_above_the_model_yaml_and_below_the_users_settings(tiny):
    tmp, cfg = tiny
    plain = Config("TIGER", "tiny", config_dict=cfg)
    cpu = Config("TIGER", "tiny", config_dict={**cfg, "preset": "TIGER-cpu"})
    assert (plain["n_layers_enc"], plain["head_dim"], plain["train_time_budget"]) == \
        (4, 64, None)  # properties/model/TIGER.yaml, overall.yaml
    assert (cpu["n_layers_enc"], cpu["head_dim"], cpu["train_time_budget"]) == (2, 32, 85)
    assert cpu["inner_size"] == cfg["inner_size"] == 32  # the user's config_dict still wins
    mine = Config("TIGER", "tiny", config_dict={**cfg, "preset": "TIGER-cpu",
                                                 "learning_rate": 0.01})
    assert mine["learning_rate"] == 0.01 and cpu["learning_rate"] == 0.002


def test_unknown_preset_lists_the_shipped_ones(tiny):
    tmp, cfg = tiny
    with pytest.raises(ValueError, match=r"unknown preset 'TIGER-gpu'.*TIGER-cpu.*quick-start"):
        Config("TIGER", "tiny", config_dict={**cfg, "preset": "TIGER-gpu"})
