"""train_policy --dataset=gsm8k: a policy trained on a benchmark's training
problems records its task, and evaluate_policy takes the same --dataset flags."""

import dataclasses
import json
import os
import shutil
import sys
import warnings

import pytest

from tests import tiny_gsm8k
from tests.conftest import REPO
from tests.tiny_gsm8k import train_policy_job
from ttc_jax.checkpoints import load_policy, load_run_task, read_sidecar
from ttc_jax.tasks import Gsm8kTask
from ttc_jax.tasks.spec import DatasetSpec
from ttc_jax.tokenizer import build_task_tokenizer, train_tokenizer
from ttc_jax.train import get_preset
from ttc_jax.train.data import DataConfig, build_rows, encode_example

EVAL_QUESTIONS = 8


def _evaluate(job):
  """Background job: evaluate_policy on the shared gsm8k policy -> (policy, eval.json, stdout)."""
  policy = train_policy_job(job)
  out = job.dir / "eval.json"
  done = job.run([sys.executable, "-m", "experiments.evaluate_policy",
                  f"--checkpoint={policy['run']}", f"--num_questions={EVAL_QUESTIONS}",
                  "--samples=4", "--max_new_tokens=24", f"--json_out={out}",
                  "--dataset=gsm8k", f"--data_path={policy['test']}",
                  f"--num_shots={tiny_gsm8k.NUM_SHOTS}"], timeout=300)
  return policy, json.loads(out.read_text()), done.stdout


def _rerun(job):
  """Background job: a copy of the shared policy's run, restarted with the same
  command, its files named by relative paths -> (the copy, rerun's stdout)."""
  policy = train_policy_job(job)
  run = str(job.dir / "policy")
  shutil.copytree(policy["run"], run)
  data_dir = os.path.dirname(policy["test"])
  cmd = tiny_gsm8k.train_policy_command(run, os.path.join("data", tiny_gsm8k.TRAIN_FILE),
                                        os.path.join("data", tiny_gsm8k.TEST_FILE))
  # From the repository root the relative paths name nothing: run from beside the data.
  env = dict(job.env, PYTHONPATH=os.pathsep.join(filter(None, [REPO,
                                                               job.env.get("PYTHONPATH")])))
  return run, job.run(cmd, timeout=300, cwd=os.path.dirname(data_dir), env=env).stdout


@pytest.mark.slow
@pytest.mark.background("train_policy_job")
def test_the_run_records_the_benchmark_and_rebuilds_it(background):
  trained = background.result(train_policy_job)
  sidecar = read_sidecar(trained["run"])
  assert sidecar["task"] == "gsm8k"
  data = DataConfig.from_dict(sidecar["data"])
  assert dict(data.task_options) == {"data_path": trained["test"],
                                     "shots_path": trained["train"],
                                     "num_shots": tiny_gsm8k.NUM_SHOTS, "chat": False}
  assert (data.n_train_problems, data.n_eval_problems) == (tiny_gsm8k.NUM_TRAIN,
                                                           tiny_gsm8k.NUM_EVAL)
  assert data.row_len == tiny_gsm8k.ROW_LEN and data.buckets == (tiny_gsm8k.ROW_LEN,)
  assert "dropped" not in trained["stderr"]  # every row fits row_len

  task = load_run_task(trained["run"])
  assert isinstance(task, Gsm8kTask) and task.num_shots == tiny_gsm8k.NUM_SHOTS
  assert str(task.data_path) == trained["test"] and str(task.shots_path) == trained["train"]
  with pytest.raises(ValueError, match="trained on 'gsm8k'.*--dataset=gsm8k"):
    DatasetSpec(dataset="arithmetic").load(trained["run"])
  # Its own prompts load quietly; other shots are prompts it never saw, and are said.
  same = DatasetSpec(dataset="gsm8k", data_path=trained["test"], shots_path=trained["train"],
                     num_shots=tiny_gsm8k.NUM_SHOTS)
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    same.load(trained["run"])
  with pytest.warns(UserWarning, match="num_shots=0.*num_shots=2"):
    dataclasses.replace(same, num_shots=2).load(trained["run"])

  # Its tokenizer reads the benchmark's text: word pieces, newline a token of its own,
  # every training character known.
  _, _, tok = load_policy(trained["run"])
  assert data.tokenizer_vocab_size >= tok.vocab_size > 48
  problem = task.train_problems(0, 1)[0]
  text = task.prompt(problem) + problem.solution
  ids = tok.encode(text)
  assert tok.decode(ids) == text and tok.unk_id not in ids and len(ids) < len(text) // 2
  assert tok.encode("\n") == [tok.newline_id] and ids.count(tok.newline_id) == text.count("\n")

  # It learned: the held-out eval loss fell.
  with open(os.path.join(trained["run"], "metrics.jsonl")) as f:
    evals = [r["eval_loss"] for r in map(json.loads, f) if r["kind"] == "eval"]
  assert len(evals) >= 2 and evals[-1] < evals[0]


@pytest.mark.slow
@pytest.mark.background("_evaluate")
def test_evaluate_policy_takes_the_dataset_flags(background):
  policy, result, stdout = background.result(_evaluate)
  assert result["checkpoint"] == policy["run"] and result["task"] == "gsm8k"
  assert result["num_questions"] == EVAL_QUESTIONS and result["samples"] == 4
  assert 0.0 <= result["greedy_accuracy"] <= 1.0 and 0.0 <= result["pass_at_1"] <= 1.0
  assert sum(result["pass_rate_histogram"].values()) == EVAL_QUESTIONS
  assert "greedy accuracy" in stdout


@pytest.mark.slow
@pytest.mark.background("_rerun")
def test_a_finished_run_restarted_resumes_instead_of_retraining(background):
  run, stdout = background.result(_rerun)
  assert f"resumed from step {tiny_gsm8k.POLICY_STEPS}" in stdout
  assert f"to step {tiny_gsm8k.POLICY_STEPS}/{tiny_gsm8k.POLICY_STEPS}" in stdout
  with open(os.path.join(run, "metrics.jsonl")) as f:
    assert sum(json.loads(line)["kind"] == "summary" for line in f) == 1


def test_a_benchmark_without_its_training_file_is_refused(tmp_path):
  _, test = tiny_gsm8k.write(tmp_path / "data")
  done = tiny_gsm8k.run_script("experiments.train_policy", [
      "--preset=smoke", f"--out_dir={tmp_path / 'run'}", "--dataset=gsm8k",
      f"--data_path={test}"], timeout=120)
  assert done.returncode != 0
  assert "--shots_path" in done.stderr and "Traceback" not in done.stderr
  assert not os.path.exists(tmp_path / "run")  # refused before anything was written


def test_a_vocabulary_too_small_for_the_text_is_a_clear_error():
  with pytest.raises(ValueError, match="tokenizer_vocab_size"):
    train_tokenizer(["What is 3 plus 4?\nThe answer is 7.\n"] * 4, vocab_size=12)


def test_long_tokenizer_samples_are_read_not_skipped():
  # Sentencepiece skips samples over 4192 bytes by default (long few-shot prompts);
  # "Q" appears only in the long ones.
  long = [f"Problem {i}: " + "x y " * 1100 + "Q\n" for i in range(4)]
  tok = train_tokenizer(long + ["short\n"] * 4, vocab_size=64)
  assert tok.unk_id not in tok.encode("Q")


def test_benchmark_rows_longer_than_row_len_are_dropped_and_counted(tmp_path):
  train, test = tiny_gsm8k.write(tmp_path)
  spec = DatasetSpec(dataset="gsm8k", data_path=test, shots_path=train, num_shots=0)
  task = spec.load()
  tok = build_task_tokenizer(task, vocab_size=tiny_gsm8k.VOCAB_SIZE, n_samples=100)
  lengths = [len(encode_example(tok, task.prompt(p), p.solution)[0])
             for p in task.train_problems(0, 40)]
  row_len = max(lengths) - 1  # two-digit answers take more tokens than one-digit ones
  data = DataConfig(n_train_problems=32, n_eval_problems=8, row_len=row_len,
                    buckets=(row_len,)).with_dataset(spec, task)
  train_rows, eval_rows = build_rows(data, tok)
  too_long = sum(n > row_len for n in lengths)
  assert 0 < too_long < len(lengths)
  assert train_rows.n_dropped + eval_rows.n_dropped == too_long
  assert len(train_rows) + len(eval_rows) == len(lengths) - too_long
  with pytest.raises(ValueError, match="row_len"):
    build_rows(dataclasses.replace(data, row_len=8, buckets=(8,)), tok)


def test_a_new_row_len_stretches_the_preset_buckets():
  small = get_preset("small")
  assert small.with_data(row_len=None, n_train_problems=None) == small  # no override: as is
  assert small.data.buckets == (32, 48, 64, 80, 96, 128)
  assert small.with_data(row_len=512).data.buckets == (128, 192, 256, 320, 384, 512)
  assert get_preset("smoke").with_data(row_len=80).data.buckets == (80,)  # one compile
  assert small.with_data(row_len=200, buckets=(100, 200)).data.buckets == (100, 200)
