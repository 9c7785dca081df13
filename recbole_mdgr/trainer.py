"""Generative evaluation: top-K lists from ``model.generate`` into RecBole's own metrics.

RecBole's ``Trainer`` ranks a ``[B, n_items]`` score matrix. A generative model produces
top-K lists directly, so :func:`feed_topk` writes exactly what RecBole's ``Collector``
would have written for those lists (``rec.topk``: hit flags + number of positives) and
RecBole's metric classes do the rest. No score matrix is built on this path. Pads (item 0)
never match a positive item, so they count as misses.

Metrics that read ``rec.items`` (ItemCoverage, GiniIndex, ShannonEntropy,
AveragePopularity, TailPercentage) are refused: they would count the pad item 0 as a
recommended item, and in RecBole 1.2.1 the non-accuracy ones crash in the collector after
the first training epoch.
"""

from __future__ import annotations

import re
from time import perf_counter

import torch
from tqdm import tqdm

from recbole.data.dataloader import FullSortEvalDataLoader
from recbole.data.interaction import Interaction
from recbole.evaluator.register import metric_information
from recbole.trainer import Trainer
from recbole.utils import set_color

from recbole_mdgr.budget import TimeBudgetMixin
from recbole_mdgr.compat import CheckpointCompatMixin
from recbole_mdgr.data.dataset import SID_SUFFIX
from recbole_mdgr.distributed import CPUDistributedMixin, sum_over_processes
from recbole_mdgr.errors import UserError
from recbole_mdgr.next_k import NEXT_ITEMS, session_hits, session_result

# what a top-K list can feed; other needs (full score matrix, labels, item lists) are refused
TOPK_NEEDS = {"rec.topk", "data.num_items", "data.num_users"}


def feed_topk(collector, items: torch.Tensor, positive_u: torch.Tensor,
              positive_i: torch.Tensor) -> None:
    """Add one batch of top-K lists to a RecBole ``Collector``.

    Args:
        collector: ``recbole.evaluator.Collector`` of the trainer.
        items: ``[B, K]`` recommended item ids, best first (0 = padding, a miss).
        positive_u: ``[P]`` row in the batch of each positive (user, item) pair.
        positive_i: ``[P]`` item id of each positive pair.
    """
    batch, _ = items.shape
    device = collector.device
    items = items.to(device)
    positive_u, positive_i = positive_u.to(device), positive_i.to(device)
    ordered = items.sort(1).values
    dup = ((ordered[:, 1:] == ordered[:, :-1]) & (ordered[:, 1:] > 0)).any(1)
    if bool(dup.any()):
        rows = dup.nonzero().flatten()[:5].tolist()
        raise ValueError(
            f"a top-K list holds the same item twice (batch rows {rows}); duplicates would "
            "push Recall/NDCG above what the list earns: generate must return each item once"
        )
    if collector.register.need("rec.topk"):
        hits = (items[positive_u] == positive_i.unsqueeze(1)).int()  # [P, K]
        pos_idx = torch.zeros_like(items, dtype=torch.int).index_add_(0, positive_u, hits)
        pos_len = torch.bincount(positive_u, minlength=batch).unsqueeze(1)
        collector.data_struct.update_tensor("rec.topk", torch.cat((pos_idx, pos_len), dim=1))


def check_topk_metrics(metrics) -> None:
    """Refuse, by name, the metrics a top-K list cannot feed (AUC, LogLoss, ItemCoverage...)."""
    bad = [m for m in metrics if set(metric_information[m.lower()]) - TOPK_NEEDS]
    if bad:
        raise UserError(
            f"metrics {bad} cannot be computed for generative models: they need a full score "
            "matrix or labels (AUC, GAUC, LogLoss, ...) or RecBole's recommended-item lists "
            "(ItemCoverage, GiniIndex, ShannonEntropy, AveragePopularity, TailPercentage), "
            "which count the pad item and crash in RecBole 1.2.1. Use Recall, NDCG, MRR, Hit, "
            "Precision or MAP in `metrics`."
        )


class GenerativeTrainer(TimeBudgetMixin, CheckpointCompatMixin, CPUDistributedMixin, Trainer):
    """RecBole's ``Trainer`` whose full-sort evaluation calls ``model.generate``.

    Training, early stopping, checkpoints and result dicts are RecBole's. Each evaluation
    also logs NFE per user, decode ms per user and the share of generated SIDs that match
    no item; the last figures are kept in ``self.decode_summary``.

    With ``next_k`` = k > 1 an evaluation generates ``max(topk)`` sessions of ``k`` items
    per user and reports ``session_recall@N`` (:mod:`recbole_mdgr.next_k`), which is then
    the early-stopping metric unless ``valid_metric`` already names a session metric.
    """

    def __init__(self, config, model):
        super().__init__(config, model)
        check_topk_metrics(config["metrics"])
        self.max_k = max(config["topk"])
        self.decode_summary: dict = {}
        self.next_k = int(config["next_k"] or 1)
        session_metric = re.fullmatch(r"(session|item\d+)_recall@\d+", self.valid_metric)
        if self.next_k > 1 and not session_metric:
            chosen = f"session_recall@{self.max_k}"
            self.logger.info(set_color("valid_metric", "pink") + f": {chosen} (next_k="
                             f"{self.next_k}; was {self.valid_metric})")
            self.valid_metric = chosen

    def _without_targets(self, interaction: Interaction) -> Interaction:
        """The batch ``generate`` sees: every field but the answer (target item and its SID),
        so no model can read it, even by reusing a teacher-forced forward."""
        target = self.model.POS_ITEM_ID
        hidden = {target, target + SID_SUFFIX, NEXT_ITEMS}
        return Interaction({k: v for k, v in interaction.interaction.items() if k not in hidden})

    @torch.no_grad()
    def evaluate(self, eval_data, load_best_model=True, model_file=None, show_progress=False):
        if not eval_data:
            return
        if load_best_model:
            self.load_model_file(model_file or self.saved_model_file)
        if not isinstance(eval_data, FullSortEvalDataLoader):
            return Trainer.evaluate(self, eval_data, False, model_file, show_progress)

        self.model.eval()
        stats = self.model.decode_stats
        stats.reset()
        iter_data = (
            tqdm(eval_data, total=len(eval_data), ncols=100,
                 desc=set_color("Evaluate   ", "pink"))
            if show_progress else eval_data
        )
        if self.next_k > 1:
            result = self._evaluate_sessions(iter_data)
        else:
            result = self._evaluate_items(iter_data)
        if not self.config["single_spec"]:
            stats.sum_over_processes()
        self.decode_summary = {**stats.summary(), "beam_size": self.config["beam_size"]}
        self.logger.info(
            set_color("decode", "blue") + ": "
            + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                        for k, v in self.decode_summary.items())
        )
        self.wandblogger.log_eval_metrics(result, head="eval")
        return result

    def _evaluate_items(self, iter_data):
        """Next item: top-K lists into RecBole's collector and metrics."""
        stats = self.model.decode_stats
        num_sample = 0
        for interaction, _, positive_u, positive_i in iter_data:
            num_sample += len(interaction)
            interaction = self._without_targets(interaction).to(self.device)
            start = perf_counter()
            items, scores = self.model.generate(interaction, self.max_k)
            stats.seconds += perf_counter() - start
            if items.shape != (len(interaction), self.max_k):
                raise RuntimeError(
                    f"{self.config['model']}.generate returned items of shape "
                    f"{tuple(items.shape)}, expected {(len(interaction), self.max_k)}"
                )
            feed_topk(self.eval_collector, items, positive_u, positive_i)
        struct = self.eval_collector.get_data_struct()
        result = self.evaluator.evaluate(struct)
        if not self.config["single_spec"]:
            result = self._map_reduce(result, num_sample)
        return result

    def _evaluate_sessions(self, iter_data):
        """Next ``k`` items: sessions from ``generate_sessions``, session recall."""
        stats = self.model.decode_stats
        topk = sorted(self.config["topk"])
        hits, users = torch.zeros(len(topk), self.next_k, dtype=torch.long), 0
        for interaction, *_ in iter_data:
            targets = interaction[NEXT_ITEMS]
            users += len(interaction)
            interaction = self._without_targets(interaction).to(self.device)
            start = perf_counter()
            sessions, _ = self.model.generate_sessions(interaction, self.next_k, self.max_k)
            stats.seconds += perf_counter() - start
            if sessions.shape != (len(interaction), self.max_k, self.next_k):
                raise RuntimeError(
                    f"{self.config['model']}.generate_sessions returned sessions of shape "
                    f"{tuple(sessions.shape)}, expected "
                    f"{(len(interaction), self.max_k, self.next_k)}")
            hits += session_hits(sessions, targets, topk)
        if not self.config["single_spec"]:
            *flat, users = sum_over_processes([*hits.flatten().tolist(), users])
            hits = torch.tensor(flat).view(hits.shape)
        return session_result(hits, int(users), topk, self.config["metric_decimal_place"])
