"""The `revisions` section of a reproduction: accuracy per sequential:parallel ratio
and budget, the best ratio per difficulty bin, compute-optimal revisions, and
what chains do to answers (pass@1 per step, correct answers revised away).

Reads the same table as every other analysis (`Prepared`, built from search
and revision lines together: revision strategies are `revisions[<ratio>]:<selection>`)
plus the revision lines themselves for their per-chain extras.
"""

from __future__ import annotations

import numpy as np

from ttc_jax.analysis.findings import (longest_chains, is_revisions, revisions_name,
                                       sequential_share)
from ttc_jax.analysis.sweep import Prepared, compute_optimal_summary

SELECTION = "weighted:last"  # hierarchical best-of-N weighted, the paper's revision selection


def _ratio(strategy: str) -> str:
  return strategy[len("revisions["):strategy.index("]")]


def ratio_order(ratios) -> list[str]:
  """Most parallel first: par, then L:P by increasing L / P, then seq."""
  def key(r):
    if r in ("par", "seq"):
      return float("-inf") if r == "par" else float("inf")
    seq, par = (int(x) for x in r.split(":"))
    return seq / par
  return sorted(ratios, key=key)


def _accuracy(p: Prepared, name: str, questions: np.ndarray | None = None) -> list[float | None]:
  s = p.outcomes.strategy_index(name)
  done = p.outcomes.complete()[s]
  q = slice(None) if questions is None else questions
  return [float(p.outcomes.accuracy[s, j, q].mean()) if done[j] else None
          for j in range(len(p.outcomes.budgets))]


def best_ratio_by_bin(p: Prepared, ratios: list[str]) -> dict[str, dict[str, str | None]]:
  """{bin (1-based): {budget: the ratio with the best bin accuracy}}; ties go to
  the more parallel ratio; None where no ratio covers the budget."""
  out = {}
  for b in range(p.oracle.n_bins):
    members = p.oracle.members(b)
    per_budget = {}
    for j, budget in enumerate(p.outcomes.budgets):
      scored = [(acc[j], r) for r in ratios
                for acc in [_accuracy(p, revisions_name(r, SELECTION), members)]
                if acc[j] is not None]
      best = max(scored, key=lambda t: (t[0], -sequential_share(t[1], budget)), default=None)
      per_budget[str(budget)] = None if best is None else best[1]
    out[str(b + 1)] = per_budget
  return out


def _chain_statistics(lines: list[dict]) -> dict | None:
  chains = longest_chains(lines)
  if not chains:
    return None
  steps = np.array([l["revision"]["pass_at_step"] for l in chains])
  flipped = sum(l["revision"]["revised_to_incorrect"] for l in chains)
  base = sum(l["revision"]["correct_with_next"] for l in chains)
  return {"chain_length": int(chains[0]["revision"]["length"]), "lines": len(chains),
          "pass_at_step": steps.mean(axis=0).tolist(),
          "revised_to_incorrect": flipped, "correct_with_next": base,
          "revised_to_incorrect_share": flipped / base if base else None}


def revisions_section(p: Prepared, lines: list[dict], *, n_boot: int = 1000, seed: int = 0
                      ) -> dict | None:
  """The JSON-ready section, or None when the table holds no revision strategy."""
  names = [s for s in p.outcomes.strategies if is_revisions(s)]
  if not names:
    return None
  ratios = ratio_order({_ratio(s) for s in names})
  selections = sorted({s.split(":", 1)[1] for s in names})
  baseline = revisions_name("par", SELECTION)
  compute_optimal = None
  if baseline in names:
    outcomes = p.outcomes.select(is_revisions)
    base = outcomes.strategy_index(baseline)
    outcomes = outcomes.at_budgets(lambda b: bool(outcomes.complete()[base,
                                                                      outcomes.budgets.index(b)]))
    compute_optimal = {"baseline": baseline, "budgets": list(outcomes.budgets),
                       "oracle": compute_optimal_summary(outcomes, p.oracle, baseline, seed=seed,
                                                         n_boot=n_boot)}
  return {
      "budgets": list(p.outcomes.budgets),
      "selection": SELECTION,
      "ratio_order": ratios,  # most parallel first (JSON objects do not keep an order)
      "ratios": {r: {sel: _accuracy(p, revisions_name(r, sel)) for sel in selections
                     if revisions_name(r, sel) in names} for r in ratios},
      "best_ratio_by_bin": best_ratio_by_bin(
          p, [r for r in ratios if revisions_name(r, SELECTION) in names]),
      "compute_optimal": compute_optimal,
      "chains": _chain_statistics(lines),
  }
