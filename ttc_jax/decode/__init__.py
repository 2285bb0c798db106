"""Batched on-device decoding with KV caches."""

from ttc_jax.decode.generate import DecodeOutput, continue_generate, generate, pad_prompts
from ttc_jax.decode.loop import DecodeState, decode, prefill, prefill_and_decode
from ttc_jax.decode.samplers import Greedy, Sampler, Temperature, TopK, TopP

__all__ = [
    "DecodeOutput", "DecodeState", "Greedy", "Sampler", "Temperature", "TopK", "TopP",
    "continue_generate", "decode", "generate", "pad_prompts", "prefill", "prefill_and_decode",
]
