"""Content-aware negative sampling (METHOD.md section 4), no Kedro.

`build_negative_table` turns clip embeddings into an O(N*K) table of (anchor, candidate,
probability, distance); `NegativeSampler` draws negatives from it during training. The rules
(normalisation, trimming, selection) are documented in `table.py`, the exact blockwise
construction in `blockwise.py`, the faiss-based approximation in `approximate.py`.
"""

from .config import NegativeConfig, embedding_space
from .sampler import NegativeSampler
from .build import build_negative_table
from .table import normalise, probabilities, reference_table, trim_count

__all__ = [
    "NegativeConfig", "NegativeSampler", "build_negative_table", "embedding_space", "normalise",
    "probabilities", "reference_table", "trim_count",
]
