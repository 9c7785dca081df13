"""train_time_budget: fit ends after the first validation past the budget, for the plugin's
models and RecBole's alike, and the result dict says how training went."""

import os

import pytest

from recbole_mdgr.quick_start import load_data_and_model, run_recbole_mdgr
from recbole_mdgr.utils import get_trainer

TINY_TIGER = {"n_layers_enc": 1, "n_layers_dec": 1, "hidden_size": 16, "n_heads": 2,
              "head_dim": 8, "inner_size": 32, "sid_levels": 2, "sid_codebook_size": 8}


@pytest.mark.parametrize("model", ["TIGER", "SASRec"])
def test_budget_stops_after_the_first_validation_past_it_and_tests_that_checkpoint(tiny, model):
    tmp, cfg = tiny
    cfg = {**cfg, **(TINY_TIGER if model == "TIGER" else {}), "epochs": 6, "eval_step": 2,
           "train_time_budget": 1e-9}
    result = run_recbole_mdgr(model, "tiny", config_dict=cfg)
    training = result["training"]
    # the budget is long gone after epoch 0, but fit runs until the first validation (epoch 1)
    assert training["stopped_by"] == "time_budget" and training["epochs"] == 2
    assert [p["epoch"] for p in training["valid_curve"]] == [1]
    assert training["time_budget_minutes"] == 1e-9
    (saved,) = [f for f in os.listdir(tmp / "saved") if f.startswith(f"{model}-")]
    config, net, _, _, _, test_data = load_data_and_model(str(tmp / "saved" / saved))
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, net)
    assert dict(trainer.evaluate(test_data, load_best_model=False)) == dict(result["test_result"])


def test_without_budget_training_runs_to_its_epochs(tiny):
    tmp, cfg = tiny
    result = run_recbole_mdgr("SASRec", "tiny", config_dict={**cfg, "epochs": 3})
    assert result["training"]["stopped_by"] == "max_epochs"
    assert result["training"]["epochs"] == 3 and result["training"]["time_budget_minutes"] is None


def test_early_stopping_is_reported_as_such(tiny):
    from recbole_mdgr.config import Config
    from recbole_mdgr.quick_start import _build

    tmp, cfg = tiny
    config = Config("SASRec", "tiny", config_dict={**cfg, "epochs": 10, "stopping_step": 1})
    _, train_data, valid_data, _, _, trainer = _build(config)
    scores = [0.3, 0.5, 0.4, 0.2, 0.9]  # best at epoch 1, then two worse: stop after epoch 3
    trainer._valid_epoch = lambda *args, **kwargs: (scores.pop(0), {"ndcg@10": 0.0})
    trainer.fit(train_data, valid_data, saved=False)
    summary = trainer.training_summary
    assert summary["stopped_by"] == "early_stopping" and summary["epochs"] == 4
    assert [p["valid_score"] for p in summary["valid_curve"]] == [0.3, 0.5, 0.4, 0.2]


@pytest.mark.parametrize("budget", [0, -5])
def test_a_budget_that_is_not_positive_is_refused(tiny, budget):
    tmp, cfg = tiny
    with pytest.raises(ValueError, match="train_time_budget"):
        run_recbole_mdgr("SASRec", "tiny", config_dict={**cfg, "train_time_budget": budget})
