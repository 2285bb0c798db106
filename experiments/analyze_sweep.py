r"""Difficulty bins and compute-optimal selection over a run_search sweep (no generation).

  python -m experiments.analyze_sweep --sweep_dir=runs/sweep_small_q6k --samples=64

Reads DIR/results.jsonl. Difficulty: oracle bins from pass@1 over the sweep's
best-of-S lines (S = --samples, default the largest best-of-N budget swept),
predicted bins from those samples' mean verifier score. Then every strategy's
accuracy per budget (all questions and per oracle bin), and compute-optimal
selection with 2-fold cross-validation inside each bin (oracle and predicted
bins) against --baseline (best-of-N weighted, `last` aggregation), with the
efficiency ratio per budget and its bootstrap interval over questions; with
--probe=P also a router that bins each prompt online from its best-of-P
samples and pays for them (`ttc_jax.analysis.router`). Writes
one JSON object (default DIR/analysis.json) and prints a summary.
"""

from __future__ import annotations

import os

from absl import app, flags

from ttc_jax.analysis.outcomes import largest_budget, read_lines
from ttc_jax.analysis.sweep import BASELINE, analyze_sweep
from ttc_jax.checkpoints import write_json_atomic

FLAGS = flags.FLAGS
flags.DEFINE_string("sweep_dir", None, "A run_search --out_dir (holds results.jsonl).")
flags.DEFINE_integer("samples", 0, "S: the best-of-S lines that define difficulty; 0 = the "
                     "largest best-of-N budget in the sweep.")
flags.DEFINE_integer("bins", 5, "Difficulty bins (equal-count quantiles).")
flags.DEFINE_string("baseline", BASELINE, "The strategy compute-optimal is measured against.")
flags.DEFINE_integer("n_boot", 1000, "Bootstrap resamples for the efficiency intervals.")
flags.DEFINE_integer("seed", 0, "Seed of the 2-fold splits and the bootstrap.")
flags.DEFINE_integer("probe", 0, "P > 0: also evaluate the router that bins each prompt by the "
                     "mean verifier score of its best-of-P samples (a swept best-of-N budget), "
                     "counting the P probe generations; 0: no router.")
flags.DEFINE_string("json_out", None, "Output JSON; default SWEEP_DIR/analysis.json.")
flags.mark_flag_as_required("sweep_dir")


def summary(result: dict) -> str:
  rows = [f"{result['questions']} questions, difficulty from best-of-{result['samples']}; "
          f"oracle bin sizes {result['bins']['oracle']['sizes']}, oracle/predicted agreement "
          f"{result['bins']['agreement']:.2f}",
          f"{'budget':10s}" + "  ".join(f"{b:>6d}" for b in result["budgets"]),
          f"{'baseline':10s}" + "  ".join(
              f"{a:6.3f}" for a in result["strategies"][result["baseline"]]["all"])]
  curves = dict(result["compute_optimal"])
  if result["router"]:
    curves[f"router+{result['router']['probe_generations']}"] = result["router"]
  for name, co in curves.items():
    rows.append(f"{name:10s}" + "  ".join(f"{a:6.3f}" for a in co["accuracy"]))
    rows.append(f"{'  ratio':10s}" + "  ".join(
        f"{e['ratio']:6.2f}" if e["ratio"] is not None else f"{'never':>6s}"
        for e in co["efficiency"]))
  return "\n".join(rows)


def main(argv):
  del argv
  path = os.path.join(FLAGS.sweep_dir, "results.jsonl")
  if not os.path.exists(path):
    raise app.UsageError(f"no {path}: is --sweep_dir a run_search --out_dir?")
  lines = read_lines(path)
  samples = FLAGS.samples or largest_budget(lines)
  result = analyze_sweep(lines, samples=samples, n_bins=FLAGS.bins, baseline=FLAGS.baseline,
                         n_boot=FLAGS.n_boot, seed=FLAGS.seed, probe=FLAGS.probe or None)
  out = FLAGS.json_out or os.path.join(FLAGS.sweep_dir, "analysis.json")
  write_json_atomic(out, result)
  print(summary(result))
  print(f"wrote {out}")


if __name__ == "__main__":
  app.run(main)
