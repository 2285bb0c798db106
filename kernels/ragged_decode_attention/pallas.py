"""Ragged multi-query attention as a Pallas kernel (target: the Triton GPU backend).

Decode reads the KV cache once per step, so its cost is memory traffic. A dense
attention over the cache capacity S reads all of it; this kernel reads only the
blocks below each row's length, so cost follows the lengths.

Layout: grid (B, K, Mp / block_m), one program per (batch row, kv head, tile of
query rows). A program holds its q tile [block_m, E] (M rows padded to Mp, see
`padded_rows`; tiles of at most MAX_BLOCK_M rows, so the shared-prefix case,
M = N*G queries per prompt, keeps its tile in registers) and runs a
`lax.fori_loop` with a dynamic trip count cdiv(lengths[b], block_s) over key
blocks, keeping an online softmax (running max, running sum, f32 accumulator).
Only the last block can hold keys past the length; they are masked to -inf in
the scores and to 0 in the values (so NaN/inf garbage cannot leak either).

Backend: GPU lowers through the Triton backend (`kernels.backend.compiler_params`
passes Triton CompilerParams; JAX >= 0.10 would otherwise pick Mosaic GPU).
Triton wants power-of-two tensor sizes, hence power-of-two Mp, block_s and E.
TPU would run the same body through Mosaic, but that is untested here (it
would likely want `lengths` in SMEM via scalar prefetch, which Triton lacks).
`lengths` is therefore fed as an ordinary [B] input with a squeezed block per
row, which both the interpreter and Triton accept.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from kernels import backend

DEFAULT_BLOCK_S = 64
MIN_DOT_DIM = 16  # Triton's tl.dot wants every dim >= 16
MAX_BLOCK_M = 64  # query rows per program: [64, E] q + [64, block_s] scores fit registers


def next_pow2(n: int) -> int:
  """Smallest power of two >= n (n >= 1)."""
  return 1 << max(0, int(n) - 1).bit_length()


def padded_rows(m: int) -> int:
  """Query rows after padding: a power of two >= 16 (a multiple of `block_rows(m)`).

  We pad M instead of using a broadcast-multiply-sum for small M: decode is
  bound by reading K/V, so the wasted MMA work on zero rows is free, while a
  [M, block_s, E] broadcast would spill registers at E=128.
  """
  return max(MIN_DOT_DIM, next_pow2(m))


def block_rows(m: int) -> int:
  """Query rows per program: all of them up to MAX_BLOCK_M, else tiles of MAX_BLOCK_M."""
  return min(padded_rows(m), MAX_BLOCK_M)


def default_block_s(capacity: int) -> int:
  """Keys per loop step: 64, or the capacity rounded up to a power of two >= 16."""
  return min(DEFAULT_BLOCK_S, max(MIN_DOT_DIM, next_pow2(capacity)))


def _kernel(len_ref, q_ref, k_ref, v_ref, out_ref, lse_ref, *, scale, block_s):
  """One (batch row, kv head, row tile): len_ref [], q_ref [block_m, E], k_ref/v_ref [S, E]."""
  capacity = k_ref.shape[0]
  # Clamp so a bad length can never index past the cache.
  length = jnp.clip(len_ref[...], 0, capacity)
  q = q_ref[...]
  mp, e = q.shape

  def body(i, carry):
    m_prev, l_prev, acc_prev = carry
    start = pl.multiple_of(i * block_s, block_s)
    k = k_ref[pl.ds(start, block_s), :]
    v = v_ref[pl.ds(start, block_s), :]
    valid = (start + jnp.arange(block_s, dtype=jnp.int32)) < length  # [bs]
    s = lax.dot_general(q, k, (((1,), (1,)), ((), ())),
                        preferred_element_type=jnp.float32) * scale  # [Mp, bs]
    s = jnp.where(valid[None, :], s, -jnp.inf)
    # Every visited block has >= 1 valid key, so m_new is finite from step one.
    m_new = jnp.maximum(m_prev, jnp.max(s, axis=1))
    corr = jnp.exp(m_prev - m_new)
    p = jnp.exp(s - m_new[:, None])
    l_new = corr * l_prev + jnp.sum(p, axis=1)
    v = jnp.where(valid[:, None], v, jnp.zeros_like(v))
    pv = lax.dot_general(p.astype(v.dtype), v, (((1,), (0,)), ((), ())),
                         preferred_element_type=jnp.float32)  # [Mp, E]
    return m_new, l_new, corr[:, None] * acc_prev + pv

  # Dynamic trip count: blocks at or past the length are never loaded.
  # lax.div is exact here (length >= 0) and avoids floor-division sign fixups.
  n_blocks = lax.div(length + (block_s - 1), block_s)
  init = (jnp.full((mp,), -jnp.inf, jnp.float32), jnp.zeros((mp,), jnp.float32),
          jnp.zeros((mp, e), jnp.float32))
  m, l, acc = lax.fori_loop(0, n_blocks, body, init)
  # length 0: no block ran, l = 0; write zeros and -inf instead of 0/0.
  nonempty = l > 0
  l_safe = jnp.where(nonempty, l, 1.0)
  out_ref[...] = (acc / l_safe[:, None]).astype(out_ref.dtype)
  lse_ref[...] = jnp.where(nonempty, m + jnp.log(l_safe), -jnp.inf)


def cost_estimate(b, kh, mp, capacity, e, itemsize, tiles: int = 1) -> pl.CostEstimate:
  """Upper bound at full capacity (the kernel stops at each row's length); each of
  the `tiles` row tiles of a (row, kv head) reads its K/V once."""
  keys = b * kh * capacity
  return pl.CostEstimate(
      flops=4 * keys * mp * e,  # q.k and p.v, 2 flops per MAC each
      transcendentals=keys * mp,  # one exp per score
      bytes_accessed=(2 * keys * e * tiles + 2 * b * kh * mp * e) * itemsize
      + b * kh * mp * 4 + b * 4)


def _check_triton_shapes(e: int, block_s: int):
  for name, n in (("head dim E", e), ("block_s", block_s)):
    if n < MIN_DOT_DIM or n & (n - 1):
      raise ValueError(f"Triton needs {name} a power of two >= {MIN_DOT_DIM}, got {n}")


@functools.partial(jax.jit, static_argnames=("scale", "block_s", "interpret"))
def multi_query_attention(q, k, v, lengths, *, scale=None, block_s=None, interpret=False):
  """Pallas ragged attention; same contract as reference.multi_query_attention.

  q [B, K, M, E]; k, v [B, K, S, E]; lengths [B] int32.
  Returns (out [B, K, M, E] in q.dtype, lse [B, K, M] f32).
  block_s: keys per loop step (default `default_block_s(S)`). If S is not a
  multiple of block_s, K/V are padded here, which copies the cache: allocate
  the capacity as a multiple of block_s to avoid that.
  """
  b, kh, m, e = q.shape
  capacity = k.shape[2]
  scale = float(e ** -0.5 if scale is None else scale)
  block_s = default_block_s(capacity) if block_s is None else int(block_s)
  if not interpret and backend.platform() == "gpu":
    _check_triton_shapes(e, block_s)
  s_pad = pl.cdiv(capacity, block_s) * block_s
  if s_pad != capacity:
    pad = ((0, 0), (0, 0), (0, s_pad - capacity), (0, 0))
    k, v = jnp.pad(k, pad), jnp.pad(v, pad)
  mp, bm = padded_rows(m), block_rows(m)
  q = jnp.pad(q, ((0, 0), (0, 0), (0, mp - m), (0, 0)))  # zero rows: finite, dropped below
  kernel = functools.partial(_kernel, scale=scale, block_s=block_s)
  kv_spec = pl.BlockSpec((None, None, s_pad, e), lambda i, j, t: (i, j, 0, 0))
  q_spec = pl.BlockSpec((None, None, bm, e), lambda i, j, t: (i, j, t, 0))
  out, lse = pl.pallas_call(
      kernel,
      out_shape=(jax.ShapeDtypeStruct((b, kh, mp, e), q.dtype),
                 jax.ShapeDtypeStruct((b, kh, mp), jnp.float32)),
      grid=(b, kh, mp // bm),
      in_specs=[pl.BlockSpec((None,), lambda i, j, t: (i,)), q_spec, kv_spec, kv_spec],
      out_specs=[q_spec, pl.BlockSpec((None, None, bm), lambda i, j, t: (i, j, t))],
      compiler_params=None if interpret else backend.compiler_params(),
      cost_estimate=cost_estimate(b, kh, mp, s_pad, e, q.dtype.itemsize, mp // bm),
      interpret=interpret,
      name="ragged_decode_attention",
  )(lengths.astype(jnp.int32), q, k, v)
  return out[:, :, :m], lse[:, :, :m]


__all__ = ["DEFAULT_BLOCK_S", "MAX_BLOCK_M", "block_rows", "padded_rows", "default_block_s", "cost_estimate",
           "multi_query_attention"]
