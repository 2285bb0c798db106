"""The paper's headline findings, measured on a sweep, each with an interval and a verdict.

Each finding is a difference of per-question accuracies (so questions are
the resampling unit) with a 95% percentile bootstrap interval, resampled
within oracle difficulty bins. Verdict rules are fixed here, before any
result is seen, and stated in each finding's `rule`:
  reproduced      the interval lies on the paper's side of the threshold;
  partly          the point estimate does, the interval does not;
  not reproduced  the point estimate does not;
  not measured    the sweep lacks the strategies (the reason is given).
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

from ttc_jax.analysis.compute_optimal import (bootstrap_efficiency, compute_optimal, efficiency,
                                              stratified_resamples)
from ttc_jax.analysis.sweep import Prepared

REPRODUCED, PARTLY, NOT_REPRODUCED, NOT_MEASURED = (
    "reproduced", "partly", "not reproduced", "not measured")
FIXED_M = 4  # the paper's fixed beam width (beside M = sqrt N)
HARDEST_GAIN = 0.10  # "nothing helps": the best search gains < 10 points over one sample
EFFICIENCY_FLOOR = 2.0  # "~4x": at least half of it
LEVEL = 0.95


@dataclasses.dataclass(frozen=True)
class Finding:
  id: str
  claim: str
  paper: str
  measured: float | None
  interval: tuple[float, float] | None
  verdict: str
  rule: str
  detail: str = ""

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)


def bootstrap_mean(values: np.ndarray, strata: np.ndarray, *, n_boot: int, seed: int
                   ) -> tuple[float, tuple[float, float]]:
  """(mean of per-question `values`, its percentile interval)."""
  means = np.array([values[pick].mean() for pick in stratified_resamples(strata, n_boot, seed)])
  low, high = np.quantile(means, [(1 - LEVEL) / 2, (1 + LEVEL) / 2])
  return float(values.mean()), (float(low), float(high))


def verdict_above(point: float, interval: tuple[float, float], threshold: float = 0.0) -> str:
  """The paper says the quantity exceeds `threshold`."""
  if interval[0] > threshold:
    return REPRODUCED
  return PARTLY if point > threshold else NOT_REPRODUCED


def verdict_below(point: float, interval: tuple[float, float], threshold: float = 0.0) -> str:
  """The paper says the quantity is below `threshold`."""
  if interval[1] < threshold:
    return REPRODUCED
  return PARTLY if point < threshold else NOT_REPRODUCED


def _complete_budgets(p: Prepared, *names: str) -> list[int]:
  """Budget positions where every named strategy covers every question."""
  done = p.outcomes.complete()
  rows = [p.outcomes.strategy_index(n) for n in names]
  return [j for j in range(len(p.outcomes.budgets)) if all(done[r, j] for r in rows)]


def _acc(p: Prepared, name: str) -> np.ndarray:
  return p.outcomes.accuracy[p.outcomes.strategy_index(name)]  # [B, Q]


def _missing(p: Prepared, *names: str) -> str | None:
  absent = [n for n in names if n not in p.outcomes.strategies]
  return f"the sweep lacks {', '.join(absent)}" if absent else None


def _not_measured(id: str, claim: str, paper: str, why: str) -> Finding:
  return Finding(id, claim, paper, None, None, NOT_MEASURED, "", why)


def _difference_finding(p: Prepared, id: str, claim: str, paper: str, a: str, b: str,
                        pick_budgets: Callable[[list[int]], list[int]], paper_side: str,
                        *, questions: np.ndarray | None = None, n_boot: int, seed: int
                        ) -> Finding:
  """Mean over the picked common budgets of accuracy(a) - accuracy(b) per question."""
  why = _missing(p, a, b)
  common = [] if why else _complete_budgets(p, a, b)
  if not why and not common:
    why = f"{a} and {b} share no complete budget"
  if why:
    return _not_measured(id, claim, paper, why)
  cols = pick_budgets(common)
  diff = (_acc(p, a)[cols] - _acc(p, b)[cols]).mean(axis=0)
  strata = p.oracle.bin_of
  if questions is not None:
    diff, strata = diff[questions], strata[questions]
  point, interval = bootstrap_mean(diff, strata, n_boot=n_boot, seed=seed)
  judge = verdict_above if paper_side == "above" else verdict_below
  budgets = [p.outcomes.budgets[j] for j in cols]
  return Finding(id, claim, paper, point, interval, judge(point, interval),
                 f"mean accuracy difference {a} - {b} {'>' if paper_side == 'above' else '<'} 0",
                 f"budgets {budgets}, {diff.size} questions")


def _lower_half(cols: list[int]) -> list[int]:
  return cols[:max(1, (len(cols) + 1) // 2)]


def beam_name(m: int = FIXED_M) -> str:
  """Beam search at a fixed width M with best-of-N weighted (`last`) at the end."""
  return f"beam[m={m}]:weighted:last"


def search_findings(p: Prepared, *, m: int = FIXED_M, n_boot: int = 1000, seed: int = 0
                    ) -> list[Finding]:
  """Beam (fixed width m) vs best-of-N (overall and by bin), lookahead at the
  same m, aggregation."""
  base, beam = p.baseline, beam_name(m)
  last_bin = p.oracle.n_bins - 1
  middle = np.flatnonzero((p.oracle.bin_of > 0) & (p.oracle.bin_of < last_bin))
  kw = dict(n_boot=n_boot, seed=seed)
  out = [
      _difference_finding(p, "beam_beats_best_of_n_at_low_budgets",
                          "Beam search beats best-of-N at low budgets",
                          "beam (M=4) above best-of-N weighted for N <= 16 (Fig. 3 left)",
                          beam, base, _lower_half, "above", **kw),
      _difference_finding(p, "beam_falls_behind_at_high_budgets",
                          "Beam search falls behind best-of-N at high budgets",
                          "best-of-N weighted catches up with or passes beam at N = 256",
                          beam, base, lambda cols: cols[-1:], "below", **kw),
  ]
  lookaheads = sorted(s for s in p.outcomes.strategies
                      if s.startswith(f"lookahead[m={m},") and s.endswith(":weighted:last"))
  claim, paper = "Lookahead search generally underperforms beam search at equal cost", \
      "lookahead (k = 1, 3; cost N (k + 1)) below beam at every budget (Fig. 3 left)"
  if lookaheads:
    parts = [_difference_finding(p, "lookahead_underperforms", claim, paper, s, beam,
                                 lambda cols: cols, "below", **kw) for s in lookaheads]
    measured = [f for f in parts if f.measured is not None]
    if measured:  # the k with the best showing stands for lookahead
      best = max(measured, key=lambda f: f.measured)
      out.append(dataclasses.replace(best, detail=f"{best.detail}; strongest lookahead of "
                                     f"{[s.split(':')[0] for s in lookaheads]}"))
    else:
      out.append(parts[0])
  else:
    out.append(_not_measured("lookahead_underperforms", claim, paper, "no lookahead in the sweep"))
  easy = np.flatnonzero(p.oracle.bin_of == 0)
  out += [
      _easy_bin_degradation(p, easy, beam, **kw),
      _difference_finding(p, "beam_wins_on_medium_and_hard_bins",
                          "On medium and hard bins beam search beats best-of-N",
                          "beam above best-of-N weighted on bins 2-4 (Fig. 3 right)",
                          beam, base, lambda cols: cols, "above", questions=middle, **kw),
      _hardest_bin_gain(p, **kw),
      _aggregation_finding(p, **kw),
  ]
  return out


def _easy_bin_degradation(p: Prepared, easy: np.ndarray, beam_strategy: str, *, n_boot: int,
                          seed: int) -> Finding:
  id, claim = "beam_degrades_with_budget_on_easy_bin", \
      "On the easiest bin beam search degrades as the budget grows"
  paper = "bin 1: beam's accuracy falls with N while best-of-N's does not (Fig. 3 right)"
  why = _missing(p, beam_strategy)
  cols = [] if why else _complete_budgets(p, beam_strategy)
  if not why and len(cols) < 2:
    why = "beam ran at fewer than two budgets"
  if why:
    return _not_measured(id, claim, paper, why)
  beam = _acc(p, beam_strategy)
  change = beam[cols[-1], easy] - beam[cols[0], easy]
  point, interval = bootstrap_mean(change, p.oracle.bin_of[easy], n_boot=n_boot, seed=seed)
  base = _acc(p, p.baseline)
  base_change = float((base[cols[-1], easy] - base[cols[0], easy]).mean())
  return Finding(id, claim, paper, point, interval, verdict_below(point, interval),
                 "beam accuracy at the largest minus the smallest budget, bin 1, < 0",
                 f"budgets {p.outcomes.budgets[cols[0]]} -> {p.outcomes.budgets[cols[-1]]}, "
                 f"{easy.size} questions; best-of-N weighted changed {base_change:+.3f}")


def _hardest_bin_gain(p: Prepared, *, n_boot: int, seed: int) -> Finding:
  """Compute-optimal (cross-validated, so not an ex-post best) at the largest
  budget against the baseline at the smallest, on the hardest bin."""
  hard = np.flatnonzero(p.oracle.bin_of == p.oracle.n_bins - 1)
  co = compute_optimal(p.outcomes, p.oracle, seed=seed).per_question
  gain = co[-1, hard] - _acc(p, p.baseline)[0, hard]
  point, interval = bootstrap_mean(gain, p.oracle.bin_of[hard], n_boot=n_boot, seed=seed)
  return Finding("nothing_helps_on_hardest_bin", "On the hardest bin no search method helps",
                 "bin 5: every method stays near zero accuracy (Fig. 3 right)", point, interval,
                 verdict_below(point, interval, HARDEST_GAIN),
                 f"compute-optimal at the largest budget minus one sample's accuracy, bin "
                 f"{p.oracle.n_bins}, < {HARDEST_GAIN}",
                 f"budgets {p.outcomes.budgets[0]} -> {p.outcomes.budgets[-1]}, {hard.size} "
                 f"questions")


def _aggregation_finding(p: Prepared, *, n_boot: int, seed: int) -> Finding:
  id, claim = "last_aggregation_beats_min_and_prod", \
      "The PRM's last-step score beats min and prod aggregation"
  paper = "best-of-N weighted with `last` above `min` and `prod` (Fig. 2, soft MC labels)"
  others = [f"best_of_n:weighted:{agg}" for agg in ("min", "prod")]
  parts = [_difference_finding(p, id, claim, paper, "best_of_n:weighted:last", other,
                               lambda cols: cols, "above", n_boot=n_boot, seed=seed)
           for other in others]
  if any(f.verdict == NOT_MEASURED for f in parts):
    return next(f for f in parts if f.verdict == NOT_MEASURED)
  worst = min(parts, key=lambda f: f.interval[0])  # last must beat both
  order = [REPRODUCED, PARTLY, NOT_REPRODUCED]
  verdict = max((f.verdict for f in parts), key=order.index)
  return dataclasses.replace(worst, verdict=verdict,
                             rule="last - min and last - prod (mean over budgets) both > 0",
                             detail="; ".join(f"vs {o.split(':')[-1]}: {f.measured:+.3f} "
                                              f"[{f.interval[0]:+.3f}, {f.interval[1]:+.3f}]"
                                              for o, f in zip(others, parts)))


def efficiency_finding(p: Prepared, bins_name: str, *, n_boot: int = 1000, seed: int = 0
                       ) -> Finding:
  """Compute-optimal search's saving at the largest budget: the baseline's budget
  over the smallest budget where compute-optimal reaches its accuracy."""
  claim = (f"Compute-optimal search ({bins_name} difficulty bins) matches best-of-N with about "
           "4x less compute")
  paper = "~4x (16 vs 64 generations)" + ("" if bins_name == "oracle" else
                                          "; predicted bins nearly as good as oracle")
  return _efficiency(p, bins_name, p.baseline, None, f"compute_optimal_efficiency_{bins_name}_bins",
                     claim, paper, n_boot=n_boot, seed=seed)


def _efficiency(p: Prepared, bins_name: str, baseline: str, keep: Callable[[str], bool] | None,
                id: str, claim: str, paper: str, *, n_boot: int, seed: int) -> Finding:
  """Compute-optimal selection among the strategies `keep` passes (None: all)
  against `baseline`: the budget ratio at the largest budget."""
  bins = p.oracle if bins_name == "oracle" else p.predicted
  why = _missing(p, baseline)
  outcomes = p.outcomes if keep is None or why else p.outcomes.select(keep)
  budgets = [b for j, b in enumerate(p.outcomes.budgets)
             if not why and p.outcomes.complete()[p.outcomes.strategy_index(baseline), j]]
  if not why and len(budgets) < 2:
    why = "fewer than two budgets: no saving to measure"
  if why:
    return _not_measured(id, claim, paper, why)
  outcomes = outcomes.at_budgets(lambda b: b in budgets)
  base = p.outcomes.at_budgets(lambda b: b in budgets).accuracy[
      p.outcomes.strategy_index(baseline)]
  if base[-1].mean() <= base[0].mean():  # any curve "matches" it at the smallest budget
    return _not_measured(id, claim, paper, f"{baseline} gains nothing from budget "
                         f"({base[0].mean():.3f} at {budgets[0]}, {base[-1].mean():.3f} at "
                         f"{budgets[-1]}): no saving to measure")
  co = compute_optimal(outcomes, bins, seed=seed)
  point = efficiency(budgets, base.mean(axis=1), co.accuracy)[-1]
  band = bootstrap_efficiency(budgets, base, co.per_question, p.oracle.bin_of, n_boot=n_boot,
                              seed=seed)[-1]
  ratio = point["ratio"] or 0.0
  interval = (band["ratio_low"], band["ratio_high"])
  return Finding(id, claim, paper, ratio, interval,
                 verdict_above(ratio, interval, EFFICIENCY_FLOOR - 1e-9),
                 f"budget ratio at the largest budget >= {EFFICIENCY_FLOOR:g}",
                 f"{baseline} at {point['budget']} ({point['baseline_accuracy']:.3f}) "
                 f"reached by compute-optimal at {point['matched_budget']}; resamples never "
                 f"reaching it: {band['never_reached']:.0%}")


def flops_matched_finding(table: list[dict]) -> Finding:
  """Test-time compute wins on easy bins at the smallest R, pretraining on the
  hardest bin at the largest R (v1 accounting rows of `flops_matched_table`)."""
  id, claim = "flops_matched_outcome", ("At matched FLOPs, test-time compute beats a ~14x larger "
                                        "model on easy/medium bins at small R; pretraining wins "
                                        "on the hardest bins and at large R")
  paper = "Fig. 1 right / Fig. 9: easy and medium bins positive at R << 1, hardest bins negative"
  rows = sorted((r for r in table if r["accounting"] == "v1"), key=lambda r: r["r"])
  if not rows:
    return _not_measured(id, claim, paper, "no v1 rows")
  small_r, large_r = rows[0], rows[-1]

  def gap(row, bins):
    cells = [row["bins"][b] for b in bins]
    if any(c["small"] is None for c in cells):
      return -float(np.mean([c["large"] for c in cells]))  # no matched budget: small gets 0
    return float(np.mean([c["small"] - c["large"] for c in cells]))

  n_bins = len(small_r["bins"])
  easy = gap(small_r, range(min(2, n_bins)))
  hard = gap(large_r, [n_bins - 1])
  holds = [easy > 0, hard < 0]
  verdict = REPRODUCED if all(holds) else PARTLY if any(holds) else NOT_REPRODUCED
  return Finding(id, claim, paper, easy, None, verdict,
                 "mean accuracy gap small - large on bins 1-2 at the smallest R > 0 and on the "
                 "hardest bin at the largest R < 0 (both: reproduced; one: partly)",
                 f"R={small_r['r']:g} (budget {small_r['matched_budget']}): bins 1-2 gap "
                 f"{easy:+.3f}; R={large_r['r']:g} (budget {large_r['matched_budget']}): "
                 f"hardest-bin gap {hard:+.3f}")


# ----------------------------------------------------------------------------- revisions

REVISED_AWAY_FLOOR = 0.10  # "about 38% revised into incorrect": a substantial share, > 10%


def revisions_name(ratio: str, selection: str = "weighted:last") -> str:
  return f"revisions[{ratio}]:{selection}"


def is_revisions(strategy: str) -> bool:
  return strategy.startswith("revisions[")


def _ratio_of(strategy: str) -> str:
  return strategy[len("revisions["):strategy.index("]")]


def sequential_share(ratio: str, budget: int) -> float:
  """log L / log N of a sequential:parallel spec at budget N: 0 all parallel, 1 all sequential."""
  from math import isqrt, log2
  if budget <= 1:
    return 0.5  # one generation is both
  if ratio in ("seq", "par"):
    return 1.0 if ratio == "seq" else 0.0
  seq, par = (int(x) for x in ratio.split(":"))
  chains = isqrt(budget * par // seq)
  return log2(budget // chains) / log2(budget)


def revision_findings(p: Prepared, lines: list[dict], *, n_boot: int = 1000, seed: int = 0
                      ) -> list[Finding]:
  """The revision findings of PAPER.md, from a table holding revision strategies
  (`revisions[<ratio>]:<selection>`) and the revision sweep's lines (their
  per-chain extras). The baseline is the revision model's own all-parallel
  best-of-N (`revisions[par]`): the comparison isolates the sequential lever."""
  kw = dict(n_boot=n_boot, seed=seed)
  par, seq = revisions_name("par"), revisions_name("seq")
  return [
      _efficiency(p, "oracle", par, is_revisions, "compute_optimal_revisions_efficiency",
                  "Compute-optimal revisions (oracle bins) match parallel best-of-N with about "
                  "4x less compute", "~4x (64 vs 256 generations)", **kw),
      _difference_finding(p, "sequential_beats_parallel", "Sequential revisions slightly beat "
                          "parallel sampling at equal budget", "sequential above parallel",
                          seq, par, lambda cols: [j for j in cols if p.outcomes.budgets[j] > 1],
                          "above", **kw),
      _best_ratio_by_difficulty(p),
      _revised_away(lines, p, **kw),
      _keeps_improving(lines, p, **kw),
  ]


def _best_ratio_by_difficulty(p: Prepared) -> Finding:
  """At the largest budget with several ratios: the best ratio's sequential share
  in the easiest bin minus the hardest bin's."""
  id = "best_ratio_by_difficulty"
  claim = ("The best sequential:parallel ratio is more sequential on easy prompts than on the "
           "hardest ones")
  paper = "easy: mostly sequential; hard: a mix of sequential and parallel"
  ratios = sorted({_ratio_of(s) for s in p.outcomes.strategies if is_revisions(s)})
  names = [revisions_name(r) for r in ratios if revisions_name(r) in p.outcomes.strategies]
  done = p.outcomes.complete()
  cols = [j for j in range(len(p.outcomes.budgets))
          if sum(done[p.outcomes.strategy_index(n), j] for n in names) >= 2
          and p.outcomes.budgets[j] > 1]
  if not cols:
    return _not_measured(id, claim, paper, "no budget with two or more revision ratios")
  j = cols[-1]
  budget = p.outcomes.budgets[j]
  here = [n for n in names if done[p.outcomes.strategy_index(n), j]]
  share, ties = {}, 0
  for b in (0, p.oracle.n_bins - 1):
    members = p.oracle.members(b)
    accuracy = [_acc(p, n)[j, members].mean() for n in here]
    ties += max(accuracy) == min(accuracy)
    # ties: the more parallel ratio (the conservative side for this claim)
    best = max(range(len(here)), key=lambda i: (accuracy[i],
                                                -sequential_share(_ratio_of(here[i]), budget)))
    share[b] = (here[best], sequential_share(_ratio_of(here[best]), budget))
  if ties == 2:
    return _not_measured(id, claim, paper, f"budget {budget}: every ratio ties in both bins")
  gap = share[0][1] - share[p.oracle.n_bins - 1][1]
  verdict = REPRODUCED if gap > 0 else PARTLY if gap == 0 else NOT_REPRODUCED
  return Finding(id, claim, paper, gap, None, verdict,
                 "sequential share log L / log N of the best ratio: easiest bin - hardest bin "
                 "> 0 (equal: partly)",
                 f"budget {budget}: easiest bin best {share[0][0]}, hardest bin best "
                 f"{share[p.oracle.n_bins - 1][0]}")


def longest_chains(lines: list[dict]) -> list[dict]:
  """The lines of the longest chains swept (all-sequential at the largest budget)."""
  chains = [l for l in lines if l["config"]["method"] == "revisions"]
  if not chains:
    return []
  longest = max(l["revision"]["length"] for l in chains)
  return [l for l in chains if l["revision"]["length"] == longest]


def _per_question(lines: list[dict], p: Prepared, value) -> tuple[np.ndarray, np.ndarray]:
  """(per-question mean of value(line) over seeds, oracle bin) for questions in the table."""
  position = {q: i for i, q in enumerate(p.outcomes.questions.tolist())}
  sums: dict[int, list[float]] = {}
  for line in lines:
    v = value(line)
    if v is not None and line["question_index"] in position:
      sums.setdefault(line["question_index"], []).append(v)
  qs = sorted(sums)
  return (np.array([np.mean(sums[q]) for q in qs]),
          p.oracle.bin_of[[position[q] for q in qs]])


def _revised_away(lines: list[dict], p: Prepared, *, n_boot: int, seed: int) -> Finding:
  id = "correct_revised_to_incorrect"
  claim = "A substantial share of correct answers is revised into incorrect ones"
  paper = "about 38%, so answers must be selected, not just the last one taken"
  chains = longest_chains(lines)
  if not chains or chains[0]["revision"]["length"] < 2:
    return _not_measured(id, claim, paper, "no revision chain of two or more steps")
  flipped, base = _per_question(chains, p, lambda l: l["revision"]["revised_to_incorrect"])
  with_next, _ = _per_question(chains, p, lambda l: l["revision"]["correct_with_next"])
  total = with_next.sum()
  if total == 0:
    return _not_measured(id, claim, paper, "no correct answer had a next revision")
  # a ratio of sums: resample questions, recompute
  ratios = [flipped[pick].sum() / max(with_next[pick].sum(), 1e-12)
            for pick in stratified_resamples(base, n_boot, seed)]
  low, high = np.quantile(ratios, [(1 - LEVEL) / 2, (1 + LEVEL) / 2])
  point = float(flipped.sum() / total)
  return Finding(id, claim, paper, point, (float(low), float(high)),
                 verdict_above(point, (float(low), float(high)), REVISED_AWAY_FLOOR),
                 f"share of correct attempts whose next revision is incorrect > "
                 f"{REVISED_AWAY_FLOOR:g}",
                 f"chains of {chains[0]['revision']['length']}, {flipped.size} questions")


def _keeps_improving(lines: list[dict], p: Prepared, *, n_boot: int, seed: int) -> Finding:
  from ttc_jax.revision.format import WINDOW
  id = "revisions_improve_past_window"
  claim = (f"pass@1 keeps improving with revision steps beyond the {WINDOW} attempts the "
           "context holds")
  paper = "pass@1 rises with each revision step, past step 4"
  chains = longest_chains(lines)
  if not chains or chains[0]["revision"]["length"] <= WINDOW:
    return _not_measured(id, claim, paper, f"no chain longer than {WINDOW} steps")
  gain, base = _per_question(chains, p, lambda l: float(
      np.mean(l["revision"]["pass_at_step"][WINDOW:]) - l["revision"]["pass_at_step"][WINDOW - 1]))
  point, interval = bootstrap_mean(gain, base, n_boot=n_boot, seed=seed)
  return Finding(id, claim, paper, point, interval, verdict_above(point, interval),
                 f"mean pass@1 of steps > {WINDOW} - pass@1 of step {WINDOW} > 0",
                 f"chains of {chains[0]['revision']['length']}, {gain.size} questions")
