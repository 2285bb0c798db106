"""A tiny GSM8K-format dataset for tests, and one policy trained on it.

`write(directory)` writes train.jsonl and test.jsonl in GSM8K's format
(question, answer = a worked solution with a calculator annotation, then
"#### N", idx): "What is 3 plus 4?" / "3 + 4 = <<3+4=7>>7\\n#### 7", over
one-digit operands (plus, and minus with a non-negative result). The split is
fixed (no question in both files), so the files are the same on every call.
A smoke policy learns the training facts within a few hundred steps, so its
samples on training questions are a mix of right and wrong answers (what
revision data and Monte-Carlo labels need); test questions hold facts it
never saw.

`train_policy_job(job)`: a background job (tests/conftest.py) that writes the
data and trains that policy with `experiments.train_policy --dataset=gsm8k`,
once per session: other jobs call it to share the run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading

TRAIN_FILE = "train.jsonl"
TEST_FILE = "test.jsonl"
# Rows are ~65 tokens (0-shot prompt: instruction + question; solution): all fit.
ROW_LEN = 80
VOCAB_SIZE = 128
NUM_TRAIN, NUM_EVAL = 120, 16  # of the 136 training questions
# ~25 s on 2 cores, most of it start-up and compiling; sampled at temperature 1 on
# training questions it answers ~3/4 right, and some unseen test questions too.
POLICY_STEPS = 600
NUM_SHOTS = 0


def _problems() -> list[tuple[int, str, int, int]]:
  """(a, op, b, result) of every question, in a fixed order."""
  out = []
  for a in range(10):
    for b in range(10):
      out.append((a, "plus", b, a + b))
      if a >= b:
        out.append((a, "minus", b, a - b))
  return out


def _record(idx: int, a: int, op: str, b: int, result: int) -> dict:
  sign = "+" if op == "plus" else "-"
  return {"question": f"What is {a} {op} {b}?",
          "answer": f"{a} {sign} {b} = <<{a}{sign}{b}={result}>>{result}\n#### {result}",
          "idx": idx}


def write(directory: str | os.PathLike) -> tuple[str, str]:
  """Writes the train and test JSONL files into directory; returns their paths."""
  os.makedirs(directory, exist_ok=True)
  train, test = [], []
  for i, problem in enumerate(_problems()):
    # Every 8th question is a test question: both operations and all operands stay in
    # the training file.
    (test if i % 8 == 3 else train).append(_record(i, *problem))
  paths = []
  for name, records in ((TRAIN_FILE, train), (TEST_FILE, test)):
    path = os.path.join(os.fspath(directory), name)
    with open(path, "w", encoding="utf-8") as f:
      f.writelines(json.dumps(r) + "\n" for r in records)
    paths.append(path)
  return paths[0], paths[1]


def dataset_flags(train_path: str, test_path: str) -> list[str]:
  """--dataset and its files, as every script takes them."""
  return ["--dataset=gsm8k", f"--data_path={test_path}", f"--shots_path={train_path}",
          f"--num_shots={NUM_SHOTS}"]


_POLICY: dict = {}
_POLICY_LOCK = threading.Lock()


def train_policy_job(job) -> dict:
  """Background job: the data and a smoke policy trained on it: {"run", "train",
  "test" (paths), "stdout", "stderr" (of train_policy)}. Once per session: other
  jobs call it for the same run (jobs run one at a time, but a test may run a
  queued one itself)."""
  with _POLICY_LOCK:
    if not _POLICY:
      _POLICY.update(_train_policy(job))
    return dict(_POLICY)


def train_policy_command(run: str, train_path: str, test_path: str) -> list[str]:
  """The train_policy command line of the shared policy."""
  return [sys.executable, "-m", "experiments.train_policy", "--preset=smoke",
          f"--out_dir={run}", "--progress=false", f"--steps={POLICY_STEPS}",
          # One device: no cross-device collective to stall on a loaded machine.
          "--cpu_devices=1",
          "--eval_every=200", "--ckpt_every=200", "--log_every=100",
          f"--num_train_problems={NUM_TRAIN}", f"--num_eval_problems={NUM_EVAL}",
          f"--tokenizer_vocab_size={VOCAB_SIZE}", f"--row_len={ROW_LEN}"
          ] + dataset_flags(train_path, test_path)


def _train_policy(job) -> dict:
  train_path, test_path = write(job.dir / "data")
  run = str(job.dir / "policy")
  done = job.run(train_policy_command(run, train_path, test_path), timeout=300)
  return {"run": run, "train": train_path, "test": test_path, "stdout": done.stdout,
          "stderr": done.stderr}


def run_script(module: str, args: list[str], timeout: float = 300):
  """`python -m module args` from the repository root: the CompletedProcess
  (text output), whatever its exit status."""
  from tests.conftest import REPO
  return subprocess.run([sys.executable, "-m", module] + args, cwd=REPO, capture_output=True,
                        text=True, timeout=timeout, check=False)
