"""The PRM scorer's step packing through the step-score kernel (interpret mode).

On CPU `compact` runs the XLA scatter; TTC_JAX_KERNELS=pallas_interpret routes
it through the Pallas kernel body, as "auto" does on a GPU. Both must agree.
"""

import jax
import numpy as np
import pytest

from kernels.step_score_aggregate import pallas as ssa_pallas
from tests.conftest import route_through_kernel, tiny_config
from ttc_jax.model import init_params
from ttc_jax.search import SearchConfig, search
from ttc_jax.verifier import VerifierConfig, init_verifier, step_scores

CFG = tiny_config()
STEP, EOS = 7, 15


@pytest.fixture(scope="module")
def verifier():
  vcfg = VerifierConfig(model=CFG, head="value", step_token_id=STEP)
  policy = init_params(CFG, jax.random.key(0))
  return policy, vcfg, init_verifier(vcfg, jax.random.key(1), policy)


def _rows(seed=0):
  rng = np.random.default_rng(seed)
  tokens = rng.integers(3, CFG.vocab_size, size=(5, 40)).astype(np.int32)
  tokens[tokens % 3 == 0] = STEP
  return tokens, np.array([2, 4, 3, 6, 1]), np.array([40, 17, 3, 30, 25])


def _with_kernel(monkeypatch, fn):
  calls = route_through_kernel(monkeypatch, ssa_pallas, "step_score_aggregate")
  try:
    return fn(), calls
  finally:
    monkeypatch.delenv("TTC_JAX_KERNELS")
    jax.clear_caches()


@pytest.mark.parametrize("max_steps", [3, 12])  # 3: steps past the width are dropped
def test_step_scores_through_the_kernel_equal_the_xla_path(verifier, monkeypatch, max_steps):
  _, vcfg, vparams = verifier
  tokens, prompt_lengths, lengths = _rows()
  run = lambda: jax.device_get(step_scores(vcfg, vparams, tokens, prompt_lengths, lengths,
                                           max_steps))
  xla_scores, xla_mask = run()
  (kernel_scores, kernel_mask), calls = _with_kernel(monkeypatch, run)
  assert calls == [True]
  np.testing.assert_array_equal(kernel_mask, xla_mask)
  np.testing.assert_array_equal(kernel_scores, xla_scores)
  assert xla_mask.sum() > 5 and (~xla_mask).any()


def test_best_of_n_search_through_the_kernel_equals_the_xla_path(verifier, monkeypatch):
  policy, vcfg, vparams = verifier
  scfg = SearchConfig("best_of_n", 4, max_solution_tokens=16, max_steps=8)
  run = lambda: search(CFG, policy, vcfg, vparams, [[1, 5, 6], [1, 4]], scfg, eos_id=EOS)
  xla = run()
  kernel, calls = _with_kernel(monkeypatch, run)
  assert calls  # the search traced the kernel
  np.testing.assert_array_equal(kernel.tokens, xla.tokens)
  np.testing.assert_array_equal(kernel.step_mask, xla.step_mask)
  np.testing.assert_allclose(kernel.step_scores, xla.step_scores, rtol=1e-5, atol=1e-6)
