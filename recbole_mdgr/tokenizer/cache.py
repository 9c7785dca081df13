"""On-disk cache of SID tables, keyed by a content hash of everything a table depends on.

File: ``<checkpoint_dir>/sid/<dataset>-<quantizer>-<key[:12]>.npz`` holding ``codes``,
``vocab_sizes``, the full ``key`` and the build ``stats`` (JSON). A changed input gives a new
key and so a new file name; a file that cannot be read, or whose stored key differs, is
rebuilt and overwritten. Writes go to a temporary file renamed into place, so a crash never
leaves a partial cache.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile

import numpy as np

from .sid_table import SIDTable


def cache_key(item_tokens, source_name: str, source_digest: str, settings: dict) -> str:
    """sha256 hex over item tokens (internal-id order), vector source and settings."""
    payload = json.dumps(
        {
            "items": [str(t) for t in item_tokens],
            "source": source_name,
            "source_digest": source_digest,
            "settings": settings,
        },
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()


def cache_path(checkpoint_dir: str, dataset_name: str, quantizer: str, key: str) -> str:
    return os.path.join(checkpoint_dir, "sid", f"{dataset_name}-{quantizer}-{key[:12]}.npz")


def load_table(path: str, key: str) -> SIDTable | None:
    """The cached table at ``path`` if it is readable and was built for ``key``, else None
    (with a log line saying why)."""
    log = logging.getLogger()
    if not os.path.exists(path):
        log.info("No SID cache for this key (%s): building the SID table", path)
        return None
    try:
        with np.load(path, allow_pickle=False) as f:
            stored = str(f["key"])
            if stored != key:
                raise ValueError(f"stored key {stored[:12]}... does not match {key[:12]}...")
            table = SIDTable(
                f["codes"], f["vocab_sizes"].tolist(), json.loads(str(f["stats"]))
            )
    except Exception as err:  # any unreadable or inconsistent file is rebuilt
        log.warning(
            "SID cache %s is unreadable (%s: %s): rebuilding", path, type(err).__name__, err
        )
        return None
    log.info("Loaded SID table from %s", path)
    return table


def save_table(path: str, key: str, table: SIDTable) -> None:
    """Write ``table`` to ``path`` atomically (temporary file + ``os.replace``)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(
                f,
                codes=table.codes.cpu().numpy(),
                vocab_sizes=np.asarray(table.vocab_sizes, dtype=np.int64),
                key=np.asarray(key),
                stats=np.asarray(json.dumps(table.stats)),
            )
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    logging.getLogger().info("Saved SID table to %s", path)
