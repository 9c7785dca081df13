"""Dense retrieval pieces (MADRec paper §3.3): the low-rank projection head, the InfoNCE loss
over all items, inner-product search over the item vectors and the unified re-ranking."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from recbole_mdgr.model.decoding import NEG_INF

RETRIEVAL_MODES = ("generative", "dense", "unified")


class LowRankLinear(nn.Module):
    """``x -> x U V + b`` with ``U`` ``[d_in, rank]``, ``V`` ``[rank, d_out]``: a linear map of
    rank at most ``rank`` (the paper's way to keep a 4096-wide projection small)."""

    def __init__(self, d_in: int, d_out: int, rank: int):
        super().__init__()
        self.down = nn.Linear(d_in, rank, bias=False)
        self.up = nn.Linear(rank, d_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.down(x))


class DenseHead(nn.Module):
    """``g``: the concatenated hidden states of an item's ``m`` slots -> the item-vector
    space, through one hidden layer (``hidden`` wide, ReLU), every weight of rank <= ``rank``."""

    def __init__(self, d_in: int, d_out: int, hidden: int, rank: int):
        super().__init__()
        self.inner = LowRankLinear(d_in, hidden, rank)
        self.outer = LowRankLinear(hidden, d_out, rank)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.outer(F.relu(self.inner(x)))


def info_nce(pred: torch.Tensor, item_vectors: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean over rows of ``-log softmax(pred @ item_vectors[1:].T)[target]`` (paper's
    L_dense): every item is a candidate, padding row 0 is not.

    Args:
        pred: ``[n, d]`` predicted vectors; item_vectors: ``[item_num, d]`` (row 0 padding);
        targets: ``[n]`` item ids (>= 1).
    """
    logits = pred.float() @ item_vectors[1:].float().T  # (n, item_num - 1)
    return F.cross_entropy(logits, targets - 1)


class InnerProductIndex:
    """Exact inner-product search over the item vectors with faiss (``IndexFlatIP``), so the
    dense ranking never forms a ``[B, n_items]`` score matrix. Searches run on the CPU."""

    def __init__(self, item_vectors: torch.Tensor):
        import faiss

        vectors = np.ascontiguousarray(item_vectors[1:].detach().float().cpu().numpy())
        self.index = faiss.IndexFlatIP(vectors.shape[1])
        self.index.add(vectors)

    def search(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``[B, d]`` -> items ``[B, k]`` (ids >= 1) and their inner products, best first."""
        q = np.ascontiguousarray(queries.detach().float().cpu().numpy())
        scores, ids = self.index.search(q, k)
        items = torch.as_tensor(ids, device=queries.device) + 1
        return items, torch.as_tensor(scores, device=queries.device)


def rerank(items: torch.Tensor, queries: torch.Tensor, item_vectors: torch.Tensor,
           k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Unified retrieval: reorder each user's generated ``items`` ``[B, W]`` (0 = pad) by
    their dense score ``queries[b] . item_vectors[item]``, keep the best ``k``; pads last."""
    scores = (item_vectors[items].float() * queries[:, None].float()).sum(-1)  # (B, W)
    scores = scores.masked_fill(items == 0, NEG_INF)
    top, idx = scores.topk(min(k, items.shape[1]), dim=1)
    return items.gather(1, idx).masked_fill(top == NEG_INF, 0), top
