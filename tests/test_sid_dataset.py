"""SID-aware dataset: sample counts of both modes, SID fields in every batch."""

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


def _splits(tmp_path, mode):
    cfg = tiny_config(tmp_path, train_sample_mode=mode, sid_quantizer="rq_kmeans",
                      sid_levels=2, sid_codebook_size=4)
    config = Config("SASRec", "hand", config_dict=cfg)
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


def test_batches_carry_the_sid_of_every_item_field(hand):
    dataset, (train, valid, test) = _splits(hand, "prefix")
    batch = test[torch.arange(len(test))]
    table = dataset.sid_table
    assert batch["item_id_sid"].shape == (len(test), table.m)
    assert torch.equal(batch["item_id_sid"], table.codes[batch["item_id"]])
    hist = batch["item_id_list_sid"]
    assert hist.shape == (len(test), 10, table.m)
    assert torch.equal(hist, table.codes[batch["item_id_list"]])
    assert bool((hist[batch["item_id_list"] == 0] == -1).all())  # padding slots


def test_unknown_train_sample_mode_is_refused(hand):
    with pytest.raises(ValueError, match="train_sample_mode"):
        _splits(hand, "windows")


def test_dataloaders_of_both_modes_feed_sid_batches(hand):
    cfg = tiny_config(hand, train_sample_mode="sequence", sid_levels=2, sid_codebook_size=4)
    config = Config("SASRec", "hand", config_dict=cfg)
    train_data, _, test_data = data_preparation(config, SIDSequentialDataset(config))
    batch = next(iter(train_data))
    assert "item_id_list_sid" in batch.interaction and "item_id_sid" in batch.interaction
    interaction, _, positive_u, positive_i = next(iter(test_data))
    assert torch.equal(positive_i, interaction["item_id"])
