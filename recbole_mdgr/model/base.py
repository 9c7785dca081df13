"""What every generative (SID) model shares: the SID table, the batch fields, decode stats.

A generative model answers ``generate(interaction, k) -> (items [B, k], scores [B, k])``;
:class:`~recbole_mdgr.trainer.GenerativeTrainer` feeds those lists into RecBole's metrics.
``full_sort_predict`` is derived from ``generate`` so RecBole's own utilities
(``full_sort_topk``, case studies) work on these models unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from recbole.model.abstract_recommender import SequentialRecommender
from recbole.utils import InputType

from recbole_mdgr.data.dataset import SID_SUFFIX, check_sample_mode, check_train_drop
from recbole_mdgr.distributed import sum_over_processes
from recbole_mdgr.errors import UserError, check_bool, check_choice, check_positive_int
from recbole_mdgr.model.layers import ACTIVATIONS, Transformer
from recbole_mdgr.tokenizer.settings import SIDSettings
from recbole_mdgr.tokenizer.sid_table import SIDTable


POSITIVE_INTS = ("hidden_size", "n_heads", "head_dim", "inner_size", "beam_size",
                 "encoder_buckets")
RATES = ("dropout_prob", "attn_dropout_prob", "ffn_dropout_prob")


def check_stack_config(config) -> None:
    """Refuse, by key, stack knobs no model can be built with."""
    for key in POSITIVE_INTS:
        check_positive_int(key, config[key], none="the model's default")
    for key in RATES:
        value = config[key]
        if value is not None and not (isinstance(value, (int, float)) and 0 <= value < 1):
            raise UserError(f"{key} must be a rate in [0, 1), got {value!r}")
    if config["hidden_act"] is not None:
        check_choice("hidden_act", config["hidden_act"], tuple(sorted(ACTIVATIONS)))
    check_bool("compile", config["compile"])
    topk = config["topk"]
    topk = max(topk) if isinstance(topk, (list, tuple)) else topk
    check_positive_int("next_k", config["next_k"], none="1, the next item")
    beam = config["beam_size"]
    if beam is not None and topk is not None and beam < topk:
        raise UserError(f"beam_size={beam} is smaller than the largest topk ({topk}): its "
                        f"lists would hold fewer items than the metrics cut at; set "
                        f"beam_size >= {topk}")


class ConfigView:
    """``config[key]`` with None for a missing key, for a plain dict as for RecBole's
    ``Config`` (models are also built from dicts, in tests and scripts)."""

    def __init__(self, config):
        self.config = config

    def __getitem__(self, key):
        return self.config.get(key) if isinstance(self.config, dict) else self.config[key]


@dataclass
class DecodeStats:
    """Running totals over one evaluation; the trainer resets and logs them."""

    users: int = 0
    nfe: float = 0.0  # network forward passes, summed over users
    generated: int = 0  # SIDs produced by beam search (beams that finished)
    invalid: int = 0  # of those, SIDs that match no item
    seconds: float = 0.0  # wall time inside generate()

    def add(self, users: int, nfe: float, generated: int, invalid: int) -> None:
        self.users += users
        self.nfe += nfe * users
        self.generated += generated
        self.invalid += invalid

    def reset(self) -> None:
        self.users, self.nfe, self.generated, self.invalid, self.seconds = 0, 0.0, 0, 0, 0.0

    def sum_over_processes(self) -> None:
        """Totals of every process of a distributed evaluation (each decodes its own users);
        ``seconds`` becomes the summed decode time, so ms per user stays per user."""
        users, nfe, generated, invalid, seconds = sum_over_processes(
            [self.users, self.nfe, self.generated, self.invalid, self.seconds])
        self.users, self.nfe, self.generated = int(users), nfe, int(generated)
        self.invalid, self.seconds = int(invalid), seconds

    def summary(self) -> dict:
        users = max(self.users, 1)
        return {
            "users": self.users,
            "nfe_per_user": self.nfe / users,
            "decode_ms_per_user": 1000.0 * self.seconds / users,
            "invalid_sid_share": self.invalid / max(self.generated, 1),
        }


class GenerativeRecommender(SequentialRecommender):
    """Base of the SID models: owns the table, reads SID fields, derives full-sort scores.

    Batches from :class:`~recbole_mdgr.data.SIDSequentialDataset` carry
    ``<ITEM_ID_LIST>_sid`` ``[B, L, m]`` and ``<ITEM_ID>_sid`` ``[B, m]`` (padding = -1).
    The table's codes are a buffer, so they move with ``.to(device)`` and are saved in the
    checkpoint; reloading a checkpoint against a different SID table fails loudly.
    """

    input_type = InputType.POINTWISE
    is_generative = True

    @classmethod
    def check_config(cls, config) -> None:
        """Refuse, by key, knobs no model can be built with. The runner calls it as soon as
        the config is read (before any data); ``__init__`` calls it too. Models extend it."""
        check_stack_config(config)
        check_bool("exclude_history", config["exclude_history"])
        SIDSettings.from_config(config).check()
        check_sample_mode(config["train_sample_mode"])
        check_train_drop(config["train_drop_ratio"], config["train_drop_seed"])

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.check_config(ConfigView(config))
        table: SIDTable = getattr(dataset, "sid_table", None)
        if table is None:
            raise ValueError(
                f"{self.__class__.__name__} needs a dataset with semantic IDs "
                "(recbole_mdgr.data.SIDSequentialDataset); build it with "
                "recbole_mdgr.data.create_dataset"
            )
        # the model's own copy: it moves to the model's device, the dataset's stays on CPU
        self.sid_table = SIDTable.from_state_dict(table.state_dict())
        self.register_buffer("sid_codes", table.codes.clone(), persistent=True)
        self.sid_len = table.m
        self.sid_vocab_sizes = list(table.vocab_sizes)
        self.ITEM_SEQ_SID = self.ITEM_SEQ + SID_SUFFIX
        self.POS_ITEM_SID = self.POS_ITEM_ID + SID_SUFFIX
        self.topk = max(config["topk"]) if isinstance(config["topk"], list) else config["topk"]
        self.decode_stats = DecodeStats()
        self.compile = check_bool("compile", ConfigView(config)["compile"])
        # compiled twins of submodules (same parameters), kept out of the module tree so the
        # state dict and checkpoints are the eager model's
        self.__dict__["_compiled"] = {}

    # ------------------------------------------------------------------ shared by SID models
    def read_stack_config(self, config) -> None:
        """The knobs every SID model's transformer stack, heads and decoding share."""
        self.hidden_size = config["hidden_size"]
        self.n_heads = config["n_heads"]
        self.head_dim = config["head_dim"]
        self.inner_size = config["inner_size"]
        self.hidden_act = config["hidden_act"] or "relu"
        self.dropout_prob = config["dropout_prob"]
        self.attn_dropout_prob = config["attn_dropout_prob"] or 0.0
        self.ffn_dropout_prob = config["ffn_dropout_prob"] or 0.0
        self.initializer_range = config["initializer_range"]
        self.encoder_buckets = config["encoder_buckets"]
        self.beam_size = config["beam_size"]
        self.sid_constrained = config["sid_constrained"]
        self.exclude_history = check_bool("exclude_history", ConfigView(config)["exclude_history"])
        self.order_seed = ConfigView(config)["seed"] or 0  # unmasking order `random`
        # code c at SID slot j is token offset_j + c + 1; 0 is padding
        offsets = torch.tensor([0, *self.sid_vocab_sizes[:-1]]).cumsum(0) + 1
        self.register_buffer("token_offset", offsets, persistent=False)  # (m,)

    def banned_sids(self, interaction) -> torch.Tensor | None:
        """``[B, L, m]`` SIDs of each user's history items (padding -1), which the beam
        searches must not return, when ``exclude_history`` is on; None otherwise."""
        return interaction[self.ITEM_SEQ_SID] if self.exclude_history else None

    def order_generator(self):
        """The seeded generator of the ``random`` unmasking order (``self.order``, set by
        the masked models), None for the other orders: every evaluation draws the same
        slots, so two evaluations of one checkpoint agree."""
        if self.order != "random":
            return None
        return torch.Generator(device=self.token_offset.device).manual_seed(self.order_seed)

    def transformer(self, n_layers: int, cross_attention: bool = False) -> Transformer:
        """A :class:`~recbole_mdgr.model.layers.Transformer` with this model's knobs."""
        return Transformer(n_layers, self.hidden_size, self.n_heads, self.head_dim,
                           self.inner_size, self.dropout_prob, self.attn_dropout_prob,
                           self.ffn_dropout_prob, cross_attention, self.hidden_act)

    def token_inputs(self, tokens: torch.Tensor, item_vectors: torch.Tensor,
                     slot_embedding: nn.Embedding) -> torch.Tensor:
        """One encoder input per history token, ``[B, L * m, d]`` (item-major): the token's
        embedding (``tokens`` ``[B, L, m]``, 0 = padding) + its item's vector ``[B, L, d]``
        (its position embedding and any other item-level input) + its slot's embedding
        (``slot_embedding``, ``m`` rows). TIGER's encoder input, and MDGR's with
        ``mdgr_history_input: tokens``."""
        return (self.token_embedding(tokens) + item_vectors[:, :, None]
                + slot_embedding.weight).flatten(1, 2)

    def item_inputs(self, tokens: torch.Tensor) -> torch.Tensor:
        """One encoder input per history item, ``[B, L, d]``: the mean of its tokens'
        embeddings (``tokens`` ``[B, L, m]``, 0 = padding; each slot has its own vocabulary,
        so the mean keeps which code sits in which slot). MDGR's encoder input, and MADRec's
        with ``madrec_history_input: items``."""
        real = tokens > 0
        return self.token_embedding(tokens).sum(2) / real.sum(2, keepdim=True).clamp(min=1)

    def slot_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Hidden ``[N, m, d]`` of one item's slots -> ``[N, m, max_vocab]`` logits through
        ``self.heads`` (one per slot, over its own vocabulary), ``-inf`` beyond it."""
        V = max(self.sid_vocab_sizes)
        out = [F.pad(head(hidden[:, j]), (0, V - head.out_features), value=float("-inf"))
               for j, head in enumerate(self.heads)]
        return torch.stack(out, 1)

    def _init_weights(self, module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            module.weight.data.normal_(mean=0.0, std=self.initializer_range)
        if isinstance(module, nn.Linear) and module.bias is not None:
            module.bias.data.zero_()

    def train_module(self, name: str):
        """Submodule ``name`` for a training forward: compiled with ``torch.compile`` when
        ``compile: True`` (dynamic shapes: batches are cut per length bucket), else itself.
        Decoding always runs eager (its key/value cache is a Python dict)."""
        module = getattr(self, name)
        if not (self.compile and self.training):
            return module
        if name not in self._compiled:
            self._compiled[name] = torch.compile(module, dynamic=True)
        return self._compiled[name]

    def _apply(self, fn, recurse=True):
        # keep the (non-module) table on the same device as the model
        out = super()._apply(fn, recurse)
        self.sid_table.to(self.sid_codes.device)
        return out

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        saved = state_dict.get("sid_codes")
        if saved is not None and not torch.equal(saved.cpu(), self.sid_codes.cpu()):
            raise UserError(
                "this checkpoint was trained with a different SID table than the dataset "
                "builds now (check sid_* settings, item text and seed); retrain or restore "
                "the settings it was trained with"
            )
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def generate(self, interaction, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-``k`` items for each sequence in the batch.

        Returns:
            items ``[B, k]`` (0 = padding, counted as a miss) and their scores ``[B, k]``,
            best first; pads score ``-inf``.
        """
        raise NotImplementedError

    def generate_sessions(self, interaction, k: int, width: int
                          ) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``width`` best sessions of the next ``k`` items (``next_k``; see
        :mod:`recbole_mdgr.next_k`): ``[B, width, k]`` item ids and ``[B, width]`` scores,
        best first, pads item 0 / ``-inf``. Here: one item after another
        (:func:`~recbole_mdgr.next_k.sessions_item_by_item`); a model that decodes several
        items at once overrides it."""
        from recbole_mdgr.next_k import sessions_item_by_item

        return sessions_item_by_item(self, interaction, k, width)

    def extend_history(self, interaction, items: torch.Tensor):
        """The batch with ``items`` ``[B]`` appended to each history (the oldest item drops
        out of a full one): ``ITEM_SEQ``, ``ITEM_SEQ_LEN`` and ``ITEM_SEQ_SID`` updated,
        every other field kept."""
        from recbole.data.interaction import Interaction

        seq, length = interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN]
        L = seq.shape[1]
        seq = torch.where((length >= L)[:, None], seq.roll(-1, 1), seq)
        seq[torch.arange(len(seq), device=seq.device), length.clamp(max=L - 1)] = items
        fields = dict(interaction.interaction)
        fields.update({self.ITEM_SEQ: seq, self.ITEM_SEQ_LEN: (length + 1).clamp(max=L),
                       self.ITEM_SEQ_SID: self.sid_table.lookup(seq)})
        return Interaction(fields)

    def predict(self, interaction):
        raise NotImplementedError(
            f"{self.__class__.__name__} ranks by generation: use full-sort evaluation "
            "(eval_args.mode: full)"
        )

    def full_sort_predict(self, interaction) -> torch.Tensor:
        """``[B, n_items]`` scores: generated items get their beam scores, the rest -inf.

        For RecBole's own utilities (``full_sort_topk``, case studies). When a user gets
        fewer than ``topk`` items (a pad in the list), the top-k of these scores is filled
        with arbitrary ``-inf`` items, where the evaluation counts misses: a warning says so;
        ``generate`` gives the exact lists.
        """
        items, scores = self.generate(interaction, self.topk)
        if bool((items == 0).any()) and not getattr(self, "_warned_pads", False):
            self._warned_pads = True
            self.logger.warning(
                f"full_sort_predict: some users got fewer than {self.topk} generated items; "
                "their other items score -inf, so a top-k of these scores fills the gap with "
                "arbitrary items where the generative evaluation counts misses. Use "
                "model.generate(interaction, k) for the exact lists."
            )
        out = torch.full(
            (items.shape[0], self.n_items), float("-inf"), device=scores.device
        )
        out.scatter_(1, items, scores.float())
        out[:, 0] = float("-inf")
        return out
