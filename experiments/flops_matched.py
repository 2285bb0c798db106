r"""FLOPs-matched comparison: small policy + compute-optimal search vs a ~14x larger policy's greedy.

  python -m experiments.flops_matched --sweep_dir=runs/sweep_small_q6k --large=runs/large
  python -m experiments.flops_matched --sweep_dir=runs/math_search --large_hf=/path/to/qwen-7b

The sweep may be of any dataset and policy run_search takes (its run.json
names them: e.g. a Hugging Face 0.5B policy on MATH-500); the large model is a
training run directory (--large) or a Hugging Face folder (--large_hf).

The small model's side comes from a run_search sweep (DIR/results.jsonl and
DIR/run.json, which names the small policy and the questions): oracle
difficulty bins from its best-of-S lines, compute-optimal accuracy per bin
and budget (2-fold selection, `ttc_jax.analysis.compute_optimal`). The large
model answers the same questions greedily (one generation each). For each
FLOPs accounting (v1: inference 2 N D; ICLR: 4 N D) and each of the paper's
R = D_inference / D_pretrain, the large model's pretraining + inference
FLOPs buy the small model K times its inference tokens
(`ttc_jax.analysis.flops.matched_multiplier`, with the two models' measured
parameter ratio); the comparison uses the largest swept budget <= K. Writes
one JSON object (default DIR/flops_matched.json) and prints the table.
"""

from __future__ import annotations

import json
import os

from absl import app, flags, logging
import numpy as np

from ttc_jax.analysis.compute_optimal import compute_optimal
from ttc_jax.analysis.difficulty import quantile_bins
from ttc_jax.analysis.flops import flops_matched_table
from ttc_jax.analysis.outcomes import (largest_budget, outcome_table, read_lines,
                                       sample_statistics)
from ttc_jax.checkpoints import write_json_atomic
from ttc_jax.tasks.spec import DatasetSpec

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The CLI flags (defined only when run as a script: reproduce imports this module)."""
  flags.DEFINE_string("sweep_dir", None, "The small policy's run_search --out_dir.")
  flags.DEFINE_string("large", None, "The large policy's training run directory.")
  flags.DEFINE_string("large_hf", None, "Or: the large policy as a Hugging Face folder.")
  flags.DEFINE_integer("samples", 0, "S: best-of-S lines that define difficulty; 0 = the largest "
                       "best-of-N budget in the sweep.")
  flags.DEFINE_integer("bins", 5, "Difficulty bins.")
  flags.DEFINE_list("accounting", ["v1", "iclr"], "FLOPs accountings: v1 (2 N D inference), "
                    "iclr (4 N D, the verifier counted).")
  flags.DEFINE_integer("seed", 0, "Seed of the 2-fold selection.")
  flags.DEFINE_integer("batch_size", 256, "Rows per greedy decoding call of the large model.")
  flags.DEFINE_string("json_out", None, "Output JSON; default SWEEP_DIR/flops_matched.json.")
  flags.DEFINE_integer("max_new_tokens", None, "The large policy's generation limit per "
                       "answer (default: the sweep's max_solution_tokens).")
  flags.mark_flags_as_required(["sweep_dir"])
  flags.mark_flags_as_mutual_exclusive(["large", "large_hf"], required=True)


def sweep_task(settings: dict):
  """The task of a run_search sweep (its run.json settings)."""
  if settings.get("split", "test") != "test":
    raise ValueError("flops_matched reads sweeps of a test split")
  hf = settings.get("policy_format") == "hf"
  return DatasetSpec.from_record(settings).load(None if hf else settings["policy"])


def large_greedy_correct(path: str, task, problems: list, hf: bool = False,
                         batch_size: int = 256,
                         max_new_tokens: int = 112) -> tuple[np.ndarray, int]:
  """(greedy correctness [Q], parameter count) of the large policy (a run
  directory, or a Hugging Face folder when hf) on the task's problems."""
  from ttc_jax.checkpoints import load_policy_source
  from ttc_jax.decode import Greedy
  from ttc_jax.evaluation import sample_solutions
  cfg, params, tokenizer = load_policy_source(path, hf)
  samples = sample_solutions(cfg, params, tokenizer, task, problems, n=1, sampler=Greedy(),
                             batch_size=batch_size, max_new_tokens=max_new_tokens)
  return samples.correct[:, 0], cfg.num_params()


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # orbax logs every restore at INFO
  with open(os.path.join(FLAGS.sweep_dir, "run.json")) as f:
    settings = json.load(f)
  lines = read_lines(os.path.join(FLAGS.sweep_dir, "results.jsonl"))
  samples = FLAGS.samples or largest_budget(lines)
  outcomes = outcome_table(lines)
  sampled, pass1, _ = sample_statistics(lines, samples)
  if not np.array_equal(sampled, outcomes.questions):
    raise app.UsageError("the best-of-S lines and the sweep cover different questions")
  bins = quantile_bins(pass1, FLAGS.bins)
  co = compute_optimal(outcomes, bins, seed=FLAGS.seed)
  from ttc_jax.checkpoints import load_policy_source
  small_params = load_policy_source(settings["policy"],
                                    settings.get("policy_format") == "hf")[0].num_params()
  task = sweep_task(settings)
  test_set = task.test_problems()
  large_correct, large_params = large_greedy_correct(
      FLAGS.large or FLAGS.large_hf, task, [test_set[i] for i in outcomes.questions.tolist()],
      hf=bool(FLAGS.large_hf), batch_size=FLAGS.batch_size,
      max_new_tokens=FLAGS.max_new_tokens or settings.get("max_solution_tokens", 112))
  ratio = large_params / small_params
  result = {
      "sweep_dir": FLAGS.sweep_dir, "large": os.path.abspath(FLAGS.large or FLAGS.large_hf),
      "questions": int(outcomes.questions.size), "samples": samples,
      "small_params": small_params, "large_params": large_params, "size_ratio": ratio,
      "bin_sizes": bins.sizes, "large_greedy_accuracy": float(large_correct.mean()),
      "small_compute_optimal_accuracy": dict(zip(map(str, outcomes.budgets),
                                                 co.accuracy.tolist())),
      "flops_matched": [row for accounting in FLAGS.accounting for row in flops_matched_table(
          outcomes.budgets, co.per_question, bins.bin_of, bins.n_bins, large_correct,
          size_ratio=ratio, accounting=accounting)],
  }
  out = FLAGS.json_out or os.path.join(FLAGS.sweep_dir, "flops_matched.json")
  write_json_atomic(out, result)
  print(f"size ratio {ratio:.2f}, large greedy {result['large_greedy_accuracy']:.3f}, "
        f"bins {bins.sizes}")
  for row in result["flops_matched"]:
    cells = " ".join(f"{b['small'] if b['small'] is not None else float('nan'):.2f}/"
                     f"{b['large']:.2f}" for b in row["bins"])
    print(f"{row['accounting']:4s} R={row['r']:<5g} K={row['multiplier']:7.1f} "
          f"budget={row['matched_budget']}  small/large by bin (easy first): {cells}")
  print(f"wrote {out}")


if __name__ == "__main__":
  define_flags()
  app.run(main)
