"""
MDGR
################################################

Reference:
    "Masked Diffusion Generative Recommendation" (MDGR), arXiv 2601.19501; specification:
    ../shared/papers/mdgr-summary.txt (no code and no full text of MDGR exist to read).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from recbole_mdgr.errors import UserError, check_choice, check_number
from recbole_mdgr.model.base import ConfigView, GenerativeRecommender
from recbole_mdgr.model.decoding import UNMASK_ORDERS, finish_beams, masked_beam_search
from recbole_mdgr.model.layers import Dropout, KVCache, encode_by_length, length_buckets
from recbole_mdgr.tokenizer.settings import SIDSettings


def decoding_schedule(n_slots: int, warmup: int, parallel: int) -> list[int]:
    """``warmup`` one-slot steps, then steps of ``parallel`` slots (the last may be smaller).

    NFE = ``min(warmup, n_slots) + ceil((n_slots - warmup) / parallel)``.
    """
    if not (isinstance(parallel, int) and isinstance(warmup, int)) or parallel < 1 or warmup < 0:
        raise UserError(f"mdgr_parallel must be >= 1 and mdgr_warmup_steps >= 0, got "
                         f"{parallel} and {warmup}")
    warm = min(warmup, n_slots)
    rest = n_slots - warm
    return [1] * warm + [min(parallel, rest - i) for i in range(0, rest, parallel)]


DIFFICULTY_INPUTS = ("curriculum", "mask_share")
HISTORY_ENCODERS = ("bidirectional", "causal")
HISTORY_INPUTS = ("items", "tokens")


def mask_count_distribution(n_slots: int, delta: float, width: float,
                            full_floor: float, uniform_floor: float = 0.0) -> torch.Tensor:
    """P(k masked slots), k = 1..n_slots, at curriculum difficulty ``delta`` in [0, 1].

    A discretised Gaussian over the masked share ``(k - 1) / (n_slots - 1)`` centred on
    ``delta`` (std ``width``): its mass moves from k = 1 to k = n_slots as delta grows. A
    ``full_floor`` share always goes to k = n_slots, the fully masked SID inference starts
    from, so every difficulty trains that case too; a ``uniform_floor`` share is spread
    evenly over every k, so that few-mask states (the last decoding steps) stay trained
    once delta is near 1.
    """
    k = torch.arange(n_slots, dtype=torch.float64)
    share = k / max(n_slots - 1, 1)
    p = torch.exp(-0.5 * ((share - delta) / width) ** 2)
    p = (1 - full_floor - uniform_floor) * p / p.sum() + uniform_floor / n_slots
    p[-1] += full_floor
    return p


class MDGR(GenerativeRecommender):
    r"""Masked diffusion over a parallel-codebook SID: history encoder + bidirectional decoder.

    SIDs: ``opq`` (by default 8 sub-codebooks x 300 codewords, no dedup token unless codes
    collide): every slot is its own subspace, so slots can be decoded in any order.

    History encoder (``n_layers_enc``, bidirectional): one vector per history item, the
    **mean of its slots' token embeddings** (each slot its own vocabulary) plus a learned
    recency embedding (0 = newest item); padding items cost no compute (length buckets).
    ``mdgr_history_item_ids`` (ours, off by default) adds a learned item-ID embedding to
    that vector, as SASRec's input is: items whose SIDs collide, or share most codes, are
    then told apart on the input side (the output side stays SIDs only). It
    runs once per user per ``generate`` call; every decoding step reuses its output through
    cross-attention, whose keys/values are computed once and shared by the user's beams.
    ``mdgr_token_memory`` (ours, off by default): the decoder cross-attends to one entry per
    history token (its item's encoder state plus the token's embedding) instead of one per
    item, as TIGER's decoder does; the encoder is unchanged.
    ``mdgr_history_input: tokens`` (ours; ``items`` by default) encodes the history as TIGER
    does instead: one entry per history token (its embedding, its item's recency embedding
    and a history slot embedding), ``L * m`` entries, and the decoder cross-attends to the
    encoder's state of every token (so it implies the token memory).

    Decoder (``n_layers_dec``): bidirectional self-attention over the target's ``L`` slots
    and cross-attention to the history. Its input at slot ``j``: the committed code's token
    embedding or the mask embedding, plus a slot embedding and a **difficulty embedding** of
    ``delta`` (``mdgr_difficulty_bins`` bins). One head per slot over its own codebook.

    ``mdgr_history_encoder: causal`` (with ``train_sample_mode: windows`` or ``sequence``)
    trains every target of a sequence from one encoder pass, as SASRec does: the encoder is
    causal, its positions count from the start of the window instead of back from the newest
    item, and the target after history item ``j`` is decoded against the encoder states of
    items ``0..j``, exactly the memory inference computes for that prefix. The default,
    ``bidirectional``, encodes each sample's history on its own (one target per sample, the
    ``prefix`` sample mode).

    Training (one sample per target, the prefix form): the curriculum turns training
    progress ``p`` (steps / ``mdgr_curriculum_epochs`` epochs of steps, capped at 1) into
    ``delta = p ** mdgr_gamma`` and draws the number of masked slots ``k`` from
    :func:`mask_count_distribution`; history-aware allocation then draws which ``k`` slots,
    without replacement, with weight ``1 / (count + mdgr_history_smoothing)`` (``count`` =
    history items sharing the target's code at that slot) mixed with uniform
    (``mdgr_history_mix`` = the history-aware share). Loss: cross-entropy of the masked slots,
    averaged. Switches for ablations: ``mdgr_curriculum: False`` (k uniform on 1..L, delta =
    1), ``mdgr_history_aware: False`` (slots uniform). Inference uses delta = 1, the
    curriculum's end point, where the decoder starts from a fully masked SID.
    ``mdgr_difficulty_input: mask_share`` embeds instead each input's own masked share, in
    training and at every decoding step (the noise level of the input, as diffusion models
    condition on their time step); ``mdgr_uniform_floor`` keeps some mass on every k.
    ``mdgr_teacher_forcing`` (ours, off by default) replaces the mask draw: every sample is
    decoded ``m`` times, row ``j`` with slots ``j..m-1`` masked, sharing the sample's memory
    (its keys/values are projected once), and the loss is slot ``j``'s cross-entropy in row
    ``j``: TIGER's teacher forcing through the bidirectional decoder, each slot trained once
    per sample in the state left-to-right decoding predicts it in (so it requires that
    decoding; the curriculum does not apply: the difficulty is inference's, 1).

    Decoding: ``mdgr_warmup_steps`` steps committing one slot per beam (chosen by
    confidence: the largest top-1 minus top-2 probability; ``mdgr_order`` can instead take
    the lowest masked slot first, or a seeded random one), then steps of ``mdgr_parallel``
    slots; ``beam_size`` beams throughout; constrained to real items' SIDs;
    NFE = R_warm + ceil((L - R_warm) / m_par), logged with every evaluation.
    """

    @classmethod
    def check_config(cls, config) -> None:
        super().check_config(config)
        decoding_schedule(1, config["mdgr_warmup_steps"], config["mdgr_parallel"])
        slots = SIDSettings.from_config(config).levels
        if config["sid_dedup"] == "always":
            slots += 1
        if config["sid_dedup"] == "none" and config["mdgr_parallel"] > slots:
            raise UserError(f"mdgr_parallel={config['mdgr_parallel']} is more than the "
                            f"{slots} SID slots (sid_levels)")
        for key in ("mdgr_gamma", "mdgr_curriculum_width", "mdgr_curriculum_epochs"):
            check_number(key, config[key], 0.0, low_open=True)
        shares = {key: config[key] for key in ("mdgr_full_mask_floor", "mdgr_history_mix")}
        shares["mdgr_suffix_mask_prob"] = config["mdgr_suffix_mask_prob"] or 0.0  # ~ = 0
        for key, value in shares.items():
            check_number(key, value, 0.0, 1.0)
        uniform = check_number("mdgr_uniform_floor", config["mdgr_uniform_floor"] or 0.0, 0.0)
        if uniform + config["mdgr_full_mask_floor"] > 1.0:
            raise UserError("mdgr_uniform_floor plus mdgr_full_mask_floor must be at most 1; "
                            f"got {uniform} and {config['mdgr_full_mask_floor']}")
        check_choice("mdgr_order", config["mdgr_order"], UNMASK_ORDERS, "greedy")
        check_choice("mdgr_difficulty_input", config["mdgr_difficulty_input"], DIFFICULTY_INPUTS,
                     "curriculum")
        encoder = check_choice("mdgr_history_encoder", config["mdgr_history_encoder"],
                               HISTORY_ENCODERS, "bidirectional")
        history_input = check_choice("mdgr_history_input", config["mdgr_history_input"],
                                     HISTORY_INPUTS, "items")
        if history_input == "tokens" and encoder == "causal":
            raise UserError("mdgr_history_input: tokens encodes the history bidirectionally, "
                            "one entry per token; the causal encoder needs one entry per "
                            "item. Set mdgr_history_encoder: bidirectional or "
                            "mdgr_history_input: items")
        if encoder == "causal" and (config["train_sample_mode"] or "prefix") == "prefix":
            raise UserError("mdgr_history_encoder: causal trains every target of a sequence "
                            "in one pass; with train_sample_mode: prefix each target would "
                            "be trained once per later sample. Set train_sample_mode: "
                            "windows (every target once) or sequence")

    def __init__(self, config, dataset):
        super().__init__(config, dataset)

        # load parameters info
        self.read_stack_config(config)
        self.n_layers_enc = config["n_layers_enc"]
        self.n_layers_dec = config["n_layers_dec"]
        self.curriculum = bool(config["mdgr_curriculum"])
        self.gamma = config["mdgr_gamma"]
        self.curriculum_epochs = config["mdgr_curriculum_epochs"]
        self.curriculum_width = config["mdgr_curriculum_width"]
        self.full_mask_floor = config["mdgr_full_mask_floor"]
        optional = ConfigView(config)  # None if absent (plain-dict configs, older checkpoints)
        self.uniform_floor = optional["mdgr_uniform_floor"] or 0.0
        self.difficulty_input = optional["mdgr_difficulty_input"] or "curriculum"
        self.causal = (optional["mdgr_history_encoder"] or "bidirectional") == "causal"
        self.history_item_ids = bool(optional["mdgr_history_item_ids"])
        self.history_tokens = (optional["mdgr_history_input"] or "items") == "tokens"
        self.token_memory = bool(optional["mdgr_token_memory"]) and not self.history_tokens
        self.difficulty_bins = config["mdgr_difficulty_bins"]
        self.history_aware = bool(config["mdgr_history_aware"])
        self.history_smoothing = config["mdgr_history_smoothing"]
        self.history_mix = config["mdgr_history_mix"]
        self.suffix_mask_prob = optional["mdgr_suffix_mask_prob"] or 0.0
        self.teacher_forcing = bool(optional["mdgr_teacher_forcing"])
        self.order = optional["mdgr_order"] or "greedy"  # order_generator() seeds ``random``
        self.schedule = decoding_schedule(self.sid_len, config["mdgr_warmup_steps"],
                                          config["mdgr_parallel"])
        if config["mdgr_parallel"] > self.sid_len:
            raise UserError(f"mdgr_parallel={config['mdgr_parallel']} is more than the "
                            f"{self.sid_len} SID slots")
        if self.teacher_forcing and (self.order != "left_to_right" or max(self.schedule) > 1):
            raise UserError("mdgr_teacher_forcing trains only the states of decoding one slot "
                            "per step from left to right: set mdgr_order: left_to_right and "
                            f"mdgr_parallel: 1 (or mdgr_warmup_steps >= the {self.sid_len} "
                            "slots), or mdgr_teacher_forcing: False")
        batch = config["train_batch_size"]
        self.steps_per_epoch = max(1, math.ceil(len(dataset) / batch)) if batch else 1

        # define layers
        m, d = self.sid_len, self.hidden_size
        self.mask_token = sum(self.sid_vocab_sizes) + 1
        self.token_embedding = nn.Embedding(self.mask_token + 1, d, padding_idx=0)
        self.recency_embedding = nn.Embedding(self.max_seq_length, d)
        self.item_embedding = (nn.Embedding(self.n_items, d, padding_idx=0)
                               if self.history_item_ids else None)
        self.slot_embedding = nn.Embedding(m, d)
        self.history_slot_embedding = nn.Embedding(m, d) if self.history_tokens else None
        self.difficulty_embedding = nn.Embedding(self.difficulty_bins + 1, d)
        self.encoder = self.transformer(self.n_layers_enc)
        self.decoder = self.transformer(self.n_layers_dec, cross_attention=True)
        self.heads = nn.ModuleList(nn.Linear(d, v) for v in self.sid_vocab_sizes)
        self.dropout = Dropout(self.dropout_prob)
        # training steps taken: the curriculum's clock, saved with the checkpoint
        self.register_buffer("train_steps", torch.zeros((), dtype=torch.long))

        # parameters initialization
        self.apply(self._init_weights)

    # ------------------------------------------------------------------ networks
    def encode(self, item_seq_sid, item_seq_len, item_seq=None):
        """History SIDs ``[B, L_max, m]`` -> memory ``[B, L, d]`` (one vector per item) or,
        with ``mdgr_history_input: tokens``, ``[B, L * m, d]`` (one per token, item-major).
        Positions: recency (0 = newest) for the bidirectional encoder, the position in the
        window (0 = oldest) for the causal one, so that the state of item ``j`` does not
        depend on how many items follow it. With ``mdgr_history_item_ids`` the history item
        ids ``item_seq`` ``[B, L_max]`` add their own embedding to each item's vector."""
        L = int(item_seq_len.max())
        sid = item_seq_sid[:, :L]  # (B, L, m)
        real = sid >= 0
        tokens = torch.where(real, sid + self.token_offset, 0)
        steps = torch.arange(L, device=sid.device)
        if self.causal:
            position = steps.expand(len(sid), L)
        else:
            position = (item_seq_len[:, None] - 1 - steps).clamp(min=0)
        if self.history_tokens:
            items = self.recency_embedding(position)
            if self.item_embedding is not None:
                items = items + self.item_embedding(item_seq[:, :L])
            x = self.dropout(self.token_inputs(tokens, items, self.history_slot_embedding))
            lengths = item_seq_len * self.sid_len
        else:
            items = self.item_inputs(tokens)
            if self.item_embedding is not None:
                items = items + self.item_embedding(item_seq[:, :L])
            x = self.dropout(items + self.recency_embedding(position))
            lengths = item_seq_len
        memory = encode_by_length(self.train_module("encoder"), x, lengths,
                                  self.encoder_buckets, causal=self.causal)
        return memory, real[:, :, 0]

    def decoder_memory(self, memory, history):
        """Encoder states ``[B, L, d]`` and the history SIDs they came from ``[B, L, m]``
        (-1 = padding or, for a causal row, an item after its prefix) -> what the decoder
        cross-attends to and its mask. By default the item states (mask ``[B, L]``: real
        items). With ``mdgr_token_memory`` one entry per history token, its item's state
        plus the token's embedding, ``[B, L * m, d]`` (mask: real tokens): a slot's query
        can then match the history's codes one by one, while the encoder still runs over
        one vector per item. With ``mdgr_history_input: tokens`` the memory already has one
        state per token (mask: real tokens). (Projecting keys/values on the ``L`` states and
        the token table and gathering, instead of on the ``L * m`` sums, cut the step's FLOPs
        by a third but was slower on a 2-core CPU: 0.123-0.127 against 0.105-0.110 s per
        step.)"""
        real = history >= 0
        if self.history_tokens:
            return memory, real.flatten(1)
        if not self.token_memory:
            return memory, real[:, :, 0]
        tokens = torch.where(real, history + self.token_offset, 0)
        return (memory[:, :, None] + self.token_embedding(tokens)).flatten(1, 2), real.flatten(1)

    def decode(self, partial, memory, memory_mask, delta, cache=None):
        """Partial SIDs ``[N, m]`` (-1 = masked) over each user's memory (``N = B * W``
        rows, user-major) at difficulty ``delta`` (float or ``[N]``) -> ``[N, m, V]``
        logits (:meth:`decode_hidden` through the slot heads)."""
        return self.slot_logits(self.decode_hidden(partial, memory, memory_mask, delta, cache))

    def decode_hidden(self, partial, memory, memory_mask, delta, cache=None):
        """:meth:`decode` before the slot heads: ``[N, m, d]``. With
        ``mdgr_difficulty_input: mask_share`` the embedded difficulty is each row's own
        masked share ``(k - 1) / (m - 1)`` instead (``delta`` unused)."""
        tokens = torch.where(partial >= 0, partial + self.token_offset, self.mask_token)
        if self.difficulty_input == "mask_share":
            delta = ((partial < 0).sum(1) - 1).clamp(min=0) / max(self.sid_len - 1, 1)
        delta = torch.as_tensor(delta, device=partial.device, dtype=torch.float)
        bins = (delta * self.difficulty_bins).round().long().expand(partial.shape[0])
        x = (self.token_embedding(tokens) + self.slot_embedding.weight
             + self.difficulty_embedding(bins)[:, None])
        decoder = self.decoder if cache is not None else self.train_module("decoder")
        return decoder(self.dropout(x), memory=memory, memory_mask=memory_mask, cache=cache)

    def decode_by_length(self, partial, memory, memory_mask, delta, lengths):
        """:meth:`decode_hidden` per ``encoder_buckets`` group of memories of similar
        history length ``lengths`` ``[B]`` (items), each group's memory cut to its longest
        history: the cross-attention, whose keys/values are projected from every memory
        entry in every layer, never works on another group's padding. ``partial`` has
        ``W`` rows per memory (``[B * W, m]``, user-major), which share its keys/values.
        The result equals one :meth:`decode_hidden` over the padded batch (masked keys
        weigh exactly 0)."""
        per_item = memory_mask.shape[1] // int(lengths.max())  # m with the token memory
        W = len(partial) // len(lengths)
        steps = torch.arange(W, device=partial.device)
        hidden = None
        for users, key_mask in length_buckets(lengths, self.encoder_buckets):
            cut = key_mask.shape[1] * per_item
            rows = (users[:, None] * W + steps).flatten()
            group = self.decode_hidden(partial[rows], memory[users, :cut],
                                       memory_mask[users, :cut], delta)
            if hidden is None:
                hidden = group.new_empty((len(partial),) + group.shape[1:])
            hidden[rows] = group
        return hidden

    # ------------------------------------------------------------------ noise
    def progress(self) -> float:
        """Training progress p in [0, 1]: steps over ``mdgr_curriculum_epochs`` epochs."""
        return min(1.0, float(self.train_steps) / (self.curriculum_epochs * self.steps_per_epoch))

    def difficulty(self, p: float) -> float:
        return p ** self.gamma if self.curriculum else 1.0

    def mask_count_probs(self, delta: float) -> torch.Tensor:
        """``[m]`` float64: the probability of k = 1..m masked slots at difficulty ``delta``
        (uniform when the curriculum is switched off)."""
        if self.curriculum:
            return mask_count_distribution(self.sid_len, delta, self.curriculum_width,
                                           self.full_mask_floor, self.uniform_floor)
        return torch.full((self.sid_len,), 1.0 / self.sid_len, dtype=torch.float64)

    def sample_mask_counts(self, n: int, delta: float, generator=None) -> torch.Tensor:
        """``[n]`` numbers of masked slots in 1..m at difficulty ``delta``."""
        return torch.multinomial(self.mask_count_probs(delta), n, replacement=True,
                                 generator=generator) + 1

    def slot_weights(self, item_seq_sid, target_sid):
        """``[B, m]`` probabilities of masking each slot: rare-in-history target tokens
        weigh more (history-aware), mixed with uniform; uniform when switched off."""
        m = self.sid_len
        uniform = torch.full(target_sid.shape, 1.0 / m, device=target_sid.device)
        if not self.history_aware:
            return uniform
        count = (item_seq_sid == target_sid[:, None, :]).sum(1).float()  # (B, m)
        rare = 1.0 / (count + self.history_smoothing)
        rare = rare / rare.sum(1, keepdim=True)
        return self.history_mix * rare + (1 - self.history_mix) * uniform

    def sample_mask(self, item_seq_sid, target_sid, delta: float, generator=None):
        """``[B, m]`` bool: for each sample, k slots drawn without replacement (Gumbel
        top-k over the log of :meth:`slot_weights`); with probability
        ``mdgr_suffix_mask_prob`` the last k slots instead (the states ``left_to_right``
        decoding visits)."""
        B, m = target_sid.shape
        device = target_sid.device
        k = self.sample_mask_counts(B, delta, generator).to(device)  # (B,)
        weights = self.slot_weights(item_seq_sid, target_sid)
        u = torch.rand(B, m, generator=generator).to(device).clamp(1e-12, 1.0)
        keys = weights.log() - torch.log(-torch.log(u))  # Gumbel perturbation
        rank = keys.argsort(1, descending=True).argsort(1)  # (B, m): 0 = first drawn
        mask = rank < k[:, None]
        if self.suffix_mask_prob > 0:  # drawn only when on: older runs' masks stay the same
            suffix = torch.rand(B, generator=generator).to(device) < self.suffix_mask_prob
            last_k = torch.arange(m, device=device) >= (m - k)[:, None]
            mask = torch.where(suffix[:, None], last_k, mask)
        return mask

    # ------------------------------------------------------------------ training
    @staticmethod
    def every_target(history, length, target):
        """Every target of each sequence as a row, for the causal encoder: history SIDs
        ``[B, L, m]`` (left-aligned, ``length`` ``[B]`` real items) and the sample's target
        ``[B, m]`` -> ``(user, row_history, row_target)``: one row per history item ``j``
        (user-major, then ``j``), whose target is item ``j + 1`` (the sample's target after
        the last), that sees history items ``0..j`` (``row_history`` ``[N, L, m]`` with the
        others set to -1, so ``row_history[..., 0] >= 0`` is what the row sees)."""
        B, L, m = history.shape
        steps = torch.arange(L, device=history.device)
        following = torch.cat([history[:, 1:], history.new_full((B, 1, m), -1)], 1)
        following[torch.arange(B, device=history.device), length - 1] = target
        user, last = (steps < length[:, None]).nonzero(as_tuple=True)  # (N,), (N,)
        row_history = history[user].masked_fill((steps > last[:, None])[..., None], -1)
        return user, row_history, following[user, last]

    def calculate_loss(self, interaction):
        length = interaction[self.ITEM_SEQ_LEN]
        history = interaction[self.ITEM_SEQ_SID][:, :int(length.max())]
        target = interaction[self.POS_ITEM_SID]  # (B, m)
        delta = self.difficulty(self.progress())
        memory, _ = self.encode(history, length, interaction[self.ITEM_SEQ])
        if self.causal:  # every target of the sequence, from this one encoder pass
            user, history, target = self.every_target(history, length, target)
            memory = memory[user]  # the items after each row's prefix are -1 in its history
        memory, memory_mask = self.decoder_memory(memory, history)
        lengths = (history[:, :, 0] >= 0).sum(1)
        if self.training:
            self.train_steps += 1
        if self.teacher_forcing:
            return self.teacher_forcing_loss(target, memory, memory_mask, lengths)
        mask = self.sample_mask(history, target, delta)
        hidden = self.decode_by_length(target.masked_fill(mask, -1), memory, memory_mask, delta,
                                       lengths)
        return F.cross_entropy(self.slot_logits(hidden)[mask].float(), target[mask])

    def teacher_forcing_loss(self, target, memory, memory_mask, lengths):
        """``mdgr_teacher_forcing``: each target ``[B, m]`` decoded as ``m`` rows sharing
        its memory, row ``j`` with slots ``j..m-1`` masked; the loss is slot ``j``'s
        cross-entropy in row ``j``, so every slot is trained once per sample from exactly
        the state left-to-right decoding predicts it in (TIGER's teacher forcing, through
        the bidirectional decoder). No curriculum: the difficulty is inference's, 1."""
        B, m = target.shape
        # row j masks slots j..m-1
        masked = torch.ones(m, m, dtype=torch.bool, device=target.device).triu()
        partial = target[:, None, :].masked_fill(masked, -1).flatten(0, 1)  # (B * m, m)
        hidden = self.decode_by_length(partial, memory, memory_mask, 1.0, lengths)
        own = hidden.view(B, m, m, -1).diagonal(dim1=1, dim2=2).transpose(1, 2)  # (B, m, d)
        return F.cross_entropy(self.slot_logits(own).flatten(0, 1).float(), target.flatten())

    # ------------------------------------------------------------------ inference
    def history_memory(self, interaction):
        """What the decoder cross-attends to for the users of ``interaction`` (their
        histories encoded, then :meth:`decoder_memory`) and its mask."""
        history, length = interaction[self.ITEM_SEQ_SID], interaction[self.ITEM_SEQ_LEN]
        memory, _ = self.encode(history, length, interaction[self.ITEM_SEQ])
        return self.decoder_memory(memory, history[:, :int(length.max())])

    @torch.no_grad()
    def generate(self, interaction, k):
        memory, memory_mask = self.history_memory(interaction)
        B = len(memory_mask)
        cache = KVCache(self.n_layers_dec)  # the memory's keys/values, once per call
        cache.freeze()  # the slots' own keys/values are recomputed at every step

        def step(partial):  # (N, m), -1 = masked, user-major
            return self.decode(partial, memory, memory_mask, 1.0, cache).float().log_softmax(-1)

        sids, scores = masked_beam_search(step, self.sid_table, B, self.beam_size,
                                          self.schedule, self.order, self.sid_constrained,
                                          self.order_generator(),
                                          banned=self.banned_sids(interaction))
        items, scores, generated, invalid = finish_beams(self.sid_table, sids, scores, k)
        self.decode_stats.add(B, nfe=len(self.schedule), generated=generated, invalid=invalid)
        return items, scores
