"""The revision verifier: in-context scoring equals one pass over context + attempt,
training rows carry the right context and labels, and the train -> compare ->
search path runs end to end on a smoke policy."""

import dataclasses
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.conftest import tiny_config
from ttc_jax.model import init_params
from ttc_jax.revision import verifier as rv
from ttc_jax.revision.chains import RevisionConfig, run_chains
from ttc_jax.verifier import VerifierConfig, init_verifier
from ttc_jax.verifier import model as vmodel

# As tests/revision/test_chains.py: a frequent token of the random model plays EOS.
EOS, PAD, STEP = 15, 0, 22
CFG = tiny_config()
PROMPTS = np.asarray([[1, 5, 6, 0, 0, 0], [1, 9, 9, 9, 9, 0], [1, 4, 0, 0, 0, 0]], np.int32)
LENGTHS = np.asarray([3, 5, 2], np.int32)
ATTEMPT, WIDTH = 6, 32  # reference rows: prompt + 2 attempts of 7 slots + an attempt < 32
# 2 chains of 4 attempts with a window of 2: step 3 drops step 0 from its context.
RCFG = RevisionConfig(n=8, parallel=2, max_attempt_tokens=ATTEMPT, window=2)


@pytest.fixture(scope="module")
def policy():
  return init_params(CFG, jax.random.key(0))


_reference_scores = jax.jit(vmodel.step_scores, static_argnames=("vcfg", "max_steps"))


def _content(tokens, num_new):
  return rv.attempt_content(np.asarray(tokens), int(num_new), EOS)


def _host_rows(tokens, num_new, with_context=True):
  """Per attempt (row r * L + t): the prompt (+ the last `window` previous
  attempts, each closed by EOS), then the attempt, right-padded to WIDTH."""
  r, length = num_new.shape
  rows, starts, ends, contexts = [], [], [], []
  for row in range(r):
    prompt = PROMPTS[row // RCFG.parallel, :LENGTHS[row // RCFG.parallel]].tolist()
    previous = []
    for t in range(length):
      context = list(prompt)
      for attempt in (previous[-RCFG.window:] if with_context else []):
        context += attempt + [EOS]
      ids = _content(tokens[row, t], num_new[row, t])
      rows.append(context + ids + [PAD] * (WIDTH - len(context) - len(ids)))
      starts.append(len(context))
      ends.append(len(context) + len(ids))
      contexts.append(context[len(prompt):])
      previous.append(ids)
  return (np.asarray(rows, np.int32), np.asarray(starts, np.int32), np.asarray(ends, np.int32),
          contexts)


def _reference(vcfg, vparams, tokens, num_new, with_context=True):
  rows, starts, ends, _ = _host_rows(tokens, num_new, with_context)
  return jax.device_get(_reference_scores(vcfg, vparams, jnp.asarray(rows), jnp.asarray(starts),
                                          jnp.asarray(ends), max_steps=ATTEMPT))


def test_scorer_equals_one_pass_over_context_then_attempt(policy):
  """Token head (its product must start at the attempt), the prompt shared,
  blocks of 2 attempts: every context width branch, the empty one included."""
  chains = run_chains(CFG, RCFG, policy, jnp.asarray(PROMPTS), jnp.asarray(LENGTHS),
                      jnp.asarray(3, jnp.uint32), jnp.arange(3, dtype=jnp.uint32), eos_id=EOS,
                      pad_id=PAD)
  host = jax.device_get(chains)
  assert host.context.max() > 8  # the widest context branch (16) is used, and 0 at step 0
  # The device contexts are the host ones: the last `window` attempts, closed by EOS.
  _, _, _, contexts = _host_rows(host.tokens, host.num_new)
  r, length = host.num_new.shape

  @jax.jit  # one compile, not one per eager op
  def contexts_on_device(tokens, num_new):
    slots, slot_lengths = rv.attempt_contexts(RCFG, tokens, num_new, eos_id=EOS, pad_id=PAD)
    rows = jnp.arange(r * length)
    return rv.window_of(slots, slot_lengths, rows // length, rows % length, RCFG.window, PAD)

  packed, total = jax.device_get(contexts_on_device(chains.tokens, chains.num_new))
  for i, want in enumerate(contexts):
    assert packed[i, :total[i]].tolist() == want
  np.testing.assert_array_equal(total, host.context.reshape(-1))

  vcfg = VerifierConfig(model=CFG, head="token", step_token_id=STEP)
  vparams = init_verifier(vcfg, jax.random.key(1), policy)
  scores, mask = jax.device_get(rv.run_score_in_context(
      vcfg, vparams, RCFG, jnp.asarray(PROMPTS), jnp.asarray(LENGTHS), chains, eos_id=EOS,
      pad_id=PAD, max_steps=ATTEMPT, group_rows=2))
  want, want_mask = _reference(vcfg, vparams, host.tokens, host.num_new)
  np.testing.assert_array_equal(mask, want_mask)
  assert mask[:, 0].mean() > 0.5  # most attempts have a step score
  np.testing.assert_allclose(scores, want, rtol=1e-5, atol=1e-6)
  # ... and the context matters: after the question alone the scores differ.
  alone, _ = _reference(vcfg, vparams, host.tokens, host.num_new, with_context=False)
  later = (np.arange(r * length) % length > 0)[:, None] & mask
  assert np.abs(alone - scores)[later].max() > 1e-3


def test_revise_in_context_scores_and_counts_the_context(policy):
  from ttc_jax.revision.api import revise
  vcfg = VerifierConfig(model=CFG, head="value", step_token_id=STEP)
  vparams = init_verifier(vcfg, jax.random.key(2), policy)
  prompts = [PROMPTS[i, :LENGTHS[i]].tolist() for i in range(3)]
  out = revise(CFG, policy, vcfg, vparams, prompts, RCFG, eos_id=EOS, pad_id=PAD, seed=5,
               prompt_width=8, max_steps=ATTEMPT, in_context=True)
  # columns c * L + t -> chain rows [R, L]
  tokens = out.tokens.reshape(3 * RCFG.parallel, RCFG.length, -1)
  num_new = out.lengths.reshape(3 * RCFG.parallel, RCFG.length)
  want, want_mask = _reference(vcfg, vparams, tokens, num_new)
  np.testing.assert_array_equal(out.step_mask.reshape(-1, ATTEMPT), want_mask)
  np.testing.assert_allclose(out.step_scores.reshape(-1, ATTEMPT), want, rtol=1e-5, atol=1e-6)
  _, starts, ends, _ = _host_rows(tokens, num_new)
  fed = (ends - LENGTHS.repeat(RCFG.n)).reshape(3, RCFG.n).sum(axis=1)  # context + attempt
  np.testing.assert_array_equal(out.budget.verifier_tokens, fed + LENGTHS)  # + the prompt, once


# ---------------------------------------------------------------- host rows


@pytest.fixture(scope="module")
def task_and_tokenizer():
  from ttc_jax.tasks import get_task
  from ttc_jax.tokenizer import build_task_tokenizer
  task = get_task("arithmetic")
  return task, build_task_tokenizer(task, vocab_size=44, n_samples=200)


def test_rows_hold_the_chain_context_and_outcome_labels(task_and_tokenizer):
  from ttc_jax.evaluation import prompt_ids
  from ttc_jax.train import verifier_train as vt
  task, tok = task_and_tokenizer
  problems = task.train_problems(3, 2)
  p = problems[1]
  texts = ["1+1=3\nanswer 3\n", p.solution, "1+1=2\nans", p.solution]
  ended = [True, True, False, True]  # the third was cut at the length limit: no EOS
  ids = [tok.encode(t) for t in texts]
  width = max(len(i) for i in ids) + 1
  tokens = np.full((1, 4, width), tok.pad_id, np.int32)
  num_new = np.zeros((1, 4), np.int32)
  for t, (a, e) in enumerate(zip(ids, ended)):
    row = a + [tok.eos_id] * e
    tokens[0, t, :len(row)] = row
    num_new[0, t] = len(row)
  attempts = rv.graded_attempts(task, tok, problems, [1], tokens, num_new, parallel=1, window=2)
  prompt, eos = prompt_ids(task, tok, p), [tok.eos_id]
  assert [a.context for a in attempts] == [
      prompt, prompt + ids[0] + eos, prompt + ids[0] + eos + ids[1] + eos,
      prompt + ids[1] + eos + ids[2] + eos]  # the window of 2 dropped the first attempt
  assert [a.correct for a in attempts] == [False, True, False, True]
  assert [a.ids for a in attempts] == ids and attempts[1].text == p.solution
  assert {(a.question, a.chain) for a in attempts} == {(1, 0)}
  assert [a.step for a in attempts] == [0, 1, 2, 3]

  rows = rv.attempt_rows(task, tok, problems, attempts, row_len=160)
  assert rows.n_dropped == 0 and rows.question_index.tolist() == [1] * 4
  assert rows.final_correct.tolist() == [False, True, False, True]
  vcfg = VerifierConfig(model=tiny_config(vocab_size=tok.vocab_size), head="value",
                        step_token_id=tok.newline_id)
  targets, orm_mask, _ = vt.loss_targets(rows, vcfg, vt.VerifierTrainConfig(objective="orm"))
  for i, a in enumerate(attempts):
    start = len(a.context)
    assert rows.prompt_lengths[i] == start and rows.lengths[i] == start + len(a.ids)
    assert rows.tokens[i, :rows.lengths[i]].tolist() == a.context + a.ids
    # steps only in the attempt, though the context has newlines too
    assert not rows.step_mask[i, :start].any()
    ends = np.flatnonzero(rows.step_mask[i]) - start
    newlines = [j for j, x in enumerate(a.ids) if x == tok.newline_id]
    assert ends.tolist() == (newlines if a.ids[-1] == tok.newline_id
                             else newlines + [len(a.ids) - 1])
    assert (rows.step_targets[i][rows.step_mask[i]] == a.correct).all()
    # ORM: one label, on the attempt's last step, its correctness
    assert np.flatnonzero(orm_mask[i]).tolist() == [start + ends[-1]]
    assert targets[i, start + ends[-1]] == a.correct
  assert rows.step_exact[1][rows.step_mask[1]].tolist() == [1.0] * len(task.split_steps(p.solution))
  assert rows.step_exact[0][rows.step_mask[0]].tolist() == [0.0, 0.0]

  bare = rv.strip_context(rows, np.full(4, len(prompt)), tok.pad_id)
  for i, a in enumerate(attempts):
    n = len(prompt) + len(a.ids)
    assert bare.prompt_lengths[i] == len(prompt) and bare.lengths[i] == n
    assert bare.tokens[i, :n].tolist() == prompt + a.ids
    assert (bare.tokens[i, n:] == tok.pad_id).all()
    np.testing.assert_array_equal(np.flatnonzero(bare.step_mask[i]) - len(prompt),
                                  np.flatnonzero(rows.step_mask[i]) - rows.prompt_lengths[i])
  assert bare.final_correct.tolist() == rows.final_correct.tolist()

  short = rv.attempt_rows(task, tok, problems, attempts, row_len=int(rows.lengths[1]))
  assert short.n_dropped == 2 and len(short) == 2  # the two with two attempts of context
  stats = rv.attempt_stats(attempts)
  assert stats["correct_fraction_by_step"] == [0.0, 1.0, 0.0, 1.0]
  assert stats["questions_with_both_classes"] == 1


def test_run_search_pins_the_revision_verifier_only_when_given():
  from experiments import run_search
  plain = run_search.Options(policy="p", out_dir="o").settings()
  assert "revision_verifier" not in plain  # out dirs made before the flag stay valid
  given = run_search.Options(policy="p", out_dir="o", revision_verifier="rv").settings()
  assert given["revision_verifier"] == os.path.abspath("rv")
  assert {k: v for k, v in given.items() if k != "revision_verifier"} == plain


# ---------------------------------------------------------------- end to end

# An easy task (one sum of two digits): a 300-step smoke policy gets about half
# of its samples right, so held-out questions have right and wrong attempts.
EASY = (("max_ops", 1), ("digit_weights", (1.0,)), ("ops", "+"))
POLICY_STEPS = 300
CLI = ["--questions=12", "--parallel=2", "--length=3", "--max_attempt_tokens=24",
       "--held_out_fraction=0.25", "--batch_size=8", "--lr=1e-3", "--steps=4",
       "--eval_every=2", "--log_every=1", "--progress=false"]


def _e2e_child(base: str) -> None:
  """Runs in a subprocess: policy -> train_revision_verifier (interrupted, then
  resumed with --prm) -> run_search with --revision_verifier; writes result.json."""
  from absl import flags
  from experiments import run_search
  from experiments import train_revision_verifier as trv
  from ttc_jax.train import get_preset, train
  policy, out, search = (os.path.join(base, n) for n in ("policy", "rv", "search"))
  smoke = get_preset("smoke")
  preset = dataclasses.replace(smoke, data=dataclasses.replace(
      smoke.data, task_options=EASY)).with_train(steps=POLICY_STEPS, eval_every=0,
                                                 ckpt_every=0, log_every=POLICY_STEPS)
  t0 = time.perf_counter()
  train(preset, policy, progress=False, measure_peak=False, log=None)
  seconds = {"policy": time.perf_counter() - t0}

  def cli(extra):
    fv = trv._define_flags(flags.FlagValues())
    fv(["train_revision_verifier", f"--revision_model={policy}", f"--out_dir={out}"] + CLI
       + extra)
    trv.main([], fv)
    with open(os.path.join(out, trv.SUMMARY_FILE)) as f:
      return json.load(f)

  t0 = time.perf_counter()
  first = cli(["--stop_at_step=2"])
  seconds["first"] = time.perf_counter() - t0
  done = cli([f"--prm={out}"])  # the run compared with itself: in context it must agree
  seconds["resumed"] = time.perf_counter() - t0 - seconds["first"]
  t0 = time.perf_counter()
  with open(os.path.join(out, "verifier.json")) as f:
    sidecar = json.load(f)
  run_search.run(run_search.Options(
      policy=policy, out_dir=search, methods=("revisions",), ns=(2,), ratios=("seq",),
      revision_model=policy, revision_verifier=out, split="train", num_questions=2,
      max_solution_tokens=24),
      print_fn=lambda s: None, progress=False)
  seconds["search"] = time.perf_counter() - t0
  with open(os.path.join(search, run_search.RESULTS_FILE)) as f:
    lines = [json.loads(l) for l in f]
  with open(os.path.join(search, run_search.SETTINGS_FILE)) as f:
    settings = json.load(f)
  with open(os.path.join(base, "result.json"), "w") as f:
    json.dump(dict(first=first, done=done, sidecar=sidecar, lines=lines, settings=settings,
                   out=out, seconds=seconds), f)


def _end_to_end(job):
  job.run([sys.executable, "-c", "from tests.revision.test_revision_verifier import _e2e_child; "
           f"_e2e_child({str(job.dir)!r})"], timeout=600)
  return json.loads((job.dir / "result.json").read_text())


@pytest.mark.slow
@pytest.mark.background("_end_to_end")
def test_train_resume_and_compare_with_the_prm(background):
  r = background.result(_end_to_end)
  first, done = r["first"], r["done"]
  assert not first["finished"] and first["step"] == 2 and not first["dataset_cached"]
  assert "comparison" not in first
  data = first["data"]
  assert data["attempts"] == 12 * 2 * 3 == first["rows"] + data["rows_dropped_too_long"]
  assert len(data["correct_fraction_by_step"]) == 3
  assert done["dataset_cached"] and done["resumed_from"] == 2 and done["finished"]
  assert done["step"] == 4 and done["rows"] == first["rows"] and done["held_out_questions"] == 3
  assert done["revision_verifier"]["in_context"] and done["revision_verifier"]["window"] == 4
  assert r["sidecar"]["revision_verifier"]["in_context"]
  assert r["sidecar"]["train"]["objective"] == "orm"
  cmp = done["comparison"]
  assert set(cmp) == {"revision_verifier", "prm_as_is", "prm_in_context"}
  mine, as_is, same = cmp["revision_verifier"], cmp["prm_as_is"], cmp["prm_in_context"]
  assert mine["answer_pairs"] > 0  # held-out questions with right and wrong attempts
  assert mine["answer_pairs"] == as_is["answer_pairs"] == same["answer_pairs"]
  assert same["answer_auc"] == pytest.approx(mine["answer_auc"])
  assert same["loss"] == pytest.approx(mine["loss"], rel=1e-5)
  assert as_is["loss"] != pytest.approx(mine["loss"], rel=1e-4)  # without the context


@pytest.mark.slow
@pytest.mark.background("_end_to_end")
def test_run_search_scores_revisions_with_the_revision_verifier(background):
  r = background.result(_end_to_end)
  assert r["settings"]["revision_verifier"] == r["out"]
  assert len(r["lines"]) == 2
  for line in r["lines"]:
    assert line["revision"]["verifier"] == r["out"]
    assert line["config"]["method"] == "revisions" and len(line["answers"]) == 2
    assert all(0.0 <= s <= 1.0 for s in line["scores"]["last"])
