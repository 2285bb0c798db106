"""Smoke test of experiments/bench_decode.py: tiny model, tiny settings, HF comparison on."""

import json
import math
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from experiments import bench_decode  # noqa: E402

REQUIRED = ("config", "n_params", "batch", "prompt_len", "new_tokens", "tokens_per_sec",
            "compile_s", "step_ms", "roofline_step_ms", "read_gbps", "peak_gflops", "mfu",
            "hf_tokens_per_sec", "speedup_vs_hf", "device", "cpu_model", "cores", "jax_version")
POSITIVE = ("n_params", "tokens_per_sec", "roofline_step_ms", "roofline_step_ms_executed",
            "read_gbps", "peak_gflops", "mfu", "mfu_executed", "model_gflops_per_s",
            "hf_tokens_per_sec", "speedup_vs_hf", "time_s", "hf_time_s", "cores")
NON_NEGATIVE = ("compile_s", "prefill_s", "step_ms")


def test_run_benchmark_smoke(tmp_path):
  printed = []
  lines = bench_decode.run_benchmark(
      "smoke", [3], prompt_len=5, new_tokens=4, repeats=2, compare_hf=True, read_mb=8,
      print_fn=printed.append)
  assert len(lines) == 1 and len(printed) == 1
  line = lines[0]
  assert json.loads(printed[0]) == line
  for key in REQUIRED:
    assert key in line, key
  assert (line["config"], line["batch"], line["prompt_len"], line["new_tokens"]) == (
      "smoke", 3, 5, 4)
  assert line["n_params"] == 22688
  for key in POSITIVE:
    assert math.isfinite(line[key]) and line[key] > 0, (key, line[key])
  for key in NON_NEGATIVE:
    assert math.isfinite(line[key]) and line[key] >= 0, (key, line[key])
  assert line["mfu"] < line["mfu_executed"]  # the padded prompt + full-capacity attention
  assert line["roofline_step_ms"] <= line["roofline_step_ms_executed"]
  assert line["hf_max_abs_logit_diff"] < 1e-3  # the HF model holds the same weights
  assert line["speedup_vs_hf"] == pytest.approx(line["tokens_per_sec"] / line["hf_tokens_per_sec"])

  out = tmp_path / "sub" / "bench.jsonl"
  bench_decode.write_jsonl_atomic(str(out), lines)
  assert [json.loads(s) for s in out.read_text().splitlines()] == lines
  assert os.listdir(out.parent) == ["bench.jsonl"]  # no temp file left behind


def test_flops_accounting():
  from ttc_jax.bench_configs import BENCH_CONFIGS, get_config
  cfg = get_config("bench_3m")
  assert cfg.num_params() == 3_426_560
  assert BENCH_CONFIGS["bench_25m"].num_params() == 25_829_888
  # One row, 2 prompt tokens + 1 new: contexts 1, 2, 3.
  want = sum(cfg.flops_per_token(c) for c in (1, 2, 3))
  assert bench_decode.useful_flops(cfg, 1, 2, 1) == pytest.approx(want)
  assert bench_decode.executed_flops(cfg, 2, 8, 1, 64) == pytest.approx(
      2 * 9 * cfg.flops_per_token(64))
  with pytest.raises(ValueError, match="unknown benchmark config"):
    get_config("nope")


def test_hf_device_and_step_bytes():
  assert bench_decode.resolve_hf_device("cpu") == "cpu"
  if bench_decode.jax.default_backend() == "cpu":
    assert bench_decode.resolve_hf_device("auto") == "cpu"  # never CUDA torch for a CPU JAX run
  with pytest.raises(ValueError, match="hf_device"):
    bench_decode.resolve_hf_device("tpu")
  cfg = bench_decode.get_config("bench_3m")
  params_only = bench_decode.step_bytes(cfg, 8, 0)
  assert params_only == cfg.num_params() * 4
  # One key of context adds K and V for every layer, kv head and row.
  assert bench_decode.step_bytes(cfg, 8, 1) - params_only == 2 * cfg.n_layers * 8 * cfg.n_kv_heads * cfg.hd * 4


def test_mesh_data_flag_values():
  assert bench_decode.set_mesh_devices(1) == 1  # JAX's own device: nothing to set
  for bad in (0, -2):
    with pytest.raises(ValueError, match="mesh_data"):
      bench_decode.set_mesh_devices(bad)
