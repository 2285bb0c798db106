"""A cache whose prompt KV is shared by N rows (stored once) == one copy per row."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.conftest import tiny_config
from ttc_jax.model import forward, init_cache, init_params
from ttc_jax.model.cache import commit_to_history, fan_out, fan_out_beams

CFG = tiny_config()
N = 3
# Jitted: eager op-by-op execution compiles every op for every new shape.
_forward = jax.jit(forward, static_argnums=0)


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
    logits, cache = _forward(CFG, params, tokens[:, a:b], cache=cache)
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


@pytest.mark.parametrize("shared", [True, False])
def test_beam_histories_equal_copied_caches_over_two_commits(prompt_cache, shared):
  """Blocks of M rows sharing a history (the prompt stored once or copied into
  each history) give the logits of full per-row caches reordered the same way.
  Rows keep different numbers of their fed tokens (a rewind), so each commit
  appends a different amount per parent."""
  params, cache = prompt_cache
  n, m = 4, 2
  beams = fan_out_beams(cache, n, m, 12, 32 if shared else 40, shared)
  copied = fan_out(cache, n, 12 + 32, shared=False)
  assert beams.history.k[0].shape[0] == 2 * n // m and beams.k[0].shape[2] == 12
  assert (beams.prefix is not None) == shared
  keep_back = jnp.array([0, 2, 1, 0, 3, 0, 1, 2])  # tokens each row "rewinds"
  for round_index, parents in enumerate(([1, 1, 0, 0, 6, 6, 5, 5], [2, 2, 3, 3, 7, 7, 4, 4])):
    tokens = jax.random.randint(jax.random.key(10 + round_index), (2 * n, 6), 0, CFG.vocab_size)
    got, beams = _feed(params, beams, tokens)
    want, copied = _feed(params, copied, tokens)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    beams = beams.replace(lengths=beams.lengths - keep_back)
    copied = copied.replace(lengths=copied.lengths - keep_back)
    parents = jnp.array(parents)  # a block's two rows share a parent from their prompt
    beams = commit_to_history(beams, parents[::m], jnp.ones(2 * n // m, bool))
    copied = copied.gather_rows(parents)
    np.testing.assert_array_equal(beams.lengths, copied.lengths)
    np.testing.assert_array_equal(beams.lengths, beams.offsets)  # suffixes emptied
  tokens = jax.random.randint(jax.random.key(20), (2 * n, 5), 0, CFG.vocab_size)
  got, beams = _feed(params, beams, tokens)
  want, _ = _feed(params, copied, tokens)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  # a few rows taken alone (the decode tail) see the same keys
  index = jnp.array([6, 1, 4])
  alone, _ = _feed(params, beams.take_rows(index), tokens[index])
  together, _ = _feed(params, beams, tokens)
  np.testing.assert_allclose(alone, together[index], rtol=1e-5, atol=1e-5)


def test_commit_empties_a_dropped_block_and_rows_cannot_gather(prompt_cache):
  _, cache = prompt_cache
  beams = fan_out_beams(cache, 4, 2, 8, 16, True)
  beams = beams.replace(lengths=beams.lengths + 3)  # 3 suffix tokens per row
  kept = commit_to_history(beams, jnp.array([0, 2, 4, 6]), jnp.array([True, False, True, True]))
  np.testing.assert_array_equal(kept.history.lengths, [3, 0, 3, 3])
  np.testing.assert_array_equal(kept.offsets, np.array([4, 4, 4, 4, 6, 6, 6, 6]) + [3, 3, 0, 0,
                                                                                     3, 3, 3, 3])
  with pytest.raises(ValueError, match="commit_to_history"):
    kept.gather_rows(jnp.arange(8))
  with pytest.raises(ValueError, match="does not divide"):
    fan_out_beams(cache, 4, 3, 8, 16, True)
