"""The item <-> semantic-ID table: the one object every model and the dataset share.

``codes[i]`` is the SID of RecBole's internal item id ``i`` (a row of ``m`` ints, position
``j`` in ``[0, vocab_sizes[j])``); row 0 is RecBole's padding item and holds ``-1`` at every
position, so a model that maps code ``c`` to embedding row ``c + 1`` gets row 0 for padding.

Every SID lookup in the project goes through :meth:`SIDTable.lookup`; every "which item is
this SID" through :meth:`SIDTable.items_of`; every constrained-decoding query through
:meth:`SIDTable.allowed_at` (the tokens one slot may take given the slots fixed so far;
:meth:`SIDTable.allowed_tokens` gives every slot's at once) and
:meth:`SIDTable.count_matching`. All are vectorised and work on any device.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from recbole_mdgr.errors import UserError, check_choice

DEDUP_MODES = ("auto", "always", "none")
DEDUP_ORDERS = ("item_id", "popularity")


def check_dedup_mode(mode: str) -> None:
    check_choice("sid_dedup", mode, DEDUP_MODES)


def check_dedup_order(order: str) -> None:
    check_choice("sid_dedup_order", order, DEDUP_ORDERS)


INDEX_CACHE_MB = 2048.0  # default bound of a table's constraint indexes (see SIDTable)


@dataclass
class _Groups:
    """Items grouped by their codes at one subset of positions (CSR layout).

    ``bits[j]`` (built on first use, per free position ``j``): ``[G, ceil(V_j / 64)]`` int64,
    bit ``v`` of group ``g`` set iff some item of the group has token ``v`` at position ``j``.
    A constraint query then costs one hash search and one gather of ``V_j / 64`` words per
    row, whatever the number of items in the group.
    """

    keys: torch.Tensor  # [G] sorted unique hash keys of the projected codes
    starts: torch.Tensor  # [G] first index into ``order`` of each group
    sizes: torch.Tensor  # [G] number of items in each group
    order: torch.Tensor  # [n_real] real item ids sorted by key
    bits: dict  # position j -> [G, words_j] packed allowed-token masks

    def nbytes(self) -> int:
        tensors = (self.keys, self.starts, self.sizes, self.order, *self.bits.values())
        return sum(t.numel() * t.element_size() for t in tensors)


class SIDTable:
    """Semantic IDs of all items, aligned with RecBole's internal item ids.

    The constraint index is one grouping of the items per pattern of fixed positions, built
    on first use. Any-order decoding can meet up to ``2^m`` patterns, and at a million items
    one pattern's index takes up to ~50 MB, so the indexes are kept least-recently-used
    within ``index_cache_mb`` (default :data:`INDEX_CACHE_MB`; the full pattern, which
    ``items_of`` uses, always stays); an evicted pattern is rebuilt when met again.

    Args:
        codes: ``[n_items, m]`` integer codes, row 0 (padding) all ``-1``, every other row
            unique and in range.
        vocab_sizes: size of the vocabulary of each of the ``m`` positions.
        stats: build statistics (utilisation, perplexity, collisions), for logging.
    """

    def __init__(
        self,
        codes: torch.Tensor | np.ndarray,
        vocab_sizes: Sequence[int],
        stats: dict | None = None,
    ):
        codes = torch.as_tensor(np.asarray(codes), dtype=torch.long)
        if codes.dim() != 2 or codes.shape[0] < 2:
            raise ValueError(
                f"SID codes must be [n_items, m] with n_items >= 2, got {tuple(codes.shape)}"
            )
        self.vocab_sizes = [int(v) for v in vocab_sizes]
        if len(self.vocab_sizes) != codes.shape[1]:
            raise ValueError(
                f"{len(self.vocab_sizes)} vocab sizes for {codes.shape[1]} SID positions"
            )
        if not bool((codes[0] == -1).all()):
            raise ValueError("row 0 of the SID codes (padding item) must be all -1")
        real = codes[1:]
        vs = torch.tensor(self.vocab_sizes)
        if bool((real < 0).any()) or bool((real >= vs).any()):
            raise ValueError("SID codes out of range of their vocab sizes")
        self.codes = codes
        self.stats = dict(stats or {})
        # int64 multipliers of a wrap-around hash of any subset of positions; odd and
        # seeded, so two runs hash identically. Lookups verify the codes, so a hash clash
        # can never return a wrong item.
        gen = torch.Generator().manual_seed(0x5EED)
        self._mult = (
            torch.randint(1, 2**62, (self.m,), generator=gen, dtype=torch.long) * 2 + 1
        )
        self._groups: OrderedDict[int, _Groups] = OrderedDict()
        self.index_cache_mb = INDEX_CACHE_MB
        self._used = torch.zeros(self.m, self.max_vocab, dtype=torch.bool)
        for j in range(self.m):
            self._used[j, real[:, j]] = True
        if self.m and len(self._grouping((1 << self.m) - 1).keys) != self.n_items - 1:
            raise ValueError(
                "SID codes are not unique per item: deduplicate before building the table"
            )

    # ------------------------------------------------------------------ basic facts
    @property
    def n_items(self) -> int:
        """Number of rows, padding included (RecBole's ``dataset.item_num``)."""
        return self.codes.shape[0]

    @property
    def m(self) -> int:
        """Number of SID positions (tokens per item)."""
        return self.codes.shape[1]

    @property
    def max_vocab(self) -> int:
        return max(self.vocab_sizes)

    @property
    def device(self) -> torch.device:
        return self.codes.device

    def to(self, device) -> "SIDTable":
        """Move the table (and its lookup indexes) to ``device``, in place."""
        self.codes = self.codes.to(device)
        self._mult = self._mult.to(device)
        self._used = self._used.to(device)
        self._groups = OrderedDict()
        return self

    def state_dict(self) -> dict:
        return {
            "codes": self.codes.cpu(),
            "vocab_sizes": list(self.vocab_sizes),
            "stats": self.stats,
        }

    @classmethod
    def from_state_dict(cls, state: dict) -> "SIDTable":
        return cls(state["codes"], state["vocab_sizes"], state.get("stats"))

    # ------------------------------------------------------------------ lookups
    def lookup(self, item_ids: torch.Tensor) -> torch.Tensor:
        """SIDs of ``item_ids`` (any shape ``[...]``) -> ``[..., m]``; padding -> -1."""
        return self.codes[item_ids.to(self.codes.device)]

    def items_of(self, sids: torch.Tensor) -> torch.Tensor:
        """Item id of each full SID in ``sids [N, m]``; 0 where no item has that SID."""
        full = torch.ones_like(sids, dtype=torch.bool)
        first, size, _ = self._find(sids, full, (1 << self.m) - 1)
        found = size > 0
        groups = self._grouping((1 << self.m) - 1)
        items = torch.zeros(sids.shape[0], dtype=torch.long, device=sids.device)
        items[found] = groups.order[first[found]]
        return items

    def allowed_tokens(self, partial: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
        """Which tokens can still appear at each position of each partial SID.

        Args:
            partial: ``[N, m]`` codes; only entries where ``fixed`` is True are read.
            fixed: ``[N, m]`` bool, the positions already decided (any subset, any order).

        Returns:
            ``[N, m, max_vocab]`` bool: ``out[n, j, v]`` is True iff some item agrees with
            ``partial[n]`` on every fixed position and has token ``v`` at position ``j``.
            At fixed positions this is the fixed token itself (if any item matches).
            A row with no matching item is all False.
        """
        out = torch.zeros(partial.shape[0], self.m, self.max_vocab, dtype=torch.bool,
                          device=partial.device)
        for j in range(self.m):
            out[:, j, : self.vocab_sizes[j]] = self.allowed_at(partial, fixed, j)
        return out

    def allowed_at(self, partial: torch.Tensor, fixed: torch.Tensor, j: int) -> torch.Tensor:
        """Position ``j`` only of :meth:`allowed_tokens`: ``[N, vocab_sizes[j]]`` bool.

        Per row: one search of the row's fixed codes among the item groups of its fixed
        pattern, then one gather of the group's packed token mask; the cost does not grow
        with the number of items that match.
        """
        N, V = partial.shape[0], self.vocab_sizes[j]
        out = torch.zeros(N, V, dtype=torch.bool, device=partial.device)
        fixed = fixed.to(partial.device)
        for pattern, rows in self._rows_by_pattern(fixed):
            if pattern == 0:
                out[rows] = self._used[j, :V].to(out.device)
                continue
            first, size, group = self._find(partial[rows], fixed[rows], pattern)
            hit = size > 0
            if (pattern >> j) & 1:  # a fixed position: its own token, if any item matches
                rows, tokens = rows[hit], partial[rows[hit], j]
                out[rows, tokens] = True
                continue
            words = self._bits(pattern, j)[group[hit]]  # (n, ceil(V / 64))
            bits = (words[:, :, None] >> torch.arange(64, device=words.device)) & 1
            out[rows[hit]] = bits.flatten(1)[:, :V].bool().to(out.device)
        return out

    def count_matching(self, partial: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
        """``[N]`` long: how many items agree with ``partial [N, m]`` on its ``fixed [N, m]``
        positions (any subset; none fixed = every item). One search per row, as in
        :meth:`allowed_at`."""
        out = torch.zeros(partial.shape[0], dtype=torch.long, device=partial.device)
        fixed = fixed.to(partial.device)
        for pattern, rows in self._rows_by_pattern(fixed):
            if pattern == 0:
                out[rows] = self.n_items - 1
                continue
            out[rows] = self._find(partial[rows], fixed[rows], pattern)[1].to(out.device)
        return out

    # ------------------------------------------------------------------ internals
    def _rows_by_pattern(self, fixed: torch.Tensor):
        """``fixed [N, m]`` bool -> ``(pattern, rows)`` per distinct fixed pattern: its bit mask
        (bit j = position j fixed) and the indices of the rows that have it."""
        patterns = (fixed.long() << torch.arange(self.m, device=fixed.device)).sum(1)
        for pattern in torch.unique(patterns).tolist():
            yield pattern, (patterns == pattern).nonzero(as_tuple=True)[0]

    def _hash(self, codes: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Wrap-around int64 hash of the masked positions of ``codes [N, m]``."""
        return ((codes + 1) * self._mult * mask.long()).sum(1)

    def _grouping(self, pattern: int) -> _Groups:
        """Items grouped by their codes at the positions set in bit mask ``pattern``."""
        if pattern in self._groups:
            self._groups.move_to_end(pattern)
        else:
            mask = torch.tensor(
                [(pattern >> j) & 1 for j in range(self.m)], dtype=torch.bool, device=self.device
            )
            real = self.codes[1:]
            keys = self._hash(real, mask.expand_as(real))
            keys, order = torch.sort(keys, stable=True)
            uniq, sizes = torch.unique_consecutive(keys, return_counts=True)
            starts = torch.cumsum(sizes, 0) - sizes
            grp = _Groups(uniq, starts, sizes, order + 1, {})
            # two different projections with one hash would share a group: refuse. Every
            # member is compared with its group's first member.
            group_of = torch.repeat_interleave(torch.arange(len(uniq), device=self.device), sizes)
            projected = real[order][:, mask]
            if not torch.equal(projected, projected[starts[group_of]]):
                raise RuntimeError("SID hash clash: rebuild the table with another seed")
            self._groups[pattern] = grp
            self._trim(keep=pattern)
        return self._groups[pattern]

    def _trim(self, keep: int) -> None:
        """Evict least recently used pattern indexes until they fit ``index_cache_mb``
        (never ``keep``, the one in use, nor the full pattern)."""
        total = sum(g.nbytes() for g in self._groups.values())
        full = (1 << self.m) - 1
        for pattern in list(self._groups):
            if total <= self.index_cache_mb * 2**20:
                break
            if pattern not in (keep, full):
                total -= self._groups.pop(pattern).nbytes()

    def _bits(self, pattern: int, j: int) -> torch.Tensor:
        """Packed allowed-token masks of position ``j`` per group of ``pattern``, cached."""
        grp = self._grouping(pattern)
        if j not in grp.bits:
            V, G = self.vocab_sizes[j], len(grp.keys)
            words = -(-V // 64)
            group_of = torch.repeat_interleave(torch.arange(G, device=self.device), grp.sizes)
            pairs = torch.unique(group_of * V + self.codes[grp.order, j])  # distinct (g, v)
            g, v = pairs // V, pairs % V
            bits = torch.zeros(G * words, dtype=torch.long, device=self.device)
            # distinct powers of two: their sum is their bitwise or (bit 63 wraps, still exact)
            bits.index_add_(0, g * words + v // 64, torch.ones_like(v) << (v % 64))
            grp.bits[j] = bits.view(G, words)
            self._trim(keep=pattern)
        return grp.bits[j]

    def _find(self, partial: torch.Tensor, fixed: torch.Tensor, pattern: int):
        """For rows sharing fixed ``pattern``: (first index into order, group size or 0,
        group index)."""
        grp = self._grouping(pattern)
        partial = partial.to(self.device)
        keys = self._hash(partial.clamp(min=-1), fixed.to(self.device))
        pos = torch.searchsorted(grp.keys, keys).clamp(max=len(grp.keys) - 1)
        hit = grp.keys[pos] == keys
        first = grp.starts[pos]
        # verify: the group's first item really agrees on the fixed positions
        rep = self.codes[grp.order[first]]
        hit &= ((rep == partial) | ~fixed.to(self.device)).all(1)
        size = torch.where(hit, grp.sizes[pos], torch.zeros_like(pos))
        return first, size, pos

    def __repr__(self) -> str:
        return f"SIDTable(n_items={self.n_items}, m={self.m}, vocab_sizes={self.vocab_sizes})"


def collision_groups(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Items grouped by their whole code tuple: each item's group index ``[n]`` and each
    group's size ``[G]`` (``counts[inverse]`` is the size of every item's group)."""
    _, inverse, counts = np.unique(raw, axis=0, return_inverse=True, return_counts=True)
    return inverse.reshape(-1), counts  # numpy 2.0 gives the inverse a trailing axis


def dedup_codes(
    raw: np.ndarray, mode: str = "auto", popularity: np.ndarray | None = None
) -> tuple[np.ndarray, int, dict]:
    """Make every item's SID unique by appending a dedup token where tuples collide.

    Args:
        raw: ``[n_real, m0]`` codes of the real items (no padding row).
        mode: ``auto`` appends a column only when some tuples collide; ``always`` appends it
            in any case (TIGER's convention); ``none`` refuses collisions with an error.
        popularity: ``[n_real]`` training interaction counts, or None. With them the items
            of a group get their tokens by falling popularity (ties by item id), so token 0
            is always the group's most popular item, a meaning every group shares; without
            them, in item-id order, which means nothing.

    Returns:
        (codes ``[n_real, m]``, size of the dedup column's vocabulary or 0, collision stats).
        Items of one collision group get tokens 0, 1, ..., so no item is ever dropped or
        merged.
    """
    check_dedup_mode(mode)
    raw = np.ascontiguousarray(raw, dtype=np.int64)
    inverse, counts = collision_groups(raw)
    group_size = counts[inverse]
    stats = {
        "collision_rate": float((group_size > 1).mean()) if len(raw) else 0.0,
        "max_collision_group": int(counts.max()) if len(raw) else 0,
    }
    collide = stats["max_collision_group"] > 1
    if mode == "none" and collide:
        raise UserError(
            f"{int((group_size > 1).sum())} items share a SID (largest group "
            f"{stats['max_collision_group']}) and sid_dedup is 'none': set sid_dedup to "
            "'auto' or 'always', or use more codewords"
        )
    if mode == "always" or (mode == "auto" and collide):
        if popularity is None:
            order = np.argsort(inverse, kind="stable")
        else:
            if len(popularity) != len(raw):
                raise ValueError(f"popularity has {len(popularity)} entries for {len(raw)} items")
            # by group, then falling popularity, then item id (np.lexsort: last key first)
            order = np.lexsort((np.arange(len(raw)), -np.asarray(popularity), inverse))
        rank = np.empty(len(raw), dtype=np.int64)
        starts = np.cumsum(counts) - counts
        rank[order] = np.arange(len(raw)) - np.repeat(starts, counts)
        return np.concatenate([raw, rank[:, None]], 1), int(counts.max()), stats
    return raw, 0, stats


def codebook_stats(raw: np.ndarray, codebook_sizes: Sequence[int]) -> dict:
    """Per-position utilisation (share of codewords used) and perplexity of code usage."""
    util, ppl = [], []
    for j, k in enumerate(codebook_sizes):
        counts = np.bincount(raw[:, j], minlength=k).astype(np.float64)
        p = counts[counts > 0] / counts.sum()
        util.append(float((counts > 0).sum() / k))
        ppl.append(float(math.exp(-(p * np.log(p)).sum())))
    return {"utilisation": util, "perplexity": ppl}


def build_table(
    raw: np.ndarray, codebook_sizes: Sequence[int], dedup: str = "auto",
    popularity: np.ndarray | None = None, **extra_stats
) -> SIDTable:
    """Raw quantizer codes of items 1..n-1 -> a :class:`SIDTable` with padding row and dedup
    (in order of ``popularity`` within a collision group when given, :func:`dedup_codes`)."""
    raw = np.asarray(raw, dtype=np.int64)
    stats = codebook_stats(raw, codebook_sizes)
    codes, dedup_size, coll = dedup_codes(raw, dedup, popularity)
    stats.update(coll)
    stats.update(extra_stats)
    vocab = list(codebook_sizes) + ([dedup_size] if dedup_size else [])
    pad = -np.ones((1, codes.shape[1]), dtype=np.int64)
    return SIDTable(np.concatenate([pad, codes]), vocab, stats)
