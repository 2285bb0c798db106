"""Throughput helpers shared by training and the benchmarks.

MFU in this project = achieved model FLOP/s / a matmul peak measured on the
same machine in the same run (`measure_matmul_peak_gflops`), not a datasheet
number: on the 2-core CPU boxes the datasheet peak is meaningless, and a
measured peak keeps MFU comparable across machines (DESIGN.md item 10).
"""

from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp


def _default_size(backend: str) -> int:
  # Big enough to be compute bound, small enough to take well under a second:
  # 2 * 1024^3 = 2.1 GFLOP is ~10 ms on a 2-core CPU; accelerators need more.
  return 1024 if backend == "cpu" else 8192


@functools.lru_cache(maxsize=None)
def measure_matmul_peak_gflops(n: int | None = None, repeats: int = 10,
                               dtype: str = "float32", device_index: int = 0) -> float:
  """Best-of-`repeats` GFLOP/s of one [n, n] @ [n, n] matmul on one device.

  Default precision (what the model's matmuls use too, e.g. TF32 for f32 on
  recent NVIDIA GPUs). Compilation and a warm-up call are excluded. Cached per
  argument tuple, so callers can ask for it freely.
  """
  device = jax.devices()[device_index]
  n = n or _default_size(device.platform)
  key_a, key_b = jax.random.split(jax.random.PRNGKey(0))
  a = jax.device_put(jax.random.normal(key_a, (n, n), jnp.float32).astype(dtype), device)
  b = jax.device_put(jax.random.normal(key_b, (n, n), jnp.float32).astype(dtype), device)
  matmul = jax.jit(jnp.dot)
  matmul(a, b).block_until_ready()  # compile + warm up
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    matmul(a, b).block_until_ready()
    best = min(best, time.perf_counter() - start)
  return 2.0 * n ** 3 / best / 1e9


def mfu(model_flops_per_s: float, peak_gflops: float, n_devices: int = 1) -> float:
  """Model FLOP utilisation against `n_devices` x the measured one-device peak."""
  peak = peak_gflops * 1e9 * n_devices
  return model_flops_per_s / peak if peak > 0 else 0.0


def train_flops_per_token(cfg, seq_len: int) -> float:
  """Model FLOPs to train on one position of a causal row of `seq_len` tokens.

  3 x the forward FLOPs (forward + backward = 2 x forward), with the attention
  term at the mean causal context (seq_len + 1) / 2. Padding positions count:
  they are computed.
  """
  return 3.0 * cfg.flops_per_token(context_len=(seq_len + 1) / 2)
