"""PRM step-score gather + aggregation, pure jnp: the definition the kernel reproduces.

`step_score_aggregate(position_scores [B, T] f32, is_step [B, T] bool, *,
how, max_steps) -> (step_scores [B, S], step_mask [B, S], aggregate [B])`,
S = max_steps:
* step_scores: the scores at the is_step positions, packed to the left in
  position order; steps past the S-th are dropped; 0.0 in unused slots.
* step_mask: True on the first min(#steps, S) slots.
* aggregate over the valid slots (ttc_jax/verifier/aggregate.py):
  "last": the score in slot min(#steps, S) - 1 (the S-th step when steps were
  dropped); "min": the smallest; "prod": exp(sum(log(clip(score, 1e-12, 1)))).
  A row without a step scores 0.0 in all three.
This is `ttc_jax.verifier.model.compact` followed by the named
`ttc_jax.verifier.aggregate` function, written independently here (the tests
check the two agree) so kernels/ does not import the verifier.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

HOWS = ("last", "min", "prod")
LOG_FLOOR = 1e-12


def check_args(how: str, max_steps: int) -> None:
  if how not in HOWS:
    raise ValueError(f"how must be one of {HOWS}, got {how!r}")
  if not isinstance(max_steps, int) or max_steps < 0:
    raise ValueError(f"max_steps must be an int >= 0, got {max_steps!r}")


def aggregate(step_scores: jax.Array, step_mask: jax.Array, how: str) -> jax.Array:
  """[B] f32 from left-packed step_scores [B, S] and prefix step_mask [B, S]."""
  b, s = step_scores.shape
  count = jnp.sum(step_mask, axis=-1)
  if how == "last":
    slot = jnp.arange(s)[None, :] == (count - 1)[:, None]
    value = jnp.sum(jnp.where(slot, step_scores, 0.0), axis=-1)
  elif how == "min":
    value = jnp.min(jnp.where(step_mask, step_scores, jnp.inf), axis=-1)
  else:
    logs = jnp.log(jnp.clip(step_scores, LOG_FLOOR, 1.0))
    value = jnp.exp(jnp.sum(jnp.where(step_mask, logs, 0.0), axis=-1))
  return jnp.where(count > 0, value, 0.0).astype(jnp.float32)


def step_score_aggregate(position_scores: jax.Array, is_step: jax.Array, *, how: str,
                         max_steps: int) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(step_scores [B, S] f32, step_mask [B, S] bool, aggregate [B] f32); S = max_steps."""
  check_args(how, max_steps)
  b, t = position_scores.shape
  is_step = is_step.astype(bool)
  slot = jnp.cumsum(is_step, axis=-1) - 1  # [B, T]: the slot each step lands in
  onehot = is_step[:, :, None] & (slot[:, :, None] == jnp.arange(max_steps)[None, None, :])
  scores = jnp.sum(jnp.where(onehot, position_scores[:, :, None].astype(jnp.float32), 0.0),
                   axis=1)  # [B, S]: one term per slot, so the sum is exact
  count = jnp.minimum(jnp.sum(is_step, axis=-1), max_steps)
  mask = jnp.arange(max_steps)[None, :] < count[:, None]
  return scores, mask, aggregate(scores, mask, how)
