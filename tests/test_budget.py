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
    from recbole_mdgr.quick_start import build_run

    tmp, cfg = tiny
    config = Config("SASRec", "tiny", config_dict={**cfg, "epochs": 10, "stopping_step": 1})
    _, train_data, valid_data, _, _, trainer = build_run(config)
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


def test_a_nan_loss_stops_fit_naming_epoch_and_step_and_keeps_the_checkpoint(tiny):
    import torch

    from recbole_mdgr.budget import TrainingDiverged
    from recbole_mdgr.config import Config
    from recbole_mdgr.quick_start import build_run

    tmp, cfg = tiny
    config = Config("SASRec", "tiny", config_dict={**cfg, "epochs": 3, "train_batch_size": 16})
    _, train_data, valid_data, _, model, trainer = build_run(config)
    loss_of = model.calculate_loss
    calls = []

    def poisoned(interaction):  # the 2nd step of epoch 1 goes NaN
        calls.append(1)
        loss = loss_of(interaction)
        return loss * float("nan") if len(calls) == len(train_data) + 2 else loss

    model.calculate_loss = poisoned
    with pytest.raises(TrainingDiverged, match=r"loss is nan at epoch 1, step 2: .*"
                                               r"The last checkpoint, .* is intact"):
        trainer.fit(train_data, valid_data, saved=True)
    # the checkpoint holds epoch 0's validated weights, untouched by the failed epoch
    saved = torch.load(trainer.saved_model_file, weights_only=False)
    assert saved["epoch"] == 0
    assert all(torch.isfinite(v).all() for v in saved["state_dict"].values())


@pytest.mark.parametrize("model", ["SASRec", "MDGR"])
def test_an_interrupted_fit_resumes_to_the_uninterrupted_metrics(tiny, model):
    from recbole_mdgr.budget import TimeBudgetMixin

    tmp, cfg = tiny
    cfg = {**cfg, "epochs": 4, "save_dataset": False,
           **({"n_layers_enc": 1, "n_layers_dec": 1, "head_dim": 8, "n_heads": 2,
               "sid_levels": 2, "sid_codebook_size": 8, "mdgr_curriculum_epochs": 3}
              if model == "MDGR" else {})}
    whole = run_recbole_mdgr(model, "tiny", config_dict={**cfg, "checkpoint_dir": str(tmp / "a")})

    original = TimeBudgetMixin._train_epoch

    def crash_at_epoch_2(self, train_data, epoch_idx, *args, **kwargs):
        if epoch_idx == 2:
            raise KeyboardInterrupt
        return original(self, train_data, epoch_idx, *args, **kwargs)

    TimeBudgetMixin._train_epoch = crash_at_epoch_2
    try:
        with pytest.raises(KeyboardInterrupt):
            run_recbole_mdgr(model, "tiny", config_dict={**cfg, "checkpoint_dir": str(tmp / "b")})
    finally:
        TimeBudgetMixin._train_epoch = original
    (state,) = [f for f in os.listdir(tmp / "b") if f.endswith(".resume")]
    resumed = run_recbole_mdgr(model, "tiny", config_dict={
        **cfg, "checkpoint_dir": str(tmp / "b"), "resume_from": str(tmp / "b" / state)})
    assert dict(resumed["test_result"]) == dict(whole["test_result"])
    assert resumed["best_valid_score"] == whole["best_valid_score"]
    assert resumed["training"]["epochs"] == whole["training"]["epochs"] == 4
    assert [p["valid_score"] for p in resumed["training"]["valid_curve"]] == \
        [p["valid_score"] for p in whole["training"]["valid_curve"]]


def test_budget_linear_schedule_by_hand():
    from recbole_mdgr.budget import budget_linear_factor, planned_steps

    assert planned_steps(100, 10.0, 90) == 900  # 10 steps a minute for 90 minutes
    # fit runs on to the first validation past the budget: a cycle of 2 epochs of 70 steps
    # ends at step 980, the first multiple of 140 at or past 900
    assert planned_steps(100, 10.0, 90, cycle=140) == 980
    assert planned_steps(100, 10.0, 90, cycle=300) == 900
    assert planned_steps(0, 0.0, 90) == float("inf")  # nothing timed yet: no decay
    assert [budget_linear_factor(s, 900) for s in (0, 450, 899, 900, 2000)] == pytest.approx(
        [1.0, 0.5, 1 / 900, 0.0, 0.0])
    assert budget_linear_factor(10**6, float("inf")) == 1.0


def budget_linear_trainer(tiny, **extra):
    """A SASRec trainer on the tiny dataset with ``lr_schedule: budget_linear``, its data,
    ``n`` (steps per epoch) and the list that records the learning rate of every step."""
    from recbole_mdgr.config import Config
    from recbole_mdgr.quick_start import build_run

    tmp, cfg = tiny
    config = Config("SASRec", "tiny", config_dict={
        **cfg, "epochs": 10, "learning_rate": 0.01, "lr_schedule": "budget_linear",
        "train_time_budget": 1, **extra})
    _, train_data, valid_data, _, _, trainer = build_run(config)
    rates = []
    step = trainer.optimizer.step
    trainer.optimizer.step = lambda *a, **k: (rates.append(trainer.optimizer.param_groups[0]["lr"]),
                                              step(*a, **k))[1]
    return trainer, train_data, valid_data, len(train_data), rates


def test_budget_linear_decays_every_step_over_the_steps_the_budget_allows(tiny, monkeypatch):
    """A clock that reads one minute per step taken: the run's pace is 1 step a minute, so a
    budget of 3n minutes (n steps an epoch) plans 3n steps. Epoch 0 has no pace yet and keeps
    the full rate; from epoch 1 on, step s runs at lr * (1 - s / 3n)."""
    from recbole_mdgr import budget

    trainer, train_data, valid_data, n, rates = budget_linear_trainer(tiny)
    trainer.config["train_time_budget"] = 3 * n  # known once the data is built
    monkeypatch.setattr(budget, "perf_counter", lambda: 60.0 * getattr(trainer, "_steps_done", 0))
    trainer.fit(train_data, valid_data, saved=False)

    expected = [0.01] * n + [0.01 * (1 - s / (3 * n)) for s in range(n, 3 * n)]
    assert rates == pytest.approx(expected)
    summary = trainer.training_summary
    assert summary["stopped_by"] == "time_budget" and summary["epochs"] == 3
    assert [p["learning_rate"] for p in summary["valid_curve"]] == \
        pytest.approx([0.01, 0.01 * (n + 1) / (3 * n), 0.01 / (3 * n)])


def test_budget_linear_plans_at_cycle_starts_so_the_rate_ends_at_zero(tiny, monkeypatch):
    """Validation every 2 epochs of n steps; the clock reads a minute per step and n minutes
    per validation, so a cycle takes 3n minutes and a budget of 6n minutes allows 2 cycles,
    4n steps. Epoch 1 has no estimate yet and plans from training alone (6n); epoch 2 starts
    a cycle and plans 4n; epoch 3 keeps it (re-planned mid-cycle, its minutes would lack the
    coming validation: 3n steps in 4n minutes read as 4.5n, rounded up to 6n), so the last
    step runs at 1/(4n) of the rate."""
    from recbole_mdgr import budget

    trainer, train_data, valid_data, n, rates = budget_linear_trainer(
        tiny, eval_step=2, stopping_step=10)
    trainer.config["train_time_budget"] = 6 * n
    validations = []
    valid_epoch = trainer._valid_epoch
    trainer._valid_epoch = lambda *a, **k: (valid_epoch(*a, **k), validations.append(1))[0]
    monkeypatch.setattr(budget, "perf_counter",
                        lambda: 60.0 * (getattr(trainer, "_steps_done", 0) + n * len(validations)))
    trainer.fit(train_data, valid_data, saved=False)

    expected = ([0.01] * n + [0.01 * (1 - s / (6 * n)) for s in range(n, 2 * n)]
                + [0.01 * (1 - s / (4 * n)) for s in range(2 * n, 4 * n)])
    assert rates == pytest.approx(expected)
    summary = trainer.training_summary
    assert summary["stopped_by"] == "time_budget" and summary["epochs"] == 4
    assert summary["valid_curve"][-1]["learning_rate"] == pytest.approx(0.01 / (4 * n))


def test_epochs_linear_decays_over_the_epochs_whatever_the_pace(tiny, monkeypatch):
    """``epochs_linear`` needs no budget and ignores the clock: 3 epochs of n steps run at
    lr * (1 - s / 3n) from the very first step (a budget-free run has no pace to wait for),
    and the last step at 1/(3n) of the rate; a clock reading an hour per step changes
    nothing."""
    from recbole_mdgr import budget

    trainer, train_data, valid_data, n, rates = budget_linear_trainer(
        tiny, epochs=3, lr_schedule="epochs_linear", train_time_budget=None, stopping_step=10)
    monkeypatch.setattr(budget, "perf_counter", lambda: 3600.0 * getattr(trainer, "_steps_done", 0))
    trainer.fit(train_data, valid_data, saved=False)

    assert rates == pytest.approx([0.01 * (1 - s / (3 * n)) for s in range(3 * n)])
    summary = trainer.training_summary
    assert summary["stopped_by"] == "max_epochs" and summary["epochs"] == 3
    assert summary["valid_curve"][-1]["learning_rate"] == pytest.approx(0.01 / (3 * n))


@pytest.mark.parametrize("extra, message", [
    ({}, "lr_schedule: budget_linear decays over train_time_budget"),
    ({"train_time_budget": 5, "lr_schedule": "cosine"}, "lr_schedule must be ~ or one of"),
])
def test_a_schedule_without_a_budget_or_unknown_is_refused(tiny, extra, message):
    tmp, cfg = tiny
    with pytest.raises(ValueError, match=message):
        run_recbole_mdgr("SASRec", "tiny",
                         config_dict={**cfg, "lr_schedule": "budget_linear", **extra})


@pytest.mark.parametrize("extra, message", [
    ({"train_time_budget": -1}, "train_time_budget must be a positive number of minutes"),
    ({"train_time_budget": "15 min"}, "train_time_budget must be a positive number of minutes"),
    ({"train_time_budget": True}, "train_time_budget must be a positive number of minutes"),
    ({"lr_schedule": "budget_linear"}, "lr_schedule: budget_linear decays over"),
    ({"train_time_budget": 5, "lr_schedule": "cosine"}, "lr_schedule must be ~ or one of"),
])
def test_bad_budget_keys_are_refused_when_the_config_is_read(tiny, extra, message):
    """By ``Config`` itself, before any dataset is built: a typo costs no data loading."""
    from recbole_mdgr.config import Config

    tmp, cfg = tiny
    with pytest.raises(ValueError, match=message):
        Config("SASRec", "tiny", config_dict={**cfg, **extra})


def test_a_validation_that_ends_both_ways_is_reported_as_early_stopping(tiny):
    """Validation 1 is both the first past the budget and the one that exhausts patience:
    the model converged, so the summary says early_stopping."""
    from recbole_mdgr.config import Config
    from recbole_mdgr.quick_start import build_run

    tmp, cfg = tiny
    config = Config("SASRec", "tiny", config_dict={**cfg, "epochs": 10, "stopping_step": 0,
                                                   "train_time_budget": 60})
    _, train_data, valid_data, _, _, trainer = build_run(config)
    scores, passed = [0.5, 0.4, 0.9], [False, True, True]
    trainer._valid_epoch = lambda *args, **kwargs: (scores.pop(0), {"ndcg@10": 0.0})
    trainer._budget_passed = lambda minutes, budget: passed.pop(0)
    trainer.fit(train_data, valid_data, saved=False)
    summary = trainer.training_summary
    assert summary["stopped_by"] == "early_stopping" and summary["epochs"] == 2
