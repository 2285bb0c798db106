"""Chooses which implementation a kernel dispatcher runs.

Every op offers `impl` in IMPLS:
* "xla": the pure-jnp reference (kernels/<op>/reference.py) compiled by XLA;
* "pallas": the Pallas kernel compiled for the current backend (GPU: the
  Triton backend, chosen through `pltriton.CompilerParams`; TPU: Mosaic);
* "pallas_interpret": the same kernel body run by the Pallas interpreter
  (any backend; this is how the CPU tests exercise the kernel);
* "auto": "pallas" on GPU/TPU, "xla" on CPU (Pallas does not compile for CPU).

The environment variable TTC_JAX_KERNELS (one of IMPLS) overrides "auto", so a
user can fall back to XLA on a GPU without touching code.
"""

from __future__ import annotations

import os

import jax

IMPLS = ("auto", "xla", "pallas", "pallas_interpret")
ENV_VAR = "TTC_JAX_KERNELS"


def platform() -> str:
  """'gpu', 'tpu' or 'cpu' for the default backend (ROCm and CUDA are both 'gpu')."""
  name = jax.default_backend()
  return "gpu" if name in ("gpu", "cuda", "rocm") else name


def resolve(impl: str, *, tpu_ready: bool = True) -> str:
  """The concrete implementation ('xla' | 'pallas' | 'pallas_interpret') for `impl`.

  tpu_ready=False: an op whose kernel does not lower through Mosaic yet runs
  XLA on TPU under "auto" (an explicit impl or TTC_JAX_KERNELS still wins).
  """
  if impl not in IMPLS:
    raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
  if impl == "auto":
    impl = os.environ.get(ENV_VAR, "auto")
    if impl not in IMPLS:
      raise ValueError(f"{ENV_VAR} must be one of {IMPLS}, got {impl!r}")
  if impl == "auto":
    ready = ("gpu", "tpu") if tpu_ready else ("gpu",)
    return "pallas" if platform() in ready else "xla"
  if impl == "pallas" and platform() == "cpu":
    raise ValueError("impl='pallas' needs a GPU or TPU; on CPU use 'xla' or 'pallas_interpret'")
  return impl


def compiler_params(num_warps: int = 4, num_stages: int = 2):
  """Backend compiler params for `pl.pallas_call`: Triton's on GPU, None elsewhere.

  Passing Triton params selects the Triton lowering explicitly (JAX >= 0.10
  otherwise defaults to Mosaic GPU, which wants a different kernel style).
  """
  if platform() != "gpu":
    return None
  from jax.experimental.pallas import triton as pltriton
  return pltriton.CompilerParams(num_warps=num_warps, num_stages=num_stages)


__all__ = ["IMPLS", "ENV_VAR", "platform", "resolve", "compiler_params"]
