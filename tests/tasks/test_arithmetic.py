"""Tests for the built-in arithmetic task: generation, splits, grading, steps."""

from __future__ import annotations

import collections
import random
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ttc_jax.tasks import ArithmeticConfig, ArithmeticTask, Problem, get_task, split_steps
from ttc_jax.tasks.arithmetic import (
    format_int,
    format_step,
    is_test_question,
    parse_int,
    parse_question,
    format_solution,
    parse_step,
    reference_steps,
)

TASKS = {rev: ArithmeticTask(ArithmeticConfig(reverse_digits=rev)) for rev in (False, True)}
REVERSE = pytest.mark.parametrize("reverse", [False, True])
FEW = settings(max_examples=150, deadline=None)


def left_to_right(question: str) -> int:
    """Independent evaluator: parenthesise every prefix, then let Python eval."""
    first, ops = parse_question(question)
    expr = str(first)
    for op, right in ops:
        expr = f"({expr}){op}{right}"
    return eval(expr)  # noqa: S307 - digits and +-* only


def problem_for(seed: int, reverse: bool) -> Problem:
    return TASKS[reverse].train_problems(seed, 1)[0]


# ---------------------------------------------------------------- format


def test_example_format():
    task = TASKS[False]
    problem = next(p for p in task.train_problems(0, 100) if "*" in p.question and "-" in p.solution)
    assert task.prompt(problem) == f"Q: {problem.question}\n"
    lines = problem.solution.split("\n")
    assert lines[-1] == ""
    assert lines[-2] == f"answer {problem.answer}"


def test_left_to_right_no_precedence():
    steps = reference_steps("37+48*3-19")
    assert steps == [(37, "+", 48, 85), (85, "*", 3, 255), (255, "-", 19, 236)]
    sol_fwd = "37+48=85\n85*3=255\n255-19=236\nanswer 236\n"
    sol_rev = "73+84=58\n58*3=552\n552-91=632\nanswer 632\n"
    assert format_solution("37+48*3-19", reverse=False) == sol_fwd
    assert format_solution("37+48*3-19", reverse=True) == sol_rev
    assert format_solution("5-20", reverse=True) == "5-02=-51\nanswer -51\n"


@given(st.integers(-(10**6), 10**6), st.booleans())
def test_int_round_trip(value, reverse):
    text = format_int(value, reverse)
    assert parse_int(text, reverse) == value
    assert text.startswith("-") == (value < 0)


@given(
    st.integers(-999, 999), st.sampled_from("+-*"), st.integers(0, 999), st.integers(-(10**6), 10**6), st.booleans()
)
def test_step_round_trip(left, op, right, result, reverse):
    step = (left, op, right, result)
    assert parse_step(format_step(step, reverse), reverse) == step


def test_split_steps():
    assert split_steps("") == []
    assert split_steps("a\nb\n") == ["a", "b"]
    assert split_steps("a\nb") == ["a", "b"]
    assert split_steps("a\n\nb\n") == ["a", "", "b"]  # an empty line is a step
    assert TASKS[True].split_steps("x\n") == ["x"]


# ---------------------------------------------------------------- generation


@REVERSE
def test_train_stream_deterministic(reverse):
    task = TASKS[reverse]
    a = task.train_problems(7, 200)
    assert a == task.train_problems(7, 200)
    assert a[:50] == task.train_problems(7, 50)  # a stream: prefixes agree
    assert [p.question for p in a] != [p.question for p in task.train_problems(8, 200)]
    # a fresh task instance gives the same stream (no hidden state)
    assert a == ArithmeticTask(ArithmeticConfig(reverse_digits=reverse)).train_problems(7, 200)


def test_test_set_fixed_size_and_spread():
    task = TASKS[False]
    test = task.test_problems()
    assert len(test) == 500
    assert test == task.test_problems()
    assert len({p.uid for p in test}) == 500
    assert len({p.question for p in test}) == 500
    assert len(set(test)) == 500  # problems are hashable
    by_ops = collections.Counter(p.difficulty["n_ops"] for p in test)
    assert sorted(by_ops) == [1, 2, 3, 4, 5, 6]
    assert max(by_ops.values()) - min(by_ops.values()) <= 1
    by_digits = collections.Counter(p.difficulty["max_digits"] for p in test)
    assert sorted(by_digits) == [1, 2, 3]
    assert all(set(p.difficulty) == set(task.difficulty_keys) for p in test)


def test_test_questions_shared_across_digit_order():
    fwd, rev = TASKS[False].test_problems(), TASKS[True].test_problems()
    assert [(p.question, p.answer, p.uid) for p in fwd] == [(p.question, p.answer, p.uid) for p in rev]


def test_train_test_disjoint():
    task = TASKS[False]
    test_questions = {p.question for p in task.test_problems()}
    train = task.train_problems(0, 5000)
    assert not test_questions & {p.question for p in train}
    assert all(is_test_question(q, task.config.test_fraction) for q in test_questions)
    assert not any(is_test_question(p.question, task.config.test_fraction) for p in train)


def test_split_is_stable():
    # The split depends only on a sha256 of the question: pin one value.
    fraction = ArithmeticConfig().test_fraction
    flags = [is_test_question(f"{i}+1", fraction) for i in range(200)]
    assert 5 <= sum(flags) <= 40
    assert flags == [is_test_question(f"{i}+1", fraction) for i in range(200)]


@pytest.mark.parametrize("bound", [999, 60])
def test_intermediate_values_bounded(bound):
    task = ArithmeticTask(ArithmeticConfig(bound=bound))
    problems = task.train_problems(3, 1000)
    values = [v for p in problems for s in reference_steps(p.question) for v in (s[0], s[3])]
    assert max(abs(v) for v in values) <= bound
    assert min(values) < 0  # negative intermediate values do occur
    ops = [op for p in problems for _, op, right, _ in reference_steps(p.question) if op == "*" and not 2 <= right <= 9]
    assert not ops  # multiplication by a one-digit operand in [2, 9]


def test_operand_digits_weighted_small():
    problems = TASKS[False].train_problems(1, 2000)
    digits = collections.Counter(len(x) for p in problems for x in re.findall(r"\d+", p.question))
    assert digits[3] < digits[2] and digits[3] < digits[1]
    assert set(digits) == {1, 2, 3}


def test_row_length_fits_160():
    task = TASKS[False]
    rows = [task.prompt(p) + p.solution for p in task.test_problems() + task.train_problems(0, 3000)]
    assert max(len(r) for r in rows) <= 160


def test_config_validation():
    for bad in (dict(min_ops=0), dict(min_ops=3, max_ops=2), dict(ops="/"), dict(ops=""), dict(bound=5),
                dict(mul_max_operand=1), dict(test_fraction=0.0), dict(digit_weights=())):
        with pytest.raises(ValueError):
            ArithmeticConfig(**bad)
    with pytest.raises(ValueError, match="distinct test questions"):
        ArithmeticTask(ArithmeticConfig(max_ops=1, digit_weights=(1.0,), ops="+")).test_problems()


def test_registry():
    assert isinstance(get_task(), ArithmeticTask)
    assert get_task("arithmetic", reverse_digits=True).config.reverse_digits
    with pytest.raises(KeyError):
        get_task("nope")


def test_options_read_back_from_json_stay_hashable():
    # A run's sidecar stores task options as JSON, so tuples come back as lists.
    task = get_task("arithmetic", digit_weights=[0.5, 0.5], bound=99, test_size=12)
    assert task.config.digit_weights == (0.5, 0.5)
    assert task.config == ArithmeticConfig(digit_weights=(0.5, 0.5), bound=99, test_size=12)
    assert len(task.test_problems()) == 12  # keys the cached test set


# ---------------------------------------------------------------- grading and steps


@REVERSE
def test_reference_solutions_are_correct(reverse):
    task = TASKS[reverse]
    for p in task.test_problems() + task.train_problems(11, 300):
        assert p.solution.endswith("\n")
        assert int(p.answer) == left_to_right(p.question)
        assert len(split_steps(p.solution)) == p.difficulty["n_ops"] + 1
        assert task.extract_answer(p.solution) == p.answer
        assert task.grade(p, p.solution)
        assert task.first_wrong_step(p, p.solution) == -1


@REVERSE
@FEW
@given(seed=st.integers(0, 2**32), data=st.data())
def test_corrupting_one_digit_of_step_i(reverse, seed, data):
    task = TASKS[reverse]
    p = problem_for(seed, reverse)
    lines = split_steps(p.solution)
    i = data.draw(st.integers(0, len(lines) - 1), label="step")
    positions = [j for j, ch in enumerate(lines[i]) if ch.isdigit()]
    j = data.draw(st.sampled_from(positions), label="position")
    new_digit = data.draw(st.sampled_from([d for d in "0123456789" if d != lines[i][j]]), label="digit")
    lines[i] = lines[i][:j] + new_digit + lines[i][j + 1:]
    completion = "".join(line + "\n" for line in lines)
    assert task.first_wrong_step(p, completion) == i
    # the answer only changes when the answer line itself is corrupted
    assert task.grade(p, completion) == (i < len(lines) - 1)


@REVERSE
@FEW
@given(seed=st.integers(0, 2**32), data=st.data())
def test_truncated_solution(reverse, seed, data):
    task = TASKS[reverse]
    p = problem_for(seed, reverse)
    cut = data.draw(st.integers(0, len(p.solution) - 2), label="cut")  # drop at least one real character
    completion = p.solution[:cut]
    # The first incomplete or missing line is the first wrong one; a complete
    # but unterminated line (cut just before its newline) is still right.
    done = completion.count("\n")
    tail = completion.split("\n")[-1]
    assert task.first_wrong_step(p, completion) == done + (tail == split_steps(p.solution)[done])
    assert not task.grade(p, completion)


@REVERSE
def test_missing_final_newline_and_extra_steps(reverse):
    task = TASKS[reverse]
    for p in task.train_problems(5, 50):
        n = p.difficulty["n_ops"]
        assert task.first_wrong_step(p, p.solution[:-1]) == -1  # unterminated answer line still counts
        assert task.first_wrong_step(p, p.solution + "answer 1\n") == n + 1
        assert task.first_wrong_step(p, p.solution + "\n") == n + 1
        assert task.grade(p, p.solution + "\n\n")  # last non-empty line decides the answer
        assert task.first_wrong_step(p, "") == 0
        assert task.first_wrong_step(p, "\n" + p.solution) == 0


def test_wrong_operands_are_caught():
    task = TASKS[False]
    p = Problem("37+48*3-19", "", "236", {"n_ops": 3, "max_digits": 2}, "x")
    good = "37+48=85\n85*3=255\n255-19=236\nanswer 236\n"
    assert task.first_wrong_step(p, good) == -1
    cases = {
        "37+48=85\n85*4=340\n340-19=321\nanswer 321\n": 1,  # wrong right operand, consistent arithmetic
        "37+48=85\n86*3=258\n258-19=239\nanswer 239\n": 1,  # left operand is not the previous result
        "37+48=85\n85+3=88\n88-19=69\nanswer 69\n": 1,  # wrong op
        "37+48=85\n85*3=255\n255-19=236\nanswer 235\n": 3,  # wrong answer line
        "37+48=85\n85*3=255\n255-19=236\n": 3,  # missing answer line
        "37+48=85\n85*3=255\nanswer 236\n": 2,  # skipped step
        "37+48=85\n85 * 3=255\n255-19=236\nanswer 236\n": 1,  # unparsable
        "37+48=85\n85*3=255\n255-19=236\nanswer 0236\n": -1,  # leading zeros: same integer
    }
    for completion, expected in cases.items():
        assert task.first_wrong_step(p, completion) == expected, completion


@REVERSE
def test_unparsable_answer_is_wrong(reverse):
    task = TASKS[reverse]
    p = Problem("8-20", "", "-12", {"n_ops": 1, "max_digits": 2}, "x")
    answer = format_int(-12, reverse)
    for completion in ["", "\n\n", "answer", "answer \n", "answer x\n", "answer 1.5\n", f"the answer is {answer}\n",
                       f"answer {answer} 1\n", f"answer {answer}\nthanks\n", f"answer -{answer}\n",
                       f"Answer {answer}\n"]:
        assert task.extract_answer(completion) is None, completion
        assert not task.grade(p, completion)
        assert task.first_wrong_step(p, completion) == 0
    assert task.grade(p, f"junk\nanswer {answer}\n")
    assert not task.grade(p, f"answer {format_int(12, reverse)}\n")
    assert not task.grade(p, f"answer {format_int(-21, reverse)}\n")


def test_negative_numbers_round_trip_in_reverse():
    task = TASKS[True]
    p = Problem("5-20*3", "", "-45", {"n_ops": 2, "max_digits": 2}, "x")
    solution = "5-02=-51\n-51*3=-54\nanswer -54\n"
    assert task.first_wrong_step(p, solution) == -1
    assert task.extract_answer(solution) == "-45"
    assert task.first_wrong_step(p, "5-02=-15\n") == 0  # forward order is wrong in reverse mode


def test_uids_stable_across_instances():
    assert [p.uid for p in TASKS[False].test_problems()[:5]] == [
        p.uid for p in ArithmeticTask().test_problems()[:5]
    ]


def test_no_global_rng_used():
    random.seed(1)
    a = TASKS[False].train_problems(2, 20)
    random.seed(2)
    assert a == TASKS[False].train_problems(2, 20)
