"""Picking the final answer from P chains x L attempts, and what chains do to answers.

Arrays are per question, chain and step: ids [Q, P, L] (answer ids from
`search.selection.answer_ids` over the flattened P * L attempts; -1 =
unparsable), scores [Q, P, L] (verifier), correct [Q, P, L].

The paper (PAPER.md, "Revisions"): best-of-N weighted is hierarchical — within
each chain first, then across the chain winners (each carrying its own
score) — while majority voting is flat over all N answers.
"""

from __future__ import annotations

import numpy as np

from ttc_jax.search.selection import majority_vote, weighted_best_of_n


def _check(ids: np.ndarray, scores: np.ndarray | None = None) -> None:
  if ids.ndim != 3:
    raise ValueError(f"ids must be [Q, P, L], got shape {ids.shape}")
  if scores is not None and scores.shape != ids.shape:
    raise ValueError(f"scores {scores.shape} and ids {ids.shape} differ in shape")


def hierarchical_weighted(ids: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(chain [Q], step [Q]) of the chosen attempt: weighted best-of-N within each
  chain, then across the P chain winners with their own scores."""
  ids, scores = np.asarray(ids), np.asarray(scores, np.float32)
  _check(ids, scores)
  q, p, length = ids.shape
  within = np.asarray(weighted_best_of_n(ids.reshape(q * p, length),
                                         scores.reshape(q * p, length))).reshape(q, p)
  winner_ids = np.take_along_axis(ids, within[:, :, None], axis=2)[:, :, 0]
  winner_scores = np.take_along_axis(scores, within[:, :, None], axis=2)[:, :, 0]
  chain = np.asarray(weighted_best_of_n(winner_ids, winner_scores))
  return chain, within[np.arange(q), chain]


def flat_majority(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(chain [Q], step [Q]) of the first attempt holding the most frequent answer
  over all P * L attempts."""
  ids = np.asarray(ids)
  _check(ids)
  q, p, length = ids.shape
  flat = np.asarray(majority_vote(ids.reshape(q, p * length)))
  return flat // length, flat % length


def pick(values: np.ndarray, chain: np.ndarray, step: np.ndarray) -> np.ndarray:
  """values [Q, P, L] at each question's chosen (chain, step) -> [Q]."""
  return np.asarray(values)[np.arange(len(chain)), chain, step]


def pass_at_step(correct: np.ndarray) -> np.ndarray:
  """[L] fraction of correct attempts at each revision step (over questions and chains)."""
  correct = np.asarray(correct, bool)
  _check(correct)
  return correct.mean(axis=(0, 1))


def revised_to_correct(correct: np.ndarray) -> tuple[int, int]:
  """(incorrect attempts whose next revision is correct, incorrect attempts that
  have a next revision): what a revision model is for."""
  flipped, total = revised_to_incorrect(~np.asarray(correct, bool))
  return flipped, total


def revised_to_incorrect(correct: np.ndarray) -> tuple[int, int]:
  """(correct attempts whose next revision is incorrect, correct attempts that
  have a next revision). The paper saw about 38% of correct answers revised
  into incorrect ones."""
  correct = np.asarray(correct, bool)
  _check(correct)
  before, after = correct[:, :, :-1], correct[:, :, 1:]
  return int(np.sum(before & ~after)), int(np.sum(before))
