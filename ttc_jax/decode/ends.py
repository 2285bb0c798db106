r"""Where a solution ends besides EOS: where its text first ends in a blank line.

Base models prompted with few-shot examples (`ttc_jax.tasks.benchmarks`,
whose examples are separated by an empty line) seldom emit EOS after the
answer line: they emit an empty line and start another example. So a
solution ends at the first token after which its text ends in a blank line
(two newlines in its trailing whitespace), told from that token and the one
before it:

  - a token whose own text ends in a blank line ("\n\n", ".\n\n"), or
  - a whitespace-only token holding a newline ("\n", " \n") that starts a
    line: the solution's first token (prompts end with "Solution:\n"), or
    one right after a token whose text ends in a newline (".\n", "\n").

The ending token stays in the solution and counts as generated, as EOS does.
A whitespace-only one that starts a line makes an empty step and, like EOS,
is no content: not fed to the verifier, no step score. A step that ends in
the blank line after text of its own ("x = 3.\n\n", or "x = 3" then "\n\n")
is content, scored at its last token, and the solution's last step.
Whitespace split over several tokens ("\n", " ", "\n") is not seen; real
tokenizers fuse such runs into one token.

The id sets are properties of token texts, computed once on the host
(`SolutionEnds.from_texts` of `ttc_jax.tokenizer.token_texts`). Empty (the
default), solutions end on EOS only: the built-in task, whose solutions
always do, computes exactly what it did before.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class SolutionEnds:
  r"""Token ids by their text (hashable: part of the static search and chain configs).

  line_end_ids: the text ends in a newline, trailing whitespace allowed (".\n", "\n").
  newline_ids: whitespace only, holding a newline ("\n", "\n\n", " \n").
  blank_line_ids: two newlines in the text's trailing whitespace ("\n\n", ".\n\n").
  """
  line_end_ids: tuple[int, ...] = ()
  newline_ids: tuple[int, ...] = ()
  blank_line_ids: tuple[int, ...] = ()

  @classmethod
  def from_texts(cls, texts: Sequence[str]) -> "SolutionEnds":
    """From every token id's text (`ttc_jax.tokenizer.token_texts`)."""
    trailing = [t[len(t.rstrip()):].count("\n") for t in texts]
    ids = lambda keep: tuple(i for i, (t, n) in enumerate(zip(texts, trailing)) if keep(t, n))
    return cls(line_end_ids=ids(lambda t, n: n >= 1),
               newline_ids=ids(lambda t, n: n >= 1 and not t.strip()),
               blank_line_ids=ids(lambda t, n: n >= 2))

  @property
  def active(self) -> bool:
    return bool(self.newline_ids or self.blank_line_ids)

  def check_end_steps(self, delimiters: Sequence[int]) -> None:
    """Raises unless every token that can end a solution also ends a step: step-wise
    search only looks at a step's last token, and step scores are read there."""
    missing = sorted(set(self.newline_ids + self.blank_line_ids) - set(delimiters))
    if missing:
      raise ValueError(f"tokens {missing} end a solution at a blank line but are not step "
                       f"delimiters {tuple(delimiters)}: add them to "
                       "VerifierConfig.delimiter_ids (`ttc_jax.tokenizer.step_end_ids`)")


def _isin(tokens: jax.Array, ids: tuple[int, ...]) -> jax.Array:
  if not ids:
    return jnp.zeros(tokens.shape, bool)
  return jnp.isin(tokens, jnp.asarray(ids, tokens.dtype))


def _token_at(tokens: jax.Array, index: jax.Array) -> jax.Array:
  """tokens [R, W] at index [R] (clipped into the row) -> [R]."""
  index = jnp.clip(index, 0, tokens.shape[1] - 1)
  return jnp.take_along_axis(tokens, index[:, None], axis=1)[:, 0]


def line_ended(ends: SolutionEnds, tokens: jax.Array, count: jax.Array,
               line_start: jax.Array | bool = True) -> jax.Array:
  """[R] whether the next token starts a line: after tokens[:, :count] [R, W]
  when count > 0, else as `line_start` says (the text before them ends a line)."""
  line_start = jnp.broadcast_to(jnp.asarray(line_start), count.shape)
  if not ends.active:
    return line_start
  return jnp.where(count > 0, _isin(_token_at(tokens, count - 1), ends.line_end_ids), line_start)


def blank_line_end(ends: SolutionEnds, tokens: jax.Array, count: jax.Array,
                   line_start: jax.Array | bool = True) -> tuple[jax.Array, jax.Array]:
  """Of the last of tokens[:, :count] [R, W] (none when count is 0): whether
  it ends the solution at a blank line [R], and whether it is then an empty
  step [R] (whitespace only: no content). line_start: whether tokens[:, 0]
  starts a line."""
  last = _token_at(tokens, count - 1)
  empty = (count > 0) & _isin(last, ends.newline_ids) & line_ended(ends, tokens, count - 1,
                                                                    line_start)
  return empty | ((count > 0) & _isin(last, ends.blank_line_ids)), empty
