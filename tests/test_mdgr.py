"""MDGR: curriculum and history-aware masking do what the paper says; decoding's NFE."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from recbole_mdgr.model.mdgr import MDGR, decoding_schedule, mask_count_distribution
from recbole_mdgr.tokenizer.sid_table import build_table

from conftest import overfit
from test_tiger import L_MAX, make_batch


class FakeDataset:
    def __init__(self, table, n_samples=512):
        self.sid_table, self.n_samples = table, n_samples

    def num(self, field):
        return self.sid_table.n_items

    def __len__(self):
        return self.n_samples


def make_config(**overrides):
    config = {
        "USER_ID_FIELD": "user_id", "ITEM_ID_FIELD": "item_id", "LIST_SUFFIX": "_list",
        "ITEM_LIST_LENGTH_FIELD": "item_length", "NEG_PREFIX": "neg_",
        "MAX_ITEM_LIST_LENGTH": L_MAX, "device": torch.device("cpu"), "topk": [5, 10],
        "n_layers_enc": 2, "n_layers_dec": 2, "hidden_size": 32, "n_heads": 2,
        "head_dim": 16, "inner_size": 64, "hidden_act": "relu", "dropout_prob": 0.0,
        "attn_dropout_prob": 0.0, "ffn_dropout_prob": 0.0, "initializer_range": 0.2,
        "encoder_buckets": 2, "mdgr_curriculum": True, "mdgr_gamma": 2.0,
        "mdgr_curriculum_epochs": 4, "mdgr_curriculum_width": 0.25,
        "mdgr_full_mask_floor": 0.1, "mdgr_difficulty_bins": 10, "mdgr_history_aware": True,
        "mdgr_history_smoothing": 1.0, "mdgr_history_mix": 0.5, "mdgr_warmup_steps": 2,
        "mdgr_parallel": 2, "beam_size": 10, "sid_constrained": True,
        "train_batch_size": 64,
    }
    config.update(overrides)
    return config


def parallel_table(n_real=60, L=6, V=5, seed=0):
    """A parallel-codebook-like table: L independent slots, unique rows."""
    raw = np.unique(np.random.default_rng(seed).integers(0, V, (n_real * 2, L)), axis=0)[:n_real]
    return build_table(raw, [V] * L, dedup="none")


def make_model(table, **overrides):
    torch.manual_seed(0)
    return MDGR(make_config(**overrides), FakeDataset(table)).eval()


def history_fixture(B, **overrides):
    """A 4-slot table, a model with ``overrides``, a batch of ``B`` users, their history
    lengths and history SIDs cut to the longest."""
    table = parallel_table(L=4)
    model = make_model(table, **overrides)
    batch = make_batch(table, B=B)
    length = batch["item_length"]
    return table, model, batch, length, batch["item_id_list_sid"][:, :int(length.max())]


# ---------------------------------------------------------------------------- noise
def test_mask_count_mean_rises_with_progress_and_full_mask_never_vanishes():
    table = parallel_table(L=8)
    model = make_model(table)
    gen = torch.Generator().manual_seed(0)
    means, full = [], []
    for p in (0.0, 0.25, 0.5, 0.75, 1.0):
        k = model.sample_mask_counts(20000, model.difficulty(p), gen)
        means.append(float(k.float().mean()))
        full.append(float((k == 8).float().mean()))
    assert all(b > a + 0.1 for a, b in zip(means, means[1:])), means
    assert means[0] < 3.0 and means[-1] > 6.5
    assert min(full) >= 0.09  # the floor: k = L at every p
    # gamma: a larger exponent ramps more slowly
    assert model.difficulty(0.5) == pytest.approx(0.25)
    model.gamma = 4.0
    assert model.difficulty(0.5) == pytest.approx(0.0625)
    probs = mask_count_distribution(8, 0.0, 0.25, 0.1)
    assert float(probs.sum()) == pytest.approx(1.0) and int(probs.argmax()) == 0


def test_uniform_floor_keeps_few_mask_states_trained_at_full_difficulty():
    without = mask_count_distribution(9, 1.0, 0.25, 0.1)
    floor = mask_count_distribution(9, 1.0, 0.25, 0.1, uniform_floor=0.3)
    assert float(without[:3].sum()) < 0.01  # k = 1..3: almost never at delta = 1
    assert float(floor.sum()) == pytest.approx(1.0)
    assert (floor[:-1] >= 0.3 / 9 - 1e-12).all()  # every k keeps its share of the floor
    assert float(floor[-1]) >= 0.1  # and the full-mask floor stays


def test_mask_share_difficulty_embeds_each_inputs_own_masked_share(monkeypatch):
    table = parallel_table(L=6)
    model = make_model(table, mdgr_difficulty_input="mask_share")
    seen = []
    embed = model.difficulty_embedding.forward
    monkeypatch.setattr(model.difficulty_embedding, "forward",
                        lambda bins: seen.append(bins.clone()) or embed(bins))
    partial = torch.tensor([[-1] * 6, [0, -1, -1, -1, -1, -1], [0, 1, 2, 3, 4, -1]])
    memory = torch.zeros(3, 2, model.hidden_size)
    model.decode(partial, memory, torch.ones(3, 2, dtype=torch.bool), delta=0.0)
    # masked shares (k - 1) / (L - 1): 5/5, 4/5, 0/5 -> bins of 10
    assert seen[-1].tolist() == [10, 8, 0]
    # at inference every step embeds its own share: 6 masked, then fewer
    batch = make_batch(table, B=2)
    seen.clear()
    model.generate(batch, k=5)
    assert [int(b[0]) for b in seen] == sorted({int(b[0]) for b in seen}, reverse=True)
    assert int(seen[0][0]) == 10 and len(seen) == len(model.schedule)
    with pytest.raises(ValueError, match="mdgr_difficulty_input must be one of"):
        make_model(table, mdgr_difficulty_input="time")


def test_progress_is_counted_in_training_steps_and_saved():
    table = parallel_table()
    model = make_model(table).train()  # 512 samples / batch 64 = 8 steps an epoch, 4 epochs
    batch = make_batch(table, B=6)
    for _ in range(16):
        model.calculate_loss(batch)
    assert model.progress() == pytest.approx(16 / 32)
    assert int(model.state_dict()["train_steps"]) == 16
    model.eval()
    model.calculate_loss(batch)  # evaluation never moves the clock
    assert int(model.train_steps) == 16


def test_training_masks_more_slots_as_its_curriculum_advances(monkeypatch):
    """calculate_loss itself follows the curriculum: at the first step it masks few slots of
    8, past the curriculum's last step (4 epochs of 8 steps) nearly all of them."""
    table = parallel_table(L=8)
    model = make_model(table).train()
    batch = make_batch(table, B=64)
    sample, counts = model.sample_mask, []

    def spy(*args, **kwargs):
        mask = sample(*args, **kwargs)
        counts.append(float(mask.sum(1).float().mean()))
        return mask

    monkeypatch.setattr(model, "sample_mask", spy)
    torch.manual_seed(0)
    for _ in range(4):
        model.train_steps.zero_()
        model.calculate_loss(batch)
    for _ in range(4):
        model.train_steps.fill_(32)
        model.calculate_loss(batch)
    early, late = np.mean(counts[:4]), np.mean(counts[4:])
    assert early < 3.0 and late > 6.5, (early, late)
    off = make_model(table, mdgr_curriculum=False).train()  # the ablation: always delta 1
    assert off.difficulty(off.progress()) == 1.0


def test_rare_in_history_slots_are_masked_more_often():
    table = parallel_table(L=4)
    model = make_model(table)
    # slot 0 and 1: the target's code appears in all 5 history items; slots 2, 3: in none
    target = torch.tensor([[1, 2, 3, 4]]).repeat(4000, 1)
    history = torch.tensor([[1, 2, 0, 0]] * 5)[None].repeat(4000, 1, 1)
    gen = torch.Generator().manual_seed(0)
    mask = model.sample_mask(history, target, delta=0.0, generator=gen)  # mostly k = 1
    rate = mask.float().mean(0)
    assert rate[2] > 1.4 * rate[0] and rate[3] > 1.4 * rate[1], rate
    # uniform when switched off
    model.history_aware = False
    rate = model.sample_mask(history, target, 0.0, gen).float().mean(0)
    assert float(rate.max() - rate.min()) < 0.05  # 4,000 draws: about 6 standard errors


@pytest.mark.parametrize("prob", [0.0, 0.5, 1.0])
def test_suffix_mask_prob_masks_the_last_k_slots_that_often(prob):
    table = parallel_table(L=4)
    target = torch.tensor([[1, 2, 3, 4]]).repeat(8000, 1)
    history = torch.tensor([[1, 2, 0, 0]] * 5)[None].repeat(8000, 1, 1)
    plain = make_model(table).sample_mask(history, target, 0.5, torch.Generator().manual_seed(0))
    model = make_model(table, mdgr_suffix_mask_prob=prob)
    mask = model.sample_mask(history, target, 0.5, torch.Generator().manual_seed(0))
    k = mask.sum(1)
    assert torch.equal(k, plain.sum(1))  # the mask counts follow the curriculum all the same

    def suffix_share(m):
        return float((m == (torch.arange(4) >= (4 - k)[:, None])).all(1).float().mean())

    # a suffix mask also arises by chance in the plain draw; the rest come from the knob
    expected = prob + (1 - prob) * suffix_share(plain)
    assert suffix_share(plain) < 0.6 and abs(suffix_share(mask) - expected) < 0.03
    if prob == 0.0:
        assert torch.equal(mask, plain)  # off: the very same masks as before the knob


def test_random_masking_ablation_is_uniform_in_k():
    table = parallel_table(L=4)
    model = make_model(table, mdgr_curriculum=False)
    k = model.sample_mask_counts(20000, model.difficulty(0.0))
    share = torch.bincount(k, minlength=5)[1:].float() / 20000
    assert torch.allclose(share, torch.full((4,), 0.25), atol=0.02)


# ---------------------------------------------------------------------------- decoding
@pytest.mark.parametrize("L, warm, par, nfe", [(8, 4, 2, 6), (8, 0, 3, 3), (8, 6, 4, 7),
                                               (4, 4, 2, 4), (5, 2, 2, 4), (8, 8, 1, 8)])
def test_nfe_follows_the_formula(L, warm, par, nfe):
    schedule = decoding_schedule(L, warm, par)
    assert sum(schedule) == L and len(schedule) == nfe
    assert nfe == min(warm, L) + -(-(L - min(warm, L)) // par)


@pytest.mark.parametrize("buckets", [1, 2])
def test_generate_encodes_once_and_counts_nfe(buckets):
    """Each user's history goes through the encoder once per ``generate`` call, in one
    pass or split over the length buckets (encoder rows summing to the B users)."""
    table = parallel_table(L=6)
    model = make_model(table, mdgr_warmup_steps=2, mdgr_parallel=3, encoder_buckets=buckets)
    rows, calls = [], {"decoder": 0}
    model.encoder.register_forward_hook(lambda module, args, out: rows.append(len(args[0])))
    model.decoder.register_forward_hook(lambda *a: calls.__setitem__("decoder",
                                                                     calls["decoder"] + 1))
    batch = make_batch(table, B=5)
    assert len(set(batch["item_length"].tolist())) > 1  # two buckets have users to split
    items, scores = model.generate(batch, k=10)
    assert sum(rows) == 5 and len(rows) == (1 if buckets == 1 else 2)
    assert calls == {"decoder": 4}  # NFE = 2 + ceil(4 / 3)
    assert model.decode_stats.summary()["nfe_per_user"] == 4
    assert (items > 0).all() and model.decode_stats.invalid == 0
    assert all(len(set(r.tolist())) == 10 for r in items)


def test_one_slot_per_step_equals_the_shared_one_slot_search():
    table = parallel_table(L=4)
    a = make_model(table, mdgr_warmup_steps=4, mdgr_parallel=2)
    b = make_model(table, mdgr_warmup_steps=0, mdgr_parallel=1)
    assert a.schedule == b.schedule == [1, 1, 1, 1]
    batch = make_batch(table, B=4)
    items_a, scores_a = a.generate(batch, k=10)
    items_b, scores_b = b.generate(batch, k=10)
    assert torch.equal(items_a, items_b) and torch.equal(scores_a, scores_b)


def committed_slots(model, batch):
    """Which slots every beam has committed, at each decoder call of one ``generate``."""
    seen, original = [], model.decode

    def spy(partial, *args, **kwargs):
        seen.append((partial >= 0).clone())
        return original(partial, *args, **kwargs)

    model.decode = spy
    model.generate(batch, k=5)
    del model.decode
    return seen


@pytest.mark.parametrize("order", ["left_to_right", "greedy", "random"])
def test_mdgr_order_picks_which_slots_each_step_commits(order):
    table = parallel_table(L=5)
    model = make_model(table, mdgr_warmup_steps=5, mdgr_order=order, seed=3)
    seen = committed_slots(model, make_batch(table, B=3))
    assert [s.sum(1).unique().tolist() for s in seen] == [[0], [1], [2], [3], [4]]
    lowest_first = all((s == (torch.arange(5) < step)).all() for step, s in enumerate(seen))
    assert lowest_first == (order == "left_to_right")


@pytest.mark.parametrize("warm, par", [(5, 1), (2, 2), (0, 3)])
def test_greedy_beams_commit_their_largest_margin_slots_at_every_step(warm, par):
    """At every decoder call of ``generate``, each beam's newly committed slots are the
    masked slots with the largest top-1 minus top-2 probability in its parent's output (the
    parent: the previous call's row of the same user holding the same committed tokens)."""
    table = parallel_table(L=5)
    model = make_model(table, mdgr_warmup_steps=warm, mdgr_parallel=par, mdgr_order="greedy")
    calls, original, B = [], model.decode, 3

    def spy(partial, *args, **kwargs):
        out = original(partial, *args, **kwargs)
        calls.append((partial.clone(), out.float().log_softmax(-1)))
        return out

    model.decode = spy
    model.generate(make_batch(table, B=B), k=5)
    checked = 0
    for (prev, log_probs), (cur, _) in zip(calls, calls[1:]):
        W_prev, W_cur = len(prev) // B, len(cur) // B
        for r in range(len(cur)):
            rows = range(r // W_cur * W_prev, (r // W_cur + 1) * W_prev)
            parents = [p for p in rows if ((prev[p] < 0) | (prev[p] == cur[r])).all()
                       and (cur[r] >= 0).sum() > (prev[p] >= 0).sum()]
            assert parents, "every beam extends a beam of the previous call"
            p = parents[0]
            new = ((cur[r] >= 0) & (prev[p] < 0)).nonzero().flatten().tolist()
            top = log_probs[p].topk(2, dim=-1).values.exp()
            margin = (top[:, 0] - top[:, 1]).masked_fill(prev[p] >= 0, -1.0)
            assert sorted(new) == sorted(margin.topk(len(new)).indices.tolist())
            checked += 1
    assert checked >= 2 * B * (len(calls) - 1)


def test_mdgr_random_order_follows_the_seed():
    table = parallel_table(L=5)
    batch = make_batch(table, B=3)
    model = make_model(table, mdgr_warmup_steps=5, mdgr_order="random", seed=3)
    first, again = committed_slots(model, batch), committed_slots(model, batch)
    model.order_seed = 4
    other = committed_slots(model, batch)
    assert all(torch.equal(x, y) for x, y in zip(first, again))
    assert not all(torch.equal(x, y) for x, y in zip(first, other))


def test_invalid_knobs_are_refused():
    table = parallel_table(L=4)
    with pytest.raises(ValueError, match="mdgr_parallel=5"):
        make_model(table, mdgr_parallel=5)
    with pytest.raises(ValueError, match="mdgr_history_mix"):
        make_model(table, mdgr_history_mix=1.5)
    with pytest.raises(ValueError, match="mdgr_suffix_mask_prob"):
        make_model(table, mdgr_suffix_mask_prob=1.5)
    with pytest.raises(ValueError, match="mdgr_order"):
        make_model(table, mdgr_order="right_to_left")
    with pytest.raises(ValueError, match=r"mdgr_uniform_floor must be a number in \[0.0, "):
        make_model(table, mdgr_uniform_floor=-0.1)
    with pytest.raises(ValueError, match="mdgr_uniform_floor plus mdgr_full_mask_floor must be "
                                         "at most 1; got 0.95 and 0.1"):
        make_model(table, mdgr_uniform_floor=0.95)
    make_model(table, mdgr_uniform_floor=0.9)  # 0.9 + 0.1: the whole mass, allowed


MEMORIES = [{}, {"mdgr_token_memory": True}, {"mdgr_history_input": "tokens"}]


@pytest.mark.parametrize("memory", MEMORIES)
def test_loss_decreases_and_the_model_learns_its_targets(memory):
    table = parallel_table(L=4)
    model = make_model(table, initializer_range=0.02, dropout_prob=0.1, **memory)
    batch = make_batch(table, B=8)
    torch.manual_seed(0)
    losses = overfit(model, batch, 200)
    assert np.mean(losses[-20:]) < 0.35 * np.mean(losses[:20])
    model.eval()
    items, _ = model.generate(batch, k=1)
    assert (items[:, 0] == batch["item_id"]).float().mean() >= 0.75


# ---------------------------------------------------------------------------- causal encoder
def test_every_target_rows_by_hand():
    """Two sequences, [a b c] -> t and [d e] -> u: rows a->b, ab->c, abc->t, d->e, de->u."""
    codes = torch.arange(14).view(7, 2)  # item i's SID: [2i, 2i + 1]
    history = torch.stack([torch.stack([codes[0], codes[1], codes[2]]),
                           torch.stack([codes[3], codes[4], torch.tensor([-1, -1])])])
    length = torch.tensor([3, 2])
    target = torch.stack([codes[5], codes[6]])
    user, row_history, row_target = MDGR.every_target(history, length, target)
    visible = row_history[..., 0] >= 0
    assert user.tolist() == [0, 0, 0, 1, 1]
    assert row_target.tolist() == [codes[i].tolist() for i in (1, 2, 5, 4, 6)]
    assert visible.tolist() == [[True, False, False], [True, True, False], [True, True, True],
                                [True, False, False], [True, True, False]]
    assert row_history[1].tolist() == [codes[0].tolist(), codes[1].tolist(), [-1, -1]]
    assert row_history[4].tolist() == [codes[3].tolist(), codes[4].tolist(), [-1, -1]]


def test_causal_training_rows_see_what_inference_sees_on_that_prefix():
    """The logits trained for 'the item after history item j' equal the ones the model
    computes when it is asked to decode after exactly items 0..j (its generate path)."""
    _, model, batch, length, history = history_fixture(
        6, mdgr_history_encoder="causal", train_sample_mode="windows")
    memory, _ = model.encode(history, length)
    user, row_history, row_target = MDGR.every_target(history, length, batch["item_id_sid"])
    visible = row_history[..., 0] >= 0
    partial = row_target.clone()
    partial[:, ::2] = -1  # any fixed masking
    trained = model.decode(partial, memory[user], visible, 1.0)
    prefix_len = visible.sum(1)
    alone, _ = model.encode(row_history[:, :int(prefix_len.max())], prefix_len)
    inferred = model.decode(partial, alone, row_history[:, :alone.shape[1], 0] >= 0, 1.0)
    assert torch.allclose(trained, inferred, atol=1e-5)
    # and the causal encoder's state of item j ignores the items after it
    later = history.clone()
    later[:, -1] = history[:, 0]
    changed, _ = model.encode(later, length)
    keep = torch.arange(history.shape[1]) < history.shape[1] - 1
    assert torch.allclose(changed[:, keep], memory[:, keep], atol=1e-6)


def test_causal_loss_covers_every_target_of_the_sequences():
    table = parallel_table(L=4)
    model = make_model(table, mdgr_history_encoder="causal", train_sample_mode="windows")
    model.train()
    batch = make_batch(table, B=6)
    seen = []
    decode = model.decode_hidden
    model.decode_hidden = lambda partial, *a: (seen.append(len(partial)), decode(partial, *a))[1]
    loss = model.calculate_loss(batch)
    assert sum(seen) == int(batch["item_length"].sum()) and torch.isfinite(loss)
    assert len(seen) == model.encoder_buckets  # one decoder pass per length group


def test_causal_encoder_needs_sequence_samples():
    table = parallel_table(L=4)
    with pytest.raises(ValueError, match="train_sample_mode: windows"):
        make_model(table, mdgr_history_encoder="causal")
    with pytest.raises(ValueError, match="mdgr_history_encoder must be one of"):
        make_model(table, mdgr_history_encoder="sideways")


# ---------------------------------------------------------------------------- item-id input
def test_history_item_ids_tell_apart_items_whose_sids_collide():
    """Same history SIDs, different item ids: the same memory without the option, a
    different one with it; the embedding is trained and saved with the model."""
    table = parallel_table(L=4)
    batch = make_batch(table, B=4)
    other = batch["item_id_list"].clone()
    real = other > 0
    other[real] = other[real] % (table.n_items - 1) + 1  # other ids, SIDs kept below
    for on in (False, True):
        model = make_model(table, mdgr_history_item_ids=on)
        sid, length = batch["item_id_list_sid"], batch["item_length"]
        a, mask = model.encode(sid, length, batch["item_id_list"])
        b, _ = model.encode(sid, length, other)
        assert torch.equal(a[mask], b[mask]) != on
        assert ("item_embedding.weight" in model.state_dict()) == on
    model.train()
    model.calculate_loss(batch).backward()
    used = batch["item_id_list"][real].unique()
    assert model.item_embedding.weight.grad[used].abs().sum(1).gt(0).all()
    assert model.item_embedding.weight.grad[0].abs().sum() == 0  # padding


# ---------------------------------------------------------------------------- token memory
def test_token_memory_is_one_entry_per_real_history_token():
    _, model, batch, length, history = history_fixture(6, mdgr_token_memory=True)
    memory, _ = model.encode(history, length)
    tokens, mask = model.decoder_memory(memory, history)
    B, L, m = history.shape
    assert tokens.shape == (B, L * m, model.hidden_size)
    assert mask.sum(1).tolist() == (length * m).tolist()  # every slot of every real item
    b, j, s = 2, int(length[2]) - 1, 3
    code = history[b, j, s] + model.token_offset[s]
    assert torch.allclose(tokens[b, j * m + s], memory[b, j] + model.token_embedding.weight[code])
    # without the option the decoder sees the item states themselves
    model.token_memory = False
    items, item_mask = model.decoder_memory(memory, history)
    assert items is memory and torch.equal(item_mask, torch.arange(L) < length[:, None])


@pytest.mark.parametrize("memory", MEMORIES[1:])
def test_token_memory_logits_do_not_depend_on_the_batchs_padding(memory):
    """A user's logits in a batch of mixed lengths equal the user's alone: the mask hides
    every padding token."""
    _, model, batch, length, history = history_fixture(6, **memory)
    partial = batch["item_id_sid"].clone()
    partial[:, 1::2] = -1
    memory, _ = model.encode(history, length)
    together = model.decode(partial, *model.decoder_memory(memory, history), 1.0)
    user = int(length.argmin())
    assert length[user] < length.max()
    n = int(length[user])
    alone, _ = model.encode(history[user:user + 1, :n], length[user:user + 1])
    own = model.decode(partial[user:user + 1],
                       *model.decoder_memory(alone, history[user:user + 1, :n]), 1.0)
    assert torch.allclose(together[user], own[0], atol=1e-5)


@pytest.mark.parametrize("option", MEMORIES)
def test_decoding_by_length_groups_equals_one_padded_pass(option):
    """Training decodes per group of similar history length with the memory cut to the
    group's longest history: the same logits as one pass over the padded batch."""
    _, model, batch, length, history = history_fixture(9, encoder_buckets=3, **option)
    partial = batch["item_id_sid"].clone()
    partial[:, ::2] = -1
    memory, _ = model.encode(history, length)
    memory, memory_mask = model.decoder_memory(memory, history)
    cuts = []
    decode = model.decode_hidden
    model.decode_hidden = lambda p, mem, mask, *a: (cuts.append(mask.shape[1]),
                                                    decode(p, mem, mask, *a))[1]
    grouped = model.decode_by_length(partial, memory, memory_mask, 1.0, length)
    padded = decode(partial, memory, memory_mask, 1.0)
    assert torch.allclose(grouped, padded, atol=1e-5)
    per_item = 4 if option else 1
    groups = length.sort().values.chunk(3)
    assert cuts == [int(g.max()) * per_item for g in groups]  # shorter groups, shorter memory
    assert cuts[0] < memory_mask.shape[1]
    # several rows per memory (user-major): each row decoded against its own user's memory
    rows = torch.cat([partial[:, None], partial.flip(1)[:, None]], 1).flatten(0, 1)
    grouped = model.decode_by_length(rows, memory, memory_mask, 1.0, length)
    own = torch.stack([decode(rows[i::2], memory, memory_mask, 1.0) for i in range(2)], 1)
    assert torch.allclose(grouped, own.flatten(0, 1), atol=1e-5)


def test_history_tokens_encoder_sees_every_token_in_its_place():
    """``mdgr_history_input: tokens``: the memory is the encoder's state of every history
    token (token + recency + history-slot embeddings, L * m entries), computed as by hand;
    the causal encoder (one entry per item) is refused with it."""
    table, model, batch, length, history = history_fixture(6, mdgr_history_input="tokens")
    memory, _ = model.encode(history, length)
    memory, mask = model.decoder_memory(memory, history)
    B, L, m = history.shape
    assert memory.shape == (B, L * m, model.hidden_size)
    assert mask.sum(1).tolist() == (length * m).tolist()
    b = int(length.argmax())
    n = int(length[b])
    tokens = history[b, :n] + model.token_offset  # (n, m)
    recency = torch.arange(n - 1, -1, -1)
    x = (model.token_embedding(tokens) + model.recency_embedding(recency)[:, None]
         + model.history_slot_embedding.weight).flatten(0, 1)
    by_hand = model.encoder(x[None])[0]
    assert torch.allclose(memory[b, :n * m], by_hand, atol=1e-5)
    with pytest.raises(ValueError, match="mdgr_history_input"):
        make_model(table, mdgr_history_input="tokens", mdgr_history_encoder="causal",
                   train_sample_mode="windows")


def test_teacher_forcing_trains_each_slot_once_from_its_left_to_right_state():
    """The loss is the mean over samples and slots of slot j's cross-entropy with slots
    0..j-1 visible and j..m-1 masked, each row decoded on its own as inference decodes it;
    and gradients reach the encoder through the shared memory."""
    table = parallel_table(L=4)
    model = make_model(table, mdgr_teacher_forcing=True, mdgr_order="left_to_right",
                       mdgr_token_memory=True, mdgr_parallel=1)
    batch = make_batch(table, B=7)
    loss = model.calculate_loss(batch)
    target = batch["item_id_sid"]
    expected = []
    with torch.no_grad():
        memory, memory_mask = model.history_memory(batch)
        for j in range(4):
            partial = target.clone()
            partial[:, j:] = -1
            logits = model.decode(partial, memory, memory_mask, 1.0)[:, j]
            expected.append(F.cross_entropy(logits, target[:, j], reduction="none"))
    assert loss.item() == pytest.approx(float(torch.stack(expected).mean()), rel=1e-5)
    loss.backward()
    assert model.encoder.blocks[0].ffn.up.weight.grad.abs().sum() > 0


def test_teacher_forcing_with_the_causal_encoder_trains_every_target_in_every_state():
    table = parallel_table(L=4)
    model = make_model(table, mdgr_teacher_forcing=True, mdgr_order="left_to_right",
                       mdgr_parallel=1, mdgr_history_encoder="causal",
                       train_sample_mode="windows")
    batch = make_batch(table, B=6)
    rows = []
    decode = model.decode_hidden
    model.decode_hidden = lambda partial, *a: (rows.append(partial), decode(partial, *a))[1]
    loss = model.calculate_loss(batch)
    partial = torch.cat(rows)
    assert len(partial) == 4 * int(batch["item_length"].sum()) and torch.isfinite(loss)
    masked = (partial < 0).sum(1)
    assert sorted(masked.tolist()) == sorted([1, 2, 3, 4] * int(batch["item_length"].sum()))


@pytest.mark.parametrize("overrides", [{"mdgr_order": "greedy", "mdgr_parallel": 1},
                                       {"mdgr_order": "left_to_right", "mdgr_parallel": 2}])
def test_teacher_forcing_refuses_decoding_it_does_not_train(overrides):
    with pytest.raises(ValueError, match="mdgr_teacher_forcing"):
        make_model(parallel_table(L=4), mdgr_teacher_forcing=True, **overrides)


def test_teacher_forcing_accepts_any_schedule_of_one_slot_per_step():
    """3 warm-up steps and then steps of 2 slots, on 4 slots, is still one slot per step."""
    table = parallel_table(L=4)
    tf = dict(mdgr_teacher_forcing=True, mdgr_order="left_to_right")
    assert make_model(table, mdgr_warmup_steps=3, mdgr_parallel=2, **tf).schedule == [1] * 4
    with pytest.raises(ValueError, match="mdgr_teacher_forcing"):
        make_model(table, mdgr_warmup_steps=2, mdgr_parallel=2, **tf)


def test_causal_rows_with_token_memory_see_what_inference_sees_on_that_prefix():
    _, model, batch, length, history = history_fixture(
        6, mdgr_history_encoder="causal", train_sample_mode="windows", mdgr_token_memory=True)
    memory, _ = model.encode(history, length)
    user, row_history, row_target = MDGR.every_target(history, length, batch["item_id_sid"])
    partial = row_target.clone()
    partial[:, ::2] = -1
    trained = model.decode(partial, *model.decoder_memory(memory[user], row_history), 1.0)
    prefix_len = (row_history[:, :, 0] >= 0).sum(1)
    alone, _ = model.encode(row_history[:, :int(prefix_len.max())], prefix_len)
    inferred = model.decode(partial, *model.decoder_memory(alone, row_history[:, :alone.shape[1]]),
                            1.0)
    assert torch.allclose(trained, inferred, atol=1e-5)


# ---------------------------------------------------------------------------- mask probe
def test_probe_masks_exactly_k_uniform_slots_and_names_decoding_states():
    from recbole_mdgr.mask_probe import decoding_states, random_masks

    gen = torch.Generator().manual_seed(0)
    masks = random_masks(9000, 9, 3, gen)
    assert torch.equal(masks.sum(1), torch.full((9000,), 3))
    assert masks.float().mean(0).sub(1 / 3).abs().max() < 0.02  # every slot alike
    assert decoding_states([1, 1, 1, 1, 2, 2, 1], 9) == [9, 8, 7, 6, 5, 3, 1]
    assert decoding_states(decoding_schedule(8, 4, 2), 8) == [8, 7, 6, 5, 4, 2]


@pytest.mark.parametrize("oracle", [True, False])
def test_probe_scores_only_the_masked_slots_against_the_target(oracle):
    """A decoder that reads the answer off its input (the revealed slots equal the target)
    and is right, or wrong, on every masked slot: accuracy 1 or 0, per k, over k slots a row."""
    from recbole_mdgr.mask_probe import masked_slot_accuracy

    table = parallel_table(L=4)
    model = make_model(table)
    batch = make_batch(table, B=6)
    target = batch["item_id_sid"]
    V = max(model.sid_vocab_sizes)
    seen = []

    def decode(partial, memory, memory_mask, delta):
        seen.append(partial.clone())
        assert delta == 1.0 and memory.shape[0] == len(partial)
        revealed = partial >= 0
        assert torch.equal(partial[revealed], target[revealed])
        answer = target if oracle else (target + 1) % V
        return F.one_hot(answer, V).float() * 50.0

    model.decode = decode
    rows = masked_slot_accuracy(model, [batch])
    assert [r["k"] for r in rows] == [1, 2, 3, 4]
    assert [r["slots"] for r in rows] == [6 * k for k in (1, 2, 3, 4)]
    assert [int((p < 0).sum(1).unique()) for p in seen] == [1, 2, 3, 4]
    for row in rows:
        assert row["accuracy"] == (1.0 if oracle else 0.0)
        assert (row["cross_entropy"] < 1e-6) == oracle
    shares = model.mask_count_probs(model.difficulty(1.0))  # what the probe reports
    assert float(shares.sum()) == pytest.approx(1.0) and int(shares.argmax()) == 3
