"""SID-aware dataset: sample counts of both modes, SID fields in every batch."""

import numpy as np
import pytest
import torch

from recbole_mdgr.config import Config
from recbole_mdgr.data import SIDSequentialDataset, data_preparation

from conftest import tiny_config, write_tiny_dataset


@pytest.fixture
def hand(tmp_path, monkeypatch):
    """Three users with 5, 4 and 3 interactions: sample counts worked out by hand."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.argv", ["pytest"])
    write_tiny_dataset(tmp_path, name="hand", n_items=12, lengths=[5, 4, 3])
    return tmp_path


def _splits(tmp_path, mode, name="hand"):
    cfg = tiny_config(tmp_path, train_sample_mode=mode, sid_quantizer="rq_kmeans",
                      sid_levels=2, sid_codebook_size=4)
    config = Config("SASRec", name, config_dict=cfg)
    dataset = SIDSequentialDataset(config)
    return dataset, dataset.build()


# RecBole's prefix augmentation gives n - 1 samples to a user with n interactions;
# leave-one-out then keeps the last for test and the one before for valid when it can:
#   5 interactions -> 4 samples -> train 2, valid 1, test 1
#   4 interactions -> 3 samples -> train 1, valid 1, test 1
#   3 interactions -> 2 samples -> train 1, valid 0, test 1
def test_prefix_mode_sample_counts(hand):
    _, (train, valid, test) = _splits(hand, "prefix")
    assert (len(train), len(valid), len(test)) == (4, 2, 3)


def test_sequence_mode_keeps_each_users_longest_training_sample(hand):
    _, (train, valid, test) = _splits(hand, "sequence")
    assert (len(train), len(valid), len(test)) == (3, 2, 3)
    # the 5-interaction user's training sequence: 2 history items + target (the 3rd)
    lengths = sorted(train.inter_feat["item_length"].tolist())
    assert lengths == [1, 1, 2]


def test_sequence_mode_picks_the_latest_sample_whatever_the_row_order(hand):
    dataset, (train, _, _) = _splits(hand, "prefix")
    rank = dataset._rank_from_latest(train)
    perm = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))
    shuffled = train.copy(train.inter_feat[perm])
    assert torch.equal(dataset._rank_from_latest(shuffled), rank[perm])
    # the 5-interaction user's two prefix samples (targets 2nd and 3rd item): ranks 1, 0
    lengths = train.inter_feat["item_length"]
    assert sorted(rank[lengths > 0].tolist()) == [0, 0, 0, 1]
    assert rank[lengths == 2].tolist() == [0]


@pytest.fixture
def long_user(tmp_path, monkeypatch):
    """One user with 30 interactions (and two short ones), history length 10."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.argv", ["pytest"])
    write_tiny_dataset(tmp_path, name="long", n_items=40, lengths=[30, 4, 3])
    return tmp_path


def test_windows_mode_covers_the_whole_training_sequence_once(long_user):
    # 30 items: targets are items 2..28 (1-based) in training, 29 valid, 30 test. Windows of
    # 11 items back from the latest target (item 28): targets 28, 17, 6 with 10, 10, 5
    # history items; they cover items 18-28, 7-17 and 1-6, i.e. all 28 training items.
    _, (train, _, _) = _splits(long_user, "windows", name="long")
    feat = train.inter_feat
    uid = feat["user_id"]
    long_uid = int(torch.bincount(uid).argmax())
    mine = feat[uid == long_uid]
    assert sorted(mine["item_length"].tolist()) == [5, 10, 10]
    covered = sorted(t for row in range(len(mine)) for t in
                     [*mine["timestamp_list"][row][: mine["item_length"][row]].tolist(),
                      float(mine["timestamp"][row])])
    assert covered == [float(t) for t in range(28)]  # timestamps 0..27 = items 1..28
    # the two short users keep one sample each, as in sequence mode
    assert len(train) == 3 + 2


def test_batches_carry_the_sid_of_every_item_field(hand):
    dataset, (train, valid, test) = _splits(hand, "prefix")
    batch = test[torch.arange(len(test))]
    table = dataset.sid_table
    assert batch["item_id_sid"].shape == (len(test), table.m)
    # expected from the atomic file: each user's last item, looked up by its token
    last = {}
    for line in (hand / "hand" / "hand.inter").read_text().splitlines()[1:]:
        user, item, _ = line.split("\t")
        last[user] = item
    users = [dataset.id2token("user_id", int(u)) for u in batch["user_id"]]
    want = [int(dataset.token2id("item_id", last[u])) for u in users]
    assert torch.equal(batch["item_id_sid"], table.codes[torch.tensor(want)])
    hist = batch["item_id_list_sid"]
    assert hist.shape == (len(test), 10, table.m)
    assert torch.equal(hist, table.codes[batch["item_id_list"]])
    assert bool((hist[batch["item_id_list"] == 0] == -1).all())  # padding slots


def test_unknown_train_sample_mode_is_refused(hand):
    with pytest.raises(ValueError, match="train_sample_mode"):
        _splits(hand, "bogus")


@pytest.mark.parametrize("mode", ["prefix", "sequence", "windows"])
def test_dataloaders_of_every_mode_feed_sid_batches(hand, mode):
    cfg = tiny_config(hand, train_sample_mode=mode, sid_levels=2, sid_codebook_size=4)
    config = Config("SASRec", "hand", config_dict=cfg)
    train_data, _, test_data = data_preparation(config, SIDSequentialDataset(config))
    batch = next(iter(train_data))
    assert "item_id_list_sid" in batch.interaction and "item_id_sid" in batch.interaction
    interaction, _, positive_u, positive_i = next(iter(test_data))
    assert torch.equal(positive_i, interaction["item_id"])


def _sequences(tmp_path, name, **overrides):
    """Per user: (training items in time order, valid target, test target) as item tokens."""
    cfg = tiny_config(tmp_path, sid_quantizer="rq_kmeans", sid_levels=2, sid_codebook_size=4,
                      **overrides)
    dataset = SIDSequentialDataset(Config("SASRec", name, config_dict=cfg))
    train, valid, test = dataset.build()
    token = dataset.field2id_token[dataset.iid_field]
    user = dataset.field2id_token[dataset.uid_field]

    def targets(split):
        feat = split.inter_feat
        return {user[u]: token[i] for u, i in zip(feat["user_id"].tolist(),
                                                   feat["item_id"].tolist())}

    history = {}  # the test sample's history = every interaction before the test target
    feat = test.inter_feat
    for u, items, n in zip(feat["user_id"].tolist(), feat["item_id_list"].tolist(),
                           feat["item_length"].tolist()):
        history[user[u]] = [token[i] for i in items[:n]][:-1]  # minus the valid target
    return history, targets(valid), targets(test)


@pytest.mark.parametrize("ratio", [0.25, 0.5, 0.75])
def test_data_constrained_drop_keeps_targets_and_three_training_items(tmp_path, monkeypatch,
                                                                      ratio):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.argv", ["pytest"])
    # training items per user (all but the last two): 10, 6, 3, 2
    write_tiny_dataset(tmp_path, name="drop", n_items=30, lengths=[12, 8, 5, 4])
    full, valid, test = _sequences(tmp_path, "drop", MAX_ITEM_LIST_LENGTH=20)
    kept, valid_d, test_d = _sequences(tmp_path, "drop", MAX_ITEM_LIST_LENGTH=20,
                                       train_drop_ratio=ratio)
    assert valid_d == valid and test_d == test  # every target unchanged
    for u in full:
        n = len(full[u])
        want = n - min(round(ratio * n), max(n - 3, 0))
        assert len(kept[u]) == want, (u, n)
        it = iter(full[u])  # what stays is a subsequence, in time order
        assert all(item in it for item in kept[u])
    other, _, _ = _sequences(tmp_path, "drop", MAX_ITEM_LIST_LENGTH=20, train_drop_ratio=ratio,
                             train_drop_seed=7)
    assert other != kept  # the seed decides which items go


def _user_rows(split):
    """{user id: the row's item ids, history included} of an evaluation split."""
    feat = split.inter_feat
    return {u: (i, tuple(h)) for u, i, h in zip(feat["user_id"].tolist(),
                                                feat["item_id"].tolist(),
                                                feat["item_id_list"].tolist())}


@pytest.mark.parametrize("model", ["SASRec", "TIGER"])  # RecBole's dataset and ours
def test_valid_users_keeps_a_seeded_sample_of_validation_rows_and_every_test_row(tiny, model):
    from recbole_mdgr.data import create_dataset

    tmp_path, cfg = tiny
    cfg.update(sid_quantizer="rq_kmeans", sid_levels=2, sid_codebook_size=4)

    def splits(**overrides):
        return create_dataset(Config(model, "tiny", config_dict={**cfg, **overrides})).build()

    train, valid, test = splits()
    train_s, valid_s, test_s = splits(valid_users=7)
    full, sampled = _user_rows(valid), _user_rows(valid_s)
    assert len(full) == 30 and len(sampled) == len(valid_s) == 7
    assert all(full[u] == row for u, row in sampled.items())  # the same rows, unchanged
    assert _user_rows(test_s) == _user_rows(test) and len(train_s) == len(train)
    assert _user_rows(splits(valid_users=7)[1]) == sampled  # the seed fixes the sample
    assert _user_rows(splits(valid_users=7, seed=5)[1]).keys() != sampled.keys()
    assert _user_rows(splits(valid_users=30)[1]) == full  # as many as there are: all


def test_valid_users_applies_to_the_leave_k_out_split(tiny):
    from recbole_mdgr.next_k import NEXT_ITEMS

    tmp_path, cfg = tiny
    config = Config("TIGER", "tiny", config_dict={
        **cfg, "next_k": 2, "valid_users": 5, "sid_quantizer": "rq_kmeans",
        "sid_levels": 2, "sid_codebook_size": 4})
    _, valid, test = SIDSequentialDataset(config).build()
    assert len(valid) == 5 and valid.inter_feat[NEXT_ITEMS].shape == (5, 2)
    assert len(test) == 30


@pytest.mark.parametrize("model, value, words", [
    ("TIGER", 0, "positive integer"), ("SASRec", "many", "positive integer"),
    ("Pop", 10, "sequential models")])
def test_valid_users_bad_values_are_refused_by_name(tiny, model, value, words):
    """Refused before training: a non-sequential model when the config is read, a bad count
    when the data is built."""
    from recbole_mdgr.data import create_dataset
    from recbole_mdgr.errors import UserError
    from recbole_mdgr.quick_start import checked_config

    tmp_path, cfg = tiny
    with pytest.raises(UserError, match=f"valid_users.*{words}|{words}.*valid_users"):
        config = checked_config(model, "tiny", None, {
            **cfg, "valid_users": value, "sid_quantizer": "rq_kmeans", "sid_levels": 2,
            "sid_codebook_size": 4})
        create_dataset(config).build()


@pytest.mark.parametrize("next_k", [1, 2])
def test_training_pairs_hold_every_training_item_and_no_evaluation_target(tmp_path, monkeypatch,
                                                                          next_k):
    """``sid_vector_source: interactions`` reads these pairs: each user's items but the last
    2 k (read here straight from the .inter file), counted once, history items included."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.argv", ["pytest"])
    folder = write_tiny_dataset(tmp_path, name="pairs", n_items=30, lengths=[12, 8, 6, 7])
    lines = (folder / "pairs.inter").read_text().split("\n")[1:-1]
    by_user = {}
    for user, item, t in (line.split("\t") for line in lines):
        by_user.setdefault(user, []).append((float(t), item))
    cfg = tiny_config(tmp_path, next_k=next_k, sid_quantizer="rq_kmeans", sid_levels=2,
                      sid_codebook_size=4, MAX_ITEM_LIST_LENGTH=3)  # histories cut short
    dataset = SIDSequentialDataset(Config("TIGER", "pairs", config_dict=cfg))
    dataset.build()
    uid, iid = dataset.field2token_id["user_id"], dataset.field2token_id["item_id"]
    want = {(uid[u], iid[i]) for u, rows in by_user.items()
            for _, i in sorted(rows)[:-2 * next_k]}
    got = dataset.sid_train_pairs
    assert {tuple(p) for p in got.tolist()} == want
    assert len(got) == len(want)  # each pair once


def test_dedup_order_popularity_numbers_each_group_by_its_training_users(tmp_path, monkeypatch):
    """``sid_dedup_order: popularity``: within each group of items sharing their codes, dedup
    token 0, 1, ... go by falling count of training users (ties by item id), counted from
    the training split only; ``item_id`` (the default) numbers them by item id. The codes
    before the dedup token are the same, and the two tables are cached apart."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.argv", ["pytest"])
    write_tiny_dataset(tmp_path, name="pop", n_items=30)
    tables = {}
    for order in ("popularity", "item_id"):
        cfg = tiny_config(tmp_path, sid_quantizer="random", sid_levels=1, sid_codebook_size=3,
                          sid_dedup="always", sid_dedup_order=order)
        dataset = SIDSequentialDataset(Config("TIGER", "pop", config_dict=cfg))
        dataset.build()
        tables[order] = dataset.sid_table.codes[1:].numpy()
    users = np.bincount(dataset.sid_train_pairs[:, 1], minlength=dataset.item_num)
    pop, plain = tables["popularity"], tables["item_id"]
    np.testing.assert_array_equal(pop[:, 0], plain[:, 0])
    groups = [np.flatnonzero(pop[:, 0] == g) + 1 for g in np.unique(pop[:, 0])]
    assert max(len(g) for g in groups) >= 5
    for items in groups:
        assert items[np.argsort(pop[items - 1, 1])].tolist() == sorted(
            items.tolist(), key=lambda i: (-users[i], i))
        assert plain[items - 1, 1].tolist() == list(range(len(items)))
    assert not np.array_equal(pop[:, 1], plain[:, 1])
    assert len(list((tmp_path / "saved" / "sid").glob("pop-random-*.npz"))) == 2


def test_interaction_vectors_put_items_of_the_same_users_together():
    """Items 1-4 are bought only by users 0-5, items 5-8 only by users 6-11, item 9 by
    nobody: each item is nearer (cosine) to every item of its group than to any of the
    other, and the unseen item's vector is zero."""
    from recbole_mdgr.tokenizer.embed import interaction_vectors

    rng = np.random.default_rng(0)
    pairs = [(u, i) for u in range(6) for i in (1, 2, 3, 4) if rng.random() < 0.8]
    pairs += [(u, i) for u in range(6, 12) for i in (5, 6, 7, 8) if rng.random() < 0.8]
    pairs += [(0, 1), (0, 1)]  # a repeat counts once
    x = interaction_vectors(np.array(pairs), n_items=10, dim=4, seed=0)  # rows: items 1..9
    assert x.shape == (9, 4) and not x[8].any()
    unit = x[:8] / np.linalg.norm(x[:8], axis=1, keepdims=True)
    cos = unit @ unit.T
    group = np.repeat([0, 1], 4)
    same, other = group[:, None] == group[None, :], group[:, None] != group[None, :]
    for i in range(8):
        assert cos[i][same[i]].min() > cos[i][other[i]].max() + 0.3, i
    again = interaction_vectors(np.array(pairs[:-2]), n_items=10, dim=4, seed=0)
    assert np.array_equal(x, again)


def test_sid_vector_source_builds_from_interactions_or_both_and_refuses_others(hand):
    from recbole_mdgr.errors import UserError

    for source, name in [("interactions", "interactions"), ("both", "text:tfidf+interactions")]:
        cfg = tiny_config(hand, sid_vector_source=source, sid_quantizer="rq_kmeans",
                          sid_levels=2, sid_codebook_size=4)
        dataset = SIDSequentialDataset(Config("TIGER", "hand", config_dict=cfg))
        train = dataset.build()[0]
        assert dataset.sid_table.stats["source"] == name
        assert dataset.sid_table.n_items == dataset.item_num
        # what a model is given (the split) reads the same vectors (MADRec's dense head)
        assert train.item_vectors().shape[0] == dataset.item_num
    from recbole_mdgr.model.tiger import TIGER

    config = Config("TIGER", "hand", config_dict=tiny_config(hand, sid_vector_source="clicks"))
    with pytest.raises(UserError, match="sid_vector_source must be one of"):
        TIGER.check_config(config)  # what the runner does before reading any data
