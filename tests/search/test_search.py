"""Search invariants on a tiny random policy and verifier (fixed seeds)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.conftest import tiny_config
from ttc_jax.decode import Greedy, Temperature, generate
from ttc_jax.model import init_params
from ttc_jax.search import SearchConfig, engine, search
from ttc_jax.search.api import _engine_args, prepare_prompts
from ttc_jax.search.selection import answer_ids, select
from ttc_jax.verifier import VerifierConfig, init_verifier, step_scores

# Frequent tokens of this random model play the step delimiter and EOS.
STEP, EOS = 22, 15
CFG = tiny_config()
PROMPTS = [[1, 5, 6], [1, 9, 9, 9, 9], [1, 4], [1, 30, 31]]
# tail_fraction=0: one compiled decode / scoring loop keeps this file's compile
# time down; the tail tests below set it.
LIMITS = dict(max_solution_tokens=24, max_step_tokens=8, max_steps=24, tail_fraction=0)


# The one-pass reference scorer, jitted: eager op-by-op execution compiles every
# op for every new shape.
_step_scores = jax.jit(step_scores, static_argnums=0, static_argnames=("max_steps",))


@pytest.fixture(scope="module")
def models():
  policy = init_params(CFG, jax.random.key(0))
  vcfg = VerifierConfig(model=CFG, head="value", step_token_id=STEP)
  return policy, vcfg, init_verifier(vcfg, jax.random.key(1), policy)


def _search(models, prompts=PROMPTS, seed=0, streams=None, **kw):
  policy, vcfg, vparams = models
  scfg = SearchConfig(**{**LIMITS, **kw})
  return search(CFG, policy, vcfg, vparams, prompts, scfg, eos_id=EOS, seed=seed,
                prompt_streams=streams, prompt_width=8)


def _solutions(out):
  return [[out.tokens[q, i, :out.lengths[q, i]].tolist() for i in range(out.tokens.shape[1])]
          for q in range(out.tokens.shape[0])]


def test_beam_n1_m1_at_temperature_zero_is_greedy_decoding(models):
  policy, _, _ = models
  out = _search(models, method="beam", n=1, m=1, sampler=Greedy())
  greedy = generate(CFG, policy, PROMPTS, max_new_tokens=24, sampler=Greedy(), stop_tokens=[EOS])
  for q in range(len(PROMPTS)):
    want = np.asarray(greedy.tokens[q, :greedy.lengths[q]]).tolist()
    assert _solutions(out)[q][0] == want
  assert out.step_mask.sum() > len(PROMPTS)  # several steps per solution were searched


@pytest.mark.parametrize("method", ["beam", "dvts"])
def test_exactly_n_candidates_within_budget(models, method):
  out = _search(models, method=method, n=8, m=2, max_rounds=5)
  assert out.tokens.shape[:2] == (len(PROMPTS), 8)
  assert (out.budget.generations == 8).all()
  assert (out.lengths <= LIMITS["max_solution_tokens"]).all()
  # Never more than N rows sample a step in a round, never more than a solution each.
  assert (out.budget.policy_tokens <= 8 * LIMITS["max_solution_tokens"]).all()
  assert (out.budget.rounds <= 5).all()
  # Each candidate's generated tokens are counted: the spend covers the survivors.
  assert (out.budget.policy_tokens >= out.lengths.max(axis=1)).all()


def test_dvts_with_one_subtree_is_beam_search(models):
  # run_search computes DVTS at m = n once, as beam search (run_search.computation).
  beam = _search(models, method="beam", n=4, m=4)
  dvts = _search(models, method="dvts", n=4, m=4)
  np.testing.assert_array_equal(beam.tokens, dvts.tokens)
  np.testing.assert_array_equal(beam.step_scores, dvts.step_scores)
  np.testing.assert_array_equal(beam.budget.policy_tokens, dvts.budget.policy_tokens)


def test_lookahead_k0_is_beam_search(models):
  beam = _search(models, method="beam", n=4, m=2)
  look = _search(models, method="lookahead", n=4, m=2, k=0)
  np.testing.assert_array_equal(beam.tokens, look.tokens)
  np.testing.assert_array_equal(beam.step_scores, look.step_scores)


def test_lookahead_rollout_changes_the_ranking(models):
  # One round: both sample the same first steps (same seed, streams and
  # positions; rollouts are greedy and draw nothing), so any difference in the
  # kept prefixes comes from ranking by the rollout's end score.
  beam = _search(models, method="beam", n=4, m=2, max_rounds=1)
  look = _search(models, method="lookahead", n=4, m=2, k=2, max_rounds=1)
  assert not np.array_equal(beam.tokens, look.tokens)
  assert (look.budget.generations == 12).all()  # N * (k + 1)
  assert (look.budget.policy_tokens > beam.budget.policy_tokens).all()


@pytest.mark.parametrize("method,extra", [("beam", {}), ("lookahead", {"k": 1}),
                                          ("best_of_n", {})])
def test_search_step_scores_equal_one_pass_rescoring(models, method, extra):
  """The verifier's incremental KV-cached scores (rewound after lookahead) == full re-scoring."""
  _, vcfg, vparams = models
  # Steps as long as a solution: every step ends at a tag, EOS or the solution
  # limit, the places one-pass scoring reads (a step cut at max_step_tokens
  # is a step boundary only search knows about).
  out = _search(models, method=method, n=4, m=2, sampler=Temperature(1.0),
                max_step_tokens=24, **extra)
  for q, prompt in enumerate(PROMPTS):
    for i in range(4):
      sol = out.tokens[q, i, :out.lengths[q, i]].tolist()
      if sol and sol[-1] == EOS:
        sol = sol[:-1]
      row = jnp.asarray([prompt + sol + [0] * (40 - len(prompt) - len(sol))])
      s, mask = _step_scores(vcfg, vparams, row, jnp.asarray([len(prompt)]),
                             jnp.asarray([len(prompt) + len(sol)]), max_steps=24)
      n_steps = int(out.step_mask[q, i].sum())
      assert int(np.asarray(mask).sum()) == n_steps
      np.testing.assert_allclose(out.step_scores[q, i, :n_steps], np.asarray(s[0, :n_steps]),
                                 rtol=1e-4, atol=1e-6)


def test_same_seed_identical_and_other_seed_differs(models):
  a = _search(models, method="beam", n=4, m=2, seed=3)
  b = _search(models, method="beam", n=4, m=2, seed=3)
  c = _search(models, method="beam", n=4, m=2, seed=4)
  np.testing.assert_array_equal(a.tokens, b.tokens)
  np.testing.assert_array_equal(a.step_scores, b.step_scores)
  assert not np.array_equal(a.tokens, c.tokens)


@pytest.mark.parametrize("method", ["beam", "best_of_n"])
def test_batch_equals_one_prompt_at_a_time(models, method):
  batched = _search(models, method=method, n=4, m=2, streams=[10, 11, 12, 13])
  for q, prompt in enumerate(PROMPTS):
    alone = _search(models, [prompt], method=method, n=4, m=2, streams=[10 + q])
    np.testing.assert_array_equal(alone.tokens[0], batched.tokens[q])
    np.testing.assert_allclose(alone.step_scores[0], batched.step_scores[q], rtol=1e-5)


def test_weighted_with_constant_verifier_is_majority_vote(models):
  policy, vcfg, vparams = models
  constant = dict(vparams, head={"w": jnp.zeros_like(vparams["head"]["w"]),
                                 "b": jnp.float32(0.3)})
  out = search(CFG, policy, vcfg, constant, PROMPTS, SearchConfig("best_of_n", 8, **LIMITS),
               eos_id=EOS)
  # "Answer" = the last solution token: a few distinct values per prompt.
  answers = [[str(t[-2]) if len(t) > 1 else None for t in row] for row in _solutions(out)]
  ids = jnp.asarray(answer_ids(answers))
  scores = jnp.asarray(out.scores("last"))
  assert np.allclose(np.asarray(scores)[np.asarray(out.step_mask).any(-1)], 1 / (1 + np.exp(-0.3)))
  np.testing.assert_array_equal(np.asarray(select("weighted", ids, scores)),
                                np.asarray(select("majority", ids, scores)))


@pytest.mark.parametrize("kw,match", [
    (dict(method="beam", n=6, m=4), "not divisible"),
    (dict(method="beam", n=4, m=8), "beam width"),
    (dict(method="lookahead", n=4, m=2, k=-1), "k must be >= 0"),
    (dict(method="beam", n=4, m=2, k=1), "only apply to method 'lookahead'"),
    (dict(method="mcts", n=4), "search method"),
    (dict(method="best_of_n", n=0), "n \\(generations"),
    (dict(method="beam", n=4, m=2, round_widths=0), "round_widths must be >= 1"),
    (dict(method="beam", n=4, m=2, tail_fraction=-1), "tail_fraction must be >= 0"),
])
def test_bad_search_configs(kw, match):
  with pytest.raises(ValueError, match=match):
    SearchConfig(**kw)


def test_verifier_with_another_vocabulary_is_rejected(models):
  policy, _, _ = models
  other = CFG.replace(vocab_size=80)
  vcfg = VerifierConfig(model=other, step_token_id=STEP)
  vparams = init_verifier(vcfg, jax.random.key(0))
  with pytest.raises(ValueError, match="share a tokenizer"):
    search(CFG, policy, vcfg, vparams, PROMPTS, SearchConfig("beam", 4, m=2), eos_id=EOS)


def test_prompt_bucket_that_overflows_falls_back_to_the_exact_width(models):
  policy, vcfg, vparams = models
  prompt = [1] + [5, 6, 9] * 23  # 70 tokens: bucket 128 + 24 + 8 + 1 > max_seq_len 128
  small = CFG.replace(max_seq_len=128)
  scfg = SearchConfig("beam", 2, m=2, **LIMITS)
  out = search(small, policy, vcfg.replace(model=small), vparams, [prompt], scfg, eos_id=EOS)
  assert out.tokens.shape[:2] == (1, 2)
  with pytest.raises(ValueError, match="exceeds the model's max_seq_len"):
    search(small, policy, vcfg.replace(model=small), vparams, [prompt * 2], scfg, eos_id=EOS)


# best_of_n, beam and dvts take the settings of a search above (best_of_n has
# no rounds), so their shared-prefix run reuses its compile.
@pytest.mark.parametrize("method,extra", [("best_of_n", {}), ("beam", {}),
                                          ("dvts", {"n": 8, "max_rounds": 5}),
                                          ("lookahead", {"k": 1, "max_rounds": 4})])
def test_shared_prefix_equals_replicated_prompt_kv(models, method, extra):
  """The prompt's KV stored once (the default) gives the replicated search's results."""
  kw = {"method": method, "n": 4, "m": 2, **extra}
  shared = _search(models, shared_prefix=True, **kw)
  copied = _search(models, shared_prefix=False, **kw)
  np.testing.assert_array_equal(shared.tokens, copied.tokens)
  np.testing.assert_array_equal(shared.step_mask, copied.step_mask)
  np.testing.assert_allclose(shared.step_scores, copied.step_scores, rtol=1e-5, atol=1e-6)
  for field in ("policy_tokens", "verifier_tokens", "policy_flops", "rounds"):
    np.testing.assert_array_equal(getattr(shared.budget, field), getattr(copied.budget, field))


def test_round_widths_are_the_capacity_and_its_halvings():
  assert engine.round_widths(160, 3) == (48, 80, 160)
  assert engine.round_widths(112, 3) == (32, 64, 112)
  assert engine.round_widths(48, 3) == (48,)  # too small to narrow
  assert engine.round_widths(160, 1) == (160,)


@pytest.mark.parametrize("k", [0, 1, 2, 3])
def test_suffix_holds_the_rollouts_and_a_whole_last_score_chunk(k):
  """A row's suffix takes k rollout steps, then one more step: its decode
  writes step + 1 slots, its scoring whole SCORE_CHUNK chunks. A write past
  the suffix would be clamped back over real keys (dynamic_update_slice)."""
  for step in range(1, 41):
    scfg = SearchConfig("lookahead", n=4, m=2, k=k, max_step_tokens=step)
    suffix, _ = engine.beam_widths(scfg, prompt_width=16)
    chunks = -(-step // engine.SCORE_CHUNK) * engine.SCORE_CHUNK
    assert suffix >= step * k + max(step + 1, chunks), (step, k, suffix)
    assert suffix % 8 == 0


@pytest.mark.parametrize("method,extra", [("lookahead", {"k": 1})])  # beam's round and rollouts
def test_rounds_over_narrow_caches_equal_whole_capacity_rounds(models, method, extra):
  """Rounds run in phases over histories just wide enough (here 3 widths):
  nothing changes."""
  kw = dict(method=method, n=4, m=2, max_rounds=6, max_solution_tokens=96, **extra)
  scfg = SearchConfig(**{**LIMITS, **kw})
  widths = engine.history_widths(scfg, 8)
  assert len(widths) == 3
  narrow = _search(models, **kw)
  whole = _search(models, round_widths=1, **kw)
  np.testing.assert_array_equal(narrow.tokens, whole.tokens)
  np.testing.assert_allclose(narrow.step_scores, whole.step_scores, rtol=1e-5, atol=1e-6)
  for field in ("policy_tokens", "verifier_tokens", "rounds"):
    np.testing.assert_array_equal(getattr(narrow.budget, field), getattr(whole.budget, field))
  # the last phase ran: some history grew past the middle width minus a step
  assert narrow.lengths.max() > widths[1] - scfg.max_step_tokens


@pytest.mark.parametrize("method,extra", [("lookahead", {"k": 1})])  # beam's round and rollouts
def test_round_with_few_active_rows_runs_them_alone_with_the_same_result(models, method, extra):
  """3 of 64 rows unfinished: with an 8-row tail the round samples and scores them
  alone (rows of 3 prompts, each with its own copy of its prompt's prefix) and
  must give the all-rows round's state."""
  policy, vcfg, vparams = models
  states = []
  for fraction in (0, 8):
    scfg = SearchConfig(**{**LIMITS, "tail_fraction": fraction, "method": method, "n": 16,
                           "m": 4, **extra})
    assert engine.tail_rows(scfg, 64) == (None if fraction == 0 else 8)
    tokens, lengths, _ = prepare_prompts(CFG, vcfg, PROMPTS, scfg, 0, 8)
    pcfg, vcfg_, _, pp, vp, ptok, plen, seed, pstreams, stops = _engine_args(
        CFG, vcfg, scfg, policy, vparams, tokens, lengths, 0, np.arange(4), EOS)
    state, streams = _init_state(pcfg, vcfg_, scfg, pp, vp, ptok, plen, pstreams, pad_id=0)
    run = lambda s: _round(pcfg, vcfg_, scfg, pp, vp, s, streams, seed, stops, eos_id=EOS,
                           pad_id=0)
    state = run(state)  # every row takes a first step (tail or not)
    states.append(jax.device_get(state))
    state = dataclasses.replace(state, finished=jnp.ones(64, bool).at[jnp.array([1, 19, 60])]
                                .set(False))
    states.append(jax.device_get(run(state)))
  for every, tail in ((states[0], states[2]), (states[1], states[3])):
    for field in ("tokens", "lengths", "num_steps", "finished"):
      np.testing.assert_array_equal(getattr(tail, field), getattr(every, field))
    np.testing.assert_allclose(tail.step_scores, every.step_scores, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(tail.counters.policy_tokens, every.counters.policy_tokens)
    np.testing.assert_array_equal(tail.cache.lengths, every.cache.lengths)


@pytest.mark.parametrize("method,extra", [("best_of_n", {}), ("beam", {})])
def test_search_with_tails_equals_search_without(models, method, extra):
  kw = dict(method=method, n=16, m=4, max_rounds=6, **extra)
  tail = _search(models, **{**kw, "tail_fraction": 8})
  whole = _search(models, **kw)
  np.testing.assert_array_equal(tail.tokens, whole.tokens)
  np.testing.assert_array_equal(tail.step_mask, whole.step_mask)
  np.testing.assert_allclose(tail.step_scores, whole.step_scores, rtol=1e-5, atol=1e-6)
  for field in ("policy_tokens", "verifier_tokens", "rounds"):
    np.testing.assert_array_equal(getattr(tail.budget, field), getattr(whole.budget, field))


_init_state = jax.jit(engine.init_state, static_argnums=(0, 1, 2), static_argnames=("pad_id",))
_round = jax.jit(engine.search_round, static_argnums=(0, 1, 2), static_argnames=("eos_id", "pad_id"))


@pytest.mark.parametrize("shared,group_rows", [(True, 1), (False, 8), (True, 64), (False, 2)])
def test_candidates_scored_after_one_prompt_pass_equal_one_pass_over_rows(models, shared,
                                                                        group_rows):
  """`score_candidates` (each prompt fed once, solutions in blocks at fitted
  widths) gives `step_scores` over the prompt + solution rows."""
  _, vcfg, vparams = models
  n, width, rng = 4, 21, np.random.default_rng(0)
  prompts = np.zeros((len(PROMPTS), 8), np.int32)
  for q, p in enumerate(PROMPTS):
    prompts[q, :len(p)] = p
  plens = np.array([len(p) for p in PROMPTS], np.int32)
  solutions = rng.choice(np.array([3, 7, 11, STEP, STEP]), size=(len(PROMPTS) * n, width))
  # Questions of different lengths, so groups run at different widths.
  content = (rng.integers(0, width + 1, size=len(PROMPTS) * n) //
             np.repeat(np.arange(1, len(PROMPTS) + 1), n)).astype(np.int32)
  content[:3] = (0, 1, width)  # empty, one token, full width
  content[-n:] = 0  # a question with no solution tokens at all
  scores, mask = engine.score_candidates(vcfg, vparams, prompts, plens, solutions, content,
                                         n=n, max_steps=12, shared_prefix=shared,
                                         group_rows=group_rows)
  rows = np.zeros((len(content), 8 + width), np.int32)
  for i, c in enumerate(content):
    p = PROMPTS[i // n]
    rows[i, :len(p) + c] = p + solutions[i, :c].tolist()
  row_plens = np.repeat(plens, n)
  want, want_mask = _step_scores(vcfg, vparams, rows, row_plens, row_plens + content, max_steps=12)
  np.testing.assert_array_equal(mask, want_mask)
  assert np.asarray(mask).sum() > len(content)  # several steps per row were scored
  np.testing.assert_allclose(np.where(mask, scores, 0), np.where(want_mask, want, 0),
                             rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("width", [1, 7, 8, 9, 33, 96, 113, 500])
def test_score_widths_cover_the_width_in_few_rungs(width):
  widths = engine.score_widths(width)
  assert widths[-1] >= width and (len(widths) == 1 or widths[-2] < width)
  assert len(widths) <= 8 and all(w % engine.SCORE_CHUNK == 0 for w in widths)
  assert list(widths) == sorted(set(widths))


def test_score_blocks_divide_and_bound_rows():
  assert engine.score_blocks(8, 4, 32) == (8, 4)  # whole questions, 32 rows
  assert engine.score_blocks(6, 4, 16) == (3, 4)  # 4 questions would not divide 6
  assert engine.score_blocks(7, 4, 16) == (1, 4)  # a prime count: one at a time
  assert engine.score_blocks(8, 256, 32) == (1, 32)  # a question in 8 blocks
  assert engine.score_blocks(2, 48, 32) == (1, 24)
  assert engine.score_blocks(2, 37, 32) == (1, 37)  # a prime n: not one row at a time

def test_selection_gives_each_block_one_parent_and_moves_finished_beams_last():
  """Blocks of M slots hold one parent's children (they share its history);
  finished beams keep their candidates but move to the group's last slots."""
  score = jnp.array([0.1, 0.9, 0.5, 0.3, 0.7, 0.2, 0.8, 0.4])
  candidate = jnp.array([True, False, True, True, False, True, True, True])
  parents = engine._select_parents(score, candidate, 8, 2)
  # 6 candidates ranked 6, 2, 7, 3, 5, 0: the top 3 fill two slots each
  assert parents.tolist() == [6, 6, 2, 2, 7, 7, 1, 4]
  first, keep = engine._block_parents(parents, candidate, 2)
  assert first.tolist() == [6, 2, 7, 1] and keep.tolist() == [True, True, True, False]
  candidate = candidate.at[0].set(False)  # 5 candidates: the third parent gets one slot
  parents = engine._select_parents(score, candidate, 8, 2)
  assert parents.tolist() == [6, 6, 2, 2, 7, 0, 1, 4]
  assert engine._block_parents(parents, candidate, 2)[1].tolist() == [True, True, True, False]
  # two groups (DVTS subtrees of 4): each keeps its best, finished slots last
  parents = engine._select_parents(score, candidate, 4, 4)
  assert parents.tolist() == [2, 2, 0, 1, 6, 6, 6, 4]
