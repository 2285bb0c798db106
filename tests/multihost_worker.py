"""One process of the multi-host test (tests/test_multihost.py launches two).

Each process joins the distributed runtime (`ttc_jax.distributed`), builds the
global mesh(es) named by --meshes over every process's devices, places a
fixed-seed tiny model and fixed tokens on it, runs a jitted forward pass, and
gathers the logits to every process; process 0 writes them to
<out>/logits_<data>x<model>.npy plus <out>/info.json.

The model config, seed and tokens live here (`tiny_config`, `SEED`,
`fixed_tokens`) so the test computes its single-process reference from the
same definitions. Run by hand: see the `ttc_jax.distributed` docstring.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np

SEED = 0
BATCH, SEQ_LEN = 4, 8


def tiny_config():
  from ttc_jax.model import ModelConfig
  return ModelConfig(vocab_size=128, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2,
                     ffn_dim=128, max_seq_len=64, dtype="float32")


def fixed_tokens() -> np.ndarray:
  return np.random.default_rng(1234).integers(0, 128, size=(BATCH, SEQ_LEN), dtype=np.int32)


def _parse_meshes(text: str) -> list[tuple[int, int]]:
  return [tuple(int(n) for n in item.split("x")) for item in text.split(",") if item]


def main(argv) -> None:
  del argv
  from absl import flags

  from ttc_jax import distributed
  FLAGS = flags.FLAGS
  distributed.initialize_from_flags()  # before any JAX operation

  import jax
  from jax.experimental import multihost_utils

  from ttc_jax import sharding
  from ttc_jax.model import forward, init_params

  os.makedirs(FLAGS.out, exist_ok=True)
  cfg = tiny_config()
  params = init_params(cfg, jax.random.PRNGKey(SEED))
  tokens = fixed_tokens()
  fwd = jax.jit(lambda p, t: forward(cfg, p, t)[0])
  info = {"process_index": jax.process_index(), "process_count": jax.process_count(),
          "device_count": jax.device_count(), "local_device_count": jax.local_device_count(),
          "meshes": {}}
  for data, model in _parse_meshes(FLAGS.meshes):
    mesh = sharding.make_mesh(data, model)
    sharded = sharding.shard_params(params, cfg, mesh)
    logits = fwd(sharded, sharding.shard_batch(tokens, mesh))
    gathered = np.asarray(multihost_utils.process_allgather(logits, tiled=True))
    name = f"{data}x{model}"
    info["meshes"][name] = {
        "wq_spec": str(sharded["layers"][0]["wq"].sharding.spec),
        "wq_fully_addressable": sharded["layers"][0]["wq"].is_fully_addressable,
        "logits_spec": str(logits.sharding.spec),
        "logits_fully_addressable": logits.is_fully_addressable,
        "mesh_processes": sorted({d.process_index for d in mesh.devices.flat}),
        "shape": list(gathered.shape),
    }
    if distributed.is_main_process():
      np.save(os.path.join(FLAGS.out, f"logits_{name}.npy"), gathered)
  multihost_utils.sync_global_devices("multihost_worker done")
  if distributed.is_main_process():
    with open(os.path.join(FLAGS.out, "info.json"), "w") as f:
      json.dump(info, f, indent=1)
  distributed.shutdown()


if __name__ == "__main__":
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  from absl import app, flags

  from ttc_jax import distributed as _distributed
  _distributed.define_flags()
  flags.DEFINE_string("out", None, "directory process 0 writes logits_*.npy and info.json to")
  flags.DEFINE_string("meshes", "2x2,1x4", "comma-separated data x model meshes to run")
  flags.mark_flag_as_required("out")
  app.run(main)
