r"""MATH-500 and GSM8K as `Task`s: JSONL readers, few-shot step prompts, grading.

The data is not shipped: pass a JSONL file (`data_path`, the `--data_path`
flag of the scripts), or keep the files at
`<project root>/../shared/data/{math500,gsm8k}/test.jsonl`.

Reference solutions become newline-separated steps ending with the answer
line: MATH keeps the non-empty lines of the solution up to the last one with
the `\boxed{}` answer; GSM8K drops the `<<...>>` calculator annotations and
turns "#### N" into "The answer is N.".

Real benchmarks have no step-level labels, so `first_wrong_step` is not
available: train PRMs on the built-in arithmetic task.
"""

from __future__ import annotations

import json
import os
import random
import re
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from ttc_jax.tasks.base import STEP_DELIMITER, Problem, Task, paired
from ttc_jax.tasks.grading import (
    Grader,
    canonical_number,
    extract_gsm8k_answer,
    extract_math_answer,
    gsm8k_equal,
    normalize_math_answer,
)

# The directory that holds `ttc_jax/`.
PROJECT_ROOT = Path(__file__).resolve().parents[2]
SHARED_DATA = PROJECT_ROOT.parent / "shared" / "data"
DEFAULT_NUM_SHOTS = 4

MATH_INSTRUCTION = ("Solve the problem step by step, one step per line, and put the final "
                    "answer in \\boxed{}.")
GSM8K_INSTRUCTION = ("Solve the problem step by step, one step per line, and end with "
                     "\"The answer is N.\" where N is the final number.")

_CALCULATOR_RE = re.compile(r"<<[^<>]*>>")
_GSM8K_ANSWER_LINE_RE = re.compile(r"\s*####\s*(.*)")
# Lines that only close what the boxed line opened ("\end{align*}", "\]", "$$").
_CLOSER_RE = re.compile(r"\s*(\\end\{[^{}]*\}|\\\]|\$\$)")


# ---------------------------------------------------------------- data files


def default_data_path(dataset: str) -> Path:
    """Where the shared copy of a dataset would be (it may be absent)."""
    return SHARED_DATA / dataset / "test.jsonl"


def resolve_data_path(dataset: str, data_path: str | None) -> Path:
    """The explicit path if given, else the shared copy; FileNotFoundError if missing."""
    if data_path is not None:
        path = Path(data_path)
        if not path.is_file():
            raise FileNotFoundError(f"{dataset} data file {path} does not exist (--data_path)")
        return path
    path = default_data_path(dataset)
    if not path.is_file():
        raise FileNotFoundError(
            f"no {dataset} data at {path}; pass the JSONL file with --data_path=FILE "
            f"(data_path=... for get_task)")
    return path


def _read_jsonl(path: Path) -> Iterator[tuple[int, dict]]:
    """(line number, object) for each non-blank line; errors name file and line."""
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
            if not isinstance(obj, dict):
                raise ValueError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
            yield lineno, obj


def _field(obj: dict, key: str, kind: type, where: str) -> Any:
    if key not in obj:
        raise ValueError(f"{where}: missing field {key!r}")
    value = obj[key]
    # bool is an int subclass; a JSON true is never a level or an index.
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ValueError(f"{where}: field {key!r} must be {kind.__name__}, got {value!r}")
    return value


def _lines(text: str) -> list[str]:
    return [line.strip() for line in text.split("\n") if line.strip()]


def _format_steps(lines: list[str]) -> str:
    return "".join(line + STEP_DELIMITER for line in lines)


def math_solution_steps(solution: str, answer: str) -> str:
    r"""A MATH solution as step lines whose last line holds the `\boxed{}` answer.

    Lines after the last boxed line (remarks, [asy] figures) are dropped, except
    a closer of the boxed line's environment, which joins that line; without
    any boxed line, "The answer is $\boxed{answer}$." is appended.
    """
    lines = _lines(solution)
    boxed = [i for i, line in enumerate(lines) if "\\boxed" in line or "\\fbox" in line]
    if not boxed:
        return _format_steps(lines + [f"The answer is $\\boxed{{{answer}}}$."])
    last = boxed[-1]
    kept = lines[:last + 1]
    if last + 1 < len(lines):
        closer = _CLOSER_RE.match(lines[last + 1])
        if closer is not None:
            kept[-1] = f"{kept[-1]} {closer.group(1)}"
    return _format_steps(kept)


def _keyed_records(path: Path, key: str, key_type: type):
    """(where, record, its key) per line; a repeated key is an error naming the line."""
    seen = set()
    for lineno, obj in _read_jsonl(path):
        where = f"{path}:{lineno}"
        value = _field(obj, key, key_type, where)
        if value in seen:
            raise ValueError(f"{where}: duplicate {key} {value!r}")
        seen.add(value)
        yield where, obj, value


def read_math_jsonl(path: str | Path) -> list[Problem]:
    """MATH-format lines: problem, solution, answer, level (1-5), unique_id."""
    problems = []
    for where, obj, uid in _keyed_records(Path(path), "unique_id", str):
        question = _field(obj, "problem", str, where)
        solution = _field(obj, "solution", str, where)
        answer = _field(obj, "answer", str, where)
        level = _field(obj, "level", int, where)
        problems.append(Problem(question=question.strip(),
                                solution=math_solution_steps(solution, answer),
                                answer=answer.strip(), difficulty={"level": level}, uid=uid))
    return problems


def gsm8k_solution_steps(worked: str) -> tuple[list[str], str]:
    """(reasoning lines without calculator annotations, canonical answer number).

    Raises ValueError when the last line is not "#### <number>".
    """
    lines = _lines(_CALCULATOR_RE.sub("", worked))
    final = _GSM8K_ANSWER_LINE_RE.fullmatch(lines[-1]) if lines else None
    number = canonical_number(final.group(1)) if final else None
    if number is None:
        raise ValueError("the worked solution does not end with a '#### <number>' line")
    return lines[:-1], number


def gsm8k_uid(idx: int) -> str:
    return f"gsm8k-{idx}"


def read_gsm8k_jsonl(path: str | Path) -> list[Problem]:
    """GSM8K-format lines: question, answer (worked solution, "#### N" last), idx."""
    problems = []
    for where, obj, idx in _keyed_records(Path(path), "idx", int):
        question = _field(obj, "question", str, where)
        worked = _field(obj, "answer", str, where)
        try:
            steps, number = gsm8k_solution_steps(worked)
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from None
        problems.append(Problem(question=question.strip(),
                                solution=_format_steps(steps + [f"The answer is {number}."]),
                                answer=number, difficulty={"steps": len(steps)},
                                uid=gsm8k_uid(idx)))
    return problems


# ---------------------------------------------------------------- tasks


class BenchmarkTask(Task):
    """A fixed JSONL test set with few-shot prompts (shared by MATH and GSM8K).

    data_path: the test JSONL (default: the shared copy, see module doc).
    shots_path: a JSONL in the same format (e.g. a train split) to draw the
      few-shot examples and `train_problems` from; default: shots from the
      test file itself, and no training problems.
    num_shots: worked examples per prompt. shots_seed: which fixed set.
    grade_timeout_s: per-answer grading time limit (see `Grader`).
    grade_workers: math-verify processes `grade_many` runs at once (MATH;
      default: half the CPU cores, at most 8, at least 1).
    chat: prompt instruct models through their tokenizer's chat template
      (`chat_messages`: the instruction as the system turn, each shot a
      user / assistant pair, the problem the last user turn) instead of the
      plain few-shot text.
    """

    dataset: str
    instruction: str
    reader: Callable[[str | Path], list[Problem]]
    ends_at_blank_line = True
    has_step_labels = False

    def __init__(self, data_path: str | None = None, shots_path: str | None = None,
                 num_shots: int = DEFAULT_NUM_SHOTS, shots_seed: int = 0,
                 grade_timeout_s: float = 5.0, grade_workers: int | None = None,
                 chat: bool = False) -> None:
        if not isinstance(num_shots, int) or num_shots < 0:
            raise ValueError(f"num_shots must be an integer >= 0, got {num_shots!r}")
        self.data_path = resolve_data_path(self.dataset, data_path)
        if shots_path is not None and not Path(shots_path).is_file():
            raise FileNotFoundError(f"shots file {shots_path} does not exist (shots_path)")
        self.shots_path = None if shots_path is None else Path(shots_path)
        self.num_shots = num_shots
        self.shots_seed = shots_seed
        self.grade_timeout_s = grade_timeout_s
        self.chat = chat
        self.grade_workers = (min(8, max(1, (os.cpu_count() or 2) // 2))
                              if grade_workers is None else grade_workers)
        self._test: list[Problem] | None = None
        self._train: list[Problem] | None = None
        self._candidates: list[Problem] | None = None

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(data_path={str(self.data_path)!r}, "
                f"shots_path={self.shots_path and str(self.shots_path)!r}, "
                f"num_shots={self.num_shots}, shots_seed={self.shots_seed}, chat={self.chat})")

    def _read(self, path: Path) -> list[Problem]:
        return type(self).reader(path)

    def test_problems(self) -> list[Problem]:
        if self._test is None:
            self._test = self._read(self.data_path)
        return list(self._test)

    def _train_pool(self) -> list[Problem]:
        if self.shots_path is None:
            raise ValueError(f"{self.name} ships no train split: pass shots_path=<train JSONL>")
        if self._train is None:
            test_questions = {p.question for p in self.test_problems()}
            self._train = [p for p in self._read(self.shots_path)
                           if p.question not in test_questions]
        return self._train

    @property
    def num_train_problems(self) -> int:
        """How many problems `train_problems` can draw (shots_path minus test questions)."""
        return len(self._train_pool())

    def train_problems(self, seed: int, n: int) -> list[Problem]:
        """n problems of the shots_path file (minus test questions), shuffled by seed."""
        pool = list(self._train_pool())
        if n > len(pool):
            raise ValueError(f"asked for {n} train problems; {self.shots_path} has {len(pool)} "
                             f"(after removing test questions)")
        random.Random(f"{self.name}-train/{seed}").shuffle(pool)
        return pool[:n]

    def _good_shot(self, problem: Problem) -> bool:
        return True

    def shot_candidates(self) -> list[Problem]:
        """Possible shots in preference order (a fixed shuffle by shots_seed)."""
        if self._candidates is None:
            pool = self._train_pool() if self.shots_path is not None else self.test_problems()
            pool = [p for p in pool if self._good_shot(p)]
            random.Random(f"{self.name}-shots/{self.shots_seed}").shuffle(pool)
            self._candidates = pool
        return self._candidates

    def shots(self, problem: Problem) -> list[Problem]:
        """The fixed shots, a shot equal to `problem` replaced by the next candidate."""
        chosen = []
        for candidate in self.shot_candidates():
            if len(chosen) == self.num_shots:
                break
            if candidate.uid != problem.uid and candidate.question != problem.question.strip():
                chosen.append(candidate)
        if len(chosen) < self.num_shots:
            raise ValueError(f"only {len(chosen)} usable shots for {self.num_shots} requested")
        return chosen

    def prompt(self, problem: Problem) -> str:
        parts = [self.instruction, "\n\n"]
        for shot in self.shots(problem):
            parts.append(f"Problem: {shot.question}\nSolution:\n{shot.solution}\n")
        parts.append(f"Problem: {problem.question.strip()}\nSolution:\n")
        return "".join(parts)

    def chat_messages(self, problem: Problem) -> list[dict[str, str]]:
        """The few-shot prompt as chat turns (one step per line in every answer)."""
        messages = [{"role": "system", "content": self.instruction}]
        for shot in self.shots(problem):
            messages += [{"role": "user", "content": f"Problem: {shot.question}"},
                         {"role": "assistant", "content": shot.solution}]
        return messages + [{"role": "user", "content": f"Problem: {problem.question.strip()}"}]

    def prompt_ids(self, tokenizer, problem: Problem) -> list[int]:
        if not self.chat:
            return super().prompt_ids(tokenizer, problem)
        if not hasattr(tokenizer, "apply_chat_template"):
            raise ValueError(f"chat prompts need a HF tokenizer with a chat_template; "
                             f"{type(tokenizer).__name__} has none")
        # The template writes BOS itself; the assistant turn opens on a new line
        # in common templates, so the first step starts a line.
        text = tokenizer.apply_chat_template(self.chat_messages(problem),
                                             add_generation_prompt=True)
        return tokenizer.encode(text)

    def first_wrong_step(self, problem: Problem, completion: str) -> int:
        raise NotImplementedError(
            f"{self.name} has no step-level labels, so steps cannot be checked; "
            "train process reward models on the built-in 'arithmetic' task")

    @property
    def timed_out(self) -> int:
        """Answers whose grading ran past the time limit (counted wrong)."""
        return 0


class MathTask(BenchmarkTask):
    """MATH-500 (or any MATH-format JSONL); difficulty = the dataset's level 1-5."""

    name = "math500"
    dataset = "math500"
    difficulty_keys = ("level",)
    instruction = MATH_INSTRUCTION
    reader = staticmethod(read_math_jsonl)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._grader: Grader | None = None

    def __getstate__(self) -> dict:
        # A copy starts its own grading worker when it first needs one.
        return {**self.__dict__, "_grader": None}

    @property
    def grader(self) -> Grader:
        if self._grader is None:
            self._grader = Grader(self.grade_timeout_s, workers=self.grade_workers)
        return self._grader

    def close(self) -> None:
        """Stops the grading worker, if one runs."""
        if self._grader is not None:
            self._grader.close()

    @property
    def timed_out(self) -> int:
        return 0 if self._grader is None else self._grader.timed_out

    def _good_shot(self, problem: Problem) -> bool:
        # Asymptote figure code is long and useless to a text-only model.
        return "[asy]" not in problem.question and "[asy]" not in problem.solution

    def extract_answer(self, completion: str) -> str | None:
        answer = extract_math_answer(completion)
        return None if answer is None else normalize_math_answer(answer)

    def grade(self, problem: Problem, completion: str) -> bool:
        return self.grader.grade(extract_math_answer(completion), problem.answer)

    def grade_many(self, problems: Sequence[Problem], completions: Sequence[str]) -> list[bool]:
        return self.grader.grade_many(
            (extract_math_answer(c), p.answer) for p, c in paired(problems, completions))


class Gsm8kTask(BenchmarkTask):
    """GSM8K test (or any GSM8K-format JSONL); difficulty = reference reasoning steps."""

    name = "gsm8k"
    dataset = "gsm8k"
    difficulty_keys = ("steps",)
    instruction = GSM8K_INSTRUCTION
    reader = staticmethod(read_gsm8k_jsonl)

    def extract_answer(self, completion: str) -> str | None:
        return extract_gsm8k_answer(completion)

    def grade(self, problem: Problem, completion: str) -> bool:
        # Pure string and decimal arithmetic: nothing here can hang.
        return gsm8k_equal(extract_gsm8k_answer(completion), problem.answer)
