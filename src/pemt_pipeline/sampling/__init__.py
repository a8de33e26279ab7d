"""Content-aware negative sampling (METHOD.md section 4), no Kedro.

`build_negative_table` turns clip embeddings into an O(N*K) table of (anchor, candidate,
probability, distance) in memory, `negative_table` into one built in part files past
`partition_rows` rows and written as one Parquet file or a folder of parts (`tablefile.py`);
`NegativeSampler` draws negatives from it during training. The rules
(normalisation, trimming, selection) are documented in `table.py`, the exact blockwise
construction in `blockwise.py`, the faiss-based approximation in `approximate.py`.
"""

from .config import NegativeConfig, embedding_space
from .sampler import NegativeSampler
from .build import build_negative_table, negative_table
from .table import normalise, probabilities, reference_table, trim_count
from .tablefile import NegativeTable, read_table, write_frame

__all__ = [
    "NegativeConfig", "NegativeSampler", "NegativeTable", "build_negative_table", "embedding_space",
    "negative_table", "normalise", "probabilities", "read_table", "reference_table", "trim_count",
    "write_frame",
]
