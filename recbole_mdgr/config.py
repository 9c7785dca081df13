"""Plugin ``Config``: RecBole's, plus the plugin's models and property files.

Layering, low to high (later wins):
RecBole's own defaults (``overall.yaml``, its model/dataset yamls, ``quick_start_config``)
< ``properties/overall.yaml`` < ``properties/model/<Model>.yaml``
< ``properties/dataset/<dataset>.yaml`` < ``properties/preset/<preset>.yaml``
< ``--config_files`` < ``config_dict`` < command line.

A preset (``--preset=TIGER-cpu``) is a named yaml shipped with the package, so a user can
ask for it without knowing where the package is installed.
"""

from __future__ import annotations

import os

from recbole.config import Config as RecBoleConfig

from recbole_mdgr.budget import check_budget_keys
from recbole_mdgr.errors import UserError, check_bool
from recbole_mdgr.utils import get_model


def properties_dir() -> str:
    """Where the plugin's yaml files are: inside the installed package, or the checkout."""
    here = os.path.dirname(os.path.realpath(__file__))
    for candidate in (os.path.join(here, "properties"), os.path.join(here, "..", "properties")):
        if os.path.isfile(os.path.join(candidate, "overall.yaml")):
            return os.path.normpath(candidate)
    raise UserError(
        "recbole_mdgr's properties/overall.yaml is missing: reinstall the package "
        "(pip install .) from a complete checkout"
    )


def available_presets() -> list[str]:
    folder = os.path.join(properties_dir(), "preset")
    return sorted(f[: -len(".yaml")] for f in os.listdir(folder) if f.endswith(".yaml"))


def preset_file(name: str) -> str:
    """Path of the shipped preset ``name``; a clear error listing the presets otherwise."""
    path = os.path.join(properties_dir(), "preset", f"{name}.yaml")
    if not os.path.isfile(path):
        raise UserError(f"unknown preset {name!r}; available presets: "
                         f"{', '.join(available_presets())}")
    return path


def plugin_yaml_files(model: str, dataset: str) -> list[str]:
    """The plugin's property files that apply to ``model`` on ``dataset``, low to high."""
    root = properties_dir()
    files = [
        os.path.join(root, "overall.yaml"),
        os.path.join(root, "model", f"{model}.yaml"),
        os.path.join(root, "dataset", f"{dataset}.yaml"),
    ]
    return [f for f in files if os.path.isfile(f)]


class Config(RecBoleConfig):
    """RecBole's ``Config`` that also knows the plugin's models and property files, and
    checks the plugin's trainer keys (``train_time_budget``, ``lr_schedule``,
    ``exclude_history``) as soon as the configuration is read, so a typo is reported before
    the data and model are built."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        check_budget_keys(self)
        check_bool("exclude_history", self["exclude_history"])

    def _get_model_and_dataset(self, model, dataset):
        model = self._required("model", model)
        if isinstance(model, str):
            model_class = get_model(model)
        else:
            model_class, model = model, model.__name__
        return model, model_class, self._required("dataset", dataset)

    def _required(self, key: str, value):
        """``value``, else the one set in a config file, dict or command line (RecBole's order)."""
        value = self.external_config_dict.get(key) if value is None else value
        if value is None:
            raise KeyError(
                f"{key} needs to be given in at least one of these ways: "
                "[argument, config file, config dict, command line]"
            )
        return value

    def _load_internal_config_dict(self, model, model_class, dataset):
        super()._load_internal_config_dict(model, model_class, dataset)
        dataset_file = os.path.join(properties_dir(), "dataset", f"{dataset}.yaml")
        for file in plugin_yaml_files(model, dataset):
            loaded = self._update_internal_config_dict(file) or {}
            if file == dataset_file:
                self.parameters["Dataset"] += [
                    k for k in loaded if k not in self.parameters["Dataset"]
                ]
        if not self._has_dataset_yaml(dataset):
            # a user's own dataset: RecBole's fallback (its sample.yaml) loads only user_id
            # and item_id, so time order fails; load every column of the atomic files instead
            self.internal_config_dict["load_col"] = None
        preset = self.external_config_dict.get("preset")
        if preset:
            self._update_internal_config_dict(preset_file(preset))

    def _init_device(self):
        import torch

        if "local_rank" in self.final_config_dict and not torch.cuda.is_available():
            from recbole_mdgr.distributed import init_cpu_process_group

            self.final_config_dict["gpu_id"] = str(self.final_config_dict["gpu_id"])
            init_cpu_process_group(self.final_config_dict)
            return
        super()._init_device()

    @staticmethod
    def _has_dataset_yaml(dataset: str) -> bool:
        import recbole

        recbole_yaml = os.path.join(os.path.dirname(recbole.__file__), "properties",
                                    "dataset", f"{dataset}.yaml")
        ours = os.path.join(properties_dir(), "dataset", f"{dataset}.yaml")
        return os.path.isfile(recbole_yaml) or os.path.isfile(ours)
