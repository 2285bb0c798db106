"""Model invariants: cached decode == teacher-forced forward, config validation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from tests.conftest import tiny_config
from ttc_jax.decode import Greedy, generate
from ttc_jax.model import ModelConfig, forward, init_cache, init_params


# Jitted: eager op-by-op execution compiles every op for every new shape.
_forward = jax.jit(forward, static_argnums=0)


@settings(max_examples=5, deadline=None)
@given(seed=st.integers(0, 2**16), batch=st.integers(1, 3), n_kv=st.sampled_from([1, 2, 4]),
       prompt_lens=st.lists(st.integers(1, 12), min_size=3, max_size=3),
       new=st.integers(1, 6), tie=st.booleans(), bias=st.booleans())
def test_cached_decode_matches_teacher_forced(seed, batch, n_kv, prompt_lens, new, tie, bias):
  """Greedy tokens from the cached decode loop == argmax of one teacher-forced
  forward over prompt + output at every position; log-probs within 1e-5."""
  cfg = tiny_config(n_kv_heads=n_kv, tie_embeddings=tie, qkv_bias=bias)
  params = init_params(cfg, jax.random.key(seed))
  rng = np.random.default_rng(seed)
  prompts = [list(rng.integers(0, cfg.vocab_size, size=n)) for n in prompt_lens[:batch]]
  out = generate(cfg, params, prompts, max_new_tokens=new, sampler=Greedy())
  for row, prompt in enumerate(prompts):
    generated = np.asarray(out.tokens[row])
    # Right-padded to one width (causal: the padding changes no logit before it),
    # so the jitted forward compiles once per config.
    seq = np.zeros((1, 12 + 6), np.int32)
    seq[0, :len(prompt) + new] = prompt + list(generated)
    full, _ = _forward(cfg, params, jnp.asarray(seq))
    # logits that predicted each generated token
    teacher = full[0, len(prompt) - 1:len(prompt) + new - 1]
    np.testing.assert_array_equal(np.asarray(jnp.argmax(teacher, axis=-1)), generated)
    ref = jnp.take_along_axis(jax.nn.log_softmax(teacher), generated[:, None], axis=-1)[:, 0]
    np.testing.assert_allclose(out.logprobs[row], ref, atol=1e-5)


@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 2**16), split=st.integers(1, 9))
def test_chunked_cache_forward_matches_full_forward(seed, split):
  cfg = tiny_config()
  params = init_params(cfg, jax.random.key(seed))
  tokens = jax.random.randint(jax.random.key(seed + 1), (2, 10), 0, cfg.vocab_size)
  full, _ = _forward(cfg, params, tokens)
  cache = init_cache(cfg, 2, 16)
  first, cache = _forward(cfg, params, tokens[:, :split], cache=cache)
  second, cache = _forward(cfg, params, tokens[:, split:], cache=cache)
  np.testing.assert_allclose(jnp.concatenate([first, second], 1), full, atol=1e-5)
  assert list(np.asarray(cache.lengths)) == [10, 10]


def test_per_row_offsets_in_one_batch():
  """Rows at different cache lengths decode correctly in one batched call."""
  cfg = tiny_config()
  params = init_params(cfg, jax.random.key(3))
  tokens = jax.random.randint(jax.random.key(4), (2, 9), 0, cfg.vocab_size)
  full, _ = _forward(cfg, params, tokens)
  cache = init_cache(cfg, 2, 16)
  _, cache = _forward(cfg, params, tokens[:, :8], cache=cache)
  cache = cache.replace(lengths=jnp.array([5, 8]))  # row 0 rewinds to 5 tokens
  nxt = jnp.stack([tokens[0, 5], tokens[1, 8]])[:, None]
  logits, cache = _forward(cfg, params, nxt, cache=cache)
  np.testing.assert_allclose(logits[0, 0], full[0, 5], atol=1e-5)
  np.testing.assert_allclose(logits[1, 0], full[1, 8], atol=1e-5)
  assert list(np.asarray(cache.lengths)) == [6, 9]


def test_gemma_options_and_bfloat16_run():
  cfg = tiny_config(activation="gelu_tanh", norm_plus_one=True, scale_embeddings=True)
  params = init_params(cfg, jax.random.key(0))
  tokens = jnp.ones((1, 5), jnp.int32)
  logits, _ = forward(cfg, params, tokens)
  assert logits.dtype == jnp.float32 and bool(jnp.isfinite(logits).all())
  cfg16 = cfg.replace(dtype="bfloat16")
  params16 = jax.tree_util.tree_map(lambda x: x.astype(jnp.bfloat16), params)
  logits16, _ = forward(cfg16, params16, tokens)
  assert logits16.dtype == jnp.float32  # logits and softmax in f32 whatever the dtype
  np.testing.assert_allclose(logits16, logits, atol=0.1)


@pytest.mark.parametrize("bad", [
    dict(n_heads=4, n_kv_heads=3), dict(activation="relu"), dict(dtype="float16"),
    dict(d_model=30, n_heads=4), dict(vocab_size=0)])
def test_bad_config_is_a_clear_error(bad):
  with pytest.raises(ValueError):
    tiny_config(**bad)


def test_param_count_matches_initialised_params():
  for tie in (False, True):
    cfg = tiny_config(tie_embeddings=tie, qkv_bias=True)
    params = init_params(cfg, jax.random.key(0))
    assert cfg.num_params() == sum(x.size for x in jax.tree_util.tree_leaves(params))


def test_config_round_trips_through_dict():
  cfg = tiny_config(rope_llama3_scaling=(8.0, 1.0, 4.0, 64))
  assert ModelConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("t,heads,kv_heads", [(1, 4, 4), (3, 4, 2), (8, 2, 2)])
def test_sum_form_attention_and_its_gradients_equal_the_dot_form(monkeypatch, t, heads, kv_heads):
  """On CPU, attention with 2 to 128 queries per row (and >= 64 row-head pairs)
  runs its products as a fused multiply + sum with dot-form gradients
  (`_reduce_form`); values and gradients must equal the plain dot form."""
  from ttc_jax.model import transformer
  rng = np.random.default_rng(t)
  b, s, e = transformer.SUM_FORM_MIN_BATCH_HEADS // kv_heads, 7, 8
  q = jnp.asarray(rng.normal(size=(b, t, heads, e)), jnp.float32)
  k, v = (jnp.asarray(rng.normal(size=(b, kv_heads, s, e)), jnp.float32) for _ in range(2))
  q_pos = jnp.asarray(rng.integers(0, s, size=(b, t)), jnp.int32)
  k_pos = jnp.tile(jnp.arange(s, dtype=jnp.int32)[None], (b, 1))
  weights = jnp.asarray(rng.normal(size=(b, t, heads, e)), jnp.float32)

  def value_and_grads():  # eager (no jit): `_reduce_form` is read at each call
    loss = lambda *x: jnp.sum(transformer.attention(*x, q_pos, k_pos) * weights)
    return jax.value_and_grad(loss, argnums=(0, 1, 2))(q, k, v)

  assert transformer._reduce_form(t, b * kv_heads) == (t > 1 and jax.default_backend() == "cpu")
  got = value_and_grads()
  monkeypatch.setattr(transformer, "_reduce_form", lambda queries, batch_heads: False)
  want = value_and_grads()
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)
