"""Dispatcher for fused sampling: `impl` picks the reference or the Pallas kernel."""

from __future__ import annotations

import jax

from kernels import backend
from kernels.fused_sampling import pallas as _pallas
from kernels.fused_sampling import reference as _reference

_reference_sample = jax.jit(_reference.sample,
                            static_argnames=("temperature", "top_k", "top_p"))


def _resolve(impl: str) -> str:
  # The kernel does not lower through Mosaic yet (pallas.py says why): XLA on TPU.
  return backend.resolve(impl, tpu_ready=False)


def sample(logits: jax.Array, uniforms: jax.Array, *, temperature: float, top_k: int = 0,
           top_p: float = 1.0, impl: str = "auto", **kernel_options) -> jax.Array:
  """Token ids int32 [B] drawn from logits [B, V] f32 with uniforms [B] in [0, 1).

  temperature 0 is argmax; top_k 0 and top_p 1 disable those cuts; see
  kernels/fused_sampling/reference.py for the exact semantics.
  impl: "auto" | "xla" | "pallas" | "pallas_interpret" (kernels.backend.resolve).
  kernel_options: block_v, num_warps for the Pallas kernel.
  """
  _reference.check_args(temperature, top_k, top_p)
  impl = _resolve(impl)
  if impl == "xla":
    return _reference_sample(logits, uniforms, temperature=temperature, top_k=top_k,
                             top_p=top_p)
  return _pallas.sample(logits, uniforms, temperature=temperature, top_k=top_k, top_p=top_p,
                        interpret=impl == "pallas_interpret", **kernel_options)


__all__ = ["sample"]
