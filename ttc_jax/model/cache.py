"""The KV cache: one [B, kv_heads, T, head_dim] array per layer plus per-row lengths.

Optionally with a shared prefix (DESIGN.md item 5): the N rows of a prompt
(best-of-N samples, beams) attend to the prompt's keys/values stored once
(`SharedPrefix`, [Q, ...]) plus their own suffix in the cache's arrays; the
cache's `lengths` stay absolute positions, and suffix slot j of row b holds
position offsets[b] + j (offsets = the row's prompt length).

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


@dataclasses.dataclass
class SharedPrefix:
  """Prompt keys/values stored once for the `group` consecutive rows of each prompt."""
  k: list[jax.Array]  # per layer [Q, kv_heads, P, head_dim]
  v: list[jax.Array]  # per layer [Q, kv_heads, P, head_dim]
  lengths: jax.Array  # [Q] int32: the prompt's length (keys past it are padding)
  group: int  # rows per prompt (static)


jax.tree_util.register_dataclass(SharedPrefix, data_fields=["k", "v", "lengths"],
                                 meta_fields=["group"])


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class KVCache:
  k: list[jax.Array]  # per layer [B, kv_heads, T, head_dim]
  v: list[jax.Array]  # per layer [B, kv_heads, T, head_dim]
  lengths: jax.Array  # [B] int32: filled positions per row (next write index)
  prefix: SharedPrefix | None = None  # with it, k / v hold each row's suffix only

  @property
  def batch_size(self) -> int:
    return self.lengths.shape[0]

  @property
  def capacity(self) -> int:
    """Slots in this cache's own arrays (the suffix when a prefix is shared)."""
    return self.k[0].shape[2]

  @property
  def offsets(self) -> jax.Array:
    """[B] absolute position of each row's slot 0: its prompt length when shared, else 0."""
    if self.prefix is None:
      return jnp.zeros_like(self.lengths)
    return jnp.repeat(self.prefix.lengths, self.prefix.group, total_repeat_length=self.batch_size)

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
    return KVCache([fit(k) for k in self.k], [fit(v) for v in self.v], self.lengths, self.prefix)

  def gather_rows(self, index: jax.Array) -> "KVCache":
    """Rows reordered/duplicated by `index` [B'] (beam reordering, sample fan-out).

    With a shared prefix only the suffixes move: `index` must keep every row
    within its own prompt's group (as beam / DVTS parent selection does).
    """
    take = lambda x: jnp.take(x, index, axis=0)
    return KVCache([take(k) for k in self.k], [take(v) for v in self.v], take(self.lengths),
                   self.prefix)

  def take_rows(self, index: jax.Array) -> "KVCache":
    """Rows `index` [B'] as a cache of their own (running a few rows of a batch).

    Unlike `gather_rows`, rows may come from any prompt: with a shared prefix
    each taken row gets its own copy of its prompt's prefix (group 1), which
    is cheap when B' is small. `put_rows` writes the rows back.
    """
    take = lambda x: jnp.take(x, index, axis=0)
    prefix = self.prefix
    if prefix is not None:
      prompt = index // prefix.group
      by_prompt = lambda x: jnp.take(x, prompt, axis=0)
      prefix = SharedPrefix([by_prompt(k) for k in prefix.k], [by_prompt(v) for v in prefix.v],
                            by_prompt(prefix.lengths), 1)
    return KVCache([take(k) for k in self.k], [take(v) for v in self.v], take(self.lengths),
                   prefix)

  def put_rows(self, index: jax.Array, rows: "KVCache") -> "KVCache":
    """This cache with rows `index` replaced by `rows` (from `take_rows(index)`)."""
    put = lambda full, part: full.at[index].set(part)
    return KVCache([put(f, r) for f, r in zip(self.k, rows.k)],
                   [put(f, r) for f, r in zip(self.v, rows.v)],
                   put(self.lengths, rows.lengths), self.prefix)


def fan_out(cache: KVCache, n: int, suffix_capacity: int, shared: bool) -> KVCache:
  """A prefilled prompt cache [Q] -> one for the N rows of each prompt [Q * N].

  shared: the prompt's keys/values become a `SharedPrefix` (stored once) and
  each row gets an empty suffix of `suffix_capacity` slots; else every row
  gets a copy of its prompt's cache, widened by `suffix_capacity` slots.
  """
  if cache.prefix is not None:
    raise ValueError("fan_out takes a plain prompt cache")
  q = cache.batch_size
  if not shared:
    rows = jnp.repeat(jnp.arange(q), n, total_repeat_length=q * n)
    return cache.resize(cache.capacity + suffix_capacity).gather_rows(rows)
  lengths = jnp.repeat(cache.lengths, n, total_repeat_length=q * n)
  shape = (q * n, cache.k[0].shape[1], suffix_capacity, cache.k[0].shape[3])
  zeros = lambda like: jnp.zeros(shape, like.dtype)
  return KVCache([zeros(k) for k in cache.k], [zeros(v) for v in cache.v], lengths,
                 SharedPrefix(cache.k, cache.v, cache.lengths, n))


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
