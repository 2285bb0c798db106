"""Verifier run directories: layout, abstract params, and `load_verifier`.

Layout of a verifier run (`ttc_jax.train.verifier_train.train_verifier`)::

    out_dir/
      verifier.json          sidecar: verifier config, training config, tokenizer record
      tokenizer.model        the tokenizer shared with the policy (or tokenizer.json
                             + tokenizer_config.json for a Hugging Face one)
      metrics.jsonl          one JSON object per line (train / eval / summary)
      checkpoints/<step>/    params {"lm", "head"}, train state, meta (exact resume)
      best/checkpoints/<step>/  params with the lowest held-out loss so far (early stopping)

Search and evaluation load the best params (`load_verifier`); training
resumes from the newest `checkpoints/` step.
"""

from __future__ import annotations

import os
import warnings

import jax

from ttc_jax import checkpoints as ckpt_lib
from ttc_jax.model import abstract_params
from ttc_jax.verifier.model import VerifierConfig, init_head

SIDECAR_FILE = "verifier.json"
BEST_SUBDIR = "best"


def best_dir(out_dir: str) -> str:
  """The directory holding the best-params Checkpointer of a verifier run."""
  return os.path.join(os.path.abspath(out_dir), BEST_SUBDIR)


def abstract_verifier_params(vcfg: VerifierConfig) -> dict:
  """ShapeDtypeStructs of {"lm", "head"} (orbax restore targets)."""
  head = jax.eval_shape(lambda: init_head(vcfg, jax.random.key(0)))
  return {"lm": abstract_params(vcfg.model), "head": head}


def on_one_device(tree):
  """The same ShapeDtypeStructs placed on the first local device (restore target)."""
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  return jax.tree_util.tree_map(
      lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device), tree)


def _read_newest_meta(ckpt: ckpt_lib.Checkpointer) -> dict | None:
  for s in sorted(ckpt.steps(), reverse=True):
    try:
      return ckpt.read_meta(s)
    except Exception:  # pylint: disable=broad-except  (a damaged step: try older ones)
      continue
  return None


def _tokenizer(run_dir: str, rec: dict):
  """The run's tokenizer file when it matches the record, else the record's embedded copy."""
  from ttc_jax.tokenizer import load_tokenizer
  path = os.path.join(run_dir, rec.get("file", ckpt_lib.TOKENIZER_FILE))
  if os.path.exists(path):
    tok = load_tokenizer(path)
    if not rec.get("sha256") or ckpt_lib.tokenizer_record(tok)["sha256"] == rec["sha256"]:
      return tok
    warnings.warn(f"{path} differs from the tokenizer the verifier was trained with; using "
                  "the checkpoint's embedded copy", ckpt_lib.CheckpointWarning, stacklevel=3)
  tok = ckpt_lib.tokenizer_from_record(rec)
  if tok is None:
    raise FileNotFoundError(f"no usable tokenizer for the verifier run {run_dir}")
  return tok


def load_verifier(path: str, which: str = "best"):
  """(vcfg, params {"lm", "head"}, tokenizer) of a verifier run directory.

  which: "best" (default: the params with the lowest held-out loss, what early
  stopping returns; falls back to the newest training checkpoint when the run
  saved no best params yet) or "last" (the newest training checkpoint).
  Params land on one device.
  """
  if which not in ("best", "last"):
    raise ValueError(f"which must be 'best' or 'last', got {which!r}")
  run_dir = os.path.abspath(path)
  candidates = ([best_dir(run_dir)] if which == "best" else []) + [run_dir]
  for directory in candidates:
    if not os.path.isdir(ckpt_lib.checkpoint_dir(directory)):
      continue
    ckpt = ckpt_lib.Checkpointer(directory, max_to_keep=None, read_only=True)
    try:
      meta = _read_newest_meta(ckpt)
      if meta is None or "verifier_config" not in meta:
        continue
      vcfg = VerifierConfig.from_dict(meta["verifier_config"])
      target = on_one_device(abstract_verifier_params(vcfg))
      found = ckpt.restore_latest_good(target, None, model_cfg=vcfg.model)
    finally:
      ckpt.close()
    if found is None:
      continue
    _, params, _, meta = found
    vcfg = VerifierConfig.from_dict(meta["verifier_config"])
    tokenizer = _tokenizer(run_dir, meta.get("tokenizer", {}))
    tokenizer.check_matches(vcfg.model.vocab_size)
    return vcfg, params, tokenizer
  raise FileNotFoundError(f"no usable verifier checkpoint under {run_dir}")
