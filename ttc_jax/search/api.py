"""Host API: token-id lists in, per-prompt candidates with scores and budgets out."""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from kernels import backend as kernel_backend
from ttc_jax.decode.generate import pad_prompts, round_up
from ttc_jax.model import ModelConfig
from ttc_jax.search.config import Budget, SearchConfig, forward_flops
from ttc_jax.search.engine import run_search, sharded_search_fn
from ttc_jax.verifier.aggregate import get_aggregation
from ttc_jax.verifier.model import VerifierConfig, check_compatible


@dataclasses.dataclass
class SearchOutput:
  """Numpy results of one search: Q prompts x N candidates."""
  tokens: np.ndarray  # [Q, N, T] solution tokens (EOS / blank line included), pad after
  lengths: np.ndarray  # [Q, N]
  step_scores: np.ndarray  # [Q, N, S]
  step_mask: np.ndarray  # [Q, N, S] bool
  finished: np.ndarray  # [Q, N] bool: ended with EOS or a blank line (`SearchConfig.ends`)
  budget: Budget

  @property
  def num_prompts(self) -> int:
    return self.tokens.shape[0]

  def texts(self, tokenizer) -> list[list[str]]:
    return [[tokenizer.decode(self.tokens[q, i, :self.lengths[q, i]])
             for i in range(self.tokens.shape[1])] for q in range(self.num_prompts)]

  def scores(self, aggregation: str = "last") -> np.ndarray:
    """[Q, N] one score per candidate (`last`, `min` or `prod` over its steps)."""
    return np.asarray(get_aggregation(aggregation)(jnp.asarray(self.step_scores),
                                                   jnp.asarray(self.step_mask)))


def search_capacity(prompt_width: int, scfg: SearchConfig, max_seq_len: int | None) -> int:
  """Cache slots: prompt + solution + the chunk written past it (a step, lookahead
  rollouts, or a whole best-of-N solution) + the decode loop's scratch slot.
  Raises when that exceeds `max_seq_len` (None: no limit)."""
  beyond = scfg.max_step_tokens * (scfg.k + 1) if scfg.stepwise else 0
  needed = prompt_width + scfg.max_solution_tokens + beyond + 1
  if max_seq_len is not None and needed > max_seq_len + 1:
    raise ValueError(f"prompt width {prompt_width} + max_solution_tokens "
                     f"{scfg.max_solution_tokens} + step room {beyond} exceeds the model's "
                     f"max_seq_len {max_seq_len}")
  # Where the decode-attention kernel runs, a capacity in 64-slot blocks lets it
  # use 64-key blocks without padding (copying) the cache; 16 keeps CPU work small.
  return round_up(needed, 16 if kernel_backend.resolve("auto") == "xla" else 64)


def prepare_prompts(pcfg: ModelConfig, vcfg: VerifierConfig, prompts: Sequence[Sequence[int]],
                    scfg: SearchConfig, pad_id: int = 0, prompt_width: int | None = None):
  """Validated, right-padded prompts -> (tokens [Q, P], lengths [Q], cache capacity).

  P is `prompt_width`, else the power-of-two bucket, else (when the bucket
  would not fit the models' max_seq_len) the longest prompt rounded up to 8.
  """
  tokens, lengths = pad_prompts(prompts, pcfg.vocab_size, pad_id)
  if prompt_width is not None:
    if prompt_width < lengths.max():
      raise ValueError(f"prompt_width {prompt_width} < longest prompt {lengths.max()}")
    tokens = np.pad(tokens, ((0, 0), (0, max(0, prompt_width - tokens.shape[1]))),
                    constant_values=pad_id)[:, :prompt_width]
  max_seq_len = min(pcfg.max_seq_len, vcfg.model.max_seq_len)
  if prompt_width is None and search_capacity(tokens.shape[1], scfg, None) > max_seq_len + 1:
    tokens = tokens[:, :round_up(lengths.max(), 8)]
  return tokens, lengths, search_capacity(tokens.shape[1], scfg, max_seq_len)


def search(pcfg: ModelConfig, pparams: dict, vcfg: VerifierConfig, vparams: dict,
           prompts: Sequence[Sequence[int]], scfg: SearchConfig, *, eos_id: int, pad_id: int = 0,
           seed: int = 0, prompt_streams: Sequence[int] | None = None,
           prompt_width: int | None = None, mesh=None) -> SearchOutput:
  """Runs `scfg` over a batch of prompts in one jitted call.

  prompts: token ids (BOS + prompt). The step delimiter is the verifier's
  step token. prompt_streams [Q]: each prompt's random stream (default
  0..Q-1): give a prompt the same stream to get the same search alone or in
  a batch. prompt_width: pad prompts to this width (default: bucketed).
  mesh: a ("data", "model") mesh with model = 1: prompts are split over the
  data axis, each device searching its own (on a 2-core CPU, two XLA:CPU
  devices run ~1.6x faster than one: BUILD_NOTES.md). The batch is padded
  with copies of its last prompt to a multiple of the data axis.
  """
  check_compatible(vcfg, pcfg)
  scfg.ends.check_end_steps(vcfg.step_delimiters)
  if not 0 <= eos_id < pcfg.vocab_size:
    raise ValueError(f"eos_id {eos_id} outside the vocabulary [0, {pcfg.vocab_size})")
  tokens, lengths, capacity = prepare_prompts(pcfg, vcfg, prompts, scfg, pad_id, prompt_width)
  q = len(prompts)
  streams = np.arange(q) if prompt_streams is None else np.asarray(prompt_streams)
  if streams.shape != (q,):
    raise ValueError(f"prompt_streams must have one entry per prompt ({q}), got {streams.shape}")
  fn = run_search
  if mesh is not None:
    fn = sharded_search_fn(mesh)
    pparams, vparams, (tokens, lengths, streams) = data_parallel_inputs(
        mesh, pparams, vparams, tokens, lengths, streams)
  out = fn(*_engine_args(pcfg, vcfg, scfg, pparams, vparams, tokens, lengths, seed, streams,
                         eos_id), capacity=capacity, eos_id=eos_id, pad_id=pad_id)
  out = jax.device_get(out)  # one host copy
  out = jax.tree_util.tree_map(lambda x: x[:q * scfg.n], out)  # drop the padding prompts
  return _to_output(pcfg, vcfg, scfg, out, lengths[:q])


def _engine_args(pcfg, vcfg, scfg, pparams, vparams, tokens, lengths, seed, streams, eos_id):
  """`run_search`'s positional arguments."""
  return (pcfg, vcfg, scfg, pparams, vparams, jnp.asarray(tokens), jnp.asarray(lengths),
          jnp.asarray(seed, jnp.uint32), jnp.asarray(streams, jnp.uint32),
          jnp.asarray([*vcfg.step_delimiters, eos_id], jnp.int32))


def compiled_memory(pcfg: ModelConfig, pparams: dict, vcfg: VerifierConfig, vparams: dict,
                    prompts: Sequence[Sequence[int]], scfg: SearchConfig, *, eos_id: int,
                    pad_id: int = 0, prompt_width: int | None = None) -> dict:
  """XLA's memory plan for one `search` call (one device), in bytes.

  peak = arguments (params included) + outputs + temporaries (the KV caches
  and everything else live inside the call) - buffers aliased between them.
  Compiles the call again (not cached by jit).
  """
  tokens, lengths, capacity = prepare_prompts(pcfg, vcfg, prompts, scfg, pad_id, prompt_width)
  args = _engine_args(pcfg, vcfg, scfg, pparams, vparams, tokens, lengths, 0,
                      np.arange(len(prompts)), eos_id)
  m = run_search.lower(*args, capacity=capacity, eos_id=eos_id,
                       pad_id=pad_id).compile().memory_analysis()
  return dict(peak_bytes=int(m.argument_size_in_bytes + m.output_size_in_bytes
                             + m.temp_size_in_bytes - m.alias_size_in_bytes),
              temp_bytes=int(m.temp_size_in_bytes), argument_bytes=int(m.argument_size_in_bytes))


def _replicated(params, mesh):
  """Params on every device of the mesh (a no-op when they already are)."""
  everywhere = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  placed = lambda x: isinstance(x, jax.Array) and x.sharding.is_equivalent_to(everywhere, x.ndim)
  return jax.tree_util.tree_map(lambda x: x if placed(x) else jax.device_put(x, everywhere),
                                params)


def data_parallel_inputs(mesh, pparams, vparams, *per_prompt: np.ndarray):
  """(params, verifier params, per-prompt arrays) for a call split over the
  mesh's data axis: params on every device, each [Q, ...] array padded with
  copies of its last prompt to a multiple of the axis (drop the padding
  prompts' outputs)."""
  if mesh.shape.get("model", 1) != 1:
    raise ValueError(f"search and revisions shard prompts over the data axis only; got mesh "
                     f"{dict(mesh.shape)} (use model=1)")
  padded = -len(per_prompt[0]) % mesh.shape["data"]
  arrays = tuple(np.concatenate([x, np.repeat(x[-1:], padded, axis=0)]) for x in per_prompt)
  return _replicated(pparams, mesh), _replicated(vparams, mesh), arrays


def make_budget(pcfg: ModelConfig, vcfg: VerifierConfig, generations: int, counters,
                prompt_lengths: np.ndarray, rows_per_prompt: int, rounds: np.ndarray) -> Budget:
  """Per-prompt `Budget` from per-row device counters (rows prompt-major).

  The prompt is prefilled once per prompt by each model: its tokens and
  their contexts are added once here.
  """
  q = len(prompt_lengths)
  per_prompt = lambda x: np.asarray(x).reshape(q, rows_per_prompt).sum(axis=1)
  c = counters
  prompt_tokens = prompt_lengths.astype(np.int64)
  prompt_context = prompt_tokens * (prompt_tokens + 1) / 2
  policy_tokens, verifier_tokens = per_prompt(c.policy_tokens), per_prompt(c.verifier_tokens)
  return Budget(
      generations=np.full(q, generations),
      policy_tokens=policy_tokens, policy_prompt_tokens=prompt_tokens,
      verifier_tokens=verifier_tokens + prompt_tokens,
      policy_flops=forward_flops(pcfg, policy_tokens + prompt_tokens,
                                 per_prompt(c.policy_context) + prompt_context),
      verifier_flops=forward_flops(vcfg.model, verifier_tokens + prompt_tokens,
                                   per_prompt(c.verifier_context) + prompt_context),
      rounds=rounds)


def _to_output(pcfg, vcfg, scfg, out, prompt_lengths: np.ndarray) -> SearchOutput:
  q, n = len(prompt_lengths), scfg.n
  budget = make_budget(pcfg, vcfg, scfg.generations, out.counters, prompt_lengths, n,
                       np.asarray(out.rounds).reshape(q, n).max(axis=1))
  s = scfg.max_steps
  mask = np.arange(s)[None, :] < np.asarray(out.num_steps)[:, None]
  return SearchOutput(
      tokens=np.asarray(out.tokens).reshape(q, n, -1), lengths=np.asarray(out.lengths).reshape(q, n),
      step_scores=np.asarray(out.step_scores).reshape(q, n, s), step_mask=mask.reshape(q, n, s),
      finished=np.asarray(out.finished).reshape(q, n), budget=budget)
