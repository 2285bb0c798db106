"""Shared-prefix attention in pure jnp, written densely: the truth for the tests.

Each of the N sample rows of prompt p attends to the concatenation
[prompt p's valid prefix keys, the row's own valid suffix keys]. This version
copies the prefix once per row (N times), which is exactly what the real path
avoids; it exists to be obviously right, not fast.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def shared_prefix_attention(q, prefix_k, prefix_v, prefix_lengths, suffix_k, suffix_v,
                            suffix_lengths, *, scale=None, return_lse=False):
  """Dense masked attention over [prefix, suffix] per row.

  q [P, N, H, E]; prefix_k, prefix_v [P, K, Sp, E]; prefix_lengths [P];
  suffix_k, suffix_v [P*N, K, Ss, E]; suffix_lengths [P*N] (row r = p*N + n).
  Query head h reads kv head h // G, G = H // K.
  Returns out [P, N, H, E] (q.dtype), and lse [P, N, H] f32 when return_lse.
  """
  p, n, h, e = q.shape
  kh, sp = prefix_k.shape[1], prefix_k.shape[2]
  ss = suffix_k.shape[2]
  scale = e ** -0.5 if scale is None else scale
  f32 = jnp.float32
  keys = jnp.concatenate([jnp.repeat(prefix_k, n, axis=0), suffix_k], axis=2).astype(f32)
  vals = jnp.concatenate([jnp.repeat(prefix_v, n, axis=0), suffix_v], axis=2).astype(f32)
  valid = jnp.concatenate([
      jnp.arange(sp)[None, :] < jnp.repeat(prefix_lengths, n)[:, None],
      jnp.arange(ss)[None, :] < suffix_lengths[:, None]], axis=1)  # [R, Sp+Ss]
  qr = q.reshape(p * n, kh, h // kh, e).astype(f32)
  hi = jax.lax.Precision.HIGHEST
  s = jnp.einsum("rkge,rkte->rkgt", qr, keys, precision=hi) * scale
  s = jnp.where(valid[:, None, None, :], s, -jnp.inf)
  m = jnp.max(s, axis=-1)
  m_safe = jnp.where(jnp.isfinite(m), m, 0.0)
  w = jnp.exp(s - m_safe[..., None])
  l = jnp.sum(w, axis=-1)
  vals = jnp.where(valid[:, None, :, None], vals, 0.0)  # garbage never reaches the sum
  l_safe = jnp.where(l > 0, l, 1.0)
  out = jnp.einsum("rkgt,rkte->rkge", w, vals, precision=hi) / l_safe[..., None]
  out = out.reshape(p, n, h, e).astype(q.dtype)
  if not return_lse:
    return out
  lse = jnp.where(l > 0, m_safe + jnp.log(l_safe), -jnp.inf)
  return out, lse.reshape(p, n, h)


__all__ = ["shared_prefix_attention"]
