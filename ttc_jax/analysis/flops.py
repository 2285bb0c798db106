"""FLOPs matching: how much test-time compute a small model gets for a larger model's FLOPs.

PAPER.md, "FLOPs-matched comparison": pretraining costs X = 6 N D_pretrain
FLOPs, inference Y = 2 N D_inference (v1) or 4 N D_inference (ICLR: the
verifier counted too). A small model of N params and a large one of M N,
pretrained on the same D_pretrain tokens, with R = D_inference / D_pretrain:
the small model may spend K times the large model's inference tokens where

    X_small + K Y_small = X_large + Y_large.

`matched_multiplier` solves that equation from the two cost functions;
`closed_form_multiplier` is the paper's expression (M + 3 (M - 1) / R for
v1, M + (3/2) (M - 1) / R for ICLR), tested equal. The large model answers
greedily (one generation), so K is the small model's budget in generations.
"""

from __future__ import annotations

import numpy as np

PRETRAIN_FLOPS_PER_PARAM_TOKEN = 6.0
INFERENCE_FLOPS_PER_PARAM_TOKEN = {"v1": 2.0, "iclr": 4.0}
PAPER_R_VALUES = {"v1": (0.16, 0.79, 22.0), "iclr": (0.08, 0.40, 11.0)}
PAPER_SIZE_RATIO = 14.0


def _check_accounting(accounting: str) -> float:
  if accounting not in INFERENCE_FLOPS_PER_PARAM_TOKEN:
    raise ValueError(f"unknown FLOPs accounting {accounting!r}; valid: "
                     f"{sorted(INFERENCE_FLOPS_PER_PARAM_TOKEN)}")
  return INFERENCE_FLOPS_PER_PARAM_TOKEN[accounting]


def pretrain_flops(n_params: float, pretrain_tokens: float) -> float:
  """X = 6 N D_pretrain."""
  return PRETRAIN_FLOPS_PER_PARAM_TOKEN * n_params * pretrain_tokens


def inference_flops(n_params: float, inference_tokens: float, accounting: str = "v1") -> float:
  """Y = 2 N D_inference (v1) or 4 N D_inference (ICLR)."""
  return _check_accounting(accounting) * n_params * inference_tokens


def matched_multiplier(size_ratio: float, r: float, accounting: str = "v1") -> float:
  """K such that the small model's pretraining plus K times the large model's
  inference tokens costs what the large model's pretraining plus inference
  does (per unit of small-model params and pretraining tokens)."""
  _check_accounting(accounting)
  if size_ratio < 1 or r <= 0:
    raise ValueError(f"need size_ratio >= 1 and R > 0, got {size_ratio}, {r}")
  large = pretrain_flops(size_ratio, 1.0) + inference_flops(size_ratio, r, accounting)
  return (large - pretrain_flops(1.0, 1.0)) / inference_flops(1.0, r, accounting)


def closed_form_multiplier(size_ratio: float, r: float, accounting: str = "v1") -> float:
  """The paper's expression, written as PAPER.md states it:
  M + 3 (D_pre / D_inf) (M - 1) (v1) or M + (3/2) (D_pre / D_inf) (M - 1) (ICLR)."""
  _check_accounting(accounting)
  coefficient = {"v1": 3.0, "iclr": 1.5}[accounting]
  return size_ratio + coefficient * (1.0 / r) * (size_ratio - 1.0)


def matched_budget(multiplier: float, budgets: list[int] | tuple[int, ...]) -> int | None:
  """The largest swept budget (generations) within the matched compute, or
  None when even the smallest exceeds it."""
  within = [b for b in budgets if b <= multiplier]
  return max(within) if within else None


def flops_matched_table(budgets, small_per_question, bin_of, n_bins: int, large_correct,
                        *, size_ratio: float, accounting: str = "v1",
                        r_values: tuple[float, ...] | None = None) -> list[dict]:
  """Per R: the small model's matched multiplier and swept budget, and per
  difficulty bin its accuracy there (small_per_question [B, Q], e.g.
  compute-optimal) against the large model's greedy accuracy (large_correct
  [Q]), with the relative improvement (small - large) / large (None when
  the large model scores 0 in the bin). R values default to the paper's
  for the accounting."""
  small_per_question = np.asarray(small_per_question, dtype=np.float64)
  large_correct = np.asarray(large_correct, dtype=np.float64)
  bin_of = np.asarray(bin_of)
  rows = []
  for r in (PAPER_R_VALUES[accounting] if r_values is None else r_values):
    k = matched_multiplier(size_ratio, r, accounting)
    budget = matched_budget(k, tuple(budgets))
    per_bin = []
    for b in range(n_bins):
      members = bin_of == b
      large = float(large_correct[members].mean())
      small = None if budget is None else float(
          small_per_question[list(budgets).index(budget), members].mean())
      per_bin.append(dict(bin=b, small=small, large=large,
                          relative_improvement=None if small is None or large == 0 else
                          (small - large) / large))
    rows.append(dict(accounting=accounting, r=r, multiplier=k, matched_budget=budget,
                     bins=per_bin))
  return rows
