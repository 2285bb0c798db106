"""Sampling many solutions per question on device, grading them, pass@k.

`sample_solutions` is the one place that turns (policy, task problems) into
graded completion texts; evaluation, PRM data and search baselines reuse it.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np

from ttc_jax.decode import Greedy, Sampler, generate
from ttc_jax.model import ModelConfig
from ttc_jax.decode.ends import SolutionEnds
from ttc_jax.tasks import Problem, Task


@dataclasses.dataclass
class Samples:
  """Completions of `n` samples for each of Q questions."""
  texts: list[list[str]]  # [Q][n]
  correct: np.ndarray  # [Q, n] bool
  num_tokens: np.ndarray  # [Q, n] generated tokens (EOS included)


def prompt_ids(task: Task, tokenizer, problem: Problem) -> list[int]:
  """The model's input ids for a problem (`Task.prompt_ids`: BOS + the task
  prompt, exactly as training rows start; a chat template where the task asks)."""
  return task.prompt_ids(tokenizer, problem)


def token_ends(tokenizer, task: Task) -> tuple[tuple[int, ...], SolutionEnds]:
  """(the tokens that end a step: every one holding a newline, one for the
  built-in tokenizer, many for real ones (`tokenizer.step_end_ids`); where a
  solution ends besides EOS: at a blank line where `task.ends_at_blank_line`
  (the few-shot datasets), else nowhere)."""
  from ttc_jax.tokenizer import step_end_ids, token_texts
  texts = token_texts(tokenizer)  # once: a real vocabulary takes seconds to scan
  ends = SolutionEnds.from_texts(texts) if task.ends_at_blank_line else SolutionEnds()
  return step_end_ids(tokenizer, texts), ends


def sample_solutions(cfg: ModelConfig, params: dict, tokenizer, task: Task,
                     problems: Sequence[Problem], *, n: int, sampler: Sampler = Greedy(),
                     seed: int = 0, max_new_tokens: int = 112, batch_size: int = 256,
                     progress=None, mesh=None, ends: SolutionEnds | None = None) -> Samples:
  """n completions per problem, batched over (problem, sample) rows.

  Each row's random stream is (question index * n + sample index), so results
  do not depend on `batch_size`. The last batch is padded with repeats of its
  first row to keep one compiled shape. mesh: optional ("data", "model") mesh
  (pass params already sharded with `ttc_jax.sharding.shard_params`).
  ends: where a sample ends besides EOS (default: the task's rule, `token_ends`).
  """
  if n < 1:
    raise ValueError(f"n (samples per question) must be >= 1, got {n}")
  tokenizer.check_matches(cfg.vocab_size)
  if ends is None:
    ends = token_ends(tokenizer, task)[1] if task.ends_at_blank_line else SolutionEnds()
  prompts = [prompt_ids(task, tokenizer, p) for p in problems]
  rows = [(q, s) for q in range(len(problems)) for s in range(n)]
  batch_size = max(1, min(batch_size, len(rows)))
  texts = [[""] * n for _ in problems]
  correct = np.zeros((len(problems), n), bool)
  num_tokens = np.zeros((len(problems), n), np.int32)
  for start in range(0, len(rows), batch_size):
    chunk = rows[start:start + batch_size]
    padded = chunk + [chunk[0]] * (batch_size - len(chunk))
    out = generate(cfg, params, [prompts[q] for q, _ in padded], max_new_tokens=max_new_tokens,
                   sampler=sampler, seed=seed, stop_tokens=[tokenizer.eos_id],
                   pad_id=tokenizer.pad_id, row_streams=[q * n + s for q, s in padded],
                   mesh=mesh, ends=ends)
    tokens, lengths = np.asarray(out.tokens), np.asarray(out.lengths)  # one host copy
    chunk_texts = [tokenizer.decode(tokens[i, :lengths[i]].tolist()) for i in range(len(chunk))]
    graded = task.grade_many([problems[q] for q, _ in chunk], chunk_texts)
    for i, (q, s) in enumerate(chunk):
      texts[q][s] = chunk_texts[i]
      correct[q, s] = graded[i]
      num_tokens[q, s] = lengths[i]
    if progress is not None:
      progress.update(len(chunk))
  return Samples(texts, correct, num_tokens)


def pass_at_k(n: int, c: int, k: int) -> float:
  """Unbiased pass@k from n samples with c correct (Chen et al., 2021)."""
  if k > n:
    raise ValueError(f"k={k} > n={n}")
  if n - c < k:
    return 1.0
  return 1.0 - math.prod((n - c - i) / (n - i) for i in range(k))


def coverage(correct: np.ndarray, ks: Sequence[int]) -> dict[int, float]:
  """Mean pass@k over questions for every k <= samples per question."""
  n = correct.shape[1]
  counts = correct.sum(axis=1)
  return {k: float(np.mean([pass_at_k(n, int(c), k) for c in counts])) for k in ks if k <= n}


def pass_rate_histogram(rates: np.ndarray,
                        edges: Sequence[float] = (0.0, 0.25, 0.5, 0.75, 1.0)) -> dict[str, int]:
  """Counts of per-question pass rates: exactly 0, then (a, b] bins up to 1."""
  hist = {"0": int(np.sum(rates == 0))}
  for lo, hi in zip(edges[:-1], edges[1:]):
    hist[f"({lo:g},{hi:g}]"] = int(np.sum((rates > lo) & (rates <= hi)))
  return hist
