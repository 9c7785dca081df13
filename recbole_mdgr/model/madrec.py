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

from recbole_mdgr.errors import (
    UserError, check_bool, check_choice, check_number, check_positive_int,
)
from recbole_mdgr.model.base import ConfigView, GenerativeRecommender
from recbole_mdgr.model.decoding import (
    UNMASK_ORDERS,
    drop_items,
    finish_beams,
    masked_beam_search,
    nfe_schedule,
)
from recbole_mdgr.model.dense import (
    RETRIEVAL_MODES,
    DenseHead,
    InnerProductIndex,
    info_nce,
    rerank,
)
from recbole_mdgr.model.layers import Dropout, KVCache, length_buckets


ATTENTION_MODES = ("full", "cached")
HISTORY_INPUTS = ("tokens", "items")
T_SAMPLINGS = ("uniform", "stratified")


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
    tokens masked (the pattern inference sees), with ``t`` its masked share ``1 / n_items``:
    its ``m`` tokens then weigh as much as a random-``t`` sequence's masked tokens do on
    average (``n_items * m`` CE terms), not ``n_items`` times less. With
    ``madrec_last_item_suffix`` (ours) only the last ``k`` of those tokens are masked, ``k``
    uniform on ``1..m``: the states a left-to-right decoding passes through (TIGER's
    teacher-forced ones, as MDGR's ``mdgr_suffix_mask_prob``); ``t`` is again the masked share.
    ``madrec_teacher_forcing`` (ours; needs ``madrec_attention: cached``) replaces all of that
    with TIGER's objective: the history is never masked, and each sample's last item is decoded
    as ``m`` rows over the history's cached keys/values, row ``j`` with slots ``j..m-1``
    masked; the loss is the mean cross-entropy of slot ``j`` in row ``j``, i.e. exactly the
    negative log-likelihood left-to-right decoding (:meth:`cached_step`) gives the target.
    With ``madrec_dense`` the dense loss is then taken on every target from its first row,
    whose slots are all masked: the very pass dense retrieval makes.

    Inference: the history plus ``m`` mask tokens; :func:`masked_beam_search` commits slots
    in ``madrec_order`` (``greedy``: margin of top-1 over top-2 probability; the paper's
    default), ``madrec_nfe`` steps (NFE; ``m`` = one slot per step), every beam of every user
    of a batch in one forward pass per step, constrained to real items' SIDs.

    ``madrec_history_input: items`` (ours; needs teacher forcing, whose history is never
    masked) feeds the cached history as one entry per item, the mean of its tokens'
    embeddings plus its recency (MDGR's encoder input), instead of one per token: ``m`` times
    fewer history positions for every layer and every row to attend to. The next item's rows
    stay one entry per slot.

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
        check_choice("madrec_order", config["madrec_order"], UNMASK_ORDERS)
        check_number("madrec_min_t", config["madrec_min_t"], 0.0, 1.0, low_open=True)
        check_choice("madrec_t_sampling", config["madrec_t_sampling"], T_SAMPLINGS, "uniform")
        check_number("madrec_last_item_mask_prob", config["madrec_last_item_mask_prob"],
                     0.0, 1.0)
        if config["madrec_last_item_suffix"] and not config["madrec_last_item_mask_prob"]:
            raise UserError("madrec_last_item_suffix: True shapes the masks of the sequences "
                            "that madrec_last_item_mask_prob picks, and that is 0: set "
                            "madrec_last_item_mask_prob > 0 (1.0 masks every sequence so)")
        next_k = config["next_k"] or 1
        check_positive_int("madrec_next_k_nfe", config["madrec_next_k_nfe"],
                           none="next_k x madrec_nfe")
        attention = check_choice("madrec_attention", config["madrec_attention"],
                                 ATTENTION_MODES, "full")
        if config["madrec_teacher_forcing"]:
            wrong = [f"{key}: {value}" for key, value, right in (
                ("madrec_attention", attention, "cached"),
                ("madrec_order", config["madrec_order"], "left_to_right"),
                ("next_k", next_k, 1)) if value != right]
            if wrong:
                raise UserError("madrec_teacher_forcing trains the next item's slots from left "
                                "to right over a history encoded once; it needs "
                                "madrec_attention: cached, madrec_order: left_to_right and "
                                "next_k: 1, got " + ", ".join(wrong))
            if check_bool("compile", config["compile"]):
                raise UserError("compile: True would change nothing here: "
                                "madrec_teacher_forcing trains through the cached decoding "
                                "step, whose key/value cache runs eager; set compile: False "
                                "(torch.compile applies to madrec_teacher_forcing: False)")
        history_input = check_choice("madrec_history_input", config["madrec_history_input"],
                                     HISTORY_INPUTS, "tokens")
        if history_input == "items" and not config["madrec_teacher_forcing"]:
            raise UserError("madrec_history_input: items encodes each history item as one "
                            "entry, which needs a history that is never masked: set "
                            "madrec_teacher_forcing: True (with madrec_attention: cached), or "
                            "madrec_history_input: tokens")
        retrieval = check_choice("madrec_retrieval", config["madrec_retrieval"], RETRIEVAL_MODES,
                                 "generative")
        if retrieval != "generative" and next_k > 1:
            raise UserError(f"madrec_retrieval: {retrieval} predicts one item; with next_k = "
                            f"{next_k} use madrec_retrieval: generative")
        if retrieval != "generative" and not config["madrec_dense"]:
            raise UserError(f"madrec_retrieval: {retrieval} needs a model trained with "
                            "madrec_dense: True")
        if config["madrec_dense"]:
            check_number("madrec_dense_beta", config["madrec_dense_beta"], 0.0, 1.0)
            check_positive_int("madrec_dense_layer", config["madrec_dense_layer"])
            if not config["madrec_dense_layer"] <= config["n_layers"]:
                raise UserError(f"madrec_dense_layer must be in 1..n_layers "
                                f"({config['n_layers']}), got {config['madrec_dense_layer']}")
            for key in ("madrec_dense_rank", "madrec_dense_hidden"):
                check_positive_int(key, config[key])
            check_number("madrec_dense_weight", config["madrec_dense_weight"], 0.0)

    def __init__(self, config, dataset):
        super().__init__(config, dataset)

        # load parameters info
        self.read_stack_config(config)
        self.n_layers = config["n_layers"]
        self.min_t = config["madrec_min_t"]
        self.stratified_t = (config["madrec_t_sampling"] or "uniform") == "stratified"
        self.last_item_mask_prob = config["madrec_last_item_mask_prob"]
        self.last_item_suffix = bool(ConfigView(config)["madrec_last_item_suffix"])
        self.order = config["madrec_order"]  # order_generator() seeds its ``random``
        nfe = config["madrec_nfe"] or self.sid_len
        self.schedule = nfe_schedule(self.sid_len, nfe)
        self.attention = config["madrec_attention"] or "full"
        view = ConfigView(config)
        self.teacher_forcing = bool(view["madrec_teacher_forcing"])
        if self.teacher_forcing and max(self.schedule) > 1:
            raise UserError(f"madrec_teacher_forcing trains one slot per decoding step, but "
                            f"madrec_nfe={nfe} commits several of the {self.sid_len} slots at "
                            f"once: set madrec_nfe: ~ (= {self.sid_len})")
        self.history_items = (view["madrec_history_input"] or "tokens") == "items"
        self.next_k_nfe = view["madrec_next_k_nfe"]
        next_k = view["next_k"] or 1
        if next_k > 1 and self.attention == "cached":
            self.logger.warning(
                "madrec_attention: cached with next_k > 1 decodes the next items only "
                "approximately (the cached history cannot see the first next_k - 1 of them, "
                "as history items see each other in training); use madrec_attention: full")
        slots = next_k * self.sid_len  # m is known once the table is built
        if self.next_k_nfe and self.next_k_nfe > slots:
            raise UserError(f"madrec_next_k_nfe={self.next_k_nfe} exceeds the next_k x m = "
                            f"{slots} slots to decode; use 1..{slots}")
        self.dense = bool(view["madrec_dense"])
        self.retrieval = view["madrec_retrieval"] or "generative"

        # define layers
        m, d = self.sid_len, self.hidden_size
        self.mask_token = sum(self.sid_vocab_sizes) + 1
        self.token_embedding = nn.Embedding(self.mask_token + 1, d, padding_idx=0)
        self.recency_embedding = nn.Embedding(self.max_seq_length + 1, d)
        self.slot_embedding = nn.Embedding(m, d)
        self.encoder = self.transformer(self.n_layers)
        self.heads = nn.ModuleList(nn.Linear(d, v) for v in self.sid_vocab_sizes)
        self.dropout = Dropout(self.dropout_prob)
        if self.dense:  # paper §3.3
            self.dense_beta = config["madrec_dense_beta"]
            self.dense_layer = config["madrec_dense_layer"]
            self.dense_weight = config["madrec_dense_weight"]
            vectors = torch.as_tensor(dataset.item_vectors())  # (item_num, d_text)
            self.register_buffer("item_text", vectors, persistent=True)
            self.text_proj = nn.Linear(vectors.shape[1], m * d, bias=False)  # A_1..A_m
            self.dense_head = DenseHead(m * d, vectors.shape[1], config["madrec_dense_hidden"],
                                        config["madrec_dense_rank"])
            self.__dict__["_dense_index"] = None

        # parameters initialization
        self.apply(self._init_weights)

    # ------------------------------------------------------------------ sequences
    @staticmethod
    def append_items(seq, seq_len, block, pad):
        """History ``[B, L_max, ...]`` plus ``n`` entries ``[B, n, ...]`` written right after
        each history -> ``[B, L + n, ...]``, L = the batch's longest history, ``pad`` after."""
        B, L, n = seq.shape[0], int(seq_len.max()), block.shape[1]
        out = torch.cat([seq[:, :L], seq.new_full((B, n, *seq.shape[2:]), pad)], 1)
        at = seq_len[:, None] + torch.arange(n, device=out.device)
        out[torch.arange(B, device=out.device)[:, None], at] = block
        return out

    def sequence_codes(self, item_seq_sid, item_seq_len, last_sid):
        """History ``[B, L_max, m]`` (-1 = pad) plus a last item's SID ``[B, m]`` ->
        codes ``[B, L + 1, m]``."""
        return self.append_items(item_seq_sid, item_seq_len, last_sid[:, None], -1)

    def item_text_inputs(self, items, visible):
        """``A_j h_text`` of the items ``[N, I]`` (0 = pad) -> ``[N, I * m, d]``, zero for an
        item that is not ``visible`` ``[N, I]``. Only items whose SID is entirely unmasked
        get their text: a masked slot that could read its own item's text (or a sibling
        slot's) would be given the answer, and at inference the item being decoded has none."""
        text = self.item_text[items] * (visible & (items > 0))[..., None]
        N, I = items.shape
        return self.text_proj(text).view(N, I * self.sid_len, self.hidden_size)

    def tokens_of(self, codes):
        """Codes ``[N, I, m]`` (-1 = pad, -2 = mask) -> tokens ``[N, I * m]``."""
        tokens = torch.where(codes >= 0, codes + self.token_offset, 0)
        return tokens.masked_fill(codes == -2, self.mask_token).flatten(1)

    def item_recency(self, n_items, I):
        """Recency embeddings ``[N, I, d]`` of the first ``I`` items of sequences of
        ``n_items`` ``[N]`` items (0 = the last item)."""
        steps = torch.arange(I, device=n_items.device)
        # a full history plus k > 1 next items reaches past the table: its oldest items
        # share the last recency
        return self.recency_embedding((n_items[:, None] - 1 - steps).clamp(0, self.max_seq_length))

    def embed(self, tokens, n_items, text=None):
        """Tokens ``[N, I * m]`` of the first ``I`` items of sequences of ``n_items`` ``[N]``
        items -> inputs ``[N, I * m, d]``: token + recency (0 = last item) + slot (+ ``text``
        ``[N, I * m, d]``, :meth:`item_text_inputs`, with ``madrec_dense``)."""
        I, m = tokens.shape[1] // self.sid_len, self.sid_len
        x = (self.token_embedding(tokens)
             + self.item_recency(n_items, I).repeat_interleave(m, 1)
             + self.slot_embedding.weight.repeat(I, 1))
        return self.dropout(x if text is None else x + text)

    def embed_items(self, history, n_items, text=None):
        """``madrec_history_input: items``: history SIDs ``[N, L, m]`` (-1 = pad) of sequences
        of ``n_items`` ``[N]`` items -> one input per item ``[N, L, d]`` (the mean of its
        tokens' embeddings + its recency; + the mean of its ``m`` slots' ``text``
        ``[N, L * m, d]`` with ``madrec_dense``) and the real items ``[N, L]``."""
        L = history.shape[1]
        tokens = self.tokens_of(history).view(len(history), L, self.sid_len)
        x = self.item_inputs(tokens) + self.item_recency(n_items, L)
        if text is not None:
            x = x + text.view(len(history), L, self.sid_len, -1).mean(2)
        return self.dropout(x), tokens[:, :, 0] > 0

    def attention_mask(self, key_mask, n_items):
        """``(b, S)`` real tokens -> what each query may see: ``(b, S)`` (``full``) or
        ``(b, S, S)`` (``cached``: history queries do not see the last item's keys)."""
        if self.attention == "full":
            return key_mask
        item = torch.arange(key_mask.shape[1], device=key_mask.device) // self.sid_len
        last = item[None, :] == (n_items - 1)[:, None]  # (b, S)
        return key_mask[:, None, :] & (~last[:, None, :] | last[:, :, None])

    def encode(self, tokens, n_items, text=None, keep_layer=None):
        """Tokens ``[N, I * m]`` of sequences of ``n_items`` ``[N]`` items -> hidden
        ``[N, I * m, d]`` (zeros at padding), run per length bucket. With ``keep_layer``,
        ``(hidden, hidden after that block)``."""
        x = self.embed(tokens, n_items, text)
        encoder = self.train_module("encoder")
        out = x.new_zeros(x.shape)
        kept = x.new_zeros(x.shape) if keep_layer else None
        for rows, key_mask in length_buckets(n_items * self.sid_len, self.encoder_buckets):
            S_b = key_mask.shape[1]
            mask = self.attention_mask(key_mask, n_items[rows])
            if keep_layer:
                out[rows, :S_b], kept[rows, :S_b] = encoder(x[rows, :S_b], key_mask=mask,
                                                            keep_layer=keep_layer)
            else:
                out[rows, :S_b] = encoder(x[rows, :S_b], key_mask=mask)
        return out if keep_layer is None else (out, kept)

    def slot_log_probs(self, hidden):
        """Hidden ``[N, n * m, d]`` of ``n`` items' slots -> ``[N, n * m, V_max]`` float32
        log-probs, each slot over its own vocabulary (``-inf`` beyond it)."""
        N, S, d = hidden.shape
        logits = self.slot_logits(hidden.reshape(-1, self.sid_len, d))
        return logits.float().log_softmax(-1).view(N, S, -1)

    # ------------------------------------------------------------------ training
    def sample_mask(self, real, n_items, generator=None):
        """Per sequence ``t`` and the tokens to mask (paper eq. 3).

        Args:
            real: ``[B, S]`` bool, real tokens. n_items: ``[B]`` items per sequence.

        Returns:
            (mask ``[B, S]`` bool, t ``[B]``): ``t ~ U(0, 1)`` floored at ``madrec_min_t``
            (``madrec_t_sampling: stratified``: one ``t`` in each of the ``B`` strata
            ``[i / B, (i + 1) / B)``, a random shift of the grid, as MDLM's low-discrepancy
            sampler: each ``t`` is still uniform, the batch's spread of ``t`` no longer
            random), each real token masked with probability ``t``; a sequence picked with probability
            ``madrec_last_item_mask_prob`` has exactly its last item masked and ``t`` its
            masked share, ``1 / n_items``; with ``madrec_last_item_suffix`` only the last
            ``k`` of that item's ``m`` tokens, ``k`` uniform on ``1..m``, and ``t = k / (m *
            n_items)``.
            With ``madrec_dense``, a sequence picked with probability ``madrec_dense_beta``
            masks whole items instead of tokens: each item's ``m`` tokens together, with
            probability ``t`` (paper §3.3).
        """
        B, S = real.shape
        device = real.device
        if self.stratified_t:
            shift = torch.rand(1, device=device, generator=generator)
            t = (shift + torch.arange(B, device=device) / B) % 1.0
        else:
            t = torch.rand(B, device=device, generator=generator)
        t = t.clamp(min=self.min_t)
        mask = (torch.rand(B, S, device=device, generator=generator) < t[:, None]) & real
        if self.dense:
            whole = torch.rand(B, device=device, generator=generator) < self.dense_beta
            per_item = torch.rand(B, S // self.sid_len, device=device, generator=generator)
            item_mask = (per_item < t[:, None]).repeat_interleave(self.sid_len, 1) & real
            mask = torch.where(whole[:, None], item_mask, mask)
        last = torch.rand(B, device=device, generator=generator) < self.last_item_mask_prob
        if bool(last.any()):
            m = self.sid_len
            position = torch.arange(S, device=device)  # item position // m, slot position % m
            last_item = (position[None, :] // m == (n_items - 1)[:, None]) & real
            share = 1.0 / n_items.to(t.dtype)
            if self.last_item_suffix:  # drawn only when on: older runs' masks stay the same
                k = torch.randint(1, m + 1, (B,), device=device, generator=generator)
                last_item &= position[None, :] % m >= (m - k)[:, None]
                share = share * k.to(t.dtype) / m
            mask = torch.where(last[:, None], last_item, mask)
            t = torch.where(last, share, t)
        return mask, t

    def masked_loss(self, codes, mask, t, n_items, items=None):
        """1/t-weighted cross-entropy of the masked tokens, divided by the real tokens
        (+ ``madrec_dense_weight`` x the dense loss, with ``madrec_dense``).

        ``codes`` ``[B, I, m]`` (-1 = pad), ``mask`` ``[B, I * m]``, ``t`` ``[B]``, ``items``
        ``[B, I]`` the item ids (0 = pad; needed with ``madrec_dense``).
        """
        flat = codes.flatten(1)  # (B, S)
        item_masked = mask.view_as(codes)
        inputs = self.tokens_of(torch.where(item_masked, -2, codes))
        dense_loss = None
        if self.dense:
            text = self.item_text_inputs(items, ~item_masked.any(-1))
            hidden, kept = self.encode(inputs, n_items, text, keep_layer=self.dense_layer)
            dense_loss = self.dense_loss(kept, item_masked.all(-1) & (items > 0), items)
        else:
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
        loss = total / (flat >= 0).sum().clamp(min=1)
        return loss if dense_loss is None else loss + self.dense_weight * dense_loss

    def dense_vectors(self, kept, rows, cols):
        """Predicted item vectors ``g(concat of the m slot states after madrec_dense_layer
        blocks)`` of items ``(rows, cols)`` of ``kept`` ``[N, I * m, d]`` -> ``[n, d_text]``."""
        at = cols[:, None] * self.sid_len + torch.arange(self.sid_len, device=kept.device)
        return self.dense_head(kept[rows[:, None], at].flatten(1))

    def dense_loss(self, kept, fully_masked, items):
        """InfoNCE over all items (paper §3.3), on the fully masked items only (0 if none)."""
        rows, cols = fully_masked.nonzero(as_tuple=True)
        if len(rows) == 0:
            return kept.new_zeros(())
        return info_nce(self.dense_vectors(kept, rows, cols), self.item_text, items[rows, cols])

    def teacher_forcing_loss(self, interaction):
        """``madrec_teacher_forcing``: the mean over the ``B x m`` slots of the targets
        ``[B, m]`` of their cross-entropy in the state left-to-right decoding predicts them
        in (slots before them given, the rest masked; the history, ``[B, L_max, m]``, whole),
        computed by the decoding step itself, per length bucket. With ``madrec_dense``, plus
        ``madrec_dense_weight`` x the InfoNCE of every target from its first row (all ``m``
        slots masked: the pass :meth:`dense_query` makes), the history items' text fused in
        as in decoding; ``madrec_dense_beta`` plays no part."""
        history = interaction[self.ITEM_SEQ_SID]
        length = interaction[self.ITEM_SEQ_LEN]
        target = interaction[self.POS_ITEM_SID]
        B, m = target.shape
        masked = torch.ones(m, m, dtype=torch.bool, device=target.device).triu()  # row j: j..
        text = self.history_text(interaction)
        total, dense_total = 0.0, 0.0
        for rows, _ in length_buckets(length, self.encoder_buckets):
            partial = target[rows, None, :].masked_fill(masked, -1).flatten(0, 1)  # (b * m, m)
            step = self.cached_step(history[rows], length[rows],
                                    None if text is None else text[rows])
            if self.dense:
                log_probs, kept = step(partial, keep_layer=self.dense_layer)  # kept (b*m, m, d)
                first = kept.view(len(rows), m, m, -1)[:, 0].flatten(1)  # row 0 of each sample
                dense_total = dense_total + len(rows) * info_nce(
                    self.dense_head(first), self.item_text, interaction[self.POS_ITEM_ID][rows])
            else:
                log_probs = step(partial)  # (b * m, m, V)
            own = log_probs.view(len(rows), m, m, -1).diagonal(dim1=1, dim2=2)  # (b, V, m)
            total = total - own.gather(1, target[rows, None, :]).sum()
        loss = total / (B * m)
        return loss + self.dense_weight * dense_total / B if self.dense else loss

    def calculate_loss(self, interaction):
        history = interaction[self.ITEM_SEQ_SID]
        length = interaction[self.ITEM_SEQ_LEN]
        if self.teacher_forcing:
            return self.teacher_forcing_loss(interaction)
        codes = self.sequence_codes(history, length, interaction[self.POS_ITEM_SID])
        n_items = length + 1
        mask, t = self.sample_mask(codes.flatten(1) >= 0, n_items)
        items = None
        if self.dense:
            items = self.append_items(interaction[self.ITEM_SEQ], length,
                                      interaction[self.POS_ITEM_ID][:, None], 0)
        return self.masked_loss(codes, mask, t, n_items, items)

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def generate(self, interaction, k):
        """Top-``k`` items by ``madrec_retrieval``: ``generative`` (masked beam search),
        ``dense`` (inner-product search of the predicted item vector over all items) or
        ``unified`` (the generated ``beam_size`` items re-ranked by their dense score)."""
        history = interaction[self.ITEM_SEQ_SID]
        B = history.shape[0]
        step = self.decoding_step(interaction)
        if self.retrieval == "dense":
            seq = interaction[self.ITEM_SEQ]
            wide = min(k + seq.shape[1], self.n_items - 1) if self.exclude_history else k
            items, scores = self.dense_index().search(self.dense_query(step, B), wide)
            if self.exclude_history:  # search past the history, then drop it
                items, scores = drop_items(items, scores, seq, k)
            self.decode_stats.add(B, nfe=1, generated=B * k, invalid=0)
            return items, scores
        sids, scores = masked_beam_search(step, self.sid_table, B, self.beam_size,
                                          self.schedule, self.order, self.sid_constrained,
                                          self.order_generator(),
                                          banned=self.banned_sids(interaction))
        nfe = len(self.schedule)
        if self.retrieval == "unified":
            items, _, generated, invalid = finish_beams(self.sid_table, sids, scores,
                                                        self.beam_size)
            items, scores = rerank(items, self.dense_query(step, B), self.item_text, k)
            nfe += 1
        else:
            items, scores, generated, invalid = finish_beams(self.sid_table, sids, scores, k)
        self.decode_stats.add(B, nfe=nfe, generated=generated, invalid=invalid)
        return items, scores

    @torch.no_grad()
    def generate_sessions(self, interaction, k, width):
        """The ``width`` best sessions of the next ``k`` items, their ``k * m`` slots decoded
        jointly by :func:`masked_beam_search` in ``madrec_next_k_nfe`` steps (default ``k``
        x ``madrec_nfe``), every item constrained to a real item's SID."""
        from recbole_mdgr.next_k import finish_sessions

        B = interaction[self.ITEM_SEQ_SID].shape[0]
        schedule = nfe_schedule(k * self.sid_len,
                                self.next_k_nfe or k * len(self.schedule))
        sids, scores = masked_beam_search(self.decoding_step(interaction, k), self.sid_table,
                                          B, width, schedule, self.order,
                                          self.sid_constrained, self.order_generator(), k,
                                          self.banned_sids(interaction))
        sessions, scores, generated, invalid = finish_sessions(self.sid_table, sids, scores,
                                                               width)
        self.decode_stats.add(B, nfe=len(schedule), generated=generated, invalid=invalid)
        return sessions, scores

    def decoding_step(self, interaction, n_next=1):
        """The decoding step for a batch and its next ``n_next`` items (:meth:`cached_step`
        or :meth:`full_step` by ``madrec_attention``), with the history items' text under
        ``madrec_dense`` (the items being predicted have none)."""
        history = interaction[self.ITEM_SEQ_SID]
        length = interaction[self.ITEM_SEQ_LEN]
        B = history.shape[0]
        text = self.history_text(interaction, n_next)
        if self.attention == "cached":
            return self.cached_step(history, length, text, n_next)
        masked = history.new_full((B, n_next, self.sid_len), -2)
        return self.full_step(self.append_items(history, length, masked, -1), length + n_next,
                              text, n_next)

    def history_text(self, interaction, n_next=1):
        """With ``madrec_dense``: :meth:`item_text_inputs` of the history items and of
        ``n_next`` items after them, which have none (they are the ones predicted)
        ``[B, (L + n_next) * m, d]``; ``None`` without."""
        if not self.dense:
            return None
        seq, length = interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN]
        items = self.append_items(seq, length, seq.new_zeros(len(seq), n_next), 0)
        return self.item_text_inputs(items, torch.ones_like(items, dtype=torch.bool))

    def dense_query(self, step, B):
        """The predicted vector of each user's next item ``[B, d_text]``: one pass with its
        SID fully masked, the slot states after ``madrec_dense_layer`` blocks through ``g``."""
        partial = torch.full((B, self.sid_len), -1, dtype=torch.long,
                             device=self.item_text.device)
        _, kept = step(partial, keep_layer=self.dense_layer)  # (B, m, d)
        return self.dense_head(kept.flatten(1))

    def dense_index(self) -> InnerProductIndex:
        """The faiss index of the item vectors, built on first use."""
        if self._dense_index is None:
            self.__dict__["_dense_index"] = InnerProductIndex(self.item_text)
        return self._dense_index

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        if self.dense:
            self.__dict__["_dense_index"] = None  # item vectors may change with the weights
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def full_step(self, codes, n_items, text=None, n_next=1):
        """Decoding step of ``full`` attention: the whole sequence, every beam, re-encoded.
        ``step(partial)`` ``[N, n_next * m]`` (the last ``n_next`` items' slots) -> log-probs
        ``[N, n_next * m, V]``; with ``keep_layer``, also those slots' states after that
        block ``[N, n_next * m, d]``."""
        B, m = codes.shape[0], self.sid_len

        def step(partial, keep_layer=None):  # (N, n_next * m), -1 = masked, user-major rows
            W = partial.shape[0] // B
            seq = codes.repeat_interleave(W, 0)  # (N, I, m)
            rows = torch.arange(len(seq), device=seq.device)
            first = n_items.repeat_interleave(W) - n_next
            items = first[:, None] + torch.arange(n_next, device=seq.device)  # (N, n_next)
            seq[rows[:, None], items] = torch.where(partial >= 0, partial, -2).view(-1, n_next, m)
            beam_text = None if text is None else text.repeat_interleave(W, 0)
            out = self.encode(self.tokens_of(seq), n_items.repeat_interleave(W), beam_text,
                              keep_layer)
            hidden, kept = out if keep_layer else (out, None)
            at = (items[:, :, None] * m + torch.arange(m, device=seq.device)).flatten(1)
            log_probs = self.slot_log_probs(hidden[rows[:, None], at])  # (N, n_next * m, V)
            return log_probs if keep_layer is None else (log_probs, kept[rows[:, None], at])

        return step

    def cached_step(self, history, length, text=None, n_next=1):
        """Decoding step of ``cached`` attention: the history is encoded once here (its
        keys/values kept per layer); each step runs only the beams' ``n_next * m`` next-item
        tokens (which see each other). ``text``: :meth:`item_text_inputs` of the history
        (and the next items' zeros)."""
        L, m = int(length.max()), self.sid_len
        hist_text = None if text is None else text[:, : L * m]
        if self.history_items:
            x, real = self.embed_items(history[:, :L], length + n_next, hist_text)
        else:
            hist_tokens = self.tokens_of(history[:, :L])  # (B, L*m)
            real = hist_tokens > 0
            x = self.embed(hist_tokens, length + n_next, hist_text)
        cache = KVCache(self.n_layers)
        self.encoder(x, key_mask=real, cache=cache)
        cache.freeze()
        recency = torch.arange(n_next - 1, -1, -1, device=real.device).repeat_interleave(m)
        position = (self.recency_embedding(recency)
                    + self.slot_embedding.weight.repeat(n_next, 1))  # (n_next * m, d)

        def step(partial, keep_layer=None):  # (N, n_next * m), -1 = masked, user-major rows
            tokens = self.tokens_of(torch.where(partial >= 0, partial, -2).view(
                len(partial), n_next, m))  # (N, n_next * m)
            x = self.token_embedding(tokens) + position
            out = self.encoder(x, key_mask=real, cache=cache, keep_layer=keep_layer)
            if keep_layer is None:
                return self.slot_log_probs(out)
            return self.slot_log_probs(out[0]), out[1]

        return step
