"""Does a revision model revise? Chains without a verifier, graded attempt by attempt.

  python -m experiments.probe_revision --model=runs/revision_small --questions=200 \\
      --parallel=1 --length=8 --json_out=runs/probe.json
  python -m experiments.probe_revision --model=runs/rev_gsm8k --dataset=gsm8k \\
      --data_path=gsm8k/test.jsonl --shots_path=gsm8k/train.jsonl --num_shots=0

Runs P chains of L attempts per test question (`ttc_jax.revision.chains`,
each attempt conditioned on the last --window ones, at --temperature) and
grades every attempt. Reports pass@1 per step, how often a wrong attempt's
next revision is right and a right one's is wrong (the paper saw ~38% of
correct answers revised into incorrect ones), how often a revision copies
the attempt before it, and coverage (any correct attempt). Pass the policy
itself as --model for the baseline: its chains are independent samples at
step 0 and see out-of-format contexts later. JSON out: one object.

--dataset (experiments/dataset_flags.py): the test questions and grader; the
default is the model run's own task. On a benchmark an attempt also ends
where its text ends in a blank line, as in run_search.
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging

from ttc_jax.atomic import write_json
from ttc_jax.checkpoints import load_policy
from ttc_jax.decode.generate import pad_prompts
from ttc_jax.decode.samplers import Temperature
from ttc_jax.evaluation import prompt_ids, token_ends
from ttc_jax.revision import select
from ttc_jax.revision.chains import RevisionConfig, run_chains

FLAGS = flags.FLAGS


def define_flags() -> None:
  """Only when run as a script: tests import probe_report beside other scripts' flags."""
  from experiments import dataset_flags
  dataset_flags.define(policy_flag=None)  # --dataset, --data_path, ...: the model is --model
  flags.DEFINE_string("model", None, "Revision model (train_revision --out_dir) or a policy run.")
  flags.DEFINE_integer("questions", 200, "First K test questions.", lower_bound=1)
  flags.DEFINE_integer("parallel", 1, "Chains per question (P).", lower_bound=1)
  flags.DEFINE_integer("length", 8, "Attempts per chain (L).", lower_bound=1)
  flags.DEFINE_integer("window", 4, "Previous attempts in the context.", lower_bound=1)
  flags.DEFINE_integer("max_attempt_tokens", 88, "Tokens per attempt.", lower_bound=1)
  flags.DEFINE_float("temperature", 1.0, "Sampling temperature.")
  flags.DEFINE_integer("seed", 0, "Sampling seed.")
  flags.DEFINE_string("json_out", None, "Write the report here (else print only).")
  flags.mark_flag_as_required("model")


def chain_texts(tokens: np.ndarray, num_new: np.ndarray, tokenizer) -> list[str]:
  """Attempt texts of [..., A] tokens with [...] lengths, EOS dropped, flattened."""
  flat, lengths = tokens.reshape(-1, tokens.shape[-1]), num_new.reshape(-1)
  return [tokenizer.decode([int(t) for t in row[:n] if t != tokenizer.eos_id])
          for row, n in zip(flat, lengths)]


def probe_report(correct: np.ndarray, texts: np.ndarray) -> dict:
  """correct, texts [Q, P, L] -> the report's statistics."""
  rate = lambda pair: round(pair[0] / pair[1], 4) if pair[1] else None
  copies = texts[:, :, 1:] == texts[:, :, :-1]
  return {"pass_at_step": [round(float(x), 4) for x in select.pass_at_step(correct)],
          "wrong_to_right": rate(select.revised_to_correct(correct)),
          "right_to_wrong": rate(select.revised_to_incorrect(correct)),
          "copies_previous": round(float(copies.mean()), 4) if copies.size else None,
          "coverage": round(float(correct.reshape(len(correct), -1).any(axis=1).mean()), 4)}


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # orbax logs every restore at INFO
  from experiments import dataset_flags
  spec = dataset_flags.spec(FLAGS)
  try:
    task = spec.load(FLAGS.model)
  except ValueError as e:
    raise app.UsageError(str(e)) from None
  cfg, params, tokenizer = load_policy(FLAGS.model)
  problems = task.test_problems()[:FLAGS.questions]
  tokens, lengths = pad_prompts([prompt_ids(task, tokenizer, p) for p in problems],
                                cfg.vocab_size, tokenizer.pad_id)
  p, length = FLAGS.parallel, FLAGS.length
  rcfg = RevisionConfig(n=p * length, parallel=p, max_attempt_tokens=FLAGS.max_attempt_tokens,
                        window=FLAGS.window, sampler=Temperature(FLAGS.temperature),
                        ends=token_ends(tokenizer, task)[1])
  out = jax.device_get(run_chains(
      cfg, rcfg, params, jnp.asarray(tokens), jnp.asarray(lengths),
      jnp.asarray(FLAGS.seed, jnp.uint32), jnp.arange(len(problems), dtype=jnp.uint32),
      eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id))
  q = len(problems)
  texts = np.asarray(chain_texts(np.asarray(out.tokens), np.asarray(out.num_new), tokenizer),
                     object).reshape(q, p, length)
  correct = np.asarray(task.grade_many([problems[i // (p * length)] for i in range(texts.size)],
                                       list(texts.reshape(-1)))).reshape(q, p, length)
  report = dict(model=FLAGS.model, dataset=spec.record(), questions=q, parallel=p,
                length=length, window=FLAGS.window, temperature=FLAGS.temperature,
                seed=FLAGS.seed, **probe_report(correct, texts))
  print(json.dumps(report))
  if FLAGS.json_out:
    write_json(FLAGS.json_out, report)


if __name__ == "__main__":
  define_flags()
  app.run(main)
