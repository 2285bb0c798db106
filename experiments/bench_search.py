r"""Search throughput: the one-jitted-call search vs. the peers' host-loop architecture.

    python -m experiments.bench_search --policy=runs/small --methods=best_of_n,beam \
        --ns=16,64,256 --json_out=runs/bench_search.jsonl

One JSON line per (method, n) over --num_questions test questions (evenly
strided over the difficulty strata; fewer at large n so that questions x n <=
--max_rows, which keeps the whole default run under ~10 minutes on 2 cores),
each figure the median of --repeats
timed calls after --warmup untimed ones (compilation; `*_compile_s` = first
call - median):

  questions_per_sec               `ttc_jax.search.search`: the whole search over
                                  the batch of prompts in one jitted call.
  host_loop_questions_per_sec     baseline (a), the peers' architecture
                                  (search-and-learn / OpenR) rebuilt on this
                                  project's model code. Beam / DVTS: a Python loop
                                  over rounds that gathers every unfinished beam's
                                  token list on the host, re-prefills prompt +
                                  solution so far with `ttc_jax.decode.generate`
                                  (one step, stopping at the step delimiter / EOS;
                                  no KV kept across rounds), copies the step back,
                                  re-scores each whole prefix with the verifier
                                  (`score_rows`, one pass over prompt + solution,
                                  every round) and selects in numpy (the engine's
                                  budget rule: exactly N candidates). Best-of-N:
                                  `generate` samples whole solutions (each of the
                                  N rows prefills the prompt itself), the host
                                  builds prompt + solution rows and scores them
                                  with one-pass `step_scores`. Both batch over all
                                  questions' rows; a round's active rows are padded
                                  to a multiple of max(8, R/8) rows (widths to 32) to
                                  bound recompiles, which all happen in warm-up.
  host_dispatch_questions_per_sec baseline (b): the engine's own jitted functions
                                  driven from Python with a host sync each call:
                                  `init_state`, then `search_round` per round (state
                                  donated) until `keep_going` reads False on the
                                  host, then `final_result`. Best-of-N has no
                                  rounds: its three stages (prefill, whole-solution
                                  decode, verifier scoring) run as separate jitted
                                  calls. Isolates dispatch / transfer overhead;
                                  `host_dispatch_same_tokens` checks it returns the
                                  very same candidates.

With --scoring (default) one line per n with method "score" rates the verifier
on the best-of-N candidates of that n (Q x n solutions, EOS not scored):
  score_tokens_per_sec       the one-pass scorer the search's best-of-N runs
                             (`engine.score_candidates`): each question's prompt
                             fed to the verifier once (its KV shared by the N
                             rows), every solution scored in one forward pass,
                             in blocks of ~32 rows of similar length, each at
                             the narrowest width that holds its longest.
  rows_score_tokens_per_sec  one-pass `step_scores` over [B, T] prompt + solution
                             rows padded to the longest (`rows_rescore_speedup`).
  rescore_tokens_per_sec     the peers' per-step prefix re-scoring: for step j,
                             every solution's prefix up to its j-th step end is
                             scored from scratch (batched over solutions, width
                             the longest prefix rounded to 32).
  incremental_tokens_per_sec the search's incremental scorer driven from the host:
                             verifier `start` on the prompts, then `extend` with
                             every solution's j-th step, one jitted call per step.
  Re-scoring costs sum_j (prompt + prefix_j) tokens against solution + prompt / N
  for the engine's scorer and prompt + solution for the rows' one pass; padding
  to a batch's longest row eats into all three.
  (tokens = solution tokens scored; `questions_per_sec`,
  `host_loop_questions_per_sec`, `host_dispatch_questions_per_sec` are the first,
  re-scoring and incremental as questions per second; `*_max_abs_diff` check
  they agree with `rows_score`.)

Devices: on a CPU backend the benchmark splits the machine into two XLA:CPU
devices by default (--local_device_count=-1, as train_policy does;
`ttc_jax.distributed.AUTO_CPU_DEVICES`), because XLA:CPU runs a decode step's
small ops on one thread and one device leaves a 2-core machine half idle.
The search then runs half the prompts on each (`search(mesh=)`) and
baseline (a) splits its generation and scoring rows over both; baseline (b)
and the scoring line stay on one device (`devices`, `host_dispatch_devices`
in the lines). --local_device_count=0 keeps JAX's one device. GPU/TPU
backends ignore the flag. With fewer questions than devices (e.g. one long
prompt) everything runs on the first device.

Without --policy a random-weights model (--config, `ttc_jax.bench_configs`,
vocabulary set to the arithmetic tokenizer's) runs on the built-in task, so the
benchmark runs without a trained checkpoint (step lengths are then whatever
random weights sample). The verifier is --prm: "policy_logprob" (the token
head on the policy's weights) or a verifier run directory.

Every line records the 1-minute load average before and after it: the target
machine has 2 cores shared with other jobs.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import platform
import statistics
import time
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ttc_jax.bench_configs import get_config
from ttc_jax.decode import generate
from ttc_jax.decode.generate import round_up
from ttc_jax.decode.loop import decode_jit
from ttc_jax.decode.samplers import Temperature
from ttc_jax.evaluation import prompt_ids
from ttc_jax.model import init_params
from ttc_jax.model.cache import fan_out
from ttc_jax.search import SearchConfig, SearchOutput, search
from ttc_jax.search.api import compiled_memory, prepare_prompts
from ttc_jax.search import api as search_api
from ttc_jax.search import engine
from ttc_jax.verifier import model as vmodel

BENCH_METHODS = ("best_of_n", "beam", "dvts", "score")
_WIDTH_MULTIPLE = 32  # host-loop row widths: few compiled shapes, little padding
_BATCH_BUCKETS = 8  # host-loop batches: padded to a multiple of max(8, R / 8) rows


@dataclasses.dataclass
class Models:
  pcfg: object
  pparams: dict
  vcfg: vmodel.VerifierConfig
  vparams: dict
  tokenizer: object
  task: object
  source: str  # the policy run dir, or "random:<config>"


# ----------------------------------------------------------------------------- setup


def load_models(policy: str | None, config: str, prm: str, seed: int = 0) -> Models:
  """The policy (a run dir, or random weights of bench config `config`) and the verifier."""
  from experiments.run_search import load_prm
  if policy:
    from ttc_jax.checkpoints import load_policy, load_run_task
    pcfg, pparams, tokenizer = load_policy(policy)
    task, source = load_run_task(policy), os.path.abspath(policy)
  else:
    from ttc_jax.tasks import get_task
    from ttc_jax.tokenizer import build_task_tokenizer
    task = get_task("arithmetic")
    tokenizer = build_task_tokenizer(task, n_samples=500)
    pcfg = get_config(config).replace(vocab_size=tokenizer.vocab_size)
    pparams, source = init_params(pcfg, jax.random.key(seed)), f"random:{config}"
  vcfg, vparams = load_prm(prm, pcfg, pparams, tokenizer)
  return Models(pcfg, pparams, vcfg, vparams, tokenizer, task, source)


def bench_prompts(models: Models, num_questions: int, prompt_len: int = 0) -> list[list[int]]:
  """Prompts of `num_questions` test questions, evenly strided over the split.

  prompt_len > 0: each prompt is lengthened to at least that many tokens with
  solved training examples in front (a few-shot prompt, as the paper's 4-shot
  MATH prompts), the regime where re-prefilling every round costs the peers.
  """
  problems = models.task.test_problems()
  stride = max(1, len(problems) // num_questions)
  prompts = [prompt_ids(models.task, models.tokenizer, p)
             for p in problems[::stride][:num_questions]]
  if prompt_len <= 0:
    return prompts
  shots: list[int] = []
  for p in models.task.train_problems(seed=1, n=1000):
    if len(shots) + max(map(len, prompts)) >= prompt_len:
      break
    shots += models.tokenizer.encode(models.task.prompt(p) + p.solution)
  return [p[:1] + shots + p[1:] for p in prompts]  # BOS, shots, the question


def _median_time(fn: Callable[[], object], repeats: int, warmup: int):
  """(result of the last call, first warm-up call s, median timed s, timed s list)."""
  first = None
  for _ in range(warmup):
    start = time.perf_counter()
    result = fn()
    first = first if first is not None else time.perf_counter() - start
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    result = fn()
    times.append(time.perf_counter() - start)
  median = statistics.median(times)
  return result, (median if first is None else first), median, times


def _bucket(count: int, total: int) -> int:
  """Rows to pad `count` active rows to: a multiple of max(8, total / _BATCH_BUCKETS)."""
  unit = max(8, -(-total // _BATCH_BUCKETS))
  return min(total, round_up(count, unit)) if count else 0


def _pad_rows(rows: list[list[int]], size: int) -> list[list[int]]:
  return rows + [rows[0]] * (size - len(rows))


def _content(tokens: Sequence[int], eos_id: int) -> list[int]:
  """Solution tokens without a final EOS (the verifier never scores EOS)."""
  tokens = list(tokens)
  return tokens[:-1] if tokens and tokens[-1] == eos_id else tokens


def _rows_array(rows: Sequence[Sequence[int]], pad_id: int,
                width: int | None = None) -> tuple[np.ndarray, np.ndarray]:
  """Right-padded [B, W] int32 (W a multiple of _WIDTH_MULTIPLE) and lengths [B]."""
  lengths = np.array([len(r) for r in rows], np.int32)
  width = width or round_up(max(int(lengths.max()), 1), _WIDTH_MULTIPLE)
  out = np.full((len(rows), width), pad_id, np.int32)
  for i, r in enumerate(rows):
    out[i, :len(r)] = r
  return out, lengths


# ----------------------------------------------------------------------------- verifier calls


@functools.partial(jax.jit, static_argnums=0)
def _last_scores(vcfg, vparams, tokens, prompt_lengths, lengths):
  """Prefix score at each row's last token [B] (one pass over the whole row)."""
  scores, _ = vmodel.score_rows(vcfg, vparams, tokens, prompt_lengths, lengths)
  return jnp.take_along_axis(scores, jnp.maximum(lengths - 1, 0)[:, None], axis=1)[:, 0]


_step_scores = jax.jit(vmodel.step_scores, static_argnums=0, static_argnames=("max_steps",))
_start = jax.jit(vmodel.start, static_argnums=0, static_argnames=("capacity",))
_extend = jax.jit(vmodel.extend, static_argnums=0, donate_argnames=("state",))


# ----------------------------------------------------------------------------- baseline (a)


def select_parents_np(score: np.ndarray, candidate: np.ndarray, group: int,
                      width: int) -> np.ndarray:
  """numpy twin of the engine's `_select_parents`: the slot each row copies from."""
  s, c = score.reshape(-1, group), candidate.reshape(-1, group)
  order = np.argsort(np.where(c, -s, np.inf), axis=1, kind="stable")
  slots = np.arange(group)[None]
  kept = np.take_along_axis(order, np.clip(slots // width, 0, group - 1), axis=1)
  others = np.argsort(c, axis=1, kind="stable")  # finished beams, in slot order
  moved = np.take_along_axis(others, np.clip(slots - c.sum(axis=1, keepdims=True), 0, group - 1),
                             axis=1)
  parent = np.where(slots < c.sum(axis=1, keepdims=True), kept, moved)
  return (parent + (np.arange(s.shape[0]) * group)[:, None]).reshape(-1)


def _on_mesh(mesh, vparams, *rows):
  """(vparams, *rows) with the rows split over the mesh's data axis (as is without a mesh)."""
  if mesh is None:
    return (vparams, *rows)
  from ttc_jax import sharding
  return (search_api._replicated(vparams, mesh),  # pylint: disable=protected-access
          *(sharding.shard_batch(np.asarray(x), mesh) for x in rows))


def host_loop_stepwise(m: Models, prompts: list[list[int]], scfg: SearchConfig, *, seed: int,
                       mesh=None):
  """Baseline (a) for beam / DVTS. Returns (solutions [R] token lists, rounds).

  mesh: generation and scoring split their rows over its data axis (the
  engine's search gets the same devices)."""
  tok, n = m.tokenizer, scfg.n
  r = len(prompts) * n
  sol: list[list[int]] = [[] for _ in range(r)]
  num_steps = np.zeros(r, np.int64)
  score = np.zeros(r, np.float64)
  finished = np.zeros(r, bool)
  rounds = 0
  while rounds < scfg.max_rounds and not finished.all():
    active = np.flatnonzero(~finished)
    size = _bucket(len(active), r)
    # Host gather + re-prefill of every beam's whole sequence (no KV reuse).
    seqs = [prompts[i // n] + sol[i] for i in active]
    out = generate(m.pcfg, m.pparams, _pad_rows(seqs, size), max_new_tokens=scfg.max_step_tokens,
                   sampler=scfg.sampler, seed=(seed * 1_000_003 + rounds) % 2**32,
                   stop_tokens=[*m.vcfg.step_delimiters, tok.eos_id], pad_id=tok.pad_id,
                   row_streams=np.pad(active, (0, size - len(active))), mesh=mesh)
    new_tokens, new_lengths = np.asarray(out.tokens), np.asarray(out.lengths)  # copy back
    grew = np.zeros(r, bool)
    for j, i in enumerate(active):
      step = new_tokens[j, :min(int(new_lengths[j]), scfg.max_solution_tokens - len(sol[i]))]
      step = step.tolist()
      ended = bool(step) and step[-1] == tok.eos_id
      grew[i] = len(_content(step, tok.eos_id)) > 0
      sol[i] = sol[i] + step
      finished[i] = ended or not step or len(sol[i]) >= scfg.max_solution_tokens
    # Re-score every grown prefix from scratch: one pass over prompt + solution.
    scored = np.flatnonzero(grew)
    if scored.size:
      rows = [prompts[i // n] + _content(sol[i], tok.eos_id) for i in scored]
      size = _bucket(len(rows), r)
      tokens, lengths = _rows_array(_pad_rows(rows, size), tok.pad_id)
      plen = np.array([len(prompts[i // n]) for i in scored] + [len(prompts[scored[0] // n])] *
                      (size - len(scored)), np.int32)
      score[scored] = np.asarray(_last_scores(m.vcfg, *_on_mesh(mesh, m.vparams, tokens, plen,
                                                                lengths)))[:len(scored)]
      num_steps[scored] += 1
      finished[scored] |= num_steps[scored] >= scfg.max_steps
    parents = select_parents_np(score, ~finished, scfg.group_size, scfg.m)
    sol = [list(sol[p]) for p in parents]
    num_steps, score, finished = num_steps[parents], score[parents], finished[parents]
    rounds += 1
  return sol, rounds


def host_loop_best_of_n(m: Models, prompts: list[list[int]], scfg: SearchConfig, *, seed: int,
                        mesh=None):
  """Baseline (a) for best-of-N: whole solutions by `generate`, one-pass scoring."""
  tok, n = m.tokenizer, scfg.n
  rows = [p for p in prompts for _ in range(n)]
  out = generate(m.pcfg, m.pparams, rows, max_new_tokens=scfg.max_solution_tokens,
                 sampler=scfg.sampler, seed=seed, stop_tokens=[tok.eos_id], pad_id=tok.pad_id,
                 mesh=mesh)
  new_tokens, new_lengths = np.asarray(out.tokens), np.asarray(out.lengths)
  sol = [new_tokens[i, :new_lengths[i]].tolist() for i in range(len(rows))]
  tokens, lengths = _rows_array([p + _content(s, tok.eos_id) for p, s in zip(rows, sol)],
                                tok.pad_id)
  plen = np.array([len(p) for p in rows], np.int32)
  jax.device_get(_step_scores(m.vcfg, *_on_mesh(mesh, m.vparams, tokens, plen, lengths),
                              max_steps=scfg.max_steps))
  return sol, 0


# ----------------------------------------------------------------------------- baseline (b)


_init_state = jax.jit(engine.init_state, static_argnames=("pcfg", "vcfg", "scfg", "pad_id"))
_search_round = jax.jit(engine.search_round,
                        static_argnames=("pcfg", "vcfg", "scfg", "eos_id", "pad_id"),
                        donate_argnames=("s",))
_keep_going = jax.jit(engine.keep_going, static_argnames=("scfg",))
_history_need = jax.jit(engine.history_need, static_argnums=0)
_widen_history = jax.jit(engine.widen_history, static_argnums=1)
_final_result = jax.jit(engine.final_result, static_argnames=("scfg",))
_fan_out = jax.jit(fan_out, static_argnums=(1, 2, 3))
_prefill_prompts = jax.jit(engine._start_prompts,  # pylint: disable=protected-access
                           static_argnums=(0, 1))


@functools.partial(jax.jit, static_argnums=(0, 1), static_argnames=("eos_id",))
def _score_solutions(vcfg, scfg, vparams, prompt_state, tokens, num_new, *, eos_id):
  """Best-of-N's scoring stage, as inside the engine."""
  content, _ = engine.content_length(tokens, num_new, eos_id)
  return engine.score_after_prompts(vcfg, vparams, prompt_state, tokens, content, n=scfg.n,
                                    max_steps=scfg.max_steps, shared_prefix=scfg.shared_prefix)


def host_dispatch_search(m: Models, prompts: list[list[int]], scfg: SearchConfig, *,
                         seed: int) -> tuple[np.ndarray, int]:
  """Baseline (b): the engine's jitted pieces driven from the host.

  Returns (candidate tokens [Q, N, T], rounds).
  """
  tok = m.tokenizer
  tokens, lengths, capacity = prepare_prompts(m.pcfg, m.vcfg, prompts, scfg, tok.pad_id)
  q = len(prompts)
  streams = jnp.arange(q, dtype=jnp.uint32)
  seed_arr = jnp.asarray(seed, jnp.uint32)
  stops = jnp.asarray([*m.vcfg.step_delimiters, tok.eos_id], jnp.int32)
  if scfg.method == "best_of_n":
    next_logits, cache, verifier = jax.block_until_ready(_prefill_prompts(
        m.pcfg, m.vcfg, m.pparams, m.vparams, jnp.asarray(tokens), jnp.asarray(lengths)))
    r = q * scfg.n
    cache = _fan_out(cache, scfg.n, capacity - tokens.shape[1], scfg.shared_prefix)
    d = jax.block_until_ready(decode_jit(
        m.pcfg, m.pparams, cache, next_logits[np.repeat(np.arange(q), scfg.n)], seed=seed_arr,
        row_streams=engine.slot_streams(streams, scfg.n),
        max_new=jnp.full((r,), scfg.max_solution_tokens, jnp.int32), stop_tokens=stops[-1:],
        sampler=scfg.sampler, buffer_len=scfg.max_solution_tokens, pad_id=tok.pad_id,
        max_start=tokens.shape[1]))
    jax.device_get(_score_solutions(m.vcfg, scfg, m.vparams, verifier, d.tokens, d.num_new,
                                    eos_id=tok.eos_id))
    return np.asarray(d.tokens).reshape(q, scfg.n, -1), 0
  state, row_streams = _init_state(m.pcfg, m.vcfg, scfg, m.pparams, m.vparams,
                                   jnp.asarray(tokens), jnp.asarray(lengths), streams,
                                   pad_id=tok.pad_id)
  widths = engine.history_widths(scfg, tokens.shape[1])
  while bool(_keep_going(scfg, state)):  # the host sync of every round
    need = int(_history_need(scfg, state))
    if need > state.cache.history.k[0].shape[2]:  # the engine's next phase, as it widens
      state = _widen_history(state, next((w for w in widths if w >= need), widths[-1]))
    state = _search_round(m.pcfg, m.vcfg, scfg, m.pparams, m.vparams, state, row_streams,
                          seed_arr, stops, eos_id=tok.eos_id, pad_id=tok.pad_id)
  result = jax.device_get(_final_result(scfg, state))
  to_output = search_api._to_output  # pylint: disable=protected-access
  out = to_output(m.pcfg, m.vcfg, scfg, result, lengths)
  return out.tokens, int(np.max(result.rounds))


# ----------------------------------------------------------------------------- scoring


@dataclasses.dataclass
class ScoringRows:
  """Solutions laid out for the three scorers."""
  tokens: np.ndarray  # [R, W] prompt + solution (EOS dropped)
  prompt_lengths: np.ndarray  # [R]
  lengths: np.ndarray  # [R]
  step_ends: list[list[int]]  # per row: positions (in the row) where each step's score is read
  solution_tokens: int
  prompts: np.ndarray  # [Q, P] each question's prompt once
  question_prompt_lengths: np.ndarray  # [Q]
  solutions: np.ndarray  # [R, S] solution tokens alone (EOS dropped)
  content: np.ndarray  # [R] solution tokens per row


def scoring_rows(m: Models, prompts: list[list[int]], out: SearchOutput) -> ScoringRows:
  """Every candidate of `out` as a prompt + solution row, with its step-end positions."""
  tok = m.tokenizer
  rows, plens, ends = [], [], []
  for q, prompt in enumerate(prompts):
    for i in range(out.tokens.shape[1]):
      content = _content(out.tokens[q, i, :out.lengths[q, i]].tolist(), tok.eos_id)
      row = prompt + content
      p = len(prompt)
      # As `step_positions`: every step tag, plus an unterminated last token.
      end = [p + j for j, t in enumerate(content) if t in m.vcfg.step_delimiters]
      if content and content[-1] not in m.vcfg.step_delimiters:
        end.append(len(row) - 1)
      rows.append(row)
      plens.append(p)
      ends.append(end)
  tokens, lengths = _rows_array(rows, tok.pad_id)
  plens = np.array(plens, np.int32)
  question_prompts, question_lengths = _rows_array(prompts, tok.pad_id)
  solutions, content = _rows_array([r[p:] for r, p in zip(rows, plens)], tok.pad_id)
  return ScoringRows(tokens, plens, lengths, ends, int((lengths - plens).sum()),
                     question_prompts, question_lengths, solutions, content)


def one_pass_scores(m: Models, rows: ScoringRows, max_steps: int) -> np.ndarray:
  scores, _ = _step_scores(m.vcfg, m.vparams, rows.tokens, rows.prompt_lengths, rows.lengths,
                           max_steps=max_steps)
  return np.asarray(scores)


_score_candidates = jax.jit(engine.score_candidates, static_argnums=0,
                            static_argnames=("n", "max_steps", "shared_prefix", "group_rows"))


def engine_scores(m: Models, rows: ScoringRows, max_steps: int) -> np.ndarray:
  """The scorer best-of-N uses (`engine.score_candidates`)."""
  q, r = rows.prompts.shape[0], rows.solutions.shape[0]
  scores, _ = _score_candidates(m.vcfg, m.vparams, rows.prompts, rows.question_prompt_lengths,
                                rows.solutions, rows.content, n=r // q, max_steps=max_steps)
  return np.asarray(scores)


def rescore_scores(m: Models, rows: ScoringRows, max_steps: int) -> np.ndarray:
  """The peers' re-scoring: step j's prefix of every solution scored from scratch."""
  r = len(rows.step_ends)
  out = np.zeros((r, max_steps), np.float32)
  for j in range(min(max_steps, max((len(e) for e in rows.step_ends), default=0))):
    have = [i for i in range(r) if len(rows.step_ends[i]) > j]
    size = _bucket(len(have), r)
    lengths = np.array([rows.step_ends[i][j] + 1 for i in have], np.int32)
    width = round_up(int(lengths.max()), _WIDTH_MULTIPLE)
    pick = np.array(have + [have[0]] * (size - len(have)))
    tokens = rows.tokens[pick, :width]
    lengths = np.concatenate([lengths, np.repeat(lengths[:1], size - len(have))])
    scores = _last_scores(m.vcfg, m.vparams, tokens, rows.prompt_lengths[pick], lengths)
    out[have, j] = np.asarray(scores)[:len(have)]
  return out


def incremental_scores(m: Models, rows: ScoringRows, max_steps: int) -> np.ndarray:
  """The search's incremental scorer from the host: `start` on prompts, `extend` per step."""
  r = len(rows.step_ends)
  chunks = [[(rows.prompt_lengths[i] if j == 0 else e[j - 1] + 1, e[j] + 1)
             for j in range(min(len(e), max_steps))] for i, e in enumerate(rows.step_ends)]
  steps = max((len(c) for c in chunks), default=0)
  chunk_width = round_up(max((b - a for c in chunks for a, b in c), default=1), 8)
  prompt_width = round_up(int(rows.prompt_lengths.max()), 8)
  capacity = round_up(int(rows.lengths.max()) + chunk_width + 1, 16)
  state = _start(m.vcfg, m.vparams, rows.tokens[:, :prompt_width], rows.prompt_lengths,
                 capacity=capacity)
  out = np.zeros((r, max_steps), np.float32)
  for j in range(steps):
    chunk = np.full((r, chunk_width), m.tokenizer.pad_id, np.int32)
    num_new = np.zeros(r, np.int32)
    for i, c in enumerate(chunks):
      if len(c) > j:
        a, b = c[j]
        chunk[i, :b - a] = rows.tokens[i, a:b]
        num_new[i] = b - a
    state, scores = _extend(m.vcfg, m.vparams, state, chunk, num_new)
    scores = np.asarray(scores)  # the host sync of every step
    last = np.take_along_axis(scores, np.maximum(num_new - 1, 0)[:, None], axis=1)[:, 0]
    out[num_new > 0, j] = last[num_new > 0]
  return out


# ----------------------------------------------------------------------------- lines


def _machine() -> dict:
  from experiments.bench_decode import cpu_model
  return dict(device=jax.devices()[0].device_kind, backend=jax.default_backend(),
              cpu_model=cpu_model(), cores=os.cpu_count(), jax_version=jax.__version__,
              python=platform.python_version())


def search_config(method: str, n: int, m_spec: str, max_step_tokens: int,
                  max_solution_tokens: int, max_rounds: int, temperature: float) -> SearchConfig:
  from experiments.run_search import resolve_m
  m = resolve_m(m_spec, n) if method != "best_of_n" else 1
  return SearchConfig(method=method, n=n, m=m, max_rounds=max_rounds,
                      max_step_tokens=max_step_tokens, max_solution_tokens=max_solution_tokens,
                      sampler=Temperature(temperature))


def replicated_fields(models: Models, prompts, scfg: SearchConfig, out: SearchOutput, q: int,
                      *, repeats: int, warmup: int, seed: int, mesh=None) -> dict:
  """The same search with the prompt KV copied to every row, and both memory plans."""
  tok = models.tokenizer
  rep = dataclasses.replace(scfg, shared_prefix=False)
  rep_out, first, median, times = _median_time(
      lambda: search(models.pcfg, models.pparams, models.vcfg, models.vparams, prompts, rep,
                     eos_id=tok.eos_id, pad_id=tok.pad_id, seed=seed, mesh=mesh), repeats, warmup)
  memory = lambda c: compiled_memory(models.pcfg, models.pparams, models.vcfg, models.vparams,
                                     prompts, c, eos_id=tok.eos_id, pad_id=tok.pad_id)
  shared_mem, rep_mem = memory(scfg), memory(rep)
  return dict(
      replicated_questions_per_sec=q / median, replicated_time_s=median,
      replicated_times_s=times, replicated_compile_s=max(first - median, 0.0),
      replicated_same_tokens=bool(np.array_equal(rep_out.tokens, out.tokens)),
      peak_bytes=shared_mem["peak_bytes"], temp_bytes=shared_mem["temp_bytes"],
      replicated_peak_bytes=rep_mem["peak_bytes"], replicated_temp_bytes=rep_mem["temp_bytes"],
      argument_bytes=shared_mem["argument_bytes"],
      mean_prompt_tokens=float(np.mean([len(p) for p in prompts])))


def search_line(models: Models, prompts, scfg: SearchConfig, *, repeats: int, warmup: int,
                seed: int, baselines: Sequence[str], compare_replicated: bool = False,
                mesh=None) -> tuple[dict, SearchOutput]:
  """Timings of one (method, n): on device, and the baselines asked for.

  mesh: the search and baseline (a) split their work over its data axis;
  baseline (b) drives the engine's unsharded pieces on one device."""
  tok, q = models.tokenizer, len(prompts)
  load_before = os.getloadavg()[0]
  run = lambda: search(models.pcfg, models.pparams, models.vcfg, models.vparams, prompts, scfg,
                       eos_id=tok.eos_id, pad_id=tok.pad_id, seed=seed, mesh=mesh)
  out, first, median, times = _median_time(run, repeats, warmup)
  line = dict(method=scfg.method, n=scfg.n, m=None if scfg.method == "best_of_n" else scfg.m,
              questions=q, rows=q * scfg.n, devices=1 if mesh is None else mesh.size,
              questions_per_sec=q / median, time_s=median,
              times_s=times, compile_s=max(first - median, 0.0),
              rounds=int(out.budget.rounds.max()),
              policy_tokens_per_question=float(out.budget.policy_tokens.mean()),
              mean_solution_tokens=float(out.lengths.mean()))
  if compare_replicated:
    line.update(replicated_fields(models, prompts, scfg, out, q, repeats=repeats, warmup=warmup,
                                  seed=seed, mesh=mesh))
  if "host_loop" in baselines:
    fn = host_loop_best_of_n if scfg.method == "best_of_n" else host_loop_stepwise
    (sol, rounds), first, median, times = _median_time(
        lambda: fn(models, prompts, scfg, seed=seed, mesh=mesh), repeats, warmup)
    line.update(host_loop_questions_per_sec=q / median, host_loop_time_s=median,
                host_loop_times_s=times, host_loop_compile_s=max(first - median, 0.0),
                host_loop_rounds=rounds,
                host_loop_mean_solution_tokens=float(np.mean([len(s) for s in sol])),
                speedup_vs_host_loop=line["questions_per_sec"] / (q / median))
  if "host_dispatch" in baselines:
    (tokens, rounds), first, median, times = _median_time(
        lambda: host_dispatch_search(models, prompts, scfg, seed=seed), repeats, warmup)
    line.update(host_dispatch_questions_per_sec=q / median, host_dispatch_time_s=median,
                host_dispatch_times_s=times, host_dispatch_compile_s=max(first - median, 0.0),
                host_dispatch_rounds=rounds, host_dispatch_devices=1,
                host_dispatch_same_tokens=bool(np.array_equal(tokens, out.tokens)),
                speedup_vs_host_dispatch=line["questions_per_sec"] / (q / median))
  line.update(loadavg_1m_before=load_before, loadavg_1m_after=os.getloadavg()[0])
  return line, out


def score_line(models: Models, prompts, out: SearchOutput, n: int, *, repeats: int,
               warmup: int, max_steps: int) -> dict:
  """One-pass vs per-step re-scoring vs host-driven incremental scoring of `out`'s candidates."""
  load_before = os.getloadavg()[0]
  rows = scoring_rows(models, prompts, out)
  tokens, q = rows.solution_tokens, len(prompts)
  line = dict(method="score", n=n, m=None, questions=q, rows=len(rows.step_ends),
              solution_tokens=tokens,
              steps_per_solution=float(np.mean([len(e) for e in rows.step_ends])))
  results = {}
  for name, fn in (("score", engine_scores), ("rows_score", one_pass_scores),
                   ("rescore", rescore_scores), ("incremental", incremental_scores)):
    scores, first, median, times = _median_time(lambda fn=fn: fn(models, rows, max_steps),
                                                repeats, warmup)
    results[name] = scores
    line.update({f"{name}_tokens_per_sec": tokens / median, f"{name}_time_s": median,
                 f"{name}_times_s": times, f"{name}_compile_s": max(first - median, 0.0)})
  for name in ("score", "rescore", "incremental"):
    line[f"{name}_max_abs_diff"] = float(np.max(np.abs(results[name] - results["rows_score"])))
  line.update(
      questions_per_sec=q / line["score_time_s"],
      host_loop_questions_per_sec=q / line["rescore_time_s"],
      host_dispatch_questions_per_sec=q / line["incremental_time_s"],
      rescore_speedup=line["rescore_time_s"] / line["score_time_s"],
      rows_rescore_speedup=line["rescore_time_s"] / line["rows_score_time_s"],
      loadavg_1m_before=load_before, loadavg_1m_after=os.getloadavg()[0])
  return line


def run_benchmark(policy: str | None = None, *, config: str = "smoke",
                  prm: str = "policy_logprob", methods: Sequence[str] = ("best_of_n", "beam"),
                  ns: Sequence[int] = (16, 64, 256), m: str = "4", num_questions: int = 8,
                  max_rows: int = 1024,
                  repeats: int = 3, warmup: int = 1, max_step_tokens: int = 32,
                  max_solution_tokens: int = 112, max_rounds: int = 40,
                  temperature: float = 1.0, seed: int = 0, scoring: bool = True,
                  baselines: Sequence[str] = ("host_loop", "host_dispatch"),
                  prompt_len: int = 0, compare_replicated: bool = False, mesh=None,
                  print_fn: Callable[[str], None] = print) -> list[dict]:
  """Runs the benchmark; returns the lines (each also passed to `print_fn` as JSON).

  mesh: a ("data", "model"=1) mesh the searches and baseline (a) split rows
  over (`search_line`); the scoring line runs on one device."""
  for method in methods:
    if method not in BENCH_METHODS:
      raise ValueError(f"unknown method {method!r}; valid: {list(BENCH_METHODS)}")
  for b in baselines:
    if b not in ("host_loop", "host_dispatch"):
      raise ValueError(f"unknown baseline {b!r}; valid: host_loop, host_dispatch")
  if repeats < 1 or warmup < 0 or num_questions < 1:
    raise ValueError("repeats and num_questions must be >= 1, warmup >= 0")
  models = load_models(policy, config, prm, seed)
  common = dict(policy=models.source, prm=prm, n_params=models.pcfg.num_params(),
                verifier_params=models.vcfg.num_params(), max_step_tokens=max_step_tokens,
                max_solution_tokens=max_solution_tokens, temperature=temperature, seed=seed,
                repeats=repeats, warmup=warmup, prompt_len=prompt_len, **_machine())
  scoring = scoring or "score" in methods
  lines = []
  for n in ns:
    prompts = bench_prompts(models, max(1, min(num_questions, max_rows // n)), prompt_len)
    best_of_n_out = None
    for method in [x for x in methods if x != "score"]:
      try:
        scfg = search_config(method, n, m, max_step_tokens, max_solution_tokens, max_rounds,
                             temperature)
      except ValueError as e:
        print_fn(json.dumps({"note": f"skipped {method} n={n} m={m}: {e}"}))
        continue
      line, out = search_line(models, prompts, scfg, repeats=repeats, warmup=warmup, seed=seed,
                              baselines=baselines, compare_replicated=compare_replicated,
                              mesh=mesh)
      if method == "best_of_n":
        best_of_n_out = out
      lines.append(_finish(line, common, print_fn))
    if scoring:
      if best_of_n_out is None:
        scfg = search_config("best_of_n", n, m, max_step_tokens, max_solution_tokens, max_rounds,
                             temperature)
        best_of_n_out = search(models.pcfg, models.pparams, models.vcfg, models.vparams, prompts,
                               scfg, eos_id=models.tokenizer.eos_id,
                               pad_id=models.tokenizer.pad_id, seed=seed)
      line = score_line(models, prompts, best_of_n_out, n, repeats=repeats, warmup=warmup,
                        max_steps=SearchConfig("best_of_n", n).max_steps)
      lines.append(_finish(line, common, print_fn))
  return lines


def _finish(line: dict, common: dict, print_fn) -> dict:
  from experiments.bench_decode import emit_line
  return emit_line({**line, **common}, print_fn)


# ----------------------------------------------------------------------------- CLI


def _define_flags():
  from absl import flags
  flags.DEFINE_string("policy", None, "Policy run directory; default: random weights (--config).")
  flags.DEFINE_string("config", "smoke", "Random-weights model (ttc_jax.bench_configs) when no "
                      "--policy is given.")
  flags.DEFINE_string("prm", "policy_logprob", "Verifier run directory, or 'policy_logprob'.")
  flags.DEFINE_list("methods", ["best_of_n", "beam"], f"Of {list(BENCH_METHODS)}.")
  flags.DEFINE_list("ns", ["16", "64", "256"], "Budgets N.")
  flags.DEFINE_string("m", "4", "Beam width: an int or 'sqrt'.")
  flags.DEFINE_integer("num_questions", 8, "Questions per search call (strided over the test set).")
  flags.DEFINE_integer("max_rows", 1024, "At most this many question x candidate rows per call "
                       "(fewer questions at large n).")
  flags.DEFINE_integer("repeats", 3, "Timed calls per figure (the median is reported).")
  flags.DEFINE_integer("warmup", 1, "Untimed calls first (compilation).")
  flags.DEFINE_integer("max_step_tokens", 32, "Tokens one step may take.")
  flags.DEFINE_integer("max_solution_tokens", 112, "Tokens a whole solution may take.")
  flags.DEFINE_integer("max_rounds", 40, "Step rounds.")
  flags.DEFINE_float("temperature", 1.0, "Sampling temperature.")
  flags.DEFINE_integer("seed", 0, "Search seed (and random weights).")
  flags.DEFINE_bool("scoring", True, "Also one 'score' line per n (one-pass vs re-scoring).")
  flags.DEFINE_list("baselines", ["host_loop", "host_dispatch"], "Baselines to time.")
  flags.DEFINE_string("json_out", None, "JSONL output file (written atomically at the end).")
  flags.DEFINE_integer("prompt_len", 0, "Lengthen prompts to >= this many tokens with solved "
                       "examples in front (a few-shot prompt); 0: the bare question.")
  from ttc_jax import distributed
  distributed.define_flags(default_local_devices=-1)  # two XLA:CPU devices on a CPU backend
  flags.DEFINE_bool("compare_replicated", False, "Also time each search with the prompt's KV "
                    "copied to every row (shared_prefix=False) and report both memory plans "
                    "(replicated_questions_per_sec, peak_bytes, replicated_peak_bytes).")
  return flags.FLAGS


def main(argv: Sequence[str]) -> None:
  del argv
  from absl import flags, logging
  from experiments.bench_decode import write_jsonl_atomic
  logging.set_verbosity(logging.WARNING)
  f = flags.FLAGS
  from ttc_jax import distributed, sharding
  distributed.initialize_from_flags()
  mesh = None
  if jax.device_count() > f.num_questions:
    # Each device would search a share of fewer questions than devices: one
    # question on one of two XLA:CPU devices ran 0.38 q/s against 0.48 on
    # one device using both cores (BUILD_NOTES, session 14).
    logging.warning("%d question(s) on %d devices: searching on one device",
                    f.num_questions, jax.device_count())
  elif jax.device_count() > 1:
    mesh = sharding.make_mesh()
  lines = run_benchmark(
      f.policy, config=f.config, prm=f.prm, methods=f.methods, ns=[int(x) for x in f.ns],
      m=f.m, num_questions=f.num_questions, max_rows=f.max_rows, repeats=f.repeats,
      warmup=f.warmup,
      max_step_tokens=f.max_step_tokens, max_solution_tokens=f.max_solution_tokens,
      max_rounds=f.max_rounds, temperature=f.temperature, seed=f.seed, scoring=f.scoring,
      baselines=f.baselines, prompt_len=f.prompt_len, compare_replicated=f.compare_replicated,
      mesh=mesh, print_fn=lambda s: print(s, flush=True))
  if f.json_out:
    write_jsonl_atomic(f.json_out, lines)


if __name__ == "__main__":
  from absl import app
  _define_flags()
  app.run(main)
