"""Crash-safe file writes: a file is either its old self or complete, never torn.

Every cache, report and result file of the experiment scripts is written
through here: into a temporary file beside the target, flushed to disk, then
renamed over the target (a rename within one folder is atomic on POSIX). No
JAX import, so light tools (experiments/grade.py) can use it.
"""

from __future__ import annotations

import contextlib
import json
import os
from typing import Any, Iterable, Iterator, IO

import numpy as np


@contextlib.contextmanager
def atomic_open(path: str, mode: str = "w", **open_kw) -> Iterator[IO]:
  """open() for writing whose content appears at `path` only once the block
  finishes without an exception (the temporary file is removed otherwise)."""
  if not mode.startswith("w"):
    raise ValueError(f"atomic_open writes a whole file: mode must start with 'w', got {mode!r}")
  tmp = f"{path}.tmp{os.getpid()}"
  try:
    with open(tmp, mode, **open_kw) as f:
      yield f
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def write_json(path: str, obj: Any, **dump_kw) -> None:
  dump_kw.setdefault("indent", 1)
  with atomic_open(path, encoding="utf-8") as f:
    json.dump(obj, f, **dump_kw)


def write_lines(path: str, lines: Iterable[str]) -> None:
  """One line per string (a newline added to each)."""
  with atomic_open(path, encoding="utf-8") as f:
    for line in lines:
      f.write(line + "\n")


def save_npz(path: str, **arrays: np.ndarray) -> None:
  with atomic_open(path, "wb") as f:
    np.savez(f, **arrays)
