"""Tests for answer selection: majority vote, best-of-N, best-of-N weighted."""

from __future__ import annotations

import collections

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ttc_jax.search.selection import (
    SELECTIONS,
    answer_ids,
    best_of_n,
    majority_vote,
    select,
    weighted_best_of_n,
)

FEW = settings(max_examples=60, deadline=None)

# One batch shape for the property tests so jit compiles once per rule.
Q, N = 4, 8
ids_batches = st.lists(st.integers(-1, 3), min_size=Q * N, max_size=Q * N).map(
    lambda xs: np.array(xs, dtype=np.int32).reshape(Q, N))
MAJORITY = jax.jit(majority_vote)
BEST = jax.jit(best_of_n)
WEIGHTED = jax.jit(weighted_best_of_n)


def _ref_majority(row: np.ndarray) -> int:
  """Plain-python majority: most frequent valid answer, first appearance wins ties."""
  valid = [a for a in row if a >= 0]
  if not valid:
    return 0
  counts = collections.Counter(valid)
  top = max(counts.values())
  answer = next(a for a in row if a >= 0 and counts[a] == top)
  return int(np.flatnonzero(row == answer)[0])


def _ref_weighted(row: np.ndarray, scores: np.ndarray) -> int:
  valid = [i for i in range(len(row)) if row[i] >= 0]
  if not valid:
    return int(np.argmax(scores))
  totals = collections.defaultdict(float)
  for i in valid:
    totals[row[i]] += scores[i]
  top = max(totals.values())
  answer = next(row[i] for i in valid if totals[row[i]] == top)
  holders = [i for i in valid if row[i] == answer]
  return max(holders, key=lambda i: (scores[i], -i))


# ---- answer_ids ----

def test_answer_ids_first_appearance_and_none():
  ids = answer_ids([["7", None, "3", "7", "3"], [None, None, "x", "y", "x"]])
  np.testing.assert_array_equal(ids, [[0, -1, 1, 0, 1], [-1, -1, 0, 1, 0]])
  assert ids.dtype == np.int32


def test_answer_ids_rejects_ragged():
  with pytest.raises(ValueError, match="ragged"):
    answer_ids([["1", "2"], ["1"]])


# ---- majority vote ----

def test_majority_hand_made():
  ids = jnp.array([[0, 1, 1, 0, 1], [-1, 2, 3, 3, 2], [-1, -1, 0, -1, -1], [-1, -1, -1, -1, -1]])
  # Row 1: answers 2 and 3 tie on two votes; 2 appears first -> index 1.
  np.testing.assert_array_equal(majority_vote(ids), [1, 1, 2, 0])


def test_majority_invalid_majority_loses():
  ids = jnp.array([[-1, -1, -1, 5, -1]])
  assert int(majority_vote(ids)[0]) == 3


@FEW
@given(ids_batches)
def test_majority_matches_reference(ids):
  got = np.asarray(MAJORITY(jnp.asarray(ids)))
  np.testing.assert_array_equal(got, [_ref_majority(row) for row in ids])


# ---- best-of-N ----

def test_best_of_n_picks_argmax():
  rng = np.random.default_rng(0)
  ids = jnp.zeros((16, 32), jnp.int32)
  scores = rng.random((16, 32), dtype=np.float32)
  np.testing.assert_array_equal(best_of_n(ids, jnp.asarray(scores)), np.argmax(scores, -1))


def test_best_of_n_invalid_loses_and_ties_lowest_index():
  ids = jnp.array([[-1, 0, 1, 2], [0, 1, 0, 1], [-1, -1, -1, -1], [-1, 0, -1, 0]])
  scores = jnp.array([[0.9, 0.2, 0.5, 0.5],
                      [0.3, 0.7, 0.7, 0.1],
                      [0.1, 0.4, 0.4, 0.2],
                      [0.9, -jnp.inf, 0.8, -jnp.inf]])
  # Row 3: the valid candidates score -inf, they still beat invalid ones.
  np.testing.assert_array_equal(best_of_n(ids, scores), [2, 1, 1, 1])


def test_best_of_n_nan_scores_lose():
  ids = jnp.array([[0, 1, 2]])
  scores = jnp.array([[jnp.nan, 0.1, 0.2]])
  assert int(best_of_n(ids, scores)[0]) == 2


# ---- best-of-N weighted ----

def test_weighted_hand_made():
  ids = jnp.array([[0, 1, 1, 0, 2], [0, 1, 1, 0, -1], [-1, -1, -1, -1, -1], [3, 3, 4, 4, -1]])
  scores = jnp.array([[0.9, 0.5, 0.6, 0.1, 0.95],  # sums: 1.0, 1.1, 0.95 -> answer 1, index 2
                      [0.5, 0.5, 0.5, 0.5, 5.00],  # tie on sums; invalid 5.0 ignored -> 0
                      [0.1, 0.3, 0.3, 0.2, 0.00],  # all invalid -> best score, lowest index
                      [0.25, 0.5, 0.5, 0.25, 9.0]])  # tie 0.75 each; answer 3 first -> index 1
  np.testing.assert_array_equal(weighted_best_of_n(ids, scores), [2, 0, 1, 1])


def test_weighted_differs_from_best_of_n():
  # One confident outlier vs a consistent majority.
  ids = jnp.array([[0, 1, 1, 1]])
  scores = jnp.array([[0.99, 0.6, 0.6, 0.6]])
  assert int(best_of_n(ids, scores)[0]) == 0
  assert int(weighted_best_of_n(ids, scores)[0]) == 1


@FEW
@given(ids_batches, st.sampled_from([0.25, 1.0, 3.0]))
def test_weighted_with_constant_score_is_majority(ids, c):
  scores = jnp.full(ids.shape, c, jnp.float32)
  np.testing.assert_array_equal(WEIGHTED(jnp.asarray(ids), scores), MAJORITY(jnp.asarray(ids)))


@FEW
@given(ids_batches, st.integers(0, 2**31 - 1))
def test_weighted_matches_reference(ids, seed):
  # Quarter-steps keep sums exact, so float ties match the reference's.
  scores = np.random.default_rng(seed).integers(0, 5, ids.shape).astype(np.float32) / 4
  got = np.asarray(WEIGHTED(jnp.asarray(ids), jnp.asarray(scores)))
  np.testing.assert_array_equal(got, [_ref_weighted(r, s) for r, s in zip(ids, scores)])


@FEW
@given(ids_batches, st.integers(0, 2**31 - 1))
def test_choice_is_valid_unless_row_all_invalid(ids, seed):
  scores = jnp.asarray(np.random.default_rng(seed).random(ids.shape, dtype=np.float32))
  for rule in (MAJORITY, BEST, WEIGHTED):
    chosen = np.asarray(rule(jnp.asarray(ids), scores))
    picked = ids[np.arange(Q), chosen]
    np.testing.assert_array_equal(picked >= 0, (ids >= 0).any(-1))


# ---- registry ----

def test_select_dispatch_and_unknown():
  ids = np.array([[0, 1, 1]], np.int32)
  scores = np.array([[0.9, 0.2, 0.3]], np.float32)
  assert set(SELECTIONS) == {"majority", "best_of_n", "weighted"}
  assert int(select("majority", ids, scores)[0]) == 1
  assert int(select("best_of_n", ids, scores)[0]) == 0
  assert int(select("weighted", ids, scores)[0]) == 0
  with pytest.raises(ValueError, match="majority"):
    select("nope", ids, scores)


def test_jit_and_dtype():
  ids = jnp.array([[0, 1, 1]])
  scores = jnp.array([[0.9, 0.2, 0.3]])
  for name, rule in SELECTIONS.items():
    out = jax.jit(rule)(ids, scores)
    assert out.shape == (1,) and out.dtype == jnp.int32, name
