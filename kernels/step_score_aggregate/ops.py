"""Dispatcher for step-score aggregation: `impl` picks the reference or the Pallas kernel."""

from __future__ import annotations

import jax

from kernels import backend
from kernels.step_score_aggregate import pallas as _pallas
from kernels.step_score_aggregate import reference as _reference

_reference_op = jax.jit(_reference.step_score_aggregate, static_argnames=("how", "max_steps"))


def _resolve(impl: str) -> str:
  # The kernel does not lower through Mosaic yet (pallas.py says why): XLA on TPU.
  return backend.resolve(impl, tpu_ready=False)


def step_score_aggregate(position_scores: jax.Array, is_step: jax.Array, *, how: str,
                         max_steps: int, impl: str = "auto", **kernel_options):
  """Packs the scores at the is_step positions and aggregates them.

  position_scores [B, T] f32, is_step [B, T] bool -> (step_scores [B, S] f32,
  step_mask [B, S] bool, aggregate [B] f32), S = max_steps; how: "last" |
  "min" | "prod". Equal to ttc_jax.verifier.model.compact followed by the
  ttc_jax.verifier.aggregate function of that name.
  impl: "auto" | "xla" | "pallas" | "pallas_interpret" (kernels.backend.resolve).
  kernel_options: block_rows, block_t, num_warps for the Pallas kernel.
  """
  _reference.check_args(how, max_steps)
  impl = _resolve(impl)
  if impl == "xla":
    return _reference_op(position_scores, is_step, how=how, max_steps=max_steps)
  return _pallas.step_score_aggregate(position_scores, is_step, how=how, max_steps=max_steps,
                                      interpret=impl == "pallas_interpret", **kernel_options)


__all__ = ["step_score_aggregate"]
