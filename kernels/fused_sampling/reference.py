"""Fused sampling, pure jnp: the definition the Pallas kernel must reproduce.

`sample(logits [B, V], uniforms [B], *, temperature, top_k, top_p) -> int32 [B]`.

Semantics, per row:
* temperature == 0: argmax (the first maximum), whatever top_k / top_p say.
* otherwise s = logits / temperature (f32) and w = exp(s - max(s)).
  - top-k threshold (k > 0): the k-th largest s, counted with multiplicity;
    every token with s >= it is kept, so ties at the cut are all kept.
    k == 0 or k >= V: no cut.
  - top-p threshold (p < 1): the largest value theta whose kept mass
    M(theta) = sum(w where s >= theta) reaches p * sum(w). Every token with
    s >= theta is kept: the nucleus (the smallest set of the most likely
    tokens whose mass reaches p; the most likely token is always kept, and
    ties at the cut are all kept). p == 1: no cut.
  - kept = (s >= top-k threshold) & (s >= top-p threshold): both are sets of
    the form {s >= x}, so their intersection is one threshold, the larger.
    (The nucleus is measured on the full distribution, not on the top-k.)
  - inverse CDF in vocabulary order over the kept weights: cdf = cumsum(w *
    kept), target = u * cdf_{V-1}, index = the first kept j with cdf_j >
    target, or the last kept token if none (u * total can round up to
    total). The cdf is non-decreasing and flat off the kept set, so this is
    #{j : cdf_j <= target} clamped, the samplers' rule: with no cut it is
    `ttc_jax.decode.samplers.Temperature(t).sample`; written as "first kept"
    it cannot return a cut token even where rounding bends the cdf.

Thresholds are found without sorting: both predicates ("at least k tokens
are >= x", "the mass >= x reaches p") are monotone in x, so the largest x
that satisfies one is built bit by bit over the 32-bit order-preserving
integer key of the float, most significant bit first: exactly 32 counting
passes give the exact value (ties and all), no interval left over. The
Pallas kernel runs the same search over vocabulary blocks.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

KEY_BITS = 32
INT32_MIN = -(2 ** 31)


def check_args(temperature: float, top_k: int, top_p: float) -> None:
  """ValueError for settings the samplers reject too."""
  if not temperature >= 0:  # also rejects NaN
    raise ValueError(f"temperature must be >= 0, got {temperature}")
  if not isinstance(top_k, int) or top_k < 0:
    raise ValueError(f"top_k must be an int >= 0, got {top_k!r}")
  if not 0.0 < top_p <= 1.0:
    raise ValueError(f"top_p must be in (0, 1], got {top_p}")


def uses_top_k(top_k: int, vocab: int) -> bool:
  """Whether top_k cuts anything (k == 0 and k >= V keep every token)."""
  return 0 < top_k < vocab


def uses_top_p(top_p: float) -> bool:
  return top_p < 1.0


def sort_key(x: jax.Array) -> jax.Array:
  """int32 key with key(a) < key(b) iff a < b for f32 a, b (-0.0 and 0.0 share one)."""
  x = jnp.where(x == 0.0, 0.0, x).astype(jnp.float32)  # -0.0 -> 0.0: equal floats, equal keys
  bits = lax.bitcast_convert_type(x, jnp.int32)
  # Negative floats order backwards in their magnitude bits: flip those.
  return jnp.where(bits >= 0, bits, bits ^ jnp.int32(0x7FFFFFFF))


def search_bit(theta: jax.Array, i) -> jax.Array:
  """Candidate for search step i (0..31): theta with bit 31 - i flipped.

  The search starts at INT32_MIN (every key >= it); flipping bit 31 moves to
  0, flipping a lower (still clear) bit adds 2**bit: each candidate is the
  smallest untried key above theta in this bit's half.
  """
  bit = lax.shift_left(jnp.int32(1), jnp.int32(KEY_BITS - 1) - i)  # bit 31 wraps to INT32_MIN
  return theta ^ bit


def largest_key(pred, shape) -> jax.Array:
  """The largest int32 theta [shape] with pred(theta) True.

  pred(theta [shape]) -> bool [shape] must be non-increasing in theta and
  True at INT32_MIN.
  """
  def step(i, theta):
    cand = search_bit(theta, i)
    return jnp.where(pred(cand), cand, theta)
  return lax.fori_loop(0, KEY_BITS, step, jnp.full(shape, INT32_MIN, jnp.int32))


def scaled_weights(logits: jax.Array, temperature: float) -> tuple[jax.Array, jax.Array]:
  """(s = logits / t [B, V] f32, w = exp(s - max s) [B, V]); an all -inf row gets w = 0."""
  s = logits.astype(jnp.float32) / jnp.float32(temperature)
  m = jnp.max(s, axis=-1, keepdims=True)
  w = jnp.exp(s - jnp.where(m == -jnp.inf, 0.0, m))
  return s, w


def threshold_key(s: jax.Array, w: jax.Array, *, top_k: int, top_p: float) -> jax.Array:
  """int32 [B]: key of the combined cut; kept = sort_key(s) >= it."""
  b, v = s.shape
  key = sort_key(s)
  theta = jnp.full((b,), INT32_MIN, jnp.int32)
  if uses_top_k(top_k, v):
    count = lambda x: jnp.sum(key >= x[:, None], axis=-1)
    theta = jnp.maximum(theta, largest_key(lambda x: count(x) >= top_k, (b,)))
  if uses_top_p(top_p):
    need = jnp.float32(top_p) * jnp.sum(w, axis=-1)
    mass = lambda x: jnp.sum(jnp.where(key >= x[:, None], w, 0.0), axis=-1)
    theta = jnp.maximum(theta, largest_key(lambda x: mass(x) >= need, (b,)))
  return theta


def kept_mask(logits: jax.Array, *, temperature: float, top_k: int = 0,
              top_p: float = 1.0) -> jax.Array:
  """bool [B, V]: the tokens a temperature > 0 draw can return (before zero weights)."""
  check_args(temperature, top_k, top_p)
  if temperature == 0:
    raise ValueError("temperature 0 is greedy: no kept set")
  s, w = scaled_weights(logits, temperature)
  theta = threshold_key(s, w, top_k=top_k, top_p=top_p)
  return sort_key(s) >= theta[:, None]


def sample(logits: jax.Array, uniforms: jax.Array, *, temperature: float, top_k: int = 0,
           top_p: float = 1.0) -> jax.Array:
  """Token ids int32 [B] from logits [B, V] and uniforms [B] in [0, 1)."""
  check_args(temperature, top_k, top_p)
  b, v = logits.shape
  if v == 0:
    raise ValueError("empty vocabulary")
  if temperature == 0:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  s, w = scaled_weights(logits, temperature)
  keep = sort_key(s) >= threshold_key(s, w, top_k=top_k, top_p=top_p)[:, None]
  cdf = jnp.cumsum(jnp.where(keep, w, 0.0), axis=-1)
  target = uniforms.astype(jnp.float32) * cdf[:, -1]
  pos = jnp.arange(v, dtype=jnp.int32)
  first = jnp.min(jnp.where(keep & (cdf > target[:, None]), pos, v), axis=-1)
  last_kept = jnp.max(jnp.where(keep, pos, -1), axis=-1)
  return jnp.where(first < v, first, last_kept).astype(jnp.int32)
