"""Decode loop invariants: stop/resume, determinism, samplers, per-row stops, bad input."""

import jax
import jax.extend.core
import jax.numpy as jnp
import numpy as np
import pytest

from tests.conftest import tiny_config
from ttc_jax.decode import Greedy, Temperature, TopK, TopP, continue_generate, generate
from ttc_jax.decode.samplers import _inverse_cdf
from ttc_jax.model import init_params

PROMPTS = [[1, 5, 6, 7], [1, 9], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10], [1, 33, 2]]


def _rows(out):
  """Each row's generated tokens, cut at its length."""
  return [list(np.asarray(t[:n])) for t, n in zip(out.tokens, out.lengths)]


@pytest.mark.parametrize("sampler", [Greedy(), Temperature(1.0), TopK(5, 0.8), TopP(0.9, 1.2)])
def test_same_seed_same_batch_is_bit_identical(tiny_model, sampler):
  cfg, params = tiny_model
  a = generate(cfg, params, PROMPTS, max_new_tokens=10, sampler=sampler, seed=7)
  b = generate(cfg, params, PROMPTS, max_new_tokens=10, sampler=sampler, seed=7)
  np.testing.assert_array_equal(a.tokens, b.tokens)
  np.testing.assert_array_equal(a.logprobs, b.logprobs)
  if not isinstance(sampler, Greedy):
    c = generate(cfg, params, PROMPTS, max_new_tokens=10, sampler=sampler, seed=8)
    assert not np.array_equal(a.tokens, c.tokens)


def test_stop_on_delimiter_then_resume_equals_uninterrupted(tiny_model):
  cfg, params = tiny_model
  sampler = Temperature(1.0)
  full = generate(cfg, params, PROMPTS, max_new_tokens=24, sampler=sampler, seed=3)
  # A frequent token acts as the "step delimiter": stop on it, then resume step by step.
  delimiter = int(np.bincount(np.asarray(full.tokens).ravel()).argmax())
  out = generate(cfg, params, PROMPTS, max_new_tokens=24, sampler=sampler, seed=3,
                 stop_tokens=[delimiter], extra_capacity=24)
  pieces = [[] for _ in PROMPTS]
  produced = np.zeros(len(PROMPTS), int)
  stops_seen = 0
  while True:
    for i, row in enumerate(_rows(out)):
      pieces[i] += row
    produced += np.asarray(out.lengths)
    stops_seen += int(np.asarray(out.stopped_on_token).sum())
    # every row ends on the delimiter, or used up its tokens
    for row, stopped in zip(_rows(out), np.asarray(out.stopped_on_token)):
      assert not stopped or row[-1] == delimiter
    remaining = 24 - produced
    if remaining.max() <= 0:
      break
    out = continue_generate(cfg, params, out, max_new_tokens=int(remaining.max()),
                            sampler=sampler, seed=3, stop_tokens=[delimiter],
                            active=remaining > 0)
  assert stops_seen > len(PROMPTS)  # the test really exercised stop + resume
  for i, row in enumerate(_rows(full)):
    assert pieces[i][:24] == row


def test_per_row_stop_tokens_pad_the_rest(tiny_model):
  cfg, params = tiny_model
  free = generate(cfg, params, PROMPTS, max_new_tokens=12, sampler=Greedy())
  first_tokens = [int(t) for t in free.tokens[:, 0]]
  stop = first_tokens[0]
  out = generate(cfg, params, PROMPTS, max_new_tokens=12, sampler=Greedy(), stop_tokens=[stop],
                 pad_id=0)
  for row in range(len(PROMPTS)):
    full_row = list(np.asarray(free.tokens[row]))
    expected_len = full_row.index(stop) + 1 if stop in full_row else 12
    assert int(out.lengths[row]) == expected_len
    assert list(np.asarray(out.tokens[row, :expected_len])) == full_row[:expected_len]
    assert (np.asarray(out.tokens[row, expected_len:]) == 0).all()
    assert (np.asarray(out.logprobs[row, expected_len:]) == 0).all()
  assert int(out.lengths[0]) == 1 and bool(out.stopped_on_token[0])


def test_row_streams_make_rows_independent_of_position(tiny_model):
  """Same (seed, row stream) -> same sample for a prompt wherever it sits in the batch."""
  cfg, params = tiny_model
  a = generate(cfg, params, [PROMPTS[0], PROMPTS[1]], max_new_tokens=8,
               sampler=Temperature(1.0), seed=1, row_streams=[10, 11])
  b = generate(cfg, params, [PROMPTS[1], PROMPTS[0]], max_new_tokens=8,
               sampler=Temperature(1.0), seed=1, row_streams=[11, 10])
  np.testing.assert_array_equal(a.tokens[0], b.tokens[1])
  np.testing.assert_array_equal(a.tokens[1], b.tokens[0])


def test_samplers_respect_their_support():
  logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]] * 4000))
  u = jax.random.uniform(jax.random.key(0), (4000,))
  for sampler, allowed in [(TopK(2, 1.0), {0, 1}), (TopP(0.79, 1.0), {0, 1}),
                           (TopP(0.81, 1.0), {0, 1, 2}), (Greedy(), {0}), (Temperature(0), {0})]:
    drawn = set(np.asarray(sampler.sample(logits, u)).tolist())
    assert drawn == allowed, (sampler, drawn)


def test_inverse_cdf_matches_the_distribution():
  probs = np.array([0.5, 0.3, 0.15, 0.05])
  u = jax.random.uniform(jax.random.key(1), (20000,))
  drawn = np.asarray(_inverse_cdf(jnp.log(jnp.asarray([probs] * 20000)), u))
  freq = np.bincount(drawn, minlength=4) / len(drawn)
  np.testing.assert_allclose(freq, probs, atol=0.015)


@pytest.mark.parametrize("make", [lambda: TopP(0.0), lambda: TopP(1.5), lambda: TopK(-1),
                                  lambda: Temperature(-0.1), lambda: TopK(3, -1.0),
                                  lambda: Temperature(float("nan"))])
def test_bad_sampler_settings_are_errors(make):
  with pytest.raises(ValueError):
    make()


def test_bad_inputs_are_clear_errors(tiny_model):
  cfg, params = tiny_model
  with pytest.raises(ValueError, match="empty prompt"):
    generate(cfg, params, [[1, 2], []], max_new_tokens=4)
  with pytest.raises(ValueError, match="prompts is empty"):
    generate(cfg, params, [], max_new_tokens=4)
  with pytest.raises(ValueError, match="outside the vocabulary"):
    generate(cfg, params, [[1, cfg.vocab_size]], max_new_tokens=4)
  with pytest.raises(ValueError, match="outside the vocabulary"):
    generate(cfg, params, [[1, -1]], max_new_tokens=4)
  with pytest.raises(ValueError, match="max_seq_len"):
    generate(cfg, params, [[1] * (cfg.max_seq_len - 2)], max_new_tokens=4)
  with pytest.raises(ValueError, match="max_new_tokens"):
    generate(cfg, params, [[1]], max_new_tokens=-1)
  with pytest.raises(ValueError, match="stop token"):
    generate(cfg, params, [[1]], max_new_tokens=2, stop_tokens=[cfg.vocab_size])
  with pytest.raises(ValueError, match="tail_rows"):
    generate(cfg, params, [[1]], max_new_tokens=2, tail_rows=0)
  for bad in ((4, 0), (), [4]):
    with pytest.raises(ValueError, match="tail_rows"):
      generate(cfg, params, [[1]], max_new_tokens=2, tail_rows=bad)
  out = generate(cfg, params, [[1]], max_new_tokens=2)
  with pytest.raises(ValueError, match="cache room"):
    continue_generate(cfg, params, out, max_new_tokens=10_000)


def test_long_prompt_near_max_seq_len_fits():
  cfg = tiny_config(max_seq_len=40)
  params = init_params(cfg, jax.random.key(0))
  out = generate(cfg, params, [[1] * 30, [2] * 3], max_new_tokens=10)
  assert list(np.asarray(out.lengths)) == [10, 10]


def test_segmented_decode_matches_one_full_forward(tiny_model):
  """Long greedy decodes cross several segment resizes; one teacher-forced
  forward over prompt + output must reproduce every token and log-prob."""
  from ttc_jax.decode.loop import segment_plan
  from ttc_jax.model import forward
  cfg, params = tiny_model
  prompts = [PROMPTS[0], PROMPTS[2]]
  out = generate(cfg, params, prompts, max_new_tokens=100, sampler=Greedy())
  assert len(segment_plan(256, 16, 128)) > 2  # the plan generate uses here has several segments
  full = jax.jit(forward, static_argnums=0)  # eager: every op compiled per shape
  for row, prompt in enumerate(prompts):
    seq = jnp.asarray([prompt + list(np.asarray(out.tokens[row]))])
    logits, _ = full(cfg, params, seq)
    predicted = jnp.argmax(logits[0, len(prompt) - 1:-1], axis=-1)
    np.testing.assert_array_equal(predicted, out.tokens[row])
    ref = jnp.take_along_axis(jax.nn.log_softmax(logits[0, len(prompt) - 1:-1]),
                              out.tokens[row][:, None], axis=-1)[:, 0]
    np.testing.assert_allclose(out.logprobs[row], ref, atol=1e-4)


def test_segment_plan_covers_every_reachable_position():
  from ttc_jax.decode.loop import segment_plan
  for capacity, start, buffer in [(192, 32, 128), (64, 8, 16), (100, 90, 8), (500, 40, 100)]:
    plan = segment_plan(capacity, start, buffer)
    assert plan[-1][1] == buffer and all(w <= capacity for w, _ in plan)
    assert [l for _, l in plan] == sorted(l for _, l in plan)
    for width, limit in plan:  # after `limit` steps a row is at most start + limit long
      assert width >= min(capacity, start + limit + 1)


# 40: two decode segments; (4, 2): then the last 2 rows in a 2-row batch.
@pytest.mark.parametrize("max_new_tokens,tail_rows", [(12, 4), (40, (4, 2))])
def test_slow_rows_finishing_alone_give_the_same_tokens(tiny_model, max_new_tokens, tail_rows):
  """tail_rows=4: once at most 4 of 8 rows still decode, they go on in a 4-row batch."""
  cfg, params = tiny_model
  prompts = PROMPTS * 2
  kw = dict(max_new_tokens=max_new_tokens, sampler=Temperature(1.0), seed=5)
  full = generate(cfg, params, prompts, tail_rows=None, **kw)
  delimiter = int(np.bincount(np.asarray(full.tokens).ravel()).argmax())
  kw["stop_tokens"] = [delimiter]
  whole = generate(cfg, params, prompts, tail_rows=None, **kw)
  tail = generate(cfg, params, prompts, tail_rows=tail_rows, **kw)
  lengths = np.sort(np.asarray(whole.lengths))
  assert lengths[-5] < lengths[-1], lengths  # the last steps ran in the 4-row tail
  assert tail_rows == 4 or lengths[-3] < lengths[-1], lengths  # ... and in the 2-row one
  np.testing.assert_array_equal(tail.tokens, whole.tokens)
  np.testing.assert_array_equal(tail.lengths, whole.lengths)
  np.testing.assert_allclose(tail.logprobs, whole.logprobs, rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(tail.stopped_on_token, whole.stopped_on_token)


def test_tail_starting_after_the_first_segment_keeps_the_cache(tiny_model):
  """6 of 8 rows stop after 62 tokens, so the 2-row tail starts in the second
  32-step segment, with cache slots filled past the first segment's width
  (16 prompt slots + 32 steps + scratch -> 64)."""
  from ttc_jax.decode.loop import prefill_and_decode
  from ttc_jax.decode.generate import pad_prompts
  from ttc_jax.model import init_cache
  cfg, params = tiny_model
  tokens, lengths = pad_prompts(PROMPTS * 2, cfg.vocab_size, 0)
  max_new = jnp.array([62] * 6 + [90] * 2, jnp.int32)
  outs = []
  for tail in (None, 2):
    outs.append(prefill_and_decode(
        cfg, params, jnp.asarray(tokens), jnp.asarray(lengths), init_cache(cfg, 8, 112),
        seed=jnp.uint32(3), row_streams=jnp.arange(8, dtype=jnp.uint32), max_new=max_new,
        stop_tokens=jnp.array([-1], jnp.int32), sampler=Temperature(1.0), buffer_len=96,
        tail_rows=tail))
  whole, tail = outs
  np.testing.assert_array_equal(whole.num_new, max_new)
  np.testing.assert_array_equal(tail.tokens, whole.tokens)
  np.testing.assert_allclose(tail.logprobs, whole.logprobs, rtol=1e-6, atol=1e-6)


def _while_cache_widths(jaxpr, cache_shape) -> set[int]:
  """Widths S of every [B, K, S, E] array a while loop in `jaxpr` (nested too) carries."""
  b, k, _, e = cache_shape
  widths = set()
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "while":
      for var in eqn.outvars:
        shape = getattr(var.aval, "shape", ())
        if len(shape) == 4 and (shape[0], shape[1], shape[3]) == (b, k, e):
          widths.add(shape[2])
    for sub in jax.extend.core.jaxprs_in_params(eqn.params):
      widths |= _while_cache_widths(sub, cache_shape)
  return widths


@pytest.mark.parametrize("tail_rows", [None, 2])
def test_decode_segments_run_over_narrow_caches(tiny_model, tail_rows):
  """The first segments attend over a cache only as wide as they can fill, not
  the whole capacity (a fix for tails once kept every segment at full width:
  1.38x slower decode steps, unnoticed by the token-equality tests)."""
  from ttc_jax.decode.generate import pad_prompts
  from ttc_jax.decode.loop import prefill_and_decode, segment_plan
  from ttc_jax.model import init_cache
  cfg, params = tiny_model
  tokens, lengths = pad_prompts(PROMPTS * 2, cfg.vocab_size, 0)
  capacity, buffer_len = 112, 96
  cache = init_cache(cfg, 8, capacity)
  jaxpr = jax.make_jaxpr(lambda c: prefill_and_decode(
      cfg, params, jnp.asarray(tokens), jnp.asarray(lengths), c, seed=jnp.uint32(3),
      row_streams=jnp.arange(8, dtype=jnp.uint32), max_new=jnp.full((8,), 90, jnp.int32),
      stop_tokens=jnp.array([-1], jnp.int32), sampler=Temperature(1.0), buffer_len=buffer_len,
      tail_rows=tail_rows))(cache)
  plan = segment_plan(capacity, tokens.shape[1], buffer_len)
  assert plan[0][0] < capacity, plan  # else the test would not tell
  widths = _while_cache_widths(jaxpr.jaxpr, cache.k[0].shape)
  assert min(widths) == plan[0][0], (widths, plan)
  assert {w for w, _ in plan} <= widths, (widths, plan)
