"""The KV cache: one [B, kv_heads, T, head_dim] array per layer plus per-row lengths.

Optionally with a shared prefix (DESIGN.md item 5): the N rows of a prompt
(best-of-N samples, beams) attend to the prompt's keys/values stored once
(`SharedPrefix`, [Q, ...]) plus their own suffix in the cache's arrays; the
cache's `lengths` stay absolute positions, and suffix slot j of row b holds
position offsets[b] + j (offsets = the row's prompt length).

Beams add a second shared level (`KVCache.history`): the steps a beam's M
children inherited from their parent, stored once per block of M
consecutive rows after the prompt; the rows' own arrays then hold only the
step being sampled (`fan_out_beams`, `commit_to_history`).

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

  def resized(self, width: int) -> "SharedPrefix":
    """The same entries with `width` slots: zero-padded or cut (a copy)."""
    fit = lambda x: _fit_time(x, width)
    return SharedPrefix([fit(k) for k in self.k], [fit(v) for v in self.v], self.lengths,
                        self.group)

  def take_groups(self, index: jax.Array) -> "SharedPrefix":
    """Entries `index` [B'], one row each (group 1)."""
    take = lambda x: jnp.take(x, index, axis=0)
    return SharedPrefix([take(k) for k in self.k], [take(v) for v in self.v], take(self.lengths), 1)


jax.tree_util.register_dataclass(SharedPrefix, data_fields=["k", "v", "lengths"],
                                 meta_fields=["group"])


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class KVCache:
  k: list[jax.Array]  # per layer [B, kv_heads, T, head_dim]
  v: list[jax.Array]  # per layer [B, kv_heads, T, head_dim]
  lengths: jax.Array  # [B] int32: filled positions per row (next write index)
  prefix: SharedPrefix | None = None  # with it, k / v hold each row's suffix only
  # keys after the prefix shared by `history.group` consecutive rows (a beam's
  # inherited steps); k / v then hold what follows them
  history: SharedPrefix | None = None

  @property
  def batch_size(self) -> int:
    return self.lengths.shape[0]

  @property
  def capacity(self) -> int:
    """Slots in this cache's own arrays (the suffix when a prefix is shared)."""
    return self.k[0].shape[2]

  @property
  def shared_levels(self) -> tuple[SharedPrefix, ...]:
    """The levels stored once for groups of rows, outermost (the prompt) first."""
    return tuple(level for level in (self.prefix, self.history) if level is not None)

  @property
  def offsets(self) -> jax.Array:
    """[B] absolute position of each row's slot 0: the length of what its shared
    levels hold (0 without them)."""
    offsets = jnp.zeros_like(self.lengths)
    for level in self.shared_levels:
      offsets = offsets + jnp.repeat(level.lengths, level.group,
                                     total_repeat_length=self.batch_size)
    return offsets

  def replace(self, **changes) -> "KVCache":
    return dataclasses.replace(self, **changes)

  def resize(self, width: int) -> "KVCache":
    """The same cache with `width` time slots: truncated or zero-padded (a copy).

    Decoding in segments attends over a cache only as wide as the positions
    reachable so far; this is the one copy per segment that makes it possible.
    """
    if width == self.capacity:
      return self
    fit = lambda x: _fit_time(x, width)
    return KVCache([fit(k) for k in self.k], [fit(v) for v in self.v], self.lengths, self.prefix,
                   self.history)

  def gather_rows(self, index: jax.Array) -> "KVCache":
    """Rows reordered/duplicated by `index` [B'] (sample fan-out, scoring blocks).

    With a shared prefix only the suffixes move: `index` must keep every row
    within its own prompt's group.
    A beam history cannot follow a row alone: use `commit_to_history`.
    """
    if self.history is not None:
      raise ValueError("rows of a cache with a beam history move with commit_to_history")
    take = lambda x: jnp.take(x, index, axis=0)
    return KVCache([take(k) for k in self.k], [take(v) for v in self.v], take(self.lengths),
                   self.prefix)

  def take_rows(self, index: jax.Array) -> "KVCache":
    """Rows `index` [B'] as a cache of their own (running a few rows of a batch).

    Unlike `gather_rows`, rows may come from any prompt: each taken row gets
    its own copy of its shared levels (group 1), which is cheap when B' is
    small. `put_rows` writes the rows back.
    """
    take = lambda x: jnp.take(x, index, axis=0)
    own = lambda level: None if level is None else level.take_groups(index // level.group)
    return KVCache([take(k) for k in self.k], [take(v) for v in self.v], take(self.lengths),
                   own(self.prefix), own(self.history))

  def put_rows(self, index: jax.Array, rows: "KVCache") -> "KVCache":
    """This cache with rows `index` replaced by `rows` (from `take_rows(index)`)."""
    put = lambda full, part: full.at[index].set(part)
    return KVCache([put(f, r) for f, r in zip(self.k, rows.k)],
                   [put(f, r) for f, r in zip(self.v, rows.v)],
                   put(self.lengths, rows.lengths), self.prefix, self.history)


def _fit_time(x: jax.Array, width: int) -> jax.Array:
  """x [B, K, T, E] with `width` time slots: cut, or zero-padded at the end."""
  if width <= x.shape[2]:
    return x[:, :, :width]
  return jnp.pad(x, ((0, 0), (0, 0), (0, width - x.shape[2]), (0, 0)))


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


def fan_out_beams(cache: KVCache, n: int, m: int, suffix_capacity: int, history_capacity: int,
                  shared: bool) -> KVCache:
  """A prefilled prompt cache [Q] -> one for beams [Q * N]: blocks of m rows
  share a history of `history_capacity` slots (empty), each row a suffix of
  `suffix_capacity`. shared: the prompt is a `SharedPrefix` stored once; else
  every block's history starts as a copy of its prompt (history_capacity
  must then hold the prompt too)."""
  if n % m:
    raise ValueError(f"beam width {m} does not divide n={n}")
  q, blocks = cache.batch_size, cache.batch_size * n // m
  rows = fan_out(cache, n, suffix_capacity, shared=True)
  if shared:
    empty = init_cache_like(cache, blocks, history_capacity)
    return rows.replace(history=SharedPrefix(empty.k, empty.v, empty.lengths, m))
  prompt = jnp.repeat(jnp.arange(q), n // m, total_repeat_length=blocks)
  copies = cache.resize(history_capacity).gather_rows(prompt)
  return rows.replace(prefix=None, history=SharedPrefix(copies.k, copies.v, copies.lengths, m))


def commit_to_history(cache: KVCache, block_parents: jax.Array, keep: jax.Array) -> KVCache:
  """Each block of `history.group` rows inherits a parent row: its new history
  is the parent's history followed by the parent's suffix, and every row's
  suffix is emptied (its length becomes its new offset).

  block_parents [B / group]: row index of each block's parent (any row of the
  cache). keep [B / group] bool: False empties the block's history (a block
  of finished beams: nothing will attend to it again). A history keeps its
  width: it must hold the parent's history plus the suffix's filled slots.
  """
  history = cache.history
  source = block_parents // history.group
  start = jnp.take(history.lengths, source)
  filled = jnp.take(cache.lengths - cache.offsets, block_parents)

  slot = jnp.arange(history.k[0].shape[2])[None, :]
  # history slot j >= start takes suffix slot j - start: a gather, so nothing is
  # written past the history's width however full the suffix is
  from_suffix = (slot >= start[:, None])[:, None, :, None]
  suffix_slot = jnp.clip(slot - start[:, None], 0, cache.capacity - 1)[:, None, :, None]

  def inherit(past, suffix):
    moved = jnp.take_along_axis(jnp.take(suffix, block_parents, axis=0), suffix_slot, axis=2)
    return jnp.where(from_suffix, moved, jnp.take(past, source, axis=0))

  lengths = jnp.where(keep, start + filled, 0).astype(history.lengths.dtype)
  history = SharedPrefix([inherit(h, s) for h, s in zip(history.k, cache.k)],
                         [inherit(h, s) for h, s in zip(history.v, cache.v)], lengths,
                         history.group)
  committed = cache.replace(history=history)
  return committed.replace(lengths=committed.offsets)


def init_cache_like(cache: KVCache, batch_size: int, capacity: int) -> KVCache:
  """An empty plain cache with `cache`'s layer count, heads, head dim and dtype."""
  _, heads, _, dim = cache.k[0].shape
  zeros = lambda: jnp.zeros((batch_size, heads, capacity, dim), cache.k[0].dtype)
  return KVCache([zeros() for _ in cache.k], [zeros() for _ in cache.v],
                 jnp.zeros((batch_size,), jnp.int32))


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
