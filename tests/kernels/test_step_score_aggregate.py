"""Step-score gather + aggregation kernel == compact + aggregate_* from ttc_jax.verifier.

The kernel (interpreted on CPU, Triton on GPU) is compared with the jnp
reference and with the verifier's own functions: random step masks, rows
without steps, rows with more steps than max_steps, T not a multiple of the
block, B not a multiple of the row block, all three aggregations.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kernels import backend
from kernels.step_score_aggregate import ops
from ttc_jax.verifier.aggregate import get_aggregation
from ttc_jax.verifier.model import compact

BLOCK_T = 16
BLOCK_ROWS = 4
HOWS = ("last", "min", "prod")


def _inputs(b: int, t: int, seed: int = 0) -> tuple[jnp.ndarray, jnp.ndarray]:
  """scores [B, T] in [0, 1] (with exact 0s and 1s) and is_step [B, T]: row 0 has no
  step, row 1 a step everywhere, the rest random densities."""
  rng = np.random.default_rng(seed)
  scores = rng.uniform(size=(b, t)).astype(np.float32)
  scores[rng.uniform(size=(b, t)) < 0.05] = 0.0
  scores[rng.uniform(size=(b, t)) < 0.05] = 1.0
  density = rng.uniform(0.0, 0.6, size=(b, 1))
  is_step = rng.uniform(size=(b, t)) < density
  if b > 0:
    is_step[0] = False
  if b > 1:
    is_step[1] = True
  return jnp.asarray(scores), jnp.asarray(is_step)


@functools.partial(jax.jit, static_argnums=(2, 3))
def _verifier(scores, is_step, how, max_steps):
  """compose(compact, aggregate_<how>) from ttc_jax.verifier: the behaviour to match."""
  step_scores, step_mask = compact(scores, is_step, max_steps)
  return step_scores, step_mask, get_aggregation(how)(step_scores, step_mask)


def _assert_same(got, want, rtol=0.0):
  (gs, gm, ga), (ws, wm, wa) = got, want
  assert gs.shape == ws.shape and gm.shape == wm.shape and ga.shape == wa.shape
  assert gs.dtype == jnp.float32 and gm.dtype == jnp.bool_ and ga.dtype == jnp.float32
  np.testing.assert_array_equal(gm, wm)
  np.testing.assert_array_equal(gs, ws)  # packing moves values, never rounds them
  # Relative error means nothing below the smallest normal f32 (subnormals carry
  # fewer bits): there it is measured against that floor.
  np.testing.assert_allclose(ga, wa, rtol=rtol, atol=rtol * np.finfo(np.float32).tiny)


def _kernel(scores, is_step, how, max_steps):
  return ops.step_score_aggregate(scores, is_step, how=how, max_steps=max_steps,
                                  impl="pallas_interpret", block_t=BLOCK_T,
                                  block_rows=BLOCK_ROWS)


# (B, T, max_steps): edge lengths 1, block-1, block, block+1, several blocks; max_steps
# below, at and above the step counts (so steps get dropped in some rows).
SHAPES = [(3, 1, 1), (5, BLOCK_T - 1, 4), (4, BLOCK_T, 16), (7, BLOCK_T + 1, 5), (9, 45, 8)]


class TestCPU:
  """impl='pallas_interpret' vs the reference and the verifier: tiny shapes, f32."""

  @pytest.mark.parametrize("how", HOWS)
  @pytest.mark.parametrize("shape", SHAPES, ids=str)
  def test_matches_reference_and_verifier(self, shape, how):
    b, t, max_steps = shape
    scores, is_step = _inputs(b, t, seed=t)
    got = _kernel(scores, is_step, how, max_steps)
    _assert_same(got, ops.step_score_aggregate(scores, is_step, how=how, max_steps=max_steps,
                                               impl="xla"))
    _assert_same(got, _verifier(scores, is_step, how, max_steps), rtol=1e-6)

  def test_counts_no_steps_and_overflow(self):
    """Row 0 (no step) scores 0; row 1 (T steps) keeps only the first max_steps and
    'last' reads the max_steps-th step, as compact + aggregate_last do."""
    scores, is_step = _inputs(9, 45, seed=45)
    step_scores, mask, last = _kernel(scores, is_step, "last", 8)
    assert not np.any(mask[0]) and last[0] == 0.0 and np.all(step_scores[0] == 0.0)
    assert np.all(mask[1]) and last[1] == scores[1, 7]
    np.testing.assert_array_equal(step_scores[1], scores[1, :8])
    counts = np.minimum(np.asarray(is_step).sum(axis=1), 8)
    np.testing.assert_array_equal(np.asarray(mask).sum(axis=1), counts)
    assert np.any(np.asarray(is_step).sum(axis=1)[2:] > 8)  # the random rows overflow too

  def test_empty_edges(self):
    scores, is_step = _inputs(3, 20)
    for b, t, s in ((0, 20, 4), (3, 0, 4), (3, 20, 0)):
      got = _kernel(scores[:b, :t], is_step[:b, :t], "prod", s)
      _assert_same(got, _verifier(scores[:b, :t], is_step[:b, :t], "prod", s))

  def test_default_blocks(self):
    scores, is_step = _inputs(6, 50, seed=2)
    got = ops.step_score_aggregate(scores, is_step, how="min", max_steps=12,
                                   impl="pallas_interpret")
    _assert_same(got, _verifier(scores, is_step, "min", 12))

  def test_invalid_arguments(self):
    scores, is_step = _inputs(2, 8)
    with pytest.raises(ValueError):
      ops.step_score_aggregate(scores, is_step, how="mean", max_steps=3, impl="xla")
    with pytest.raises(ValueError):
      ops.step_score_aggregate(scores, is_step, how="last", max_steps=-1, impl="xla")
    with pytest.raises(ValueError):
      ops.step_score_aggregate(scores, is_step, how="last", max_steps=3,
                               impl="pallas_interpret", block_t=12)

  def test_reference_equals_verifier_with_gaps_in_mask(self):
    """The reference alone on a larger random set (cheap: no interpreter)."""
    scores, is_step = _inputs(64, 200, seed=9)
    for how in HOWS:
      for max_steps in (7, 250):
        _assert_same(ops.step_score_aggregate(scores, is_step, how=how, max_steps=max_steps,
                                              impl="xla"),
                     _verifier(scores, is_step, how, max_steps), rtol=1e-6)


@pytest.mark.skipif(backend.platform() != "gpu", reason="needs a GPU (Triton)")
class TestGPU:
  """impl='pallas' (Triton) at a realistic size vs the reference and the verifier."""

  @pytest.mark.parametrize("how", HOWS)
  @pytest.mark.parametrize("max_steps", [40, 64])
  def test_matches_reference(self, how, max_steps):
    scores, is_step = _inputs(256, 2048, seed=max_steps)
    is_step = is_step & (np.random.default_rng(1).uniform(size=(256, 2048)) < 0.05)
    got = ops.step_score_aggregate(scores, is_step, how=how, max_steps=max_steps, impl="pallas")
    # Triton's log/exp may differ from XLA's by an ulp: prod gets a small rtol.
    rtol = 1e-5 if how == "prod" else 0.0
    _assert_same(got, ops.step_score_aggregate(scores, is_step, how=how, max_steps=max_steps,
                                               impl="xla"), rtol=rtol)
    _assert_same(got, _verifier(scores, is_step, how, max_steps), rtol=1e-5)


@pytest.mark.skipif(backend.platform() != "tpu", reason="needs a TPU")
class TestTPU:
  """On TPU impl='auto' falls back to the reference (the kernel does not lower through
  Mosaic yet: kernels/step_score_aggregate/pallas.py says why)."""

  def test_auto_matches_verifier(self):
    scores, is_step = _inputs(64, 512, seed=3)
    for how in HOWS:
      _assert_same(ops.step_score_aggregate(scores, is_step, how=how, max_steps=40),
                   _verifier(scores, is_step, how, 40), rtol=1e-6)

  @pytest.mark.xfail(reason="Mosaic: needs 8-row blocks and a cumsum lowering", strict=False)
  def test_pallas_matches_verifier(self):
    scores, is_step = _inputs(64, 512, seed=3)
    _assert_same(ops.step_score_aggregate(scores, is_step, how="min", max_steps=40,
                                          impl="pallas"),
                 _verifier(scores, is_step, "min", 40))
