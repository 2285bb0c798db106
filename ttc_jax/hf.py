"""Hugging Face checkpoint import / export for Llama, Qwen2 and Mistral models.

* `config_from_hf(hf_config_dict) -> ModelConfig`
* `load_checkpoint(path, dtype="float32") -> (ModelConfig, params)`: a local
  directory with `config.json` and `model.safetensors` or
  `model.safetensors.index.json` + shards. Nothing is ever downloaded.
* `load_backbone(path, dtype="float32") -> (ModelConfig, params, extras, arch)`:
  the transformer of a checkpoint whose head is not an LM head (transformers'
  `*ForTokenClassification`, Qwen2.5-Math-PRM's `Qwen2ForProcessRewardModel`):
  `model.*` tensors as params, the head's tensors (`score.*`) as numpy arrays.
  `checkpoint_architecture(path)` says which of the two loaders a directory needs.
* `save_checkpoint(path, cfg, params)`: writes `config.json` +
  `model.safetensors` that `transformers` loads as Llama (or Qwen2 when the
  config has q/k/v biases).

Tensors are read with `safetensors.safe_open(..., framework="numpy")`. Plain
numpy has no bfloat16, but once `ml_dtypes` is imported (done below; jax
imports it too) safetensors 0.8 returns BF16 tensors as `ml_dtypes.bfloat16`
arrays, so bf16 checkpoints load without torch and without touching a device.
The same trick lets `safetensors.numpy.save_file` write BF16.

Torch `nn.Linear` weights are [out, in]; ours are [in, out] with the head
axes split out: q_proj [H*E, D] -> wq [D, H, E], o_proj [D, H*E] -> wo [H, E, D].

Mistral is Llama's layout (same tensor names, no biases) plus sliding-window
attention: a query sees only the last `sliding_window` positions. Up to that
many tokens the window hides nothing, so a Mistral config's `max_seq_len` is
min(max_position_embeddings, sliding_window) and every path that honours
max_seq_len (search, generation, revisions, `hf_prm.score_solutions`) refuses
longer sequences instead of attending past the window. Math-Shepherd's PRM has
a 4096-token window; Mistral v0.2+ configs have none (`sliding_window: null`).
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable

import ml_dtypes  # noqa: F401  (registers bfloat16 with numpy for safetensors)
import numpy as np

import jax
import jax.numpy as jnp

from ttc_jax.model.config import ModelConfig
from ttc_jax.model.params import abstract_params

SUPPORTED_ARCHITECTURES = {
    "LlamaForCausalLM": "llama",
    "Qwen2ForCausalLM": "qwen2",
    "MistralForCausalLM": "mistral",
}
_MODEL_TYPE_TO_ARCH = {v: k for k, v in SUPPORTED_ARCHITECTURES.items()}
# Same transformers, another head (no lm_head): only `load_backbone` reads these.
HEAD_ARCHITECTURES = {
    "LlamaForTokenClassification": "llama",
    "Qwen2ForTokenClassification": "qwen2",
    "Qwen2ForProcessRewardModel": "qwen2",  # Qwen2.5-Math-PRM (remote code)
    "Qwen2ForPrmModel": "qwen2",  # Skywork-o1-Open-PRM: a value head, v_head.summary.*
    "MistralForTokenClassification": "mistral",
}
_SILU_NAMES = ("silu", "swish")  # the same function in transformers' ACT2FN
_FLOAT_DTYPES = ("F16", "BF16", "F32", "F64")
_NP_DTYPES = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16}
# Tensors that may appear in a checkpoint and carry no weights we need.
_HARMLESS_SUFFIXES = ("rotary_emb.inv_freq",)

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"


# ----------------------------------------------------------------------------- config


def _architecture(hf: dict, allowed: dict[str, str] = SUPPORTED_ARCHITECTURES) -> str:
  """The config's architecture name, one of `allowed` (name -> model family).

  Without an `architectures` field, `model_type` picks the causal LM."""
  archs = hf.get("architectures") or []
  supported = ", ".join(sorted(allowed))
  if archs:
    if len(archs) != 1 or archs[0] not in allowed:
      hint = (" (a model with a classification head: read it with load_backbone)"
              if archs[0] in HEAD_ARCHITECTURES and allowed is SUPPORTED_ARCHITECTURES else "")
      raise ValueError(f"unsupported architecture {archs!r} in the HF config; "
                       f"supported: {supported}{hint}")
    return archs[0]
  model_type = hf.get("model_type")
  if _MODEL_TYPE_TO_ARCH.get(model_type) not in allowed:  # a head is never guessed
    raise ValueError(f"unsupported model_type {model_type!r} (no 'architectures' field) in the "
                     f"HF config; supported architectures: {supported}")
  return _MODEL_TYPE_TO_ARCH[model_type]


def _rope(hf: dict) -> tuple[float, tuple[float, float, float, int] | None]:
  """(rope_theta, llama3 scaling or None) from either config generation.

  transformers >= 5 writes `rope_parameters: {rope_type, rope_theta, ...}`;
  older configs have top-level `rope_theta` and `rope_scaling: {type|rope_type, ...}`.
  """
  params: dict[str, Any] = {}
  for key in ("rope_scaling", "rope_parameters"):  # later wins
    value = hf.get(key)
    if value is None:
      continue
    if not isinstance(value, dict):
      raise ValueError(f"HF config field {key!r} must be a dict, got {value!r}")
    params.update(value)
  theta = params.get("rope_theta", hf.get("rope_theta", 10000.0))
  if not isinstance(theta, (int, float)):
    raise ValueError(f"unsupported rope parameters {params!r} (per-layer-type RoPE is not "
                     "supported)")
  rope_type = params.get("rope_type", params.get("type", "default"))
  if rope_type in (None, "default"):
    return float(theta), None
  if rope_type == "llama3":
    try:
      scaling = (float(params["factor"]), float(params["low_freq_factor"]),
                 float(params["high_freq_factor"]),
                 int(params["original_max_position_embeddings"]))
    except KeyError as e:
      raise ValueError(f"llama3 rope scaling is missing {e.args[0]!r}: {params!r}") from None
    return float(theta), scaling
  raise ValueError(f"unsupported rope scaling type {rope_type!r}; supported: 'default' (none) "
                   "and 'llama3'")


def config_from_hf(hf_config: dict) -> ModelConfig:
  """A float32 ModelConfig from a Llama / Qwen2 / Mistral `config.json` dict."""
  return _config_from_hf(hf_config, SUPPORTED_ARCHITECTURES)


def _config_from_hf(hf_config: dict, allowed: dict[str, str]) -> ModelConfig:
  hf = dict(hf_config)
  arch = _architecture(hf, allowed)
  family = {**SUPPORTED_ARCHITECTURES, **HEAD_ARCHITECTURES}[arch]
  required = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
              "intermediate_size")
  absent = [k for k in required if hf.get(k) is None]
  if absent:
    raise ValueError(f"HF config for {arch} lacks required field(s) {absent}")
  act = hf.get("hidden_act", "silu")
  if act not in _SILU_NAMES:
    raise ValueError(f"unsupported hidden_act {act!r} for {arch}; only 'silu' is supported")
  if hf.get("mlp_bias"):
    raise ValueError(f"{arch} with mlp_bias=True is not supported (no MLP biases in ttc_jax)")
  if family == "qwen2":  # q/k/v always have biases, o_proj never does.
    qkv_bias = True
    layer_types = hf.get("layer_types") or []
    if hf.get("use_sliding_window") or any(t != "full_attention" for t in layer_types):
      raise ValueError("Qwen2 sliding-window attention is not supported")
  else:  # Llama, Mistral: no biases
    if hf.get("attention_bias"):
      raise ValueError(f"{arch} with attention_bias=True is not supported: it adds an "
                       "o_proj bias, which ttc_jax does not have")
    qkv_bias = False
  # pretraining_tp only changes how HF splits the matmuls: the same model, ignored.
  n_heads = int(hf["num_attention_heads"])
  n_kv = hf.get("num_key_value_heads")
  head_dim = hf.get("head_dim")
  d_model = int(hf["hidden_size"])
  if head_dim is not None and int(head_dim) == d_model // n_heads and d_model % n_heads == 0:
    head_dim = None  # the default; keep configs canonical
  theta, llama3 = _rope(hf)
  return ModelConfig(
      vocab_size=int(hf["vocab_size"]),
      d_model=d_model,
      n_layers=int(hf["num_hidden_layers"]),
      n_heads=n_heads,
      n_kv_heads=int(n_kv) if n_kv is not None else n_heads,
      ffn_dim=int(hf["intermediate_size"]),
      head_dim=int(head_dim) if head_dim is not None else None,
      rope_theta=theta,
      rope_llama3_scaling=llama3,
      norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
      tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
      qkv_bias=qkv_bias,
      activation="silu",
      max_seq_len=_context_limit(hf, family),
      dtype="float32",
  )


def _context_limit(hf: dict, family: str) -> int:
  """max_position_embeddings, capped at a Mistral config's sliding window: up to
  `sliding_window` tokens the window masks nothing (under either convention, a
  window of W or W + 1 keys), so capping replaces implementing it."""
  limit = int(hf.get("max_position_embeddings", 2048))
  # Qwen2 configs carry an unused sliding_window (use_sliding_window is checked above).
  window = hf.get("sliding_window") if family == "mistral" else None
  if window is None:
    return limit
  if isinstance(window, bool) or not isinstance(window, int) or window < 1:
    raise ValueError(f"sliding_window must be a positive int or null, got {window!r}")
  return min(limit, window)


def config_to_hf(cfg: ModelConfig) -> dict:
  """The `config.json` dict for `cfg` (Qwen2 if it has q/k/v biases, else Llama)."""
  if cfg.activation != "silu" or cfg.norm_plus_one or cfg.scale_embeddings:
    raise ValueError("only Llama/Qwen2-style configs (silu, plain RMSNorm weights, unscaled "
                     "embeddings) can be exported to a HF checkpoint")
  arch = "Qwen2ForCausalLM" if cfg.qkv_bias else "LlamaForCausalLM"
  rope_parameters: dict[str, Any] = {"rope_theta": cfg.rope_theta, "rope_type": "default"}
  rope_scaling = None
  if cfg.rope_llama3_scaling is not None:
    factor, low, high, original = cfg.rope_llama3_scaling
    rope_scaling = {"rope_type": "llama3", "factor": factor, "low_freq_factor": low,
                    "high_freq_factor": high, "original_max_position_embeddings": original}
    rope_parameters.update(rope_scaling)
  hf = {
      "architectures": [arch],
      "model_type": SUPPORTED_ARCHITECTURES[arch],
      "vocab_size": cfg.vocab_size,
      "hidden_size": cfg.d_model,
      "num_hidden_layers": cfg.n_layers,
      "num_attention_heads": cfg.n_heads,
      "num_key_value_heads": cfg.n_kv_heads,
      "intermediate_size": cfg.ffn_dim,
      "head_dim": cfg.hd,
      "hidden_act": "silu",
      "max_position_embeddings": cfg.max_seq_len,
      "rms_norm_eps": cfg.norm_eps,
      "tie_word_embeddings": cfg.tie_embeddings,
      # transformers >= 5 reads rope_parameters; older versions the two legacy keys.
      "rope_parameters": rope_parameters,
      "rope_theta": cfg.rope_theta,
      "rope_scaling": rope_scaling,
      "dtype": cfg.dtype,
      "torch_dtype": cfg.dtype,
  }
  if arch == "LlamaForCausalLM":
    hf.update(attention_bias=False, mlp_bias=False)
  else:
    hf.update(use_sliding_window=False, sliding_window=None)
  return hf


# ----------------------------------------------------------------------------- name map


class _Entry:
  """One HF tensor <-> one leaf of our params pytree."""

  def __init__(self, hf_name: str, path: tuple, hf_shape: tuple[int, ...],
               to_ours: Callable[[np.ndarray], np.ndarray],
               to_hf: Callable[[np.ndarray], np.ndarray]):
    self.hf_name, self.path, self.hf_shape = hf_name, path, hf_shape
    self.to_ours, self.to_hf = to_ours, to_hf


def _entries(cfg: ModelConfig) -> list[_Entry]:
  d, h, k, e, f, v = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.hd, cfg.ffn_dim, cfg.vocab_size
  same = lambda x: x
  out = [_Entry("model.embed_tokens.weight", ("embed",), (v, d), same, same),
         _Entry("model.norm.weight", ("final_norm",), (d,), same, same)]
  if not cfg.tie_embeddings:
    out.append(_Entry("lm_head.weight", ("lm_head",), (v, d), lambda x: x.T, lambda x: x.T))

  def proj(n):  # [n*E, D] <-> [D, n, E]
    return (lambda x: x.T.reshape(d, n, e)), (lambda x: x.reshape(d, n * e).T)

  for i in range(cfg.n_layers):
    p = f"model.layers.{i}."
    L = lambda name: ("layers", i, name)
    out += [
        _Entry(p + "input_layernorm.weight", L("attn_norm"), (d,), same, same),
        _Entry(p + "post_attention_layernorm.weight", L("mlp_norm"), (d,), same, same),
        _Entry(p + "self_attn.q_proj.weight", L("wq"), (h * e, d), *proj(h)),
        _Entry(p + "self_attn.k_proj.weight", L("wk"), (k * e, d), *proj(k)),
        _Entry(p + "self_attn.v_proj.weight", L("wv"), (k * e, d), *proj(k)),
        _Entry(p + "self_attn.o_proj.weight", L("wo"), (d, h * e),
               lambda x: x.T.reshape(h, e, d), lambda x: x.reshape(h * e, d).T),
        _Entry(p + "mlp.gate_proj.weight", L("w_gate"), (f, d), lambda x: x.T, lambda x: x.T),
        _Entry(p + "mlp.up_proj.weight", L("w_up"), (f, d), lambda x: x.T, lambda x: x.T),
        _Entry(p + "mlp.down_proj.weight", L("w_down"), (d, f), lambda x: x.T, lambda x: x.T),
    ]
    if cfg.qkv_bias:
      out += [
          _Entry(p + "self_attn.q_proj.bias", L("bq"), (h * e,),
                 lambda x: x.reshape(h, e), lambda x: x.reshape(h * e)),
          _Entry(p + "self_attn.k_proj.bias", L("bk"), (k * e,),
                 lambda x: x.reshape(k, e), lambda x: x.reshape(k * e)),
          _Entry(p + "self_attn.v_proj.bias", L("bv"), (k * e,),
                 lambda x: x.reshape(k, e), lambda x: x.reshape(k * e)),
      ]
  return out


def _get(tree, path):
  for key in path:
    tree = tree[key]
  return tree


def _set(tree, path, value):
  for key in path[:-1]:
    tree = tree[key]
  tree[path[-1]] = value


# ----------------------------------------------------------------------------- load


def _weight_files(path: str) -> dict[str, str]:
  """HF tensor name -> the safetensors file holding it."""
  single = os.path.join(path, WEIGHTS_FILE)
  index = os.path.join(path, INDEX_FILE)
  if os.path.exists(index):
    with open(index) as fh:
      weight_map = json.load(fh).get("weight_map")
    if not isinstance(weight_map, dict):
      raise ValueError(f"{index} has no 'weight_map' dict")
    for shard in sorted(set(weight_map.values())):
      if not os.path.isfile(os.path.join(path, shard)):
        raise FileNotFoundError(
            f"checkpoint shard {shard!r} named in {INDEX_FILE} is missing from {path}")
    return {name: os.path.join(path, shard) for name, shard in weight_map.items()}
  if os.path.exists(single):
    return {}  # filled from the file itself below
  raise FileNotFoundError(f"no {WEIGHTS_FILE} or {INDEX_FILE} in {path}")


def load_checkpoint(path: str | os.PathLike, dtype: str = "float32") -> tuple[ModelConfig, dict]:
  """Reads a local HF Llama / Qwen2 / Mistral safetensors checkpoint directory.

  Returns (cfg with `dtype`, params pytree of jax arrays in `dtype`). Raises
  ValueError naming the HF tensor on a missing / unexpected tensor, a wrong
  shape or a non-float dtype, and FileNotFoundError for a missing shard.
  """
  path = os.fspath(path)
  hf_config = _read_config(path, dtype)
  cfg = config_from_hf(hf_config).replace(dtype=dtype)
  optional = {"lm_head.weight"} if cfg.tie_embeddings else set()  # HF re-ties it anyway
  params, _ = _read_weights(path, cfg, dtype, optional=optional, extra_prefixes=())
  return cfg, params


def load_backbone(path: str | os.PathLike, dtype: str = "float32", *,
                  extra_prefixes: tuple[str, ...] = ("score.",), causal_lm: bool = False
                  ) -> tuple[ModelConfig, dict, dict[str, np.ndarray], str]:
  """Reads the transformer of a checkpoint with a non-LM head (`HEAD_ARCHITECTURES`).

  Such checkpoints hold `model.*` plus the head's tensors and no `lm_head`.
  Returns (cfg, params, extras, architecture): params hold the backbone in
  `dtype`; extras are the tensors whose names start with one of
  `extra_prefixes`, as float32 numpy arrays keyed by their HF names. There is
  no LM head, so cfg says `tie_embeddings=True` to keep the params pytree
  complete: the LM logits are then meaningless (a classification head never
  reads them). An `lm_head.weight`, if present, is ignored. Causal LMs are
  read with `load_checkpoint`, or here with causal_lm=True: a head saved
  beside a causal LM's tensors (TRL's ...WithValueHead: `v_head.*`).
  """
  path = os.fspath(path)
  hf_config = _read_config(path, dtype)
  archs = hf_config.get("architectures") or []
  if not causal_lm and len(archs) == 1 and archs[0] in SUPPORTED_ARCHITECTURES:
    raise ValueError(f"{path} holds a causal LM ({archs[0]}), not a model with a "
                     f"classification head: read it with load_checkpoint")
  allowed = {**HEAD_ARCHITECTURES, **SUPPORTED_ARCHITECTURES} if causal_lm else HEAD_ARCHITECTURES
  arch = _architecture(hf_config, allowed)
  cfg = _config_from_hf(hf_config, allowed).replace(dtype=dtype, tie_embeddings=True)
  params, extras = _read_weights(path, cfg, dtype, optional={"lm_head.weight"},
                                 extra_prefixes=tuple(extra_prefixes))
  return cfg, params, extras, arch


def checkpoint_architecture(path: str | os.PathLike) -> str:
  """The architecture named by a checkpoint's config.json: one of
  `SUPPORTED_ARCHITECTURES` (read with `load_checkpoint`) or `HEAD_ARCHITECTURES`
  (read with `load_backbone`)."""
  hf_config = _read_config(os.fspath(path), "float32")
  return _architecture(hf_config, {**SUPPORTED_ARCHITECTURES, **HEAD_ARCHITECTURES})


def _read_config(path: str, dtype: str) -> dict:
  if dtype not in _NP_DTYPES:
    raise ValueError(f"dtype must be one of {tuple(_NP_DTYPES)}, got {dtype!r}")
  config_path = os.path.join(path, CONFIG_FILE)
  if not os.path.isfile(config_path):
    raise FileNotFoundError(f"no {CONFIG_FILE} in {path}")
  with open(config_path) as fh:
    return json.load(fh)


def _checked_tensor(fh, name: str, shape: tuple[int, ...] | None) -> np.ndarray:
  """Tensor `name` from an open safetensors file, after dtype (and shape) checks."""
  sl = fh.get_slice(name)
  got_dtype, got_shape = sl.get_dtype(), tuple(sl.get_shape())
  if got_dtype not in _FLOAT_DTYPES:
    raise ValueError(f"tensor {name!r} has dtype {got_dtype}; expected a float dtype "
                     f"{_FLOAT_DTYPES}")
  if shape is not None and got_shape != shape:
    raise ValueError(f"tensor {name!r} has shape {got_shape}; expected {shape}")
  return fh.get_tensor(name)


def _read_weights(path: str, cfg: ModelConfig, dtype: str, *, optional: set[str],
                  extra_prefixes: tuple[str, ...]) -> tuple[dict, dict[str, np.ndarray]]:
  """(params for `cfg`, extra tensors by name) from the checkpoint's safetensors.

  `optional` tensors may be absent and are not read; `extra_prefixes` name the
  other tensors to return as f32 numpy; anything else unknown is an error.
  """
  from safetensors import safe_open

  files = _weight_files(path)
  if not files:
    single = os.path.join(path, WEIGHTS_FILE)
    with safe_open(single, framework="numpy") as fh:
      files = {name: single for name in fh.keys()}

  entries = {e.hf_name: e for e in _entries(cfg)}
  missing = sorted(set(entries) - set(files))
  if missing:
    raise ValueError(f"checkpoint {path} is missing tensor(s) {missing}")
  wanted_extra = [n for n in files if n not in entries and n.startswith(extra_prefixes)]
  extra = sorted(n for n in files if n not in entries and n not in optional
                 and n not in wanted_extra and not n.endswith(_HARMLESS_SUFFIXES))
  if extra:
    raise ValueError(f"checkpoint {path} has unexpected tensor(s) {extra}; they are not part "
                     "of the supported Llama / Qwen2 / Mistral layout")

  abstract = abstract_params(cfg)
  params = jax.tree_util.tree_map(lambda _: None, abstract)
  extras: dict[str, np.ndarray] = {}
  target = _NP_DTYPES[dtype]
  by_file: dict[str, list[str]] = {}
  for name in list(entries) + wanted_extra:
    by_file.setdefault(files[name], []).append(name)
  for file, names in sorted(by_file.items()):
    with safe_open(file, framework="numpy") as fh:
      present = set(fh.keys())
      for name in names:
        if name not in present:
          raise ValueError(f"{INDEX_FILE} puts tensor {name!r} in {os.path.basename(file)!r}, "
                           "which does not contain it")
        if name not in entries:
          extras[name] = np.asarray(_checked_tensor(fh, name, None), np.float32)
          continue
        entry = entries[name]
        tensor = _checked_tensor(fh, name, entry.hf_shape)
        ours = np.ascontiguousarray(entry.to_ours(tensor).astype(target))
        want = _get(abstract, entry.path)
        assert ours.shape == want.shape, (name, ours.shape, want.shape)
        _set(params, entry.path, jnp.asarray(ours))
  return params, extras


# ----------------------------------------------------------------------------- save


def save_checkpoint(path: str | os.PathLike, cfg: ModelConfig, params: dict) -> None:
  """Writes `config.json` + `model.safetensors` (HF Llama / Qwen2 layout) to `path`.

  Tensors keep the params' dtype (float32 or bfloat16). `load_checkpoint(path,
  cfg.dtype)` returns exactly (cfg, params) back.
  """
  from safetensors.numpy import save_file

  path = os.fspath(path)
  hf_config = config_to_hf(cfg)
  abstract = abstract_params(cfg)
  got = jax.tree_util.tree_structure(params)
  if got != jax.tree_util.tree_structure(abstract):
    raise ValueError(f"params structure {got} does not match the config's "
                     f"{jax.tree_util.tree_structure(abstract)}")
  tensors = {}
  for entry in _entries(cfg):
    leaf = np.asarray(_get(params, entry.path))
    want = _get(abstract, entry.path).shape
    if leaf.shape != want:
      raise ValueError(f"param {entry.path} has shape {leaf.shape}; expected {want}")
    tensors[entry.hf_name] = np.ascontiguousarray(entry.to_hf(leaf))
  os.makedirs(path, exist_ok=True)
  save_file(tensors, os.path.join(path, WEIGHTS_FILE), metadata={"format": "pt"})
  with open(os.path.join(path, CONFIG_FILE), "w") as fh:
    json.dump(hf_config, fh, indent=2, sort_keys=True)
  index = os.path.join(path, INDEX_FILE)
  if os.path.exists(index):  # a stale index would shadow the file just written
    os.remove(index)


__all__ = ["HEAD_ARCHITECTURES", "SUPPORTED_ARCHITECTURES", "checkpoint_architecture",
           "config_from_hf", "config_to_hf", "load_backbone", "load_checkpoint", "save_checkpoint"]
