"""``build_sid_table(config, dataset)``: item vectors -> quantizer -> dedup -> :class:`SIDTable`,
through the on-disk cache, with one readable block of statistics in the log."""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import replace

import numpy as np

from recbole_mdgr.errors import UserError

from .cache import cache_key, cache_path, load_table, save_table
from .embed import vector_source
from .kmeans import build_threads
from .quantizers import make_quantizer
from .settings import SIDSettings
from .sid_table import SIDTable, build_table
from .text import default_text_fields


def build_sid_table(config, dataset) -> SIDTable:
    """The SID table of ``dataset``'s items, loaded from the cache or built.

    Args:
        config: a RecBole ``Config`` (reads the ``sid_*`` keys, ``seed``, ``checkpoint_dir``).
        dataset: a loaded RecBole dataset; rows of the table follow its internal item ids.

    Returns:
        A :class:`SIDTable` with ``dataset.item_num`` rows (row 0 = padding, all -1).
    """
    start = time.perf_counter()
    settings = resolved_settings(config, dataset)
    quantizer = make_quantizer(settings)
    source = vector_source(settings, dataset)
    item_tokens = dataset.field2id_token[dataset.iid_field][: dataset.item_num]
    key_settings = settings.as_key()
    popularity = None
    if settings.dedup_order == "popularity":
        popularity = training_popularity(dataset)
        key_settings["popularity"] = hashlib.sha256(popularity.tobytes()).hexdigest()
    key = cache_key(item_tokens, source.name, source.digest, key_settings)
    path = None
    if settings.cache:
        path = cache_path(
            config["checkpoint_dir"] or "saved", dataset.dataset_name, settings.quantizer, key
        )
        table = load_table(path, key)
        if table is not None:
            logging.getLogger().info(format_stats(table))
            return table

    t = time.perf_counter()
    vectors = source.compute()  # [item_num - 1, d]
    embed_time = time.perf_counter() - t
    if vectors.shape[0] != dataset.item_num - 1:
        raise ValueError(
            f"{source.name} gave {vectors.shape[0]} vectors for {dataset.item_num - 1} items"
        )
    t = time.perf_counter()
    with build_threads(settings.threads):
        raw = np.asarray(quantizer.fit_encode(vectors, settings.seed), dtype=np.int64)
    quantize_time = time.perf_counter() - t
    table = build_table(
        raw,
        quantizer.codebook_sizes,
        settings.dedup,
        popularity,
        dataset=dataset.dataset_name,
        quantizer=settings.quantizer,
        source=source.name,
        n_items=dataset.item_num - 1,
        vector_dim=int(vectors.shape[1]),
        items_without_text=source.items_without_text,
        embed_time_s=round(embed_time, 3),
        quantize_time_s=round(quantize_time, 3),
    )
    table.stats["build_time_s"] = round(time.perf_counter() - start, 3)
    if path:
        save_table(path, key, table)
    logging.getLogger().info(format_stats(table))
    return table


def training_popularity(dataset) -> np.ndarray:
    """``[item_num - 1]`` int64: how many training users interacted with each real item (the
    order of ``sid_dedup_order: popularity``); validation and test targets do not count."""
    pairs = getattr(dataset, "sid_train_pairs", None)
    if pairs is None:
        raise UserError("sid_dedup_order: popularity counts the training split, which exists "
                        "once the dataset is built (the runner and `python -m "
                        "recbole_mdgr.tokenizer` build it)")
    counts = np.bincount(np.asarray(pairs, dtype=np.int64)[:, 1], minlength=dataset.item_num)
    return counts[1:].astype(np.int64)


def resolved_settings(config, dataset) -> SIDSettings:
    """The config's ``sid_*`` settings, codebooks fitted to the catalogue, text fields
    defaulted to the ``.item`` file's when no vector source is named."""
    settings = fit_codebooks(SIDSettings.from_config(config), dataset.item_num - 1)
    if not (settings.text_fields or settings.embedding_file or settings.embedding_field):
        fields = default_text_fields(dataset)
        if fields:
            logging.getLogger().info(f"sid_text_fields not set: using the text fields of "
                                     f"{dataset.dataset_name}.item, {list(fields)}")
            settings = replace(settings, text_fields=fields)
    return settings


def item_vectors(config, dataset) -> np.ndarray:
    """``[item_num, d]`` float32: the vectors the SIDs are built from (the same source and
    settings as :func:`build_sid_table`), row 0 (padding) zero. Computed, not cached."""
    vectors = vector_source(resolved_settings(config, dataset), dataset).compute()
    return np.concatenate([np.zeros((1, vectors.shape[1]), np.float32),
                           np.asarray(vectors, dtype=np.float32)])


def fit_codebooks(settings: SIDSettings, n_items: int) -> SIDSettings:
    """``settings`` with every codebook cut to at most half the catalogue (k-means needs more
    items than codewords, and codes that split items in pairs at best carry no semantics),
    with a warning saying so; unchanged when they fit."""
    limit = max(2, n_items // 2)
    if max(settings.codebook_sizes) <= limit:
        return settings
    sizes = tuple(min(s, limit) for s in settings.codebook_sizes)
    logging.getLogger().warning(
        f"sid_codebook_size {list(settings.codebook_sizes)} is too large for {n_items} "
        f"items: using {list(sizes)} (at most half the items per codebook); set "
        "sid_codebook_size to choose yourself")
    return replace(settings, codebook_sizes=sizes)


def format_stats(table: SIDTable) -> str:
    """The table's build statistics as one human-readable block."""
    s = table.stats
    n_code = len(s["utilisation"])

    def row(name: str, values) -> str:
        return f"  {name:<12}" + " ".join(f"{v:>8}" for v in values)

    dedup = (
        f"dedup token added (vocab {table.vocab_sizes[-1]})"
        if table.m > n_code
        else "no dedup token"
    )
    return "\n".join(
        [
            f"SID table: {s['dataset']} | {s['quantizer']} {n_code} x "
            f"{table.vocab_sizes[:n_code]} | vectors {s['source']} (dim {s['vector_dim']}) "
            f"| {s['n_items']} items",
            row("position", range(n_code)),
            row("utilisation", [f"{u:.3f}" for u in s["utilisation"]]),
            row("perplexity", [f"{p:.1f}" for p in s["perplexity"]]),
            f"  collision rate before dedup {s['collision_rate']:.4f}, largest collision group "
            f"{s['max_collision_group']}, {dedup}",
            f"  items without text {s['items_without_text']}",
            f"  time: embedding {s['embed_time_s']:.2f} s, quantizer "
            f"{s['quantize_time_s']:.2f} s, total build {s['build_time_s']:.2f} s",
        ]
    )
