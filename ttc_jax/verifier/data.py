"""PRM (process reward model) training data: labelled solution prefixes as padded rows.

A row is BOS + encode(prompt) + encode(completion), right-padded, with NO EOS
(the verifier scores text, finished or not). Each solution step ends at its
"\\n" token; that position carries the step's label (a final unterminated step
is labelled at its last token). Labels come from:

- the exact step checker (`exact_step_labels`): the arithmetic task evaluates
  left to right, so every step has one right answer;
- Monte-Carlo rollouts (`mc_step_labels`, the paper's / Math-Shepherd's soft
  labels): the fraction of policy continuations from a step's prefix whose
  final answer grades correct. Rollouts reuse the prefix KV: each
  (prompt + completion) row is prefilled once and every prefix fans out from
  that cache;
- contrastive chains (`contrastive_completions`): the reference solution with
  one step result corrupted and the chain continued from the wrong value.

Rows also carry per-token targets for a token-level verifier (correct up to
the first character that deviates from the reference solution).
"""

from __future__ import annotations

import bisect
import dataclasses
import functools
import hashlib
import random
import time
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ttc_jax import evaluation
from ttc_jax.decode.generate import next_power_of_two, round_up
from ttc_jax.decode.ends import SolutionEnds
from ttc_jax.decode.loop import SEGMENT_STEPS, decode_jit
from ttc_jax.decode.samplers import Sampler, Temperature
from ttc_jax.model.cache import KVCache, init_cache
from ttc_jax.model.config import ModelConfig
from ttc_jax.model.transformer import forward_hidden, unembed
from ttc_jax.tasks import Problem, Task
from ttc_jax.tasks.arithmetic import (ArithmeticTask, Step, apply_op, format_answer_line,
                                      format_step, reference_steps)
from ttc_jax.tasks.base import STEP_DELIMITER

SOURCE_SAMPLE = "sample"
SOURCE_CONTRASTIVE = "contrastive"
LABEL_KINDS = ("mc", "exact", "both")
_CAPACITY_MULTIPLE = 64
_MIN_PREFILL_BUCKET = 8
_CONTRASTIVE_TRIES = 20  # draws per wanted copy before giving up on distinct variants


# ---------------------------------------------------------------- rows


@dataclasses.dataclass(frozen=True)
class VerifierRows:
  """R labelled verifier rows of width L (numpy, host side).

  tokens int32 [R, L]: BOS + prompt + completion, pad_id after `lengths`.
  lengths int32 [R]; prompt_lengths int32 [R] (BOS + prompt tokens).
  step_targets f32 [R, L], step_mask bool [R, L]: a step's label (soft MC in
    [0, 1], or exact 0/1) at the token that ends it (its "\\n", or the last
    token of a final unterminated step).
  step_exact f32 [R, L]: the exact 0/1 label at the same positions (for
    evaluating a PRM against ground truth whatever it was trained on).
  token_targets f32 [R, L], token_mask bool [R, L]: 1 on completion tokens
    before the first character deviating from the reference solution, 0 on
    the token holding it, masked after it and outside the completion.
  final_correct bool [R]: the completion's graded final answer.
  question_index int32 [R]: index into the problem list the rows were built from.
  source str [R]: SOURCE_SAMPLE or SOURCE_CONTRASTIVE.
  n_dropped: rows left out for being longer than L (subsets carry 0).
  """

  tokens: np.ndarray
  lengths: np.ndarray
  prompt_lengths: np.ndarray
  step_targets: np.ndarray
  step_mask: np.ndarray
  step_exact: np.ndarray
  token_targets: np.ndarray
  token_mask: np.ndarray
  final_correct: np.ndarray
  question_index: np.ndarray
  source: np.ndarray
  n_dropped: int = 0

  def __len__(self) -> int:
    return len(self.lengths)

  @property
  def row_len(self) -> int:
    return self.tokens.shape[1]

  def take(self, index: np.ndarray) -> "VerifierRows":
    """The rows at `index` [R'] (in that order); n_dropped is reset to 0."""
    index = np.asarray(index, np.int64)
    arrays = {f.name: getattr(self, f.name)[index] for f in dataclasses.fields(self)
              if f.name != "n_dropped"}
    return VerifierRows(**arrays, n_dropped=0)


def empty_row_arrays(rows: int, row_len: int, pad_id: int, source: str) -> dict:
  """`VerifierRows`' arrays for `rows` rows, all pad / zero / unmasked, to fill in place."""
  width = (rows, row_len)
  return dict(
      tokens=np.full(width, pad_id, np.int32),
      lengths=np.zeros((rows,), np.int32), prompt_lengths=np.zeros((rows,), np.int32),
      step_targets=np.zeros(width, np.float32), step_mask=np.zeros(width, bool),
      step_exact=np.zeros(width, np.float32),
      token_targets=np.zeros(width, np.float32), token_mask=np.zeros(width, bool),
      final_correct=np.zeros((rows,), bool), question_index=np.zeros((rows,), np.int32),
      source=np.full((rows,), source, dtype=f"<U{max(1, len(source))}"))


def _array_fields() -> list[str]:
  return [f.name for f in dataclasses.fields(VerifierRows) if f.name != "n_dropped"]


def concat_rows(parts: Sequence[VerifierRows]) -> VerifierRows:
  """Rows of several sets (same width L) in order; n_dropped adds up."""
  if not parts:
    raise ValueError("concat_rows needs at least one VerifierRows")
  widths = {p.row_len for p in parts}
  if len(widths) != 1:
    raise ValueError(f"cannot concatenate rows of different widths {sorted(widths)}")
  arrays = {name: np.concatenate([getattr(p, name) for p in parts]) for name in _array_fields()}
  return VerifierRows(**arrays, n_dropped=sum(p.n_dropped for p in parts))


def split_by_question(rows: VerifierRows, held_out_fraction: float,
                      seed: int = 0) -> tuple[VerifierRows, VerifierRows]:
  """(train, held_out): a random `held_out_fraction` of the questions goes to held_out.

  All rows of a question (samples and contrastive chains) land on the same
  side, so a held-out score measures generalisation to unseen questions.
  """
  if not 0.0 <= held_out_fraction <= 1.0:
    raise ValueError(f"held_out_fraction must be in [0, 1], got {held_out_fraction}")
  questions = np.unique(rows.question_index)
  n_held = int(round(held_out_fraction * len(questions)))
  held = np.random.default_rng(seed).permutation(questions)[:n_held]
  is_held = np.isin(rows.question_index, held)
  return rows.take(np.flatnonzero(~is_held)), rows.take(np.flatnonzero(is_held))


# ---------------------------------------------------------------- exact labels


def first_deviation_char(reference: str, completion: str) -> int:
  """Index of the first character where completion departs from reference; -1 if equal.

  When one text is a prefix of the other, the deviation is at the shorter
  length (a missing or an extra character).
  """
  if reference == completion:
    return -1
  for i, (a, b) in enumerate(zip(reference, completion)):
    if a != b:
      return i
  return min(len(reference), len(completion))


def exact_step_labels(task: Task, problem: Problem, completion: str) -> list[float]:
  """One exact 0/1 label per step of `task.split_steps(completion)`.

  Step i is 1.0 iff it comes before the first wrong step (all 1.0 when there
  is none): a label says whether the prefix ending at that step is on track.
  NaN for every step where the task cannot check steps (`has_step_labels`).
  """
  if not task.has_step_labels:
    return [float("nan")] * len(task.split_steps(completion))
  first_wrong = task.first_wrong_step(problem, completion)
  n = len(task.split_steps(completion))
  return [1.0 if first_wrong == -1 or i < first_wrong else 0.0 for i in range(n)]


# ---------------------------------------------------------------- encoding


@dataclasses.dataclass(frozen=True)
class _Encoded:
  ids: list[int]  # BOS + prompt + completion
  prompt_len: int  # BOS + prompt
  step_ends: list[int]  # per step: index in ids of its last token ("\n" or final token)


class _Newlines:
  """How many newlines each token's text holds: one token for the built-in
  tokenizer's "\n", but real ones fuse them (Llama-3's ".\n", "\n\n").
  Memoised: a row set decodes each distinct token once."""

  def __init__(self, tokenizer):
    self._tokenizer = tokenizer
    self._counts = {tokenizer.newline_id: 1}

  def __call__(self, token: int) -> int:
    if token not in self._counts:
      self._counts[token] = self._tokenizer.decode([token]).count(STEP_DELIMITER)
    return self._counts[token]


def _encode(task: Task, tokenizer, problem: Problem, completion: str,
            newlines: _Newlines | None = None) -> _Encoded:
  """Tokens of one verifier row and where each step ends.

  Prompt and completion are encoded separately, as training and decoding do.
  A step ends at the token holding its newline; a token with several (a
  fused "\n\n") ends several steps.
  """
  newlines = newlines or _Newlines(tokenizer)
  prompt = task.prompt_ids(tokenizer, problem)
  body = tokenizer.encode(completion)
  ends = [len(prompt) + i for i, t in enumerate(body) for _ in range(newlines(t))]
  if len(ends) != completion.count(STEP_DELIMITER):
    raise ValueError(f"{len(ends)} newlines in the tokens of {completion!r}, which holds "
                     f"{completion.count(STEP_DELIMITER)}: the tokenizer must keep every "
                     "newline inside one token's text")
  n_steps = len(task.split_steps(completion))
  if n_steps == len(ends) + 1:  # a final unterminated step ends at the last token
    ends.append(len(prompt) + len(body) - 1)
  if n_steps != len(ends):
    raise ValueError(f"task.split_steps gives {n_steps} steps for {len(ends)} step ends in "
                     f"{completion!r}")
  return _Encoded(prompt + body, len(prompt), ends)


def _deviation_token(tokenizer, body: list[int], completion: str, reference: str) -> int | None:
  """Index in `body` (completion tokens) of the token holding the first deviating character.

  None when nothing in the completion deviates (it equals the reference or is
  a proper prefix of it). Text that does not survive encoding (unknown
  characters) is compared in its decoded form, the text the verifier sees.
  """
  text = tokenizer.decode(body)
  dev = first_deviation_char(reference, text)
  if dev < 0 or dev >= len(text):
    return None
  # Decoded prefix lengths grow with k: the first token whose prefix covers `dev`.
  return bisect.bisect_right(range(len(body)), dev,
                             key=lambda k: len(tokenizer.decode(body[:k + 1])))


def build_rows(task: Task, tokenizer, problems: Sequence[Problem],
               completions_per_question: Sequence[Sequence[str]],
               step_labels_per_question: Sequence[Sequence[Sequence[float]]], row_len: int,
               source: str = SOURCE_SAMPLE) -> VerifierRows:
  """Rows for completions [Q][n_q] with one label per step [Q][n_q][steps].

  Rows are in (question, completion) order; rows longer than row_len are
  dropped and counted. `source` tags every row.
  """
  if not len(problems) == len(completions_per_question) == len(step_labels_per_question):
    raise ValueError(f"{len(problems)} problems, {len(completions_per_question)} completion "
                     f"lists and {len(step_labels_per_question)} label lists")
  built, n_dropped, newlines = [], 0, _Newlines(tokenizer)
  for q, (problem, texts, labels) in enumerate(zip(problems, completions_per_question,
                                                  step_labels_per_question)):
    if len(texts) != len(labels):
      raise ValueError(f"question {q}: {len(texts)} completions but {len(labels)} label lists")
    for text, step_labels in zip(texts, labels):
      enc = _encode(task, tokenizer, problem, text, newlines)
      if len(step_labels) != len(enc.step_ends):
        raise ValueError(f"question {q}: {len(step_labels)} labels for {len(enc.step_ends)} "
                         f"steps of {text!r}")
      if len(enc.ids) > row_len:
        n_dropped += 1
        continue
      built.append((q, problem, text, enc, step_labels))

  r = len(built)
  rows = empty_row_arrays(r, row_len, tokenizer.pad_id, source)
  for i, (q, problem, text, enc, step_labels) in enumerate(built):
    n = len(enc.ids)
    rows["tokens"][i, :n] = enc.ids
    rows["lengths"][i] = n
    rows["prompt_lengths"][i] = enc.prompt_len
    ends = np.asarray(enc.step_ends, np.int64)
    rows["step_targets"][i, ends] = step_labels
    rows["step_mask"][i, ends] = True
    rows["step_exact"][i, ends] = exact_step_labels(task, problem, text)
    body = enc.ids[enc.prompt_len:]
    dev = _deviation_token(tokenizer, body, text, problem.solution)
    stop = enc.prompt_len + (len(body) if dev is None else dev + 1)
    rows["token_targets"][i, enc.prompt_len:stop] = 1.0
    rows["token_mask"][i, enc.prompt_len:stop] = True
    if dev is not None:
      rows["token_targets"][i, stop - 1] = 0.0
    rows["question_index"][i] = q
  rows["final_correct"][:] = task.grade_many([b[1] for b in built], [b[2] for b in built])
  return VerifierRows(**rows, n_dropped=n_dropped)


# ---------------------------------------------------------------- Monte-Carlo labels


@functools.partial(jax.jit, static_argnames=("cfg", "capacity"))
def _prefill(cfg: ModelConfig, params: dict, tokens: jax.Array, *,
             capacity: int) -> tuple[jax.Array, KVCache]:
  """tokens [G, T] into a fresh cache of `capacity` -> (final hidden [G, T, D], cache).

  Hidden states rather than logits: only the few step-end positions need
  logits, and they are unembedded per decode batch (V can be large).
  """
  cache = init_cache(cfg, tokens.shape[0], capacity)
  return forward_hidden(cfg, params, tokens, cache=cache, cache_is_empty=True)


@functools.partial(jax.jit, static_argnames=("cfg",))
def _fan_out(cfg: ModelConfig, params: dict, caches: tuple[KVCache, ...],
             hiddens: tuple[jax.Array, ...], rows: jax.Array,
             prefix_lengths: jax.Array) -> tuple[KVCache, jax.Array]:
  """Decode start for rollout rows: (cache [B] with lengths = prefix_lengths, next logits [B, V]).

  caches/hiddens: the prefilled groups a batch draws from (concatenated);
  rows [B]: a row of that concatenation per rollout row. Positions from the
  prefix length on hold the rest of the completion; decoding overwrites them.
  """
  if len(caches) == 1:
    cache, hidden = caches[0], hiddens[0]
  else:
    cat = lambda xs: jnp.concatenate(xs, axis=0)
    cache = KVCache([cat([c.k[i] for c in caches]) for i in range(cfg.n_layers)],
                    [cat([c.v[i] for c in caches]) for i in range(cfg.n_layers)],
                    cat([c.lengths for c in caches]))
    hidden = cat(hiddens)
  cache = cache.gather_rows(rows).replace(lengths=prefix_lengths)
  last = hidden[rows, prefix_lengths - 1]  # [B, D]: predicts position prefix_length
  return cache, unembed(cfg, params, last[:, None])[:, 0]


@dataclasses.dataclass(frozen=True)
class _Job:
  """Rollouts from one step prefix: `prefix_tokens` tokens of prefilled completion `group_row`."""
  question: int
  sample: int
  step: int
  group_row: int  # index among the completions that need rollouts
  prefix_tokens: int


def rollout_continuations(cfg: ModelConfig, params: dict, tokenizer, task: Task,
                          problems: Sequence[Problem], completions: Sequence[Sequence[str]], *,
                          rollouts: int = 16, sampler: Sampler = Temperature(1.0), seed: int = 0,
                          max_new_tokens: int = 112, batch_size: int = 256,
                          progress: bool = False,
                          ends: SolutionEnds | None = None) -> list[list[list[list[str]]]]:
  """Policy continuations of every step prefix but the last: [question][sample][step][rollout].

  Prefix i is the completion up to and including its i-th "\\n". Each
  (prompt + completion) is prefilled once; its prefixes fan out from that KV
  (`_fan_out`) and decode on device to EOS or max_new_tokens. Rollout r of
  job j (jobs numbered over (question, sample, step)) uses row stream
  j * rollouts + r, so results do not depend on batch_size. Rollout rows run
  in batches of batch_size (the last padded with repeats of its first row);
  completions are prefilled in groups of ceil(batch_size / rollouts), so a
  batch draws from at most two groups. A rollout ends at EOS or, where
  `ends` (default: the task's rule, `evaluation.token_ends`) says so, at a
  blank line, as the policy's samples do.
  """
  if rollouts < 1:
    raise ValueError(f"rollouts must be >= 1, got {rollouts}")
  if max_new_tokens < 0:
    raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
  if len(problems) != len(completions):
    raise ValueError(f"{len(problems)} problems but {len(completions)} completion lists")
  tokenizer.check_matches(cfg.vocab_size)
  if ends is None:
    ends = (evaluation.token_ends(tokenizer, task)[1] if task.ends_at_blank_line
            else SolutionEnds())
  out: list[list[list[list[str]]]] = []
  prefill_ids: list[list[int]] = []  # per completion that needs rollouts: tokens up to its last prefix
  jobs: list[_Job] = []
  newlines = _Newlines(tokenizer)
  for q, (problem, texts) in enumerate(zip(problems, completions)):
    out.append([])
    for s, text in enumerate(texts):
      enc = _encode(task, tokenizer, problem, text, newlines)
      step_ends = enc.step_ends
      out[q].append([[] for _ in step_ends[:-1]])
      if len(step_ends) < 2:
        continue
      prefill_ids.append(enc.ids[:step_ends[-2] + 1])
      jobs += [_Job(q, s, i, len(prefill_ids) - 1, end + 1)
               for i, end in enumerate(step_ends[:-1])]
  if not jobs:
    return out

  longest = max(len(ids) for ids in prefill_ids)
  if longest + max_new_tokens > cfg.max_seq_len:
    raise ValueError(f"a prefix of {longest} tokens + max_new_tokens {max_new_tokens} exceeds "
                     f"the model's max_seq_len {cfg.max_seq_len}")
  width = next_power_of_two(longest, _MIN_PREFILL_BUCKET)
  width = width if width <= cfg.max_seq_len else longest
  buffer_len = next_power_of_two(max_new_tokens)
  # Room for prefix + max_new + the decode loop's scratch slot (loop.py).
  capacity = min(round_up(max(width, longest + buffer_len) + 1, _CAPACITY_MULTIPLE),
                 cfg.max_seq_len + 1)

  n_rows = len(jobs) * rollouts
  batch = max(1, min(batch_size, n_rows))
  group = min(len(prefill_ids), -(-batch // rollouts))  # >= batch rows per group
  groups: dict[int, tuple[KVCache, jax.Array]] = {}

  def prefilled(g: int) -> tuple[KVCache, jax.Array]:
    if g not in groups:
      members = prefill_ids[g * group:(g + 1) * group]
      members = members + [members[0]] * (group - len(members))  # one compiled shape
      tokens = np.full((group, width), tokenizer.pad_id, np.int32)
      for i, ids in enumerate(members):
        tokens[i, :len(ids)] = ids
      hidden, cache = _prefill(cfg, params, jnp.asarray(tokens), capacity=capacity)
      groups[g] = (cache, hidden)
    return groups[g]

  stop_tokens = jnp.asarray([tokenizer.eos_id], jnp.int32)
  max_new = jnp.full((batch,), max_new_tokens, jnp.int32)
  seed_arr = jnp.asarray(seed, jnp.uint32)
  bar = None
  if progress:
    from tqdm import tqdm
    bar = tqdm(total=n_rows, desc="MC rollouts", dynamic_ncols=True)
  for start in range(0, n_rows, batch):
    chunk = list(range(start, min(start + batch, n_rows)))
    padded = chunk + [chunk[0]] * (batch - len(chunk))
    batch_jobs = [jobs[row // rollouts] for row in padded]
    touched = sorted({job.group_row // group for job in batch_jobs})
    for g in [g for g in groups if g < touched[0]]:
      del groups[g]  # jobs run in order: earlier groups are finished
    rows = [(job.group_row // group - touched[0]) * group + job.group_row % group
            for job in batch_jobs]
    prefix_lengths = [job.prefix_tokens for job in batch_jobs]
    cache, next_logits = _fan_out(
        cfg, params, tuple(prefilled(g)[0] for g in touched),
        tuple(prefilled(g)[1] for g in touched), jnp.asarray(rows, jnp.int32),
        jnp.asarray(prefix_lengths, jnp.int32))
    state = decode_jit(
        cfg, params, cache, next_logits, seed=seed_arr,
        row_streams=jnp.asarray(padded, jnp.uint32),  # row = job * rollouts + r
        max_new=max_new, stop_tokens=stop_tokens, sampler=sampler, buffer_len=buffer_len,
        pad_id=tokenizer.pad_id, max_start=round_up(max(prefix_lengths), SEGMENT_STEPS),
        ends=ends)
    tokens, num_new = np.asarray(state.tokens), np.asarray(state.num_new)  # one host copy
    for i, row in enumerate(chunk):
      job = jobs[row // rollouts]
      out[job.question][job.sample][job.step].append(
          tokenizer.decode(tokens[i, :num_new[i]].tolist()))
    if bar is not None:
      bar.update(len(chunk))
  if bar is not None:
    bar.close()
  return out


def step_prefixes(completion: str) -> list[str]:
  """The completion up to and including each of its "\\n" (one per terminated step)."""
  ends = [i for i, ch in enumerate(completion) if ch == STEP_DELIMITER]
  return [completion[:i + 1] for i in ends]


def mc_step_labels(cfg: ModelConfig, params: dict, tokenizer, task: Task,
                   problems: Sequence[Problem], completions: Sequence[Sequence[str]], *,
                   rollouts: int = 16, sampler: Sampler = Temperature(1.0), seed: int = 0,
                   max_new_tokens: int = 112, batch_size: int = 256,
                   progress: bool = False) -> list[list[list[float]]]:
  """Soft Monte-Carlo step labels [question][sample][step] (Math-Shepherd style).

  Step i's label is the fraction of `rollouts` policy continuations from the
  prefix ending at step i whose final answer grades correct; the last step's
  label is the completion's own correctness. See `rollout_continuations`.
  """
  conts = rollout_continuations(cfg, params, tokenizer, task, problems, completions,
                                rollouts=rollouts, sampler=sampler, seed=seed,
                                max_new_tokens=max_new_tokens, batch_size=batch_size,
                                progress=progress)
  # Every rollout (and every completion, for its last step) graded in one call:
  # a slow grader (math-verify) runs its worker pool over all of them.
  pairs = [(problem, prefix + c)
           for problem, texts, per_sample in zip(problems, completions, conts)
           for text, per_step in zip(texts, per_sample)
           for prefix, runs in zip(step_prefixes(text), per_step) for c in runs]
  pairs += [(problem, text) for problem, texts in zip(problems, completions) for text in texts]
  graded = iter(task.grade_many([p for p, _ in pairs], [t for _, t in pairs]))
  rollouts_right = [[[float(np.mean([next(graded) for _ in runs])) for runs in per_step]
                     for per_step in per_sample] for per_sample in conts]
  labels = []
  for texts, per_sample in zip(completions, rollouts_right):
    labels.append([])
    for text, soft in zip(texts, per_sample):
      final = float(next(graded))
      labels[-1].append(soft + [final] if task.split_steps(text) else soft)
  return labels


def _first_index(values: Sequence[float], predicate) -> int:
  return next((i for i, v in enumerate(values) if predicate(v)), -1)


def mc_agreement(mc_labels: Sequence[Sequence[Sequence[float]]],
                 exact_labels: Sequence[Sequence[Sequence[float]]]) -> dict:
  """How well soft MC labels match exact ones (both [question][sample][step]).

  Step accuracies of (soft > 0) and (soft >= 0.5) against the exact label;
  the mean soft label on exactly-correct and exactly-wrong steps; and, per
  completion, whether the first step with soft label 0 is the exact first
  wrong step (-1 = none on both sides counts as agreement).
  """
  soft, exact, first_agree, first_agree_wrong, n_wrong_completions = [], [], 0, 0, 0
  n_completions = 0
  for mc_q, ex_q in zip(mc_labels, exact_labels, strict=True):
    for mc_s, ex_s in zip(mc_q, ex_q, strict=True):
      if len(mc_s) != len(ex_s):
        raise ValueError(f"{len(mc_s)} MC labels vs {len(ex_s)} exact labels for one completion")
      soft += mc_s
      exact += ex_s
      n_completions += 1
      agree = _first_index(mc_s, lambda v: v == 0) == _first_index(ex_s, lambda v: v == 0)
      first_agree += agree
      if 0.0 in ex_s:
        n_wrong_completions += 1
        first_agree_wrong += agree
  soft_a, exact_a = np.asarray(soft, np.float64), np.asarray(exact, np.float64) > 0.5
  mean_or_nan = lambda x: float(x.mean()) if x.size else float("nan")
  return {
      "n_completions": n_completions,
      "n_steps": int(soft_a.size),
      "n_exact_correct_steps": int(exact_a.sum()),
      "n_exact_wrong_steps": int((~exact_a).sum()),
      "step_accuracy_soft_gt_0": mean_or_nan((soft_a > 0) == exact_a),
      "step_accuracy_soft_ge_half": mean_or_nan((soft_a >= 0.5) == exact_a),
      "mean_soft_on_exact_correct": mean_or_nan(soft_a[exact_a]),
      "mean_soft_on_exact_wrong": mean_or_nan(soft_a[~exact_a]),
      "first_error_agreement": first_agree / n_completions if n_completions else float("nan"),
      "first_error_agreement_on_wrong": (first_agree_wrong / n_wrong_completions
                                         if n_wrong_completions else float("nan")),
      "n_exact_wrong_completions": n_wrong_completions,
  }


# ---------------------------------------------------------------- contrastive chains


def _corrupt_digit(value: int, rng: random.Random) -> int:
  """`value` with one decimal digit replaced by a different one (no leading zero, no -0)."""
  digits = str(abs(value))
  pos = rng.randrange(len(digits))
  # A 0 in front would be a leading zero, or turn -d into 0 (a sign change, not a digit change).
  no_zero = pos == 0 and (len(digits) > 1 or value < 0)
  choices = [d for d in "0123456789" if d != digits[pos] and not (no_zero and d == "0")]
  new = int(digits[:pos] + rng.choice(choices) + digits[pos + 1:])
  return -new if value < 0 else new


def _chain_from(steps: Sequence[Step], corrupt: int, wrong: int, reverse: bool) -> str:
  """Solution text whose step `corrupt` states `wrong`; later steps continue from it."""
  lines, value = [], None
  for i, (left, op, right, result) in enumerate(steps):
    if i == corrupt:
      result = wrong
    elif i > corrupt:
      left, result = value, apply_op(value, op, right)
    lines.append(format_step((left, op, right, result), reverse))
    value = result
  lines.append(format_answer_line(value, reverse))
  return "".join(line + STEP_DELIMITER for line in lines)


def contrastive_completions(task: Task, problem: Problem, rng: random.Random,
                            copies: int = 3) -> list[str]:
  """Up to `copies` distinct corrupted reference chains (ArithmeticTask only).

  One digit of one step's result is changed; every later step takes the wrong
  value as its left operand and is computed correctly from it, and the
  answer line states the final (wrong) value. So the first wrong step is
  exactly the corrupted one (checked with task.first_wrong_step): data that
  teaches a verifier to spot the step where a chain goes wrong rather than a
  locally inconsistent line.
  """
  if not isinstance(task, ArithmeticTask):
    raise TypeError(f"contrastive_completions needs an ArithmeticTask, got {type(task).__name__}")
  reverse = task.config.reverse_digits
  steps = reference_steps(problem.question)
  out: list[str] = []
  for _ in range(_CONTRASTIVE_TRIES * copies):
    if len(out) >= copies:
      break
    j = rng.randrange(len(steps))
    text = _chain_from(steps, j, _corrupt_digit(steps[j][3], rng), reverse)
    if text not in out and task.first_wrong_step(problem, text) == j:
      out.append(text)
  return out


# ---------------------------------------------------------------- the dataset


def _derived_seed(seed: int, purpose: str) -> int:
  """A seed for `purpose` unrelated to `seed` itself (uint32).

  The MC rollouts must not reuse the sampling seed: rollout row streams and
  sample row streams overlap as integers and would replay the same draws.
  """
  return int(hashlib.sha256(f"{seed}/{purpose}".encode()).hexdigest()[:8], 16)


def _capped(mc: list[list[list[float]]], exact: list[list[list[float]]]) -> list:
  return [[[m if e > 0 else 0.0 for m, e in zip(ms, es)] for ms, es in zip(mq, eq)]
          for mq, eq in zip(mc, exact)]


def _target_stats(rows: VerifierRows) -> dict:
  targets = rows.step_targets[rows.step_mask]
  exact = rows.step_exact[rows.step_mask]
  mean_or_nan = lambda x: float(x.mean()) if x.size else float("nan")
  return {"rows": len(rows), "steps": int(targets.size),
          "step_target_mean": mean_or_nan(targets),
          "step_target_positive_fraction": mean_or_nan(targets >= 0.5),
          # None where the task has no step checker (NaN labels)
          "step_exact_positive_fraction": None if np.isnan(exact).any() else mean_or_nan(exact),
          "final_correct_fraction": mean_or_nan(rows.final_correct)}


def make_verifier_dataset(cfg: ModelConfig, params: dict, tokenizer, task: Task,
                          problems: Sequence[Problem], *, samples: int = 16, rollouts: int = 16,
                          label: str = "mc", contrastive_copies: int = 0,
                          reference_chains: bool = False, temperature: float = 1.0,
                          seed: int = 0, row_len: int = 128,
                          batch_size: int = 256, max_new_tokens: int = 112,
                          progress: bool = False) -> tuple[VerifierRows, dict]:
  """PRM rows from policy samples (+ optional contrastive chains) and a report.

  Samples `samples` completions per question at `temperature`, drops those
  without a parsable answer (counted), labels steps and builds rows:
  label "exact": exact 0/1 labels; "mc": soft MC labels from `rollouts`
  continuations per prefix at the same temperature; "both": MC labels zeroed
  where the exact label is 0 (MC's value estimate on correct prefixes, no
  credit for lucky recoveries after a real mistake). Rows always carry the
  exact labels in `step_exact`. Contrastive rows use exact labels;
  reference_chains adds each question's reference solution to them (an
  all-correct chain beside its corrupted copies).

  A task without a step checker (`has_step_labels`: MATH, GSM8K) takes
  label "mc" only and no contrastive chains; its rows hold NaN exact labels.
  Samples ended by a blank line lose it (`Task.solution_text`).
  """
  if label not in LABEL_KINDS:
    raise ValueError(f"label must be one of {LABEL_KINDS}, got {label!r}")
  if not task.has_step_labels and (label != "mc" or contrastive_copies):
    raise ValueError(f"{task.name} has no step checker: only label='mc' (Monte-Carlo "
                     "rollouts) and no contrastive chains (they need exact labels)")
  report: dict = {"questions": len(problems), "samples_per_question": samples, "label": label,
                  "rollouts": rollouts if label != "exact" else 0, "temperature": temperature,
                  "seed": seed}
  t0 = time.perf_counter()
  bar = None
  if progress:
    from tqdm import tqdm
    bar = tqdm(total=len(problems) * samples, desc="PRM samples", dynamic_ncols=True)
  sampled = evaluation.sample_solutions(
      cfg, params, tokenizer, task, problems, n=samples, sampler=Temperature(temperature),
      seed=seed, max_new_tokens=max_new_tokens, batch_size=batch_size, progress=bar)
  if bar is not None:
    bar.close()
  report["sample_seconds"] = time.perf_counter() - t0
  kept = [[task.solution_text(t) for t in texts if task.extract_answer(t) is not None]
          for texts in sampled.texts]
  n_kept = sum(len(k) for k in kept)
  report.update(completions_sampled=len(problems) * samples, completions_kept=n_kept,
                dropped_unparsable=len(problems) * samples - n_kept,
                sample_correct_fraction=float(sampled.correct.mean()) if sampled.correct.size
                else float("nan"))

  exact = [[exact_step_labels(task, p, t) for t in texts] for p, texts in zip(problems, kept)]
  if task.has_step_labels:
    flat_exact = np.asarray([v for q in exact for s in q for v in s], np.float64)
    report["exact_steps"] = int(flat_exact.size)
    report["exact_step_positive_fraction"] = (float(flat_exact.mean()) if flat_exact.size
                                              else float("nan"))
    report["fully_correct_fraction"] = (
        float(np.mean([min(s, default=0.0) == 1.0 and len(s) > 0 for q in exact for s in q]))
        if n_kept else float("nan"))
  targets = exact
  if label != "exact":
    t0 = time.perf_counter()
    mc = mc_step_labels(cfg, params, tokenizer, task, problems, kept, rollouts=rollouts,
                        sampler=Temperature(temperature), seed=_derived_seed(seed, "mc"),
                        max_new_tokens=max_new_tokens, batch_size=batch_size, progress=progress)
    report["mc_seconds"] = time.perf_counter() - t0
    if task.has_step_labels:
      report["mc_agreement"] = mc_agreement(mc, exact)
    targets = mc if label == "mc" else _capped(mc, exact)

  rows = build_rows(task, tokenizer, problems, kept, targets, row_len, source=SOURCE_SAMPLE)
  report["sample_rows"] = _target_stats(rows)
  parts = [rows]
  if contrastive_copies > 0 or reference_chains:
    chains = [[p.solution] * reference_chains
              + (contrastive_completions(task, p, random.Random(f"contrastive/{seed}/{q}"),
                                         contrastive_copies) if contrastive_copies else [])
              for q, p in enumerate(problems)]
    # A reference solution is right at every step, checker or not.
    chain_labels = [[[1.0] * len(task.split_steps(t)) if t == p.solution
                     else exact_step_labels(task, p, t) for t in texts]
                    for p, texts in zip(problems, chains)]
    contrastive = build_rows(task, tokenizer, problems, chains, chain_labels, row_len,
                             source=SOURCE_CONTRASTIVE)
    report["contrastive_rows"] = _target_stats(contrastive)
    parts.append(contrastive)
  rows = concat_rows(parts)
  report.update(rows_total=len(rows), rows_dropped_too_long=rows.n_dropped,
                all_rows=_target_stats(rows))
  return rows, report
