"""Helpers for tests that compare ttc_jax against tiny random `transformers` models.

Nothing is downloaded: models are built from a config with random weights.

    model = make_tiny_hf_model("llama", tmp_path, tie=True)   # saved to tmp_path
    cfg, params = ttc_jax.hf.load_checkpoint(tmp_path)
    np.testing.assert_allclose(hf_logits(model, tokens), forward(cfg, params, tokens)[0], ...)
"""

from __future__ import annotations

import os

import numpy as np
import torch
import transformers

_TRANSFORMERS_MAJOR = int(transformers.__version__.split(".")[0])

ARCHS = ("llama", "qwen2")

# Llama-3 style RoPE scaling whose thresholds fall inside a head_dim-16 spectrum
# at rope_theta 5e5 (wavelengths 6, 33, 168, ...: high, medium and low bands).
LLAMA3_ROPE_SCALING = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                       "high_freq_factor": 4.0, "original_max_position_embeddings": 64}


def make_hf_config(arch: str = "llama", *, tie: bool = False, vocab_size: int = 128,
                   d_model: int = 64, n_layers: int = 2, n_heads: int = 4, n_kv_heads: int = 2,
                   ffn_dim: int = 96, head_dim: int | None = None, rope_theta: float = 10000.0,
                   rope_scaling: dict | None = None, max_position_embeddings: int = 256,
                   rms_norm_eps: float = 1e-6, **extra):
  """A tiny `LlamaConfig` / `Qwen2Config` / `MistralConfig` (f32, eager attention, no eos).

  Mistral's sliding_window (default 4096) goes in `extra`."""
  from transformers import LlamaConfig, MistralConfig, Qwen2Config
  cls = {"llama": LlamaConfig, "qwen2": Qwen2Config, "mistral": MistralConfig}[arch]
  kwargs = dict(vocab_size=vocab_size, hidden_size=d_model, num_hidden_layers=n_layers,
                num_attention_heads=n_heads, num_key_value_heads=n_kv_heads,
                intermediate_size=ffn_dim, max_position_embeddings=max_position_embeddings,
                rms_norm_eps=rms_norm_eps, tie_word_embeddings=tie,
                bos_token_id=None, eos_token_id=None, pad_token_id=0)
  if _TRANSFORMERS_MAJOR >= 5:
    kwargs["rope_parameters"] = {"rope_type": "default", "rope_theta": rope_theta,
                                 **(rope_scaling or {})}
  else:  # transformers 4 names
    kwargs.update(rope_theta=rope_theta, rope_scaling=rope_scaling)
  if head_dim is not None:
    kwargs["head_dim"] = head_dim
  kwargs.update(extra)
  config = cls(**kwargs)
  config._attn_implementation = "eager"
  return config


@torch.no_grad()
def perturb_weights(model, seed: int = 0) -> None:
  """Makes a fresh HF init non-trivial so that a wrong weight mapping cannot hide.

  HF initialises linears with std 0.02, norms to 1 and biases to 0. Here every
  matrix gets std 1/sqrt(fan_in) (embeddings std 0.25, so tied logits stay O(1)), every
  norm weight
  U(0.5, 1.5) and every bias N(0, 0.5^2).
  """
  gen = torch.Generator().manual_seed(seed)
  seen = set()
  for name, p in model.named_parameters():
    if id(p) in seen:  # tied lm_head
      continue
    seen.add(id(p))
    if name.endswith("norm.weight"):
      p.copy_(0.5 + torch.rand(p.shape, generator=gen, dtype=p.dtype))
    elif name.endswith(".bias"):
      p.copy_(0.5 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    elif "embed_tokens" in name:
      p.copy_(0.25 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    else:
      p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) / p.shape[1] ** 0.5)


def make_tiny_hf_model(arch: str = "llama", path: str | os.PathLike | None = None, *,
                       tie: bool = False, seed: int = 0, perturb: bool = True,
                       max_shard_size: str | int | None = None, **config_kwargs):
  """A random tiny `Llama/Qwen2/MistralForCausalLM` in eval mode (f32, CPU).

  With `path`, also `save_pretrained`s it there as safetensors (sharded with an
  index.json when `max_shard_size` is small). `config_kwargs` go to
  `make_hf_config` (n_heads, n_kv_heads, rope_scaling, rope_theta, head_dim, ...).
  """
  from transformers import LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM
  config = make_hf_config(arch, tie=tie, **config_kwargs)
  torch.manual_seed(seed)
  cls = {"llama": LlamaForCausalLM, "qwen2": Qwen2ForCausalLM,
         "mistral": MistralForCausalLM}[arch]
  model = cls(config).to(torch.float32).eval()
  if perturb:
    perturb_weights(model, seed)
  if path is not None:
    kwargs = {} if max_shard_size is None else {"max_shard_size": max_shard_size}
    model.save_pretrained(os.fspath(path), **kwargs)
  return model


# Llama-3's pre-tokenizer split: punctuation keeps its trailing newlines (".\n"),
# newline runs stay together ("\n\n").
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
                r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


def byte_level_bpe(corpus, special_tokens, vocab_size: int = 320, split: str | None = None):
  """A `tokenizers` byte-level BPE (Llama-3 / Qwen style) trained on `corpus`;
  every byte is a token, so any text encodes. split: a pre-tokenizer regex
  (e.g. LLAMA3_SPLIT) instead of the byte-level default."""
  from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
  fast = Tokenizer(models.BPE())
  if split is None:
    fast.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  else:
    fast.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(split), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
  fast.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False,
                                special_tokens=list(special_tokens),
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
  fast.train_from_iterator(corpus, trainer)
  return fast


def llama3_style_bpe(corpus, special_tokens, vocab_size: int = 300):
  """`byte_level_bpe` with Llama-3's split: its tokens fuse newlines with the
  text before them, as real Llama-3 / Qwen vocabularies do."""
  return byte_level_bpe(corpus, special_tokens, vocab_size, split=LLAMA3_SPLIT)


def random_tokens(batch: int, length: int, vocab_size: int = 128, seed: int = 0) -> np.ndarray:
  return np.random.default_rng(seed).integers(0, vocab_size, (batch, length), dtype=np.int32)


@torch.no_grad()
def hf_logits(model, tokens) -> np.ndarray:
  """f32 logits [B, T, V] of a full causal forward over int tokens [B, T]."""
  ids = torch.as_tensor(np.asarray(tokens), dtype=torch.long)
  return model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits.float().numpy()


@torch.no_grad()
def hf_greedy(model, prompts, max_new_tokens: int) -> np.ndarray:
  """`model.generate` greedy continuation [B, max_new_tokens] of equal-length prompts."""
  ids = torch.as_tensor(np.asarray(prompts), dtype=torch.long)
  out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                       max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens,
                       eos_token_id=None, pad_token_id=0, num_beams=1)
  return out[:, ids.shape[1]:].numpy()


@torch.no_grad()
def hf_state_dict_numpy(model) -> dict[str, np.ndarray]:
  """The model's tensors by HF name, as f32 numpy arrays."""
  return {k: v.float().numpy() for k, v in model.state_dict().items()}


def load_hf_pretrained(path):
  """`AutoModelForCausalLM.from_pretrained(path)` in f32 eval mode (local files only)."""
  from transformers import AutoModelForCausalLM
  dtype_kw = "dtype" if _TRANSFORMERS_MAJOR >= 5 else "torch_dtype"
  model = AutoModelForCausalLM.from_pretrained(os.fspath(path), local_files_only=True,
                                               **{dtype_kw: torch.float32})
  return model.eval()


def random_params(cfg, seed: int = 0) -> dict:
  """Non-trivial random ttc_jax params for `cfg`, built in numpy (no per-leaf jit
  compiles, unlike `init_params`): matrices std 1/sqrt(fan_in), embeddings std
  0.25, norm weights U(0.5, 1.5), biases N(0, 0.5^2)."""
  import jax
  import jax.numpy as jnp
  from ttc_jax.model.params import param_specs, ParamSpec

  rng = np.random.default_rng(seed)

  def leaf(spec: ParamSpec):
    if spec.init == "ones" or (spec.init == "zeros" and len(spec.shape) == 1):  # norms
      x = rng.uniform(0.5, 1.5, spec.shape)
    elif spec.init == "zeros":  # biases [heads, head_dim]
      x = 0.5 * rng.standard_normal(spec.shape)
    elif spec.fan_in == 1:  # embeddings
      x = 0.25 * rng.standard_normal(spec.shape)
    else:
      x = rng.standard_normal(spec.shape) / np.sqrt(spec.fan_in)
    return jnp.asarray(x, cfg.jnp_dtype)

  return jax.tree_util.tree_map(leaf, param_specs(cfg), is_leaf=lambda x: isinstance(x, ParamSpec))
