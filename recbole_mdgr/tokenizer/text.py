"""Item text from a RecBole dataset's ``.item`` features, in internal-id order.

Works on ``dataset.item_feat`` both before ``dataset.build()`` (a pandas DataFrame) and
after it (an ``Interaction`` of tensors); rows are placed by the item-id column, so row
order does not matter.
"""

from __future__ import annotations

import logging
import math
import os
from typing import Sequence

import numpy as np
import torch
from recbole.utils import FeatureType

from recbole_mdgr.errors import UserError

PAD_TOKEN = "[PAD]"


def feat_columns(feat) -> list[str]:
    """Column names of a feature table (DataFrame or Interaction)."""
    return list(feat.columns)


def feat_column(feat, field: str) -> list | np.ndarray:
    """One column as a numpy array (scalars) or a list of 1-D arrays (sequences)."""
    col = feat[field]
    if isinstance(col, torch.Tensor):
        col = col.cpu().numpy()
        return list(col) if col.ndim == 2 else col
    values = col.to_numpy()
    if values.dtype == object:
        return [np.asarray(v) for v in values]
    return values


def item_rows(dataset, feat, id_field: str | None = None) -> np.ndarray:
    """Internal item id of each row of ``feat`` (``[n_rows]`` int64)."""
    return np.asarray(feat_column(feat, id_field or dataset.iid_field), dtype=np.int64)


def _token_text(tokens: np.ndarray) -> str:
    """Join tokens, dropping padding and the quotes of Amazon's list-like category strings."""
    words = [str(t).strip("'\" ,") for t in tokens if str(t) not in (PAD_TOKEN, "")]
    return ", ".join(w for w in words if w)


def default_text_fields(dataset) -> tuple[str, ...]:
    """The loaded ``.item`` fields that hold text (token and token_seq), item id excluded."""
    feat = dataset.item_feat
    if feat is None:
        return ()
    text_types = (FeatureType.TOKEN, FeatureType.TOKEN_SEQ)
    return tuple(f for f in feat_columns(feat)
                 if f != dataset.iid_field and dataset.field2type.get(f) in text_types)


def item_texts(dataset, fields: Sequence[str]) -> tuple[list[str], int]:
    """``"field: value field: value ..."`` for every item, in internal-id order.

    Args:
        dataset: a RecBole dataset after loading (item ids remapped).
        fields: item text fields in the order they appear in the text (``sid_text_fields``).

    Returns:
        (texts of items ``1 .. item_num - 1`` (padding excluded), number of those items
        with no text at all: their text is ``""``).

    Raises:
        ValueError: no ``.item`` file loaded, or none of ``fields`` was loaded.
    """
    feat = dataset.item_feat
    fields = list(fields)
    item_file = os.path.join(
        dataset.config["data_path"] or "", f"{dataset.dataset_name}.item"
    )
    hint = (
        f"set `load_col: {{item: [{dataset.iid_field}, {', '.join(fields) or '...'}]}}` so "
        f"the fields are read from {item_file}, or set `sid_text_fields` to fields that exist"
    )
    if not fields:
        raise UserError(f"sid_text_fields is empty: no item text to embed; {hint}")
    if feat is None:
        raise UserError(f"no item features loaded (sid_text_fields={fields}); {hint}")
    loaded = [f for f in fields if f in feat_columns(feat)]
    if not loaded:
        raise UserError(f"none of the sid_text_fields {fields} was loaded; {hint}")
    not_loaded = [f for f in fields if f not in loaded]
    if not_loaded:
        logging.getLogger().warning(
            "SID text fields %s are not loaded from %s; using %s", not_loaded, item_file, loaded
        )
    n = dataset.item_num
    rows = item_rows(dataset, feat)
    parts: list[list[str]] = [[] for _ in range(n)]
    for field in loaded:
        ftype = dataset.field2type[field]
        col = feat_column(feat, field)
        for row, item in enumerate(rows):
            value = col[row]
            if ftype == FeatureType.TOKEN:
                text = _token_text(dataset.field2id_token[field][[int(value)]])
            elif ftype == FeatureType.TOKEN_SEQ:
                ids = np.asarray(value, dtype=np.int64)
                text = _token_text(dataset.field2id_token[field][ids[ids > 0]])
            elif ftype == FeatureType.FLOAT:
                text = "" if math.isnan(float(value)) else f"{float(value):g}"
            else:  # float_seq
                text = " ".join(f"{float(v):g}" for v in np.asarray(value).ravel())
            if text:
                parts[item].append(f"{field}: {text}")
    texts = [" ".join(p) for p in parts[1:]]
    n_missing = sum(1 for t in texts if not t)
    if n_missing:
        logging.getLogger().warning(
            "%d of %d items have no text in fields %s of %s; their vectors are zero",
            n_missing, n - 1, loaded, item_file,
        )
    return texts, n_missing
