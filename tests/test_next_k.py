"""Next-k items: the leave-k-out split, session recall, joint and item-by-item sessions."""

from __future__ import annotations

import itertools
from collections import OrderedDict

import numpy as np
import pytest
import torch

from recbole_mdgr.config import Config
from recbole_mdgr.data import SIDSequentialDataset
from recbole_mdgr.errors import UserError
from recbole_mdgr.model.decoding import masked_beam_search
from recbole_mdgr.next_k import NEXT_ITEMS, finish_sessions, session_hits, session_result
from recbole_mdgr.quick_start import run_recbole_mdgr
from recbole_mdgr.tokenizer.sid_table import build_table

from conftest import tiny_config, write_tiny_dataset
from test_madrec import SlotModel
from test_madrec import make_model as make_madrec
from test_models import NFE, TINY
from test_tiger import make_batch, make_table
from test_tiger import make_model as make_tiger

NEG_INF = float("-inf")


# ---------------------------------------------------------------------------- the split
# Three users, items named by user and time: a0..a6, b0..b4, c0..c3 (the tiny item file
# has i0..i11; the .inter below maps them). With k = 2:
#   a (7 items): test [a5, a6] after a0..a4; valid [a3, a4] after a0..a2;
#                training samples: targets a1, a2 (a0 starts the sequence, no sample)
#   b (5 items): test [b3, b4] after b0..b2; valid [b1, b2] after b0; no training sample
#   c (4 items): test [c2, c3] after c0, c1; valid would start at c0: no sample
ITEMS = {"a": [0, 1, 2, 3, 4, 5, 6], "b": [7, 8, 9, 10, 11], "c": [3, 1, 4, 9]}


@pytest.fixture
def hand(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.argv", ["pytest"])
    folder = write_tiny_dataset(tmp_path, name="hand", n_items=12, lengths=[1])
    rows = ["user_id:token\titem_id:token\ttimestamp:float"]
    for user, items in ITEMS.items():
        # rows deliberately out of time order: the split must follow the timestamps
        rows += [f"{user}\ti{i}\t{t}" for t, i in reversed(list(enumerate(items)))]
    (folder / "hand.inter").write_text("\n".join(rows) + "\n")
    return tmp_path


def _split(tmp_path, **overrides):
    cfg = tiny_config(tmp_path, sid_quantizer="rq_kmeans", sid_levels=2, sid_codebook_size=4,
                      **overrides)
    dataset = SIDSequentialDataset(Config("TIGER", "hand", config_dict=cfg))
    splits = dataset.build()
    item = dataset.field2id_token[dataset.iid_field]
    user = dataset.field2id_token[dataset.uid_field]

    def samples(split):
        feat, out = split.inter_feat, []
        for i in range(len(feat)):
            history = feat["item_id_list"][i, : feat["item_length"][i]].tolist()
            row = (user[feat["user_id"][i]], [item[h] for h in history], item[feat["item_id"][i]])
            if NEXT_ITEMS in feat.interaction:
                row += ([item[x] for x in feat[NEXT_ITEMS][i].tolist()],)
            out.append(row)
        return sorted(out)

    return [samples(s) for s in splits], splits


def _names(user, idx):
    return [f"i{ITEMS[user][j]}" for j in idx]


def test_leave_two_out_split_matches_the_hand_worked_fixture(hand):
    (train, valid, test), splits = _split(hand, next_k=2)
    assert train == [("a", _names("a", [0]), "i1"), ("a", _names("a", [0, 1]), "i2")]
    assert valid == [
        ("a", _names("a", range(3)), "i3", _names("a", [3, 4])),
        ("b", _names("b", [0]), "i8", _names("b", [1, 2])),
    ]
    assert test == [
        ("a", _names("a", range(5)), "i5", _names("a", [5, 6])),
        ("b", _names("b", range(3)), "i10", _names("b", [3, 4])),
        ("c", _names("c", range(2)), "i4", _names("c", [2, 3])),
    ]
    # the batches the evaluation reads carry the targets and the SIDs of the history
    batch = splits[2][torch.arange(3)]
    assert batch[NEXT_ITEMS].shape == (3, 2) and "item_id_list_sid" in batch.interaction


def test_next_k_one_is_leave_one_out_unchanged(hand):
    (train, valid, test), _ = _split(hand, next_k=1)
    assert len(train) == 4 + 2 + 1 and len(valid) == 3 and len(test) == 3
    assert ("c", _names("c", range(3)), "i9") in test


def test_data_drop_under_leave_two_out_keeps_all_four_targets(hand):
    (_, valid, test), _ = _split(hand, next_k=2)
    (train_d, valid_d, test_d), _ = _split(hand, next_k=2, train_drop_ratio=0.5)
    # a's 3 training items (a0..a2) stay (at least 3 are kept); targets never move
    assert [v[3] for v in valid_d] == [v[3] for v in valid]
    assert [t[3] for t in test_d] == [t[3] for t in test]


# ---------------------------------------------------------------------------- the metric
def test_session_recall_on_a_hand_case():
    # user 0 targets (5, 6); user 1 targets (7, 8). Sessions best first.
    sessions = torch.tensor([
        [[5, 9], [1, 6], [5, 6]],   # @1: item1 hit; @2: both hit (6 at position 2 of #2)
        [[8, 7], [7, 0], [3, 8]],   # 8 and 7 at the wrong positions; @2: item1 hit; @3: both
    ])
    targets = torch.tensor([[5, 6], [7, 8]])
    hits = session_hits(sessions, targets, [1, 2, 3])
    assert hits.tolist() == [[1, 0], [2, 1], [2, 2]]
    result = session_result(hits, users=2, topk=[1, 2, 3], decimals=4)
    assert result == OrderedDict([
        ("session_recall@1", 0.25), ("session_recall@2", 0.75), ("session_recall@3", 1.0),
        ("item1_recall@1", 0.5), ("item2_recall@1", 0.0), ("item1_recall@2", 1.0),
        ("item2_recall@2", 0.5), ("item1_recall@3", 1.0), ("item2_recall@3", 1.0)])


def test_finish_sessions_drops_invalid_items_dedups_and_pads():
    table = build_table(np.array([[0, 0], [0, 1], [1, 0]]), [2, 2], dedup="none")  # items 1..3
    sids = torch.tensor([[
        [0, 1, 1, 0],   # (2, 3)
        [1, 1, 0, 0],   # (no item, 1): invalid
        [0, 1, 1, 0],   # (2, 3) again, worse
        [0, 0, 0, 0],   # (1, 1)
        [0, 0, 0, 1],   # dead
    ]])
    scores = torch.tensor([[-1.0, -0.5, -2.0, -3.0, NEG_INF]])
    sessions, top, generated, invalid = finish_sessions(table, sids, scores, width=3)
    assert sessions.tolist() == [[[2, 3], [1, 1], [0, 0]]]
    assert top[0, :2].tolist() == [-1.0, -3.0] and torch.isneginf(top[0, 2])
    assert (generated, invalid) == (4, 1)


# ---------------------------------------------------------------------------- joint decoding
@pytest.mark.parametrize("order", ["left_to_right", "greedy"])
def test_two_items_at_full_width_are_ranked_exactly_with_each_item_real(order):
    """A fake model over 2 x m slots whose log-probs depend on every fixed slot: with one
    slot per step and a width that holds every pair of real items, the joint search scores
    each pair exactly along its order and ranks all of them; no pair holds a non-item."""
    table = build_table(np.array([[0, 1], [1, 0], [2, 2], [1, 2]]), [3, 3], "none")  # m = 2
    B, n_pairs = 2, 16
    model = SlotModel(table.vocab_sizes * 2, B, seed=3)
    sids, scores = masked_beam_search(model, table, B, width=n_pairs, schedule=[1] * 4,
                                      order=order, n_items=2)
    assert model.calls == 4 and sids.shape == (B, n_pairs, 4)
    codes = table.codes[1:].tolist()
    pairs = {tuple(x + y) for x, y in itertools.product(codes, codes)}
    for b in range(B):
        live = scores[b] > NEG_INF
        got = [tuple(s) for s in sids[b][live].tolist()]
        assert set(got) <= pairs  # each item of each live beam is a real item
        assert (scores[b][:-1] >= scores[b][1:]).all()
        if order == "left_to_right":  # one shared order: nothing pruned, scores exact
            exact = {p: model.along(b, p, range(4)) for p in pairs}
            assert got == sorted(exact, key=exact.get, reverse=True)
            torch.testing.assert_close(scores[b], torch.tensor([exact[p] for p in got]))


@pytest.mark.parametrize("attention", ["full", "cached"])
@pytest.mark.parametrize("nfe", [1, 3, 8])
def test_madrec_decodes_two_items_jointly_in_the_asked_nfe(attention, nfe):
    table = make_table(n_real=30, sizes=(4, 5, 3))  # m = 4, 8 slots for two items
    model = make_madrec(table, madrec_attention=attention, madrec_next_k_nfe=nfe, next_k=2)
    batch = make_batch(table, B=4)
    calls = []
    step = model.decoding_step
    model.decoding_step = lambda *a: (lambda s: (lambda p, **kw: calls.append(1) or s(p, **kw)))(
        step(*a))
    sessions, scores = model.generate_sessions(batch, k=2, width=6)
    assert len(calls) == nfe and model.decode_stats.nfe == nfe * 4
    assert sessions.shape == (4, 6, 2) and (sessions > 0).all()  # real items, no pads
    assert all(len(set(map(tuple, s.tolist()))) == 6 for s in sessions)  # distinct sessions
    assert (scores[:, :-1] >= scores[:, 1:]).all()


def test_madrec_joint_decoding_of_one_item_is_its_generate():
    table = make_table(n_real=30, sizes=(4, 5, 3))
    model = make_madrec(table, beam_size=10)
    batch = make_batch(table, B=5)
    items, scores = model.generate(batch, 10)
    sessions, session_scores = model.generate_sessions(batch, k=1, width=10)
    assert torch.equal(sessions[:, :, 0], items)
    torch.testing.assert_close(session_scores, scores)


def test_madrec_rejects_an_nfe_beyond_its_slots_by_name():
    table = make_table(n_real=30, sizes=(4, 5, 3))  # m = 4
    with pytest.raises(UserError, match=r"madrec_next_k_nfe=9 exceeds the next_k x m = 8"):
        make_madrec(table, madrec_next_k_nfe=9, next_k=2)


# ---------------------------------------------------------------------------- item by item
def test_extend_history_appends_and_drops_the_oldest_of_a_full_history():
    table = make_table(n_real=30)
    model = make_tiger(table)
    batch = make_batch(table, B=3)
    seq, length = batch["item_id_list"].clone(), batch["item_length"].clone()
    seq[0], length[0] = torch.tensor([4, 5, 6, 7, 8, 9]), 6  # full (L_MAX = 6)
    seq[1], length[1] = torch.tensor([4, 5, 0, 0, 0, 0]), 2
    batch.update(type(batch)({"item_id_list": seq, "item_length": length,
                              "item_id_list_sid": table.lookup(seq)}))
    before = seq.clone()
    out = model.extend_history(batch, torch.tensor([11, 12, 13]))
    assert out["item_id_list"][0].tolist() == [5, 6, 7, 8, 9, 11]
    assert out["item_id_list"][1].tolist() == [4, 5, 12, 0, 0, 0]
    assert out["item_length"][:2].tolist() == [6, 3]
    assert torch.equal(out["item_id_list_sid"], table.lookup(out["item_id_list"]))
    assert torch.equal(batch["item_id_list"], before)  # the batch itself is not modified


def test_tiger_sessions_are_item_by_item_with_summed_scores_and_k_times_m_nfe():
    table = make_table(n_real=30, sizes=(4, 4))  # m = 3
    model = make_tiger(table, beam_size=10)
    batch = make_batch(table, B=3)
    sessions, scores = model.generate_sessions(batch, k=2, width=10)
    assert sessions.shape == (3, 10, 2) and (sessions > 0).all()
    assert model.decode_stats.users == 3 and model.decode_stats.nfe == 3 * 2 * 3
    first, first_scores = model.generate(batch, 10)
    for b in range(3):
        for w in (0, 4):  # a session's score = its first item's + its second item's given it
            one = batch[torch.tensor([b])]
            i1, i2 = sessions[b, w].tolist()
            s1 = first_scores[b][first[b] == i1]
            nxt, nxt_scores = model.generate(model.extend_history(one, torch.tensor([i1])), 10)
            s2 = nxt_scores[0][nxt[0] == i2]
            torch.testing.assert_close(scores[b, w], (s1 + s2)[0])
    assert (scores[:, :-1] >= scores[:, 1:]).all()


# ---------------------------------------------------------------------------- end to end
@pytest.mark.parametrize("model", sorted(TINY))
def test_next_two_items_train_and_report_session_recall(tiny, model):
    tmp, cfg = tiny
    cfg = {**cfg, **TINY[model], "epochs": 1, "next_k": 2}
    result = run_recbole_mdgr(model, "tiny", config_dict=cfg)
    test = result["test_result"]
    assert {"session_recall@10", "item1_recall@10", "item2_recall@10"} <= set(test)
    assert test["session_recall@10"] == pytest.approx(
        (test["item1_recall@10"] + test["item2_recall@10"]) / 2, abs=1e-4)
    assert result["test_decode"]["nfe_per_user"] == 2 * NFE[model]  # k x the NFE per item
    assert result["best_valid_score"] == result["best_valid_result"]["session_recall@20"]
    if model == "MADRec":  # the NFE sweep of the paper's Figure 4, on the saved checkpoint
        from recbole_mdgr.benchmark import decode_variants

        rows = decode_variants(result["saved_model_file"],
                               [{"madrec_next_k_nfe": n} for n in (1, 2, 6)])
        assert [r["result"]["test_decode"]["nfe_per_user"] for r in rows] == [1, 2, 6]
        assert rows[2]["result"]["test_result"] == dict(test)  # 6 = the default k x m


def test_next_k_is_refused_for_recbole_models(tiny):
    _, cfg = tiny
    with pytest.raises(UserError, match="next_k=2 .* not by SASRec"):
        run_recbole_mdgr("SASRec", "tiny", config_dict={**cfg, "next_k": 2})


def test_report_shows_session_recall_columns_and_draws_the_nfe_variants(tmp_path):
    import json

    from recbole_mdgr.report import PLOTS, write_reports

    def run(model, sr, nfe):
        return {"model": model, "result": {"test_result": {"session_recall@10": sr,
                                                           "item1_recall@10": sr},
                                           "test_decode": {"nfe_per_user": nfe},
                                           "timing": {"fit_seconds": 60.0}}}

    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "TIGER.json").write_text(json.dumps(run("TIGER next-2", 0.1, 8)))
    variants = [{**run(f"madrec_next_k_nfe={n}", 0.02 * n, n),
                 "checkpoint": "saved/MADRec-Nov-30.pth"} for n in (1, 2, 4)]
    (tmp_path / "variants.jsonl").write_text("".join(json.dumps(v) + "\n" for v in variants))
    paths = write_reports(str(tmp_path))
    head = (tmp_path / "results.md").read_text().splitlines()[0]
    assert "| MRR@10 | SR@10 | params |" in head and "SR@5" not in head
    assert (tmp_path / "results.md").read_text().splitlines()[2].startswith(
        "| TIGER next-2 | - | - | - | - | - | - | - | - | 10.0 |")
    assert str(tmp_path / PLOTS["recall_vs_nfe"]) in paths


def test_nfe_sweep_is_a_line_and_other_decoding_variants_are_labelled_points():
    from recbole_mdgr.report import variant_series

    def row(model, r10, nfe):
        return {"model": model, "result": {"test_result": {"recall@10": r10},
                                           "test_decode": {"nfe_per_user": nfe}}}

    group = [row("madrec_nfe=4", 0.0224, 4), row("madrec_nfe=1", 0.0111, 1),
             row("madrec_order=left_to_right", 0.0261, 4), row("beam_size=10,madrec_nfe=2",
                                                               0.018, 2)]
    line, others = variant_series(group, "recall@10")
    assert line == [(1.0, 1.11), (2.0, 1.8), (4.0, 2.24)]  # by NFE, whatever the file order
    assert others == [("madrec_order=left_to_right", 4.0, 2.61)]


def test_decoding_variants_differing_in_their_last_key_are_one_line_by_users_per_s(tmp_path):
    import json

    from recbole_mdgr.report import (VARIANT_PLOT, variant_lines, variants_markdown,
                                     write_variant_reports)

    def row(model, r10, ms, split="valid"):
        return {"model": model, "split": split, "users": 4096,
                "checkpoint": "saved/MDGR-Nov-30-2026.pth",
                "result": {f"{split}_result": {"recall@10": r10},
                           f"{split}_decode": {"nfe_per_user": 6, "decode_ms_per_user": ms}}}

    rows = [row("mdgr_warmup_steps=4, mdgr_parallel=1", 0.05, 20.0),
            row("mdgr_warmup_steps=4, mdgr_parallel=2", 0.048, 10.0),
            row("mdgr_warmup_steps=0, mdgr_parallel=2", 0.03, 8.0),
            row("mdgr_warmup_steps=4, mdgr_parallel=2", 0.04, 10.0, split="test")]
    lines = variant_lines(rows)
    assert lines == {
        ("MDGR", "valid", "mdgr_warmup_steps=4", "mdgr_parallel"):
            [(50.0, 5.0, "mdgr_parallel=1"), (100.0, 4.8, "mdgr_parallel=2")],
        ("MDGR", "valid", "mdgr_warmup_steps=0", "mdgr_parallel"):
            [(125.0, 3.0, "mdgr_parallel=2")],
        ("MDGR", "test", "mdgr_warmup_steps=4", "mdgr_parallel"):
            [(100.0, 4.0, "mdgr_parallel=2")]}
    table = variants_markdown(rows).splitlines()
    assert table[3] == ("| MDGR-Nov-30-2026.pth | mdgr_warmup_steps=4, mdgr_parallel=2 | "
                        "valid (4096 users) | - | 4.8 | - | - | 6.0 | 100.0 |")
    (tmp_path / "variants.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    paths = write_variant_reports(str(tmp_path))
    assert paths == [str(tmp_path / "variants.md"), str(tmp_path / VARIANT_PLOT)]
    assert (tmp_path / "variants.md").read_text().startswith("\n".join(table))
