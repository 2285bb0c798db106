"""Ragged multi-query attention in pure jnp: the truth the Pallas kernel is tested against.

Shapes (the model's KV-cache layout: kv heads second, time third):
  q        [B, K, M, E]  M query rows per kv head, all reading that row's keys
  k, v     [B, K, S, E]  S is the cache capacity
  lengths  [B] int32     keys 0..lengths[b]-1 are valid, the rest is garbage
Returns out [B, K, M, E] (q.dtype) and lse [B, K, M] (f32).

Everything after the inputs is f32; the matmuls ask for HIGHEST precision so
that on a GPU the truth is not itself computed in TF32.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def valid_keys(lengths: jax.Array, capacity: int) -> jax.Array:
  """[B, S] bool: key s of row b is valid iff s < lengths[b]."""
  return jnp.arange(capacity, dtype=jnp.int32)[None, :] < lengths[:, None]


def multi_query_attention(q, k, v, lengths, *, scale=None):
  """Softmax attention of q over each row's first lengths[b] keys.

  q [B, K, M, E]; k, v [B, K, S, E]; lengths [B] int32.
  Returns (out [B, K, M, E] in q.dtype, lse [B, K, M] f32), where lse is the
  log-sum-exp of the scaled scores over the valid keys. A row with length 0
  gives out = 0 and lse = -inf.
  """
  e = q.shape[-1]
  scale = e ** -0.5 if scale is None else scale
  valid = valid_keys(lengths.astype(jnp.int32), k.shape[2])  # [B, S]
  hi = jax.lax.Precision.HIGHEST
  s = jnp.einsum("bkme,bkse->bkms", q.astype(jnp.float32), k.astype(jnp.float32),
                 precision=hi) * scale
  s = jnp.where(valid[:, None, None, :], s, -jnp.inf)
  m = jnp.max(s, axis=-1)
  # An empty row has max -inf: shift by 0 instead so exp gives 0, not NaN.
  m_safe = jnp.where(jnp.isfinite(m), m, 0.0)
  p = jnp.exp(s - m_safe[..., None])
  l = jnp.sum(p, axis=-1)
  # Zero the garbage values too: a 0 weight times a NaN/inf would still poison.
  v = jnp.where(valid[:, None, :, None], v.astype(jnp.float32), 0.0)
  acc = jnp.einsum("bkms,bkse->bkme", p, v, precision=hi)
  out = acc / jnp.where(l > 0, l, 1.0)[..., None]
  lse = jnp.where(l > 0, m_safe + jnp.log(jnp.where(l > 0, l, 1.0)), -jnp.inf)
  return out.astype(q.dtype), lse


__all__ = ["valid_keys", "multi_query_attention"]
