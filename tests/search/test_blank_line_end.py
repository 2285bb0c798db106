"""A solution ends where its text first ends in a blank line (`ttc_jax.decode.ends`),
on a policy whose next token is a fixed function of the current one."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.conftest import tiny_config
from ttc_jax.decode import Greedy
from ttc_jax.decode.ends import SolutionEnds
from ttc_jax.model import init_params
from ttc_jax.revision.api import revise
from ttc_jax.revision.chains import RevisionConfig
from ttc_jax.search import SearchConfig, search
from ttc_jax.verifier import VerifierConfig, init_verifier

CFG = tiny_config(vocab_size=32, d_model=32, n_layers=1)
EOS, NL, NN, DOT_NL = 2, 3, 4, 5  # "\n", "\n\n", ".\n"
TEXTS = ["", "", ""] + ["\n", "\n\n", ".\n"] + [f"t{i}" for i in range(6, 32)]
# prompt's last token -> the solution it is followed by, deterministically
NEXT = {10: 11, 11: 12, 12: NL, NL: NL, 20: 21, 21: NN, NN: 22, 22: 23, 25: DOT_NL, DOT_NL: NL}
PROMPTS = [[1, 10], [1, 20], [1, 25]]
# (tokens, content): "t11 t12\n" then an empty step; "t21\n\n"; ".\n" then an empty step
WANT = [([11, 12, NL, NL], 3), ([21, NN], 2), ([DOT_NL, NL], 1)]
VCFG = VerifierConfig(model=CFG, head="value", step_token_id=NL, delimiter_ids=(NL, NN, DOT_NL))


def bigram_policy() -> dict:
  """Attention and MLPs write nothing, so the logits read the current token's
  one-hot embedding alone: greedy decoding follows NEXT (else token 6)."""
  params = init_params(CFG, jax.random.key(0))
  layers = [dict(layer, wo=jnp.zeros_like(layer["wo"]), w_down=jnp.zeros_like(layer["w_down"]))
            for layer in params["layers"]]
  head = np.zeros((CFG.d_model, CFG.vocab_size), np.float32)
  head[:, 6] = 1.0
  for token, after in NEXT.items():
    head[token, after] = 10.0
  return dict(params, embed=jnp.eye(CFG.vocab_size), layers=layers, lm_head=jnp.asarray(head))


def test_token_sets_come_from_token_texts():
  ends = SolutionEnds.from_texts(TEXTS)
  assert ends == SolutionEnds(line_end_ids=(NL, NN, DOT_NL), newline_ids=(NL, NN),
                              blank_line_ids=(NN,))
  assert not SolutionEnds().active and ends.active
  with pytest.raises(ValueError, match="not step delimiters"):
    ends.check_end_steps((NL,))


def _check_ends(out, rollout=(0, 0, 0)):
  """Every candidate of prompt q is WANT[q], finished with one scored step; the
  policy generated its tokens (+ rollout[q] lookahead tokens), the verifier
  read its content (and the prompt once)."""
  for q, (tokens, content) in enumerate(WANT):
    assert out.lengths[q].tolist() == [len(tokens)] * 2
    assert out.tokens[q, :, :len(tokens)].tolist() == [tokens] * 2
    assert out.finished[q].all() and out.step_mask[q].sum(axis=1).tolist() == [1, 1]
    assert out.budget.policy_tokens[q] == 2 * (len(tokens) + rollout[q])
    assert out.budget.verifier_tokens[q] == 2 * content + len(PROMPTS[q])


# lookahead: beam search's rounds, and rollouts
@pytest.mark.parametrize("method,extra", [("best_of_n", {}), ("lookahead", dict(m=2, k=1))])
def test_a_blank_line_ends_the_solution_and_counts_like_eos(method, extra):
  scfg = SearchConfig(method, n=2, max_solution_tokens=12, max_step_tokens=6, sampler=Greedy(),
                      tail_fraction=0, ends=SolutionEnds.from_texts(TEXTS), **extra)
  out = search(CFG, bigram_policy(), VCFG, init_verifier(VCFG, jax.random.key(1)), PROMPTS,
               scfg, eos_id=EOS, pad_id=0)
  # lookahead's greedy rollout after round 1 is one more token, an empty step,
  # except after "t21\n\n", which ended the solution
  _check_ends(out, rollout=(1, 0, 1) if method == "lookahead" else (0, 0, 0))


def test_a_revision_attempt_ends_at_a_blank_line():
  """Chains of one attempt each: a context would change this policy's next token."""
  rcfg = RevisionConfig(n=2, parallel=2, max_attempt_tokens=8, sampler=Greedy(),
                        ends=SolutionEnds.from_texts(TEXTS))
  _check_ends(revise(CFG, bigram_policy(), VCFG, init_verifier(VCFG, jax.random.key(1)),
                     PROMPTS, rcfg, eos_id=EOS, pad_id=0, max_steps=4))


def test_generate_stops_at_a_blank_line_too():
  """evaluate_policy's sampler (`generate`): the same ends; without them, on to the limit."""
  from ttc_jax.decode import generate
  ends = SolutionEnds.from_texts(TEXTS)
  out = generate(CFG, bigram_policy(), PROMPTS, max_new_tokens=8, sampler=Greedy(),
                 stop_tokens=[EOS], ends=ends)
  lengths = np.asarray(out.lengths).tolist()
  assert lengths == [len(tokens) for tokens, _ in WANT]
  for q, (tokens, _) in enumerate(WANT):
    assert np.asarray(out.tokens)[q, :len(tokens)].tolist() == tokens
  assert np.asarray(generate(CFG, bigram_policy(), PROMPTS, max_new_tokens=8, sampler=Greedy(),
                             stop_tokens=[EOS]).lengths).tolist() == [8, 8, 8]
