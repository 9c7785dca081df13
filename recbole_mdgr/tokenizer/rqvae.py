"""RQ-VAE (Lee et al., CVPR'22; as used for semantic IDs by TIGER, Rajput et al., NeurIPS'23).

An MLP encoder maps an item vector to a latent ``z``; ``m`` residual codebooks quantize it
(level ``l`` quantizes ``z - sum_{l' < l} q_{l'}``); an MLP decoder reconstructs the item
vector from the straight-through sum of the codewords. Loss: reconstruction MSE plus, per
level, the codebook loss ``|sg(r) - q|^2`` and ``beta`` times the commitment loss
``|r - sg(q)|^2``. Two things keep every codebook alive on CPU-sized budgets:

- each level is initialised with k-means on the residuals of the untrained encoder;
- after each epoch, codes no item picked in that epoch are re-seeded from residuals of
  the last batch at that level (dead-code restart), so no codebook collapses.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .kmeans import kmeans


def _mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class RQVAE(nn.Module):
    """Encoder, residual codebooks and decoder.

    Args:
        dim: input dimension ``d``.
        hidden: hidden layer widths of the encoder (the decoder mirrors them).
        latent: latent dimension.
        sizes: codebook size of each level.
    """

    def __init__(self, dim: int, hidden: list[int], latent: int, sizes: list[int]):
        super().__init__()
        self.encoder = _mlp([dim, *hidden, latent])
        self.decoder = _mlp([latent, *reversed(hidden), dim])
        self.codebooks = nn.ParameterList(
            nn.Parameter(torch.randn(k, latent) * 0.01) for k in sizes
        )

    def quantize(
        self, z: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        """Residual quantization of ``z [B, latent]``.

        Returns:
            (quantized sum ``[B, latent]``, codes ``[B, m]``, the residual entering each
            level ``[B, latent]`` and the codeword chosen for it ``[B, latent]``).
        """
        residual, total = z, torch.zeros_like(z)
        codes, residuals, quants = [], [], []
        for book in self.codebooks:
            idx = torch.cdist(residual.detach(), book.detach()).argmin(1)  # [B]
            q = book[idx]  # [B, latent]
            codes.append(idx)
            residuals.append(residual)
            quants.append(q)
            total = total + q
            residual = residual - q.detach()
        return total, torch.stack(codes, 1), residuals, quants

    def loss(self, x: torch.Tensor, beta: float) -> tuple[torch.Tensor, torch.Tensor, list]:
        """Training loss on a batch ``x [B, d]``; also the codes ``[B, m]`` and the
        (detached) residuals entering each level, for dead-code restarts."""
        z = self.encoder(x)
        zq, codes, residuals, quants = self.quantize(z)
        vq = sum(
            F.mse_loss(q, r.detach()) + beta * F.mse_loss(r, q.detach())
            for r, q in zip(residuals, quants)
        )
        z_st = z + (zq - z).detach()  # straight-through estimator
        recon = F.mse_loss(self.decoder(z_st), x)
        return recon + vq, codes, [r.detach() for r in residuals]

    @torch.no_grad()
    def kmeans_init(self, x: torch.Tensor, iters: int, seed: int) -> None:
        """Set each level's codebook to k-means centroids of that level's residuals."""
        residual = self.encoder(x)
        for level, book in enumerate(self.codebooks):
            centroids, assign = kmeans(residual.numpy(), book.shape[0], iters, seed + level)
            book.copy_(torch.from_numpy(centroids))
            residual = residual - book[torch.from_numpy(assign)]


def train_rqvae(
    x: np.ndarray,
    sizes: list[int],
    hidden: list[int],
    latent: int,
    epochs: int,
    lr: float,
    batch_size: int,
    beta: float,
    kmeans_iters: int,
    seed: int,
) -> np.ndarray:
    """Train an RQ-VAE on ``x [n, d]`` and return the codes ``[n, m]`` int64 of every row."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    data = torch.as_tensor(x, dtype=torch.float32)
    data = (data - data.mean(0)) / data.std().clamp(min=1e-12)
    model = RQVAE(data.shape[1], hidden, latent, sizes)
    model.kmeans_init(data, kmeans_iters, seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(epochs):
        used = [torch.zeros(k, dtype=torch.bool) for k in sizes]
        for batch in torch.randperm(len(data), generator=gen).split(batch_size):
            loss, codes, residuals = model.loss(data[batch], beta)
            opt.zero_grad()
            loss.backward()
            opt.step()
            for level in range(len(sizes)):
                used[level][codes[:, level]] = True
        with torch.no_grad():
            for level, book in enumerate(model.codebooks):
                dead = (~used[level]).nonzero(as_tuple=True)[0]
                if len(dead):
                    src = residuals[level]
                    pick = torch.randint(len(src), (len(dead),), generator=gen)
                    book[dead] = src[pick]
    model.eval()
    with torch.no_grad():
        _, codes, _, _ = model.quantize(model.encoder(data))
    return codes.numpy().astype(np.int64)
