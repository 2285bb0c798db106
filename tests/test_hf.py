"""HF checkpoint import/export: parity with `transformers` (torch CPU) on tiny random models."""

from __future__ import annotations

import functools
import json
import os
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from safetensors.numpy import load_file, save_file  # noqa: E402

from ttc_jax import hf  # noqa: E402
from ttc_jax.model import ModelConfig, forward, init_cache  # noqa: E402

try:
  from hf_utils import (ARCHS, LLAMA3_ROPE_SCALING, hf_greedy, hf_logits,  # noqa: E402
                        load_hf_pretrained, make_tiny_hf_model, random_params,
                        random_tokens)
except ImportError:  # tests/ imported as a package
  from tests.hf_utils import (ARCHS, LLAMA3_ROPE_SCALING, hf_greedy, hf_logits,  # noqa: E402
                              load_hf_pretrained, make_tiny_hf_model, random_params,
                              random_tokens)

LOGIT_TOL = 1e-4
NEW_TOKENS = 32


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
  """One torch intra-op thread for these tiny models: on a 2-core machine that
  is busy with other work, torch's worker threads made each parity test ~5x
  slower. (Set per module: experiments/bench_decode sets all cores.)"""
  before = torch.get_num_threads()
  torch.set_num_threads(1)
  yield
  torch.set_num_threads(before)


@functools.partial(jax.jit, static_argnums=0)
def _greedy_step(cfg, params, tokens, cache):
  logits, cache = forward(cfg, params, tokens, cache=cache)
  return jnp.argmax(logits[:, -1], axis=-1).astype(jnp.int32), cache


def jax_greedy(cfg, params, prompts, max_new_tokens):
  """Minimal greedy loop with a KV cache (independent of ttc_jax.decode)."""
  prompts = jnp.asarray(prompts, jnp.int32)
  cache = init_cache(cfg, prompts.shape[0], prompts.shape[1] + max_new_tokens)
  tok, cache = _greedy_step(cfg, params, prompts, cache)
  out = [tok]
  for _ in range(max_new_tokens - 1):
    tok, cache = _greedy_step(cfg, params, tok[:, None], cache)
    out.append(tok)
  return np.stack([np.asarray(t) for t in out], axis=1)


def jax_logits(cfg, params, tokens):
  return np.asarray(jax.jit(forward, static_argnums=0)(cfg, params, jnp.asarray(tokens))[0])


def assert_trees_equal(a, b):
  la, ta = jax.tree_util.tree_flatten(a)
  lb, tb = jax.tree_util.tree_flatten(b)
  assert ta == tb
  for x, y in zip(la, lb):
    assert x.dtype == y.dtype and x.shape == y.shape
    np.testing.assert_array_equal(np.asarray(x, np.float32), np.asarray(y, np.float32))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
  """checkpoint(arch, tie) -> (hf model, directory); built once per module.

  qwen2/untied is saved in many small shards so the index.json path is used.
  """
  built = {}

  def get(arch, tie):
    if (arch, tie) not in built:
      path = tmp_path_factory.mktemp(f"{arch}_{'tied' if tie else 'untied'}")
      shard = "20KB" if (arch, tie) == ("qwen2", False) else None
      model = make_tiny_hf_model(arch, path, tie=tie, seed=len(built), max_shard_size=shard)
      built[arch, tie] = model, str(path)
    return built[arch, tie]

  return get


def _copy(checkpoint, tmp_path, arch="llama", tie=False):
  _, src = checkpoint(arch, tie)
  dst = tmp_path / "ckpt"
  shutil.copytree(src, dst)
  return dst


def _edit_config(path, **changes):
  with open(path / "config.json") as fh:
    config = json.load(fh)
  config.update(changes)
  with open(path / "config.json", "w") as fh:
    json.dump(config, fh)


def _edit_tensors(path, fn):
  file = path / "model.safetensors"
  tensors = load_file(str(file))
  fn(tensors)
  save_file(tensors, str(file), metadata={"format": "pt"})


# ----------------------------------------------------------------------------- parity


@pytest.mark.parametrize("tie", [False, True], ids=["untied", "tied"])
@pytest.mark.parametrize("arch", ARCHS)
def test_logits_and_greedy_match_transformers(checkpoint, arch, tie):
  model, path = checkpoint(arch, tie)
  if (arch, tie) == ("qwen2", False):
    assert os.path.exists(os.path.join(path, "model.safetensors.index.json"))
  cfg, params = hf.load_checkpoint(path)
  assert cfg.tie_embeddings == tie and cfg.qkv_bias == (arch == "qwen2")
  assert (cfg.n_heads, cfg.n_kv_heads, cfg.dtype) == (4, 2, "float32")
  assert ("lm_head" in params) == (not tie)

  tokens = random_tokens(3, 24, cfg.vocab_size, seed=1)
  want = hf_logits(model, tokens)
  got = jax_logits(cfg, params, tokens)
  assert np.abs(want).max() > 1.0  # non-trivial weights
  np.testing.assert_allclose(got, want, rtol=0, atol=LOGIT_TOL)

  prompts = random_tokens(2, 8, cfg.vocab_size, seed=2)
  want_tokens = hf_greedy(model, prompts, NEW_TOKENS)
  assert want_tokens.shape == (2, NEW_TOKENS)
  np.testing.assert_array_equal(jax_greedy(cfg, params, prompts, NEW_TOKENS), want_tokens)


def test_decode_generate_matches_transformers(checkpoint):
  """ttc_jax.decode.generate (ragged prompts, batched) == per-prompt HF greedy."""
  decode = pytest.importorskip("ttc_jax.decode")
  if not hasattr(decode, "generate"):
    pytest.skip("ttc_jax.decode.generate not available")
  model, path = checkpoint("qwen2", False)
  cfg, params = hf.load_checkpoint(path)
  rng = np.random.default_rng(3)
  prompts = [rng.integers(0, cfg.vocab_size, n).tolist() for n in (8, 5, 11)]  # ragged
  out = decode.generate(cfg, params, prompts, max_new_tokens=NEW_TOKENS,
                        sampler=decode.Greedy(), seed=0)
  got = np.asarray(out.tokens)
  assert got.shape == (3, NEW_TOKENS)
  for i, p in enumerate(prompts):
    np.testing.assert_array_equal(got[i], hf_greedy(model, [p], NEW_TOKENS)[0], err_msg=f"row {i}")


def test_llama3_rope_scaling_matches_transformers(tmp_path):
  model = make_tiny_hf_model("llama", tmp_path, seed=7, rope_theta=500000.0,
                             rope_scaling=LLAMA3_ROPE_SCALING, max_position_embeddings=256)
  cfg, params = hf.load_checkpoint(tmp_path)
  assert cfg.rope_theta == 500000.0
  assert cfg.rope_llama3_scaling == (8.0, 1.0, 4.0, 64)
  tokens = random_tokens(2, 96, cfg.vocab_size, seed=4)
  want = hf_logits(model, tokens)
  np.testing.assert_allclose(jax_logits(cfg, params, tokens), want, rtol=0, atol=LOGIT_TOL)
  # The scaling matters at these positions, so dropping it would be caught.
  unscaled = jax_logits(cfg.replace(rope_llama3_scaling=None), params, tokens)
  assert np.abs(unscaled - want).max() > 100 * LOGIT_TOL
  prompts = random_tokens(2, 8, cfg.vocab_size, seed=5)
  np.testing.assert_array_equal(jax_greedy(cfg, params, prompts, NEW_TOKENS),
                                hf_greedy(model, prompts, NEW_TOKENS))


# ----------------------------------------------------------------------------- dtypes


def test_bfloat16_load(checkpoint):
  model, path = checkpoint("llama", False)
  cfg, params = hf.load_checkpoint(path, dtype="bfloat16")
  assert cfg.dtype == "bfloat16"
  assert all(x.dtype == jnp.bfloat16 for x in jax.tree_util.tree_leaves(params))
  _, params32 = hf.load_checkpoint(path)
  for x, y in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(params32)):
    np.testing.assert_array_equal(x, y.astype(jnp.bfloat16))
  tokens = random_tokens(2, 16, cfg.vocab_size, seed=6)
  want = hf_logits(model, tokens)
  got = jax_logits(cfg, params, tokens)
  assert got.dtype == np.float32
  scale = np.abs(want).max()
  assert np.abs(got - want).max() <= 0.05 * scale, (np.abs(got - want).max(), scale)


def test_bfloat16_checkpoint_file(tmp_path):
  """A checkpoint stored in bf16 (as most hub models are) reads exactly."""
  model = make_tiny_hf_model("qwen2", seed=8).to(torch.bfloat16)
  model.save_pretrained(str(tmp_path))
  with open(tmp_path / "config.json") as fh:
    config = json.load(fh)
  assert config.get("dtype", config.get("torch_dtype")) == "bfloat16"
  cfg, params = hf.load_checkpoint(tmp_path)
  assert cfg.dtype == "float32"
  want = model.model.layers[1].self_attn.q_proj.weight.detach().float().numpy()
  np.testing.assert_array_equal(np.asarray(params["layers"][1]["wq"]).reshape(64, -1), want.T)
  cfg16, params16 = hf.load_checkpoint(tmp_path, dtype="bfloat16")
  assert_trees_equal(params16, jax.tree_util.tree_map(lambda x: x.astype(jnp.bfloat16), params))
  # The same (bf16-valued) weights in an f32 model. Not model.to(float32): the
  # .to(bfloat16) above also rounded HF's RoPE inv_freq buffer.
  model32 = load_hf_pretrained(tmp_path)
  tokens = random_tokens(2, 16, cfg.vocab_size, seed=9)
  want = hf_logits(model32, tokens)
  np.testing.assert_allclose(jax_logits(cfg, params, tokens), want, rtol=0, atol=LOGIT_TOL)


# ----------------------------------------------------------------------------- save


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("arch,tie", [("llama", True), ("qwen2", False)])
def test_save_load_round_trip(checkpoint, tmp_path, arch, tie, dtype):
  _, path = checkpoint(arch, tie)
  cfg, params = hf.load_checkpoint(path, dtype=dtype)
  hf.save_checkpoint(tmp_path / "out", cfg, params)
  cfg2, params2 = hf.load_checkpoint(tmp_path / "out", dtype=dtype)
  assert cfg2 == cfg
  assert_trees_equal(params2, params)


def test_saved_checkpoint_loads_in_transformers(tmp_path):
  """Export of freshly initialised params (non-default head_dim, biases, llama3
  RoPE, untied) -> transformers' from_pretrained gives the same logits."""
  cfg = ModelConfig(vocab_size=128, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=96,
                    head_dim=32, rope_theta=500000.0, rope_llama3_scaling=(8.0, 1.0, 4.0, 64),
                    norm_eps=1e-5, qkv_bias=True, max_seq_len=256)
  params = random_params(cfg, seed=0)  # non-zero biases, non-unit norms
  assert np.abs(np.asarray(params["layers"][0]["bk"])).max() > 0.1
  hf.save_checkpoint(tmp_path, cfg, params)
  model = load_hf_pretrained(tmp_path)
  assert type(model).__name__ == "Qwen2ForCausalLM"
  tokens = random_tokens(2, 80, cfg.vocab_size, seed=10)
  np.testing.assert_allclose(jax_logits(cfg, params, tokens), hf_logits(model, tokens),
                             rtol=0, atol=LOGIT_TOL)
  cfg2, params2 = hf.load_checkpoint(tmp_path)
  assert cfg2 == cfg
  assert_trees_equal(params2, params)


def test_save_rejects_non_hf_configs(tmp_path):
  cfg = ModelConfig(vocab_size=32, d_model=16, n_layers=1, n_heads=2, n_kv_heads=1, ffn_dim=32,
                    activation="gelu_tanh", norm_plus_one=True, scale_embeddings=True)
  with pytest.raises(ValueError, match="Llama/Qwen2"):
    hf.save_checkpoint(tmp_path, cfg, {})


# ----------------------------------------------------------------------------- config parsing


_BASE = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 128,
         "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
         "intermediate_size": 96, "hidden_act": "silu", "rms_norm_eps": 1e-5,
         "max_position_embeddings": 512}


def test_config_legacy_fields():
  """transformers-4 style config.json: top-level rope_theta + rope_scaling, no kv heads."""
  cfg = hf.config_from_hf({**_BASE, "rope_theta": 500000.0,
                           "rope_scaling": {"rope_type": "llama3", "factor": 32.0,
                                            "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                            "original_max_position_embeddings": 8192}})
  assert cfg == ModelConfig(vocab_size=128, d_model=64, n_layers=2, n_heads=4, n_kv_heads=4,
                            ffn_dim=96, rope_theta=500000.0,
                            rope_llama3_scaling=(32.0, 1.0, 4.0, 8192), norm_eps=1e-5,
                            max_seq_len=512)
  qwen = hf.config_from_hf({**_BASE, "architectures": None, "model_type": "qwen2",
                            "num_key_value_heads": 2, "rope_theta": 1e6, "rope_scaling": None,
                            "head_dim": 32, "tie_word_embeddings": True})
  assert (qwen.qkv_bias, qwen.n_kv_heads, qwen.rope_theta, qwen.hd, qwen.tie_embeddings) == (
      True, 2, 1e6, 32, True)


def test_config_mistral_sliding_window():
  """Math-Shepherd's PRM config (a Mistral-7B): Llama's layout, and a 4096-token sliding
  window that caps max_seq_len (within it the window masks nothing); v0.2+ have none."""
  shepherd = {"architectures": ["MistralForCausalLM"], "model_type": "mistral",
              "vocab_size": 32000, "hidden_size": 4096, "intermediate_size": 14336,
              "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
              "hidden_act": "silu", "max_position_embeddings": 32768, "rms_norm_eps": 1e-5,
              "rope_theta": 10000.0, "sliding_window": 4096, "tie_word_embeddings": False}
  cfg = hf.config_from_hf(shepherd)
  assert cfg == ModelConfig(vocab_size=32000, d_model=4096, n_layers=32, n_heads=32,
                            n_kv_heads=8, ffn_dim=14336, rope_theta=10000.0, norm_eps=1e-5,
                            max_seq_len=4096)
  assert hf.config_from_hf({**shepherd, "sliding_window": None}).max_seq_len == 32768
  assert hf.config_from_hf({**shepherd, "architectures": None}).max_seq_len == 4096
  with pytest.raises(ValueError, match="sliding_window must be a positive int or null"):
    hf.config_from_hf({**shepherd, "sliding_window": 0})


@pytest.mark.parametrize("changes,match", [
    ({"architectures": ["GemmaForCausalLM"], "model_type": "gemma"},
     "GemmaForCausalLM.*LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM"),
    ({"hidden_act": "gelu"}, "hidden_act 'gelu'"),
    ({"rope_parameters": {"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e4}},
     "rope scaling type 'yarn'"),
    ({"rope_scaling": {"type": "linear", "factor": 2.0}}, "rope scaling type 'linear'"),
    ({"mlp_bias": True}, "mlp_bias"),
    ({"attention_bias": True}, "o_proj bias"),
    ({"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "use_sliding_window": True},
     "sliding-window"),
    ({"intermediate_size": None}, r"lacks required field\(s\) \['intermediate_size'\]"),
], ids=["arch", "hidden_act", "rope_yarn", "rope_linear_legacy", "mlp_bias", "attention_bias",
        "qwen2_sliding_window", "missing_field"])
def test_config_rejects_unsupported(changes, match):
  with pytest.raises(ValueError, match=match):
    hf.config_from_hf({**_BASE, **changes})


# ----------------------------------------------------------------------------- bad checkpoints


def test_unsupported_architecture(checkpoint, tmp_path):
  path = _copy(checkpoint, tmp_path)
  _edit_config(path, architectures=["GPT2LMHeadModel"], model_type="gpt2")
  with pytest.raises(ValueError, match="GPT2LMHeadModel.*supported: LlamaForCausalLM"):
    hf.load_checkpoint(path)


def test_unsupported_rope_scaling(checkpoint, tmp_path):
  path = _copy(checkpoint, tmp_path)
  _edit_config(path, rope_parameters={"rope_type": "dynamic", "factor": 2.0, "rope_theta": 1e4})
  with pytest.raises(ValueError, match="unsupported rope scaling type 'dynamic'"):
    hf.load_checkpoint(path)


def test_unsupported_hidden_act(checkpoint, tmp_path):
  path = _copy(checkpoint, tmp_path)
  _edit_config(path, hidden_act="relu")
  with pytest.raises(ValueError, match="unsupported hidden_act 'relu'"):
    hf.load_checkpoint(path)


def test_missing_tensor(checkpoint, tmp_path):
  path = _copy(checkpoint, tmp_path)
  _edit_tensors(path, lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
  with pytest.raises(ValueError, match=r"missing tensor.*model\.layers\.1\.mlp\.up_proj\.weight"):
    hf.load_checkpoint(path)


def test_missing_lm_head_when_untied(checkpoint, tmp_path):
  path = _copy(checkpoint, tmp_path)
  _edit_tensors(path, lambda t: t.pop("lm_head.weight"))
  with pytest.raises(ValueError, match="missing tensor.*lm_head.weight"):
    hf.load_checkpoint(path)


def test_mismatched_shape(checkpoint, tmp_path):
  path = _copy(checkpoint, tmp_path)

  def edit(t):
    t["model.layers.0.self_attn.k_proj.weight"] = np.zeros((16, 64), np.float32)

  _edit_tensors(path, edit)
  with pytest.raises(ValueError, match=r"'model\.layers\.0\.self_attn\.k_proj\.weight' has shape "
                                       r"\(16, 64\); expected \(32, 64\)"):
    hf.load_checkpoint(path)


def test_wrong_dtype(checkpoint, tmp_path):
  path = _copy(checkpoint, tmp_path)

  def edit(t):
    t["model.norm.weight"] = np.ones((64,), np.int32)

  _edit_tensors(path, edit)
  with pytest.raises(ValueError, match=r"'model\.norm\.weight' has dtype I32; expected a float"):
    hf.load_checkpoint(path)


def test_unexpected_tensor_but_harmless_buffers_ignored(checkpoint, tmp_path):
  path = _copy(checkpoint, tmp_path)
  _edit_tensors(path, lambda t: t.update(
      {"model.layers.0.self_attn.rotary_emb.inv_freq": np.ones((8,), np.float32)}))
  hf.load_checkpoint(path)  # fine
  _edit_tensors(path, lambda t: t.update(
      {"model.layers.0.mlp.gate_proj.bias": np.zeros((96,), np.float32)}))
  with pytest.raises(ValueError, match=r"unexpected tensor.*model\.layers\.0\.mlp\.gate_proj\.bias"):
    hf.load_checkpoint(path)


def test_missing_shard(checkpoint, tmp_path):
  path = _copy(checkpoint, tmp_path, "qwen2", False)
  with open(path / "model.safetensors.index.json") as fh:
    shard = sorted(set(json.load(fh)["weight_map"].values()))[1]
  os.remove(path / shard)
  with pytest.raises(FileNotFoundError, match=shard):
    hf.load_checkpoint(path)


def test_no_weights_or_config(tmp_path):
  with pytest.raises(FileNotFoundError, match="config.json"):
    hf.load_checkpoint(tmp_path)
  (tmp_path / "config.json").write_text(json.dumps(_BASE))
  with pytest.raises(FileNotFoundError, match="model.safetensors"):
    hf.load_checkpoint(tmp_path)


def test_bad_dtype_argument(checkpoint):
  with pytest.raises(ValueError, match="dtype"):
    hf.load_checkpoint(checkpoint("llama", False)[1], dtype="float16")
