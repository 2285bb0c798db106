"""Verifier (PRM / ORM) training: BCE on step labels, AdamW, early stopping, resume.

The paper's recipe (PAPER.md, "PRM"): binary cross-entropy against soft
Monte-Carlo step labels, AdamW lr 3e-5, batch 128, dropout 0.05, betas
(0.9, 0.95), early stopping on held-out loss. An ORM is the same model with
only the last step of each solution labelled (with its final correctness).

What a verifier is for is ranking candidates of one question, so every
evaluation reports within-question AUCs (final answers; steps right after a
correct prefix, against exact step labels) beside the pooled AUC
(`ttc_jax.verifier.metrics`).

Determinism: batch `s` is a function of (seed, s) (`BatchPlan`), the train
state {params, opt_state, step, rng, best_loss, evals_since_best} is restored
bit-exactly, so a run stopped at any checkpoint and resumed ends with the
same bits as an uninterrupted one. Checkpoints are written at every
evaluation and at the end; the best params (lowest held-out loss) go to a
separate Checkpointer under out_dir/best (`ttc_jax.verifier.checkpoint`).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import math
import os
import time
import warnings
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ttc_jax import checkpoints as ckpt_lib
from ttc_jax import perf
from ttc_jax.train.loop import append_jsonl, trim_metrics
from ttc_jax.train.optim import OptimConfig, make_optimizer, make_schedule
from ttc_jax.verifier import checkpoint as vckpt
from ttc_jax.verifier.aggregate import get_aggregation
from ttc_jax.verifier.data import SOURCE_SAMPLE, VerifierRows
from ttc_jax.verifier.metrics import pooled_auc, within_question_auc, within_question_step_auc
from ttc_jax.verifier.model import VerifierConfig, init_verifier, score_rows, step_positions

METRICS_FILE = "metrics.jsonl"
OBJECTIVES = ("prm", "orm")
TOKEN_TARGETS = ("token", "step")
_WIDTH_MULTIPLE = 16  # evaluation: one width for the whole set
_LOG_P_MAX = -1e-6  # log(1 - p) of a prefix score needs p < 1


# ---------------------------------------------------------------- config

@dataclasses.dataclass(frozen=True)
class VerifierTrainConfig:
  """Verifier training hyperparameters (defaults: the paper's PRM recipe).

  objective: "prm" (every step labelled) or "orm" (only each row's last step,
    labelled with the row's final correctness).
  token_targets: for the token head under "prm": "token" trains each token's
    probability on the per-token correctness (up to the first mistake);
    "step" trains the prefix score (the product) at step ends on the step
    labels (e.g. soft MC labels). Other heads always use the step labels.
  steps: optimizer steps; None: ceil(max_epochs * train rows / batch_size).
  eval_every: held-out evaluation (and checkpoint) every K steps; 0: end only.
  patience: stop after this many evaluations without a held-out loss below
    best - min_delta (0: never stop early); the best params are returned.
  sort_window / width_multiple: batches group rows of similar length (sorted
    within windows of this many batches) and compute only up to their longest
    row rounded up to the multiple: a few compiled widths, ~2x less padding.
  """

  lr: float = 3e-5
  batch_size: int = 128
  dropout: float = 0.05
  b1: float = 0.9
  b2: float = 0.95
  eps: float = 1e-8
  weight_decay: float = 0.01
  warmup_frac: float = 0.05
  min_lr_ratio: float = 0.1
  clip_norm: float | None = 1.0
  max_epochs: float = 3.0
  steps: int | None = None
  eval_every: int = 100
  patience: int = 5
  min_delta: float = 0.0
  log_every: int = 10
  eval_batch_size: int = 256
  keep_checkpoints: int = 2
  sort_window: int = 16
  width_multiple: int = 32
  seed: int = 0
  objective: str = "prm"
  token_targets: str = "token"

  def __post_init__(self):
    if self.objective not in OBJECTIVES:
      raise ValueError(f"objective must be one of {OBJECTIVES}, got {self.objective!r}")
    if self.token_targets not in TOKEN_TARGETS:
      raise ValueError(f"token_targets must be one of {TOKEN_TARGETS}, got "
                       f"{self.token_targets!r}")
    if self.batch_size < 1 or self.eval_batch_size < 1:
      raise ValueError("batch sizes must be >= 1")
    if not 0.0 <= self.dropout < 1.0:
      raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
    if self.steps is not None and self.steps < 1:
      raise ValueError(f"steps must be >= 1, got {self.steps}")
    if self.steps is None and not self.max_epochs > 0:
      raise ValueError(f"max_epochs must be > 0, got {self.max_epochs}")
    if self.sort_window < 1 or self.width_multiple < 1:
      raise ValueError("sort_window and width_multiple must be >= 1")
    if self.patience < 0 or self.eval_every < 0:
      raise ValueError("patience and eval_every must be >= 0")

  def replace(self, **changes) -> "VerifierTrainConfig":
    return dataclasses.replace(self, **changes)

  def resolve_steps(self, n_train_rows: int) -> int:
    if self.steps is not None:
      return self.steps
    return max(1, math.ceil(self.max_epochs * n_train_rows / self.batch_size))

  def optim_config(self, total_steps: int) -> OptimConfig:
    return OptimConfig(lr=self.lr, total_steps=total_steps,
                       warmup_steps=min(total_steps, int(round(self.warmup_frac * total_steps))),
                       min_lr_ratio=self.min_lr_ratio, b1=self.b1, b2=self.b2, eps=self.eps,
                       weight_decay=self.weight_decay, clip_norm=self.clip_norm)

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)


# Fields that change the trained bits (a resume with another value is refused).
_IDENTITY_FIELDS = ("batch_size", "seed", "objective", "token_targets", "sort_window")
# Fields that change nothing but bookkeeping.
_BOOKKEEPING_FIELDS = ("log_every", "eval_batch_size", "keep_checkpoints")


# ---------------------------------------------------------------- targets

def last_step_mask(step_mask: np.ndarray) -> np.ndarray:
  """bool [R, L]: only the last True of each row of step_mask [R, L]."""
  width = step_mask.shape[1]
  last = width - 1 - np.argmax(step_mask[:, ::-1], axis=1)
  out = np.zeros_like(step_mask)
  has = step_mask.any(axis=1)
  out[np.flatnonzero(has), last[has]] = True
  return out


def loss_targets(rows: VerifierRows, vcfg: VerifierConfig,
                 tcfg: VerifierTrainConfig) -> tuple[np.ndarray, np.ndarray, str]:
  """(targets f32 [R, L], mask bool [R, L], mode) for the training loss.

  mode "logit": BCE on each labelled position's own logit (sigmoid = its
  probability); "prefix": BCE on the token head's prefix score (a product of
  per-token probabilities) at labelled positions.
  """
  prefix = "prefix" if vcfg.cumulative else "logit"
  if tcfg.objective == "orm":
    mask = last_step_mask(rows.step_mask)
    targets = np.where(mask, rows.final_correct[:, None], 0.0).astype(np.float32)
    return targets, mask, prefix
  if vcfg.cumulative and tcfg.token_targets == "token":
    return rows.token_targets.astype(np.float32), rows.token_mask.astype(bool), "logit"
  return rows.step_targets.astype(np.float32), rows.step_mask.astype(bool), prefix


def _log1mexp(x: jax.Array) -> jax.Array:
  """log(1 - exp(x)) for x < 0, stable at both ends."""
  return jnp.where(x < -math.log(2.0), jnp.log1p(-jnp.exp(x)), jnp.log(-jnp.expm1(x)))


def position_losses(logit: jax.Array, targets: jax.Array, solution: jax.Array,
                    mode: str) -> jax.Array:
  """Per-position BCE [B, T] from per-position logits [B, T] and targets [B, T].

  solution [B, T]: the tokens whose probabilities enter a prefix product
  (mode "prefix" only).
  """
  if mode == "logit":
    return optax.sigmoid_binary_cross_entropy(logit, targets)
  # prefix score p_t = prod_{s <= t} sigmoid(logit_s); BCE(y, p) in log space.
  log_p = jnp.cumsum(jnp.where(solution, jax.nn.log_sigmoid(logit), 0.0), axis=1)
  log_p = jnp.minimum(log_p, _LOG_P_MAX)
  return -(targets * log_p + (1.0 - targets) * _log1mexp(log_p))


def loss_sums(vcfg: VerifierConfig, mode: str, params: dict, batch: dict,
              dropout_rng: jax.Array | None = None,
              dropout_rate: float = 0.0) -> tuple[jax.Array, jax.Array]:
  """(summed BCE over labelled positions, their count) of one batch.

  batch: tokens int [B, T], prompt_lengths / lengths int [B], targets f32
  [B, T], mask bool [B, T]. Dropout only when dropout_rng is given.
  """
  tokens = batch["tokens"]
  _, logit = score_rows(vcfg, params, tokens, batch["prompt_lengths"], batch["lengths"],
                        dropout_rng=dropout_rng, dropout_rate=dropout_rate)
  pos = jnp.arange(tokens.shape[1])[None, :]
  solution = (pos >= batch["prompt_lengths"][:, None]) & (pos < batch["lengths"][:, None])
  per = position_losses(logit, batch["targets"], solution, mode)
  weight = batch["mask"].astype(jnp.float32)
  return jnp.sum(per * weight), jnp.sum(weight)


# ---------------------------------------------------------------- batches

class BatchPlan:
  """Which rows form batch `step`: a function of (seed, step) only (resumable).

  Each epoch permutes the rows (padded to whole batches by wrapping around),
  sorts every window of `sort_window` batches by row length, cuts it into
  batches and shuffles the batch order: batches of similar lengths, so a batch
  computes only as wide as its longest row (`width`), in a few bucket widths.
  sort_window=1: plain random batches.
  """

  def __init__(self, lengths: np.ndarray, batch_size: int, seed: int, sort_window: int = 1):
    if len(lengths) < 1:
      raise ValueError("no training rows")
    self.lengths = np.asarray(lengths)
    self.batch_size = batch_size
    self.seed = seed
    self.sort_window = max(1, sort_window)
    self.batches_per_epoch = -(-len(self.lengths) // batch_size)
    self._epochs: dict[int, np.ndarray] = {}

  def _epoch(self, epoch: int) -> np.ndarray:
    """[batches_per_epoch, batch_size] row indices of one epoch."""
    if epoch not in self._epochs:
      if len(self._epochs) >= 4:
        self._epochs.clear()
      rng = np.random.default_rng([self.seed, epoch])
      perm = rng.permutation(len(self.lengths))
      need = self.batches_per_epoch * self.batch_size
      perm = np.resize(perm, need)  # wraps around: every row at least once
      window = self.sort_window * self.batch_size
      for start in range(0, need, window):
        chunk = perm[start:start + window]
        perm[start:start + window] = chunk[np.argsort(self.lengths[chunk], kind="stable")]
      batches = perm.reshape(self.batches_per_epoch, self.batch_size)
      self._epochs[epoch] = batches[rng.permutation(self.batches_per_epoch)]
    return self._epochs[epoch]

  def indices(self, step: int) -> np.ndarray:
    epoch, j = divmod(step, self.batches_per_epoch)
    return self._epoch(epoch)[j]


def bucket_width(longest: int, row_len: int, multiple: int) -> int:
  """The computed width for rows up to `longest` tokens: a multiple, at most row_len."""
  return min(row_len, -(-max(longest, 1) // multiple) * multiple)


@dataclasses.dataclass(frozen=True)
class _Arrays:
  """Host arrays of a row set (targets and mask as the loss reads them)."""
  tokens: np.ndarray
  prompt_lengths: np.ndarray
  lengths: np.ndarray
  targets: np.ndarray
  mask: np.ndarray

  @classmethod
  def of(cls, rows: VerifierRows, targets: np.ndarray, mask: np.ndarray) -> "_Arrays":
    return cls(rows.tokens.astype(np.int32), rows.prompt_lengths.astype(np.int32),
               rows.lengths.astype(np.int32), targets, mask)

  @property
  def row_len(self) -> int:
    return self.tokens.shape[1]

  def batch(self, index: np.ndarray, width: int | None = None) -> dict:
    """Rows `index`, cut to `width` columns (default: what the longest row of the set needs)."""
    width = width or bucket_width(int(self.lengths.max()), self.row_len, _WIDTH_MULTIPLE)
    return {"tokens": self.tokens[index, :width], "prompt_lengths": self.prompt_lengths[index],
            "lengths": self.lengths[index], "targets": self.targets[index, :width],
            "mask": self.mask[index, :width]}


# ---------------------------------------------------------------- jitted steps

@functools.lru_cache(maxsize=16)
def _init_state_fn(vcfg: VerifierConfig, opt_cfg: OptimConfig) -> Callable:
  """(lm_params or None, key) -> fresh train state, in one compiled call.

  {params {"lm", "head"}, opt_state, step, rng, best_loss, evals_since_best};
  the backbone is copied (the train step donates the state, not the caller's
  policy params). One compile instead of one per parameter shape.
  """
  optimizer = make_optimizer(opt_cfg)

  def init(lm_params, key):
    init_key, rng = jax.random.split(key)
    params = init_verifier(vcfg, init_key, lm_params)
    return {"params": params, "opt_state": optimizer.init(params),
            "step": jnp.zeros((), jnp.int32), "rng": rng,
            "best_loss": jnp.asarray(jnp.inf, jnp.float32),
            "evals_since_best": jnp.zeros((), jnp.int32)}

  return jax.jit(init)


@functools.lru_cache(maxsize=16)
def _train_step_fn(vcfg: VerifierConfig, mode: str, opt_cfg: OptimConfig,
                   dropout: float) -> Callable:
  """state, batch -> (state, metrics); the state is donated."""
  optimizer = make_optimizer(opt_cfg)
  schedule = make_schedule(opt_cfg)

  def step(state: dict, batch: dict):
    rng, dropout_rng = jax.random.split(state["rng"])

    def mean_loss(params):
      total, count = loss_sums(vcfg, mode, params, batch, dropout_rng, dropout)
      return total / jnp.maximum(count, 1.0), (total, count)

    (_, (total, count)), grads = jax.value_and_grad(mean_loss, has_aux=True)(state["params"])
    updates, opt_state = optimizer.update(grads, state["opt_state"], state["params"])
    new_state = dict(state, params=optax.apply_updates(state["params"], updates),
                     opt_state=opt_state, step=state["step"] + 1, rng=rng)
    metrics = {"loss_sum": total, "count": count, "grad_norm": optax.tree.norm(grads),
               "lr": schedule(state["step"])}
    return new_state, metrics

  return jax.jit(step, donate_argnums=0)


@functools.partial(jax.jit, static_argnames=("vcfg", "mode"))
def _eval_batch(vcfg: VerifierConfig, mode: str, params: dict, batch: dict):
  """One held-out batch -> (loss sum, count, prefix scores [B, T], final scores [B]).

  The final score is the `last` aggregation of the step scores (the paper's).
  """
  tokens, prompt_lengths, lengths = batch["tokens"], batch["prompt_lengths"], batch["lengths"]
  scores, logit = score_rows(vcfg, params, tokens, prompt_lengths, lengths)
  pos = jnp.arange(tokens.shape[1])[None, :]
  solution = (pos >= prompt_lengths[:, None]) & (pos < lengths[:, None])
  per = position_losses(logit, batch["targets"], solution, mode)
  weight = batch["mask"].astype(jnp.float32)
  final = get_aggregation("last")(scores, step_positions(vcfg, tokens, prompt_lengths, lengths))
  return jnp.sum(per * weight), jnp.sum(weight), scores, final


def score_arrays(vcfg: VerifierConfig, mode: str, params: dict, arrays: _Arrays,
                 batch_size: int) -> tuple[float, float, np.ndarray, np.ndarray]:
  """(loss sum, labelled count, prefix scores [R, W], final scores [R]) over all rows.

  Fixed-size batches (the last padded with row 0, masked out): one compile.
  """
  n = len(arrays.lengths)
  batch_size = max(1, min(batch_size, n))
  total = count = 0.0
  scores, finals = [], []
  for start in range(0, n, batch_size):
    index = np.arange(start, min(start + batch_size, n))
    real = len(index)
    index = np.concatenate([index, np.zeros(batch_size - real, np.int64)])
    batch = arrays.batch(index)
    batch["mask"] = batch["mask"] & (np.arange(batch_size) < real)[:, None]
    s, c, sc, fin = _eval_batch(vcfg, mode, params, batch)
    total, count = total + float(s), count + float(c)
    scores.append(np.asarray(sc)[:real])
    finals.append(np.asarray(fin)[:real])
  return total, count, np.concatenate(scores), np.concatenate(finals)


# ---------------------------------------------------------------- evaluation

def _by_question(values: np.ndarray, question: np.ndarray) -> list[np.ndarray]:
  return [values[question == q] for q in np.unique(question)]


def ranking_metrics(rows: VerifierRows, scores: np.ndarray, final: np.ndarray,
                    prefix: str = "") -> dict:
  """Within-question and pooled AUCs of one row set's scores (host numpy).

  scores [R, W]: prefix scores (W <= L); final [R]: one score per row. Keys
  (with `prefix`): answer_auc (within-question, correct vs incorrect final
  answers), answer_auc_per_question (unweighted mean over questions),
  answer_pairs, step_auc (steps right after a correct prefix, against the
  exact step labels), step_pairs, pooled_auc (final answers over all rows),
  best_of_n_accuracy (the top-scored row of each question is correct, mean over
  questions) beside mean_accuracy (of all rows: what a random pick gets).
  """
  step_mask = rows.step_mask[:, :scores.shape[1]]
  step_exact = rows.step_exact[:, :scores.shape[1]]
  answers = within_question_auc(_by_question(final, rows.question_index),
                                _by_question(rows.final_correct, rows.question_index))
  if np.isnan(step_exact[step_mask]).any():  # no step checker (MATH, GSM8K): no step AUC
    steps = {"auc": float("nan"), "pairs": 0}
  else:
    steps = within_question_step_auc([scores[r][step_mask[r]] for r in range(len(rows))],
                                     [step_exact[r][step_mask[r]] for r in range(len(rows))],
                                     rows.question_index)
  picked, mean = [], []
  for q in np.unique(rows.question_index):
    idx = np.flatnonzero(rows.question_index == q)
    picked.append(rows.final_correct[idx[np.argmax(final[idx])]])
    mean.append(rows.final_correct[idx].mean())
  return {f"{prefix}answer_auc": answers["auc"],
          f"{prefix}answer_auc_per_question": answers["mean_per_question_auc"],
          f"{prefix}answer_pairs": answers["pairs"],
          f"{prefix}step_auc": steps["auc"], f"{prefix}step_pairs": steps["pairs"],
          f"{prefix}pooled_auc": pooled_auc(final, rows.final_correct),
          f"{prefix}best_of_n_accuracy": float(np.mean(picked)),
          f"{prefix}mean_accuracy": float(np.mean(mean))}


def evaluate_rows(vcfg: VerifierConfig, tcfg: VerifierTrainConfig, params: dict,
                  rows: VerifierRows) -> dict:
  """Held-out loss (the training objective, no dropout) and ranking quality.

  Ranking keys without a prefix use the policy's own samples only (the rows a
  verifier ranks at test time); "all_" keys include contrastive rows.
  """
  if len(rows) == 0:
    return {}
  targets, mask, mode = loss_targets(rows, vcfg, tcfg)
  arrays = _Arrays.of(rows, targets, mask)
  total, count, scores, final = score_arrays(vcfg, mode, params, arrays, tcfg.eval_batch_size)
  out = {"loss": total / max(count, 1.0), "labelled": int(count), "rows": len(rows)}
  samples = np.flatnonzero(rows.source == SOURCE_SAMPLE)
  if len(samples):
    out.update(ranking_metrics(rows.take(samples), scores[samples], final[samples]))
  if len(samples) < len(rows):
    out.update(ranking_metrics(rows, scores, final, prefix="all_"))
  return out


# ---------------------------------------------------------------- bookkeeping

def rows_fingerprint(rows: VerifierRows) -> str:
  """sha256 over every array of a row set (a resumed run must train on the same data)."""
  h = hashlib.sha256()
  for f in dataclasses.fields(rows):
    value = getattr(rows, f.name)
    if isinstance(value, np.ndarray):
      h.update(f.name.encode())
      h.update(str(value.dtype).encode() + str(value.shape).encode())
      h.update(np.ascontiguousarray(value).tobytes())
  return h.hexdigest()


def _check_resume(meta: dict, sidecar: dict, out_dir: str) -> None:
  """Same data, verifier and identity fields, else the resumed bits mean nothing."""
  if meta.get("data_fingerprint") != sidecar["data_fingerprint"]:
    raise ValueError(f"the training rows differ from those of the checkpoint in {out_dir}; "
                     "use a new out_dir")
  diff = ckpt_lib.config_diff(meta.get("verifier_config", {}), sidecar["verifier_config"])
  if diff:
    raise ValueError(f"verifier config differs from the checkpoint in {out_dir}: fields {diff}")
  saved = meta.get("train", {})
  for key in _IDENTITY_FIELDS:
    if key in saved and saved[key] != sidecar["train"][key]:
      raise ValueError(f"{key} differs from the checkpoint in {out_dir} (saved {saved[key]!r}, "
                       f"requested {sidecar['train'][key]!r}); use a new out_dir")
  changed = [k for k in ckpt_lib.config_diff(saved, sidecar["train"])
             if k not in _BOOKKEEPING_FIELDS]
  if changed:
    warnings.warn(f"resuming {out_dir} with changed training settings {changed}; the result "
                  "will differ from an uninterrupted run", stacklevel=3)


def _nan_to_none(d: dict) -> dict:
  return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in d.items()}


# ---------------------------------------------------------------- train

@dataclasses.dataclass
class VerifierTrainResult:
  out_dir: str
  vcfg: VerifierConfig
  params: Any  # the best params (lowest held-out loss; the last ones without held-out rows)
  step: int  # steps trained
  total_steps: int
  best_step: int
  best_loss: float | None
  stopped_early: bool
  resumed_from: int | None
  held_out: dict  # evaluate_rows of the best params on the held-out rows
  train_s: float

  def summary(self) -> dict:
    d = {k: v for k, v in dataclasses.asdict(self).items() if k not in ("vcfg", "params")}
    d["held_out"] = _nan_to_none(self.held_out)
    d["verifier_params"] = self.vcfg.num_params()
    return d


def train_verifier(vcfg: VerifierConfig, lm_params: dict | None, train_rows: VerifierRows,
                   held_out_rows: VerifierRows | None, tcfg: VerifierTrainConfig, out_dir: str,
                   tokenizer, *, resume: bool = True, stop_at_step: int | None = None,
                   extra_meta: dict | None = None, progress: bool = True,
                   log: Callable[[str], None] | None = print) -> VerifierTrainResult:
  """Trains a verifier on `train_rows`, early-stopping on `held_out_rows`' loss.

  lm_params: the backbone's initial weights (a policy checkpoint's params;
  None: random). Checkpoints, the tokenizer, metrics.jsonl and the sidecar go
  to out_dir; with resume, training continues from its newest good checkpoint.
  stop_at_step: stop (with a checkpoint) at this step as if interrupted; the
  schedule still spans the whole run. Returns the best params.
  """
  log = log or (lambda s: None)
  out_dir = os.path.abspath(out_dir)
  os.makedirs(out_dir, exist_ok=True)
  ckpt = ckpt_lib.Checkpointer(out_dir, max_to_keep=tcfg.keep_checkpoints)
  best = ckpt_lib.Checkpointer(vckpt.best_dir(out_dir), max_to_keep=2)
  try:
    return _train(vcfg, lm_params, train_rows, held_out_rows, tcfg, out_dir, tokenizer, ckpt,
                  best, resume, stop_at_step, extra_meta or {}, progress, log)
  finally:
    ckpt.close()
    best.close()


class _Throughput:
  """Training tokens/s and MFU between two log lines (padding counts: it is computed).

  FLOPs per token: `perf.train_flops_per_token` (3 x forward, attention at
  the mean causal context of the batch's width); peak: the in-run f32 matmul
  peak (`perf.measure_matmul_peak_gflops`).
  """

  def __init__(self, vcfg: VerifierConfig, now: float):
    self.cfg, self.peak = vcfg.model, perf.measure_matmul_peak_gflops()
    self.restart(now)

  def restart(self, now: float) -> None:
    self.start, self.tokens, self.flops = now, 0, 0.0

  def add(self, rows: int, width: int) -> None:
    self.tokens += rows * width
    self.flops += rows * width * perf.train_flops_per_token(self.cfg, width)

  def record(self) -> dict:
    dt = max(time.perf_counter() - self.start, 1e-9)
    return {"tokens_per_s": self.tokens / dt, "mfu": perf.mfu(self.flops / dt, self.peak)}


def _train(vcfg, lm_params, train_rows, held_out_rows, tcfg, out_dir, tokenizer, ckpt, best,
           resume, stop_at_step, extra_meta, progress, log) -> VerifierTrainResult:
  existing = ckpt.steps()
  if existing and not resume:
    raise ValueError(f"{out_dir} already holds checkpoints (steps {existing}); resume, or "
                     "use a new out_dir")
  tokenizer.check_matches(vcfg.model.vocab_size)
  held_out_rows = held_out_rows if held_out_rows is not None and len(held_out_rows) else None
  total_steps = tcfg.resolve_steps(len(train_rows))
  opt_cfg = tcfg.optim_config(total_steps)
  targets, mask, mode = loss_targets(train_rows, vcfg, tcfg)
  arrays = _Arrays.of(train_rows, targets, mask)
  plan = BatchPlan(train_rows.lengths, tcfg.batch_size, tcfg.seed, tcfg.sort_window)
  if not mask.any():
    raise ValueError(f"no labelled position in the training rows for objective "
                     f"{tcfg.objective!r} and head {vcfg.head!r}")

  sidecar = dict(extra_meta, verifier_config=vcfg.to_dict(), model_config=vcfg.model.to_dict(),
                 train=tcfg.to_dict(), tokenizer=ckpt_lib.tokenizer_record(tokenizer),
                 total_steps=total_steps, loss_mode=mode,
                 data_fingerprint=rows_fingerprint(train_rows),
                 train_rows=len(train_rows),
                 held_out_rows=0 if held_out_rows is None else len(held_out_rows))
  tokenizer.save(out_dir)  # atomic (tmp + rename)
  ckpt_lib.write_json_atomic(os.path.join(out_dir, vckpt.SIDECAR_FILE), sidecar)

  state = _init_state_fn(vcfg, opt_cfg)(lm_params, jax.random.PRNGKey(tcfg.seed))

  metrics_path = os.path.join(out_dir, METRICS_FILE)
  resumed_from = None
  best_params, best_step = None, 0
  if existing:
    train_like = {k: v for k, v in state.items() if k != "params"}
    found = ckpt.restore_latest_good(state["params"], train_like, model_cfg=vcfg.model,
                                     quarantine=True)
    if found is not None:
      step0, r_params, r_train, meta = found
      _check_resume(meta, sidecar, out_dir)
      state = dict(r_train, params=r_params)
      resumed_from = step0
      best_params, best_step = _restore_best(best, vcfg, step0)
      log(f"resumed from step {step0} in {ckpt.directory}")
      trim_metrics(metrics_path, step0)
    else:
      log("no usable checkpoint: starting from scratch")
  if resumed_from is None and os.path.exists(metrics_path):
    os.remove(metrics_path)

  train_step = _train_step_fn(vcfg, mode, opt_cfg, tcfg.dropout)

  def save(step: int, stopped: bool) -> None:
    train_state = {k: v for k, v in state.items() if k != "params"}
    ckpt.save(step, state["params"], train_state,
              dict(sidecar, best_step=best_step, stopped_early=stopped))

  def save_best(step: int, record: dict) -> None:
    best.save(step, state["params"], {"step": state["step"]},
              dict(sidecar, eval=_nan_to_none(record)))

  def do_eval(step: int) -> bool:
    """Evaluates, keeps the best params; True when early stopping triggers."""
    nonlocal best_params, best_step
    record = evaluate_rows(vcfg, tcfg, state["params"], held_out_rows)
    best_loss = float(state["best_loss"])
    improved = record["loss"] < best_loss - tcfg.min_delta
    since = 0 if improved else int(state["evals_since_best"]) + 1
    if improved:
      best_loss, best_step = record["loss"], step
      best_params = jax.device_get(state["params"])
      save_best(step, record)
    state["best_loss"] = jnp.asarray(best_loss, jnp.float32)
    state["evals_since_best"] = jnp.asarray(since, jnp.int32)
    append_jsonl(metrics_path, _nan_to_none(dict(record, kind="eval", step=step,
                                                  best_loss=best_loss, evals_since_best=since)))
    short = {k: record.get(k) for k in ("loss", "answer_auc", "step_auc", "pooled_auc")}
    log(f"eval step {step}: " + ", ".join(f"{k} {v:.4f}" for k, v in short.items()
                                           if isinstance(v, float)))
    return bool(tcfg.patience) and since >= tcfg.patience

  start = int(state["step"])
  end = total_steps if stop_at_step is None else min(total_steps, stop_at_step)
  stopped = bool(tcfg.patience) and int(state["evals_since_best"]) >= tcfg.patience
  if start == 0 and held_out_rows is not None and not stopped:
    stopped = do_eval(0)  # the initial backbone is a candidate too (and a baseline)

  bar = None
  if progress and start < end and not stopped:
    from tqdm import tqdm
    bar = tqdm(total=end, initial=start, desc=f"train verifier ({vcfg.head}, {tcfg.objective})",
               dynamic_ncols=True)
  t0 = time.perf_counter()
  pending = []
  step = start
  throughput = _Throughput(vcfg, time.perf_counter())
  while step < end and not stopped:
    index = plan.indices(step)
    width = bucket_width(int(arrays.lengths[index].max()), arrays.row_len, tcfg.width_multiple)
    state, metrics = train_step(state, arrays.batch(index, width))
    throughput.add(len(index), width)
    step += 1
    pending.append(metrics)
    do_log = (tcfg.log_every and step % tcfg.log_every == 0) or step == end
    do_eval_now = held_out_rows is not None and (
        (tcfg.eval_every and step % tcfg.eval_every == 0) or step == total_steps)
    if do_log or do_eval_now or step == end:
      fetched = jax.device_get(pending)
      pending = []
      loss = sum(float(m["loss_sum"]) for m in fetched) / max(
          sum(float(m["count"]) for m in fetched), 1.0)
      append_jsonl(metrics_path, {"kind": "train", "step": step, "loss": loss,
                                   "grad_norm": float(fetched[-1]["grad_norm"]),
                                   "lr": float(fetched[-1]["lr"]), **throughput.record()})
      if bar is not None:
        bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
        bar.update(step - bar.n)
      if do_eval_now:
        stopped = do_eval(step)
        if bar is not None:
          bar.set_postfix(loss=f"{loss:.4f}", eval=f"{float(state['best_loss']):.4f}")
      if do_eval_now or step == end or stopped:
        save(step, stopped)
      throughput.restart(time.perf_counter())  # evaluation and saving are not training
  if bar is not None:
    bar.close()
  train_s = time.perf_counter() - t0
  if stopped and step < end:
    log(f"early stopping at step {step}: no held-out improvement in {tcfg.patience} "
        f"evaluations; best step {best_step}")

  if held_out_rows is None or best_params is None:
    # Nothing to select with (or no eval done): the last params are the best.
    best_params, best_step = jax.device_get(state["params"]), int(state["step"])
    if best_step not in best.steps():
      save_best(best_step, {})
  held_out = {} if held_out_rows is None else evaluate_rows(vcfg, tcfg, best_params,
                                                            held_out_rows)
  best_loss = float(state["best_loss"])
  result = VerifierTrainResult(
      out_dir=out_dir, vcfg=vcfg, params=best_params, step=int(state["step"]),
      total_steps=total_steps, best_step=best_step,
      best_loss=best_loss if math.isfinite(best_loss) else None, stopped_early=stopped,
      resumed_from=resumed_from, held_out=held_out, train_s=train_s)
  if stopped or result.step >= total_steps:
    append_jsonl(metrics_path, dict(result.summary(), kind="summary"))
  return result


def _restore_best(best: ckpt_lib.Checkpointer, vcfg: VerifierConfig,
                  upto: int) -> tuple[Any, int]:
  """(best params, their step) saved at or before step `upto`, or (None, 0).

  A best save newer than the resumed checkpoint (killed in between) is
  ignored: the resumed run evaluates that step again and re-saves it.
  """
  steps = [s for s in best.steps() if s <= upto]
  if not steps:
    return None, 0
  target = vckpt.on_one_device(vckpt.abstract_verifier_params(vcfg))
  found = best.restore_latest_good(target, None, model_cfg=vcfg.model, step=max(steps))
  return jax.device_get(found[1]), found[0]
