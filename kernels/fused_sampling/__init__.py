"""Fused sampling (temperature, top-k, top-p, inverse-CDF draw) in one kernel.

`sample(logits [B, V], uniforms [B], *, temperature, top_k=0, top_p=1.0,
impl="auto") -> int32 [B]`: reference.py defines it, pallas.py is the kernel,
ops.py dispatches.
"""

from kernels.fused_sampling.ops import sample

__all__ = ["sample"]
