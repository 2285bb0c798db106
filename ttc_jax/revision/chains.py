"""Sequential revisions on device: P parallel chains of L attempts per prompt, N = P * L.

Rows are (prompt, chain) pairs, R = Q * P, prompt-major. The revision model
prefills each prompt once; its KV is stored once for the prompt's P chains
(`shared_prefix`, as best-of-N does) and reused by every revision step. A
`lax.scan` over the L steps then, for every row at once:

  1. resets the row's suffix to empty (only lengths move; nothing is copied),
  2. feeds the row's context after the prompt: its last `window` attempts,
     each closed by EOS (`ttc_jax.revision.format`), packed left so rows with
     different attempt lengths share one [R, window * (A + 1)] forward pass,
  3. samples a new attempt of at most A tokens (stopping at EOS, or with
     `RevisionConfig.ends` where its text first ends in a blank line: an
     empty step is then dropped from the attempt as EOS is),
  4. slides the attempt into the row's window, dropping the oldest.

Step 0 has an empty context: it is an ordinary sample from the prompt, and
with the same seed and prompt streams it draws exactly what best-of-N with
n = P draws (tested), so the all-parallel ratio is best-of-N itself. Later
steps draw from a seed folded with the step index.

Budget: N = P * L generations per prompt, every one an attempt. The context
re-fed at each step is policy compute too: `Counters` counts its tokens.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from ttc_jax.decode.ends import SolutionEnds
from ttc_jax.decode.loop import decode, prefill
from ttc_jax.decode.samplers import Sampler, Temperature
from ttc_jax.model import ModelConfig, init_cache
from ttc_jax.model.cache import fan_out
from ttc_jax.model.transformer import forward_hidden, unembed
from ttc_jax.revision.format import WINDOW
from ttc_jax.search.engine import (Counters, content_length, context_sum, round_seed,
                                   slot_streams)


@dataclasses.dataclass(frozen=True)
class RevisionConfig:
  """Static chain settings (hashable: a jit static argument).

  n: the budget in generations per prompt; parallel: chains per prompt (P);
  each chain makes n / parallel sequential attempts (L). The paper's
  sequential:parallel ratio is L:P.
  max_attempt_tokens: tokens one attempt may take (its EOS included).
  window: previous attempts kept in the context (the paper: 4; >= 1, since
    without any the chains are best-of-N).
  ends: where an attempt ends besides EOS (`SearchConfig.ends`).
  """
  n: int
  parallel: int
  max_attempt_tokens: int = 112
  window: int = WINDOW
  sampler: Sampler = Temperature(1.0)
  shared_prefix: bool = True
  ends: SolutionEnds = SolutionEnds()

  def __post_init__(self):
    for name in ("n", "parallel", "max_attempt_tokens"):
      value = getattr(self, name)
      if not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    if self.n % self.parallel:
      raise ValueError(f"parallel chains ({self.parallel}) must divide the budget n={self.n}: "
                       f"N = P chains x L steps")
    if not isinstance(self.window, int) or self.window < 1:
      raise ValueError(f"window (previous attempts in the context) must be an int >= 1, got "
                       f"{self.window!r}")

  @property
  def length(self) -> int:
    """Sequential attempts per chain (L)."""
    return self.n // self.parallel

  @property
  def slot(self) -> int:
    """Context slots per attempt: its content plus the closing EOS."""
    return self.max_attempt_tokens + 1

  @property
  def context_width(self) -> int:
    return self.window * self.slot


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class ChainResult:
  """Attempts of R = Q * P chains (device arrays)."""
  tokens: jax.Array  # [R, L, A] attempt tokens (EOS included when emitted), pad after
  num_new: jax.Array  # [R, L] tokens sampled per attempt
  ended: jax.Array  # [R, L] bool: the attempt ended with EOS or a blank line
  context: jax.Array  # [R, L] context tokens fed before the attempt (previous attempts)
  counters: Counters  # per row: policy tokens fed (contexts + attempts)


def pack_window(attempts: jax.Array, lengths: jax.Array, pad_id: int
                ) -> tuple[jax.Array, jax.Array]:
  """Attempts [R, W, S] with lengths [R, W] (0 = empty slot) -> their concatenation,
  packed left: (tokens [R, W * S], total length [R]); pad after."""
  r, w, s = attempts.shape
  ends = jnp.cumsum(lengths, axis=1)  # [R, W]
  starts = ends - lengths
  i = jnp.arange(w * s)
  which = jnp.minimum(jnp.sum(ends[:, None, :] <= i[None, :, None], axis=-1), w - 1)  # [R, W*S]
  offset = i[None, :] - jnp.take_along_axis(starts, which, axis=1)
  flat = attempts.reshape(r, w * s)
  index = jnp.clip(which * s + offset, 0, w * s - 1)
  packed = jnp.take_along_axis(flat, index, axis=1)
  total = ends[:, -1]
  return jnp.where(i[None, :] < total[:, None], packed, pad_id), total


def closed_attempt(tokens: jax.Array, content: jax.Array, eos_id: int, pad_id: int,
                   slot: int) -> tuple[jax.Array, jax.Array]:
  """An attempt as it enters the context: its content then EOS, in `slot` slots
  -> (tokens [R, slot], length [R] = content + 1)."""
  i = jnp.arange(slot)[None, :]
  body = jnp.pad(tokens, ((0, 0), (0, slot - tokens.shape[1])), constant_values=pad_id)
  closed = jnp.where(i < content[:, None], body, jnp.where(i == content[:, None], eos_id, pad_id))
  return closed, content + 1


def step_seed(seed: jax.Array, step: jax.Array) -> jax.Array:
  """Step 0 uses `seed` itself (it equals best-of-N's draw); later steps fold in the step."""
  return jnp.where(step == 0, seed, round_seed(seed, step)).astype(jnp.uint32)


def _feed_context(cfg: ModelConfig, params: dict, cache, prompt_lengths: jax.Array,
                  context: jax.Array, context_len: jax.Array, first_logits: jax.Array):
  """Empty each row's suffix, feed its context after the prompt -> (cache, next logits).

  Rows with an empty context take their next logits from the prompt's.
  """
  cache = cache.replace(lengths=prompt_lengths)
  hidden, cache = forward_hidden(cfg, params, context, cache=cache)
  last = jnp.take_along_axis(hidden, jnp.maximum(context_len - 1, 0)[:, None, None], axis=1)
  logits = unembed(cfg, params, last)[:, 0]
  logits = jnp.where((context_len > 0)[:, None], logits, first_logits)
  return cache.replace(lengths=prompt_lengths + context_len), logits


def chain_attempts(cfg: ModelConfig, rcfg: RevisionConfig, params: dict, prompts: jax.Array,
                   prompt_lengths: jax.Array, seed: jax.Array, prompt_streams: jax.Array, *,
                   eos_id: int, pad_id: int) -> ChainResult:
  q, width = prompts.shape
  p, a, w = rcfg.parallel, rcfg.max_attempt_tokens, rcfg.window
  r = q * p
  cache = init_cache(cfg, q, width)
  first_logits, cache = prefill(cfg, params, prompts, prompt_lengths, cache)
  rows = jnp.repeat(jnp.arange(q), p, total_repeat_length=r)
  # suffix: the context, the attempt, and decode's scratch slot
  suffix = rcfg.context_width + a + 1
  cache = fan_out(cache, p, suffix, rcfg.shared_prefix)
  first_logits, row_prompt_lengths = first_logits[rows], prompt_lengths[rows]
  streams = slot_streams(prompt_streams, p)
  max_start = rcfg.context_width + (0 if rcfg.shared_prefix else width)

  def one_step(carry, step):
    cache, window, window_lengths = carry
    context, context_len = pack_window(window, window_lengths, pad_id)
    cache, logits = _feed_context(cfg, params, cache, row_prompt_lengths, context, context_len,
                                  first_logits)
    d = decode(cfg, params, cache, logits, seed=step_seed(seed, step), row_streams=streams,
               max_new=jnp.full((r,), a, jnp.int32), stop_tokens=jnp.asarray([eos_id]),
               sampler=rcfg.sampler, buffer_len=a, pad_id=pad_id, max_start=max_start,
               ends=rcfg.ends)
    content, ended = content_length(d.tokens, d.num_new, eos_id, rcfg.ends)
    closed, closed_len = closed_attempt(d.tokens, content, eos_id, pad_id, rcfg.slot)
    window = jnp.concatenate([window[:, 1:], closed[:, None]], axis=1)
    window_lengths = jnp.concatenate([window_lengths[:, 1:], closed_len[:, None]], axis=1)
    return (d.cache, window, window_lengths), (d.tokens, d.num_new, ended, context_len)

  window = jnp.full((r, w, rcfg.slot), pad_id, jnp.int32)
  window_lengths = jnp.zeros((r, w), jnp.int32)
  _, (tokens, num_new, ended, context) = jax.lax.scan(
      one_step, (cache, window, window_lengths), jnp.arange(rcfg.length))
  swap = lambda x: jnp.swapaxes(x, 0, 1)
  tokens, num_new, ended, context = swap(tokens), swap(num_new), swap(ended), swap(context)
  counters = chain_counters(row_prompt_lengths, context, num_new)
  return ChainResult(tokens, num_new, ended, context, counters)


def chain_counters(prompt_lengths: jax.Array, context: jax.Array, num_new: jax.Array) -> Counters:
  """Policy work per row [R]: each step feeds its context [R, L], then samples
  its attempt [R, L], both right after the prompt (counted once, by the caller)."""
  fed = context + num_new
  fed_context = jnp.sum(context_sum(prompt_lengths[:, None], fed), axis=1)
  zero = jnp.zeros_like(prompt_lengths)
  return Counters(jnp.sum(fed, axis=1).astype(jnp.int32), fed_context, zero,
                  jnp.zeros(prompt_lengths.shape, jnp.float32))


_STATIC = ("cfg", "rcfg", "eos_id", "pad_id")
run_chains = jax.jit(chain_attempts, static_argnames=_STATIC)
run_chains.__doc__ = """P chains of L attempts for each right-padded prompt [Q, W] (lengths [Q]).

seed: uint32; prompt_streams [Q] uint32: a prompt's random stream (chain c of
prompt q samples with stream q_stream * P + c, as best-of-N's row c does).
"""
