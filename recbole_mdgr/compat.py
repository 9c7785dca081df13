"""The shims RecBole 1.2.1 needs on today's stack, in one place.

- torch >= 2.6 loads checkpoints ``weights_only=True`` by default, and RecBole's checkpoints
  pickle the whole ``Config``: best-model reload after ``fit``, ``resume_checkpoint`` and
  ``load_data_and_model`` all fail. :func:`load_checkpoint` loads our own (trusted)
  checkpoints with ``weights_only=False``; :class:`CheckpointCompatMixin` routes RecBole's
  trainers through it. No environment variable is needed.
- ray is not installed by default (``setup.py``: RecBole's ``ray<=2.6.3`` pin has no wheels
  for Python 3.12+). ``recbole/quick_start/quick_start.py`` line 20 imports ``from ray import
  tune`` at module level, for its ray-tuning objective only (line 223, ``tune.report``).
  :func:`stand_in_for_missing_ray` gives that import a stand-in, so ``recbole.quick_start``
  imports without ray and any use of ray says what to install. It can go when RecBole
  imports ray lazily.
- numpy 2 removed ``np.float_``, ``np.complex_`` and ``np.unicode_``, which RecBole 1.2.1's
  ``Config.compatibility_settings`` (``recbole/config/configurator.py`` lines 630-635) reads
  to restore ``np.float`` & co. for its metrics and data code. :func:`restore_numpy_aliases`
  puts them back (as numpy 1 defined them); it can go when RecBole stops using the aliases.
  numpy 1 is kept on Python < 3.13 (``setup.py``), numpy 2 runs on 3.13.
- pandas >= 3 breaks RecBole 1.2.1 silently (its ``fillna(inplace=True)`` calls fill
  nothing); ``setup.py`` pins it below 3 and :func:`check_versions` says so clearly.
- RecBole 1.2.1's metrics use ``np.float`` (gone since numpy 1.24); RecBole restores the
  alias only when a ``Config`` is constructed, which a reloaded checkpoint never does.
  :func:`load_checkpoint` restores it too.
- RecBole 1.2.1 raises FutureWarnings from its own code on every run (pandas' chained
  ``fillna(inplace=True)``, ``Series.agg(len)``, ``torch.cuda.amp.GradScaler``);
  :func:`quiet_recbole_warnings` hides those, and only those, on our entry points. The
  ``fillna`` calls still fill on pandas < 3 (pinned); they go when RecBole fixes them.
- ``recbole/model/sequential_recommender/sine.py`` line 25 calls
  ``torch.autograd.set_detect_anomaly(True)`` when it is imported, and RecBole's
  ``get_model`` imports every sequential model: from then on, every backward pass in the
  process (SASRec's, BERT4Rec's, ours) runs under anomaly detection, several times slower.
  :func:`recbole_model` looks RecBole's models up and puts the setting back as it was.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys
import types
import warnings

import numpy
import torch

from recbole_mdgr.errors import UserError

RAY_MISSING = ("ray-based tuning needs ray, which recbole-mdgr does not install by default: "
               "pip install 'recbole-mdgr[tune]' (or pip install 'ray[tune]')")

_NUMPY_ALIASES = {"float_": "float64", "complex_": "complex128", "unicode_": "str_"}


def restore_numpy_aliases(np=numpy) -> None:
    """Give numpy 2 the three aliases RecBole 1.2.1's ``compatibility_settings`` reads
    (numpy 1 has them: left alone)."""
    for alias, target in _NUMPY_ALIASES.items():
        if alias not in np.__dict__:
            setattr(np, alias, getattr(np, target))


class RayMissing(UserError, AttributeError):
    """Ray was used but is not installed. An AttributeError too, so ``hasattr`` stays False."""


class _MissingRay(types.ModuleType):
    """``ray`` (and ``ray.tune``) when ray is not installed: importable, unusable."""

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        raise RayMissing(RAY_MISSING)


def stand_in_for_missing_ray() -> None:
    """Let ``recbole.quick_start`` import without ray; any use of ray raises :data:`RAY_MISSING`."""
    if "ray" in sys.modules or importlib.util.find_spec("ray") is not None:
        return
    ray, tune = _MissingRay("ray"), _MissingRay("ray.tune")
    for module in (ray, tune):
        module.__spec__ = importlib.machinery.ModuleSpec(module.__name__, None)
        module.__recbole_mdgr_stand_in__ = True
        sys.modules[module.__name__] = module
    ray.__dict__["tune"] = tune


def ray_available() -> bool:
    """True when the real ray is installed (not :func:`stand_in_for_missing_ray`'s)."""
    ray = sys.modules.get("ray")
    if ray is not None:
        return not getattr(ray, "__recbole_mdgr_stand_in__", False)
    return importlib.util.find_spec("ray") is not None


def load_checkpoint(path: str, map_location=None) -> dict:
    """Load a RecBole-format checkpoint written by this machine's own training runs."""
    if not os.path.isfile(path):
        raise UserError(f"checkpoint file not found: {path}")
    checkpoint = torch.load(path, map_location=map_location, weights_only=False)
    # the pickled Config skipped its __init__, which is where RecBole sets numpy's aliases
    checkpoint["config"].compatibility_settings()
    return checkpoint


def recbole_model(model_name: str):
    """RecBole's ``get_model(model_name)`` without the anomaly detection its SINE module
    switches on for the whole process when imported (see the module docstring)."""
    from recbole.utils import get_model

    was = torch.is_anomaly_enabled()
    try:
        return get_model(model_name)
    finally:
        torch.autograd.set_detect_anomaly(was)


def quiet_recbole_warnings() -> None:
    """Ignore FutureWarnings raised from RecBole's modules (not the user's, not ours)."""
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"recbole\.")


def check_versions() -> None:
    """Fail early, with the fix, on library versions RecBole 1.2.1 cannot run with."""
    import pandas

    if int(pandas.__version__.split(".")[0]) >= 3:
        raise UserError(f"RecBole 1.2.1 does not work with pandas {pandas.__version__} "
                        "(its fillna(inplace=True) calls fill nothing): pip install 'pandas<3'")


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
