"""Beam-search pieces: one step, finishing, and the left-to-right driver on a fake decoder."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from recbole_mdgr.model.decoding import (
    beam_step,
    completes_banned,
    distinct_sids,
    drop_items,
    finish_beams,
    gather_beams,
    left_to_right_beam_search,
)
from recbole_mdgr.tokenizer.sid_table import build_table

NEG_INF = float("-inf")




def test_beam_step_picks_parents_and_tokens_on_a_hand_case():
    scores = torch.tensor([[-1.0, -2.0], [0.0, NEG_INF]])  # user 1 has one live beam
    log_probs = torch.log(
        torch.tensor(
            [
                [[0.1, 0.6, 0.3], [0.8, 0.1, 0.1]],
                [[0.5, 0.2, 0.3], [0.4, 0.4, 0.2]],
            ]
        )
    )
    new, parent, token = beam_step(scores, log_probs, width=3)
    # user 0: -1+log.6=-1.51, -1+log.3=-2.20, -2+log.8=-2.22, -1+log.1=-3.30 ...
    assert parent[0].tolist() == [0, 0, 1] and token[0].tolist() == [1, 2, 0]
    # user 1: only beam 0 expands
    assert parent[1].tolist() == [0, 0, 0] and token[1].tolist() == [0, 2, 1]
    expected = torch.tensor([[-1 + np.log(0.6), -1 + np.log(0.3), -2 + np.log(0.8)]])
    torch.testing.assert_close(new[:1], expected.float())
    torch.testing.assert_close(new[1], torch.log(torch.tensor([0.5, 0.3, 0.2])))


def test_beam_step_pads_dead_beams_and_never_computes_in_half():
    scores = torch.zeros(2, 1, dtype=torch.float16)
    log_probs = torch.tensor([[[-1.0, NEG_INF, -3.0]], [[-2.0, -1.0, -0.5]]]).half()
    new, _, token = beam_step(scores, log_probs, width=5)
    assert new.dtype == torch.float32 and new.shape == (2, 5)
    assert torch.isfinite(new[0, :2]).all() and torch.isneginf(new[0, 2:]).all()
    assert token[0, :2].tolist() == [0, 2]
    assert torch.isfinite(new[1, :3]).all() and torch.isneginf(new[1, 3:]).all()
    assert beam_step(scores.double(), log_probs.double(), 2)[0].dtype == torch.float64


def test_gather_beams_follows_parents():
    x = torch.arange(12).view(2, 3, 2)
    parent = torch.tensor([[2, 2], [0, 1]])
    assert gather_beams(x, parent).tolist() == [[[4, 5], [4, 5]], [[6, 7], [8, 9]]]


def test_finish_drops_invalid_dedups_and_pads():
    table = build_table(np.array([[0, 0], [0, 1], [1, 0]]), [2, 2], dedup="none")
    sids = torch.tensor(
        [
            [[1, 1], [0, 1], [0, 1], [1, 0], [0, 0]],  # no item, item 2 twice, item 3, dead
            [[0, 0], [1, 1], [0, 0], [0, 0], [0, 0]],  # item 1, no item, dead x3
        ]
    )
    scores = torch.tensor(
        [[-0.5, -1.0, -1.5, -2.0, NEG_INF], [-3.0, -0.1, NEG_INF, NEG_INF, NEG_INF]]
    )
    items, out, generated, invalid = finish_beams(table, sids, scores, k=3)
    assert items.tolist() == [[2, 3, 0], [1, 0, 0]]
    assert out[0, :2].tolist() == [-1.0, -2.0] and out[1, 0].item() == -3.0
    assert torch.isneginf(out[0, 2]) and torch.isneginf(out[1, 1:]).all()
    assert generated == 6 and invalid == 2
    # k larger than the beam width: padded
    items, out, _, _ = finish_beams(table, sids, scores, k=7)
    assert items.shape == (2, 7) and (items[:, 5:] == 0).all()


class PrefixModel:
    """A fake decoder whose next-token distribution is a fixed random function of the prefix.

    It tracks each row's prefix itself from (tokens, parents), exactly as a decoder's cache
    would, so a wrong parent or token from the search changes the scores.
    """

    def __init__(self, vocab_sizes, batch_size, seed=0):
        self.vocab_sizes, self.B, self.calls = vocab_sizes, batch_size, 0
        self.gen = torch.Generator().manual_seed(seed)
        self.table = {}
        self.prefixes = None

    def log_probs(self, user, prefix):
        key = (user, *prefix)
        if key not in self.table:
            logits = 3 * torch.randn(self.vocab_sizes[len(prefix)], generator=self.gen)
            self.table[key] = logits.log_softmax(-1)
        return self.table[key]

    def __call__(self, tokens, parents):
        self.calls += 1
        if tokens is None:
            self.prefixes = [(b, ()) for b in range(self.B)]
        else:
            old = self.prefixes
            self.prefixes = [
                (old[p][0], old[p][1] + (t,))
                for p, t in zip(parents.tolist(), tokens.tolist(), strict=True)
            ]
        return torch.stack([self.log_probs(b, prefix) for b, prefix in self.prefixes])

    def exact(self, user, sid):
        return sum(float(self.log_probs(user, tuple(sid[:j]))[sid[j]]) for j in range(len(sid)))


def test_full_width_search_equals_brute_force_ranking():
    table = build_table(np.random.default_rng(0).integers(0, 4, (30, 2)), [4, 4], "always")
    B, n_real = 3, table.n_items - 1
    model = PrefixModel(table.vocab_sizes, B)
    sids, scores = left_to_right_beam_search(model, table, B, width=n_real)
    assert model.calls == table.m
    items, top, generated, invalid = finish_beams(table, sids, scores, k=n_real)
    assert generated == B * n_real and invalid == 0
    for b in range(B):
        exact = {i: model.exact(b, table.codes[i].tolist()) for i in range(1, table.n_items)}
        ranking = sorted(exact, key=exact.get, reverse=True)
        assert items[b].tolist() == ranking
        torch.testing.assert_close(top[b], torch.tensor([exact[i] for i in ranking]))


def test_unconstrained_search_keeps_the_global_best_sequences():
    table = build_table(np.array([[0, 0], [1, 1]]), [2, 3], dedup="none")
    model = PrefixModel(table.vocab_sizes, batch_size=2, seed=3)
    _, scores = left_to_right_beam_search(model, table, 2, width=6, constrained=False)
    for b in range(2):
        every = {s: model.exact(b, s) for s in itertools.product(range(2), range(3))}
        best = sorted(every.values(), reverse=True)
        torch.testing.assert_close(scores[b], torch.tensor(best))


def test_width_beyond_valid_continuations_yields_no_garbage_beams():
    table = build_table(np.array([[0, 0], [0, 1], [2, 2]]), [3, 3], dedup="none")
    model = PrefixModel(table.vocab_sizes, batch_size=2)
    sids, scores = left_to_right_beam_search(model, table, 2, width=10)
    assert sids.shape[1] == 3  # dead beams trimmed once every user's live count is known
    assert torch.isfinite(scores).all()
    items, _, generated, invalid = finish_beams(table, sids, scores, k=5)
    assert generated == 6 and invalid == 0
    assert sorted(items[0, :3].tolist()) == [1, 2, 3] and (items[:, 3:] == 0).all()


def reference_beam_search(log_probs, table, width):
    """Textbook constrained beam search in plain Python: at each position keep the ``width``
    best valid prefixes by summed log-probability."""
    codes = [tuple(c) for c in table.codes[1:].tolist()]
    beams = [((), 0.0)]
    for j in range(table.m):
        valid = {c[: j + 1] for c in codes}
        cands = [(p + (t,), s + float(log_probs(p)[t]))
                 for p, s in beams for t in range(table.vocab_sizes[j]) if p + (t,) in valid]
        beams = sorted(cands, key=lambda c: -c[1])[:width]
    return beams


@pytest.mark.parametrize("width", [1, 3, 7])
def test_narrow_search_equals_a_reference_beam_search(width):
    """Width below the number of candidates: pruning itself is checked, not only ranking."""
    table = build_table(np.random.default_rng(2).integers(0, 5, (60, 2)), [5, 5], "always")
    B = 4
    model = PrefixModel(table.vocab_sizes, B, seed=1)
    sids, scores = left_to_right_beam_search(model, table, B, width=width)
    assert sids.shape == (B, width, table.m)
    for b in range(B):
        want = reference_beam_search(lambda p: model.log_probs(b, p), table, width)
        assert [tuple(s) for s in sids[b].tolist()] == [p for p, _ in want]
        torch.testing.assert_close(scores[b], torch.tensor([s for _, s in want]))


def test_finish_beams_keeps_the_best_beam_of_each_repeated_item():
    table = build_table(np.array([[i, j] for i in range(4) for j in range(4)]), [4, 4], "none")
    gen = torch.Generator().manual_seed(0)
    B, W = 3, 40
    sids = torch.randint(0, 4, (B, W, 2), generator=gen)  # 16 items: many repeats
    scores = torch.randn(B, W, generator=gen)
    items, top, _, _ = finish_beams(table, sids, scores, k=16)
    for b in range(B):
        best = {}
        for sid, s in zip(sids[b].tolist(), scores[b].tolist()):
            item = table.items_of(torch.tensor([sid])).item()
            best[item] = max(best.get(item, NEG_INF), s)
        ranking = sorted(best, key=best.get, reverse=True)
        assert items[b, : len(ranking)].tolist() == ranking
        torch.testing.assert_close(top[b, : len(ranking)], torch.tensor([best[i] for i in ranking]))


# ---------------------------------------------------------------------------- exclude_history
def test_completes_banned_on_a_hand_case():
    table = build_table(np.array([[0, 1, 2], [0, 1, 3], [1, 1, 0], [0, 2, 0], [2, 1, 0]]),
                        [3, 3, 4], dedup="none")  # items 1..5
    banned = torch.tensor([[[0, 1, 2], [0, 1, 3], [1, 1, 0], [-1, -1, -1]]] * 5)  # items 1-3
    own = torch.tensor([
        [0, 1, -1],  # last slot: tokens 2 and 3 complete items 1 and 2
        [-1, 1, 0],  # last slot: token 1 completes item 3 (token 2 would be item 5)
        [0, -1, -1],  # token 1 leaves items 1 and 2 only, both banned; 2 leaves item 4
        [-1, -1, -1],  # token 1 leaves item 3 only; token 0 also leaves item 4
        [2, 1, -1],  # no banned SID starts (2, 1)
    ])
    slot = torch.tensor([2, 0, 1, 0, 2])
    out = completes_banned(table, own, slot, banned, vocab=4)
    assert out.shape == (5, 4)
    assert out.nonzero().tolist() == [[0, 2], [0, 3], [1, 1], [2, 1], [3, 1]]


def test_distinct_sids_keeps_the_first_of_a_repeated_item():
    banned = torch.tensor([[[0, 1], [2, 2], [0, 1], [-1, -1]]])
    assert distinct_sids(banned).tolist() == [[[0, 1], [2, 2], [-1, -1], [-1, -1]]]


def test_drop_items_removes_the_banned_and_refills_from_the_rest():
    items = torch.tensor([[5, 3, 9, 2], [7, 1, 4, 0]])
    scores = torch.tensor([[-1.0, -2.0, -3.0, -4.0], [-0.5, -1.5, -2.5, NEG_INF]])
    banned = torch.tensor([[3, 0, 0], [7, 4, 1]])  # 0 = padding, bans nothing
    picked, top = drop_items(items, scores, banned, k=3)
    assert picked.tolist() == [[5, 9, 2], [0, 0, 0]]
    assert top[0].tolist() == [-1.0, -3.0, -4.0] and torch.isneginf(top[1]).all()


def test_full_width_search_without_the_banned_is_the_ranking_of_the_rest():
    """Banned items are cut before pruning: at full width the result is exactly the exact
    ranking with those items removed; at a narrow width every kept beam is an allowed item."""
    table = build_table(np.random.default_rng(0).integers(0, 4, (30, 2)), [4, 4], "always")
    B, n_real = 3, table.n_items - 1
    history = torch.tensor([[1, 5, 9, 0], [2, 2, 0, 0], [0, 0, 0, 0]])  # 0 = padding
    banned = table.lookup(history)
    model = PrefixModel(table.vocab_sizes, B)
    sids, scores = left_to_right_beam_search(model, table, B, width=n_real, banned=banned)
    items, top, _, invalid = finish_beams(table, sids, scores, k=n_real)
    assert invalid == 0
    for b in range(B):
        exact = {i: model.exact(b, table.codes[i].tolist()) for i in range(1, table.n_items)
                 if i not in history[b].tolist()}
        ranking = sorted(exact, key=exact.get, reverse=True)
        assert items[b, : len(ranking)].tolist() == ranking
        assert (items[b, len(ranking):] == 0).all()
    for width in (1, 4):
        model = PrefixModel(table.vocab_sizes, B)
        sids, scores = left_to_right_beam_search(model, table, B, width=width, banned=banned)
        items = table.items_of(sids.reshape(-1, table.m)).view(B, -1)
        assert items.shape[1] == width and (items > 0).all() and torch.isfinite(scores).all()
        assert not (items[:, :, None] == history[:, None, :]).any()
