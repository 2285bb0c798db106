"""The task interface: problems, prompts, answer extraction, grading, steps.

A solution is a sequence of steps, one per line, each line ended by "\\n"; the
last step is the answer line. Search, the PRM and revisions only rely on this
interface, so further task families (MATH, GSM8K readers) plug in beside the
built-in arithmetic task.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Sequence

STEP_DELIMITER = "\n"


@dataclasses.dataclass(frozen=True)
class Problem:
    """One problem with its reference solution.

    question: the problem statement (no prompt decoration).
    solution: the full reference solution; step lines each ended by "\\n",
      the last one being the answer line.
    answer: the canonical final answer string (what `extract_answer` returns
      for a correct completion).
    difficulty: the task's difficulty knobs for this problem
      (keys = `Task.difficulty_keys`), for per-difficulty breakdowns.
    uid: a stable identifier derived from the question.
    """

    question: str
    solution: str
    answer: str
    # Left out of the hash (a dict is unhashable) so problems can key dicts/sets.
    difficulty: dict[str, int] = dataclasses.field(hash=False)
    uid: str


def split_steps(text: str) -> list[str]:
    """Splits text into step lines.

    Step i is the text before the i-th newline, so step indices line up 1:1
    with newline tokens (what the PRM scores). An empty line is a step of its
    own (a wrong one); a final unterminated line (e.g. a completion cut at
    max_new_tokens) is a step too; the empty remainder after a final newline
    is not.
    """
    steps = text.split(STEP_DELIMITER)
    if steps[-1] == "":
        steps.pop()
    return steps


def paired(problems: Sequence[Problem], completions: Sequence[str]):
    """zip(problems, completions), refusing lists of different lengths."""
    if len(problems) != len(completions):
        raise ValueError(f"{len(problems)} problems but {len(completions)} completions")
    return zip(problems, completions)


class Task(abc.ABC):
    """A family of problems with an exact grader and an exact step checker."""

    name: str
    # Names of the entries of `Problem.difficulty`.
    difficulty_keys: tuple[str, ...]
    # Whether a solution also ends at a blank line: few-shot prompts separate
    # their examples by one, and base models write it instead of EOS.
    ends_at_blank_line: bool = False
    # Whether `first_wrong_step` can check steps (exact step labels).
    has_step_labels: bool = True

    @abc.abstractmethod
    def prompt(self, problem: Problem) -> str:
        """The text fed to the model before the solution; ends with "\\n"."""

    def prompt_ids(self, tokenizer, problem: Problem) -> list[int]:
        """The token ids fed to the model: BOS + the prompt, as training rows start."""
        return [tokenizer.bos_id] + tokenizer.encode(self.prompt(problem))

    @abc.abstractmethod
    def train_problems(self, seed: int, n: int) -> list[Problem]:
        """The first n problems of the deterministic training stream `seed`.

        Never contains a test-split question.
        """

    @abc.abstractmethod
    def test_problems(self) -> list[Problem]:
        """The fixed default test set (500 problems spread over difficulty)."""

    @abc.abstractmethod
    def extract_answer(self, completion: str) -> str | None:
        """The canonical answer of a completion; None when unparsable."""

    @abc.abstractmethod
    def first_wrong_step(self, problem: Problem, completion: str) -> int:
        """Index of the first wrong step of `completion`; -1 when all are right.

        A missing step is wrong at its index, so -1 means the completion is
        the complete, correct solution and nothing more.
        """

    def grade(self, problem: Problem, completion: str) -> bool:
        """Whether the completion's final answer is right (unparsable = wrong)."""
        answer = self.extract_answer(completion)
        return answer is not None and answer == problem.answer

    def grade_many(self, problems: Sequence[Problem], completions: Sequence[str]) -> list[bool]:
        """`grade` of each (problem, completion) pair; tasks with slow graders
        override it to grade in parallel."""
        return [self.grade(p, c) for p, c in paired(problems, completions)]

    def split_steps(self, text: str) -> list[str]:
        return split_steps(text)

    def solution_text(self, completion: str) -> str:
        """The completion as a solution: without the blank line that ended it
        (`ends_at_blank_line`), whose empty step is no content."""
        return trim_blank_line_end(completion) if self.ends_at_blank_line else completion


def trim_blank_line_end(text: str) -> str:
    """text ending in a blank line (two newlines in its trailing whitespace, or
    one on an empty first line) as its last line ended by one newline; other
    text unchanged."""
    content = text.rstrip()
    newlines = text[len(content):].count(STEP_DELIMITER)
    if not content:
        return "" if newlines else text
    return content + STEP_DELIMITER if newlines >= 2 else text
