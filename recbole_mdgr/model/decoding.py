"""Beam search over semantic IDs, shared by every generative model.

Two reusable pieces:

* :func:`beam_step` -- one expansion: running scores ``[B, W]`` plus candidate log-probs
  ``[B, W, V]`` -> the best ``width`` (score, parent, candidate) per user. ``V`` is whatever
  the caller enumerates: the next token of a left-to-right decoder (TIGER), or a flattened
  set of joint fillings of several positions (MADRec / MDGR, any order).
* :func:`finish_beams` -- finished SIDs ``[B, W, m]`` -> top-``k`` items: SIDs that match no
  item are dropped and counted, duplicate items keep their best beam (:func:`best_unique`,
  which next-k sessions share), lists are padded with item 0 and score ``-inf``.

Scores are summed log-probabilities in float32 (float64 if given), never float16. A beam
whose score is ``-inf`` is dead: it never becomes a result and is not counted as generated.
Constraints are applied by the caller setting invalid candidates to ``-inf`` *after* the
log-softmax, so a beam's score is the model's own log-likelihood of its SID (the same number
exact scoring gives) rather than a renormalised one.

:func:`left_to_right_beam_search` drives a decoder through ``m`` steps (NFE = m), all
``B * W`` beams of a batch in one call per step, with the valid-prefix constraint from
:meth:`SIDTable.allowed_at`.

:func:`masked_beam_search` drives a masked (any-order) model: each step is one call for all
beams of all users, each beam commits the slots its ``order`` picks, a ``schedule`` says how
many per step (NFE = its length), and the constraint covers any set of fixed slots. It
decodes one item's ``m`` slots or the ``k * m`` slots of the next ``k`` items jointly.

Both drivers take ``banned`` SIDs (``exclude_history``: the user's own history): a candidate
after which an item can only become a banned one is ``-inf`` before the beams are pruned,
so the ``width`` kept all end in allowed items (:func:`completes_banned`).
:func:`drop_items` does the same for a ranked item list (dense retrieval), and
:func:`ban_scored_items` for a score over every item (TIGER's exact scoring, RecBole's own
models through :mod:`recbole_mdgr.history`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from recbole_mdgr.errors import UserError
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


def best_unique(keys: torch.Tensor, scores: torch.Tensor, k: int
                ) -> tuple[torch.Tensor, torch.Tensor, int, int]:
    """Each user's best ``k`` beams with distinct keys.

    Args:
        keys: ``[B, W]`` what a beam produced (an item id, a session id); ``<= 0`` = invalid.
        scores: ``[B, W]`` (``-inf`` = dead beam).

    Returns:
        (index ``[B, k]`` into ``W``, scores ``[B, k]``, generated, invalid): best first, the
        tail padded with index 0 / ``-inf``; ``generated`` counts live beams, ``invalid``
        those with an invalid key. A key reached by several beams (possible in any-order
        decoding) keeps only its best score.
    """
    alive = scores > NEG_INF
    keep = alive & (keys > 0)
    generated, invalid = int(alive.sum()), int((alive & ~keep).sum())
    # duplicates: a key already held by a better beam of the same user. Sorting by score,
    # then stably by key, puts each key's beams together best first: O(B W log W) time and
    # O(B W) memory.
    scores, order = scores.masked_fill(~keep, NEG_INF).sort(dim=1, descending=True)
    by_key, where = keys.gather(1, order).sort(dim=1, stable=True)
    repeat = torch.zeros_like(by_key, dtype=torch.bool)
    repeat[:, 1:] = by_key[:, 1:] == by_key[:, :-1]
    dup = torch.zeros_like(repeat).scatter_(1, where, repeat)  # back to score order
    scores = scores.masked_fill(dup, NEG_INF)
    index, top = top_k_items(order, scores, k)
    return index, top, generated, invalid


def finish_beams(
    sid_table: SIDTable, sids: torch.Tensor, scores: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor, int, int]:
    """Finished beams -> each user's top-``k`` items.

    Args:
        sids: ``[B, W, m]`` complete SIDs; scores: ``[B, W]`` (``-inf`` = dead beam).

    Returns:
        (items ``[B, k]`` long, scores ``[B, k]``, generated, invalid): best first, padded
        with item 0 / ``-inf``; ``generated`` counts live beams, ``invalid`` those whose SID
        matches no item. An item reached by several beams keeps only its best score
        (:func:`best_unique`).
    """
    B, W, m = sids.shape
    items = sid_table.items_of(sids.reshape(B * W, m)).view(B, W)
    index, top, generated, invalid = best_unique(items, scores, k)
    return items.gather(1, index).masked_fill(top == NEG_INF, 0), top, generated, invalid


def allowed_next(sid_table: SIDTable, prefix: torch.Tensor) -> torch.Tensor:
    """``[N, j]`` SID prefixes -> ``[N, vocab_sizes[j]]`` bool: tokens some item continues with."""
    N, j = prefix.shape
    partial = prefix.new_full((N, sid_table.m), -1)
    partial[:, :j] = prefix
    fixed = torch.zeros(N, sid_table.m, dtype=torch.bool, device=prefix.device)
    fixed[:, :j] = True
    return sid_table.allowed_at(partial, fixed, j)


def distinct_sids(banned: torch.Tensor) -> torch.Tensor:
    """``banned`` ``[B, L, m]`` with each user's repeated SIDs (an item seen twice) set to
    ``-1``, which bans nothing: :func:`completes_banned` counts distinct items."""
    same = (banned[:, :, None] == banned[:, None, :]).all(-1)  # (B, L, L)
    earlier = torch.ones_like(same[0]).tril(-1)  # l2 < l
    repeat = (same & earlier).any(-1)  # (B, L)
    return banned.masked_fill(repeat[:, :, None], -1)


def completes_banned(sid_table: SIDTable, own: torch.Tensor, slot: torch.Tensor,
                     banned: torch.Tensor, vocab: int) -> torch.Tensor:
    """Tokens after which a partial SID can only become a banned item.

    Args:
        own: ``[N, m]`` one item's partial SID per row, ``-1`` at open slots; the row
            commits ``slot`` ``[N]`` (an open slot) now.
        banned: ``[N, L, m]`` distinct SIDs (:func:`distinct_sids`) the row must not
            produce; a SID with a negative code (padding) bans nothing.
        vocab: width of the returned mask.

    Returns:
        ``[N, vocab]`` bool: True where, with that token at ``slot``, every item the SID can
        still become is banned: at the last open slot, the token completing a banned SID;
        earlier, when the token leaves only banned items reachable (with amazon-beauty's
        dedup token a SID usually names its item one slot before the end), so a search
        spends no beam on a prefix that can only end in a banned item.
    """
    N, L, m = banned.shape
    out = torch.zeros(N, vocab, dtype=torch.bool, device=own.device)
    valid = (banned >= 0).all(-1)  # (N, L)
    agrees = ((banned == own[:, None]) | (own[:, None] < 0)).all(-1) & valid
    n, h = agrees.nonzero(as_tuple=True)  # (row, banned SID) pairs: candidate token = its code
    if len(n) == 0:
        return out
    token = banned[n, h, slot[n]]
    after = own[n].clone()
    after[torch.arange(len(n), device=own.device), slot[n]] = token
    reachable = sid_table.count_matching(after, after >= 0)
    few = (reachable > 0) & (reachable <= L)  # could all be banned
    n, token, after, reachable = n[few], token[few], after[few], reachable[few]
    still = ((banned[n] == after[:, None]) | (after[:, None] < 0)).all(-1) & valid[n]  # (P, L)
    only_banned = still.sum(1) >= reachable
    out[n[only_banned], token[only_banned]] = True
    return out


def ban_scored_items(scores: torch.Tensor, banned: torch.Tensor) -> torch.Tensor:
    """``scores`` ``[B, n_items]`` (column = item id) with the ``banned`` ``[B, L]`` items set
    to ``-inf`` in place; item 0 (padding in ``banned``) is never a real item."""
    return scores.scatter_(1, banned.to(scores.device), NEG_INF)


def drop_items(items: torch.Tensor, scores: torch.Tensor, banned: torch.Tensor, k: int
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Best ``k`` of ``items`` ``[B, W]`` by ``scores`` once the ``banned`` ``[B, L]`` items
    (``<= 0``: none) are removed; padded with item 0 / ``-inf`` (:func:`top_k_items`)."""
    hit = ((items[:, :, None] == banned[:, None, :]) & (banned[:, None, :] > 0)).any(-1)
    return top_k_items(items, scores.masked_fill(hit, NEG_INF), k)


def left_to_right_beam_search(
    step: Callable[[torch.Tensor | None, torch.Tensor | None], torch.Tensor],
    sid_table: SIDTable,
    batch_size: int,
    width: int,
    constrained: bool = True,
    banned: torch.Tensor | None = None,
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
        banned: ``[B, L, m]`` SIDs each user must not get (padding ``-1``); a token is
            masked, before pruning, once it leaves only banned items reachable
            (:func:`completes_banned`).

    Returns:
        (sids ``[B, W', m]``, scores ``[B, W']``), best first, W' <= width; dead beams
        (score ``-inf``) only where a user has fewer than W' valid ones.
    """
    B = batch_size
    device = sid_table.device
    banned = None if banned is None else distinct_sids(banned.to(device))
    scores = torch.zeros(B, 1, device=device)  # (B, W_j): one empty beam per user
    sids = torch.zeros(B, 1, 0, dtype=torch.long, device=device)  # (B, W_j, j)
    tokens = parents = None
    for j in range(sid_table.m):
        W_j = scores.shape[1]
        log_probs = step(tokens, parents).view(B, W_j, -1)  # (B, W_j, V_j)
        if constrained:
            ok = allowed_next(sid_table, sids.reshape(B * W_j, j)).view(B, W_j, -1)
            log_probs = log_probs.masked_fill(~ok, NEG_INF)
        if banned is not None:
            own = torch.cat([sids.reshape(B * W_j, j),
                             sids.new_full((B * W_j, sid_table.m - j), -1)], 1)
            no = completes_banned(sid_table, own, own.new_full((B * W_j,), j),
                                  banned.repeat_interleave(W_j, 0), log_probs.shape[-1])
            log_probs = log_probs.masked_fill(no.view(B, W_j, -1), NEG_INF)
        scores, parent, token = beam_step(scores, log_probs, width)
        live = max(int((scores > NEG_INF).sum(1).max()), 1)  # drop all-dead tail columns
        scores, parent, token = scores[:, :live], parent[:, :live], token[:, :live]
        sids = torch.cat([gather_beams(sids, parent), token[:, :, None]], 2)
        parents = (parent + W_j * torch.arange(B, device=device)[:, None]).view(-1)
        tokens = token.reshape(-1)
    return sids, scores


UNMASK_ORDERS = ("greedy", "left_to_right", "random")


def nfe_schedule(m: int, nfe: int) -> list[int]:
    """Slots committed per step for ``nfe`` steps over ``m`` slots: as even as possible,
    larger steps last (``m=4, nfe=3 -> [1, 1, 2]``): the early, more uncertain commits are
    made one at a time, with the most context."""
    if not 1 <= nfe <= m:
        raise UserError(f"the number of decoding steps must be in 1..{m}, got {nfe}")
    return [m // nfe + (i >= nfe - m % nfe) for i in range(nfe)]


def choose_slots(log_probs: torch.Tensor, masked: torch.Tensor, k: int, order: str,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """The ``k`` masked slots each row commits next, in commit order.

    Args:
        log_probs: ``[..., m, V]`` per-slot log-probabilities.
        masked: ``[..., m]`` bool, the slots still masked (at least ``k`` per row).
        order: ``greedy``: largest margin between the top-1 and top-2 probability first (the
            paper's uncertainty order); ``left_to_right``: lowest slot first; ``random``:
            uniformly (``generator`` seeds it).

    Returns:
        ``[..., k]`` slot indices.
    """
    if order == "greedy":
        top = log_probs.topk(2, dim=-1).values.exp()  # [..., m, 2]
        key = top[..., 0] - top[..., 1]
    elif order == "left_to_right":
        key = -torch.arange(masked.shape[-1], device=masked.device, dtype=torch.float)
        key = key.expand(masked.shape)
    elif order == "random":
        key = torch.rand(masked.shape, generator=generator,
                         device=generator.device if generator is not None else masked.device)
        key = key.to(masked.device)
    else:
        raise UserError(f"unmasking order must be one of {UNMASK_ORDERS}, got {order!r}")
    return key.masked_fill(~masked, float("-inf")).topk(k, dim=-1).indices


def _allowed_at_slots(sid_table: SIDTable, partial: torch.Tensor, slots: torch.Tensor,
                      width: int) -> torch.Tensor:
    """``[N, n * m]`` partial SIDs of ``n`` items (-1 = masked) -> ``[N, width]`` bool:
    tokens allowed at each row's own slot ``slots[n]``, given the fixed slots of the item
    that slot belongs to (each item is constrained to some item's SID on its own)."""
    N, m = len(partial), sid_table.m
    item, position = slots // m, slots % m
    own = partial.view(N, -1, m)[torch.arange(N, device=partial.device), item]  # (N, m)
    out = torch.zeros(N, width, dtype=torch.bool, device=partial.device)
    fixed = own >= 0
    for j in torch.unique(position).tolist():
        rows = (position == j).nonzero(as_tuple=True)[0]
        out[rows, : sid_table.vocab_sizes[j]] = sid_table.allowed_at(own[rows], fixed[rows], j)
    return out


def masked_beam_search(
    step: Callable[[torch.Tensor], torch.Tensor],
    sid_table: SIDTable,
    batch_size: int,
    width: int,
    schedule: list[int],
    order: str = "greedy",
    constrained: bool = True,
    generator: torch.Generator | None = None,
    n_items: int = 1,
    banned: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Any-order beam search over the ``S = n_items * m`` SID slots of the next
    ``n_items`` items: ``len(schedule)`` calls of ``step`` (the NFE), each for all beams of
    all users at once.

    Args:
        step: ``step(partial) -> log_probs``: ``partial`` ``[N, S]`` codes with ``-1`` at
            masked slots (item ``i``'s slots at ``i * m ... i * m + m - 1``), ``N = B * W_s``
            rows user-major (row = b * W_s + w; ``W_s = 1`` at the first call); returns
            ``[N, S, V]`` log-probabilities of every slot (each over its own vocabulary,
            ``-inf`` beyond it; only masked slots are read).
        schedule: slots committed per call, summing to ``S`` (``[1] * m``, ``[2, 2]``,
            ``[4]``, ...). With several items a call may commit slots of any of them.
        order: which masked slots a beam commits (:func:`choose_slots`); each beam
            chooses its own, from its own log-probs.
        constrained: only tokens that keep some item's SID reachable, given the slots
            of the same item already fixed (any subset), are allowed.
        banned: ``[B, L, m]`` SIDs no item of a user's result may be (padding ``-1``): a
            token is masked, before pruning, once it leaves one of the beam's items only
            banned items to become (:func:`completes_banned`).

    Slots committed in one call use the paper's conditional-independence approximation
    (§3.2): the joint log-probability of their tokens is the sum of their log-probs from
    that call. The joint best ``width`` are searched slot by slot inside the call, each
    partial expansion ranked by its score plus the best log-prob of the call's slots still
    to commit, so no combination is enumerated and (without the constraint) the result is
    exactly the joint top-``width``.

    Returns:
        (sids ``[B, W', S]``, scores ``[B, W']``) best first, W' <= width; dead beams
        (score ``-inf``) only where a user has fewer than W' valid SIDs.
    """
    B, m, device = batch_size, n_items * sid_table.m, sid_table.device
    if sum(schedule) != m or min(schedule) < 1:
        raise ValueError(f"a decoding schedule must commit the {m} SID slots, got {schedule}")
    banned = None if banned is None else distinct_sids(banned.to(device))
    partial = torch.full((B, 1, m), -1, dtype=torch.long, device=device)
    scores = torch.zeros(B, 1, device=device)
    for k in schedule:
        W_s = scores.shape[1]
        log_probs = step(partial.view(B * W_s, m)).view(B, W_s, m, -1).float()
        slots = choose_slots(log_probs, partial < 0, k, order, generator)  # (B, W_s, k)
        best = log_probs.amax(-1)  # (B, W_s, m): optimistic value of a slot still to commit
        for i in range(k):
            W_s, V = scores.shape[1], log_probs.shape[-1]
            j = slots[:, :, i]  # (B, W_s)
            lp = log_probs.gather(2, j[:, :, None, None].expand(B, W_s, 1, V))[:, :, 0]
            if constrained:
                ok = _allowed_at_slots(sid_table, partial.view(B * W_s, m), j.reshape(-1), V)
                lp = lp.masked_fill(~ok.view(B, W_s, V), NEG_INF)
            if banned is not None:
                rows = torch.arange(B * W_s, device=device)
                slot = j.reshape(-1)
                own = partial.view(B * W_s, n_items, -1)[rows, slot // sid_table.m]
                no = completes_banned(sid_table, own, slot % sid_table.m,
                                      banned.repeat_interleave(W_s, 0), V)
                lp = lp.masked_fill(no.view(B, W_s, V), NEG_INF)
            ahead = best.gather(2, slots[:, :, i + 1 :]).sum(-1)  # (B, W_s)
            ranked, parent, token = beam_step(scores + ahead, lp, width)
            scores = ranked - ahead.gather(1, parent)
            token = token.masked_fill(scores == NEG_INF, 0)  # dead beams: any in-vocab code
            live = max(int((scores > NEG_INF).sum(1).max()), 1)
            scores, parent, token = scores[:, :live], parent[:, :live], token[:, :live]
            partial, log_probs, slots, best = (gather_beams(x, parent)
                                               for x in (partial, log_probs, slots, best))
            partial.scatter_(2, slots[:, :, i : i + 1], token[:, :, None])
    return partial, scores
