"""Device mesh, logical-to-mesh axis rules, and shardings for params, batches, caches.

Every parameter's logical axes come from `ttc_jax.model.params.param_specs`
(DESIGN.md item 6); this module only maps logical names to mesh axes through
one small rules table, so there is no second per-parameter table to drift.

The same code path runs on 1 device (every spec degenerates to replication or
a size-1 mesh axis) and on many. Meshes are built with `AxisType.Auto` axes so
plain `jnp` code under `jax.jit` is partitioned by GSPMD from the input
shardings (JAX >= 0.7's `jax.make_mesh` defaults to Explicit axes, which would
require sharding annotations inside the model).

Typical use::

    mesh = make_mesh(model=2)               # data = n_devices // 2
    params = shard_params(params, cfg, mesh)
    tokens = shard_batch(tokens, mesh)
    cache = shard_cache(init_cache(cfg, b, cap), mesh)
    logits, cache = jax.jit(functools.partial(forward, cfg))(params, tokens, cache=cache)
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from ttc_jax.model import params as params_lib
from ttc_jax.model.cache import KVCache
from ttc_jax.model.config import ModelConfig
from ttc_jax.model.params import (BATCH, EMBED, FFN, HEAD_DIM, HEADS, KV_HEADS, SEQ,
                                  VOCAB)

# Mesh axis names.
DATA = "data"
MODEL = "model"
MESH_AXES = (DATA, MODEL)

# A rule maps a logical axis to a mesh axis, a tuple of mesh axes (the
# dimension is split over their product, in order), or None (replicated).
Rules = Mapping[str, "str | tuple[str, ...] | None"]

# Batch is data parallel; the model axis does Megatron-style tensor
# parallelism over heads / kv heads / ffn (column-parallel wq/wk/wv/w_gate/
# w_up, row-parallel wo/w_down), and over vocab: the embedding table and the
# lm_head are the largest single matrices of the small models this project
# runs (Qwen2.5-0.5B: 136M of its 494M params), and a vocab-sharded lm_head
# also splits the [B, T, V] f32 logits, the largest activation in decoding;
# argmax / logsumexp over a sharded vocab are cheap cross-device reductions,
# and the vocab-sharded embedding lookup becomes a masked gather plus an
# all-reduce of [B, T, D]. A vocab size the model axis does not divide is
# replicated automatically (see `logical_to_spec`).
DEFAULT_RULES: dict[str, str | tuple[str, ...] | None] = {
    BATCH: DATA,
    SEQ: None,
    VOCAB: MODEL,
    EMBED: None,
    HEADS: MODEL,
    KV_HEADS: MODEL,
    HEAD_DIM: None,
    FFN: MODEL,
}

# Logical axes of each KV cache array: k/v [B, kv_heads, T, head_dim], lengths [B].
CACHE_KV_AXES = (BATCH, KV_HEADS, SEQ, HEAD_DIM)
CACHE_LENGTHS_AXES = (BATCH,)


def make_mesh(data: int | None = None, model: int = 1,
              devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A ("data", "model") mesh over `devices` (default: all global `jax.devices()`).

  `data=None` takes all devices the model axis leaves. Raises ValueError when
  data * model does not equal the device count. On multi-process runs the
  global device list is ordered by process, so the data axis (outer) spans
  processes and the model axis stays within one where it can.
  """
  devices = list(jax.devices() if devices is None else devices)
  n = len(devices)
  if model < 1 or (data is not None and data < 1):
    raise ValueError(f"mesh axes must be positive, got data={data}, model={model}")
  if data is None:
    if n % model:
      raise ValueError(f"model={model} does not divide the {n} available devices")
    data = n // model
  if data * model != n:
    raise ValueError(
        f"mesh data={data} x model={model} = {data * model} devices, but {n} devices are "
        f"available ({jax.default_backend()}); on CPU, fake devices come from "
        "JAX_NUM_CPU_DEVICES / jax.config.update('jax_num_cpu_devices', n) or "
        "XLA_FLAGS=--xla_force_host_platform_device_count=n, set before JAX starts")
  return jax.make_mesh((data, model), MESH_AXES, axis_types=(AxisType.Auto, AxisType.Auto),
                       devices=devices)


def _as_tuple(target) -> tuple[str, ...]:
  if target is None:
    return ()
  if isinstance(target, str):
    return (target,)
  return tuple(target)


def logical_to_spec(logical_axes: Sequence[str | None], shape: Sequence[int], mesh: Mesh,
                    rules: Rules = DEFAULT_RULES) -> PartitionSpec:
  """PartitionSpec for an array with these logical axes and shape.

  A mesh axis is dropped (that part of the dimension is replicated) when it
  would not divide the dimension evenly (e.g. 2 kv heads on a 4-way model
  axis), and a mesh axis is used at most once per array: the first dimension
  (in order) that claims it gets it. Logical names missing from `rules`, and
  None, are replicated. The spec has one entry per dimension.
  """
  if len(logical_axes) != len(shape):
    raise ValueError(f"{len(logical_axes)} logical axes {tuple(logical_axes)} for a "
                     f"rank-{len(shape)} shape {tuple(shape)}")
  used: set[str] = set()
  spec = []
  for name, dim in zip(logical_axes, shape):
    chosen = []
    for axis in _as_tuple(rules.get(name) if name is not None else None):
      if axis not in mesh.shape:
        raise ValueError(f"rule {name!r} -> {axis!r}: no such mesh axis in {dict(mesh.shape)}")
      if axis in used:
        continue
      size = math.prod(mesh.shape[a] for a in chosen) * mesh.shape[axis]
      if dim % size:
        continue
      chosen.append(axis)
    used.update(chosen)
    spec.append(None if not chosen else chosen[0] if len(chosen) == 1 else tuple(chosen))
  return PartitionSpec(*spec)


def logical_sharding(logical_axes: Sequence[str | None], shape: Sequence[int], mesh: Mesh,
                     rules: Rules = DEFAULT_RULES) -> NamedSharding:
  return NamedSharding(mesh, logical_to_spec(logical_axes, shape, mesh, rules))


def param_shardings(cfg: ModelConfig, mesh: Mesh, rules: Rules = DEFAULT_RULES) -> dict:
  """A params-shaped pytree of NamedShardings, derived from `param_specs(cfg)`."""
  return params_lib.map_specs(
      lambda s: logical_sharding(s.logical_axes, s.shape, mesh, rules), cfg)


def abstract_sharded_params(cfg: ModelConfig, mesh: Mesh, rules: Rules = DEFAULT_RULES) -> dict:
  """ShapeDtypeStructs carrying shardings (targets for a sharded orbax restore)."""
  return params_lib.map_specs(
      lambda s: jax.ShapeDtypeStruct(s.shape, cfg.jnp_dtype,
                                     sharding=logical_sharding(s.logical_axes, s.shape, mesh,
                                                               rules)), cfg)


def put(x, sharding: jax.sharding.Sharding) -> jax.Array:
  """Places x (a host or device array holding the full global value) with `sharding`.

  Works when the sharding spans other processes' devices too: each process
  then contributes its addressable shards from its own copy of x (every
  process must pass the same value).
  """
  if sharding.is_fully_addressable:
    return jax.device_put(x, sharding)
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    return jax.device_put(x, sharding)  # already global: a resharding
  host = np.asarray(x)
  return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def put_tree(tree, shardings):
  return jax.tree_util.tree_map(put, tree, shardings)


def shard_params(params: dict, cfg: ModelConfig, mesh: Mesh,
                 rules: Rules = DEFAULT_RULES) -> dict:
  """`params` placed on `mesh` according to `param_shardings`."""
  return put_tree(params, param_shardings(cfg, mesh, rules))


def batch_sharding(mesh: Mesh, ndim: int, batch_size: int | None = None,
                   rules: Rules = DEFAULT_RULES) -> NamedSharding:
  """Sharding of a rank-`ndim` array whose leading axis is the batch.

  Batch goes over the "data" axis (per `rules`); when `batch_size` is given
  and the data axis does not divide it, the array is replicated instead.
  """
  if ndim < 1:
    raise ValueError(f"a batched array has rank >= 1, got ndim={ndim}")
  if batch_size is None:
    return NamedSharding(mesh, PartitionSpec(_rule_target(rules, BATCH), *(None,) * (ndim - 1)))
  return logical_sharding((BATCH,) + (None,) * (ndim - 1), (batch_size,) + (1,) * (ndim - 1),
                          mesh, rules)


def _rule_target(rules: Rules, name: str):
  target = _as_tuple(rules.get(name))
  return None if not target else target[0] if len(target) == 1 else target


def shard_batch(x, mesh: Mesh, rules: Rules = DEFAULT_RULES) -> jax.Array:
  """x [B, ...] placed batch-over-data (replicated when B is not divisible)."""
  x_shape = np.shape(x)
  return put(x, batch_sharding(mesh, len(x_shape), x_shape[0], rules))


def cache_shardings(cache: KVCache, mesh: Mesh, rules: Rules = DEFAULT_RULES) -> KVCache:
  """A KVCache-shaped pytree of NamedShardings for `cache` (arrays or ShapeDtypeStructs).

  k/v [B, kv_heads, T, head_dim]: batch over data, kv heads over model where
  divisible; lengths [B]: batch over data.
  """
  kv = lambda x: logical_sharding(CACHE_KV_AXES, x.shape, mesh, rules)
  return KVCache([kv(k) for k in cache.k], [kv(v) for v in cache.v],
                 logical_sharding(CACHE_LENGTHS_AXES, cache.lengths.shape, mesh, rules))


def shard_cache(cache: KVCache, mesh: Mesh, rules: Rules = DEFAULT_RULES) -> KVCache:
  """`cache` placed on `mesh` according to `cache_shardings`."""
  return put_tree(cache, cache_shardings(cache, mesh, rules))


def shard_decode_inputs(cfg: ModelConfig, mesh: Mesh, params: dict, batch_arrays: Any,
                        cache: KVCache, rules: Rules = DEFAULT_RULES):
  """Places everything a decode call takes: -> (params, batch_arrays, cache).

  `batch_arrays` is any pytree of arrays whose leading axis is the batch
  (tokens [B, T], lengths [B], row streams [B], ...); each goes batch-over-data
  via `shard_batch` (rank-0 leaves are replicated). No padding: a batch the
  data axis does not divide is replicated (correct, but without data
  parallelism); pad rows to a multiple of `mesh.shape["data"]` first to split it.
  """
  def put_batch(x):
    if np.ndim(x) == 0:
      return put(x, NamedSharding(mesh, PartitionSpec()))
    return shard_batch(x, mesh, rules)

  return (shard_params(params, cfg, mesh, rules),
          jax.tree_util.tree_map(put_batch, batch_arrays),
          shard_cache(cache, mesh, rules))


def describe(tree: Any) -> Any:
  """The PartitionSpec of every array leaf (for logging / debugging)."""
  return jax.tree_util.tree_map(lambda x: getattr(x.sharding, "spec", x.sharding), tree)


__all__ = [
    "CACHE_KV_AXES", "CACHE_LENGTHS_AXES", "DATA", "DEFAULT_RULES", "MESH_AXES", "MODEL",
    "abstract_sharded_params", "batch_sharding", "cache_shardings", "describe",
    "logical_sharding", "logical_to_spec", "make_mesh", "param_shardings", "put", "put_tree",
    "shard_batch", "shard_cache", "shard_decode_inputs", "shard_params",
]
