"""Built-in task: procedurally generated multi-step integer arithmetic.

Expressions are evaluated LEFT TO RIGHT (no operator precedence), one step per
operation, so every step has exactly one right answer and the step checker is
exact (the PRM's ground truth). Example, `reverse_digits=False`:

    prompt:    "Q: 37+48*3-19\\n"
    solution:  "37+48=85\\n85*3=255\\n255-19=236\\nanswer 236\\n"

With `reverse_digits=True` every number in the solution (steps and answer line)
is written least-significant digit first, sign in front (-15 -> "-51"), so a
model emits the digits of a sum in the order the carries flow:

    solution:  "73+84=58\\n58*3=552\\n552-91=632\\nanswer 632\\n"

The question and `Problem.answer` stay in ordinary order either way.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import itertools
import random
import re
from collections.abc import Iterator

from ttc_jax.tasks.base import STEP_DELIMITER, Problem, Task, split_steps

OPS = "+-*"
ANSWER_PREFIX = "answer "
PROMPT_PREFIX = "Q: "
# Draws per operation before giving up on keeping values within the bound.
_MAX_DRAWS = 1000

Step = tuple[int, str, int, int]  # (left, op, right, result)

_QUESTION_RE = re.compile(r"\d+(?:[+*-]\d+)+")
_QUESTION_TOKEN_RE = re.compile(r"([+*-])(\d+)")
# Left operand and result may be negative; right operands never are.
_STEP_RE = re.compile(r"(-?\d+)([+*-])(\d+)=(-?\d+)")
_ANSWER_RE = re.compile(re.escape(ANSWER_PREFIX) + r"(-?\d+)")


@dataclasses.dataclass(frozen=True)
class ArithmeticConfig:
    """Knobs of the generator; frozen so it can key caches and jit statics.

    min_ops, max_ops: number of operations per question (uniform in range).
    digit_weights: P(an operand of + and - has 1, 2, 3, ... digits).
      Weighted toward 1-2 digits: 3-digit operands are the hardest for the
      tiny models this task is meant for (presets small / large: greedy 0.24
      / 0.53 on questions with a 3-digit operand, 0.44 / 0.83 with 2).
    ops: the operations to draw from (uniformly).
    mul_max_operand: right operands of "*" are drawn from [2, mul_max_operand]
      (x0 and x1 would make the following steps trivial).
    bound: every intermediate value v satisfies |v| <= bound.
    reverse_digits: write solution numbers least-significant digit first.
    test_fraction: share of the question space (by a stable hash of the
      question string) that belongs to the test split.
    test_size, test_seed: the fixed default test set, stratified over the
      number of operations.
    """

    min_ops: int = 1
    max_ops: int = 6
    digit_weights: tuple[float, ...] = (0.45, 0.45, 0.10)
    ops: str = OPS
    mul_max_operand: int = 9
    bound: int = 999
    reverse_digits: bool = False
    test_fraction: float = 0.1
    test_size: int = 500
    test_seed: int = 0

    def __post_init__(self) -> None:
        # Options read back from JSON (a run's sidecar) arrive as lists; the
        # config must stay hashable (it keys the test-set cache).
        object.__setattr__(self, "digit_weights", tuple(self.digit_weights))
        if not 1 <= self.min_ops <= self.max_ops:
            raise ValueError(f"need 1 <= min_ops <= max_ops, got {self.min_ops}, {self.max_ops}")
        if not self.ops or set(self.ops) - set(OPS):
            raise ValueError(f"ops must be a non-empty subset of {OPS!r}, got {self.ops!r}")
        if not self.digit_weights or min(self.digit_weights) < 0 or sum(self.digit_weights) <= 0:
            raise ValueError(f"bad digit_weights {self.digit_weights}")
        if self.mul_max_operand < 2:
            raise ValueError(f"mul_max_operand must be >= 2, got {self.mul_max_operand}")
        if self.bound < 9:
            raise ValueError(f"bound must be >= 9, got {self.bound}")
        if not 0.0 < self.test_fraction < 1.0:
            raise ValueError(f"test_fraction must be in (0, 1), got {self.test_fraction}")


# ---------------------------------------------------------------- numbers


def format_int(value: int, reverse: bool) -> str:
    digits = str(abs(value))
    if reverse:
        digits = digits[::-1]
    return ("-" if value < 0 else "") + digits


def parse_int(text: str, reverse: bool) -> int:
    """Inverse of `format_int` for text matching -?\\d+ (leading zeros allowed)."""
    sign, digits = (-1, text[1:]) if text.startswith("-") else (1, text)
    return sign * int(digits[::-1] if reverse else digits)


def apply_op(left: int, op: str, right: int) -> int:
    if op == "+":
        return left + right
    if op == "-":
        return left - right
    if op == "*":
        return left * right
    raise ValueError(f"unknown op {op!r}")


# ---------------------------------------------------------------- questions and solutions


def parse_question(question: str) -> tuple[int, list[tuple[str, int]]]:
    """'37+48*3' -> (37, [('+', 48), ('*', 3)])."""
    if not _QUESTION_RE.fullmatch(question):
        raise ValueError(f"not an arithmetic question: {question!r}")
    first = re.match(r"\d+", question)
    assert first is not None
    rest = question[first.end():]
    return int(first.group()), [(op, int(b)) for op, b in _QUESTION_TOKEN_RE.findall(rest)]


def reference_steps(question: str) -> list[Step]:
    """The left-to-right evaluation of a question, one (a, op, b, c) per op."""
    value, ops = parse_question(question)
    steps = []
    for op, right in ops:
        result = apply_op(value, op, right)
        steps.append((value, op, right, result))
        value = result
    return steps


def format_step(step: Step, reverse: bool) -> str:
    left, op, right, result = step
    return f"{format_int(left, reverse)}{op}{format_int(right, reverse)}={format_int(result, reverse)}"


def parse_step(line: str, reverse: bool) -> Step | None:
    match = _STEP_RE.fullmatch(line)
    if match is None:
        return None
    left, op, right, result = match.groups()
    return parse_int(left, reverse), op, parse_int(right, reverse), parse_int(result, reverse)


def format_answer_line(value: int, reverse: bool) -> str:
    return ANSWER_PREFIX + format_int(value, reverse)


def parse_answer_line(line: str, reverse: bool) -> int | None:
    match = _ANSWER_RE.fullmatch(line.strip())
    return None if match is None else parse_int(match.group(1), reverse)


def format_solution(question: str, reverse: bool) -> str:
    steps = reference_steps(question)
    lines = [format_step(s, reverse) for s in steps]
    lines.append(format_answer_line(steps[-1][3], reverse))
    return "".join(line + STEP_DELIMITER for line in lines)


# ---------------------------------------------------------------- generation


def question_digest(question: str) -> str:
    # hashlib, not hash(): the split must not depend on PYTHONHASHSEED.
    return hashlib.sha256(question.encode()).hexdigest()


def is_test_question(question: str, test_fraction: float) -> bool:
    return int(question_digest(question)[:16], 16) < test_fraction * 2**64


def _sample_operand(rng: random.Random, cfg: ArithmeticConfig, op: str) -> int:
    if op == "*":
        return rng.randint(2, cfg.mul_max_operand)
    n_digits = rng.choices(range(1, len(cfg.digit_weights) + 1), weights=cfg.digit_weights)[0]
    low = 0 if n_digits == 1 else 10 ** (n_digits - 1)
    return rng.randint(low, 10**n_digits - 1)


def sample_question(rng: random.Random, cfg: ArithmeticConfig, n_ops: int) -> str:
    """Draws one question with n_ops operations; all values within cfg.bound."""
    first = _sample_operand(rng, cfg, "+")
    while first > cfg.bound:
        first = _sample_operand(rng, cfg, "+")
    parts, value = [str(first)], first
    for _ in range(n_ops):
        # Rejection keeps |value| <= bound; redrawing the op too avoids
        # dead ends such as a large value that no "*" can keep in bound.
        for _ in range(_MAX_DRAWS):
            op = rng.choice(cfg.ops)
            right = _sample_operand(rng, cfg, op)
            result = apply_op(value, op, right)
            if abs(result) <= cfg.bound:
                break
        else:
            raise ValueError(f"cannot keep values within bound {cfg.bound} using ops {cfg.ops!r}")
        parts.append(f"{op}{right}")
        value = result
    return "".join(parts)


def make_problem(question: str, cfg: ArithmeticConfig) -> Problem:
    steps = reference_steps(question)
    operands = re.findall(r"\d+", question)
    return Problem(
        question=question,
        solution=format_solution(question, cfg.reverse_digits),
        answer=str(steps[-1][3]),
        difficulty={"n_ops": len(steps), "max_digits": max(len(x) for x in operands)},
        uid=f"arithmetic-{question_digest(question)[:16]}",
    )


def _stratum_sizes(total: int, n_strata: int) -> list[int]:
    base, extra = divmod(total, n_strata)
    return [base + (i < extra) for i in range(n_strata)]


@functools.lru_cache(maxsize=8)
def _test_questions(cfg: ArithmeticConfig) -> tuple[str, ...]:
    """Distinct test-split questions, stratified evenly over n_ops.

    Only the generation knobs matter, so both reverse_digits settings share
    the same test questions.
    """
    strata = range(cfg.min_ops, cfg.max_ops + 1)
    questions: list[str] = []
    for n_ops, size in zip(strata, _stratum_sizes(cfg.test_size, len(strata))):
        rng = random.Random(f"arithmetic-test/{cfg.test_seed}/{n_ops}")
        chosen: dict[str, None] = {}  # ordered set
        draws_left = int(100 * size / cfg.test_fraction) + 1000  # guards tiny question spaces
        while len(chosen) < size:
            if draws_left == 0:
                raise ValueError(f"only {len(chosen)} distinct test questions with {n_ops} ops; wanted {size}")
            draws_left -= 1
            question = sample_question(rng, cfg, n_ops)
            if is_test_question(question, cfg.test_fraction):
                chosen[question] = None
        questions.extend(chosen)
    return tuple(questions)


# ---------------------------------------------------------------- the task


class ArithmeticTask(Task):
    name = "arithmetic"
    difficulty_keys = ("n_ops", "max_digits")

    def __init__(self, config: ArithmeticConfig | None = None) -> None:
        self.config = config or ArithmeticConfig()

    def __repr__(self) -> str:
        return f"ArithmeticTask({self.config})"

    def prompt(self, problem: Problem) -> str:
        return f"{PROMPT_PREFIX}{problem.question}{STEP_DELIMITER}"

    def iter_train_problems(self, seed: int) -> Iterator[Problem]:
        """Endless deterministic stream of training problems (no test question)."""
        cfg = self.config
        rng = random.Random(f"arithmetic-train/{seed}")
        while True:
            question = sample_question(rng, cfg, rng.randint(cfg.min_ops, cfg.max_ops))
            if not is_test_question(question, cfg.test_fraction):
                yield make_problem(question, cfg)

    def train_problems(self, seed: int, n: int) -> list[Problem]:
        return list(itertools.islice(self.iter_train_problems(seed), n))

    def test_problems(self) -> list[Problem]:
        return [make_problem(q, self.config) for q in _test_questions(self.config)]

    def extract_answer(self, completion: str) -> str | None:
        lines = [line for line in completion.split(STEP_DELIMITER) if line.strip()]
        value = parse_answer_line(lines[-1], self.config.reverse_digits) if lines else None
        return None if value is None else str(value)

    def first_wrong_step(self, problem: Problem, completion: str) -> int:
        reverse = self.config.reverse_digits
        expected = reference_steps(problem.question)
        steps = split_steps(completion)
        for i, want in enumerate(expected):
            if i >= len(steps) or parse_step(steps[i], reverse) != want:
                return i
        n = len(expected)
        if n >= len(steps) or parse_answer_line(steps[n], reverse) != expected[-1][3]:
            return n
        # Anything after the answer line is a wrong extra step.
        return n + 1 if len(steps) > n + 1 else -1
