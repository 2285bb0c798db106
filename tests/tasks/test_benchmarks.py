"""MATH-500 / GSM8K tasks: readers, reference steps, few-shot prompts, grading.

The tests on the real files skip where ../shared/data is absent (a user's
clone); the rest run on tiny JSONL files written here.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest

from ttc_jax.tasks import Gsm8kTask, MathTask, Problem, get_task, split_steps, task_names
from ttc_jax.tasks import benchmarks
from ttc_jax.tasks.benchmarks import math_solution_steps, read_gsm8k_jsonl, read_math_jsonl

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"
needs_shared = pytest.mark.skipif(not (SHARED / "math500" / "test.jsonl").is_file()
                                  or not (SHARED / "gsm8k" / "test.jsonl").is_file(),
                                  reason=f"no shared benchmark data at {SHARED}")

MATH_ROWS = [
    {"problem": "What is $1+1$?", "solution": "We add.\n\n$1+1=\\boxed{2}$.",
     "answer": "2", "subject": "Prealgebra", "level": 1, "unique_id": "test/a/1.json"},
    {"problem": "Halve 1.", "solution": "Half of one is $\\boxed{\\frac{1}{2}}$.",
     "answer": "\\frac{1}{2}", "subject": "Algebra", "level": 2, "unique_id": "test/a/2.json"},
    {"problem": "Find $x$ if $x-3=0$.",
     "solution": "We have \\begin{align*}\nx &= \\boxed{3}.\n\\end{align*}Remark: easy.\n"
                 "[asy]\ndraw((0,0)--(1,1));\n[/asy]",
     "answer": "3", "subject": "Algebra", "level": 3, "unique_id": "test/a/3.json"},
    {"problem": "Name the direction.", "solution": "The sun rises in the east.",
     "answer": "\\text{east}", "subject": "Geometry", "level": 4, "unique_id": "test/a/4.json"},
    {"problem": "Angle?", "solution": "It is a right angle, $\\boxed{90^\\circ}$.",
     "answer": "90^\\circ", "subject": "Geometry", "level": 5, "unique_id": "test/a/5.json"},
]
GSM8K_ROWS = [
    {"question": "Janet has 16 eggs and eats 3. How many are left?",
     "answer": "She has 16 - 3 = <<16-3=13>>13 eggs.\n#### 13", "idx": 0},
    {"question": "A shop sells 1,000 pens a day. How many in 2 days?",
     "answer": "Per day 1,000.\n\nIn 2 days 2 * 1000 = <<2*1000=2000>>2,000 pens.\n#### 2,000",
     "idx": 1},
    {"question": "Half of 5?", "answer": "5 / 2 = <<5/2=2.5>>2.5\n#### 2.5", "idx": 2},
    {"question": "Owe 4, pay 7: balance?", "answer": "4 - 7 = <<4-7=-3>>-3\n#### -3", "idx": 3},
]


def write_jsonl(path: Path, rows: list) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture
def math_file(tmp_path):
    return write_jsonl(tmp_path / "math.jsonl", MATH_ROWS)


@pytest.fixture
def gsm8k_file(tmp_path):
    return write_jsonl(tmp_path / "gsm8k.jsonl", GSM8K_ROWS)


# ---------------------------------------------------------------- readers and steps


def test_math_reader(math_file):
    problems = read_math_jsonl(math_file)
    assert [p.uid for p in problems] == [r["unique_id"] for r in MATH_ROWS]
    assert [p.difficulty for p in problems] == [{"level": r["level"]} for r in MATH_ROWS]
    assert problems[1].answer == "\\frac{1}{2}" and problems[1].question == "Halve 1."
    assert problems[0].solution == "We add.\n$1+1=\\boxed{2}$.\n"


def test_math_steps_end_with_the_boxed_line():
    # The closer of the boxed line's environment stays; remarks and figures go.
    steps = split_steps(math_solution_steps(MATH_ROWS[2]["solution"], "3"))
    assert steps == ["We have \\begin{align*}", "x &= \\boxed{3}. \\end{align*}"]
    # No boxed line: an answer line is appended.
    steps = split_steps(math_solution_steps("The sun rises in the east.", "\\text{east}"))
    assert steps[-1] == "The answer is $\\boxed{\\text{east}}$."


def test_gsm8k_reader(gsm8k_file):
    problems = read_gsm8k_jsonl(gsm8k_file)
    assert [p.uid for p in problems] == ["gsm8k-0", "gsm8k-1", "gsm8k-2", "gsm8k-3"]
    assert [p.answer for p in problems] == ["13", "2000", "2.5", "-3"]
    assert problems[0].solution == "She has 16 - 3 = 13 eggs.\nThe answer is 13.\n"
    assert problems[1].solution == ("Per day 1,000.\nIn 2 days 2 * 1000 = 2,000 pens.\n"
                                    "The answer is 2000.\n")
    assert [p.difficulty for p in problems] == [{"steps": 1}, {"steps": 2}, {"steps": 1},
                                                {"steps": 1}]


@pytest.mark.parametrize("reader, rows, line, match", [
    (read_math_jsonl, MATH_ROWS[:1] + ["{not json"], 2, "not valid JSON"),
    (read_math_jsonl, [{k: v for k, v in MATH_ROWS[0].items() if k != "answer"}], 1,
     "missing field 'answer'"),
    (read_math_jsonl, [dict(MATH_ROWS[0], level="Level 1")], 1, "'level' must be int"),
    (read_math_jsonl, MATH_ROWS[:2] + MATH_ROWS[:1], 3, "duplicate unique_id"),
    (read_math_jsonl, [[1, 2]], 1, "expected a JSON object"),
    (read_gsm8k_jsonl, [dict(GSM8K_ROWS[0], answer="no final line")], 1, "#### <number>"),
    (read_gsm8k_jsonl, [dict(GSM8K_ROWS[0], answer="x\n#### many")], 1, "#### <number>"),
    (read_gsm8k_jsonl, GSM8K_ROWS[:2] + [dict(GSM8K_ROWS[2], idx=0)], 3, "duplicate idx"),
    (read_gsm8k_jsonl, [{k: v for k, v in GSM8K_ROWS[0].items() if k != "idx"}], 1,
     "missing field 'idx'"),
])
def test_bad_lines_name_file_and_line(tmp_path, reader, rows, line, match):
    path = tmp_path / "bad.jsonl"
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    with pytest.raises(ValueError, match=match) as info:
        reader(path)
    assert f"{path}:{line}:" in str(info.value)


# ---------------------------------------------------------------- data paths


def test_missing_data_names_the_flag(tmp_path, monkeypatch):
    monkeypatch.setattr(benchmarks, "SHARED_DATA", tmp_path / "nowhere")
    for name in ("math500", "gsm8k"):
        with pytest.raises(FileNotFoundError, match="--data_path"):
            get_task(name)
        with pytest.raises(FileNotFoundError, match="--data_path"):
            get_task(name, data_path=str(tmp_path / "absent.jsonl"))


def test_default_path_is_the_shared_copy(tmp_path, monkeypatch, math_file):
    (tmp_path / "data" / "math500").mkdir(parents=True)
    (tmp_path / "data" / "math500" / "test.jsonl").write_text(Path(math_file).read_text())
    monkeypatch.setattr(benchmarks, "SHARED_DATA", tmp_path / "data")
    task = get_task("math500", num_shots=1)
    assert task.data_path == tmp_path / "data" / "math500" / "test.jsonl"
    assert len(task.test_problems()) == len(MATH_ROWS)


def test_registered():
    assert {"arithmetic", "math500", "gsm8k"} <= set(task_names())


# ---------------------------------------------------------------- prompts and shots


def test_prompt_layout(math_file):
    task = MathTask(data_path=math_file, num_shots=2, shots_seed=0)
    problem = task.test_problems()[0]
    prompt = task.prompt(problem)
    shots = task.shots(problem)
    assert prompt.startswith(benchmarks.MATH_INSTRUCTION + "\n\n")
    assert prompt.endswith(f"Problem: {problem.question}\nSolution:\n")
    expected = "".join(f"Problem: {s.question}\nSolution:\n{s.solution}\n" for s in shots)
    assert prompt == benchmarks.MATH_INSTRUCTION + "\n\n" + expected + \
        f"Problem: {problem.question}\nSolution:\n"
    assert prompt.count("Problem: ") == 3


def test_shots_are_fixed_and_never_the_item(math_file):
    task = MathTask(data_path=math_file, num_shots=2, shots_seed=3)
    problems = task.test_problems()
    base = task.shot_candidates()[:2]
    for problem in problems:
        shots = task.shots(problem)
        assert len(shots) == 2 and problem not in shots
        assert problem.question not in task.prompt(problem).rsplit("Problem: ", 1)[0]
        if problem not in base:
            assert shots == base  # the fixed set
        else:  # that shot is replaced by the next candidate
            assert shots == [p for p in task.shot_candidates() if p != problem][:2]
    # [asy] figures are never shots.
    assert all("[asy]" not in p.solution for p in task.shot_candidates())
    assert MathTask(data_path=math_file, num_shots=2, shots_seed=3).shot_candidates() == \
        task.shot_candidates()
    orders = {tuple(p.uid for p in MathTask(data_path=math_file, shots_seed=s).shot_candidates())
              for s in range(6)}
    assert len(orders) > 1


def test_too_few_shots(math_file):
    task = MathTask(data_path=math_file, num_shots=len(MATH_ROWS))
    with pytest.raises(ValueError, match="usable shots"):
        task.prompt(task.test_problems()[0])
    with pytest.raises(ValueError, match="num_shots"):
        MathTask(data_path=math_file, num_shots=-1)


def test_zero_shots(gsm8k_file):
    task = Gsm8kTask(data_path=gsm8k_file, num_shots=0)
    problem = task.test_problems()[0]
    assert task.prompt(problem) == (benchmarks.GSM8K_INSTRUCTION + "\n\n"
                                    f"Problem: {problem.question}\nSolution:\n")


def test_shots_path_and_train_problems(tmp_path, gsm8k_file):
    train_rows = [dict(r, idx=100 + i, question=f"Train question {i}?") for i, r in
                  enumerate(GSM8K_ROWS)] + [dict(GSM8K_ROWS[0], idx=200)]  # a test question
    shots_file = write_jsonl(tmp_path / "train.jsonl", train_rows)
    task = Gsm8kTask(data_path=gsm8k_file, shots_path=shots_file, num_shots=3)
    problem = task.test_problems()[0]
    assert all(s.question.startswith("Train question") for s in task.shots(problem))
    train = task.train_problems(seed=0, n=4)
    assert sorted(p.uid for p in train) == ["gsm8k-100", "gsm8k-101", "gsm8k-102", "gsm8k-103"]
    assert task.train_problems(seed=0, n=4) == train
    with pytest.raises(ValueError, match="has 4"):
        task.train_problems(seed=0, n=5)
    with pytest.raises(ValueError, match="shots_path"):
        Gsm8kTask(data_path=gsm8k_file).train_problems(seed=0, n=1)


# ---------------------------------------------------------------- answers and grading


def test_math_grading(math_file):
    task = MathTask(data_path=math_file, num_shots=1)
    p = {q.uid: q for q in task.test_problems()}
    try:
        for q in p.values():
            assert task.grade(q, q.solution), q.uid
        assert task.grade(p["test/a/2.json"], "So $\\boxed{0.5}$.")
        assert task.grade(p["test/a/2.json"], "The answer is $\\dfrac12$.")
        assert not task.grade(p["test/a/2.json"], "So $\\boxed{0.25}$.")
        assert not task.grade(p["test/a/2.json"], "no answer")
        assert task.grade(p["test/a/5.json"], "\\boxed{90}")
        assert task.extract_answer("x = \\boxed{\\dfrac{1}{2}}") == "\\frac{1}{2}"
        assert task.extract_answer("nothing") is None
        assert task.timed_out == 0
        # A copy (e.g. sent to another process) grades with its own worker.
        clone = pickle.loads(pickle.dumps(task))
        assert clone.grade(p["test/a/2.json"], "So $\\boxed{0.5}$.")
        clone.close()
    finally:
        task.close()


def test_gsm8k_grading(gsm8k_file):
    task = Gsm8kTask(data_path=gsm8k_file)
    p = task.test_problems()
    for q in p:
        assert task.grade(q, q.solution), q.uid
    assert task.grade(p[1], "2,000 pens.\n#### 2,000")
    assert task.grade(p[2], "The answer is $2.50.")
    assert not task.grade(p[2], "The answer is 2.")
    assert not task.grade(p[0], "I do not know.")
    assert task.extract_answer("#### 1,000") == "1000"


def test_no_step_labels(math_file, gsm8k_file):
    for task in (MathTask(data_path=math_file), Gsm8kTask(data_path=gsm8k_file)):
        with pytest.raises(NotImplementedError, match="arithmetic"):
            task.first_wrong_step(task.test_problems()[0], "x\n")


# ---------------------------------------------------------------- the shared data


@needs_shared
def test_every_math500_reference_grades_correct():
    task = get_task("math500")
    problems = task.test_problems()
    assert len(problems) == 500 and len({p.uid for p in problems}) == 500
    assert {p.difficulty["level"] for p in problems} == {1, 2, 3, 4, 5}
    try:
        failures = [p.uid for p in problems if not task.grade(p, p.solution)]
    finally:
        task.close()
    assert failures == []
    for p in problems:
        assert p.solution.endswith("\n") and "\\boxed" in split_steps(p.solution)[-1], p.uid


@needs_shared
def test_every_gsm8k_reference_grades_correct():
    task = get_task("gsm8k")
    problems = task.test_problems()
    assert len(problems) == 1319 and len({p.uid for p in problems}) == 1319
    assert [p for p in problems if not task.grade(p, p.solution)] == []
    assert all(p.difficulty["steps"] >= 1 and "<<" not in p.solution for p in problems)
    assert all(split_steps(p.solution)[-1] == f"The answer is {p.answer}." for p in problems)


@needs_shared
@pytest.mark.parametrize("name", ["math500", "gsm8k"])
def test_prompts_never_hold_the_item(name):
    task = get_task(name)
    problems = task.test_problems()
    for problem in problems:
        prompt = task.prompt(problem)
        assert len(task.shots(problem)) == 4
        shots_part = prompt[:-len(f"Problem: {problem.question}\nSolution:\n")]
        assert problem.question not in shots_part, problem.uid
        assert prompt.endswith("\n") and shots_part.count("\nSolution:\n") == 4
    # The fixed set shows up in (almost) every prompt.
    fixed = task.shot_candidates()[:4]
    assert sum(task.shots(p) == fixed for p in problems) == len(problems) - 4
    assert isinstance(problems[0], Problem)
