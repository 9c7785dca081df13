"""``run_recbole_mdgr``, ``objective_function``, ``load_data_and_model``: RecBole's API.

The same steps, log lines and result dicts as ``recbole.quick_start``, with the plugin's
Config, dataset, model and trainer lookups (which fall back to RecBole's for its own
models). ``ray`` is imported only by ``objective_function``, and only inside a Ray Tune
trial.
"""

from __future__ import annotations

import logging
import os
import sys
from logging import getLogger
from time import perf_counter

import numpy as np
import torch.distributed as dist

from recbole.data.transform import construct_transform
from recbole.utils import ModelType, get_environment, get_flops, init_logger, init_seed, set_color

from recbole_mdgr.compat import (
    check_versions,
    load_checkpoint,
    quiet_recbole_warnings,
    ray_available,
)
from recbole_mdgr.config import Config
from recbole_mdgr.data import create_dataset, data_preparation
from recbole_mdgr.errors import UserError, check_atomic_files, check_config_files
from recbole_mdgr.trainer import check_topk_metrics
from recbole_mdgr.utils import get_model, get_trainer, is_generative


def build_run(config):
    """Dataset, splits, model and trainer for ``config`` (RecBole's order and seeds)."""
    logger = getLogger()
    check_atomic_files(config)
    dataset = create_dataset(config)
    logger.info(dataset)
    users = np.asarray(dataset.inter_feat[dataset.uid_field])
    if len(users) == 0 or np.unique(users, return_counts=True)[1].max() < 3:
        raise _too_short(config)  # RecBole's sampler would fail with a bare ValueError
    train_data, valid_data, test_data = data_preparation(config, dataset)
    if len(train_data.dataset) == 0:
        raise _too_short(config)
    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    model = get_model(config["model"])(config, train_data._dataset).to(config["device"])
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    return dataset, train_data, valid_data, test_data, model, trainer


def _too_short(config) -> UserError:
    split = (config["eval_args"] or {}).get("split") or {}
    if "LS" in split:
        return UserError(
            f"dataset {config['dataset']} gives no training samples: leave-one-out takes each "
            "user's last interaction for test and the one before for validation, so users "
            "need at least 3 interactions; keep longer sequences (e.g. "
            "user_inter_num_interval: '[3,inf)') or add data")
    return UserError(
        f"dataset {config['dataset']} gives no training samples with eval_args split "
        f"{split}: sequential samples need users with at least 3 interactions; keep longer "
        "sequences (e.g. user_inter_num_interval: '[3,inf)'), add data or change the split")


def _log_flops(model, dataset, config, logger) -> None:
    try:
        flops = get_flops(model, dataset, config["device"], logger, construct_transform(config))
    except NotImplementedError:
        flops = "n/a (ranks by generation; see the decode line of each evaluation)"
    logger.info(set_color("FLOPs", "blue") + f": {flops}")


def checked_config(model, dataset, config_file_list, config_dict) -> Config:
    """The run's Config, its files, model and keys checked before any data is read."""
    check_versions()
    quiet_recbole_warnings()
    check_config_files(config_file_list)
    config = Config(
        model=model, dataset=dataset, config_file_list=config_file_list, config_dict=config_dict
    )
    check_model_keys(config)
    return config


def check_model_keys(config) -> None:
    """Refuse, by key, what ``config``'s model cannot run with: a SID model's own checks and
    its metrics; for RecBole's models, the keys only the SID models read."""
    model_class = get_model(config["model"])
    if is_generative(model_class):
        check_topk_metrics(config["metrics"])
        model_class.check_config(config)
        return
    for key, inert in (("next_k", (None, 1)), ("train_drop_ratio", (None, 0, 0.0))):
        if config[key] not in inert:
            raise UserError(
                f"{key}={config[key]} is supported by the SID models (TIGER, MADRec, "
                f"MDGR), not by {config['model']}; remove {key} or choose one of those "
                "models")
    if config["valid_users"] is not None and config["MODEL_TYPE"] != ModelType.SEQUENTIAL:
        raise UserError(f"valid_users is for sequential models; {config['model']} is "
                        f"{config['MODEL_TYPE'].name.lower()}: remove valid_users")


SID_SUMMARY = ("source", "quantizer", "collision_rate", "max_collision_group")


def run_recbole_mdgr(
    model=None, dataset=None, config_file_list=None, config_dict=None, saved=True, queue=None
) -> dict:
    """Train and test ``model`` on ``dataset``, exactly as ``recbole.quick_start.run_recbole``.

    Returns:
        RecBole's result dict (``best_valid_score``, ``valid_score_bigger``,
        ``best_valid_result``, ``test_result``), plus ``timing`` (fit and test seconds,
        test ms per user, checkpoint reload included) and, for generative models,
        ``test_decode`` (NFE per user, decode ms per user, invalid-SID share), and
        ``saved_model_file`` when the best model was saved.
    """
    config = checked_config(model, dataset, config_file_list, config_dict)
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    logger = getLogger()
    logger.info(sys.argv)
    logger.info(config)

    dataset, train_data, valid_data, test_data, model, trainer = build_run(config)
    logger.info(model)
    _log_flops(model, dataset, config, logger)

    if config["resume_from"]:
        trainer.resume_from(config["resume_from"])
    start = perf_counter()
    best_valid_score, best_valid_result = trainer.fit(
        train_data, valid_data, saved=saved, show_progress=config["show_progress"]
    )
    fit_seconds = perf_counter() - start
    start = perf_counter()
    test_result = trainer.evaluate(
        test_data, load_best_model=saved, show_progress=config["show_progress"]
    )
    test_seconds = perf_counter() - start

    logger.info(
        "The running environment of this training is as follows:\n"
        + get_environment(config).draw()
    )
    logger.info(set_color("best valid ", "yellow") + f": {best_valid_result}")
    logger.info(set_color("test result", "yellow") + f": {test_result}")

    result = {
        "best_valid_score": best_valid_score,
        "parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "valid_score_bigger": config["valid_metric_bigger"],
        "best_valid_result": best_valid_result,
        "test_result": test_result,
        "timing": {
            "fit_seconds": fit_seconds,
            "test_seconds": test_seconds,
            "test_ms_per_user": 1000.0 * test_seconds / max(len(test_data.dataset), 1),
        },
    }
    if saved:  # the checkpoint, for decoding variants (benchmark --checkpoint) and reloads
        result["saved_model_file"] = trainer.saved_model_file
    if getattr(trainer, "training_summary", None):
        result["training"] = dict(trainer.training_summary)
        logger.info(set_color("training", "yellow") + ": " + ", ".join(
            f"{k}={v}" for k, v in result["training"].items() if k != "valid_curve"))
    if getattr(trainer, "decode_summary", None):
        result["test_decode"] = dict(trainer.decode_summary)
    table = getattr(dataset, "sid_table", None)
    if table is not None:  # which vectors and quantizer the SIDs came from, and how unique
        result["sid"] = {k: table.stats.get(k) for k in SID_SUMMARY}
    if not config["single_spec"]:
        dist.destroy_process_group()
    if config["local_rank"] == 0 and queue is not None:
        queue.put(result)
    return result


def run_recbole_mdgrs(rank, *args):
    """Entry point of each process of a distributed run (``torch.multiprocessing.spawn``)."""
    kwargs = args[-1]
    kwargs["config_dict"] = {**(kwargs.get("config_dict") or {}), "local_rank": rank}
    try:
        run_recbole_mdgr(*args[:3], **kwargs)
    except UserError as err:  # the message, not a traceback relayed through the parent
        print(f"error (process {rank}): {err}", file=sys.stderr)
        sys.exit(2)


def run(model, dataset, config_file_list=None, config_dict=None, saved=True, nproc=1,
        world_size=-1, ip="localhost", port="5678", group_offset=0):
    """Single- or multi-process run, as ``recbole.quick_start.run`` (gloo on CPU)."""
    if nproc < 1:
        raise UserError(f"--nproc={nproc}: a run needs at least one process")
    if nproc == 1 and world_size <= 0:
        return run_recbole_mdgr(model, dataset, config_file_list, config_dict, saved)
    import torch.multiprocessing as mp

    # Bad files, models and keys are reported here once, before any process starts.
    config = checked_config(model, dataset, config_file_list, config_dict)
    check_atomic_files(config)
    # RecBole creates its log and checkpoint folders check-then-create (``ensure_dir``):
    # processes started together raced on them, and one died with FileExistsError
    for folder in (os.path.join("log", config["model"]), config["checkpoint_dir"]):
        os.makedirs(folder, exist_ok=True)
    queue = mp.get_context("spawn").SimpleQueue()
    config_dict = dict(config_dict or {})
    config_dict.update({"world_size": nproc if world_size == -1 else world_size, "ip": ip,
                        "port": port, "nproc": nproc, "offset": group_offset})
    try:
        mp.spawn(run_recbole_mdgrs,
                 args=(model, dataset, config_file_list, {"config_dict": config_dict,
                                                          "queue": queue}),
                 nprocs=nproc, join=True)
    except mp.ProcessExitedException as err:
        if err.exit_code != 2:
            raise
        raise UserError(f"process {err.error_index} of the run stopped on the error it "
                        "printed above") from None
    return None if queue.empty() else queue.get()


def objective_function(config_dict=None, config_file_list=None, saved=True) -> dict:
    """RecBole's hyper-parameter tuning objective (``recbole.trainer.HyperTuning``)."""
    config = Config(config_dict=config_dict, config_file_list=config_file_list)
    init_seed(config["seed"], config["reproducibility"])
    logger = getLogger()
    for handler in logger.handlers[:]:
        logger.removeHandler(handler)
    init_logger(config)
    logging.basicConfig(level=logging.ERROR)
    _, train_data, valid_data, test_data, _, trainer = build_run(config)
    best_valid_score, best_valid_result = trainer.fit(
        train_data, valid_data, verbose=False, saved=saved
    )
    test_result = trainer.evaluate(test_data, load_best_model=saved)
    if "ray" in sys.modules and ray_available():  # inside a Ray Tune trial: report to it
        from ray import tune

        tune.report(dict(test_result))  # ray >= 2.7 takes one dict (RecBole's ray took kwargs)
    return {
        "model": config["model"],
        "best_valid_score": best_valid_score,
        "valid_score_bigger": config["valid_metric_bigger"],
        "best_valid_result": best_valid_result,
        "test_result": test_result,
    }


def load_data_and_model(model_file: str):
    """Config, model (with the saved weights), dataset and dataloaders of a checkpoint."""
    quiet_recbole_warnings()
    checkpoint = load_checkpoint(model_file)
    config = checkpoint["config"]
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    logger = getLogger()
    logger.info(config)
    dataset = create_dataset(config)
    logger.info(dataset)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    init_seed(config["seed"], config["reproducibility"])
    model = get_model(config["model"])(config, train_data._dataset).to(config["device"])
    model.load_state_dict(checkpoint["state_dict"])
    model.load_other_parameter(checkpoint.get("other_parameter"))
    return config, model, dataset, train_data, valid_data, test_data
