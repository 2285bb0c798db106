"""Fused sampling as one Pallas kernel: temperature, top-k, top-p and the draw.

Target: the Pallas **Triton** backend on GPU (selected by passing
`kernels.backend.compiler_params(...)`, i.e. `pltriton.CompilerParams`; JAX
>= 0.10 would otherwise pick Mosaic GPU). Triton wants power-of-two block
shapes, so the vocabulary is walked in power-of-two blocks and the tail of
the last block is masked to -inf by a masked load (`pltriton.load`).
TPU: the same body is meant to run through Mosaic but is untested here, and
as written it would not lower (checked with `jax.export(platforms=["tpu"])`
on CPU): Mosaic wants (8, 128)-divisible blocks (one row per program is a
squeezed dim), has no masked load and no cumsum lowering. A TPU port needs
8-row blocks, a -inf padded vocabulary and a roll-based prefix sum; until
then ops.sample's impl="auto" uses the XLA reference on TPU.

One program per row (grid (B,)); every pass re-reads the row block by block
from HBM/L2 and keeps only scalars, so nothing is sized by V:
  1. online max and sum of exp (Z) of s = logits / t            (1 pass)
  2. if top_k or top_p cut: the threshold keys, found without sorting by the
     32-step bit search of reference.largest_key; each step is one pass that
     counts keys >= the top-k candidate and sums the mass >= the top-p
     candidate                                                  (32 passes)
  3. if a cut: the kept mass (the draw's total)                  (1 pass)
  4. the inverse CDF in vocabulary order: a running cdf across blocks, the
     first kept token whose cdf exceeds u * total, the last kept token
                                                                (1 pass)
Temperature 0 is one argmax pass. The result equals reference.sample on
inputs where no summation-order rounding sits on a decision (a top-p mass
exactly at p, u * total exactly at a cdf entry). On GPU, Triton's f32
division (possibly the approximate div.full.f32) and exp may differ from
XLA's by an ulp or two, which can also move near-ties (values within ~2 ulp)
across a cut; the threshold search itself is exact (no interval left over).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from kernels import backend
from kernels.fused_sampling import reference as ref

DEFAULT_BLOCK_V = 4096


def default_block_v(vocab: int) -> int:
  """Power-of-two vocabulary block: the whole row when small, else 4096."""
  return min(DEFAULT_BLOCK_V, pl.next_power_of_2(max(vocab, 1)))


def _sampling_kernel(x_ref, u_ref, o_ref, *, vocab: int, block_v: int, temperature: float,
                     top_k: int, top_p: float):
  """x_ref [V] logits of one row; u_ref [1] its uniform; o_ref [1] int32 token."""
  num_blocks = pl.cdiv(vocab, block_v)
  lanes = jnp.arange(block_v, dtype=jnp.int32)
  neg_inf = jnp.float32(-jnp.inf)

  def load(j):
    """(scaled logits [BV] f32 (-inf past V), vocab index [BV], valid [BV])."""
    start = j * block_v
    index = start + lanes
    valid = index < vocab
    x = pltriton.load(x_ref.at[pl.ds(start, block_v)], mask=valid, other=neg_inf)
    x = x.astype(jnp.float32)
    if temperature > 0:
      x = x / jnp.float32(temperature)  # divide, as the reference and the samplers do
    return x, index, valid

  if temperature == 0:
    def argmax_block(j, carry):
      best, best_index = carry
      x, _, _ = load(j)
      block_best = jnp.max(x)
      block_index = j * block_v + jnp.argmax(x).astype(jnp.int32)
      better = block_best > best  # strict: the first maximum wins
      return jnp.where(better, block_best, best), jnp.where(better, block_index, best_index)
    _, token = lax.fori_loop(0, num_blocks, argmax_block, (neg_inf, jnp.int32(0)))
    o_ref[...] = jnp.full((1,), token, jnp.int32)
    return

  # 1. online max and softmax denominator.
  def max_and_sum(j, carry):
    m, z = carry
    x, _, _ = load(j)
    m_new = jnp.maximum(m, jnp.max(x))
    shift = jnp.where(m_new == neg_inf, 0.0, m_new)  # an all -inf prefix adds nothing
    return m_new, z * jnp.exp(m - shift) + jnp.sum(jnp.exp(x - shift))
  m, z = lax.fori_loop(0, num_blocks, max_and_sum, (neg_inf, jnp.float32(0.0)))
  shift = jnp.where(m == neg_inf, 0.0, m)

  # 2. thresholds: the largest keys that keep >= k tokens / >= p of the mass.
  use_k = ref.uses_top_k(top_k, vocab)
  use_p = ref.uses_top_p(top_p)
  theta = jnp.int32(ref.INT32_MIN)
  if use_k or use_p:
    need = jnp.float32(top_p) * z

    def search_step(i, thetas):
      theta_k, theta_p = thetas
      cand_k = ref.search_bit(theta_k, i)
      cand_p = ref.search_bit(theta_p, i)

      def measure(j, acc):
        count, mass = acc
        x, _, valid = load(j)
        key = ref.sort_key(x)
        if use_k:
          count = count + jnp.sum(jnp.where(valid & (key >= cand_k), 1, 0))
        if use_p:
          mass = mass + jnp.sum(jnp.where(key >= cand_p, jnp.exp(x - shift), 0.0))
        return count, mass
      count, mass = lax.fori_loop(0, num_blocks, measure, (jnp.int32(0), jnp.float32(0.0)))
      return (jnp.where(count >= top_k, cand_k, theta_k),
              jnp.where(mass >= need, cand_p, theta_p))

    start = jnp.int32(ref.INT32_MIN)
    theta_k, theta_p = lax.fori_loop(0, ref.KEY_BITS, search_step, (start, start))
    theta = jnp.maximum(theta_k if use_k else start, theta_p if use_p else start)

  def kept_weights(j):
    x, index, valid = load(j)
    keep = valid & (ref.sort_key(x) >= theta)
    return jnp.where(keep, jnp.exp(x - shift), 0.0), index, keep

  # 3. the kept mass (with no cut it is z).
  total = z
  if use_k or use_p:
    total = lax.fori_loop(0, num_blocks, lambda j, t: t + jnp.sum(kept_weights(j)[0]),
                          jnp.float32(0.0))

  # 4. inverse CDF in vocabulary order.
  target = u_ref[0].astype(jnp.float32) * total

  def draw(j, carry):
    below, first, last = carry
    w, index, keep = kept_weights(j)
    cdf = below + jnp.cumsum(w)
    first = jnp.minimum(first, jnp.min(jnp.where(keep & (cdf > target), index, vocab)))
    last = jnp.maximum(last, jnp.max(jnp.where(keep, index, -1)))
    return jnp.max(cdf), first, last  # max(cdf): the next block starts at/after this one
  _, first, last = lax.fori_loop(0, num_blocks, draw,
                                 (jnp.float32(0.0), jnp.int32(vocab), jnp.int32(-1)))
  token = jnp.where(first < vocab, first, last)
  o_ref[...] = jnp.full((1,), token, jnp.int32)


def num_passes(vocab: int, temperature: float, top_k: int, top_p: float) -> int:
  """Passes over the row the kernel makes (for the cost estimate)."""
  if temperature == 0:
    return 1
  cut = ref.uses_top_k(top_k, vocab) or ref.uses_top_p(top_p)
  return 1 + (ref.KEY_BITS + 1 if cut else 0) + 1


def cost_estimate(batch: int, vocab: int, temperature: float, top_k: int,
                  top_p: float) -> pl.CostEstimate:
  passes = num_passes(vocab, temperature, top_k, top_p)
  elems = batch * vocab
  exp_passes = 0 if temperature == 0 else passes
  if temperature > 0 and ref.uses_top_k(top_k, vocab) and not ref.uses_top_p(top_p):
    exp_passes -= ref.KEY_BITS  # a top-k-only search counts keys, no exp
  return pl.CostEstimate(flops=int(6 * passes * elems), transcendentals=int(exp_passes * elems),
                         bytes_accessed=int(4 * passes * elems + 8 * batch))


@functools.partial(jax.jit, static_argnames=("temperature", "top_k", "top_p", "block_v",
                                             "num_warps", "interpret"))
def sample(logits: jax.Array, uniforms: jax.Array, *, temperature: float, top_k: int = 0,
           top_p: float = 1.0, block_v: int | None = None, num_warps: int = 4,
           interpret: bool = False) -> jax.Array:
  """Token ids int32 [B] from logits [B, V] and uniforms [B] (see reference.sample).

  block_v: power-of-two vocabulary block (default: min(4096, next pow2 of V)).
  num_warps: Triton warps per program (one program per row).
  """
  ref.check_args(temperature, top_k, top_p)
  b, v = logits.shape
  if v == 0:
    raise ValueError("empty vocabulary")
  if b == 0:
    return jnp.zeros((0,), jnp.int32)
  block_v = block_v or default_block_v(v)
  if block_v & (block_v - 1):
    raise ValueError(f"block_v must be a power of two (Triton), got {block_v}")

  kernel = functools.partial(_sampling_kernel, vocab=v, block_v=block_v,
                             temperature=float(temperature), top_k=top_k, top_p=float(top_p))
  out = pl.pallas_call(
      kernel,
      grid=(b,),
      in_specs=[pl.BlockSpec((None, v), lambda i: (i, 0)),
                pl.BlockSpec((None, 1), lambda i: (i, 0))],
      out_specs=pl.BlockSpec((None, 1), lambda i: (i, 0)),
      out_shape=jax.ShapeDtypeStruct((b, 1), jnp.int32),
      compiler_params=backend.compiler_params(num_warps=num_warps, num_stages=1),
      cost_estimate=cost_estimate(b, v, temperature, top_k, top_p),
      interpret=interpret,
      name="fused_sampling",
  )(logits, uniforms.astype(jnp.float32).reshape(b, 1))
  return out[:, 0]


__all__ = ["sample", "default_block_v", "num_passes", "cost_estimate", "DEFAULT_BLOCK_V"]
