"""Verifiers (PRM / ORM): an LM backbone plus a head that scores solution prefixes.

Every head turns the backbone's output at a position t into one logit whose
sigmoid is a probability; the *prefix score* at t (the probability that the
solution up to and including token t is on a good path) is that probability,
except for the token-level head, whose prefix score is the product of the
per-token probabilities over the solution tokens up to t. Step scores are the
prefix scores read at step-tag positions (the step delimiter "\\n" for the
built-in task).

Heads (`VerifierConfig.head`):
  "value"         scalar value head on the final hidden state (the paper's PRM,
                  HF value-head PRMs): logit = h_t . w + b.
  "token"         token-level head on the LM logits: p_t = sigmoid(a * log p_LM(token_t
                  | prefix) + b); a prefix scores prod p. A small backbone cannot redo
                  the arithmetic at one position, but its own log-probability of each
                  token already says a lot (an issue's experiment: within-question AUC
                  0.84 vs 0.54 for the value head).
  "good_token"    Math-Shepherd / RLHFlow style: probability of a "good" token versus
                  a "bad" token at the tag position: logit = l_good - l_bad.
  "class_softmax" Qwen-PRM style: a C-class head, softmax at the tag position,
                  probability of `positive_class`. Linear (transformers'
                  *ForTokenClassification), or with `class_hidden` > 0 one ReLU hidden
                  layer first (Qwen2.5-Math-PRM: Linear(D, D), ReLU, Linear(D, 2)).

ORMs are the same models trained with only the final step labelled.

Scoring is one forward pass over [B, T] rows (`score_rows`), or incremental
over a verifier KV cache (`VerifierState` + `extend`), which search uses so
each round scores only the new step's tokens. Both share `_prefix_scores`.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from kernels import backend as kernel_backend
from kernels.step_score_aggregate import step_score_aggregate
from ttc_jax.model import KVCache, ModelConfig, forward_hidden, init_cache, init_params
from ttc_jax.model.cache import commit_to_history, fan_out, fan_out_beams
from ttc_jax.model.transformer import unembed

HEADS = ("value", "token", "good_token", "class_softmax")
_LOG_EPS = 1e-12


@dataclasses.dataclass(frozen=True)
class VerifierConfig:
  """The verifier's static description (hashable: a jit static argument).

  step_token_id: the token whose positions carry step scores (the step
    delimiter, or a dedicated step tag for imported PRMs).
  good_token_id / bad_token_id: for "good_token".
  num_classes / positive_class: for "class_softmax".
  class_hidden: for "class_softmax": width of a ReLU hidden layer before the
    class logits (0: a linear head).
  delimiter_ids: the policy tokens that end a step, where step scores are
    read; () = (step_token_id,). Real tokenizers fuse the newline into other
    tokens (Llama-3's ".\n", "\n\n"): each of them ends a step. When
    step_token_id is not among them (an imported PRM's own tag: "ки",
    "<extra_0>"), the verifier sees the tag in each delimiter's place in the
    solution (not the prompt).
  token_init_scale / token_init_bias: the token head's initial (a, b).
  """
  model: ModelConfig
  head: str = "value"
  step_token_id: int = 0
  good_token_id: int = -1
  bad_token_id: int = -1
  num_classes: int = 2
  positive_class: int = 1
  class_hidden: int = 0
  delimiter_ids: tuple[int, ...] = ()
  token_init_scale: float = 1.0
  token_init_bias: float = 3.0

  def __post_init__(self):
    if self.head not in HEADS:
      raise ValueError(f"verifier head must be one of {HEADS}, got {self.head!r}")
    v = self.model.vocab_size
    if not 0 <= self.step_token_id < v:
      raise ValueError(f"step_token_id {self.step_token_id} outside the vocabulary [0, {v})")
    if self.head == "good_token":
      for name in ("good_token_id", "bad_token_id"):
        if not 0 <= getattr(self, name) < v:
          raise ValueError(f"head 'good_token' needs {name} in [0, {v}), got "
                           f"{getattr(self, name)}")
      if self.good_token_id == self.bad_token_id:
        raise ValueError("good_token_id and bad_token_id must differ")
    if self.head == "class_softmax" and not 0 <= self.positive_class < self.num_classes:
      raise ValueError(f"positive_class {self.positive_class} outside [0, {self.num_classes})")
    bad = [i for i in self.delimiter_ids if not 0 <= i < v]
    if bad or not isinstance(self.delimiter_ids, tuple):
      raise ValueError(f"delimiter_ids must be a tuple of ids in [0, {v}), got "
                       f"{self.delimiter_ids!r}")
    if self.class_hidden < 0:
      raise ValueError(f"class_hidden must be >= 0, got {self.class_hidden}")
    if self.class_hidden and self.head != "class_softmax":
      raise ValueError(f"class_hidden applies to head 'class_softmax' only, not {self.head!r}")

  @property
  def step_delimiters(self) -> tuple[int, ...]:
    """The policy tokens that end a step (where step scores are read)."""
    return self.delimiter_ids or (self.step_token_id,)

  @property
  def tag_in_place(self) -> bool:
    """Whether the verifier reads its tag in place of the policy's delimiters."""
    return self.step_token_id not in self.step_delimiters

  @property
  def cumulative(self) -> bool:
    """Whether prefix scores are products of per-token probabilities."""
    return self.head == "token"

  def replace(self, **changes) -> "VerifierConfig":
    return dataclasses.replace(self, **changes)

  def to_dict(self) -> dict:
    d = dataclasses.asdict(self)
    d["model"] = self.model.to_dict()
    return d

  @classmethod
  def from_dict(cls, d: dict) -> "VerifierConfig":
    d = dict(d)  # fields added later (class_hidden) keep their defaults when absent
    d["model"] = ModelConfig.from_dict(d["model"])
    d["delimiter_ids"] = tuple(d.get("delimiter_ids", ()))  # a JSON list
    return cls(**d)

  def num_params(self) -> int:
    return self.model.num_params() + sum(math.prod(s) for s in _head_shapes(self).values())

  def flops_per_token(self, context_len: int = 0) -> float:
    """Forward FLOPs per scored token (the LM head counts: token/good_token use it)."""
    return self.model.flops_per_token(context_len)


def _head_shapes(vcfg: VerifierConfig) -> dict[str, tuple[int, ...]]:
  d = vcfg.model.d_model
  if vcfg.head == "value":
    return {"w": (d,), "b": ()}
  if vcfg.head == "token":
    return {"a": (), "b": ()}
  if vcfg.head == "class_softmax":
    h = vcfg.class_hidden
    if not h:
      return {"w": (d, vcfg.num_classes), "b": (vcfg.num_classes,)}
    # "w", "b" stay the output layer; the hidden layer comes after them so a
    # linear head's random draws are unchanged.
    return {"w": (h, vcfg.num_classes), "b": (vcfg.num_classes,),
            "w_hidden": (d, h), "b_hidden": (h,)}
  return {}  # good_token reads the LM logits


def init_head(vcfg: VerifierConfig, key: jax.Array) -> dict:
  """Fresh head parameters (f32): small random value/class heads, token head at (a, b)."""
  shapes = _head_shapes(vcfg)
  if vcfg.head == "token":
    return {"a": jnp.asarray(vcfg.token_init_scale, jnp.float32),
            "b": jnp.asarray(vcfg.token_init_bias, jnp.float32)}
  head = {}
  for name, shape in shapes.items():
    key, sub = jax.random.split(key)
    scale = 0.0 if name.startswith("b") else 1.0 / math.sqrt(shape[0])  # std 1/sqrt(fan_in)
    head[name] = scale * jax.random.normal(sub, shape, jnp.float32)
  return head


def init_verifier(vcfg: VerifierConfig, key: jax.Array, lm_params: dict | None = None) -> dict:
  """{"lm": backbone params, "head": head params}; the backbone from `lm_params`
  (e.g. a policy checkpoint, the paper's initialisation) or random."""
  lm_key, head_key = jax.random.split(key)
  lm = lm_params if lm_params is not None else init_params(vcfg.model, lm_key)
  return {"lm": lm, "head": init_head(vcfg, head_key)}


def check_compatible(vcfg: VerifierConfig, policy_cfg: ModelConfig) -> None:
  """The verifier reads the policy's token ids, so both must share a vocabulary."""
  if vcfg.model.vocab_size != policy_cfg.vocab_size:
    raise ValueError(f"verifier vocabulary size {vcfg.model.vocab_size} differs from the "
                     f"policy's {policy_cfg.vocab_size}: they must share a tokenizer")


# ---------------------------------------------------------------- per-position logits

def position_logits(vcfg: VerifierConfig, params: dict, hidden: jax.Array, tokens: jax.Array,
                    prev_hidden: jax.Array) -> jax.Array:
  """f32 logit [B, T] per position: sigmoid(logit) is the per-position probability.

  hidden [B, T, D]: final-normed hidden states of `tokens` [B, T]; prev_hidden
  [B, D]: the hidden state before tokens[:, 0] (the token head needs the LM's
  prediction of every token, made one position earlier).
  """
  head = params["head"]
  if vcfg.head == "value":
    return jnp.einsum("btd,d->bt", hidden.astype(jnp.float32), head["w"]) + head["b"]
  if vcfg.head == "class_softmax":
    x = hidden.astype(jnp.float32)
    if vcfg.class_hidden:
      x = jax.nn.relu(jnp.einsum("btd,dh->bth", x, head["w_hidden"]) + head["b_hidden"])
    logits = jnp.einsum("btd,dc->btc", x, head["w"]) + head["b"]
    return _one_vs_rest(logits, vcfg.positive_class)
  if vcfg.head == "good_token":
    logits = unembed(vcfg.model, params["lm"], hidden)  # [B,T,V]
    return logits[..., vcfg.good_token_id] - logits[..., vcfg.bad_token_id]
  # token head: log p_LM(token_t | < t) from the hidden state at t - 1.
  before = jnp.concatenate([prev_hidden[:, None].astype(hidden.dtype), hidden[:, :-1]], axis=1)
  logp = jax.nn.log_softmax(unembed(vcfg.model, params["lm"], before), axis=-1)
  token_logp = jnp.take_along_axis(logp, tokens[..., None], axis=-1)[..., 0]
  return head["a"] * token_logp + head["b"]


def _one_vs_rest(logits: jax.Array, positive: int) -> jax.Array:
  """Logit of P(class = positive) under softmax(logits [..., C])."""
  others = jnp.concatenate([logits[..., :positive], logits[..., positive + 1:]], axis=-1)
  return logits[..., positive] - jax.nn.logsumexp(others, axis=-1)


def _prefix_scores(vcfg: VerifierConfig, logit: jax.Array, scored: jax.Array,
                   log_prefix0: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Per-position logits [B, T] -> (prefix scores [B, T], final log prefix [B]).

  scored [B, T]: which tokens belong to the solution (only those enter the
  token head's product). log_prefix0 [B]: the log prefix score carried in.
  """
  if not vcfg.cumulative:
    return jax.nn.sigmoid(logit), log_prefix0
  log_p = jnp.where(scored, jax.nn.log_sigmoid(logit), 0.0)
  log_prefix = log_prefix0[:, None] + jnp.cumsum(log_p, axis=1)
  return jnp.exp(log_prefix), log_prefix[:, -1]


def shown_tokens(vcfg: VerifierConfig, tokens: jax.Array) -> jax.Array:
  """Solution tokens as the verifier reads them: the policy's step delimiters
  replaced by the PRM's step tag when it is not one (`VerifierConfig.delimiter_ids`)."""
  if not vcfg.tag_in_place:
    return tokens
  return jnp.where(is_step_end(vcfg, tokens), vcfg.step_token_id, tokens)


def is_step_end(vcfg: VerifierConfig, tokens: jax.Array) -> jax.Array:
  """bool, tokens' shape: which tokens end a step."""
  return jnp.isin(tokens, jnp.asarray(vcfg.step_delimiters, tokens.dtype))


# ---------------------------------------------------------------- one-pass scoring

def score_rows(vcfg: VerifierConfig, params: dict, tokens: jax.Array,
               prompt_lengths: jax.Array, lengths: jax.Array,
               dropout_rng: jax.Array | None = None, dropout_rate: float = 0.0):
  """One forward pass over (prompt + solution) rows -> (prefix scores, logits).

  tokens [B, T] right-padded; prompt_lengths, lengths [B]. Returns prefix
  scores [B, T] (0 outside the solution) and per-position logits [B, T] (for
  the training loss). No per-step re-scoring: every step's score comes out of
  this one pass (`step_scores` gathers them).
  """
  b, t = tokens.shape
  pos = jnp.arange(t)[None, :]
  solution = (pos >= prompt_lengths[:, None]) & (pos < lengths[:, None])
  tokens = jnp.where(solution, shown_tokens(vcfg, tokens), tokens)  # the prompt as it is
  hidden, _ = forward_hidden(vcfg.model, params["lm"], tokens, dropout_rng=dropout_rng,
                             dropout_rate=dropout_rate)
  logit = position_logits(vcfg, params, hidden, tokens, jnp.zeros((b, hidden.shape[-1])))
  scores, _ = _prefix_scores(vcfg, logit, solution, jnp.zeros((b,), jnp.float32))
  return jnp.where(solution, scores, 0.0), logit


def step_positions(vcfg: VerifierConfig, tokens: jax.Array, prompt_lengths: jax.Array,
                   lengths: jax.Array) -> jax.Array:
  """bool [B, T]: where step scores are read: every step tag in the solution,
  plus the last solution token when it is not a tag (an unterminated final step,
  e.g. a solution cut at its token limit: `split_steps` counts it too)."""
  pos = jnp.arange(tokens.shape[1])[None, :]
  solution = (pos >= prompt_lengths[:, None]) & (pos < lengths[:, None])
  return solution & (is_step_end(vcfg, tokens) | (pos == lengths[:, None] - 1))


def compact(values: jax.Array, where: jax.Array, width: int) -> tuple[jax.Array, jax.Array]:
  """Packs values [B, T] at positions `where` [B, T] to the left: ([B, width], mask [B, width]).

  Entries past `width` are dropped. Where a kernel runs (GPU, or
  TTC_JAX_KERNELS=pallas_interpret) f32 scores go through the step-score
  kernel (kernels/step_score_aggregate), which packs them in one pass over
  row tiles instead of a scatter.
  """
  impl = kernel_backend.resolve("auto", tpu_ready=False)
  if impl != "xla" and values.dtype == jnp.float32:
    packed, mask, _ = step_score_aggregate(values, where, how="last", max_steps=width, impl=impl)
    return packed, mask
  slot = jnp.cumsum(where, axis=1) - 1
  slot = jnp.where(where & (slot < width), slot, width)  # width = a dropped scratch column
  rows = jnp.arange(values.shape[0])[:, None]
  out = jnp.zeros((values.shape[0], width + 1), values.dtype).at[rows, slot].set(values)
  count = jnp.minimum(jnp.sum(where, axis=1), width)
  return out[:, :width], jnp.arange(width)[None, :] < count[:, None]


def step_scores(vcfg: VerifierConfig, params: dict, tokens: jax.Array, prompt_lengths: jax.Array,
                lengths: jax.Array, max_steps: int) -> tuple[jax.Array, jax.Array]:
  """Scores at every step tag of every row in one pass -> (scores [B, S], mask [B, S])."""
  scores, _ = score_rows(vcfg, params, tokens, prompt_lengths, lengths)
  return compact(scores, step_positions(vcfg, tokens, prompt_lengths, lengths), max_steps)


# ---------------------------------------------------------------- incremental scoring

@jax.tree_util.register_dataclass
@dataclasses.dataclass
class VerifierState:
  """The verifier's KV cache plus what the next chunk of tokens needs."""
  cache: KVCache
  last_hidden: jax.Array  # [B, D] hidden state at the last fed position
  log_prefix: jax.Array  # [B] f32 log prefix score of the solution so far (token head)
  score: jax.Array  # [B] f32 prefix score at the last fed solution position

  def gather_rows(self, index: jax.Array) -> "VerifierState":
    take = lambda x: jnp.take(x, index, axis=0)
    return VerifierState(self.cache.gather_rows(index), take(self.last_hidden),
                         take(self.log_prefix), take(self.score))

  def commit(self, parents: jax.Array, block_parents: jax.Array, keep: jax.Array
             ) -> "VerifierState":
    """Rows take their parent's state [R]; the beam history follows the
    blocks' parents (`ttc_jax.model.cache.commit_to_history`)."""
    take = lambda x: jnp.take(x, parents, axis=0)
    return VerifierState(commit_to_history(self.cache, block_parents, keep),
                         take(self.last_hidden), take(self.log_prefix), take(self.score))

  def take_rows(self, index: jax.Array) -> "VerifierState":
    """Rows `index` from any prompts (`KVCache.take_rows`)."""
    take = lambda x: jnp.take(x, index, axis=0)
    return VerifierState(self.cache.take_rows(index), take(self.last_hidden),
                         take(self.log_prefix), take(self.score))

  def put_rows(self, index: jax.Array, rows: "VerifierState") -> "VerifierState":
    put = lambda full, part: full.at[index].set(part)
    return VerifierState(self.cache.put_rows(index, rows.cache),
                         put(self.last_hidden, rows.last_hidden),
                         put(self.log_prefix, rows.log_prefix), put(self.score, rows.score))


def fan_out_state(state: VerifierState, n: int, suffix_capacity: int,
                  shared: bool) -> VerifierState:
  """A state over Q prompts -> over their Q * N rows (`ttc_jax.model.cache.fan_out`)."""
  return _fanned(state, fan_out(state.cache, n, suffix_capacity, shared), n)


def _fanned(state: VerifierState, cache: KVCache, n: int) -> VerifierState:
  """`state`'s per-prompt fields repeated for each prompt's N rows, with `cache`."""
  rows = jnp.repeat(jnp.arange(state.cache.batch_size), n)
  take = lambda x: jnp.take(x, rows, axis=0)
  return VerifierState(cache, take(state.last_hidden), take(state.log_prefix), take(state.score))


def fan_out_beams_state(state: VerifierState, n: int, m: int, suffix_capacity: int,
                        history_capacity: int, shared: bool) -> VerifierState:
  """A state over Q prompts -> over Q * N beams (`ttc_jax.model.cache.fan_out_beams`)."""
  return _fanned(state, fan_out_beams(state.cache, n, m, suffix_capacity, history_capacity,
                                      shared), n)


def start(vcfg: VerifierConfig, params: dict, prompts: jax.Array, prompt_lengths: jax.Array,
          capacity: int) -> VerifierState:
  """Feeds right-padded prompts [B, T] (true lengths [B]) into a fresh verifier cache."""
  b = prompts.shape[0]
  cache = init_cache(vcfg.model, b, capacity)
  hidden, cache = forward_hidden(vcfg.model, params["lm"], prompts,
                                 cache=cache.replace(lengths=jnp.zeros_like(prompt_lengths)),
                                 cache_is_empty=True)
  last = jnp.take_along_axis(hidden, (prompt_lengths - 1)[:, None, None], axis=1)[:, 0]
  return VerifierState(cache.replace(lengths=prompt_lengths), last,
                       jnp.zeros((b,), jnp.float32), jnp.zeros((b,), jnp.float32))


def extend(vcfg: VerifierConfig, params: dict, state: VerifierState, tokens: jax.Array,
           num_new: jax.Array, suffix_is_empty: bool = False) -> tuple[VerifierState, jax.Array]:
  """Scores a chunk of solution tokens [B, T] (num_new [B] real ones per row).

  Writes their keys/values after each row's cached length (padding beyond
  num_new lands past the new length: masked and overwritten later, as in
  prefill). Returns (state, prefix scores [B, T]); rows with num_new = 0 keep
  their state. Equal to one-pass scoring of the whole row (tested).
  """
  b, t = tokens.shape
  start_len = state.cache.lengths
  tokens = shown_tokens(vcfg, tokens)
  hidden, cache = forward_hidden(vcfg.model, params["lm"], tokens, cache=state.cache,
                                 cache_is_empty=suffix_is_empty)
  valid = jnp.arange(t)[None, :] < num_new[:, None]
  logit = position_logits(vcfg, params, hidden, tokens, state.last_hidden)
  scores, log_prefix = _prefix_scores(vcfg, logit, valid, state.log_prefix)
  last_index = jnp.maximum(num_new - 1, 0)[:, None]
  fed = num_new > 0
  last_hidden = jnp.take_along_axis(hidden, last_index[..., None], axis=1)[:, 0]
  last_score = jnp.take_along_axis(scores, last_index, axis=1)[:, 0]
  new_state = VerifierState(
      cache.replace(lengths=start_len + num_new),
      jnp.where(fed[:, None], last_hidden.astype(state.last_hidden.dtype), state.last_hidden),
      jnp.where(fed, log_prefix, state.log_prefix),
      jnp.where(fed, last_score, state.score))
  return new_state, jnp.where(valid, scores, 0.0)
