"""The train -> evaluate command-line path on the smoke preset (the acceptance interface)."""

import json
import subprocess
import sys

import pytest

from experiments.evaluate_policy import evaluate

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
  out = tmp_path_factory.mktemp("smoke")
  subprocess.run([sys.executable, "-m", "experiments.train_policy", "--preset=smoke",
                  f"--out_dir={out}", "--progress=false"], check=True, timeout=300)
  return out


def test_cli_writes_the_promised_fields(smoke_run, tmp_path):
  out = tmp_path / "eval.json"
  subprocess.run([sys.executable, "-m", "experiments.evaluate_policy", f"--checkpoint={smoke_run}",
                  "--num_questions=6", "--samples=4", "--max_new_tokens=24", f"--json_out={out}"],
                 check=True, timeout=300)
  result = json.loads(out.read_text())
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


def test_evaluation_is_deterministic(smoke_run):
  args = dict(num_questions=3, samples=2, temperature=1.0, max_new_tokens=16, batch_size=4, seed=1)
  a, b = evaluate(str(smoke_run), **args), evaluate(str(smoke_run), **args)
  for key in ("greedy_accuracy", "pass_at_1", "coverage", "by_difficulty"):
    assert a[key] == b[key]
