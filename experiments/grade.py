"""Grades model outputs on MATH-500 or GSM8K (no model needed).

  python -m experiments.grade --dataset=math500 --predictions=preds.jsonl --json_out=graded.json

--predictions: JSON lines, each with the item's id (`unique_id` for math500,
`idx` for gsm8k) and `output` (the model's full text). Every id must be in
the dataset, at most once. Writes one JSON object (atomically): `accuracy`,
`n`, `timed_out` (answers whose grading ran past --timeout_s, counted wrong)
and per item {id, correct, extracted}; prints the accuracy.
"""

from __future__ import annotations

import json
import os
from typing import Any

from absl import app, flags
import tqdm

from ttc_jax.atomic import write_json  # not checkpoints: grading needs no JAX
from ttc_jax.tasks import get_task
from ttc_jax.tasks.benchmarks import BenchmarkTask, gsm8k_uid

FLAGS = flags.FLAGS
ID_KEYS = {"math500": "unique_id", "gsm8k": "idx"}
# Below this many predictions grading is quick enough to go without a bar.
_PROGRESS_MIN = 50
_CHUNK = 512  # answers per grade_many call


def prediction_uid(dataset: str, value: Any, where: str) -> str:
  """The Problem.uid a prediction's id field names."""
  if dataset == "gsm8k":
    if isinstance(value, str) and value.strip().isdigit():
      value = int(value)
    if not isinstance(value, int) or isinstance(value, bool):
      raise ValueError(f"{where}: idx must be an integer, got {value!r}")
    return gsm8k_uid(value)
  if not isinstance(value, str):
    raise ValueError(f"{where}: unique_id must be a string, got {value!r}")
  return value


def read_predictions(path: str, dataset: str) -> list[tuple[Any, str, str]]:
  """(id as written, Problem uid, output) per line; clear errors naming the line."""
  key = ID_KEYS[dataset]
  rows, seen = [], {}
  with open(path, encoding="utf-8") as f:
    for lineno, line in enumerate(f, 1):
      if not line.strip():
        continue
      where = f"{path}:{lineno}"
      try:
        obj = json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f"{where}: not valid JSON ({e.msg})") from None
      if not isinstance(obj, dict) or key not in obj or "output" not in obj:
        raise ValueError(f"{where}: expected an object with {key!r} and 'output'")
      if not isinstance(obj["output"], str):
        raise ValueError(f"{where}: 'output' must be a string")
      uid = prediction_uid(dataset, obj[key], where)
      if uid in seen:
        raise ValueError(f"{where}: duplicate {key} {obj[key]!r} (first on line {seen[uid]})")
      seen[uid] = lineno
      rows.append((obj[key], uid, obj["output"]))
  if not rows:
    raise ValueError(f"{path}: no predictions")
  return rows


def grade_predictions(task: BenchmarkTask, rows: list[tuple[Any, str, str]],
                      progress: bool = True) -> dict:
  """Accuracy and per-item results of (id, uid, output) rows."""
  problems = {p.uid: p for p in task.test_problems()}
  unknown = [ident for ident, uid, _ in rows if uid not in problems]
  if unknown:
    raise ValueError(f"{len(unknown)} prediction ids are not in {task.data_path}: "
                     f"{unknown[:5]}{' ...' if len(unknown) > 5 else ''}")
  items = []
  with tqdm.tqdm(total=len(rows), desc="grade", unit="answer",
                 disable=not progress or len(rows) < _PROGRESS_MIN) as bar:
    for start in range(0, len(rows), _CHUNK):  # chunks: the bar moves, the workers share each
      chunk = rows[start:start + _CHUNK]
      graded = task.grade_many([problems[uid] for _, uid, _ in chunk],
                               [output for _, _, output in chunk])
      items.extend({"id": ident, "correct": bool(correct),
                    "extracted": task.extract_answer(output)}
                   for (ident, _, output), correct in zip(chunk, graded))
      bar.update(len(chunk))
  n_correct = sum(item["correct"] for item in items)
  return {"dataset": task.name, "data_path": str(task.data_path), "n": len(items),
          "accuracy": n_correct / len(items), "timed_out": task.timed_out, "correct": items}


def define_flags() -> None:
  flags.DEFINE_enum("dataset", None, sorted(ID_KEYS), "Which benchmark the predictions are for.")
  flags.DEFINE_string("data_path", None, "The dataset's JSONL file (default: the shared copy, "
                      "../shared/data/<dataset>/test.jsonl beside the project).")
  flags.DEFINE_string("predictions", None, "JSONL: id (unique_id / idx) and output per line.")
  flags.DEFINE_string("json_out", None, "Output JSON file (written atomically).")
  flags.DEFINE_float("timeout_s", 5.0, "Grading time limit per answer; slower answers are wrong.")
  flags.DEFINE_integer("workers", None, "math-verify processes run at once (default: half "
                       "the CPU cores, at most 8).", lower_bound=1)
  flags.DEFINE_bool("progress", True, "Show a tqdm progress bar on long files.")
  for name in ("dataset", "predictions", "json_out"):
    flags.mark_flag_as_required(name)


def main(argv):
  del argv
  try:
    task = get_task(FLAGS.dataset, data_path=FLAGS.data_path, grade_timeout_s=FLAGS.timeout_s,
                    grade_workers=FLAGS.workers)
    rows = read_predictions(FLAGS.predictions, FLAGS.dataset)
    try:
      result = grade_predictions(task, rows, progress=FLAGS.progress)
    finally:
      getattr(task, "close", lambda: None)()
  except (ValueError, FileNotFoundError) as e:
    raise app.UsageError(str(e)) from None
  result["predictions"] = os.path.abspath(FLAGS.predictions)
  out_dir = os.path.dirname(os.path.abspath(FLAGS.json_out))
  os.makedirs(out_dir, exist_ok=True)
  write_json(FLAGS.json_out, result)
  print(f"{result['dataset']}: accuracy {result['accuracy']:.4f} over {result['n']} answers "
        f"({result['timed_out']} timed out); wrote {FLAGS.json_out}")


if __name__ == "__main__":
  define_flags()
  app.run(main)
