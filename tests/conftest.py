"""Shared fixtures: tiny model configs with fixed seeds."""

import jax
import pytest
from hypothesis import settings

from ttc_jax.model import ModelConfig, init_params


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
