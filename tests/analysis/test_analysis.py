"""Difficulty bins, the sweep table, compute-optimal selection and FLOPs matching (numpy only)."""

import json
import math

import numpy as np
import pytest

from ttc_jax.analysis import (FAMILIES, bootstrap_efficiency, closed_form_multiplier,
                              compute_optimal, efficiency, matched_budget, matched_multiplier,
                              oracle_bins, outcome_table, predicted_bins, quantile_bins,
                              read_lines, register_family)
from ttc_jax.analysis.compute_optimal import two_fold_split
from ttc_jax.analysis.flops import PAPER_R_VALUES, inference_flops, pretrain_flops


# ----------------------------------------------------------------------------- difficulty

@pytest.mark.parametrize("q", [5, 7, 23, 100])
def test_quantile_bins_are_equal_count_and_ordered(q):
  value = np.random.default_rng(q).integers(0, 4, q) / 4.0  # many ties
  bins = quantile_bins(value, 5)
  assert max(bins.sizes) - min(bins.sizes) <= 1 and sum(bins.sizes) == q
  for b in range(4):  # every value of bin b is >= every value of the harder bin b + 1
    assert value[bins.members(b)].min() >= value[bins.members(b + 1)].max()
  # ties are broken by question order: among equal values, earlier questions get easier bins
  for v in np.unique(value):
    same = np.flatnonzero(value == v)
    assert np.all(np.diff(bins.bin_of[same]) >= 0)
  np.testing.assert_array_equal(bins.bin_of, quantile_bins(value, 5).bin_of)


def test_oracle_and_predicted_bins():
  correct = np.array([[1, 1, 1, 1], [0, 0, 0, 0], [1, 0, 1, 0], [1, 1, 1, 0], [0, 0, 0, 1]])
  bins = oracle_bins(correct, n_bins=5)
  np.testing.assert_array_equal(bins.bin_of, [0, 4, 2, 1, 3])  # pass@1 1, 0, .5, .75, .25
  scores = np.array([[0.9, 0.7], [0.1, 0.2], [0.5, 0.5], [0.3, 0.3], [0.8, 0.8]])
  np.testing.assert_array_equal(predicted_bins(scores, n_bins=5).bin_of, [0, 4, 2, 3, 1])
  assert bins.edges()[0] == (1.0, 1.0)


@pytest.mark.parametrize("value,n_bins,match", [
    (np.zeros(3), 5, "n_bins"), (np.zeros((2, 2)), 2, "1-D"), (np.array([0.5, np.nan]), 1, "finite")])
def test_bad_bins(value, n_bins, match):
  with pytest.raises(ValueError, match=match):
    quantile_bins(value, n_bins)


# ----------------------------------------------------------------------------- FLOPs matching

@pytest.mark.parametrize("accounting", ["v1", "iclr"])
def test_matched_multiplier_agrees_with_the_paper_closed_form(accounting):
  for size_ratio in (1.0, 2.0, 14.0, 30.0):
    for r in PAPER_R_VALUES[accounting] + (0.01, 1.0, 100.0):
      assert matched_multiplier(size_ratio, r, accounting) == pytest.approx(
          closed_form_multiplier(size_ratio, r, accounting), rel=1e-12)


@pytest.mark.parametrize("accounting", ["v1", "iclr"])
def test_matched_multiplier_equalises_total_flops(accounting):
  """Any N and D_pretrain: the small model's pretraining + K x the large model's
  inference tokens costs exactly the large model's pretraining + inference."""
  n, d_pre, size_ratio = 3.7e6, 1.9e9, 14.0
  for r in PAPER_R_VALUES[accounting]:
    k = matched_multiplier(size_ratio, r, accounting)
    small = pretrain_flops(n, d_pre) + inference_flops(n, k * r * d_pre, accounting)
    large = pretrain_flops(size_ratio * n, d_pre) + inference_flops(size_ratio * n, r * d_pre,
                                                                    accounting)
    assert small == pytest.approx(large, rel=1e-12)


def test_paper_multipliers_and_matched_budgets():
  # v1: 14 + 3 * 13 / R; the paper's R values buy ~256, ~64 and ~16 generations
  ks = [matched_multiplier(14, r, "v1") for r in PAPER_R_VALUES["v1"]]
  assert ks == pytest.approx([257.75, 14 + 39 / 0.79, 14 + 39 / 22])
  budgets = [1, 2, 4, 8, 16, 32, 64, 128, 256]
  assert [matched_budget(k, budgets) for k in ks] == [256, 32, 8]
  assert matched_budget(0.5, budgets) is None
  with pytest.raises(ValueError, match="accounting"):
    matched_multiplier(14, 1.0, "v2")
  with pytest.raises(ValueError, match="R > 0"):
    matched_multiplier(14, 0.0)


# ----------------------------------------------------------------------------- sweep table

def _line(q, method, n, seed, selected, m=None, k=0):
  return {"question_index": q, "config": {"method": method, "n": n, "m": m, "k": k, "seed": seed},
          "selected": {name: {"correct": c} for name, c in selected.items()}}


def test_outcome_table_averages_seeds_and_names_strategies():
  lines = [_line(0, "best_of_n", 4, 0, {"majority": True, "weighted:last": False}),
           _line(0, "best_of_n", 4, 1, {"majority": False, "weighted:last": False}),
           _line(1, "best_of_n", 4, 0, {"majority": True, "weighted:last": True}),
           _line(1, "beam", 4, 0, {"weighted:last": True}, m=2),
           _line(0, "lookahead", 8, 0, {"weighted:last": True}, m=2, k=1)]
  t = outcome_table(lines)
  assert t.strategies == ("beam[m=2]:weighted:last", "best_of_n:majority",
                          "best_of_n:weighted:last", "lookahead[m=2,k=1]:weighted:last")
  assert t.budgets == (4, 8) and t.questions.tolist() == [0, 1]
  maj = t.strategy_index("best_of_n:majority")
  np.testing.assert_array_equal(t.accuracy[maj, 0], [0.5, 1.0])
  np.testing.assert_array_equal(t.seeds[maj, 0], [2, 1])
  beam = t.strategy_index("beam[m=2]:weighted:last")
  assert np.isnan(t.accuracy[beam, 0, 0]) and not t.complete()[beam, 0]
  assert t.complete()[maj, 0] and not t.complete()[maj, 1]


def test_a_new_family_is_one_registration():
  @register_family("toy_revisions")
  def toy(line):
    yield f"toy_revisions[ratio={line['config']['ratio']}]:majority", line["ok"]
  try:
    t = outcome_table([{"question_index": 3, "config": {"method": "toy_revisions", "n": 2,
                                                        "ratio": 4}, "ok": True}])
    assert t.strategies == ("toy_revisions[ratio=4]:majority",) and t.accuracy[0, 0, 0] == 1.0
  finally:
    del FAMILIES["toy_revisions"]
  with pytest.raises(ValueError, match="no strategy family"):
    outcome_table([{"question_index": 3, "config": {"method": "toy_revisions", "n": 2}}])


def test_read_lines_skips_only_a_torn_last_line(tmp_path):
  good = [_line(0, "best_of_n", 1, 0, {"majority": True})]
  path = tmp_path / "results.jsonl"
  path.write_text(json.dumps(good[0]) + "\n" + '{"question_ind')
  assert read_lines(str(path)) == good
  path.write_text('{"question_ind\n' + json.dumps(good[0]) + "\n")
  with pytest.raises(ValueError, match=":1: not a JSON line"):
    read_lines(str(path))


# ----------------------------------------------------------------------------- compute-optimal

def _table(acc):
  """An Outcomes from accuracy [S, B, Q] (strategies 's0', 's1', ... at budgets 1, 2, 4...)."""
  s, b, q = acc.shape
  lines = [_line(qi, "best_of_n", 2 ** bi, 0, {f"s{si}": bool(acc[si, bi, qi]) for si in range(s)})
           for qi in range(q) for bi in range(b)]
  return outcome_table(lines)


def test_compute_optimal_picks_the_best_strategy_per_bin():
  # 8 questions, 2 bins of 4 (easy: questions 0-3). s0 is right on easy questions,
  # s1 on hard ones, at both budgets: selection per bin takes each where it is right.
  acc = np.zeros((2, 2, 8))
  acc[0, :, :4] = 1
  acc[1, :, 4:] = 1
  t = _table(acc)
  bins = quantile_bins(np.array([1.0] * 4 + [0.0] * 4), n_bins=2)
  co = compute_optimal(t, bins, seed=0)
  np.testing.assert_array_equal(co.accuracy, [1.0, 1.0])
  chosen = co.chosen_by_bin()
  assert chosen[0][1] == ["best_of_n:s0"] * 2 and chosen[1][2] == ["best_of_n:s1"] * 2
  # one strategy alone never beats the per-bin choice
  assert np.all(co.accuracy >= np.nanmean(t.accuracy, axis=2).max(axis=0))


def test_compute_optimal_scores_each_question_by_the_other_halfs_choice():
  rng = np.random.default_rng(0)
  acc = (rng.random((4, 3, 20)) < 0.5).astype(float)
  t = _table(acc)
  bins = quantile_bins(rng.random(20), n_bins=2)
  co = compute_optimal(t, bins, seed=3)
  split_rng = np.random.default_rng(3)
  for b in range(2):
    halves = two_fold_split(bins.members(b), split_rng)
    for fold, (choose_on, score_on) in enumerate([halves, halves[::-1]]):
      for j in range(3):
        means = t.accuracy[:, j][:, choose_on].mean(axis=1)
        best = int(np.flatnonzero(means == means.max())[0])
        np.testing.assert_array_equal(co.per_question[j, score_on], t.accuracy[best, j, score_on])
        assert [c["strategy"] for c in co.choices
                if (c["bin"], c["fold"], c["budget"]) == (b, fold, 2 ** j)] == [t.strategies[best]]


def test_compute_optimal_needs_two_questions_per_bin():
  t = _table(np.ones((1, 1, 3)))
  with pytest.raises(ValueError, match="at least 2 questions"):
    compute_optimal(t, quantile_bins(np.arange(3.0), n_bins=3))


def test_efficiency_ratio():
  budgets = (1, 2, 4, 8)
  rows = efficiency(budgets, np.array([0.1, 0.2, 0.3, 0.4]), np.array([0.2, 0.3, 0.4, 0.5]))
  assert [r["matched_budget"] for r in rows] == [1, 1, 2, 4]
  assert [r["ratio"] for r in rows] == [1.0, 2.0, 2.0, 2.0]
  rows = efficiency(budgets, np.array([0.1, 0.2, 0.3, 0.9]), np.array([0.2, 0.3, 0.4, 0.5]))
  assert rows[-1]["matched_budget"] is None and rows[-1]["ratio"] is None


def test_bootstrap_interval_brackets_the_estimate():
  rng = np.random.default_rng(1)
  q, budgets = 200, (1, 2, 4, 8, 16)
  skill = np.array([0.1, 0.2, 0.3, 0.4, 0.5])
  baseline = (rng.random((5, q)) < skill[:, None]).astype(float)
  curve = (rng.random((5, q)) < (skill + 0.15)[:, None]).astype(float)
  strata = np.repeat(np.arange(5), q // 5)
  point = efficiency(budgets, baseline.mean(1), curve.mean(1))
  intervals = bootstrap_efficiency(budgets, baseline, curve, strata, n_boot=300, seed=0)
  for p, iv in zip(point, intervals):
    assert iv["ratio_low"] <= (p["ratio"] or 0.0) <= iv["ratio_high"]
    assert 0.0 <= iv["never_reached"] <= 1.0
  assert math.isclose(intervals[0]["ratio_low"], 1.0)  # budget 1 can only match itself


def test_sample_statistics_from_best_of_n_lines():
  from ttc_jax.analysis.outcomes import sample_statistics

  def sample_line(q, seed, correct, last, n=4):
    line = _line(q, "best_of_n", n, seed, {"majority": correct[0]})
    line.update(correct=correct, scores={"last": last})
    return line
  lines = [sample_line(5, 0, [True, False, True, True], [0.9, 0.1, 0.8, 0.6]),
           sample_line(5, 1, [False, False, False, True], [0.2, 0.2, 0.2, 0.2]),
           sample_line(2, 0, [False] * 4, [0.1] * 4),
           sample_line(2, 0, [True] * 2, [0.5] * 2, n=2)]  # another budget: not a sample set
  questions, pass1, mean_score = sample_statistics(lines, samples=4)
  assert questions.tolist() == [2, 5]
  np.testing.assert_allclose(pass1, [0.0, 4 / 8])
  np.testing.assert_allclose(mean_score, [0.1, (0.9 + 0.1 + 0.8 + 0.6 + 0.8) / 8])
  with pytest.raises(ValueError, match="n=16"):
    sample_statistics(lines, samples=16)


# ----------------------------------------------------------------------------- router

def test_router_learns_bins_from_the_probe_and_pays_for_it():
  from ttc_jax.analysis.router import route, route_bins, bin_edges
  # 40 questions: the probe score ranks them (high = easy); s0 is right on the
  # easy half, s1 on the hard half, so each alone scores 0.5. Edges learned on a
  # random half misplace only the few questions near the median.
  q = 40
  easy = np.arange(q) < q // 2
  acc = np.zeros((2, 2, q))
  acc[0, :, easy] = 1
  acc[1, :, ~easy] = 1
  t = _table(acc)
  probe = np.where(easy, 0.9, 0.1) + np.linspace(0, 0.05, q)
  r = route(t, probe, probe_generations=4, n_bins=2, seed=0)
  assert np.all(r.accuracy >= 0.8)
  assert r.cost == (5.0, 6.0)
  rows = efficiency(t.budgets, np.array([0.5, 0.5]), r.accuracy, r.cost)
  assert [x["matched_budget"] for x in rows] == [5.0, 5.0]  # the probe counts
  assert rows[1]["ratio"] == pytest.approx(2 / 5)
  edges = bin_edges(np.array([0.1, 0.2, 0.3, 0.4]), 2)
  np.testing.assert_array_equal(route_bins(np.array([0.05, 0.35, 0.9]), edges), [1, 0, 0])


def test_router_never_routes_a_question_by_its_own_outcome():
  """A strategy right only where it is right by chance: with a constant probe,
  one bin, the router's choice on each half comes from the other half."""
  from ttc_jax.analysis.router import route
  rng = np.random.default_rng(2)
  acc = (rng.random((6, 1, 30)) < 0.5).astype(float)
  t = _table(acc)
  r = route(t, np.zeros(30), probe_generations=1, n_bins=1, seed=5)
  halves = np.array_split(np.random.default_rng(5).permutation(30), 2)
  for learn, apply in (halves, halves[::-1]):
    means = acc[:, 0][:, learn].mean(axis=1)
    best = int(np.flatnonzero(means == means.max())[0])
    np.testing.assert_array_equal(r.per_question[0, apply], acc[best, 0, apply])
  with pytest.raises(ValueError, match="too few"):
    route(t, np.zeros(30), probe_generations=1, n_bins=16)


def test_flops_matched_table_compares_per_bin_at_the_matched_budget():
  from ttc_jax.analysis.flops import flops_matched_table
  budgets = (1, 4, 16, 64, 256)
  small = np.tile(np.array([[0.1], [0.2], [0.3], [0.4], [0.5]]), (1, 4))  # [B, Q]
  small[:, 2:] /= 2  # bin 1 (questions 2, 3) is harder for the small model
  bin_of = np.array([0, 0, 1, 1])
  large = np.array([1.0, 0.0, 0.0, 0.0])
  rows = flops_matched_table(budgets, small, bin_of, 2, large, size_ratio=14.0)
  assert [r["matched_budget"] for r in rows] == [256, 16, 4]  # K = 257.8, 63.4, 15.8
  top = rows[0]["bins"]
  assert top[0] == dict(bin=0, small=0.5, large=0.5, relative_improvement=0.0)
  assert top[1]["small"] == 0.25 and top[1]["relative_improvement"] is None  # large scores 0
  assert rows[2]["bins"][0]["small"] == pytest.approx(0.2)
  tiny = flops_matched_table((64,), small[:1], bin_of, 2, large, size_ratio=2.0, r_values=(10.0,))
  assert tiny[0]["matched_budget"] is None and tiny[0]["bins"][0]["small"] is None


def test_largest_budget():
  from ttc_jax.analysis.outcomes import largest_budget
  lines = [_line(0, "best_of_n", 4, 0, {}), _line(0, "best_of_n", 16, 0, {}),
           _line(0, "beam", 64, 0, {}, m=4)]
  assert largest_budget(lines) == 16 and largest_budget(lines, "beam") == 64
  with pytest.raises(ValueError, match="no dvts lines"):
    largest_budget(lines, "dvts")


def test_lookahead_lines_are_placed_at_their_generations():
  """Lookahead costs N (k + 1) generations (PAPER.md): the recorded budget places it."""
  line = _line(0, "lookahead", 4, 0, {"weighted:last": True}, m=2, k=3)
  line["budget"] = {"generations": 16}
  t = outcome_table([line, _line(0, "best_of_n", 4, 0, {"weighted:last": False})])
  assert t.budgets == (4, 16)
  assert t.complete()[t.strategy_index("lookahead[m=2,k=3]:weighted:last")].tolist() == [False,
                                                                                         True]
  kept = t.at_budgets(lambda b: b < 16)
  assert kept.budgets == (4,) and kept.accuracy.shape == (2, 1, 1)
