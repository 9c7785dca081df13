"""The generative metric path: top-K lists into RecBole's own metric classes."""

import math

import pytest
import torch

from recbole.evaluator import Collector, Evaluator

from recbole_mdgr.config import Config
from recbole_mdgr.trainer import check_topk_metrics, feed_topk

METRICS = ["Recall", "NDCG", "MRR", "Hit", "Precision", "MAP"]


def _config(tiny, metrics, topk):
    tmp, cfg = tiny
    return Config("SASRec", "tiny", config_dict={**cfg, "metrics": metrics, "topk": topk})


def _evaluate(config, feed):
    collector = Collector(config)
    feed(collector)
    return Evaluator(config).evaluate(collector.get_data_struct())


def test_topk_lists_give_exactly_the_dense_paths_numbers(tiny):
    config = _config(tiny, METRICS, [1, 3, 5])
    gen = torch.Generator().manual_seed(0)
    batch, n_items, k = 40, 30, 5
    items = torch.stack([torch.randperm(n_items - 1, generator=gen)[:k] + 1
                         for _ in range(batch)])
    # one positive per user, in the list about half the time; users 0-4 have a second one
    positive_u = torch.cat([torch.arange(batch), torch.arange(5)])
    in_list = items[torch.arange(batch), torch.randint(0, k, (batch,), generator=gen)]
    random_item = torch.randint(1, n_items, (batch,), generator=gen)
    first = torch.where(torch.rand(batch, generator=gen) < 0.5, in_list, random_item)
    second = items[torch.arange(5), 4]  # at rank 5 for users 0-4
    positive_i = torch.cat([first, torch.where(second == first[:5], second % 29 + 1, second)])

    scores = torch.full((batch, n_items), float("-inf"))
    scores.scatter_(1, items, torch.arange(k, 0, -1, dtype=torch.float).expand(batch, k))

    dense = _evaluate(config, lambda c: c.eval_batch_collect(scores, None, positive_u, positive_i))
    generative = _evaluate(config, lambda c: feed_topk(c, items, positive_u, positive_i))
    assert dense == generative

    assert dense["hit@5"] > 0.3  # the case really has hits at several ranks


def test_padded_lists_count_pads_as_misses_worked_by_hand(tiny):
    config = _config(tiny, ["Recall", "NDCG", "MRR", "Hit"], [2])
    # user 0: positive 3 at rank 2; user 1: one real beam, then a pad; positive 4 missed
    items = torch.tensor([[5, 3], [7, 0]])
    result = _evaluate(config, lambda c: feed_topk(c, items, torch.tensor([0, 1]),
                                                   torch.tensor([3, 4])))
    assert result["recall@2"] == 0.5
    assert result["hit@2"] == 0.5
    assert result["mrr@2"] == 0.25
    assert result["ndcg@2"] == pytest.approx(round(0.5 / math.log2(3), 4))


def test_a_list_with_a_duplicate_item_is_refused(tiny):
    collector = Collector(_config(tiny, ["Recall"], [3]))
    feed_topk(collector, torch.tensor([[4, 0, 0], [1, 2, 3]]), torch.tensor([0]),
              torch.tensor([4]))  # repeated pads are fine
    with pytest.raises(ValueError, match=r"same item twice \(batch rows \[1\]\)"):
        feed_topk(collector, torch.tensor([[4, 5, 6], [1, 2, 1]]), torch.tensor([1]),
                  torch.tensor([1]))


@pytest.mark.parametrize("metric", ["AUC", "LogLoss", "ItemCoverage", "GiniIndex",
                                    "ShannonEntropy", "AveragePopularity", "TailPercentage"])
def test_metrics_a_topk_list_cannot_feed_are_refused_by_name(metric):
    check_topk_metrics(["Recall", "NDCG", "MRR", "Hit", "Precision", "MAP"])
    with pytest.raises(ValueError, match=rf"\['{metric}'\]"):
        check_topk_metrics(["Recall", metric])
