"""A ``SequentialDataset`` that owns the item -> SID table and puts SIDs into every batch."""

from __future__ import annotations

import numpy as np
import torch

from recbole.data.dataset import SequentialDataset
from recbole.data.interaction import Interaction, cat_interactions
from recbole.utils import set_color

from recbole_mdgr.distributed import rank0_first
from recbole_mdgr.errors import UserError, check_choice, check_int, check_positive_int

SID_SUFFIX = "_sid"
TRAIN_SAMPLE_MODES = ("prefix", "sequence", "windows")


def sample_validation_users(datasets, config, logger):
    """``[train, valid, test]`` with ``valid`` cut to ``valid_users`` users drawn once at random
    (generator seeded with ``seed``, rows kept in their order); unchanged when the key is ``~``
    or at least the number of validation users. Validation decides early stopping only: the
    test split keeps every user."""
    n = config["valid_users"]
    if n is None:
        return datasets
    check_positive_int("valid_users", n, none="every user")
    train, valid, *rest = datasets
    users = valid.inter_feat[valid.uid_field]
    every = users.unique()
    if n >= len(every):
        logger.info(set_color("valid_users", "pink")
                    + f" {n}: every one of the {len(every)} validation users is kept")
        return datasets
    generator = torch.Generator().manual_seed(int(config["seed"] or 0))
    chosen = every[torch.randperm(len(every), generator=generator)[:n]]
    rows = torch.isin(users, chosen).nonzero().flatten()
    logger.info(set_color("valid_users", "pink") + f" {n}: validation on {n} of {len(every)} "
                f"users ({len(rows)} samples); the test split keeps all of them")
    return [train, valid.copy(valid.inter_feat[rows]), *rest]


def training_pairs(train) -> np.ndarray:
    """``[N, 2]`` int64: the distinct ``(user, item)`` pairs of a training split of prefix
    samples, sorted: what ``sid_vector_source: interactions`` builds item vectors from.
    Every training item but a user's first is some sample's target; the first opens the
    history of the user's earliest sample. Validation and test targets are not in it."""
    feat = train.inter_feat
    users = feat[train.uid_field].numpy().astype(np.int64)
    first = feat[train.iid_field + train.config["LIST_SUFFIX"]][:, 0].numpy()
    items = np.concatenate([feat[train.iid_field].numpy(), first]).astype(np.int64)
    n = int(train.item_num)
    keys = np.unique(np.concatenate([users, users]) * n + items)
    pairs = np.stack([keys // n, keys % n], 1)
    return pairs[pairs[:, 1] > 0]  # padding: a sample with an empty history


class ValidSampledSequentialDataset(SequentialDataset):
    """RecBole's ``SequentialDataset`` with ``valid_users`` (its built-in sequential models)."""

    def build(self):
        return sample_validation_users(super().build(), self.config, self.logger)


def check_sample_mode(mode: str | None) -> str:
    """``train_sample_mode`` (``~`` = prefix), refused by name when unknown."""
    return check_choice("train_sample_mode", mode, TRAIN_SAMPLE_MODES, "prefix")


def check_train_drop(ratio, seed) -> float:
    """``train_drop_ratio`` (``~`` = 0) as a float in [0, 1), and ``train_drop_seed`` an
    integer >= 0 (``~`` = 0); refused by name otherwise."""
    ratio = 0.0 if ratio is None else ratio
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 <= ratio < 1:
        raise UserError(f"train_drop_ratio must be in [0, 1), got {ratio!r}")
    if seed is not None:
        check_int("train_drop_seed", seed, 0)
    return float(ratio)


class SIDSequentialDataset(SequentialDataset):
    """RecBole's sequential dataset with semantic IDs.

    - The SID table (:class:`~recbole_mdgr.tokenizer.sid_table.SIDTable`) is built (or read
      from its cache) once, when the dataset is built, and shared by every split. It is
      built after the split, so that ``sid_vector_source: interactions`` reads the training
      split only (:func:`training_pairs`).
    - ``train_sample_mode`` (validation and test samples are RecBole's in every mode):

      - ``prefix``: RecBole's prefix augmentation, one training sample per next-item target
        (TIGER). A sample's history is the last ``MAX_ITEM_LIST_LENGTH`` items before it.
      - ``sequence``: one sample per user, the one whose target is the user's latest training
        item, so its history is the longest: the last ``MAX_ITEM_LIST_LENGTH`` + 1 training
        items. Items before that window are not trained on (on ml-100k with length 50 that
        is 60% of the training interactions); ``windows`` trains on them.
      - ``windows``: the whole training sequence cut into non-overlapping windows of
        ``MAX_ITEM_LIST_LENGTH`` + 1 items, counted back from the latest (the first window
        may be shorter): every training interaction is in exactly one sample.

      Samples are chosen by their target's time (then RecBole's row order), not by where
      rows happen to sit.
    - ``train_drop_ratio`` (the MADRec paper's data-constrained protocol): before samples are
      made, that share of each user's training items (all but the latest two, the validation
      and test targets) is dropped at random (``train_drop_seed``), keeping at least 3. The
      validation and test targets are unchanged; their histories are the reduced sequences.
    - ``next_k`` = k > 1 (the MADRec paper's leave-two-out, for any k): a user's last ``k``
      items are the test targets and the ``k`` before them the validation targets; training
      samples are those whose target comes before both. An evaluation sample's history is
      everything before its first target, and it carries its ``k`` targets in time order as
      ``next_items`` ``[B, k]`` (its ``item_id`` is the first). See :mod:`recbole_mdgr.next_k`.
    - ``valid_users``: validation on a fixed random sample of users
      (:func:`sample_validation_users`).
    - Every batch ``dataset[index]`` carries ``<field>_sid`` for the item fields it has:
      ``item_id_list_sid`` ``[B, L, m]`` and ``item_id_sid`` ``[B, m]`` (padding = -1).
      This is where batches get their SIDs (a model that extends a history at decode
      time, ``GenerativeRecommender.extend_history``, looks up the new items' SIDs itself).
    """

    def __init__(self, config):
        self.train_sample_mode = check_sample_mode(config["train_sample_mode"])
        check_positive_int("next_k", config["next_k"], none="1, the next item")
        self.next_k = config["next_k"] or 1
        self.sid_table = None
        self.sid_train_pairs = None  # (user, item) pairs of the training split, set by build()
        super().__init__(config)

    def build(self):
        datasets = super().build()
        if self.next_k > 1:
            datasets = self._leave_k_out(datasets, self.next_k)
        train = datasets[0]
        if self.sid_table is None:
            from recbole_mdgr.tokenizer import build_sid_table

            self.sid_train_pairs = training_pairs(train)
            # one build per run: the other processes read the cache rank 0 wrote
            self.sid_table = rank0_first(lambda: build_sid_table(self.config, self))
            if self.sid_table.n_items != self.item_num:
                raise RuntimeError(
                    f"SID table has {self.sid_table.n_items} rows but the dataset has "
                    f"{self.item_num} item ids"
                )
        before = len(train)
        if self.train_sample_mode != "prefix":
            rank = self._rank_from_latest(train)
            if self.train_sample_mode == "windows":
                rank = rank % (self.max_item_list_len + 1)
            keep = (rank == 0).nonzero().flatten()
            train = train.copy(train.inter_feat[keep])
        self.logger.info(
            set_color("train samples", "pink")
            + f": {len(train)} (train_sample_mode={self.train_sample_mode}; "
            f"{before} prefix samples)"
        )
        datasets = sample_validation_users([train] + list(datasets[1:]), self.config,
                                           self.logger)
        for d in datasets:
            d.sid_table, d.sid_train_pairs = self.sid_table, self.sid_train_pairs
        return datasets

    def _leave_k_out(self, splits, k: int):
        """RecBole's leave-one-out splits -> leave-``k``-out ones (class doc)."""
        from recbole_mdgr.next_k import NEXT_ITEMS

        whole = splits[0].copy(cat_interactions([s.inter_feat for s in splits]))
        feat = whole.inter_feat
        order, rank = self._latest_order(whole)
        position = torch.empty_like(order)
        position[order] = torch.arange(len(order))
        in_time_order = feat[self.iid_field][order]
        out = [whole.copy(feat[(rank >= 2 * k).nonzero().flatten()])]
        for first in (2 * k - 1, k - 1):  # validation, test: the rank of the first target
            rows = (rank == first).nonzero().flatten()
            split = feat[rows]
            split.update(Interaction(
                {NEXT_ITEMS: in_time_order[position[rows][:, None] + torch.arange(k)]}))
            out.append(whole.copy(split))
        self.logger.info(set_color("next_k", "pink") + f" {k}: leave-{k}-out split, "
                         f"{len(out[1])} validation and {len(out[2])} test users")
        return out

    def item_vectors(self):
        """``[item_num, d]`` float32: the vectors this dataset's SIDs are built from (the
        same ``sid_*`` source), row 0 (padding) zero. Computed on each call (dense retrieval
        asks once per model)."""
        from recbole_mdgr.tokenizer import item_vectors

        return item_vectors(self.config, self)

    def data_augmentation(self):
        ratio = check_train_drop(self.config["train_drop_ratio"], self.config["train_drop_seed"])
        if ratio:
            self._drop_training_items(ratio, self.config["train_drop_seed"] or 0)
        super().data_augmentation()

    def _drop_training_items(self, ratio: float, seed: int) -> None:
        feat = self.inter_feat
        uid = feat[self.uid_field]
        rank = self._rank_from_latest(self)
        train = rank >= 2 * self.next_k  # the others are validation and test targets
        n_train = torch.bincount(uid[train], minlength=int(uid.max()) + 1)
        n_drop = torch.minimum(torch.round(ratio * n_train.double()).long(),
                               (n_train - 3).clamp(min=0))
        # each user's training rows in a random order; the first n_drop of them go
        priority = torch.rand(len(uid), generator=torch.Generator().manual_seed(seed))
        priority[~train] = 2.0  # never dropped
        order = torch.argsort(priority, stable=True)
        order = order[torch.argsort(uid[order], stable=True)]
        rows = torch.bincount(uid, minlength=len(n_train))
        starts = rows.cumsum(0) - rows
        position = torch.empty_like(order)
        position[order] = torch.arange(len(uid)) - starts[uid[order]]
        keep = position >= n_drop[uid]
        self.inter_feat = feat[keep.nonzero().flatten()]
        self.logger.info(set_color("train_drop_ratio", "pink") + f" {ratio}: dropped "
                         f"{int((~keep).sum())} of {int(train.sum())} training interactions "
                         f"(train_drop_seed {seed}; at least 3 kept per user)")

    def _rank_from_latest(self, split) -> torch.Tensor:
        """Per row: how many of its user's samples have a later target (0 = the latest).

        Ordered by the target's time when the split has a time field, ties (and no time
        field) by row order.
        """
        return self._latest_order(split)[1]

    def _latest_order(self, split) -> tuple[torch.Tensor, torch.Tensor]:
        """(rows sorted by user, then target time; :meth:`_rank_from_latest` of each row)."""
        feat = split.inter_feat
        uid = feat[self.uid_field]
        order = torch.arange(len(uid))
        if self.time_field is not None and self.time_field in feat:
            order = torch.argsort(feat[self.time_field], stable=True)
        order = order[torch.argsort(uid[order], stable=True)]  # by user, then time
        ends = torch.cumsum(torch.bincount(uid[order]), 0)  # one past each user's last row
        rank = torch.empty_like(order)
        rank[order] = ends[uid[order]] - 1 - torch.arange(len(uid))
        return order, rank

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
