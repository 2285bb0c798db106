"""Process reward models (PRMs) from Hugging Face checkpoints (Llama / Qwen2 / Mistral).

Every format reads one score per step from one forward pass over the whole
solution. All but "chat_good_token" read it at a step tag token placed after each step:

  "good_token"      Math-Shepherd style: a causal LM (Llama/Qwen2/MistralForCausalLM;
                    Math-Shepherd's release is a Mistral). Step score = softmax of the
                    LM logits over [good, bad] at the tag, probability of good, which
                    equals sigmoid(l_good - l_bad): the project's "good_token" head.
  "class_softmax"   Qwen2.5-Math-PRM style: the backbone plus a `score` head at the
                    tag, softmax over its classes, probability of `positive_class`.
                    Either transformers' Llama/Qwen2/MistralForTokenClassification (one
                    linear `score.weight` [C, D], optional `score.bias`) or the
                    Qwen2.5-Math-PRM layout (`score.0` Linear(D, D), ReLU, `score.2`
                    Linear(D, 2)), config architecture "Qwen2ForProcessRewardModel".
  "value_head"      a scalar value head on the final (normed) hidden state, step score
                    sigmoid(value) at the tag: the project's "value" head. TRL's
                    AutoModelForCausalLMWithValueHead exports (the causal LM's tensors
                    plus `v_head.summary.weight` [1, D], `v_head.summary.bias` [1]; the
                    LM head is not read) and Skywork-o1-Open-PRM (config architecture
                    "Qwen2ForPrmModel", the same `v_head.summary.*`); a `value_head.`
                    prefix (`value_head.summary.*`) is read too.
  "chat_good_token" RLHFlow style (Llama3.1-8B-PRM-Deepseek-Data): the same causal-LM
                    read, inside a chat. The question + " " + step 1 is the first user
                    turn, each later step a user turn, each assistant turn the good
                    token's text ("+"); step k's score is P(good) / (P(good) + P(bad))
                    at the position before the k-th assistant answer. `chat_rows`
                    builds the rows from the tokenizer's chat template and marks those
                    positions. Host-side only (`score_solutions`): search reads scores
                    at one tag token per step and cannot place a chat template.

Mistral's sliding-window attention is not implemented: its `max_seq_len` is
capped at the window (`ttc_jax.hf`), and `score_solutions` refuses longer rows.

Token ids are ints: resolve strings with the checkpoint's own tokenizer. With
`tok = transformers.AutoTokenizer.from_pretrained(path)`:

  Math-Shepherd style (good "+", bad "-", tag "ки" after each step)::

    plus, minus = tok.encode("+ -", add_special_tokens=False)[-2:]
    vcfg, params = load_hf_prm(path, "good_token", step_tag_id=tok.encode("ки")[-1],
                               good_token_id=plus, bad_token_id=minus)

  Qwen2.5-Math-PRM (tag "<extra_0>", positive class 1)::

    vcfg, params = load_hf_prm(path, "class_softmax", positive_class=1,
                               step_tag_id=tok.convert_tokens_to_ids("<extra_0>"))
    prompt = tok.apply_chat_template(
        [{"role": "system", "content": "Please reason step by step, and put your final "
                                       "answer within \\\\boxed{}."},
         {"role": "user", "content": question}], add_generation_prompt=True)

  Skywork-o1-Open-PRM (steps end in "\\n", the tag; prompt: bos + question + "\\n")::

    vcfg, params = load_hf_prm(path, "value_head", step_tag_id=tok.encode("\\n")[-1])
    prompt = tok.encode(tok.bos_token + question + "\\n")

  RLHFlow's Llama3.1-8B-PRM (a chat, no tag; "+" and "-" are ids 10 and 12)::

    plus, minus = tok.encode("+")[-1], tok.encode("-")[-1]
    vcfg, params = load_hf_prm(path, "chat_good_token", good_token_id=plus,
                               bad_token_id=minus)
    rows = chat_rows(ttc_jax.tokenizer.load_tokenizer(path), [question] * len(solutions),
                     solutions, plus)  # solutions: lists of step strings
    probs = score_solutions(vcfg, params, rows)

  then, for the tag formats::

    enc = lambda text: tok.encode(text, add_special_tokens=False)
    rows = tag_rows([prompt] * len(solutions),
                    [[enc(step) for step in steps] for steps in solutions],
                    vcfg.step_token_id)
    probs = score_solutions(vcfg, params, rows)  # per solution: [num_steps] floats

Check the tokenizer for the exact tag token (Math-Shepherd's steps end in
" ки", and which of " ки" / "ки" is one token depends on the vocabulary).
Tokenizing steps one by one can split text differently from tokenizing the
joined solution; when exact agreement with a reference script matters, build
`TaggedRows` from the whole-text tokenization instead (tags at the step ends).

"auto" picks the format from config.json's architecture: "value_head" for
Qwen2ForPrmModel, "good_token" for any causal LM, else "class_softmax". A TRL value-head export's
config names the causal LM, so it needs fmt="value_head" explicitly.

Not supported: other backbones; value heads with more than one output or
other tensor names; single-label / sigmoid classification heads; chat-format
PRMs in search. Search needs the PRM to share the policy's vocabulary
(`check_compatible`).
"""

from __future__ import annotations

import functools
import json
import os
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ttc_jax import hf
from ttc_jax.verifier.model import VerifierConfig, score_rows

FORMATS = ("good_token", "class_softmax", "value_head", "chat_good_token", "auto")
_LM_FORMATS = ("good_token", "chat_good_token")  # read the LM logits
# Head architectures whose head is a value head (the rest hold `score.*`).
_VALUE_HEAD_ARCHITECTURES = ("Qwen2ForPrmModel",)
# TRL's ValueHead is `v_head.summary` (Linear(D, 1)); some exports name it `value_head`.
_VALUE_HEAD_PREFIXES = ("v_head.", "value_head.")
# Linear(D, H), ReLU, Linear(H, C) as nn.Sequential indices (Qwen2.5-Math-PRM).
_HIDDEN_NAMES = ("score.0.weight", "score.0.bias", "score.2.weight", "score.2.bias")
_LINEAR_NAMES = ("score.weight", "score.bias")


# ---------------------------------------------------------------- loading

def resolve_format(path, fmt: str = "auto") -> str:
  """fmt, with "auto" picked from config.json's architecture: a causal LM reads
  good vs bad tokens ("good_token"), Skywork's Qwen2ForPrmModel its value head
  ("value_head"), a classifier its classes ("class_softmax"). A TRL value-head
  export's config names the causal LM: "auto" cannot tell it from one."""
  if fmt not in FORMATS:
    raise ValueError(f"PRM format must be one of {FORMATS}, got {fmt!r}")
  if fmt != "auto":
    return fmt
  arch = hf.checkpoint_architecture(path)
  if arch in hf.SUPPORTED_ARCHITECTURES:
    return "good_token"
  return _head_format(arch)


def _head_format(arch: str) -> str:
  """The format of a head architecture (no LM head)."""
  return "value_head" if arch in _VALUE_HEAD_ARCHITECTURES else "class_softmax"


def load_hf_prm(path, fmt: str = "auto", *, step_tag_id: int | None = None,
                good_token_id: int | None = None, bad_token_id: int | None = None,
                positive_class: int = 1, dtype: str = "float32") -> tuple[VerifierConfig, dict]:
  """A PRM checkpoint directory -> (VerifierConfig, params {"lm", "head"}) for `score_rows`.

  fmt: "good_token" (a causal LM; needs good_token_id and bad_token_id),
  "class_softmax" (a token-classification / process-reward checkpoint; reads
  P(positive_class)), "value_head" (a causal LM or Qwen2ForPrmModel with a
  `v_head.summary` / `value_head.summary` linear; reads sigmoid(value);
  positive_class is unused), "chat_good_token" (a causal LM read like "good_token" at
  the positions `chat_rows` marks; no step_tag_id: the config's step_token_id is
  the good token, unused) or "auto" (from config.json's architecture: never chat).
  dtype: the backbone's dtype ("float32" or "bfloat16"); the head stays f32.
  """
  fmt = resolve_format(path, fmt)
  arch = hf.checkpoint_architecture(path)
  vocab_size = _config_vocab_size(path)  # ids are checked before the weights are read
  is_lm = arch in hf.SUPPORTED_ARCHITECTURES
  if fmt in _LM_FORMATS and not is_lm:
    raise ValueError(f"format {fmt!r} reads LM logits, but {path} is a {arch} (no LM "
                     f"head): use fmt={_head_format(arch)!r}")
  if fmt == "class_softmax" and is_lm:
    raise ValueError(f"format 'class_softmax' needs a classification head (score.*), but "
                     f"{path} is a causal LM ({arch}): use fmt='good_token' with good and bad "
                     "token ids, or fmt='value_head' for a TRL value-head export")
  if fmt in ("class_softmax", "value_head") and not is_lm and _head_format(arch) != fmt:
    raise ValueError(f"format {fmt!r} does not read a {arch}'s head: use "
                     f"fmt={_head_format(arch)!r}")
  if fmt == "chat_good_token" and step_tag_id is not None:
    raise ValueError("format 'chat_good_token' reads before each assistant answer (`chat_rows` "
                     "marks where), not at a step tag: leave step_tag_id out")
  if fmt != "chat_good_token" and step_tag_id is None:
    raise ValueError(f"format {fmt!r} needs step_tag_id (the token read after each step)")
  if fmt in _LM_FORMATS:
    if good_token_id is None or bad_token_id is None:
      raise ValueError(f"format {fmt!r} needs good_token_id and bad_token_id")
    tag = good_token_id if step_tag_id is None else step_tag_id
    _check_ids(vocab_size, step_tag_id=tag, good_token_id=good_token_id,
               bad_token_id=bad_token_id)
    if good_token_id == bad_token_id:
      raise ValueError(f"good_token_id and bad_token_id must differ, both are {good_token_id}")
    cfg, lm = hf.load_checkpoint(path, dtype)
    vcfg = VerifierConfig(model=cfg, head="good_token", step_token_id=int(tag),
                          good_token_id=int(good_token_id), bad_token_id=int(bad_token_id))
    return vcfg, {"lm": lm, "head": {}}

  if good_token_id is not None or bad_token_id is not None:
    raise ValueError("good_token_id / bad_token_id apply to format 'good_token' only; "
                     f"{path} is a {arch}, read as {fmt!r}")
  _check_ids(vocab_size, step_tag_id=step_tag_id)
  if fmt == "value_head":  # the LM head, if any, is not read (load_backbone ignores it)
    cfg, lm, extras, _ = hf.load_backbone(path, dtype, extra_prefixes=_VALUE_HEAD_PREFIXES,
                                          causal_lm=True)
    vcfg = VerifierConfig(model=cfg, head="value", step_token_id=int(step_tag_id))
    return vcfg, {"lm": lm, "head": _value_head(extras, cfg.d_model, path)}
  cfg, lm, extras, _ = hf.load_backbone(path, dtype, extra_prefixes=("score.",))
  head, num_classes, hidden = _class_head(extras, cfg.d_model, path)
  if num_classes < 2:
    raise ValueError(f"{path} has a {num_classes}-label score head: a softmax needs >= 2 "
                     "classes (single-label sigmoid heads are not supported)")
  is_int = isinstance(positive_class, (int, np.integer)) and not isinstance(positive_class, bool)
  if not (is_int and 0 <= positive_class < num_classes):
    raise ValueError(f"positive_class {positive_class} outside the head's classes "
                     f"[0, {num_classes})")
  vcfg = VerifierConfig(model=cfg, head="class_softmax", step_token_id=int(step_tag_id),
                        num_classes=num_classes, positive_class=int(positive_class),
                        class_hidden=hidden)
  return vcfg, {"lm": lm, "head": head}


def _config_vocab_size(path) -> int:
  with open(os.path.join(os.fspath(path), hf.CONFIG_FILE)) as fh:
    vocab_size = json.load(fh).get("vocab_size")
  if not isinstance(vocab_size, int):
    raise ValueError(f"{path}/{hf.CONFIG_FILE} has no integer 'vocab_size': {vocab_size!r}")
  return vocab_size


def _check_ids(vocab_size: int, **ids: int) -> None:
  for name, value in ids.items():
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
      raise TypeError(f"{name} must be an int token id (resolve strings with the "
                      f"checkpoint's tokenizer), got {value!r}")
    if not 0 <= value < vocab_size:
      raise ValueError(f"{name} {value} is outside the checkpoint's vocabulary "
                       f"[0, {vocab_size})")


def _class_head(extras: dict[str, np.ndarray], d: int, path) -> tuple[dict, int, int]:
  """score.* tensors -> (head params in `position_logits`' layout, classes, hidden width).

  Torch Linear weights are [out, in]; ours are [in, out]. A missing bias is zero.
  """
  names = set(extras)

  def shaped(name: str, shape: tuple[int, ...]) -> np.ndarray:
    x = extras[name]
    if x.shape != shape:
      raise ValueError(f"tensor {name!r} in {path} has shape {x.shape}; expected {shape}")
    return x

  def bias(name: str, n: int) -> jax.Array:
    return jnp.asarray(shaped(name, (n,)) if name in extras else np.zeros(n, np.float32))

  if "score.weight" in names and names <= set(_LINEAR_NAMES):
    w = extras["score.weight"]
    if w.ndim != 2 or w.shape[1] != d:
      raise ValueError(f"tensor 'score.weight' in {path} has shape {w.shape}; expected "
                       f"[num_labels, {d}]")
    c = w.shape[0]
    return {"w": jnp.asarray(w.T), "b": bias("score.bias", c)}, c, 0
  if {"score.0.weight", "score.2.weight"} <= names and names <= set(_HIDDEN_NAMES):
    w0 = extras["score.0.weight"]
    if w0.ndim != 2 or w0.shape[1] != d:
      raise ValueError(f"tensor 'score.0.weight' in {path} has shape {w0.shape}; expected "
                       f"[hidden, {d}]")
    h = w0.shape[0]
    w2 = extras["score.2.weight"]
    if w2.ndim != 2 or w2.shape[1] != h:
      raise ValueError(f"tensor 'score.2.weight' in {path} has shape {w2.shape}; expected "
                       f"[num_labels, {h}]")
    c = w2.shape[0]
    head = {"w": jnp.asarray(w2.T), "b": bias("score.2.bias", c),
            "w_hidden": jnp.asarray(w0.T), "b_hidden": bias("score.0.bias", h)}
    return head, c, h
  raise ValueError(f"{path} has score head tensor(s) {sorted(names)}; expected "
                   f"{list(_LINEAR_NAMES)} (a linear head, bias optional) or "
                   f"{list(_HIDDEN_NAMES)} (Linear, ReLU, Linear)")


def _value_head(extras: dict[str, np.ndarray], d: int, path) -> dict:
  """<prefix>summary.weight [1, D] / .bias [1] -> the "value" head's {"w" [D], "b" []}
  (logit = h . w + b). A missing bias is zero."""
  found = [p for p in _VALUE_HEAD_PREFIXES if any(n.startswith(p) for n in extras)]
  expected = " or ".join(f"'{p}summary.weight' [1, {d}] (+ '{p}summary.bias' [1])"
                         for p in _VALUE_HEAD_PREFIXES)
  if len(found) != 1:
    has = "no value head tensors" if not found else f"tensors under both {found}"
    raise ValueError(f"{path} has {has}: format 'value_head' expects {expected}")
  weight, bias = found[0] + "summary.weight", found[0] + "summary.bias"
  if weight not in extras or not set(extras) <= {weight, bias}:
    raise ValueError(f"{path} has value head tensor(s) {sorted(extras)}; expected {expected}")
  w = extras[weight]
  b = extras.get(bias, np.zeros(1, np.float32))
  if w.shape != (1, d) or b.shape != (1,):
    raise ValueError(f"{path} has value head shapes {weight} {w.shape}, {bias} {b.shape}; "
                     f"expected (1, {d}) and (1,): one output")
  return {"w": jnp.asarray(w[0]), "b": jnp.asarray(b[0])}


# ---------------------------------------------------------------- host-side scoring

class TaggedRows(NamedTuple):
  """Right-padded (prompt + solution) rows for `score_solutions`.

  tokens [B, T] int32; prompt_lengths, lengths [B] int32. The solution is
  tokens[prompt_length:length]. reads: bool [B, T], where step scores are read
  (`chat_rows`); None: at every step tag in the solution (`tag_rows`).
  """
  tokens: np.ndarray
  prompt_lengths: np.ndarray
  lengths: np.ndarray
  reads: np.ndarray | None = None


def _padded(rows: Sequence[list[int]], pad_id: int,
            width: int | None) -> tuple[np.ndarray, np.ndarray]:
  """(tokens [B, width] right-padded with pad_id, lengths [B]); width None: the longest row."""
  lengths = [len(r) for r in rows]
  longest = max(lengths, default=0)
  width = longest if width is None else width
  if width < longest:
    raise ValueError(f"width {width} is shorter than the longest row ({longest} tokens)")
  tokens = np.full((len(rows), width), pad_id, np.int32)
  for i, row in enumerate(rows):
    tokens[i, :len(row)] = row
  return tokens, np.asarray(lengths, np.int32)


def tag_rows(prompt_ids: Sequence[Sequence[int]], step_ids_list: Sequence[Sequence[Sequence[int]]],
             step_tag_id: int, *, pad_id: int = 0, width: int | None = None) -> TaggedRows:
  """Rows prompt + step_1 + tag + step_2 + tag + ..., as the PRM was trained on.

  prompt_ids[i]: row i's prompt tokens; step_ids_list[i]: row i's steps, each a
  non-empty token list without the tag. width: the padded length (default: the
  longest row); a fixed width avoids recompiling for every batch.
  """
  if len(prompt_ids) != len(step_ids_list):
    raise ValueError(f"{len(prompt_ids)} prompts but {len(step_ids_list)} solutions")
  rows, prompt_lengths = [], []
  for i, (prompt, steps) in enumerate(zip(prompt_ids, step_ids_list)):
    row = [int(t) for t in prompt]
    prompt_lengths.append(len(row))
    for j, step in enumerate(steps):
      step = [int(t) for t in step]
      if not step:
        raise ValueError(f"step {j} of solution {i} is empty")
      if step_tag_id in step:
        raise ValueError(f"step {j} of solution {i} already contains the step tag "
                         f"{step_tag_id}: it would be scored as an extra step")
      row += step + [step_tag_id]
    rows.append(row)
  tokens, lengths = _padded(rows, pad_id, width)
  return TaggedRows(tokens, np.asarray(prompt_lengths, np.int32), lengths)


def chat_rows(tokenizer, questions: Sequence[str], solutions: Sequence[Sequence[str]],
              good_token_id: int, *, answer: str = "+", separator: str = " ", pad_id: int = 0,
              width: int | None = None) -> TaggedRows:
  """RLHFlow-style rows for format "chat_good_token": one conversation per solution.

  Turns: user question + separator + step 1, assistant `answer`, user step 2,
  assistant `answer`, ... (RLHFlow fills every assistant turn with "+"). Step
  k's score is read at the last token of the conversation up to its user turn
  plus the generation prompt: where the model predicts the k-th answer. A
  causal model sees there exactly what RLHFlow's pass over turns 1..k sees, so
  one pass scores every step. The rows have no prompt (prompt_lengths 0); a
  solution without steps is an empty row.

  tokenizer: a `ttc_jax.tokenizer.HFTokenizer` with a chat template; good_token_id:
  the PRM's good token, which the answer must start with in the rendered chat.
  Raises when the template does not render each conversation prefix as a token
  prefix of the whole conversation (then one pass cannot stand for RLHFlow's
  per-step passes).
  """
  if len(questions) != len(solutions):
    raise ValueError(f"{len(questions)} questions but {len(solutions)} solutions")
  rows, reads = [], []
  for i, (question, steps) in enumerate(zip(questions, solutions)):
    row, at = _chat_row(tokenizer, question, steps, good_token_id, answer, separator, i)
    rows.append(row)
    reads.append(at)
  tokens, lengths = _padded(rows, pad_id, width)
  mask = np.zeros(tokens.shape, bool)
  for i, at in enumerate(reads):
    mask[i, at] = True
  return TaggedRows(tokens, np.zeros(len(rows), np.int32), lengths, mask)


def _chat_row(tokenizer, question: str, steps: Sequence[str], good_token_id: int, answer: str,
              separator: str, i: int) -> tuple[list[int], list[int]]:
  """(tokens, read positions) of solution i's conversation (see `chat_rows`)."""
  render = lambda messages, ask: tokenizer.encode(
      tokenizer.apply_chat_template(messages, add_generation_prompt=ask))
  messages, asked = [], []
  for j, step in enumerate(steps):
    if not step.strip():
      raise ValueError(f"step {j} of solution {i} is empty")
    messages.append({"role": "user", "content": question + separator + step if j == 0 else step})
    asked.append(render(messages, True))
    messages.append({"role": "assistant", "content": answer})
  if not steps:
    return [], []
  row = render(messages, False)
  for j, prefix in enumerate(asked):
    n = len(prefix)
    if row[:n] != prefix:
      raise ValueError(f"the chat template renders solution {i} up to step {j}'s user turn "
                       "differently from the same turns inside the whole conversation: its "
                       "steps cannot be scored from one pass")
    if not 0 < n < len(row) or row[n] != good_token_id:
      raise ValueError(f"assistant answer {answer!r} after step {j} of solution {i} does not "
                       f"start with good_token_id {good_token_id} in the rendered chat "
                       f"(got {row[n:n + 3]})")
  return row, [len(prefix) - 1 for prefix in asked]


@functools.partial(jax.jit, static_argnums=0)
def _row_scores(vcfg: VerifierConfig, params: dict, tokens, prompt_lengths, lengths):
  return score_rows(vcfg, params, tokens, prompt_lengths, lengths)[0]


def score_solutions(vcfg: VerifierConfig, params: dict, rows: TaggedRows, *,
                    batch_size: int | None = None) -> list[np.ndarray]:
  """Per-step probabilities [num_steps] (f32) of each row, read at its step tags
  (or where `rows.reads` says).

  One `score_rows` forward pass per batch of `batch_size` rows (default: all;
  the last batch is padded with empty rows so every batch has one shape).
  """
  tokens = np.asarray(rows.tokens, np.int32)
  prompt_lengths = np.asarray(rows.prompt_lengths, np.int32)
  lengths = np.asarray(rows.lengths, np.int32)
  b, t = tokens.shape
  if prompt_lengths.shape != (b,) or lengths.shape != (b,):
    raise ValueError(f"prompt_lengths {prompt_lengths.shape} and lengths {lengths.shape} must "
                     f"be [{b}] for tokens {tokens.shape}")
  if np.any(prompt_lengths < 0) or np.any(prompt_lengths > lengths) or np.any(lengths > t):
    raise ValueError("need 0 <= prompt_length <= length <= tokens.shape[1] for every row")
  limit = vcfg.model.max_seq_len
  if b and lengths.max() > limit:  # past it a Mistral's sliding window would hide keys
    raise ValueError(f"row {int(lengths.argmax())} has {lengths.max()} tokens, more than the "
                     f"verifier's max_seq_len {limit} (a Mistral checkpoint's sliding_window "
                     "caps it: ttc_jax.hf)")
  pos = np.arange(t)[None, :]
  solution = (pos >= prompt_lengths[:, None]) & (pos < lengths[:, None])
  if rows.reads is None:
    reads = solution & (tokens == vcfg.step_token_id)
  else:
    reads = np.asarray(rows.reads, bool)
    if reads.shape != (b, t) or np.any(reads & ~solution):
      raise ValueError(f"reads must be bool [{b}, {t}] and lie in each row's solution "
                       "[prompt_length, length)")
  used = tokens[pos < lengths[:, None]]
  v = vcfg.model.vocab_size
  if used.size and (used.min() < 0 or used.max() >= v):
    bad = used[(used < 0) | (used >= v)][0]
    raise ValueError(f"token id {bad} is outside the verifier's vocabulary [0, {v})")
  if b == 0:
    return []
  size = b if batch_size is None else int(batch_size)
  if size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}")
  scores = []
  for lo in range(0, b, size):
    n = min(size, b - lo)
    pad = lambda x: np.concatenate([x[lo:lo + n], np.zeros((size - n,) + x.shape[1:], x.dtype)])
    got = _row_scores(vcfg, params, jnp.asarray(pad(tokens)), jnp.asarray(pad(prompt_lengths)),
                         jnp.asarray(pad(lengths)))
    scores.append(np.asarray(got, np.float32)[:n])
  scores = np.concatenate(scores)
  return [scores[i][reads[i]] for i in range(b)]


__all__ = ["FORMATS", "TaggedRows", "chat_rows", "load_hf_prm", "score_solutions", "tag_rows"]
