"""A wall-clock budget for ``fit`` and a record of how training went, for any RecBole trainer.

``train_time_budget`` (minutes, ``~`` = none) ends ``fit`` after the first validation that
finishes past the budget. The best checkpoint is RecBole's as usual (saved whenever
validation improves), so the test that follows evaluates the best model seen within the
budget. Every trainer the runner builds (the plugin's and RecBole's own) carries this.

After ``fit``, ``trainer.training_summary`` holds: the budget, the epochs trained, the
minutes ``fit`` took, why it stopped (``early_stopping``, ``time_budget`` or
``max_epochs``) and the validation curve (epoch, minutes since ``fit`` began, score). The
runner puts it in the result dict under ``training``.
"""

from __future__ import annotations

from time import perf_counter

import torch
import torch.distributed as dist
from recbole.utils import set_color


class _BudgetReached(Exception):
    """Raised from RecBole's per-validation callback to leave its epoch loop."""


class TimeBudgetMixin:
    """Mix into a RecBole ``Trainer``: the ``train_time_budget`` key and ``training_summary``."""

    def _train_epoch(self, *args, **kwargs):
        self._epochs_trained = getattr(self, "_epochs_trained", 0) + 1
        return super()._train_epoch(*args, **kwargs)

    def _budget_passed(self, minutes: float, budget) -> bool:
        passed = budget is not None and minutes >= budget
        if not self.config["single_spec"]:  # every process stops at the same validation
            flag = torch.tensor([float(passed)], device=self.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            passed = bool(flag.item())
        return passed

    def fit(self, train_data, valid_data=None, verbose=True, saved=True, show_progress=False,
            callback_fn=None):
        budget = self.config["train_time_budget"]
        if budget is not None and not budget > 0:
            raise ValueError(f"train_time_budget must be a positive number of minutes or ~, "
                             f"got {budget!r}")
        self._epochs_trained = 0
        curve = []
        start = perf_counter()

        def after_validation(epoch_idx, valid_score):
            minutes = (perf_counter() - start) / 60
            curve.append({"epoch": epoch_idx, "minutes": round(minutes, 3),
                          "valid_score": float(valid_score)})
            if callback_fn is not None:
                callback_fn(epoch_idx, valid_score)
            if self._budget_passed(minutes, budget):
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
            stopped_by = ("early_stopping" if self.cur_step > self.stopping_step
                          else "max_epochs")
        self.training_summary = {
            "time_budget_minutes": budget,
            "epochs": self._epochs_trained,
            "fit_minutes": round((perf_counter() - start) / 60, 3),
            "stopped_by": stopped_by,
            "valid_curve": curve,
        }
        return result
