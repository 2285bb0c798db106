"""Search settings and the budget every search result carries."""

from __future__ import annotations

import dataclasses

import numpy as np

from ttc_jax.decode.ends import SolutionEnds
from ttc_jax.decode.samplers import Sampler, Temperature

METHODS = ("best_of_n", "beam", "lookahead", "dvts")


@dataclasses.dataclass(frozen=True)
class SearchConfig:
  """Static search settings (hashable: a jit static argument).

  method: "best_of_n" (N independent samples), "beam" (keep the top N/M
    prefixes each round, expand each by M), "lookahead" (beam search whose
    candidates are ranked by the PRM score after k more greedy steps),
    "dvts" (N/M independent subtrees, each keeps its best of M per round).
  n: the budget in generations; m: beam / subtree width; k: lookahead steps.
  max_rounds: step rounds before unfinished beams are returned as they are.
  max_step_tokens: tokens one step may take; max_solution_tokens: a whole
    solution's limit; max_steps: step scores kept per candidate.
  sampler: how steps (and best-of-N solutions) are sampled; lookahead
    rollouts are always greedy (temperature 0), as in the paper.
  shared_prefix: the N rows of a prompt attend to its KV stored once (True) or
    to a copy each (False; the replicated baseline, same results).
  round_widths: how many beam-history widths a step-wise search runs its
    rounds at, in phases (the capacity and its halvings,
    `engine.history_widths`): early rounds then skip attention over empty
    slots; each width compiles the round once more. 1: every round over the
    whole capacity (same results).
  tail_fraction: once at most R / tail_fraction of the R rows are still
    sampling (or still have tokens to score), they go on alone in a batch
    that size (`engine.tail_rows`): rows whose step or solution ended, and
    beams that finished rounds ago, skip the last decode steps. The tail
    compiles the decode and scoring loops once more; 0: all rows to the end
    (same results).
  ends: where a solution ends besides EOS: where its text first ends in a
    blank line (`ttc_jax.decode.ends`; few-shot base models rarely emit EOS).
    The default, no ids: on EOS only.
  """
  method: str
  n: int
  m: int = 4
  k: int = 0
  max_rounds: int = 40
  max_step_tokens: int = 32
  max_solution_tokens: int = 112
  max_steps: int = 48
  sampler: Sampler = Temperature(1.0)
  shared_prefix: bool = True
  round_widths: int = 3
  tail_fraction: int = 8
  ends: SolutionEnds = SolutionEnds()

  def __post_init__(self):
    if self.method not in METHODS:
      raise ValueError(f"search method must be one of {METHODS}, got {self.method!r}")
    if not isinstance(self.n, int) or self.n < 1:
      raise ValueError(f"n (generations per prompt) must be an int >= 1, got {self.n!r}")
    if self.k < 0:
      raise ValueError(f"lookahead steps k must be >= 0, got {self.k}")
    if self.method != "lookahead" and self.k:
      raise ValueError(f"k={self.k} lookahead steps only apply to method 'lookahead'")
    if self.method != "best_of_n":
      if self.m < 1 or self.m > self.n:
        raise ValueError(f"beam width m must be in [1, n={self.n}], got {self.m}")
      if self.n % self.m:
        raise ValueError(f"n={self.n} is not divisible by the beam width m={self.m}")
    for name in ("max_rounds", "max_step_tokens", "max_solution_tokens", "max_steps",
                 "round_widths"):
      if getattr(self, name) < 1:
        raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
    if self.tail_fraction < 0:
      raise ValueError(f"tail_fraction must be >= 0 (0: no tail), got {self.tail_fraction}")

  @property
  def stepwise(self) -> bool:
    return self.method != "best_of_n"

  @property
  def group_size(self) -> int:
    """Slots that compete for expansion: the whole prompt (beam) or one subtree (DVTS)."""
    return self.m if self.method == "dvts" else self.n

  @property
  def generations(self) -> int:
    """The paper's budget: N, and N * (k + 1) for lookahead (rollouts count)."""
    return self.n * (self.k + 1)

  def to_dict(self) -> dict:
    d = dataclasses.asdict(self)
    d["sampler"] = {"type": type(self.sampler).__name__, **dataclasses.asdict(self.sampler)}
    return d


@dataclasses.dataclass
class Budget:
  """What one search spent, per prompt (numpy [Q] arrays).

  generations: the paper's convention; policy_tokens: tokens the policy
  generated (lookahead rollouts included; the prompt's prefill is in
  policy_prompt_tokens, computed once per prompt); verifier_tokens: tokens the
  verifier scored (prompt once + every step token, rollouts included);
  *_flops: forward FLOPs, 2 x params per token plus attention over each
  token's context (`ModelConfig.flops_per_token`).
  """
  generations: np.ndarray
  policy_tokens: np.ndarray
  policy_prompt_tokens: np.ndarray
  verifier_tokens: np.ndarray
  policy_flops: np.ndarray
  verifier_flops: np.ndarray
  rounds: np.ndarray

  def row(self, q: int) -> dict:
    return {f.name: _scalar(getattr(self, f.name)[q]) for f in dataclasses.fields(self)}


def _scalar(x):
  return float(x) if isinstance(x, (np.floating, float)) else int(x)


def forward_flops(cfg, tokens: np.ndarray, context_sum: np.ndarray) -> np.ndarray:
  """FLOPs of feeding `tokens` tokens whose context lengths add up to context_sum."""
  dense = cfg.flops_per_token(0)
  attention_per_key = cfg.flops_per_token(1) - dense
  return dense * tokens.astype(np.float64) + attention_per_key * context_sum.astype(np.float64)
