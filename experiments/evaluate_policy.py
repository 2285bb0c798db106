"""Evaluates a policy on a task's test set: the built-in task of a training run,
or MATH-500 / GSM8K (`--dataset`, few-shot prompts) for any policy, e.g. a
Hugging Face folder (`--policy_hf`).

  python -m experiments.evaluate_policy --checkpoint=runs/small --num_questions=500 \
      --samples=32 --json_out=runs/small/eval.json
  python -m experiments.evaluate_policy --policy_hf=/path/to/llama --dataset=math500 \
      --data_path=/path/to/math500/test.jsonl --max_new_tokens=1024 --json_out=eval.json

Greedy accuracy, sampled pass@1 (S samples per question), coverage@N, the
histogram of per-question pass rates, all broken down by the task's difficulty
knobs. Writes one JSON object (atomically) and prints a table.
"""

from __future__ import annotations

import collections
import os
import time

from absl import app, flags, logging
import numpy as np
import tqdm

from ttc_jax import distributed, sharding
from ttc_jax.checkpoints import load_policy_source, write_json_atomic
from ttc_jax.decode import Greedy, Temperature
from ttc_jax.evaluation import coverage, pass_rate_histogram, sample_solutions
from ttc_jax.tasks.spec import DatasetSpec

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The CLI flags (defined only when run as a script, so tests import `evaluate`)."""
  from experiments import dataset_flags
  dataset_flags.define(policy_flag="checkpoint")
  flags.DEFINE_integer("num_questions", 500, "K questions, evenly strided over the test set.")
  flags.DEFINE_integer("samples", 16, "Samples per question for pass@1 / coverage.")
  flags.DEFINE_float("temperature", 1.0, "Sampling temperature.")
  flags.DEFINE_integer("max_new_tokens", 112, "Generation limit per solution.")
  flags.DEFINE_integer("batch_size", 256, "Rows (question x sample) per decode call.")
  flags.DEFINE_integer("seed", 0, "Sampling seed.")
  flags.DEFINE_string("json_out", None, "Output JSON file (default: CHECKPOINT/eval.json).")
  flags.DEFINE_integer("mesh_data", None, "Data-parallel devices (default: all). On a CPU "
                       "backend, --local_device_count=2 makes two XLA:CPU devices, which "
                       "decode ~1.6x faster on 2 cores than one (BUILD_NOTES.md).")
  flags.DEFINE_integer("mesh_model", 1, "Model-parallel devices.")
  distributed.define_flags()


def _breakdown(problems, greedy_correct, sample_correct, keys) -> dict:
  """Per difficulty knob and value: count, greedy accuracy, pass@1."""
  out = {}
  for key in keys:
    groups = collections.defaultdict(list)
    for i, p in enumerate(problems):
      groups[p.difficulty[key]].append(i)
    out[key] = {str(v): {"n": len(idx), "greedy_accuracy": float(greedy_correct[idx].mean()),
                         "pass_at_1": float(sample_correct[idx].mean())}
                for v, idx in sorted(groups.items())}
  return out


def evaluate(checkpoint: str, num_questions: int, samples: int, temperature: float,
             max_new_tokens: int, batch_size: int, seed: int, mesh=None, hf: bool = False,
             spec: DatasetSpec = DatasetSpec()) -> dict:
  """hf: checkpoint is a Hugging Face folder. spec: the task (default: the run's own)."""
  task = spec.load(None if hf else checkpoint)  # bad data fails before loading
  cfg, params, tokenizer = load_policy_source(checkpoint, hf)
  if mesh is not None:
    params = sharding.shard_params(params, cfg, mesh)
  if num_questions < 1:
    raise ValueError(f"num_questions must be >= 1, got {num_questions}")
  test_set = task.test_problems()
  # An evenly strided subset keeps every difficulty level in a small evaluation.
  problems = test_set[::max(1, len(test_set) // num_questions)][:num_questions]
  common = dict(max_new_tokens=max_new_tokens, batch_size=batch_size, mesh=mesh)
  total_rows = len(problems) * (1 + samples)
  with tqdm.tqdm(total=total_rows, desc="evaluate", unit="sample") as bar:
    t0 = time.perf_counter()
    greedy = sample_solutions(cfg, params, tokenizer, task, problems, n=1, sampler=Greedy(),
                              seed=seed, progress=bar, **common)
    sampled = sample_solutions(cfg, params, tokenizer, task, problems, n=samples,
                               sampler=Temperature(temperature), seed=seed, progress=bar,
                               **common)
    elapsed = time.perf_counter() - t0
  rates = sampled.correct.mean(axis=1)
  ks = [k for k in (1, 2, 4, 8, 16, 32, 64, 128, 256) if k <= samples]
  return {
      "checkpoint": os.path.abspath(checkpoint), "task": task.name,
      "num_questions": len(problems), "samples": samples, "temperature": temperature,
      "seed": seed, "greedy_accuracy": float(greedy.correct.mean()),
      "pass_at_1": float(rates.mean()),
      "coverage": {str(k): v for k, v in coverage(sampled.correct, ks).items()},
      "pass_rate_histogram": pass_rate_histogram(rates),
      "frac_pass_rate_zero": float(np.mean(rates == 0)),
      "frac_pass_rate_above_0.75": float(np.mean(rates > 0.75)),
      "by_difficulty": _breakdown(problems, greedy.correct[:, 0], sampled.correct,
                                  task.difficulty_keys),
      "mean_solution_tokens": float(sampled.num_tokens.mean()),
      "generated_tokens_per_sec": float(
          (greedy.num_tokens.sum() + sampled.num_tokens.sum()) / elapsed),
      "wall_s": elapsed,
  }


def format_table(result: dict) -> str:
  lines = [f"greedy accuracy {result['greedy_accuracy']:.3f}   pass@1 {result['pass_at_1']:.3f}"
           f"   ({result['num_questions']} questions x {result['samples']} samples)",
           "coverage@N  " + "  ".join(f"{k}:{v:.3f}" for k, v in result["coverage"].items()),
           "pass-rate histogram  " + "  ".join(
               f"{k}:{v}" for k, v in result["pass_rate_histogram"].items())]
  for key, groups in result["by_difficulty"].items():
    lines.append(f"by {key}:")
    for value, row in groups.items():
      lines.append(f"  {value:>4}  n={row['n']:<4} greedy {row['greedy_accuracy']:.3f}  "
                   f"pass@1 {row['pass_at_1']:.3f}")
  return "\n".join(lines)


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # orbax logs every restore at INFO
  distributed.initialize_from_flags()
  mesh = sharding.make_mesh(data=FLAGS.mesh_data, model=FLAGS.mesh_model)
  from experiments import dataset_flags
  spec = dataset_flags.spec(FLAGS)
  policy, hf = dataset_flags.policy(FLAGS, "checkpoint")
  try:
    spec.check(hf_policy=hf)
  except ValueError as e:
    raise app.UsageError(str(e)) from None
  result = evaluate(policy, FLAGS.num_questions, FLAGS.samples, FLAGS.temperature,
                    FLAGS.max_new_tokens, FLAGS.batch_size, FLAGS.seed, mesh=mesh, hf=hf,
                    spec=spec)
  out = FLAGS.json_out or os.path.join(policy, "eval.json")
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  write_json_atomic(out, result)
  print(format_table(result))
  print(f"wrote {out}")


if __name__ == "__main__":
  define_flags()
  app.run(main)
