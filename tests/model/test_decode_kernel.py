"""The model's decode step through the ragged decode-attention kernel (interpret mode).

On CPU the XLA path runs by default; TTC_JAX_KERNELS=pallas_interpret routes
every one-token decode step through the Pallas kernel body instead. The two must
agree: logits tightly, greedy tokens and a whole search exactly.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kernels.ragged_decode_attention import pallas as rda_pallas
from tests.conftest import route_through_kernel, tiny_config
from ttc_jax.decode import Greedy, generate
from ttc_jax.model import forward, init_cache, init_params
from ttc_jax.search import SearchConfig, search
from ttc_jax.verifier import VerifierConfig, init_verifier

CFG = tiny_config()
PROMPTS = [[1, 2, 3], [4, 5, 6, 7, 8, 9, 10], [11]]


@pytest.fixture(scope="module")
def params():
  return init_params(CFG, jax.random.key(0))


@pytest.fixture
def kernel_calls(monkeypatch):
  """Routes decode attention through the interpreted kernel; counts kernel traces."""
  yield route_through_kernel(monkeypatch, rda_pallas, "multi_query_attention")
  jax.clear_caches()


def _decode_logits(params, tokens, steps):
  """Prefill tokens[:, :-steps] then feed the rest one token at a time -> logits [B, steps, V]."""
  cache = init_cache(CFG, tokens.shape[0], 32)
  _, cache = forward(CFG, params, tokens[:, :-steps], cache=cache)
  out = []
  for i in range(steps, 0, -1):
    logits, cache = forward(CFG, params, tokens[:, -i:tokens.shape[1] - i + 1], cache=cache)
    out.append(logits[:, 0])
  return jnp.stack(out, axis=1)


def test_decode_step_logits_match_the_xla_path(params, monkeypatch):
  tokens = jax.random.randint(jax.random.key(3), (3, 12), 0, CFG.vocab_size)
  monkeypatch.setenv("TTC_JAX_KERNELS", "xla")
  want = _decode_logits(params, tokens, 5)
  monkeypatch.setenv("TTC_JAX_KERNELS", "pallas_interpret")
  got = _decode_logits(params, tokens, 5)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_greedy_generate_is_unchanged_by_the_kernel(params, kernel_calls):
  with_kernel = generate(CFG, params, PROMPTS, max_new_tokens=12, sampler=Greedy())
  assert kernel_calls and all(kernel_calls)  # the interpreted kernel really ran
  jax.clear_caches()
  with pytest.MonkeyPatch.context() as mp:
    mp.setenv("TTC_JAX_KERNELS", "xla")
    without = generate(CFG, params, PROMPTS, max_new_tokens=12, sampler=Greedy())
  np.testing.assert_array_equal(with_kernel.tokens, without.tokens)


def test_beam_search_is_unchanged_by_the_kernel(params, kernel_calls):
  vcfg = VerifierConfig(model=CFG, head="value", step_token_id=22)
  vparams = init_verifier(vcfg, jax.random.key(1), params)
  scfg = SearchConfig("beam", 4, m=2, max_rounds=3, max_step_tokens=4, max_solution_tokens=12,
                      max_steps=12)
  run = lambda: search(CFG, params, vcfg, vparams, PROMPTS, scfg, eos_id=15, seed=0,
                       prompt_width=8)
  with_kernel = run()
  assert kernel_calls
  jax.clear_caches()
  with pytest.MonkeyPatch.context() as mp:
    mp.setenv("TTC_JAX_KERNELS", "xla")
    without = run()
  np.testing.assert_array_equal(with_kernel.tokens, without.tokens)
  np.testing.assert_allclose(with_kernel.step_scores, without.step_scores, rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(jax.default_backend() != "gpu", reason="needs a GPU (compiles the kernel)")
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_gpu_decode_step_logits_match_the_xla_path(monkeypatch, dtype):
  cfg = tiny_config(d_model=256, n_heads=8, n_kv_heads=2, ffn_dim=512, dtype=dtype)
  params = init_params(cfg, jax.random.key(0))
  tokens = jax.random.randint(jax.random.key(3), (8, 40), 0, cfg.vocab_size)

  def logits(impl):
    monkeypatch.setenv("TTC_JAX_KERNELS", impl)
    cache = init_cache(cfg, 8, 64)
    _, cache = forward(cfg, params, tokens[:, :30], cache=cache)
    out = []
    for i in range(30, 40):
      step, cache = forward(cfg, params, tokens[:, i:i + 1], cache=cache)
      out.append(step[:, 0])
    return np.asarray(jnp.stack(out, axis=1), np.float32)

  want, got = logits("xla"), logits("pallas")
  rel = np.linalg.norm(got - want) / np.linalg.norm(want)
  assert np.isfinite(got).all() and rel < (2e-3 if dtype == "float32" else 2e-2), rel
