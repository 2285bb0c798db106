"""Question difficulty: quantile bins of pass@1 (oracle) or of mean verifier score (predicted).

The paper (PAPER.md, "Difficulty") splits questions into 5 quantile bins of
the base policy's pass@1 over 2048 samples (bin 1 easiest), or of the mean
PRM final score over the same samples (needs no ground truth). Bins here
hold equal counts (sizes differ by at most one): questions are ranked by
value, easiest first, ties broken by question order, so tied questions
never make bins uneven and the same inputs always give the same bins. Bin
ids are 0-based here (0 = easiest); reports print them as 1..n_bins.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class Bins:
  """Each question's bin (0 = easiest) and the value it was ranked by."""
  bin_of: np.ndarray  # [Q] int
  value: np.ndarray  # [Q] float: pass@1, or mean verifier score
  n_bins: int

  @property
  def sizes(self) -> list[int]:
    return np.bincount(self.bin_of, minlength=self.n_bins).tolist()

  def members(self, b: int) -> np.ndarray:
    """Question positions (into `bin_of`) of bin b."""
    return np.flatnonzero(self.bin_of == b)

  def edges(self) -> list[tuple[float, float]]:
    """(lowest, highest) value in each bin."""
    return [(float(self.value[self.members(b)].min()), float(self.value[self.members(b)].max()))
            if np.any(self.bin_of == b) else (float("nan"), float("nan"))
            for b in range(self.n_bins)]


def quantile_bins(value: np.ndarray, n_bins: int = 5) -> Bins:
  """Equal-count bins of `value` [Q], where a higher value means easier
  (pass@1, a verifier's mean score): bin 0 holds the highest values."""
  value = np.asarray(value, dtype=np.float64)
  if value.ndim != 1 or value.size == 0:
    raise ValueError(f"need a non-empty 1-D array of per-question values, got shape {value.shape}")
  if not np.all(np.isfinite(value)):
    raise ValueError("per-question values must be finite")
  if not 1 <= n_bins <= value.size:
    raise ValueError(f"n_bins must be in [1, {value.size}] (one question per bin at least), "
                     f"got {n_bins}")
  order = np.lexsort((np.arange(value.size), -value))  # easiest first; ties by question order
  rank = np.empty(value.size, dtype=np.int64)
  rank[order] = np.arange(value.size)
  return Bins(bin_of=(rank * n_bins) // value.size, value=value, n_bins=n_bins)


def pass_at_1(correct: np.ndarray) -> np.ndarray:
  """Per-question pass@1 [Q] from sample correctness [Q, S] (bool or 0/1)."""
  correct = np.asarray(correct, dtype=np.float64)
  if correct.ndim != 2 or correct.shape[1] == 0:
    raise ValueError(f"need correctness [questions, samples], got shape {correct.shape}")
  return correct.mean(axis=1)


def oracle_bins(correct: np.ndarray, n_bins: int = 5) -> Bins:
  """Bins of pass@1 over S samples per question (correct [Q, S])."""
  return quantile_bins(pass_at_1(correct), n_bins)


def predicted_bins(final_scores: np.ndarray, n_bins: int = 5) -> Bins:
  """Bins of the mean verifier final score over S samples (final_scores [Q, S]):
  no ground truth needed."""
  final_scores = np.asarray(final_scores, dtype=np.float64)
  if final_scores.ndim != 2 or final_scores.shape[1] == 0:
    raise ValueError(f"need final scores [questions, samples], got shape {final_scores.shape}")
  return quantile_bins(final_scores.mean(axis=1), n_bins)
