"""How good the models behind a search study are: every search finding depends on them.

From the difficulty samples (best-of-S lines of run_search): the policy's
pass@1 and coverage@S, overall and per difficulty bin, and the verifier's
within-question and pooled AUC on those same samples (final answers, `last`
score). The large model's greedy accuracy per bin sits beside them.
"""

from __future__ import annotations

import numpy as np

from ttc_jax.analysis.difficulty import Bins
from ttc_jax.verifier.metrics import pooled_auc, within_question_auc


def _per_question(lines: list[dict], samples: int, questions: np.ndarray,
                  aggregation: str) -> tuple[list[np.ndarray], list[np.ndarray]]:
  """(correct [S_q], scores [S_q]) per question of `questions`, every seed's samples."""
  correct: dict[int, list[bool]] = {}
  scores: dict[int, list[float]] = {}
  for line in lines:
    if line["config"]["method"] != "best_of_n" or int(line["config"]["n"]) != samples:
      continue
    q = int(line["question_index"])
    correct.setdefault(q, []).extend(bool(c) for c in line["correct"])
    scores.setdefault(q, []).extend(float(s) for s in line["scores"][aggregation])
  missing = [q for q in questions.tolist() if q not in correct]
  if missing:
    raise ValueError(f"{len(missing)} questions lack best-of-{samples} samples, e.g. {missing[:5]}")
  return ([np.asarray(correct[q]) for q in questions.tolist()],
          [np.asarray(scores[q]) for q in questions.tolist()])


def model_quality(lines: list[dict], samples: int, bins: Bins, questions: np.ndarray,
                  large_correct: np.ndarray | None = None, aggregation: str = "last") -> dict:
  """JSON-ready: the policy's pass@1 / coverage@S and the verifier's AUCs
  (overall, and pass@1 / coverage / large greedy per bin of `bins`, which
  are over `questions` in order)."""
  correct, scores = _per_question(lines, samples, questions, aggregation)
  pass1 = np.array([c.mean() for c in correct])
  covered = np.array([c.any() for c in correct], dtype=np.float64)
  within = within_question_auc(scores, correct)
  per_bin = []
  for b in range(bins.n_bins):
    members = bins.members(b)
    row = dict(bin=b + 1, questions=int(members.size), pass_at_1=float(pass1[members].mean()),
               coverage=float(covered[members].mean()))
    if large_correct is not None:
      row["large_greedy"] = float(np.asarray(large_correct, np.float64)[members].mean())
    per_bin.append(row)
  out = {
      "samples_per_question": samples, "questions": int(questions.size),
      "policy": {"pass_at_1": float(pass1.mean()), f"coverage_at_{samples}": float(covered.mean()),
                 "coverage": float(covered.mean())},
      "verifier": {"aggregation": aggregation,
                   "within_question_auc": within["auc"], "within_question_pairs": within["pairs"],
                   "pooled_auc": pooled_auc(np.concatenate(scores), np.concatenate(correct))},
      "per_bin": per_bin,
  }
  if large_correct is not None:
    out["large_greedy"] = float(np.mean(large_correct))
  return out
