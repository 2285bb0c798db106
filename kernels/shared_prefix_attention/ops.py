"""Dispatcher for shared-prefix attention.

impl="xla" runs the same prefix/suffix decomposition as Pallas, with the XLA
reference for both partials: reference.py's dense version copies the prefix N
times and is kept as the test truth only.
"""

from __future__ import annotations

from kernels import backend
from kernels.ragged_decode_attention import reference as ragged_reference
from kernels.shared_prefix_attention import pallas
from kernels.shared_prefix_attention.pallas import merge_partials, pack_queries, unpack_rows


def shared_prefix_attention(q, prefix_k, prefix_v, prefix_lengths, suffix_k, suffix_v,
                            suffix_lengths, *, impl="auto", return_lse=False, block_s=None,
                            scale=None):
  """N sample rows of P prompts over their shared prefix plus their own suffix.

  q [P, N, H, E]; prefix_k, prefix_v [P, K, Sp, E] (stored once per prompt);
  prefix_lengths [P]; suffix_k, suffix_v [P*N, K, Ss, E]; suffix_lengths [P*N]
  (row p*N + n). Query head h reads kv head h // (H // K).
  Returns out [P, N, H, E] (q.dtype), and lse [P, N, H] f32 when return_lse.
  """
  impl = backend.resolve(impl)
  args = (q, prefix_k, prefix_v, prefix_lengths, suffix_k, suffix_v, suffix_lengths)
  if impl == "xla":
    out, lse = pallas.decomposed_attention(*args, mqa=ragged_reference.multi_query_attention,
                                           scale=scale)
  else:
    out, lse = pallas.shared_prefix_attention(*args, scale=scale, block_s=block_s,
                                              interpret=impl == "pallas_interpret")
  return (out, lse) if return_lse else out


__all__ = ["shared_prefix_attention", "merge_partials", "pack_queries", "unpack_rows"]
