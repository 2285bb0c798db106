r"""Decode throughput benchmark: ttc_jax `generate` vs. transformers `generate`.

    python -m experiments.bench_decode --config=bench_3m --batch_sizes=1,16,64,256 \
        --compare_hf --json_out=runs/bench_3m.jsonl

For each batch size: random prompts of --prompt_len tokens, --new_tokens forced
(no stop tokens, so the work is fixed). The first `generate` call compiles
(`compile_s` = first call - steady-state median); then --repeats timed calls
(`jax.block_until_ready` + `time.perf_counter`, median). Prefill is inside the
timed call. A second jitted shape, `max_new_tokens=1` with the same cache
capacity, gives `prefill_s` and `step_ms` = (t_full - t_one) / (new_tokens - 1).

FLOPs (see `ModelConfig.flops_per_token`): every processed token (prompt +
generated) counts 2 * params + attention.
* `mfu`: useful FLOPs -- token at position p attends to p + 1 keys.
* `mfu_executed`: what the implementation executes -- every token attends over
  the whole cache capacity (and the prompt's power-of-two padding is computed).
Both against `peak_gflops`, an f32 matmul peak measured in the same run.
`read_gbps` (a jnp.sum over a --read_mb f32 array, best of several) and
`roofline_step_ms` = dense FLOPs per step at peak + (KV-cache bytes of the
actual mean context + param bytes) per step at read_gbps
(`roofline_step_ms_executed`: the KV bytes of the full capacity).

--compare_hf builds `transformers.LlamaForCausalLM` with the same weights (via
`ttc_jax.hf.save_checkpoint`, or the --hf_dir checkpoint itself), on --hf_device
(auto: CUDA when JAX runs on a GPU, else CPU with os.cpu_count() threads),
checks the logits in f32 (`hf_max_abs_logit_diff`: both models really hold the
same weights), casts it to --dtype and times `model.generate` the same way
(prefill included, one short warm-up, median of --repeats) under
`torch.inference_mode`, synchronising CUDA before the clock stops.

Memory traffic: `step_gbytes` = params + the KV cache at the mean context, the
bytes one decode step must read; `achieved_gbps` = step_gbytes / step time,
beside `read_gbps` (measured) and `spec_gbps` (the card's datasheet figure, 0
when unknown).

--mesh_data=N shards the batch over N devices (on CPU: N XLA:CPU host devices).
XLA:CPU runs each attention batched dot (q [1, E] x k [S, E] per row and head)
on a single thread, so on a 2-core machine --mesh_data=2 runs the two halves of
the batch on both cores at once. The default, -1, does that on a CPU (as
train_policy and bench_search do) and keeps one device on a GPU/TPU;
--mesh_data=1 keeps JAX's one CPU device.

One JSON line per batch size is printed as it is produced; --json_out is
written atomically (temp file + os.replace) at the end.
"""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ttc_jax import atomic
from ttc_jax import hf as hf_io
from ttc_jax.bench_configs import get_config
from ttc_jax.decode import Greedy, Temperature, generate
from ttc_jax.model import ModelConfig, forward, init_params
from ttc_jax.model.params import cast_params
from ttc_jax import perf
from ttc_jax.perf import measure_matmul_peak_gflops

LOGIT_DIFF_WARN = 1e-3


# ----------------------------------------------------------------------------- machine


def cpu_model() -> str:
  try:
    with open("/proc/cpuinfo") as fh:
      for line in fh:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or "unknown"


def measure_read_gbps(mb: int = 256, repeats: int = 10) -> float:
  """Best-of-`repeats` GB/s of a jitted jnp.sum over an `mb` MiB f32 array."""
  x = jnp.ones((mb * 2**20 // 4,), jnp.float32)
  total = jax.jit(jnp.sum)
  total(x).block_until_ready()
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    total(x).block_until_ready()
    best = min(best, time.perf_counter() - start)
  nbytes = x.nbytes
  del x
  return nbytes / best / 1e9


# ----------------------------------------------------------------------------- FLOPs / bytes


def useful_flops(cfg: ModelConfig, batch: int, prompt_len: int, new_tokens: int) -> float:
  """Model FLOPs of prompt_len + new_tokens processed tokens per row, token at
  position p (0-based) attending to p + 1 keys."""
  n = prompt_len + new_tokens
  dense = cfg.flops_per_token(0)
  per_key = cfg.flops_per_token(1) - dense  # attention is linear in the context
  return batch * (n * dense + per_key * n * (n + 1) / 2)


def executed_flops(cfg: ModelConfig, batch: int, padded_prompt_len: int, new_tokens: int,
                   capacity: int) -> float:
  """FLOPs the implementation runs: every token (padding included) attends over
  the whole cache capacity."""
  return batch * (padded_prompt_len + new_tokens) * cfg.flops_per_token(capacity)


def roofline_step_s(cfg: ModelConfig, batch: int, context: float, peak_gflops: float,
                    read_gbps: float) -> float:
  """Lower bound for one decode step: dense FLOPs at the matmul peak plus
  (KV cache over `context` keys + all params) read at `read_gbps`."""
  flops = batch * cfg.flops_per_token(0)
  return flops / (peak_gflops * 1e9) + step_bytes(cfg, batch, context) / (read_gbps * 1e9)


# ----------------------------------------------------------------------------- timing


def _median_time(fn, repeats: int) -> tuple[float, float, list[float]]:
  """(first call s, median of `repeats` further calls s, those times)."""
  start = time.perf_counter()
  fn()
  first = time.perf_counter() - start
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return first, statistics.median(times), times


def _jax_generate_fn(cfg, params, prompts, new_tokens, sampler, seed, extra_capacity=0,
                     mesh=None):
  info = {}

  def run():
    out = generate(cfg, params, prompts, max_new_tokens=new_tokens, sampler=sampler, seed=seed,
                   extra_capacity=extra_capacity, mesh=mesh)
    jax.block_until_ready((out.tokens, out.lengths))
    info["capacity"] = out.cache.capacity
    info["lengths"] = out.lengths
    return out

  return run, info


def resolve_hf_device(hf_device: str) -> str:
  """'cuda' or 'cpu' for transformers; 'auto' = cuda when JAX runs on a GPU and torch sees one."""
  if hf_device not in ("auto", "cpu", "cuda"):
    raise ValueError(f"hf_device must be auto, cpu or cuda, got {hf_device!r}")
  if hf_device != "auto":
    return hf_device
  import torch
  return "cuda" if jax.default_backend() == "gpu" and torch.cuda.is_available() else "cpu"


def _hf_model(cfg: ModelConfig, params_f32: dict, hf_dir: str | None, attn_implementation: str,
              device: str = "cpu"):
  """transformers model with the same weights, f32, on `device` (CPU: all cores)."""
  import torch
  from transformers import AutoModelForCausalLM
  if device == "cpu":
    torch.set_num_threads(os.cpu_count() or 1)

  def load(path):
    return AutoModelForCausalLM.from_pretrained(
        path, dtype=torch.float32, attn_implementation=attn_implementation).eval().to(device)

  if hf_dir is not None:
    return load(hf_dir)
  with tempfile.TemporaryDirectory() as tmp:
    hf_io.save_checkpoint(tmp, cfg.replace(dtype="float32"), params_f32)
    return load(tmp)


def _sync(model) -> None:
  import torch
  if next(model.parameters()).is_cuda:
    torch.cuda.synchronize()


def _hf_logit_diff(model, cfg: ModelConfig, params_f32: dict, prompts: np.ndarray) -> float:
  import torch
  rows = prompts[:4]
  ours, _ = jax.jit(forward, static_argnums=0)(cfg.replace(dtype="float32"), params_f32,
                                                jnp.asarray(rows))
  device = next(model.parameters()).device
  with torch.inference_mode():
    theirs = model(torch.as_tensor(rows, dtype=torch.long, device=device)).logits.float()
  return float(np.max(np.abs(np.asarray(ours) - theirs.cpu().numpy())))


def _hf_generate_fn(model, prompts: np.ndarray, new_tokens: int, sampler, seed: int):
  import torch
  device = next(model.parameters()).device
  input_ids = torch.as_tensor(prompts, dtype=torch.long, device=device)
  attention_mask = torch.ones_like(input_ids)
  if isinstance(sampler, Greedy):
    sampling = dict(do_sample=False)
  else:
    sampling = dict(do_sample=True, temperature=sampler.t, top_k=0, top_p=1.0)

  def run(n=new_tokens):
    torch.manual_seed(seed)
    with torch.inference_mode():
      out = model.generate(input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=n,
                           min_new_tokens=n, pad_token_id=0, eos_token_id=None, **sampling)
    _sync(model)
    if out.shape != (prompts.shape[0], prompts.shape[1] + n):
      raise RuntimeError(f"transformers generated shape {tuple(out.shape)}, expected "
                         f"{(prompts.shape[0], prompts.shape[1] + n)}")
    return out

  return run


# Datasheet HBM bandwidths (GB/s) for the accelerators this project is lent.
SPEC_GBPS = {"NVIDIA H100 80GB HBM3": 3350.0, "NVIDIA H200": 4800.0}


def step_bytes(cfg: ModelConfig, batch: int, context: float) -> float:
  """Bytes one decode step must read: every param once + the KV cache over `context` keys."""
  itemsize = jnp.dtype(cfg.dtype).itemsize
  kv_bytes = 2 * cfg.n_layers * batch * cfg.n_kv_heads * cfg.hd * context * itemsize
  return cfg.num_params() * itemsize + kv_bytes


# ----------------------------------------------------------------------------- main logic


def load_model(config_name: str, hf_dir: str | None, dtype: str, seed: int, mesh_data: int):
  """The benchmarked model -> (name, cfg in `dtype`, f32 params, params in `dtype`
  on the mesh, mesh or None): a named config with random weights (`seed`), or
  the HF checkpoint at hf_dir. mesh_data > 1 shards the batch over that many
  devices (on CPU they must exist already: `set_mesh_devices`)."""
  if hf_dir is not None:
    cfg, params_f32 = hf_io.load_checkpoint(hf_dir, "float32")
    config_name = os.path.basename(os.path.normpath(hf_dir))
  else:
    cfg = get_config(config_name).replace(dtype="float32")
    params_f32 = jax.jit(init_params, static_argnums=0)(cfg, jax.random.key(seed))
  cfg = cfg.replace(dtype=dtype)
  params = params_f32 if dtype == "float32" else cast_params(params_f32, cfg.jnp_dtype)
  mesh = None
  if mesh_data > 1:
    from ttc_jax import sharding
    if len(jax.devices()) < mesh_data:
      raise ValueError(f"mesh_data={mesh_data} but only {len(jax.devices())} devices; on CPU set "
                       "jax_num_cpu_devices before JAX starts (the --mesh_data flag does)")
    mesh = sharding.make_mesh(data=mesh_data, model=1, devices=jax.devices()[:mesh_data])
    params = sharding.shard_params(params, cfg, mesh)  # once, not on every generate call
  return config_name, cfg, params_f32, params, mesh


def _machine_fields() -> dict:
  return dict(device=jax.devices()[0].device_kind, backend=jax.default_backend(),
              cpu_model=cpu_model(), cores=os.cpu_count(), jax_version=jax.__version__,
              python=platform.python_version())


def run_benchmark(config_name: str = "bench_3m", batch_sizes: Sequence[int] = (1, 16, 64, 256), *,
                  hf_dir: str | None = None, prompt_len: int = 32, new_tokens: int = 128,
                  repeats: int = 3, sampler: str = "temperature", temperature: float = 1.0,
                  dtype: str = "float32", compare_hf: bool = False, seed: int = 0,
                  read_mb: int = 256, hf_attn_implementation: str = "sdpa", mesh_data: int = 1,
                  hf_device: str = "auto", print_fn=print) -> list[dict]:
  """Runs the benchmark; returns one dict per batch size (also passed to `print_fn` as JSON).

  mesh_data > 1 shards the batch over the first `mesh_data` devices (a
  ("data", "model") mesh with model=1); on CPU those devices must exist already
  (`jax.config.update("jax_num_cpu_devices", n)` before JAX starts; `main` does it).
  """
  if repeats < 1 or prompt_len < 1 or new_tokens < 2:
    raise ValueError("need repeats >= 1, prompt_len >= 1 and new_tokens >= 2")
  if any(b < 1 for b in batch_sizes):
    raise ValueError(f"batch sizes must be >= 1, got {list(batch_sizes)}")
  if sampler == "greedy":
    samp = Greedy()
  elif sampler == "temperature":
    samp = Temperature(temperature)
  else:
    raise ValueError(f"sampler must be 'greedy' or 'temperature', got {sampler!r}")

  config_name, cfg, params_f32, params, mesh = load_model(config_name, hf_dir, dtype, seed,
                                                          mesh_data)
  if prompt_len + new_tokens > cfg.max_seq_len:
    raise ValueError(f"prompt_len + new_tokens = {prompt_len + new_tokens} exceeds the "
                     f"model's max_seq_len {cfg.max_seq_len}")

  machine = _machine_fields()
  peak_gflops = measure_matmul_peak_gflops(dtype=dtype)  # the model's matmul dtype
  read_gbps = measure_read_gbps(read_mb)
  hf_model = logit_diff = None
  if compare_hf:
    import torch
    import transformers
    device = resolve_hf_device(hf_device)
    hf_model = _hf_model(cfg, params_f32, hf_dir, hf_attn_implementation, device)
    machine.update(torch_version=torch.__version__, transformers_version=transformers.__version__,
                   torch_threads=torch.get_num_threads(),
                   hf_attn_implementation=hf_attn_implementation, hf_device=device,
                   hf_dtype=dtype)

  n_params = cfg.num_params()
  # Same capacity for the max_new_tokens=1 call as for the full one: generate
  # sizes the cache for prompt + next_power_of_two(new_tokens) (+ extra).
  one_extra = (1 << (new_tokens - 1).bit_length()) - 1
  rng = np.random.default_rng(seed)
  results = []
  for batch in batch_sizes:
    prompts = rng.integers(1, cfg.vocab_size, size=(batch, prompt_len), dtype=np.int64)
    load_1m = os.getloadavg()[0]

    full, full_info = _jax_generate_fn(cfg, params, prompts, new_tokens, samp, seed, mesh=mesh)
    first, median, times = _median_time(full, repeats)
    lengths = np.asarray(full_info["lengths"])
    if not (lengths == new_tokens).all():
      raise RuntimeError(f"generate stopped early: lengths {sorted(set(lengths.tolist()))}")
    capacity = int(full_info["capacity"])
    one, one_info = _jax_generate_fn(cfg, params, prompts, 1, samp, seed, extra_capacity=one_extra,
                                     mesh=mesh)
    _, median_one, _ = _median_time(one, repeats)
    assert int(one_info["capacity"]) == capacity, (one_info["capacity"], capacity)
    step_s = max(median - median_one, 0.0) / (new_tokens - 1)
    prefill_s = max(median_one - step_s, 0.0)

    flops = useful_flops(cfg, batch, prompt_len, new_tokens)
    padded_prompt = max(8, 1 << (prompt_len - 1).bit_length())  # generate's prompt bucket
    flops_exec = executed_flops(cfg, batch, padded_prompt, new_tokens, capacity)
    mean_context = prompt_len + (new_tokens + 1) / 2  # keys per decode step, averaged
    tokens_per_sec = batch * new_tokens / median
    # CPU "devices" share the same cores (the peak already uses all of them);
    # accelerators each bring their own peak.
    peak_devices = 1 if jax.default_backend() == "cpu" else mesh_data
    line = dict(
        config=config_name, n_params=n_params, batch=batch, prompt_len=prompt_len,
        new_tokens=new_tokens, sampler=sampler,
        temperature=temperature if sampler == "temperature" else 0.0, dtype=dtype,
        cache_capacity=capacity, mesh_data=mesh_data,
        tokens_per_sec=tokens_per_sec, time_s=median, times_s=times,
        compile_s=max(first - median, 0.0), prefill_s=prefill_s, step_ms=step_s * 1e3,
        roofline_step_ms=roofline_step_s(cfg, batch, mean_context, peak_gflops, read_gbps) * 1e3,
        roofline_step_ms_executed=roofline_step_s(cfg, batch, capacity, peak_gflops,
                                                  read_gbps) * 1e3,
        read_gbps=read_gbps, peak_gflops=peak_gflops,
        model_gflops_per_s=flops / median / 1e9,
        step_gbytes=step_bytes(cfg, batch, mean_context) / 1e9,
        achieved_gbps=step_bytes(cfg, batch, mean_context) / step_s / 1e9 if step_s else 0.0,
        spec_gbps=SPEC_GBPS.get(machine["device"], 0.0),
        mfu=perf.mfu(flops / median, peak_gflops, peak_devices),
        mfu_executed=perf.mfu(flops_exec / median, peak_gflops, peak_devices),
        loadavg_1m_before=load_1m,
    )
    if hf_model is not None:
      if logit_diff is None:
        logit_diff = _hf_logit_diff(hf_model, cfg, params_f32, prompts)
        if not logit_diff < LOGIT_DIFF_WARN:
          print(f"WARNING: transformers and ttc_jax logits differ by {logit_diff:.3g}: the two "
                "models may not hold the same weights", file=sys.stderr)
        if dtype != "float32":  # checked in f32; timed in the benchmark's dtype
          import torch
          hf_model = hf_model.to(getattr(torch, dtype))
      hf_run = _hf_generate_fn(hf_model, prompts, new_tokens, samp, seed)
      hf_run(min(new_tokens, 8))  # warm-up
      hf_times = []
      for _ in range(repeats):
        start = time.perf_counter()
        hf_run()
        hf_times.append(time.perf_counter() - start)
      hf_median = statistics.median(hf_times)
      line.update(hf_tokens_per_sec=batch * new_tokens / hf_median, hf_time_s=hf_median,
                  hf_times_s=hf_times, speedup_vs_hf=hf_median / median,
                  hf_max_abs_logit_diff=logit_diff)
    line.update(machine)
    line["loadavg_1m_after"] = os.getloadavg()[0]
    results.append(emit_line(line, print_fn))
  return results


def emit_line(line: dict, print_fn) -> dict:
  """Refuses a line with a non-finite figure, else prints it as JSON; returns it."""
  for key, value in line.items():
    if isinstance(value, float) and not math.isfinite(value):
      raise RuntimeError(f"non-finite {key} = {value}")
  print_fn(json.dumps(line))
  return line


def write_jsonl_atomic(path: str, lines: Sequence[dict]) -> None:
  """One JSON object per line, written atomically (its folder made if missing)."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  atomic.write_lines(path, (json.dumps(line) for line in lines))


# ----------------------------------------------------------------------------- CLI


def set_mesh_devices(mesh_data: int) -> int:
  """The --mesh_data flag: asks for that many XLA:CPU devices before any
  backend starts (-1: AUTO_CPU_DEVICES unless the environment sets a count;
  GPU/TPU backends ignore it) and returns the devices to split the batch over
  (-1: those CPU devices, or 1 on an accelerator)."""
  from ttc_jax import distributed
  if mesh_data == 0 or mesh_data < -1:
    raise ValueError(f"--mesh_data must be -1 (auto) or >= 1, got {mesh_data}")
  cpu_devices = distributed.resolve_cpu_devices(mesh_data) if mesh_data != 1 else None
  if cpu_devices:
    jax.config.update("jax_num_cpu_devices", cpu_devices)
  if mesh_data > 0:
    return mesh_data
  return len(jax.devices()) if jax.default_backend() == "cpu" else 1


def _define_flags():
  from absl import flags
  flags.DEFINE_string("config", "bench_3m", "Named config from ttc_jax.bench_configs.")
  flags.DEFINE_string("hf_dir", None, "HF Llama/Qwen2 checkpoint directory (overrides --config).")
  flags.DEFINE_list("batch_sizes", ["1", "16", "64", "256"], "Batch sizes to run.")
  flags.DEFINE_integer("prompt_len", 32, "Prompt tokens per row.")
  flags.DEFINE_integer("new_tokens", 128, "Generated tokens per row (forced; no stop tokens).")
  flags.DEFINE_integer("repeats", 3, "Timed repeats (the median is reported).")
  flags.DEFINE_enum("sampler", "temperature", ["greedy", "temperature"], "Sampling method.")
  flags.DEFINE_float("temperature", 1.0, "Temperature for --sampler=temperature.")
  flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "ttc_jax params/activations.")
  flags.DEFINE_bool("compare_hf", False, "Also time transformers generate on the same weights.")
  flags.DEFINE_string("hf_attn_implementation", "sdpa", "transformers attention (sdpa|eager).")
  flags.DEFINE_enum("hf_device", "auto", ["auto", "cpu", "cuda"], "Where transformers runs "
                    "(auto: cuda when JAX runs on a GPU); it runs in --dtype after an f32 "
                    "logit check.")
  flags.DEFINE_string("json_out", None, "JSONL output file (written atomically at the end).")
  flags.DEFINE_integer("seed", 0, "Seed for params, prompts and sampling.")
  flags.DEFINE_integer("read_mb", 256, "Array size (MiB) for the read-bandwidth measurement.")
  flags.DEFINE_integer(
      "mesh_data", -1, "Shard the batch over this many devices. On the CPU backend this many "
      "XLA:CPU host devices are created (jax_num_cpu_devices): XLA:CPU runs each attention "
      "batched dot on one thread, so 2 devices on a 2-core machine decode ~1.6x faster. "
      "-1: 2 on a CPU (ttc_jax.distributed.AUTO_CPU_DEVICES), 1 on a GPU/TPU.")
  return flags.FLAGS


def main(argv: Sequence[str]) -> None:
  del argv
  from absl import flags
  f = flags.FLAGS
  mesh_data = set_mesh_devices(f.mesh_data)
  results = run_benchmark(
      f.config, [int(b) for b in f.batch_sizes], hf_dir=f.hf_dir, prompt_len=f.prompt_len,
      new_tokens=f.new_tokens, repeats=f.repeats, sampler=f.sampler, temperature=f.temperature,
      dtype=f.dtype, compare_hf=f.compare_hf, seed=f.seed, read_mb=f.read_mb,
      hf_attn_implementation=f.hf_attn_implementation, mesh_data=mesh_data,
      hf_device=f.hf_device, print_fn=lambda s: print(s, flush=True))
  if f.json_out:
    write_jsonl_atomic(f.json_out, results)


if __name__ == "__main__":
  from absl import app
  _define_flags()
  app.run(main)
