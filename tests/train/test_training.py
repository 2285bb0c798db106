"""Policy training: data rows, optimiser, checkpoints, bit-exact resume.

One in-process straight run of the smoke preset (module fixture) is the
reference: interrupted / killed / corrupted runs must end with the same bits.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ttc_jax import checkpoints as ckpt_lib
from ttc_jax import perf
from ttc_jax.sharding import make_mesh
from ttc_jax.tasks import get_task
from ttc_jax.tokenizer import Tokenizer, build_task_tokenizer
from ttc_jax.train import data as data_lib
from ttc_jax.train import get_preset, train
from ttc_jax.train.optim import OptimConfig, make_optimizer, make_schedule

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
N_STEPS = 24
CKPT_EVERY = 8


def _preset(**overrides):
  base = dict(steps=N_STEPS, ckpt_every=CKPT_EVERY, eval_every=12, log_every=4)
  base.update(overrides)
  return get_preset("smoke").with_train(**base)


def _mesh():
  return make_mesh(data=1, model=1, devices=jax.devices()[:1])


def _train(out_dir, preset=None, **kw):
  kw.setdefault("progress", False)
  kw.setdefault("measure_peak", False)
  return train(preset or _preset(), str(out_dir), mesh=_mesh(), log=None, **kw)


def _assert_same_bits(a, b):
  la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
  assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
  for x, y in zip(la, lb):
    x, y = np.asarray(x), np.asarray(y)
    assert x.dtype == y.dtype and x.shape == y.shape
    assert np.array_equal(x.view(np.uint8), y.view(np.uint8))


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
  """An uninterrupted smoke run: (out_dir, TrainResult, host params)."""
  out = tmp_path_factory.mktemp("straight")
  result = _train(out)
  return out, result, jax.device_get(result.params)


# ---------------------------------------------------------------- data / optim

@pytest.fixture(scope="module")
def task_and_tokenizer():
  task = get_task("arithmetic")
  return task, build_task_tokenizer(task, n_samples=300)


def test_rows_mask_only_solution_and_eos(task_and_tokenizer):
  task, tok = task_and_tokenizer
  problems = task.train_problems(3, 40)
  rows = data_lib.tokenize_problems(task, tok, problems, row_len=128)
  assert len(rows) == 40 and rows.n_dropped == 0
  for i, p in enumerate(problems):
    n = rows.lengths[i]
    ids, mask = rows.tokens[i], rows.mask[i]
    assert ids[0] == tok.bos_id and ids[n - 1] == tok.eos_id
    assert (ids[n:] == tok.pad_id).all() and not mask[n:].any()
    assert tok.decode(ids[1:n][~mask[1:n]]) == task.prompt(p)  # unmasked = BOS + prompt
    assert tok.decode(ids[mask]) == p.solution  # masked = solution + EOS
    assert mask[n - 1]
  short = data_lib.tokenize_problems(task, tok, problems, row_len=40)
  assert short.n_dropped == int((rows.lengths > 40).sum())


def test_batch_plan_is_a_function_of_seed_and_step(task_and_tokenizer):
  task, tok = task_and_tokenizer
  rows = data_lib.tokenize_problems(task, tok, task.train_problems(0, 203), 128)
  buckets = (32, 64, 96, 128)
  a = data_lib.BatchPlan(rows, 16, seed=5, buckets=buckets, sort_window=4)
  b = data_lib.BatchPlan(rows, 16, seed=5, buckets=buckets, sort_window=4)
  assert a.batches_per_epoch == 12
  for step in (0, 7, 12, 30):  # fresh plan objects agree (a resumed run)
    ta, ma = a.batch(step)
    tb, mb = b.batch(step)
    np.testing.assert_array_equal(ta, tb)
    np.testing.assert_array_equal(ma, mb)
  epoch = np.concatenate([a.indices(s) for s in range(12)])
  assert len(set(epoch.tolist())) == len(epoch) == 192  # each row at most once per epoch
  assert not np.array_equal(a.indices(0), a.indices(12))  # epochs re-permuted
  for step in range(12):
    tokens, _ = a.batch(step)
    longest = rows.lengths[a.indices(step)].max()
    assert tokens.shape[1] == min(x for x in buckets if x >= longest)
  other = data_lib.BatchPlan(rows, 16, seed=6, buckets=buckets, sort_window=4)
  assert not np.array_equal(a.indices(0), other.indices(0))


def test_schedule_and_weight_decay_mask():
  cfg = OptimConfig(lr=1e-2, total_steps=100, warmup_steps=10, min_lr_ratio=0.1)
  sched = make_schedule(cfg)
  assert float(sched(0)) == 0.0
  assert float(sched(10)) == pytest.approx(1e-2)
  assert float(sched(5)) == pytest.approx(5e-3)
  assert float(sched(100)) == pytest.approx(1e-3)
  assert 1e-3 < float(sched(55)) < 1e-2
  # Norm weights (rank 1) are not decayed: with zero gradients only matrices shrink.
  opt = make_optimizer(OptimConfig(lr=0.1, total_steps=10, weight_decay=0.5, clip_norm=None))
  params = {"w": jnp.ones((2, 2)), "norm": jnp.ones((2,))}
  state = opt.init(params)
  zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
  for _ in range(2):
    updates, state = opt.update(zeros, state, params)
    params = optax.apply_updates(params, updates)
  assert float(params["w"][0, 0]) < 1.0 and float(params["norm"][0]) == 1.0


def test_matmul_peak_and_train_flops():
  peak = perf.measure_matmul_peak_gflops(n=256, repeats=3)
  assert 0.1 < peak < 1e7
  cfg = get_preset("smoke").model_config_for(38)
  per_token = perf.train_flops_per_token(cfg, 128)
  assert per_token == pytest.approx(3 * cfg.flops_per_token(64.5))
  assert per_token > 6 * cfg.num_params(include_embeddings=False)


def test_presets_pair_is_about_14x_on_the_same_stream():
  small, large = get_preset("small"), get_preset("large")
  ratio = (large.model.num_params(include_embeddings=False)
           / small.model.num_params(include_embeddings=False))
  assert 12 <= ratio <= 16
  assert small.data == large.data
  for key in ("batch_size", "train_tokens", "steps", "seed", "grad_accum"):
    assert getattr(small.train, key) == getattr(large.train, key)
  judge = get_preset("small_verifier")  # same network and stream, twice the tokens
  assert judge.model == small.model and judge.data == small.data
  assert judge.train.train_tokens == 2 * small.train.train_tokens
  assert dataclasses.replace(judge.train, train_tokens=small.train.train_tokens) == small.train
  over = small.with_train(steps=7, lr=None)
  assert over.train.steps == 7 and over.train.train_tokens is None
  assert over.train.lr == small.train.lr


# ---------------------------------------------------------------- training runs

def test_straight_run_writes_loadable_policy(straight):
  out, result, params = straight
  assert result.step == N_STEPS and result.resumed_from is None
  for name in ("policy.json", "tokenizer.model", "metrics.jsonl"):
    assert (out / name).exists()
  ckpt = ckpt_lib.Checkpointer(str(out), read_only=True)
  assert ckpt.steps() == [8, 16, 24]
  ckpt.close()
  sidecar = ckpt_lib.read_sidecar(str(out))
  assert sidecar["preset"] == "smoke" and sidecar["model_config"] == result.cfg.to_dict()
  cfg, loaded, tok = ckpt_lib.load_policy(str(out))
  assert cfg == result.cfg
  _assert_same_bits(loaded, params)
  assert tok == Tokenizer.load(str(out)) and tok.vocab_size == cfg.vocab_size
  lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
  train_lines = [x for x in lines if x["kind"] == "train"]
  assert [x["step"] for x in train_lines] == [4, 8, 12, 16, 20, 24]
  assert train_lines[-1]["loss"] < train_lines[0]["loss"]
  assert [x["step"] for x in lines if x["kind"] == "eval"] == [12, 24]
  assert lines[-1]["kind"] == "summary"
  assert np.isfinite(result.eval_loss)


def test_stop_and_resume_is_bitwise_identical(straight, tmp_path):
  _, _, reference = straight
  first = _train(tmp_path, stop_at_step=11)
  assert first.step == 11
  ckpt = ckpt_lib.Checkpointer(str(tmp_path), read_only=True)
  assert ckpt.steps() == [8, 11]
  ckpt.close()
  second = _train(tmp_path)
  assert second.resumed_from == 11 and second.step == N_STEPS
  _assert_same_bits(jax.device_get(second.params), reference)
  steps = [json.loads(x)["step"] for x in (tmp_path / "metrics.jsonl").read_text().splitlines()
           if json.loads(x)["kind"] == "train"]
  assert steps == sorted(set(steps))  # no replayed duplicates
  # A finished run restarted: nothing to do, same bits, leftovers of a torn
  # save cleaned up.
  torn = tmp_path / "checkpoints" / "25.orbax-checkpoint-tmp-1234"
  (torn / "params").mkdir(parents=True)
  third = _train(tmp_path)
  assert third.step == N_STEPS and not torn.exists()
  _assert_same_bits(jax.device_get(third.params), reference)


def test_resume_with_a_different_model_config_is_an_error(straight, tmp_path):
  out, _, _ = straight
  run = tmp_path / "run"
  shutil.copytree(out, run)
  preset = _preset()
  bigger = preset.__class__(name=preset.name, model=preset.model.replace(d_model=48, ffn_dim=96),
                            train=preset.train, data=preset.data)
  with pytest.raises(ValueError, match=r"model config differs.*'d_model', 'ffn_dim'"):
    _train(run, bigger)
  with pytest.raises(ValueError, match="batch_size"):
    _train(run, _preset(batch_size=4))
  with pytest.raises(ValueError, match="already holds checkpoints"):
    _train(run, resume=False)
  assert (run / "checkpoints" / "24").exists()  # nothing was moved or deleted


def _truncate_files(directory):
  for root, _, files in os.walk(directory):
    for name in files:
      path = os.path.join(root, name)
      with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)


# A failed restore of a truncated file leaves an orbax/tensorstore callback
# aimed at a closed event loop; harmless.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_corrupt_latest_checkpoint_falls_back_to_previous(straight, tmp_path):
  out, _, reference = straight
  # Readers: truncated files in the newest step -> the previous one, with a warning.
  run = tmp_path / "run"
  shutil.copytree(out, run)
  _truncate_files(run / "checkpoints" / "24" / "params")
  with pytest.warns(ckpt_lib.CheckpointWarning, match="step 24"):
    cfg, params, _ = ckpt_lib.load_policy(str(run))
  ckpt = ckpt_lib.Checkpointer(str(run), read_only=True)
  found = ckpt.restore_latest_good(jax.device_get(params), model_cfg=cfg, step=16)
  ckpt.close()
  _assert_same_bits(params, found[1])
  # Trainer: a missing file in 24 and a truncated one in 16 -> resumes from 8,
  # moves the bad steps aside, retrains, and ends on the same bits.
  run2 = tmp_path / "run2"
  shutil.copytree(out, run2)
  os.remove(run2 / "checkpoints" / "24" / "train_state" / "manifest.ocdbt")
  _truncate_files(run2 / "checkpoints" / "16" / "train_state")
  with pytest.warns(ckpt_lib.CheckpointWarning) as record:
    result = _train(run2)
  assert {"24", "16"} <= {w.message.args[0].split()[2] for w in record}
  assert result.resumed_from == 8 and result.step == N_STEPS
  _assert_same_bits(jax.device_get(result.params), reference)
  assert sorted(os.listdir(run2 / "checkpoints_corrupt")) == ["16.0", "24.0"]


def test_silently_damaged_bytes_fail_the_fingerprint(straight, tmp_path):
  out, _, _ = straight
  run = tmp_path / "run"
  shutil.copytree(out, run)
  # Same array shapes, different values: another run's params in place of
  # step 24's (readable, but they do not match the recorded fingerprint).
  other = tmp_path / "other"
  _train(other, _preset(seed=1, steps=N_STEPS), stop_at_step=8)
  shutil.rmtree(run / "checkpoints" / "24" / "params")
  shutil.copytree(other / "checkpoints" / "8" / "params", run / "checkpoints" / "24" / "params")
  with pytest.warns(ckpt_lib.CheckpointWarning, match="fingerprint"):
    ckpt_lib.load_policy(str(run))


def _subprocess_env(cache_dir, base=None):
  env = dict(os.environ if base is None else base)
  env.pop("JAX_NUM_CPU_DEVICES", None)
  flags = [f for f in env.get("XLA_FLAGS", "").split()
           if not f.startswith("--xla_force_host_platform_device_count")]
  env["XLA_FLAGS"] = " ".join(flags)
  env["JAX_PLATFORMS"] = "cpu"
  env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
  env["JAX_COMPILATION_CACHE_DIR"] = str(cache_dir)  # the restart compiles nothing
  env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
  return env


def _finalized_steps(ckpt_dir):
  if not os.path.isdir(ckpt_dir):
    return []
  return [int(n) for n in os.listdir(ckpt_dir) if n.isdigit()]


@pytest.mark.slow
def test_sigkilled_cli_run_restarts_to_the_same_bits(straight, tmp_path):
  _, _, reference = straight
  out = tmp_path / "run"
  cmd = [sys.executable, "-m", "experiments.train_policy", "--preset=smoke",
         f"--out_dir={out}", f"--steps={N_STEPS}", "--ckpt_every=1", "--log_every=1",
         "--eval_every=0", "--mesh_data=1", "--noprogress"]
  env = _subprocess_env(tmp_path / "jax_cache")
  proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT)
  deadline = time.time() + 120
  try:
    while max(_finalized_steps(out / "checkpoints"), default=0) < 3:
      assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
      assert time.time() < deadline, "no checkpoint within 120 s"
      time.sleep(0.02)
    time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
  finally:
    proc.wait()
  killed_at = max(_finalized_steps(out / "checkpoints"))
  assert killed_at < N_STEPS
  done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
  assert "resumed from step" in done.stdout
  summary = json.loads(next(line for line in done.stdout.splitlines()
                            if line.startswith("summary: "))[len("summary: "):])
  assert summary["step"] == N_STEPS and summary["resumed_from"] >= 3
  _, params, _ = ckpt_lib.load_policy(str(out))
  _assert_same_bits(params, reference)


def _data_parallel_run(job):
  """A background job (tests/conftest.py), started after collection: the run dir."""
  run = job.dir / "run"
  cmd = [sys.executable, "-m", "experiments.train_policy", "--preset=smoke", f"--out_dir={run}",
         f"--steps={N_STEPS}", "--stop_at_step=8", "--cpu_devices=2", "--mesh_data=2",
         "--grad_accum=2", "--eval_every=0", "--noprogress"]
  done = job.run(cmd, cwd=REPO, env=_subprocess_env(job.dir / "jax_cache", job.env),
                 timeout=300, check=False)
  assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
  return run


@pytest.mark.slow
@pytest.mark.background("_data_parallel_run")
def test_data_parallel_grad_accumulated_cli_run_matches(straight, background):
  """2 fake CPU devices on the data axis, 2 micro-batches per step: the same
  updates as one device and one batch (up to summation order)."""
  out, _, _ = straight
  run = background.result(_data_parallel_run)
  _, params, _ = ckpt_lib.load_policy(str(run), step=8)
  _, reference, _ = ckpt_lib.load_policy(str(out), step=8)
  for a, b in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(reference)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)
