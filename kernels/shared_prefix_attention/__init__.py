"""Shared-prefix attention: N samples of a prompt read its prefix KV once.

See kernels/README.md for the kernel-folder pattern.
"""

from kernels.shared_prefix_attention.ops import (merge_partials, pack_queries,
                                                 shared_prefix_attention, unpack_rows)

__all__ = ["merge_partials", "pack_queries", "shared_prefix_attention", "unpack_rows"]
