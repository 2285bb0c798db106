"""The PRM scorer's step gather + aggregation (compact, then last/min/prod) in one kernel.

`step_score_aggregate(position_scores [B, T], is_step [B, T], *, how,
max_steps, impl="auto") -> (step_scores [B, S], step_mask [B, S], aggregate
[B])`: reference.py defines it, pallas.py is the kernel, ops.py dispatches.
"""

from kernels.step_score_aggregate.ops import step_score_aggregate

__all__ = ["step_score_aggregate"]
