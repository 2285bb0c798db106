"""Shared-prefix attention: merge, packing, dense truth, Pallas vs reference.

CPU classes always run (tiny shapes, f32, the Pallas interpreter). GPU and TPU
classes compile the real kernel and skip when that backend is absent.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kernels import backend
from kernels.ragged_decode_attention import reference as ragged_reference
from kernels.shared_prefix_attention import (merge_partials, pack_queries,
                                             shared_prefix_attention, unpack_rows)
from kernels.shared_prefix_attention import pallas as sp_pallas
from kernels.shared_prefix_attention import reference

BLOCK = 8
TOL = dict(atol=1e-5, rtol=1e-5)
# P = 2 prompts, N = 3 samples: prefix lengths per prompt, suffix lengths per row,
# covering empty, 1, block-1, block, block+1 and full (16), and a row with no keys at all.
PREFIX_LENGTHS = [0, 9]
SUFFIX_LENGTHS = [0, 1, 16, 7, 8, 0]


def naive_rows(q, prefix_k, prefix_v, prefix_lengths, suffix_k, suffix_v, suffix_lengths,
               scale=None):
  """float64 numpy truth: per row and head, softmax over [valid prefix, valid suffix]."""
  q, pk, pv, sk, sv = (np.asarray(x, np.float64)
                       for x in (q, prefix_k, prefix_v, suffix_k, suffix_v))
  p, n, h, e = q.shape
  kh = pk.shape[1]
  g = h // kh
  scale = e ** -0.5 if scale is None else scale
  out = np.zeros((p, n, h, e))
  lse = np.full((p, n, h), -np.inf)
  for i in range(p):
    for j in range(n):
      r, lp, ls = i * n + j, int(prefix_lengths[i]), int(suffix_lengths[i * n + j])
      for hh in range(h):
        kk = np.concatenate([pk[i, hh // g, :lp], sk[r, hh // g, :ls]])
        vv = np.concatenate([pv[i, hh // g, :lp], sv[r, hh // g, :ls]])
        if len(kk) == 0:
          continue
        s = kk @ q[i, j, hh] * scale
        w = np.exp(s - s.max())
        out[i, j, hh] = w @ vv / w.sum()
        lse[i, j, hh] = s.max() + np.log(w.sum())
  return out, lse


def make_case(seed, p=2, n=3, kh=2, g=2, e=8, sp=16, ss=16,
              prefix_lengths=PREFIX_LENGTHS, suffix_lengths=SUFFIX_LENGTHS, dtype=jnp.float32):
  rng = np.random.default_rng(seed)
  arr = lambda *shape: jnp.asarray(rng.standard_normal(shape), dtype)
  return (arr(p, n, kh * g, e), arr(p, kh, sp, e), arr(p, kh, sp, e),
          jnp.asarray(prefix_lengths, jnp.int32), arr(p * n, kh, ss, e), arr(p * n, kh, ss, e),
          jnp.asarray(suffix_lengths, jnp.int32))


def assert_lse_close(got, want, **tol):
  got, want = np.asarray(got), np.asarray(want)
  np.testing.assert_array_equal(np.isneginf(got), np.isneginf(want))
  finite = np.isfinite(want)
  np.testing.assert_allclose(got[finite], want[finite], **tol)


def poison_past(x, lengths, value):
  past = np.arange(x.shape[2])[None, :] >= np.asarray(lengths)[:, None]
  return jnp.where(jnp.asarray(past)[:, None, :, None], jnp.asarray(value, x.dtype), x)


class TestTritonLoweringOnCPU:
  """The packed prefix call (M = N*G rows) lowers to Triton IR on any host."""

  def test_lowers_to_triton_calls(self, monkeypatch):
    monkeypatch.setattr(backend, "platform", lambda: "gpu")  # Triton params
    p, n, kh, g, e, sp, ss = 2, 6, 2, 4, 64, 160, 48  # 24 packed rows -> 32
    f = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.bfloat16)
    i = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.int32)
    fn = lambda *a: sp_pallas.shared_prefix_attention(*a, block_s=32)
    text = jax.jit(fn).trace(f(p, n, kh * g, e), f(p, kh, sp, e), f(p, kh, sp, e), i(p),
                             f(p * n, kh, ss, e), f(p * n, kh, ss, e), i(p * n)).lower(
                                 lowering_platforms=("cuda",)).as_text()
    assert text.count("__gpu$xla.gpu.triton") == 2  # prefix call + suffix call


class TestSharedPrefixCPU:
  """Always runs: merge and packing are pure jnp, the kernel runs interpreted."""

  def test_merge_partials_equals_attention_over_the_union(self):
    # Split one key set at 16: A = keys [0, 16), B = keys [16, 32), lengths per side.
    rng = np.random.default_rng(0)
    q, k, v = (jnp.asarray(rng.standard_normal(s), jnp.float32)
               for s in ((5, 2, 3, 8), (5, 2, 32, 8), (5, 2, 32, 8)))
    len_a = np.array([0, 16, 3, 0, 16])
    len_b = np.array([0, 0, 5, 9, 16])
    out_a, lse_a = ragged_reference.multi_query_attention(
        q, k[:, :, :16], v[:, :, :16], jnp.asarray(len_a))
    out_b, lse_b = ragged_reference.multi_query_attention(
        q, k[:, :, 16:], v[:, :, 16:], jnp.asarray(len_b))
    out, lse = merge_partials(out_a, lse_a, out_b, lse_b)
    # Truth: float64 softmax over the union [A's valid keys, B's valid keys] per row.
    want_out, want_lse = np.zeros(q.shape), np.full(q.shape[:3], -np.inf)
    q64, k64, v64 = (np.asarray(x, np.float64) for x in (q, k, v))
    for r in range(5):
      keep = np.r_[np.arange(len_a[r]), 16 + np.arange(len_b[r])]
      if len(keep):
        s = q64[r] @ k64[r][:, keep].transpose(0, 2, 1) / np.sqrt(8)  # [K, M, n]
        w = np.exp(s - s.max(-1, keepdims=True))
        want_out[r] = w @ v64[r][:, keep] / w.sum(-1, keepdims=True)
        want_lse[r] = s.max(-1) + np.log(w.sum(-1))
    assert not np.isnan(np.asarray(out)).any()
    np.testing.assert_allclose(out, want_out, **TOL)
    assert_lse_close(lse, want_lse, **TOL)

  def test_merge_ignores_the_output_of_an_empty_side(self):
    out = jnp.ones((2, 4))
    bad = jnp.full((2, 4), jnp.nan)
    neg_inf = jnp.full((2,), -jnp.inf)
    merged, lse = merge_partials(out, jnp.zeros(2), bad, neg_inf)
    np.testing.assert_array_equal(merged, out)
    np.testing.assert_array_equal(lse, 0.0)
    merged, lse = merge_partials(bad, neg_inf, bad, neg_inf)
    np.testing.assert_array_equal(merged, 0.0)
    assert np.isneginf(np.asarray(lse)).all()

  def test_pack_then_unpack_is_identity_and_groups_by_kv_head(self):
    q = jnp.arange(2 * 3 * 4 * 5, dtype=jnp.float32).reshape(2, 3, 4, 5)  # P, N, H=4, E
    packed = pack_queries(q, 2)  # K = 2, G = 2
    assert packed.shape == (2, 2, 6, 5)
    np.testing.assert_array_equal(unpack_rows(packed, 3), q)
    # packed row n*G + g of kv head k is query head k*G + g of sample n
    np.testing.assert_array_equal(packed[1, 1, 2 * 2 + 1], q[1, 2, 1 * 2 + 1])
    lse_like = jnp.arange(2 * 2 * 6, dtype=jnp.float32).reshape(2, 2, 6)
    assert unpack_rows(lse_like, 3).shape == (2, 3, 4)

  def test_reference_matches_float64_naive(self):
    case = make_case(1)
    out, lse = reference.shared_prefix_attention(*case, return_lse=True)
    want_out, want_lse = naive_rows(*case)
    np.testing.assert_allclose(out, want_out, **TOL)
    assert_lse_close(lse, want_lse, **TOL)

  @pytest.mark.parametrize("impl", ["pallas_interpret", "xla"])
  @pytest.mark.parametrize("g", [1, 2])
  def test_impl_matches_dense_reference(self, impl, g):
    case = make_case(2, g=g)
    out, lse = shared_prefix_attention(*case, impl=impl, return_lse=True, block_s=BLOCK)
    want_out, want_lse = reference.shared_prefix_attention(*case, return_lse=True)
    assert out.shape == case[0].shape and out.dtype == case[0].dtype
    assert not np.isnan(np.asarray(out)).any()
    np.testing.assert_allclose(out, want_out, **TOL)
    assert_lse_close(lse, want_lse, **TOL)
    # the row with neither prefix nor suffix keys (prompt 0, sample 0)
    np.testing.assert_array_equal(out[0, 0], 0.0)

  def test_uneven_prefix_and_suffix_capacities(self):
    case = make_case(3, p=3, n=2, kh=1, g=4, sp=24, ss=8, prefix_lengths=[24, 1, 8],
                     suffix_lengths=[8, 0, 7, 1, 0, 8])
    out = shared_prefix_attention(*case, impl="pallas_interpret", block_s=BLOCK)
    np.testing.assert_allclose(out, naive_rows(*case)[0], **TOL)

  @pytest.mark.parametrize("garbage", [1e4, np.nan])
  def test_values_past_each_length_are_never_used(self, garbage):
    q, pk, pv, pl_, sk, sv, sl = make_case(4)
    clean = shared_prefix_attention(
        q, poison_past(pk, pl_, 0.0), poison_past(pv, pl_, 0.0), pl_,
        poison_past(sk, sl, 0.0), poison_past(sv, sl, 0.0), sl,
        impl="pallas_interpret", block_s=BLOCK)
    dirty = shared_prefix_attention(
        q, poison_past(pk, pl_, garbage), poison_past(pv, pl_, garbage), pl_,
        poison_past(sk, sl, garbage), poison_past(sv, sl, garbage), sl,
        impl="pallas_interpret", block_s=BLOCK)
    np.testing.assert_array_equal(dirty, clean)


def rel_err(got, want):
  got, want = np.asarray(got, np.float32), np.asarray(want, np.float32)
  return float(np.linalg.norm(got - want) / np.linalg.norm(want))


def realistic_case(seed, p, n, kh, e, sp, ss, dtype):
  rng = np.random.default_rng(seed)
  prefix_lengths = rng.integers(1, sp + 1, size=p)
  suffix_lengths = rng.integers(0, ss + 1, size=p * n)
  return make_case(seed, p=p, n=n, kh=kh, g=4, e=e, sp=sp, ss=ss, dtype=dtype,
                   prefix_lengths=prefix_lengths, suffix_lengths=suffix_lengths)


def check_against_reference(case, dtype):
  out = shared_prefix_attention(*case, impl="pallas")
  f32 = [x.astype(jnp.float32) if x.dtype != jnp.int32 else x for x in case]
  want = reference.shared_prefix_attention(*f32)
  assert out.dtype == dtype
  assert not np.isnan(np.asarray(out.astype(jnp.float32))).any()
  assert rel_err(out, want) < (2e-3 if dtype == jnp.float32 else 2e-2)


@pytest.mark.skipif(backend.platform() != "gpu", reason="needs a GPU")
class TestSharedPrefixGPU:
  """The compiled Triton path at realistic shapes vs the f32 dense reference."""

  @pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
  @pytest.mark.parametrize("p, n, kh, e, sp, ss", [(4, 8, 2, 128, 1024, 256),
                                                   (2, 16, 4, 64, 2048, 128)])
  def test_pallas_matches_reference(self, p, n, kh, e, sp, ss, dtype):
    check_against_reference(realistic_case(0, p, n, kh, e, sp, ss, dtype), dtype)


@pytest.mark.skipif(backend.platform() != "tpu", reason="needs a TPU")
class TestSharedPrefixTPU:
  """Same path through Mosaic TPU: untested so far, run it when a TPU is present."""

  @pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
  def test_pallas_matches_reference(self, dtype):
    check_against_reference(realistic_case(0, 2, 4, 2, 128, 1024, 128, dtype), dtype)
