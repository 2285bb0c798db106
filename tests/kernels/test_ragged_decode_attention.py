"""Ragged decode attention: reference vs float64 truth, Pallas vs reference, lowering.

CPU classes always run (tiny shapes, f32, the Pallas interpreter, tight
tolerances). The GPU and TPU classes compile the real kernel and skip when
that backend is absent.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kernels import backend
from kernels.ragged_decode_attention import (multi_query_attention, ragged_decode_attention,
                                             reference)
from kernels.ragged_decode_attention import pallas as ragged_pallas

BLOCK = 8
CAPACITY = 32
# Edge lengths mixed in one batch: empty, one key, block-1, block, block+1, full.
EDGE_LENGTHS = [0, 1, BLOCK - 1, BLOCK, BLOCK + 1, CAPACITY]
TOL = dict(atol=1e-5, rtol=1e-5)


def naive_attention(q, k, v, lengths, scale=None):
  """float64 numpy softmax attention, one (row, kv head) at a time.

  q [B, K, M, E]; k, v [B, K, S, E]. Returns (out [B, K, M, E], lse [B, K, M]).
  """
  q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
  b, kh, m, e = q.shape
  scale = e ** -0.5 if scale is None else scale
  out = np.zeros((b, kh, m, e))
  lse = np.full((b, kh, m), -np.inf)
  for i in range(b):
    n = int(lengths[i])
    if n == 0:
      continue
    for j in range(kh):
      s = q[i, j] @ k[i, j, :n].T * scale
      top = s.max(axis=1, keepdims=True)
      w = np.exp(s - top)
      out[i, j] = (w / w.sum(axis=1, keepdims=True)) @ v[i, j, :n]
      lse[i, j] = top[:, 0] + np.log(w.sum(axis=1))
  return out, lse


def make_inputs(seed, b, kh, m, s, e, dtype=jnp.float32):
  rng = np.random.default_rng(seed)
  q, k, v = (rng.standard_normal(shape).astype(np.float32)
             for shape in ((b, kh, m, e), (b, kh, s, e), (b, kh, s, e)))
  return jnp.asarray(q, dtype), jnp.asarray(k, dtype), jnp.asarray(v, dtype)


def poison_past_lengths(x, lengths, value):
  """x [B, K, S, E] with every slot at or past the row's length set to `value`."""
  past = np.arange(x.shape[2])[None, :] >= np.asarray(lengths)[:, None]
  return jnp.where(jnp.asarray(past)[:, None, :, None], jnp.asarray(value, x.dtype), x)


def assert_lse_close(got, want, **tol):
  got, want = np.asarray(got), np.asarray(want)
  np.testing.assert_array_equal(np.isneginf(got), np.isneginf(want))
  finite = np.isfinite(want)
  np.testing.assert_allclose(got[finite], want[finite], **tol)


def interpret(q, k, v, lengths, **kw):
  return multi_query_attention(q, k, v, lengths, impl="pallas_interpret", block_s=BLOCK, **kw)


class TestRaggedDecodeCPU:
  """Always runs: the interpreter executes the kernel body on CPU."""

  lengths = jnp.asarray(EDGE_LENGTHS, jnp.int32)

  def test_reference_matches_float64_naive(self):
    q, k, v = make_inputs(0, len(EDGE_LENGTHS), 2, 3, CAPACITY, 8)
    out, lse = reference.multi_query_attention(q, k, v, self.lengths)
    want_out, want_lse = naive_attention(q, k, v, EDGE_LENGTHS)
    np.testing.assert_allclose(out, want_out, **TOL)
    assert_lse_close(lse, want_lse, **TOL)

  @pytest.mark.parametrize("m", [1, 3])
  def test_pallas_interpret_matches_reference_at_edge_lengths(self, m):
    q, k, v = make_inputs(1, len(EDGE_LENGTHS), 2, m, CAPACITY, 8)
    out, lse = interpret(q, k, v, self.lengths)
    want_out, want_lse = reference.multi_query_attention(q, k, v, self.lengths)
    assert out.shape == q.shape and out.dtype == q.dtype
    assert lse.shape == q.shape[:3] and lse.dtype == jnp.float32
    np.testing.assert_allclose(out, want_out, **TOL)
    assert_lse_close(lse, want_lse, **TOL)
    # and against the float64 truth directly
    np.testing.assert_allclose(out, naive_attention(q, k, v, EDGE_LENGTHS)[0], **TOL)

  def test_empty_row_gives_zeros_and_neg_inf(self):
    q, k, v = make_inputs(2, len(EDGE_LENGTHS), 2, 3, CAPACITY, 8)
    for out, lse in (interpret(q, k, v, self.lengths),
                     reference.multi_query_attention(q, k, v, self.lengths)):
      assert not np.isnan(np.asarray(out)).any() and not np.isnan(np.asarray(lse)).any()
      np.testing.assert_array_equal(out[0], 0.0)
      assert np.isneginf(np.asarray(lse[0])).all()
      assert np.isfinite(np.asarray(lse[1:])).all()

  @pytest.mark.parametrize("garbage", [1e4, -3e4, np.nan])
  def test_values_past_each_length_are_never_used(self, garbage):
    q, k, v = make_inputs(3, len(EDGE_LENGTHS), 2, 3, CAPACITY, 8)
    clean = [poison_past_lengths(x, EDGE_LENGTHS, 0.0) for x in (k, v)]
    dirty = [poison_past_lengths(x, EDGE_LENGTHS, garbage) for x in (k, v)]
    for fn in (interpret, reference.multi_query_attention):
      want_out, want_lse = fn(q, *clean, self.lengths)
      got_out, got_lse = fn(q, *dirty, self.lengths)
      np.testing.assert_array_equal(got_out, want_out)
      np.testing.assert_array_equal(got_lse, want_lse)

  def test_capacity_not_a_multiple_of_the_block_is_padded(self):
    lengths = [0, 1, 7, 8, 9, 20]
    q, k, v = make_inputs(4, len(lengths), 1, 2, 20, 8)
    out, lse = interpret(q, k, v, jnp.asarray(lengths, jnp.int32))
    want_out, want_lse = naive_attention(q, k, v, lengths)
    np.testing.assert_allclose(out, want_out, **TOL)
    assert_lse_close(lse, want_lse, **TOL)

  def test_default_block_and_explicit_scale(self):
    q, k, v = make_inputs(5, len(EDGE_LENGTHS), 2, 2, CAPACITY, 8)
    out, lse = multi_query_attention(q, k, v, self.lengths, impl="pallas_interpret", scale=0.3)
    want_out, want_lse = naive_attention(q, k, v, EDGE_LENGTHS, scale=0.3)
    np.testing.assert_allclose(out, want_out, **TOL)
    assert_lse_close(lse, want_lse, **TOL)

  @pytest.mark.parametrize("h, kh", [(4, 2), (2, 2)])  # G = 2 and G = 1
  def test_gqa_head_h_reads_kv_head_h_over_g(self, h, kh):
    b, e = len(EDGE_LENGTHS), 8
    rng = np.random.default_rng(6)
    q = jnp.asarray(rng.standard_normal((b, h, e)), jnp.float32)
    _, k, v = make_inputs(7, b, kh, 1, CAPACITY, e)
    g = h // kh
    # Truth: each query head alone against its kv head.
    want_out, want_lse = naive_attention(q[:, :, None, :], jnp.repeat(k, g, axis=1),
                                         jnp.repeat(v, g, axis=1), EDGE_LENGTHS)
    for impl in ("pallas_interpret", "xla"):
      out, lse = ragged_decode_attention(q, k, v, self.lengths, impl=impl, return_lse=True,
                                         block_s=BLOCK)
      assert out.shape == (b, h, e) and lse.shape == (b, h)
      np.testing.assert_allclose(out, want_out[:, :, 0], **TOL)
      assert_lse_close(lse, want_lse[:, :, 0], **TOL)
    assert ragged_decode_attention(q, k, v, self.lengths, impl="xla").shape == (b, h, e)

  def test_dispatch(self, monkeypatch):
    q, k, v = make_inputs(8, 2, 1, 1, 16, 8)
    lengths = jnp.asarray([3, 16], jnp.int32)
    want = reference.multi_query_attention(q, k, v, lengths)[0]
    monkeypatch.setenv(backend.ENV_VAR, "pallas_interpret")
    np.testing.assert_allclose(multi_query_attention(q, k, v, lengths)[0], want, **TOL)
    monkeypatch.delenv(backend.ENV_VAR)
    np.testing.assert_allclose(multi_query_attention(q, k, v, lengths)[0], want, **TOL)
    if backend.platform() == "cpu":
      with pytest.raises(ValueError):
        multi_query_attention(q, k, v, lengths, impl="pallas")

  def test_many_query_rows_are_split_into_row_tiles(self):
    """M > MAX_BLOCK_M (the shared-prefix case): several row tiles per (row, kv head)."""
    m = ragged_pallas.MAX_BLOCK_M + 9
    assert ragged_pallas.padded_rows(m) // ragged_pallas.block_rows(m) == 2
    q, k, v = make_inputs(7, len(EDGE_LENGTHS), 1, m, CAPACITY, 8)
    out, lse = interpret(q, k, v, self.lengths)
    want_out, want_lse = reference.multi_query_attention(q, k, v, self.lengths)
    np.testing.assert_allclose(out, want_out, **TOL)
    assert_lse_close(lse, want_lse, **TOL)

  def test_padding_helpers_and_cost_estimate(self):
    assert [ragged_pallas.padded_rows(m) for m in (1, 4, 16, 17, 40)] == [16, 16, 16, 32, 64]
    assert [ragged_pallas.default_block_s(s) for s in (5, 32, 1024)] == [16, 32, 64]
    cost = ragged_pallas.cost_estimate(2, 4, 16, 1024, 128, 2)
    assert cost.flops == 4 * 2 * 4 * 1024 * 16 * 128
    assert cost.transcendentals == 2 * 4 * 1024 * 16
    assert cost.bytes_accessed > 2 * 2 * 4 * 1024 * 128 * 2  # at least K and V once
    assert [ragged_pallas.block_rows(m) for m in (4, 64, 65, 1024)] == [16, 64, 64, 64]
    tiled = ragged_pallas.cost_estimate(2, 4, 128, 1024, 128, 2, tiles=2)
    assert tiled.bytes_accessed - ragged_pallas.cost_estimate(2, 4, 128, 1024, 128, 2).bytes_accessed \
        == 2 * 2 * 4 * 1024 * 128 * 2  # each extra tile reads K and V again


def lower_for_triton(fn, *avals):
  """StableHLO text of `fn` lowered for CUDA; runs the Pallas->Triton lowering without a GPU."""
  return jax.jit(fn).trace(*avals).lower(lowering_platforms=("cuda",)).as_text()


class TestTritonLoweringOnCPU:
  """Lowers the kernel to Triton IR on any host: catches unsupported primitives early.

  The Triton lowering itself is pure Python/MLIR; only compiling to PTX needs
  the GPU. Shapes here are unique to this class so no cached trace (made
  without Triton params) is reused.
  """

  @pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
  @pytest.mark.parametrize("g, e", [(1, 64), (4, 128), (24, 128)])
  def test_lowers_to_a_triton_call(self, monkeypatch, dtype, g, e):
    monkeypatch.setattr(backend, "platform", lambda: "gpu")  # Triton params + shape checks
    b, kh, s = 3, 2, 96 + g  # capacity not a block multiple: the padded path too
    q = jax.ShapeDtypeStruct((b, kh * g, e), dtype)
    kv = jax.ShapeDtypeStruct((b, kh, s, e), dtype)
    lengths = jax.ShapeDtypeStruct((b,), jnp.int32)
    # impl="pallas" refuses to run on a CPU host, so call the kernel wrapper directly.
    fn = lambda q, k, v, n: ragged_pallas.multi_query_attention(
        q.reshape(b, kh, g, e), k, v, n, block_s=32, interpret=False)
    text = lower_for_triton(fn, q, kv, kv, lengths)
    assert "__gpu$xla.gpu.triton" in text
    assert "num_warps = 4" in text

  def test_rejects_non_power_of_two_head_dim_for_triton(self, monkeypatch):
    monkeypatch.setattr(backend, "platform", lambda: "gpu")
    q = jnp.zeros((1, 1, 1, 24))
    kv = jnp.zeros((1, 1, 32, 24))
    with pytest.raises(ValueError, match="power of two"):
      ragged_pallas.multi_query_attention(q, kv, kv, jnp.ones((1,), jnp.int32), block_s=16)


def rel_err(got, want):
  got, want = np.asarray(got, np.float32), np.asarray(want, np.float32)
  return float(np.linalg.norm(got - want) / np.linalg.norm(want))


REALISTIC = [  # (B, K, S, E) with G = 4 query heads per kv head
    (8, 2, 1024, 64),
    (64, 2, 2048, 128),
    (16, 8, 2048, 128),
    (32, 4, 1024, 128),
]


def realistic_case(seed, b, kh, s, e, dtype):
  rng = np.random.default_rng(seed)
  q = jnp.asarray(rng.standard_normal((b, 4 * kh, e)), dtype)
  k = jnp.asarray(rng.standard_normal((b, kh, s, e)), dtype)
  v = jnp.asarray(rng.standard_normal((b, kh, s, e)), dtype)
  lengths = rng.integers(0, s + 1, size=b)
  lengths[:3] = [0, 1, s]
  return q, k, v, jnp.asarray(lengths, jnp.int32)


def check_against_reference(q, k, v, lengths, impl, dtype):
  out, lse = ragged_decode_attention(q, k, v, lengths, impl=impl, return_lse=True)
  f32 = [x.astype(jnp.float32) for x in (q, k, v)]
  want, want_lse = ragged_decode_attention(*f32, lengths, impl="xla", return_lse=True)
  assert out.dtype == dtype
  assert not np.isnan(np.asarray(out.astype(jnp.float32))).any()
  assert not np.isnan(np.asarray(lse)).any()
  tol = 2e-3 if dtype == jnp.float32 else 2e-2  # Triton f32 dots may use TF32
  assert rel_err(out, want) < tol
  assert_lse_close(lse, want_lse, atol=tol * 10, rtol=tol)


@pytest.mark.skipif(backend.platform() != "gpu", reason="needs a GPU")
class TestRaggedDecodeGPU:
  """The compiled Triton kernel at realistic shapes vs the f32 XLA reference."""

  @pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
  @pytest.mark.parametrize("b, kh, s, e", REALISTIC)
  def test_pallas_matches_reference(self, b, kh, s, e, dtype):
    check_against_reference(*realistic_case(0, b, kh, s, e, dtype), "pallas", dtype)

  def test_auto_picks_pallas_and_agrees(self, monkeypatch):
    monkeypatch.delenv(backend.ENV_VAR, raising=False)
    assert backend.resolve("auto") == "pallas"
    check_against_reference(*realistic_case(1, 8, 2, 1024, 128, jnp.bfloat16), "auto",
                            jnp.bfloat16)


@pytest.mark.skipif(backend.platform() != "tpu", reason="needs a TPU")
class TestRaggedDecodeTPU:
  """Same body through Mosaic TPU: untested so far, run it when a TPU is present."""

  @pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
  def test_pallas_matches_reference(self, dtype):
    check_against_reference(*realistic_case(0, 8, 2, 1024, 128, dtype), "pallas", dtype)
