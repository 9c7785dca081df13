"""Beam search over semantic IDs, shared by every generative model.

Two reusable pieces:

* :func:`beam_step` -- one expansion: running scores ``[B, W]`` plus candidate log-probs
  ``[B, W, V]`` -> the best ``width`` (score, parent, candidate) per user. ``V`` is whatever
  the caller enumerates: the next token of a left-to-right decoder (TIGER), or a flattened
  set of joint fillings of several positions (MADRec / MDGR, any order).
* :func:`finish_beams` -- finished SIDs ``[B, W, m]`` -> top-``k`` items: SIDs that match no
  item are dropped and counted, duplicate items keep their best beam, lists are padded with
  item 0 and score ``-inf``.

Scores are summed log-probabilities in float32 (float64 if given), never float16. A beam
whose score is ``-inf`` is dead: it never becomes a result and is not counted as generated.
Constraints are applied by the caller setting invalid candidates to ``-inf`` *after* the
log-softmax, so a beam's score is the model's own log-likelihood of its SID (the same number
exact scoring gives) rather than a renormalised one.

:func:`left_to_right_beam_search` drives a decoder through ``m`` steps (NFE = m), all
``B * W`` beams of a batch in one call per step, with the valid-prefix constraint from
:meth:`SIDTable.allowed_tokens`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from recbole_mdgr.tokenizer.sid_table import SIDTable

NEG_INF = float("-inf")


def beam_step(
    scores: torch.Tensor, log_probs: torch.Tensor, width: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Keep the ``width`` best one-candidate expansions of each user's beams.

    Args:
        scores: ``[B, W]`` running log-probabilities (``-inf`` = dead beam).
        log_probs: ``[B, W, V]`` log-probability of each candidate extension of each beam,
            ``-inf`` where a constraint forbids it.
        width: number of beams to keep.

    Returns:
        (scores ``[B, width]``, parent beam ``[B, width]`` in ``[0, W)``, candidate
        ``[B, width]`` in ``[0, V)``), best first. When fewer than ``width`` expansions exist
        the tail is padded with dead beams (score ``-inf``, parent 0, candidate 0).
    """
    B, W, V = log_probs.shape
    dtype = torch.promote_types(torch.promote_types(scores.dtype, log_probs.dtype), torch.float32)
    total = (scores.to(dtype)[:, :, None] + log_probs.to(dtype)).view(B, W * V)
    top, idx = total.topk(min(width, W * V), dim=1)  # (B, width'), sorted
    if top.shape[1] < width:
        pad = width - top.shape[1]
        top = torch.cat([top, top.new_full((B, pad), NEG_INF)], 1)
        idx = torch.cat([idx, idx.new_zeros(B, pad)], 1)
    return top, idx // V, idx % V


def gather_beams(x: torch.Tensor, parent: torch.Tensor) -> torch.Tensor:
    """Rows of ``x`` ``[B, W, ...]`` picked by ``parent`` ``[B, W']`` -> ``[B, W', ...]``."""
    index = parent.view(*parent.shape, *([1] * (x.dim() - 2))).expand(*parent.shape, *x.shape[2:])
    return x.gather(1, index)


def top_k_items(
    items: torch.Tensor, scores: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Best ``k`` of ``items`` ``[B, W]`` by ``scores`` ``[B, W]``; pads with item 0 / ``-inf``."""
    B, W = scores.shape
    top, idx = scores.topk(min(k, W), dim=1)
    picked = items.gather(1, idx).masked_fill(top == NEG_INF, 0)
    if W < k:
        picked = torch.cat([picked, picked.new_zeros(B, k - W)], 1)
        top = torch.cat([top, top.new_full((B, k - W), NEG_INF)], 1)
    return picked, top


def finish_beams(
    sid_table: SIDTable, sids: torch.Tensor, scores: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor, int, int]:
    """Finished beams -> each user's top-``k`` items.

    Args:
        sids: ``[B, W, m]`` complete SIDs; scores: ``[B, W]`` (``-inf`` = dead beam).

    Returns:
        (items ``[B, k]`` long, scores ``[B, k]``, generated, invalid): best first, padded
        with item 0 / ``-inf``; ``generated`` counts live beams, ``invalid`` those whose SID
        matches no item. An item reached by several beams (possible in any-order decoding)
        keeps only its best score.
    """
    B, W, m = sids.shape
    items = sid_table.items_of(sids.reshape(B * W, m)).view(B, W)
    alive = scores > NEG_INF
    keep = alive & (items > 0)
    generated, invalid = int(alive.sum()), int((alive & ~keep).sum())
    # duplicates: an item already held by a better beam of the same user. Sorting by score,
    # then stably by item, puts each item's beams together best first: O(B W log W) time and
    # O(B W) memory.
    scores, order = scores.masked_fill(~keep, NEG_INF).sort(dim=1, descending=True)
    items = items.gather(1, order)
    by_item, where = items.sort(dim=1, stable=True)
    repeat = torch.zeros_like(by_item, dtype=torch.bool)
    repeat[:, 1:] = by_item[:, 1:] == by_item[:, :-1]
    dup = torch.zeros_like(repeat).scatter_(1, where, repeat)  # back to score order
    scores = scores.masked_fill(dup, NEG_INF)
    out_items, out_scores = top_k_items(items, scores, k)
    return out_items, out_scores, generated, invalid


def allowed_next(sid_table: SIDTable, prefix: torch.Tensor) -> torch.Tensor:
    """``[N, j]`` SID prefixes -> ``[N, vocab_sizes[j]]`` bool: tokens some item continues with."""
    N, j = prefix.shape
    partial = prefix.new_full((N, sid_table.m), -1)
    partial[:, :j] = prefix
    fixed = torch.zeros(N, sid_table.m, dtype=torch.bool, device=prefix.device)
    fixed[:, :j] = True
    return sid_table.allowed_at(partial, fixed, j)


def left_to_right_beam_search(
    step: Callable[[torch.Tensor | None, torch.Tensor | None], torch.Tensor],
    sid_table: SIDTable,
    batch_size: int,
    width: int,
    constrained: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Autoregressive beam search over SID positions 0..m-1: exactly ``m`` calls of ``step``.

    Args:
        step: ``step(tokens, parents) -> log_probs``. At call ``j`` the decoder holds ``N =
            B * W_j`` rows (user-major, row = b * W_j + w). ``tokens`` ``[N]`` are the codes
            chosen at position ``j - 1`` and ``parents`` ``[N]`` the row of the previous call
            each new row extends (the decoder reorders its cache by it); both are ``None`` at
            ``j = 0`` (one BOS row per user). Returns ``[N, vocab_sizes[j]]`` log-probs.
        width: beam width W (beams per user).
        constrained: mask tokens that lead to no item's SID (valid-prefix constraint).

    Returns:
        (sids ``[B, W', m]``, scores ``[B, W']``), best first, W' <= width; dead beams
        (score ``-inf``) only where a user has fewer than W' valid ones.
    """
    B = batch_size
    device = sid_table.device
    scores = torch.zeros(B, 1, device=device)  # (B, W_j): one empty beam per user
    sids = torch.zeros(B, 1, 0, dtype=torch.long, device=device)  # (B, W_j, j)
    tokens = parents = None
    for j in range(sid_table.m):
        W_j = scores.shape[1]
        log_probs = step(tokens, parents).view(B, W_j, -1)  # (B, W_j, V_j)
        if constrained:
            ok = allowed_next(sid_table, sids.reshape(B * W_j, j)).view(B, W_j, -1)
            log_probs = log_probs.masked_fill(~ok, NEG_INF)
        scores, parent, token = beam_step(scores, log_probs, width)
        live = max(int((scores > NEG_INF).sum(1).max()), 1)  # drop all-dead tail columns
        scores, parent, token = scores[:, :live], parent[:, :live], token[:, :live]
        sids = torch.cat([gather_beams(sids, parent), token[:, :, None]], 2)
        parents = (parent + W_j * torch.arange(B, device=device)[:, None]).view(-1)
        tokens = token.reshape(-1)
    return sids, scores
