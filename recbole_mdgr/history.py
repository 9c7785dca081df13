"""``exclude_history`` for RecBole's own sequential models.

RecBole's full-sort evaluation removes a user's training items from the ranking for general
models but not for sequential ones, whose histories are the input. With
``exclude_history: True`` a sequential model's scores of the items in its input sequence
(``<ITEM_ID_LIST>``, the last ``MAX_ITEM_LIST_LENGTH`` items) are set to ``-inf`` before
the top-K, as the plugin's generative models drop those items inside their beam searches
(:func:`recbole_mdgr.model.decoding.completes_banned`): one rule for every model compared.
"""

from __future__ import annotations

from recbole_mdgr.errors import check_bool
from recbole_mdgr.model.decoding import ban_scored_items


class HistoryExclusionMixin:
    """Mix into a RecBole ``Trainer``: ``exclude_history`` for sequential models."""

    def _full_sort_batch_eval(self, batched_data):
        interaction, scores, positive_u, positive_i = super()._full_sort_batch_eval(batched_data)
        seq_field = getattr(self.model, "ITEM_SEQ", None)
        if seq_field is not None and check_bool("exclude_history",
                                                self.config["exclude_history"]):
            ban_scored_items(scores, interaction[seq_field])  # padding: item 0, already -inf
        return interaction, scores, positive_u, positive_i
