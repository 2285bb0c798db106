"""The one frozen config for every decoder-only model ttc_jax runs.

Covers the Llama family (RMSNorm, RoPE, GQA, SwiGLU), Qwen2 (q/k/v biases) and
the cheap Gemma-style options (embedding scaling, GeGLU, (1 + w) norm weights).
It is hashable so jitted functions take it as a static argument.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

_ACTIVATIONS = ("silu", "gelu_tanh")
_DTYPES = ("float32", "bfloat16")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  vocab_size: int
  d_model: int
  n_layers: int
  n_heads: int
  n_kv_heads: int
  ffn_dim: int
  head_dim: int | None = None  # None: d_model // n_heads
  rope_theta: float = 10000.0
  # Llama-3 style RoPE frequency scaling: (factor, low_freq_factor,
  # high_freq_factor, original_max_position_embeddings) or None.
  rope_llama3_scaling: tuple[float, float, float, int] | None = None
  norm_eps: float = 1e-6
  tie_embeddings: bool = False
  qkv_bias: bool = False  # Qwen2
  activation: str = "silu"  # "silu" (SwiGLU) or "gelu_tanh" (GeGLU, Gemma)
  norm_plus_one: bool = False  # Gemma stores RMSNorm weights as w - 1
  scale_embeddings: bool = False  # Gemma multiplies embeddings by sqrt(d)
  max_seq_len: int = 2048
  dtype: str = "float32"  # params and activations; softmax always f32

  def __post_init__(self):
    if self.activation not in _ACTIVATIONS:
      raise ValueError(f"activation must be one of {_ACTIVATIONS}, got {self.activation!r}")
    if self.dtype not in _DTYPES:
      raise ValueError(f"dtype must be one of {_DTYPES}, got {self.dtype!r}")
    for name in ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "ffn_dim"):
      if getattr(self, name) <= 0:
        raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
    if self.n_heads % self.n_kv_heads:
      raise ValueError(
          f"n_heads ({self.n_heads}) must be a multiple of n_kv_heads ({self.n_kv_heads})")
    if self.head_dim is None and self.d_model % self.n_heads:
      raise ValueError(f"d_model ({self.d_model}) not divisible by n_heads ({self.n_heads})")

  @property
  def hd(self) -> int:
    """Per-head dimension."""
    return self.head_dim if self.head_dim is not None else self.d_model // self.n_heads

  @property
  def jnp_dtype(self):
    return jnp.dtype(self.dtype)

  def replace(self, **changes) -> "ModelConfig":
    return dataclasses.replace(self, **changes)

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, d: dict) -> "ModelConfig":
    d = dict(d)
    if d.get("rope_llama3_scaling") is not None:
      d["rope_llama3_scaling"] = tuple(d["rope_llama3_scaling"])
    return cls(**d)

  def num_params(self, include_embeddings: bool = True) -> int:
    """Parameter count, derived from the same shapes `init_params` uses."""
    from ttc_jax.model.params import param_specs  # local: params imports config
    import math
    import jax
    specs = param_specs(self)
    total = 0
    for path, spec in jax.tree_util.tree_flatten_with_path(
        specs, is_leaf=lambda x: hasattr(x, "logical_axes"))[0]:
      keys = [getattr(k, "key", None) for k in path]
      if not include_embeddings and ("embed" in keys or "lm_head" in keys):
        continue
      total += math.prod(spec.shape)
    return total

  def flops_per_token(self, context_len: int = 0) -> float:
    """Forward FLOPs for one token: 2 * non-embedding params + lm head
    + attention (QK^T and AV over `context_len` keys)."""
    dense = 2 * self.num_params(include_embeddings=False) + 2 * self.d_model * self.vocab_size
    attention = 4 * self.n_layers * self.n_heads * self.hd * context_len
    return float(dense + attention)
