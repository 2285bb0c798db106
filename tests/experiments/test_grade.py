"""experiments/grade.py: the command line end to end on tiny files, and its errors."""

import json
import pathlib
import subprocess
import sys

import pytest

from experiments import grade
from ttc_jax.tasks import Gsm8kTask

REPO = str(pathlib.Path(__file__).resolve().parents[2])

MATH_ROWS = [
    {"problem": "Halve 1.", "solution": "It is $\\boxed{\\frac{1}{2}}$.", "answer": "\\frac{1}{2}",
     "level": 2, "unique_id": "test/x/1.json"},
    {"problem": "Angle?", "solution": "A right angle: $\\boxed{90^\\circ}$.", "answer": "90^\\circ",
     "level": 1, "unique_id": "test/x/2.json"},
    {"problem": "2+3?", "solution": "$2+3=\\boxed{5}$.", "answer": "5", "level": 1,
     "unique_id": "test/x/3.json"},
    {"problem": "3+3?", "solution": "$3+3=\\boxed{6}$.", "answer": "6", "level": 1,
     "unique_id": "test/x/4.json"},
]
GSM8K_ROWS = [
    {"question": "16 - 3?", "answer": "16 - 3 = <<16-3=13>>13\n#### 13", "idx": 7},
    {"question": "2 * 1000?", "answer": "2 * 1000 = <<2*1000=2000>>2,000\n#### 2,000", "idx": 8},
]


def _jsonl(path, rows):
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  return str(path)


def _run(*args):
  return subprocess.run([sys.executable, "-m", "experiments.grade", *args], cwd=REPO,
                        capture_output=True, text=True, timeout=120)


def test_cli_math500(tmp_path):
  data = _jsonl(tmp_path / "math.jsonl", MATH_ROWS)
  preds = _jsonl(tmp_path / "preds.jsonl", [
      {"unique_id": "test/x/1.json", "output": "Step one.\nSo $\\boxed{0.5}$."},  # right
      {"unique_id": "test/x/2.json", "output": "The answer is 90."},  # right
      {"unique_id": "test/x/3.json", "output": "So $\\boxed{6}$."},  # wrong
      {"unique_id": "test/x/4.json", "output": "I cannot tell."},  # unparsable
  ])
  out = tmp_path / "sub" / "graded.json"
  done = _run("--dataset=math500", f"--data_path={data}", f"--predictions={preds}",
              f"--json_out={out}", "--timeout_s=20")
  assert done.returncode == 0, done.stderr[-3000:]
  result = json.loads(out.read_text())
  assert result["n"] == 4 and result["accuracy"] == 0.5 and result["timed_out"] == 0
  assert result["correct"] == [
      {"id": "test/x/1.json", "correct": True, "extracted": "0.5"},
      {"id": "test/x/2.json", "correct": True, "extracted": "90"},
      {"id": "test/x/3.json", "correct": False, "extracted": "6"},
      {"id": "test/x/4.json", "correct": False, "extracted": None},
  ]
  assert "accuracy 0.5000" in done.stdout
  assert [p.name for p in out.parent.iterdir()] == ["graded.json"]  # no temp file left


def test_cli_gsm8k_and_a_bad_id(tmp_path):
  data = _jsonl(tmp_path / "gsm8k.jsonl", GSM8K_ROWS)
  preds = _jsonl(tmp_path / "preds.jsonl", [
      {"idx": 8, "output": "2 * 1000 = 2000 pens\n#### 2,000"},
      {"idx": "7", "output": "16 - 3 = 12\nThe answer is 12."},
  ])
  out = tmp_path / "graded.json"
  done = _run("--dataset=gsm8k", f"--data_path={data}", f"--predictions={preds}",
              f"--json_out={out}")
  assert done.returncode == 0, done.stderr[-3000:]
  result = json.loads(out.read_text())
  assert result["accuracy"] == 0.5 and result["n"] == 2
  assert [(c["id"], c["correct"], c["extracted"]) for c in result["correct"]] == [
      (8, True, "2000"), ("7", False, "12")]

  unknown = _jsonl(tmp_path / "unknown.jsonl", [{"idx": 99, "output": "#### 1"}])
  done = _run("--dataset=gsm8k", f"--data_path={data}", f"--predictions={unknown}",
              f"--json_out={tmp_path / 'x.json'}")
  assert done.returncode != 0 and "not in" in done.stderr and "99" in done.stderr
  assert not (tmp_path / "x.json").exists()


def test_read_predictions_errors(tmp_path):
  dup = _jsonl(tmp_path / "dup.jsonl", [{"unique_id": "a", "output": "x"},
                                        {"unique_id": "b", "output": "y"},
                                        {"unique_id": "a", "output": "z"}])
  with pytest.raises(ValueError, match=r"dup.jsonl:3: duplicate unique_id 'a' \(first on line 1\)"):
    grade.read_predictions(dup, "math500")
  dup_idx = _jsonl(tmp_path / "dup_idx.jsonl", [{"idx": 3, "output": "x"},
                                                {"idx": "3", "output": "y"}])
  with pytest.raises(ValueError, match="dup_idx.jsonl:2: duplicate idx"):
    grade.read_predictions(dup_idx, "gsm8k")
  missing = _jsonl(tmp_path / "missing.jsonl", [{"unique_id": "a"}])
  with pytest.raises(ValueError, match="missing.jsonl:1: expected an object"):
    grade.read_predictions(missing, "math500")
  bad_idx = _jsonl(tmp_path / "bad_idx.jsonl", [{"idx": 1.5, "output": "x"}])
  with pytest.raises(ValueError, match="idx must be an integer"):
    grade.read_predictions(bad_idx, "gsm8k")
  (tmp_path / "broken.jsonl").write_text('{"idx": 1, "output": "x"}\n{oops\n')
  with pytest.raises(ValueError, match="broken.jsonl:2: not valid JSON"):
    grade.read_predictions(str(tmp_path / "broken.jsonl"), "gsm8k")
  (tmp_path / "empty.jsonl").write_text("\n")
  with pytest.raises(ValueError, match="no predictions"):
    grade.read_predictions(str(tmp_path / "empty.jsonl"), "gsm8k")


def test_unknown_ids_in_process(tmp_path):
  task = Gsm8kTask(data_path=_jsonl(tmp_path / "gsm8k.jsonl", GSM8K_ROWS))
  rows = grade.read_predictions(_jsonl(tmp_path / "p.jsonl", [{"idx": 7, "output": "#### 13"},
                                                              {"idx": 5, "output": "#### 1"}]),
                                "gsm8k")
  with pytest.raises(ValueError, match=r"1 prediction ids are not in .*gsm8k.jsonl: \[5\]"):
    grade.grade_predictions(task, rows, progress=False)
  result = grade.grade_predictions(task, rows[:1], progress=False)
  assert result["accuracy"] == 1.0 and result["correct"][0]["id"] == 7
