"""Answer extraction, normalisation and grading for MATH / GSM8K answers."""

from __future__ import annotations

import copy
import os
import time

import pytest

from ttc_jax.tasks.grading import (
    Grader,
    canonical_number,
    extract_gsm8k_answer,
    extract_math_answer,
    gsm8k_equal,
    last_boxed,
    math_equal,
    normalize_math_answer,
)

# (prediction, reference): equivalent answers.
EQUAL = [
    ("\\frac12", "0.5"),
    ("0.5", "\\dfrac{1}{2}"),
    ("\\frac12", "\\dfrac{1}{2}"),
    ("x=3", "3"),
    ("3", "x = 3"),
    ("90^\\circ", "90"),
    ("90", "90^{\\circ}"),
    ("(3,\\pi/2)", "\\left( 3, \\frac{\\pi}{2} \\right)"),
    ("\\frac{\\sqrt{2}}{2}", "\\sqrt2/2"),
    ("15", "15\\mbox{ cm}^2"),
    ("32348", "\\$32,\\!348"),
    ("C", "\\text{(C)}"),
    ("\\text{east}", "east"),
    ("10\\%", "10"),
    ("2x+3", "y = 2x + 3"),
]
# (prediction, reference): different answers.
NOT_EQUAL = [
    ("\\frac{1}{3}", "0.33"),
    ("2", "3"),
    ("-3", "3"),
    ("(3,\\pi)", "\\left( 3, \\frac{\\pi}{2} \\right)"),
    ("x^2", "x^3"),
    ("[1,2)", "[1,2]"),
    ("Evlyne", "\\text{Evelyn}"),
    ("\\frac{270}{7}\\text{ degrees}", "\\frac{27}{7}"),
    ("", "5"),
]
GARBAGE = ["\\frac{", "}}}{{{", "\\boxed", "$$", "\\sqrt[", "((((((((", "1/0", "\\left(", "=="]


@pytest.mark.parametrize("pred, ref", EQUAL)
def test_equivalent_answers(pred, ref):
    assert math_equal(pred, ref)


@pytest.mark.parametrize("pred, ref", NOT_EQUAL)
def test_different_answers(pred, ref):
    assert not math_equal(pred, ref)
    assert not math_equal(ref, pred)


@pytest.mark.parametrize("text", GARBAGE)
def test_garbage_is_wrong_not_a_crash(text):
    assert not math_equal(text, "5")
    assert not math_equal("5", text)


def test_normalisation_fast_path():
    assert normalize_math_answer("\\dfrac{1}{2}") == normalize_math_answer("\\frac 1 2")
    assert normalize_math_answer("\\left[ 1, 2 \\right)") == "[1,2)"
    assert normalize_math_answer("$5.$") == "5"
    assert normalize_math_answer("5.40") == "5.40"  # only an all-zero fraction is dropped
    assert normalize_math_answer("5.00") == "5"
    assert normalize_math_answer(".5") == "0.5"
    assert normalize_math_answer("5.4 \\text{ cents}") == "5.4"
    assert normalize_math_answer("\\text{ellipse}") == "ellipse"
    assert normalize_math_answer("\\rightarrow") == "\\rightarrow"  # not "\right" + "arrow"
    assert normalize_math_answer("(1,234)") == "(1,234)"  # a pair, not a thousands comma


# ---------------------------------------------------------------- extraction


def test_last_boxed_nested_braces():
    text = "so $\\boxed{\\frac{1}{\\sqrt{2}}}$ and finally $x=\\boxed{\\{1, \\frac{2}{3}\\}}$."
    assert last_boxed(text) == "\\{1, \\frac{2}{3}\\}"
    assert last_boxed("a \\boxed{\\frac{1}{\\sqrt{2}}} b") == "\\frac{1}{\\sqrt{2}}"


@pytest.mark.parametrize("text, want", [
    ("First $\\boxed{2}$, then $\\boxed{3}$.", "3"),
    ("It is \\fbox{7}.", "7"),
    ("It is $\\boxed 5$.", "5"),
    ("so \\boxed {12}", "12"),
    ("The answer is $\\frac{1}{2}$.", "\\frac{1}{2}"),
    ("The answer is: 42", "42"),
    ("the answer is 3.5.", "3.5"),
    ("The answer is 4.\nThe answer is $x = 7$.\n", "x = 7"),
    ("The final answer is $\\boxed{9}$. The answer is 8.", "9"),  # a box wins
    ("no answer here", None),
    ("The answer is $$.", None),
    ("cut off: \\boxed{\\frac{1}{2", None),  # an unclosed last box is no answer
])
def test_extract_math_answer(text, want):
    assert extract_math_answer(text) == want


# ---------------------------------------------------------------- GSM8K


@pytest.mark.parametrize("text, want", [
    ("She makes 9 * 2 = 18 dollars.\n#### 18", "18"),
    ("#### 1,234", "1234"),
    ("####   -5", "-5"),
    ("So the total is 7.\nThe answer is $1,250.50.", "1250.5"),
    ("The answer is: 18.00 dollars", "18"),
    ("Thus \\boxed{\\$36}.", "36"),
    ("#### none\nThe answer is 3.", "3"),  # no number after ####: the next source
    ("The total is 5 apples.", None),
    ("", None),
])
def test_extract_gsm8k_answer(text, want):
    assert extract_gsm8k_answer(text) == want


@pytest.mark.parametrize("pred, ref, want", [
    ("18", "18", True),
    ("18.0", "18", True),
    ("$18.00", "18", True),
    ("1,000", "1000", True),
    ("5 apples", "5", True),
    ("18.000001", "18", False),  # exact for an integer reference
    ("17", "18", False),
    ("-3", "3", False),
    ("12.5000001", "12.5", True),  # relative tolerance 1e-6
    ("12.51", "12.5", False),
    (None, "18", False),
    ("", "18", False),
    ("1" * 5000, "18", False),
])
def test_gsm8k_equal(pred, ref, want):
    assert gsm8k_equal(pred, ref) is want


def test_canonical_number():
    assert canonical_number("007") == "7"
    assert canonical_number("-0.0") == "0"
    assert canonical_number("\u22124") == "-4"
    assert canonical_number("1,25") == "1"  # not a thousands group: the first number


# ---------------------------------------------------------------- the timed worker


def _test_compare(pred: str, ref: str) -> bool:
    """Worker compare for the tests: "hang" stalls, "crash" kills the worker."""
    if pred == "hang":  # long past any timeout here, yet a broken timeout fails, not stalls
        time.sleep(30)
    if pred == "crash":
        os._exit(3)
    if pred == "raise":
        raise RecursionError("deep")
    return pred == "two" and ref == "2"


@pytest.fixture(scope="module")
def math_grader():
    with Grader(timeout_s=20.0) as grader:
        yield grader


def test_grader_agrees_with_math_equal(math_grader):
    pairs = EQUAL + NOT_EQUAL
    want = [True] * len(EQUAL) + [False] * len(NOT_EQUAL)
    assert math_grader.grade_many(pairs) == want
    assert math_grader.grade(None, "5") is False
    assert math_grader.timed_out == 0 and math_grader.crashed == 0


def test_grader_garbage_is_wrong(math_grader):
    assert math_grader.grade_many([(g, "5") for g in GARBAGE]) == [False] * len(GARBAGE)


def test_a_hung_answer_times_out_and_the_worker_recovers():
    with Grader(timeout_s=1.0, compare=_test_compare) as grader:
        assert grader.grade("two", "2")  # the worker is up; its start is not timed
        start = time.monotonic()
        assert grader.grade("hang", "2") is False
        assert time.monotonic() - start < 1.0 + 4.0
        assert grader.timed_out == 1 and grader.restarts == 1
        assert grader.grade("two", "2")  # a fresh worker answers
        assert grader.grade("three", "2") is False
        # The result is cached: a repeat costs no second timeout.
        start = time.monotonic()
        assert grader.grade("hang", "2") is False
        assert time.monotonic() - start < 0.5
        assert grader.timed_out == 1


def test_a_pathological_expression_cannot_stall():
    # sympy tries to evaluate the power tower (it ran past 3 s when this was
    # written); whatever it does, the answer is wrong within the limit.
    with Grader(timeout_s=2.0) as grader:
        assert grader.grade("7", "7.0")  # starts the worker
        start = time.monotonic()
        assert grader.grade("10^{10^{10^{10}}}", "5") is False
        assert time.monotonic() - start < 2.0 + 3.0
        assert grader.grade("\\frac{14}{2}", "7")  # usable afterwards


def test_a_crashed_or_raising_worker_counts_wrong():
    with Grader(timeout_s=10.0, compare=_test_compare) as grader:
        assert grader.grade("crash", "2") is False
        assert grader.crashed == 1 and grader.timed_out == 0
        assert grader.grade("raise", "2") is False
        assert grader.crashed == 1  # an exception is a wrong answer, not a crash
        assert grader.grade("two", "2")


def test_grader_copies_start_their_own_worker():
    with Grader(timeout_s=10.0, compare=_test_compare) as grader:
        assert grader.grade("two", "2")
        clone = copy.deepcopy(grader)
        with clone:
            assert clone.grade("two", "2")  # cached
            assert clone.grade("three", "2") is False  # asks a new worker
        assert grader.grade("four", "2") is False  # the original still works


def test_a_pool_of_workers_grades_as_one_does():
    pairs = [("two", "2"), ("three", "2"), ("hang", "2"), ("two", "2"), (None, "2"), ("2", "2"),
             ("raise", "2"), ("four", "2")]
    want = [True, False, False, True, False, True, False, False]
    with Grader(timeout_s=1.0, compare=_test_compare, workers=3) as grader:
        start = time.monotonic()
        assert grader.grade_many(pairs) == want
        # "hang" costs its own worker one timeout; the other workers answer meanwhile.
        assert time.monotonic() - start < 1.0 + 4.0
        assert grader.workers == 3 and grader.timed_out == 1 and grader.restarts == 1
        assert grader.grade_many(pairs) == want  # all cached: no second timeout
        assert grader.timed_out == 1


def test_grader_rejects_bad_options():
    with pytest.raises(ValueError, match="timeout_s"):
        Grader(timeout_s=0)
    with pytest.raises(ValueError, match="start_method"):
        Grader(start_method="teleport")
    with pytest.raises(ValueError, match="workers"):
        Grader(workers=0)
