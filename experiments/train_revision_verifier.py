"""Trains the revision verifier: an ORM that reads each attempt after its previous attempts.

  python -m experiments.train_revision_verifier --revision_model=runs/revision_small \\
      --prm=runs/prm_small --questions=1000 --parallel=4 --length=4 --lr=3e-4 \\
      --out_dir=runs/revision_verifier_small

--dataset (experiments/dataset_flags.py): the task of the questions, prompts
and grading; the default is the revision model run's own. On a benchmark
(--dataset=gsm8k with --shots_path, the training questions) chain attempts
also end where their text ends in a blank line (as run_search's), and the
rows' exact step labels are NaN (no step checker there; the ORM learns the
outcome).

PAPER.md ("Revisions"): "a separate ORM trained on revision outputs with the
previous attempts in context", compared with the base PRM used as is.

1. Data (`ttc_jax.revision.verifier`): --parallel chains of --length
   attempts of the revision model on --questions training questions (stream
   --problem_seed, 3: the policy trains on 0, PRM data uses 1, revision data
   2), every attempt graded. One row per attempt: prompt part = BOS + prompt
   + the last --window previous attempts of its chain, each closed by EOS
   (what the revision model saw), completion = the attempt, label = its final
   correctness. Cached in out_dir (revision_verifier_data.npz, then
   revision_verifier_data.json, which marks it complete); a rerun reuses it
   (refused if the settings or the revision model's weights differ).
2. Training (`ttc_jax.train.verifier_train`, objective "orm": only each row's
   last step, labelled with the answer's correctness), the backbone from
   --init_from (a policy run, or a verifier run such as the base PRM; default
   the revision model), early stopping on held-out questions, resumable. The
   sidecar (verifier.json) and summary record that it scores attempts in
   revision context; `load_verifier(out_dir)` loads it, and
   `run_search --method=revisions --revision_verifier=out_dir` uses it.
3. Comparison on the held-out attempts: within-question AUC (a question's
   attempts over all its chains and steps), pooled AUC and best-of-N accuracy
   of the revision verifier; with --prm the base PRM on the same attempts
   after the question alone ("as is", how `revise` scores with a PRM), and
   with the context too. Printed and written to out_dir/summary.json.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from typing import Callable

import numpy as np

from ttc_jax import checkpoints as ckpt_lib
from ttc_jax.tasks.spec import DatasetSpec
from ttc_jax.train import verifier_train as vt

DATA_FILE = "revision_verifier_data.npz"
DATA_REPORT_FILE = "revision_verifier_data.json"
SUMMARY_FILE = "summary.json"
COMPARED = ("answer_auc", "answer_auc_per_question", "answer_pairs", "pooled_auc",
            "best_of_n_accuracy", "mean_accuracy", "loss")


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """What the attempts depend on (with the revision model's weights): the cache key."""
  num_questions: int = 1000
  problem_seed: int = 3
  parallel: int = 4
  length: int = 4
  window: int = 4
  max_attempt_tokens: int = 88  # as run_search: 4 previous attempts + one fit 512 positions
  temperature: float = 1.0
  row_len: int = 0  # 0: the longest row (rounded up to 16), so none is dropped
  seed: int = 0

  def revision_config(self, ends=None):
    """The chains' config; ends: where an attempt ends besides EOS (`token_ends`)."""
    from ttc_jax.decode import Temperature
    from ttc_jax.revision.chains import RevisionConfig
    return RevisionConfig(n=self.parallel * self.length, parallel=self.parallel,
                          max_attempt_tokens=self.max_attempt_tokens, window=self.window,
                          sampler=Temperature(self.temperature),
                          **({} if ends is None else {"ends": ends}))

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)


def load_or_make_dataset(dcfg: DataConfig, model_dir: str, cfg, params, tokenizer, task,
                         out_dir: str, *, batch_questions: int = 0, progress: bool = True,
                         log: Callable[[str], None] = print, spec: DatasetSpec = DatasetSpec()):
  """(rows, report, cached): out_dir's cached rows when their key matches, else
  chains sampled, graded and cached (the report, holding the key, last).
  spec: the --dataset `task` came from (a benchmark's files join the key)."""
  from experiments.train_prm import load_rows, save_rows
  from ttc_jax.evaluation import token_ends
  from ttc_jax.revision import verifier as rv
  data_path = os.path.join(out_dir, DATA_FILE)
  report_path = os.path.join(out_dir, DATA_REPORT_FILE)
  key = dict(dcfg.to_dict(), **ckpt_lib.weights_key("revision_model", model_dir, params))
  if not spec.built_in:  # the built-in task's key stays as caches made before --dataset
    key.update(spec.record())
  cached = ckpt_lib.cached_report(data_path, report_path, key, "revision-verifier data")
  if cached is not None:
    log(f"reusing the cached attempts {data_path}")
    return load_rows(data_path), cached["report"], True
  problems = task.train_problems(dcfg.problem_seed, dcfg.num_questions)
  t0 = time.perf_counter()
  bar = None
  if progress:
    from tqdm import tqdm
    bar = tqdm(total=len(problems), desc="revision chains", unit="question", dynamic_ncols=True)
  try:
    attempts = rv.sample_attempts(cfg, params, tokenizer, task, problems,
                                  dcfg.revision_config(token_ends(tokenizer, task)[1]),
                                  seed=dcfg.seed,
                                  batch_questions=batch_questions, progress=bar)
  finally:
    if bar is not None:
      bar.close()
  report = rv.attempt_stats(attempts)
  row_len = dcfg.row_len or -(-report["max_row_tokens"] // 16) * 16
  rows = rv.attempt_rows(task, tokenizer, problems, attempts, row_len)
  report.update(row_len=row_len, rows=len(rows), rows_dropped_too_long=rows.n_dropped,
                sample_seconds=time.perf_counter() - t0)
  save_rows(data_path, rows)
  ckpt_lib.write_json_atomic(report_path, {"key": key, "report": report})
  return rows, report, False


def load_backbone(init_from: str, tokenizer):
  """(model config, lm params) of --init_from: a verifier run (its backbone) or
  a policy run; it must share the revision model's tokenizer."""
  from ttc_jax.verifier.checkpoint import SIDECAR_FILE, load_verifier
  if os.path.exists(os.path.join(init_from, SIDECAR_FILE)):
    vcfg, vparams, tok = load_verifier(init_from)
    cfg, params = vcfg.model, vparams["lm"]
  else:
    cfg, params, tok = ckpt_lib.load_policy(init_from)
  if ckpt_lib.tokenizer_record(tok)["sha256"] != ckpt_lib.tokenizer_record(tokenizer)["sha256"]:
    raise ValueError(f"--init_from={init_from} uses a different tokenizer than the revision "
                     "model: the verifier reads its token ids")
  return cfg, params


def compare_prm(prm: str, tokenizer, task, dcfg: DataConfig, tcfg: vt.VerifierTrainConfig,
                held_rows) -> dict:
  """The base PRM on the held-out attempts: after the question alone ("as is")
  and after the same context as the revision verifier."""
  from ttc_jax.evaluation import prompt_ids
  from ttc_jax.revision.verifier import strip_context
  from ttc_jax.verifier.checkpoint import load_verifier
  pvcfg, pparams, ptok = load_verifier(prm)
  if ckpt_lib.tokenizer_record(ptok)["sha256"] != ckpt_lib.tokenizer_record(tokenizer)["sha256"]:
    raise ValueError(f"--prm={prm} uses a different tokenizer than the revision model")
  problems = task.train_problems(dcfg.problem_seed, dcfg.num_questions)
  bare = np.asarray([len(prompt_ids(task, tokenizer, problems[q]))
                     for q in held_rows.question_index], np.int32)
  as_is = strip_context(held_rows, bare, tokenizer.pad_id)
  return {"prm_as_is": vt.evaluate_rows(pvcfg, tcfg, pparams, as_is),
          "prm_in_context": vt.evaluate_rows(pvcfg, tcfg, pparams, held_rows)}


def _finite(d: dict) -> dict:
  return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in d.items()}


def run(revision_model: str, out_dir: str, *, dcfg: DataConfig, tcfg: vt.VerifierTrainConfig,
        init_from: str | None = None, prm: str | None = None, head: str = "value",
        held_out_fraction: float = 0.1, batch_questions: int = 0, resume: bool = True,
        stop_at_step: int | None = None, progress: bool = True,
        log: Callable[[str], None] = print, spec: DatasetSpec = DatasetSpec()) -> dict:
  """Attempts (cached) -> ORM training (resumable) -> comparison; returns the summary.
  spec: the task (default: the revision model run's own)."""
  from ttc_jax.verifier.data import split_by_question
  from ttc_jax.verifier.model import VerifierConfig
  if tcfg.objective != "orm":
    raise ValueError(f"the revision verifier is an ORM (objective 'orm'), got {tcfg.objective!r}")
  task = spec.load(revision_model)  # bad flags or data fail before loading weights
  out_dir = os.path.abspath(out_dir)
  os.makedirs(out_dir, exist_ok=True)
  cfg, params, tokenizer = ckpt_lib.load_policy(revision_model)
  init_from = os.path.abspath(init_from or revision_model)
  if init_from == os.path.abspath(revision_model):
    init_cfg, init_params = cfg, params
  else:
    init_cfg, init_params = load_backbone(init_from, tokenizer)

  t0 = time.perf_counter()
  rows, report, cached = load_or_make_dataset(dcfg, revision_model, cfg, params, tokenizer,
                                              task, out_dir, batch_questions=batch_questions,
                                              progress=progress, log=log, spec=spec)
  log("data report: " + json.dumps(report, sort_keys=True))
  log(f"attempts: {len(rows)} rows ({'cached' if cached else 'built'} in "
      f"{time.perf_counter() - t0:.1f}s)")
  if rows.row_len > init_cfg.max_seq_len:
    raise ValueError(f"rows of {rows.row_len} tokens exceed the backbone's max_seq_len "
                     f"{init_cfg.max_seq_len}")
  train_rows, held_rows = split_by_question(rows, held_out_fraction, seed=tcfg.seed)
  log(f"split: {len(train_rows)} training rows, {len(held_rows)} held-out rows "
      f"({len(np.unique(held_rows.question_index))} questions)")

  vcfg = VerifierConfig(model=init_cfg, head=head, step_token_id=tokenizer.newline_id)
  scoring = {"in_context": True, "window": dcfg.window, "format": "ttc_jax.revision.format",
             "revision_model": os.path.abspath(revision_model),
             "reads": "BOS + prompt + the last `window` previous attempts of the chain, each "
                      "closed by EOS, then the attempt (ttc_jax.revision.verifier)"}
  meta = {"revision_verifier": scoring, "init_from": init_from, "data": dcfg.to_dict(),
          "held_out_fraction": held_out_fraction}
  result = vt.train_verifier(vcfg, init_params, train_rows, held_rows, tcfg, out_dir, tokenizer,
                             resume=resume, stop_at_step=stop_at_step, extra_meta=meta,
                             progress=progress, log=log)
  finished = result.stopped_early or result.step >= result.total_steps
  summary = {
      "out_dir": out_dir, "revision_model": scoring["revision_model"], "init_from": init_from,
      "dataset": spec.record(),
      "prm": prm and os.path.abspath(prm), "head": head, "objective": tcfg.objective,
      "revision_verifier": scoring, "data": report, "data_config": dcfg.to_dict(),
      "dataset_cached": cached, "rows": len(rows), "train_rows": len(train_rows),
      "held_out_rows": len(held_rows),
      "held_out_questions": int(len(np.unique(held_rows.question_index))),
      "step": result.step, "total_steps": result.total_steps, "best_step": result.best_step,
      "stopped_early": result.stopped_early, "resumed_from": result.resumed_from,
      "train_s": result.train_s, "held_out": result.summary()["held_out"], "finished": finished,
  }
  if finished and len(held_rows):
    compared = {"revision_verifier": {k: summary["held_out"].get(k) for k in COMPARED}}
    if prm:
      for name, metrics in compare_prm(prm, tokenizer, task, dcfg, tcfg, held_rows).items():
        compared[name] = {k: v for k, v in _finite(metrics).items() if k in COMPARED}
    summary["comparison"] = compared
  ckpt_lib.write_json_atomic(os.path.join(out_dir, SUMMARY_FILE), summary)
  return summary


def headline(summary: dict) -> str:
  """One line per scorer compared on the held-out attempts."""
  fmt = lambda v: "n/a" if v is None else f"{v:.3f}"
  lines = []
  for name, m in summary.get("comparison", {}).items():
    lines.append(f"{name}: within-question AUC {fmt(m.get('answer_auc'))} "
                 f"({m.get('answer_pairs')} pairs); pooled AUC {fmt(m.get('pooled_auc'))}; "
                 f"best-of-N {fmt(m.get('best_of_n_accuracy'))} vs mean "
                 f"{fmt(m.get('mean_accuracy'))}")
  return "\n".join(lines)


# ---------------------------------------------------------------- CLI

def _define_flags(flag_values=None):
  """Defines the CLI flags on flag_values (default: absl's global FLAGS); returns it."""
  from absl import flags
  from experiments import dataset_flags
  fv = flag_values if flag_values is not None else flags.FLAGS
  on = {"flag_values": fv}
  d, t = DataConfig(), vt.VerifierTrainConfig()
  dataset_flags.define(fv, policy_flag=None)  # --dataset, ...: the model is --revision_model
  flags.DEFINE_string("revision_model", None, "Revision model run directory "
                      "(experiments/train_revision.py --out_dir, or any policy run).", **on)
  flags.DEFINE_string("init_from", None, "Backbone of the verifier: a policy run or a verifier "
                      "run (e.g. the base PRM); default: --revision_model.", **on)
  flags.DEFINE_string("prm", None, "Base PRM run directory to compare with on the same "
                      "held-out attempts (optional).", **on)
  flags.DEFINE_enum("head", "value", ["value", "token"], "Verifier head.", **on)
  flags.DEFINE_integer("questions", d.num_questions, "Training-stream questions.", **on)
  flags.DEFINE_integer("problem_seed", d.problem_seed, "Training-stream seed of those questions "
                       "(policy 0, PRM data 1, revision data 2).", **on)
  flags.DEFINE_integer("parallel", d.parallel, "Chains per question (P).", **on)
  flags.DEFINE_integer("length", d.length, "Attempts per chain (L).", **on)
  flags.DEFINE_integer("window", d.window, "Previous attempts in the context (paper: 4).", **on)
  flags.DEFINE_integer("max_attempt_tokens", d.max_attempt_tokens, "Tokens per attempt (use "
                       "run_search's --max_attempt_tokens: the verifier sees the same "
                       "contexts).", **on)
  flags.DEFINE_float("temperature", d.temperature, "Chain sampling temperature.", **on)
  flags.DEFINE_integer("row_len", d.row_len, "Verifier row width (0: the longest row).", **on)
  flags.DEFINE_integer("batch_questions", 0, "Questions per chain call (0: ~256 chain rows).",
                       **on)
  flags.DEFINE_float("held_out_fraction", 0.1, "Share of questions held out (early stopping, "
                     "comparison).", **on)
  flags.DEFINE_float("lr", t.lr, "Peak learning rate.", **on)
  flags.DEFINE_integer("batch_size", t.batch_size, "Rows per optimizer step.", **on)
  flags.DEFINE_float("dropout", t.dropout, "Residual dropout.", **on)
  flags.DEFINE_float("weight_decay", t.weight_decay, "AdamW weight decay.", **on)
  flags.DEFINE_float("warmup_frac", t.warmup_frac, "Linear warmup share of the steps.", **on)
  flags.DEFINE_float("max_epochs", t.max_epochs, "Epochs (unless --steps).", **on)
  flags.DEFINE_integer("steps", None, "Optimizer steps (overrides --max_epochs).", **on)
  flags.DEFINE_integer("patience", t.patience, "Evaluations without improvement before "
                       "stopping (0: never).", **on)
  flags.DEFINE_integer("eval_every", t.eval_every, "Held-out evaluation + checkpoint every K "
                       "steps.", **on)
  flags.DEFINE_integer("log_every", t.log_every, "Metrics line every K steps.", **on)
  flags.DEFINE_integer("seed", 0, "Chain sampling, split, init and batch-order seed.", **on)
  flags.DEFINE_string("out_dir", None, "Run directory (attempts cache, checkpoints, summary).",
                      **on)
  flags.DEFINE_bool("resume", True, "Resume from out_dir's newest good checkpoint.", **on)
  flags.DEFINE_integer("stop_at_step", None, "Stop (with a checkpoint) at this step.", **on)
  flags.DEFINE_bool("progress", True, "Show progress bars.", **on)
  flags.mark_flags_as_required(["revision_model", "out_dir"], **on)
  return fv


def configs_from_flags(f) -> tuple[DataConfig, vt.VerifierTrainConfig]:
  dcfg = DataConfig(num_questions=f.questions, problem_seed=f.problem_seed,
                    parallel=f.parallel, length=f.length, window=f.window,
                    max_attempt_tokens=f.max_attempt_tokens, temperature=f.temperature,
                    row_len=f.row_len, seed=f.seed)
  tcfg = vt.VerifierTrainConfig(
      lr=f.lr, batch_size=f.batch_size, dropout=f.dropout, weight_decay=f.weight_decay,
      warmup_frac=f.warmup_frac, max_epochs=f.max_epochs, steps=f.steps,
      eval_every=f.eval_every, patience=f.patience, log_every=f.log_every, seed=f.seed,
      objective="orm")
  return dcfg, tcfg


def main(argv, flag_values=None) -> int:
  del argv
  from absl import flags, logging
  f = flag_values if flag_values is not None else flags.FLAGS
  logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
  from experiments import dataset_flags
  spec = dataset_flags.spec(f)
  try:
    spec.check()
  except ValueError as e:
    from absl import app
    raise app.UsageError(str(e)) from None
  dcfg, tcfg = configs_from_flags(f)
  summary = run(f.revision_model, f.out_dir, dcfg=dcfg, tcfg=tcfg, init_from=f.init_from,
                prm=f.prm, head=f.head, held_out_fraction=f.held_out_fraction,
                batch_questions=f.batch_questions, resume=f.resume,
                stop_at_step=f.stop_at_step, progress=f.progress,
                log=lambda s: print(s, flush=True), spec=spec)
  print("summary: " + json.dumps(summary, sort_keys=True), flush=True)
  print(headline(summary), flush=True)
  return 0


if __name__ == "__main__":
  from absl import app
  _define_flags()
  app.run(main)
