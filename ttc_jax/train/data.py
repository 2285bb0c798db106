"""Tokenised, length-bucketed training rows and a deterministic batch plan.

A row is  BOS + prompt + solution + EOS, right-padded with pad_id. The loss
mask marks the tokens to be *predicted*: the solution tokens and the EOS (so
the model learns to stop); prompt, BOS and padding are never targets. The
prompt and the solution are encoded separately and concatenated, exactly the
way decoding later feeds BOS + encode(prompt) and samples the solution.

Batches are a pure function of (seed, batch_size, step): the rows of epoch e
are permuted by `np.random.default_rng([seed, e])`, cut into windows of
`sort_window` batches, each window sorted by length (stable, so ties keep the
random order) and split into batches, and the batch order of the epoch is
shuffled again. Each batch is padded to the smallest bucket length that fits
its longest row. Sorting within windows keeps padding low (the arithmetic
rows are 19-111 tokens, mean ~56) at a handful of static shapes, one compile
each. A resumed run only needs the step number to know its data position.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any, Sequence

import numpy as np

from ttc_jax.tasks import Problem, Task, get_task
from ttc_jax.tasks.spec import DatasetSpec


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """What a preset trains on.

  task, task_options: `get_task(task, **dict(task_options))`.
  n_train_problems: size of the training set: the first n problems of the
    task's training stream `data_seed`; more steps than one epoch re-permute.
  n_eval_problems: held-out problems for the eval loss: the next ones of the
    same stream (so never a training row, and never a test question).
  tokenizer_vocab_size, tokenizer_samples, tokenizer_seed: how the task's
    tokenizer is trained (`build_task_tokenizer`) when out_dir has none.
  row_len: the longest row kept (BOS + prompt + solution + EOS); longer rows
    are dropped and counted.
  buckets: padded lengths a batch may take (ascending; the last = row_len).
  sort_window: batches per length-sorted window (1 = no length grouping).
  """

  task: str = "arithmetic"
  task_options: tuple[tuple[str, Any], ...] = ()
  n_train_problems: int = 65536
  n_eval_problems: int = 512
  data_seed: int = 0
  tokenizer_vocab_size: int = 48
  tokenizer_samples: int = 2000
  tokenizer_seed: int = 0
  row_len: int = 128
  buckets: tuple[int, ...] = (32, 48, 64, 80, 96, 128)
  sort_window: int = 32

  def __post_init__(self):
    if not self.buckets or list(self.buckets) != sorted(set(self.buckets)):
      raise ValueError(f"buckets must be strictly ascending, got {self.buckets}")
    if self.buckets[-1] != self.row_len:
      raise ValueError(f"the last bucket ({self.buckets[-1]}) must equal row_len ({self.row_len})")
    if self.n_train_problems <= 0 or self.n_eval_problems < 0 or self.sort_window < 1:
      raise ValueError(f"bad sizes in {self}")

  def make_task(self) -> Task:
    return get_task(self.task, **dict(self.task_options))

  def with_dataset(self, spec: DatasetSpec, task: Task) -> "DataConfig":
    """A copy on a benchmark's task: `spec` (a non-built-in `DatasetSpec`) and the
    task it loaded. Its file paths are recorded absolute (the default data file
    resolved), so the run's sidecar rebuilds the task from any directory."""
    spec = dataclasses.replace(spec, data_path=os.path.abspath(task.data_path),
                               shots_path=spec.shots_path and os.path.abspath(spec.shots_path))
    return dataclasses.replace(self, task=spec.dataset,
                               task_options=tuple(sorted(spec.task_options().items())))

  def to_dict(self) -> dict:
    d = dataclasses.asdict(self)
    d["task_options"] = [list(kv) for kv in self.task_options]
    return d

  @classmethod
  def from_dict(cls, d: dict) -> "DataConfig":
    d = dict(d)
    d["task_options"] = tuple(tuple(kv) for kv in d.get("task_options", ()))
    d["buckets"] = tuple(d["buckets"])
    return cls(**d)


@dataclasses.dataclass(frozen=True)
class Rows:
  """tokens int32 [N, row_len] (pad_id padded); mask bool [N, row_len] (True
  where the token is a prediction target); lengths int32 [N] (real tokens)."""

  tokens: np.ndarray
  mask: np.ndarray
  lengths: np.ndarray
  n_dropped: int = 0

  def __len__(self) -> int:
    return len(self.lengths)


def encode_example(tokenizer, prompt: str, solution: str) -> tuple[list[int], list[bool]]:
  """(ids, target mask) of one example: BOS + prompt + solution + EOS."""
  p = [tokenizer.bos_id] + tokenizer.encode(prompt)
  s = tokenizer.encode(solution) + [tokenizer.eos_id]
  return p + s, [False] * len(p) + [True] * len(s)


def pack_rows(examples: Sequence[tuple[list[int], list[bool]]], row_len: int, pad_id: int) -> Rows:
  """(ids, target mask) examples, in order, as padded rows; longer than row_len: dropped."""
  tokens = np.full((len(examples), row_len), pad_id, np.int32)
  mask = np.zeros((len(examples), row_len), bool)
  lengths = np.zeros((len(examples),), np.int32)
  n = 0
  for ids, target in examples:
    if len(ids) > row_len:
      continue
    tokens[n, :len(ids)] = ids
    mask[n, :len(ids)] = target
    lengths[n] = len(ids)
    n += 1
  return Rows(tokens[:n], mask[:n], lengths[:n], n_dropped=len(examples) - n)


def tokenize_problems(task: Task, tokenizer, problems: list[Problem], row_len: int) -> Rows:
  """Rows for `problems`, in order; rows longer than row_len are dropped."""
  return pack_rows([encode_example(tokenizer, task.prompt(p), p.solution) for p in problems],
                   row_len, tokenizer.pad_id)


def build_rows(data: DataConfig, tokenizer, task: Task | None = None) -> tuple[Rows, Rows]:
  """(train rows, eval rows) of a data config; deterministic."""
  task = task or data.make_task()
  problems = task.train_problems(data.data_seed, data.n_train_problems + data.n_eval_problems)
  train = tokenize_problems(task, tokenizer, problems[:data.n_train_problems], data.row_len)
  evals = tokenize_problems(task, tokenizer, problems[data.n_train_problems:], data.row_len)
  if len(train) == 0:
    raise ValueError(f"every training row is longer than row_len={data.row_len}: raise "
                     "row_len (train_policy --row_len)")
  return train, evals


def scale_buckets(buckets: tuple[int, ...], row_len: int) -> tuple[int, ...]:
  """`buckets` stretched so the last one is row_len: each length scaled by
  row_len / buckets[-1], rounded up to a multiple of 8 (at most row_len)."""
  top = buckets[-1]
  scaled = {min(row_len, max(8, -(-b * row_len // (8 * top)) * 8)) for b in buckets[:-1]}
  return tuple(sorted(scaled | {row_len}))


def bucket_for(length: int, buckets: tuple[int, ...]) -> int:
  for b in buckets:
    if length <= b:
      return b
  raise ValueError(f"length {length} exceeds the largest bucket {buckets[-1]}")


class BatchPlan:
  """The deterministic batch sequence over `rows` for (seed, batch_size).

  `batch(step)` -> (tokens int32 [batch_size, L], mask bool [batch_size, L])
  with L the batch's bucket. Each epoch uses len(rows) // batch_size batches;
  the few rows its permutation leaves over sit out that epoch only.
  """

  def __init__(self, rows: Rows, batch_size: int, seed: int, buckets: tuple[int, ...],
               sort_window: int = 32):
    if batch_size > len(rows):
      raise ValueError(f"batch_size {batch_size} exceeds the {len(rows)} training rows")
    self.rows = rows
    self.batch_size = batch_size
    self.seed = seed
    self.buckets = tuple(buckets)
    self.sort_window = sort_window
    self.batches_per_epoch = len(rows) // batch_size

  @functools.lru_cache(maxsize=2)
  def _epoch(self, epoch: int) -> np.ndarray:
    """Row indices [batches_per_epoch, batch_size] of one epoch, in batch order."""
    rng = np.random.default_rng([self.seed, epoch])
    used = self.batches_per_epoch * self.batch_size
    perm = rng.permutation(len(self.rows))[:used]
    window = self.sort_window * self.batch_size
    for start in range(0, used, window):
      chunk = perm[start:start + window]
      perm[start:start + window] = chunk[np.argsort(self.rows.lengths[chunk], kind="stable")]
    batches = perm.reshape(self.batches_per_epoch, self.batch_size)
    return batches[rng.permutation(self.batches_per_epoch)]

  def indices(self, step: int) -> np.ndarray:
    epoch, i = divmod(step, self.batches_per_epoch)
    return self._epoch(epoch)[i]

  def bucket(self, step: int) -> int:
    return bucket_for(int(self.rows.lengths[self.indices(step)].max()), self.buckets)

  def batch(self, step: int) -> tuple[np.ndarray, np.ndarray]:
    idx = self.indices(step)
    length = bucket_for(int(self.rows.lengths[idx].max()), self.buckets)
    return self.rows.tokens[idx, :length], self.rows.mask[idx, :length]

  def real_tokens(self, step: int) -> int:
    return int(self.rows.lengths[self.indices(step)].sum())


def eval_batches(rows: Rows, batch_size: int, pad_id: int):
  """Yields fixed-shape (tokens, mask) [batch_size, row_len] covering `rows`
  once; the last batch is padded with empty (all-pad, unmasked) rows."""
  n = len(rows)
  for start in range(0, n, batch_size):
    tokens = np.full((batch_size, rows.tokens.shape[1]), pad_id, np.int32)
    mask = np.zeros((batch_size, rows.tokens.shape[1]), bool)
    stop = min(start + batch_size, n)
    tokens[:stop - start] = rows.tokens[start:stop]
    mask[:stop - start] = rows.mask[start:stop]
    yield tokens, mask
