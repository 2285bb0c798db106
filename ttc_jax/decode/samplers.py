"""Sampling methods: tiny frozen (hashable, jit-static) dataclasses with one method.

`sampler.sample(logits [B, V] f32, uniforms [B]) -> token ids [B]`. Every
sampler draws by inverse CDF from one uniform per row (cheaper than
`jax.random.categorical`, DESIGN.md item 4), so the randomness is fully
determined by the per-row uniforms the decode loop derives from
(seed, row stream, absolute position): resuming a stopped decode reproduces an
uninterrupted one.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


def _inverse_cdf(logits: jax.Array, uniforms: jax.Array) -> jax.Array:
  """Index drawn from softmax(logits) [B, V] using uniforms [B] in [0, 1)."""
  probs = jax.nn.softmax(logits, axis=-1)
  cdf = jnp.cumsum(probs, axis=-1)
  # Scale by the total so rounding in the cumsum cannot leave u above cdf[-1].
  threshold = uniforms[:, None] * cdf[:, -1:]
  index = jnp.sum(cdf <= threshold, axis=-1)
  return jnp.minimum(index, logits.shape[-1] - 1).astype(jnp.int32)


def _check_temperature(t: float) -> None:
  if not t >= 0:  # also rejects NaN
    raise ValueError(f"temperature must be >= 0, got {t}")


@dataclasses.dataclass(frozen=True)
class Greedy:
  """Argmax decoding."""

  def sample(self, logits: jax.Array, uniforms: jax.Array) -> jax.Array:
    del uniforms
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)


@dataclasses.dataclass(frozen=True)
class Temperature:
  """Sampling from softmax(logits / t); t == 0 is greedy."""
  t: float = 1.0

  def __post_init__(self):
    _check_temperature(self.t)

  def sample(self, logits, uniforms):
    if self.t == 0:
      return Greedy().sample(logits, uniforms)
    return _inverse_cdf(logits / self.t, uniforms)


@dataclasses.dataclass(frozen=True)
class TopK:
  """Sampling among the k most likely tokens at temperature t; k == 0 disables the cut."""
  k: int
  t: float = 1.0

  def __post_init__(self):
    if not isinstance(self.k, int) or self.k < 0:
      raise ValueError(f"top_k must be an int >= 0, got {self.k!r}")
    _check_temperature(self.t)

  def sample(self, logits, uniforms):
    if self.k == 0 or self.k >= logits.shape[-1]:
      return Temperature(self.t).sample(logits, uniforms)
    if self.t == 0:
      return Greedy().sample(logits, uniforms)
    top_logits, top_index = jax.lax.top_k(logits, self.k)  # [B, k], sorted descending
    choice = _inverse_cdf(top_logits / self.t, uniforms)
    return jnp.take_along_axis(top_index, choice[:, None], axis=-1)[:, 0].astype(jnp.int32)


@dataclasses.dataclass(frozen=True)
class TopP:
  """Nucleus sampling: the smallest set of tokens whose probability reaches p, at temperature t."""
  p: float
  t: float = 1.0

  def __post_init__(self):
    if not 0.0 < self.p <= 1.0:
      raise ValueError(f"top_p must be in (0, 1], got {self.p}")
    _check_temperature(self.t)

  def sample(self, logits, uniforms):
    if self.t == 0:
      return Greedy().sample(logits, uniforms)
    scaled = logits / self.t
    order = jnp.argsort(-scaled, axis=-1)  # [B, V] descending
    sorted_logits = jnp.take_along_axis(scaled, order, axis=-1)
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs
    keep = mass_before < self.p  # always keeps the most likely token
    choice = _inverse_cdf(jnp.where(keep, sorted_logits, -jnp.inf), uniforms)
    return jnp.take_along_axis(order, choice[:, None], axis=-1)[:, 0].astype(jnp.int32)


Sampler = Greedy | Temperature | TopK | TopP
