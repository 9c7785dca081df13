"""Transformer pieces shared by TIGER, MADRec and MDGR.

T5-style pre-norm blocks: a bias-free LayerNorm before every sub-layer (T5 uses RMSNorm, but
torch's RMSNorm is unfused on CPU and 4x slower than LayerNorm here), no biases in attention,
a residual around each sub-layer, one final norm per stack. Attention is
``F.scaled_dot_product_attention`` with an inner width ``n_heads * head_dim`` that need not
equal ``d_model`` (T5-small style: d_model 128, 6 heads, head_dim 64).

Dropout, three knobs, each applied only where it names (the cost was measured on a 2-core CPU,
where drawing random numbers costs more than the matrix products next to them,
docs/benchmarks.md):

* ``dropout`` -- the residual stream: each sub-layer's output before it is added back
  (width ``d_model``; cheap). Models also apply it to their input embeddings.
* ``attn_dropout`` -- attention probabilities (``B x H x T x S`` draws; with it on, torch's
  CPU attention falls back from the fused kernel to the unfused math path, about 2.3x slower).
* ``ffn_dropout`` -- the feed-forward inner activations (``B x T x inner`` draws).

Masks come from :class:`Dropout`: one random byte per element (8 bytes per int64 draw), about
4x cheaper than ``torch.bernoulli`` on this CPU; the rate is rounded to a multiple of 1/256.

The blocks are position-agnostic: each model adds its own learned position/slot embeddings to
its inputs (documented in the model), so one block serves causal decoders, bidirectional
encoders and bidirectional decoders with cross-attention alike.

Beams share their user's encoder output: when a cross-attention gets ``N = B * W`` query rows
and keys/values for ``B`` users, the ``W`` beams of each user are folded into the query-length
axis, so the memory is never copied per beam (rows must be user-major: row = b * W + w).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from recbole_mdgr.errors import UserError


class Dropout(nn.Module):
    """Inverted dropout with a cheap mask: one random byte per element.

    Drops an element when its byte is below ``round(256 * p)``, so the rate is ``p`` rounded
    to a multiple of 1/256 (0.1 -> 0.1016); survivors are scaled by ``256 / (256 - t)``.
    Uses torch's global generator (seeded by RecBole's ``init_seed``), any device.
    """

    def __init__(self, p: float):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise UserError(f"dropout rate must be in [0, 1), got {p}")
        self.threshold = round(256 * p)
        self.p = self.threshold / 256

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.threshold == 0:
            return x
        n = x.numel()
        words = torch.randint(-(2**63), 2**63 - 1, (-(-n // 8),), dtype=torch.int64,
                              device=x.device)
        keep = words.view(torch.uint8)[:n].view(x.shape) >= self.threshold
        return torch.where(keep, x * (256 / (256 - self.threshold)), 0.0)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class Attention(nn.Module):
    """Multi-head attention; self- or cross-attention depending on where k/v come from."""

    def __init__(self, d_model: int, n_heads: int, head_dim: int, attn_dropout: float = 0.0):
        super().__init__()
        self.n_heads, self.head_dim, self.attn_dropout = n_heads, head_dim, attn_dropout
        inner = n_heads * head_dim
        self.q = nn.Linear(d_model, inner, bias=False)
        # two projections, not one fused: splitting a fused output costs a copy in backward
        self.k = nn.Linear(d_model, inner, bias=False)
        self.v = nn.Linear(d_model, inner, bias=False)
        self.o = nn.Linear(inner, d_model, bias=False)

    def project_kv(self, src: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of ``src`` (B, S, d) -> two (B, H, S, hd)."""
        B, S, _ = src.shape
        k = self.k(src).view(B, S, self.n_heads, self.head_dim).transpose(1, 2)
        v = self.v(src).view(B, S, self.n_heads, self.head_dim).transpose(1, 2)
        return k, v

    def forward(
        self,
        x: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        key_mask: torch.Tensor | None = None,
        causal: bool = False,
    ) -> torch.Tensor:
        """Attend from ``x`` (N, T, d) to ``k``, ``v`` (B, H, S, hd); N = B * W.

        ``key_mask`` (B, S) bool, True = a real key, or (B, T, S): which keys each query
        may see. ``causal``: query t (the last T of S positions) sees keys up to its own
        position, so a cache of S - T past keys works.
        """
        N, T, _ = x.shape
        B, H, S, hd = k.shape
        W = N // B  # beams per user sharing these keys
        q = self.q(x).view(N, T, H, hd).transpose(1, 2)  # (N, H, T, hd)
        if W > 1:
            if causal:
                raise ValueError("causal attention needs one key set per query row")
            q = q.view(B, W, H, T, hd).transpose(1, 2).reshape(B, H, W * T, hd)
        if key_mask is None:
            mask = None
        elif key_mask.dim() == 2:
            mask = key_mask[:, None, None, :]  # (B, 1, 1, S)
        else:
            mask = key_mask[:, None]  # (B, 1, T, S)
        is_causal = causal and mask is None and S == T
        if causal and not is_causal:
            past = torch.ones(T, S, dtype=torch.bool, device=x.device).tril(S - T)  # (T, S)
            mask = past if mask is None else mask & past
        y = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask,
            dropout_p=self.attn_dropout if self.training else 0.0,
            is_causal=is_causal,
        )  # (B, H, W*T, hd) or (N, H, T, hd)
        if W > 1:
            y = y.view(B, H, W, T, hd).transpose(1, 2).reshape(N, H, T, hd)
        return self.o(y.transpose(1, 2).reshape(N, T, H * hd))  # (N, T, d)


    def with_prefix(
        self,
        x: torch.Tensor,
        prefix_k: torch.Tensor,
        prefix_v: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        prefix_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Attend from ``x`` (N, T, d) to a prefix shared by each user's ``W = N / B`` rows
        (``prefix_k``, ``prefix_v`` (B, H, S, hd); ``prefix_mask`` (B, S), True = real) and
        to the row's own ``k``, ``v`` (N, H, T, hd), all T of which every query sees.

        One softmax over both key sets, so the result equals attention over the
        concatenated keys, without copying the prefix W times (in MADRec's cached decoding
        that copy was 60% of the time).
        """
        N, T, _ = x.shape
        B, H, S, hd = prefix_k.shape
        W = N // B
        q = self.q(x).view(N, T, H, hd).transpose(1, 2) * hd**-0.5  # (N, H, T, hd)
        shared_q = q.view(B, W, H, T, hd).transpose(1, 2).reshape(B, H, W * T, hd)
        prefix_scores = shared_q @ prefix_k.transpose(-1, -2)  # (B, H, W*T, S)
        if prefix_mask is not None:
            prefix_scores = prefix_scores.masked_fill(~prefix_mask[:, None, None, :],
                                                      float("-inf"))
        own_scores = (q @ k.transpose(-1, -2)).view(B, W, H, T, T).transpose(1, 2)
        probs = torch.cat([prefix_scores, own_scores.reshape(B, H, W * T, T)], -1).softmax(-1)
        y = (probs[..., :S] @ prefix_v).view(B, H, W, T, hd).transpose(1, 2)  # (B, W, H, T, hd)
        own_probs = probs[..., S:].reshape(B, H, W, T, T).transpose(1, 2).reshape(N, H, T, T)
        y = y.reshape(N, H, T, hd) + own_probs @ v
        return self.o(y.transpose(1, 2).reshape(N, T, H * hd))  # (N, T, d)


ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu}


class FeedForward(nn.Module):
    """Position-wise MLP d -> inner -> d; ``ffn_dropout`` on the inner activations.

    ``activation``: ``relu`` (T5's, so TIGER's; forward + backward about 3.5x cheaper than
    GELU's on this CPU) or ``gelu``.
    """

    def __init__(self, d_model: int, inner_size: int, ffn_dropout: float = 0.0,
                 activation: str = "gelu"):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise UserError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
        self.up = nn.Linear(d_model, inner_size)
        self.down = nn.Linear(inner_size, d_model)
        self.drop = Dropout(ffn_dropout)
        self.act = ACTIVATIONS[activation]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(self.drop(self.act(self.up(x))))


class Block(nn.Module):
    """Pre-norm block: self-attention, optional cross-attention, feed-forward."""

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        head_dim: int,
        inner_size: int,
        dropout: float = 0.0,
        attn_dropout: float = 0.0,
        ffn_dropout: float = 0.0,
        cross_attention: bool = False,
        activation: str = "gelu",
    ):
        super().__init__()
        self.norm_self = nn.LayerNorm(d_model, bias=False)
        self.self_attn = Attention(d_model, n_heads, head_dim, attn_dropout)
        self.norm_cross = nn.LayerNorm(d_model, bias=False) if cross_attention else None
        self.cross_attn = (
            Attention(d_model, n_heads, head_dim, attn_dropout) if cross_attention else None
        )
        self.norm_ffn = nn.LayerNorm(d_model, bias=False)
        self.ffn = FeedForward(d_model, inner_size, ffn_dropout, activation)
        self.drop = Dropout(dropout)

    def forward(
        self,
        x: torch.Tensor,
        key_mask: torch.Tensor | None = None,
        causal: bool = False,
        memory: torch.Tensor | None = None,
        memory_mask: torch.Tensor | None = None,
        cache: dict | None = None,
    ) -> torch.Tensor:
        """``x`` (N, T, d) -> (N, T, d); ``memory`` (B, S, d) for cross-attention.

        With ``cache`` (this layer's dict of :class:`KVCache`), ``x`` holds only the new
        positions: their keys/values are appended to the cached ones (a cache with one row
        per user serves that user's ``N / B`` beams), and the memory's keys/values are
        computed on the first call and reused after. A frozen cache is read, never grown: it
        is a prefix shared by the ``N / B`` rows of each user, every new position sees all of
        it (``key_mask`` (B, S_prefix) marks its real keys) and all new positions of its row.
        """
        h = self.norm_self(x)
        k, v = self.self_attn.project_kv(h)  # (N, H, T, hd)
        if cache is not None and cache.get("frozen", False) and "self" in cache:
            # a shared prefix: read once per user, never copied per beam
            x = x + self.drop(self.self_attn.with_prefix(h, *cache["self"], k, v, key_mask))
        elif cache is not None:
            if "self" in cache:
                past_k, past_v = cache["self"]
                if past_k.shape[0] != k.shape[0]:  # one cached row per user, W beams each
                    beams = k.shape[0] // past_k.shape[0]
                    past_k = past_k.repeat_interleave(beams, 0)
                    past_v = past_v.repeat_interleave(beams, 0)
                k, v = torch.cat([past_k, k], 2), torch.cat([past_v, v], 2)
            if not cache.get("frozen", False):  # frozen before any self keys: none kept
                cache["self"] = (k, v)
            x = x + self.drop(self.self_attn(h, k, v, key_mask, causal))
        else:
            x = x + self.drop(self.self_attn(h, k, v, key_mask, causal))
        if self.cross_attn is not None:
            if cache is not None and "cross" in cache:
                k, v = cache["cross"]
            else:
                k, v = self.cross_attn.project_kv(memory)  # (B, H, S, hd)
                if cache is not None:
                    cache["cross"] = (k, v)
            x = x + self.drop(self.cross_attn(self.norm_cross(x), k, v, memory_mask))
        return x + self.drop(self.ffn(self.norm_ffn(x)))


class Transformer(nn.Module):
    """A stack of :class:`Block` with a final LayerNorm: encoder, causal or parallel decoder."""

    def __init__(
        self,
        n_layers: int,
        d_model: int,
        n_heads: int,
        head_dim: int,
        inner_size: int,
        dropout: float = 0.0,
        attn_dropout: float = 0.0,
        ffn_dropout: float = 0.0,
        cross_attention: bool = False,
        activation: str = "gelu",
    ):
        super().__init__()
        self.blocks = nn.ModuleList(
            Block(d_model, n_heads, head_dim, inner_size, dropout, attn_dropout, ffn_dropout,
                  cross_attention, activation)
            for _ in range(n_layers)
        )
        self.norm = nn.LayerNorm(d_model, bias=False)

    def forward(
        self,
        x: torch.Tensor,
        key_mask: torch.Tensor | None = None,
        causal: bool = False,
        memory: torch.Tensor | None = None,
        memory_mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
        keep_layer: int | None = None,
    ):
        """``x`` (N, T, d) -> (N, T, d). Masks are bool, True = a real position.

        ``keep_layer`` = i: also return the hidden states after block i (1-based, before
        the final norm), as ``(out, kept)``.
        """
        kept = None
        for i, block in enumerate(self.blocks):
            layer_cache = None if cache is None else cache.layers[i]
            x = block(x, key_mask, causal, memory, memory_mask, layer_cache)
            if keep_layer == i + 1:
                kept = x
        out = self.norm(x)
        return out if keep_layer is None else (out, kept)


class KVCache:
    """Keys/values of already-decoded positions, for incremental decoding.

    ``layers[i]["self"]``: (k, v) of layer i's self-attention, (N, H, T_past, hd), one row
    per sequence (beam). ``layers[i]["cross"]``: (k, v) of the memory, (B, H, S, hd), one row
    per user, computed once and shared by that user's beams.
    """

    def __init__(self, n_layers: int):
        self.layers: list[dict] = [{} for _ in range(n_layers)]

    def __len__(self) -> int:
        """Number of positions decoded so far."""
        kv = self.layers[0].get("self")
        return 0 if kv is None else kv[0].shape[2]

    def freeze(self) -> None:
        """From now on, layers read the cached keys/values but never append to them (a
        shared prefix, e.g. a history encoded once and reused by every decoding step)."""
        for layer in self.layers:
            layer["frozen"] = True

    def reorder(self, rows: torch.Tensor) -> None:
        """Keep self-attention rows ``rows`` (N',) long, in that order (beam parents)."""
        for layer in self.layers:
            if "self" in layer:
                k, v = layer["self"]
                layer["self"] = (k[rows], v[rows])


def length_buckets(lengths: torch.Tensor, n_buckets: int):
    """Rows of a batch grouped by length, so that padding costs (almost) no compute.

    Rows are sorted by ``lengths`` (B,) and cut into ``n_buckets`` groups. Yields, per group,
    ``(rows, key_mask)``: the row indices and a ``(b, S)`` bool mask of their real positions,
    ``S`` the group's longest length. Models run their encoder (and, in training, their whole
    forward) per group on ``x[rows, :S]``.
    """
    positions = torch.arange(int(lengths.max()), device=lengths.device)
    for rows in lengths.argsort().chunk(n_buckets):
        S = int(lengths[rows].max())
        yield rows, positions[:S] < lengths[rows, None]


def encode_by_length(
    encoder: Transformer, x: torch.Tensor, lengths: torch.Tensor, n_buckets: int,
    causal: bool = False,
) -> torch.Tensor:
    """``encoder`` over left-aligned rows ``x`` (B, S, d) of ``lengths`` (B,): bidirectional,
    or ``causal`` (position t sees positions <= t, so padding after a row never reaches its
    real positions and needs no mask).

    Encoded in :func:`length_buckets` groups. Returns (B, S, d), zeros beyond each group's
    cut; every position < ``lengths`` equals a plain ``encoder(x, key_mask)`` pass (or
    ``encoder(x, causal=True)``).
    """
    out = x.new_zeros(x.shape)
    for rows, key_mask in length_buckets(lengths, n_buckets):
        S = key_mask.shape[1]
        out[rows, :S] = encoder(x[rows, :S], key_mask=None if causal else key_mask,
                                causal=causal)
    return out
