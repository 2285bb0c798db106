"""An imported PRM reads its own step tag where the policy ends a step
(`VerifierConfig.delimiter_id`): scoring, incremental scoring and search."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.conftest import tiny_config
from ttc_jax.model import init_params
from ttc_jax.search import SearchConfig, search
from ttc_jax.verifier import VerifierConfig, init_verifier, step_scores
from ttc_jax.verifier.model import extend, start

CFG = tiny_config()
# The policy's delimiters (a lone newline and a fused one, like Llama-3's ".\n"),
# the PRM's tag, EOS.
STEP, STEP2, TAG, EOS = 22, 40, 7, 15
TAGGED = VerifierConfig(model=CFG, head="value", step_token_id=TAG)
REMAPPED = TAGGED.replace(delimiter_ids=(STEP, STEP2))
_step_scores = jax.jit(step_scores, static_argnums=0, static_argnames=("max_steps",))

# Prompts hold the delimiter too: the prompt is shown to the PRM as it is.
PROMPTS = [[1, 5, STEP, 6], [1, 9, 9]]
SOLUTIONS = [[4, 4, STEP, 8, STEP2, 3], [11, STEP2, 12, 13, STEP]]
WIDTH = 16


@pytest.fixture(scope="module")
def params():
  return init_verifier(TAGGED, jax.random.key(1), init_params(CFG, jax.random.key(0)))


def _rows(solutions):
  rows = [p + s + [0] * (WIDTH - len(p) - len(s)) for p, s in zip(PROMPTS, solutions)]
  plens = [len(p) for p in PROMPTS]
  return (jnp.asarray(rows), jnp.asarray(plens),
          jnp.asarray([p + len(s) for p, s in zip(plens, solutions)]))


def _tag_written_in(solution):
  return [TAG if t in (STEP, STEP2) else t for t in solution]


def test_scores_equal_rows_with_the_tag_written_in(params):
  got, got_mask = _step_scores(REMAPPED, params, *_rows(SOLUTIONS), max_steps=4)
  want, want_mask = _step_scores(TAGGED, params, *_rows([_tag_written_in(s) for s in SOLUTIONS]),
                                 max_steps=4)
  np.testing.assert_array_equal(np.asarray(got_mask), np.asarray(want_mask))
  assert np.asarray(got_mask).sum(axis=1).tolist() == [3, 2]  # 2 tags + a last step; 2 tags
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6, atol=1e-7)
  # Not remapping the prompt matters: the first prompt's delimiter changes the scores.
  tokens, plens, lens = _rows([_tag_written_in(s) for s in SOLUTIONS])
  all_tags = jnp.where(tokens == STEP, TAG, tokens)
  other, _ = _step_scores(TAGGED, params, all_tags, plens, lens, max_steps=4)
  assert not np.allclose(np.asarray(other[0]), np.asarray(got[0]))


def test_incremental_scoring_equals_one_pass(params):
  tokens, plens, lens = _rows(SOLUTIONS)
  want, mask = _step_scores(REMAPPED, params, tokens, plens, lens, max_steps=4)
  prompts = jnp.asarray([p + [0] * (8 - len(p)) for p in PROMPTS])
  state = start(REMAPPED, params, prompts, plens, WIDTH)
  chunk = jnp.asarray([s + [0] * (8 - len(s)) for s in SOLUTIONS])
  _, prefix = extend(REMAPPED, params, state, chunk, jnp.asarray([len(s) for s in SOLUTIONS]))
  for r, sol in enumerate(SOLUTIONS):
    at = [i for i, t in enumerate(sol) if t in (STEP, STEP2)]
    at += [len(sol) - 1] if sol[-1] not in (STEP, STEP2) else []
    np.testing.assert_allclose(np.asarray(prefix[r, at]), np.asarray(want[r, :len(at)]),
                               rtol=1e-5, atol=1e-6)
    assert int(mask[r].sum()) == len(at)


@pytest.mark.parametrize("method", ["beam", "best_of_n"])
def test_search_ends_steps_at_the_policy_delimiter(params, method):
  policy = init_params(CFG, jax.random.key(0))
  scfg = SearchConfig(method=method, n=4, m=2, max_solution_tokens=24, max_step_tokens=24,
                      max_steps=24, tail_fraction=0)
  out = search(CFG, policy, REMAPPED, params, PROMPTS, scfg, eos_id=EOS, seed=0, prompt_width=8)
  steps_seen = 0
  for q, prompt in enumerate(PROMPTS):
    for i in range(4):
      sol = out.tokens[q, i, :out.lengths[q, i]].tolist()
      if sol and sol[-1] == EOS:
        sol = sol[:-1]
      if not sol:
        continue
      row = jnp.asarray([prompt + sol + [0] * (40 - len(prompt) - len(sol))])
      s, mask = _step_scores(REMAPPED, params, row, jnp.asarray([len(prompt)]),
                             jnp.asarray([len(prompt) + len(sol)]), max_steps=24)
      n_steps = int(out.step_mask[q, i].sum())
      ends = sum(t in (STEP, STEP2) for t in sol)
      assert int(np.asarray(mask).sum()) == n_steps == ends + (sol[-1] not in (STEP, STEP2))
      steps_seen += n_steps
      np.testing.assert_allclose(out.step_scores[q, i, :n_steps], np.asarray(s[0, :n_steps]),
                                 rtol=1e-4, atol=1e-6)
  assert steps_seen > 2 * len(PROMPTS) * 4 // 2  # several candidates have several steps


def test_delimiter_outside_the_vocabulary_is_refused():
  with pytest.raises(ValueError, match="delimiter_ids"):
    TAGGED.replace(delimiter_ids=(STEP, CFG.vocab_size))
  assert TAGGED.step_delimiters == (TAG,) and REMAPPED.step_delimiters == (STEP, STEP2)
  assert REMAPPED.tag_in_place and not TAGGED.replace(delimiter_ids=(TAG, STEP)).tag_in_place
  assert VerifierConfig.from_dict(REMAPPED.to_dict()) == REMAPPED  # JSON lists back to a tuple


def test_steps_end_at_fused_delimiters_without_a_tag(params):
  """A PRM whose tag is itself one of the delimiters reads the tokens as they are."""
  plain = TAGGED.replace(step_token_id=STEP, delimiter_ids=(STEP, STEP2))
  got, mask = _step_scores(plain, params, *_rows(SOLUTIONS), max_steps=4)
  want, _ = _step_scores(plain.replace(delimiter_ids=()), params, *_rows(SOLUTIONS), max_steps=4)
  assert np.asarray(mask).sum(axis=1).tolist() == [3, 2]  # STEP2 ends steps too
  first = np.asarray(want)[0, :2]  # row 0: STEP at 2 is a step end for both; STEP2 only here
  np.testing.assert_allclose(np.asarray(got)[0, 0], first[0], rtol=1e-6)
