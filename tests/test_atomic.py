"""ttc_jax.atomic: a file is either its old self or complete."""

import json
import os

import numpy as np
import pytest

from ttc_jax import atomic


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
  path = tmp_path / "report.json"
  atomic.write_json(str(path), {"old": 1})
  with pytest.raises(RuntimeError):
    with atomic.atomic_open(str(path)) as f:
      f.write('{"new": ')
      raise RuntimeError("killed halfway")
  assert json.loads(path.read_text()) == {"old": 1}
  assert os.listdir(tmp_path) == ["report.json"]


def test_writers_round_trip(tmp_path):
  atomic.write_lines(str(tmp_path / "a.jsonl"), ['{"x": 1}', '{"x": 2}'])
  assert (tmp_path / "a.jsonl").read_text() == '{"x": 1}\n{"x": 2}\n'
  atomic.save_npz(str(tmp_path / "b.npz"), t=np.arange(3))
  with np.load(tmp_path / "b.npz") as z:
    np.testing.assert_array_equal(z["t"], np.arange(3))
  with pytest.raises(ValueError, match="mode"):
    with atomic.atomic_open(str(tmp_path / "c"), "a"):
      pass
