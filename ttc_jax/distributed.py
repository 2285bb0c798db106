"""Multi-process (multi-host) JAX start-up.

`maybe_initialize` must run before any JAX operation (it may set CPU config
that JAX reads when its backend starts). With no coordinator, or a single
process, it only applies `local_device_count` and returns False; otherwise it
calls `jax.distributed.initialize`, after which `jax.devices()` lists every
process's devices, `ttc_jax.sharding.make_mesh()` builds one global mesh, and
every process must run the same jitted computations in the same order.

Experiments expose it as absl flags (`define_flags`, `initialize_from_flags`):
--coordinator_address, --num_processes, --process_id (and
--local_device_count for fake CPU devices).

Two-host run (host A at 10.0.0.1 is the coordinator, port 12345 open between
the hosts; `experiments.<name>` is any experiment that calls `define_flags`
and `initialize_from_flags`, e.g. experiments.train_policy; every host runs
the same command, same flags, except --process_id)::

    # on host A (process 0)
    python -m experiments.<name> --coordinator_address=10.0.0.1:12345 \\
        --num_processes=2 --process_id=0 <experiment flags>
    # on host B (process 1)
    python -m experiments.<name> --coordinator_address=10.0.0.1:12345 \\
        --num_processes=2 --process_id=1 <experiment flags>

Both processes block in `jax.distributed.initialize` until all have joined
(default timeout 300 s). To rehearse on one CPU-only machine, run both in the
background against 127.0.0.1, with fake CPU devices per process; this is what
tests/test_multihost.py does (2 processes x 2 CPU devices = one 4-device mesh)::

    python tests/multihost_worker.py --coordinator_address=127.0.0.1:12345 \\
        --num_processes=2 --process_id=0 --local_device_count=2 --out=/tmp/mh &
    python tests/multihost_worker.py --coordinator_address=127.0.0.1:12345 \\
        --num_processes=2 --process_id=1 --local_device_count=2 --out=/tmp/mh
    wait   # process 0 writes /tmp/mh/logits_2x2.npy, logits_1x4.npy, info.json

On CPU the cross-process collectives use gloo
(`jax_cpu_collectives_implementation`), set here before initialization.
"""

from __future__ import annotations

import os

import jax

# Fake XLA:CPU devices an experiment asks for when told "auto" (-1). XLA:CPU
# runs a decode step's small ops (one query per row) on one thread: a [512, 1]
# forward took 2.5 ms pinned to one core and 3.0 ms with both free
# (runs/scratch/s8_split2.py), so one device leaves a 2-core machine half idle.
AUTO_CPU_DEVICES = 2

_STATE: tuple | None = None  # the arguments of the call that took effect


def maybe_initialize(coordinator_address: str | None, num_processes: int = 1,
                     process_id: int = 0, local_device_count: int | None = None,
                     initialization_timeout: int = 300) -> bool:
  """Starts multi-process JAX when a coordinator is given; returns whether it did.

  Idempotent: a repeat call with the same arguments is a no-op (returns the
  first call's result); a call with different arguments raises. With
  `coordinator_address=None` or `num_processes <= 1` nothing distributed
  happens. `local_device_count` sets `jax_num_cpu_devices` (fake CPU devices
  per process; ignored by GPU/TPU backends), which only works before JAX's
  backend has started.
  """
  global _STATE
  distributed = coordinator_address is not None and num_processes > 1
  args = (coordinator_address if distributed else None, num_processes if distributed else 1,
          process_id if distributed else 0, local_device_count)
  if _STATE is not None:
    if _STATE != args:
      raise RuntimeError(f"maybe_initialize already called with (coordinator_address, "
                         f"num_processes, process_id, local_device_count)={_STATE}; "
                         f"now called with {args}")
    return distributed
  if distributed and not 0 <= process_id < num_processes:
    raise ValueError(f"process_id {process_id} not in [0, {num_processes})")
  try:
    if local_device_count is not None:
      jax.config.update("jax_num_cpu_devices", int(local_device_count))
    if distributed:
      # Cross-process CPU collectives; harmless for GPU/TPU backends.
      jax.config.update("jax_cpu_collectives_implementation", "gloo")
  except RuntimeError as e:
    raise RuntimeError("maybe_initialize must run before any JAX operation (JAX's backend "
                       f"has already started): {e}") from e
  if distributed and not jax.distributed.is_initialized():
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id,
                               initialization_timeout=initialization_timeout)
  _STATE = args
  return distributed


def shutdown() -> None:
  """Leaves the distributed runtime (if this process joined one)."""
  global _STATE
  if jax.distributed.is_initialized():
    jax.distributed.shutdown()
  _STATE = None


def cpu_devices_set_by_env() -> bool:
  """Whether JAX_NUM_CPU_DEVICES or XLA_FLAGS already fix the CPU device count."""
  return bool(os.environ.get("JAX_NUM_CPU_DEVICES")) or (
      "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", ""))


def resolve_cpu_devices(requested: int | None) -> int | None:
  """--local_device_count as `maybe_initialize` takes it: None or 0 leave JAX's
  count; -1 is AUTO_CPU_DEVICES unless the environment sets a count."""
  if requested is None or requested == 0:
    return None
  if requested < 0:
    return None if cpu_devices_set_by_env() else AUTO_CPU_DEVICES
  return requested


def is_main_process() -> bool:
  """True on process 0 (the one that writes results / logs)."""
  return jax.process_index() == 0


def define_flags(flag_values=None, local_device_count: bool = True,
                 default_local_devices: int | None = None) -> None:
  """Defines --coordinator_address, --num_processes, --process_id (and
  --local_device_count, default `default_local_devices`, unless the script
  has its own CPU-device flag).

  Safe to call more than once (already-defined flags are left alone).
  """
  from absl import flags  # local: the library itself does not need absl
  fv = flags.FLAGS if flag_values is None else flag_values
  defs = [
      (flags.DEFINE_string, "coordinator_address", None,
       "host:port of process 0 for multi-process JAX; unset = single process"),
      (flags.DEFINE_integer, "num_processes", 1, "number of JAX processes"),
      (flags.DEFINE_integer, "process_id", 0, "this process's index in [0, num_processes)"),
      (flags.DEFINE_integer, "local_device_count", default_local_devices,
       "fake CPU devices per process (jax_num_cpu_devices; GPU/TPU backends ignore it); "
       f"unset or 0 = JAX default; -1 = {AUTO_CPU_DEVICES} unless JAX_NUM_CPU_DEVICES or "
       "XLA_FLAGS set a count"),
  ]
  if not local_device_count:
    defs = defs[:3]
  for define, name, default, help_ in defs:
    if name not in fv:
      define(name, default, help_, flag_values=fv)


def initialize_from_flags(flag_values=None) -> bool:
  """`maybe_initialize` from the flags `define_flags` defined (call after parsing)."""
  from absl import flags
  fv = flags.FLAGS if flag_values is None else flag_values
  return maybe_initialize(fv.coordinator_address, fv.num_processes, fv.process_id,
                          resolve_cpu_devices(fv.local_device_count))


__all__ = ["AUTO_CPU_DEVICES", "cpu_devices_set_by_env", "define_flags", "initialize_from_flags",
           "is_main_process", "maybe_initialize", "resolve_cpu_devices", "shutdown"]
