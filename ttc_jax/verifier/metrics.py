"""Judging a verifier by how it ranks solutions (host-side numpy).

A verifier is only used to compare candidates of the *same* question, so the
pooled AUC can mislead: scores that merely track question easiness rank
correct solutions of easy questions above wrong ones of hard questions
without helping any selection. The within-question metrics pair only
candidates (or steps) of one question.

All AUCs are Mann-Whitney: the fraction of (positive, negative) pairs where
the positive scores higher, ties counting 0.5; NaN when no pair exists.
"""

from __future__ import annotations

import collections
from typing import Sequence

import numpy as np

ArrayRows = np.ndarray | Sequence[Sequence[float]]


def _pair_wins(scores: np.ndarray, labels: np.ndarray) -> tuple[float, int]:
  """(wins, pairs) over all (positive, negative) pairs of 1-D arrays; ties = 0.5."""
  scores = np.asarray(scores, dtype=np.float64).ravel()
  labels = np.asarray(labels, dtype=bool).ravel()
  n_pos = int(labels.sum())
  n_neg = labels.size - n_pos
  if n_pos == 0 or n_neg == 0:
    return 0.0, 0
  # Average ranks (1-based) make tied pairs count 0.5 each.
  _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
  starts = np.cumsum(counts) - counts
  ranks = (starts + (counts + 1) / 2.0)[inverse]
  wins = ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0
  return float(wins), n_pos * n_neg


def _report(wins: float, pairs: int, per_question: list[float]) -> dict:
  return dict(
      auc=wins / pairs if pairs else float("nan"),
      mean_per_question_auc=float(np.mean(per_question)) if per_question else float("nan"),
      pairs=pairs,
      questions=len(per_question),
  )


def pooled_auc(scores: np.ndarray, labels: np.ndarray) -> float:
  """AUC over all samples [M] regardless of question; NaN if a class is empty."""
  wins, pairs = _pair_wins(scores, labels)
  return wins / pairs if pairs else float("nan")


def within_question_auc(scores: ArrayRows, labels: ArrayRows,
                        mask: ArrayRows | None = None) -> dict:
  """AUC over (correct, incorrect) pairs of the same question.

  scores, labels: [Q, N] arrays or Q ragged 1-D rows; mask (optional, same
  shape) drops candidates. Returns dict(auc: pooled over every pair of every
  question, mean_per_question_auc: unweighted over questions with both
  classes, pairs, questions: how many questions contributed).
  """
  if len(scores) != len(labels) or (mask is not None and len(mask) != len(scores)):
    raise ValueError("scores, labels and mask need the same number of questions")
  total_wins, total_pairs, per_question = 0.0, 0, []
  for q in range(len(scores)):
    s = np.asarray(scores[q], dtype=np.float64)
    y = np.asarray(labels[q], dtype=bool)
    if s.shape != y.shape:
      raise ValueError(f"question {q}: scores {s.shape} vs labels {y.shape}")
    if mask is not None:
      keep = np.asarray(mask[q], dtype=bool)
      s, y = s[keep], y[keep]
    wins, pairs = _pair_wins(s, y)
    if pairs:
      total_wins += wins
      total_pairs += pairs
      per_question.append(wins / pairs)
  return _report(total_wins, total_pairs, per_question)


def within_question_step_auc(step_scores: Sequence[Sequence[float]],
                             step_labels: Sequence[Sequence[float]],
                             question_index: Sequence[int]) -> dict:
  """AUC of steps taken right after a correct prefix, paired within a question.

  step_scores, step_labels: per sample, one score / 0-1 label per step
  (soft labels are thresholded at 0.5); question_index: the question of each
  sample. Pairs: a good step (label 1) vs a bad step (label 0) of the same
  question at the same step index, both preceded only by good steps. Steps
  after a first mistake are skipped: their label says little about the step
  itself. Returns the same dict as `within_question_auc`.
  """
  if not len(step_scores) == len(step_labels) == len(question_index):
    raise ValueError("step_scores, step_labels and question_index differ in length")
  # (question, step index) -> eligible (scores, labels)
  groups: dict[tuple[int, int], tuple[list[float], list[bool]]] = collections.defaultdict(
      lambda: ([], []))
  for sample, (s, y, q) in enumerate(zip(step_scores, step_labels, question_index)):
    if len(s) != len(y):
      raise ValueError(f"sample {sample}: {len(s)} scores vs {len(y)} labels")
    for t, (score, label) in enumerate(zip(s, y)):
      good = float(label) >= 0.5
      groups[(int(q), t)][0].append(float(score))
      groups[(int(q), t)][1].append(good)
      if not good:
        break  # later steps follow a wrong prefix
  per_q: dict[int, list[float]] = collections.defaultdict(lambda: [0.0, 0])
  for (q, _), (s, y) in groups.items():
    wins, pairs = _pair_wins(np.array(s), np.array(y))
    per_q[q][0] += wins
    per_q[q][1] += pairs
  contributing = [(w, p) for w, p in per_q.values() if p]
  return _report(sum(w for w, _ in contributing), sum(p for _, p in contributing),
                 [w / p for w, p in contributing])
