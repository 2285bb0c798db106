"""Named model configs for the throughput benchmarks (`experiments/bench_decode.py`).

Llama-style (RMSNorm, RoPE, SwiGLU, untied embeddings), float32. The FFN width
is 8/3 * d_model (SwiGLU's usual ratio) rounded to a multiple of 16 (one
AVX-512 f32 vector), so the CPU matmuls see aligned shapes.

Parameter counts (embeddings + lm head included; `ModelConfig.num_params()`):

    smoke      d=32   L=2  H=4 K=2  F=64    V=64       22,688
    bench_3m   d=256  L=4  H=4 K=4  F=688   V=512   3,426,560  (~3.4M)
    bench_25m  d=512  L=8  H=8 K=8  F=1376  V=512  25,829,888  (~25.8M)

bench_3m is the model DESIGN.md item 4's CPU measurements used (4 layers,
d=256, 3.4M parameters); bench_25m is its 25.8M sibling.
"""

from __future__ import annotations

from ttc_jax.model.config import ModelConfig

BENCH_CONFIGS: dict[str, ModelConfig] = {
    "smoke": ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2,
                         ffn_dim=64, max_seq_len=512),
    "bench_3m": ModelConfig(vocab_size=512, d_model=256, n_layers=4, n_heads=4, n_kv_heads=4,
                            ffn_dim=688, max_seq_len=2048),
    "bench_25m": ModelConfig(vocab_size=512, d_model=512, n_layers=8, n_heads=8, n_kv_heads=8,
                             ffn_dim=1376, max_seq_len=2048),
}


def get_config(name: str) -> ModelConfig:
  """The named benchmark config; ValueError listing the names if unknown."""
  try:
    return BENCH_CONFIGS[name]
  except KeyError:
    raise ValueError(f"unknown benchmark config {name!r}; known: {sorted(BENCH_CONFIGS)}") from None


__all__ = ["BENCH_CONFIGS", "get_config"]
