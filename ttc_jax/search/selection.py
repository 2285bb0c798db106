"""Answer selection over N candidate solutions per question.

Inputs are `ids [Q, N] int` (answer ids from `answer_ids`; -1 = no parsable
answer) and, where needed, `scores [Q, N] f32` (aggregated verifier scores).
Each rule returns `[Q] int32`, the index of the chosen candidate.

Rules:
  - Invalid answers (-1) never win unless every candidate of the row is
    invalid; then the rule falls back to all candidates.
  - Ties are deterministic: the lowest candidate index wins. For answer-level
    ties (majority, weighted) that means the answer appearing first wins.
  - NaN scores count as -inf.

All rules are jnp, jit-compatible, and build an equality matrix [Q, N, N]
(fine for N <= 256).
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

Selection = Callable[[jax.Array, jax.Array], jax.Array]


def answer_ids(answers: Sequence[Sequence[str | None]]) -> np.ndarray:
  """Host helper: answer strings [Q][N] -> int32 ids [Q, N].

  Per question, distinct non-None answers get 0, 1, ... in order of first
  appearance; None -> -1. Rows must all have the same length.
  """
  widths = {len(row) for row in answers}
  if len(widths) > 1:
    raise ValueError(f"ragged answers: row lengths {sorted(widths)}")
  n = widths.pop() if widths else 0
  out = np.full((len(answers), n), -1, dtype=np.int32)
  for q, row in enumerate(answers):
    seen: dict[str, int] = {}
    for i, ans in enumerate(row):
      if ans is not None:
        out[q, i] = seen.setdefault(ans, len(seen))
  return out


def _first_argmax(key: jax.Array, eligible: jax.Array) -> jax.Array:
  """Lowest index with the largest `key` among `eligible` [Q, N] -> [Q] int32.

  Rows with no eligible candidate fall back to every candidate.
  """
  key = jnp.where(jnp.isnan(key), -jnp.inf, key)
  eligible = eligible | ~jnp.any(eligible, axis=-1, keepdims=True)
  best = jnp.max(jnp.where(eligible, key, -jnp.inf), axis=-1, keepdims=True)
  # Comparing to the max (not argmax of a masked key) keeps an eligible
  # candidate scored -inf ahead of ineligible ones.
  return jnp.argmax(eligible & (key == best), axis=-1).astype(jnp.int32)


def _same_answer(ids: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(eq [Q, N, N]: candidates i, j share a valid answer; valid [Q, N])."""
  valid = ids >= 0
  eq = (ids[:, :, None] == ids[:, None, :]) & valid[:, :, None] & valid[:, None, :]
  return eq, valid


def majority_vote(ids: jax.Array, scores: jax.Array | None = None) -> jax.Array:
  """First candidate holding the most frequent valid answer [Q] int32.

  `scores` is ignored (accepted so every rule has one signature).
  """
  del scores
  eq, valid = _same_answer(ids)
  counts = jnp.sum(eq, axis=-1)
  # The lowest index with the top count is the first holder of the answer
  # that appears first among the tied ones.
  return _first_argmax(counts, valid)


def best_of_n(ids: jax.Array, scores: jax.Array) -> jax.Array:
  """Highest-scored candidate with a valid answer [Q] int32."""
  return _first_argmax(scores, ids >= 0)


def weighted_best_of_n(ids: jax.Array, scores: jax.Array) -> jax.Array:
  """Best-of-N weighted [Q] int32: answer with the largest score sum, then its best candidate.

  Rows with no valid answer pick the highest-scored candidate.
  """
  eq, valid = _same_answer(ids)
  clean = jnp.where(jnp.isnan(scores), 0.0, scores)
  # totals[q, i] = score mass of candidate i's answer; `where`, not a matmul,
  # so an infinite score never meets a 0 weight (0 * inf = NaN).
  totals = jnp.sum(jnp.where(eq, clean[:, None, :], 0.0), axis=-1)
  winner = _first_argmax(totals, valid)
  holders = jnp.take_along_axis(ids, winner[:, None], axis=-1) == ids
  return _first_argmax(scores, holders)


SELECTIONS: dict[str, Selection] = {
    "majority": majority_vote,
    "best_of_n": best_of_n,
    "weighted": weighted_best_of_n,
}


def select(name: str, ids: jax.Array, scores: jax.Array) -> jax.Array:
  """Apply the selection rule `name` -> chosen index [Q] int32."""
  if name not in SELECTIONS:
    raise ValueError(f"unknown selection {name!r}; valid: {sorted(SELECTIONS)}")
  return SELECTIONS[name](jnp.asarray(ids), jnp.asarray(scores))
