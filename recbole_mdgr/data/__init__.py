"""SID-aware data: dataset creation for plugin models, RecBole's otherwise."""

from urllib.error import URLError

from recbole.data import create_dataset as recbole_create_dataset
from recbole.data import data_preparation

from recbole_mdgr.data.dataset import (
    SID_SUFFIX,
    TRAIN_SAMPLE_MODES,
    SIDSequentialDataset,
    ValidSampledSequentialDataset,
)
from recbole_mdgr.errors import UserError
from recbole_mdgr.utils import get_model, is_generative


def create_dataset(config):
    """``SIDSequentialDataset`` for generative (SID) models; RecBole's dataset otherwise.

    Unlike RecBole's ``create_dataset`` it never reads a pickled dataset from
    ``checkpoint_dir``: the SID table has its own content-hashed cache, and a stale
    pickle would carry a stale table. A dataset that is neither on disk nor downloadable
    fails with a message that says where it was looked for.
    """
    try:
        return _create_dataset(config)
    except URLError as err:
        name = config["dataset"]
        raise UserError(
            f"dataset '{name}' is not in {config['data_path']} and could not be downloaded "
            f"({err.reason}): put its atomic files there, or pass "
            f"--data_path=<folder that holds {name}/>"
        ) from err


def _create_dataset(config):
    if is_generative(get_model(config["model"])):
        dataset = SIDSequentialDataset(config)
        if config["save_dataset"]:
            dataset.save()
        return dataset
    if config["valid_users"] is not None:  # sequential models only (check_model_keys)
        return ValidSampledSequentialDataset(config)
    return recbole_create_dataset(config)


__all__ = [
    "SID_SUFFIX",
    "SIDSequentialDataset",
    "TRAIN_SAMPLE_MODES",
    "create_dataset",
    "data_preparation",
]
