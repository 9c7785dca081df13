"""Model, trainer and dataset lookups: the plugin first, then RecBole's own."""

from __future__ import annotations

import difflib
import importlib
import os

import recbole
from recbole.utils import get_trainer as recbole_get_trainer

from recbole_mdgr.budget import TimeBudgetMixin
from recbole_mdgr.compat import CheckpointCompatMixin, recbole_model
from recbole_mdgr.distributed import CPUDistributedMixin
from recbole_mdgr.history import HistoryExclusionMixin

PLUGIN_MODELS = ("TIGER", "MADRec", "MDGR")


def _recbole_models() -> list[str]:
    """RecBole's model names, read from its property files (importing nothing)."""
    recbole_dir = os.path.join(os.path.dirname(recbole.__file__), "properties", "model")
    return sorted(f[: -len(".yaml")] for f in os.listdir(recbole_dir) if f.endswith(".yaml"))


def available_models() -> list[str]:
    """Plugin models that are installed, then every RecBole model."""
    return [m for m in PLUGIN_MODELS if _plugin_module(m) is not None] + _recbole_models()


def _plugin_module(model_name: str):
    path = f"recbole_mdgr.model.{model_name.lower()}"
    if importlib.util.find_spec(path) is None:
        return None
    return importlib.import_module(path)


def get_model(model_name: str):
    """The model class called ``model_name``: the plugin's if it has one, else RecBole's."""
    module = _plugin_module(model_name)
    if module is not None and hasattr(module, model_name):
        return getattr(module, model_name)
    if model_name in _recbole_models():
        return recbole_model(model_name)
    names = available_models()
    lower = {n.lower(): n for n in names}
    close = [lower[c] for c in difflib.get_close_matches(model_name.lower(), lower, n=3)]
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    from recbole_mdgr.errors import UserError

    raise UserError(f"Unknown model '{model_name}'.{hint} Available models: {', '.join(names)}")


def is_generative(model_class) -> bool:
    return bool(getattr(model_class, "is_generative", False))


_trainer_classes: dict[type, type] = {}


def plugin_trainer(trainer_class: type) -> type:
    """RecBole's ``trainer_class`` with the plugin's mixins (cached per class).

    :class:`~recbole_mdgr.budget.TimeBudgetMixin` (``train_time_budget``, the result dict's
    ``training``), :class:`~recbole_mdgr.compat.CheckpointCompatMixin` (torch >= 2.6
    checkpoint reload) and :class:`~recbole_mdgr.history.HistoryExclusionMixin`
    (``exclude_history``), so RecBole's models run under the same rules as the plugin's.
    """
    from recbole.trainer import Trainer

    if not issubclass(trainer_class, Trainer) or issubclass(trainer_class, TimeBudgetMixin):
        return trainer_class
    if trainer_class not in _trainer_classes:
        _trainer_classes[trainer_class] = type(
            trainer_class.__name__,
            (TimeBudgetMixin, CheckpointCompatMixin, HistoryExclusionMixin, CPUDistributedMixin,
             trainer_class), {}
        )
    return _trainer_classes[trainer_class]


def get_trainer(model_type, model_name: str):
    """``GenerativeTrainer`` for SID models; RecBole's trainer (with our mixins) otherwise."""
    if is_generative(get_model(model_name)):
        from recbole_mdgr.trainer import GenerativeTrainer

        return GenerativeTrainer
    return plugin_trainer(recbole_get_trainer(model_type, model_name))
