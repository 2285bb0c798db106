"""Shared-prefix attention from two ragged-attention partials and a log-sum-exp merge.

N sample rows of a prompt share its prefix KV, stored once as [P, K, Sp, E].
Reading it N times (once per row) would multiply the dominant memory traffic
by N, so the prefix partial packs the N rows' queries as extra query rows of
one program: q [P, K, N*G, E] against the prefix, read once per prompt. Each
row's own suffix is a plain ragged decode. Both partials carry their lse, and
`merge_partials` combines them exactly.

This op has no kernel body of its own: it is two calls of the ragged decode
kernel plus an elementwise merge. `decomposed_attention` is written once,
parameterised by the multi-query-attention function, so ops.py runs the same
decomposition with the XLA reference partials for impl="xla".
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from kernels.ragged_decode_attention import pallas as ragged_pallas


def pack_queries(q: jax.Array, num_kv_heads: int) -> jax.Array:
  """[P, N, H, E] -> [P, K, N*G, E]: the N rows' heads of kv head k as one block.

  Packed row index is n*G + g for query head h = k*G + g of sample n.
  """
  p, n, h, e = q.shape
  g = h // num_kv_heads
  q = q.reshape(p, n, num_kv_heads, g, e).transpose(0, 2, 1, 3, 4)
  return q.reshape(p, num_kv_heads, n * g, e)


def unpack_rows(x: jax.Array, n: int) -> jax.Array:
  """Inverse of `pack_queries` on the leading dims: [P, K, N*G, ...] -> [P, N, K*G, ...]."""
  p, kh, ng = x.shape[:3]
  rest = x.shape[3:]
  x = x.reshape(p, kh, n, ng // n, *rest).transpose(0, 2, 1, 3, *range(4, 4 + len(rest)))
  return x.reshape(p, n, kh * (ng // n), *rest)


def merge_partials(out_a, lse_a, out_b, lse_b):
  """Attention over keys A ∪ B from the two partial attentions.

  out_* [..., E] (normalised over their own keys), lse_* [...] f32.
  Returns (out [..., E] in out_a.dtype, lse [...] f32). A side with lse -inf
  (no keys) gets weight 0; both -inf gives out 0 and lse -inf, never NaN.
  """
  m = jnp.maximum(lse_a, lse_b)
  m = jnp.where(jnp.isfinite(m), m, 0.0)  # both empty: any finite shift will do
  w_a, w_b = jnp.exp(lse_a - m), jnp.exp(lse_b - m)
  total = w_a + w_b
  total_safe = jnp.where(total > 0, total, 1.0)

  def part(w, out):  # where, not multiply: an empty side's out must not matter
    return jnp.where(w[..., None] > 0, (w / total_safe)[..., None] * out.astype(jnp.float32), 0.0)

  out = part(w_a, out_a) + part(w_b, out_b)
  lse = jnp.where(total > 0, m + jnp.log(total_safe), -jnp.inf)
  return out.astype(out_a.dtype), lse


def decomposed_attention(q, prefix_k, prefix_v, prefix_lengths, suffix_k, suffix_v,
                         suffix_lengths, *, mqa, scale=None):
  """Prefix partial (packed, prefix read once) + suffix partial, merged.

  Shapes as in reference.shared_prefix_attention. `mqa(q, k, v, lengths, scale=)`
  is a multi-query attention returning (out, lse), e.g. the ragged kernel.
  Returns (out [P, N, H, E], lse [P, N, H]).
  """
  p, n, h, e = q.shape
  kh = prefix_k.shape[1]
  pre_out, pre_lse = mqa(pack_queries(q, kh), prefix_k, prefix_v, prefix_lengths, scale=scale)
  pre_out, pre_lse = unpack_rows(pre_out, n), unpack_rows(pre_lse, n)
  # The suffix is a per-row decode: rows become the batch, G heads per kv head.
  suf_q = q.reshape(p * n, kh, h // kh, e)
  suf_out, suf_lse = mqa(suf_q, suffix_k, suffix_v, suffix_lengths, scale=scale)
  return merge_partials(pre_out, pre_lse, suf_out.reshape(p, n, h, e), suf_lse.reshape(p, n, h))


@functools.partial(jax.jit, static_argnames=("scale", "block_s", "interpret"))
def shared_prefix_attention(q, prefix_k, prefix_v, prefix_lengths, suffix_k, suffix_v,
                            suffix_lengths, *, scale=None, block_s=None, interpret=False):
  """Pallas path: `decomposed_attention` over the ragged decode kernel.

  Returns (out [P, N, H, E] in q.dtype, lse [P, N, H] f32).
  """
  mqa = functools.partial(ragged_pallas.multi_query_attention, block_s=block_s,
                          interpret=interpret)
  return decomposed_attention(q, prefix_k, prefix_v, prefix_lengths, suffix_k, suffix_v,
                              suffix_lengths, mqa=mqa, scale=scale)


__all__ = ["pack_queries", "unpack_rows", "merge_partials", "decomposed_attention",
           "shared_prefix_attention"]
