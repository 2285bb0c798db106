"""Revision training data: a question, some incorrect attempts, then a correct one.

Built as PAPER.md ("Revisions") describes, from the policy's own samples:

1. S samples per training question at a raised temperature
   (`sample_revision_examples`; the paper draws 64).
2. Invalid samples are dropped first (`sample_validity`): no parsable final
   answer (`Task.extract_answer` is None), or cut off at the generation limit
   without EOS. `sample_solutions` reports generated tokens with EOS
   included, so a sample that used the whole budget counts as cut off (one
   that wrote EOS as its very last allowed token is dropped too: rare, and
   the safe side).
3. For every correct valid sample (the target) draw k ~ U{0..4} and take k
   distinct incorrect valid samples of the same question at random. When the
   question has fewer than k, all of them are used (the example gets fewer
   attempts than drawn; counted as `examples_short_of_k`). When k > 0, the
   taken attempt with the smallest character edit distance to the target goes
   last (ties: the lower sample index), the others stay in random order.
   (`question_examples`; k = 0 is the bare prompt -> target.) "The closest"
   is read as the closest of the k taken, not of all the question's
   incorrect samples, so the k attempts stay a uniform draw.
4. Rows (`tokenize_examples`): `format.example_ids`, i.e. BOS + prompt, the
   attempts each closed by EOS, then target + EOS, with the loss on the
   target and its EOS only; rows longer than row_len are dropped and counted.
   Attempt and target texts are re-encoded with the tokenizer.

Train / held-out split by question (`split_questions`): every example of a
question lands on one side. Randomness is numpy only and keyed by (seed,
question index), so a question's examples do not depend on the others.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from ttc_jax.revision import format as fmt
from ttc_jax.tasks import Problem, Task
from ttc_jax.train.data import Rows, pack_rows

MAX_ATTEMPTS = fmt.WINDOW  # k ~ U{0..4}: the context never holds more than the window


# ---------------------------------------------------------------- edit distance

def char_edit_distance(a: str, b: str) -> int:
  """Levenshtein distance over characters (insert, delete, substitute: cost 1).

  Bit-parallel (Myers 1999 / Hyyro 2001): one column of the DP table is a
  pair of bit vectors (+1 / -1 vertical deltas) held in Python ints, so a
  100 x 100 pair costs ~100 steps of a few integer ops, not 10^4 Python cells.
  """
  if len(a) < len(b):
    a, b = b, a  # b (the pattern, one bit per character) is the shorter
  m = len(b)
  if m == 0:
    return len(a)
  peq: dict[str, int] = {}
  for i, ch in enumerate(b):
    peq[ch] = peq.get(ch, 0) | (1 << i)
  full = (1 << m) - 1
  top = 1 << (m - 1)
  pv, mv, score = full, 0, m
  for ch in a:
    eq = peq.get(ch, 0)
    xv = eq | mv
    xh = ((((eq & pv) + pv) & full) ^ pv) | eq
    ph = (mv | ~(xh | pv)) & full
    mh = pv & xh
    if ph & top:
      score += 1
    elif mh & top:
      score -= 1
    ph = ((ph << 1) | 1) & full  # | 1: the first row grows by one per text char
    mh = (mh << 1) & full
    pv = (mh | ~(xv | ph)) & full
    mv = ph & xv
  return score


# ---------------------------------------------------------------- examples

@dataclasses.dataclass(frozen=True)
class RevisionExample:
  """One training example. attempts: previous (incorrect) attempts, oldest
  first, the one closest to the target last; target: a correct sample."""

  question: int  # index into the question list the samples were drawn for
  attempts: tuple[str, ...]
  target: str
  drawn_k: int  # the k drawn; > len(attempts) when the question had too few incorrect samples


def sample_validity(task: Task, texts: Sequence[str], num_tokens: Sequence[int],
                    max_new_tokens: int) -> tuple[np.ndarray, np.ndarray]:
  """(parsable, finished) bool [n]: a sample is valid when both hold."""
  parsable = np.array([task.extract_answer(t) is not None for t in texts], bool)
  finished = np.asarray(num_tokens) < max_new_tokens
  return parsable, finished


def question_examples(texts: Sequence[str], correct: Sequence[bool], valid: Sequence[bool],
                      rng: np.random.Generator, *, question: int = 0,
                      max_attempts: int = MAX_ATTEMPTS) -> list[RevisionExample]:
  """The revision examples of one question's samples (pure given the rng state).

  One example per correct valid sample, in sample order; see the module
  docstring for the rule. Draws per target: k, then the chosen incorrect
  samples (a permutation prefix), so the rng stream is fixed by the inputs.
  """
  if not len(texts) == len(correct) == len(valid):
    raise ValueError(f"texts, correct and valid differ in length: "
                     f"{len(texts)}, {len(correct)}, {len(valid)}")
  if max_attempts < 0:
    raise ValueError(f"max_attempts must be >= 0, got {max_attempts}")
  keep = [i for i in range(len(texts)) if valid[i]]
  targets = [i for i in keep if correct[i]]
  wrong = [i for i in keep if not correct[i]]
  out = []
  for t in targets:
    k = int(rng.integers(0, max_attempts + 1))
    picked = [wrong[j] for j in rng.permutation(len(wrong))[:k]]
    if picked:
      dist = [char_edit_distance(texts[i], texts[t]) for i in picked]
      closest = min(range(len(picked)), key=lambda j: (dist[j], picked[j]))
      picked.append(picked.pop(closest))
    out.append(RevisionExample(question, tuple(texts[i] for i in picked), texts[t], k))
  return out


def examples_from_samples(task: Task, texts: Sequence[Sequence[str]], correct: np.ndarray,
                          num_tokens: np.ndarray, *, max_new_tokens: int, seed: int,
                          max_attempts: int = MAX_ATTEMPTS
                          ) -> tuple[list[RevisionExample], dict]:
  """(examples, stats) of Q questions' graded samples ([Q][n] texts, [Q, n]
  correct and generated-token counts)."""
  examples = []
  n_unparsable = n_cut = n_correct = n_wrong = no_correct = no_wrong = 0
  for q, q_texts in enumerate(texts):
    parsable, finished = sample_validity(task, q_texts, num_tokens[q], max_new_tokens)
    valid = parsable & finished
    ok = np.asarray(correct[q], bool) & valid
    n_unparsable += int(np.sum(~parsable))
    n_cut += int(np.sum(parsable & ~finished))
    n_correct += int(ok.sum())
    n_wrong += int(np.sum(valid & ~ok))
    no_correct += int(not ok.any())
    no_wrong += int(not np.any(valid & ~ok))
    rng = np.random.default_rng([seed, 0, q])
    examples += question_examples(q_texts, ok, valid, rng, question=q,
                                  max_attempts=max_attempts)
  used = np.array([len(e.attempts) for e in examples], np.int64)
  drawn = np.array([e.drawn_k for e in examples], np.int64)
  last_dist = [char_edit_distance(e.attempts[-1], e.target) for e in examples if e.attempts]
  n_samples = int(sum(len(t) for t in texts))
  stats = {
      "questions": len(texts), "samples": n_samples,
      "dropped_invalid_samples": n_unparsable + n_cut, "dropped_unparsable": n_unparsable,
      "dropped_cut_off": n_cut, "correct_samples": n_correct, "incorrect_samples": n_wrong,
      "questions_without_correct": no_correct, "questions_without_incorrect": no_wrong,
      "examples": len(examples),
      "mean_k_drawn": float(drawn.mean()) if len(drawn) else 0.0,
      "mean_k": float(used.mean()) if len(used) else 0.0,
      "k_histogram": {str(k): int(np.sum(used == k)) for k in range(max_attempts + 1)},
      "examples_short_of_k": int(np.sum(used < drawn)),
      "mean_last_attempt_edit_distance": float(np.mean(last_dist)) if last_dist else None,
  }
  return examples, stats


def sample_revision_examples(cfg, params, tokenizer, task: Task, problems: Sequence[Problem],
                             *, samples: int, temperature: float, max_new_tokens: int,
                             seed: int, batch_size: int = 256, progress=None, mesh=None,
                             max_attempts: int = MAX_ATTEMPTS
                             ) -> tuple[list[RevisionExample], dict]:
  """Samples `samples` solutions per problem from the policy at `temperature`
  and builds the revision examples of all of them: (examples, stats)."""
  from ttc_jax.decode import Temperature
  from ttc_jax.evaluation import sample_solutions
  drawn = sample_solutions(cfg, params, tokenizer, task, problems, n=samples,
                           sampler=Temperature(temperature), seed=seed,
                           max_new_tokens=max_new_tokens, batch_size=batch_size,
                           progress=progress, mesh=mesh)
  # A sample that ended at a blank line (few-shot benchmarks) drops it: attempts and
  # targets end as the chains' attempts do, before EOS.
  texts = [[task.solution_text(t) for t in q_texts] for q_texts in drawn.texts]
  examples, stats = examples_from_samples(task, texts, drawn.correct, drawn.num_tokens,
                                          max_new_tokens=max_new_tokens, seed=seed,
                                          max_attempts=max_attempts)
  stats["sample_pass_rate"] = float(drawn.correct.mean()) if drawn.correct.size else 0.0
  return examples, stats


# ---------------------------------------------------------------- split + rows

def split_questions(n_questions: int, held_out_fraction: float,
                    seed: int) -> tuple[np.ndarray, np.ndarray]:
  """(train, held_out) sorted question indices; held_out gets round(fraction * n),
  at least one and at most n - 1 when the fraction is positive."""
  if not 0.0 <= held_out_fraction < 1.0:
    raise ValueError(f"held_out_fraction must be in [0, 1), got {held_out_fraction}")
  n_held = int(round(held_out_fraction * n_questions))
  if held_out_fraction > 0:
    if n_questions < 2:
      raise ValueError(f"a held-out split needs >= 2 questions, got {n_questions}")
    n_held = min(max(n_held, 1), n_questions - 1)
  perm = np.random.default_rng([seed, 1]).permutation(n_questions)
  return np.sort(perm[n_held:]), np.sort(perm[:n_held])


def tokenize_examples(task: Task, tokenizer, problems: Sequence[Problem],
                      examples: Sequence[RevisionExample], row_len: int,
                      window: int = fmt.WINDOW) -> Rows:
  """Rows (`ttc_jax.train.data.Rows`) of `examples`, in order; rows longer than
  row_len are dropped and counted in n_dropped."""
  from ttc_jax.evaluation import prompt_ids
  prompts = {q: prompt_ids(task, tokenizer, problems[q]) for q in {ex.question for ex in examples}}
  return pack_rows([fmt.example_ids(prompts[ex.question],
                                    [tokenizer.encode(a) for a in ex.attempts],
                                    tokenizer.encode(ex.target), tokenizer.eos_id, window)
                    for ex in examples], row_len, tokenizer.pad_id)


__all__ = ["MAX_ATTEMPTS", "RevisionExample", "char_edit_distance", "examples_from_samples",
           "question_examples", "sample_revision_examples", "sample_validity",
           "split_questions", "tokenize_examples"]
