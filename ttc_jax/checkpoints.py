"""Orbax checkpoints for training runs, and `load_policy` for downstream code.

Layout of a run directory (`out_dir`)::

    out_dir/
      policy.json            sidecar: model config, preset, tokenizer (+ its bytes)
      tokenizer.model        sentencepiece model of the run, or instead
      tokenizer.json         a Hugging Face tokenizer (+ tokenizer_config.json)
      metrics.jsonl          one JSON object per line (train / eval / summary)
      checkpoints/<step>/    one orbax checkpoint per saved step:
        params/              item: the parameter pytree (StandardSave, OCDBT)
        train_state/         item: {opt_state, step, data_position, rng}
        meta/metadata        item: JSON (JsonSave): the sidecar + step,
                             data position, training config, fingerprints
        _CHECKPOINT_METADATA, commit_success.txt   (written by orbax)
      checkpoints_corrupt/   step dirs found unreadable, moved aside on resume

Atomicity: orbax 0.12.8 writes each step into
`checkpoints/<step>.orbax-checkpoint-tmp-<n>/` and renames it to `<step>/`
when complete (AtomicRenameTemporaryPath, the default on local and
POSIX file systems; on GCS it writes `commit_success.txt` last instead), so a
run killed mid-save leaves only a tmp dir, which `all_steps()` ignores (and
which a writing `Checkpointer` deletes when opened). Saves are synchronous.

Corruption: a finalized step can still be damaged afterwards (a truncated or
deleted file). Restoring walks the steps from the newest down, and takes the
first one whose meta, params and train state all restore and whose arrays
match the fingerprints (wrapping uint32 sums of the raw bits) recorded in its
meta at save time; every skipped step produces a `CheckpointWarning`.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from ttc_jax import atomic
from ttc_jax.model import ModelConfig, abstract_params

CHECKPOINT_SUBDIR = "checkpoints"
CORRUPT_SUBDIR = "checkpoints_corrupt"
SIDECAR_FILE = "policy.json"
TOKENIZER_FILE = "tokenizer.model"
FORMAT_VERSION = 1
_TMP_MARKER = ".orbax-checkpoint-tmp"
_EMBED_TOKENIZER_MAX_BYTES = 1 << 20


class CheckpointWarning(UserWarning):
  """A checkpoint step was skipped (unreadable or failing its fingerprint)."""


# ---------------------------------------------------------------- small helpers

def checkpoint_dir(out_dir: str) -> str:
  return os.path.join(os.path.abspath(out_dir), CHECKPOINT_SUBDIR)


def write_json_atomic(path: str, obj: Any) -> None:
  atomic.write_json(path, obj, sort_keys=True)


def read_sidecar(out_dir: str) -> dict | None:
  path = os.path.join(out_dir, SIDECAR_FILE)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def tokenizer_record(tokenizer) -> dict:
  """What the sidecar says about a tokenizer (the bytes too, when small).

  A sentencepiece model is embedded as "model_b64" (the original format);
  an HFTokenizer's files as "files_b64" {name: base64}.
  """
  files = tokenizer.files()
  rec = {"file": tokenizer.FILENAME, "sha256": tokenizer.digest(),
         "vocab_size": tokenizer.vocab_size}
  if sum(len(data) for data in files.values()) <= _EMBED_TOKENIZER_MAX_BYTES:
    encode = lambda data: base64.b64encode(data).decode("ascii")
    if set(files) == {TOKENIZER_FILE}:
      rec["model_b64"] = encode(files[TOKENIZER_FILE])
    else:
      rec["files_b64"] = {name: encode(data) for name, data in files.items()}
  return rec


def tokenizer_from_record(rec: dict):
  """The tokenizer embedded in a record; None when it was too large to embed."""
  from ttc_jax.tokenizer import Tokenizer, tokenizer_from_files
  if "model_b64" in rec:
    return Tokenizer(base64.b64decode(rec["model_b64"]))
  if "files_b64" in rec:
    return tokenizer_from_files({name: base64.b64decode(data)
                                 for name, data in rec["files_b64"].items()})
  return None


def config_diff(saved: dict, current: dict) -> list[str]:
  """Sorted names of the fields whose values differ (or exist on one side)."""
  keys = set(saved) | set(current)
  norm = lambda v: json.loads(json.dumps(v))  # tuples vs lists
  return sorted(k for k in keys if norm(saved.get(k, "<absent>")) != norm(current.get(k, "<absent>")))


def cached_report(data_path: str, report_path: str, key: dict, what: str,
                  defaults: dict | None = None) -> dict | None:
  """A dataset cache's report (JSON with "key"), when both files exist and the key
  matches; None when the cache is incomplete (the report is written last).

  Fields absent from an older cache's key take `defaults`. A different key is
  a ValueError naming the fields (`what` names the dataset in the message).
  """
  if not (os.path.exists(report_path) and os.path.exists(data_path)):
    return None
  with open(report_path) as f:
    cached = json.load(f)
  diff = config_diff({**(defaults or {}), **cached.get("key", {})}, key)
  if diff:
    raise ValueError(f"{os.path.dirname(report_path)} holds {what} built with other settings "
                     f"(fields {diff}); use a new out_dir or the same settings")
  return cached


def check_model_config(saved: dict | ModelConfig, current: ModelConfig, where: str = "") -> None:
  """Raises ValueError naming every differing field."""
  saved_d = saved.to_dict() if isinstance(saved, ModelConfig) else dict(saved)
  current_d = current.to_dict()
  diff = config_diff(saved_d, current_d)
  if diff:
    details = ", ".join(f"{k}: saved={saved_d.get(k)!r} vs requested={current_d.get(k)!r}"
                        for k in diff)
    raise ValueError(f"model config differs from the checkpoint{where} in field(s) "
                     f"{diff} ({details}); use a new out_dir or the matching preset")


# ---------------------------------------------------------------- fingerprints

def _leaf_bits(x: jax.Array) -> jax.Array:
  x = jnp.asarray(x)
  if x.dtype == jnp.bool_ or x.dtype.itemsize == 1:
    return x.astype(jnp.uint32).ravel()
  if x.dtype.itemsize == 2:
    return jax.lax.bitcast_convert_type(x, jnp.uint16).astype(jnp.uint32).ravel()
  return jax.lax.bitcast_convert_type(x, jnp.uint32).ravel()  # 8-byte -> [..., 2]


@jax.jit
def _fingerprint(tree) -> jax.Array:
  rows = []
  for leaf in jax.tree_util.tree_leaves(tree):
    bits = _leaf_bits(leaf)
    weights = jnp.arange(bits.shape[0], dtype=jnp.uint32) * jnp.uint32(2) + jnp.uint32(1)
    # Integer sums wrap mod 2^32 and are order independent: the same value
    # however the array is sharded or the reduction is split.
    rows.append(jnp.stack([jnp.sum(bits, dtype=jnp.uint32),
                           jnp.sum(bits * weights, dtype=jnp.uint32)]))
  if not rows:
    return jnp.zeros((0, 2), jnp.uint32)
  return jnp.stack(rows)


def fingerprint(tree) -> list[list[int]]:
  """Per-leaf [sum of raw bits, position-weighted sum] as Python ints."""
  return np.asarray(jax.device_get(_fingerprint(tree))).astype(np.int64).tolist()


def weights_key(role: str, model_dir: str, params) -> dict:
  """A dataset cache's record of the model that made it: {role: its directory,
  role_fingerprint: a digest of its weights}, so retrained weights in the same
  directory invalidate the cache."""
  fp = fingerprint(params)
  return {role: os.path.abspath(model_dir),
          f"{role}_fingerprint": [int(sum(r[0] for r in fp) % (1 << 32)),
                                  int(sum(r[1] for r in fp) % (1 << 32))]}


# ---------------------------------------------------------------- manager

def _abstract(tree):
  """ShapeDtypeStructs (with shardings) of arrays or ShapeDtypeStructs."""
  def one(x):
    sharding = getattr(x, "sharding", None)
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)
  return jax.tree_util.tree_map(one, tree)


class Checkpointer:
  """Saves and restores {params, train_state, meta} under out_dir/checkpoints."""

  def __init__(self, out_dir: str, max_to_keep: int | None = 3, read_only: bool = False):
    self.out_dir = os.path.abspath(out_dir)
    self.directory = checkpoint_dir(out_dir)
    self.read_only = read_only
    self._max_to_keep = max_to_keep
    # Leftovers of saves that never finished (a killed run). Removed here,
    # synchronously, before orbax looks at the directory: orbax's own
    # `cleanup_tmp_directories` runs in a background thread at manager init,
    # which raced with a second cleanup in testing (a killed-run restart died
    # on a FileNotFoundError surfacing at its next save).
    self.removed_tmp_dirs = [] if read_only else self._remove_tmp_dirs()
    self._mngr = self._make_manager()

  def _make_manager(self) -> ocp.CheckpointManager:
    # Readers do not set orbax's read_only (it logs warnings on every open);
    # they just never save, create, clean up or write root metadata.
    options = ocp.CheckpointManagerOptions(
        max_to_keep=self._max_to_keep, create=not self.read_only,
        enable_async_checkpointing=False, cleanup_tmp_directories=False,
        save_root_metadata=not self.read_only)
    return ocp.CheckpointManager(self.directory, options=options)

  def steps(self) -> list[int]:
    return sorted(self._mngr.all_steps())

  def save(self, step: int, params, train_state, meta: dict) -> None:
    if self.read_only:
      raise ValueError("this Checkpointer was opened read-only")
    meta = dict(meta, step=int(step), format=FORMAT_VERSION,
                fingerprint={"params": fingerprint(params),
                             "train_state": fingerprint(train_state)})
    self._mngr.save(step, args=ocp.args.Composite(
        params=ocp.args.StandardSave(params),
        train_state=ocp.args.StandardSave(train_state),
        meta=ocp.args.JsonSave(meta)), force=True)
    self._mngr.wait_until_finished()

  def read_meta(self, step: int) -> dict:
    return self._mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta

  def restore_latest_good(self, params_like, train_state_like=None, *, model_cfg=None,
                          quarantine: bool = False, step: int | None = None):
    """Restores the newest readable, fingerprint-valid step (or exactly `step`).

    params_like / train_state_like: arrays or ShapeDtypeStructs (their
    shardings are the restore targets); train_state_like=None restores only
    params. model_cfg: checked against each step's meta before its arrays are
    read; a mismatch is a ValueError, not corruption. quarantine: move bad
    step dirs to out_dir/checkpoints_corrupt/ (the trainer does, so that it
    can save those step numbers again; readers do not touch the directory).

    Returns (step, params, train_state or None, meta), or None when no step
    is usable.
    """
    candidates = sorted(self.steps(), reverse=True)
    if step is not None:
      if step not in candidates:
        raise FileNotFoundError(f"no checkpoint for step {step} in {self.directory}; "
                                f"steps: {sorted(candidates)}")
      candidates = [step]
    bad = []
    found = None
    for s in candidates:
      try:
        meta = self.read_meta(s)
      except Exception as e:  # pylint: disable=broad-except
        bad.append((s, f"meta unreadable: {type(e).__name__}: {e}"))
        continue
      if model_cfg is not None and "model_config" in meta:
        check_model_config(meta["model_config"], model_cfg, where=f" at step {s}")
      try:
        items = {"params": ocp.args.StandardRestore(_abstract(params_like))}
        if train_state_like is not None:
          items["train_state"] = ocp.args.StandardRestore(_abstract(train_state_like))
        restored = self._mngr.restore(s, args=ocp.args.Composite(**items))
        params = restored.params
        train_state = restored.train_state if train_state_like is not None else None
        expected = meta.get("fingerprint", {})
        if "params" in expected and fingerprint(params) != expected["params"]:
          raise ValueError("params do not match their saved fingerprint")
        if (train_state is not None and "train_state" in expected
            and fingerprint(train_state) != expected["train_state"]):
          raise ValueError("train_state does not match its saved fingerprint")
      except Exception as e:  # pylint: disable=broad-except
        bad.append((s, f"{type(e).__name__}: {str(e)[:500]}"))
        continue
      found = (s, params, train_state, meta)
      break
    for s, why in bad:
      warnings.warn(f"checkpoint step {s} in {self.directory} is unusable ({why}); "
                    + ("moved aside, " if quarantine else "") + "using an older step",
                    CheckpointWarning, stacklevel=2)
      if quarantine:
        self._quarantine(s)
    if bad and quarantine:
      self._mngr.reload()
    if step is not None and found is None:
      raise ValueError(f"checkpoint step {step} in {self.directory} is unusable: {bad[0][1]}")
    return found

  def _quarantine(self, step: int) -> None:
    if jax.process_index() != 0:
      return
    src = os.path.join(self.directory, str(step))
    if not os.path.exists(src):
      return
    dst_root = os.path.join(self.out_dir, CORRUPT_SUBDIR)
    os.makedirs(dst_root, exist_ok=True)
    k = 0
    while os.path.exists(os.path.join(dst_root, f"{step}.{k}")):
      k += 1
    shutil.move(src, os.path.join(dst_root, f"{step}.{k}"))

  def _remove_tmp_dirs(self) -> list[str]:
    if jax.process_index() != 0 or not os.path.isdir(self.directory):
      return []
    removed = []
    for name in sorted(os.listdir(self.directory)):
      if _TMP_MARKER in name:
        shutil.rmtree(os.path.join(self.directory, name), ignore_errors=True)
        removed.append(name)
    return removed

  def close(self) -> None:
    self._mngr.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


# ---------------------------------------------------------------- downstream

def _resolve_run_dir(path: str) -> str:
  path = os.path.abspath(path)
  if os.path.basename(path) == CHECKPOINT_SUBDIR and not os.path.isdir(
      os.path.join(path, CHECKPOINT_SUBDIR)):
    return os.path.dirname(path)
  return path


def load_hf_policy(path: str, dtype: str = "float32"):
  """(cfg, params, tokenizer) of a Hugging Face Llama / Qwen2 / Mistral folder: weights
  via `ttc_jax.hf.load_checkpoint`, tokenizer.json or tokenizer.model beside them."""
  from ttc_jax import hf
  from ttc_jax.tokenizer import load_tokenizer
  cfg, params = hf.load_checkpoint(path, dtype)
  tokenizer = load_tokenizer(path)
  tokenizer.check_matches(cfg.vocab_size)
  return cfg, params, tokenizer


def load_policy(path: str, step: int | None = None, shardings=None):
  """(cfg, params, tokenizer) of a training run directory.

  path: the run's out_dir (or its checkpoints/ subdir). step: a specific
  step (default: the newest usable one, skipping corrupt steps with a
  warning). shardings: optional params-shaped NamedShardings to restore into
  (e.g. `ttc_jax.sharding.param_shardings(cfg, mesh)` -- pass a callable
  cfg -> shardings when the cfg is not known yet); default: one device.
  The tokenizer is the file the checkpoint's record names (out_dir/
  tokenizer.model or tokenizer.json), checked against that record (falls
  back to the copy embedded in the checkpoint's meta).
  """
  from ttc_jax.tokenizer import load_tokenizer
  run_dir = _resolve_run_dir(path)
  ckpt = Checkpointer(run_dir, max_to_keep=None, read_only=True)
  try:
    steps = ckpt.steps()
    if not steps:
      raise FileNotFoundError(f"no checkpoints under {ckpt.directory}")
    # The config comes from a step's meta; try newest first (meta may be bad).
    meta = None
    for s in ([step] if step is not None else sorted(steps, reverse=True)):
      try:
        meta = ckpt.read_meta(s)
        break
      except Exception:  # pylint: disable=broad-except
        continue
    if meta is None:
      raise ValueError(f"no readable checkpoint metadata under {ckpt.directory}")
    cfg = ModelConfig.from_dict(meta["model_config"])
    if callable(shardings):
      shardings = shardings(cfg)
    target = abstract_params(cfg)
    if shardings is None:
      device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
      shardings = jax.tree_util.tree_map(lambda _: device, target)
    target = jax.tree_util.tree_map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), target, shardings)
    found = ckpt.restore_latest_good(target, None, model_cfg=cfg, step=step)
    if found is None:
      raise ValueError(f"no usable checkpoint under {ckpt.directory}")
    _, params, _, meta = found
  finally:
    ckpt.close()
  rec = meta.get("tokenizer", {})
  tok_path = os.path.join(run_dir, rec.get("file", TOKENIZER_FILE))
  tokenizer = None
  if os.path.exists(tok_path):
    tokenizer = load_tokenizer(tok_path)
    if rec.get("sha256") and tokenizer_record(tokenizer)["sha256"] != rec["sha256"]:
      warnings.warn(f"{tok_path} differs from the tokenizer the checkpoint was trained with; "
                    "using the checkpoint's embedded copy", CheckpointWarning, stacklevel=2)
      tokenizer = None
  if tokenizer is None:
    tokenizer = tokenizer_from_record(rec)
  if tokenizer is None:
    raise FileNotFoundError(f"no usable tokenizer for {run_dir} (looked for {tok_path})")
  tokenizer.check_matches(cfg.vocab_size)
  return cfg, params, tokenizer


def is_hf_folder(path: str) -> bool:
  """Whether path is a Hugging Face model folder (config.json, no training run)."""
  return (os.path.isfile(os.path.join(path, "config.json"))
          and not os.path.isdir(checkpoint_dir(path)))


def load_policy_source(path: str, hf: bool = False):
  """(cfg, params, tokenizer) of a training run directory, or of a Hugging Face
  folder when hf (`load_hf_policy`)."""
  return load_hf_policy(path) if hf else load_policy(path)


def load_run_task(path: str):
  """The task (with the options it was trained with) of a training run directory.

  Falls back to the default task for a run without a sidecar (e.g. an
  imported checkpoint).
  """
  from ttc_jax.tasks import get_task
  name, options = run_task_record(path)
  return get_task(name, **options)


def run_task_record(path: str) -> tuple[str, dict]:
  """(task name, options) a training run directory was trained with, read
  without building the task (its files may have moved); the default task for
  a run without a sidecar."""
  from ttc_jax.tasks import DEFAULT_TASK
  from ttc_jax.train.data import DataConfig
  sidecar = read_sidecar(_resolve_run_dir(path))
  if sidecar is None or "data" not in sidecar:
    return DEFAULT_TASK, {}
  data = DataConfig.from_dict(sidecar["data"])
  return data.task, dict(data.task_options)
