"""Revision chains on a tiny random policy: step 0 is best-of-N, contexts hold exactly
the last `window` attempts, budgets count every attempt, bad settings fail clearly."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.conftest import tiny_config
from ttc_jax.decode import Greedy, Temperature, generate
from ttc_jax.model import init_params
from ttc_jax.revision.chains import RevisionConfig, pack_window, run_chains, step_seed
from ttc_jax.revision.format import context_ids
from ttc_jax.search import SearchConfig
from ttc_jax.search.api import _engine_args
from ttc_jax.search.engine import run_search
from ttc_jax.verifier import VerifierConfig, init_verifier

# A frequent token of this random model plays EOS, so attempts have varied lengths.
EOS, PAD = 15, 0
CFG = tiny_config()
PROMPTS = np.asarray([[1, 5, 6, 0, 0, 0], [1, 9, 9, 9, 9, 0], [1, 4, 0, 0, 0, 0]], np.int32)
LENGTHS = np.asarray([3, 5, 2], np.int32)
ATTEMPT = 6


@pytest.fixture(scope="module")
def policy():
  return init_params(CFG, jax.random.key(0))


def _chains(policy, rcfg, seed=3, streams=(0, 1, 2)):
  out = run_chains(CFG, rcfg, policy, jnp.asarray(PROMPTS), jnp.asarray(LENGTHS),
                   jnp.asarray(seed, jnp.uint32), jnp.asarray(streams, jnp.uint32), eos_id=EOS,
                   pad_id=PAD)
  return jax.device_get(out)


def _attempt(out, row, step):
  return out.tokens[row, step, :out.num_new[row, step]].tolist()


def _content(attempt):
  return attempt[:-1] if attempt and attempt[-1] == EOS else attempt


def test_chains_of_length_one_are_best_of_n(policy):
  p = 4
  chains = _chains(policy, RevisionConfig(n=p, parallel=p, max_attempt_tokens=ATTEMPT))
  scfg = SearchConfig("best_of_n", p, max_solution_tokens=ATTEMPT, max_steps=ATTEMPT,
                      tail_fraction=0)
  vcfg = VerifierConfig(model=CFG, head="value", step_token_id=22)
  vparams = init_verifier(vcfg, jax.random.key(1), policy)
  args = _engine_args(CFG, vcfg, scfg, policy, vparams, PROMPTS, LENGTHS, 3,
                      np.arange(3), EOS)
  bon = jax.device_get(run_search(*args, capacity=PROMPTS.shape[1] + ATTEMPT + 1, eos_id=EOS,
                                  pad_id=PAD))
  np.testing.assert_array_equal(chains.num_new[:, 0], bon.lengths)
  np.testing.assert_array_equal(chains.tokens[:, 0], bon.tokens[:, :ATTEMPT])
  assert len({tuple(_attempt(chains, r, 0)) for r in range(p)}) > 1  # rows really sampled


@pytest.mark.parametrize("window", [4, 2])
def test_each_attempt_continues_exactly_its_last_window_attempts(policy, window):
  """Greedy chains longer than the window: every attempt equals plain greedy
  decoding of `format.context_ids` (prompt + the last `window` attempts)."""
  length = window + 3
  rcfg = RevisionConfig(n=2 * length, parallel=2, max_attempt_tokens=ATTEMPT, window=window,
                        sampler=Greedy())
  out = _chains(policy, rcfg)
  checked_truncated = 0
  for row in range(out.tokens.shape[0]):
    prompt = PROMPTS[row // 2, :LENGTHS[row // 2]].tolist()
    previous = []
    for step in range(length):
      context = context_ids(prompt, previous, EOS, window)
      assert out.context[row, step] == len(context) - len(prompt)
      want = generate(CFG, policy, [context], max_new_tokens=ATTEMPT, sampler=Greedy(),
                      stop_tokens=[EOS])
      assert _attempt(out, row, step) == np.asarray(want.tokens[0, :want.lengths[0]]).tolist()
      previous.append(_content(_attempt(out, row, step)))
      checked_truncated += step > window
  assert checked_truncated > 0
  # the context changes what is generated: not every step repeats the first attempt
  assert any(_attempt(out, 0, s) != _attempt(out, 0, 0) for s in range(1, length))


def test_sampled_steps_use_their_own_seed(policy):
  rcfg = RevisionConfig(n=6, parallel=2, max_attempt_tokens=ATTEMPT, sampler=Temperature(1.0))
  out = _chains(policy, rcfg)
  prompt = PROMPTS[0, :LENGTHS[0]].tolist()
  previous = [_content(_attempt(out, 0, 0))]
  context = context_ids(prompt, previous, EOS)
  # row 0 is prompt stream 0, chain 0: stream 0; step 1 draws with step_seed(seed, 1)
  want = generate(CFG, policy, [context], max_new_tokens=ATTEMPT, sampler=Temperature(1.0),
                  seed=int(step_seed(jnp.asarray(3, jnp.uint32), jnp.asarray(1))),
                  stop_tokens=[EOS], row_streams=[0])
  assert _attempt(out, 0, 1) == np.asarray(want.tokens[0, :want.lengths[0]]).tolist()
  assert int(step_seed(jnp.asarray(3, jnp.uint32), jnp.asarray(0))) == 3


def test_budget_counts_every_attempt_and_context(policy):
  rcfg = RevisionConfig(n=6, parallel=3, max_attempt_tokens=ATTEMPT)
  out = _chains(policy, rcfg)
  assert out.tokens.shape == (3 * 3, 2, ATTEMPT)
  assert (out.num_new >= 1).all() and (out.num_new <= ATTEMPT).all()
  np.testing.assert_array_equal(out.counters.policy_tokens,
                                (out.context + out.num_new).sum(axis=1))
  np.testing.assert_array_equal(out.context[:, 0], 0)  # the first attempt sees the prompt only
  # the second sees the first, closed by EOS
  np.testing.assert_array_equal(out.context[:, 1], out.num_new[:, 0] + ~out.ended[:, 0])


def test_pack_window_concatenates_attempts_left():
  attempts = jnp.asarray([[[0, 0, 0], [5, 6, 2], [7, 2, 0]],
                          [[1, 2, 0], [0, 0, 0], [3, 3, 3]]])
  lengths = jnp.asarray([[0, 3, 2], [2, 0, 3]])
  packed, total = pack_window(attempts, lengths, pad_id=0)
  np.testing.assert_array_equal(total, [5, 5])
  np.testing.assert_array_equal(packed, [[5, 6, 2, 7, 2, 0, 0, 0, 0],
                                         [1, 2, 3, 3, 3, 0, 0, 0, 0]])


@pytest.mark.parametrize("kw, message", [
    (dict(n=8, parallel=3), "must divide the budget"),
    (dict(n=0, parallel=1), "n must be"),
    (dict(n=4, parallel=2, window=0), "window"),
    (dict(n=4, parallel=2, max_attempt_tokens=0), "max_attempt_tokens"),
])
def test_bad_settings_are_refused(kw, message):
  with pytest.raises(ValueError, match=message):
    RevisionConfig(**kw)


def test_ratio_helpers():
  rcfg = RevisionConfig(n=16, parallel=4)
  assert rcfg.length == 4 and rcfg.context_width == 4 * 113


# ---- selection over chains


def test_hierarchical_weighted_selects_within_chains_then_across():
  from ttc_jax.revision.select import hierarchical_weighted
  # One question, 2 chains x 3 attempts. Within chain 0 answer 0 wins (0.9
  # vs 0.4 vs 0.1); within chain 1 answer 1 wins (0.4 + 0.4 vs 0.2). Across,
  # each winner carries its own score: chain 0's 0.9 beats chain 1's 0.4,
  # although flat weighted voting would pick answer 1 (1.2 vs 1.1).
  ids = np.asarray([[[0, 1, 2], [1, 1, 0]]])
  scores = np.asarray([[[0.9, 0.4, 0.1], [0.4, 0.4, 0.2]]])
  chain, step = hierarchical_weighted(ids, scores)
  # across: chain 0's winner (answer 0, score 0.9) vs chain 1's (answer 1, 0.4)
  assert (chain.tolist(), step.tolist()) == ([0], [0])
  scores[0, 1] = [0.95, 0.95, 0.2]  # chain 1's winner now outscores chain 0's
  chain, step = hierarchical_weighted(ids, scores)
  assert (chain.tolist(), step.tolist()) == ([1], [0])


def test_flat_majority_counts_every_attempt():
  from ttc_jax.revision.select import flat_majority
  ids = np.asarray([[[0, 1, 2], [1, 1, 0]], [[-1, -1, 3], [-1, 4, 4]]])
  chain, step = flat_majority(ids)
  assert chain.tolist() == [0, 1] and step.tolist() == [1, 1]


def test_revised_to_incorrect_and_pass_at_step():
  from ttc_jax.revision.select import pass_at_step, revised_to_incorrect
  correct = np.asarray([[[1, 0, 1, 1], [0, 1, 1, 0]]], bool)
  # correct with a next step: (0,0), (0,2), (1,1), (1,2); next incorrect: (0,0), (1,2)
  assert revised_to_incorrect(correct) == (2, 4)
  np.testing.assert_allclose(pass_at_step(correct), [0.5, 0.5, 1.0, 0.5])
  with pytest.raises(ValueError, match=r"\[Q, P, L\]"):
    pass_at_step(correct[0])
  # incorrect with a next step: (0,1), (1,0); both revised into correct ones
  from ttc_jax.revision.select import revised_to_correct
  assert revised_to_correct(correct) == (2, 2)
  from experiments.probe_revision import probe_report
  texts = np.asarray([[["a", "b", "c", "c"], ["x", "y", "y", "z"]]], object)
  report = probe_report(correct, texts)
  assert report["wrong_to_right"] == 1.0 and report["right_to_wrong"] == 0.5
  assert report["copies_previous"] == round(2 / 6, 4) and report["coverage"] == 1.0


# ---- the host API: chains scored by a verifier


def test_revise_scores_every_attempt_like_best_of_n_scoring(policy):
  from ttc_jax.revision.api import revise
  from ttc_jax.search import search
  vcfg = VerifierConfig(model=CFG, head="value", step_token_id=22)
  vparams = init_verifier(vcfg, jax.random.key(1), policy)
  prompts = [PROMPTS[i, :LENGTHS[i]].tolist() for i in range(3)]
  rcfg = RevisionConfig(n=4, parallel=4, max_attempt_tokens=ATTEMPT)
  out = revise(CFG, policy, vcfg, vparams, prompts, rcfg, eos_id=EOS, pad_id=PAD, seed=3,
               prompt_width=8, max_steps=ATTEMPT)
  # all-parallel revisions are best-of-N: same samples, same scores, same budget
  bon = search(CFG, policy, vcfg, vparams, prompts,
               SearchConfig("best_of_n", 4, max_solution_tokens=ATTEMPT, max_steps=ATTEMPT,
                            tail_fraction=0), eos_id=EOS, pad_id=PAD, seed=3, prompt_width=8)
  np.testing.assert_array_equal(out.tokens, bon.tokens[:, :, :ATTEMPT])
  np.testing.assert_allclose(out.step_scores, bon.step_scores, rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(out.step_mask, bon.step_mask)
  for field in ("generations", "policy_tokens", "verifier_tokens"):
    np.testing.assert_array_equal(getattr(out.budget, field), getattr(bon.budget, field))
  np.testing.assert_allclose(out.budget.policy_flops, bon.budget.policy_flops, rtol=1e-6)
  # chains of 2 x 2: four generations, and the second steps' contexts cost policy tokens
  two = revise(CFG, policy, vcfg, vparams, prompts, RevisionConfig(n=4, parallel=2,
               max_attempt_tokens=ATTEMPT), eos_id=EOS, pad_id=PAD, seed=3, prompt_width=8,
               max_steps=ATTEMPT)
  assert (two.budget.generations == 4).all()
  assert (two.budget.policy_tokens > two.lengths.sum(axis=1)).all()
  with pytest.raises(ValueError, match="needs .* positions"):
    revise(CFG, policy, vcfg, vparams, prompts, RevisionConfig(n=4, parallel=2,
           max_attempt_tokens=60), eos_id=EOS, prompt_width=8)
