"""
MADRec
################################################

Reference:
    "Masked Diffusion for Generative Recommendation" (MADRec), ../shared/papers/madrec-paper.txt.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from recbole_mdgr.errors import UserError
from recbole_mdgr.model.base import GenerativeRecommender
from recbole_mdgr.model.decoding import (
    UNMASK_ORDERS,
    finish_beams,
    masked_beam_search,
    nfe_schedule,
)
from recbole_mdgr.model.layers import Dropout, KVCache, length_buckets


ATTENTION_MODES = ("full", "cached")


class MADRec(GenerativeRecommender):
    r"""Masked diffusion over the SID tokens of a user's sequence, with an encoder only.

    Tokens: code ``c`` at SID slot ``j`` is token ``offset_j + c + 1`` (``offset_j =
    sum(vocab_sizes[:j])``, each slot its own vocabulary); 0 is padding, ``sum(vocab_sizes) +
    1`` the mask token. A sample is the user's items (history, then the target) flattened to
    ``(L + 1) * m`` tokens; padding is cut per length bucket, so it costs no compute.

    Positions: a learned **recency** embedding of the item (0 = the last item, the one that
    is predicted, whatever the history length) plus a learned SID-slot embedding, added to
    the token embedding. The paper uses rotary embeddings; learned absolute ones keep torch's
    fused attention kernel (rotary adds elementwise work on q and k in every layer) and, with
    recency indexing, put the predicted item at the same position in training and inference.

    Training (paper eq. 3): per sequence ``t ~ U(0, 1)``, floored at ``madrec_min_t`` so that
    ``1 / t`` stays finite; every real token is replaced by the mask token with probability
    ``t``; the loss is the cross-entropy of the masked tokens weighted by ``1 / t``, summed,
    divided by the number of real tokens in the batch (the per-token ELBO; MaskGR divides by
    the summed weights instead, the same estimate up to batch noise). With probability
    ``madrec_last_item_mask_prob`` a sequence instead gets exactly its last item's ``m``
    tokens masked (the pattern inference sees), with weight 1 per token.

    Inference: the history plus ``m`` mask tokens; :func:`masked_beam_search` commits slots
    in ``madrec_order`` (``greedy``: margin of top-1 over top-2 probability; the paper's
    default), ``madrec_nfe`` steps (NFE; ``m`` = one slot per step), every beam of every user
    of a batch in one forward pass per step, constrained to real items' SIDs.

    ``madrec_attention``: ``full`` (the paper) lets every token attend to every token, so
    each decoding step re-encodes the whole sequence for every beam. ``cached`` keeps the
    history's tokens from attending to the last item's (the last item's tokens still see
    everything), in training and inference alike: the history is then encoded once per user
    and each step runs only the ``m`` next-item tokens of each beam through the stack, over
    the history's cached keys and values.
    """

    @classmethod
    def check_config(cls, config) -> None:
        super().check_config(config)
        if config["madrec_order"] not in UNMASK_ORDERS:
            raise UserError(f"madrec_order must be one of {UNMASK_ORDERS}, got "
                            f"{config['madrec_order']!r}")
        if not 0.0 < config["madrec_min_t"] <= 1.0:
            raise UserError(f"madrec_min_t must be in (0, 1], got {config['madrec_min_t']}")
        if not 0.0 <= config["madrec_last_item_mask_prob"] <= 1.0:
            raise UserError("madrec_last_item_mask_prob must be in [0, 1], got "
                            f"{config['madrec_last_item_mask_prob']}")
        if (config["madrec_attention"] or "full") not in ATTENTION_MODES:
            raise UserError(f"madrec_attention must be one of {ATTENTION_MODES}, "
                            f"got {config['madrec_attention']!r}")

    def __init__(self, config, dataset):
        super().__init__(config, dataset)

        # load parameters info
        self.read_stack_config(config)
        self.n_layers = config["n_layers"]
        self.min_t = config["madrec_min_t"]
        self.last_item_mask_prob = config["madrec_last_item_mask_prob"]
        self.order = config["madrec_order"]
        nfe = config["madrec_nfe"] or self.sid_len
        self.schedule = nfe_schedule(self.sid_len, nfe)
        self.order_seed = config["seed"]
        self.attention = config["madrec_attention"] or "full"

        # define layers
        m, d = self.sid_len, self.hidden_size
        self.mask_token = sum(self.sid_vocab_sizes) + 1
        self.token_embedding = nn.Embedding(self.mask_token + 1, d, padding_idx=0)
        self.recency_embedding = nn.Embedding(self.max_seq_length + 1, d)
        self.slot_embedding = nn.Embedding(m, d)
        self.encoder = self.transformer(self.n_layers)
        self.heads = nn.ModuleList(nn.Linear(d, v) for v in self.sid_vocab_sizes)
        self.dropout = Dropout(self.dropout_prob)

        # parameters initialization
        self.apply(self._init_weights)

    # ------------------------------------------------------------------ sequences
    def sequence_codes(self, item_seq_sid, item_seq_len, last_sid):
        """History ``[B, L_max, m]`` (-1 = pad) plus a last item ``[B, m]`` written right
        after each history -> codes ``[B, L + 1, m]``, L = the batch's longest history."""
        B, L = item_seq_sid.shape[0], int(item_seq_len.max())
        codes = torch.cat([item_seq_sid[:, :L], item_seq_sid.new_full((B, 1, self.sid_len), -1)],
                          1)
        codes[torch.arange(B, device=codes.device), item_seq_len] = last_sid
        return codes

    def tokens_of(self, codes):
        """Codes ``[N, I, m]`` (-1 = pad, -2 = mask) -> tokens ``[N, I * m]``."""
        tokens = torch.where(codes >= 0, codes + self.token_offset, 0)
        return tokens.masked_fill(codes == -2, self.mask_token).flatten(1)

    def embed(self, tokens, n_items):
        """Tokens ``[N, I * m]`` of the first ``I`` items of sequences of ``n_items`` ``[N]``
        items -> inputs ``[N, I * m, d]``: token + recency (0 = last item) + slot."""
        I, m = tokens.shape[1] // self.sid_len, self.sid_len
        steps = torch.arange(I, device=tokens.device)
        recency = (n_items[:, None] - 1 - steps).clamp(min=0)  # (N, I)
        return self.dropout(self.token_embedding(tokens)
                            + self.recency_embedding(recency).repeat_interleave(m, 1)
                            + self.slot_embedding.weight.repeat(I, 1))

    def attention_mask(self, key_mask, n_items):
        """``(b, S)`` real tokens -> what each query may see: ``(b, S)`` (``full``) or
        ``(b, S, S)`` (``cached``: history queries do not see the last item's keys)."""
        if self.attention == "full":
            return key_mask
        item = torch.arange(key_mask.shape[1], device=key_mask.device) // self.sid_len
        last = item[None, :] == (n_items - 1)[:, None]  # (b, S)
        return key_mask[:, None, :] & (~last[:, None, :] | last[:, :, None])

    def encode(self, tokens, n_items):
        """Tokens ``[N, I * m]`` of sequences of ``n_items`` ``[N]`` items -> hidden
        ``[N, I * m, d]`` (zeros at padding), run per length bucket."""
        x = self.embed(tokens, n_items)
        encoder = self.train_module("encoder")
        out = x.new_zeros(x.shape)
        for rows, key_mask in length_buckets(n_items * self.sid_len, self.encoder_buckets):
            S_b = key_mask.shape[1]
            mask = self.attention_mask(key_mask, n_items[rows])
            out[rows, :S_b] = encoder(x[rows, :S_b], key_mask=mask)
        return out

    def slot_log_probs(self, hidden):
        """Hidden ``[N, m, d]`` of one item's slots -> ``[N, m, V_max]`` float32 log-probs,
        each slot over its own vocabulary (``-inf`` beyond it)."""
        return self.slot_logits(hidden).float().log_softmax(-1)

    # ------------------------------------------------------------------ training
    def sample_mask(self, real, n_items, generator=None):
        """Per sequence ``t`` and the tokens to mask (paper eq. 3).

        Args:
            real: ``[B, S]`` bool, real tokens. n_items: ``[B]`` items per sequence.

        Returns:
            (mask ``[B, S]`` bool, t ``[B]``): ``t ~ U(0, 1)`` floored at ``madrec_min_t``,
            each real token masked with probability ``t``; a sequence picked with probability
            ``madrec_last_item_mask_prob`` has exactly its last item masked and ``t = 1``.
        """
        B, S = real.shape
        device = real.device
        t = torch.rand(B, device=device, generator=generator).clamp(min=self.min_t)
        mask = (torch.rand(B, S, device=device, generator=generator) < t[:, None]) & real
        last = torch.rand(B, device=device, generator=generator) < self.last_item_mask_prob
        if bool(last.any()):
            slot = torch.arange(S, device=device) // self.sid_len
            last_item = (slot[None, :] == (n_items - 1)[:, None]) & real
            mask = torch.where(last[:, None], last_item, mask)
            t = torch.where(last, torch.ones_like(t), t)
        return mask, t

    def masked_loss(self, codes, mask, t, n_items):
        """1/t-weighted cross-entropy of the masked tokens, divided by the real tokens.

        ``codes`` ``[B, I, m]`` (-1 = pad), ``mask`` ``[B, I * m]``, ``t`` ``[B]``.
        """
        flat = codes.flatten(1)  # (B, S)
        inputs = self.tokens_of(torch.where(mask.view_as(codes), -2, codes))
        hidden = self.encode(inputs, n_items)  # (B, S, d)
        rows, pos = mask.nonzero(as_tuple=True)
        h, slot, target = hidden[rows, pos], pos % self.sid_len, flat[rows, pos]
        weight = 1.0 / t[rows]
        total = hidden.new_zeros(())
        for j, head in enumerate(self.heads):
            at = slot == j
            if bool(at.any()):
                ce = F.cross_entropy(head(h[at]).float(), target[at], reduction="none")
                total = total + (weight[at] * ce).sum()
        return total / (flat >= 0).sum().clamp(min=1)

    def calculate_loss(self, interaction):
        history = interaction[self.ITEM_SEQ_SID]
        length = interaction[self.ITEM_SEQ_LEN]
        codes = self.sequence_codes(history, length, interaction[self.POS_ITEM_SID])
        n_items = length + 1
        mask, t = self.sample_mask(codes.flatten(1) >= 0, n_items)
        return self.masked_loss(codes, mask, t, n_items)

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def generate(self, interaction, k):
        history = interaction[self.ITEM_SEQ_SID]
        length = interaction[self.ITEM_SEQ_LEN]
        B = history.shape[0]
        codes = self.sequence_codes(history, length, history.new_full((B, self.sid_len), -2))
        n_items = length + 1
        generator = None
        if self.order == "random":
            generator = torch.Generator(device=codes.device).manual_seed(self.order_seed)
        step = (self.cached_step(history, length) if self.attention == "cached"
                else self.full_step(codes, n_items))
        sids, scores = masked_beam_search(step, self.sid_table, B, self.beam_size,
                                          self.schedule, self.order, self.sid_constrained,
                                          generator)
        items, scores, generated, invalid = finish_beams(self.sid_table, sids, scores, k)
        self.decode_stats.add(B, nfe=len(self.schedule), generated=generated, invalid=invalid)
        return items, scores

    def full_step(self, codes, n_items):
        """Decoding step of ``full`` attention: the whole sequence, every beam, re-encoded."""
        B = codes.shape[0]

        def step(partial):  # (N, m), -1 = masked, user-major rows
            W = partial.shape[0] // B
            seq = codes.repeat_interleave(W, 0)  # (N, I, m)
            rows = torch.arange(len(seq), device=seq.device)
            last = n_items.repeat_interleave(W) - 1
            seq[rows, last] = torch.where(partial >= 0, partial, -2)
            hidden = self.encode(self.tokens_of(seq), n_items.repeat_interleave(W))
            at = last[:, None] * self.sid_len + torch.arange(self.sid_len, device=seq.device)
            return self.slot_log_probs(hidden[rows[:, None], at])  # (N, m, V)

        return step

    def cached_step(self, history, length):
        """Decoding step of ``cached`` attention: the history is encoded once here (its
        keys/values kept per layer); each step runs only the beams' ``m`` next-item tokens."""
        L = int(length.max())
        hist_tokens = self.tokens_of(history[:, :L])  # (B, L*m)
        real = hist_tokens > 0
        cache = KVCache(self.n_layers)
        self.encoder(self.embed(hist_tokens, length + 1), key_mask=real, cache=cache)
        cache.freeze()
        position = self.recency_embedding.weight[0] + self.slot_embedding.weight  # (m, d)

        def step(partial):  # (N, m), -1 = masked, user-major rows
            tokens = self.tokens_of(torch.where(partial >= 0, partial, -2)[:, None])  # (N, m)
            x = self.token_embedding(tokens) + position
            return self.slot_log_probs(self.encoder(x, key_mask=real, cache=cache))

        return step
