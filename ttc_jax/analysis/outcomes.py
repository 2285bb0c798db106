"""Sweep results (run_search's JSON lines) as a dense strategies x budgets x questions table.

A *strategy* is everything chosen besides the budget: the search method with
its settings and the rule that picks the final answer, e.g.
"beam[m=4]:weighted:last" or "best_of_n:majority". Each method family
registers how its lines name their strategies (`register_family`), so a new
family (revisions, issue #6) is one registration, and every analysis
(difficulty bins, compute-optimal selection, FLOPs matching) reads the
same table without re-running generation.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Callable, Iterable, Iterator

import numpy as np

StrategyOutcomes = Callable[[dict], Iterator[tuple[str, bool]]]
FAMILIES: dict[str, StrategyOutcomes] = {}


def register_family(*methods: str):
  """Decorator: `fn(line) -> (strategy name, correct) pairs` for lines whose
  config.method is one of `methods`."""
  def wrap(fn: StrategyOutcomes) -> StrategyOutcomes:
    for method in methods:
      FAMILIES[method] = fn
    return fn
  return wrap


def search_strategy_prefix(config: dict) -> str:
  """'beam[m=4]', 'lookahead[m=4,k=1]', 'best_of_n': the method and the
  settings that make it a different strategy (not n: that is the budget)."""
  settings = [f"{key}={config[key]}" for key in ("m", "k") if config.get(key)]
  return config["method"] + (f"[{','.join(settings)}]" if settings else "")


def selected_outcomes(prefix: str, line: dict) -> Iterator[tuple[str, bool]]:
  """One strategy "<prefix>:<selection>" per selection rule the line recorded."""
  for selection, chosen in line["selected"].items():
    yield f"{prefix}:{selection}", bool(chosen["correct"])


@register_family("best_of_n", "beam", "lookahead", "dvts")
def search_outcomes(line: dict) -> Iterator[tuple[str, bool]]:
  return selected_outcomes(search_strategy_prefix(line["config"]), line)


@register_family("revisions")
def revision_outcomes(line: dict) -> Iterator[tuple[str, bool]]:
  """'revisions[1:1]:weighted:last': one strategy per sequential:parallel ratio and selection."""
  return selected_outcomes(f"revisions[{line['config']['ratio']}]", line)


@dataclasses.dataclass(frozen=True)
class Outcomes:
  """accuracy[s, b, q]: strategy s at budget b on question q, averaged over
  seeds (NaN where the sweep has no line)."""
  strategies: tuple[str, ...]
  budgets: tuple[int, ...]
  questions: np.ndarray  # [Q] question indices (dataset order), ascending
  accuracy: np.ndarray  # [S, B, Q] float
  seeds: np.ndarray  # [S, B, Q] int: lines averaged into each entry

  def strategy_index(self, name: str) -> int:
    try:
      return self.strategies.index(name)
    except ValueError:
      raise ValueError(f"no strategy {name!r} in the sweep; have {list(self.strategies)}") from None

  def select(self, keep: Callable[[str], bool]) -> "Outcomes":
    """The strategies whose names pass `keep`."""
    rows = [i for i, s in enumerate(self.strategies) if keep(s)]
    if not rows:
      raise ValueError("no strategy left after filtering")
    return dataclasses.replace(self, strategies=tuple(self.strategies[i] for i in rows),
                               accuracy=self.accuracy[rows], seeds=self.seeds[rows])

  def at_budgets(self, keep: Callable[[int], bool]) -> "Outcomes":
    """The budgets that pass `keep`."""
    cols = [j for j, b in enumerate(self.budgets) if keep(b)]
    if not cols:
      raise ValueError("no budget left after filtering")
    return dataclasses.replace(self, budgets=tuple(self.budgets[j] for j in cols),
                               accuracy=self.accuracy[:, cols], seeds=self.seeds[:, cols])

  def complete(self) -> np.ndarray:
    """[S, B] whether strategy s at budget b has every question."""
    return np.all(self.seeds > 0, axis=2)


def line_outcomes(line: dict) -> Iterator[tuple[str, bool]]:
  method = line["config"]["method"]
  if method not in FAMILIES:
    raise ValueError(f"no strategy family registered for method {method!r}; registered: "
                     f"{sorted(FAMILIES)}")
  return FAMILIES[method](line)


def line_budget(line: dict) -> int:
  """The line's cost in the paper's generations: N, or N (k + 1) for
  lookahead (PAPER.md, "Search methods"), as run_search records it."""
  recorded = line.get("budget", {}).get("generations")
  return int(line["config"]["n"] if recorded is None else recorded)


def outcome_table(lines: Iterable[dict]) -> Outcomes:
  """The dense table of a sweep's lines (any order; seeds averaged), each
  line placed at its budget in generations (`line_budget`)."""
  total: dict[tuple[str, int, int], float] = {}
  count: dict[tuple[str, int, int], int] = {}
  for line in lines:
    budget, question = line_budget(line), int(line["question_index"])
    for strategy, correct in line_outcomes(line):
      key = (strategy, budget, question)
      total[key] = total.get(key, 0.0) + float(correct)
      count[key] = count.get(key, 0) + 1
  if not total:
    raise ValueError("no sweep lines")
  strategies = tuple(sorted({k[0] for k in total}))
  budgets = tuple(sorted({k[1] for k in total}))
  questions = np.asarray(sorted({k[2] for k in total}))
  s_at = {s: i for i, s in enumerate(strategies)}
  b_at = {b: i for i, b in enumerate(budgets)}
  q_at = {q: i for i, q in enumerate(questions.tolist())}
  accuracy = np.full((len(strategies), len(budgets), len(questions)), np.nan)
  seeds = np.zeros(accuracy.shape, np.int64)
  for (s, b, q), value in total.items():
    at = (s_at[s], b_at[b], q_at[q])
    seeds[at] = count[(s, b, q)]
    accuracy[at] = value / seeds[at]
  return Outcomes(strategies, budgets, questions, accuracy, seeds)


def read_lines(path: str) -> list[dict]:
  """A results.jsonl. A torn last line (a run killed mid-write) is skipped;
  a bad line anywhere else is an error."""
  with open(path) as f:
    raw = [(i + 1, text.strip()) for i, text in enumerate(f) if text.strip()]
  lines = []
  for position, (number, text) in enumerate(raw):
    try:
      lines.append(json.loads(text))
    except json.JSONDecodeError as e:
      if position == len(raw) - 1:
        break
      raise ValueError(f"{path}:{number}: not a JSON line ({e})") from None
  return lines


def largest_budget(lines: Iterable[dict], method: str = "best_of_n") -> int:
  """The largest budget N the sweep ran `method` at (the default difficulty samples)."""
  budgets = [int(l["config"]["n"]) for l in lines if l["config"]["method"] == method]
  if not budgets:
    raise ValueError(f"the sweep has no {method} lines")
  return max(budgets)


def sample_statistics(lines: Iterable[dict], samples: int, aggregation: str = "last"
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Per question, from its best-of-N lines with N = `samples` (every seed):
  (question indices [Q] ascending, pass@1 [Q] = fraction of correct samples,
  mean verifier score [Q] of the samples under `aggregation`). The inputs of
  oracle and predicted difficulty bins; the sweep's own directory (run.json
  names the policy and dataset) is their cache."""
  correct: dict[int, list[float]] = {}
  scores: dict[int, list[float]] = {}
  for line in lines:
    config = line["config"]
    if config["method"] != "best_of_n" or int(config["n"]) != samples:
      continue
    q = int(line["question_index"])
    correct.setdefault(q, []).extend(float(c) for c in line["correct"])
    scores.setdefault(q, []).extend(float(s) for s in line["scores"][aggregation])
  if not correct:
    raise ValueError(f"no best_of_n lines with n={samples}: run the difficulty samples first "
                     f"(run_search --method=best_of_n --n={samples})")
  questions = np.asarray(sorted(correct))
  return (questions, np.asarray([np.mean(correct[q]) for q in questions]),
          np.asarray([np.mean(scores[q]) for q in questions]))
