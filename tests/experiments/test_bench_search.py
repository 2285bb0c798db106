"""experiments/bench_search.py on a tiny random model: the promised fields, baselines agree."""

import json
import math
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from experiments import bench_search
from ttc_jax.search import engine

pytestmark = pytest.mark.slow

TINY = ["--config=smoke", "--num_questions=2", "--repeats=1", "--warmup=1",
        "--max_step_tokens=8", "--max_solution_tokens=16", "--max_rounds=4"]
SEARCH_FIELDS = ("questions_per_sec", "host_loop_questions_per_sec",
                 "host_dispatch_questions_per_sec", "compile_s", "host_loop_compile_s",
                 "host_dispatch_compile_s", "speedup_vs_host_loop", "loadavg_1m_before")
SCORE_FIELDS = ("score_tokens_per_sec", "rows_score_tokens_per_sec", "rescore_tokens_per_sec",
                "incremental_tokens_per_sec",
                "questions_per_sec", "host_loop_questions_per_sec",
                "host_dispatch_questions_per_sec", "steps_per_solution")


def _positive(line, keys):
  for key in keys:
    assert math.isfinite(line[key]) and line[key] > 0, (key, line.get(key))


# The command-line runs start after collection, as background jobs (tests/conftest.py).
def _cli_lines_run(job):
  out = job.dir / "bench.jsonl"
  env = {k: v for k, v in job.env.items() if k not in ("JAX_NUM_CPU_DEVICES", "XLA_FLAGS")}
  job.run([sys.executable, "-m", "experiments.bench_search", "--methods=best_of_n,beam",
           "--ns=4", "--m=2", f"--json_out={out}"] + TINY, timeout=300, env=env)
  return out.read_text()


def _one_device_run(job):
  out = job.dir / "bench.jsonl"
  job.run([sys.executable, "-m", "experiments.bench_search", "--methods=beam",
           "--ns=4", "--m=2", "--noscoring", "--local_device_count=0",
           f"--json_out={out}"] + TINY, timeout=300)
  return out.read_text()


@pytest.mark.background("_cli_lines_run")
def test_cli_lines(background):
  """The acceptance interface: --methods, --ns, --json_out; one line per (method, n).
  On a CPU backend it splits the machine into two XLA:CPU devices by default."""
  lines = [json.loads(s) for s in background.result(_cli_lines_run).splitlines()]
  assert [(l["method"], l["n"]) for l in lines] == [("best_of_n", 4), ("beam", 4), ("score", 4)]
  for line in lines[:2]:
    _positive(line, SEARCH_FIELDS)
    assert line["questions"] == 2 and line["rows"] == 8
    assert line["devices"] == (2 if line["backend"] == "cpu" else 1)
    # The host-driven rounds run the very same jitted functions: the same candidates.
    assert line["host_dispatch_same_tokens"]
    assert line["host_dispatch_rounds"] == line["rounds"]
  assert lines[1]["m"] == 2 and 1 <= lines[1]["host_loop_rounds"] <= 4
  score = lines[2]
  _positive(score, SCORE_FIELDS)
  # The engine's scorer, re-scoring each prefix and host-driven incremental scoring
  # give the scores of one pass over the rows.
  for name in ("rescore", "incremental", "score"):
    assert score[f"{name}_max_abs_diff"] < 1e-5, name
  assert score["rescore_speedup"] == pytest.approx(
      score["score_tokens_per_sec"] / score["rescore_tokens_per_sec"])


@pytest.mark.background("_one_device_run")
def test_cli_on_one_device(background):
  """--local_device_count=0 keeps JAX's one device; the search returns what the
  engine pieces of baseline (b) return (the default's two devices: above)."""
  lines = [json.loads(s) for s in background.result(_one_device_run).splitlines()]
  assert [(l["method"], l["devices"]) for l in lines] == [("beam", 1)]
  for line in lines:
    _positive(line, SEARCH_FIELDS)
    assert line["host_dispatch_devices"] == 1 and line["host_dispatch_same_tokens"]


def test_bad_method_is_rejected():
  with pytest.raises(ValueError, match="unknown method"):
    bench_search.run_benchmark(methods=("lookahead",))


def test_select_parents_np_matches_engine():
  rng = np.random.default_rng(0)
  for group, width in ((8, 2), (6, 3)):
    score = rng.random(group * 3).astype(np.float32)
    score[::5] = score[1]  # ties
    candidate = rng.random(group * 3) < 0.7
    want = engine._select_parents(jnp.asarray(score), jnp.asarray(candidate), group, width)
    got = bench_search.select_parents_np(score, candidate, group, width)
    np.testing.assert_array_equal(got, np.asarray(want))


def test_compare_replicated_fields():
  """--compare_replicated: the replicated-prompt search gives the same candidates and holds
  more memory (the prompt's KV copied to every row)."""
  lines = bench_search.run_benchmark(
      config="smoke", methods=("best_of_n",), ns=(8,), num_questions=1, repeats=1, warmup=0,
      max_step_tokens=8, max_solution_tokens=16, max_rounds=4, scoring=False, baselines=(),
      prompt_len=64, compare_replicated=True, print_fn=lambda s: None)
  (line,) = lines
  _positive(line, ("questions_per_sec", "replicated_questions_per_sec", "peak_bytes",
                   "replicated_peak_bytes", "temp_bytes", "replicated_temp_bytes"))
  assert line["replicated_same_tokens"]
  assert line["mean_prompt_tokens"] >= 64
  assert line["replicated_temp_bytes"] > line["temp_bytes"]
