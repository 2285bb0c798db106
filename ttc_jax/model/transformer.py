"""A pure-functional decoder-only transformer (Llama / Qwen2 / Gemma-style).

`forward(cfg, params, tokens, positions=None, cache=None) -> (logits, cache)`.
Shapes: B batch, T new tokens, S key positions, D d_model, H heads, K kv heads,
G = H // K query heads per kv head, E head_dim, F ffn_dim, V vocab.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from ttc_jax.model.cache import KVCache, write_rows
from ttc_jax.model.config import ModelConfig

_NEG_INF = -1e30  # finite: a fully masked row must not produce NaNs


def rms_norm(x: jax.Array, weight: jax.Array, eps: float, plus_one: bool) -> jax.Array:
  """RMSNorm computed in f32 (as HF does), result in x's dtype."""
  x32 = x.astype(jnp.float32)
  normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
  w = weight.astype(jnp.float32)
  if plus_one:
    return (normed * (1.0 + w)).astype(x.dtype)
  return weight * normed.astype(x.dtype)


def rope_inv_freq(cfg: ModelConfig) -> jax.Array:
  """[E/2] inverse frequencies, with optional Llama-3 frequency scaling."""
  e = cfg.hd
  inv_freq = 1.0 / (cfg.rope_theta ** (jnp.arange(0, e, 2, dtype=jnp.float32) / e))
  if cfg.rope_llama3_scaling is None:
    return inv_freq
  factor, low_ff, high_ff, original_max = cfg.rope_llama3_scaling
  low_wavelen = original_max / low_ff
  high_wavelen = original_max / high_ff
  wavelen = 2 * math.pi / inv_freq
  scaled = jnp.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
  smooth = (original_max / wavelen - low_ff) / (high_ff - low_ff)
  smoothed = (1 - smooth) * scaled / factor + smooth * scaled
  medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
  return jnp.where(medium, smoothed, scaled)


def apply_rope(x: jax.Array, positions: jax.Array, inv_freq: jax.Array) -> jax.Array:
  """Rotates x [B, T, N, E] by positions [B, T] (HF "rotate_half" convention)."""
  angles = positions.astype(jnp.float32)[:, :, None] * inv_freq[None, None, :]  # [B,T,E/2]
  cos = jnp.cos(angles)[:, :, None, :]
  sin = jnp.sin(angles)[:, :, None, :]
  x32 = x.astype(jnp.float32)
  x1, x2 = jnp.split(x32, 2, axis=-1)
  rotated = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return rotated.astype(x.dtype)


def attention(q: jax.Array, k: jax.Array, v: jax.Array, q_pos: jax.Array,
              k_pos: jax.Array) -> jax.Array:
  """Causal GQA attention with per-row positions.

  q [B, T, H, E]; k, v [B, K, S, E]; q_pos [B, T]; k_pos [B, S].
  Key j is visible to query t iff k_pos[b, j] <= q_pos[b, t]; cache slots past a
  row's length sit at positions beyond every query, so they are masked too.
  Scores and softmax in f32. Returns [B, T, H, E].
  """
  b, t, h, e = q.shape
  kv_heads = k.shape[1]
  qg = q.reshape(b, t, kv_heads, h // kv_heads, e)
  scores = jnp.einsum("btkge,bkse->bkgts", qg, k, preferred_element_type=jnp.float32)
  scores = scores * (1.0 / math.sqrt(e))
  visible = k_pos[:, None, None, None, :] <= q_pos[:, None, None, :, None]  # [B,1,1,T,S]
  scores = jnp.where(visible, scores, _NEG_INF)
  probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
  out = jnp.einsum("bkgts,bkse->btkge", probs, v)
  return out.reshape(b, t, h, e)


def _mlp(cfg: ModelConfig, layer: dict, x: jax.Array) -> jax.Array:
  gate = x @ layer["w_gate"]  # [B,T,F]
  up = x @ layer["w_up"]
  act = jax.nn.silu(gate) if cfg.activation == "silu" else jax.nn.gelu(gate, approximate=True)
  return (act * up) @ layer["w_down"]


def _qkv(cfg: ModelConfig, layer: dict, h: jax.Array):
  q = jnp.einsum("btd,dhe->bthe", h, layer["wq"])
  k = jnp.einsum("btd,dke->btke", h, layer["wk"])
  v = jnp.einsum("btd,dke->btke", h, layer["wv"])
  if cfg.qkv_bias:
    q, k, v = q + layer["bq"], k + layer["bk"], v + layer["bv"]
  return q, k, v


def _dropout(x: jax.Array, rng: jax.Array | None, index: int, rate: float) -> jax.Array:
  """Inverted dropout with an independent mask per call site `index`; identity without rng."""
  if rng is None or rate <= 0.0:
    return x
  keep = jax.random.bernoulli(jax.random.fold_in(rng, index), 1.0 - rate, x.shape)
  return jnp.where(keep, x / (1.0 - rate), 0.0).astype(x.dtype)


def embed_tokens(cfg: ModelConfig, params: dict, tokens: jax.Array) -> jax.Array:
  x = jnp.take(params["embed"], tokens, axis=0)  # [B,T,D]
  if cfg.scale_embeddings:
    x = x * jnp.asarray(math.sqrt(cfg.d_model), x.dtype)
  return x


def unembed(cfg: ModelConfig, params: dict, x: jax.Array) -> jax.Array:
  """Final hidden states [B, T, D] -> f32 logits [B, T, V]."""
  w = params["embed"].T if cfg.tie_embeddings else params["lm_head"]
  return jnp.einsum("btd,dv->btv", x, w, preferred_element_type=jnp.float32)


def forward_hidden(cfg: ModelConfig, params: dict, tokens: jax.Array,
                   positions: jax.Array | None = None, cache: KVCache | None = None,
                   cache_is_empty: bool = False, dropout_rng: jax.Array | None = None,
                   dropout_rate: float = 0.0):
  """Runs the trunk; returns (final-normed hidden [B, T, D], cache).

  Without a cache this is a full causal forward over `tokens`. With a cache the
  new tokens' keys/values are written at `positions` (default: each row's
  cache length onwards) and attention covers the whole cache; the returned
  cache's lengths become positions[:, -1] + 1. `cache_is_empty` (static; a
  prefill into a fresh cache) attends over the new tokens only instead of the
  whole cache capacity: same result, less work. dropout_rng + dropout_rate
  (training only, e.g. the PRM's 0.05): residual dropout on every attention
  and MLP output.
  """
  b, t = tokens.shape
  if positions is None:
    start = cache.lengths if cache is not None else jnp.zeros((b,), jnp.int32)
    positions = start[:, None] + jnp.arange(t, dtype=jnp.int32)[None, :]
  positions = positions.astype(jnp.int32)
  inv_freq = rope_inv_freq(cfg)
  x = embed_tokens(cfg, params, tokens)
  new_k, new_v = [], []
  for i, layer in enumerate(params["layers"]):
    h = rms_norm(x, layer["attn_norm"], cfg.norm_eps, cfg.norm_plus_one)
    q, k, v = _qkv(cfg, layer, h)
    q = apply_rope(q, positions, inv_freq)
    k = apply_rope(k, positions, inv_freq).transpose(0, 2, 1, 3)  # [B,K,T,E]
    v = v.transpose(0, 2, 1, 3)
    if cache is None or cache_is_empty:
      keys, values, k_pos = k, v, positions
    if cache is not None:
      new_k.append(write_rows(cache.k[i], k, positions[:, 0]))
      new_v.append(write_rows(cache.v[i], v, positions[:, 0]))
      if not cache_is_empty:
        keys, values = new_k[-1], new_v[-1]
        k_pos = jnp.broadcast_to(jnp.arange(keys.shape[2], dtype=jnp.int32), (b, keys.shape[2]))
    attn = attention(q, keys.astype(q.dtype), values.astype(q.dtype), positions, k_pos)
    x = x + _dropout(jnp.einsum("bthe,hed->btd", attn, layer["wo"]), dropout_rng, 2 * i,
                     dropout_rate)
    h = rms_norm(x, layer["mlp_norm"], cfg.norm_eps, cfg.norm_plus_one)
    x = x + _dropout(_mlp(cfg, layer, h), dropout_rng, 2 * i + 1, dropout_rate)
  x = rms_norm(x, params["final_norm"], cfg.norm_eps, cfg.norm_plus_one)
  if cache is not None:
    cache = KVCache(new_k, new_v, positions[:, -1] + 1)
  return x, cache


def forward(cfg: ModelConfig, params: dict, tokens: jax.Array,
            positions: jax.Array | None = None, cache: KVCache | None = None):
  """tokens int [B, T] -> (f32 logits [B, T, V], cache). See `forward_hidden`."""
  hidden, cache = forward_hidden(cfg, params, tokens, positions, cache)
  return unembed(cfg, params, hidden), cache
