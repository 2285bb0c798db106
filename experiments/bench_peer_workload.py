r"""The peers' headline workload, timed: PRM beam search at N=256 over 500 prompts.

    python -m experiments.bench_peer_workload --config=llama_1b --n=256 --m=4 \
        --json_out=runs/peer_workload.jsonl

huggingface/search-and-learn's README estimates 60+ hours for beam search at
N=256 on MATH-500 on one GPU. This script runs that workload's shape with a
Llama-3.2-1B-shaped policy and a same-shaped PRM (value head), random weights
in --dtype: a Python-free `ttc_jax.search` beam search (one jitted call per
--prompts_per_call prompts). Random weights cannot decide when a step or a
solution ends, so both are forced: no token stops a step (the stop-token ids
are out of the vocabulary), every step is exactly --step_tokens long and every
beam runs --rounds rounds (solutions of rounds x step_tokens tokens). The
timing then means a fixed amount of work, which the JSON line spells out
(tokens generated and scored, per-call seconds).

`setup_s` is the time to make both models' random weights. One untimed call
compiles; --calls timed calls (fresh random prompts each)
give the median seconds per call, from which `hours_for_total_prompts`
extrapolates to --total_prompts (500 = MATH-500): the calls are identical in
work, so the extrapolation is linear. `peak_bytes` is the device's peak memory
in use (when the backend reports it).
"""

from __future__ import annotations

import statistics
import time
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from experiments.bench_decode import emit_line
from ttc_jax.bench_configs import get_config
from ttc_jax.model import init_params
from ttc_jax.search.api import search_capacity
from ttc_jax.search.config import SearchConfig
from ttc_jax.search.engine import run_search
from ttc_jax.verifier.model import VerifierConfig, init_verifier

# A stop / EOS id no sampler can produce: steps and solutions run their full length.
_NEVER = -1


def _peak_bytes() -> int | None:
  stats = jax.devices()[0].memory_stats() or {}
  return stats.get("peak_bytes_in_use")


def workload_config(n: int, m: int, step_tokens: int, rounds: int) -> SearchConfig:
  return SearchConfig("beam", n, m=m, max_rounds=rounds, max_step_tokens=step_tokens,
                      max_solution_tokens=rounds * step_tokens, max_steps=rounds)


def run_benchmark(config: str = "llama_1b", *, n: int = 256, m: int = 4, prompt_len: int = 128,
                  step_tokens: int = 32, rounds: int = 40, prompts_per_call: int = 2,
                  calls: int = 2, total_prompts: int = 500, dtype: str = "bfloat16",
                  seed: int = 0, print_fn: Callable[[str], None] = print) -> dict:
  """Times the workload; returns (and prints as JSON) one line."""
  if min(prompt_len, step_tokens, rounds, prompts_per_call, calls, total_prompts) < 1:
    raise ValueError("prompt_len, step_tokens, rounds, prompts_per_call, calls and "
                     "total_prompts must all be >= 1")
  setup_start = time.perf_counter()
  pcfg = get_config(config).replace(dtype=dtype)
  vcfg = VerifierConfig(model=pcfg, head="value", step_token_id=1)
  scfg = workload_config(n, m, step_tokens, rounds)
  pkey, vkey = jax.random.split(jax.random.key(seed))
  pparams = jax.jit(init_params, static_argnums=0)(pcfg, pkey)
  vparams = jax.jit(init_verifier, static_argnums=0)(vcfg, vkey)
  jax.block_until_ready((pparams, vparams))
  setup_s = time.perf_counter() - setup_start  # random weights for both models
  capacity = search_capacity(prompt_len, scfg, None)
  rng = np.random.default_rng(seed)

  def one_call(index: int):
    prompts = jnp.asarray(rng.integers(2, pcfg.vocab_size, (prompts_per_call, prompt_len)),
                          jnp.int32)
    out = run_search(pcfg, vcfg, scfg, pparams, vparams, prompts,
                     jnp.full((prompts_per_call,), prompt_len, jnp.int32),
                     jnp.asarray(seed + index, jnp.uint32),
                     jnp.arange(prompts_per_call, dtype=jnp.uint32),
                     jnp.asarray([_NEVER, _NEVER], jnp.int32), capacity=capacity, eos_id=_NEVER,
                     pad_id=0)
    return jax.device_get((out.counters.policy_tokens, out.counters.verifier_tokens,
                           out.lengths))

  start = time.perf_counter()
  one_call(0)
  first = time.perf_counter() - start
  times, policy_tokens, verifier_tokens = [], 0, 0
  for i in range(calls):
    start = time.perf_counter()
    p_tok, v_tok, num_new = one_call(i + 1)
    times.append(time.perf_counter() - start)
    policy_tokens, verifier_tokens = int(np.sum(p_tok)), int(np.sum(v_tok))
    if not (num_new == scfg.max_solution_tokens).all():
      raise RuntimeError(f"solutions were not forced to {scfg.max_solution_tokens} tokens: "
                         f"{sorted(set(np.asarray(num_new).tolist()))}")
  per_call = statistics.median(times)
  prompts_per_sec = prompts_per_call / per_call
  line = dict(
      config=config, n_params=pcfg.num_params(), verifier_params=vcfg.num_params(), dtype=dtype,
      method="beam", n=n, m=m, prompt_len=prompt_len, step_tokens=step_tokens, rounds=rounds,
      solution_tokens=scfg.max_solution_tokens, prompts_per_call=prompts_per_call,
      cache_capacity=capacity, calls=calls, seconds_per_call=per_call, times_s=times,
      compile_s=max(first - per_call, 0.0), setup_s=setup_s, prompts_per_sec=prompts_per_sec,
      policy_tokens_per_call=policy_tokens, verifier_tokens_per_call=verifier_tokens,
      policy_tokens_per_sec=policy_tokens / per_call,
      verifier_tokens_per_sec=verifier_tokens / per_call,
      total_prompts=total_prompts, hours_for_total_prompts=total_prompts / prompts_per_sec / 3600,
      peak_bytes=_peak_bytes(), device=jax.devices()[0].device_kind,
      backend=jax.default_backend(), jax_version=jax.__version__)
  return emit_line(line, print_fn)


def _define_flags():
  from absl import flags
  flags.DEFINE_string("config", "llama_1b", "Policy and PRM shape (ttc_jax.bench_configs).")
  flags.DEFINE_integer("n", 256, "Beam search budget N.")
  flags.DEFINE_integer("m", 4, "Beam width M.")
  flags.DEFINE_integer("prompt_len", 128, "Prompt tokens.")
  flags.DEFINE_integer("step_tokens", 32, "Tokens per step (forced).")
  flags.DEFINE_integer("rounds", 40, "Step rounds (forced; search-and-learn's num_iterations).")
  flags.DEFINE_integer("prompts_per_call", 2, "Prompts searched together in one jitted call.")
  flags.DEFINE_integer("calls", 2, "Timed calls (the median is reported).")
  flags.DEFINE_integer("total_prompts", 500, "Prompts to extrapolate to (MATH-500).")
  flags.DEFINE_enum("dtype", "bfloat16", ["float32", "bfloat16"], "Params and activations.")
  flags.DEFINE_integer("seed", 0, "Seed for weights, prompts and sampling.")
  flags.DEFINE_string("json_out", None, "JSONL output file (written atomically at the end).")
  return flags.FLAGS


def main(argv: Sequence[str]) -> None:
  del argv
  from absl import flags
  from experiments.bench_decode import write_jsonl_atomic
  f = flags.FLAGS
  line = run_benchmark(f.config, n=f.n, m=f.m, prompt_len=f.prompt_len,
                       step_tokens=f.step_tokens, rounds=f.rounds,
                       prompts_per_call=f.prompts_per_call, calls=f.calls,
                       total_prompts=f.total_prompts, dtype=f.dtype, seed=f.seed,
                       print_fn=lambda s: print(s, flush=True))
  if f.json_out:
    write_jsonl_atomic(f.json_out, [line])


if __name__ == "__main__":
  from absl import app
  _define_flags()
  app.run(main)
