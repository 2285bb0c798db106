"""Verifier training: loss, targets, dropout, bit-exact resume, early stopping, loading."""

from __future__ import annotations

import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.conftest import tiny_config
from ttc_jax.model import abstract_params
from ttc_jax.tokenizer import PAD_ID, build_task_tokenizer
from ttc_jax.tasks import get_task
from ttc_jax.train import verifier_train as vt
from ttc_jax.verifier import VerifierConfig
from ttc_jax.verifier.checkpoint import load_verifier
from ttc_jax.verifier.data import SOURCE_CONTRASTIVE, SOURCE_SAMPLE, VerifierRows

STEP = 7
WIDTH = 24


@pytest.fixture(scope="module")
def tokenizer():
  return build_task_tokenizer(get_task("arithmetic"), n_samples=200)


def _cfg(tokenizer):
  return tiny_config(vocab_size=tokenizer.vocab_size, max_seq_len=64)


def synthetic_rows(n_questions: int, per_question: int, vocab: int, seed: int = 0,
                   flip: bool = False) -> VerifierRows:
  """Random rows: BOS + 3 prompt tokens + solution steps ended by STEP tokens.

  A step is good iff its first token is even (learnable from one position);
  the final answer is correct iff every step is good. flip: inverted labels.
  """
  rng = np.random.default_rng(seed)
  r = n_questions * per_question
  tokens = np.full((r, WIDTH), PAD_ID, np.int32)
  lengths = np.zeros(r, np.int32)
  step_targets = np.zeros((r, WIDTH), np.float32)
  step_mask = np.zeros((r, WIDTH), bool)
  token_targets = np.zeros((r, WIDTH), np.float32)
  token_mask = np.zeros((r, WIDTH), bool)
  final = np.zeros(r, bool)
  for i in range(r):
    row = [1] + rng.integers(8, vocab, 3).tolist()
    good_so_far, first_bad = True, None
    for _ in range(rng.integers(2, 5)):
      body = rng.integers(8, vocab, 3).tolist()
      good = body[0] % 2 == 0
      if not good and first_bad is None:
        first_bad = len(row)
      good_so_far &= good
      row += body + [STEP]
      step_mask[i, len(row) - 1] = True
      step_targets[i, len(row) - 1] = float(good_so_far != flip)
    n = len(row)
    tokens[i, :n] = row
    lengths[i] = n
    stop = n if first_bad is None else first_bad + 1
    token_mask[i, 4:stop] = True
    token_targets[i, 4:stop] = 1.0
    if first_bad is not None:
      token_targets[i, first_bad] = 0.0
    final[i] = good_so_far != flip
  source = np.where(np.arange(r) % 4 == 3, SOURCE_CONTRASTIVE, SOURCE_SAMPLE)
  return VerifierRows(tokens=tokens, lengths=lengths, prompt_lengths=np.full(r, 4, np.int32),
                      step_targets=step_targets, step_mask=step_mask,
                      step_exact=(step_targets > 0.5).astype(np.float32),
                      token_targets=token_targets, token_mask=token_mask, final_correct=final,
                      question_index=np.repeat(np.arange(n_questions), per_question)
                      .astype(np.int32), source=source.astype(np.str_))


def _tcfg(**overrides):
  base = dict(lr=3e-3, batch_size=16, dropout=0.05, steps=12, eval_every=6, log_every=2,
              patience=0, eval_batch_size=32, warmup_frac=0.0)
  base.update(overrides)
  return vt.VerifierTrainConfig(**base)


def _same_bits(a, b):
  la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
  assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
  for x, y in zip(la, lb):
    x, y = np.atleast_1d(np.asarray(x)), np.atleast_1d(np.asarray(y))
    assert x.dtype == y.dtype and x.shape == y.shape
    assert np.array_equal(x.view(np.uint8), y.view(np.uint8))


@functools.lru_cache(maxsize=2)
def _backbone(cfg):
  """The "policy" weights the verifiers start from: numpy draws, no compile."""
  rng = np.random.default_rng(0)
  fill = lambda a: jnp.asarray(rng.normal(0.0, 0.2, a.shape) if len(a.shape) >= 2
                               else np.ones(a.shape), a.dtype)
  return jax.tree_util.tree_map(fill, abstract_params(cfg))


def _initial_params(vcfg, tcfg):
  """The params a run starts from (the trainer's own compiled init)."""
  opt_cfg = tcfg.optim_config(tcfg.steps)
  return vt._init_state_fn(vcfg, opt_cfg)(_backbone(vcfg.model), jax.random.PRNGKey(tcfg.seed))[
      "params"]


def _run(tokenizer, out, tcfg, head="value", train=None, held=None, **kw):
  cfg = _cfg(tokenizer)
  vcfg = VerifierConfig(model=cfg, head=head, step_token_id=STEP)
  train = train if train is not None else synthetic_rows(12, 8, cfg.vocab_size, seed=0)
  held = held if held is not None else synthetic_rows(4, 8, cfg.vocab_size, seed=1)
  kw.setdefault("log", None)
  return vt.train_verifier(vcfg, _backbone(cfg), train, held, tcfg, str(out), tokenizer,
                           progress=False, **kw)


def test_orm_labels_only_the_last_step(tokenizer):
  rows = synthetic_rows(3, 4, tokenizer.vocab_size)
  vcfg = VerifierConfig(model=_cfg(tokenizer), head="value", step_token_id=STEP)
  targets, mask, mode = vt.loss_targets(rows, vcfg, _tcfg(objective="orm"))
  assert mode == "logit"
  np.testing.assert_array_equal(mask.sum(axis=1), 1)
  last = WIDTH - 1 - np.argmax(rows.step_mask[:, ::-1], axis=1)
  assert mask[np.arange(len(rows)), last].all() and rows.step_mask[mask].all()
  np.testing.assert_array_equal(targets[mask], rows.final_correct.astype(np.float32))
  # PRM: every step; the token head trains its product under ORM / step targets.
  _, prm_mask, _ = vt.loss_targets(rows, vcfg, _tcfg())
  np.testing.assert_array_equal(prm_mask, rows.step_mask)
  token = vcfg.replace(head="token")
  assert vt.loss_targets(rows, token, _tcfg(objective="orm"))[2] == "prefix"
  t_targets, t_mask, t_mode = vt.loss_targets(rows, token, _tcfg())
  assert t_mode == "logit" and np.array_equal(t_mask, rows.token_mask)
  assert vt.loss_targets(rows, token, _tcfg(token_targets="step"))[2] == "prefix"


def test_prefix_loss_is_bce_of_the_product():
  logit = jnp.array([[0.0, 1.5, -0.5, 2.0]])
  solution = jnp.array([[False, True, True, True]])
  targets = jnp.array([[0.0, 0.3, 1.0, 0.0]])
  got = vt.position_losses(logit, targets, solution, "prefix")
  p = np.cumprod(np.where(solution, jax.nn.sigmoid(logit), 1.0), axis=1)
  p = p[0, 1:]
  want = -(targets[0, 1:] * np.log(p) + (1 - targets[0, 1:]) * np.log1p(-p))
  np.testing.assert_allclose(np.asarray(got)[0, 1:], want, rtol=1e-5)


def test_dropout_changes_training_forward_not_eval(tokenizer):
  cfg = _cfg(tokenizer)
  vcfg = VerifierConfig(model=cfg, head="value", step_token_id=STEP)
  params = _initial_params(vcfg, _tcfg())
  rows = synthetic_rows(4, 8, cfg.vocab_size, seed=1)  # the held-out set's shapes: one compile
  targets, mask, mode = vt.loss_targets(rows, vcfg, _tcfg())
  batch = vt._Arrays.of(rows, targets, mask).batch(np.arange(len(rows)))
  loss = jax.jit(lambda rng, rate: vt.loss_sums(vcfg, mode, params, batch, rng, rate)[0],
                 static_argnums=1)
  k1, k2 = jax.random.key(1), jax.random.key(2)
  plain, drop1 = loss(None, 0.0), loss(k1, 0.3)
  assert float(drop1) != float(plain)
  assert float(loss(k2, 0.3)) != float(drop1)
  assert float(loss(k1, 0.0)) == float(plain)
  # Evaluation never drops: repeated evaluation is identical and equals the plain loss.
  tcfg = _tcfg(dropout=0.3)
  a = vt.evaluate_rows(vcfg, tcfg, params, rows)
  assert a == vt.evaluate_rows(vcfg, tcfg, params, rows)
  assert a["loss"] == pytest.approx(float(plain) / float(mask.sum()), rel=1e-5)


def test_batches_are_a_function_of_seed_and_step():
  lengths = np.random.default_rng(0).integers(10, 120, 37)
  plan = vt.BatchPlan(lengths, 8, seed=3, sort_window=2)
  assert plan.batches_per_epoch == 5
  a = [plan.indices(s) for s in range(12)]
  fresh = vt.BatchPlan(lengths, 8, seed=3, sort_window=2)  # a resumed run's plan
  assert all(np.array_equal(x, fresh.indices(s)) for s, x in reversed(list(enumerate(a))))
  for epoch in range(2):  # every row at least once per epoch (40 slots, 37 rows)
    assert set(np.concatenate(a[5 * epoch:5 * (epoch + 1)]).tolist()) == set(range(37))
  assert not np.array_equal(a[0], a[5])  # epochs re-permuted
  assert not np.array_equal(a[0], vt.BatchPlan(lengths, 8, seed=4, sort_window=2).indices(0))
  # Sorting within windows groups similar lengths: less padding than random batches.
  waste = lambda p: sum(lengths[p.indices(s)].max() * 8 - lengths[p.indices(s)].sum()
                        for s in range(5))
  assert waste(plan) < waste(vt.BatchPlan(lengths, 8, seed=3, sort_window=1))
  assert vt.bucket_width(33, 128, 32) == 64 and vt.bucket_width(127, 100, 32) == 100


@pytest.fixture(scope="module")
def straight(tmp_path_factory, tokenizer):
  out = tmp_path_factory.mktemp("straight")
  return out, _run(tokenizer, out, _tcfg())


def test_loss_decreases_and_metrics_are_logged(straight):
  out, result = straight
  lines = [json.loads(l) for l in open(os.path.join(out, vt.METRICS_FILE))]
  train = [l["loss"] for l in lines if l["kind"] == "train"]
  evals = [l for l in lines if l["kind"] == "eval"]
  assert train[-1] < train[0]
  for line in (l for l in lines if l["kind"] == "train"):  # throughput on every train line
    assert line["tokens_per_s"] > 0 and 0 < line["mfu"] < 1
  assert [e["step"] for e in evals] == [0, 6, 12]
  assert evals[-1]["loss"] < 0.9 * evals[0]["loss"]
  for key in ("answer_auc", "step_auc", "pooled_auc", "all_answer_auc"):
    assert key in evals[-1]
  assert lines[-1]["kind"] == "summary"
  assert result.step == 12 and not result.stopped_early
  assert result.held_out["loss"] == pytest.approx(min(e["loss"] for e in evals), rel=1e-6)


def test_resume_is_bit_identical(straight, tokenizer, tmp_path):
  _, ref = straight
  first = _run(tokenizer, tmp_path, _tcfg(), stop_at_step=6)
  assert first.step == 6
  second = _run(tokenizer, tmp_path, _tcfg())
  assert second.resumed_from == 6 and second.step == 12
  _same_bits(ref.params, second.params)
  assert second.best_step == ref.best_step
  lines = [json.loads(l) for l in open(tmp_path / vt.METRICS_FILE)]
  assert [l["step"] for l in lines if l["kind"] == "eval"] == [0, 6, 12]
  # Changing what the data stream depends on is refused.
  with pytest.raises(ValueError, match="batch_size"):
    _run(tokenizer, tmp_path, _tcfg(batch_size=8))


def test_early_stopping_returns_the_best_params(tokenizer, tmp_path):
  cfg = _cfg(tokenizer)
  # Held-out labels are the training labels inverted: once training fits the
  # training rows, the held-out loss only gets worse.
  held = synthetic_rows(4, 8, cfg.vocab_size, seed=1, flip=True)
  tcfg = _tcfg(eval_every=2, patience=2)  # the straight run's optimizer: no new compile
  result = _run(tokenizer, tmp_path, tcfg, held=held)
  evals = [json.loads(l) for l in open(tmp_path / vt.METRICS_FILE)]
  evals = {e["step"]: e["loss"] for e in evals if e["kind"] == "eval"}
  best_step = min(evals, key=evals.get)
  assert result.stopped_early and result.step < tcfg.steps
  assert result.best_step == best_step and result.step == best_step + 2 * tcfg.eval_every
  assert result.held_out["loss"] == pytest.approx(evals[best_step], rel=1e-6)
  _, last, _ = load_verifier(str(tmp_path), which="last")
  assert not np.array_equal(np.asarray(last["head"]["w"]), np.asarray(result.params["head"]["w"]))
  # A restart of a stopped run trains no further and returns the same params.
  again = _run(tokenizer, tmp_path, tcfg, held=held)
  assert again.step == result.step and again.stopped_early and again.best_step == best_step
  _same_bits(result.params, again.params)
  loaded_cfg, loaded, _ = load_verifier(str(tmp_path))
  assert loaded_cfg == result.vcfg
  _same_bits(result.params, loaded)


def test_load_verifier_round_trip(straight, tokenizer):
  out, result = straight
  vcfg, params, tok = load_verifier(str(out))
  assert vcfg == result.vcfg and tok.vocab_size == tokenizer.vocab_size
  _same_bits(result.params, params)
  _, last, _ = load_verifier(str(out), which="last")
  assert jax.tree_util.tree_structure(last) == jax.tree_util.tree_structure(params)
  with pytest.raises(FileNotFoundError):
    load_verifier(str(out / "nothing"))


def test_token_head_trains_on_token_targets(tokenizer, tmp_path):
  result = _run(tokenizer, tmp_path, _tcfg(steps=6, eval_every=3, dropout=0.0), head="token")
  lines = [json.loads(l) for l in open(tmp_path / vt.METRICS_FILE)]
  train = [l["loss"] for l in lines if l["kind"] == "train"]
  assert train[-1] < train[0]
  assert np.isfinite(result.held_out["loss"])
