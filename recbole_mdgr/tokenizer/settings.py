"""Every ``sid_*`` config key the tokenizer reads, with its default, in one place.

The settings object is also what the SID cache key hashes, so a key that changes the table
must live here.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from recbole_mdgr.errors import UserError, check_bool, check_choice, check_int, check_number


@dataclass(frozen=True)
class SIDSettings:
    """Tokenizer settings read from a RecBole config (missing keys take these defaults)."""

    quantizer: str = "rq_kmeans"
    levels: int = 3
    codebook_sizes: tuple[int, ...] = (256, 256, 256)
    dedup: str = "auto"
    dedup_order: str = "item_id"
    kmeans_iters: int = 25
    threads: int = 1
    seed: int = 2020
    rq_normalize: bool = False
    opq_whiten: bool = False
    opq_iters: int = 20
    rqvae_epochs: int = 60
    rqvae_lr: float = 1e-3
    rqvae_hidden: tuple[int, ...] = (256,)
    rqvae_latent: int = 32
    rqvae_batch_size: int = 1024
    rqvae_beta: float = 0.25
    vector_source: str = "content"
    text_fields: tuple[str, ...] = ()
    text_encoder: str = "tfidf"
    embedding_dim: int = 256
    svd_solver: str = "randomized"
    embedding_file: str | None = None
    embedding_ids: str | None = None
    embedding_field: str | None = None
    cache: bool = True

    @classmethod
    def from_config(cls, config) -> "SIDSettings":
        """Read the settings from a RecBole ``Config`` (or any dict-like returning None)."""

        def get(key, default):
            value = config[key]
            return default if value is None else value

        d = cls()
        size = get("sid_codebook_size", 256)
        if isinstance(size, (list, tuple)):
            # a list gives one size per level and so fixes the number of levels
            sizes = tuple(check_int("sid_codebook_size", s, 2) for s in size)
        else:
            sizes = (check_int("sid_codebook_size", size, 2),) \
                * check_int("sid_levels", get("sid_levels", d.levels), 1)
        if not sizes:
            raise UserError("sid_codebook_size must give at least one level, got []")
        hidden = get("sid_rqvae_hidden", d.rqvae_hidden)
        hidden = tuple(check_int("sid_rqvae_hidden", h, 1)
                       for h in ((hidden,) if isinstance(hidden, int) else hidden))
        fields = get("sid_text_fields", ())
        fields = (fields,) if isinstance(fields, str) else tuple(fields)

        def integer(key, default, low):
            return check_int(key, get(key, default), low)

        def number(key, default, low, low_open=False):
            return check_number(key, get(key, default), low, low_open=low_open)

        def flag(key, default):
            return check_bool(key, get(key, default))

        return cls(
            quantizer=str(get("sid_quantizer", d.quantizer)),
            levels=len(sizes),
            codebook_sizes=sizes,
            dedup=str(get("sid_dedup", d.dedup)),
            dedup_order=str(get("sid_dedup_order", d.dedup_order)),
            kmeans_iters=integer("sid_kmeans_iters", d.kmeans_iters, 1),
            threads=integer("sid_threads", d.threads, 1),
            seed=integer("sid_seed", d.seed, 0),  # not `seed`: a seed sweep keeps its SIDs
            rq_normalize=flag("sid_rq_normalize", d.rq_normalize),
            opq_whiten=flag("sid_opq_whiten", d.opq_whiten),
            opq_iters=integer("sid_opq_iters", d.opq_iters, 0),
            rqvae_epochs=integer("sid_rqvae_epochs", d.rqvae_epochs, 1),
            rqvae_lr=number("sid_rqvae_lr", d.rqvae_lr, 0, low_open=True),
            rqvae_hidden=hidden,
            rqvae_latent=integer("sid_rqvae_latent", d.rqvae_latent, 1),
            rqvae_batch_size=integer("sid_rqvae_batch_size", d.rqvae_batch_size, 1),
            rqvae_beta=number("sid_rqvae_beta", d.rqvae_beta, 0),
            vector_source=str(get("sid_vector_source", d.vector_source)),
            text_fields=fields,
            text_encoder=str(get("sid_text_encoder", d.text_encoder)),
            embedding_dim=integer("sid_embedding_dim", d.embedding_dim, 1),
            svd_solver=str(get("sid_svd_solver", d.svd_solver)),
            embedding_file=config["sid_embedding_file"],
            embedding_ids=config["sid_embedding_ids"],
            embedding_field=config["sid_embedding_field"],
            cache=flag("sid_cache", d.cache),
        )

    def check(self) -> None:
        """Refuse, by key, settings no table can be built with (before any data is read)."""
        from .embed import SVD_SOLVERS, VECTOR_SOURCES, check_text_encoder
        from .quantizers import check_quantizer
        from .sid_table import check_dedup_mode, check_dedup_order

        check_choice("sid_vector_source", self.vector_source, VECTOR_SOURCES, "content")
        check_quantizer(self.quantizer)
        check_dedup_mode(self.dedup)
        check_dedup_order(self.dedup_order)
        check_text_encoder(self.text_encoder)
        check_choice("sid_svd_solver", self.svd_solver, tuple(SVD_SOLVERS), "randomized")
        if self.embedding_ids and not self.embedding_file:
            raise UserError(f"sid_embedding_ids {self.embedding_ids} names the items of the "
                            "rows of sid_embedding_file, and that is not set: set it too, or "
                            "remove sid_embedding_ids")

    def as_key(self) -> dict:
        """The settings that determine the codes (``cache`` does not), for hashing. The
        default ``dedup_order`` is left out, so tables cached before the key existed keep
        their cache key."""
        out = asdict(self)
        out.pop("cache")
        if out["dedup_order"] == "item_id":
            out.pop("dedup_order")
        return out
