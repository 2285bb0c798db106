"""One sweep's analysis: difficulty bins, every strategy per bin, compute-optimal, efficiency.

`analyze_sweep(lines, samples=S)` takes run_search's JSON lines. Difficulty
comes from best-of-S lines (oracle: pass@1 over the S samples; predicted:
their mean verifier score): separate ones (`difficulty_lines`, as the paper's
2048 samples; experiments/reproduce.py draws them) or the sweep's own. Caveat
with the sweep's own when S is also a swept budget: the best-of-S strategy is
then scored on the very samples that binned its questions;
`samples_also_swept` says so in the output.
"""

from __future__ import annotations

import dataclasses
from typing import Iterable

import numpy as np

from ttc_jax.analysis.compute_optimal import bootstrap_efficiency, compute_optimal, efficiency
from ttc_jax.analysis.difficulty import Bins, quantile_bins
from ttc_jax.analysis.outcomes import Outcomes, outcome_table, sample_statistics
from ttc_jax.analysis.router import route

BASELINE = "best_of_n:weighted:last"  # the paper's best-of-N weighted, `last` aggregation


def _on_questions(bins: Bins, have: np.ndarray, want: np.ndarray) -> Bins:
  """`bins` (over questions `have`) restricted to questions `want`, re-binned
  there so every bin stays non-empty and equal-count."""
  position = {q: i for i, q in enumerate(have.tolist())}
  missing = [q for q in want.tolist() if q not in position]
  if missing:
    raise ValueError(f"{len(missing)} swept questions have no difficulty samples, e.g. "
                     f"{missing[:5]}")
  return quantile_bins(bins.value[[position[q] for q in want.tolist()]], bins.n_bins)


def strategy_table(outcomes: Outcomes, bins: Bins) -> dict:
  """{strategy: {"all": [accuracy per budget], "bins": [[per budget] per bin]}}
  (None where the strategy lacks that budget)."""
  complete = outcomes.complete()
  out = {}
  for s, name in enumerate(outcomes.strategies):
    def mean(questions):
      return [float(outcomes.accuracy[s, j, questions].mean()) if complete[s, j] else None
              for j in range(len(outcomes.budgets))]
    out[name] = {"all": mean(np.arange(outcomes.questions.size)),
                 "bins": [mean(bins.members(b)) for b in range(bins.n_bins)]}
  return out


def _bins_summary(bins: Bins) -> dict:
  return {"sizes": bins.sizes, "value_ranges": bins.edges()}


def compute_optimal_summary(outcomes: Outcomes, bins: Bins, baseline: str, *, seed: int,
                             n_boot: int) -> dict:
  co = compute_optimal(outcomes, bins, seed=seed)
  base = outcomes.strategy_index(baseline)
  base_per_question = outcomes.accuracy[base]
  if np.isnan(base_per_question).any():
    raise ValueError(f"the baseline {baseline!r} lacks some (budget, question) pairs")
  return {
      "accuracy": co.accuracy.tolist(),
      "accuracy_by_bin": [co.per_question[:, bins.members(b)].mean(axis=1).tolist()
                          for b in range(bins.n_bins)],
      "chosen": {str(b): {str(budget): picks for budget, picks in by_budget.items()}
                 for b, by_budget in co.chosen_by_bin().items()},
      "efficiency": efficiency(outcomes.budgets, base_per_question.mean(axis=1), co.accuracy),
      "efficiency_interval": bootstrap_efficiency(outcomes.budgets, base_per_question,
                                                  co.per_question, bins.bin_of, n_boot=n_boot,
                                                  seed=seed),
  }


def _router_summary(outcomes: Outcomes, lines: list[dict], probe: int, baseline: str,
                    strata: np.ndarray, *, n_bins: int, seed: int, n_boot: int) -> dict:
  probed, _, probe_score = sample_statistics(lines, probe)
  position = {q: i for i, q in enumerate(probed.tolist())}
  if any(q not in position for q in outcomes.questions.tolist()):
    raise ValueError(f"some swept questions lack best-of-{probe} probe lines")
  score = probe_score[[position[q] for q in outcomes.questions.tolist()]]
  routed = route(outcomes, score, probe_generations=probe, n_bins=n_bins, seed=seed)
  base = outcomes.accuracy[outcomes.strategy_index(baseline)]
  return {
      "probe_generations": probe, "cost": list(routed.cost),
      "accuracy": routed.accuracy.tolist(),
      "efficiency": efficiency(outcomes.budgets, base.mean(axis=1), routed.accuracy,
                               routed.cost),
      "efficiency_interval": bootstrap_efficiency(outcomes.budgets, base, routed.per_question,
                                                  strata, n_boot=n_boot, seed=seed,
                                                  curve_costs=routed.cost),
  }


@dataclasses.dataclass(frozen=True)
class Prepared:
  """A sweep's table (budgets where the baseline ran) with its difficulty bins."""
  outcomes: Outcomes
  oracle: Bins
  predicted: Bins
  baseline: str


def prepare(lines: list[dict], *, samples: int, n_bins: int = 5, baseline: str = BASELINE,
            difficulty_lines: list[dict] | None = None) -> Prepared:
  """The table and both bins over its questions. Difficulty comes from the
  best-of-`samples` lines of `difficulty_lines` (separate samples, as the
  paper's) or, when None, of the sweep itself. Budgets the baseline lacks
  (e.g. lookahead's N (k + 1) beyond the largest N) are left out: every
  comparison is against the baseline."""
  sampled, pass1, mean_score = sample_statistics(
      lines if difficulty_lines is None else difficulty_lines, samples)
  outcomes = outcome_table(lines)
  base = outcomes.strategy_index(baseline)
  outcomes = outcomes.at_budgets(
      lambda b: bool(outcomes.complete()[base, outcomes.budgets.index(b)]))
  return Prepared(
      outcomes=outcomes,
      oracle=_on_questions(quantile_bins(pass1, n_bins), sampled, outcomes.questions),
      predicted=_on_questions(quantile_bins(mean_score, n_bins), sampled, outcomes.questions),
      baseline=baseline)


def analyze_sweep(lines: Iterable[dict], *, samples: int, n_bins: int = 5,
                  baseline: str = BASELINE, n_boot: int = 1000, seed: int = 0,
                  probe: int | None = None,
                  difficulty_lines: Iterable[dict] | None = None) -> dict:
  """Bins, per-strategy accuracy, and compute-optimal (oracle and predicted
  bins) against `baseline`, as a JSON-ready dict; with `probe` = P also the
  router that bins each prompt by its best-of-P samples' mean score
  (`ttc_jax.analysis.router`), its P generations counted. Difficulty as in
  `prepare`."""
  lines = list(lines)
  separate = difficulty_lines is not None
  p = prepare(lines, samples=samples, n_bins=n_bins, baseline=baseline,
              difficulty_lines=list(difficulty_lines) if separate else None)
  outcomes, oracle, predicted = p.outcomes, p.oracle, p.predicted
  router = None if probe is None else _router_summary(
      outcomes, lines, probe, baseline, oracle.bin_of, n_bins=n_bins, seed=seed, n_boot=n_boot)
  return {
      "questions": int(outcomes.questions.size), "budgets": list(outcomes.budgets),
      "samples": samples, "difficulty_from": "separate samples" if separate else "the sweep",
      "samples_also_swept": not separate and samples in outcomes.budgets,
      "baseline": baseline,
      "bins": {"oracle": _bins_summary(oracle), "predicted": _bins_summary(predicted),
               "agreement": float(np.mean(oracle.bin_of == predicted.bin_of))},
      "strategies": strategy_table(outcomes, oracle),
      "compute_optimal": {
          name: compute_optimal_summary(outcomes, bins, baseline, seed=seed, n_boot=n_boot)
          for name, bins in (("oracle", oracle), ("predicted", predicted))},
      "router": router,
  }
