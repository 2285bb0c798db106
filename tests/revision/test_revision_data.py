"""Revision training data: edit distance, the example rule, rows, the question split."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ttc_jax.revision import data as rdata
from ttc_jax.revision import format as fmt
from ttc_jax.tasks import get_task
from ttc_jax.tokenizer import build_task_tokenizer


def _reference_distance(a: str, b: str) -> int:
  """Textbook O(len(a) * len(b)) Levenshtein table."""
  prev = list(range(len(b) + 1))
  for i, ca in enumerate(a, 1):
    cur = [i]
    for j, cb in enumerate(b, 1):
      cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
    prev = cur
  return prev[-1]


# ---------------------------------------------------------------- edit distance

@pytest.mark.parametrize("a, b, d", [
    ("", "", 0), ("abc", "", 3), ("", "ab", 2), ("abc", "abc", 0), ("kitten", "sitting", 3),
    ("flaw", "lawn", 2), ("intention", "execution", 5), ("ab", "ba", 2),
    ("1+2=3\nanswer 3\n", "1+2=4\nanswer 4\n", 2), ("a" * 100, "b" * 100, 100),
    ("x" * 70 + "y", "x" * 70, 1),  # past 64 characters (one machine word)
])
def test_edit_distance_known_pairs(a, b, d):
  assert rdata.char_edit_distance(a, b) == d
  assert rdata.char_edit_distance(b, a) == d


@given(st.text(alphabet="0123456789+-*=\nanswer ", max_size=150),
       st.text(alphabet="0123456789+-*=\nanswer ", max_size=150))
def test_edit_distance_matches_the_table(a, b):
  assert rdata.char_edit_distance(a, b) == _reference_distance(a, b)


# ---------------------------------------------------------------- the example rule

TARGET = "3+4=7\nanswer 7\n"
# Incorrect attempts and their distances to TARGET.
WRONG = {
    "3+4=8\nanswer 8\n": 2,
    "3+4=12\nanswer 12\n": 4,
    "3*4=12\nanswer 12\n": 5,
    "3-4=-1\nanswer -11\n": 6,
    "3*4=12\n12+5=17\nanswer 17\n": 11,
}


def test_hand_made_distances_are_as_stated():
  for text, d in WRONG.items():
    assert rdata.char_edit_distance(text, TARGET) == d


class ScriptedRng:
  """Stands in for np.random.Generator: k values and permutations in order."""

  def __init__(self, ks, perms):
    self.ks, self.perms = list(ks), [list(p) for p in perms]

  def integers(self, low, high):
    assert (low, high) == (0, rdata.MAX_ATTEMPTS + 1)  # U{0..4}, inclusive
    return self.ks.pop(0)

  def permutation(self, n):
    perm = self.perms.pop(0)
    assert sorted(perm) == list(range(n))
    return np.array(perm)


def _samples():
  """One question: a correct sample, five incorrect ones (ordered far -> close),
  an unparsable near-copy of the target and a cut-off correct one."""
  wrong = sorted(WRONG, key=WRONG.get, reverse=True)
  texts = [TARGET] + wrong + ["3+4=7\nanswer", TARGET]
  correct = [True] + [False] * 5 + [False, True]
  valid = [True] * 6 + [False, False]
  return texts, correct, valid, wrong


def test_closest_incorrect_goes_last_others_keep_random_order():
  texts, correct, valid, wrong = _samples()
  # k = 4: the permutation picks wrong[4], wrong[0], wrong[2], wrong[1]
  # (distances 2, 11, 5, 6); the closest (wrong[4]) moves to the end.
  rng = ScriptedRng([4], [[4, 0, 2, 1, 3]])
  (ex,) = rdata.question_examples(texts, correct, valid, rng, question=7)
  assert ex.question == 7 and ex.target == TARGET and ex.drawn_k == 4
  assert ex.attempts == (wrong[0], wrong[2], wrong[1], wrong[4])
  dist = [WRONG[a] for a in ex.attempts]
  assert dist[-1] == min(dist) == 2
  # k = 2 picking two far ones: the closer of the two goes last.
  (ex,) = rdata.question_examples(texts, correct, valid, ScriptedRng([2], [[1, 3, 0, 2, 4]]))
  assert ex.attempts == (wrong[1], wrong[3])  # distances 6 then 4


def test_k_zero_is_the_bare_prompt():
  texts, correct, valid, _ = _samples()
  (ex,) = rdata.question_examples(texts, correct, valid, ScriptedRng([0], [[0, 1, 2, 3, 4]]))
  assert ex.attempts == () and ex.drawn_k == 0


def test_fewer_incorrect_than_k_uses_all_of_them():
  texts = [TARGET, "3+4=8\nanswer 8\n", "3*4=12\nanswer 12\n"]
  (ex,) = rdata.question_examples(texts, [True, False, False], [True] * 3,
                                  ScriptedRng([4], [[1, 0]]))
  assert ex.drawn_k == 4 and ex.attempts == ("3*4=12\nanswer 12\n", "3+4=8\nanswer 8\n")


def test_invalid_samples_are_dropped_and_rule_holds_under_real_rng():
  texts, correct, valid, wrong = _samples()
  ks = set()
  for seed in range(60):
    examples = rdata.question_examples(texts, correct, valid, np.random.default_rng(seed))
    assert len(examples) == 1  # the cut-off correct sample is no target
    (ex,) = examples
    ks.add(len(ex.attempts))
    assert len(ex.attempts) <= fmt.WINDOW and ex.drawn_k == len(ex.attempts)
    assert set(ex.attempts) <= set(wrong)  # never the unparsable near-copy
    assert len(set(ex.attempts)) == len(ex.attempts)
    if ex.attempts:
      assert WRONG[ex.attempts[-1]] == min(WRONG[a] for a in ex.attempts)
  assert ks == {0, 1, 2, 3, 4}


def test_examples_are_deterministic_under_a_seed():
  texts = [TARGET] * 6 + list(WRONG)
  correct = [True] * 6 + [False] * 5
  run = lambda seed: rdata.question_examples(texts, correct, [True] * 11,
                                             np.random.default_rng(seed))
  assert run(3) == run(3)
  assert len(run(3)) == 6
  assert any(run(3) != run(s) for s in (4, 5, 6))


def test_sample_validity_and_stats():
  task = get_task("arithmetic")
  parsable, finished = rdata.sample_validity(
      task, [TARGET, "3+4=7\n", "3+4=7\nanswer 7\n"], [10, 6, 16], max_new_tokens=16)
  assert parsable.tolist() == [True, False, True]
  assert finished.tolist() == [True, True, False]  # used the whole budget: cut off

  texts = [[TARGET, "3+4=8\nanswer 8\n", "3+4=\n", TARGET],  # q0: one unparsable, one cut off
           ["1+1=3\nanswer 3\n", "1+1=5\nanswer 5\n"]]  # q1: no correct sample
  correct = [np.array([True, False, False, True]), np.array([False, False])]
  num_tokens = [np.array([9, 9, 4, 32]), np.array([9, 9])]
  examples, stats = rdata.examples_from_samples(task, texts, correct, num_tokens,
                                                max_new_tokens=32, seed=0)
  assert [e.question for e in examples] == [0]
  assert stats["dropped_invalid_samples"] == 2 and stats["dropped_unparsable"] == 1
  assert stats["dropped_cut_off"] == 1
  assert stats["questions_without_correct"] == 1 and stats["examples"] == 1
  assert stats["correct_samples"] == 1 and stats["incorrect_samples"] == 3
  assert sum(stats["k_histogram"].values()) == 1
  assert stats["mean_k"] == len(examples[0].attempts)


# ---------------------------------------------------------------- rows / split

@pytest.fixture(scope="module")
def task_and_tokenizer():
  task = get_task("arithmetic")
  return task, build_task_tokenizer(task, n_samples=300)


def test_rows_mask_exactly_target_and_eos(task_and_tokenizer):
  task, tok = task_and_tokenizer
  problems = task.train_problems(5, 3)
  wrong = "1+2=4\nanswer 4\n"
  examples = [rdata.RevisionExample(0, (), problems[0].solution, 0),
              rdata.RevisionExample(1, (wrong,), problems[1].solution, 1),
              rdata.RevisionExample(2, (wrong,) * 5, problems[2].solution, 4)]  # > window
  rows = rdata.tokenize_examples(task, tok, problems, examples, row_len=256)
  assert len(rows) == 3 and rows.n_dropped == 0
  for i, ex in enumerate(examples):
    n = rows.lengths[i]
    ids, mask = rows.tokens[i], rows.mask[i]
    target = tok.encode(ex.target) + [tok.eos_id]
    assert mask[:n].sum() == len(target) and mask[n - len(target):n].all()
    assert not mask[n:].any() and (ids[n:] == tok.pad_id).all()
    assert ids[:n][mask[:n]].tolist() == target
    context = ids[:n - len(target)].tolist()
    prompt = [tok.bos_id] + tok.encode(task.prompt(problems[ex.question]))
    assert context[:len(prompt)] == prompt
    kept = ex.attempts[-fmt.WINDOW:]
    assert context.count(tok.eos_id) == len(kept)  # each kept attempt closed by EOS
    if not ex.attempts:  # k = 0: the bare prompt, as the policy sees it
      assert context == prompt
  short = rdata.tokenize_examples(task, tok, problems, examples, row_len=int(rows.lengths[0]))
  assert len(short) == 1 and short.n_dropped == 2


def test_split_by_question_is_disjoint_and_deterministic():
  train, held = rdata.split_questions(50, 0.1, seed=3)
  assert len(held) == 5 and len(train) == 45
  assert sorted(set(train) | set(held)) == list(range(50)) and not set(train) & set(held)
  again = rdata.split_questions(50, 0.1, seed=3)
  assert (again[0] == train).all() and (again[1] == held).all()
  assert rdata.split_questions(3, 0.01, seed=0)[1].size == 1  # at least one held out
  with pytest.raises(ValueError):
    rdata.split_questions(1, 0.5, seed=0)
