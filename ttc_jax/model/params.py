"""One description per parameter array: shape, logical axes, initializer.

Init, abstract shapes (for orbax restore / HF import checks) and shardings are
all derived from `param_specs`, so they cannot drift apart.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

import jax
import jax.numpy as jnp

from ttc_jax.model.config import ModelConfig

# Logical axis names; `ttc_jax.sharding` maps them to mesh axes.
VOCAB = "vocab"
EMBED = "embed"
HEADS = "heads"
KV_HEADS = "kv_heads"
HEAD_DIM = "head_dim"
FFN = "ffn"
BATCH = "batch"
SEQ = "seq"


@dataclasses.dataclass(frozen=True)
class ParamSpec:
  shape: tuple[int, ...]
  logical_axes: tuple[str | None, ...]
  init: str  # "normal", "zeros", "ones"
  fan_in: int = 1  # for "normal": std = 1 / sqrt(fan_in)


def _is_spec(x) -> bool:
  return isinstance(x, ParamSpec)


def _layer_specs(cfg: ModelConfig) -> dict[str, ParamSpec]:
  d, h, k, hd, f = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.hd, cfg.ffn_dim
  norm_init = "zeros" if cfg.norm_plus_one else "ones"
  specs = {
      "attn_norm": ParamSpec((d,), (EMBED,), norm_init),
      "wq": ParamSpec((d, h, hd), (EMBED, HEADS, HEAD_DIM), "normal", d),
      "wk": ParamSpec((d, k, hd), (EMBED, KV_HEADS, HEAD_DIM), "normal", d),
      "wv": ParamSpec((d, k, hd), (EMBED, KV_HEADS, HEAD_DIM), "normal", d),
      "wo": ParamSpec((h, hd, d), (HEADS, HEAD_DIM, EMBED), "normal", h * hd),
      "mlp_norm": ParamSpec((d,), (EMBED,), norm_init),
      "w_gate": ParamSpec((d, f), (EMBED, FFN), "normal", d),
      "w_up": ParamSpec((d, f), (EMBED, FFN), "normal", d),
      "w_down": ParamSpec((f, d), (FFN, EMBED), "normal", f),
  }
  if cfg.qkv_bias:
    specs["bq"] = ParamSpec((h, hd), (HEADS, HEAD_DIM), "zeros")
    specs["bk"] = ParamSpec((k, hd), (KV_HEADS, HEAD_DIM), "zeros")
    specs["bv"] = ParamSpec((k, hd), (KV_HEADS, HEAD_DIM), "zeros")
  return specs


def param_specs(cfg: ModelConfig) -> dict:
  """The parameter pytree, with a ParamSpec at every leaf.

  Layout: {"embed": [V, D], "layers": [per-layer dict] * n_layers,
  "final_norm": [D], "lm_head": [D, V] (only when embeddings are untied)}.
  Layers are a list (not stacked) so each layer's KV cache and weights are
  separate arrays: a stacked cache updated in place copied the whole array per
  step on CPU (DESIGN.md item 4).
  """
  specs = {
      "embed": ParamSpec((cfg.vocab_size, cfg.d_model), (VOCAB, EMBED), "normal", 1),
      "layers": [_layer_specs(cfg) for _ in range(cfg.n_layers)],
      "final_norm": ParamSpec((cfg.d_model,), (EMBED,), "zeros" if cfg.norm_plus_one else "ones"),
  }
  if not cfg.tie_embeddings:
    specs["lm_head"] = ParamSpec((cfg.d_model, cfg.vocab_size), (EMBED, VOCAB), "normal", cfg.d_model)
  return specs


def _init_leaf(spec: ParamSpec, key: jax.Array, dtype) -> jax.Array:
  if spec.init == "zeros":
    return jnp.zeros(spec.shape, dtype)
  if spec.init == "ones":
    return jnp.ones(spec.shape, dtype)
  # Embeddings use std 0.02-ish scale via fan_in=1 * 0.02; matrices 1/sqrt(fan_in).
  std = 0.02 if spec.fan_in == 1 else 1.0 / math.sqrt(spec.fan_in)
  return (std * jax.random.normal(key, spec.shape, jnp.float32)).astype(dtype)


def init_params(cfg: ModelConfig, key: jax.Array) -> dict:
  """Random parameters for `cfg` (deterministic in `key`)."""
  specs = param_specs(cfg)
  leaves, treedef = jax.tree_util.tree_flatten(specs, is_leaf=_is_spec)
  keys = jax.random.split(key, len(leaves))
  return jax.tree_util.tree_unflatten(
      treedef, [_init_leaf(s, k, cfg.jnp_dtype) for s, k in zip(leaves, keys)])


def abstract_params(cfg: ModelConfig) -> dict:
  """ShapeDtypeStructs of the parameters (no allocation)."""
  return map_specs(lambda s: jax.ShapeDtypeStruct(s.shape, cfg.jnp_dtype), cfg)


def logical_axes(cfg: ModelConfig) -> dict:
  """The logical axis names of every parameter, as a params-shaped pytree."""
  return map_specs(lambda s: s.logical_axes, cfg)


def map_specs(fn: Callable[[ParamSpec], object], cfg: ModelConfig) -> dict:
  return jax.tree_util.tree_map(fn, param_specs(cfg), is_leaf=_is_spec)


def cast_params(params: dict, dtype) -> dict:
  return jax.tree_util.tree_map(lambda x: x.astype(dtype), params)
