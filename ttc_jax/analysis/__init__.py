"""Analyses over sweep results: difficulty bins, compute-optimal selection, FLOPs matching."""

from ttc_jax.analysis.compute_optimal import (ComputeOptimal, bootstrap_efficiency,
                                              compute_optimal, efficiency, matching_budget)
from ttc_jax.analysis.difficulty import Bins, oracle_bins, pass_at_1, predicted_bins, quantile_bins
from ttc_jax.analysis.flops import (PAPER_R_VALUES, PAPER_SIZE_RATIO, closed_form_multiplier,
                                    matched_budget, matched_multiplier)
from ttc_jax.analysis.outcomes import (FAMILIES, Outcomes, outcome_table, read_lines,
                                       register_family, sample_statistics)
from ttc_jax.analysis.router import Routed, route

__all__ = ["Bins", "ComputeOptimal", "FAMILIES", "Outcomes", "PAPER_R_VALUES", "PAPER_SIZE_RATIO",
           "Routed", "bootstrap_efficiency", "closed_form_multiplier", "compute_optimal",
           "efficiency", "matched_budget", "matched_multiplier", "matching_budget", "oracle_bins",
           "outcome_table", "pass_at_1", "predicted_bins", "quantile_bins", "read_lines",
           "register_family", "route", "sample_statistics"]
