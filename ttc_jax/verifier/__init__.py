"""Process / outcome reward models: heads, vectorised and incremental scoring."""

from ttc_jax.verifier.model import (HEADS, VerifierConfig, VerifierState, check_compatible,
                                    compact, extend, init_head, init_verifier, position_logits,
                                    score_rows, start, step_positions, step_scores)
from ttc_jax.verifier.hf_prm import (TaggedRows, chat_rows, load_hf_prm, score_solutions,
                                     tag_rows)

__all__ = [
    "HEADS", "TaggedRows", "VerifierConfig", "VerifierState", "chat_rows", "check_compatible",
    "compact", "extend", "init_head", "init_verifier", "load_hf_prm", "position_logits", "score_rows",
    "score_solutions", "start", "step_positions", "step_scores", "tag_rows",
]
