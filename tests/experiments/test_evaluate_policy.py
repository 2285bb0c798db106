"""The train -> evaluate command-line path on the smoke preset (the acceptance interface)."""

import json
import sys

import pytest

from experiments.evaluate_policy import evaluate

pytestmark = pytest.mark.slow


def _train_and_evaluate(job):
  """Both command lines, as a background job (tests/conftest.py): (run dir, eval.json text)."""
  run = job.dir / "smoke"
  job.run([sys.executable, "-m", "experiments.train_policy", "--preset=smoke",
           f"--out_dir={run}", "--progress=false"], timeout=300)
  out = job.dir / "eval.json"
  job.run([sys.executable, "-m", "experiments.evaluate_policy", f"--checkpoint={run}",
           "--num_questions=6", "--samples=4", "--max_new_tokens=24", f"--json_out={out}"],
          timeout=300)
  return run, out.read_text()


@pytest.fixture(scope="module")
def smoke_run(background):
  return background.result(_train_and_evaluate)[0]


@pytest.mark.background("_train_and_evaluate")
def test_cli_writes_the_promised_fields(background):
  result = json.loads(background.result(_train_and_evaluate)[1])
  for key in ("greedy_accuracy", "pass_at_1", "coverage", "by_difficulty",
              "pass_rate_histogram"):
    assert key in result
  assert result["num_questions"] == 6 and result["samples"] == 4
  assert set(result["coverage"]) == {"1", "2", "4"}
  assert sum(result["pass_rate_histogram"].values()) == 6
  # the strided subset spans several difficulty levels
  assert len(result["by_difficulty"]["n_ops"]) >= 3
  for groups in result["by_difficulty"].values():
    assert sum(g["n"] for g in groups.values()) == 6


@pytest.mark.background("_train_and_evaluate")
def test_evaluation_is_deterministic(smoke_run):
  args = dict(num_questions=3, samples=2, temperature=1.0, max_new_tokens=16, batch_size=4, seed=1)
  a, b = evaluate(str(smoke_run), **args), evaluate(str(smoke_run), **args)
  for key in ("greedy_accuracy", "pass_at_1", "coverage", "by_difficulty"):
    assert a[key] == b[key]
