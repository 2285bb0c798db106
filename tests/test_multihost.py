"""Two CPU processes on 127.0.0.1 form one 4-device mesh; their sharded forward
pass must match a single-process unsharded forward.

Each process runs tests/multihost_worker.py with 2 fake CPU devices; the
worker runs a 2x2 (data x model) mesh, whose data axis spans the processes,
and a 1x4 mesh, whose model axis (tensor parallel all-reduces over gloo) does.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(REPO, "tests", "multihost_worker.py")
TIMEOUT_S = 120
MESHES = ("2x2", "1x4")


def _free_port() -> int:
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _load_worker_module():
  spec = importlib.util.spec_from_file_location("multihost_worker", WORKER)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _worker_env(base: dict) -> dict:
  env = dict(base)
  env["JAX_PLATFORMS"] = "cpu"
  env.pop("JAX_NUM_CPU_DEVICES", None)  # the worker sets its own device count
  flags = [f for f in env.get("XLA_FLAGS", "").split()
           if not f.startswith("--xla_force_host_platform_device_count")]
  env["XLA_FLAGS"] = " ".join(flags)
  env["PYTHONPATH"] = os.pathsep.join([REPO] + [p for p in [env.get("PYTHONPATH")] if p])
  return env


def _run_workers(out_dir: str, base_env: dict) -> None:
  """Runs both workers; kills both as soon as one fails or the deadline passes."""
  port = _free_port()
  procs, logs = [], []
  try:
    for pid in range(2):
      cmd = [sys.executable, WORKER, f"--coordinator_address=127.0.0.1:{port}",
             "--num_processes=2", f"--process_id={pid}", "--local_device_count=2",
             f"--out={out_dir}", f"--meshes={','.join(MESHES)}"]
      logs.append(open(os.path.join(out_dir, f"worker{pid}.log"), "w+"))
      procs.append(subprocess.Popen(cmd, cwd=REPO, env=_worker_env(base_env), stdout=logs[-1],
                                    stderr=subprocess.STDOUT, text=True))
    deadline = time.monotonic() + TIMEOUT_S
    failure = None
    while failure is None and any(p.poll() is None for p in procs):
      if any(p.poll() not in (None, 0) for p in procs):
        failure = "a worker exited with an error"
      elif time.monotonic() > deadline:
        failure = f"timed out after {TIMEOUT_S} s"
      else:
        time.sleep(0.1)
    if failure is None and any(p.returncode != 0 for p in procs):
      failure = "a worker exited with an error"
    if failure is not None:
      for p in procs:
        if p.poll() is None:
          p.kill()
          p.wait()
      text = []
      for i, (p, log) in enumerate(zip(procs, logs)):
        log.seek(0)
        text.append(f"--- worker {i} (rc={p.returncode}) ---\n{log.read()}")
      print("\n".join(text), file=sys.stderr)
      pytest.fail(f"multi-host workers failed ({failure}):\n" + "\n".join(t[-4000:] for t in text))
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()
    for log in logs:
      log.close()


def _workers(job):
  """Both workers, as a background job (tests/conftest.py): their output directory."""
  _run_workers(str(job.dir), job.env)
  return job.dir


@pytest.mark.slow
@pytest.mark.background("_workers")
def test_two_process_sharded_forward_matches_single_process(background):
  tmp_path = background.result(_workers)

  with open(tmp_path / "info.json") as f:
    info = json.load(f)
  assert info["process_count"] == 2
  assert info["device_count"] == 4 and info["local_device_count"] == 2

  import jax

  from ttc_jax.model import forward, init_params
  worker = _load_worker_module()
  cfg = worker.tiny_config()
  params = init_params(cfg, jax.random.PRNGKey(worker.SEED))
  expected = np.asarray(forward(cfg, params, worker.fixed_tokens())[0])

  for name in MESHES:
    mesh_info = info["meshes"][name]
    assert mesh_info["mesh_processes"] == [0, 1], mesh_info
    assert not mesh_info["logits_fully_addressable"], mesh_info  # really a global array
    assert mesh_info["wq_spec"] == "P(None, 'model', None)", mesh_info
    got = np.load(tmp_path / f"logits_{name}.npy")
    assert got.shape == expected.shape, name
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0, err_msg=name)
  assert info["meshes"]["2x2"]["logits_spec"].startswith("P('data'"), info["meshes"]["2x2"]
