"""Host-level API: lists of token ids in, padded device arrays out, one jitted call.

Shapes are bucketed (prompt length and output buffer to powers of two, cache
capacity to a multiple of 64) so a sweep over many prompts compiles a handful
of times, not once per prompt.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ttc_jax.decode.ends import SolutionEnds
from ttc_jax.decode.loop import (SEGMENT_STEPS, DecodeState, decode_jit, default_tail_rows,
                                 prefill_and_decode)
from ttc_jax.decode.samplers import Greedy, Sampler
from ttc_jax.model.cache import init_cache
from ttc_jax.model.config import ModelConfig

_MIN_PROMPT_BUCKET = 8
_CAPACITY_MULTIPLE = 64


@dataclasses.dataclass
class DecodeOutput:
  tokens: jax.Array  # [B, max_new_tokens] int32, pad_id after a row stops
  logprobs: jax.Array  # [B, max_new_tokens] f32 model log-probs (temperature 1); 0 past length
  lengths: jax.Array  # [B] int32 tokens generated per row (a stop token is counted)
  stopped_on_token: jax.Array  # [B] bool: row ended on a stop token
  state: DecodeState  # pass to `continue_generate` to resume from the cache

  @property
  def cache(self):
    return self.state.cache


def next_power_of_two(n: int, minimum: int = 1) -> int:
  return max(minimum, 1 << max(0, int(n) - 1).bit_length())


def round_up(n: int, multiple: int) -> int:
  return -(-int(n) // multiple) * multiple


def pad_prompts(prompts: Sequence[Sequence[int]], vocab_size: int, pad_id: int = 0,
                bucket: bool = True) -> tuple[np.ndarray, np.ndarray]:
  """Validates and right-pads prompts -> (tokens [B, T], lengths [B]) on the host."""
  if len(prompts) == 0:
    raise ValueError("prompts is empty: pass at least one prompt")
  lengths = np.array([len(p) for p in prompts], np.int32)
  if (lengths == 0).any():
    raise ValueError(f"empty prompt at index {int(np.argmin(lengths))}: every prompt needs >= 1 "
                     "token (e.g. BOS)")
  width = next_power_of_two(lengths.max(), _MIN_PROMPT_BUCKET) if bucket else int(lengths.max())
  tokens = np.full((len(prompts), width), pad_id, np.int32)
  for i, p in enumerate(prompts):
    row = np.asarray(p, dtype=np.int64)
    bad = (row < 0) | (row >= vocab_size)
    if bad.any():
      raise ValueError(f"prompt {i} has token id {int(row[bad][0])} outside the vocabulary "
                       f"[0, {vocab_size})")
    tokens[i, :len(row)] = row
  return tokens, lengths


def _stop_array(stop_tokens: Sequence[int], vocab_size: int) -> jax.Array:
  for t in stop_tokens:
    if not 0 <= int(t) < vocab_size:
      raise ValueError(f"stop token {t} outside the vocabulary [0, {vocab_size})")
  return jnp.asarray(list(stop_tokens), jnp.int32).reshape(-1)


def _row_streams(row_streams, batch: int) -> jax.Array:
  if row_streams is None:
    return jnp.arange(batch, dtype=jnp.uint32)
  row_streams = jnp.asarray(row_streams, jnp.uint32)
  if row_streams.shape != (batch,):
    raise ValueError(f"row_streams must have shape ({batch},), got {row_streams.shape}")
  return row_streams


def _check_max_new(max_new_tokens: int) -> None:
  if not isinstance(max_new_tokens, (int, np.integer)) or max_new_tokens < 0:
    raise ValueError(f"max_new_tokens must be an int >= 0, got {max_new_tokens!r}")


def _output(state: DecodeState, max_new_tokens: int) -> DecodeOutput:
  return DecodeOutput(tokens=state.tokens[:, :max_new_tokens],
                      logprobs=state.logprobs[:, :max_new_tokens], lengths=state.num_new,
                      stopped_on_token=state.stopped_on_token, state=state)


def generate(cfg: ModelConfig, params: dict, prompts: Sequence[Sequence[int]], *,
             max_new_tokens: int, sampler: Sampler = Greedy(), seed: int = 0,
             stop_tokens: Sequence[int] = (), pad_id: int = 0, row_streams=None,
             extra_capacity: int = 0, mesh=None,
             tail_rows: int | tuple[int, ...] | str | None = "auto",
             ends: SolutionEnds = SolutionEnds()) -> DecodeOutput:
  """Samples continuations of a batch of prompts of different lengths.

  prompts: token-id lists (e.g. many prompts x many samples, repeated rows).
  stop_tokens: ids that end a row (EOS; or the step delimiter "\\n" so search
  can generate one reasoning step at a time and resume with `continue_generate`).
  seed + row_streams [B] (default arange(B)) fix each row's random stream:
  same seed and batch -> bit-identical output.
  extra_capacity: cache room kept beyond this call for later continuation.
  mesh: optional ("data", "model") mesh; params are sharded by logical axes and
  the batch over "data" (a batch the data axis does not divide is replicated:
  correct, but without data parallelism, so pick batch sizes accordingly).
  tail_rows: once at most this many rows are still decoding they continue
  alone (`loop.decode`; a tuple: smaller and smaller batches in turn);
  "auto": batch / 8 for batches of >= 64 rows without a mesh; None: never.
  Same tokens either way.
  ends: rows also stop where their text first ends in a blank line
  (`ttc_jax.decode.ends`; the prompt is taken to end a line).
  """
  _check_max_new(max_new_tokens)
  sizes = (tail_rows,) if isinstance(tail_rows, int) else tail_rows
  if tail_rows not in (None, "auto") and not (
      isinstance(sizes, tuple) and sizes and all(isinstance(t, int) and t >= 1 for t in sizes)):
    raise ValueError("tail_rows must be an int >= 1, a tuple of them, 'auto' or None, got "
                     f"{tail_rows!r}")
  tokens, lengths = pad_prompts(prompts, cfg.vocab_size, pad_id)
  longest = int(lengths.max())
  if longest + max_new_tokens + extra_capacity > cfg.max_seq_len:
    raise ValueError(f"prompt length {longest} + max_new_tokens {max_new_tokens} + "
                     f"extra_capacity {extra_capacity} exceeds the model's max_seq_len "
                     f"{cfg.max_seq_len}")
  if tokens.shape[1] > cfg.max_seq_len:  # the bucket overshoots: fall back to the exact width
    tokens = tokens[:, :longest]
  buffer_len = next_power_of_two(max_new_tokens)
  # +1: the last slot is scratch for rows that are done (see loop.py); never
  # more positions than the model allows.
  capacity = min(round_up(max(tokens.shape[1], longest + buffer_len + extra_capacity) + 1,
                          _CAPACITY_MULTIPLE), cfg.max_seq_len + 1)
  batch = tokens.shape[0]
  streams = _row_streams(row_streams, batch)
  max_new = jnp.full((batch,), max_new_tokens, jnp.int32)
  cache = init_cache(cfg, batch, capacity)
  tokens, lengths = jnp.asarray(tokens), jnp.asarray(lengths)
  if mesh is not None:
    from ttc_jax import sharding
    params, (tokens, lengths, streams, max_new), cache = sharding.shard_decode_inputs(
        cfg, mesh, params, (tokens, lengths, streams, max_new), cache)
  state = prefill_and_decode(
      cfg, params, tokens, lengths, cache, seed=jnp.asarray(seed, jnp.uint32),
      row_streams=streams, max_new=max_new, stop_tokens=_stop_array(stop_tokens, cfg.vocab_size),
      sampler=sampler, buffer_len=buffer_len, pad_id=pad_id,
      tail_rows=(None if mesh is not None else default_tail_rows(batch)) if tail_rows == "auto"
      else tail_rows, ends=ends)
  return _output(state, max_new_tokens)


def continue_generate(cfg: ModelConfig, params: dict, previous: DecodeOutput, *,
                      max_new_tokens: int, sampler: Sampler = Greedy(), seed: int = 0,
                      stop_tokens: Sequence[int] = (), pad_id: int = 0, row_streams=None,
                      active=None) -> DecodeOutput:
  """Resumes every row (or rows where `active` [B] is True) from `previous`'s cache.

  With the same seed and row streams the result continues exactly as an
  uninterrupted `generate` would have. The previous state's cache is donated.
  """
  _check_max_new(max_new_tokens)
  state = previous.state
  batch = state.next_logits.shape[0]
  longest = int(jnp.max(state.cache.lengths))  # one host read; buckets the segment plan
  room = state.cache.capacity - 1 - longest
  if max_new_tokens > room:
    raise ValueError(f"max_new_tokens {max_new_tokens} exceeds the cache room left ({room}); "
                     "pass extra_capacity to generate")
  out = decode_jit(
      cfg, params, state.cache, state.next_logits, seed=jnp.asarray(seed, jnp.uint32),
      row_streams=_row_streams(row_streams, batch),
      max_new=jnp.full((batch,), max_new_tokens, jnp.int32),
      stop_tokens=_stop_array(stop_tokens, cfg.vocab_size), sampler=sampler,
      buffer_len=next_power_of_two(max_new_tokens), pad_id=pad_id,
      active=None if active is None else jnp.asarray(active, bool),
      max_start=round_up(longest, SEGMENT_STEPS))
  return _output(out, max_new_tokens)
