"""TIGER: teacher forcing, cached decoding, constrained beam search vs exact scoring."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from recbole.data.interaction import Interaction

from recbole_mdgr.model.layers import KVCache
from recbole_mdgr.model.tiger import TIGER
from recbole_mdgr.tokenizer.sid_table import build_table

from conftest import overfit

L_MAX = 6




class FakeDataset:
    """What SequentialRecommender and GenerativeRecommender read from a dataset."""

    def __init__(self, table):
        self.sid_table = table

    def num(self, field):
        return self.sid_table.n_items


def make_config(**overrides):
    config = {
        "USER_ID_FIELD": "user_id",
        "ITEM_ID_FIELD": "item_id",
        "LIST_SUFFIX": "_list",
        "ITEM_LIST_LENGTH_FIELD": "item_length",
        "NEG_PREFIX": "neg_",
        "MAX_ITEM_LIST_LENGTH": L_MAX,
        "device": torch.device("cpu"),
        "topk": [5, 10],
        "n_layers_enc": 2,
        "n_layers_dec": 2,
        "hidden_size": 32,
        "n_heads": 2,
        "head_dim": 16,
        "inner_size": 64,
        "dropout_prob": 0.0,
        "attn_dropout_prob": 0.0,
        "ffn_dropout_prob": 0.0,
        "hidden_act": "relu",
        "initializer_range": 0.2,  # large: a random model with well-separated scores
        "beam_size": 10,
        "sid_constrained": True,
        "tiger_decode": "beam",
        "tiger_exact_rows": 64,
        "encoder_buckets": 2,
    }
    config.update(overrides)
    return config


def make_table(n_real=40, sizes=(4, 4), seed=0):
    raw = np.random.default_rng(seed).integers(0, sizes, size=(n_real, len(sizes)))
    return build_table(raw, sizes, dedup="always")  # m = len(sizes) + 1


def make_model(table, **overrides):
    torch.manual_seed(0)
    return TIGER(make_config(**overrides), FakeDataset(table)).eval()


def make_batch(table, B=5, seed=1):
    """Left-aligned histories of random lengths, SID fields looked up like the dataset does."""
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, L_MAX + 1, (B,), generator=gen)
    seq = torch.randint(1, table.n_items, (B, L_MAX), generator=gen)
    seq[torch.arange(L_MAX)[None, :] >= lengths[:, None]] = 0
    target = torch.randint(1, table.n_items, (B,), generator=gen)
    return Interaction(
        {
            "item_id_list": seq,
            "item_length": lengths,
            "item_id": target,
            "item_id_list_sid": table.lookup(seq),
            "item_id_sid": table.lookup(target),
        }
    )


def test_decoder_inputs_shift_targets_right_behind_bos():
    table = build_table(np.array([[0, 1], [2, 3], [1, 0]]), [3, 4], dedup="none")
    model = make_model(table)
    assert model.token_offset.tolist() == [1, 4]  # position 0 -> 1..3, position 1 -> 4..7
    target = torch.tensor([[2, 3], [1, 0]])
    expected = torch.tensor([[model.bos, 2 + 1], [model.bos, 1 + 1]])
    assert torch.equal(model.decoder_inputs(target), expected)
    # logits[:, j] predict t_j from t_<j only: the loss is CE of logits[:, j] against t_j
    batch = make_batch(table, B=2)
    history, lengths = batch["item_id_list_sid"], batch["item_length"]
    logits = model(history, lengths, target)
    assert logits.shape == (2, 2, 4)
    assert torch.isinf(logits[:, 0, 3]).all()  # position 0 has vocab 3 < max vocab 4
    torch.testing.assert_close(model(history, lengths, torch.tensor([[2, 0], [1, 3]])), logits)
    moved = model(history, lengths, torch.tensor([[0, 3], [2, 0]]))
    torch.testing.assert_close(moved[:, 0], logits[:, 0])
    assert not torch.allclose(moved[:, 1], logits[:, 1])
    batch["item_id_sid"] = target
    ce = torch.nn.functional.cross_entropy(logits.flatten(0, 1), target.flatten())
    torch.testing.assert_close(model.calculate_loss(batch), ce)


def test_encoder_length_buckets_change_nothing_but_cost():
    table = make_table()
    model = make_model(table)
    batch = make_batch(table, B=7)
    sid, lengths = batch["item_id_list_sid"], batch["item_length"]
    memory, mask = model.encode(sid, lengths)
    assert memory.shape[1] == int(lengths.max()) * table.m
    assert torch.equal(mask.sum(1), lengths * table.m)
    for buckets in (1, 3, 7):  # 1 = one plain pass over the padded batch
        model.encoder_buckets = buckets
        torch.testing.assert_close(model.encode(sid, lengths)[0][mask], memory[mask])


def test_cached_decoding_matches_full_pass():
    table = make_table()
    model = make_model(table)
    batch = make_batch(table)
    memory, mask = model.encode(batch["item_id_list_sid"], batch["item_length"])
    tokens = model.decoder_inputs(batch["item_id_sid"])  # (B, m)
    full = model.decode(tokens, memory, mask)  # (B, m, d)
    cache = KVCache(model.n_layers_dec)
    steps = [model.decode(tokens[:, j : j + 1], memory, mask, cache) for j in range(table.m)]
    torch.testing.assert_close(
        model.slot_logits(torch.cat(steps, 1)), model.slot_logits(full), atol=1e-5, rtol=1e-5
    )


def test_cached_decoding_with_beams_shares_memory():
    """W beams per user over one memory row per user = the same rows with memory copied."""
    table = make_table()
    model = make_model(table)
    batch = make_batch(table, B=3)
    memory, mask = model.encode(batch["item_id_list_sid"], batch["item_length"])
    W = 4
    tokens = torch.randint(1, model.bos, (3 * W, 2))
    folded = model.decode(tokens, memory, mask, KVCache(model.n_layers_dec))
    copied = model.decode(tokens, memory.repeat_interleave(W, 0), mask.repeat_interleave(W, 0))
    torch.testing.assert_close(folded, copied, atol=1e-5, rtol=1e-5)


def test_beam_size_below_topk_is_refused_by_name():
    from recbole_mdgr.errors import UserError

    with pytest.raises(UserError, match="beam_size=5 is smaller than the largest topk"):
        make_model(make_table(), beam_size=5)  # topk goes up to 10


def test_constrained_beams_return_only_real_items():
    table = make_table(n_real=30, sizes=(8, 8))
    model = make_model(table, beam_size=20)
    items, scores = model.generate(make_batch(table, B=6), k=10)
    assert items.shape == scores.shape == (6, 10)
    assert (items > 0).all() and torch.isfinite(scores).all()
    assert (scores[:, :-1] >= scores[:, 1:]).all()
    assert all(len(set(row.tolist())) == 10 for row in items)
    assert model.decode_stats.invalid == 0
    assert model.decode_stats.nfe == 6 * table.m
    assert model.decode_stats.generated == 6 * 20


def test_generate_encodes_once_and_runs_one_decoder_pass_per_sid_position():
    """The NFE TIGER reports is what it runs: one encoder call over the B users, then one
    decoder call per SID position for all beams of all users (not positions x beams)."""
    table = make_table(n_real=30, sizes=(8, 8))
    model = make_model(table, beam_size=20)
    calls = {"encode": [], "decode": []}
    encode, decode = model.encode, model.decode

    def counted_encode(seq, length):
        calls["encode"].append(seq.shape[0])
        return encode(seq, length)

    def counted_decode(ids, *args, **kwargs):
        calls["decode"].append(ids.shape[0])
        return decode(ids, *args, **kwargs)

    model.encode, model.decode = counted_encode, counted_decode
    model.generate(make_batch(table, B=6), k=10)
    assert calls["encode"] == [6]
    assert len(calls["decode"]) == table.m == model.decode_stats.nfe / 6
    assert calls["decode"][0] == 6 and max(calls["decode"]) <= 6 * 20
    assert calls["decode"][-1] > 6  # later passes carry every user's beams at once


def test_unconstrained_beams_count_invalid_sids():
    table = make_table(n_real=10, sizes=(8, 8))  # 10 items among 8*8*dedup SIDs
    model = make_model(table, beam_size=20, sid_constrained=False)
    items, scores = model.generate(make_batch(table, B=4), k=5)
    stats = model.decode_stats
    assert stats.generated == 4 * 20 and stats.invalid > 0
    assert ((items > 0) == torch.isfinite(scores)).all()


@pytest.mark.parametrize("seed", [0, 1])
def test_full_width_beam_search_equals_exact_scoring(seed):
    table = make_table(n_real=40, sizes=(5, 6), seed=seed)
    n_real = table.n_items - 1
    model = make_model(table, beam_size=n_real)
    batch = make_batch(table, B=4, seed=seed)
    items, scores = model.generate(batch, k=15)
    exact = model.score_all_items(batch)
    assert exact.shape == (4, table.n_items) and torch.isinf(exact[:, 0]).all()
    top, top_items = exact.topk(15, dim=1)
    assert torch.equal(items, top_items)
    torch.testing.assert_close(scores, top, atol=1e-4, rtol=1e-4)
    # the exact decode mode returns the same lists, and reports its real cost
    model.decode_mode = "exact"
    model.decode_stats.reset()
    exact_items, exact_scores = model.generate(batch, k=15)
    assert torch.equal(exact_items, items)
    torch.testing.assert_close(exact_scores, top)
    assert model.decode_stats.summary()["nfe_per_user"] == n_real


def test_generate_pads_when_fewer_items_than_k():
    table = make_table(n_real=6, sizes=(3, 3))
    model = make_model(table, beam_size=20)
    for mode in ("beam", "exact"):
        model.decode_mode = mode
        items, scores = model.generate(make_batch(table, B=3), k=10)
        assert (items[:, :6] > 0).all() and torch.isfinite(scores[:, :6]).all()
        assert (items[:, 6:] == 0).all() and torch.isneginf(scores[:, 6:]).all()
        assert sorted(items[0, :6].tolist()) == list(range(1, 7))


def test_full_sort_predict_scores_generated_items_only(caplog):
    table = make_table()
    model = make_model(table)
    batch = make_batch(table, B=3)
    items, scores = model.generate(batch, k=10)
    full = model.full_sort_predict(batch)
    assert full.shape == (3, table.n_items)
    assert (torch.isfinite(full).sum(1) == 10).all()
    torch.testing.assert_close(full.gather(1, items), scores)
    assert not any("fewer than" in r.getMessage() for r in caplog.records)
    # 6 items for a top-10: the score matrix cannot say "miss"; a warning says so, once
    small = make_model(make_table(n_real=6, sizes=(3, 3)), beam_size=20)
    batch = make_batch(small.sid_table, B=3)
    small.full_sort_predict(batch)
    small.full_sort_predict(batch)
    warned = [r for r in caplog.records if "fewer than 10 generated items" in r.getMessage()]
    assert len(warned) == 1


def test_loss_decreases_when_overfitting_a_tiny_batch():
    table = make_table()
    model = make_model(table, dropout_prob=0.1, initializer_range=0.02)
    batch = make_batch(table, B=8)
    losses = overfit(model, batch, 60)
    assert losses[-1] < 0.2 * losses[0]
    # and the trained model generates the targets first
    model.eval()
    items, _ = model.generate(batch, k=1)
    assert (items[:, 0] == batch["item_id"]).float().mean() >= 0.75


@pytest.mark.parametrize("width", [2, 5])
def test_narrow_beams_with_cache_reorder_equal_an_uncached_reference(width):
    """Beams narrower than the catalogue: TIGER's cached search (cache rows reordered by beam
    parents) against a plain beam search that re-decodes every prefix from scratch."""
    from test_decoding import reference_beam_search

    table = make_table(n_real=40, sizes=(5, 6), seed=2)
    model = make_model(table, beam_size=width, topk=[width])
    batch = make_batch(table, B=3, seed=4)
    items, scores = model.generate(batch, k=width)
    memory, mask = model.encode(batch["item_id_list_sid"], batch["item_length"])
    for b in range(3):
        @torch.no_grad()
        def log_probs(prefix):
            tokens = torch.tensor([[model.bos, *(c + int(model.token_offset[i])
                                                 for i, c in enumerate(prefix))]])
            hidden = model.decode(tokens, memory[b : b + 1], mask[b : b + 1])
            return model.heads[len(prefix)](hidden[0, -1]).log_softmax(-1)

        want = reference_beam_search(log_probs, table, width)
        want_items = table.items_of(torch.tensor([p for p, _ in want])).tolist()
        assert items[b].tolist() == want_items
        torch.testing.assert_close(scores[b], torch.tensor([s for _, s in want]),
                                   atol=1e-4, rtol=1e-4)


def test_training_forward_by_length_bucket_equals_one_padded_pass():
    table = make_table()
    model = make_model(table)
    batch = make_batch(table, B=7)
    args = batch["item_id_list_sid"], batch["item_length"], batch["item_id_sid"]
    model.encoder_buckets = 1
    plain = model(*args)
    for buckets in (2, 7):
        model.encoder_buckets = buckets
        torch.testing.assert_close(model(*args), plain, atol=1e-5, rtol=1e-5)


