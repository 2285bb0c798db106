"""PRM data: exact labels, token targets, contrastive chains, MC rollouts with KV reuse, rows."""

import math
import random

import jax
import numpy as np
import pytest

from tests.conftest import tiny_config
from ttc_jax import evaluation
from ttc_jax.decode import Greedy, Temperature, generate
from ttc_jax.evaluation import Samples, prompt_ids
from ttc_jax.model import init_params
from ttc_jax.tasks import Task, get_task
from ttc_jax.tasks.arithmetic import apply_op, make_problem, parse_answer_line, parse_step
from ttc_jax.tokenizer import build_task_tokenizer
from ttc_jax.verifier.data import (SOURCE_CONTRASTIVE, SOURCE_SAMPLE, build_rows, concat_rows,
                                   contrastive_completions, exact_step_labels,
                                   first_deviation_char, make_verifier_dataset, mc_agreement,
                                   mc_step_labels, rollout_continuations, split_by_question,
                                   step_prefixes)

TASK = get_task("arithmetic")
PROBLEM = make_problem("37+48*3", TASK.config)  # "37+48=85\n85*3=255\nanswer 255\n"


@pytest.fixture(scope="module")
def tokenizer():
  return build_task_tokenizer(TASK, n_samples=200)


@pytest.fixture(scope="module")
def model(tokenizer):
  cfg = tiny_config(vocab_size=tokenizer.vocab_size)
  return cfg, init_params(cfg, jax.random.key(0))


# Hand-made completions for three problems: correct, wrong early/late, truncated, junk.
MC_PROBLEMS = [PROBLEM, make_problem("5-9+12-3", TASK.config), make_problem("7*2", TASK.config)]
MC_COMPLETIONS = [
    [PROBLEM.solution, "37+48=84\n84*3=252\nanswer 252\n", "37+48=85\n85*"],
    ["5-9=-4\n-4+12=8\n8-3=5\nanswer 5\n", "5-9=4\n", "5-9=-4\n-4+12=9\n9-3=6\nanswer 6"],
    ["7*2=14\nanswer 14\n", "", "7*2=14"],
]


# ---------------------------------------------------------------- exact labels


def test_exact_step_labels_on_hand_made_completions():
  assert PROBLEM.solution == "37+48=85\n85*3=255\nanswer 255\n"
  cases = {
      PROBLEM.solution: [1, 1, 1],
      "37+48=84\n84*3=252\nanswer 252\n": [0, 0, 0],  # wrong at step 0
      "37+48=85\n85*3=255\nanswer 254\n": [1, 1, 0],  # wrong answer line
      "37+48=85\n85*3=255\nanswer 255\n1+1=2\n": [1, 1, 1, 0],  # extra step
      "37+48=85\n85*3=255\n": [1, 1],  # answer line missing: the prefix is still on track
      "37+48=85\n85*": [1, 0],  # final unterminated step
      "": [],
  }
  for completion, want in cases.items():
    assert exact_step_labels(TASK, PROBLEM, completion) == [float(w) for w in want], completion


def test_first_deviation_char():
  sol = PROBLEM.solution
  assert first_deviation_char(sol, sol) == -1
  assert first_deviation_char(sol, "37+48=84\n") == 7
  assert first_deviation_char(sol, "37+48=85\n") == len("37+48=85\n")  # a proper prefix
  assert first_deviation_char(sol, sol + "x") == len(sol)  # an extra character
  assert first_deviation_char(sol, "") == 0
  assert first_deviation_char("", "") == -1


# ---------------------------------------------------------------- rows


def _char_ends(tokenizer, body):
  """Decoded length of each completion-token prefix."""
  return [len(tokenizer.decode(body[:k + 1])) for k in range(len(body))]


def test_rows_tokens_step_positions_and_token_targets(tokenizer):
  texts = [PROBLEM.solution, "37+48=84\n84*3=252\nanswer 252\n", "37+48=85\n85*3=255\nanswer 254",
           "37+48=85\n85*3=255\nanswer 255\n1+1=2\n", "37+48=85\n85*"]
  labels = [exact_step_labels(TASK, PROBLEM, t) for t in texts]
  rows = build_rows(TASK, tokenizer, [PROBLEM], [texts], [labels], row_len=64)
  assert len(rows) == len(texts) and rows.n_dropped == 0
  prompt = prompt_ids(TASK, tokenizer, PROBLEM)
  for i, text in enumerate(texts):
    body = tokenizer.encode(text)
    ids = prompt + body  # no EOS: the verifier scores text
    n, p = int(rows.lengths[i]), int(rows.prompt_lengths[i])
    assert (n, p) == (len(ids), len(prompt))
    assert rows.tokens[i, :n].tolist() == ids
    assert (rows.tokens[i, n:] == tokenizer.pad_id).all()
    # one step target per step: on the "\n" that ends it, or on a final unterminated step's last token
    pos = np.flatnonzero(rows.step_mask[i])
    want_pos = [j for j in range(p, n) if ids[j] == tokenizer.newline_id]
    if not text.endswith("\n"):
      want_pos.append(n - 1)
    assert pos.tolist() == want_pos
    np.testing.assert_array_equal(rows.step_targets[i, pos], labels[i])
    np.testing.assert_array_equal(rows.step_exact[i, pos], labels[i])
    # token targets: 1 before the token holding the first deviating character, 0 on it, masked after
    assert not rows.token_mask[i, :p].any() and not rows.token_mask[i, n:].any()
    dev = first_deviation_char(PROBLEM.solution, text)
    ends = _char_ends(tokenizer, body)
    masked = rows.token_targets[i, p:n][rows.token_mask[i, p:n]]
    if dev == -1 or dev >= len(text):  # nothing in the completion deviates (or a proper prefix)
      assert rows.token_mask[i, p:n].all() and (masked == 1).all()
    else:
      k = next(k for k, e in enumerate(ends) if e > dev)  # the token that contains `dev`
      assert (k == 0 or ends[k - 1] <= dev)
      np.testing.assert_array_equal(rows.token_mask[i, p:n], np.arange(len(body)) <= k)
      np.testing.assert_array_equal(masked, [1.0] * k + [0.0])
    assert rows.final_correct[i] == TASK.grade(PROBLEM, text)
  assert rows.final_correct.tolist() == [True, False, False, False, False]
  assert (rows.source == SOURCE_SAMPLE).all() and (rows.question_index == 0).all()


def test_token_target_zero_is_on_the_deviating_digit(tokenizer):
  text = "37+48=84\n84*3=252\nanswer 252\n"  # deviates at char 7 ("4" of "84")
  rows = build_rows(TASK, tokenizer, [PROBLEM], [[text]],
                    [[exact_step_labels(TASK, PROBLEM, text)]], row_len=64)
  p = int(rows.prompt_lengths[0])
  zero = np.flatnonzero(rows.token_mask[0] & (rows.token_targets[0] == 0))
  assert len(zero) == 1
  assert tokenizer.id_to_piece(int(rows.tokens[0, zero[0]])) == "4"
  assert tokenizer.decode(rows.tokens[0, p:zero[0] + 1].tolist()) == "37+48=84"


def test_rows_with_unknown_characters_do_not_crash(tokenizer):
  text = "37+48=8x5\nanswer 85\n"  # "x" is not in the vocabulary
  rows = build_rows(TASK, tokenizer, [PROBLEM], [[text]],
                    [[exact_step_labels(TASK, PROBLEM, text)]], row_len=64)
  assert len(rows) == 1 and rows.step_mask[0].sum() == 2
  assert (rows.token_targets[0][rows.token_mask[0]] == 0).sum() == 1


def test_rows_longer_than_row_len_are_dropped_and_counted(tokenizer):
  texts = ["37+48=85\n", PROBLEM.solution, "37+48=85\n85*3=255\n"]
  labels = [exact_step_labels(TASK, PROBLEM, t) for t in texts]
  lengths = [len(prompt_ids(TASK, tokenizer, PROBLEM) + tokenizer.encode(t)) for t in texts]
  row_len = sorted(lengths)[1]  # keeps the two shortest
  rows = build_rows(TASK, tokenizer, [PROBLEM], [texts], [labels], row_len=row_len)
  assert rows.n_dropped == 1 and len(rows) == 2 and rows.tokens.shape == (2, row_len)
  assert rows.lengths.tolist() == [lengths[0], lengths[2]]
  with pytest.raises(ValueError, match="labels"):
    build_rows(TASK, tokenizer, [PROBLEM], [texts], [[[1.0]] * 3], row_len=64)


def test_split_by_question_keeps_questions_together_and_concat(tokenizer):
  problems = TASK.test_problems()[:20]
  texts = [[p.solution, p.solution.replace("\n", "0\n", 1)] for p in problems]
  labels = [[exact_step_labels(TASK, p, t) for t in ts] for p, ts in zip(problems, texts)]
  a = build_rows(TASK, tokenizer, problems, texts, labels, row_len=128)
  chains = [contrastive_completions(TASK, p, random.Random(q), copies=2)
            for q, p in enumerate(problems)]
  chain_labels = [[exact_step_labels(TASK, p, t) for t in ts] for p, ts in zip(problems, chains)]
  b = build_rows(TASK, tokenizer, problems, chains, chain_labels, row_len=128,
                 source=SOURCE_CONTRASTIVE)
  rows = concat_rows([a, b])
  assert len(rows) == len(a) + len(b) and set(rows.source) == {SOURCE_SAMPLE, SOURCE_CONTRASTIVE}
  train, held = split_by_question(rows, 0.25, seed=1)
  assert len(train) + len(held) == len(rows)
  q_train, q_held = set(train.question_index.tolist()), set(held.question_index.tolist())
  assert not q_train & q_held and len(q_held) == 5 and len(q_train | q_held) == 20
  again, _ = split_by_question(rows, 0.25, seed=1)
  np.testing.assert_array_equal(again.tokens, train.tokens)
  # every row of a held-out question went with it
  for q in q_held:
    assert (held.question_index == q).sum() == (rows.question_index == q).sum()


# ---------------------------------------------------------------- contrastive chains


@pytest.mark.parametrize("reverse", [False, True])
def test_contrastive_chains_are_wrong_exactly_at_the_corrupted_step(reverse):
  task = get_task("arithmetic", reverse_digits=reverse)
  rng = random.Random(0)
  n_checked = 0
  for problem in task.test_problems()[::25]:
    chains = contrastive_completions(task, problem, rng, copies=3)
    assert 1 <= len(chains) <= 3 and len(set(chains)) == len(chains)
    ref_lines = problem.solution.splitlines()
    for text in chains:
      lines = text.splitlines()
      assert len(lines) == len(ref_lines) and text.endswith("\n")
      j = next(i for i, (a, b) in enumerate(zip(lines, ref_lines)) if a != b)
      assert j < len(ref_lines) - 1  # a step, not the answer line
      assert task.first_wrong_step(problem, text) == j
      assert not task.grade(problem, text)
      steps = [parse_step(line, reverse) for line in lines[:-1]]
      ref_steps = [parse_step(line, reverse) for line in ref_lines[:-1]]
      assert steps[:j] == ref_steps[:j]
      # the corrupted step: same operands, one digit of its result changed
      wrong, want = steps[j][3], ref_steps[j][3]
      assert steps[j][:3] == ref_steps[j][:3] and wrong != want
      assert (wrong < 0) == (want < 0) and len(str(abs(wrong))) == len(str(abs(want)))
      assert sum(x != y for x, y in zip(str(abs(wrong)), str(abs(want)))) == 1
      # later steps continue correctly from the wrong value
      for prev, step in zip(steps[j:], steps[j + 1:]):
        left, op, right, result = step
        assert left == prev[3] and result == apply_op(left, op, right)
      assert parse_answer_line(lines[-1], reverse) == steps[-1][3]
      n_checked += 1
  assert n_checked >= 40


def test_contrastive_needs_the_arithmetic_task():
  class OtherTask(Task):
    name, difficulty_keys = "other", ()
    prompt = train_problems = test_problems = extract_answer = first_wrong_step = (
        lambda *a: None)

  with pytest.raises(TypeError, match="ArithmeticTask"):
    contrastive_completions(OtherTask(), PROBLEM, random.Random(0))


# ---------------------------------------------------------------- MC labels


def _jobs():
  """(question, sample, step, prefix text) in rollout_continuations' job order."""
  return [(q, s, i, prefix) for q, texts in enumerate(MC_COMPLETIONS)
          for s, text in enumerate(texts)
          for i, prefix in enumerate(step_prefixes(text)[:len(TASK.split_steps(text)) - 1])]


def _reference_continuations(cfg, params, tokenizer, sampler, seed, rollouts, max_new):
  """Continuations WITHOUT KV reuse: generate from BOS + prompt + encode(prefix text)."""
  jobs = _jobs()
  prompts, streams = [], []
  for j, (q, _, _, prefix) in enumerate(jobs):
    for r in range(rollouts):
      prompts.append(prompt_ids(TASK, tokenizer, MC_PROBLEMS[q]) + tokenizer.encode(prefix))
      streams.append(j * rollouts + r)
  out = generate(cfg, params, prompts, max_new_tokens=max_new, sampler=sampler, seed=seed,
                 stop_tokens=[tokenizer.eos_id], pad_id=tokenizer.pad_id, row_streams=streams)
  tokens, lengths = np.asarray(out.tokens), np.asarray(out.lengths)
  texts = [tokenizer.decode(tokens[i, :lengths[i]].tolist()) for i in range(len(prompts))]
  return {(q, s, i): texts[j * rollouts:(j + 1) * rollouts]
          for j, (q, s, i, _) in enumerate(jobs)}


@pytest.mark.parametrize("sampler", [Greedy(), Temperature(1.0)])
def test_rollouts_with_kv_reuse_equal_generation_from_the_prefix_text(model, tokenizer, sampler):
  cfg, params = model
  rollouts, max_new, seed = 2, 12, 3
  want = _reference_continuations(cfg, params, tokenizer, sampler, seed, rollouts, max_new)
  # batch 5: batches straddle jobs and prefill groups (3 completions each); the last is padded
  got = rollout_continuations(cfg, params, tokenizer, TASK, MC_PROBLEMS, MC_COMPLETIONS,
                              rollouts=rollouts, sampler=sampler, seed=seed,
                              max_new_tokens=max_new, batch_size=5)
  assert len(want) == 12 and len(want) * rollouts % 5  # the test really pads a batch
  for q, texts in enumerate(MC_COMPLETIONS):
    for s, text in enumerate(texts):
      assert len(got[q][s]) == max(0, len(TASK.split_steps(text)) - 1)
      for i, conts in enumerate(got[q][s]):
        assert conts == want[(q, s, i)], (q, s, i)
  if isinstance(sampler, Temperature):  # distinct row streams: rollouts of a prefix differ
    assert sum(len(set(c)) > 1 for c in want.values()) > len(want) // 2

  labels = mc_step_labels(cfg, params, tokenizer, TASK, MC_PROBLEMS, MC_COMPLETIONS,
                          rollouts=rollouts, sampler=sampler, seed=seed, max_new_tokens=max_new,
                          batch_size=5)
  for q, (problem, texts) in enumerate(zip(MC_PROBLEMS, MC_COMPLETIONS)):
    for s, text in enumerate(texts):
      prefixes = step_prefixes(text)
      expect = [np.mean([TASK.grade(problem, prefixes[i] + c) for c in want[(q, s, i)]])
                for i in range(len(got[q][s]))]
      if TASK.split_steps(text):
        expect.append(float(TASK.grade(problem, text)))  # the last step: its own correctness
      assert labels[q][s] == pytest.approx(expect)
      if isinstance(sampler, Greedy):
        assert set(labels[q][s]) <= {0.0, 1.0}
  assert labels[0][0][-1] == 1.0 and labels[2][1] == []


def test_rollouts_are_deterministic_and_independent_of_batch_size(model, tokenizer):
  cfg, params = model
  # the shapes of the KV-reuse test (batch 5, 12 new tokens) reuse its compilations
  common = dict(rollouts=2, sampler=Temperature(1.0), max_new_tokens=12)
  a = rollout_continuations(cfg, params, tokenizer, TASK, MC_PROBLEMS, MC_COMPLETIONS, seed=1,
                            batch_size=5, **common)
  b = rollout_continuations(cfg, params, tokenizer, TASK, MC_PROBLEMS, MC_COMPLETIONS, seed=1,
                            batch_size=64, **common)
  c = rollout_continuations(cfg, params, tokenizer, TASK, MC_PROBLEMS, MC_COMPLETIONS, seed=2,
                            batch_size=64, **common)
  assert a == b and a != c
  assert all(len(runs) == 2 for q in a for s in q for runs in s)


def test_mc_agreement_counts():
  mc = [[[1.0, 0.5, 0.0], [0.25, 0.0]], [[0.0, 0.0]]]
  exact = [[[1.0, 1.0, 0.0], [1.0, 0.0]], [[1.0, 0.0]]]
  got = mc_agreement(mc, exact)
  assert got["n_completions"] == 3 and got["n_steps"] == 7
  assert got["n_exact_correct_steps"] == 4 and got["n_exact_wrong_steps"] == 3
  assert math.isclose(got["step_accuracy_soft_gt_0"], 6 / 7)  # only the (0.0 vs 1) step misses
  assert math.isclose(got["step_accuracy_soft_ge_half"], 5 / 7)  # 0.25 and the 0.0 miss
  assert math.isclose(got["mean_soft_on_exact_correct"], (1 + 0.5 + 0.25 + 0) / 4)
  assert got["mean_soft_on_exact_wrong"] == 0.0
  assert math.isclose(got["first_error_agreement"], 2 / 3)
  with pytest.raises(ValueError):
    mc_agreement([[[1.0]]], [[[1.0, 0.0]]])


# ---------------------------------------------------------------- the dataset


def test_make_verifier_dataset_end_to_end(model, tokenizer, monkeypatch):
  cfg, params = model
  # A random model never writes an answer line: feed hand-made "samples" (incl. unparsable ones).
  texts = [MC_COMPLETIONS[0] + ["37+48=85\n"], MC_COMPLETIONS[1] + ["5-9"], MC_COMPLETIONS[2] + ["x"]]

  def fake_sample_solutions(cfg, params, tokenizer, task, problems, *, n, **kwargs):
    assert n == 4
    correct = np.array([[task.grade(p, t) for t in ts] for p, ts in zip(problems, texts)])
    return Samples(texts, correct, np.zeros(correct.shape, np.int32))

  monkeypatch.setattr(evaluation, "sample_solutions", fake_sample_solutions)
  common = dict(samples=4, rollouts=2, contrastive_copies=2, seed=0, row_len=64,
                max_new_tokens=12, batch_size=5)
  rows, report = make_verifier_dataset(cfg, params, tokenizer, TASK, MC_PROBLEMS, label="both",
                                       **common)
  parsable = [[t for t in ts if TASK.extract_answer(t) is not None] for ts in texts]
  n_kept = sum(map(len, parsable))
  assert report["completions_sampled"] == 12 and report["completions_kept"] == n_kept == 5
  assert report["dropped_unparsable"] == 7
  n_chain = report["contrastive_rows"]["rows"]
  assert len(rows) == n_kept + n_chain and n_chain == 3 * 2
  assert report["mc_agreement"]["n_completions"] == n_kept
  sample = rows.take(np.flatnonzero(rows.source == SOURCE_SAMPLE))
  # "both": MC labels, zeroed where the exact label is 0
  assert (sample.step_targets[sample.step_exact == 0] == 0).all()
  chains = rows.take(np.flatnonzero(rows.source == SOURCE_CONTRASTIVE))
  np.testing.assert_array_equal(chains.step_targets, chains.step_exact)
  assert not chains.final_correct.any()

  exact_rows, exact_report = make_verifier_dataset(cfg, params, tokenizer, TASK, MC_PROBLEMS,
                                                   label="exact", **common)
  assert "mc_agreement" not in exact_report
  np.testing.assert_array_equal(exact_rows.step_targets, exact_rows.step_exact)
  np.testing.assert_array_equal(exact_rows.tokens, rows.tokens)
  with pytest.raises(ValueError, match="label"):
    make_verifier_dataset(cfg, params, tokenizer, TASK, MC_PROBLEMS, label="soft", **common)
