"""analyze_sweep on a synthetic sweep: bins, strategies, compute-optimal, the CLI."""

import json
import subprocess
import sys

import numpy as np
import pytest

from ttc_jax.analysis.sweep import BASELINE, analyze_sweep

BUDGETS = (1, 2, 4, 8)


def synthetic_sweep(q=30, seed=0):
  """Question i has skill p_i; best-of-N picks right with prob p_i (weighted) and
  majority a bit less; beam helps hard questions (p < 0.5) and hurts easy ones."""
  rng = np.random.default_rng(seed)
  skill = rng.random(q)
  lines = []
  for i in range(q):
    for n in BUDGETS:
      correct = (rng.random(n) < skill[i]).tolist()
      scores = (np.asarray(correct) * 0.5 + rng.random(n) * 0.5).tolist()
      best = bool(rng.random() < min(1.0, skill[i] + 0.02 * np.log2(n)))
      lines.append({"question_index": i, "config": {"method": "best_of_n", "n": n, "m": None,
                                                    "k": 0, "seed": 0},
                    "correct": correct, "scores": {"last": scores},
                    "selected": {"weighted:last": {"correct": best},
                                 "majority": {"correct": bool(rng.random() < skill[i] * 0.9)}}})
      beam_p = skill[i] + (0.3 if skill[i] < 0.5 else -0.3) * (n > 1)
      lines.append({"question_index": i, "config": {"method": "beam", "n": n, "m": 1, "k": 0,
                                                    "seed": 0},
                    "selected": {"weighted:last": {"correct": bool(rng.random() < beam_p)}}})
  return lines


def test_analyze_sweep_structure_and_consistency():
  r = analyze_sweep(synthetic_sweep(), samples=8, n_boot=50, probe=2)
  assert r["questions"] == 30 and r["budgets"] == list(BUDGETS) and r["samples_also_swept"]
  router = r["router"]
  assert router["cost"] == [b + 2 for b in BUDGETS] and len(router["accuracy"]) == 4
  assert [e["budget"] for e in router["efficiency_interval"]] == list(BUDGETS)
  for kind in ("oracle", "predicted"):
    assert sum(r["bins"][kind]["sizes"]) == 30 and len(r["bins"][kind]["sizes"]) == 5
    co = r["compute_optimal"][kind]
    # the overall accuracy is the bins' size-weighted mean
    sizes = np.asarray(r["bins"][kind]["sizes"])
    np.testing.assert_allclose(co["accuracy"],
                               sizes @ np.asarray(co["accuracy_by_bin"]) / sizes.sum())
    assert [e["budget"] for e in co["efficiency"]] == list(BUDGETS)
    for e, iv in zip(co["efficiency"], co["efficiency_interval"]):
      assert e["ratio"] is None or iv["ratio_low"] <= e["ratio"] <= iv["ratio_high"]
  strategies = r["strategies"]
  assert set(strategies) == {BASELINE, "best_of_n:majority", "beam[m=1]:weighted:last"}
  assert len(strategies[BASELINE]["bins"]) == 5
  # oracle bin 0 holds the highest pass@1 over the best-of-8 samples
  lo, hi = zip(*r["bins"]["oracle"]["value_ranges"])
  assert all(lo[b] >= hi[b + 1] for b in range(4))


def test_analyze_sweep_refuses_a_baseline_the_sweep_lacks():
  with pytest.raises(ValueError, match="no strategy 'dvts"):
    analyze_sweep(synthetic_sweep(), samples=8, baseline="dvts[m=4]:weighted:last", n_boot=10)


def test_cli(tmp_path):
  sweep = tmp_path / "sweep"
  sweep.mkdir()
  (sweep / "results.jsonl").write_text("\n".join(json.dumps(l) for l in synthetic_sweep()) + "\n")
  out = subprocess.run([sys.executable, "-m", "experiments.analyze_sweep",
                        f"--sweep_dir={sweep}", "--n_boot=20", "--probe=4"], check=True, capture_output=True,
                       text=True, timeout=120).stdout
  result = json.loads((sweep / "analysis.json").read_text())
  assert result["samples"] == 8 and "compute_optimal" in result
  assert result["router"]["probe_generations"] == 4
  assert "oracle" in out and "router+4" in out
