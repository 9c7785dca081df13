"""Next-k items (the MADRec paper's §4.5): sessions of ``k`` items, and how they are scored.

With ``next_k: k > 1`` the dataset splits leave-k-out (:class:`~recbole_mdgr.data.
SIDSequentialDataset`): a user's last ``k`` items are the test targets, the ``k`` before them
the validation targets, and every evaluation sample carries them, in time order, as
``next_items`` ``[B, k]``. A model then answers ``generate_sessions(interaction, k, width)
-> (sessions [B, width, k], scores [B, width])``: ``width`` ranked guesses of the next ``k``
items, each a whole session.

**Average session recall@N** (the paper's "average session recall@10", computed "for each
predicted item" and averaged): for each position ``j`` of the session, a hit when the
user's ``j``-th target is the ``j``-th item of one of the ``N`` best sessions; the hits are
averaged over positions and users. ``item{j}_recall@N`` is position ``j`` alone. With
``k = 1`` it is Recall@N.

Two ways to decode a session:

* :func:`sessions_item_by_item` (every generative model; TIGER's only way): the ``width``
  best next items, each beam's history extended by its item, the ``width`` best next items
  of every beam, the ``width`` best sessions by summed log-probability kept, ``k`` times.
  NFE = ``k`` x the model's NFE per item (``k x m`` for TIGER).
* MADRec decodes the ``k x m`` slots jointly (:func:`~recbole_mdgr.model.decoding.
  masked_beam_search` with ``n_items = k``), in any NFE from 1 to ``k x m``.
"""

from __future__ import annotations

from collections import OrderedDict

import torch

from recbole_mdgr.model.decoding import NEG_INF, beam_step, best_unique, gather_beams

NEXT_ITEMS = "next_items"


def session_hits(sessions: torch.Tensor, targets: torch.Tensor, topk: list[int]
                 ) -> torch.Tensor:
    """Hits of a batch: ``[len(topk), k]`` counts of users whose ``j``-th target is the
    ``j``-th item of one of their ``N`` best sessions (``sessions`` ``[B, W, k]`` best first,
    0 = padding, never a hit; ``targets`` ``[B, k]``)."""
    targets = targets.to(sessions.device)
    match = (sessions == targets[:, None, :]) & (targets[:, None, :] > 0)  # (B, W, k)
    return torch.stack([match[:, :n].any(1).sum(0) for n in topk]).cpu()


def session_result(hits: torch.Tensor, users: int, topk: list[int], decimals: int
                   ) -> OrderedDict:
    """Totals of :func:`session_hits` over ``users`` -> RecBole-style result dict:
    ``session_recall@N`` and ``item{j}_recall@N`` (j = 1..k)."""
    rates = hits.double() / max(users, 1)  # (len(topk), k)
    result = OrderedDict()
    for i, n in enumerate(topk):
        result[f"session_recall@{n}"] = round(float(rates[i].mean()), decimals)
    for i, n in enumerate(topk):
        for j in range(rates.shape[1]):
            result[f"item{j + 1}_recall@{n}"] = round(float(rates[i, j]), decimals)
    return result


def finish_sessions(sid_table, sids: torch.Tensor, scores: torch.Tensor, width: int
                    ) -> tuple[torch.Tensor, torch.Tensor, int, int]:
    """Finished joint beams ``[B, W, k * m]`` -> the best ``width`` sessions ``[B, width, k]``.

    A beam whose ``k`` SIDs are not all real items is dropped (counted as invalid); a
    session reached by several beams keeps its best score; pads are sessions of item 0 with
    score ``-inf``. Returns (sessions, scores, generated, invalid)."""
    B, W, S = sids.shape
    k = S // sid_table.m
    items = sid_table.items_of(sids.reshape(B * W * k, sid_table.m)).view(B * W, k)
    _, key = torch.unique(items, dim=0, return_inverse=True)  # one id per distinct session
    key = (key + 1).masked_fill((items == 0).any(1), 0).view(B, W)
    index, top, generated, invalid = best_unique(key, scores, width)
    sessions = gather_beams(items.view(B, W, k), index)
    return sessions.masked_fill((top == NEG_INF)[:, :, None], 0), top, generated, invalid


@torch.no_grad()
def sessions_item_by_item(model, interaction, k: int, width: int
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """Sessions of ``k`` items by ``model.generate``, one item after another (module doc).

    Each step calls ``generate`` once for all beams of all users. The model's
    ``decode_stats`` end up counting the batch's users once, with NFE = the sum of each
    step's NFE per sequence."""
    stats = model.decode_stats
    users_before, nfe_before = stats.users, stats.nfe
    B = len(interaction)
    device = interaction[model.ITEM_SEQ].device
    scores = torch.zeros(B, 1, device=device)
    sessions = torch.zeros(B, 1, 0, dtype=torch.long, device=device)
    current, nfe = interaction, 0.0
    for i in range(k):
        users, spent = stats.users, stats.nfe
        items, item_scores = model.generate(current, width)  # (B * W, width)
        nfe += (stats.nfe - spent) / max(stats.users - users, 1)
        W = sessions.shape[1]
        scores, parent, pick = beam_step(scores, item_scores.view(B, W, width), width)
        new = gather_beams(items.view(B, W, width), parent).gather(2, pick[:, :, None])
        new = new.masked_fill((scores == NEG_INF)[:, :, None], 0)
        sessions = torch.cat([gather_beams(sessions, parent), new], 2)
        if i < k - 1:
            rows = (parent + W * torch.arange(B, device=device)[:, None]).view(-1)
            # a dead beam's history gets any real item: its score stays -inf
            current = model.extend_history(current[rows], new.view(-1).clamp(min=1))
    stats.users, stats.nfe = users_before + B, nfe_before + nfe * B
    return sessions, scores
