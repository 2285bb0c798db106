r"""Test-time search sweeps: one JSON line per (question, config, seed), resumable.

  python -m experiments.run_search --policy=runs/small --prm=policy_logprob \
      --method=best_of_n,beam,lookahead --n=4,16,64 --m=4,sqrt --k=1,3 \
      --num_questions=100 --out_dir=runs/search_small

Grid: every method x n x m x k x seed. `m` ("4", or "sqrt" for M = sqrt(N))
applies to the step-wise methods (beam, lookahead, DVTS), `k` only to
lookahead; best-of-N lines record m = null, k = 0. Combinations that are
invalid (m > n, n % m != 0, sqrt(n) not an integer) are skipped with a note;
if nothing valid is left the run stops with the reasons.

Method "revisions" (needs --revision_model, a policy fine-tuned by
experiments/train_revision.py): P parallel chains of L sequential revisions,
N = P x L, for each --ratio ("L:P" sequential:parallel, e.g. "1:1" = sqrt(N)
chains of sqrt(N); "seq" = one chain of N; "par" = N chains of one, i.e.
best-of-N from the revision model). The PRM scores every attempt after the
question alone. Selections: "weighted" is hierarchical (within each chain,
then across the chain winners), "majority" and "best_of_n" are flat over all
N answers. Lines add `revision`: P, L, pass@1 per revision step, how
many correct answers the next revision turned incorrect, and `verifier`: what
scored the attempts ("prm": --prm after the question alone; else the
--revision_verifier directory, an ORM of experiments/train_revision_verifier.py
that reads each attempt after its previous attempts).

--prm: a verifier run directory (`ttc_jax.verifier.checkpoint.load_verifier`),
or "policy_logprob": an untrained token-level head on the policy's own weights
(prefix score = prod_t sigmoid(log p(token_t) + 3)), a baseline that needs no
training.

Real models (README "Bring your own model"): --policy_hf=DIR reads a Hugging
Face Llama / Qwen2 / Mistral folder with its tokenizer; --prm_hf=DIR a PRM
folder that shares it (--prm_format good_token: P(--prm_good_token) vs
--prm_bad_token at --prm_step_tag; class_softmax: a classification head's
positive class there; value_head: sigmoid of a value head there (Skywork-PRM;
TRL exports need it named: "auto" reads a causal LM as good_token);
chat_good_token, RLHFlow's chat format, is refused: it
scores finished solutions only, `ttc_jax.verifier.hf_prm.chat_rows`).
The policy's steps end at its newline; the PRM sees its tag in the newline's
place (`VerifierConfig.delimiter_ids`: with a real tokenizer every token that
holds a newline, e.g. Llama-3's ".\n", ends a step). On the few-shot datasets
a solution also ends where its text first ends in a blank line (an empty
step, or a fused ".\n\n": `ttc_jax.decode.ends`), since base models seldom
emit EOS after the answer; on the built-in task only on EOS.

Questions: the --split of --dataset ("arithmetic" = the policy run's built-in
task; "math500" / "gsm8k" = a JSONL from --data_path, 4-shot prompts, answers
graded by math-verify / numerically), in a fixed shuffled order (--question_order=shuffled, seed 0)
so any --num_questions prefix spans every difficulty, then
[--question_offset, + --num_questions). A question's random stream is its
index in the split, so its search does not depend on batching or offset.

Output (out_dir/):
  run.json       the settings every line depends on (policy, prm, dataset,
                 limits); a restart with different ones is refused.
  results.jsonl  one line per (question, config, seed): the config, every
                 candidate's final answer, correctness, step scores and
                 aggregated scores (each --aggregation), the chosen index and
                 its correctness per selection ("majority", and
                 "<selection>:<aggregation>" for the score-based ones), the
                 budget (generations, policy / verifier tokens, FLOPs).
  summary.json   accuracy per config x selection(:aggregation) over this
                 sweep's lines, mean budget; also printed as a table.

Resume: lines are appended a whole batch at a time, then flushed and fsynced;
a restart with the same flags skips the lines present and drops a torn last
line (an atomic rewrite of the good ones).
"""

from __future__ import annotations

import collections
import dataclasses
import json
import math
import os
import sys
import time
from typing import Callable, Sequence

import jax
import numpy as np
import tqdm

from ttc_jax import atomic
from ttc_jax.checkpoints import load_policy, load_policy_source, write_json_atomic
from ttc_jax.decode.ends import SolutionEnds
from ttc_jax.decode.samplers import Temperature
from ttc_jax.evaluation import prompt_ids, token_ends
from ttc_jax.revision import select as revision_select
from ttc_jax.revision.api import revise
from ttc_jax.revision.chains import RevisionConfig
from ttc_jax.search import METHODS, SearchConfig, SearchOutput, search
from ttc_jax.search.selection import SELECTIONS, answer_ids
from ttc_jax.tasks.spec import DatasetSpec
from ttc_jax.verifier.aggregate import AGGREGATIONS
from ttc_jax.verifier.model import VerifierConfig, check_compatible, init_verifier

POLICY_LOGPROB = "policy_logprob"
RESULTS_FILE = "results.jsonl"
SUMMARY_FILE = "summary.json"
SETTINGS_FILE = "run.json"
SCORE_DIGITS = 6  # step scores are rounded in the JSON lines (keeps N=256 lines small)
REVISIONS = "revisions"  # the sequential-revisions method (ttc_jax.revision), beside METHODS
AUTO_BATCH_ROWS = 512  # --batch_questions=0: about this many (question x candidate) rows per call
# Jitted once per rule: op-by-op dispatch compiled every primitive per new shape.
_SELECT = {name: jax.jit(rule) for name, rule in SELECTIONS.items()}


# ----------------------------------------------------------------------------- options


@dataclasses.dataclass(frozen=True)
class Options:
  """Everything a sweep reads (the absl flags, as plain values)."""
  policy: str
  out_dir: str
  prm: str = POLICY_LOGPROB
  methods: tuple[str, ...] = ("best_of_n",)
  ns: tuple[int, ...] = (4,)
  ms: tuple[str, ...] = ("4",)
  ks: tuple[int, ...] = (0,)
  ratios: tuple[str, ...] = ("1:1",)  # method revisions: sequential:parallel (L:P), seq, par
  policy_hf: bool = False  # policy is a Hugging Face checkpoint folder (with its tokenizer)
  prm_hf: "HfPrm | None" = None  # a Hugging Face PRM folder instead of --prm
  data_path: str | None = None  # the dataset's JSONL (default: ../shared/data when present)
  shots_path: str | None = None  # few-shot examples (default: the data file, never the item)
  num_shots: int = 4
  chat: bool = False  # prompts through the policy tokenizer's chat template (instruct models)
  revision_model: str | None = None  # method revisions: the revision model's run directory
  revision_verifier: str | None = None  # method revisions: scores attempts in context (not --prm)
  # method revisions: an attempt's limit; 4 previous attempts + 1 must fit max_seq_len
  max_attempt_tokens: int = 88
  aggregations: tuple[str, ...] = ("last", "min", "prod")
  selections: tuple[str, ...] = ("majority", "best_of_n", "weighted")
  temperature: float = 1.0
  seeds: tuple[int, ...] = (0,)
  dataset: str = "arithmetic"
  split: str = "test"
  num_questions: int | None = None
  question_offset: int = 0
  question_order: str = "shuffled"
  batch_questions: int = 0
  max_step_tokens: int = 32
  max_solution_tokens: int = 112
  max_rounds: int = 40
  max_steps: int = 48
  write_texts: bool = False
  few_compiles: bool = False  # one beam-history width, no tail call: same lines, fewer compiles

  def settings(self) -> dict:
    """What every result line depends on besides its own config (run.json)."""
    revision_model = self.revision_model and os.path.abspath(self.revision_model)
    # Only when given: out dirs made before the flag existed stay valid.
    extra = ({"revision_verifier": os.path.abspath(self.revision_verifier)}
             if self.revision_verifier else {})
    if self.revision_model:
      extra["max_attempt_tokens"] = self.max_attempt_tokens
    if self.policy_hf:
      extra["policy_format"] = "hf"
    if self.prm_hf:
      extra["prm_hf"] = self.prm_hf.settings()
    if not self.spec.built_in:
      extra.update({k: v for k, v in self.spec.record().items() if k != "dataset"},
                   solution_end="eos or blank line")
    return dict(policy=os.path.abspath(self.policy), revision_model=revision_model,
                prm=self.prm if self.prm == POLICY_LOGPROB else os.path.abspath(self.prm),
                dataset=self.dataset, split=self.split, question_order=self.question_order,
                max_step_tokens=self.max_step_tokens,
                max_solution_tokens=self.max_solution_tokens, max_rounds=self.max_rounds,
                max_steps=self.max_steps, **extra)

  @property
  def spec(self) -> DatasetSpec:
    return DatasetSpec(dataset=self.dataset, data_path=self.data_path,
                       shots_path=self.shots_path, num_shots=self.num_shots, chat=self.chat)


@dataclasses.dataclass(frozen=True)
class HfPrm:
  """--prm_hf: a PRM checkpoint folder (Llama / Qwen2 / Mistral) and how its scores are read.

  format: "good_token" (a causal LM: P(good) of the two-token softmax at the
  step tag, Math-Shepherd style), "class_softmax" (a token-classification
  head at the step tag, Qwen2.5-Math-PRM style), "value_head" (sigmoid of a
  value head at the step tag: TRL's ...WithValueHead, Skywork-o1-Open-PRM) or
  "auto" (from config.json; a TRL export reads as "good_token": name it);
  "chat_good_token" (RLHFlow) is refused by `check_sources`.
  step_tag: the token the PRM reads after each step (e.g. "ки", "<extra_0>");
  None: the policy's step delimiter itself. In search the policy's delimiter
  is shown to the PRM as this tag (`VerifierConfig.delimiter_ids`).
  """
  path: str
  format: str = "auto"
  step_tag: str | None = None
  good_token: str = "+"
  bad_token: str = "-"

  def settings(self) -> dict:
    return {**dataclasses.asdict(self), "path": os.path.abspath(self.path)}


@dataclasses.dataclass(frozen=True)
class Config:
  """One point of the sweep grid (seeds are looped separately)."""
  method: str
  n: int
  m: int | None  # None for best-of-N (no beams)
  k: int
  temperature: float
  ratio: str | None = None  # revisions only: the sequential:parallel spec
  parallel: int | None = None  # revisions only: chains per question (P)

  def to_dict(self, seed: int) -> dict:
    d = dict(method=self.method, n=self.n, m=self.m, k=self.k, temperature=self.temperature,
             seed=seed)
    if self.method == REVISIONS:
      d.update(ratio=self.ratio, parallel=self.parallel, length=self.n // self.parallel)
    return d

  def revision_config(self, opts: Options, ends: SolutionEnds = SolutionEnds()
                      ) -> RevisionConfig:
    return RevisionConfig(n=self.n, parallel=self.parallel,
                          max_attempt_tokens=opts.max_attempt_tokens,
                          sampler=Temperature(self.temperature), ends=ends)

  def search_config(self, opts: Options, ends: SolutionEnds = SolutionEnds()) -> SearchConfig:
    return SearchConfig(method=self.method, n=self.n, m=self.m or 1, k=self.k,
                        max_rounds=opts.max_rounds, max_step_tokens=opts.max_step_tokens,
                        max_solution_tokens=opts.max_solution_tokens, max_steps=opts.max_steps,
                        sampler=Temperature(self.temperature), ends=ends,
                        **(dict(round_widths=1, tail_fraction=0) if opts.few_compiles else {}))

  def label(self) -> str:
    if self.method == REVISIONS:
      return f"revisions n={self.n} {self.ratio} (P={self.parallel})"
    beams = "" if self.m is None else f" m={self.m}"
    look = f" k={self.k}" if self.method == "lookahead" else ""
    return f"{self.method} n={self.n}{beams}{look}"


# ----------------------------------------------------------------------------- the grid


def resolve_m(spec: str, n: int) -> int:
  """Beam width from "4" or "sqrt" (M = sqrt(N), which must be an integer)."""
  spec = str(spec).strip()
  if spec == "sqrt":
    root = math.isqrt(n)
    if root * root != n:
      raise ValueError(f"m=sqrt needs a square n; sqrt({n}) is not an integer")
    return root
  try:
    return int(spec)
  except ValueError:
    raise ValueError(f"m must be an int or 'sqrt', got {spec!r}") from None


def resolve_parallel(spec: str, n: int) -> int:
  """Chains P at budget n for a sequential:parallel spec: "L:P" (a ratio: L / P
  fixed, L x P = n), "seq" (P = 1) or "par" (P = n)."""
  spec = str(spec).strip()
  if spec == "seq":
    return 1
  if spec == "par":
    return n
  try:
    seq, par = (int(x) for x in spec.split(":"))
  except ValueError:
    raise ValueError(f"ratio must be 'L:P' (sequential:parallel), 'seq' or 'par', got "
                     f"{spec!r}") from None
  if seq < 1 or par < 1:
    raise ValueError(f"ratio {spec!r}: both sides must be >= 1")
  # L / P = seq / par and L * P = n  ->  P^2 = n * par / seq
  squared, rest = divmod(n * par, seq)
  p = math.isqrt(squared)
  if rest or p * p != squared or n % p:
    raise ValueError(f"ratio {spec} does not split n={n} into whole chains (L x P = n with "
                     f"L:P = {spec})")
  return p


def _revision_configs(opts: Options, notes: list[str]) -> list[Config]:
  configs = []
  for n in opts.ns:
    for spec in opts.ratios:
      try:
        config = Config(REVISIONS, int(n), None, 0, float(opts.temperature), str(spec).strip(),
                        resolve_parallel(spec, int(n)))
        config.revision_config(opts)  # validates
      except ValueError as e:
        notes.append(f"skipped revisions n={n} ratio={spec}: {e}")
        continue
      if config not in configs:
        configs.append(config)
  return configs


def expand_grid(opts: Options) -> tuple[list[Config], list[str]]:
  """(valid configs in sweep order, notes on skipped ones).

  Raises ValueError with every reason when no combination is valid (a single
  explicitly invalid config is an error, an invalid corner of a sweep is not).
  """
  configs: list[Config] = []
  notes: list[str] = []
  for name in opts.aggregations:
    if name not in AGGREGATIONS:
      raise ValueError(f"unknown aggregation {name!r}; valid: {sorted(AGGREGATIONS)}")
  for name in opts.selections:
    if name not in SELECTIONS:
      raise ValueError(f"unknown selection {name!r}; valid: {sorted(SELECTIONS)}")
  for method in opts.methods:
    if method == REVISIONS:
      if not opts.revision_model:
        raise ValueError("method revisions needs a revision model (--revision_model)")
      configs.extend(_revision_configs(opts, notes))
      continue
    if method not in METHODS:
      raise ValueError(f"unknown search method {method!r}; valid: {list(METHODS) + [REVISIONS]}")
    # m only matters with beams, k only for lookahead: no duplicate lines.
    m_specs = [None] if method == "best_of_n" else list(opts.ms)
    ks = list(opts.ks) if method == "lookahead" else [0]
    for n in opts.ns:
      for m_spec in m_specs:
        for k in ks:
          try:
            m = None if m_spec is None else resolve_m(m_spec, n)
            config = Config(method, int(n), m, int(k), float(opts.temperature))
            config.search_config(opts)  # validates n, m, k and the limits
          except ValueError as e:
            notes.append(f"skipped {method} n={n} m={m_spec} k={k}: {e}")
            continue
          if config not in configs:  # e.g. m=4 and m=sqrt at n=16
            configs.append(config)
  if not configs:
    raise ValueError("no valid search config in the grid:\n  " + "\n  ".join(notes))
  return configs, notes


def computation(config: Config) -> tuple:
  """What a config computes: configs with equal keys give the same lines but for
  their labels, so a sweep runs each computation once. DVTS with one subtree
  (m = n) is beam search keeping one beam of n; revision chains depend on
  (n, P), not on how the ratio is spelled (at n = 1 every ratio is one attempt)."""
  if config.method == "dvts" and config.m == config.n:
    return dataclasses.astuple(dataclasses.replace(config, method="beam"))
  if config.method == REVISIONS:
    return (REVISIONS, config.n, config.parallel, config.temperature)
  return dataclasses.astuple(config)


def copied_line(line: dict, config: Config, seed: int, source: Config) -> dict:
  """`line` relabelled as `config`'s (same computation, see `computation`)."""
  return {**line, "config": config.to_dict(seed), "same_as": source.label()}


def check_sources(opts: Options) -> None:
  """Model / data flag combinations that cannot work, before anything loads."""
  opts.spec.check(hf_policy=opts.policy_hf)
  if opts.prm_hf and opts.prm != POLICY_LOGPROB:
    raise ValueError("give --prm or --prm_hf, not both")
  if opts.prm_hf and opts.prm_hf.format == "chat_good_token":
    raise ValueError("--prm_format=chat_good_token cannot run in search: its scores are read "
                     "inside a chat template between the steps, while search reads one tag "
                     "token per step. Score finished solutions with ttc_jax.verifier.hf_prm."
                     "chat_rows + score_solutions, or use --prm_format=good_token")


def selection_keys(selections: Sequence[str], aggregations: Sequence[str]) -> list[str]:
  """"majority" (score-free) and "<selection>:<aggregation>" for the score-based rules."""
  keys = []
  for sel in selections:
    keys.extend([sel] if sel == "majority" else [f"{sel}:{agg}" for agg in aggregations])
  return keys


# ----------------------------------------------------------------------------- models, data


def load_prm(spec: str, pcfg, pparams, tokenizer) -> tuple[VerifierConfig, dict]:
  """(vcfg, params) of --prm: a verifier run directory or "policy_logprob"."""
  if spec == POLICY_LOGPROB:
    vcfg = VerifierConfig(model=pcfg, head="token", step_token_id=tokenizer.newline_id)
    return vcfg, init_verifier(vcfg, jax.random.key(0), lm_params=pparams)
  try:  # written concurrently by another change; imported only when asked for
    from ttc_jax.verifier.checkpoint import load_verifier
  except ImportError as e:
    raise RuntimeError(f"--prm={spec} needs ttc_jax.verifier.checkpoint.load_verifier, which "
                       f"this checkout lacks ({e}); use --prm={POLICY_LOGPROB}") from e
  vcfg, vparams, vtok = load_verifier(spec)
  if vtok is not None and vtok != tokenizer:
    raise ValueError(f"the verifier at {spec} was trained with a different tokenizer than the "
                     "policy: they must share token ids")
  check_compatible(vcfg, pcfg)
  if tokenizer.newline_id not in vcfg.step_delimiters:
    raise ValueError(f"the verifier scores at tokens {vcfg.step_delimiters}, but the policy's "
                     f"step delimiter is {tokenizer.newline_id}")
  return vcfg, vparams


def single_token_id(tokenizer, text: str, flag: str) -> int:
  """The id of a text that must be exactly one token (a step tag, a good / bad token)."""
  ids = tokenizer.encode(text)
  if len(ids) != 1:
    raise ValueError(f"{flag}={text!r} is {len(ids)} tokens {ids} in this tokenizer; the PRM "
                     "reads one token")
  return ids[0]


_TOKENIZER_PROBE = "Solve 12 + 3.5 = x.\nThe answer is $\\boxed{\\frac{1}{2}}$ (b) ки +-"


def check_same_tokenizer(path: str, tokenizer) -> None:
  """A PRM folder with its own tokenizer must tokenize like the policy (the PRM
  reads the policy's token ids); a folder without one is taken to share it."""
  from ttc_jax.tokenizer import load_tokenizer
  try:
    own = load_tokenizer(path)
  except FileNotFoundError:
    return
  if own.vocab_size != tokenizer.vocab_size or (
      own.encode(_TOKENIZER_PROBE) != tokenizer.encode(_TOKENIZER_PROBE)):
    raise ValueError(f"the PRM at {path} has a different tokenizer than the policy: they must "
                     "share token ids")


def load_hf_prm_spec(spec: HfPrm, pcfg, tokenizer) -> tuple[VerifierConfig, dict]:
  """(vcfg, params) of --prm_hf; the PRM must share the policy's tokenizer."""
  from ttc_jax.verifier.hf_prm import load_hf_prm, resolve_format
  delimiter = tokenizer.newline_id
  tag = delimiter if spec.step_tag is None else single_token_id(tokenizer, spec.step_tag,
                                                                "--prm_step_tag")
  fmt = resolve_format(spec.path, spec.format)  # good / bad tokens only for "good_token"
  ids = {}
  if fmt == "good_token":
    ids = dict(good_token_id=single_token_id(tokenizer, spec.good_token, "--prm_good_token"),
               bad_token_id=single_token_id(tokenizer, spec.bad_token, "--prm_bad_token"))
  check_same_tokenizer(spec.path, tokenizer)
  vcfg, params = load_hf_prm(spec.path, fmt, step_tag_id=tag, dtype=pcfg.dtype, **ids)
  check_compatible(vcfg, pcfg)
  return (vcfg if tag == delimiter else vcfg.replace(delimiter_ids=(delimiter,))), params


def with_step_ends(vcfg: VerifierConfig, step_ends: tuple[int, ...]) -> VerifierConfig:
  """The verifier's config with steps ending at `step_ends` (`token_ends`)."""
  return vcfg if step_ends == vcfg.step_delimiters else vcfg.replace(delimiter_ids=step_ends)


def load_policy_any(opts: Options) -> tuple:
  """(cfg, params, tokenizer) of --policy (a run directory) or --policy_hf (a HF folder)."""
  return load_policy_source(opts.policy, opts.policy_hf)


def load_revision_model(path: str, tokenizer) -> tuple:
  """(config, params) of the revision model, which must share the policy's tokenizer."""
  rcfg, rparams, rtok = load_policy(path)
  if rtok != tokenizer:
    raise ValueError(f"the revision model at {path} uses a different tokenizer than the policy")
  return rcfg, rparams


def load_task(opts: Options):
  """The task behind --dataset (`DatasetSpec.load`)."""
  return opts.spec.load(None if opts.policy_hf else opts.policy)


def question_order(count: int, order: str) -> np.ndarray:
  """Split indices in sweep order: a fixed shuffle (every prefix spans the
  difficulty strata, which the test split lists in order) or the original."""
  if order == "original":
    return np.arange(count)
  if order == "shuffled":
    return np.random.default_rng(0).permutation(count)
  raise ValueError(f"question_order must be 'shuffled' or 'original', got {order!r}")


def select_questions(task, opts: Options) -> list[tuple[int, object]]:
  """[(index in the split, problem)] of this sweep."""
  if opts.split == "test":
    problems = task.test_problems()
  elif opts.split == "train":
    if opts.num_questions is None:
      raise ValueError("--split=train needs --num_questions")
    problems = task.train_problems(0, opts.question_offset + opts.num_questions)
  else:
    raise ValueError(f"split must be 'test' or 'train', got {opts.split!r}")
  if opts.question_offset < 0 or (opts.num_questions is not None and opts.num_questions < 1):
    raise ValueError("question_offset must be >= 0 and num_questions >= 1")
  order = question_order(len(problems), opts.question_order)
  end = None if opts.num_questions is None else opts.question_offset + opts.num_questions
  chosen = order[opts.question_offset:end]
  if len(chosen) == 0:
    raise ValueError(f"no questions: offset {opts.question_offset} past the {len(problems)} "
                     f"of split {opts.split!r}")
  return [(int(i), problems[i]) for i in chosen]


# ----------------------------------------------------------------------------- results file


def line_key(uid: str, config: dict) -> str:
  """The identity of a result line: question + config (method, n, m, k, temperature, seed)."""
  fields = ("method", "n", "m", "k", "temperature", "seed", "ratio")
  return json.dumps([uid] + [config.get(f) for f in fields])


def load_results(path: str, print_fn: Callable[[str], None] = print) -> dict[str, dict]:
  """Finished lines of results.jsonl by key; a torn or unreadable line is dropped
  (the file is rewritten atomically without it)."""
  if not os.path.exists(path):
    return {}
  with open(path, "rb") as fh:
    data = fh.read()
  pieces = data.split(b"\n")
  torn = pieces.pop()  # b"" when the file ends with a newline
  good, dropped = [], int(bool(torn.strip()))
  for piece in pieces:
    try:
      good.append(json.loads(piece))
    except (json.JSONDecodeError, UnicodeDecodeError):
      dropped += 1
  if dropped or torn:
    print_fn(f"note: dropped {dropped} torn/unreadable line(s) of {path}")
    atomic.write_lines(path, (json.dumps(line) for line in good))
  return {line_key(line["uid"], line["config"]): line for line in good}


def append_lines(path: str, lines: Sequence[dict]) -> None:
  """Appends whole lines and makes them durable before returning."""
  with open(path, "a") as fh:
    fh.write("".join(json.dumps(line) + "\n" for line in lines))
    fh.flush()
    os.fsync(fh.fileno())


def check_settings(out_dir: str, settings: dict) -> bool:
  """Refuses to mix results of different settings in one out_dir; whether run.json exists."""
  path = os.path.join(out_dir, SETTINGS_FILE)
  if not os.path.exists(path):
    return False
  with open(path) as fh:
    saved = json.load(fh)
  diff = {k: (saved.get(k), v) for k, v in settings.items() if saved.get(k) != v}
  if diff:
    raise ValueError(f"{out_dir} holds results made with other settings "
                     f"(saved, now): {diff}; use another --out_dir")
  return True


# ----------------------------------------------------------------------------- one batch


def _round(values) -> list[float]:
  return [round(float(v), SCORE_DIGITS) for v in values]


def _chosen(config: Config, selection: str, ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
  """[Q] index of the chosen candidate. Revisions' weighted selection is
  hierarchical over (chain, step); every other rule sees the N candidates flat."""
  if config.method == REVISIONS and selection == "weighted":
    shape = (ids.shape[0], config.parallel, config.n // config.parallel)
    chain, step = revision_select.hierarchical_weighted(ids.reshape(shape), scores.reshape(shape))
    return chain * shape[2] + step
  return np.asarray(_SELECT[selection](ids, scores))


def revision_summary(config: Config, correct: np.ndarray, verifier: str = "prm") -> dict:
  """A revisions line's extras from its candidates' correctness [N] (chain-major)."""
  chains = correct.reshape(1, config.parallel, config.n // config.parallel)
  flipped, correct_with_next = revision_select.revised_to_incorrect(chains)
  return dict(parallel=config.parallel, length=config.n // config.parallel, verifier=verifier,
              pass_at_step=[round(float(x), SCORE_DIGITS)
                            for x in revision_select.pass_at_step(chains)],
              revised_to_incorrect=flipped, correct_with_next=correct_with_next)


def result_lines(out: SearchOutput, questions: Sequence[tuple[int, object]], config: Config,
                 seed: int, task, tokenizer, aggregations: Sequence[str],
                 selections: Sequence[str], write_texts: bool = False,
                 verifier: str = "prm") -> list[dict]:
  """One JSON-ready dict per question of a search batch (len(questions) first rows of `out`)."""
  q = len(questions)
  texts = out.texts(tokenizer)[:q]
  answers = [[task.extract_answer(t) for t in row] for row in texts]
  flat = task.grade_many([p for (_, p), row in zip(questions, texts) for _ in row],
                         [t for row in texts for t in row])
  correct = np.asarray(flat, bool).reshape(q, -1)
  ids = answer_ids(answers)
  scores = {agg: out.scores(agg)[:q] for agg in aggregations}
  chosen = {}
  for key in selection_keys(selections, aggregations):
    sel, _, agg = key.partition(":")
    agg_scores = scores[agg] if agg else np.zeros(ids.shape, np.float32)
    chosen[key] = _chosen(config, sel, ids, agg_scores)
  lines = []
  for i, (index, problem) in enumerate(questions):
    line = dict(
        uid=problem.uid, question_index=index, difficulty=problem.difficulty,
        reference_answer=problem.answer, config=config.to_dict(seed),
        answers=answers[i], correct=correct[i].tolist(),
        finished=out.finished[i].tolist(), num_tokens=out.lengths[i].tolist(),
        step_scores=[_round(s[m]) for s, m in zip(out.step_scores[i], out.step_mask[i])],
        scores={agg: _round(v[i]) for agg, v in scores.items()},
        selected={key: dict(index=int(c[i]), answer=answers[i][int(c[i])],
                            correct=bool(correct[i, int(c[i])])) for key, c in chosen.items()},
        any_correct=bool(correct[i].any()), frac_correct=float(correct[i].mean()),
        budget=out.budget.row(i))
    if config.method == REVISIONS:
      line["revision"] = revision_summary(config, correct[i], verifier)
    if write_texts:
      line["texts"] = texts[i]
    lines.append(line)
  return lines


def batch_size(config: Config, requested: int, num_questions: int) -> int:
  """Prompts per jitted call: --batch_questions, or ~AUTO_BATCH_ROWS rows (0)."""
  size = requested if requested > 0 else max(1, AUTO_BATCH_ROWS // config.n)
  return max(1, min(size, num_questions))


# ----------------------------------------------------------------------------- summary


def summarize(lines: Sequence[dict], keys: Sequence[str]) -> list[dict]:
  """One row per config (method, n, m, k, temperature): accuracy per selection key,
  coverage, candidate pass rate and mean budget, over questions and seeds."""
  groups: dict[tuple, list[dict]] = collections.defaultdict(list)
  for line in lines:
    c = line["config"]
    groups[(c["method"], c["n"], c["m"], c["k"], c["temperature"], c.get("ratio"))].append(line)
  method_rank = {m: i for i, m in enumerate(METHODS + (REVISIONS,))}
  rows = []
  for (method, n, m, k, temperature, ratio), group in sorted(
      groups.items(), key=lambda kv: (method_rank.get(kv[0][0], 99), kv[0][1],
                                      kv[0][2] or 0, kv[0][3], kv[0][4], kv[0][5] or "")):
    mean = lambda xs: float(np.mean(xs)) if len(xs) else float("nan")
    accuracy = {key: mean([l["selected"][key]["correct"] for l in group if key in l["selected"]])
                for key in keys}
    budget = lambda f: mean([l["budget"][f] for l in group])
    rows.append(dict(
        method=method, n=n, m=m, k=k, temperature=temperature, ratio=ratio, lines=len(group),
        questions=len({l["uid"] for l in group}),
        seeds=sorted({l["config"]["seed"] for l in group}), accuracy=accuracy,
        coverage=mean([l["any_correct"] for l in group]),
        candidate_accuracy=mean([l["frac_correct"] for l in group]),
        generations=budget("generations"), policy_tokens=budget("policy_tokens"),
        verifier_tokens=budget("verifier_tokens"),
        flops=mean([l["budget"]["policy_flops"] + l["budget"]["verifier_flops"] for l in group])))
  return rows


def format_summary(rows: Sequence[dict], keys: Sequence[str]) -> str:
  """A fixed-width table: one row per config, one accuracy column per selection key."""
  head = ["method", "n", "m/ratio", "k", "lines"] + list(keys) + [
      "cover", "cand", "gens", "pol_tok", "ver_tok", "GFLOPs"]
  body = []
  for r in rows:
    width = r.get("ratio") or ("-" if r["m"] is None else str(r["m"]))
    body.append([r["method"], str(r["n"]), width, str(r["k"]),
                 str(r["lines"])] + [f"{r['accuracy'][k]:.3f}" for k in keys] + [
                     f"{r['coverage']:.3f}", f"{r['candidate_accuracy']:.3f}",
                     f"{r['generations']:.0f}", f"{r['policy_tokens']:.0f}",
                     f"{r['verifier_tokens']:.0f}", f"{r['flops'] / 1e9:.3f}"])
  widths = [max(len(x) for x in col) for col in zip(head, *body)]
  fmt = lambda cells: "  ".join(c.rjust(w) for c, w in zip(cells, widths))
  return "\n".join([fmt(head)] + [fmt(b) for b in body])


# ----------------------------------------------------------------------------- the sweep


def run(opts: Options, print_fn: Callable[[str], None] = print, progress: bool = True,
        mesh=None) -> dict:
  """Runs (or resumes) the sweep; returns the summary (also written to summary.json).

  mesh: optional ("data", "model=1") mesh: each search call splits its prompts
  over the data axis (results are identical; see `ttc_jax.search.search`).
  """
  configs, notes = expand_grid(opts)
  check_sources(opts)
  for note in notes:
    print_fn(f"note: {note}")
  os.makedirs(opts.out_dir, exist_ok=True)
  settings = opts.settings()
  saved = check_settings(opts.out_dir, settings)
  pcfg, pparams, tokenizer = load_policy_any(opts)
  vcfg, vparams = (load_hf_prm_spec(opts.prm_hf, pcfg, tokenizer) if opts.prm_hf else
                   load_prm(opts.prm, pcfg, pparams, tokenizer))
  task = load_task(opts)
  step_ends, ends = token_ends(tokenizer, task)
  vcfg = with_step_ends(vcfg, step_ends)
  reviser = load_revision_model(opts.revision_model, tokenizer) if any(
      c.method == REVISIONS for c in configs) else None
  revision_scorer = (load_prm(opts.revision_verifier, pcfg, pparams, tokenizer)
                     if reviser and opts.revision_verifier else (vcfg, vparams))
  revision_verifier = os.path.abspath(opts.revision_verifier) if opts.revision_verifier else "prm"
  questions = select_questions(task, opts)
  if not saved:  # only once everything loaded: a typo does not pin the out_dir
    write_json_atomic(os.path.join(opts.out_dir, SETTINGS_FILE), settings)
  prompts = {index: prompt_ids(task, tokenizer, p) for index, p in questions}
  # One prompt width for every batch: one compile per config, not per batch.
  width = -(-max(len(p) for p in prompts.values()) // 8) * 8

  path = os.path.join(opts.out_dir, RESULTS_FILE)
  done = load_results(path, print_fn)
  computed_by = {}  # computation -> the first config that runs it
  for c in configs:
    computed_by.setdefault(computation(c), c)
  work = [(c, s, [(i, p) for i, p in questions if line_key(p.uid, c.to_dict(s)) not in done])
          for c in configs for s in opts.seeds if computed_by[computation(c)] is c]
  total = sum(len(pending) for _, _, pending in work)
  planned = len(computed_by) * len(opts.seeds) * len(questions)
  print_fn(f"{len(configs)} config(s) ({len(computed_by)} distinct computations) x "
           f"{len(opts.seeds)} seed(s) x {len(questions)} question(s): {total} line(s) to "
           f"run, {planned - total} already in {path}")
  start = time.perf_counter()
  with tqdm.tqdm(total=total, desc="search", unit="line", disable=not progress,
                 file=sys.stderr) as bar:
    compiled_for = None
    for config, seed, pending in work:
      if not pending:
        continue
      if compiled_for not in (None, config):
        # Every config compiles its own executables, and each one keeps
        # ~10^3 memory maps on XLA:CPU: a long sweep ran into the kernel's
        # 65,530-map limit ("LLVM ERROR: Unable to allocate section memory").
        jax.clear_caches()
      compiled_for = config
      # Sized by the whole question list, not what is pending: a resumed run
      # reuses the compiled shape and computes rows exactly as the first run did.
      size = batch_size(config, opts.batch_questions, len(questions))
      bar.set_description(f"{config.label()} seed={seed}")
      for lo in range(0, len(pending), size):
        chunk = pending[lo:lo + size]
        # Pad the last batch with its first question: one compiled shape.
        padded = chunk + [chunk[0]] * (size - len(chunk))
        batch = dict(eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id, seed=seed,
                     prompt_streams=[i for i, _ in padded], prompt_width=width)
        if config.method == REVISIONS:
          out = revise(*reviser, *revision_scorer, [prompts[i] for i, _ in padded],
                       config.revision_config(opts, ends), max_steps=opts.max_steps,
                       in_context=bool(opts.revision_verifier), mesh=mesh, **batch)
        else:
          out = search(pcfg, pparams, vcfg, vparams, [prompts[i] for i, _ in padded],
                       config.search_config(opts, ends), mesh=mesh, **batch)
        lines = result_lines(out, chunk, config, seed, task, tokenizer, opts.aggregations,
                             opts.selections, opts.write_texts, revision_verifier)
        append_lines(path, lines)
        done.update((line_key(l["uid"], l["config"]), l) for l in lines)
        bar.update(len(chunk))
  copies = [copied_line(done[line_key(p.uid, source.to_dict(s))], c, s, source)
            for c in configs if (source := computed_by[computation(c)]) is not c
            for s in opts.seeds for _, p in questions
            if line_key(p.uid, c.to_dict(s)) not in done]
  if copies:
    append_lines(path, copies)
    done.update((line_key(l["uid"], l["config"]), l) for l in copies)
    print_fn(f"{len(copies)} line(s) copied from the same computation under another label "
             "(their `same_as` names it)")
  wanted = [done[line_key(p.uid, c.to_dict(s))] for c in configs for s in opts.seeds
            for _, p in questions]
  keys = selection_keys(opts.selections, opts.aggregations)
  rows = summarize(wanted, keys)
  summary = dict(settings=settings, selection_keys=keys, rows=rows, lines=len(wanted),
                 skipped=notes, wall_s=time.perf_counter() - start)
  write_json_atomic(os.path.join(opts.out_dir, SUMMARY_FILE), summary)
  print_fn(format_summary(rows, keys))
  return summary


# ----------------------------------------------------------------------------- CLI


def _define_flags():
  from absl import flags
  from experiments import dataset_flags
  flags.DEFINE_list("method", ["best_of_n"], f"Methods, of {list(METHODS) + [REVISIONS]}.")
  flags.DEFINE_list("n", ["4"], "Budgets N (generations per question).")
  flags.DEFINE_list("m", ["4"], "Beam / subtree widths M: ints, or 'sqrt' for M = sqrt(N).")
  flags.DEFINE_list("k", ["0"], "Lookahead steps (method lookahead only).")
  flags.DEFINE_list("ratio", ["1:1"], "Method revisions: sequential:parallel ratios 'L:P' "
                    "(L x P = N), 'seq' (one chain) or 'par' (N chains of one).")
  flags.DEFINE_string("revision_model", None, "Method revisions: the revision model's run "
                      "directory (experiments/train_revision.py --out_dir).")
  flags.DEFINE_string("revision_verifier", None, "Method revisions: score attempts with this "
                      "revision verifier (experiments/train_revision_verifier.py --out_dir), "
                      "which reads each after its previous attempts, instead of --prm.")
  flags.DEFINE_integer("max_attempt_tokens", 88, "Method revisions: tokens one attempt may "
                       "take (the context holds 4 previous ones: all must fit max_seq_len).")
  flags.DEFINE_list("aggregation", ["last", "min", "prod"], "Step aggregations recorded.")
  flags.DEFINE_list("selection", ["majority", "best_of_n", "weighted"], "Selections recorded.")
  flags.DEFINE_float("temperature", 1.0, "Sampling temperature (0: greedy).")
  flags.DEFINE_list("seeds", ["0"], "Search seeds.")
  flags.DEFINE_enum("split", "test", ["test", "train"], "Question split.")
  flags.DEFINE_integer("num_questions", None, "Questions (default: the whole split).")
  flags.DEFINE_integer("question_offset", 0, "Skip this many questions of the sweep order.")
  flags.DEFINE_enum("question_order", "shuffled", ["shuffled", "original"],
                    "Sweep order of the split: a fixed shuffle spans difficulties in any prefix.")
  dataset_flags.define()  # --dataset, --data_path, ..., --policy, --policy_hf
  flags.DEFINE_string("prm", POLICY_LOGPROB, "Verifier run directory, or 'policy_logprob' "
                      "(untrained token-level head on the policy's weights).")
  flags.DEFINE_string("prm_hf", None, "Or: a Hugging Face PRM folder (Llama / Qwen2 / "
                      "Mistral; it must share the policy's tokenizer).")
  flags.DEFINE_enum("prm_format", "auto", ["auto", "good_token", "class_softmax",
                                            "value_head", "chat_good_token"],
                    "--prm_hf scores: P(good token) vs the bad token at the step tag "
                    "(Math-Shepherd), or a classification head's softmax there (Qwen-PRM), "
                    "or sigmoid of a value head there (TRL ...WithValueHead: name it, auto "
                    "reads a causal LM as good_token; Skywork-PRM). "
                    "chat_good_token (RLHFlow) is refused: host-side scoring only.")
  flags.DEFINE_string("prm_step_tag", None, "--prm_hf: the token it reads after each step "
                      "(e.g. 'ки', '<extra_0>'); default: the policy's step delimiter.")
  flags.DEFINE_string("prm_good_token", "+", "--prm_hf good_token format: the good token.")
  flags.DEFINE_string("prm_bad_token", "-", "--prm_hf good_token format: the bad token.")
  flags.DEFINE_integer("batch_questions", 0, "Prompts per jitted search call (0: about "
                       f"{AUTO_BATCH_ROWS} question x candidate rows).")
  flags.DEFINE_integer("max_step_tokens", 32, "Tokens one step may take.")
  flags.DEFINE_integer("max_solution_tokens", 112, "Tokens a whole solution may take.")
  flags.DEFINE_integer("max_rounds", 40, "Step rounds of the step-wise methods.")
  flags.DEFINE_integer("max_steps", 48, "Step scores kept per candidate.")
  flags.DEFINE_bool("write_texts", False, "Also write every candidate's text.")
  flags.DEFINE_bool("few_compiles", False, "Trade run time for compile time (one beam-history "
                    "width, no separate tail call; the same lines): for short sweeps of many "
                    "configs.")
  flags.DEFINE_bool("progress", True, "Show a tqdm progress bar.")
  flags.DEFINE_string("out_dir", None, "Output directory (results.jsonl, summary.json).")
  flags.mark_flags_as_required(["out_dir"])
  from ttc_jax import distributed
  distributed.define_flags()  # --local_device_count=2: two XLA:CPU devices, ~1.6x on 2 cores
  return flags.FLAGS


def options_from_flags(f) -> Options:
  ints = lambda xs: tuple(int(x) for x in xs)
  prm_hf = f.prm_hf and HfPrm(f.prm_hf, f.prm_format, f.prm_step_tag, f.prm_good_token,
                             f.prm_bad_token)
  return Options(
      policy=f.policy or f.policy_hf, policy_hf=bool(f.policy_hf), prm_hf=prm_hf or None,
      data_path=f.data_path, shots_path=f.shots_path, num_shots=f.num_shots, chat=f.chat,
      out_dir=f.out_dir, prm=f.prm, methods=tuple(f.method), ns=ints(f.n),
      ms=tuple(f.m), ks=ints(f.k), ratios=tuple(f.ratio), revision_model=f.revision_model,
      revision_verifier=f.revision_verifier, max_attempt_tokens=f.max_attempt_tokens,
      aggregations=tuple(f.aggregation),
      selections=tuple(f.selection), temperature=f.temperature, seeds=ints(f.seeds),
      dataset=f.dataset, split=f.split, num_questions=f.num_questions,
      question_offset=f.question_offset, question_order=f.question_order,
      batch_questions=f.batch_questions, max_step_tokens=f.max_step_tokens,
      max_solution_tokens=f.max_solution_tokens, max_rounds=f.max_rounds,
      max_steps=f.max_steps, write_texts=f.write_texts, few_compiles=f.few_compiles)


def main(argv: Sequence[str]) -> None:
  del argv
  from absl import app, flags, logging
  logging.set_verbosity(logging.WARNING)  # orbax logs every restore at INFO
  f = flags.FLAGS
  try:
    opts = options_from_flags(f)
    expand_grid(opts)  # a bad grid fails before any model is loaded
    check_sources(opts)
  except ValueError as e:
    raise app.UsageError(str(e)) from None
  from ttc_jax import distributed, sharding
  distributed.initialize_from_flags()
  mesh = sharding.make_mesh() if jax.device_count() > 1 else None
  summary = run(opts, print_fn=lambda s: print(s, flush=True), progress=f.progress, mesh=mesh)
  print(f"wrote {summary['lines']} line(s) summarised in "
        f"{os.path.join(opts.out_dir, SUMMARY_FILE)}")


if __name__ == "__main__":
  from absl import app
  _define_flags()
  app.run(main)
