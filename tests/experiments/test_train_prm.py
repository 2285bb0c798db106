"""experiments/train_prm.py end to end on a smoke policy: data cache, checkpoints, resume."""

from __future__ import annotations

import json
import os

import pytest
from absl import flags

from experiments import train_prm
from ttc_jax import checkpoints as ckpt_lib
from ttc_jax.train import get_preset, train
from ttc_jax.train import verifier_train as vt
from ttc_jax.verifier.checkpoint import BEST_SUBDIR, load_verifier

pytestmark = pytest.mark.slow

# Enough steps for the smoke policy to write parsable "answer N" lines.
POLICY_STEPS = 200
COMMON = ["--head=token", "--label=both", "--num_train_questions=4", "--samples=2",
          "--rollouts=2", "--contrastive_copies=1", "--max_new_tokens=48", "--row_len=80",
          "--data_batch_size=8", "--held_out_fraction=0.25", "--batch_size=8", "--lr=1e-3",
          "--steps=4", "--eval_every=2", "--log_every=1", "--progress=false"]


@pytest.fixture(scope="module")
def policy(tmp_path_factory):
  out = tmp_path_factory.mktemp("smoke_policy")
  preset = get_preset("smoke").with_train(steps=POLICY_STEPS, eval_every=0, ckpt_every=0,
                                          log_every=POLICY_STEPS)
  train(preset, str(out), progress=False, measure_peak=False, log=None)
  return str(out)


def _main(argv):
  fv = train_prm._define_flags(flags.FlagValues())
  fv(["train_prm"] + argv)
  return train_prm.main([], fv)


def _summary(out):
  with open(os.path.join(out, train_prm.SUMMARY_FILE)) as f:
    return json.load(f)


def test_end_to_end_with_restart(policy, tmp_path, capsys, monkeypatch):
  out = str(tmp_path / "prm")
  args = COMMON + [f"--policy={policy}", f"--out_dir={out}"]
  assert _main(args + ["--stop_at_step=2"]) == 0  # interrupted after one evaluation
  first = _summary(out)
  assert not first["finished"] and first["step"] == 2 and not first["dataset_cached"]
  for name in (train_prm.DATA_FILE, train_prm.DATA_REPORT_FILE, vt.METRICS_FILE):
    assert os.path.exists(os.path.join(out, name)), name
  assert ckpt_lib.Checkpointer(out, read_only=True).steps() == [2]
  assert os.path.isdir(os.path.join(out, BEST_SUBDIR, ckpt_lib.CHECKPOINT_SUBDIR))
  printed = capsys.readouterr().out
  assert "data report" in printed and "mc_agreement" in printed

  # The restart must not label again: the cached dataset is reused.
  def no_labelling(*args, **kwargs):
    raise AssertionError("the dataset was rebuilt instead of reused")
  monkeypatch.setattr(train_prm, "make_verifier_dataset", no_labelling)
  assert _main(args + ["--eval_test_questions=4"]) == 0
  done = _summary(out)
  assert done["dataset_cached"] and done["resumed_from"] == 2 and done["finished"]
  assert done["step"] == 4 and done["rows"] == first["rows"]
  for key in ("loss", "answer_auc", "step_auc", "pooled_auc"):
    assert key in done["held_out"] and key in done["test"], key
  assert done["test"]["questions"] == 4 and done["test"]["rows"] == 8
  printed = capsys.readouterr().out
  line = next(l for l in printed.splitlines() if l.startswith("summary: "))
  assert json.loads(line[len("summary: "):]) == done
  assert "within-question AUC" in printed

  lines = [json.loads(l) for l in open(os.path.join(out, vt.METRICS_FILE))]
  assert [l["step"] for l in lines if l["kind"] == "eval"] == [0, 2, 4]
  assert [l["step"] for l in lines if l["kind"] == "train"] == [1, 2, 3, 4]
  vcfg, params, tok = load_verifier(out)
  assert vcfg.head == "token" and vcfg.step_token_id == tok.newline_id

  # Other data settings on the same out_dir are refused, not silently mixed.
  with pytest.raises(ValueError, match="samples"):
    _main([a for a in args if not a.startswith("--samples")] + ["--samples=3"])


def test_init_from_needs_the_same_tokenizer(policy, tmp_path, monkeypatch):
  from ttc_jax.tasks import get_task
  from ttc_jax.tokenizer import build_task_tokenizer
  real = ckpt_lib.load_policy
  other = build_task_tokenizer(get_task("arithmetic"), vocab_size=44, n_samples=100)

  def load(path, *a, **kw):  # "other": the same weights under another tokenizer
    if path == "other":
      cfg, params, _ = real(policy, *a, **kw)
      return cfg, params, other
    return real(path, *a, **kw)
  monkeypatch.setattr(ckpt_lib, "load_policy", load)
  with pytest.raises(ValueError, match="different tokenizer"):
    _main(COMMON + [f"--policy={policy}", "--init_from=other",
                    f"--out_dir={tmp_path}"])
