"""The paper's findings measured on hand-made sweeps: verdicts follow the data, never a constant."""

import numpy as np
import pytest

from ttc_jax.analysis import findings as F
from ttc_jax.analysis.sweep import prepare


def _lines(q_count, beam_better: bool, seed=0):
  """best-of-N at 1..16 and beam (M=4) at 4..16 over q_count questions, plus
  best-of-16 difficulty samples. Beam is always right (beam_better) or always wrong."""
  rng = np.random.default_rng(seed)
  easy = rng.random(q_count)  # per-question chance of a right sample
  lines, difficulty = [], []
  for q in range(q_count):
    for n in (1, 2, 4, 8, 16):
      bon = bool(rng.random() < easy[q])
      def line(method, m, correct):
        return {"uid": f"q{q}", "question_index": q,
                "config": {"method": method, "n": n, "m": m, "k": 0, "seed": 0},
                "selected": {"weighted:last": {"correct": correct},
                             "weighted:min": {"correct": correct},
                             "weighted:prod": {"correct": correct}},
                "budget": {"generations": n}}
      lines.append(line("best_of_n", None, bon))
      if n >= 4:
        lines.append(line("beam", 4, beam_better))
    samples = rng.random(16) < easy[q]
    difficulty.append({"question_index": q, "config": {"method": "best_of_n", "n": 16},
                       "correct": samples.tolist(), "scores": {"last": samples * 0.5 + 0.1}})
  return lines, difficulty


@pytest.mark.parametrize("beam_better", [True, False])
def test_beam_findings_follow_the_data(beam_better):
  lines, difficulty = _lines(60, beam_better)
  p = prepare(lines, samples=16, difficulty_lines=difficulty)
  found = {f.id: f for f in F.search_findings(p, n_boot=200)}
  low = found["beam_beats_best_of_n_at_low_budgets"]
  assert (low.verdict == "reproduced") == beam_better
  assert (low.verdict == "not reproduced") == (not beam_better)
  assert low.interval[0] <= low.measured <= low.interval[1]
  assert found["lookahead_underperforms"].verdict == "not measured"
  # min, prod and last pick the same answers here: last does not beat them.
  assert found["last_aggregation_beats_min_and_prod"].verdict == "not reproduced"


def test_verdict_rules():
  assert F.verdict_above(0.1, (0.01, 0.2)) == "reproduced"
  assert F.verdict_above(0.1, (-0.01, 0.2)) == "partly"
  assert F.verdict_above(-0.1, (-0.2, 0.01)) == "not reproduced"
  assert F.verdict_below(-0.1, (-0.2, -0.01)) == "reproduced"
  assert F.verdict_below(0.05, (-0.2, 0.1), threshold=0.1) == "partly"


def test_flops_matched_finding_reads_signs_per_r():
  def row(r, small, large):
    return {"accounting": "v1", "r": r, "matched_budget": 4,
            "bins": [{"small": s, "large": l} for s, l in zip(small, large)]}
  wins_easy = [row(0.16, [0.9, 0.8, 0.5], [0.5, 0.4, 0.3]), row(22, [0.6, 0.5, 0.1], [0.5, 0.4, 0.3])]
  assert F.flops_matched_finding(wins_easy).verdict == "reproduced"
  loses = [row(0.16, [0.1, 0.1, 0.1], [0.5, 0.4, 0.3]), row(22, [0.6, 0.5, 0.4], [0.5, 0.4, 0.3])]
  assert F.flops_matched_finding(loses).verdict == "not reproduced"


def test_revision_findings_are_marked_not_measured():
  assert {f.verdict for f in F.revision_findings()} == {"not measured"}


def test_efficiency_needs_a_baseline_that_gains_from_budget():
  """A flat best-of-N curve is "matched" at the smallest budget by anything: not a saving."""
  lines, difficulty = _lines(40, beam_better=False)
  flat = [dict(l, selected={k: {"correct": False} for k in l["selected"]}) for l in lines]
  p = prepare(flat, samples=16, difficulty_lines=difficulty)
  found = F.efficiency_finding(p, "oracle", n_boot=50)
  assert found.verdict == "not measured" and "gains nothing" in found.detail
  p = prepare(lines, samples=16, difficulty_lines=difficulty)
  assert F.efficiency_finding(p, "oracle", n_boot=50).measured is not None
