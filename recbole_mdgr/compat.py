"""The shims RecBole 1.2.1 needs on today's stack, in one place.

- torch >= 2.6 loads checkpoints ``weights_only=True`` by default, and RecBole's checkpoints
  pickle the whole ``Config``: best-model reload after ``fit``, ``resume_checkpoint`` and
  ``load_data_and_model`` all fail. :func:`load_checkpoint` loads our own (trusted)
  checkpoints with ``weights_only=False``; :class:`CheckpointCompatMixin` routes RecBole's
  trainers through it. No environment variable is needed.
- ``recbole.quick_start`` imports ``ray`` at module level; this package never imports it,
  so ``ray`` is loaded only when hyper-parameter tuning is asked for.
- numpy >= 2, pandas >= 3 and setuptools >= 81 break RecBole 1.2.1 (or ray) at run time;
  ``setup.py`` pins them below those versions, and :func:`check_versions` says so clearly.
- RecBole 1.2.1's metrics use ``np.float`` (gone since numpy 1.24); RecBole restores the
  alias only when a ``Config`` is constructed, which a reloaded checkpoint never does.
  :func:`load_checkpoint` restores it too.
- RecBole 1.2.1 raises FutureWarnings from its own code on every run (pandas' chained
  ``fillna(inplace=True)``, ``Series.agg(len)``, ``torch.cuda.amp.GradScaler``);
  :func:`quiet_recbole_warnings` hides those, and only those, on our entry points. The
  ``fillna`` calls still fill on pandas < 3 (pinned); they go when RecBole fixes them.
"""

from __future__ import annotations

import os
import warnings

import torch

from recbole_mdgr.errors import UserError

_PINS = {"numpy": (2,), "pandas": (3,)}


def load_checkpoint(path: str, map_location=None) -> dict:
    """Load a RecBole-format checkpoint written by this machine's own training runs."""
    if not os.path.isfile(path):
        raise UserError(f"checkpoint file not found: {path}")
    checkpoint = torch.load(path, map_location=map_location, weights_only=False)
    # the pickled Config skipped its __init__, which is where RecBole sets numpy's aliases
    checkpoint["config"].compatibility_settings()
    return checkpoint


def quiet_recbole_warnings() -> None:
    """Ignore FutureWarnings raised from RecBole's modules (not the user's, not ours)."""
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"recbole\.")


def check_versions() -> None:
    """Fail early, with the fix, on library versions RecBole 1.2.1 cannot run with."""
    import numpy
    import pandas

    for mod in (numpy, pandas):
        major = int(mod.__version__.split(".")[0])
        limit = _PINS[mod.__name__][0]
        if major >= limit:
            raise UserError(
                f"RecBole 1.2.1 does not work with {mod.__name__} {mod.__version__}: "
                f"pip install '{mod.__name__}<{limit}'"
            )


class CheckpointCompatMixin:
    """Mix into a RecBole ``Trainer`` so its checkpoints reload on torch >= 2.6.

    Replaces the two places where RecBole calls ``torch.load``: resuming and the
    best-model reload in ``evaluate``. Behaviour and log lines are RecBole's.
    """

    def resume_checkpoint(self, resume_file):
        resume_file = str(resume_file)
        self.saved_model_file = resume_file
        checkpoint = load_checkpoint(resume_file, map_location=self.device)
        self.start_epoch = checkpoint["epoch"] + 1
        self.cur_step = checkpoint["cur_step"]
        self.best_valid_score = checkpoint["best_valid_score"]
        if checkpoint["config"]["model"].lower() != self.config["model"].lower():
            self.logger.warning(
                "Architecture configuration given in config file is different from that of "
                "checkpoint. This may yield an exception while state_dict is being loaded."
            )
        self.model.load_state_dict(checkpoint["state_dict"])
        self.model.load_other_parameter(checkpoint.get("other_parameter"))
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.logger.info(f"Checkpoint loaded. Resume training from epoch {self.start_epoch}")

    def load_model_file(self, checkpoint_file: str) -> None:
        """Load a checkpoint's weights into ``self.model`` (RecBole's best-model reload)."""
        checkpoint = load_checkpoint(checkpoint_file, map_location=self.device)
        self.model.load_state_dict(checkpoint["state_dict"])
        self.model.load_other_parameter(checkpoint.get("other_parameter"))
        self.logger.info(f"Loading model structure and parameters from {checkpoint_file}")

    def evaluate(self, eval_data, load_best_model=True, model_file=None, show_progress=False):
        if eval_data and load_best_model:
            self.load_model_file(model_file or self.saved_model_file)
        return super().evaluate(
            eval_data, load_best_model=False, model_file=model_file, show_progress=show_progress
        )
