"""MADRec: the masked-diffusion loss, any-order masked beam search, counted forward passes."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from recbole_mdgr.model.decoding import choose_slots, masked_beam_search, nfe_schedule
from recbole_mdgr.model.madrec import MADRec
from recbole_mdgr.tokenizer.sid_table import build_table

from conftest import overfit
from test_tiger import L_MAX, FakeDataset, make_batch, make_table

NEG_INF = float("-inf")


def make_config(**overrides):
    config = {
        "USER_ID_FIELD": "user_id", "ITEM_ID_FIELD": "item_id", "LIST_SUFFIX": "_list",
        "ITEM_LIST_LENGTH_FIELD": "item_length", "NEG_PREFIX": "neg_",
        "MAX_ITEM_LIST_LENGTH": L_MAX, "device": torch.device("cpu"), "topk": [5, 10],
        "n_layers": 2, "hidden_size": 32, "n_heads": 2, "head_dim": 16, "inner_size": 64,
        "hidden_act": "relu", "dropout_prob": 0.0, "attn_dropout_prob": 0.0,
        "ffn_dropout_prob": 0.0, "initializer_range": 0.2, "encoder_buckets": 2,
        "madrec_min_t": 0.001, "madrec_t_sampling": "uniform", "madrec_last_item_mask_prob": 0.0,
        "madrec_last_item_suffix": False, "madrec_order": "greedy",
        "madrec_nfe": None, "beam_size": 10, "sid_constrained": True, "seed": 0,
        "madrec_attention": "full",
    }
    config.update(overrides)
    return config


def make_model(table, **overrides):
    torch.manual_seed(0)
    return MADRec(make_config(**overrides), FakeDataset(table)).eval()


# ---------------------------------------------------------------------------- training
def test_loss_is_the_1_over_t_weighted_ce_of_masked_tokens_only():
    table = make_table(n_real=30, sizes=(4, 4))  # m = 3
    model = make_model(table)
    batch = make_batch(table, B=3)
    length = batch["item_length"]
    codes = model.sequence_codes(batch["item_id_list_sid"], length, batch["item_id_sid"])
    real = codes.flatten(1) >= 0
    mask = torch.zeros_like(real)
    mask[0, [0, 4]] = True  # sequence 0: two tokens
    mask[2, 1] = True  # sequence 2: one; sequence 1: none
    t = torch.tensor([0.5, 0.9, 0.25])
    loss = model.masked_loss(codes, mask, t, length + 1)
    # by hand: the model's log-probs at the masked positions of the masked input
    flat = codes.flatten(1)
    hidden = model.encode(model.tokens_of(torch.where(mask.view_as(codes), -2, codes)),
                          length + 1)
    want = 0.0
    hidden = hidden.detach()
    for b, p in [(0, 0), (0, 4), (2, 1)]:
        j = p % table.m
        logp = model.heads[j](hidden[b, p]).log_softmax(-1).detach()
        want += -float(logp[flat[b, p]]) / float(t[b])
    want /= int(real.sum())
    assert loss.item() == pytest.approx(want, rel=1e-5)
    # unmasked tokens add nothing: changing a target the mask does not cover...
    other = codes.clone()
    other[1, 0, 0] = (other[1, 0, 0] + 1) % 4
    moved = model.masked_loss(other, mask, t, length + 1)
    # ...changes only the model's input, never a loss term: with no token of sequence 1
    # masked, the loss's terms are those of sequences 0 and 2 (their inputs unchanged)
    assert moved.item() == pytest.approx(loss.item(), rel=1e-5)


def test_mask_rate_follows_t_and_last_item_pattern():
    table = make_table(n_real=30, sizes=(4, 4))
    model = make_model(table, madrec_last_item_mask_prob=0.0)
    real = torch.ones(4000, 12, dtype=torch.bool)
    n_items = torch.full((4000,), 4)
    gen = torch.Generator().manual_seed(0)
    mask, t = model.sample_mask(real, n_items, gen)
    assert t.min() >= 0.001 and abs(float(t.mean()) - 0.5) < 0.02
    # masked share per sequence tracks its t
    share = mask.float().mean(1)
    assert float(torch.corrcoef(torch.stack([share, t]))[0, 1]) > 0.9
    model.last_item_mask_prob = 1.0
    mask, t = model.sample_mask(real, n_items, gen)
    assert (t == 0.25).all()  # its masked share: 1 item of 4
    assert mask[:, 9:].all() and not mask[:, :9].any()  # item 4 of 4 = tokens 9..11


def test_last_item_suffix_masks_the_last_k_tokens_of_the_last_item():
    table = make_table(n_real=30, sizes=(4, 4))  # m = 3
    model = make_model(table, madrec_last_item_mask_prob=1.0)
    real = torch.ones(3000, 12, dtype=torch.bool)
    real[:1000, 9:] = False  # a third of the sequences have 3 items, the rest 4
    n_items = torch.full((3000,), 4)
    n_items[:1000] = 3
    gen = torch.Generator().manual_seed(0)
    whole, _ = model.sample_mask(real, n_items, gen)
    model.last_item_suffix = True
    mask, t = model.sample_mask(real, n_items, gen)
    assert (mask <= whole).all()  # inside the last item...
    k = mask.sum(1)
    last = (n_items * 3)[:, None] - 3 + torch.arange(3)  # the last item's 3 token positions
    for i, at in enumerate(last.tolist()):  # ...and a suffix of it: the last k tokens
        assert mask[i].nonzero().flatten().tolist() == at[3 - int(k[i]):]
    counts = torch.bincount(k, minlength=4)[1:]
    assert counts.min() > 900  # k uniform on 1..3 (1,000 expected each)
    torch.testing.assert_close(t, k.float() / (3 * n_items.float()))  # the masked share


def test_stratified_t_puts_one_sequence_in_each_stratum():
    table = make_table(n_real=30, sizes=(4, 4))
    model = make_model(table, madrec_t_sampling="stratified")
    real = torch.ones(64, 12, dtype=torch.bool)
    n_items = torch.full((64,), 4)
    gen = torch.Generator().manual_seed(0)
    means = []
    for _ in range(200):
        _, t = model.sample_mask(real, n_items, gen)
        strata = torch.div(t.clamp(max=1 - 1e-9) * 64, 1, rounding_mode="floor").long()
        assert sorted(strata.tolist()) == list(range(64))
        means.append(float(t.mean()))
    # each t is uniform, so the batch mean is 0.5 up to the shift's 1/B: far less spread
    # than 64 independent draws give (std 0.036)
    assert max(abs(m - 0.5) for m in means) <= 0.5 / 64 + 1e-4  # + the floor's nudge
    model.stratified_t = False
    _, t = model.sample_mask(real, n_items, gen)
    assert len(set(torch.div(t * 64, 1, rounding_mode="floor").long().tolist())) < 64


def test_last_item_sequences_weigh_as_much_as_random_t_ones():
    # With uniform heads every token's CE is log(V_slot), so a sequence's expected loss
    # is the mean of log(V_slot) over its real tokens whichever way it is masked; a
    # last-item sequence weighted 1 per token would weigh n_items times less.
    table = make_table(n_real=30, sizes=(4, 4))  # m = 3
    model = make_model(table)
    for head in model.heads:
        torch.nn.init.zeros_(head.weight), torch.nn.init.zeros_(head.bias)
    B = 4000
    batch = make_batch(table, B=B)
    length = batch["item_length"]
    codes = model.sequence_codes(batch["item_id_list_sid"], length, batch["item_id_sid"])
    real = codes.flatten(1) >= 0
    ce = torch.tensor([float(np.log(v)) for v in model.sid_vocab_sizes])
    want = float(ce.mean())
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        mask, t = model.sample_mask(real, length + 1, gen)
        uniform = model.masked_loss(codes, mask, t, length + 1).item()
        model.last_item_mask_prob = 1.0
        mask, t = model.sample_mask(real, length + 1, gen)
        last_item = model.masked_loss(codes, mask, t, length + 1).item()
    assert last_item == pytest.approx(want, rel=1e-5)  # exact: every sequence the same
    assert uniform == pytest.approx(want, rel=0.1)  # in expectation over t


# ---------------------------------------------------------------------------- decoding
def test_schedules_split_the_slots():
    assert nfe_schedule(4, 4) == [1, 1, 1, 1] and nfe_schedule(4, 2) == [2, 2]
    assert nfe_schedule(4, 1) == [4] and nfe_schedule(4, 3) == [1, 1, 2]
    with pytest.raises(ValueError, match="1..4"):
        nfe_schedule(4, 5)


def test_greedy_commits_the_largest_margin_slot():
    probs = torch.tensor([[[0.5, 0.4, 0.1],    # margin 0.1
                           [0.9, 0.05, 0.05],  # margin 0.85, but already fixed below
                           [0.7, 0.2, 0.1],    # margin 0.5
                           [0.6, 0.3, 0.1]]])  # margin 0.3
    masked = torch.tensor([[True, False, True, True]])
    slots = choose_slots(probs.log(), masked, 2, "greedy")
    assert slots.tolist() == [[2, 3]]
    assert choose_slots(probs.log(), masked, 2, "left_to_right").tolist() == [[0, 2]]
    def random(seed):
        gen = torch.Generator().manual_seed(seed)
        return tuple(choose_slots(probs.log(), masked, 2, "random", gen)[0].tolist())

    picks = {random(seed) for seed in range(20)}
    assert all(random(seed) == random(seed) for seed in range(3))  # the seed fixes them
    assert {slot for pick in picks for slot in pick} == {0, 2, 3}  # every masked slot, only
    assert len(picks) > 2  # and not one fixed pair


class SlotModel:
    """A fake masked model: each slot's log-probs are a fixed random function of the user
    and of the slots fixed so far (a dict lookup), counting its calls."""

    def __init__(self, vocab_sizes, B, seed=0):
        self.vocab_sizes, self.B, self.calls = vocab_sizes, B, 0
        self.gen = torch.Generator().manual_seed(seed)
        self.table = {}

    def log_probs(self, user, partial):
        key = (user, tuple(partial))
        if key not in self.table:
            V = max(self.vocab_sizes)
            rows = []
            for v in self.vocab_sizes:
                logits = torch.full((V,), NEG_INF)
                logits[:v] = 3 * torch.randn(v, generator=self.gen)
                rows.append(logits.log_softmax(-1))
            self.table[key] = torch.stack(rows)
        return self.table[key]

    def __call__(self, partial):
        self.calls += 1
        W = len(partial) // self.B
        return torch.stack([self.log_probs(n // W, row) for n, row in
                            enumerate(partial.tolist())])

    def along(self, user, sid, order):
        """Log-probability of ``sid`` when its slots are fixed one at a time in ``order``."""
        partial, total = [-1] * len(sid), 0.0
        for j in order:
            total += float(self.log_probs(user, partial)[j, sid[j]])
            partial[j] = sid[j]
        return total


def test_one_slot_per_step_at_full_width_is_exact_scoring_along_the_order():
    table = build_table(np.random.default_rng(0).integers(0, 4, (25, 2)), [4, 4], "always")
    B, n = 3, table.n_items - 1
    model = SlotModel(table.vocab_sizes, B)
    sids, scores = masked_beam_search(model, table, B, width=n, schedule=[1, 1, 1],
                                      order="left_to_right")
    assert model.calls == 3
    for b in range(B):
        exact = {tuple(c): model.along(b, c, range(3)) for c in table.codes[1:].tolist()}
        ranking = sorted(exact, key=exact.get, reverse=True)
        assert [tuple(s) for s in sids[b].tolist()] == ranking
        torch.testing.assert_close(scores[b], torch.tensor([exact[s] for s in ranking]))


@pytest.mark.parametrize("width", [3, 16])
def test_two_slots_in_one_step_equal_joint_enumeration(width):
    table = build_table(np.array([[i, j] for i in range(4) for j in range(4)]), [4, 4], "none")
    B = 2
    model = SlotModel(table.vocab_sizes, B, seed=5)
    sids, scores = masked_beam_search(model, table, B, width=width, schedule=[2])
    assert model.calls == 1
    for b in range(B):
        logp = model.log_probs(b, [-1, -1])
        joint = {(x, y): float(logp[0, x] + logp[1, y])
                 for x, y in itertools.product(range(4), range(4))}
        best = sorted(joint, key=joint.get, reverse=True)[:width]
        assert [tuple(s) for s in sids[b].tolist()] == best
        torch.testing.assert_close(scores[b], torch.tensor([joint[s] for s in best]))


def test_two_constrained_slots_in_one_step_at_full_width_rank_every_real_sid_jointly():
    """With the valid-SID constraint only 6 of the 16 pairs are items: one call committing
    both slots returns exactly those 6, ranked by their joint (summed) log-probability."""
    real = [(0, 1), (0, 3), (1, 0), (2, 2), (3, 1), (3, 3)]
    table = build_table(np.array(real), [4, 4], "none")
    B = 2
    model = SlotModel(table.vocab_sizes, B, seed=7)
    sids, scores = masked_beam_search(model, table, B, width=len(real), schedule=[2])
    assert model.calls == 1
    for b in range(B):
        logp = model.log_probs(b, [-1, -1])
        joint = {sid: float(logp[0, sid[0]] + logp[1, sid[1]]) for sid in real}
        best = sorted(joint, key=joint.get, reverse=True)
        assert [tuple(s) for s in sids[b].tolist()] == best
        torch.testing.assert_close(scores[b], torch.tensor([joint[s] for s in best]))


@pytest.mark.parametrize("schedule", [[1, 1, 1], [1, 2], [2, 1], [3]])
def test_constrained_search_returns_only_real_sids_with_nfe_equal_to_steps(schedule):
    table = build_table(np.random.default_rng(1).integers(0, 6, (20, 2)), [6, 6], "always")
    model = SlotModel(table.vocab_sizes, B=4, seed=2)
    sids, scores = masked_beam_search(model, table, 4, width=8, schedule=schedule)
    assert model.calls == len(schedule)
    live = scores > NEG_INF
    items = table.items_of(sids[live])
    assert (items > 0).all() and live.sum(1).min() == 8


@pytest.mark.parametrize("schedule,order", [([1, 1, 1], "left_to_right"), ([1, 1, 1], "greedy"),
                                            ([1, 2], "greedy"), ([3], "greedy")])
def test_masked_search_never_returns_a_banned_item_and_keeps_its_width(schedule, order):
    table = build_table(np.random.default_rng(1).integers(0, 6, (20, 2)), [6, 6], "always")
    history = torch.tensor([[3, 7, 11, 0], [0, 0, 0, 0], [5, 6, 8, 13], [20, 19, 18, 17]])
    model = SlotModel(table.vocab_sizes, B=4, seed=2)
    sids, scores = masked_beam_search(model, table, 4, width=8, schedule=schedule, order=order,
                                      banned=table.lookup(history))
    items = table.items_of(sids.reshape(-1, table.m)).view(4, -1)
    assert torch.isfinite(scores).all() and (items > 0).all() and items.shape[1] == 8
    assert not (items[:, :, None] == history[:, None, :]).any()


def test_banned_at_full_width_one_slot_per_step_is_exact_scoring_of_the_rest():
    table = build_table(np.random.default_rng(0).integers(0, 4, (25, 2)), [4, 4], "always")
    B, n = 2, table.n_items - 1
    history = torch.tensor([[2, 4, 6, 0], [1, 25, 0, 0]])
    model = SlotModel(table.vocab_sizes, B)
    sids, scores = masked_beam_search(model, table, B, width=n, schedule=[1, 1, 1],
                                      order="left_to_right", banned=table.lookup(history))
    for b in range(B):
        codes = [tuple(table.codes[i].tolist()) for i in range(1, table.n_items)
                 if i not in history[b].tolist()]
        exact = {c: model.along(b, c, range(3)) for c in codes}
        ranking = sorted(exact, key=exact.get, reverse=True)
        live = scores[b] > NEG_INF
        assert [tuple(s) for s in sids[b][live].tolist()] == ranking


# ---------------------------------------------------------------------------- the model
@pytest.mark.parametrize("nfe", [1, 2, 4])
def test_generate_runs_one_forward_per_step_for_all_beams(nfe):
    table = make_table(n_real=40, sizes=(5, 6, 3))  # m = 4
    model = make_model(table, madrec_nfe=nfe, beam_size=10)
    calls = []
    encode = model.encode
    model.encode = lambda tokens, n, *rest: calls.append(len(tokens)) or encode(tokens, n, *rest)
    batch = make_batch(table, B=5)
    items, scores = model.generate(batch, k=10)
    assert len(calls) == nfe  # not nfe x beams
    # one row per user first, then one per live beam (at most 10 per user), in one call
    assert calls[0] == 5 and all(c % 5 == 0 and c <= 5 * 10 for c in calls[1:])
    assert (items > 0).all() and items.shape == (5, 10)
    assert model.decode_stats.summary()["nfe_per_user"] == nfe
    assert model.decode_stats.invalid == 0


def test_model_beams_at_full_width_are_exact_left_to_right_scoring():
    table = make_table(n_real=30, sizes=(4, 5))  # m = 3
    n = table.n_items - 1
    model = make_model(table, madrec_order="left_to_right", beam_size=n)
    batch = make_batch(table, B=3, seed=3)
    items, scores = model.generate(batch, k=n)
    # exact: every item's SID scored slot by slot, left to right, through the model itself
    length, B = batch["item_length"], 3
    for b in range(B):
        exact = {}
        for item in range(1, table.n_items):
            sid = table.codes[item].tolist()
            total, partial = 0.0, [-1] * table.m
            for j in range(table.m):
                codes = model.sequence_codes(batch["item_id_list_sid"][b : b + 1],
                                             length[b : b + 1],
                                             torch.tensor([[c if c >= 0 else -2
                                                            for c in partial]]))
                hidden = model.encode(model.tokens_of(codes), length[b : b + 1] + 1)
                pos = int(length[b]) * table.m
                logp = model.slot_log_probs(hidden[:, pos : pos + table.m])[0]
                total += float(logp[j, sid[j]].detach())
                partial[j] = sid[j]
            exact[item] = total
        ranking = sorted(exact, key=exact.get, reverse=True)
        assert items[b].tolist() == ranking
        torch.testing.assert_close(scores[b], torch.tensor([exact[i] for i in ranking]),
                                   atol=1e-4, rtol=1e-4)


def test_loss_decreases_when_overfitting_a_tiny_batch():
    table = make_table()
    model = make_model(table, dropout_prob=0.1, initializer_range=0.02,
                       madrec_last_item_mask_prob=0.5).train()
    batch = make_batch(table, B=8)
    length = batch["item_length"]
    codes = model.sequence_codes(batch["item_id_list_sid"], length, batch["item_id_sid"])
    last = torch.zeros_like(codes, dtype=torch.bool)
    last[torch.arange(8), length] = True  # the inference pattern: the next item masked

    def next_item_loss():
        model.eval()
        with torch.no_grad():
            loss = model.masked_loss(codes, last.flatten(1), torch.ones(8), length + 1).item()
        model.train()
        return loss

    before = next_item_loss()
    torch.manual_seed(0)
    overfit(model, batch, 300)
    after = next_item_loss()
    assert after < 0.2 * before, (before, after)
    model.eval()
    items, _ = model.generate(batch, k=1)
    assert (items[:, 0] == batch["item_id"]).float().mean() >= 0.75


def test_cached_attention_decodes_exactly_what_its_masked_full_pass_computes():
    """``cached``: the history encoded once + m tokens per step gives the same log-probs as
    encoding the whole sequence with history tokens blind to the last item."""
    table = make_table(n_real=30, sizes=(4, 5))
    model = make_model(table, madrec_attention="cached")
    batch = make_batch(table, B=4, seed=2)
    history, length = batch["item_id_list_sid"], batch["item_length"]
    step = model.cached_step(history, length)
    partial = torch.tensor([[-1, -1, -1]] * 4 + [[2, -1, 0]] * 4)  # W = 2 beams per user
    got = step(partial)
    full = model.full_step(model.sequence_codes(history, length,
                                                history.new_full((4, table.m), -2)), length + 1)
    torch.testing.assert_close(got, full(partial), atol=1e-5, rtol=1e-5)
    # and the mask matters: history tokens never see the last item's in cached mode
    codes = model.sequence_codes(history, length, batch["item_id_sid"])
    moved = codes.clone()
    moved[torch.arange(4), length] = (moved[torch.arange(4), length] + 1) % 4
    a = model.encode(model.tokens_of(codes), length + 1)
    b = model.encode(model.tokens_of(moved), length + 1)
    hist = torch.arange(a.shape[1])[None, :] < (length * table.m)[:, None]
    torch.testing.assert_close(a[hist], b[hist])
    model.attention = "full"
    a = model.encode(model.tokens_of(codes), length + 1)
    b = model.encode(model.tokens_of(moved), length + 1)
    assert not torch.allclose(a[hist], b[hist])


@pytest.mark.parametrize("nfe", [1, 2, 4])
def test_cached_generate_encodes_history_once_then_one_pass_per_step(nfe):
    table = make_table(n_real=40, sizes=(5, 6, 3))  # m = 4
    model = make_model(table, madrec_nfe=nfe, madrec_attention="cached", beam_size=10)
    rows = []
    model.encoder.register_forward_hook(lambda mod, args, kwargs, out: rows.append(
        tuple(args[0].shape[:2])), with_kwargs=True)
    batch = make_batch(table, B=5)
    items, _ = model.generate(batch, k=10)
    L = int(batch["item_length"].max())
    assert rows[0] == (5, L * table.m)  # the history, once per user
    assert len(rows) == 1 + nfe and all(r[1] == table.m for r in rows[1:])  # m tokens a beam
    assert (items > 0).all() and model.decode_stats.invalid == 0


TF = {"madrec_attention": "cached", "madrec_teacher_forcing": True,
      "madrec_order": "left_to_right"}


def left_to_right_nll(model, batch):
    """Sum over users and slots of -log p(target slot | the target's slots before it), each
    user decoded alone by the model's own cached decoding step (history text fused in under
    ``madrec_dense``)."""
    history, length, target = batch["item_id_list_sid"], batch["item_length"], batch["item_id_sid"]
    text = model.history_text(batch)
    total, m = 0.0, model.sid_len
    for b in range(len(length)):
        step = model.cached_step(history[b : b + 1, : int(length[b])], length[b : b + 1],
                                 None if text is None else text[b : b + 1])
        partial = [-1] * m
        for j in range(m):
            total -= step(torch.tensor([partial]))[0, j, target[b, j]].item()
            partial[j] = int(target[b, j])
    return total


@pytest.mark.parametrize("history_input", ["tokens", "items"])
def test_teacher_forcing_loss_is_left_to_right_decodings_nll_of_the_target(history_input):
    """Each slot's term is the log-prob left-to-right decoding gives it, slots before it
    fixed to the target's, computed independently per user with the model's decoder (so a
    user's terms do not depend on the other, longer, histories padded beside it)."""
    table = make_table(n_real=30, sizes=(4, 5))  # m = 3
    model = make_model(table, madrec_history_input=history_input, **TF)
    batch = make_batch(table, B=5, seed=4)
    target = batch["item_id_sid"]
    loss = model.calculate_loss(batch)
    assert loss.item() == pytest.approx(left_to_right_nll(model, batch) / (5 * table.m),
                                        rel=1e-5)
    # the target's codes are the answer of their own row only: a different target code at
    # slot 1 changes the loss (rows 1 and 2), the history still unmasked and unchanged
    other = dict(batch.interaction, item_id_sid=target.clone())
    other["item_id_sid"][0, 1] = (target[0, 1] + 1) % 5
    assert model.calculate_loss(other).item() != pytest.approx(loss.item(), rel=1e-6)


@pytest.mark.parametrize("history_input", ["tokens", "items"])
def test_teacher_forcing_trains_the_history_encoding_and_overfits_to_its_targets(history_input):
    table = make_table()
    model = make_model(table, dropout_prob=0.1, initializer_range=0.02,
                       madrec_history_input=history_input, **TF).train()
    batch = make_batch(table, B=8)
    loss = model.calculate_loss(batch)
    loss.backward()
    # the history is read through the cached keys/values, which stay differentiable: the
    # recency embeddings only history items carry (>= 1; the target's is 0) get gradients
    grads = model.recency_embedding.weight.grad[1 : int(batch["item_length"].max()) + 1]
    assert (grads.abs().sum(-1) > 0).all()
    model.zero_grad()
    torch.manual_seed(0)
    overfit(model, batch, 120, lr=1e-2)
    model.eval()
    after = model.calculate_loss(batch).item()
    assert after < 0.2 * loss.item(), (loss.item(), after)
    items, _ = model.generate(batch, k=1)
    assert (items[:, 0] == batch["item_id"]).float().mean() >= 0.75


def test_item_history_encodes_one_entry_per_history_item_from_its_codes():
    """``madrec_history_input: items``: the history pass runs over ``L`` entries, not
    ``L * m``; each entry is read from its item's codes (one changed code changes the next
    item's log-probs) and its recency; each decoding step still runs ``m`` slot tokens."""
    table = make_table(n_real=40, sizes=(5, 6, 3))  # m = 4
    model = make_model(table, madrec_history_input="items", beam_size=10, **TF)
    rows = []
    model.encoder.register_forward_hook(lambda mod, args, kwargs, out: rows.append(
        tuple(args[0].shape[:2])), with_kwargs=True)
    batch = make_batch(table, B=5, seed=3)
    items, _ = model.generate(batch, k=10)
    L = int(batch["item_length"].max())
    assert rows[0] == (5, L) and [r[1] for r in rows[1:]] == [table.m] * table.m
    assert (items > 0).all() and model.decode_stats.invalid == 0
    history, length = batch["item_id_list_sid"], batch["item_length"]
    blank = torch.full((5, table.m), -1)
    before = model.cached_step(history, length)(blank)
    changed = history.clone()
    changed[0, 0, 1] = (changed[0, 0, 1] + 1) % 6
    after = model.cached_step(changed, length)(blank)
    assert not torch.allclose(before[0], after[0])
    torch.testing.assert_close(before[1:], after[1:])
    # a user's entry comes from its items alone: the mean of one item's token embeddings
    x, real = model.embed_items(history[:1, :1], length[:1] + 1)
    tokens = model.tokens_of(history[:1, :1])[0]
    expected = model.token_embedding(tokens).mean(0) + model.recency_embedding.weight[
        int(length[0])]
    torch.testing.assert_close(x[0, 0], expected)
    assert real.tolist() == [[True]]


def test_item_history_needs_teacher_forcing():
    from recbole_mdgr.errors import UserError

    with pytest.raises(UserError, match="madrec_history_input: items .* madrec_teacher_forcing"):
        make_model(make_table(n_real=30, sizes=(4, 5)), madrec_history_input="items",
                   madrec_attention="cached")
    with pytest.raises(UserError, match="madrec_history_input"):
        make_model(make_table(n_real=30, sizes=(4, 5)), madrec_history_input="item", **TF)


@pytest.mark.parametrize("override, named", [
    ({"madrec_attention": "full"}, "madrec_attention: full"),
    ({"madrec_order": "greedy"}, "madrec_order: greedy"),
    ({"madrec_nfe": 2}, "madrec_nfe=2"),
])
def test_teacher_forcing_refuses_the_decodings_it_does_not_train(override, named):
    from recbole_mdgr.errors import UserError

    with pytest.raises(UserError, match=named):
        make_model(make_table(n_real=30, sizes=(4, 5)), **dict(TF, **override))


# ---------------------------------------------------------------------------- dense retrieval
class DenseDataset(FakeDataset):
    """FakeDataset with the item vectors the SIDs would have been built from."""

    def __init__(self, table, d_text=8, seed=0):
        super().__init__(table)
        vectors = np.random.default_rng(seed).normal(size=(table.n_items, d_text))
        vectors[0] = 0.0
        self.vectors = vectors.astype(np.float32)

    def item_vectors(self):
        return self.vectors


def make_dense_model(table, **overrides):
    torch.manual_seed(0)
    dense = dict(madrec_dense=True, madrec_dense_beta=0.2, madrec_dense_layer=1,
                 madrec_dense_rank=4, madrec_dense_hidden=16, madrec_dense_weight=1.0)
    config = make_config(**{**dense, **overrides})
    return MADRec(config, DenseDataset(table)).eval()


def test_info_nce_is_the_softmax_cross_entropy_over_all_items_worked_by_hand():
    from recbole_mdgr.model.dense import info_nce

    vectors = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])  # row 0 = padding
    pred = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    # row 0: logits (1, 0), target item 1 -> log(1 + e^-1); row 1: logits (0, 2), target
    # item 1 -> log(1 + e^2); padding is no candidate
    want = (np.log1p(np.exp(-1.0)) + np.log1p(np.exp(2.0))) / 2
    assert info_nce(pred, vectors, torch.tensor([1, 1])).item() == pytest.approx(want, abs=1e-6)


def test_beta_1_masks_whole_items_with_probability_t_and_beta_0_single_tokens():
    table = make_table(n_real=30, sizes=(4, 4))  # m = 3
    model = make_dense_model(table, madrec_dense_beta=1.0)
    B, I, m = 400, 21, model.sid_len
    real = torch.ones(B, I * m, dtype=torch.bool)
    real[:, -m:] = torch.arange(B)[:, None] % 2 == 0  # half the rows: 20 items
    n_items = torch.where(torch.arange(B) % 2 == 0, I, I - 1)
    mask, t = model.sample_mask(real, n_items, torch.Generator().manual_seed(0))
    per_item = mask.view(B, I, m)
    assert torch.equal(per_item.all(-1), per_item.any(-1))  # all of an item's tokens or none
    assert not (mask & ~real).any()
    share = per_item[:, :20].any(-1).float().mean(1)  # masked share of each row's items
    assert torch.corrcoef(torch.stack([share, t]))[0, 1] > 0.9  # each item w.p. t
    assert abs(float((share - t).mean())) < 0.02
    model.dense_beta = 0.0
    mask, _ = model.sample_mask(real, n_items, torch.Generator().manual_seed(0))
    per_item = mask.view(B, I, m)
    assert (per_item.any(-1) & ~per_item.all(-1)).any()  # partly masked items exist


def test_text_reaches_only_items_whose_sid_is_entirely_visible(monkeypatch):
    table = make_table(n_real=30, sizes=(4, 4))
    model = make_dense_model(table)
    m, d = model.sid_len, model.hidden_size
    items = torch.tensor([[3, 5, 7, 0]])
    visible = torch.tensor([[True, False, True, True]])
    out = model.item_text_inputs(items, visible).view(1, 4, m, d)
    assert out[0, 1].abs().sum() == 0 and out[0, 3].abs().sum() == 0  # masked item, padding
    for col, item in ((0, 3), (2, 7)):  # A_j h_text, slot by slot
        want = model.text_proj(model.item_text[item]).view(m, d)
        assert torch.allclose(out[0, col], want, atol=1e-5)
    # in training, "visible" means: none of the item's tokens is masked
    batch = make_batch(table, B=4)
    length = batch["item_length"]
    codes = model.sequence_codes(batch["item_id_list_sid"], length, batch["item_id_sid"])
    items = model.append_items(batch["item_id_list"], length, batch["item_id"][:, None], 0)
    mask = torch.zeros(codes.shape, dtype=torch.bool)
    mask[0, 0, 1] = True  # user 0: its first item partly masked
    mask[torch.arange(4), length] = True  # every target fully masked
    seen = []
    real = model.item_text_inputs
    monkeypatch.setattr(model, "item_text_inputs", lambda i, v: seen.append(v) or real(i, v))
    model.masked_loss(codes, mask.flatten(1), torch.full((4,), 0.5), length + 1, items)
    assert torch.equal(seen[0], ~mask.any(-1))


@torch.no_grad()
def test_dense_retrieval_ranks_all_items_by_inner_product_like_brute_force():
    table = make_table(n_real=40, sizes=(4, 4))
    model = make_dense_model(table, madrec_retrieval="dense")
    batch = make_batch(table, B=5)
    items, scores = model.generate(batch, 10)
    brute = model.dense_query(model.decoding_step(batch), 5) @ model.item_text[1:].T
    want_scores, want_items = brute.topk(10, dim=1)
    assert torch.equal(items, want_items + 1)
    assert torch.allclose(scores, want_scores, atol=1e-5)
    assert model.decode_stats.summary()["nfe_per_user"] == 1.0


@torch.no_grad()
@pytest.mark.parametrize("attention", ["full", "cached"])
def test_unified_reorders_the_generated_items_exactly_by_dense_score(attention):
    table = make_table(n_real=40, sizes=(4, 4))
    model = make_dense_model(table, madrec_attention=attention, madrec_dense_layer=2,
                             beam_size=10)
    batch = make_batch(table, B=5)
    generated, _ = model.generate(batch, 10)  # generative: the beam_size candidates
    model.retrieval = "unified"
    unified, scores = model.generate(batch, 5)
    queries = model.dense_query(model.decoding_step(batch), 5)
    for b in range(5):
        cands = [i for i in generated[b].tolist() if i > 0]
        dense = {i: float(queries[b] @ model.item_text[i]) for i in cands}
        want = sorted(cands, key=lambda i: -dense[i])[:5]
        assert unified[b].tolist()[: len(want)] == want
        assert scores[b, : len(want)].tolist() == pytest.approx([dense[i] for i in want],
                                                                abs=1e-5)


def test_dense_model_learns_and_unknown_retrieval_modes_are_refused():
    table = make_table(n_real=30, sizes=(4, 4))
    model = make_dense_model(table).train()
    batch = make_batch(table, B=8)
    length = batch["item_length"]
    codes = model.sequence_codes(batch["item_id_list_sid"], length, batch["item_id_sid"])
    items = model.append_items(batch["item_id_list"], length, batch["item_id"][:, None], 0)
    mask = torch.zeros(codes.shape, dtype=torch.bool)
    mask[torch.arange(8), length] = True  # the targets, fully masked: the dense loss's items
    t = torch.ones(8)

    def dense_loss():
        _, kept = model.encode(model.tokens_of(torch.where(mask, -2, codes)), length + 1,
                               model.item_text_inputs(items, ~mask.any(-1)), keep_layer=1)
        return model.dense_loss(kept, mask.all(-1), items)

    first = dense_loss().item()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(60):
        loss = model.masked_loss(codes, mask.flatten(1), t, length + 1, items)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert dense_loss().item() < 0.5 * first  # the predicted vectors move to their items'
    from recbole_mdgr.errors import UserError
    from recbole_mdgr.model.base import ConfigView

    with pytest.raises(UserError, match="madrec_retrieval must be one of"):
        MADRec.check_config(ConfigView(make_config(madrec_retrieval="sparse")))
    with pytest.raises(UserError, match="needs a model trained with madrec_dense: True"):
        MADRec.check_config(ConfigView(make_config(madrec_retrieval="unified")))
    with pytest.raises(UserError, match="madrec_last_item_suffix: True .* set "
                                        "madrec_last_item_mask_prob > 0"):
        MADRec.check_config(ConfigView(make_config(madrec_last_item_suffix=True)))
    MADRec.check_config(ConfigView(make_config(madrec_last_item_suffix=True,
                                               madrec_last_item_mask_prob=1.0)))
    with pytest.raises(UserError, match=r"madrec_dense_layer must be in 1..n_layers \(2\)"):
        MADRec.check_config(ConfigView(make_config(madrec_dense=True, madrec_dense_layer=3,
                                                   madrec_dense_beta=0.2)))


DENSE = {"madrec_dense": True, "madrec_dense_layer": 2, "madrec_dense_beta": 0.2,
         "madrec_dense_rank": 4, "madrec_dense_hidden": 8, "madrec_dense_weight": 1.0}


@pytest.mark.parametrize("overrides, named", [
    ({"madrec_attention": "sliding"}, r"madrec_attention must be one of"),
    ({**DENSE, "madrec_dense_beta": 1.5}, r"madrec_dense_beta must be a number in \[0.0, 1.0\]"),
    ({**DENSE, "madrec_dense_beta": "half"}, r"madrec_dense_beta must be a number"),
    ({**DENSE, "madrec_dense_weight": -1.0}, r"madrec_dense_weight must be a number in \[0.0,"),
    ({**DENSE, "madrec_dense_layer": 0}, r"madrec_dense_layer must be a positive integer"),
    ({**DENSE, "madrec_dense_rank": 0}, r"madrec_dense_rank must be a positive integer"),
    ({**DENSE, "madrec_retrieval": "dense", "next_k": 2},
     r"madrec_retrieval: dense predicts one item; with next_k = 2"),
    ({**TF, "compile": True}, r"compile: True would change nothing here"),
    ({"compile": "yes"}, r"compile must be True or False, got 'yes'"),
    ({"hidden_act": "swish"}, r"hidden_act must be one of \('gelu', 'relu'\)"),
])
def test_madrec_knobs_are_refused_by_name(overrides, named):
    from recbole_mdgr.errors import UserError
    from recbole_mdgr.model.base import ConfigView

    MADRec.check_config(ConfigView(make_config(**DENSE)))  # the dense knobs, all valid
    with pytest.raises(UserError, match=named):
        MADRec.check_config(ConfigView(make_config(**overrides)))


@pytest.mark.parametrize("history_input", ["tokens", "items"])
def test_teacher_forcing_with_dense_adds_the_infonce_of_the_dense_query_on_every_target(
        history_input):
    """Under teacher forcing every target is fully masked once (its first row), so the dense
    loss is the InfoNCE of exactly what dense retrieval queries, for every sample."""
    from recbole_mdgr.model.dense import info_nce

    table = make_table(n_real=30, sizes=(4, 5))  # m = 3
    model = make_dense_model(table, madrec_dense_layer=2, madrec_dense_weight=0.5,
                             madrec_history_input=history_input, **TF)
    batch = make_batch(table, B=6, seed=4)
    loss = model.calculate_loss(batch).item()
    generative = left_to_right_nll(model, batch) / (6 * table.m)
    query = model.dense_query(model.decoding_step(batch), 6)
    dense = info_nce(query, model.item_text, batch["item_id"]).item()
    assert dense > 0.1  # a term that would show if it were missing
    assert loss == pytest.approx(generative + 0.5 * dense, rel=1e-5)


def test_teacher_forcing_with_dense_learns_dense_retrieval_of_its_targets():
    table = make_table(n_real=30, sizes=(4, 4))
    model = make_dense_model(table, madrec_retrieval="dense", madrec_dense_layer=2, **TF)
    batch = make_batch(table, B=8)
    items, _ = model.generate(batch, k=1)
    before = (items[:, 0] == batch["item_id"]).float().mean()
    torch.manual_seed(0)
    overfit(model, batch, 80, lr=1e-2)
    items, _ = model.eval().generate(batch, k=1)
    assert (items[:, 0] == batch["item_id"]).float().mean() >= 0.75 > before
