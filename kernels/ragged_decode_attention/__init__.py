"""Ragged decode attention: each batch row attends to its own prefix of the KV cache.

See kernels/README.md for the walk-through of this folder.
"""

from kernels.ragged_decode_attention.ops import (group_queries, multi_query_attention,
                                                 ragged_decode_attention)

__all__ = ["group_queries", "multi_query_attention", "ragged_decode_attention"]
