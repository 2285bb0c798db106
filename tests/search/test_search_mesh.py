"""Search split over a 2-device data axis == the same search on one device.

JAX fixes its device count when its backend starts, so the 2-device run is a
subprocess (this file executed as a script prints a JSON report).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _report() -> dict:
  import jax
  import numpy as np

  from tests.conftest import tiny_config
  from ttc_jax import sharding
  from ttc_jax.model import init_params
  from ttc_jax.search import SearchConfig, search
  from ttc_jax.verifier import VerifierConfig, init_verifier
  cfg = tiny_config()
  policy = init_params(cfg, jax.random.key(0))
  vcfg = VerifierConfig(model=cfg, head="token", step_token_id=22)
  vparams = init_verifier(vcfg, jax.random.key(1), policy)
  mesh = sharding.make_mesh()
  prompts = [[1, 5, 6], [1, 9, 9, 9, 9], [1, 4]]  # odd: the mesh path pads to 4
  report = {"devices": jax.device_count()}
  for method, k in (("beam", 0), ("lookahead", 1), ("best_of_n", 0)):
    scfg = SearchConfig(method, 4, m=2, k=k, max_solution_tokens=24, max_step_tokens=8,
                        max_steps=24)
    one = search(cfg, policy, vcfg, vparams, prompts, scfg, eos_id=15, prompt_width=8)
    two = search(cfg, policy, vcfg, vparams, prompts, scfg, eos_id=15, prompt_width=8, mesh=mesh)
    report[method] = {
        "tokens_equal": bool(np.array_equal(one.tokens, two.tokens)),
        "score_diff": float(np.abs(one.step_scores - two.step_scores).max()),
        "budget_equal": all(bool(np.array_equal(getattr(one.budget, f), getattr(two.budget, f)))
                            for f in ("policy_tokens", "verifier_tokens", "rounds")),
        "shape": list(two.tokens.shape)}
  return report


def test_two_device_search_matches_one_device():
  env = dict(os.environ, JAX_NUM_CPU_DEVICES="2", PYTHONPATH=REPO)
  out = subprocess.run([sys.executable, os.path.abspath(__file__)], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=300, check=True)
  report = json.loads(out.stdout.strip().splitlines()[-1])
  assert report["devices"] == 2
  for method in ("beam", "lookahead", "best_of_n"):
    r = report[method]
    assert r["shape"][:2] == [3, 4]
    assert r["tokens_equal"] and r["budget_equal"], (method, r)
    assert r["score_diff"] < 1e-5, (method, r)


if __name__ == "__main__":
  print(json.dumps(_report()))
