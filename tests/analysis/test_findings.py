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


def test_revision_findings_not_measured_without_revisions():
  lines, difficulty = _lines(30, True)
  p = prepare(lines, samples=16, difficulty_lines=difficulty)
  found = F.revision_findings(p, [], n_boot=50)
  assert len(found) == 5 and {f.verdict for f in found} == {"not measured"}
  assert all(f.detail for f in found)  # each says why


def _revision_lines(q_count, sequential_better: bool, flip: bool, seed=1):
  """Revisions at budgets 1..16 (ratios par, 1:1, seq where they fit), hand-made:
  chains longer than one step are right (sequential_better) or wrong; par is
  right with a chance rising with the budget. A seq
  chain of L steps is right at every step, or (flip) alternates right / wrong."""
  rng = np.random.default_rng(seed)
  lines = []
  for q in range(q_count):
    for n in (1, 2, 4, 8, 16):
      for ratio, parallel in (("par", n), ("1:1", int(np.sqrt(n))), ("seq", 1)):
        if parallel * parallel != n and ratio == "1:1":
          continue
        length = n // parallel
        if ratio == "par" or n == 1:  # parallel sampling gains from budget
          correct = bool(rng.random() < 0.3 + 0.1 * np.log2(n))
        else:
          correct = sequential_better
        steps = [bool(correct) if not flip else t % 2 == 0 for t in range(length)]
        with_next = sum(steps[:-1])
        flipped = sum(a and not b for a, b in zip(steps, steps[1:]))
        lines.append({"uid": f"q{q}", "question_index": q,
                      "config": {"method": "revisions", "n": n, "m": None, "k": 0, "seed": 0,
                                 "ratio": ratio, "parallel": parallel, "length": length},
                      "selected": {"weighted:last": {"correct": correct},
                                   "majority": {"correct": correct}},
                      "budget": {"generations": n},
                      "revision": {"parallel": parallel, "length": length,
                                   "pass_at_step": [float(x) for x in steps],
                                   "revised_to_incorrect": flipped,
                                   "correct_with_next": with_next}})
  return lines


@pytest.mark.parametrize("sequential_better", [True, False])
def test_revision_findings_follow_the_data(sequential_better):
  lines, difficulty = _lines(40, True)
  revisions = _revision_lines(40, sequential_better, flip=False)
  p = prepare(lines + revisions, samples=16, difficulty_lines=difficulty)
  found = {f.id: f for f in F.revision_findings(p, revisions, n_boot=100)}
  seq = found["sequential_beats_parallel"]
  assert seq.verdict == ("reproduced" if sequential_better else "not reproduced")
  co = found["compute_optimal_revisions_efficiency"]
  assert co.verdict != "not measured"
  assert (co.measured >= 2) == sequential_better
  # no chain flips a right answer here (and all-wrong chains have none to flip)
  away = found["correct_revised_to_incorrect"]
  assert (away.measured, away.verdict) == ((0.0, "not reproduced") if sequential_better
                                           else (None, "not measured"))
  # nothing changes after step 4
  assert found["revisions_improve_past_window"].verdict == "not reproduced"
  assert found["best_ratio_by_difficulty"].verdict != "not measured"


def test_revised_to_incorrect_share():
  lines, difficulty = _lines(40, True)
  revisions = _revision_lines(40, True, flip=True)
  p = prepare(lines + revisions, samples=16, difficulty_lines=difficulty)
  found = {f.id: f for f in F.revision_findings(p, revisions, n_boot=100)}
  away = found["correct_revised_to_incorrect"]
  # chains of 16 alternate right / wrong: every right step with a next one flips
  assert away.measured == pytest.approx(1.0) and away.verdict == "reproduced"


@pytest.mark.parametrize("ratio, budget, share", [("seq", 16, 1.0), ("par", 16, 0.0),
                                                  ("1:1", 16, 0.5), ("4:1", 16, 0.75)])
def test_sequential_share(ratio, budget, share):
  assert F.sequential_share(ratio, budget) == pytest.approx(share)
