"""A wall-clock budget for ``fit`` and a record of how training went, for any RecBole trainer.

``train_time_budget`` (minutes, ``~`` = none) ends ``fit`` after the first validation that
finishes past the budget. The best checkpoint is RecBole's as usual (saved whenever
validation improves), so the test that follows evaluates the best model seen within the
budget. Every trainer the runner builds (the plugin's and RecBole's own) carries this.

After ``fit``, ``trainer.training_summary`` holds: the budget, the epochs trained, the
minutes ``fit`` took, why it stopped (``early_stopping``, ``time_budget`` or
``max_epochs``) and the validation curve (epoch, minutes since ``fit`` began, score). The
runner puts it in the result dict under ``training``.

Resume: after every validation ``fit`` also writes ``<checkpoint>.resume`` (removed when ``fit``
ends normally, so it is only there after an interruption): the model,
optimizer, early-stopping state, the random-number states (torch, numpy, python, the
training dataloader's shuffle generator) and the summary so far. ``resume_from: <that
file>`` (or the checkpoint path; ``.resume`` is appended) continues an interrupted ``fit``
from there, so it ends with the metrics an uninterrupted run with the same seed reaches.
The best checkpoint keeps its file name and keeps being updated.

``lr_schedule: budget_linear`` (needs ``train_time_budget``) lowers the learning rate
linearly from ``learning_rate`` to 0 over the steps ``fit`` will take: at the start of every
validation cycle (and of every epoch until there is a first estimate) the steps the budget
allows are extrapolated from the steps taken and the minutes spent so far, validations
included, and rounded up to the end of the validation cycle that crosses the budget, so the
total is set by the pace of the run, not by an epoch count that a time-budgeted run never
reaches. Runs with it are reproducible only as far as their pace is:
the same seed on a slower machine sees a different schedule. ``lr_schedule: epochs_linear``
lowers it linearly to 0 over ``epochs`` epochs instead, whatever the pace (no budget needed):
set ``epochs`` to the epochs a budgeted run took to repeat its schedule on another machine.
Each validation in ``valid_curve`` then also records the learning rate of the last step.
"""

from __future__ import annotations

import math
import os
import random
from time import perf_counter

import numpy as np
import torch
import torch.distributed as dist
from recbole.utils import set_color

from recbole_mdgr.errors import UserError


LR_SCHEDULES = ("budget_linear", "epochs_linear")


def planned_steps(steps_done: int, minutes: float, budget: float, cycle: int = 1) -> float:
    """Training steps ``fit`` takes at the pace of ``steps_done`` steps in ``minutes``
    (validations included): those ``budget`` minutes allow, rounded up to a whole number of
    validation cycles of ``cycle`` steps, since ``fit`` runs on to the first validation past
    the budget. Infinite before any step has been timed."""
    if steps_done == 0 or minutes <= 0:
        return float("inf")
    return math.ceil(steps_done * budget / minutes / cycle) * cycle


def budget_linear_factor(step: int, planned: float) -> float:
    """Learning-rate multiplier of step ``step`` (0-based): 1 at the first step, falling
    linearly to 0 at step ``planned`` and staying there."""
    return max(0.0, 1.0 - step / planned)


def check_budget_keys(config) -> None:
    """A clear error for a bad ``train_time_budget`` or ``lr_schedule``. ``Config`` calls it
    when the configuration is read, before any data or model is built; ``fit`` again, for a
    trainer given a config changed after that."""
    budget = config["train_time_budget"]
    if budget is not None and (isinstance(budget, bool) or not isinstance(budget, (int, float))
                               or not budget > 0):
        raise UserError(f"train_time_budget must be a positive number of minutes or ~, "
                        f"got {budget!r}")
    schedule = config["lr_schedule"]
    if schedule is not None:
        if schedule not in LR_SCHEDULES:
            raise UserError(f"lr_schedule must be ~ or one of {LR_SCHEDULES}, got {schedule!r}")
        if schedule == "budget_linear" and budget is None:
            raise UserError(f"lr_schedule: {schedule} decays over train_time_budget: set a "
                            "budget (minutes) or lr_schedule: ~")


class _BudgetReached(Exception):
    """Raised from RecBole's per-validation callback to leave its epoch loop."""


class TrainingDiverged(UserError):
    """The training loss became NaN or infinite: the run stops, the checkpoint stays."""


class TimeBudgetMixin:
    """Mix into a RecBole ``Trainer``: the ``train_time_budget`` key and ``training_summary``;
    a NaN or infinite loss stops ``fit`` with the epoch and step named."""

    def _train_epoch(self, train_data, epoch_idx, *args, **kwargs):
        self._epochs_trained = getattr(self, "_epochs_trained", 0) + 1
        self._position = [epoch_idx, 0]
        if getattr(self, "_lr_schedule", None) == "budget_linear" and self._replans(epoch_idx):
            minutes = self._agreed((perf_counter() - self._fit_start) / 60)
            self._planned_steps = planned_steps(self._steps_done, minutes,
                                                self.config["train_time_budget"],
                                                max(1, len(train_data) * self.eval_step))
        return super()._train_epoch(train_data, epoch_idx, *args, **kwargs)

    def _replans(self, epoch_idx: int) -> bool:
        """Whether epoch ``epoch_idx`` re-estimates the steps of the schedule: at the start
        of a validation cycle, when the minutes spent include the last cycle's validation, or
        while there is no estimate yet. Mid-cycle the minutes lack the validation still to
        come, so the pace reads fast, and the plan rounded up to whole cycles can jump by a
        cycle: a 2-epoch cycle on amazon-beauty (MDGR-cpu) ended its run at 6% of the rate
        instead of 0."""
        return (self.eval_step <= 0 or epoch_idx % self.eval_step == 0
                or math.isinf(self._planned_steps))

    def _check_nan(self, loss):
        """RecBole calls this on every training step's loss, before ``backward`` and the
        optimizer step: the place to set that step's learning rate."""
        position = getattr(self, "_position", [0, 0])
        position[1] += 1
        if getattr(self, "_lr_schedule", None):
            lr = self.learning_rate * budget_linear_factor(self._steps_done, self._planned_steps)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            self._steps_done += 1
        if not bool(torch.isfinite(loss).all()):
            saved = self.saved_model_file if os.path.isfile(self.saved_model_file) else None
            raise TrainingDiverged(
                f"the training loss is {float(loss.detach().float().sum())} at epoch "
                f"{position[0]}, step {position[1]}: training stopped before that step's "
                "update. " + (f"The last checkpoint, {saved}, is the best model validated "
                              "before it and is intact. " if saved else "")
                + "Lower learning_rate (or set clip_grad_norm) and run again.")

    def _agreed(self, value: float) -> float:
        """The largest ``value`` over the processes of a distributed run, so every process
        takes the same decision (stopping, the learning-rate schedule)."""
        if self.config["single_spec"]:
            return value
        flag = torch.tensor([float(value)], device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return float(flag.item())

    def _out_of_patience(self) -> bool:
        """RecBole's early-stopping condition after the latest validation."""
        return self.cur_step > self.stopping_step

    def _budget_passed(self, minutes: float, budget) -> bool:
        return bool(self._agreed(float(budget is not None and minutes >= budget)))

    # ------------------------------------------------------------------ resume
    def _resume_path(self) -> str:
        return self.saved_model_file + ".resume"

    def _writes_files(self) -> bool:
        """Only one process of a distributed run writes (and removes) the resume state."""
        return self.config["single_spec"] or self.config["local_rank"] == 0

    def _save_resume_state(self, train_data, epoch_idx: int, minutes: float, curve) -> None:
        if not self._writes_files():
            return
        state = {
            "config": self.config, "epoch": epoch_idx, "cur_step": self.cur_step,
            "best_valid_score": self.best_valid_score,
            "best_valid_result": self.best_valid_result,
            "state_dict": self.model.state_dict(),
            "other_parameter": self.model.other_parameter(),
            "optimizer": self.optimizer.state_dict(),
            "saved_model_file": self.saved_model_file,
            "epochs_trained": self._epochs_trained, "minutes": minutes, "curve": list(curve),
            "steps_done": self._steps_done,
            "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
                    "python": random.getstate(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available()
                    else None,
                    "train_data": train_data.generator.get_state()},
        }
        torch.save(state, self._resume_path() + ".part", pickle_protocol=4)
        os.replace(self._resume_path() + ".part", self._resume_path())

    def resume_from(self, path: str) -> None:
        """Load the ``.resume`` state written by an earlier ``fit``; the next ``fit``
        continues after its epoch."""
        from recbole_mdgr.compat import load_checkpoint

        if not path.endswith(".resume") and os.path.isfile(path + ".resume"):
            path += ".resume"
        state = load_checkpoint(path, map_location=self.device)
        if "rng" not in state:
            raise UserError(f"{path} is not a resume state: pass the .resume file written "
                            "next to the checkpoint during fit")
        self.model.load_state_dict(state["state_dict"])
        self.model.load_other_parameter(state.get("other_parameter"))
        self.optimizer.load_state_dict(state["optimizer"])
        self.start_epoch = state["epoch"] + 1
        self.cur_step = state["cur_step"]
        self.best_valid_score = state["best_valid_score"]
        self.best_valid_result = state["best_valid_result"]
        self.saved_model_file = state["saved_model_file"]
        self._resumed = state
        self.logger.info(f"Resuming fit from {path}: epoch {self.start_epoch}, "
                         f"{state['minutes']:.1f} minutes already trained")

    def _restore_random_states(self, train_data) -> None:
        rng = self._resumed["rng"]
        torch.set_rng_state(rng["torch"].cpu())
        np.random.set_state(rng["numpy"])
        random.setstate(rng["python"])
        if rng["cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        train_data.generator.set_state(rng["train_data"].cpu())

    # ------------------------------------------------------------------ fit
    def fit(self, train_data, valid_data=None, verbose=True, saved=True, show_progress=False,
            callback_fn=None):
        check_budget_keys(self.config)
        budget = self.config["train_time_budget"]
        self._lr_schedule = self.config["lr_schedule"]
        self._epochs_trained, self._steps_done = 0, 0
        # epochs_linear knows its steps from the start; budget_linear re-plans them per cycle
        self._planned_steps = (self.epochs * len(train_data)
                               if self._lr_schedule == "epochs_linear" else float("inf"))
        curve = []
        start = perf_counter()
        resumed = getattr(self, "_resumed", None)
        if resumed is not None:
            self._epochs_trained = resumed["epochs_trained"]
            self._steps_done = resumed.get("steps_done", 0)
            curve = list(resumed["curve"])
            start -= 60 * resumed["minutes"]  # the budget counts the minutes already spent
            self._restore_random_states(train_data)
        self._fit_start = start

        def after_validation(epoch_idx, valid_score):
            minutes = (perf_counter() - start) / 60
            curve.append({"epoch": epoch_idx, "minutes": round(minutes, 3),
                          "valid_score": float(valid_score)})
            if self._lr_schedule is not None:
                curve[-1]["learning_rate"] = self.optimizer.param_groups[0]["lr"]
            if saved:
                self._save_resume_state(train_data, epoch_idx, minutes, curve)
            if callback_fn is not None:
                callback_fn(epoch_idx, valid_score)
            # a validation that ends both ways is early stopping's: RecBole stops after it
            if self._budget_passed(minutes, budget) and not self._out_of_patience():
                raise _BudgetReached

        stopped_by = None
        try:
            result = super().fit(train_data, valid_data, verbose=verbose, saved=saved,
                                 show_progress=show_progress, callback_fn=after_validation)
        except _BudgetReached:
            stopped_by = "time_budget"
            result = (self.best_valid_score, self.best_valid_result)
            if verbose:
                self.logger.info(set_color("time budget", "yellow") + f": {budget} min reached "
                                 f"after epoch {curve[-1]['epoch']} ({curve[-1]['minutes']:.1f} "
                                 "min); testing the best checkpoint so far")
        if stopped_by is None:
            stopped_by = ("early_stopping" if self._out_of_patience()
                          else "max_epochs")
        if self._writes_files() and os.path.isfile(self._resume_path()):
            os.remove(self._resume_path())  # a finished fit has nothing to resume
        self.training_summary = {
            "time_budget_minutes": budget,
            "epochs": self._epochs_trained,
            "fit_minutes": round((perf_counter() - start) / 60, 3),
            "stopped_by": stopped_by,
            "valid_curve": curve,
        }
        return result
