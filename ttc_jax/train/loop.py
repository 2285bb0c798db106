"""Policy (LM) training: jitted masked next-token cross-entropy, AdamW,
gradient accumulation, data-parallel sharding, orbax checkpoints, resume.

Determinism: batches are a function of (seed, step) (`data.BatchPlan`), the
state (params, opt_state, step, rng) is restored bit-exactly, and every step
runs one of a few ahead-of-time compiled executables (one per bucket length),
so a run stopped or killed at any point and restarted with the same flags
ends with the same bits as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import time
import warnings
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding, PartitionSpec

from ttc_jax import atomic
from ttc_jax import checkpoints as ckpt_lib
from ttc_jax import perf
from ttc_jax import sharding as sharding_lib
from ttc_jax.model import ModelConfig, forward, init_params
from ttc_jax.train import data as data_lib
from ttc_jax.train.optim import OptimConfig, make_optimizer, make_schedule
from ttc_jax.train.presets import Preset

METRICS_FILE = "metrics.jsonl"


# ---------------------------------------------------------------- loss / step

def loss_sums(cfg: ModelConfig, params: dict, tokens: jax.Array, mask: jax.Array):
  """Summed next-token NLL over target positions, and the target count.

  tokens int [B, L]; mask bool [B, L] (True where a token is a target).
  Position t predicts token t + 1, so the forward runs on tokens[:, :-1].
  """
  logits, _ = forward(cfg, params, tokens[:, :-1])  # f32 [B, L-1, V]
  targets = tokens[:, 1:]
  weight = mask[:, 1:].astype(jnp.float32)
  logz = jax.nn.logsumexp(logits, axis=-1)
  target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
  return jnp.sum((logz - target_logit) * weight), jnp.sum(weight)


def make_train_step(cfg: ModelConfig, optimizer: optax.GradientTransformation,
                    schedule: optax.Schedule) -> Callable:
  """state, tokens [A, b, L], mask [A, b, L] -> (state, metrics).

  A = grad-accumulation micro-batches, scanned; gradients and losses are
  summed over all A * b rows and divided once by the total target count, so
  the update equals one step on the whole batch (up to summation order).
  """

  def step(state: dict, tokens: jax.Array, mask: jax.Array):
    params = state["params"]
    grad_fn = jax.value_and_grad(functools.partial(loss_sums, cfg), has_aux=True)

    def micro(carry, xs):
      g_sum, loss_sum, count = carry
      (loss, n), grads = grad_fn(params, *xs)
      g_sum = jax.tree_util.tree_map(jnp.add, g_sum, grads)
      return (g_sum, loss_sum + loss, count + n), None

    zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
    init = (zeros, jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32))
    (g_sum, loss_sum, count), _ = jax.lax.scan(micro, init, (tokens, mask))
    denom = jnp.maximum(count, 1.0)
    grads = jax.tree_util.tree_map(lambda g: g / denom, g_sum)
    updates, opt_state = optimizer.update(grads, state["opt_state"], params)
    new_params = optax.apply_updates(params, updates)
    rng, _ = jax.random.split(state["rng"])  # kept in step with training for dropout-style use
    new_state = {"params": new_params, "opt_state": opt_state, "step": state["step"] + 1,
                 "rng": rng}
    metrics = {"loss_sum": loss_sum, "count": count, "grad_norm": optax.tree.norm(grads),
               "lr": schedule(state["step"])}
    return new_state, metrics

  return step


def make_eval_step(cfg: ModelConfig) -> Callable:
  return lambda params, tokens, mask: loss_sums(cfg, params, tokens, mask)


# ---------------------------------------------------------------- results

@dataclasses.dataclass
class TrainResult:
  out_dir: str
  cfg: ModelConfig
  params: Any
  step: int
  total_steps: int
  resumed_from: int | None
  train_loss: float | None
  eval_loss: float | None
  tokens: int  # real tokens trained on in this process
  positions: int  # padded positions computed in this process
  train_s: float
  compile_s: float
  tokens_per_s: float
  mfu: float
  peak_gflops: float

  def summary(self) -> dict:
    d = {k: v for k, v in dataclasses.asdict(self).items() if k not in ("cfg", "params")}
    d["non_embedding_params"] = self.cfg.num_params(include_embeddings=False)
    d["params"] = self.cfg.num_params()
    return d


# ---------------------------------------------------------------- compiled fns
# Cached per process so repeated `train` calls (tests, sweeps) compile once.
# Everything a cache key leaves out is derived from what it holds.

@functools.lru_cache(maxsize=16)
def _init_state_fn(cfg: ModelConfig, opt_cfg: OptimConfig, mesh) -> Callable:
  """key -> fresh train state {params, opt_state, step, rng}, params sharded."""
  optimizer = make_optimizer(opt_cfg)
  p_shard = sharding_lib.param_shardings(cfg, mesh)
  replicated = NamedSharding(mesh, PartitionSpec())

  def init(key):
    init_key, rng = jax.random.split(key)
    params = jax.lax.with_sharding_constraint(init_params(cfg, init_key), p_shard)
    return {"params": params, "opt_state": optimizer.init(params),
            "step": jnp.zeros((), jnp.int32), "rng": rng}

  # opt_state shardings follow the params' (propagated by the compiler).
  out_shardings = {"params": p_shard, "opt_state": None, "step": replicated, "rng": replicated}
  return jax.jit(init, out_shardings=out_shardings)


@functools.lru_cache(maxsize=16)
def _state_from_params_fn(cfg: ModelConfig, opt_cfg: OptimConfig, mesh) -> Callable:
  """(key, params) -> a train state that starts from `params` (fine-tuning):
  fresh optimizer state, step 0, the rng `_init_state_fn` would draw."""
  optimizer = make_optimizer(opt_cfg)
  p_shard = sharding_lib.param_shardings(cfg, mesh)
  replicated = NamedSharding(mesh, PartitionSpec())

  def init(key, params):
    _, rng = jax.random.split(key)
    return {"params": params, "opt_state": optimizer.init(params),
            "step": jnp.zeros((), jnp.int32), "rng": rng}

  out_shardings = {"params": p_shard, "opt_state": None, "step": replicated, "rng": replicated}
  return jax.jit(init, in_shardings=(replicated, p_shard), out_shardings=out_shardings)


_TRAIN_EXECUTABLES: dict = {}


def _train_executable(cfg: ModelConfig, opt_cfg: OptimConfig, state: dict, batch_sh,
                      grad_accum: int, micro: int, length: int):
  """The AOT-compiled train step for one bucket length (donates the state)."""
  leaves, treedef = jax.tree_util.tree_flatten(state)
  sig = tuple((x.shape, str(x.dtype), x.sharding) for x in leaves)
  key = (cfg, opt_cfg, treedef, sig, batch_sh, grad_accum, micro, length)
  if key not in _TRAIN_EXECUTABLES:
    if len(_TRAIN_EXECUTABLES) >= 64:
      _TRAIN_EXECUTABLES.clear()
    state_shardings = jax.tree_util.tree_map(lambda x: x.sharding, state)
    replicated = NamedSharding(batch_sh.mesh, PartitionSpec())
    step_fn = jax.jit(make_train_step(cfg, make_optimizer(opt_cfg), make_schedule(opt_cfg)),
                      in_shardings=(state_shardings, batch_sh, batch_sh),
                      out_shardings=(state_shardings, replicated), donate_argnums=0)
    abstract_state = jax.tree_util.tree_map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
    spec = lambda dt: jax.ShapeDtypeStruct((grad_accum, micro, length), dt, sharding=batch_sh)
    _TRAIN_EXECUTABLES[key] = step_fn.lower(abstract_state, spec(jnp.int32),
                                            spec(jnp.bool_)).compile()
  return _TRAIN_EXECUTABLES[key]


@functools.lru_cache(maxsize=16)
def _eval_fn(cfg: ModelConfig, mesh, eval_batch_size: int) -> Callable:
  eval_sh = sharding_lib.batch_sharding(mesh, 2, eval_batch_size)
  return jax.jit(make_eval_step(cfg),
                 in_shardings=(sharding_lib.param_shardings(cfg, mesh), eval_sh, eval_sh),
                 out_shardings=NamedSharding(mesh, PartitionSpec()))


# ---------------------------------------------------------------- helpers

def append_jsonl(path: str, obj: dict) -> None:
  if jax.process_index() != 0:
    return
  with open(path, "a") as f:
    f.write(json.dumps(obj, sort_keys=True) + "\n")


def trim_metrics(path: str, last_step: int) -> None:
  """Drops lines logged after `last_step` (replayed by the resumed run) and
  any torn final line of a killed run; atomic rewrite."""
  if jax.process_index() != 0 or not os.path.exists(path):
    return
  keep = []
  with open(path) as f:
    for line in f:
      try:
        obj = json.loads(line)
      except json.JSONDecodeError:
        continue
      if obj.get("step", 0) <= last_step and obj.get("kind") != "summary":
        keep.append(json.dumps(obj, sort_keys=True) + "\n")
  with atomic.atomic_open(path) as f:
    f.writelines(keep)


def _load_or_build_tokenizer(preset: Preset, out_dir: str, expected: dict | None, task,
                             given=None):
  """The run's tokenizer: the file `expected` (the checkpoint's record) names
  (out_dir/tokenizer.model or tokenizer.json) when it matches, else rebuilt
  deterministically (or taken from the record) and written atomically.
  `given` (a fine-tuning run's tokenizer, sentencepiece or Hugging Face) is
  used as is, after checking it against `expected`."""
  from ttc_jax.tokenizer import build_task_tokenizer, load_tokenizer
  path = os.path.join(out_dir, (expected or {}).get("file", ckpt_lib.TOKENIZER_FILE))
  if given is not None:
    if expected is not None and ckpt_lib.tokenizer_record(given)["sha256"] != expected["sha256"]:
      raise ValueError(f"the checkpoint in {out_dir} was trained with a different tokenizer "
                       "than the one given")
    if jax.process_index() == 0:
      given.save(out_dir)
    return given
  tokenizer = None
  if expected is not None:
    if os.path.exists(path):
      try:
        tok = load_tokenizer(path)
        if ckpt_lib.tokenizer_record(tok)["sha256"] == expected["sha256"]:
          tokenizer = tok
      except Exception:  # pylint: disable=broad-except  (torn file of a killed run)
        pass
    if tokenizer is None:
      tokenizer = ckpt_lib.tokenizer_from_record(expected)
  if tokenizer is None:
    d = preset.data
    tokenizer = build_task_tokenizer(task, None, vocab_size=d.tokenizer_vocab_size,
                                     n_samples=d.tokenizer_samples, seed=d.tokenizer_seed)
    if expected is not None and ckpt_lib.tokenizer_record(tokenizer)["sha256"] != expected["sha256"]:
      raise ValueError(f"the checkpoint in {out_dir} was trained with a different tokenizer "
                       "than this preset builds, and its tokenizer copy is missing")
  if jax.process_index() == 0:
    tokenizer.save(out_dir)  # atomic (tmp + rename)
  return tokenizer


# TrainConfig fields that do not change the trained bits.
_BOOKKEEPING_FIELDS = ("eval_every", "ckpt_every", "log_every", "keep_checkpoints",
                       "eval_batch_size")


def _check_resume_compatible(meta: dict, preset: Preset, out_dir: str, warn: bool = True) -> None:
  """Data stream identity must match (else the data position means nothing);
  other training settings may change with a warning."""
  saved_data = meta.get("data")
  if saved_data is not None:
    diff = ckpt_lib.config_diff(saved_data, preset.data.to_dict())
    if diff:
      raise ValueError(f"data config differs from the checkpoint in {out_dir}: fields {diff}")
  saved_train = meta.get("train", {})
  for key in ("batch_size", "seed"):
    if key in saved_train and saved_train[key] != getattr(preset.train, key):
      raise ValueError(f"{key} differs from the checkpoint in {out_dir} "
                       f"(saved {saved_train[key]}, requested {getattr(preset.train, key)}); "
                       "the batch stream would not continue where it stopped")
  diff = [k for k in ckpt_lib.config_diff(saved_train, preset.train.to_dict())
          if k not in _BOOKKEEPING_FIELDS]
  if diff and warn:
    warnings.warn(f"resuming {out_dir} with changed training settings {diff}; the result "
                  "will differ from an uninterrupted run", stacklevel=3)


# ---------------------------------------------------------------- train

def train(preset: Preset, out_dir: str, *, mesh=None, resume: bool = True,
          stop_at_step: int | None = None, progress: bool = True,
          measure_peak: bool = True, log: Callable[[str], None] | None = print,
          rows: tuple[data_lib.Rows, data_lib.Rows] | None = None, initial_params=None,
          tokenizer=None, eval_at_start: bool = False,
          should_stop: Callable[[int, float | None], bool] | None = None) -> TrainResult:
  """Trains `preset`, checkpointing into out_dir; resumes from it when asked.

  mesh: a ("data", "model") mesh (default: all devices on "data"). Batch rows
  are split over "data"; params over "model" per `ttc_jax.sharding`.
  stop_at_step: stop (with a checkpoint) once this step is reached, as if the
  run had been interrupted there; the schedule still spans the full run.

  Fine-tuning on ready-made data (all optional; the defaults train the preset
  from scratch on its DataConfig):
  rows: (train rows, eval rows) used instead of `build_rows(preset.data)`;
    the preset's data config still gives buckets, sort window and the task.
  initial_params: the params pytree a fresh run starts from (a resumed run
    restores its checkpoint instead); the preset's model config, vocabulary
    size included, must match them.
  tokenizer: the tokenizer to use and save instead of building the preset's.
  eval_at_start: a fresh run also logs the eval loss of its step-0 params.
  should_stop(step, eval_loss): called after each periodic evaluation (and
    its checkpoint); True ends the run there, with a checkpoint.
  """
  log = log or (lambda s: None)
  out_dir = os.path.abspath(out_dir)
  os.makedirs(out_dir, exist_ok=True)
  tc = preset.train
  task = preset.data.make_task()
  mesh = mesh if mesh is not None else sharding_lib.make_mesh()
  n_data = mesh.shape[sharding_lib.DATA]
  micro = tc.batch_size // tc.grad_accum
  if micro % n_data:
    raise ValueError(f"micro-batch {micro} (= batch_size {tc.batch_size} / grad_accum "
                     f"{tc.grad_accum}) is not divisible by the data axis ({n_data})")

  ckpt = ckpt_lib.Checkpointer(out_dir, max_to_keep=tc.keep_checkpoints)
  try:
    return _train(preset, out_dir, ckpt, task, mesh, resume, stop_at_step, progress,
                  measure_peak, log, rows, initial_params, tokenizer, eval_at_start,
                  should_stop)
  finally:
    ckpt.close()


def _train(preset, out_dir, ckpt, task, mesh, resume, stop_at_step, progress, measure_peak,
           log, rows=None, initial_params=None, given_tokenizer=None, eval_at_start=False,
           should_stop=None) -> TrainResult:
  tc = preset.train
  removed = ckpt.removed_tmp_dirs
  if removed:
    log(f"removed unfinished checkpoint saves: {removed}")
  existing = ckpt.steps()
  if existing and not resume:
    raise ValueError(f"{out_dir} already holds checkpoints (steps {existing}); resume, or "
                     "use a new out_dir")

  # Peek at the newest readable meta: the tokenizer record, and fail fast on
  # an incompatible config (the real restore below validates the arrays and
  # may fall back to older steps).
  peek = None
  for s in sorted(existing, reverse=True):
    try:
      peek = ckpt.read_meta(s)
      break
    except Exception:  # pylint: disable=broad-except
      continue
  tokenizer = _load_or_build_tokenizer(preset, out_dir, peek and peek.get("tokenizer"), task,
                                       given_tokenizer)
  if initial_params is None:
    cfg = preset.model_config_for(tokenizer.vocab_size)
  else:  # fine-tuning keeps the params' embedding (a Hugging Face one may have spare rows)
    cfg = preset.model
    tokenizer.check_matches(cfg.vocab_size)
  if preset.data.row_len > cfg.max_seq_len:
    raise ValueError(f"row_len {preset.data.row_len} exceeds the model's max_seq_len "
                     f"{cfg.max_seq_len}")
  if peek is not None:
    if "model_config" in peek:
      ckpt_lib.check_model_config(peek["model_config"], cfg, where=f" in {out_dir}")
    _check_resume_compatible(peek, preset, out_dir, warn=False)

  t0 = time.perf_counter()
  if rows is not None:
    train_rows, eval_rows = rows
    if len(train_rows) == 0:
      raise ValueError("no training rows were given")
  else:
    train_rows, eval_rows = data_lib.build_rows(preset.data, tokenizer, task)
  plan = data_lib.BatchPlan(train_rows, tc.batch_size, tc.seed, preset.data.buckets,
                            preset.data.sort_window)
  total_steps = tc.resolve_steps(float(train_rows.lengths.mean()))
  if train_rows.n_dropped or eval_rows.n_dropped:
    warnings.warn(f"{train_rows.n_dropped} training and {eval_rows.n_dropped} eval rows longer "
                  f"than row_len={preset.data.row_len} were dropped", stacklevel=2)
  log(f"data: {len(train_rows)} train rows (mean {train_rows.lengths.mean():.1f} tokens), "
      f"{len(eval_rows)} eval rows, {total_steps} steps of {tc.batch_size} rows "
      f"[{time.perf_counter() - t0:.1f}s]")

  opt_cfg = OptimConfig(lr=tc.lr, total_steps=total_steps,
                        warmup_steps=min(total_steps, int(round(tc.warmup_frac * total_steps))),
                        min_lr_ratio=tc.min_lr_ratio, b1=tc.b1, b2=tc.b2, eps=tc.eps,
                        weight_decay=tc.weight_decay, clip_norm=tc.clip_norm)

  # Fresh state (also the restore target: shapes, dtypes and shardings).
  if initial_params is None:
    state = _init_state_fn(cfg, opt_cfg, mesh)(jax.random.PRNGKey(tc.seed))
  else:
    state = _state_from_params_fn(cfg, opt_cfg, mesh)(
        jax.random.PRNGKey(tc.seed), sharding_lib.shard_params(initial_params, cfg, mesh))

  sidecar = {"model_config": cfg.to_dict(), "preset": preset.name,
             "tokenizer": ckpt_lib.tokenizer_record(tokenizer), "task": preset.data.task,
             "data": preset.data.to_dict(), "train": preset.train.to_dict(),
             "total_steps": total_steps}
  metrics_path = os.path.join(out_dir, METRICS_FILE)
  resumed_from = None
  if existing:
    train_like = {"opt_state": state["opt_state"], "step": state["step"],
                  "data_position": state["step"], "rng": state["rng"]}
    found = ckpt.restore_latest_good(state["params"], train_like, model_cfg=cfg, quarantine=True)
    if found is not None:
      step0, r_params, r_train, meta = found
      _check_resume_compatible(meta, preset, out_dir)
      if int(r_train["data_position"]) != int(r_train["step"]):
        raise ValueError(f"checkpoint {step0}: data position {int(r_train['data_position'])} "
                         f"!= step {int(r_train['step'])}")
      state = {"params": r_params, "opt_state": r_train["opt_state"], "step": r_train["step"],
               "rng": r_train["rng"]}
      resumed_from = step0
      log(f"resumed from step {step0} in {ckpt.directory}")
      trim_metrics(metrics_path, step0)
    else:
      log("no usable checkpoint: starting from scratch")
  if resumed_from is None and jax.process_index() == 0 and os.path.exists(metrics_path):
    os.remove(metrics_path)
  if jax.process_index() == 0:
    ckpt_lib.write_json_atomic(os.path.join(out_dir, ckpt_lib.SIDECAR_FILE), sidecar)

  start = int(state["step"])
  end = total_steps if stop_at_step is None else min(total_steps, stop_at_step)

  # Compile one executable per bucket length this run will meet.
  batch_sh = NamedSharding(mesh, PartitionSpec(None, sharding_lib.DATA, None))
  micro = tc.batch_size // tc.grad_accum
  t0 = time.perf_counter()
  lengths = sorted({plan.bucket(s) for s in range(start, end)})
  compiled = {length: _train_executable(cfg, opt_cfg, state, batch_sh, tc.grad_accum, micro,
                                        length) for length in lengths}
  eval_sh = sharding_lib.batch_sharding(mesh, 2, tc.eval_batch_size)
  eval_fn = _eval_fn(cfg, mesh, tc.eval_batch_size)
  compile_s = time.perf_counter() - t0
  log(f"compiled {len(compiled)} train step shape(s) {lengths} in {compile_s:.1f}s")

  def evaluate(params) -> float | None:
    if len(eval_rows) == 0:
      return None
    total, count = 0.0, 0.0
    for tokens, mask in data_lib.eval_batches(eval_rows, tc.eval_batch_size, tokenizer.pad_id):
      s, n = eval_fn(params, sharding_lib.put(tokens, eval_sh), sharding_lib.put(mask, eval_sh))
      total, count = total + float(s), count + float(n)
    return total / max(count, 1.0)

  def save(step: int):
    train_state = {"opt_state": state["opt_state"], "step": state["step"],
                   "data_position": state["step"], "rng": state["rng"]}
    meta = dict(sidecar, data_position=step)
    ckpt.save(step, state["params"], train_state, meta)

  if eval_at_start and start == 0 and start < end:
    append_jsonl(metrics_path, {"kind": "eval", "step": 0, "eval_loss": evaluate(state["params"])})

  peak = perf.measure_matmul_peak_gflops() if measure_peak else 0.0
  # Fake XLA:CPU devices share the host's cores, and the measured one-device
  # matmul peak already uses all of them.
  n_devices = 1 if jax.default_backend() == "cpu" else mesh.devices.size

  tokens_done = positions_done = 0
  flops_done = 0.0
  train_s = 0.0
  last_loss = eval_loss = None
  pending = []  # device metrics since the last log point
  interval_t = time.perf_counter()
  interval_pos = interval_tok = 0
  interval_flops = 0.0
  bar = None
  if progress and start < end:
    from tqdm import tqdm
    bar = tqdm(total=end, initial=start, desc=f"train {preset.name}", dynamic_ncols=True,
               disable=jax.process_index() != 0)

  step = start
  while step < end:
    tokens, mask = plan.batch(step)
    length = tokens.shape[1]
    tokens = tokens.reshape(tc.grad_accum, micro, length)
    mask = mask.reshape(tc.grad_accum, micro, length)
    state, metrics = compiled[length](state, sharding_lib.put(tokens, batch_sh),
                                      sharding_lib.put(mask, batch_sh))
    step += 1
    pending.append(metrics)
    n_pos = tc.batch_size * length
    n_tok = int(plan.rows.lengths[plan.indices(step - 1)].sum())
    interval_pos += n_pos
    interval_tok += n_tok
    interval_flops += n_pos * perf.train_flops_per_token(cfg, length)
    do_log = (tc.log_every and step % tc.log_every == 0) or step == end
    do_eval = (tc.eval_every and step % tc.eval_every == 0) or step == total_steps
    do_ckpt = (tc.ckpt_every and step % tc.ckpt_every == 0) or step == end
    if do_log or do_eval or do_ckpt:
      fetched = jax.device_get(pending)  # one sync per interval
      pending = []
      dt = time.perf_counter() - interval_t
      train_s += dt
      tokens_done += interval_tok
      positions_done += interval_pos
      flops_done += interval_flops
      loss = sum(float(m["loss_sum"]) for m in fetched) / max(
          sum(float(m["count"]) for m in fetched), 1.0)
      last_loss = loss
      rec = {"kind": "train", "step": step, "loss": loss,
             "grad_norm": float(fetched[-1]["grad_norm"]), "lr": float(fetched[-1]["lr"]),
             "tokens_per_s": interval_tok / dt, "positions_per_s": interval_pos / dt,
             "mfu": perf.mfu(interval_flops / dt, peak, n_devices), "interval_s": dt}
      if not all(math.isfinite(float(m["loss_sum"])) for m in fetched):
        warnings.warn(f"non-finite loss at step {step}", stacklevel=2)
      append_jsonl(metrics_path, rec)
      if bar is not None:
        bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{rec['tokens_per_s']:.0f}",
                        mfu=f"{rec['mfu']:.1%}", refresh=False)
        bar.update(step - bar.n)
      if do_eval:
        eval_loss = evaluate(state["params"])
        append_jsonl(metrics_path, {"kind": "eval", "step": step, "eval_loss": eval_loss})
        if bar is not None and eval_loss is not None:
          bar.set_postfix(loss=f"{loss:.4f}", eval=f"{eval_loss:.4f}",
                          tok_s=f"{rec['tokens_per_s']:.0f}", mfu=f"{rec['mfu']:.1%}")
      if do_ckpt:
        save(step)
      if do_eval and should_stop is not None and should_stop(step, eval_loss):
        if not do_ckpt:
          save(step)
        log(f"stopped at step {step} (should_stop)")
        break
      interval_t = time.perf_counter()
      interval_pos = interval_tok = 0
      interval_flops = 0.0
  if bar is not None:
    bar.close()

  if start >= end:  # nothing left to train (a finished run restarted)
    eval_loss = evaluate(state["params"])
  result = TrainResult(
      out_dir=out_dir, cfg=cfg, params=state["params"], step=int(state["step"]),
      total_steps=total_steps, resumed_from=resumed_from, train_loss=last_loss,
      eval_loss=eval_loss, tokens=tokens_done, positions=positions_done, train_s=train_s,
      compile_s=compile_s, tokens_per_s=tokens_done / train_s if train_s else 0.0,
      mfu=perf.mfu(flops_done / train_s, peak, n_devices) if train_s else 0.0,
      peak_gflops=peak)
  if result.step >= total_steps:
    append_jsonl(metrics_path, dict(result.summary(), kind="summary"))
  return result
