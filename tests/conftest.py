"""Shared fixtures: tiny model configs with fixed seeds; a session-wide XLA
compilation cache; background jobs (subprocesses started at collection)."""

import atexit
import concurrent.futures
import os
import pathlib
import shutil
import subprocess
import tempfile
import threading

# One XLA compilation cache for the session, in a fresh directory (nothing
# carries over between runs; a JAX_COMPILATION_CACHE_DIR you set is used
# instead): a program compiled again after `jax.clear_caches()`, by another
# jit of the same function, or in a subprocess the tests start (they inherit
# this environment) is read back instead. A cached executable is the one a
# compile would produce. (`tests.conftest`, imported again by test modules and
# by subprocesses, finds the variable set and creates nothing.)
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _XLA_CACHE = tempfile.mkdtemp(prefix="ttc_jax_tests_xla_cache_")
  atexit.register(shutil.rmtree, _XLA_CACHE, ignore_errors=True)
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _XLA_CACHE
  os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"

import jax  # noqa: E402
import pytest  # noqa: E402
from hypothesis import settings  # noqa: E402

from ttc_jax.model import ModelConfig, init_params  # noqa: E402

jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" in os.environ:
  jax.config.update("jax_persistent_cache_min_compile_time_secs",
                    float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]))

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# Fixed seeds everywhere: hypothesis draws the same examples on every run.
settings.register_profile("deterministic", derandomize=True, deadline=None,
                          print_blob=True)
settings.load_profile("deterministic")


def tiny_config(**overrides) -> ModelConfig:
  base = dict(vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=64,
              max_seq_len=256)
  base.update(overrides)
  return ModelConfig(**base)


@pytest.fixture(scope="session")
def tiny_model():
  cfg = tiny_config(qkv_bias=True)
  return cfg, init_params(cfg, jax.random.key(0))


def route_through_kernel(monkeypatch, module, name: str) -> list:
  """Sets TTC_JAX_KERNELS=pallas_interpret (as "auto" picks Pallas on a GPU) and
  counts traces of the kernel entry point `module.name`: returns the list its
  calls append their `interpret` flag to. Caches are cleared because the impl
  is chosen at trace time; clear them again when done."""
  calls = []
  original = getattr(module, name)

  def counted(*args, **kwargs):
    calls.append(kwargs.get("interpret"))
    return original(*args, **kwargs)

  monkeypatch.setattr(module, name, counted)
  monkeypatch.setenv("TTC_JAX_KERNELS", "pallas_interpret")
  jax.clear_caches()
  return calls


# ----------------------------------------------------------------------------
# Background jobs: a test's subprocess work (a command-line run, a child with
# other devices) that needs nothing from the pytest process starts right after
# collection and runs alongside the in-process tests, one job at a time (the
# pytest process mostly uses one core). A test marked
# `@pytest.mark.background("fn")` asks for its module's function `fn(job)`;
# `background.result(fn)` waits for what it returned (or raises what it
# raised). A job still queued when its result is wanted runs right away.


class Job:
  """What a job function gets: its own directory, the environment as it was
  after collection (tests may patch os.environ meanwhile), and `run`."""

  def __init__(self, runner: "BackgroundJobs", name: str, env: dict):
    self._runner = runner
    self.name = name
    self.env = env
    self.dir = pathlib.Path(tempfile.mkdtemp(prefix=f"{name}_", dir=runner.base))

  def run(self, cmd, *, timeout: float, env: dict | None = None, check: bool = True,
          cwd: str = REPO) -> subprocess.CompletedProcess:
    """subprocess.run(cmd, capture_output=True, text=True, timeout=...): killed
    at the timeout or when the session ends; check=True raises on a nonzero exit
    with the output's tail."""
    with self._runner.lock:
      if self._runner.closing:
        raise RuntimeError("the test session ended")
      proc = subprocess.Popen(cmd, cwd=cwd, env=self.env if env is None else env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
      self._runner.procs.add(proc)
    try:
      try:
        out, err = proc.communicate(timeout=timeout)
      except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise subprocess.TimeoutExpired(cmd, timeout, out, err) from None
    finally:
      with self._runner.lock:
        self._runner.procs.discard(proc)
    done = subprocess.CompletedProcess(cmd, proc.returncode, out, err)
    if check and done.returncode != 0:
      raise AssertionError(f"{cmd} exited with {done.returncode}:\n--- stdout ---\n"
                           f"{out[-4000:]}\n--- stderr ---\n{err[-6000:]}")
    return done


class BackgroundJobs:

  def __init__(self):
    self.base = tempfile.mkdtemp(prefix="ttc_jax_tests_jobs_")
    self.lock = threading.Lock()
    self.procs = set()
    self.closing = False
    self.futures = {}  # job function -> Future
    self.env = dict(os.environ)
    self.pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="test-job")

  def _call(self, fn):
    return fn(Job(self, fn.__name__.strip("_"), dict(self.env)))

  def schedule(self, fn) -> None:
    if fn not in self.futures:
      self.futures[fn] = self.pool.submit(self._call, fn)

  def result(self, fn):
    future = self.futures.get(fn)
    if future is None or future.cancel():  # not scheduled, or still queued: run it here
      future = self.futures[fn] = concurrent.futures.Future()
      try:
        future.set_result(self._call(fn))
      except BaseException as e:  # pylint: disable=broad-except
        future.set_exception(e)
    return future.result()

  def close(self) -> None:
    self.pool.shutdown(wait=False, cancel_futures=True)
    with self.lock:
      self.closing = True
      for proc in self.procs:
        proc.kill()
    self.pool.shutdown(wait=True)
    shutil.rmtree(self.base, ignore_errors=True)


_JOBS: BackgroundJobs | None = None  # made by pytest_configure (not when imported again)


def pytest_configure(config):
  global _JOBS
  _JOBS = BackgroundJobs()
  config.addinivalue_line(
      "markers", "background(*names): the test needs these module functions run as background "
      "jobs (tests/conftest.py)")
  config.addinivalue_line("markers", "late: run after the other tests (tests/conftest.py)")


def pytest_collection_modifyitems(config, items):
  """Tests marked `late` run last, in their order: their background jobs then
  overlap every other test instead of being waited for early."""
  items[:] = ([i for i in items if i.get_closest_marker("late") is None] +
              [i for i in items if i.get_closest_marker("late") is not None])


def pytest_collection_finish(session):
  if session.config.option.collectonly:
    return
  for item in session.items:  # in the order the tests run
    for mark in item.iter_markers("background"):
      for name in mark.args:
        _JOBS.schedule(getattr(item.module, name))


def pytest_unconfigure(config):
  if _JOBS is not None:
    _JOBS.close()


@pytest.fixture(scope="session")
def background() -> BackgroundJobs:
  return _JOBS
