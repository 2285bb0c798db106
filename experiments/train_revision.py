"""Fine-tunes a policy into a revision model (PAPER.md, "Revisions").

  python -m experiments.train_revision --policy=runs/small --out_dir=runs/revision_small \\
      --num_train_questions=2000 --samples=64 --temperature=1.2 --batch_size=128
  python -m experiments.train_revision --policy=runs/gsm8k_small --out_dir=runs/rev_gsm8k \\
      --dataset=gsm8k --data_path=gsm8k/test.jsonl --shots_path=gsm8k/train.jsonl --num_shots=0

--dataset (experiments/dataset_flags.py): the task of the questions, prompts
and grading; the default is the policy run's own. A benchmark's training
questions come from --shots_path (train_policy --dataset records the same
flags: pass them again). --policy_hf: a Hugging Face folder instead of a run
directory (needs --dataset); its weights are fine-tuned as they are.

1. Data (`ttc_jax.revision.data`): --samples solutions per training question
   (stream --problem_seed; never a test question) at --temperature; invalid
   samples dropped; one example per correct sample with k ~ U{0..4} incorrect
   samples of its question as previous attempts, the closest one (character
   edit distance) last; rows in `ttc_jax.revision.format`. Questions are split
   into training and held-out ones (--held_out_fraction). Expensive, so cached
   in out_dir (revision_data.npz, revision_examples.jsonl, then
   revision_data.json last, which marks the cache complete) and reused on a
   rerun (refused if the settings or the policy's weights differ).
2. Training (`ttc_jax.train.loop.train` on those rows, from the policy's
   params, into out_dir/train/): next-token loss on the target + EOS only,
   AdamW, no dropout, held-out loss every --eval_every steps (and at step 0,
   the policy itself), a checkpoint at every evaluation (all kept). Killed at
   any point, a rerun resumes from the newest good checkpoint.
3. Checkpoint choice, "slightly past the start of held-out overfitting": let
   m be the first evaluated step with the lowest held-out loss (step 0
   included); the choice is the next evaluated step after m, or m itself when
   m is the last evaluation (the loss never rose). Step 0 is never chosen.
   With --patience=P > 0 training stops once P evaluations in a row came
   after the minimum without beating it (then the choice exists); P = 0
   trains all steps.
4. The chosen params are saved as an ordinary policy checkpoint in out_dir
   (checkpoints/<step>/, policy.json, tokenizer.model), so
   `ttc_jax.checkpoints.load_policy(out_dir)` loads the revision model, and
   out_dir/revision.json records the rule, the chosen step, the eval curve
   and the data statistics (written last; "finished" says the run is done).

Learning rate: the paper fine-tunes PaLM 2-S* at 1e-5; a model of 0.2-3M
parameters barely moves at that rate in a few hundred steps (these policies
pretrain at peaks of 1.5e-3-3e-3, ttc_jax/train/presets.py). Measured on the
`small` policy (256 questions x 16 samples at 1.2, 1291 training rows, batch
64, eval every 25 steps, CPU): lr 3e-4 took the held-out loss from 3.15 (the
policy) to 0.69 at step 150, still falling; lr 1e-3 reached 0.25 at step 150,
its minimum 0.241 at step 225, and the rule chose step 250. Hence the default
1e-3; the checkpoint choice guards against a rate that overfits early.
Sampling temperature: "higher" than the 1.0 the searches and
evaluations sample at, for more varied incorrect attempts; the share of
invalid samples it costs is in the data statistics.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import time
from typing import Callable

import numpy as np

from ttc_jax import atomic
from ttc_jax import checkpoints as ckpt_lib
from ttc_jax.revision import data as rdata
from ttc_jax.tasks.spec import DatasetSpec
from ttc_jax.train.data import DataConfig, Rows, scale_buckets

DATA_FILE = "revision_data.npz"
DATA_REPORT_FILE = "revision_data.json"
EXAMPLES_FILE = "revision_examples.jsonl"
RESULT_FILE = "revision.json"
TRAIN_SUBDIR = "train"
PRESET_NAME = "revision"
RULE = ("m = the first evaluated step with the lowest held-out loss (step 0, the policy, "
        "included); chosen = the next evaluated step after m, or m when m is the last "
        "evaluation; step 0 is never chosen")


@dataclasses.dataclass(frozen=True)
class RevisionDataConfig:
  """What the revision dataset depends on (with the policy's weights): its cache key."""
  num_questions: int = 1000
  problem_seed: int = 2  # policies train on stream 0, PRM data uses 1
  samples: int = 64
  temperature: float = 1.2
  max_new_tokens: int = 112
  row_len: int = 512
  held_out_fraction: float = 0.1
  seed: int = 0

  def __post_init__(self):
    if self.num_questions < 2 or self.samples < 1:
      raise ValueError(f"need >= 2 questions and >= 1 sample, got {self}")
    if not 0.0 < self.held_out_fraction < 1.0:
      raise ValueError("held_out_fraction must be in (0, 1): the checkpoint choice needs a "
                       f"held-out loss (got {self.held_out_fraction})")

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class RevisionTrainConfig:
  """Fine-tuning settings (paper: AdamW lr 1e-5, batch 128, no dropout)."""
  lr: float = 1e-3
  batch_size: int = 128
  steps: int | None = None  # default: from epochs
  epochs: float = 3.0
  warmup_frac: float = 0.05
  min_lr_ratio: float = 0.1
  weight_decay: float = 0.01
  grad_accum: int = 1
  eval_every: int = 50
  log_every: int = 10
  patience: int = 3
  seed: int = 0
  buckets: tuple[int, ...] = ()  # default: row_len / 4, 2/4, 3/4, 1
  sort_window: int = 32

  def resolve_steps(self, n_train_rows: int) -> int:
    if self.steps is not None:
      return self.steps
    return max(1, math.ceil(self.epochs * n_train_rows / self.batch_size))


# ---------------------------------------------------------------- eval curve / choice

def read_eval_curve(metrics_path: str, max_step: int | None = None) -> list[tuple[int, float]]:
  """(step, held-out loss) of the run's evaluations, ascending, one per step
  (the last line wins); NaN / missing losses read as +inf."""
  if not os.path.exists(metrics_path):
    return []
  by_step = {}
  with open(metrics_path) as f:
    for line in f:
      try:
        rec = json.loads(line)
      except json.JSONDecodeError:
        continue  # a torn last line of a killed run
      if rec.get("kind") != "eval" or (max_step is not None and rec["step"] > max_step):
        continue
      loss = rec.get("eval_loss")
      by_step[int(rec["step"])] = math.inf if loss is None or not math.isfinite(loss) else loss
  return sorted(by_step.items())


def evals_past_minimum(curve: list[tuple[int, float]]) -> int:
  """How many evaluations came after the (first) lowest one."""
  if not curve:
    return 0
  losses = [loss for _, loss in curve]
  return len(curve) - 1 - losses.index(min(losses))


def choose_step(curve: list[tuple[int, float]]) -> tuple[int, int]:
  """(chosen step, minimum step) by the rule in RULE."""
  if not curve or curve[-1][0] == 0:
    raise ValueError("no evaluation after step 0 to choose from")
  losses = [loss for _, loss in curve]
  m = losses.index(min(losses))
  chosen = m + 1 if m + 1 < len(curve) else m
  return curve[chosen][0], curve[m][0]


# ---------------------------------------------------------------- dataset cache

def save_rows(path: str, train: Rows, held: Rows) -> None:
  arrays = {}
  for name, rows in (("train", train), ("held", held)):
    arrays.update({f"{name}_tokens": rows.tokens, f"{name}_mask": rows.mask,
                   f"{name}_lengths": rows.lengths,
                   f"{name}_n_dropped": np.asarray(rows.n_dropped)})
  atomic.save_npz(path, **arrays)


def load_rows(path: str) -> tuple[Rows, Rows]:
  with np.load(path, allow_pickle=False) as z:
    return tuple(Rows(z[f"{n}_tokens"], z[f"{n}_mask"], z[f"{n}_lengths"],
                      int(z[f"{n}_n_dropped"])) for n in ("train", "held"))


def make_dataset(dcfg: RevisionDataConfig, cfg, params, tokenizer, task, *,
                 batch_size: int = 256, progress: bool = True, mesh=None
                 ) -> tuple[Rows, Rows, list[dict], dict]:
  """(train rows, held-out rows, example records, stats): samples, examples,
  split by question, rows."""
  problems = task.train_problems(dcfg.problem_seed, dcfg.num_questions)
  bar = None
  if progress:
    from tqdm import tqdm
    bar = tqdm(total=len(problems) * dcfg.samples, desc="revision samples", unit="sample",
               dynamic_ncols=True)
  try:
    examples, stats = rdata.sample_revision_examples(
        cfg, params, tokenizer, task, problems, samples=dcfg.samples,
        temperature=dcfg.temperature, max_new_tokens=dcfg.max_new_tokens, seed=dcfg.seed,
        batch_size=batch_size, progress=bar, mesh=mesh)
  finally:
    if bar is not None:
      bar.close()
  train_q, held_q = rdata.split_questions(len(problems), dcfg.held_out_fraction, dcfg.seed)
  held_set = set(held_q.tolist())
  train_ex = [e for e in examples if e.question not in held_set]
  held_ex = [e for e in examples if e.question in held_set]
  train = rdata.tokenize_examples(task, tokenizer, problems, train_ex, dcfg.row_len)
  held = rdata.tokenize_examples(task, tokenizer, problems, held_ex, dcfg.row_len)
  stats.update(
      train_questions=len(train_q), held_out_questions=len(held_q),
      train_examples=len(train_ex), held_out_examples=len(held_ex),
      train_rows=len(train), held_out_rows=len(held),
      rows_dropped_too_long=train.n_dropped + held.n_dropped,
      mean_row_tokens=float(train.lengths.mean()) if len(train) else 0.0,
      max_row_tokens=int(train.lengths.max()) if len(train) else 0)
  records = [{"question": e.question, "uid": problems[e.question].uid,
              "split": "held_out" if e.question in held_set else "train",
              "attempts": list(e.attempts), "target": e.target, "drawn_k": e.drawn_k}
             for e in examples]
  return train, held, records, stats


def load_or_make_dataset(dcfg: RevisionDataConfig, policy_dir: str, cfg, params, tokenizer,
                         task, out_dir: str, *, batch_size: int = 256, progress: bool = True,
                         mesh=None, log: Callable[[str], None] = print,
                         spec: DatasetSpec = DatasetSpec()) -> tuple[Rows, Rows, dict, bool]:
  """(train rows, held-out rows, stats, cached): out_dir's cache when its key
  matches, else built and cached (the report, holding the key, last). spec:
  the --dataset `task` came from (a benchmark's files join the key)."""
  data_path = os.path.join(out_dir, DATA_FILE)
  report_path = os.path.join(out_dir, DATA_REPORT_FILE)
  key = dict(dcfg.to_dict(), **ckpt_lib.weights_key("policy", policy_dir, params))
  if not spec.built_in:  # the built-in task's key stays as caches made before --dataset
    key.update(spec.record())
  cached = ckpt_lib.cached_report(data_path, report_path, key, "revision data")
  if cached is not None:
    log(f"reusing the cached revision data {data_path}")
    train, held = load_rows(data_path)
    return train, held, cached["stats"], True
  train, held, records, stats = make_dataset(dcfg, cfg, params, tokenizer, task,
                                             batch_size=batch_size, progress=progress,
                                             mesh=mesh)
  save_rows(data_path, train, held)
  atomic.write_lines(os.path.join(out_dir, EXAMPLES_FILE),
                     (json.dumps(r, sort_keys=True) for r in records))
  ckpt_lib.write_json_atomic(report_path, {"key": key, "stats": stats})
  return train, held, stats, False


# ---------------------------------------------------------------- training

def default_buckets(row_len: int) -> tuple[int, ...]:
  """Four padded lengths up to row_len (quarters, multiples of 8)."""
  return scale_buckets((1, 2, 3, 4), row_len)


def revision_preset(cfg, policy_data: DataConfig, dcfg: RevisionDataConfig,
                    tcfg: RevisionTrainConfig, n_train_rows: int, n_held_questions: int):
  """The loop's Preset for this fine-tuning run: the policy's model and task,
  the revision rows' lengths, the fine-tuning hyperparameters."""
  from ttc_jax.train.presets import Preset, TrainConfig
  steps = tcfg.resolve_steps(n_train_rows)
  data = DataConfig(
      task=policy_data.task, task_options=policy_data.task_options,
      n_train_problems=dcfg.num_questions - n_held_questions,
      n_eval_problems=n_held_questions, data_seed=dcfg.problem_seed,
      tokenizer_vocab_size=policy_data.tokenizer_vocab_size,
      tokenizer_samples=policy_data.tokenizer_samples,
      tokenizer_seed=policy_data.tokenizer_seed, row_len=dcfg.row_len,
      buckets=tcfg.buckets or default_buckets(dcfg.row_len), sort_window=tcfg.sort_window)
  train = TrainConfig(
      batch_size=tcfg.batch_size, lr=tcfg.lr, steps=steps, grad_accum=tcfg.grad_accum,
      warmup_frac=tcfg.warmup_frac, min_lr_ratio=tcfg.min_lr_ratio,
      weight_decay=tcfg.weight_decay, seed=tcfg.seed, eval_every=tcfg.eval_every,
      ckpt_every=tcfg.eval_every, log_every=tcfg.log_every,
      # Every evaluated step must stay loadable until the choice is made.
      keep_checkpoints=steps // max(1, tcfg.eval_every) + 16)
  return Preset(name=PRESET_NAME, model=cfg, train=train, data=data)


def _last_checkpoint_step(run_dir: str) -> int:
  if not os.path.isdir(ckpt_lib.checkpoint_dir(run_dir)):
    return 0
  with ckpt_lib.Checkpointer(run_dir, max_to_keep=None, read_only=True) as ckpt:
    steps = ckpt.steps()
  return max(steps) if steps else 0


def _training_done(run_dir: str, total_steps: int, patience: int) -> bool:
  """Whether the fine-tuning run already ended (all steps, or stopped by patience)."""
  last = _last_checkpoint_step(run_dir)
  if last >= total_steps:
    return True
  curve = read_eval_curve(os.path.join(run_dir, "metrics.jsonl"), max_step=last)
  return last > 0 and patience > 0 and evals_past_minimum(curve) >= patience


def save_chosen(run_dir: str, out_dir: str, step: int, extra_meta: dict) -> None:
  """Copies the run's checkpoint `step` into out_dir as the only policy
  checkpoint there (checkpoints/<step>/ + policy.json + tokenizer.model)."""
  from ttc_jax.checkpoints import load_policy
  _, params, tokenizer = load_policy(run_dir, step=step)
  with ckpt_lib.Checkpointer(run_dir, max_to_keep=None, read_only=True) as src:
    meta = src.read_meta(step)
  meta = {k: v for k, v in meta.items() if k not in ("fingerprint", "format", "step")}
  meta.update(extra_meta)
  # Another step left by an earlier choice goes first: load_policy takes the
  # newest step, and no checkpoint at all fails louder than a wrong one.
  shutil.rmtree(ckpt_lib.checkpoint_dir(out_dir), ignore_errors=True)
  with ckpt_lib.Checkpointer(out_dir, max_to_keep=None) as dst:
    dst.save(step, params, {"step": np.asarray(step, np.int32)}, meta)
  tokenizer.save(out_dir)
  sidecar = {k: meta[k] for k in ("model_config", "preset", "tokenizer", "task", "data",
                                  "train", "total_steps") if k in meta}
  sidecar.update(extra_meta)
  ckpt_lib.write_json_atomic(os.path.join(out_dir, ckpt_lib.SIDECAR_FILE), sidecar)


def _saved_choice(out_dir: str) -> int | None:
  """The step of out_dir's finished revision model, if one is recorded and present."""
  path = os.path.join(out_dir, RESULT_FILE)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    prev = json.load(f)
  if not prev.get("finished"):
    return None
  if not os.path.isdir(ckpt_lib.checkpoint_dir(out_dir)):
    return None
  with ckpt_lib.Checkpointer(out_dir, max_to_keep=None, read_only=True) as ckpt:
    steps = ckpt.steps()
  return prev["chosen_step"] if steps == [prev["chosen_step"]] else None


# ---------------------------------------------------------------- the pipeline

def policy_data_config(policy: str, hf: bool, spec: DatasetSpec, task) -> DataConfig:
  """The data config the revision run records: the policy run's own (its task
  and tokenizer settings; defaults for a Hugging Face folder), on the --dataset
  task when one is given."""
  side = {} if hf else ckpt_lib.read_sidecar(
      ckpt_lib._resolve_run_dir(policy)) or {}  # pylint: disable=protected-access
  data = DataConfig.from_dict(side["data"]) if "data" in side else DataConfig()
  return data if spec.built_in else data.with_dataset(spec, task)


def run(policy: str, out_dir: str, *, dcfg: RevisionDataConfig, tcfg: RevisionTrainConfig,
        data_batch_size: int = 256, resume: bool = True, stop_at_step: int | None = None,
        progress: bool = True, mesh=None, log: Callable[[str], None] | None = print,
        spec: DatasetSpec = DatasetSpec(), hf: bool = False) -> dict:
  """Data (cached) -> fine-tuning (resumable) -> checkpoint choice -> revision.json.

  spec: the task (default: the policy run's own). hf: policy is a Hugging Face
  folder (`load_policy_source`), fine-tuned with its own model config."""
  log = log or (lambda s: None)
  from ttc_jax import sharding
  from ttc_jax.checkpoints import load_policy_source
  from ttc_jax.train.loop import train
  import jax
  if jax.process_count() > 1:  # the stop rule reads metrics.jsonl, which process 0 writes
    raise NotImplementedError("train_revision runs in one process (any number of devices)")
  out_dir = os.path.abspath(out_dir)
  run_dir = os.path.join(out_dir, TRAIN_SUBDIR)
  task = spec.load(None if hf else policy)  # bad flags or data fail before loading weights
  os.makedirs(out_dir, exist_ok=True)
  cfg, params, tokenizer = load_policy_source(policy, hf)
  if dcfg.row_len > cfg.max_seq_len:
    raise ValueError(f"row_len {dcfg.row_len} exceeds the policy's max_seq_len "
                     f"{cfg.max_seq_len}")
  policy_data = policy_data_config(policy, hf, spec, task)
  mesh = mesh if mesh is not None else sharding.make_mesh()

  t0 = time.perf_counter()
  sample_params = sharding.shard_params(params, cfg, mesh)
  train_rows, held_rows, stats, cached = load_or_make_dataset(
      dcfg, policy, cfg, sample_params, tokenizer, task, out_dir, batch_size=data_batch_size,
      progress=progress, mesh=mesh, log=log, spec=spec)
  log("revision data: " + json.dumps(stats, sort_keys=True))
  log(f"dataset: {len(train_rows)} training rows, {len(held_rows)} held-out rows "
      f"({'cached' if cached else 'built'} in {time.perf_counter() - t0:.1f}s)")
  if len(train_rows) == 0 or len(held_rows) == 0:
    raise ValueError(f"no {'training' if len(train_rows) == 0 else 'held-out'} revision rows "
                     f"(stats {stats}): more questions or samples, or a stronger policy")

  preset = revision_preset(cfg, policy_data, dcfg, tcfg, len(train_rows),
                           stats["held_out_questions"])
  total_steps = preset.train.steps
  metrics_path = os.path.join(run_dir, "metrics.jsonl")
  done = _training_done(run_dir, total_steps, tcfg.patience)

  def should_stop(step: int, loss) -> bool:
    del step, loss  # the whole curve decides, as a rerun would read it
    return tcfg.patience > 0 and evals_past_minimum(read_eval_curve(metrics_path)) >= tcfg.patience

  if done:
    log(f"training already finished in {run_dir}")
  else:
    train(preset, run_dir, mesh=mesh, resume=resume, stop_at_step=stop_at_step,
          progress=progress, measure_peak=False, log=log, rows=(train_rows, held_rows),
          initial_params=params, tokenizer=tokenizer, eval_at_start=True,
          should_stop=should_stop)
    done = _training_done(run_dir, total_steps, tcfg.patience)
  last = _last_checkpoint_step(run_dir)
  curve = read_eval_curve(metrics_path, max_step=last)
  summary = {
      "policy": os.path.abspath(policy), "out_dir": out_dir, "train_dir": run_dir,
      "dataset": spec.record(),
      "finished": False, "rule": RULE, "patience": tcfg.patience,
      "eval_curve": [{"step": s, "eval_loss": (None if math.isinf(l) else l)}
                     for s, l in curve],
      "steps_trained": last, "total_steps": total_steps,
      "stopped_early": bool(done and last < total_steps),
      "data_config": dcfg.to_dict(), "train_config": preset.train.to_dict(),
      "data": stats, "dataset_cached": cached,
      "train_rows": len(train_rows), "held_out_rows": len(held_rows),
      "chosen_step": None, "min_step": None,
  }
  result_path = os.path.join(out_dir, RESULT_FILE)
  if not done:  # interrupted (--stop_at_step): the curve so far, no choice yet
    ckpt_lib.write_json_atomic(result_path, summary)
    return summary
  chosen, min_step = choose_step(curve)
  losses = dict(curve)
  finite = lambda x: None if x is None or math.isinf(x) else x
  summary.update(chosen_step=chosen, min_step=min_step, min_eval_loss=finite(losses[min_step]),
                 chosen_eval_loss=finite(losses[chosen]), base_eval_loss=finite(losses.get(0)))
  if _saved_choice(out_dir) == chosen:
    log(f"revision model (step {chosen}) already saved in {out_dir}")
  else:
    ckpt_lib.write_json_atomic(result_path, summary)  # unfinished while the model changes
    save_chosen(run_dir, out_dir, chosen, {"revision": {
        "policy": summary["policy"], "chosen_step": chosen, "rule": RULE,
        "format": "ttc_jax.revision.format"}})
  summary["finished"] = True
  ckpt_lib.write_json_atomic(result_path, summary)
  return summary


# ---------------------------------------------------------------- CLI

def _define_flags(flag_values=None):
  """Defines the CLI flags on flag_values (default: absl's global FLAGS); returns it."""
  from absl import flags
  from experiments import dataset_flags
  from ttc_jax import distributed
  fv = flag_values if flag_values is not None else flags.FLAGS
  on = {"flag_values": fv}
  d, t = RevisionDataConfig(), RevisionTrainConfig()
  dataset_flags.define(fv)  # --dataset, --data_path, ..., --policy, --policy_hf
  flags.DEFINE_string("out_dir", None, "Run directory (data cache, train/, the chosen model).",
                      **on)
  flags.DEFINE_integer("num_train_questions", d.num_questions, "Training-stream questions "
                       "sampled (held-out ones included).", **on)
  flags.DEFINE_integer("problem_seed", d.problem_seed, "Training-stream seed of those questions "
                       "(policies train on stream 0).", **on)
  flags.DEFINE_integer("samples", d.samples, "Policy samples per question (paper: 64).", **on)
  flags.DEFINE_float("temperature", d.temperature, "Sampling temperature (higher than the "
                     "1.0 of search and evaluation).", **on)
  flags.DEFINE_integer("max_new_tokens", d.max_new_tokens, "Generation limit per sample.", **on)
  flags.DEFINE_integer("row_len", d.row_len, "Longest training row (prompt + attempts + "
                       "target); longer ones are dropped and counted.", **on)
  flags.DEFINE_list("buckets", [], "Padded row lengths (ascending, last = row_len; default: "
                    "quarters of row_len).", **on)
  flags.DEFINE_float("held_out_fraction", d.held_out_fraction, "Share of the questions held "
                     "out for the eval loss.", **on)
  flags.DEFINE_integer("data_batch_size", 256, "Rows per decode call when sampling.", **on)
  flags.DEFINE_float("lr", t.lr, "Peak learning rate (paper: 1e-5 for PaLM 2-S*; see the "
                     "module docstring for this default).", **on)
  flags.DEFINE_integer("batch_size", t.batch_size, "Rows per optimizer step (paper: 128).", **on)
  flags.DEFINE_integer("steps", None, "Optimizer steps (default: --epochs over the rows).", **on)
  flags.DEFINE_float("epochs", t.epochs, "Epochs over the training rows (unless --steps).", **on)
  flags.DEFINE_float("warmup_frac", t.warmup_frac, "Linear warmup share of the steps.", **on)
  flags.DEFINE_float("min_lr_ratio", t.min_lr_ratio, "Cosine decay floor (x lr).", **on)
  flags.DEFINE_float("weight_decay", t.weight_decay, "AdamW weight decay (matrices only).", **on)
  flags.DEFINE_integer("grad_accum", t.grad_accum, "Micro-batches per step.", **on)
  flags.DEFINE_integer("eval_every", t.eval_every, "Held-out loss + checkpoint every K steps.",
                       **on)
  flags.DEFINE_integer("log_every", t.log_every, "Metrics line every K steps.", **on)
  flags.DEFINE_integer("patience", t.patience, "Stop after P evaluations past the held-out "
                       "minimum (0: train all steps).", **on)
  flags.DEFINE_integer("seed", 0, "Sampling, example, split and batch-order seed.", **on)
  flags.DEFINE_bool("resume", True, "Resume from out_dir/train's newest good checkpoint.", **on)
  flags.DEFINE_integer("stop_at_step", None, "Stop (with a checkpoint) at this step, as if "
                       "interrupted.", **on)
  flags.DEFINE_bool("progress", True, "Show progress bars.", **on)
  flags.mark_flag_as_required("out_dir", **on)
  distributed.define_flags(fv)
  return fv


def configs_from_flags(f) -> tuple[RevisionDataConfig, RevisionTrainConfig]:
  dcfg = RevisionDataConfig(
      num_questions=f.num_train_questions, problem_seed=f.problem_seed, samples=f.samples,
      temperature=f.temperature, max_new_tokens=f.max_new_tokens, row_len=f.row_len,
      held_out_fraction=f.held_out_fraction, seed=f.seed)
  tcfg = RevisionTrainConfig(
      lr=f.lr, batch_size=f.batch_size, steps=f.steps, epochs=f.epochs,
      warmup_frac=f.warmup_frac, min_lr_ratio=f.min_lr_ratio, weight_decay=f.weight_decay,
      grad_accum=f.grad_accum, eval_every=f.eval_every, log_every=f.log_every,
      patience=f.patience, seed=f.seed, buckets=tuple(int(b) for b in f.buckets))
  return dcfg, tcfg


def main(argv, flag_values=None) -> int:
  del argv
  from absl import flags, logging
  from ttc_jax import distributed
  f = flag_values if flag_values is not None else flags.FLAGS
  logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
  from experiments import dataset_flags
  spec = dataset_flags.spec(f)
  policy, hf = dataset_flags.policy(f)
  try:
    spec.check(hf_policy=hf)
    dcfg, tcfg = configs_from_flags(f)
  except ValueError as e:
    from absl import app
    raise app.UsageError(str(e)) from None
  distributed.initialize_from_flags(f)
  summary = run(policy, f.out_dir, dcfg=dcfg, tcfg=tcfg, data_batch_size=f.data_batch_size,
                resume=f.resume, stop_at_step=f.stop_at_step, progress=f.progress,
                log=lambda s: print(s, flush=True), spec=spec, hf=hf)
  print("summary: " + json.dumps(summary, sort_keys=True), flush=True)
  if summary["finished"]:
    print(f"revision model: step {summary['chosen_step']} (held-out loss minimum at step "
          f"{summary['min_step']}); load it with load_policy({summary['out_dir']!r})", flush=True)
  return 0


if __name__ == "__main__":
  from absl import app
  _define_flags()
  app.run(main)
