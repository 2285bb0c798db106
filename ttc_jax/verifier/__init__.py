"""Process / outcome reward models: heads, vectorised and incremental scoring."""

from ttc_jax.verifier.model import (HEADS, VerifierConfig, VerifierState, check_compatible,
                                    compact, extend, init_head, init_verifier, position_logits,
                                    score_rows, start, step_positions, step_scores)

__all__ = [
    "HEADS", "VerifierConfig", "VerifierState", "check_compatible", "compact", "extend",
    "init_head", "init_verifier", "position_logits", "score_rows", "start", "step_positions",
    "step_scores",
]
