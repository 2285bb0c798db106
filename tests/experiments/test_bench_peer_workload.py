"""experiments/bench_peer_workload.py on the smoke config: forced lengths, counted work."""

import json
import sys

import pytest

from experiments import bench_peer_workload


def _cli_run(job):
  out = job.dir / "peer.jsonl"
  job.run([sys.executable, "-m", "experiments.bench_peer_workload", "--config=smoke",
           "--n=8", "--m=2", "--prompt_len=8", "--step_tokens=4", "--rounds=3",
           "--prompts_per_call=2", "--calls=1", "--dtype=float32", f"--json_out={out}"],
          timeout=300)
  return out.read_text()


@pytest.mark.background("_cli_run")  # the command-line run starts after collection
def test_cli_line_counts_the_forced_work(background):
  (line,) = [json.loads(s) for s in background.result(_cli_run).splitlines()]
  # Every round every one of the 2 x 8 rows samples a forced 4-token step; the
  # verifier scores each of them.
  assert line["solution_tokens"] == 12
  assert line["policy_tokens_per_call"] == 2 * 8 * 12
  assert line["verifier_tokens_per_call"] == 2 * 8 * 12
  assert line["seconds_per_call"] > 0 and line["setup_s"] >= 0
  assert line["hours_for_total_prompts"] == pytest.approx(
      500 / line["prompts_per_sec"] / 3600)


def test_bad_sizes_are_rejected():
  with pytest.raises(ValueError, match=">= 1"):
    bench_peer_workload.run_benchmark("smoke", rounds=0)
