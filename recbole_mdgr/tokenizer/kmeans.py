"""Thin, deterministic wrappers around faiss k-means shared by the quantizers.

faiss k-means is deterministic for a given seed and thread count; every call here passes an
explicit seed, and :func:`build_threads` fixes the thread count while a table is built.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import faiss
import numpy as np
import torch

from recbole_mdgr.errors import UserError

from .embed import unit_rows


@contextmanager
def build_threads(n: int) -> Iterator[None]:
    """Run faiss and torch with ``n`` threads inside the block, then restore the old counts.

    One thread is the default (``sid_threads``): the codes then do not depend on the
    machine's core count, and on a busy 2-core machine OpenMP's spinning threads made OPQ
    training ~8x slower than one thread.
    """
    old_faiss, old_torch = faiss.omp_get_max_threads(), torch.get_num_threads()
    faiss.omp_set_num_threads(max(1, n))
    torch.set_num_threads(max(1, n))
    try:
        yield
    finally:
        faiss.omp_set_num_threads(old_faiss)
        torch.set_num_threads(old_torch)


def as_faiss(x: np.ndarray) -> np.ndarray:
    """``x [n, d]`` as the contiguous float32 array faiss wants."""
    return np.ascontiguousarray(x, dtype=np.float32)


def kmeans(x: np.ndarray, k: int, iters: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Cluster ``x [n, d]`` into ``k`` centroids.

    Returns:
        (centroids ``[k, d]`` float32, assignment ``[n]`` int64 of each row).
    """
    x = as_faiss(x)
    n, d = x.shape
    if k > n:
        raise UserError(
            f"codebook size {k} is larger than the {n} items to quantize: "
            "lower sid_codebook_size"
        )
    # few points per centroid is expected here (12k items, 256 codes): no faiss warning
    km = faiss.Kmeans(d, k, niter=iters, seed=seed, verbose=False, max_points_per_centroid=n,
                      min_points_per_centroid=1)
    km.train(x)
    _, assign = km.index.search(x, 1)
    return km.centroids.copy(), assign[:, 0].astype(np.int64)


def residual_kmeans(
    x: np.ndarray, sizes: list[int], iters: int, seed: int, normalize: bool = False
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Residual k-means: level ``l`` clusters what levels ``< l`` left unexplained.

    Args:
        x: ``[n, d]`` vectors.
        sizes: codebook size of each level.
        normalize: L2-normalise each level's residuals before clustering them, so every
            level sees directions rather than ever smaller magnitudes.

    Returns:
        (codes ``[n, len(sizes)]`` int64, centroids of each level ``[K_l, d]``).
    """
    residual = as_faiss(x).copy()
    codes = np.zeros((len(residual), len(sizes)), dtype=np.int64)
    books = []
    for level, k in enumerate(sizes):
        if normalize:
            residual = unit_rows(residual)
        centroids, assign = kmeans(residual, k, iters, seed + level)
        codes[:, level] = assign
        books.append(centroids)
        residual = residual - centroids[assign]
    return codes, books
