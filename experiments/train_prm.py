"""Trains a process (or outcome) reward model on a policy's own samples.

  python -m experiments.train_prm --policy=runs/small --head=token --token_targets=step \\
      --label=exact --num_train_questions=6000 --samples=2 --contrastive_copies=3 \\
      --lr=3e-4 --max_epochs=1 --eval_every=50 --eval_test_questions=500 --test_samples=16 \\
      --out_dir=runs/prm_token_step_q6k

On a benchmark (MATH-500 / GSM8K readers; training questions from a train
split given as --shots_path; any policy, e.g. a Hugging Face folder):

  python -m experiments.train_prm --policy_hf=/path/to/llama --dataset=math500 \
      --data_path=math500/test.jsonl --shots_path=math/train.jsonl --num_shots=4 \
      --label=mc --samples=16 --rollouts=16 --max_new_tokens=512 --row_len=2048 \
      --out_dir=runs/prm_math

Benchmarks have no step checker: labels are Monte-Carlo only (the paper's),
step AUCs are not reported, and samples lose the blank line that ended them.

1. Labelled data (`ttc_jax.verifier.data.make_verifier_dataset`): --samples
   solutions per training question from --policy; step labels from
   --rollouts Monte-Carlo continuations per prefix (--label=mc), the exact
   step checker (exact), or both; optional contrastive corrupted chains.
   Expensive, so cached in out_dir (prm_data.npz + prm_data.json, written
   atomically) and reused on restart (refused if the settings differ).
2. Training (`ttc_jax.train.verifier_train`): the backbone starts from
   --init_from (default: the policy; any run directory or Hugging Face folder
   sharing its tokenizer, so the
   verifier's size is independent of the policy's), BCE, AdamW, early
   stopping on the held-out questions' loss, orbax checkpoints with resume.
3. Evaluation: held-out within-question AUC (final answers; steps right after
   a correct prefix, against exact labels) and pooled AUC; with
   --eval_test_questions=K also on K test questions x --test_samples fresh
   policy samples. A final JSON summary is printed and written to
   out_dir/summary.json. Load the result with
   `ttc_jax.verifier.checkpoint.load_verifier(out_dir)`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from typing import Callable

import numpy as np

from ttc_jax import atomic
from ttc_jax import checkpoints as ckpt_lib
from ttc_jax.train import verifier_train as vt
from ttc_jax.verifier.data import (SOURCE_SAMPLE, VerifierRows, build_rows, exact_step_labels,
                                   make_verifier_dataset, split_by_question)
from ttc_jax.tasks.spec import DatasetSpec
from ttc_jax.verifier.model import VerifierConfig

DATA_FILE = "prm_data.npz"
DATA_REPORT_FILE = "prm_data.json"
SUMMARY_FILE = "summary.json"


@dataclasses.dataclass(frozen=True)
class PrmDataConfig:
  """What the labelled dataset depends on (with the policy's weights): its cache key."""
  num_questions: int = 1000
  problem_seed: int = 1  # the training stream's seed (the policies train on stream 0)
  samples: int = 16
  rollouts: int = 16
  label: str = "mc"
  contrastive_copies: int = 0
  reference_chains: bool = False
  temperature: float = 1.0
  max_new_tokens: int = 112
  row_len: int = 128
  seed: int = 0

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)


# ---------------------------------------------------------------- dataset cache

def save_rows(path: str, rows: VerifierRows) -> None:
  """VerifierRows -> .npz, atomically (tmp + rename)."""
  arrays = {f.name: getattr(rows, f.name) for f in dataclasses.fields(rows)
            if f.name != "n_dropped"}
  atomic.save_npz(path, n_dropped=np.asarray(rows.n_dropped), **arrays)


def load_rows(path: str) -> VerifierRows:
  with np.load(path, allow_pickle=False) as z:
    arrays = {f.name: z[f.name] for f in dataclasses.fields(VerifierRows)
              if f.name != "n_dropped"}
    return VerifierRows(**arrays, n_dropped=int(z["n_dropped"]))


def load_or_make_dataset(dcfg: PrmDataConfig, policy_dir: str, cfg, params, tokenizer, task,
                         out_dir: str, *, batch_size: int = 256, progress: bool = True,
                         log: Callable[[str], None] = print,
                         spec: DatasetSpec = DatasetSpec()) -> tuple[VerifierRows, dict, bool]:
  """(rows, report, cached): out_dir's cached dataset when its key matches, else built.

  The report JSON (holding the key) is written after the npz, so its presence
  means the npz is complete.
  """
  data_path = os.path.join(out_dir, DATA_FILE)
  report_path = os.path.join(out_dir, DATA_REPORT_FILE)
  key = dict(dcfg.to_dict(), **ckpt_lib.weights_key("policy", policy_dir, params))
  if not spec.built_in:  # absent for the built-in task: its older caches stay valid
    key["task"] = spec.record()
  # Fields added since a cache was written take their defaults.
  cached = ckpt_lib.cached_report(data_path, report_path, key, "a PRM dataset",
                                  defaults=PrmDataConfig().to_dict())
  if cached is not None:
    log(f"reusing the cached dataset {data_path}")
    return load_rows(data_path), cached["report"], True
  problems = task.train_problems(dcfg.problem_seed, dcfg.num_questions)
  rows, report = make_verifier_dataset(
      cfg, params, tokenizer, task, problems, samples=dcfg.samples, rollouts=dcfg.rollouts,
      label=dcfg.label, contrastive_copies=dcfg.contrastive_copies,
      reference_chains=dcfg.reference_chains, temperature=dcfg.temperature, seed=dcfg.seed, row_len=dcfg.row_len,
      batch_size=batch_size, max_new_tokens=dcfg.max_new_tokens, progress=progress)
  save_rows(data_path, rows)
  ckpt_lib.write_json_atomic(report_path, {"key": key, "report": report})
  return rows, report, False


# ---------------------------------------------------------------- test questions

def evaluate_test_questions(cfg, params, tokenizer, task, vcfg: VerifierConfig,
                            tcfg: vt.VerifierTrainConfig, vparams, *, num_questions: int,
                            samples: int, temperature: float, seed: int, max_new_tokens: int,
                            row_len: int, batch_size: int = 256, progress: bool = True) -> dict:
  """Verifier ranking on K test questions x `samples` fresh policy samples.

  Questions are evenly strided over the test set (every difficulty level);
  every sample counts (an unparsable one is a wrong answer); step AUCs use
  the exact step labels (none where the task has no step checker).
  """
  from ttc_jax.decode import Temperature
  from ttc_jax.evaluation import sample_solutions
  test_set = task.test_problems()
  problems = test_set[::max(1, len(test_set) // num_questions)][:num_questions]
  bar = None
  if progress:
    from tqdm import tqdm
    bar = tqdm(total=len(problems) * samples, desc="test samples", dynamic_ncols=True)
  sampled = sample_solutions(cfg, params, tokenizer, task, problems, n=samples,
                             sampler=Temperature(temperature), seed=seed,
                             max_new_tokens=max_new_tokens, batch_size=batch_size, progress=bar)
  if bar is not None:
    bar.close()
  texts = [[task.solution_text(t) for t in ts] for ts in sampled.texts]
  labels = [[exact_step_labels(task, p, t) for t in ts] for p, ts in zip(problems, texts)]
  rows = build_rows(task, tokenizer, problems, texts, labels, row_len, source=SOURCE_SAMPLE)
  out = vt.evaluate_rows(vcfg, tcfg, vparams, rows)
  out.update(questions=len(problems), samples=samples, rows_dropped_too_long=rows.n_dropped)
  return out


# ---------------------------------------------------------------- the pipeline

def run(policy: str, out_dir: str, *, dcfg: PrmDataConfig, tcfg: vt.VerifierTrainConfig,
        spec: DatasetSpec = DatasetSpec(), policy_hf: bool = False,
        init_from: str | None = None, head: str = "value", held_out_fraction: float = 0.1,
        eval_test_questions: int = 0, test_samples: int | None = None,
        data_batch_size: int = 256, resume: bool = True,
        stop_at_step: int | None = None, progress: bool = True,
        log: Callable[[str], None] = print) -> dict:
  """Data (cached) -> training (resumable) -> evaluation; returns the summary dict.

  policy: a run directory, or a Hugging Face folder when policy_hf. spec: the
  task (default: the policy run's own). init_from: a run directory or a
  Hugging Face folder (one holding config.json and no checkpoints).
  """
  from ttc_jax.checkpoints import is_hf_folder, load_policy_source, tokenizer_record
  task = spec.load(None if policy_hf else policy)  # bad data fails before loading
  if not task.has_step_labels and (dcfg.label != "mc" or dcfg.contrastive_copies):
    raise ValueError(f"--dataset={spec.dataset} has no step checker: use --label=mc (Monte-"
                     "Carlo rollouts) and no --contrastive_copies")
  out_dir = os.path.abspath(out_dir)
  os.makedirs(out_dir, exist_ok=True)
  cfg, params, tokenizer = load_policy_source(policy, policy_hf)
  init_from = init_from or policy
  if os.path.abspath(init_from) == os.path.abspath(policy):
    init_cfg, init_params = cfg, params
  else:
    init_cfg, init_params, init_tok = load_policy_source(init_from, is_hf_folder(init_from))
    mine, theirs = tokenizer_record(tokenizer)["sha256"], tokenizer_record(init_tok)["sha256"]
    if mine != theirs:
      raise ValueError(f"--init_from={init_from} was trained with a different tokenizer than "
                       f"--policy={policy} (sha256 {theirs[:12]} vs {mine[:12]}): the verifier "
                       "reads the policy's token ids, so both must share one tokenizer")
  if dcfg.row_len > init_cfg.max_seq_len:
    raise ValueError(f"row_len {dcfg.row_len} exceeds the verifier backbone's max_seq_len "
                     f"{init_cfg.max_seq_len}")

  t0 = time.perf_counter()
  rows, report, cached = load_or_make_dataset(dcfg, policy, cfg, params, tokenizer, task,
                                              out_dir, batch_size=data_batch_size,
                                              progress=progress, log=log, spec=spec)
  log("data report: " + json.dumps(report, sort_keys=True, indent=1))
  log(f"dataset: {len(rows)} rows ({'cached' if cached else 'built'} in "
      f"{time.perf_counter() - t0:.1f}s)")
  train_rows, held_rows = split_by_question(rows, held_out_fraction, seed=tcfg.seed)
  log(f"split: {len(train_rows)} training rows, {len(held_rows)} held-out rows "
      f"({len(np.unique(held_rows.question_index))} questions)")

  vcfg = VerifierConfig(model=init_cfg, head=head, step_token_id=tokenizer.newline_id)
  meta = {"policy": os.path.abspath(policy), "init_from": os.path.abspath(init_from),
          "data": dcfg.to_dict(), "held_out_fraction": held_out_fraction}
  if not spec.built_in:
    meta["task"] = spec.record()
  result = vt.train_verifier(vcfg, init_params, train_rows, held_rows, tcfg, out_dir, tokenizer,
                             resume=resume, stop_at_step=stop_at_step, extra_meta=meta,
                             progress=progress, log=log)
  summary = {
      "out_dir": out_dir, "policy": meta["policy"], "init_from": meta["init_from"],
      "head": head, "objective": tcfg.objective, "label": dcfg.label,
      "verifier_params": vcfg.num_params(), "dataset_cached": cached,
      "rows": len(rows), "train_rows": len(train_rows), "held_out_rows": len(held_rows),
      "step": result.step, "total_steps": result.total_steps, "best_step": result.best_step,
      "stopped_early": result.stopped_early, "resumed_from": result.resumed_from,
      "train_s": result.train_s, "held_out": result.summary()["held_out"],
      "finished": result.stopped_early or result.step >= result.total_steps,
  }
  if eval_test_questions > 0 and summary["finished"]:
    test = evaluate_test_questions(
        cfg, params, tokenizer, task, vcfg, tcfg, result.params,
        num_questions=eval_test_questions, samples=test_samples or dcfg.samples,
        temperature=dcfg.temperature, seed=dcfg.seed + 1, max_new_tokens=dcfg.max_new_tokens,
        row_len=dcfg.row_len, batch_size=data_batch_size, progress=progress)
    summary["test"] = {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                       for k, v in test.items()}
  ckpt_lib.write_json_atomic(os.path.join(out_dir, SUMMARY_FILE), summary)
  return summary


def headline(summary: dict) -> str:
  """One line per evaluated set: within-question AUCs (answers, steps), pooled AUC."""
  fmt = lambda v: "n/a" if v is None else f"{v:.3f}"
  lines = []
  for name in ("held_out", "test"):
    m = summary.get(name)
    if m:
      lines.append(f"{name}: within-question AUC answers {fmt(m.get('answer_auc'))} "
                   f"steps {fmt(m.get('step_auc'))}; pooled AUC {fmt(m.get('pooled_auc'))}; "
                   f"best-of-N {fmt(m.get('best_of_n_accuracy'))} vs mean "
                   f"{fmt(m.get('mean_accuracy'))}")
  return "\n".join(lines)


# ---------------------------------------------------------------- CLI

def _define_flags(flag_values=None):
  """Defines the CLI flags on flag_values (default: absl's global FLAGS); returns it.

  Called only when run as a script (or by a test, on its own FlagValues), so
  importing this module next to other experiments never clashes over names.
  """
  from absl import flags
  fv = flag_values if flag_values is not None else flags.FLAGS
  on = {"flag_values": fv}
  from experiments import dataset_flags
  dataset_flags.define(fv)  # --dataset, --data_path, ..., --policy (labelled) / --policy_hf
  flags.DEFINE_string("init_from", None, "Policy run directory or Hugging Face folder whose "
                      "weights initialise the verifier backbone (default: the policy); must "
                      "share its tokenizer.", **on)
  flags.DEFINE_enum("head", "value", ["value", "token"], "Verifier head: a scalar value head "
                    "(the paper's) or the token-level head (ttc_jax.verifier.model).", **on)
  flags.DEFINE_enum("objective", "prm", list(vt.OBJECTIVES), "prm: every step labelled; "
                    "orm: only the last step, with the final answer's correctness.", **on)
  flags.DEFINE_enum("token_targets", "token", list(vt.TOKEN_TARGETS), "Token head under prm: "
                    "per-token correctness (token) or step labels on the prefix product (step).",
                    **on)
  flags.DEFINE_enum("label", "mc", ["mc", "exact", "both"], "Step labels: Monte-Carlo "
                    "rollouts, the exact step checker, or MC zeroed after a real mistake.", **on)
  flags.DEFINE_integer("num_train_questions", 1000, "Training-stream questions to label.", **on)
  flags.DEFINE_integer("problem_seed", 1, "Training-stream seed of those questions.", **on)
  flags.DEFINE_integer("samples", 16, "Policy samples per question.", **on)
  flags.DEFINE_integer("rollouts", 16, "MC rollouts per step prefix.", **on)
  flags.DEFINE_integer("contrastive_copies", 0, "Corrupted reference chains per question.", **on)
  flags.DEFINE_bool("reference_chains", False, "Also a row per question with its reference "
                    "solution (all steps correct).", **on)
  flags.DEFINE_float("temperature", 1.0, "Sampling temperature (samples and rollouts).", **on)
  flags.DEFINE_integer("max_new_tokens", 112, "Generation limit per solution / rollout.", **on)
  flags.DEFINE_integer("row_len", 128, "Verifier row width (longer rows are dropped).", **on)
  flags.DEFINE_integer("data_batch_size", 256, "Rows per decode call when labelling.", **on)
  flags.DEFINE_float("held_out_fraction", 0.1, "Share of questions held out (early stopping).",
                     **on)
  flags.DEFINE_float("lr", 3e-5, "Peak learning rate (paper: 3e-5).", **on)
  flags.DEFINE_integer("batch_size", 128, "Rows per optimizer step (paper: 128).", **on)
  flags.DEFINE_float("dropout", 0.05, "Residual dropout (paper: 0.05).", **on)
  flags.DEFINE_float("weight_decay", 0.01, "AdamW weight decay (matrices only).", **on)
  flags.DEFINE_float("warmup_frac", 0.05, "Linear warmup share of the steps.", **on)
  flags.DEFINE_float("max_epochs", 3.0, "Epochs over the training rows (unless --steps).", **on)
  flags.DEFINE_integer("steps", None, "Optimizer steps (overrides --max_epochs).", **on)
  flags.DEFINE_integer("patience", 5, "Evaluations without held-out improvement before "
                       "stopping (0: never).", **on)
  flags.DEFINE_integer("eval_every", 100, "Held-out evaluation + checkpoint every K steps.",
                       **on)
  flags.DEFINE_integer("log_every", 10, "Metrics line every K steps.", **on)
  flags.DEFINE_integer("seed", 0, "Sampling, split, init and batch-order seed.", **on)
  flags.DEFINE_string("out_dir", None, "Run directory (dataset cache, checkpoints, metrics).",
                      **on)
  flags.DEFINE_bool("resume", True, "Resume from out_dir's newest good checkpoint.", **on)
  flags.DEFINE_integer("stop_at_step", None, "Stop (with a checkpoint) at this step, as if "
                       "interrupted.", **on)
  flags.DEFINE_integer("eval_test_questions", 0, "Also evaluate on K test questions x "
                       "--test_samples fresh policy samples (0: off).", **on)
  flags.DEFINE_integer("test_samples", None, "Samples per test question (default: --samples; "
                       "more samples give more within-question pairs).", **on)
  flags.DEFINE_bool("progress", True, "Show progress bars.", **on)
  flags.mark_flags_as_required(["out_dir"], **on)
  return fv


def main(argv, flag_values=None) -> int:
  del argv
  from absl import flags, logging
  f = flag_values if flag_values is not None else flags.FLAGS
  logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
  dcfg = PrmDataConfig(num_questions=f.num_train_questions, problem_seed=f.problem_seed,
                       samples=f.samples, rollouts=f.rollouts, label=f.label,
                       contrastive_copies=f.contrastive_copies,
                       reference_chains=f.reference_chains, temperature=f.temperature,
                       max_new_tokens=f.max_new_tokens, row_len=f.row_len, seed=f.seed)
  tcfg = vt.VerifierTrainConfig(
      lr=f.lr, batch_size=f.batch_size, dropout=f.dropout, weight_decay=f.weight_decay,
      warmup_frac=f.warmup_frac, max_epochs=f.max_epochs, steps=f.steps,
      eval_every=f.eval_every, patience=f.patience, log_every=f.log_every, seed=f.seed,
      objective=f.objective, token_targets=f.token_targets)
  from experiments import dataset_flags
  policy, policy_hf = dataset_flags.policy(f)
  summary = run(policy, f.out_dir, dcfg=dcfg, tcfg=tcfg, spec=dataset_flags.spec(f),
                policy_hf=policy_hf, init_from=f.init_from, head=f.head,
                held_out_fraction=f.held_out_fraction,
                eval_test_questions=f.eval_test_questions, test_samples=f.test_samples,
                data_batch_size=f.data_batch_size,
                resume=f.resume, stop_at_step=f.stop_at_step, progress=f.progress,
                log=lambda s: print(s, flush=True))
  print("summary: " + json.dumps(summary, sort_keys=True), flush=True)
  print(headline(summary), flush=True)
  return 0


if __name__ == "__main__":
  from absl import app
  _define_flags()
  app.run(main)
