"""The revision verifier: an ORM that reads each attempt after the attempts before it.

PAPER.md ("Revisions"): "a separate ORM trained on revision outputs with the
previous attempts in context". Its input for chain c's step t is exactly what
the revision model saw when it wrote that attempt, then the attempt:

    BOS  prompt  attempt_{t-w} EOS ... attempt_{t-1} EOS | attempt_t
    '-------------- context (counted as prompt) ---------'  scored

(w = the chain's window; `ttc_jax.revision.format`). Only the attempt's step
positions are scored; a step of the context never counts.

Two halves:
- on device, `score_in_context` (jitted: `run_score_in_context`) scores every
  attempt of a `ChainResult` that way; `revise(..., in_context=True)` uses it;
- on the host, `chain_rows` turns chains into `VerifierRows` (context as the
  prompt part, the attempt as the completion, labelled with its graded final
  answer) and `sample_rows` runs the revision model's chains on training
  questions to make them; `strip_context` gives the same attempts after the
  question alone (what the base PRM "as is" reads), for the comparison.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ttc_jax.revision import format as fmt
from ttc_jax.revision.chains import ChainResult, RevisionConfig, closed_attempt, pack_window
from ttc_jax.search.engine import (SCORE_GROUP_ROWS, content_length, score_blocks,
                                   score_widths)
from ttc_jax.verifier import model as vmodel
from ttc_jax.verifier.data import (SOURCE_SAMPLE, VerifierRows, empty_row_arrays,
                                   exact_step_labels)
from ttc_jax.verifier.model import VerifierConfig, VerifierState


# ---------------------------------------------------------------- on device

def attempt_contexts(rcfg: RevisionConfig, tokens: jax.Array, num_new: jax.Array, *,
                     eos_id: int, pad_id: int) -> tuple[jax.Array, jax.Array]:
  """Attempts [R, L, A] (num_new [R, L]) -> the previous-attempt slots of every
  step: (closed attempts [R, w + L, slot], lengths [R, w + L]), the first w
  slots empty, so step t's window is slots t .. t + w - 1 (`window_of`)."""
  r, length, a = tokens.shape
  content, _ = content_length(tokens.reshape(r * length, a), num_new.reshape(-1), eos_id,
                              rcfg.ends)
  closed, closed_len = closed_attempt(tokens.reshape(r * length, a), content, eos_id, pad_id,
                                      rcfg.slot)
  w = rcfg.window
  slots = jnp.pad(closed.reshape(r, length, rcfg.slot), ((0, 0), (w, 0), (0, 0)),
                  constant_values=pad_id)
  return slots, jnp.pad(closed_len.reshape(r, length), ((0, 0), (w, 0)))


def window_of(slots: jax.Array, slot_lengths: jax.Array, chain: jax.Array, step: jax.Array,
              window: int, pad_id: int) -> tuple[jax.Array, jax.Array]:
  """The context of attempts (chain [B], step [B]): (tokens [B, window * slot]
  packed left, length [B]), as the chain fed it."""
  which = step[:, None] + jnp.arange(window)[None, :]
  return pack_window(slots[chain[:, None], which], slot_lengths[chain[:, None], which], pad_id)


def _score_block(vcfg: VerifierConfig, vparams: dict, state: VerifierState, context: jax.Array,
                 context_len: jax.Array, attempt: jax.Array, attempt_len: jax.Array, *,
                 shared: bool) -> jax.Array:
  """Feeds each row's context, then scores its attempt -> prefix scores [B, A]."""
  if context.shape[1]:
    state, _ = vmodel.extend(vcfg, vparams, state, context, context_len, suffix_is_empty=shared)
    # The context counts as prompt: the token head's product starts at the attempt.
    state = dataclasses.replace(state, log_prefix=jnp.zeros_like(state.log_prefix))
  _, scores = vmodel.extend(vcfg, vparams, state, attempt, attempt_len,
                            suffix_is_empty=shared and not context.shape[1])
  return scores


def score_in_context(vcfg: VerifierConfig, vparams: dict, rcfg: RevisionConfig,
                     prompts: jax.Array, prompt_lengths: jax.Array, chains: ChainResult, *,
                     eos_id: int, pad_id: int, max_steps: int, shared_prefix: bool = True,
                     group_rows: int = SCORE_GROUP_ROWS) -> tuple[jax.Array, jax.Array]:
  """Step scores of every attempt of `chains` after its own context.

  prompts [Q, W] right-padded (lengths [Q]), the prompts the chains ran on;
  chains: R = Q * P rows of L attempts. Attempt (row r, step t) is row
  r * L + t of the output, as `revise` orders candidates. The prompt goes
  through the verifier once (its KV shared by the prompt's rows with
  `shared_prefix`); each block of about `group_rows` attempts (one or more
  whole questions, or part of one: `score_blocks`) fans out from it, feeds
  its contexts at the narrowest of `score_widths` that holds the longest
  (width 0 when the block has none: step 0 attempts), then its attempts.
  Within a question attempts are sorted by context length, so blocks hold
  similar ones. Returns (scores [R * L, max_steps], mask), equal to
  `vmodel.step_scores` over prompt + context + attempt rows with prompt +
  context as the prompt part (tested).
  """
  q = prompts.shape[0]
  r, length, a = chains.tokens.shape
  n = r * length // q
  flat = chains.tokens.reshape(r * length, a)
  content, _ = content_length(flat, chains.num_new.reshape(-1), eos_id, rcfg.ends)
  slots, slot_lengths = attempt_contexts(rcfg, chains.tokens, chains.num_new, eos_id=eos_id,
                                         pad_id=pad_id)
  widths = (0,) + score_widths(rcfg.context_width)
  capacity = widths[-1] + a
  prompt_state = vmodel.start(vcfg, vparams, prompts, prompt_lengths, prompts.shape[1])
  per_question = chains.context.reshape(q, n)
  by_context = jnp.argsort(-per_question, axis=1, stable=True) + (jnp.arange(q) * n)[:, None]
  questions = jnp.argsort(-jnp.max(per_question, axis=1), stable=True)
  q_block, r_block = score_blocks(q, n, group_rows)
  block_questions = jnp.repeat(questions.reshape(-1, 1, q_block), n // r_block, axis=1)
  block_questions = block_questions.reshape(-1, q_block)
  block_rows = by_context[questions].reshape(q // q_block, q_block, n // r_block, r_block)
  block_rows = block_rows.transpose(0, 2, 1, 3).reshape(-1, q_block * r_block)

  def at_width(w: int):
    def run(block_q, context, context_len, attempt, attempt_len):
      state = vmodel.fan_out_state(prompt_state.gather_rows(block_q), r_block, capacity,
                                   shared_prefix)
      return _score_block(vcfg, vparams, state, context[:, :w], context_len, attempt,
                          attempt_len, shared=shared_prefix)
    return run

  def score(_, block):
    block_q, rows = block
    context, context_len = window_of(slots, slot_lengths, rows // length, rows % length,
                                     rcfg.window, pad_id)
    context = jnp.pad(context, ((0, 0), (0, widths[-1] - context.shape[1])),
                      constant_values=pad_id)
    fit = jnp.searchsorted(jnp.asarray(widths), jnp.max(context_len))
    return None, jax.lax.switch(fit, [at_width(w) for w in widths], block_q, context,
                                context_len, flat[rows], content[rows])

  _, parts = jax.lax.scan(score, None, (block_questions, block_rows))
  scores = jnp.zeros((r * length, a), jnp.float32).at[block_rows.reshape(-1)].set(
      parts.reshape(r * length, a))
  where = vmodel.step_positions(vcfg, flat, jnp.zeros_like(content), content)
  return vmodel.compact(scores, where, max_steps)


run_score_in_context = jax.jit(score_in_context, static_argnames=(
    "vcfg", "rcfg", "eos_id", "pad_id", "max_steps", "shared_prefix", "group_rows"))


# ---------------------------------------------------------------- host: training rows

def attempt_content(tokens: np.ndarray, num_new: int, eos_id: int) -> list[int]:
  """An attempt's tokens without its closing EOS (if it wrote one)."""
  ids = [int(t) for t in tokens[:num_new]]
  return ids[:-1] if ids and ids[-1] == eos_id else ids


def _step_ends(ids: Sequence[int], newline_id: int) -> list[int]:
  """Indices in `ids` where step scores are read (`vmodel.step_positions`):
  every step tag, and the last token when it is not one."""
  ends = [i for i, t in enumerate(ids) if t == newline_id]
  if ids and ids[-1] != newline_id:
    ends.append(len(ids) - 1)
  return ends


@dataclasses.dataclass(frozen=True)
class Attempt:
  """One graded attempt of a chain, with its context."""
  question: int  # index into the problem list
  chain: int
  step: int
  context: list[int]  # BOS + prompt + the previous attempts the revision model saw
  ids: list[int]  # the attempt without EOS
  text: str
  correct: bool


def graded_attempts(task, tokenizer, problems: Sequence, question_index: Sequence[int],
                    tokens: np.ndarray, num_new: np.ndarray, *, parallel: int,
                    window: int = fmt.WINDOW) -> list[Attempt]:
  """Every attempt of chains [Qb * P, L, A] (num_new [Qb * P, L]) run on the
  questions `question_index` [Qb], graded; contexts rebuilt on the host with
  `format.context_ids` (the chains' own packing, `pack_window`, is tested equal)."""
  from ttc_jax.evaluation import prompt_ids
  eos = tokenizer.eos_id
  out = []
  for row in range(tokens.shape[0]):
    qi = int(question_index[row // parallel])
    problem = problems[qi]
    prompt = prompt_ids(task, tokenizer, problem)
    previous: list[list[int]] = []
    for step in range(tokens.shape[1]):
      ids = attempt_content(tokens[row, step], int(num_new[row, step]), eos)
      text = tokenizer.decode(ids)
      out.append(Attempt(qi, row % parallel, step, fmt.context_ids(prompt, previous, eos, window),
                         ids, text, bool(task.grade(problem, text))))
      previous.append(ids)
  return out


def attempt_rows(task, tokenizer, problems: Sequence, attempts: Sequence[Attempt],
                 row_len: int) -> VerifierRows:
  """`VerifierRows` of graded attempts: prompt part = the context, completion =
  the attempt (no EOS, as every verifier row).

  Labels: `final_correct` is the attempt's graded answer (the ORM target: the
  trainer's "orm" objective puts it on the last step); `step_targets` holds it
  at every step end too (outcome supervision, were the rows trained as a
  PRM); `step_exact` the exact step labels (`exact_step_labels`: NaN where
  the task has no step checker) where the task's step split agrees with the
  token step ends, else the outcome. No token-level targets. Rows longer than
  row_len are dropped and counted.
  """
  kept = [a for a in attempts if len(a.context) + len(a.ids) <= row_len]
  r = len(kept)
  rows = empty_row_arrays(r, row_len, tokenizer.pad_id, SOURCE_SAMPLE)
  for i, a in enumerate(kept):
    ids = a.context + a.ids
    rows["tokens"][i, :len(ids)] = ids
    rows["lengths"][i] = len(ids)
    rows["prompt_lengths"][i] = len(a.context)
    ends = np.asarray(_step_ends(a.ids, tokenizer.newline_id), np.int64) + len(a.context)
    exact = exact_step_labels(task, problems[a.question], a.text)
    rows["step_mask"][i, ends] = True
    rows["step_targets"][i, ends] = float(a.correct)
    rows["step_exact"][i, ends] = exact if len(exact) == len(ends) else float(a.correct)
    rows["final_correct"][i] = a.correct
    rows["question_index"][i] = a.question
  return VerifierRows(**rows, n_dropped=len(attempts) - r)


def sample_attempts(cfg, params: dict, tokenizer, task, problems: Sequence,
                    rcfg: RevisionConfig, *, seed: int = 0, batch_questions: int = 0,
                    progress=None) -> list[Attempt]:
  """Chains of the revision model (cfg, params) on `problems`, every attempt graded.

  Question i samples with random stream i (as run_search); batches of
  `batch_questions` questions (0: about 256 chain rows), the last padded with
  its first question, all at one prompt width: one compile. progress: a tqdm
  bar advanced by questions.
  """
  from ttc_jax.decode.generate import pad_prompts
  from ttc_jax.evaluation import prompt_ids
  from ttc_jax.revision.chains import run_chains
  prompts = [prompt_ids(task, tokenizer, p) for p in problems]
  width = max(len(p) for p in prompts)  # exact: positions are tight at 4 long attempts
  need = width + rcfg.context_width + rcfg.max_attempt_tokens + 1
  if need > cfg.max_seq_len + 1:
    raise ValueError(f"prompts of {width} + {rcfg.window} attempts of {rcfg.slot} + an attempt "
                     f"of {rcfg.max_attempt_tokens} need {need} positions; the revision model "
                     f"allows {cfg.max_seq_len + 1}")
  size = min(len(problems), batch_questions or max(1, 256 // rcfg.parallel))
  attempts: list[Attempt] = []
  for lo in range(0, len(problems), size):
    index = list(range(lo, min(lo + size, len(problems))))
    padded = index + [index[0]] * (size - len(index))
    tokens, lengths = pad_prompts([prompts[i] for i in padded], cfg.vocab_size,
                                  tokenizer.pad_id)
    tokens = np.pad(tokens, ((0, 0), (0, max(0, width - tokens.shape[1]))),
                    constant_values=tokenizer.pad_id)[:, :width]
    out = jax.device_get(run_chains(
        cfg, rcfg, params, jnp.asarray(tokens), jnp.asarray(lengths),
        jnp.asarray(seed, jnp.uint32), jnp.asarray(padded, jnp.uint32),
        eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id))
    rows = len(index) * rcfg.parallel
    num_new = np.asarray(out.num_new)
    if rcfg.ends.active:  # an attempt's closing empty step is dropped, as EOS is, in its
      # context (`closed_attempt`): the attempt's content stops before it
      flat = out.tokens.reshape(-1, out.tokens.shape[-1])
      content, _ = content_length(flat, num_new.reshape(-1), tokenizer.eos_id, rcfg.ends)
      num_new = np.asarray(content).reshape(num_new.shape)
    attempts += graded_attempts(task, tokenizer, problems, index,
                                np.asarray(out.tokens)[:rows], num_new[:rows],
                                parallel=rcfg.parallel, window=rcfg.window)
    if progress is not None:
      progress.update(len(index))
  return attempts


def attempt_stats(attempts: Sequence[Attempt]) -> dict:
  """Counts of a set of graded attempts: correct fraction overall and per
  revision step (pass@1 per step), context sizes, questions with both classes."""
  if not attempts:
    return {"attempts": 0}
  steps = max(a.step for a in attempts) + 1
  correct = np.asarray([a.correct for a in attempts])
  step = np.asarray([a.step for a in attempts])
  by_question: dict[int, set] = {}
  for a in attempts:
    by_question.setdefault(a.question, set()).add(a.correct)
  return {"attempts": len(attempts), "questions": len(by_question),
          "correct_fraction": float(correct.mean()),
          "correct_fraction_by_step": [float(correct[step == t].mean()) for t in range(steps)],
          "mean_context_tokens": float(np.mean([len(a.context) for a in attempts])),
          "max_row_tokens": int(max(len(a.context) + len(a.ids) for a in attempts)),
          "questions_with_both_classes": sum(len(v) == 2 for v in by_question.values())}


def strip_context(rows: VerifierRows, bare_prompt_lengths: np.ndarray,
                  pad_id: int) -> VerifierRows:
  """The same rows with the previous attempts cut out: the first
  `bare_prompt_lengths` [R] tokens (BOS + prompt), then the completion, as
  the base PRM "as is" reads them. Per-position arrays move with the tokens;
  the freed tail is padding (pad_id, 0, False)."""
  out = {f.name: np.array(getattr(rows, f.name)) for f in dataclasses.fields(rows)
         if f.name != "n_dropped"}
  for i in range(len(rows)):
    bare, start, end = (int(bare_prompt_lengths[i]), int(rows.prompt_lengths[i]),
                        int(rows.lengths[i]))
    if not 0 < bare <= start:
      raise ValueError(f"row {i}: bare prompt length {bare} outside (0, {start}]")
    new_end = end - (start - bare)
    for name in _PER_POSITION:
      out[name][i, bare:new_end] = getattr(rows, name)[i, start:end]
      out[name][i, new_end:] = pad_id if name == "tokens" else 0
    out["lengths"][i] = new_end
    out["prompt_lengths"][i] = bare
  return VerifierRows(**out, n_dropped=rows.n_dropped)


_PER_POSITION = ("tokens", "step_targets", "step_mask", "step_exact", "token_targets",
                 "token_mask")
