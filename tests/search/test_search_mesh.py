"""Search and revision chains split over a 2-device data axis == the same on one device.

JAX fixes its device count when its backend starts, so the 2-device run is a
subprocess (this file executed as a script prints a JSON report), started
after collection as a background job; the one-device searches run in this
process.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
METHODS = (("beam", 0), ("lookahead", 1), ("best_of_n", 0), ("revisions", 0))
BUDGET_FIELDS = ("policy_tokens", "verifier_tokens", "rounds")


def _searches(two_devices: bool) -> dict:
  """method -> the search's tokens, step scores and budget, on one device or
  split over a 2-device mesh."""
  import jax

  from tests.conftest import tiny_config
  from ttc_jax import sharding
  from ttc_jax.model import init_params
  from ttc_jax.revision.api import revise
  from ttc_jax.revision.chains import RevisionConfig
  from ttc_jax.search import SearchConfig, search
  from ttc_jax.verifier import VerifierConfig, init_verifier
  cfg = tiny_config()
  policy = init_params(cfg, jax.random.key(0))
  vcfg = VerifierConfig(model=cfg, head="token", step_token_id=22)
  vparams = init_verifier(vcfg, jax.random.key(1), policy)
  mesh = sharding.make_mesh() if two_devices else None
  prompts = [[1, 5, 6], [1, 9, 9, 9, 9], [1, 4]]  # odd: the mesh path pads to 4
  report = {"devices": jax.device_count()}
  for method, k in METHODS:
    if method == "revisions":  # 2 chains x 2 attempts, the previous attempt in context
      rcfg = RevisionConfig(n=4, parallel=2, max_attempt_tokens=12, window=1)
      out = revise(cfg, policy, vcfg, vparams, prompts, rcfg, eos_id=15, prompt_width=8,
                   max_steps=24, mesh=mesh)
    else:
      scfg = SearchConfig(method, 4, m=2, k=k, max_solution_tokens=24, max_step_tokens=8,
                          max_steps=24)
      out = search(cfg, policy, vcfg, vparams, prompts, scfg, eos_id=15, prompt_width=8,
                   mesh=mesh)
    report[method] = {
        "tokens": np.asarray(out.tokens).tolist(),
        "step_scores": np.asarray(out.step_scores, np.float64).tolist(),
        "budget": {f: np.asarray(getattr(out.budget, f)).tolist() for f in BUDGET_FIELDS}}
  return report


def _two_device_child(job):
  """The 2-device run, a background job (tests/conftest.py): its JSON report."""
  env = dict(job.env, JAX_NUM_CPU_DEVICES="2", PYTHONPATH=REPO)
  done = job.run([sys.executable, os.path.abspath(__file__)], cwd=REPO, env=env, timeout=300)
  return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.background("_two_device_child")
def test_two_device_search_matches_one_device(background):
  one = _searches(two_devices=False)
  report = background.result(_two_device_child)
  assert report["devices"] == 2
  for method, _ in METHODS:
    two, want = report[method], one[method]
    tokens = np.asarray(two["tokens"])
    assert list(tokens.shape[:2]) == [3, 4], method
    np.testing.assert_array_equal(tokens, np.asarray(want["tokens"]), err_msg=method)
    for f in BUDGET_FIELDS:
      np.testing.assert_array_equal(two["budget"][f], want["budget"][f], err_msg=(method, f))
    score_diff = np.abs(np.asarray(two["step_scores"]) - np.asarray(want["step_scores"])).max()
    assert score_diff < 1e-5, (method, score_diff)


if __name__ == "__main__":
  print(json.dumps(_searches(two_devices=True)))
