"""Sharding rules and sharded execution on 8 fake CPU devices.

The rest of the suite runs on 1 device, and JAX fixes its device count when
its backend starts (possibly already, in this pytest process), so the
8-device checks run in one subprocess: this file executed as a script with
JAX_NUM_CPU_DEVICES=8 prints a JSON report that the tests below assert on.
The pure rule logic (`logical_to_spec`) is tested in-process on abstract meshes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHILD_TIMEOUT_S = 240
MESHES = ((2, 4), (8, 1))


# ----------------------------------------------------------------------------
# In-process: rule logic, 1-device code path, distributed no-op.


def _abstract_mesh(data: int, model: int):
  from jax.sharding import AbstractMesh
  return AbstractMesh((data, model), ("data", "model"))


def test_logical_to_spec_maps_rules():
  from jax.sharding import PartitionSpec as P

  from ttc_jax.sharding import logical_to_spec
  mesh = _abstract_mesh(2, 4)
  assert logical_to_spec(("embed", "heads", "head_dim"), (64, 4, 16), mesh) == P(None, "model", None)
  assert logical_to_spec(("batch", "seq"), (8, 12), mesh) == P("data", None)
  assert logical_to_spec(("vocab", "embed"), (128, 64), mesh) == P("model", None)
  assert logical_to_spec((None, "not_a_rule"), (8, 8), mesh) == P(None, None)


def test_logical_to_spec_drops_indivisible_axis():
  from jax.sharding import PartitionSpec as P

  from ttc_jax.sharding import logical_to_spec
  mesh = _abstract_mesh(2, 4)
  # 2 kv heads on a 4-way model axis: replicated.
  assert logical_to_spec(("embed", "kv_heads", "head_dim"), (64, 2, 16), mesh) == P(None, None, None)
  assert logical_to_spec(("batch", "kv_heads", "seq", "head_dim"), (3, 8, 16, 16),
                         mesh) == P(None, "model", None, None)
  # Odd vocab (e.g. 32001) is replicated rather than unevenly split.
  assert logical_to_spec(("embed", "vocab"), (64, 127), mesh) == P(None, None)


def test_logical_to_spec_uses_mesh_axis_once():
  from jax.sharding import PartitionSpec as P

  from ttc_jax.sharding import logical_to_spec
  mesh = _abstract_mesh(2, 4)
  assert logical_to_spec(("heads", "ffn"), (4, 128), mesh) == P("model", None)
  assert logical_to_spec(("ffn", "vocab"), (128, 128), mesh) == P("model", None)
  # The first claimant cannot take it (indivisible), so the next one does.
  assert logical_to_spec(("kv_heads", "ffn"), (2, 128), mesh) == P(None, "model")
  # Two batch-like dims: only the first gets "data".
  assert logical_to_spec(("batch", "batch"), (8, 8), mesh) == P("data", None)


def test_logical_to_spec_multi_axis_rules_and_errors():
  from jax.sharding import PartitionSpec as P

  from ttc_jax.sharding import logical_to_spec
  mesh = _abstract_mesh(2, 4)
  rules = {"batch": ("data", "model"), "heads": "model"}
  assert logical_to_spec(("batch",), (8,), mesh, rules) == P(("data", "model"))
  assert logical_to_spec(("batch",), (2,), mesh, rules) == P("data")  # 2 % 8: model dropped
  assert logical_to_spec(("batch",), (3,), mesh, rules) == P(None)
  assert logical_to_spec(("batch", "heads"), (8, 4), mesh, rules) == P(("data", "model"), None)
  with pytest.raises(ValueError, match="logical axes"):
    logical_to_spec(("batch",), (8, 8), mesh)
  with pytest.raises(ValueError, match="no such mesh axis"):
    logical_to_spec(("batch",), (8,), mesh, {"batch": "pod"})


def test_one_device_same_code_path(tiny_model):
  import jax

  from ttc_jax import sharding
  from ttc_jax.model import forward, init_cache, logical_axes
  cfg, params = tiny_model
  n = jax.device_count()
  mesh = sharding.make_mesh()
  assert dict(mesh.shape) == {"data": n, "model": 1}
  shardings = sharding.param_shardings(cfg, mesh)
  assert jax.tree_util.tree_structure(shardings) == jax.tree_util.tree_structure(params)
  # Every spec has one entry per dimension, derived from the params' logical axes.
  spec_ranks = jax.tree_util.tree_leaves(jax.tree_util.tree_map(lambda s: len(s.spec), shardings))
  axes = jax.tree_util.tree_leaves(logical_axes(cfg), is_leaf=lambda x: isinstance(x, tuple))
  assert spec_ranks == [len(a) for a in axes]
  sharded = sharding.shard_params(params, cfg, mesh)
  tokens = np.arange(2 * 5, dtype=np.int32).reshape(2, 5) % cfg.vocab_size
  cache = sharding.shard_cache(init_cache(cfg, 2, 16), mesh)
  got, cache = jax.jit(lambda p, t, c: forward(cfg, p, t, cache=c))(
      sharded, sharding.shard_batch(tokens, mesh), cache)
  want, _ = forward(cfg, params, tokens)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5, rtol=0)
  abstract = sharding.abstract_sharded_params(cfg, mesh)
  assert abstract["layers"][0]["wq"].sharding == shardings["layers"][0]["wq"]


def test_make_mesh_rejects_wrong_device_count():
  import jax

  from ttc_jax.sharding import make_mesh
  n = jax.device_count()
  with pytest.raises(ValueError, match="devices"):
    make_mesh(data=n + 1, model=1)
  with pytest.raises(ValueError, match="does not divide"):
    make_mesh(model=n + 1)


def test_maybe_initialize_single_process_is_noop():
  from ttc_jax import distributed
  saved = distributed._STATE
  try:
    distributed._STATE = None
    assert distributed.maybe_initialize(None, 1, 0) is False
    assert distributed.maybe_initialize(None, 1, 0) is False  # idempotent
    assert distributed.maybe_initialize("127.0.0.1:1", 1, 0) is False  # one process: no-op
    with pytest.raises(RuntimeError, match="already called"):
      distributed.maybe_initialize(None, 1, 0, local_device_count=4)
  finally:
    distributed._STATE = saved


def test_resolve_cpu_devices(monkeypatch):
  """-1 asks for AUTO_CPU_DEVICES unless the environment fixed a count; None / 0 leave JAX's."""
  from ttc_jax import distributed
  monkeypatch.delenv("JAX_NUM_CPU_DEVICES", raising=False)
  monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_enable_fast_math=false")
  assert distributed.resolve_cpu_devices(-1) == distributed.AUTO_CPU_DEVICES
  assert distributed.resolve_cpu_devices(None) is None
  assert distributed.resolve_cpu_devices(0) is None
  assert distributed.resolve_cpu_devices(3) == 3
  monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
  assert distributed.resolve_cpu_devices(-1) is None
  assert distributed.resolve_cpu_devices(3) == 3
  monkeypatch.delenv("XLA_FLAGS")
  monkeypatch.setenv("JAX_NUM_CPU_DEVICES", "8")
  assert distributed.resolve_cpu_devices(-1) is None


# ----------------------------------------------------------------------------
# Subprocess on 8 fake CPU devices.


def _child_env(base: dict) -> dict:
  env = dict(base)
  env["JAX_PLATFORMS"] = "cpu"
  env["JAX_NUM_CPU_DEVICES"] = "8"
  flags = [f for f in env.get("XLA_FLAGS", "").split()
           if not f.startswith("--xla_force_host_platform_device_count")]
  env["XLA_FLAGS"] = " ".join(flags)
  env["PYTHONPATH"] = os.pathsep.join([REPO] + [p for p in [env.get("PYTHONPATH")] if p])
  return env


def _eight_device_child(job):
  """A background job (tests/conftest.py), started after collection."""
  env = _child_env(job.env)
  try:
    proc = job.run([sys.executable, os.path.abspath(__file__)], cwd=REPO, env=env,
                   timeout=CHILD_TIMEOUT_S, check=False)
  except subprocess.TimeoutExpired as e:
    pytest.fail(f"8-device subprocess timed out after {CHILD_TIMEOUT_S} s; stderr:\n"
                f"{(e.stderr or '')[-6000:]!r}")
  if proc.returncode != 0:
    pytest.fail(f"8-device subprocess failed (rc={proc.returncode}); stderr:\n"
                f"{proc.stderr[-8000:]}")
  return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def eight_device_report(background):
  return background.result(_eight_device_child)


@pytest.mark.background("_eight_device_child")
def test_child_sees_eight_devices(eight_device_report):
  assert eight_device_report["device_count"] == 8


@pytest.mark.background("_eight_device_child")
@pytest.mark.parametrize("mesh", [f"{d}x{m}" for d, m in MESHES])
def test_params_really_sharded(eight_device_report, mesh):
  r = eight_device_report["meshes"][mesh]
  specs = r["specs"]
  if mesh == "2x4":
    assert specs["wq"] == "P(None, 'model', None)"
    assert r["wq_shard_shape"] == [64, 1, 16]  # 4 heads over 4 devices
    assert specs["wo"] == "P('model', None, None)"
    assert specs["w_gate"] == "P(None, 'model')" and specs["w_down"] == "P('model', None)"
    assert specs["embed"] == "P('model', None)" and specs["lm_head"] == "P(None, 'model')"
    # 2 kv heads do not split 4 ways: replicated, whole array on every device.
    assert specs["wk"] == "P(None, None, None)" and specs["bk"] == "P(None, None)"
    assert r["wk_shard_shape"] == [64, 2, 16]
    assert r["cache_k_spec"] == "P('data', None, None, None)"
  else:
    assert r["wq_shard_shape"] == [64, 4, 16]  # model axis of size 1
    assert r["cache_k_spec"] == "P('data', 'model', None, None)"
  assert r["tokens_spec"] == "P('data', None)"


@pytest.mark.background("_eight_device_child")
@pytest.mark.parametrize("mesh", [f"{d}x{m}" for d, m in MESHES])
def test_sharded_forward_matches_unsharded(eight_device_report, mesh):
  r = eight_device_report["meshes"][mesh]
  assert r["logits_max_abs_diff"] <= 1e-5, r
  assert r["logits_indivisible_batch_max_abs_diff"] <= 1e-5, r  # B=3: batch replicated
  assert r["logits_fully_replicated"] is False


@pytest.mark.background("_eight_device_child")
@pytest.mark.parametrize("mesh", [f"{d}x{m}" for d, m in MESHES])
def test_sharded_greedy_decode_matches_single_device(eight_device_report, mesh):
  report = eight_device_report
  r = report["meshes"][mesh]
  assert r["greedy_tokens"] == report["reference_greedy_tokens"]
  assert r["greedy_logits_max_abs_diff"] <= 1e-5, r


@pytest.mark.background("_eight_device_child")
@pytest.mark.parametrize("mesh", [f"{d}x{m}" for d, m in MESHES])
def test_sharded_generate_matches_single_device(eight_device_report, mesh):
  report = eight_device_report
  if report["generate"] is None:
    pytest.skip("ttc_jax.decode.generate(..., mesh=) not available")
  gen = report["generate"]
  assert "error" not in gen, gen.get("error")
  assert gen["meshes"][mesh]["tokens"] == gen["reference_tokens"]
  assert gen["meshes"][mesh]["lengths"] == gen["reference_lengths"]


# ----------------------------------------------------------------------------
# The subprocess body (runs with 8 CPU devices).

PROMPT_LEN, NEW_TOKENS, CAPACITY = 5, 6, 16


def _child_config():
  from ttc_jax.model import ModelConfig
  return ModelConfig(vocab_size=128, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2,
                     ffn_dim=128, max_seq_len=64, qkv_bias=True, dtype="float32")


def _greedy(step, cfg, params, prompts, mesh):
  """Prefill + NEW_TOKENS greedy steps of jitted `forward` with a KV cache."""
  import jax.numpy as jnp

  from ttc_jax import sharding
  from ttc_jax.model import init_cache
  cache = init_cache(cfg, prompts.shape[0], CAPACITY)
  tokens = jnp.asarray(prompts)
  if mesh is not None:
    cache = sharding.shard_cache(cache, mesh)
    tokens = sharding.shard_batch(prompts, mesh)
  out, all_logits = [], []
  for _ in range(NEW_TOKENS):
    tokens, logits, cache = step(params, tokens, cache)
    out.append(np.asarray(tokens)[:, 0])
    all_logits.append(np.asarray(logits))
  return np.stack(out, 1), np.stack(all_logits, 1), cache, tokens


def _child_main() -> dict:
  import functools

  import jax
  import jax.numpy as jnp

  from ttc_jax import sharding
  from ttc_jax.model import forward, init_params

  def step(cfg, params, tokens, cache):
    logits, cache = forward(cfg, params, tokens, cache=cache)
    last = logits[:, -1]
    return jnp.argmax(last, axis=-1).astype(jnp.int32)[:, None], last, cache

  cfg = _child_config()
  params = init_params(cfg, jax.random.key(0))
  # Non-trivial norm weights and biases too (init gives ones / zeros).
  leaves, treedef = jax.tree_util.tree_flatten(params)
  noise = jax.random.split(jax.random.key(1), len(leaves))
  params = jax.tree_util.tree_unflatten(
      treedef, [x + 0.05 * jax.random.normal(k, x.shape, x.dtype) for x, k in zip(leaves, noise)])
  rng = np.random.default_rng(0)
  tokens = rng.integers(0, cfg.vocab_size, (8, 12), dtype=np.int32)
  prompts = rng.integers(0, cfg.vocab_size, (8, PROMPT_LEN), dtype=np.int32)

  fwd = jax.jit(lambda p, t: forward(cfg, p, t)[0])
  step_jit = jax.jit(functools.partial(step, cfg))
  ref_logits = np.asarray(fwd(params, tokens))
  ref_logits3 = np.asarray(fwd(params, tokens[:3]))
  ref_greedy, ref_greedy_logits, _, _ = _greedy(step_jit, cfg, params, prompts, None)
  report = {"device_count": jax.device_count(),
            "reference_greedy_tokens": ref_greedy.tolist(), "meshes": {}}

  spec = lambda x: str(x.sharding.spec)
  for data, model in MESHES:
    mesh = sharding.make_mesh(data, model)
    sp = sharding.shard_params(params, cfg, mesh)
    layer = sp["layers"][0]
    r = {"specs": {name: spec(x) for name, x in layer.items()}}
    r["specs"].update(embed=spec(sp["embed"]), lm_head=spec(sp["lm_head"]))
    r["wq_shard_shape"] = list(layer["wq"].addressable_shards[0].data.shape)
    r["wk_shard_shape"] = list(layer["wk"].addressable_shards[0].data.shape)
    batch = sharding.shard_batch(tokens, mesh)
    r["tokens_spec"] = spec(batch)
    logits = fwd(sp, batch)
    r["logits_fully_replicated"] = bool(logits.sharding.is_fully_replicated)
    r["logits_max_abs_diff"] = float(np.abs(np.asarray(logits) - ref_logits).max())
    logits3 = fwd(sp, sharding.shard_batch(tokens[:3], mesh))
    r["logits_indivisible_batch_max_abs_diff"] = float(np.abs(np.asarray(logits3) - ref_logits3).max())
    greedy, greedy_logits, cache, _ = _greedy(step_jit, cfg, sp, prompts, mesh)
    r["greedy_tokens"] = greedy.tolist()
    r["greedy_logits_max_abs_diff"] = float(np.abs(greedy_logits - ref_greedy_logits).max())
    r["cache_k_spec"] = str(sharding.cache_shardings(cache, mesh).k[0].spec)
    r["cache_k_out_spec"] = spec(cache.k[0])
    report["meshes"][f"{data}x{model}"] = r

  try:  # another module's code: a failure there fails only its own test
    report["generate"] = _child_generate(cfg, params)
  except Exception:  # pylint: disable=broad-except
    import traceback
    report["generate"] = {"error": traceback.format_exc()}
  return report


def _child_generate(cfg, params):
  """Sharded vs single-device `ttc_jax.decode.generate`, when it takes a mesh."""
  import inspect

  from ttc_jax import sharding
  try:
    from ttc_jax.decode import Greedy, generate
  except ImportError:
    return None
  if "mesh" not in inspect.signature(generate).parameters:
    return None
  rng = np.random.default_rng(2)
  prompts = [rng.integers(0, cfg.vocab_size, n).tolist() for n in (3, 5, 7, 4, 6, 2, 5, 3)]
  run = lambda mesh: generate(cfg, params, prompts, max_new_tokens=NEW_TOKENS, sampler=Greedy(),
                              seed=0, mesh=mesh)
  ref = run(None)
  out = {"reference_tokens": np.asarray(ref.tokens).tolist(),
         "reference_lengths": np.asarray(ref.lengths).tolist(), "meshes": {}}
  for data, model in MESHES:
    got = run(sharding.make_mesh(data, model))
    out["meshes"][f"{data}x{model}"] = {"tokens": np.asarray(got.tokens).tolist(),
                                        "lengths": np.asarray(got.lengths).tolist()}
  return out


if __name__ == "__main__":
  sys.path.insert(0, REPO)
  print(json.dumps(_child_main()))
