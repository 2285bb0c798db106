"""The KV cache: one [B, kv_heads, T, head_dim] array per layer plus per-row lengths.

Layout chosen by measurement on the 2-core CPU (DESIGN.md item 4): per-layer
arrays with the time axis third ran the attention-score einsum 9x faster than
[B, T, heads, head_dim], and a single stacked all-layer array copied itself on
every in-place update.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from ttc_jax.model.config import ModelConfig


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class KVCache:
  k: list[jax.Array]  # per layer [B, kv_heads, T, head_dim]
  v: list[jax.Array]  # per layer [B, kv_heads, T, head_dim]
  lengths: jax.Array  # [B] int32: filled positions per row (next write index)

  @property
  def batch_size(self) -> int:
    return self.lengths.shape[0]

  @property
  def capacity(self) -> int:
    return self.k[0].shape[2]

  def replace(self, **changes) -> "KVCache":
    return dataclasses.replace(self, **changes)

  def resize(self, width: int) -> "KVCache":
    """The same cache with `width` time slots: truncated or zero-padded (a copy).

    Decoding in segments attends over a cache only as wide as the positions
    reachable so far; this is the one copy per segment that makes it possible.
    """
    cur = self.capacity
    if width == cur:
      return self
    if width < cur:
      fit = lambda x: x[:, :, :width]
    else:
      fit = lambda x: jnp.pad(x, ((0, 0), (0, 0), (0, width - cur), (0, 0)))
    return KVCache([fit(k) for k in self.k], [fit(v) for v in self.v], self.lengths)

  def gather_rows(self, index: jax.Array) -> "KVCache":
    """Rows reordered/duplicated by `index` [B'] (beam reordering, sample fan-out)."""
    take = lambda x: jnp.take(x, index, axis=0)
    return KVCache([take(k) for k in self.k], [take(v) for v in self.v], take(self.lengths))


def init_cache(cfg: ModelConfig, batch_size: int, capacity: int, dtype=None) -> KVCache:
  """An empty cache with room for `capacity` positions per row."""
  dtype = dtype or cfg.jnp_dtype
  shape = (batch_size, cfg.n_kv_heads, capacity, cfg.hd)
  zeros = lambda: jnp.zeros(shape, dtype)
  return KVCache([zeros() for _ in range(cfg.n_layers)], [zeros() for _ in range(cfg.n_layers)],
                 jnp.zeros((batch_size,), jnp.int32))


def write_rows(cache_layer: jax.Array, new: jax.Array, starts: jax.Array) -> jax.Array:
  """Writes new [B, K, T, hd] into cache_layer [B, K, S, hd] at per-row offsets starts [B].

  Each row has its own write index (no shared index for a padded batch). The
  caller guarantees starts + T <= S (dynamic_update_slice would clamp).
  """
  write = lambda c, n, s: jax.lax.dynamic_update_slice(c, n, (0, s, 0))
  return jax.vmap(write)(cache_layer, new.astype(cache_layer.dtype), starts)
