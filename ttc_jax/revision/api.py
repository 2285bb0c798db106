"""Host API for revisions: token-id prompts in, P x L scored attempts per prompt out.

`revise` runs the chains (`ttc_jax.revision.chains`) and scores every attempt
with a verifier in the same jitted call. The verifier reads each attempt
after the question alone (its prompt KV stored once, the best-of-N scorer):
that is the base PRM "used as is" of PAPER.md. With `in_context` it reads
each attempt after the attempts before it, as the revision model saw them
(`ttc_jax.revision.verifier`: the revision verifier). Attempts come back in the
order (chain, step), so `SearchOutput`-style [Q, N] arrays with N = P * L
hold chain c's step t at column c * L + t.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ttc_jax.decode.generate import pad_prompts, round_up
from ttc_jax.model import ModelConfig
from ttc_jax.revision.chains import RevisionConfig, chain_attempts
from ttc_jax.revision.verifier import score_in_context
from ttc_jax.search.api import SearchOutput, data_parallel_inputs, make_budget
from ttc_jax.search.engine import Counters, content_length, context_sum, score_candidates
from ttc_jax.verifier.model import VerifierConfig, check_compatible


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class _Revised:
  tokens: jax.Array  # [R, L, A]
  num_new: jax.Array  # [R, L]
  ended: jax.Array  # [R, L]
  step_scores: jax.Array  # [R * L, S]
  step_mask: jax.Array  # [R * L, S]
  counters: Counters  # [R] (verifier work spread over the chain rows)


def _revise(pcfg: ModelConfig, vcfg: VerifierConfig, rcfg: RevisionConfig, pparams: dict,
            vparams: dict, prompts: jax.Array, prompt_lengths: jax.Array, seed: jax.Array,
            prompt_streams: jax.Array, *, eos_id: int, pad_id: int, max_steps: int,
            in_context: bool = False) -> _Revised:
  chains = chain_attempts(pcfg, rcfg, pparams, prompts, prompt_lengths, seed, prompt_streams,
                   eos_id=eos_id, pad_id=pad_id)
  r, length, a = chains.tokens.shape
  flat = chains.tokens.reshape(r * length, a)
  content, _ = content_length(flat, chains.num_new.reshape(-1), eos_id, rcfg.ends)
  if in_context:  # the revision verifier: the previous attempts are read too
    scores, mask = score_in_context(vcfg, vparams, rcfg, prompts, prompt_lengths, chains,
                                    eos_id=eos_id, pad_id=pad_id, max_steps=max_steps)
    fed = content + chains.context.reshape(-1)
  else:
    scores, mask = score_candidates(vcfg, vparams, prompts, prompt_lengths, flat, content,
                                    n=rcfg.n, max_steps=max_steps)
    fed = content
  start = jnp.repeat(prompt_lengths, rcfg.n)
  per_row = lambda x: jnp.sum(x.reshape(r, length), axis=1)
  counters = dataclasses.replace(
      chains.counters, verifier_tokens=per_row(fed),
      verifier_context=per_row(context_sum(start, fed)))
  return _Revised(chains.tokens, chains.num_new, chains.ended, scores, mask, counters)


_STATIC = ("pcfg", "vcfg", "rcfg", "eos_id", "pad_id", "max_steps", "in_context")
run_revisions = jax.jit(_revise, static_argnames=_STATIC)


@functools.lru_cache(maxsize=32)
def sharded_revisions_fn(mesh, data_axis: str = "data"):
  """`run_revisions` data-parallel over `mesh`'s data axis (params replicated):
  each device runs the chains of its own slice of prompts, no collective.
  Q must be a multiple of the data axis size."""
  from jax.sharding import PartitionSpec as P
  rows, rep = P(data_axis), P()

  def fn(pcfg, vcfg, rcfg, pparams, vparams, prompts, prompt_lengths, seed, prompt_streams,
         **static):
    body = functools.partial(_revise, pcfg, vcfg, rcfg, **static)
    # Every output is row-major over (prompt, chain[, step]): split on axis 0.
    mapped = jax.shard_map(body, mesh=mesh, in_specs=(rep, rep, rows, rows, rep, rows),
                           out_specs=rows, check_vma=False)
    return mapped(pparams, vparams, prompts, prompt_lengths, seed, prompt_streams)

  return jax.jit(fn, static_argnames=_STATIC)


def revise(pcfg: ModelConfig, pparams: dict, vcfg: VerifierConfig, vparams: dict,
           prompts: Sequence[Sequence[int]], rcfg: RevisionConfig, *, eos_id: int,
           pad_id: int = 0, seed: int = 0, prompt_streams: Sequence[int] | None = None,
           prompt_width: int | None = None, max_steps: int = 48,
           in_context: bool = False, mesh=None) -> SearchOutput:
  """P chains of L revisions for each prompt (BOS + task prompt ids), scored.

  pparams: the revision model (a policy fine-tuned by experiments/train_revision.py).
  in_context: score each attempt after its previous attempts (a revision
  verifier, experiments/train_revision_verifier.py), else after the question alone.
  mesh: a ("data", "model") mesh with model = 1: prompts are split over the
  data axis (as `search` does; the same attempts as on one device).
  Returns a SearchOutput over N = P * L candidates per prompt, column c * L + t
  = chain c's step t; `budget.generations` = N, policy tokens include every
  step's re-fed context.
  """
  check_compatible(vcfg, pcfg)
  rcfg.ends.check_end_steps(vcfg.step_delimiters)
  if not 0 <= eos_id < pcfg.vocab_size:
    raise ValueError(f"eos_id {eos_id} outside the vocabulary [0, {pcfg.vocab_size})")
  tokens, lengths = pad_prompts(prompts, pcfg.vocab_size, pad_id)
  width = prompt_width or round_up(int(lengths.max()), 8)
  if width < lengths.max():
    raise ValueError(f"prompt_width {width} < longest prompt {lengths.max()}")
  tokens = np.pad(tokens, ((0, 0), (0, max(0, width - tokens.shape[1]))),
                  constant_values=pad_id)[:, :width]
  need = width + rcfg.context_width + rcfg.max_attempt_tokens + 1
  limit = min(pcfg.max_seq_len, vcfg.model.max_seq_len) + 1
  if need > limit:
    raise ValueError(f"prompt width {width} + {rcfg.window} previous attempts of "
                     f"{rcfg.slot} slots + an attempt of {rcfg.max_attempt_tokens} needs "
                     f"{need} positions; the models allow {limit}")
  q = len(prompts)
  streams = np.arange(q) if prompt_streams is None else np.asarray(prompt_streams)
  if streams.shape != (q,):
    raise ValueError(f"prompt_streams must have one entry per prompt ({q}), got {streams.shape}")
  fn = run_revisions
  if mesh is not None:
    fn = sharded_revisions_fn(mesh)
    pparams, vparams, (tokens, lengths, streams) = data_parallel_inputs(
        mesh, pparams, vparams, tokens, lengths, streams)
  out = jax.device_get(fn(
      pcfg, vcfg, rcfg, pparams, vparams, jnp.asarray(tokens), jnp.asarray(lengths),
      jnp.asarray(seed, jnp.uint32), jnp.asarray(streams, jnp.uint32), eos_id=eos_id,
      pad_id=pad_id, max_steps=max_steps, in_context=in_context))
  # Drop the mesh's padding prompts: every output has a fixed row count per prompt.
  out = jax.tree_util.tree_map(lambda x: x[:x.shape[0] // len(tokens) * q], out)
  lengths = lengths[:q]
  n = rcfg.n
  ended = np.asarray(out.ended).reshape(q, n)
  budget = make_budget(pcfg, vcfg, n, out.counters, lengths, rcfg.parallel,
                       np.full(q, rcfg.length))
  return SearchOutput(
      tokens=np.asarray(out.tokens).reshape(q, n, -1),
      lengths=np.asarray(out.num_new).reshape(q, n),
      step_scores=np.asarray(out.step_scores).reshape(q, n, max_steps),
      step_mask=np.asarray(out.step_mask).reshape(q, n, max_steps), finished=ended,
      budget=budget)
