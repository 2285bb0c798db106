"""Tests for step-score aggregation and verifier ranking metrics."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ttc_jax.verifier.aggregate import (
    AGGREGATIONS,
    aggregate_last,
    aggregate_min,
    aggregate_prod,
    get_aggregation,
)
from ttc_jax.verifier.metrics import pooled_auc, within_question_auc, within_question_step_auc

FEW = settings(max_examples=60, deadline=None)
S = 6
AGG_JIT = {name: jax.jit(fn) for name, fn in AGGREGATIONS.items()}


# ---- aggregation ----

def test_aggregations_hand_made():
  scores = jnp.array([[0.9, 0.5, 0.8, 0.1],
                      [0.2, 0.7, 0.3, 0.3],
                      [0.6, 0.6, 0.6, 0.6]])
  mask = jnp.array([[True, True, True, False],
                    [True, False, False, False],
                    [False, False, False, False]])
  np.testing.assert_allclose(aggregate_last(scores, mask), [0.8, 0.2, 0.0])
  np.testing.assert_allclose(aggregate_min(scores, mask), [0.5, 0.2, 0.0])
  np.testing.assert_allclose(aggregate_prod(scores, mask), [0.9 * 0.5 * 0.8, 0.2, 0.0], rtol=1e-6)


def test_aggregations_leading_shape_and_registry():
  scores = jax.random.uniform(jax.random.key(0), (2, 3, 5, S))
  lengths = jax.random.randint(jax.random.key(1), (2, 3, 5), 0, S + 1)
  mask = jnp.arange(S) < lengths[..., None]
  for name in ("last", "min", "prod"):
    out = get_aggregation(name)(scores, mask)
    assert out.shape == (2, 3, 5) and out.dtype == jnp.float32
    flat = AGGREGATIONS[name](scores.reshape(-1, S), mask.reshape(-1, S))
    np.testing.assert_allclose(out.reshape(-1), flat, rtol=1e-6)
  with pytest.raises(ValueError, match="last"):
    get_aggregation("mean")


def test_prod_is_stable_for_tiny_and_out_of_range():
  scores = jnp.array([[0.0, 0.5, 1.5], [1e-30, 1e-30, 1.0]])
  mask = jnp.ones((2, 3), bool)
  out = aggregate_prod(scores, mask)
  assert np.all(np.isfinite(out)) and np.all(np.asarray(out) >= 0)
  np.testing.assert_allclose(out, [1e-12 * 0.5, 1e-24], rtol=1e-4)


@FEW
@given(st.lists(st.floats(0.0, 1.0, width=32), min_size=S, max_size=S), st.integers(0, S))
def test_aggregations_match_python_on_prefix_masks(steps, length):
  scores = jnp.array([steps], jnp.float32)
  mask = jnp.array([[t < length for t in range(S)]])
  valid = np.array(steps[:length], np.float64)
  expected = {
      "last": valid[-1] if length else 0.0,
      "min": valid.min() if length else 0.0,
      "prod": np.prod(np.clip(valid, 1e-12, 1)) if length else 0.0,
  }
  for name, fn in AGG_JIT.items():
    np.testing.assert_allclose(fn(scores, mask)[0], expected[name], rtol=1e-4, atol=1e-30)
  # Masked-out scores never matter.
  junk = jnp.where(mask, scores, 0.123)
  for name, fn in AGG_JIT.items():
    np.testing.assert_array_equal(fn(junk, mask), fn(scores, mask))


# ---- pooled AUC ----

def test_pooled_auc_perfect_reversed_ties_empty():
  labels = np.array([1, 1, 0, 0, 0], bool)
  scores = np.array([0.9, 0.8, 0.3, 0.2, 0.1])
  assert pooled_auc(scores, labels) == 1.0
  assert pooled_auc(-scores, labels) == 0.0
  assert pooled_auc(np.zeros(5), labels) == 0.5
  # One tie among six pairs: (0.5 vs 0.5) counts half.
  assert pooled_auc(np.array([0.5, 0.9, 0.5, 0.1, 0.2]), labels) == pytest.approx(5.5 / 6)
  assert np.isnan(pooled_auc(scores, np.ones(5, bool)))
  assert np.isnan(pooled_auc(np.array([]), np.array([], bool)))


def test_pooled_auc_random_is_half():
  rng = np.random.default_rng(0)
  auc = pooled_auc(rng.random(20_000), rng.random(20_000) < 0.3)
  assert abs(auc - 0.5) < 0.02


@FEW
@given(st.lists(st.tuples(st.integers(0, 4), st.booleans()), min_size=1, max_size=30))
def test_pooled_auc_matches_brute_force(pairs):
  scores = np.array([s for s, _ in pairs], float)
  labels = np.array([y for _, y in pairs], bool)
  pos, neg = scores[labels], scores[~labels]
  if not len(pos) or not len(neg):
    assert np.isnan(pooled_auc(scores, labels))
    return
  diff = pos[:, None] - neg[None, :]
  brute = ((diff > 0) + 0.5 * (diff == 0)).mean()
  assert pooled_auc(scores, labels) == pytest.approx(brute)


# ---- within-question AUC ----

def test_within_question_ignores_question_easiness():
  # Score = question easiness: useless for picking among one question's candidates.
  rng = np.random.default_rng(0)
  easiness = np.linspace(0.05, 0.95, 40)
  labels = rng.random((40, 16)) < easiness[:, None]
  scores = np.repeat(easiness[:, None], 16, axis=1)
  assert pooled_auc(scores.ravel(), labels.ravel()) > 0.8
  out = within_question_auc(scores, labels)
  assert out["auc"] == 0.5 and out["mean_per_question_auc"] == 0.5
  assert out["questions"] == int(np.sum(labels.any(1) & ~labels.all(1)))


def test_within_question_counts_and_mask():
  scores = np.array([[0.9, 0.1, 0.5], [0.2, 0.8, 0.3], [0.5, 0.5, 0.5]])
  labels = np.array([[1, 0, 0], [1, 0, 0], [1, 1, 1]], bool)  # last row: one class only
  out = within_question_auc(scores, labels)
  assert out["pairs"] == 4 and out["questions"] == 2
  assert out["auc"] == pytest.approx(2 / 4)  # q0: 2/2 wins, q1: 0/2
  assert out["mean_per_question_auc"] == pytest.approx(0.5)
  mask = np.array([[1, 1, 1], [1, 0, 1], [1, 1, 1]], bool)
  masked = within_question_auc(scores, labels, mask)
  assert masked["pairs"] == 3 and masked["auc"] == pytest.approx(2 / 3)
  assert masked["mean_per_question_auc"] == pytest.approx(0.5)


def test_within_question_pooled_vs_mean_and_ragged():
  scores = [np.array([0.9, 0.1]), np.array([0.1, 0.2, 0.3, 0.4, 0.5])]
  labels = [np.array([1, 0]), np.array([1, 1, 0, 0, 0])]
  out = within_question_auc(scores, labels)
  assert out["pairs"] == 1 + 6
  assert out["auc"] == pytest.approx(1 / 7)
  assert out["mean_per_question_auc"] == pytest.approx(0.5)


def test_within_question_no_pairs_is_nan():
  out = within_question_auc(np.ones((2, 3)), np.array([[1, 1, 1], [0, 0, 0]], bool))
  assert np.isnan(out["auc"]) and np.isnan(out["mean_per_question_auc"])
  assert out["pairs"] == 0 and out["questions"] == 0


@FEW
@given(st.integers(0, 2**31 - 1))
def test_within_question_perfect_and_reversed(seed):
  rng = np.random.default_rng(seed)
  labels = rng.random((5, 6)) < 0.5
  scores = labels + 0.1 * rng.random((5, 6))  # correct always above incorrect
  good, bad = within_question_auc(scores, labels), within_question_auc(-scores, labels)
  if good["pairs"]:
    assert good["auc"] == 1.0 and bad["auc"] == 0.0
    assert good["pairs"] == bad["pairs"]


# ---- step AUC ----

def test_step_auc_only_after_correct_prefix():
  # Question 0: step 1 of sample B follows a wrong step 0, so its (high) score
  # against sample A's bad step 1 must not be counted.
  step_scores = [[0.9, 0.2, 0.8],  # A: good, bad, (after mistake)
                 [0.1, 0.1],       # B: bad, (after mistake)
                 [0.8, 0.7, 0.6]]  # C: good, good, good
  step_labels = [[1, 0, 1], [0, 1], [1, 1, 1]]
  out = within_question_step_auc(step_scores, step_labels, [0, 0, 0])
  # Step 0: good {0.9, 0.8} vs bad {0.1} -> 2 wins. Step 1: good {0.7} vs bad {0.2} -> 1 win.
  # Step 2: only C after a correct prefix -> no pair.
  assert out["pairs"] == 3 and out["auc"] == 1.0 and out["questions"] == 1
  # Counting B's step 1 (0.1, label 1) would have added a lost pair with A's step 1.


def test_step_auc_pairs_only_within_question_and_step_index():
  step_scores = [[0.9], [0.1], [0.2, 0.3], [0.05, 0.8]]
  step_labels = [[1], [0], [1, 0], [1, 1]]
  out = within_question_step_auc(step_scores, step_labels, [0, 1, 2, 2])
  # Only question 2 has both classes, step 1: good 0.8 vs bad 0.3 -> win.
  assert out["pairs"] == 1 and out["auc"] == 1.0 and out["questions"] == 1
  swapped = within_question_step_auc([[0.9], [0.1], [0.2, 0.9], [0.05, 0.1]], step_labels,
                                     [0, 1, 2, 2])
  assert swapped["auc"] == 0.0


def test_step_auc_nan_and_validation():
  out = within_question_step_auc([[0.5, 0.5]], [[1, 1]], [0])
  assert np.isnan(out["auc"]) and out["pairs"] == 0
  with pytest.raises(ValueError):
    within_question_step_auc([[0.5, 0.5]], [[1]], [0])
  with pytest.raises(ValueError):
    within_question_step_auc([[0.5]], [[1]], [0, 1])
