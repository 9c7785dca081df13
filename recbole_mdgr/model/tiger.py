"""
TIGER
################################################

Reference:
    Shashank Rajput et al. "Recommender Systems with Generative Retrieval." in NeurIPS 2023.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from recbole_mdgr.errors import check_choice, check_positive_int
from recbole_mdgr.model.base import GenerativeRecommender
from recbole_mdgr.model.decoding import (
    NEG_INF,
    ban_scored_items,
    finish_beams,
    left_to_right_beam_search,
    top_k_items,
)
from recbole_mdgr.model.layers import Dropout, KVCache, encode_by_length, length_buckets

DECODE_MODES = ("beam", "exact")


class TIGER(GenerativeRecommender):
    r"""T5-style encoder-decoder that writes the next item's semantic ID token by token.

    Tokens: code ``c`` at SID position ``j`` is token ``offset_j + c + 1`` with ``offset_j =
    sum(vocab_sizes[:j])``; 0 is padding and ``sum(vocab_sizes) + 1`` is BOS. Encoder and
    decoder share this embedding table.

    Encoder input: the history's SIDs flattened, ``[B, L*m]`` (L trimmed to the batch's
    longest history), plus a learned *recency* embedding of the item (0 = newest item, so the
    last item always has the same position however long the history) and a learned SID-slot
    embedding ``j``. Decoder input: ``[BOS, t_0, ..., t_{m-2}]`` plus a learned decoder
    position embedding; output at position ``j`` predicts ``t_j`` through head ``j`` (one
    linear head per SID position, over that position's own vocabulary).

    Loss: teacher-forced cross-entropy over the ``m`` target tokens. Inference
    (``tiger_decode``): ``beam`` = constrained left-to-right beam search with a key/value
    cache (NFE = m); ``exact`` = the log-likelihood of every item's SID, top-k (NFE = the
    number of items: one teacher-forced decoder pass per candidate).
    """

    @classmethod
    def check_config(cls, config) -> None:
        super().check_config(config)
        check_choice("tiger_decode", config["tiger_decode"], DECODE_MODES)
        check_positive_int("tiger_exact_rows", config["tiger_exact_rows"])

    def __init__(self, config, dataset):
        super().__init__(config, dataset)

        # load parameters info
        self.read_stack_config(config)
        self.n_layers_enc = config["n_layers_enc"]
        self.n_layers_dec = config["n_layers_dec"]
        self.decode_mode = config["tiger_decode"]
        self.exact_rows = config["tiger_exact_rows"]

        # define layers
        m, d = self.sid_len, self.hidden_size
        self.bos = sum(self.sid_vocab_sizes) + 1
        self.token_embedding = nn.Embedding(self.bos + 1, d, padding_idx=0)
        self.recency_embedding = nn.Embedding(self.max_seq_length, d)
        self.slot_embedding = nn.Embedding(m, d)
        self.decoder_position_embedding = nn.Embedding(m, d)
        self.encoder = self.transformer(self.n_layers_enc)
        self.decoder = self.transformer(self.n_layers_dec, cross_attention=True)
        self.heads = nn.ModuleList(nn.Linear(d, v) for v in self.sid_vocab_sizes)
        self.dropout = Dropout(self.dropout_prob)

        # parameters initialization
        self.apply(self._init_weights)

    def embed_history(self, item_seq_sid, item_seq_len):
        """History SIDs ``[B, L, m]`` (-1 = pad) -> inputs ``[B, S, d]``, real tokens ``[B, S]``.

        ``S = L * m`` with L trimmed to the batch's longest history; embeddings dropped out.
        """
        L = int(item_seq_len.max())
        sid = item_seq_sid[:, :L]  # (B, L, m)
        tokens = torch.where(sid >= 0, sid + self.token_offset, 0)  # (B, L, m)
        steps = torch.arange(L, device=sid.device)
        recency = (item_seq_len[:, None] - 1 - steps).clamp(min=0)  # (B, L), 0 = newest
        x = self.token_inputs(tokens, self.recency_embedding(recency), self.slot_embedding)
        return self.dropout(x), tokens.flatten(1) > 0

    def encode(self, item_seq_sid, item_seq_len):
        """History SIDs ``[B, L, m]`` -> memory ``[B, S, d]``, mask ``[B, S]``.

        Users are encoded in ``encoder_buckets`` groups of similar history length, each cut
        to its longest history: padding costs no encoder compute.
        """
        x, mask = self.embed_history(item_seq_sid, item_seq_len)
        memory = encode_by_length(self.encoder, x, item_seq_len * self.sid_len,
                                  self.encoder_buckets)
        return memory, mask

    def decode(self, tokens, memory, memory_mask, cache: KVCache | None = None,
               decoder: str = "eager"):
        """Decoder tokens ``[N, T]`` (N = B * beams) -> hidden ``[N, T, d]``, causal.

        ``decoder="train"``: the training forward's decoder (compiled under ``compile``)."""
        start = 0 if cache is None else len(cache)
        pos = self.decoder_position_embedding.weight[start : start + tokens.shape[1]]
        x = self.dropout(self.token_embedding(tokens) + pos)  # (N, T, d)
        stack = self.train_module("decoder") if decoder == "train" else self.decoder
        return stack(x, causal=True, memory=memory, memory_mask=memory_mask, cache=cache)

    def decoder_inputs(self, target_sid):
        """Teacher forcing: target SIDs ``[N, m]`` -> tokens ``[BOS, t_0 .. t_{m-2}]``."""
        bos = target_sid.new_full((target_sid.shape[0], 1), self.bos)
        return torch.cat([bos, (target_sid + self.token_offset)[:, :-1]], 1)  # (N, m)

    def forward(self, item_seq_sid, item_seq_len, target_sid):
        """Teacher-forced logits ``[B, m, max_vocab]`` of the target SIDs ``[B, m]``.

        Encoder and decoder run per ``encoder_buckets`` group of similar history length, so
        the decoder's cross-attention (its keys/values are projected from every memory
        position, in every layer) never touches another group's padding either.
        """
        x, _ = self.embed_history(item_seq_sid, item_seq_len)
        inputs = self.decoder_inputs(target_sid)  # (B, m)
        hidden = x.new_empty(inputs.shape[0], self.sid_len, self.hidden_size)
        lengths = item_seq_len * self.sid_len
        encoder = self.train_module("encoder")
        for rows, key_mask in length_buckets(lengths, self.encoder_buckets):
            memory = encoder(x[rows, : key_mask.shape[1]], key_mask=key_mask)
            hidden[rows] = self.decode(inputs[rows], memory, key_mask, decoder="train")
        return self.slot_logits(hidden)

    def calculate_loss(self, interaction):
        target = interaction[self.POS_ITEM_SID]  # (B, m)
        logits = self.forward(
            interaction[self.ITEM_SEQ_SID], interaction[self.ITEM_SEQ_LEN], target
        )
        return F.cross_entropy(logits.flatten(0, 1), target.flatten())

    @torch.no_grad()
    def score_all_items(self, interaction):
        """``[B, n_items]`` log-likelihood of every item's full SID (item 0 = -inf).

        Teacher-forced decoder passes over all items' SIDs, at most ``tiger_exact_rows``
        (user, item) rows per pass; each user's memory is shared by its item rows.
        """
        memory, mask = self.encode(interaction[self.ITEM_SEQ_SID], interaction[self.ITEM_SEQ_LEN])
        B, n = memory.shape[0], self.n_items - 1
        codes = self.sid_codes[1:]  # (n, m) the catalogue: candidates, not model inputs
        inputs = self.decoder_inputs(codes)  # (n, m)
        item_chunk = min(n, self.exact_rows)
        user_chunk = max(1, self.exact_rows // item_chunk)
        scores = memory.new_full((B, self.n_items), NEG_INF)
        for b0 in range(0, B, user_chunk):
            b1 = min(B, b0 + user_chunk)
            for i0 in range(0, n, item_chunk):
                i1 = min(n, i0 + item_chunk)
                tokens = inputs[i0:i1].repeat(b1 - b0, 1)  # (Bc*Ic, m), user-major
                logp = self.slot_logits(self.decode(tokens, memory[b0:b1], mask[b0:b1])).log_softmax(-1)
                target = codes[i0:i1].repeat(b1 - b0, 1)[:, :, None]  # (Bc*Ic, m, 1)
                ll = logp.gather(2, target).sum((1, 2))  # (Bc*Ic,)
                scores[b0:b1, 1 + i0 : 1 + i1] = ll.view(b1 - b0, i1 - i0)
        return scores

    @torch.no_grad()
    def generate(self, interaction, k):
        if self.decode_mode == "exact":
            scores = self.score_all_items(interaction)
            if self.exclude_history:
                ban_scored_items(scores, interaction[self.ITEM_SEQ])
            items = torch.arange(self.n_items, device=scores.device).expand_as(scores)
            items, scores = top_k_items(items, scores, k)
            # its real cost: one teacher-forced decoder pass per candidate SID, for each user
            self.decode_stats.add(len(items), nfe=self.n_items - 1,
                                  generated=int((items > 0).sum()), invalid=0)
            return items, scores

        memory, mask = self.encode(interaction[self.ITEM_SEQ_SID], interaction[self.ITEM_SEQ_LEN])
        B = memory.shape[0]
        cache = KVCache(self.n_layers_dec)

        def step(tokens, parents):
            j = len(cache)  # SID position to predict
            if tokens is None:
                ids = torch.full((B, 1), self.bos, dtype=torch.long, device=memory.device)
            else:
                cache.reorder(parents)
                ids = (tokens + self.token_offset[j - 1])[:, None]  # (N, 1)
            hidden = self.decode(ids, memory, mask, cache)  # (N, 1, d)
            return self.heads[j](hidden[:, 0]).float().log_softmax(-1)  # (N, V_j)

        sids, beam_scores = left_to_right_beam_search(
            step, self.sid_table, B, self.beam_size, self.sid_constrained,
            self.banned_sids(interaction)
        )
        items, scores, generated, invalid = finish_beams(self.sid_table, sids, beam_scores, k)
        self.decode_stats.add(B, nfe=self.sid_len, generated=generated, invalid=invalid)
        return items, scores
