"""A pure-functional decoder-only transformer (Llama / Qwen2 / Gemma-style).

`forward(cfg, params, tokens, positions=None, cache=None) -> (logits, cache)`.
Shapes: B batch, T new tokens, S key positions, D d_model, H heads, K kv heads,
G = H // K query heads per kv head, E head_dim, F ffn_dim, V vocab.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from kernels import backend as kernel_backend
from kernels.ragged_decode_attention import multi_query_attention, ragged_decode_attention
from kernels.shared_prefix_attention import merge_partials, pack_queries, unpack_rows
from ttc_jax.model.cache import KVCache, SharedPrefix, write_rows
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


SUM_FORM_MIN_BATCH_HEADS = 64
SUM_FORM_MAX_QUERIES = 128


def _reduce_form(queries: int, batch_heads: int) -> bool:
  """Whether attention's two products run as a broadcast multiply + sum.

  XLA:CPU runs these batched dots (per row and kv head: queries x head_dim
  by head_dim x keys, tiny matrices) far below its peak. A multiply fused
  with its sum ran 1.2-2.5x faster there with 2 to 128 queries per row and
  at least 64 (row, kv head) pairs (chunked scoring, the verifier's solution
  blocks, short prefills of many rows). It was slower with one query (a
  decode step), 1.6x slower with 368 queries per row, and up to 16x slower
  with few pairs (one 544-token prompt: 94 vs 5.8 ms), where XLA leaves the
  fused loop on one core (`runs/scratch/attn_model.py`, BUILD_NOTES). Other
  backends keep the dot.
  """
  return (1 < queries <= SUM_FORM_MAX_QUERIES and batch_heads >= SUM_FORM_MIN_BATCH_HEADS
          and jax.default_backend() == "cpu")


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _fused_product(a: jax.Array, b: jax.Array, values: bool) -> jax.Array:
  """Attention's products as a fused multiply + sum. values=False: q [B, K, M, E]
  . k [B, K, S, E] -> scores [B, K, M, S]; True: p [B, K, M, S] . v [B, K, S, E]
  -> [B, K, M, E]."""
  if values:
    return jnp.sum(a[..., None] * b[:, :, None], axis=-2)
  return jnp.sum(a[:, :, :, None, :] * b[:, :, None], axis=-1)


def _fused_product_fwd(a, b, values):
  return _fused_product(a, b, values), (a, b)


def _fused_product_bwd(values, res, g):
  # The gradients as dots: differentiating the multiply + sum would
  # materialise the [B, K, M, S, E] product (measured: 11x slower, 4.8 GB).
  a, b = res
  if values:
    return jnp.einsum("bkme,bkse->bkms", g, b), jnp.einsum("bkms,bkme->bkse", a, g)
  return jnp.einsum("bkms,bkse->bkme", g, b), jnp.einsum("bkms,bkme->bkse", g, a)


_fused_product.defvjp(_fused_product_fwd, _fused_product_bwd)


def _masked_scores(q: jax.Array, k: jax.Array, q_pos: jax.Array, k_pos: jax.Array) -> jax.Array:
  """Scaled f32 scores [B, K, G, T, S]; key j is visible to query t iff
  k_pos[b, j] <= q_pos[b, t] (cache slots past a row's length sit at positions
  beyond every query, so they are masked too)."""
  b, t, h, e = q.shape
  kv_heads = k.shape[1]
  qg = q.reshape(b, t, kv_heads, h // kv_heads, e)
  if _reduce_form(t, b * kv_heads):
    qf = qg.transpose(0, 2, 3, 1, 4).reshape(b, kv_heads, -1, e)  # [B,K,G*T,E]
    scores = _fused_product(qf.astype(jnp.float32), k.astype(jnp.float32), False)
    scores = scores.reshape(b, kv_heads, h // kv_heads, t, -1)
  else:
    scores = jnp.einsum("btkge,bkse->bkgts", qg, k, preferred_element_type=jnp.float32)
  scores = scores * (1.0 / math.sqrt(e))
  visible = k_pos[:, None, None, None, :] <= q_pos[:, None, None, :, None]  # [B,1,1,T,S]
  return jnp.where(visible, scores, _NEG_INF)


def _weighted_values(probs: jax.Array, v: jax.Array) -> jax.Array:
  """probs [B, K, G, T, S] x v [B, K, S, E] -> [B, T, H, E]."""
  b, kv_heads, g, t, _ = probs.shape
  if _reduce_form(t, b * kv_heads):
    out = _fused_product(probs.reshape(b, kv_heads, g * t, -1), v.astype(jnp.float32), True)
    out = out.reshape(b, kv_heads, g, t, -1).astype(v.dtype).transpose(0, 3, 1, 2, 4)
  else:
    out = jnp.einsum("bkgts,bkse->btkge", probs.astype(v.dtype), v)
  return out.reshape(b, t, kv_heads * g, v.shape[-1])


def attention(q: jax.Array, k: jax.Array, v: jax.Array, q_pos: jax.Array,
              k_pos: jax.Array) -> jax.Array:
  """Causal GQA attention with per-row positions.

  q [B, T, H, E]; k, v [B, K, S, E]; q_pos [B, T]; k_pos [B, S]. Scores and
  softmax in f32. Returns [B, T, H, E].
  """
  return _weighted_values(jax.nn.softmax(_masked_scores(q, k, q_pos, k_pos), axis=-1), v)


def attention_partial(q: jax.Array, k: jax.Array, v: jax.Array, q_pos: jax.Array,
                      k_pos: jax.Array) -> tuple[jax.Array, jax.Array]:
  """`attention` plus its log-sum-exp [B, T, H] f32 (to merge with another partial)."""
  scores = _masked_scores(q, k, q_pos, k_pos)
  lse = jax.nn.logsumexp(scores, axis=-1)  # [B,K,G,T]
  b, kv_heads, g, t = lse.shape
  return (_weighted_values(jnp.exp(scores - lse[..., None]), v),
          lse.transpose(0, 3, 1, 2).reshape(b, t, kv_heads * g))


def prefix_attention(q: jax.Array, prefix: SharedPrefix, layer: int,
                     impl: str) -> tuple[jax.Array, jax.Array]:
  """Every query of a group's rows over the keys the group shares (a prompt, or a
  beam block's history; no causal mask: they all precede the queries).
  q [Q*N, T, H, E] with N = prefix.group -> (out [Q*N, T, H, E], lse [Q*N, T, H]).

  The N rows' T queries are packed as N*T*G query rows per kv head, so the
  shared keys are read once per group (one matmul), not once per row.
  """
  b, t, h, e = q.shape
  n, kh = prefix.group, prefix.k[layer].shape[1]
  if impl == "xla" and _reduce_form(n * t, b // n * kh):
    # many small groups (a beam's histories): the group's N*T queries as one
    # row of the causal path, all keys visible, in the multiply + sum form.
    # Elsewhere (a prompt shared by many rows) the packed reference below
    # measured 12-28% faster (BUILD_NOTES, shared-prefix attention).
    keys = prefix.k[layer].astype(q.dtype)
    q_pos = jnp.broadcast_to(prefix.lengths[:, None] - 1, (b // n, n * t))
    k_pos = jnp.broadcast_to(jnp.arange(keys.shape[2], dtype=jnp.int32), keys.shape[::2][:2])
    out, lse = attention_partial(q.reshape(b // n, n * t, h, e), keys,
                                 prefix.v[layer].astype(q.dtype), q_pos, k_pos)
    return out.reshape(b, t, h, e), lse.reshape(b, t, h)
  packed = pack_queries(q.reshape(b // n, n * t, h, e), kh)  # [Q, K, N*T*G, E]
  out, lse = multi_query_attention(packed, prefix.k[layer].astype(q.dtype),
                                   prefix.v[layer].astype(q.dtype), prefix.lengths, impl=impl)
  return (unpack_rows(out, n * t).reshape(b, t, h, e),
          unpack_rows(lse, n * t).reshape(b, t, h))


def _decode_attention_impl(t: int, cache: KVCache | None, cache_is_empty: bool) -> str | None:
  """The Pallas impl for a one-token decode step over a cache, or None for the XLA path.

  Only where a kernel runs (GPU/TPU, or TTC_JAX_KERNELS=pallas_interpret): on
  CPU the XLA einsum path below is the tuned one (DESIGN.md item 4).
  """
  if t != 1 or cache is None or cache_is_empty:
    return None
  impl = kernel_backend.resolve("auto")
  return None if impl == "xla" else impl


def _ragged_decode(q: jax.Array, keys: jax.Array, values: jax.Array, filled: jax.Array,
                   impl: str) -> tuple[jax.Array, jax.Array]:
  """q [B, 1, H, E] over cache slots [0, filled[b]) of keys/values [B, K, S, E]
  -> (out [B, 1, H, E], lse [B, 1, H]).

  Reads only each row's filled blocks (the kernel's loop stops at its length),
  where the XLA path attends over the whole capacity S.
  """
  s = keys.shape[2]
  block = math.gcd(s, 64)  # a block that divides S: the kernel need not pad (copy) the cache
  out, lse = ragged_decode_attention(q[:, 0], keys, values, filled, impl=impl, return_lse=True,
                                     block_s=block if block >= 16 else None)
  return out[:, None], lse[:, None]


def _cached_attention(q: jax.Array, keys: jax.Array, values: jax.Array, positions: jax.Array,
                      cache: KVCache, layer: int, kernel_impl: str | None) -> jax.Array:
  """New queries q [B, T, H, E] at `positions` over a cache (after their own write)."""
  offsets = cache.offsets
  if kernel_impl is not None:
    out, lse = _ragged_decode(q, keys, values, positions[:, 0] + 1 - offsets, kernel_impl)
  else:
    k_pos = offsets[:, None] + jnp.arange(keys.shape[2], dtype=jnp.int32)[None, :]
    if not cache.shared_levels:
      return attention(q, keys, values, positions, k_pos)
    out, lse = attention_partial(q, keys, values, positions, k_pos)
  return _merge_shared_levels(q, out, lse, cache, layer, kernel_impl or "xla")


def _merge_shared_levels(q: jax.Array, out: jax.Array, lse: jax.Array, cache: KVCache, layer: int,
                         impl: str) -> jax.Array:
  """A rows' own attention partial merged with the cache's shared levels (the
  prompt, a beam's history), each read once per group of rows."""
  for level in cache.shared_levels:
    out, lse = merge_partials(out, lse, *prefix_attention(q, level, layer, impl))
  return out


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
  kernel_impl = _decode_attention_impl(t, cache, cache_is_empty)
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
      slots = positions[:, 0] - cache.offsets
      new_k.append(write_rows(cache.k[i], k, slots))
      new_v.append(write_rows(cache.v[i], v, slots))
    if cache is None or cache_is_empty and not cache.shared_levels:
      attn = attention(q, keys.astype(q.dtype), values.astype(q.dtype), positions, k_pos)
    elif cache_is_empty:  # the new tokens follow shared levels: merge the partials
      out, lse = attention_partial(q, keys.astype(q.dtype), values.astype(q.dtype), positions,
                                   k_pos)
      attn = _merge_shared_levels(q, out, lse, cache, i, "xla")
    else:
      attn = _cached_attention(q, new_k[-1].astype(q.dtype), new_v[-1].astype(q.dtype),
                               positions, cache, i, kernel_impl)
    x = x + _dropout(jnp.einsum("bthe,hed->btd", attn, layer["wo"]), dropout_rng, 2 * i,
                     dropout_rate)
    h = rms_norm(x, layer["mlp_norm"], cfg.norm_eps, cfg.norm_plus_one)
    x = x + _dropout(_mlp(cfg, layer, h), dropout_rng, 2 * i + 1, dropout_rate)
  x = rms_norm(x, params["final_norm"], cfg.norm_eps, cfg.norm_plus_one)
  if cache is not None:
    cache = KVCache(new_k, new_v, positions[:, -1] + 1, cache.prefix, cache.history)
  return x, cache


def forward(cfg: ModelConfig, params: dict, tokens: jax.Array,
            positions: jax.Array | None = None, cache: KVCache | None = None):
  """tokens int [B, T] -> (f32 logits [B, T, V], cache). See `forward_hidden`."""
  hidden, cache = forward_hidden(cfg, params, tokens, positions, cache)
  return unembed(cfg, params, hidden), cache
