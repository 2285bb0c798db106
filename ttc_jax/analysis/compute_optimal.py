"""Compute-optimal strategy selection per difficulty bin, and its efficiency over best-of-N.

PAPER.md, "Difficulty": for each bin and budget, choose the best strategy
with 2-fold cross-validation inside the bin: split the bin's questions in
two halves, choose on one half, evaluate on the other, swap, average. Here
every question is scored by the strategy chosen on the *other* half of its
bin, so the compute-optimal accuracy at a budget is a mean over questions
(with no question ever scoring its own choice), and bootstrap intervals
resample those per-question values.

Efficiency (the paper's "~4x less compute"): for each budget B, the
smallest swept budget at which compute-optimal reaches best-of-N
weighted's accuracy at B, and the ratio B / that budget.
"""

from __future__ import annotations

import dataclasses
from typing import Iterator

import numpy as np

from ttc_jax.analysis.difficulty import Bins
from ttc_jax.analysis.outcomes import Outcomes

_TIE = 1e-12


def two_fold_split(members: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
  """A bin's question positions in two halves of sizes differing by at most one."""
  if members.size < 2:
    raise ValueError(f"a bin needs at least 2 questions for 2-fold selection, has {members.size}")
  shuffled = rng.permutation(members)
  half = members.size // 2
  return np.sort(shuffled[:half]), np.sort(shuffled[half:])


def best_strategy(outcomes: Outcomes, budget_index: int, questions: np.ndarray) -> int:
  """The strategy with the highest mean accuracy over `questions` at a budget
  (among those with every question there; ties: the first in name order)."""
  usable = np.flatnonzero(outcomes.complete()[:, budget_index])
  if usable.size == 0:
    raise ValueError(f"no strategy covers every question at budget "
                     f"{outcomes.budgets[budget_index]}")
  means = outcomes.accuracy[usable, budget_index][:, questions].mean(axis=1)
  return int(usable[np.flatnonzero(means >= means.max() - _TIE)[0]])


@dataclasses.dataclass(frozen=True)
class ComputeOptimal:
  """per_question[b, q]: the accuracy question q gets at budget b from the
  strategy chosen on the other half of its bin; choices[i] records each
  (bin, fold, budget)'s pick."""
  budgets: tuple[int, ...]
  per_question: np.ndarray  # [B, Q]
  choices: list[dict]

  @property
  def accuracy(self) -> np.ndarray:
    """[B] mean over questions."""
    return self.per_question.mean(axis=1)

  def chosen_by_bin(self) -> dict[int, dict[int, list[str]]]:
    """{bin: {budget: [the strategy chosen on each fold]}}."""
    out: dict[int, dict[int, list[str]]] = {}
    for c in self.choices:
      out.setdefault(c["bin"], {}).setdefault(c["budget"], []).append(c["strategy"])
    return out


def compute_optimal(outcomes: Outcomes, bins: Bins, seed: int = 0) -> ComputeOptimal:
  """2-fold cross-validated best strategy per bin and budget. `bins` are over
  `outcomes.questions` in the same order."""
  if bins.bin_of.shape != outcomes.questions.shape:
    raise ValueError(f"bins cover {bins.bin_of.shape[0]} questions, the sweep "
                     f"{outcomes.questions.shape[0]}")
  rng = np.random.default_rng(seed)
  per_question = np.full((len(outcomes.budgets), outcomes.questions.size), np.nan)
  choices = []
  for b in range(bins.n_bins):
    halves = two_fold_split(bins.members(b), rng)
    for fold, (choose_on, score_on) in enumerate([halves, halves[::-1]]):
      for j, budget in enumerate(outcomes.budgets):
        s = best_strategy(outcomes, j, choose_on)
        per_question[j, score_on] = outcomes.accuracy[s, j, score_on]
        choices.append(dict(bin=b, fold=fold, budget=budget, strategy=outcomes.strategies[s]))
  return ComputeOptimal(outcomes.budgets, per_question, choices)


def matching_budget(costs, curve: np.ndarray, target: float) -> float | None:
  """The smallest cost (ascending `costs`, one per `curve` point) at which
  `curve` reaches `target` (None: never)."""
  for cost, value in zip(costs, curve):
    if value >= target - _TIE:
      return cost
  return None


def efficiency(budgets, baseline: np.ndarray, curve: np.ndarray, curve_costs=None) -> list[dict]:
  """Per budget B: the baseline's accuracy at B, the smallest cost where
  `curve` reaches it (curve_costs: its cost per point, default `budgets`),
  and the ratio B / that cost (None: never reached)."""
  costs = budgets if curve_costs is None else curve_costs
  out = []
  for budget, target in zip(budgets, baseline):
    matched = matching_budget(costs, curve, target)
    out.append(dict(budget=int(budget), baseline_accuracy=float(target), matched_budget=matched,
                    ratio=None if matched is None else budget / matched))
  return out


def stratified_resamples(strata: np.ndarray, n_boot: int, seed: int) -> Iterator[np.ndarray]:
  """n_boot index arrays, each resampling positions with replacement within
  every stratum (a difficulty bin keeps its size in each resample)."""
  rng = np.random.default_rng(seed)
  groups = [np.flatnonzero(strata == s) for s in np.unique(strata)]
  for _ in range(n_boot):
    yield np.concatenate([rng.choice(g, size=g.size, replace=True) for g in groups])


def bootstrap_efficiency(budgets, baseline_per_question: np.ndarray,
                         curve_per_question: np.ndarray, strata: np.ndarray,
                         n_boot: int = 1000, seed: int = 0, level: float = 0.95,
                         curve_costs=None) -> list[dict]:
  """Percentile intervals of `efficiency`'s ratio over questions resampled
  with replacement within each stratum (difficulty bin). The choices behind
  `curve_per_question` stay fixed. A resample where the baseline is never
  reached counts as ratio 0 (the lower end then shows it)."""
  ratios = np.zeros((n_boot, len(budgets)))
  for i, pick in enumerate(stratified_resamples(strata, n_boot, seed)):
    rows = efficiency(budgets, baseline_per_question[:, pick].mean(axis=1),
                      curve_per_question[:, pick].mean(axis=1), curve_costs)
    ratios[i] = [r["ratio"] or 0.0 for r in rows]
  lo, hi = np.quantile(ratios, [(1 - level) / 2, (1 + level) / 2], axis=0)
  return [dict(budget=int(b), ratio_low=float(l), ratio_high=float(h),
               never_reached=float(np.mean(ratios[:, j] == 0.0)))
          for j, (b, l, h) in enumerate(zip(budgets, lo, hi))]
