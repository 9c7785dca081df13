"""Quantizers: item vectors ``[n, d]`` -> raw codes ``[n, m0]``, registered by name.

To add one: subclass :class:`Quantizer`, implement ``fit_encode`` and add it to
:data:`QUANTIZERS`. Dedup and the padding row are added later by ``build_table``.
"""

from __future__ import annotations

import math

import faiss
import numpy as np

from recbole_mdgr.errors import UserError

from .kmeans import as_faiss, kmeans, residual_kmeans
from .rqvae import train_rqvae
from .settings import SIDSettings


class Quantizer:
    """Base class: one code per level, level ``l`` in ``[0, codebook_sizes[l])``."""

    def __init__(self, settings: SIDSettings):
        self.settings = settings
        self.codebook_sizes = list(settings.codebook_sizes)

    def fit_encode(self, x: np.ndarray, seed: int) -> np.ndarray:
        """Fit on ``x [n, d]`` float and return its codes ``[n, len(codebook_sizes)]`` int64."""
        raise NotImplementedError


def center(x: np.ndarray) -> np.ndarray:
    """Subtract the mean vector: k-means and OPQ spend no codewords on a shared offset."""
    x = as_faiss(x)
    return x - x.mean(0, keepdims=True)


class RQKMeans(Quantizer):
    """Residual k-means (RQ-k-means): level ``l`` clusters the residual of levels ``< l``.

    ``sid_rq_normalize`` L2-normalises each level's residuals before clustering.
    """

    def fit_encode(self, x: np.ndarray, seed: int) -> np.ndarray:
        s = self.settings
        codes, _ = residual_kmeans(
            center(x), self.codebook_sizes, s.kmeans_iters, seed, s.rq_normalize
        )
        return codes


class PQ(Quantizer):
    """Product quantization with free codebook sizes: the (zero-padded) vector is cut into
    ``L`` equal subspaces and each is clustered by its own k-means of any size ``K_l``
    (faiss' own PQ needs ``2^bits`` codewords, so it is not used here)."""

    rotate = False

    def fit_encode(self, x: np.ndarray, seed: int) -> np.ndarray:
        x = center(x)
        if self.settings.opq_whiten:
            x = whiten(x)
        n, d = x.shape
        n_sub = len(self.codebook_sizes)
        d_out = math.ceil(d / n_sub) * n_sub
        if self.rotate:
            x = opq_rotate(x, n_sub, d_out, self.settings.opq_iters)
        else:
            x = np.pad(x, ((0, 0), (0, d_out - d)))
        sub = d_out // n_sub
        codes = np.zeros((n, n_sub), dtype=np.int64)
        for j, k in enumerate(self.codebook_sizes):
            _, codes[:, j] = kmeans(
                x[:, j * sub : (j + 1) * sub], k, self.settings.kmeans_iters, seed + j
            )
        return codes


class OPQ(PQ):
    """MDGR's parallel codebook: an OPQ rotation (``faiss.OPQMatrix``, which balances the
    variance across subspaces), then ``L`` independent sub-codebooks of any size."""

    rotate = True


def whiten(x: np.ndarray) -> np.ndarray:
    """PCA-whiten centred ``x [n, d]``: decorrelated dimensions of unit variance."""
    _, s, vt = np.linalg.svd(x.astype(np.float64), full_matrices=False)
    scale = s / math.sqrt(len(x))
    keep = scale > 1e-8 * scale.max()
    return as_faiss((x @ vt[keep].T) / scale[keep])


def opq_rotate(x: np.ndarray, n_sub: int, d_out: int, niter: int) -> np.ndarray:
    """Learn an OPQ rotation of ``x [n, d]`` for ``n_sub`` subspaces -> ``[n, d_out]``
    (``niter`` alternations of rotation and PQ training)."""
    n, d = x.shape
    opq = faiss.OPQMatrix(d, n_sub, d_out)
    opq.niter = niter
    # OPQ trains an internal 2^bits-codeword PQ; keep it trainable on small item sets
    nbits = max(1, min(8, int(math.log2(n))))
    pq = faiss.ProductQuantizer(d_out, n_sub, nbits)
    opq.pq = pq
    opq.train(x)
    return as_faiss(opq.apply_py(x))


class RQVAEQuantizer(Quantizer):
    """RQ-VAE (see :mod:`.rqvae`); ``sid_rqvae_*`` keys set its training."""

    def fit_encode(self, x: np.ndarray, seed: int) -> np.ndarray:
        s = self.settings
        return train_rqvae(
            x,
            self.codebook_sizes,
            hidden=list(s.rqvae_hidden),
            latent=s.rqvae_latent,
            epochs=s.rqvae_epochs,
            lr=s.rqvae_lr,
            batch_size=s.rqvae_batch_size,
            beta=s.rqvae_beta,
            kmeans_iters=s.kmeans_iters,
            seed=seed,
        )


class RandomCodes(Quantizer):
    """Uniformly random codes, ignoring the vectors (ablation: SIDs with no semantics)."""

    def fit_encode(self, x: np.ndarray, seed: int) -> np.ndarray:
        rng = np.random.default_rng(seed)
        return np.stack([rng.integers(0, k, len(x)) for k in self.codebook_sizes], 1)


QUANTIZERS: dict[str, type[Quantizer]] = {
    "rq_kmeans": RQKMeans,
    "rq_vae": RQVAEQuantizer,
    "opq": OPQ,
    "pq": PQ,
    "random": RandomCodes,
}


def check_quantizer(name: str) -> None:
    if name not in QUANTIZERS:
        raise UserError(f"unknown sid_quantizer {name!r}; choose one of {sorted(QUANTIZERS)}")


def make_quantizer(settings: SIDSettings) -> Quantizer:
    """The quantizer named by ``sid_quantizer``."""
    check_quantizer(settings.quantizer)
    return QUANTIZERS[settings.quantizer](settings)
