"""Step-score aggregation: per-step PRM scores -> one score per solution.

Every function maps `step_scores [..., S] f32` and `step_mask [..., S] bool`
(True on scored steps) to `[...] f32`. A row with no valid step scores 0.0 in
every aggregation: a solution without any scored step must never win a
selection.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

Aggregation = Callable[[jax.Array, jax.Array], jax.Array]

_LOG_FLOOR = 1e-12


def _any_valid(step_mask: jax.Array) -> jax.Array:
  return jnp.any(step_mask, axis=-1)


def aggregate_last(step_scores: jax.Array, step_mask: jax.Array) -> jax.Array:
  """Score of the last valid step [...]; the paper's chosen aggregation."""
  positions = jnp.arange(step_scores.shape[-1])
  # Highest masked position; works for prefix masks and for gaps alike.
  last = jnp.max(jnp.where(step_mask, positions, -1), axis=-1)
  picked = jnp.take_along_axis(step_scores, jnp.maximum(last, 0)[..., None], axis=-1)[..., 0]
  return jnp.where(last >= 0, picked, 0.0).astype(jnp.float32)


def aggregate_min(step_scores: jax.Array, step_mask: jax.Array) -> jax.Array:
  """Minimum over valid steps [...]: a solution is as good as its worst step."""
  low = jnp.min(jnp.where(step_mask, step_scores, jnp.inf), axis=-1)
  return jnp.where(_any_valid(step_mask), low, 0.0).astype(jnp.float32)


def aggregate_prod(step_scores: jax.Array, step_mask: jax.Array) -> jax.Array:
  """Product over valid steps [...], as exp(sum(log p)) to avoid underflow drift."""
  logs = jnp.log(jnp.clip(step_scores, _LOG_FLOOR, 1.0))
  prod = jnp.exp(jnp.sum(jnp.where(step_mask, logs, 0.0), axis=-1))
  return jnp.where(_any_valid(step_mask), prod, 0.0).astype(jnp.float32)


AGGREGATIONS: dict[str, Aggregation] = {
    "last": aggregate_last,
    "min": aggregate_min,
    "prod": aggregate_prod,
}


def get_aggregation(name: str) -> Aggregation:
  """The aggregation called `name`; ValueError lists the valid names."""
  if name not in AGGREGATIONS:
    raise ValueError(f"unknown aggregation {name!r}; valid: {sorted(AGGREGATIONS)}")
  return AGGREGATIONS[name]
