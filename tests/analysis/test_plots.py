"""Plots: each writes a valid PNG, copes with missing budgets and a single
budget, rejects inconsistent input, and renders analyze_sweep-shaped data."""

import gc

import matplotlib.image
import pytest
from matplotlib.figure import Figure

from ttc_jax.analysis import plots

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
BUDGETS = [1, 2, 4, 8, 16]


def assert_png(path, min_side: int = 100):
  with open(path, "rb") as f:
    assert f.read(8) == PNG_MAGIC
  image = matplotlib.image.imread(path)
  assert image.ndim == 3 and image.shape[0] >= min_side and image.shape[1] >= min_side
  assert image.std() > 0  # something was drawn


def flops_row(accounting="v1", r=0.16, budget=16, improvements=(0.1, -0.05, None)):
  return {"accounting": accounting, "r": r, "multiplier": 20.5, "matched_budget": budget,
          "bins": [{"bin": b, "small": None if v is None else 0.5, "large": 0.5,
                    "relative_improvement": v} for b, v in enumerate(improvements)]}


# ---------------------------------------------------------------- accuracy_vs_budget


def test_accuracy_vs_budget_with_missing_points_and_intervals(tmp_path):
  curves = {"best_of_n:weighted:last": [0.3, 0.35, None, 0.42, 0.45],
            "beam[m=4]:weighted:last": [None, None, 0.4, 0.41, 0.47],
            "beam[m=8]:weighted:last": [None, None, None, None, 0.5]}
  intervals = {"best_of_n:weighted:last": ([0.25, 0.3, None, 0.38, 0.4],
                                           [0.35, 0.4, None, 0.46, 0.5])}
  out = plots.accuracy_vs_budget(BUDGETS, curves, tmp_path / "a.png", title="t",
                                 intervals=intervals)
  assert out == tmp_path / "a.png"
  assert_png(out)


def test_accuracy_vs_budget_single_budget_many_curves_and_empty(tmp_path):
  many = {f"s{i}": [0.1 * (i % 10)] for i in range(14)}  # > 10: styles cycle, legend outside
  assert_png(plots.accuracy_vs_budget([4], many, tmp_path / "one.png", title="one budget",
                                      intervals={"s1": ([0.05], [0.15])}))
  assert_png(plots.accuracy_vs_budget(BUDGETS, {}, tmp_path / "empty.png", title="empty"))
  assert_png(plots.accuracy_vs_budget(BUDGETS, {"x": [None] * 5}, tmp_path / "none.png",
                                      title="all None"))


@pytest.mark.parametrize("budgets, curves, intervals, match", [
    (BUDGETS, {"a": [0.1, 0.2]}, None, "2 values for 5 budgets"),
    ([], {}, None, "non-empty"),
    ([0, 1], {"a": [0.1, 0.2]}, None, "positive"),
    ([1, 2], {"a": [0.1, "x"]}, None, "numbers or None"),
    ([1, 2], {"a": 0.5}, None, "expected a list"),
    ([1, 2], {"a": [0.1, 0.2]}, {"b": ([0.1, 0.1], [0.2, 0.2])}, "not plotted"),
    ([1, 2], {"a": [0.1, 0.2]}, {"a": ([0.1], [0.2])}, "1 values for 2 budgets"),
    ([1, 2], {"a": [0.1, 0.2]}, {"a": ([0.3, 0.1], [0.2, 0.2])}, "low > high"),
])
def test_accuracy_vs_budget_rejects_bad_input(tmp_path, budgets, curves, intervals, match):
  with pytest.raises(ValueError, match=match):
    plots.accuracy_vs_budget(budgets, curves, tmp_path / "bad.png", title="t",
                             intervals=intervals)
  assert not (tmp_path / "bad.png").exists()


# ---------------------------------------------------------------- per_bin_panels


def test_per_bin_panels(tmp_path):
  curves = {"best_of_n:weighted:last": [[0.9, 0.95, 1.0, 1.0, 1.0], [0.2, None, 0.3, 0.35, 0.4],
                                        [0.0, 0.0, 0.05, None, 0.1]],
            "dvts[m=4]:majority": [[None, None, 0.9, 1.0, 1.0], [None, None, 0.4, 0.4, 0.5],
                                   [None, None, 0.1, 0.1, 0.2]]}
  assert_png(plots.per_bin_panels(BUDGETS, curves, tmp_path / "p.png", title="bins"))
  assert_png(plots.per_bin_panels(BUDGETS, curves, tmp_path / "l.png", title="bins",
                                  bin_labels=["easy", "mid", "hard"]))
  single = {"a": [[0.5], [0.2]]}
  assert_png(plots.per_bin_panels([8], single, tmp_path / "s.png", title="one budget"))


@pytest.mark.parametrize("curves, labels, match", [
    ({"a": [[0.1] * 5, [0.2] * 5], "b": [[0.1] * 5]}, None, "different numbers of bins"),
    ({"a": [[0.1] * 5, [0.2] * 4]}, None, "4 values for 5 budgets"),
    ({"a": [[0.1] * 5, [0.2] * 5]}, ["one"], "1 bin labels for 2 bins"),
    ({}, None, "at least one bin"),
    ({"a": 0.3}, None, "lists of per-bin curves"),
])
def test_per_bin_panels_rejects_bad_input(tmp_path, curves, labels, match):
  with pytest.raises(ValueError, match=match):
    plots.per_bin_panels(BUDGETS, curves, tmp_path / "bad.png", title="t", bin_labels=labels)


# ---------------------------------------------------------------- compute_optimal_vs_baseline


def test_compute_optimal_vs_baseline_with_router_pairs_and_efficiency(tmp_path):
  efficiency = [{"budget": 1, "baseline_accuracy": 0.3, "matched_budget": 1, "ratio": 1.0},
                {"budget": 4, "baseline_accuracy": 0.38, "matched_budget": 1, "ratio": 4.0},
                {"budget": 16, "baseline_accuracy": 0.45, "matched_budget": None, "ratio": None}]
  out = plots.compute_optimal_vs_baseline(
      BUDGETS, [0.3, 0.35, 0.38, None, 0.45],
      {"oracle bins": [0.4, 0.42, 0.44, 0.45, 0.44],
       "router": ([5.0, 6.0, 8.0, 12.0, 20.0], [0.36, None, 0.45, 0.46, 0.47])},
      tmp_path / "co.png", title="co", efficiency=efficiency)
  assert_png(out)


def test_compute_optimal_vs_baseline_single_budget_and_no_curves(tmp_path):
  assert_png(plots.compute_optimal_vs_baseline([4], [0.4], {"oracle": [0.5]},
                                               tmp_path / "one.png", title="one", efficiency=[]))
  assert_png(plots.compute_optimal_vs_baseline(BUDGETS, [None] * 5, {}, tmp_path / "none.png",
                                               title="none"))


@pytest.mark.parametrize("baseline, curves, efficiency, match", [
    ([0.1] * 4, {}, None, "baseline: 4 values for 5 budgets"),
    ([0.1] * 5, {"o": [0.1] * 6}, None, "6 values for 5 budgets"),
    ([0.1] * 5, {"r": ([1.0, 2.0], [0.1])}, None, "1 values for 2 budgets"),
    ([0.1] * 5, {"r": ([1.0], [0.1], [0.2])}, None, "exactly 2 entries"),
    ([0.1] * 5, {"r": ([0.0, 2.0], [0.1, 0.2])}, None, "positive"),
    ([0.1] * 5, {}, [{"budget": 1, "ratio": 1.0}], "lacks"),
])
def test_compute_optimal_vs_baseline_rejects_bad_input(tmp_path, baseline, curves, efficiency,
                                                       match):
  with pytest.raises(ValueError, match=match):
    plots.compute_optimal_vs_baseline(BUDGETS, baseline, curves, tmp_path / "bad.png",
                                      title="t", efficiency=efficiency)


# ---------------------------------------------------------------- flops_matched_bars


def test_flops_matched_bars_two_accountings_with_na_slots(tmp_path):
  rows = [flops_row("v1", 0.16), flops_row("v1", 22.0, budget=None,
                                           improvements=(None, None, None)),
          flops_row("iclr", 0.08, improvements=(0.2, 0.0, -1.0))]
  assert_png(plots.flops_matched_bars(rows, tmp_path / "f.png", title="flops"))


def test_flops_matched_bars_one_row_one_bin(tmp_path):
  assert_png(plots.flops_matched_bars([flops_row(improvements=(0.3,))], tmp_path / "f1.png",
                                      title="one"))
  assert_png(plots.flops_matched_bars([flops_row(improvements=(None,))], tmp_path / "f0.png",
                                      title="all n/a"))


@pytest.mark.parametrize("rows, match", [
    ([], "at least one row"),
    ([{"accounting": "v1", "r": 1.0}], "lacks"),
    ([flops_row(improvements=(0.1, 0.2)), flops_row(improvements=(0.1,))], "different bins"),
    ([{**flops_row(), "bins": [{"bin": 1, "relative_improvement": 0.1}]}], "0..n-1"),
    ([{**flops_row(), "bins": [0.1]}], "must be dicts"),
])
def test_flops_matched_bars_rejects_bad_input(tmp_path, rows, match):
  with pytest.raises(ValueError, match=match):
    plots.flops_matched_bars(rows, tmp_path / "bad.png", title="t")


# ---------------------------------------------------------------- together


def analysis_like() -> dict:
  """A small dict shaped like analyze_sweep's output (runs/ is not in git)."""
  budgets = [1, 2, 4, 8]
  def strategy(all_, bins):
    return {"all": all_, "bins": bins}
  return {
      "budgets": budgets, "baseline": "best_of_n:weighted:last",
      "strategies": {
          "best_of_n:weighted:last": strategy([0.37, 0.41, 0.36, 0.42],
                                              [[0.9, 1.0, 0.95, 1.0], [0.2, 0.3, 0.1, 0.3]]),
          "beam[m=4]:weighted:last": strategy([None, None, 0.45, 0.45],
                                              [[None, None, 1.0, 1.0], [None, None, 0.3, 0.3]]),
          "lookahead[m=4,k=1]:weighted:last": strategy(
              [None, None, 0.46, 0.44], [[None, None, 1.0, 0.95], [None, None, 0.3, 0.35]]),
          "dvts[m=4]:majority": strategy([None, None, 0.45, 0.43],
                                         [[None, None, 0.9, 1.0], [None, None, 0.3, 0.25]])},
      "compute_optimal": {
          name: {"accuracy": [0.39, 0.4, 0.46, 0.43],
                 "accuracy_by_bin": [[1.0, 1.0, 1.0, 1.0], [0.3, 0.3, 0.35, 0.3]],
                 "efficiency": [{"budget": b, "baseline_accuracy": a, "matched_budget": m,
                                 "ratio": None if m is None else b / m}
                                for b, a, m in zip(budgets, [0.37, 0.41, 0.36, 0.42],
                                                   [1, 4, 1, None])],
                 "efficiency_interval": [{"budget": b, "ratio_low": 0.5, "ratio_high": 2.0,
                                          "never_reached": 0.0} for b in budgets]}
          for name in ("oracle", "predicted")},
      "router": {"probe_generations": 4, "cost": [5.0, 6.0, 8.0, 12.0],
                 "accuracy": [0.36, 0.38, 0.45, 0.45]},
  }


def test_every_plot_from_analysis_shaped_data(tmp_path):
  a = analysis_like()
  budgets, strategies, co = a["budgets"], a["strategies"], a["compute_optimal"]
  figures_before = sum(isinstance(o, Figure) for o in gc.get_objects())
  paths = [
      plots.accuracy_vs_budget(budgets, {k: v["all"] for k, v in strategies.items()},
                               tmp_path / "acc.png", title="accuracy"),
      plots.per_bin_panels(budgets, {k: v["bins"] for k, v in strategies.items()},
                           tmp_path / "bins.png", title="per bin"),
      plots.compute_optimal_vs_baseline(
          budgets, strategies[a["baseline"]]["all"],
          {"oracle bins": co["oracle"]["accuracy"], "predicted bins": co["predicted"]["accuracy"],
           "router": (a["router"]["cost"], a["router"]["accuracy"])},
          tmp_path / "sub" / "co.png", title="compute-optimal",
          efficiency=co["oracle"]["efficiency"]),
      plots.flops_matched_bars([flops_row("v1", r, improvements=(0.05, -0.2))
                                for r in (0.16, 0.79, 22.0)], tmp_path / "flops.png",
                               title="FLOPs-matched"),
  ]
  for path in paths:
    assert_png(path)
  gc.collect()
  # no figure outlives its save (nothing registered with pyplot either)
  assert sum(isinstance(o, Figure) for o in gc.get_objects()) <= figures_before
