"""Sampling + grading invariants and pass@k estimators."""

import itertools
import math

import jax
import numpy as np
import pytest

from tests.conftest import tiny_config
from ttc_jax.decode import Temperature
from ttc_jax.evaluation import coverage, pass_at_k, pass_rate_histogram, sample_solutions
from ttc_jax.model import init_params
from ttc_jax.tasks import get_task
from ttc_jax.tokenizer import build_task_tokenizer


def test_pass_at_k_equals_exhaustive_subset_average():
  for n, c, k in [(5, 2, 1), (5, 2, 3), (6, 0, 2), (6, 6, 4), (7, 3, 5)]:
    subsets = list(itertools.combinations([1] * c + [0] * (n - c), k))
    exact = sum(any(s) for s in subsets) / len(subsets)
    assert math.isclose(pass_at_k(n, c, k), exact, rel_tol=1e-12)
  with pytest.raises(ValueError):
    pass_at_k(3, 1, 4)


def test_coverage_and_histogram():
  correct = np.array([[1, 0, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0]], bool)
  cov = coverage(correct, [1, 2, 4, 8])
  assert set(cov) == {1, 2, 4}  # k beyond the samples is skipped
  assert math.isclose(cov[1], (0.25 + 1 + 0) / 3)
  assert math.isclose(cov[4], 2 / 3)
  hist = pass_rate_histogram(correct.mean(1))
  assert hist == {"0": 1, "(0,0.25]": 1, "(0.25,0.5]": 0, "(0.5,0.75]": 0, "(0.75,1]": 1}


def test_samples_do_not_depend_on_batch_size():
  task = get_task("arithmetic")
  tokenizer = build_task_tokenizer(task, n_samples=300)
  cfg = tiny_config(vocab_size=tokenizer.vocab_size)
  params = init_params(cfg, jax.random.key(0))
  problems = task.test_problems()[:3]
  common = dict(n=3, sampler=Temperature(1.0), seed=5, max_new_tokens=12)
  a = sample_solutions(cfg, params, tokenizer, task, problems, batch_size=9, **common)
  b = sample_solutions(cfg, params, tokenizer, task, problems, batch_size=4, **common)
  assert a.texts == b.texts
  np.testing.assert_array_equal(a.num_tokens, b.num_tokens)
  assert a.correct.shape == (3, 3)
  # grading agrees with the task's grader on the returned texts
  for q, p in enumerate(problems):
    assert [task.grade(p, t) for t in a.texts[q]] == list(a.correct[q])


def test_vocab_mismatch_is_a_clear_error():
  task = get_task("arithmetic")
  tokenizer = build_task_tokenizer(task, n_samples=300)
  cfg = tiny_config(vocab_size=tokenizer.vocab_size + 1)
  params = init_params(cfg, jax.random.key(0))
  with pytest.raises(ValueError, match="vocab"):
    sample_solutions(cfg, params, tokenizer, task, task.test_problems()[:1], n=1)
