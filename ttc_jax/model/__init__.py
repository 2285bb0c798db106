"""Decoder-only transformer: config, parameters, KV cache, forward pass."""

from ttc_jax.model.cache import KVCache, init_cache
from ttc_jax.model.config import ModelConfig
from ttc_jax.model.params import (ParamSpec, abstract_params, init_params, logical_axes,
                                  param_specs)
from ttc_jax.model.transformer import forward, forward_hidden

__all__ = [
    "KVCache", "ModelConfig", "ParamSpec", "abstract_params", "forward", "forward_hidden",
    "init_cache", "init_params", "logical_axes", "param_specs",
]
