"""experiments/train_revision.py: the checkpoint rule, and end to end on a smoke
policy (data cache, interrupted + resumed fine-tuning, the chosen model loads
as a policy, a finished rerun redoes nothing)."""

from __future__ import annotations

import dataclasses
import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl import flags

from experiments import train_revision as tr
from ttc_jax import checkpoints as ckpt_lib
from ttc_jax.revision import data as rdata
from ttc_jax.sharding import make_mesh
from ttc_jax.train import get_preset, loop, train

# An easy task (one + or - of one-digit numbers) on which a 400-step smoke
# policy writes both correct and incorrect answers (sampled pass rate ~0.5).
EASY = (("max_ops", 1), ("digit_weights", (1.0,)), ("ops", "+-"))
POLICY_STEPS = 400
DCFG = tr.RevisionDataConfig(num_questions=12, problem_seed=2, samples=8, temperature=1.0,
                             max_new_tokens=24, row_len=128, held_out_fraction=0.25, seed=0)
TCFG = tr.RevisionTrainConfig(lr=1e-3, batch_size=8, steps=6, eval_every=2, log_every=2,
                              patience=0, buckets=(128,))


def _mesh():
  return make_mesh(data=1, model=1, devices=jax.devices()[:1])


# ---------------------------------------------------------------- the rule (pure)

@pytest.mark.parametrize("losses, chosen, minimum", [
    ([3.0, 2.0, 1.0, 1.5, 1.8], 6, 4),  # minimum at 4: the next evaluation
    ([3.0, 2.0, 1.0, 0.5], 6, 6),  # never rose: the minimum (the last one)
    ([1.0, 2.0, 3.0], 2, 0),  # the policy itself is best: still one step past it
    ([3.0, 1.0, 1.0, 2.0], 4, 2),  # ties: the first minimum
    ([3.0, math.inf, 1.0], 4, 4),  # a NaN / missing loss never wins
])
def test_choose_step(losses, chosen, minimum):
  curve = [(2 * i, loss) for i, loss in enumerate(losses)]
  assert tr.choose_step(curve) == (chosen, minimum)
  assert tr.evals_past_minimum(curve) == len(losses) - 1 - losses.index(min(losses))


def test_choose_step_needs_an_evaluation_past_step_0():
  with pytest.raises(ValueError):
    tr.choose_step([(0, 1.0)])


def test_eval_curve_reading_and_the_stop_rule(tmp_path):
  path = tmp_path / "metrics.jsonl"
  lines = [{"kind": "eval", "step": 0, "eval_loss": 2.0}, {"kind": "train", "step": 2},
           {"kind": "eval", "step": 2, "eval_loss": 1.0}, {"kind": "eval", "step": 4,
                                                           "eval_loss": None},
           {"kind": "eval", "step": 6, "eval_loss": 1.5}]
  path.write_text("".join(json.dumps(l) + "\n" for l in lines) + '{"kind": "ev')  # torn
  curve = tr.read_eval_curve(str(path))
  assert curve == [(0, 2.0), (2, 1.0), (4, math.inf), (6, 1.5)]
  assert tr.read_eval_curve(str(path), max_step=4)[-1][0] == 4
  assert tr.evals_past_minimum(curve) == 2
  assert tr.read_eval_curve(str(tmp_path / "missing.jsonl")) == []


def test_flags_build_the_configs():
  fv = tr._define_flags(flags.FlagValues())
  fv(["train_revision", "--policy=p", "--out_dir=o", "--samples=3", "--lr=0.01",
      "--buckets=64,128", "--row_len=128", "--patience=0"])
  dcfg, tcfg = tr.configs_from_flags(fv)
  assert dcfg.samples == 3 and dcfg.row_len == 128 and dcfg.max_new_tokens == 112
  assert tcfg.lr == 0.01 and tcfg.buckets == (64, 128) and tcfg.patience == 0
  assert tcfg.batch_size == 128  # the paper's
  assert tr.default_buckets(512) == (128, 256, 384, 512)


# ---------------------------------------------------------------- end to end

@pytest.fixture(scope="module")
def policy(tmp_path_factory):
  out = tmp_path_factory.mktemp("easy_smoke_policy")
  smoke = get_preset("smoke")
  preset = dataclasses.replace(
      smoke, data=dataclasses.replace(smoke.data, task_options=EASY)).with_train(
          steps=POLICY_STEPS, eval_every=0, ckpt_every=0, log_every=POLICY_STEPS)
  train(preset, str(out), mesh=_mesh(), progress=False, measure_peak=False, log=None)
  return str(out)


def _run(policy, out, **kw):
  kw.setdefault("dcfg", DCFG)
  kw.setdefault("tcfg", TCFG)
  return tr.run(policy, str(out), data_batch_size=32, progress=False, mesh=_mesh(), log=None,
                **kw)


def _held_out_loss(cfg, params, rows) -> float:
  total, count = jax.jit(lambda p, t, m: loop.loss_sums(cfg, p, t, m))(
      params, jnp.asarray(rows.tokens), jnp.asarray(rows.mask))
  return float(total) / float(count)


@pytest.mark.slow
def test_end_to_end_interrupted_resumed_and_skipped(policy, tmp_path, monkeypatch):
  out = tmp_path / "revision"
  first = _run(policy, out, stop_at_step=2)
  assert not first["finished"] and first["chosen_step"] is None
  assert [p["step"] for p in first["eval_curve"]] == [0, 2]
  stats = first["data"]
  assert stats["questions"] == 12 and stats["samples"] == 96
  assert stats["examples"] == stats["train_examples"] + stats["held_out_examples"] > 0
  assert stats["held_out_questions"] == 3 and stats["train_questions"] == 9
  assert sum(stats["k_histogram"].values()) == stats["examples"]
  assert 0 <= stats["mean_k"] <= rdata.MAX_ATTEMPTS
  for name in (tr.DATA_FILE, tr.DATA_REPORT_FILE, tr.EXAMPLES_FILE):
    assert os.path.exists(out / name), name
  records = [json.loads(l) for l in open(out / tr.EXAMPLES_FILE)]
  assert len(records) == stats["examples"]
  assert all(len(r["attempts"]) <= 4 for r in records)
  held = {r["uid"] for r in records if r["split"] == "held_out"}
  assert held and not held & {r["uid"] for r in records if r["split"] == "train"}

  # The rerun reuses the data (no sampling) and resumes training at step 2.
  def no_sampling(*a, **kw):
    raise AssertionError("the revision data was rebuilt instead of reused")
  monkeypatch.setattr(rdata, "sample_revision_examples", no_sampling)
  done = _run(policy, out)
  assert done["finished"] and done["dataset_cached"] and done["data"] == stats
  assert done["steps_trained"] == done["total_steps"] == 6 and not done["stopped_early"]
  curve = [(p["step"], p["eval_loss"]) for p in done["eval_curve"]]
  assert [s for s, _ in curve] == [0, 2, 4, 6]
  losses = [l for _, l in curve]
  m = losses.index(min(losses))
  assert done["min_step"] == curve[m][0]
  assert done["chosen_step"] == curve[min(m + 1, len(curve) - 1)][0] != 0
  assert json.load(open(out / tr.RESULT_FILE)) == done

  # Training started from the policy: the step-0 eval is the policy's own
  # held-out loss on the revision rows.
  pcfg, pparams, ptok = ckpt_lib.load_policy(policy)
  _, held_rows = tr.load_rows(str(out / tr.DATA_FILE))
  assert done["base_eval_loss"] == pytest.approx(_held_out_loss(pcfg, pparams, held_rows),
                                                 rel=1e-4)

  # out_dir is a policy: the chosen step's params, the policy's tokenizer and task.
  cfg, params, tok = ckpt_lib.load_policy(str(out))
  assert cfg == pcfg and tok.vocab_size == ptok.vocab_size
  assert ckpt_lib.tokenizer_record(tok)["sha256"] == ckpt_lib.tokenizer_record(ptok)["sha256"]
  with ckpt_lib.Checkpointer(str(out), read_only=True) as ckpt:
    assert ckpt.steps() == [done["chosen_step"]]
    assert ckpt.read_meta(done["chosen_step"])["revision"]["chosen_step"] == done["chosen_step"]
  _, at_chosen, _ = ckpt_lib.load_policy(str(out / tr.TRAIN_SUBDIR), step=done["chosen_step"])
  for a, b in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(at_chosen)):
    assert np.array_equal(np.asarray(a), np.asarray(b))
  assert not all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(
      jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(pparams)))
  assert ckpt_lib.load_run_task(str(out)).config == ckpt_lib.load_run_task(policy).config
  assert done["chosen_eval_loss"] == pytest.approx(_held_out_loss(cfg, params, held_rows),
                                                   rel=1e-4)

  # A finished run redoes nothing.
  def nothing(*a, **kw):
    raise AssertionError("a finished run trained or saved again")
  monkeypatch.setattr(loop, "train", nothing)
  monkeypatch.setattr(tr, "save_chosen", nothing)
  assert _run(policy, out) == done

  # Other data settings on the same out_dir are refused, not mixed.
  with pytest.raises(ValueError, match="samples"):
    _run(policy, out, dcfg=dataclasses.replace(DCFG, samples=9))


@pytest.mark.slow
def test_loop_should_stop_ends_the_run_with_a_checkpoint(policy, tmp_path):
  """The loop's hooks the revision run relies on, on ready-made rows."""
  pcfg, pparams, ptok = ckpt_lib.load_policy(policy)
  task = ckpt_lib.load_run_task(policy)
  problems = task.train_problems(9, 4)
  examples = [rdata.RevisionExample(q, ("1+1=3\nanswer 3\n",) * q, p.solution, q)
              for q, p in enumerate(problems)]
  rows = rdata.tokenize_examples(task, ptok, problems, examples, row_len=128)
  preset = tr.revision_preset(pcfg, get_preset("smoke").data, DCFG,
                              dataclasses.replace(TCFG, batch_size=4, steps=8), len(rows), 1)
  seen = []
  result = train(preset, str(tmp_path), mesh=_mesh(), progress=False, measure_peak=False,
                 log=None, rows=(rows, rows), initial_params=pparams, tokenizer=ptok,
                 eval_at_start=True, should_stop=lambda s, l: seen.append(s) or s >= 4)
  assert seen == [2, 4] and result.step == 4 and result.total_steps == 8
  with ckpt_lib.Checkpointer(str(tmp_path), read_only=True) as ckpt:
    assert ckpt.steps() == [2, 4]
  curve = tr.read_eval_curve(str(tmp_path / "metrics.jsonl"))
  assert [s for s, _ in curve] == [0, 2, 4]
  assert curve[0][1] == pytest.approx(_held_out_loss(pcfg, pparams, rows), rel=1e-4)
