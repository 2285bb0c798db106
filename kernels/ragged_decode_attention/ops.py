"""Dispatcher for ragged decode attention: picks reference or Pallas by `impl`.

`impl` is resolved by `kernels.backend.resolve`: "auto" runs Pallas on GPU/TPU
and the XLA reference on CPU; TTC_JAX_KERNELS overrides "auto".
"""

from __future__ import annotations

import jax

from kernels import backend
from kernels.ragged_decode_attention import pallas, reference


def multi_query_attention(q, k, v, lengths, *, scale=None, impl="auto", block_s=None):
  """Ragged attention of M query rows per kv head over each row's valid keys.

  q [B, K, M, E]; k, v [B, K, S, E]; lengths [B] int32 (keys past a row's
  length are ignored). Returns (out [B, K, M, E] in q.dtype, lse [B, K, M] f32);
  a row with length 0 gives out 0 and lse -inf. block_s only affects Pallas.
  """
  impl = backend.resolve(impl)
  if impl == "xla":
    return reference.multi_query_attention(q, k, v, lengths, scale=scale)
  return pallas.multi_query_attention(q, k, v, lengths, scale=scale, block_s=block_s,
                                      interpret=impl == "pallas_interpret")


def group_queries(q: jax.Array, num_kv_heads: int) -> jax.Array:
  """[B, H, E] -> [B, K, G, E]: head h reads kv head h // G (G = H // K)."""
  b, h, e = q.shape
  if h % num_kv_heads:
    raise ValueError(f"{h} query heads do not divide into {num_kv_heads} kv heads")
  return q.reshape(b, num_kv_heads, h // num_kv_heads, e)


def ragged_decode_attention(q, k, v, lengths, *, impl="auto", return_lse=False,
                            block_s=None, scale=None):
  """One decode step of GQA attention over a ragged KV cache.

  q [B, H, E]; k, v [B, K, S, E] (the cache, capacity S); lengths [B] int32.
  Returns out [B, H, E] (q.dtype), and lse [B, H] f32 when return_lse.
  """
  b, h, e = q.shape
  out, lse = multi_query_attention(group_queries(q, k.shape[1]), k, v, lengths,
                                   scale=scale, impl=impl, block_s=block_s)
  out = out.reshape(b, h, e)
  return (out, lse.reshape(b, h)) if return_lse else out


__all__ = ["multi_query_attention", "group_queries", "ragged_decode_attention"]
