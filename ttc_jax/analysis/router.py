"""A deployable router: a cheap probe predicts a prompt's difficulty and picks its strategy.

Beyond the paper (issue #5 point 4): the paper's predicted bins need the
mean verifier score over 2048 samples of every prompt and do not count
them. Here a prompt is first probed with P samples (the sweep's best-of-P
lines), their mean verifier score places it in a bin whose edges were
learned on other prompts, and the bin's best strategy at the budget runs.
The probe's P generations are counted: the router at budget B costs B + P.

Evaluation is 2-fold over all questions: edges (quantiles of the probe
score) and each bin's best strategy are learned on one half and applied to
the other, then swapped, so no question is routed by its own outcomes.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ttc_jax.analysis.compute_optimal import best_strategy
from ttc_jax.analysis.outcomes import Outcomes


@dataclasses.dataclass(frozen=True)
class Routed:
  """per_question[b, q]: accuracy of the strategy q was routed to at budget
  b; cost[b] = budget + probe generations."""
  budgets: tuple[int, ...]
  cost: tuple[float, ...]
  per_question: np.ndarray  # [B, Q]
  choices: list[dict]

  @property
  def accuracy(self) -> np.ndarray:
    return self.per_question.mean(axis=1)


def bin_edges(score: np.ndarray, n_bins: int) -> np.ndarray:
  """The n_bins - 1 inner quantile edges of `score` (higher score = easier)."""
  return np.quantile(score, np.linspace(0, 1, n_bins + 1)[1:-1])


def route_bins(score: np.ndarray, edges: np.ndarray) -> np.ndarray:
  """Bin per score (0 = easiest: the highest scores), from learned edges."""
  return len(edges) - np.searchsorted(edges, score, side="right")


def route(outcomes: Outcomes, probe_score: np.ndarray, *, probe_generations: int,
          n_bins: int = 5, seed: int = 0) -> Routed:
  """2-fold evaluation of the router; probe_score [Q] over `outcomes.questions`."""
  q = outcomes.questions.size
  if probe_score.shape != (q,):
    raise ValueError(f"need one probe score per swept question ({q}), got {probe_score.shape}")
  if q < 2 * n_bins:
    raise ValueError(f"{q} questions are too few to learn {n_bins} bins on half of them")
  halves = np.array_split(np.random.default_rng(seed).permutation(q), 2)
  per_question = np.full((len(outcomes.budgets), q), np.nan)
  choices = []
  for fold, (learn, apply) in enumerate([halves, halves[::-1]]):
    edges = bin_edges(probe_score[learn], n_bins)
    learned, routed = route_bins(probe_score[learn], edges), route_bins(probe_score[apply], edges)
    for b in range(n_bins):
      members, targets = learn[learned == b], apply[routed == b]
      if targets.size == 0:
        continue
      if members.size == 0:  # an empty learned bin: use the whole learning half
        members = learn
      for j, budget in enumerate(outcomes.budgets):
        s = best_strategy(outcomes, j, members)
        per_question[j, targets] = outcomes.accuracy[s, j, targets]
        choices.append(dict(bin=b, fold=fold, budget=budget, strategy=outcomes.strategies[s]))
  return Routed(outcomes.budgets, tuple(float(b + probe_generations) for b in outcomes.budgets),
                per_question, choices)
