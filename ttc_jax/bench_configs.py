"""Named model configs for the throughput benchmarks (`experiments/bench_decode.py`).

Llama-style (RMSNorm, RoPE, SwiGLU, untied embeddings), float32. The FFN width
is 8/3 * d_model (SwiGLU's usual ratio) rounded to a multiple of 16 (one
AVX-512 f32 vector), so the CPU matmuls see aligned shapes.

Parameter counts (embeddings + lm head included; `ModelConfig.num_params()`):

    smoke      d=32   L=2  H=4 K=2  F=64    V=64       22,688
    bench_3m   d=256  L=4  H=4 K=4  F=688   V=512   3,426,560  (~3.4M)
    bench_25m  d=512  L=8  H=8 K=8  F=1376  V=512  25,829,888  (~25.8M)
    llama_1b   d=2048 L=16 H=32 K=8 F=8192 V=128256  1,235,814,400  (Llama-3.2-1B's
               shapes: tied embeddings, RoPE theta 5e5 with Llama-3 scaling; for
               the GPU benchmarks, random weights, bf16)

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
    "llama_1b": ModelConfig(vocab_size=128256, d_model=2048, n_layers=16, n_heads=32,
                            n_kv_heads=8, ffn_dim=8192, rope_theta=500000.0,
                            rope_llama3_scaling=(32.0, 1.0, 4.0, 8192), norm_eps=1e-5,
                            tie_embeddings=True, max_seq_len=8192, dtype="bfloat16"),
}


def get_config(name: str) -> ModelConfig:
  """The named benchmark config; ValueError listing the names if unknown."""
  try:
    return BENCH_CONFIGS[name]
  except KeyError:
    raise ValueError(f"unknown benchmark config {name!r}; known: {sorted(BENCH_CONFIGS)}") from None


__all__ = ["BENCH_CONFIGS", "get_config"]
