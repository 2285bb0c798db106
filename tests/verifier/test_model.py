"""Verifier heads: one-pass == incremental scoring, step positions, formats, bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.conftest import tiny_config
from ttc_jax.model import forward, init_params
from ttc_jax.verifier import (VerifierConfig, check_compatible, compact, extend, init_verifier,
                              score_rows, start, step_positions, step_scores)

STEP = 7
CFG = tiny_config()
PROMPT_LENGTHS = np.array([3, 5, 2])
LENGTHS = np.array([14, 17, 9])
HEAD_OPTIONS = {
    "value": {},
    "token": {},
    "good_token": dict(good_token_id=10, bad_token_id=11),
    "class_softmax": dict(num_classes=3, positive_class=2),
}


def _rows(width=20, seed=0):
  rng = np.random.default_rng(seed)
  tokens = rng.integers(3, CFG.vocab_size, size=(3, width)).astype(np.int32)
  tokens[:, 0] = 1
  tokens[tokens % 4 == 0] = STEP  # plenty of step tags
  for row, n in zip(tokens, LENGTHS):
    row[n:] = 0
  return jnp.asarray(tokens)


def _verifier(head):
  vcfg = VerifierConfig(model=CFG, head=head, step_token_id=STEP, **HEAD_OPTIONS[head])
  params = init_verifier(vcfg, jax.random.key(3), init_params(CFG, jax.random.key(0)))
  if head == "token":  # scores far from 0 so the product stays informative
    params["head"] = {"a": jnp.float32(0.3), "b": jnp.float32(2.0)}
  return vcfg, params


# Jitted: eager op-by-op execution compiles every primitive for every new shape.
_score_rows = jax.jit(score_rows, static_argnums=0)
_start = jax.jit(start, static_argnums=0, static_argnames=("capacity",))
_extend = jax.jit(extend, static_argnums=0)


@pytest.mark.parametrize("head", sorted(HEAD_OPTIONS))
def test_incremental_scoring_equals_one_pass(head):
  vcfg, params = _verifier(head)
  tokens = _rows()
  full, _ = _score_rows(vcfg, params, tokens, jnp.asarray(PROMPT_LENGTHS), jnp.asarray(LENGTHS))
  prompt = jnp.where(jnp.arange(tokens.shape[1])[None] < PROMPT_LENGTHS[:, None], tokens, 0)
  state = _start(vcfg, params, prompt[:, :8], jnp.asarray(PROMPT_LENGTHS), capacity=48)
  pos = np.array(PROMPT_LENGTHS)
  # Feed the solutions in uneven chunks, as search feeds one step per round.
  for chunk in (4, 1, 6, 9):
    n_new = np.clip(LENGTHS - pos, 0, chunk)
    idx = np.minimum(pos[:, None] + np.arange(chunk)[None], tokens.shape[1] - 1)
    piece = jnp.take_along_axis(tokens, jnp.asarray(idx), axis=1)
    state, scores = _extend(vcfg, params, state, piece, jnp.asarray(n_new))
    for b in range(3):
      np.testing.assert_allclose(np.asarray(scores[b, :n_new[b]]),
                                 np.asarray(full[b, pos[b]:pos[b] + n_new[b]]),
                                 rtol=2e-5, atol=1e-6)
      if n_new[b]:
        np.testing.assert_allclose(float(state.score[b]), float(full[b, pos[b] + n_new[b] - 1]),
                                   rtol=2e-5, atol=1e-6)
    pos = pos + n_new
  assert (pos == LENGTHS).all()


def test_good_token_head_is_two_token_softmax():
  vcfg, params = _verifier("good_token")
  tokens = _rows()
  scores, _ = score_rows(vcfg, params, tokens, jnp.asarray(PROMPT_LENGTHS), jnp.asarray(LENGTHS))
  logits, _ = forward(CFG, params["lm"], tokens)
  expected = jax.nn.softmax(logits[..., jnp.array([10, 11])], axis=-1)[..., 0]
  solution = (np.arange(tokens.shape[1])[None] >= PROMPT_LENGTHS[:, None]) & (
      np.arange(tokens.shape[1])[None] < LENGTHS[:, None])
  np.testing.assert_allclose(np.asarray(scores)[solution], np.asarray(expected)[solution],
                             rtol=1e-5)


def test_token_head_prefix_score_is_product_of_token_probabilities():
  vcfg, params = _verifier("token")
  tokens = _rows()
  scores, logit = score_rows(vcfg, params, tokens, jnp.asarray(PROMPT_LENGTHS),
                             jnp.asarray(LENGTHS))
  logits, _ = forward(CFG, params["lm"], tokens)
  logp = jax.nn.log_softmax(logits, axis=-1)
  for b in range(3):
    running = 1.0
    for t in range(PROMPT_LENGTHS[b], LENGTHS[b]):
      token_logp = float(logp[b, t - 1, tokens[b, t]])
      running *= float(jax.nn.sigmoid(0.3 * token_logp + 2.0))
      np.testing.assert_allclose(float(scores[b, t]), running, rtol=1e-4)


def test_step_scores_read_at_tags_and_final_token():
  vcfg, params = _verifier("value")
  tokens = _rows()
  s, mask = step_scores(vcfg, params, tokens, jnp.asarray(PROMPT_LENGTHS), jnp.asarray(LENGTHS),
                        max_steps=16)
  full, _ = score_rows(vcfg, params, tokens, jnp.asarray(PROMPT_LENGTHS), jnp.asarray(LENGTHS))
  tok = np.asarray(tokens)
  for b in range(3):
    where = [t for t in range(PROMPT_LENGTHS[b], LENGTHS[b])
             if tok[b, t] == STEP or t == LENGTHS[b] - 1]
    assert int(np.asarray(mask[b]).sum()) == len(where)
    np.testing.assert_allclose(np.asarray(s[b, :len(where)]), np.asarray(full[b, where]),
                               rtol=1e-6)
  assert np.asarray(step_positions(vcfg, tokens, jnp.asarray(PROMPT_LENGTHS),
                                   jnp.asarray(LENGTHS)))[:, :2].sum() == 0  # prompt never


def test_compact_drops_entries_past_width():
  values = jnp.arange(12, dtype=jnp.float32).reshape(2, 6)
  where = jnp.array([[1, 0, 1, 1, 0, 1], [0, 0, 0, 0, 0, 1]], bool)
  out, mask = compact(values, where, 3)
  np.testing.assert_array_equal(np.asarray(out), [[0, 2, 3], [11, 0, 0]])
  np.testing.assert_array_equal(np.asarray(mask), [[1, 1, 1], [1, 0, 0]])


def test_dropout_only_with_an_rng():
  vcfg, params = _verifier("value")
  tokens, pl, ln = _rows(), jnp.asarray(PROMPT_LENGTHS), jnp.asarray(LENGTHS)
  a, _ = score_rows(vcfg, params, tokens, pl, ln)
  b, _ = score_rows(vcfg, params, tokens, pl, ln, dropout_rate=0.5)
  c, _ = score_rows(vcfg, params, tokens, pl, ln, dropout_rng=jax.random.key(0),
                    dropout_rate=0.5)
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert not np.allclose(np.asarray(a), np.asarray(c))


def test_bad_configs_and_vocabulary_mismatch():
  with pytest.raises(ValueError, match="head must be one of"):
    VerifierConfig(model=CFG, head="reward")
  with pytest.raises(ValueError, match="good_token_id"):
    VerifierConfig(model=CFG, head="good_token", step_token_id=STEP)
  with pytest.raises(ValueError, match="step_token_id"):
    VerifierConfig(model=CFG, step_token_id=CFG.vocab_size)
  with pytest.raises(ValueError, match="positive_class"):
    VerifierConfig(model=CFG, head="class_softmax", num_classes=2, positive_class=2)
  vcfg = VerifierConfig(model=CFG.replace(vocab_size=80), step_token_id=STEP)
  with pytest.raises(ValueError, match="share a tokenizer"):
    check_compatible(vcfg, CFG)


def test_config_round_trip():
  vcfg, _ = _verifier("good_token")
  assert VerifierConfig.from_dict(vcfg.to_dict()) == vcfg
