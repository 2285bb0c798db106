"""A cache whose prompt KV is shared by N rows (stored once) == one copy per row."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.conftest import tiny_config
from ttc_jax.model import forward, init_cache, init_params
from ttc_jax.model.cache import fan_out

CFG = tiny_config()
N = 3


@pytest.fixture(scope="module")
def prompt_cache():
  params = init_params(CFG, jax.random.key(0))
  prompts = jnp.array([[1, 5, 6, 7, 0, 0], [1, 9, 8, 7, 6, 5]])
  lengths = jnp.array([4, 6])
  cache = init_cache(CFG, 2, prompts.shape[1])
  _, cache = forward(CFG, params, prompts, cache=cache.replace(lengths=jnp.zeros_like(lengths)))
  return params, cache.replace(lengths=lengths)


def _feed(params, cache, tokens):
  """Feeds tokens [R, T] in chunks of 1, 3 and the rest -> logits [R, T, V], cache."""
  out = []
  for a, b in ((0, 1), (1, 4), (4, tokens.shape[1])):
    logits, cache = forward(CFG, params, tokens[:, a:b], cache=cache)
    out.append(logits)
  return jnp.concatenate(out, axis=1), cache


def test_shared_prefix_logits_equal_replicated(prompt_cache):
  params, cache = prompt_cache
  tokens = jax.random.randint(jax.random.key(1), (2 * N, 9), 0, CFG.vocab_size)
  shared = fan_out(cache, N, 16, shared=True)
  copied = fan_out(cache, N, 16, shared=False)
  assert shared.prefix is not None and shared.capacity == 16 and copied.capacity == 6 + 16
  assert shared.k[0].shape[0] == 2 * N and shared.prefix.k[0].shape[0] == 2  # stored once
  got, shared = _feed(params, shared, tokens)
  want, copied = _feed(params, copied, tokens)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(shared.lengths, copied.lengths)
  np.testing.assert_array_equal(shared.lengths, np.repeat([4, 6], N) + 9)


def test_reordering_rows_within_a_prompt(prompt_cache):
  """Beam reordering moves suffixes only; the result matches reordering full copies."""
  params, cache = prompt_cache
  tokens = jax.random.randint(jax.random.key(2), (2 * N, 5), 0, CFG.vocab_size)
  shared, copied = fan_out(cache, N, 16, shared=True), fan_out(cache, N, 16, shared=False)
  _, shared = _feed(params, shared, tokens)
  _, copied = _feed(params, copied, tokens)
  parents = jnp.array([2, 2, 0, 4, 3, 3])  # each row stays within its prompt's group of 3
  nxt = jax.random.randint(jax.random.key(3), (2 * N, 6), 0, CFG.vocab_size)
  got, _ = _feed(params, shared.gather_rows(parents), nxt)
  want, _ = _feed(params, copied.gather_rows(parents), nxt)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_fan_out_rejects_a_shared_cache(prompt_cache):
  _, cache = prompt_cache
  with pytest.raises(ValueError, match="plain prompt cache"):
    fan_out(fan_out(cache, N, 8, shared=True), N, 8, shared=True)
