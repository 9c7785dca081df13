"""A ``SequentialDataset`` that owns the item -> SID table and puts SIDs into every batch."""

from __future__ import annotations

import torch

from recbole.data.dataset import SequentialDataset
from recbole.data.interaction import Interaction
from recbole.utils import set_color

SID_SUFFIX = "_sid"
TRAIN_SAMPLE_MODES = ("prefix", "sequence")


class SIDSequentialDataset(SequentialDataset):
    """RecBole's sequential dataset with semantic IDs.

    - The SID table (:class:`~recbole_mdgr.tokenizer.sid_table.SIDTable`) is built (or read
      from its cache) once, when the dataset is built, and shared by every split.
    - ``train_sample_mode``: ``prefix`` keeps RecBole's prefix augmentation (one training
      sample per next-item target; TIGER); ``sequence`` keeps one training sample per user,
      the longest (the whole training sequence = history + target; MADRec, MDGR).
      Validation and test samples are RecBole's, unchanged, in both modes.
    - Every batch ``dataset[index]`` carries ``<field>_sid`` for the item fields it has:
      ``item_id_list_sid`` ``[B, L, m]`` and ``item_id_sid`` ``[B, m]`` (padding = -1).
      This is the one place where batches get their SIDs.
    """

    def __init__(self, config):
        mode = config["train_sample_mode"] or "prefix"
        if mode not in TRAIN_SAMPLE_MODES:
            raise ValueError(
                f"train_sample_mode must be one of {TRAIN_SAMPLE_MODES}, got {mode!r}"
            )
        self.train_sample_mode = mode
        self.sid_table = None
        super().__init__(config)

    def build(self):
        datasets = super().build()
        if self.sid_table is None:
            from recbole_mdgr.tokenizer import build_sid_table

            self.sid_table = build_sid_table(self.config, self)
            if self.sid_table.n_items != self.item_num:
                raise RuntimeError(
                    f"SID table has {self.sid_table.n_items} rows but the dataset has "
                    f"{self.item_num} item ids"
                )
        train = datasets[0]
        before = len(train)
        if self.train_sample_mode == "sequence":
            train = train.copy(train.inter_feat[self._last_sample_per_user(train)])
        self.logger.info(
            set_color("train samples", "pink")
            + f": {len(train)} (train_sample_mode={self.train_sample_mode}; "
            f"{before} prefix samples)"
        )
        datasets = [train] + list(datasets[1:])
        for d in datasets:
            d.sid_table = self.sid_table
        return datasets

    def _last_sample_per_user(self, split) -> torch.Tensor:
        """Row index of each user's latest sample in ``split`` (rows are in time order)."""
        uid = split.inter_feat[self.uid_field]
        rows = torch.arange(len(uid))
        last = torch.full((int(uid.max()) + 1,), -1, dtype=torch.long)
        last.scatter_reduce_(0, uid, rows, reduce="amax")
        return last[last >= 0]

    def __getitem__(self, index, join=True):
        data = super().__getitem__(index, join)
        if self.sid_table is None:
            return data
        item_list_field = self.iid_field + self.config["LIST_SUFFIX"]
        sids = {
            f + SID_SUFFIX: self.sid_table.lookup(data[f])
            for f in (self.iid_field, item_list_field)
            if f in data.interaction
        }
        data.update(Interaction(sids))
        return data
