"""Items -> semantic IDs: item text or pretrained vectors -> quantizer -> :class:`SIDTable`.

Entry point: :func:`build_sid_table` (cached on disk). Add a quantizer in
:mod:`.quantizers` (``QUANTIZERS``).
"""

from .build import build_sid_table, format_stats, item_vectors
from .quantizers import QUANTIZERS, Quantizer
from .settings import SIDSettings
from .sid_table import SIDTable, build_table, codebook_stats, dedup_codes

__all__ = [
    "build_sid_table",
    "format_stats",
    "item_vectors",
    "QUANTIZERS",
    "Quantizer",
    "SIDSettings",
    "SIDTable",
    "build_table",
    "codebook_stats",
    "dedup_codes",
]
