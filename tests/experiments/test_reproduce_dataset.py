"""experiments/reproduce.py on a benchmark: every stage receives the dataset and
its lengths. (The stages themselves are tested on the benchmark by their own
scripts' tests; a whole reproduction on one takes minutes, BUILD_NOTES.md.)"""

import dataclasses
import json
import os

import pytest

from experiments import reproduce
from tests import tiny_gsm8k
from ttc_jax.tasks.spec import DatasetSpec


@pytest.fixture
def preset(tmp_path):
  train, test = tiny_gsm8k.write(tmp_path / "data")
  spec = DatasetSpec(dataset="gsm8k", data_path=test, shots_path=train, num_shots=0)
  smoke = reproduce.get_preset("smoke")
  revisions = dataclasses.replace(smoke.revisions, fine_tune=True, num_questions=8, samples=2)
  return dataclasses.replace(smoke, row_len=80, max_solution_tokens=48, max_attempt_tokens=40,
                             revisions=revisions).on_dataset(spec)


def test_the_preset_records_the_benchmark(preset, tmp_path):
  assert preset.spec.dataset == "gsm8k" and preset.spec.num_shots == 0
  assert os.path.isabs(preset.spec.shots_path) and os.path.isabs(preset.spec.data_path)
  assert preset.prm.label == "mc" and preset.prm.contrastive_copies == 0  # no step checker
  assert reproduce.get_preset("smoke").spec.built_in
  out = str(tmp_path / "out")
  reproduce.check_preset(out, preset)
  with open(os.path.join(out, "preset.json")) as f:
    assert json.load(f)["dataset"] == preset.spec.record()
  reproduce.check_preset(out, preset)  # the same settings resume
  with pytest.raises(ValueError, match="dataset"):
    reproduce.check_preset(out, dataclasses.replace(preset, dataset=None))


class _Trained:
  step = total_steps = 1

  def summary(self):
    return {k: 0 for k in ("step", "total_steps", "train_loss", "eval_loss", "params",
                           "non_embedding_params", "tokens_per_s")}


def test_every_stage_gets_the_benchmark(preset, tmp_path, monkeypatch):
  import experiments.train_prm as train_prm
  import experiments.train_revision as train_revision
  import ttc_jax.train as train_lib
  seen = {}

  def fake_train(policy, out_dir, **kwargs):
    seen["policy"] = policy
    return _Trained()
  monkeypatch.setattr(train_lib, "train", fake_train)
  reproduce.train_stage("smoke", str(tmp_path / "small"), None, False, print, preset)
  data = seen["policy"].data
  assert data.task == "gsm8k" and data.row_len == 80
  assert dict(data.task_options)["shots_path"] == preset.spec.shots_path
  assert data.n_train_problems + data.n_eval_problems == tiny_gsm8k.NUM_TRAIN + \
      tiny_gsm8k.NUM_EVAL

  def fake_prm_run(policy, out_dir, **kwargs):
    seen["prm"] = kwargs
    return {"finished": True, "verifier_params": 0, "rows": 0, "step": 0, "best_step": 0,
            "held_out": {}}
  monkeypatch.setattr(train_prm, "run", fake_prm_run)
  monkeypatch.setattr(train_prm, "headline", lambda summary: "")
  reproduce.prm_stage(preset, str(tmp_path), False, print)
  assert seen["prm"]["spec"] == preset.spec
  dcfg = seen["prm"]["dcfg"]
  assert (dcfg.label, dcfg.contrastive_copies, dcfg.reference_chains) == ("mc", 0, True)
  assert (dcfg.row_len, dcfg.max_new_tokens) == (80, 48)

  def fake_revision_run(policy, out_dir, **kwargs):
    seen["revision"] = kwargs
    return {"finished": True, "chosen_step": 0, "min_step": 0, "steps_trained": 0,
            "chosen_eval_loss": 0.0, "base_eval_loss": 0.0, "train_rows": 0,
            "held_out_rows": 0, "data": {}, "rule": ""}
  monkeypatch.setattr(train_revision, "run", fake_revision_run)
  reproduce.revision_model_stage(preset, str(tmp_path), False, print)
  assert seen["revision"]["spec"] == preset.spec
  assert seen["revision"]["dcfg"].max_new_tokens == 48

  opts = reproduce.search_options(preset, str(tmp_path), "sweep")
  assert opts.spec == preset.spec
  assert (opts.max_solution_tokens, opts.max_attempt_tokens) == (48, 40)


def test_the_built_in_task_keeps_its_settings(tmp_path):
  smoke = reproduce.get_preset("smoke")
  opts = reproduce.search_options(smoke, str(tmp_path), "sweep")
  assert opts.spec.built_in and opts.max_solution_tokens == 112


def test_lookahead_runs_only_budgets_a_width_fits():
  # Budgets 1, 2 with M = 2 and k = 1: lookahead's only affordable N (1) fits no
  # width, so the sweep has no lookahead grid rather than one with no valid config.
  smoke = dataclasses.replace(reproduce.get_preset("smoke"), budgets=(1, 2))
  grids = reproduce.sweep_grids(smoke)
  assert not any("lookahead" in g["methods"] for g in grids)
  ns = [g["ns"] for g in reproduce.sweep_grids(reproduce.get_preset("smoke"))
        if g["methods"] == ("lookahead",)]
  assert ns == [(2,)]


def test_a_benchmark_run_is_named_even_after_its_files_moved(tmp_path):
  # The record says what the run trained on; building its task would need the files.
  from ttc_jax.checkpoints import SIDECAR_FILE
  from ttc_jax.train.data import DataConfig
  run = tmp_path / "run"
  run.mkdir()
  gone = str(tmp_path / "moved.jsonl")
  data = DataConfig(task="gsm8k", task_options=(("data_path", gone), ("num_shots", 0)))
  (run / SIDECAR_FILE).write_text(json.dumps({"data": data.to_dict()}))
  with pytest.raises(ValueError, match="trained on 'gsm8k'"):
    DatasetSpec().load(str(run))
  train, test = tiny_gsm8k.write(tmp_path / "data")
  with pytest.warns(UserWarning, match="num_shots=0.*num_shots=4"):
    task = DatasetSpec(dataset="gsm8k", data_path=test, shots_path=train).load(str(run))
  assert task.name == "gsm8k" and str(task.data_path) == test
