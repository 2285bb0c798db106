"""The revision scripts on a benchmark (--dataset=gsm8k): train_revision from a
policy run trained on it and from the same weights as a Hugging Face folder,
probe_revision and train_revision_verifier on the revision model."""

import json
import os
import shutil
import sys

import pytest

from tests import tiny_gsm8k
from tests.tiny_gsm8k import train_policy_job
from ttc_jax.checkpoints import load_policy, load_run_task
from ttc_jax.tasks import Gsm8kTask

pytestmark = pytest.mark.slow

REVISION = ["--num_train_questions=16", "--samples=8", "--temperature=1.0",
            "--max_new_tokens=24", "--row_len=160", "--buckets=160", "--held_out_fraction=0.25",
            "--batch_size=8", "--steps=4", "--eval_every=2", "--log_every=2", "--patience=0",
            "--progress=false"]
PROBE = ["--questions=4", "--parallel=2", "--length=2", "--max_attempt_tokens=24"]
VERIFIER = ["--questions=8", "--parallel=2", "--length=2", "--max_attempt_tokens=24",
            "--held_out_fraction=0.25", "--batch_size=8", "--steps=2", "--eval_every=2",
            "--log_every=1", "--progress=false"]


def _child(base: str, policy: str, train: str, test: str) -> None:
  """Runs in a subprocess (one JAX start-up for the four commands, their flags parsed
  as on the command line): writes base/result.json."""
  from absl import flags
  from experiments import probe_revision
  from experiments import train_revision as tr
  from experiments import train_revision_verifier as trv
  from ttc_jax import hf
  data = tiny_gsm8k.dataset_flags(train, test)
  out = {name: os.path.join(base, name) for name in ("revision", "hf", "revision_hf", "verifier")}

  def cli(module, argv):
    fv = module._define_flags(flags.FlagValues())
    fv(["prog"] + argv + data)
    module.main([], fv)

  cli(tr, [f"--policy={policy}", f"--out_dir={out['revision']}"] + REVISION)

  probe_out = os.path.join(base, "probe.json")
  probe_revision.define_flags()
  flags.FLAGS(["probe_revision", f"--model={out['revision']}", f"--json_out={probe_out}"]
              + PROBE + data)
  probe_revision.main([])

  # The policy's weights as a Hugging Face folder, its tokenizer beside them.
  cfg, params, _ = load_policy(policy)
  hf.save_checkpoint(out["hf"], cfg, params)
  shutil.copy(os.path.join(policy, "tokenizer.model"), out["hf"])
  cli(tr, [f"--policy_hf={out['hf']}", f"--out_dir={out['revision_hf']}"] + REVISION)

  cli(trv, [f"--revision_model={out['revision']}", f"--out_dir={out['verifier']}"] + VERIFIER)

  def read(*path):
    with open(os.path.join(*path)) as f:
      return json.load(f)
  with open(os.path.join(out["revision"], tr.EXAMPLES_FILE)) as f:
    examples = [json.loads(line) for line in f]
  result = dict(out=out, examples=examples, probe=read(probe_out),
                revision=read(out["revision"], tr.RESULT_FILE),
                revision_hf=read(out["revision_hf"], tr.RESULT_FILE),
                verifier=read(out["verifier"], trv.SUMMARY_FILE))
  with open(os.path.join(base, "result.json"), "w") as f:
    json.dump(result, f)


def _revision_job(job):
  """Background job: the shared gsm8k policy, then `_child` -> (policy, result)."""
  policy = train_policy_job(job)
  job.run([sys.executable, "-c", "from tests.revision.test_revision_on_gsm8k import _child; "
           f"_child({str(job.dir)!r}, {policy['run']!r}, {policy['train']!r}, "
           f"{policy['test']!r})"], timeout=400)
  return policy, json.loads((job.dir / "result.json").read_text())


@pytest.fixture(scope="module")
def done(background):
  return background.result(_revision_job)


@pytest.mark.background("_revision_job")
def test_train_revision_grades_samples_with_the_benchmark(done):
  policy, r = done
  summary = r["revision"]
  assert summary["finished"] and summary["dataset"]["dataset"] == "gsm8k"
  stats = summary["data"]
  assert stats["questions"] == 16 and stats["samples"] == 16 * 8
  assert stats["correct_samples"] > 0 and stats["incorrect_samples"] > 0
  assert stats["rows_dropped_too_long"] == 0 and summary["train_rows"] > 0

  # Targets are samples the benchmark's grader passed, attempts ones it failed.
  task = load_run_task(policy["run"])
  problems = task.train_problems(2, 16)  # --problem_seed's default stream
  assert len(r["examples"]) == stats["examples"] > 0
  assert any(e["attempts"] for e in r["examples"])
  for e in r["examples"]:
    problem = problems[e["question"]]
    assert e["uid"] == problem.uid and task.grade(problem, e["target"])
    assert not any(task.grade(problem, a) for a in e["attempts"])

  # The revision model is a policy on the same task.
  rev_task = load_run_task(r["out"]["revision"])
  assert isinstance(rev_task, Gsm8kTask) and rev_task.num_shots == tiny_gsm8k.NUM_SHOTS
  cfg, _, _ = load_policy(r["out"]["revision"])
  assert cfg == load_policy(policy["run"])[0]


@pytest.mark.background("_revision_job")
def test_train_revision_fine_tunes_a_hugging_face_folder(done):
  policy, r = done
  native, from_hf = r["revision"], r["revision_hf"]
  assert from_hf["finished"] and from_hf["policy"] == r["out"]["hf"]
  # The same weights and tokenizer: the same samples, examples and rows.
  assert from_hf["data"] == native["data"]
  assert from_hf["train_rows"] == native["train_rows"]
  cfg, _, tok = load_policy(r["out"]["revision_hf"])
  pcfg, _, ptok = load_policy(policy["run"])
  assert cfg == pcfg and tok == ptok
  assert load_run_task(r["out"]["revision_hf"]).name == "gsm8k"


@pytest.mark.background("_revision_job")
def test_probe_revision_grades_chains_on_the_benchmark(done):
  probe = done[1]["probe"]
  assert probe["dataset"]["dataset"] == "gsm8k" and probe["questions"] == 4
  assert len(probe["pass_at_step"]) == 2
  assert all(0.0 <= x <= 1.0 for x in probe["pass_at_step"])
  assert 0.0 <= probe["coverage"] <= 1.0


@pytest.mark.background("_revision_job")
def test_the_revision_verifier_trains_on_benchmark_attempts(done):
  summary = done[1]["verifier"]
  assert summary["finished"] and summary["dataset"]["dataset"] == "gsm8k"
  data = summary["data"]
  assert data["attempts"] == 8 * 2 * 2 == summary["rows"] + data["rows_dropped_too_long"]
  assert 0.0 <= data["correct_fraction"] <= 1.0
