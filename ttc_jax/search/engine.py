"""On-device search over a batch of prompts: one jitted call per search.

Rows are (prompt, slot) pairs, R = Q * N, laid out prompt-major. The policy
and the verifier each prefill every prompt once; its KV is stored once for
the prompt's N rows (or copied, `SearchConfig.shared_prefix=False`). Then
either

  best-of-N: every row samples a whole solution, and the verifier scores all
    its tokens in one forward pass, in blocks of rows of similar length
    (`score_after_prompts`; step scores read at the step tags); or
  step-wise search (beam / lookahead / DVTS): a `lax.while_loop` over rounds.
    Each round every unfinished row samples one step (up to the step
    delimiter), the verifier scores just that step's tokens over its own KV
    cache, lookahead optionally rolls the row out k greedy steps and reads the
    score there (then rewinds both caches: only lengths move, nothing is
    copied), and each group of slots (the prompt for beam, a subtree for DVTS)
    keeps its best unfinished prefixes and refills its unfinished slots with
    their copies.

A solution ends on EOS or, with `SearchConfig.ends`, where its text first
ends in a blank line (`ttc_jax.decode.ends`): best-of-N's decode stops
there, a step-wise row finishes with that step.

Beam caches have three levels (`ttc_jax.model.cache.fan_out_beams`): the
prompt, stored once per prompt; a *history* per block of M consecutive rows
(the steps the block's beams inherited from their common parent, stored
once for the M of them); and each row's own suffix, which holds only the
step being sampled (and lookahead rollouts). Selection puts a parent's M
children in one block, so committing a round (`commit_to_history`) copies
one history per block, parent history + parent step, and empties the
suffixes: no row-wise cache gather, and attention reads each inherited step
once per block instead of once per row.

Work shrinks with what is left: rounds run in phases over histories only as
wide as they are filled (`history_widths`), and the last rows still
decoding or being scored finish in a batch of R / tail_fraction rows
(`tail_rows`).

Budget rule (exactly N candidates, never more than N rows sampling a step):
finished rows are not expanded and move to the group's last slots; the A
unfinished slots (the group's first A) are refilled by its top ceil(A / M)
prefixes, M copies each in rank order (the last one fewer when M does not
divide A). With no finished rows this is the paper's "keep N/M, expand each
by M".

Randomness: a row's uniforms come from (round seed, stream, position) with
stream = prompt_stream * N + slot, so a prompt searched alone or in a batch
draws the same numbers given the same prompt stream.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from ttc_jax.decode.ends import SolutionEnds, blank_line_end, line_ended
from ttc_jax.decode.generate import round_up
from ttc_jax.decode.loop import decode, default_tail_rows, prefill, tail_sizes
from ttc_jax.decode.samplers import Greedy
from ttc_jax.model import ModelConfig, init_cache
from ttc_jax.model.cache import commit_to_history, fan_out, fan_out_beams
from ttc_jax.search.config import SearchConfig
from ttc_jax.verifier import model as vmodel
from ttc_jax.verifier.model import VerifierConfig, VerifierState


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class Counters:
  """Per-row work done so far (device int32 / f32)."""
  policy_tokens: jax.Array  # [R]
  policy_context: jax.Array  # [R] f32: sum over fed tokens of their context length
  verifier_tokens: jax.Array  # [R]
  verifier_context: jax.Array  # [R] f32

  @staticmethod
  def zeros(rows: int) -> "Counters":
    z = jnp.zeros((rows,), jnp.int32)
    f = jnp.zeros((rows,), jnp.float32)
    return Counters(z, f, z, f)

  def add(self, policy_start, policy_n, verifier_start, verifier_n) -> "Counters":
    return Counters(self.policy_tokens + policy_n,
                    self.policy_context + context_sum(policy_start, policy_n),
                    self.verifier_tokens + verifier_n,
                    self.verifier_context + context_sum(verifier_start, verifier_n))


def context_sum(start: jax.Array, n: jax.Array) -> jax.Array:
  """Sum of context lengths (position + 1) of n tokens fed from position `start` [R]."""
  start, n = start.astype(jnp.float32), n.astype(jnp.float32)
  return n * start + n * (n + 1) / 2


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class SearchResult:
  """Device outputs of one search (R = Q * N rows, prompt-major)."""
  tokens: jax.Array  # [R, max_solution_tokens] the solution (EOS / blank line in), pad after
  lengths: jax.Array  # [R]
  step_scores: jax.Array  # [R, max_steps] verifier prefix score at each step's end
  num_steps: jax.Array  # [R]
  finished: jax.Array  # [R] bool: ended with EOS or a blank line (else cut by a limit)
  counters: Counters
  rounds: jax.Array  # [R] int32 rounds in which the row's prompt was still searching


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class _State:
  cache: object  # policy KVCache [R]
  # counters are per slot but never gathered: a copied prefix's work is not
  # spent again, and a dropped one's was spent; per-prompt sums stay exact.
  next_logits: jax.Array  # [R, V]
  verifier: VerifierState
  tokens: jax.Array  # [R, max_solution_tokens + max_step_tokens]
  lengths: jax.Array  # [R]
  step_scores: jax.Array  # [R, max_steps]
  num_steps: jax.Array  # [R]
  finished: jax.Array  # [R] bool: no more steps (the solution ended, or a limit reached)
  ended: jax.Array  # [R] bool: the solution ended (EOS or a blank line)
  counters: Counters
  prompt_rounds: jax.Array  # [R] rounds the row's prompt had an unfinished row (not gathered)
  round: jax.Array  # []

  def inherit(self, parents: jax.Array, block_parents: jax.Array, keep: jax.Array) -> "_State":
    """Each row takes its parent's prefix (`_select_parents`); both caches move
    only their blocks' histories (`commit_to_history`)."""
    take = lambda x: jnp.take(x, parents, axis=0)
    return _State(commit_to_history(self.cache, block_parents, keep), take(self.next_logits),
                  self.verifier.commit(parents, block_parents, keep), take(self.tokens),
                  take(self.lengths), take(self.step_scores), take(self.num_steps),
                  take(self.finished), take(self.ended), self.counters, self.prompt_rounds,
                  self.round)


def _append(buffer: jax.Array, new: jax.Array, starts: jax.Array) -> jax.Array:
  """Writes new [R, T] into buffer [R, W] at per-row offsets (W >= starts + T)."""
  return jax.vmap(lambda b, n, s: jax.lax.dynamic_update_slice(b, n, (s,)))(buffer, new, starts)


def round_seed(seed: jax.Array, round_index: jax.Array) -> jax.Array:
  """A fresh uint32 seed per round, so a copied prefix samples new continuations."""
  key = jax.random.fold_in(jax.random.key(seed), round_index)
  return jax.random.bits(key, dtype=jnp.uint32)


def content_length(tokens: jax.Array, num_new: jax.Array, eos_id: int,
                   ends: SolutionEnds = SolutionEnds(), line_start: jax.Array | bool = True):
  """Of chunks tokens [R, W] of num_new [R] tokens: (their content [R]: the
  tokens before a final EOS or empty step, whether the chunk ended the
  solution [R]: on EOS, or at a blank line by `ends`; line_start: whether
  the chunk's first token starts a line).
  """
  last = jnp.take_along_axis(tokens, jnp.maximum(num_new - 1, 0)[:, None], axis=1)[:, 0]
  eos = (num_new > 0) & (last == eos_id)
  if not ends.active:
    return num_new - eos.astype(num_new.dtype), eos
  blank, empty = blank_line_end(ends, tokens, num_new, line_start)
  return num_new - (eos | empty).astype(num_new.dtype), eos | blank


def _start_prompts(pcfg: ModelConfig, vcfg: VerifierConfig, pparams, vparams, prompts,
                   prompt_lengths):
  """Prefill policy and verifier once per prompt -> (policy cache [Q], next logits
  [Q, V], verifier state [Q])."""
  q, width = prompts.shape
  cache = init_cache(pcfg, q, width)
  next_logits, cache = prefill(pcfg, pparams, prompts, prompt_lengths, cache)
  return next_logits, cache, vmodel.start(vcfg, vparams, prompts, prompt_lengths, width)


def beam_widths(scfg: SearchConfig, prompt_width: int) -> tuple[int, int]:
  """(suffix slots per row, history slots per block of M rows) of a step-wise
  search's caches. A row's suffix holds the round's step, its lookahead
  rollouts and the decode scratch slot; a history holds the solution so far
  (and the prompt, unless it is shared)."""
  step = scfg.max_step_tokens
  # after the k rollout steps before it, a step's decode writes step + 1
  # slots (the scratch one) and its scoring whole chunks (`_score_chunks`)
  suffix = round_up(step * scfg.k + max(step + 1, round_up(step, SCORE_CHUNK)), 8)
  prompt = 0 if scfg.shared_prefix else prompt_width
  return suffix, round_up(prompt + scfg.max_solution_tokens, 16)


def _start(pcfg: ModelConfig, vcfg: VerifierConfig, scfg: SearchConfig, pparams, vparams,
           prompts, prompt_lengths):
  """`_start_prompts`, then fan out to the N beams of each prompt: the prompt's
  KV stored once (`scfg.shared_prefix`) or copied to each block's history
  (its narrowest width: `widen_history` grows it)."""
  next_logits, cache, vstate = _start_prompts(pcfg, vcfg, pparams, vparams, prompts,
                                              prompt_lengths)
  rows = jnp.repeat(jnp.arange(prompts.shape[0]), scfg.n)
  suffix = beam_widths(scfg, prompts.shape[1])[0]
  fan = (scfg.n, scfg.m, suffix, history_widths(scfg, prompts.shape[1])[0], scfg.shared_prefix)
  return (fan_out_beams(cache, *fan), next_logits[rows],
          vmodel.fan_out_beams_state(vstate, *fan))


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class _Step:
  """One sampled and scored step, per row (inactive rows: nothing new)."""
  cache: object  # policy KVCache
  next_logits: jax.Array  # [R, V]
  tokens: jax.Array  # [R, max_step_tokens]
  num_new: jax.Array  # [R]
  verifier: VerifierState


MIN_NARROW_CAPACITY = 64


def tail_rows(scfg: SearchConfig, rows: int) -> int | None:
  """How many rows the last ones sampling or being scored continue in (None: all
  rows; `default_tail_rows` with the config's fraction)."""
  return default_tail_rows(rows, scfg.tail_fraction)


def _step_and_score(pcfg, vcfg, scfg, pparams, vparams, s: _State, *, seed, streams, active,
                    stop_tokens, eos_id, pad_id, sampler, room, line_start):
  """Every `active` row samples one step and the verifier scores it.

  room [R]: tokens the row may still generate; line_start [R]: whether the
  step starts a line (`content_length`). Returns (_Step, content [R], ended
  [R]: the solution ended, counters). Once few rows are still sampling (or
  still have chunks to score) they go on alone (`tail_rows`): rows whose step
  ended, or beams that finished rounds ago, do not run the last decode steps.
  """
  tail = tail_rows(scfg, active.shape[0])
  max_new = jnp.where(active, jnp.minimum(scfg.max_step_tokens, room), 0)
  d = decode(pcfg, pparams, s.cache, s.next_logits, seed=seed, row_streams=streams,
             max_new=max_new, stop_tokens=stop_tokens, sampler=sampler,
             buffer_len=scfg.max_step_tokens, pad_id=pad_id, active=active, tail_rows=tail)
  content, ended = content_length(d.tokens, d.num_new, eos_id, scfg.ends, line_start)
  verifier = _score_chunks(vcfg, vparams, s.verifier, d.tokens, content, tail)[0]
  counters = s.counters.add(s.cache.lengths, d.num_new, s.verifier.cache.lengths, content)
  return _Step(d.cache, d.next_logits, d.tokens, d.num_new, verifier), content, ended, counters


SCORE_CHUNK = 8


def _score_chunks(vcfg, vparams, verifier: VerifierState, tokens: jax.Array,
                  content: jax.Array, tail: int | None = None) -> tuple[VerifierState, jax.Array]:
  """Feeds tokens [R, W] (content [R] real ones) to the verifier in chunks of
  SCORE_CHUNK, only as many chunks as the longest row needs: steps are usually
  far shorter than max_step_tokens (arithmetic: <= 14 of 32), and one [R, W]
  chunk paid for every padded position (measured: 0.30 s of a 0.45 s round at
  512 rows). A step-wise round's steps are fed this way; best-of-N's whole
  solutions go through `score_after_prompts`. tail: once at most this many
  rows have chunks left, those rows go on alone. Returns (state, prefix score at every fed position [R, W], 0 past
  content).
  """
  width = tokens.shape[1]
  chunks = -(-width // SCORE_CHUNK)
  tokens = jnp.pad(tokens, ((0, 0), (0, chunks * SCORE_CHUNK - width)))
  init = (jnp.zeros((), jnp.int32), verifier, jnp.zeros(tokens.shape, jnp.float32))
  sizes = tail_sizes(tail, tokens.shape[0])
  _, state, scores = _chunk_tails(vcfg, vparams, tokens, content, init, chunks, sizes)
  return state, scores[:, :width]


def _chunk_tails(vcfg, vparams, tokens, content, init, chunks: int, sizes: tuple[int, ...]):
  """`_chunk_loop`; once at most sizes[0] rows have chunks left they go on alone,
  and so on down `sizes` (as the decode loop's tails)."""
  if not sizes:
    return _chunk_loop(vcfg, vparams, tokens, content, init, chunks)
  left = lambda j: content > j * SCORE_CHUNK  # rows with tokens still to feed at chunk j
  many = lambda carry: jnp.sum(left(carry[0])) > sizes[0]
  j, state, scores = _chunk_loop(vcfg, vparams, tokens, content, init, chunks, many)
  index = jnp.argsort(~left(j), stable=True)[:sizes[0]]  # rows with chunks left first
  _, part, part_scores = _chunk_tails(vcfg, vparams, tokens[index], content[index],
                                      (j, state.take_rows(index), scores[index]), chunks,
                                      sizes[1:])
  return j, state.put_rows(index, part), scores.at[index].set(part_scores)


def _chunk_loop(vcfg, vparams, tokens, content, init, chunks: int, extra_cond=None):
  """Chunks init[0].. of tokens [R, chunks * SCORE_CHUNK] while any row has some left."""
  r = tokens.shape[0]

  def body(carry):
    j, state, scores = carry
    piece = jax.lax.dynamic_slice(tokens, (0, j * SCORE_CHUNK), (r, SCORE_CHUNK))
    num = jnp.clip(content - j * SCORE_CHUNK, 0, SCORE_CHUNK)
    state, piece_scores = vmodel.extend(vcfg, vparams, state, piece, num)
    return j + 1, state, jax.lax.dynamic_update_slice(scores, piece_scores, (0, j * SCORE_CHUNK))

  def cond(carry):
    go = (carry[0] < chunks) & jnp.any(content > carry[0] * SCORE_CHUNK)
    return go if extra_cond is None else go & extra_cond(carry)

  return jax.lax.while_loop(cond, body, init)


def _lookahead_scores(pcfg, vcfg, scfg, pparams, vparams, s: _State, *, streams, stop_tokens,
                      eos_id, pad_id, max_solution):
  """Rolls every unfinished row k greedy steps ahead.

  Returns (score at the rollout's end [R], counters, rewound policy cache,
  rewound verifier cache).

  Caches are rewound afterwards by restoring lengths only: the rollout wrote
  beyond the committed positions, which stay masked and get overwritten.
  """
  rolling = ~s.finished
  cache, next_logits, verifier = s.cache, s.next_logits, s.verifier
  lengths, counters = s.lengths, s.counters
  line_start = line_ended(scfg.ends, s.tokens, s.lengths)
  for _ in range(scfg.k):
    probe = dataclasses.replace(s, cache=cache, next_logits=next_logits, verifier=verifier,
                                counters=counters)
    d, content, ended, counters = _step_and_score(
        pcfg, vcfg, scfg, pparams, vparams, probe, seed=jnp.uint32(0), streams=streams,
        active=rolling, stop_tokens=stop_tokens, eos_id=eos_id, pad_id=pad_id,
        sampler=Greedy(), room=max_solution - lengths, line_start=line_start)
    cache, next_logits, verifier = d.cache, d.next_logits, d.verifier
    lengths = lengths + d.num_new
    line_start = line_ended(scfg.ends, d.tokens, d.num_new, line_start)
    rolling = rolling & ~ended & (d.num_new > 0) & (lengths < max_solution)
  score = jnp.where(s.finished, s.verifier.score, verifier.score)
  return score, counters, cache.replace(lengths=s.cache.lengths), verifier.cache.replace(
      lengths=s.verifier.cache.lengths)


def _select_parents(score: jax.Array, candidate: jax.Array, group: int, width: int) -> jax.Array:
  """Row index [R] each slot copies from: candidates refilled by the top prefixes.

  score, candidate [R]; groups of `group` consecutive slots compete. With A
  candidates in a group, its first A slots are refilled by the top
  ceil(A / width) prefixes, `width` slots each in rank order (the last one
  fewer when width does not divide A); the non-candidates (finished beams)
  move, in order, to the group's last slots. So every block of `width`
  slots holds the children of one parent, which then share its history.
  """
  r = score.shape[0]
  score_g = score.reshape(-1, group)
  cand_g = candidate.reshape(-1, group)
  order = jnp.argsort(jnp.where(cand_g, -score_g, jnp.inf), axis=1, stable=True)
  count = jnp.sum(cand_g, axis=1, keepdims=True)
  slots = jnp.arange(group)[None, :]
  parent = jnp.take_along_axis(order, jnp.clip(slots // width, 0, group - 1), axis=1)
  others = jnp.argsort(cand_g, axis=1, stable=True)  # non-candidates first, in slot order
  moved = jnp.take_along_axis(others, jnp.clip(slots - count, 0, group - 1), axis=1)
  parent = jnp.where(slots < count, parent, moved)
  base = (jnp.arange(r // group) * group)[:, None]
  return (base + parent).reshape(r)


def _block_parents(parents: jax.Array, candidate: jax.Array, width: int):
  """(parent row [R / width], whether it continues [R / width]) of each block of
  `width` slots, from `_select_parents`' output and the candidates it ranked."""
  first = parents[::width]
  return first, jnp.take(candidate, first)


def init_state(pcfg, vcfg, scfg, pparams, vparams, prompts, prompt_lengths, prompt_streams, *,
               pad_id: int) -> tuple[_State, jax.Array]:
  """The step-wise search state before round 1 (caches sized by `beam_widths`),
  and the row streams [R]."""
  n, r = scfg.n, prompts.shape[0] * scfg.n
  cache, next_logits, verifier = _start(pcfg, vcfg, scfg, pparams, vparams, prompts,
                                        prompt_lengths)
  width = scfg.max_solution_tokens + scfg.max_step_tokens
  state = _State(cache, next_logits, verifier, jnp.full((r, width), pad_id, jnp.int32),
                 jnp.zeros((r,), jnp.int32), jnp.zeros((r, scfg.max_steps), jnp.float32),
                 jnp.zeros((r,), jnp.int32), jnp.zeros((r,), bool), jnp.zeros((r,), bool),
                 Counters.zeros(r), jnp.zeros((r,), jnp.int32), jnp.zeros((), jnp.int32))
  return state, slot_streams(prompt_streams, n)


def slot_streams(prompt_streams: jax.Array, n: int) -> jax.Array:
  slots = jnp.tile(jnp.arange(n, dtype=jnp.uint32), prompt_streams.shape[0])
  return (jnp.repeat(prompt_streams.astype(jnp.uint32), n) * n + slots).astype(jnp.uint32)


def search_round(pcfg, vcfg, scfg, pparams, vparams, s: _State, streams, seed, stop_tokens, *,
                 eos_id: int, pad_id: int) -> _State:
  """One round: sample and score a step per unfinished row (`_sample_round`),
  then select and commit. The histories must have room for the commit
  (`history_need(s)` <= their width)."""
  sampled, rank_score = _sample_round(pcfg, vcfg, scfg, pparams, vparams, s, streams=streams,
                                      seed=seed, stop_tokens=stop_tokens, eos_id=eos_id,
                                      pad_id=pad_id)
  candidate = ~sampled.finished
  parents = _select_parents(rank_score, candidate, scfg.group_size, scfg.m)
  return sampled.inherit(parents, *_block_parents(parents, candidate, scfg.m))


def round_widths(capacity: int, levels: int) -> tuple[int, ...]:
  """History widths the rounds run at, ascending: `capacity` and its first
  levels - 1 halvings rounded up to 16 slots (no narrower than 32).
  Histories under MIN_NARROW_CAPACITY slots keep one width: too little to
  skip for another compile of the round."""
  widths = {capacity}
  if capacity < MIN_NARROW_CAPACITY:
    return (capacity,)
  for level in range(1, levels):
    width = -(-capacity // (16 << level)) * 16
    if width >= 32:
      widths.add(width)
  return tuple(sorted(widths))


def history_widths(scfg: SearchConfig, prompt_width: int) -> tuple[int, ...]:
  """The history widths a step-wise search runs its rounds at, ascending."""
  return round_widths(beam_widths(scfg, prompt_width)[1], scfg.round_widths)


def history_need(scfg: SearchConfig, s: _State) -> jax.Array:
  """[] history slots the next round may need: the longest history plus the
  step it commits (lookahead rollouts are not committed)."""
  longest = jnp.maximum(jnp.max(s.cache.history.lengths), jnp.max(s.verifier.cache.history.lengths))
  return longest + scfg.max_step_tokens


def widen_history(s: _State, width: int) -> _State:
  """Both caches' histories with `width` slots (zero-padded; a copy)."""
  widen = lambda cache: cache.replace(history=cache.history.resized(width))
  return dataclasses.replace(s, cache=widen(s.cache), verifier=dataclasses.replace(
      s.verifier, cache=widen(s.verifier.cache)))


def _sample_round(pcfg, vcfg, scfg, pparams, vparams, s: _State, *, streams, seed, stop_tokens,
                  eos_id: int, pad_id: int) -> tuple[_State, jax.Array]:
  """Every unfinished row samples a step and the verifier scores it (and looks
  ahead) -> (state, the score each row is ranked by [R])."""
  r = streams.shape[0]
  active = ~s.finished
  d, content, ended, counters = _step_and_score(
      pcfg, vcfg, scfg, pparams, vparams, s, seed=round_seed(seed, s.round), streams=streams,
      active=active, stop_tokens=stop_tokens, eos_id=eos_id, pad_id=pad_id,
      sampler=scfg.sampler, room=scfg.max_solution_tokens - s.lengths,
      line_start=line_ended(scfg.ends, s.tokens, s.lengths))
  verifier = d.verifier
  scored = active & (content > 0)
  slot = jnp.minimum(s.num_steps, scfg.max_steps - 1)
  step_scores = s.step_scores.at[jnp.arange(r), slot].set(
      jnp.where(scored, verifier.score, s.step_scores[jnp.arange(r), slot]))
  num_steps = s.num_steps + scored
  lengths = s.lengths + d.num_new
  finished = s.finished | ended | (active & (d.num_new == 0)) | (
      lengths >= scfg.max_solution_tokens) | (num_steps >= scfg.max_steps)
  searching = jnp.repeat(active.reshape(-1, scfg.n).any(axis=1), scfg.n)
  s = _State(d.cache, d.next_logits, verifier, _append(s.tokens, d.tokens, s.lengths), lengths,
             step_scores, num_steps, finished, s.ended | ended, counters,
             s.prompt_rounds + searching, s.round + 1)
  if not scfg.k:
    return s, verifier.score
  rank_score, counters, p_cache, v_cache = _lookahead_scores(
      pcfg, vcfg, scfg, pparams, vparams, s, streams=streams, stop_tokens=stop_tokens,
      eos_id=eos_id, pad_id=pad_id, max_solution=scfg.max_solution_tokens)
  return dataclasses.replace(s, cache=p_cache, counters=counters,
                             verifier=dataclasses.replace(s.verifier, cache=v_cache)), rank_score


def keep_going(scfg: SearchConfig, s: _State) -> jax.Array:
  return (s.round < scfg.max_rounds) & ~jnp.all(s.finished)


def final_result(scfg: SearchConfig, s: _State) -> SearchResult:
  return SearchResult(s.tokens[:, :scfg.max_solution_tokens], s.lengths, s.step_scores,
                      s.num_steps, s.ended, s.counters, s.prompt_rounds)


def _stepwise(pcfg, vcfg, scfg, pparams, vparams, prompts, prompt_lengths, seed, prompt_streams,
              *, capacity, stop_tokens, eos_id, pad_id) -> SearchResult:
  """Rounds in phases of growing history width (`history_widths`): attention
  reads every history slot, filled or not, and early rounds fill few. A
  phase's rounds run while their commits fit its width; the histories are
  widened (copied) once between phases."""
  state, streams = init_state(pcfg, vcfg, scfg, pparams, vparams, prompts, prompt_lengths,
                              prompt_streams, pad_id=pad_id)
  del capacity  # best-of-N's; step-wise caches are sized by `beam_widths`
  body = lambda s: search_round(pcfg, vcfg, scfg, pparams, vparams, s, streams, seed,
                                stop_tokens, eos_id=eos_id, pad_id=pad_id)
  widths = history_widths(scfg, prompts.shape[1])
  for width in widths:
    state = widen_history(state, width)
    fits = lambda s, width=width: width == widths[-1] or history_need(scfg, s) <= width
    state = jax.lax.while_loop(lambda s, fits=fits: keep_going(scfg, s) & fits(s), body, state)
  return final_result(scfg, state)


def _best_of_n(pcfg, vcfg, scfg, pparams, vparams, prompts, prompt_lengths, seed, prompt_streams,
               *, capacity, stop_tokens, eos_id, pad_id) -> SearchResult:
  n, q = scfg.n, prompts.shape[0]
  r = q * n
  next_logits, cache, vstate = _start_prompts(pcfg, vcfg, pparams, vparams, prompts,
                                              prompt_lengths)
  rows = jnp.repeat(jnp.arange(q), n)
  cache = fan_out(cache, n, capacity - prompts.shape[1], scfg.shared_prefix)
  d = decode(pcfg, pparams, cache, next_logits[rows], seed=seed,
             row_streams=slot_streams(prompt_streams, n),
             max_new=jnp.full((r,), scfg.max_solution_tokens, jnp.int32),
             stop_tokens=stop_tokens[-1:], sampler=scfg.sampler,
             buffer_len=scfg.max_solution_tokens, pad_id=pad_id,
             max_start=0 if scfg.shared_prefix else prompts.shape[1],
             tail_rows=tail_rows(scfg, r), ends=scfg.ends)
  content, ended = content_length(d.tokens, d.num_new, eos_id, scfg.ends)
  step_scores, step_mask = score_after_prompts(vcfg, vparams, vstate, d.tokens, content, n=n,
                                               max_steps=scfg.max_steps,
                                               shared_prefix=scfg.shared_prefix)
  v_start = vstate.cache.lengths[rows]
  counters = Counters.zeros(r).add(jnp.repeat(prompt_lengths, n), d.num_new, v_start, content)
  return SearchResult(d.tokens, d.num_new, step_scores, jnp.sum(step_mask, axis=1).astype(
      jnp.int32), ended, counters, jnp.zeros((r,), jnp.int32))


SCORE_GROUP_ROWS = 32


def score_widths(width: int) -> tuple[int, ...]:
  """The widths a group of whole solutions is scored at: multiples of a unit
  (SCORE_CHUNK or more, at most ~8 of them: each is one compiled branch) up to
  the first one >= `width`."""
  width = max(width, 1)
  unit = round_up(-(-width // 8), SCORE_CHUNK)
  return tuple(unit * (i + 1) for i in range(-(-width // unit)))


def score_blocks(q: int, n: int, group_rows: int = SCORE_GROUP_ROWS) -> tuple[int, int]:
  """(questions, rows of each) per block of `score_after_prompts`: about
  `group_rows` rows. Under that many rows per question, whole questions (the
  most whose count divides q); else part of one question (the largest divisor
  of n up to group_rows, or all n rows when that divisor is under a quarter
  of it: a prime n must not run one row at a time)."""
  if n < group_rows:
    return max(d for d in range(1, q + 1) if q % d == 0 and d * n <= group_rows), n
  rows = max(d for d in range(1, group_rows + 1) if n % d == 0)
  return 1, rows if 4 * rows >= group_rows else n


def score_after_prompts(vcfg, vparams, prompt_state: VerifierState, tokens: jax.Array,
                        content: jax.Array, *, n: int, max_steps: int, shared_prefix: bool = True,
                        group_rows: int = SCORE_GROUP_ROWS):
  """Step scores of N whole solutions per prompt, fed after the prompts in
  `prompt_state` [Q] (the prompt's KV stored once with `shared_prefix`, else
  copied per row). tokens [Q * N, W] prompt-major, content [Q * N] real tokens.

  Each solution is scored in one forward pass, in blocks of about
  `group_rows` rows (`score_blocks`). Each question's rows are sorted by
  length and the questions by their longest, so a block holds solutions of
  similar length, and it runs at the narrowest of `score_widths(W)` that
  holds its longest. One question's solutions are often alike in length
  while questions differ: one [Q * N, W] pass would pay the longest
  question's length for every row (bench_search, best-of-64: 49k positions
  for 19k tokens). Blocks also bound the prefix attention's temporaries
  (rows x W queries against the prompt) on long prompts.
  Returns (scores [Q * N, max_steps], mask), equal to `vmodel.step_scores` over
  prompt + solution rows (tested).
  """
  q, width = prompt_state.cache.batch_size, tokens.shape[1]
  tokens, content = jnp.asarray(tokens), jnp.asarray(content)
  widths = score_widths(width)
  padded = jnp.pad(tokens, ((0, 0), (0, widths[-1] - width)))
  per_question = content.reshape(q, n)
  by_length = jnp.argsort(-per_question, axis=1, stable=True) + (jnp.arange(q) * n)[:, None]
  questions = jnp.argsort(-jnp.max(per_question, axis=1), stable=True)
  q_block, r_block = score_blocks(q, n, group_rows)
  # blocks [num_blocks, q_block]: the questions of each, and rows [num_blocks, q_block * r_block]
  block_questions = jnp.repeat(questions.reshape(-1, 1, q_block), n // r_block, axis=1)
  block_rows = by_length[questions].reshape(q // q_block, q_block, n // r_block, r_block)
  block_rows = block_rows.transpose(0, 2, 1, 3).reshape(-1, q_block * r_block)
  block_questions = block_questions.reshape(-1, q_block)

  def at_width(w: int):
    def run(block_q, block_tokens, block_content):
      state = vmodel.fan_out_state(prompt_state.gather_rows(block_q), r_block, w, shared_prefix)
      _, scores = vmodel.extend(vcfg, vparams, state, block_tokens[:, :w], block_content,
                                suffix_is_empty=shared_prefix)
      return jnp.pad(scores, ((0, 0), (0, widths[-1] - w)))
    return run

  def score_block(_, block):
    block_q, rows = block
    fit = jnp.searchsorted(jnp.asarray(widths), jnp.max(content[rows]))
    return None, jax.lax.switch(fit, [at_width(w) for w in widths], block_q, padded[rows],
                                content[rows])

  _, parts = jax.lax.scan(score_block, None, (block_questions, block_rows))
  scores = jnp.zeros(padded.shape, jnp.float32).at[block_rows.reshape(-1)].set(
      parts.reshape(q * n, -1))[:, :width]
  where = vmodel.step_positions(vcfg, tokens, jnp.zeros_like(content), content)
  return vmodel.compact(scores, where, max_steps)


def score_candidates(vcfg, vparams, prompts: jax.Array, prompt_lengths: jax.Array,
                     tokens: jax.Array, content: jax.Array, *, n: int, max_steps: int,
                     shared_prefix: bool = True, group_rows: int = SCORE_GROUP_ROWS):
  """`score_after_prompts` with the prompts [Q, P] (lengths [Q]) run through the
  verifier first, once each. The scorer best-of-N uses."""
  prompt_state = vmodel.start(vcfg, vparams, prompts, prompt_lengths, prompts.shape[1])
  return score_after_prompts(vcfg, vparams, prompt_state, tokens, content, n=n,
                             max_steps=max_steps, shared_prefix=shared_prefix,
                             group_rows=group_rows)


def _search(pcfg: ModelConfig, vcfg: VerifierConfig, scfg: SearchConfig, pparams: dict,
            vparams: dict, prompts: jax.Array, prompt_lengths: jax.Array, seed: jax.Array,
            prompt_streams: jax.Array, stop_tokens: jax.Array, *, capacity: int, eos_id: int,
            pad_id: int) -> SearchResult:
  fn = _best_of_n if scfg.method == "best_of_n" else _stepwise
  return fn(pcfg, vcfg, scfg, pparams, vparams, prompts, prompt_lengths, seed, prompt_streams,
            capacity=capacity, stop_tokens=stop_tokens, eos_id=eos_id, pad_id=pad_id)


_STATIC = ("pcfg", "vcfg", "scfg", "capacity", "eos_id", "pad_id")
run_search = jax.jit(_search, static_argnames=_STATIC)
run_search.__doc__ = """One jitted search over right-padded prompts [Q, P] (lengths [Q]).

stop_tokens [S + 1] = (step delimiters, EOS). Returns a SearchResult over
R = Q * N rows. Use `ttc_jax.search.search` for lists of token ids.
"""


@functools.lru_cache(maxsize=32)
def sharded_search_fn(mesh, data_axis: str = "data"):
  """`run_search` data-parallel over `mesh`'s data axis (params replicated).

  Prompts are independent, so each device searches its own slice of prompts
  with its own while loop: no collective inside the search. Q must be a
  multiple of the data axis size.
  """
  from jax.sharding import PartitionSpec as P
  rows, rep = P(data_axis), P()

  def fn(pcfg, vcfg, scfg, pparams, vparams, prompts, prompt_lengths, seed, prompt_streams,
         stop_tokens, *, capacity, eos_id, pad_id):
    body = functools.partial(_search, pcfg, vcfg, scfg, capacity=capacity, eos_id=eos_id,
                             pad_id=pad_id)
    mapped = jax.shard_map(body, mesh=mesh, in_specs=(rep, rep, rows, rows, rep, rows, rep),
                           out_specs=rows, check_vma=False)
    return mapped(pparams, vparams, prompts, prompt_lengths, seed, prompt_streams, stop_tokens)

  return jax.jit(fn, static_argnames=_STATIC)
