"""The revision model's input format: a question, its previous attempts, then a revised answer.

Token level, so it holds for any tokenizer (the built-in task's ~40-piece
vocabulary has no room for words like "attempt"):

    BOS  prompt  attempt_1 EOS  attempt_2 EOS  ...  attempt_k EOS | revised EOS
    '--------------------- context -----------------------------'   target

- `prompt` is the task's prompt (`Task.prompt`), exactly what the policy sees,
  so the question's keys/values can be computed once and shared by every
  chain and every revision step (the attempts come after it).
- Each previous attempt is a complete solution as the model wrote it, closed
  by the EOS token that ends a solution; an attempt cut off at the length
  limit gets the EOS too, so attempts are always delimited.
- At most `WINDOW` (4, as the paper) most recent attempts are kept, oldest
  first; a chain can be longer: older attempts drop out of the context.
- With no previous attempt (k = 0) the context is exactly the policy's
  prompt: the first step of a chain is an ordinary sample.
"""

from __future__ import annotations

from typing import Sequence

WINDOW = 4  # previous attempts in the context (PAPER.md, "Revisions")


def context_ids(prompt_ids: Sequence[int], attempts: Sequence[Sequence[int]], eos_id: int,
                window: int = WINDOW) -> list[int]:
  """The revision model's context: prompt ids (BOS included) followed by the last
  `window` attempts (token ids without EOS), each closed by EOS."""
  if window < 0:
    raise ValueError(f"window must be >= 0, got {window}")
  kept = list(attempts)[-window:] if window else []
  out = list(prompt_ids)
  for attempt in kept:
    if eos_id in attempt:
      raise ValueError("an attempt must not contain EOS (it closes the attempt)")
    out.extend(attempt)
    out.append(eos_id)
  return out


def example_ids(prompt_ids: Sequence[int], attempts: Sequence[Sequence[int]],
                target: Sequence[int], eos_id: int, window: int = WINDOW
                ) -> tuple[list[int], list[bool]]:
  """(ids, loss mask) of one training example: the context, then the target
  attempt + EOS; the loss covers the target and its EOS only."""
  context = context_ids(prompt_ids, attempts, eos_id, window)
  answer = list(target) + [eos_id]
  return context + answer, [False] * len(context) + [True] * len(answer)
