"""PRM step-score gather + aggregation as one Pallas kernel.

Target: the Pallas **Triton** backend on GPU (selected by passing
`kernels.backend.compiler_params(...)`; JAX >= 0.10 would otherwise pick
Mosaic GPU). Every block is a power of two, as Triton requires: the wrapper
pads B and T up to block multiples (padding rows/positions are not steps) and
the step slots up to a power of two, then slices; no masked loads.
TPU: the same body is meant to run through Mosaic but is untested here, and
as written it would not lower (checked with `jax.export(platforms=["tpu"])`
on CPU): Mosaic wants row blocks divisible by 8 and has no cumsum lowering
(a port would use 8-row blocks and a roll-based prefix sum). Until then
ops.step_score_aggregate's impl="auto" uses the XLA reference on TPU.

One program per block of BR rows (grid (B / BR,)). It walks the positions in
blocks of BT, keeping per row a running step count and the packed scores
[BR, SP] in registers:
  slot = count + cumsum(is_step) - 1 inside the block, and a one-hot
  [BR, BT, SP] (slot == column) scatters each step's score to its slot (one
  term per slot, so the sum is exact); slots >= max_steps are dropped.
After the walk the same program masks the first min(count, S) slots and
applies the aggregation, so the scores never make a second trip to memory.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from kernels import backend
from kernels.step_score_aggregate import reference as ref

_ONE_HOT_ELEMS = 2 ** 14  # BR * BT * SP per step: keeps the one-hot in registers on GPU


def default_blocks(batch: int, length: int, max_steps: int) -> tuple[int, int]:
  """(block_rows, block_t), powers of two sized so the one-hot stays small."""
  slots = pl.next_power_of_2(max(max_steps, 1))
  block_t = min(64, max(16, _ONE_HOT_ELEMS // slots), pl.next_power_of_2(max(length, 1)))
  block_rows = max(1, min(16, _ONE_HOT_ELEMS // (block_t * slots),
                          pl.next_power_of_2(max(batch, 1))))
  return block_rows, block_t


def _kernel(x_ref, step_ref, scores_ref, mask_ref, agg_ref, *, block_t: int, max_steps: int,
            how: str):
  """x_ref [BR, Tp] f32, step_ref [BR, Tp] int32 (0/1) -> scores_ref [BR, SP] f32,
  mask_ref [BR, SP] int32, agg_ref [BR] f32."""
  block_rows, length = x_ref.shape
  slots = scores_ref.shape[1]
  columns = lax.broadcasted_iota(jnp.int32, (1, 1, slots), 2)

  def scatter_block(j, carry):
    count, packed = carry  # [BR] int32 steps seen so far, [BR, SP] f32
    x = x_ref[:, pl.ds(j * block_t, block_t)].astype(jnp.float32)  # [BR, BT]
    step = step_ref[:, pl.ds(j * block_t, block_t)]  # [BR, BT]
    slot = count[:, None] + jnp.cumsum(step, axis=1) - 1
    keep = (step != 0) & (slot < max_steps)  # steps past max_steps are dropped
    hit = keep[:, :, None] & (slot[:, :, None] == columns)  # [BR, BT, SP]
    packed = packed + jnp.sum(jnp.where(hit, x[:, :, None], 0.0), axis=1)
    return count + jnp.sum(step, axis=1), packed

  count, packed = lax.fori_loop(
      0, length // block_t, scatter_block,
      (jnp.zeros((block_rows,), jnp.int32), jnp.zeros((block_rows, slots), jnp.float32)))

  n = jnp.minimum(count, max_steps)  # [BR] valid slots
  cols = lax.broadcasted_iota(jnp.int32, (block_rows, slots), 1)
  valid = cols < n[:, None]
  if how == "last":
    value = jnp.sum(jnp.where(cols == (n - 1)[:, None], packed, 0.0), axis=1)
  elif how == "min":
    value = jnp.min(jnp.where(valid, packed, jnp.inf), axis=1)
  else:
    logs = jnp.log(jnp.minimum(jnp.maximum(packed, ref.LOG_FLOOR), 1.0))
    value = jnp.exp(jnp.sum(jnp.where(valid, logs, 0.0), axis=1))
  scores_ref[...] = packed
  mask_ref[...] = valid.astype(jnp.int32)
  agg_ref[...] = jnp.where(n > 0, value, 0.0)


def cost_estimate(batch: int, length: int, slots: int, how: str) -> pl.CostEstimate:
  return pl.CostEstimate(flops=int(4 * batch * length * slots),
                         transcendentals=int(2 * batch * slots if how == "prod" else 0),
                         bytes_accessed=int(8 * batch * length + 8 * batch * slots + 4 * batch))


@functools.partial(jax.jit, static_argnames=("how", "max_steps", "block_rows", "block_t",
                                             "num_warps", "interpret"))
def step_score_aggregate(position_scores: jax.Array, is_step: jax.Array, *, how: str,
                         max_steps: int, block_rows: int | None = None,
                         block_t: int | None = None, num_warps: int = 4,
                         interpret: bool = False):
  """(step_scores [B, S] f32, step_mask [B, S] bool, aggregate [B] f32); see reference.py.

  block_rows / block_t: power-of-two blocks (default: default_blocks).
  """
  ref.check_args(how, max_steps)
  b, t = position_scores.shape
  if b == 0 or t == 0 or max_steps == 0:  # nothing to scan: every row has no valid step
    return (jnp.zeros((b, max_steps), jnp.float32), jnp.zeros((b, max_steps), bool),
            jnp.zeros((b,), jnp.float32))
  default_rows, default_t = default_blocks(b, t, max_steps)
  block_rows = block_rows or default_rows
  block_t = block_t or default_t
  for name, size in (("block_rows", block_rows), ("block_t", block_t)):
    if size & (size - 1):
      raise ValueError(f"{name} must be a power of two (Triton), got {size}")
  slots = pl.next_power_of_2(max_steps)
  rows = block_rows * pl.cdiv(b, block_rows)
  length = block_t * pl.cdiv(t, block_t)
  pad = ((0, rows - b), (0, length - t))
  x = jnp.pad(position_scores.astype(jnp.float32), pad)
  step = jnp.pad(is_step.astype(jnp.int32), pad)  # padding is never a step

  kernel = functools.partial(_kernel, block_t=block_t, max_steps=max_steps, how=how)
  scores, mask, agg = pl.pallas_call(
      kernel,
      grid=(rows // block_rows,),
      in_specs=[pl.BlockSpec((block_rows, length), lambda i: (i, 0)),
                pl.BlockSpec((block_rows, length), lambda i: (i, 0))],
      out_specs=[pl.BlockSpec((block_rows, slots), lambda i: (i, 0)),
                 pl.BlockSpec((block_rows, slots), lambda i: (i, 0)),
                 pl.BlockSpec((block_rows,), lambda i: (i,))],
      out_shape=[jax.ShapeDtypeStruct((rows, slots), jnp.float32),
                 jax.ShapeDtypeStruct((rows, slots), jnp.int32),
                 jax.ShapeDtypeStruct((rows,), jnp.float32)],
      compiler_params=backend.compiler_params(num_warps=num_warps, num_stages=1),
      cost_estimate=cost_estimate(b, t, slots, how),
      interpret=interpret,
      name="step_score_aggregate",
  )(x, step)
  return scores[:b, :max_steps], mask[:b, :max_steps] != 0, agg[:b]


__all__ = ["step_score_aggregate", "default_blocks", "cost_estimate"]
