"""PRM data on a benchmark with a real (Llama-3 style) tokenizer: steps end at
tokens that fuse the newline with text (".\\n", "}$.\\n\\n"), the task has no
step checker (NaN exact labels), and MC rollouts stop at a blank line as the
policy's samples do."""

import json
import math
import re

import numpy as np
import pytest

from tests.hf_utils import llama3_style_bpe, make_tiny_hf_model
from ttc_jax.checkpoints import load_hf_policy
from ttc_jax.decode import Temperature
from ttc_jax.decode.ends import SolutionEnds
from ttc_jax.tasks import MathTask
from ttc_jax.tasks.base import trim_blank_line_end
from ttc_jax.verifier.data import build_rows, make_verifier_dataset, rollout_continuations

BOS, EOS = "<|begin_of_text|>", "<|end_of_text|>"
PROBLEMS = [  # MATH-style: question, solution, answer, level
    ("What is $1+1$?", "We add.\n$1+1=\\boxed{2}$.", "2", 1),
    ("What is $2\\cdot 3$?", "Multiply.\nSo $2\\cdot 3 = \\boxed{6}$.", "6", 1),
    ("Simplify $\\frac{2}{4}$.", "Divide by 2.\nWe get $\\boxed{\\frac12}$.", "\\frac{1}{2}", 2),
]


def _tokenizer_json(path) -> int:
  fast = llama3_style_bpe([f"Problem: {q}\nSolution:\n{s}\n\n" for q, s, _, _ in PROBLEMS] * 8,
                          [BOS, EOS])
  fast.save(str(path / "tokenizer.json"))
  (path / "tokenizer_config.json").write_text(json.dumps({"bos_token": BOS, "eos_token": EOS}))
  return fast.get_vocab_size()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  root = tmp_path_factory.mktemp("real_tok")
  policy = root / "policy"
  policy.mkdir()
  vocab = _tokenizer_json(policy)
  make_tiny_hf_model("llama", policy, seed=0, vocab_size=vocab, d_model=32, n_layers=1,
                     n_heads=4, n_kv_heads=2, ffn_dim=64, max_position_embeddings=256)
  data = root / "math.jsonl"
  data.write_text("".join(json.dumps(dict(problem=q, solution=s, answer=a, level=lv,
                                          subject="Algebra", unique_id=f"test/{i}.json")) + "\n"
                          for i, (q, s, a, lv) in enumerate(PROBLEMS)))
  task = MathTask(data_path=str(data), num_shots=0, grade_workers=1)
  cfg, params, tokenizer = load_hf_policy(str(policy))
  yield task, (cfg, params, tokenizer)
  task.close()


def test_blank_line_ends_are_trimmed_from_solutions():
  assert trim_blank_line_end("a.\nb.\n\n") == "a.\nb.\n"
  assert trim_blank_line_end("a.\nb.\n \n") == "a.\nb.\n"
  assert trim_blank_line_end("\n") == ""  # an empty first line ends at once: no step
  for kept in ("a.\nb.\n", "a.\nb", ""):
    assert trim_blank_line_end(kept) == kept


def test_steps_end_at_tokens_holding_the_newline(setup):
  task, (_, _, tokenizer) = setup
  problems = task.test_problems()[:2]
  completions = [["We add.\n$1+1=\\boxed{2}$.\n", "We add.\n$1+1=\\boxed{3}$."],
                 ["Multiply.\nSo $2\\cdot 3 = \\boxed{6}$.\n"]]
  labels = [[[0.5, 1.0], [0.25, 0.0]], [[1.0, 1.0]]]
  rows = build_rows(task, tokenizer, problems, completions, labels, row_len=200)
  assert len(rows) == 3 and rows.n_dropped == 0
  fused = 0
  for r, text in enumerate([t for ts in completions for t in ts]):
    at = np.flatnonzero(rows.step_mask[r])
    pieces = [tokenizer.decode([int(t)]) for t in rows.tokens[r, at]]
    # Each step ends at the token holding its newline; an unterminated last one at the last token.
    assert len(at) == len(task.split_steps(text))
    for i, piece in enumerate(pieces):
      if i < text.count("\n"):
        assert "\n" in piece
      else:
        assert at[i] == rows.lengths[r] - 1
    fused += sum(piece != "\n" and "\n" in piece for piece in pieces)
    assert np.isnan(rows.step_exact[r, at]).all()  # MATH has no step checker
  assert fused >= 3  # the tokenizer does fuse: ".\n", "}$.\n"
  np.testing.assert_array_equal(rows.step_targets[rows.step_mask], [0.5, 1.0, 0.25, 0.0, 1.0, 1.0])
  assert rows.final_correct.tolist() == [True, False, True]


BLANK_LINE = re.compile(r"\n[ \t]*\n")


def _ends_at_blank_line(text: str) -> bool:
  match = BLANK_LINE.search(text)
  return match is not None and not text[match.end():].strip()


def test_mc_rollouts_stop_at_a_blank_line(setup):
  task, (cfg, params, tokenizer) = setup
  problems = task.test_problems()
  completions = [[p.solution] for p in problems]  # 2 steps each: rollouts after step 1
  common = dict(rollouts=16, sampler=Temperature(1.0), seed=3, max_new_tokens=24,
                batch_size=48)
  runs = rollout_continuations(cfg, params, tokenizer, task, problems, completions, **common)
  flat = [c for q in runs for s in q for step in s for c in step]
  assert len(flat) == len(problems) * 16
  for text in flat:  # nothing after the first blank line
    match = BLANK_LINE.search(text)
    assert match is None or not text[match.end():].strip(), text
  stopped = sum(_ends_at_blank_line(t) for t in flat)
  assert stopped > 0  # the check above is not vacuous
  # Without the blank-line rule the same draws run on past it.
  free = rollout_continuations(cfg, params, tokenizer, task, problems, completions,
                               ends=SolutionEnds(), **common)
  free_flat = [c for q in free for s in q for step in s for c in step]
  assert any(BLANK_LINE.search(t) and t[BLANK_LINE.search(t).end():].strip() for t in free_flat)


def test_benchmark_datasets_take_mc_labels_only(setup):
  task, (cfg, params, tokenizer) = setup
  for kwargs in (dict(label="exact"), dict(label="both"), dict(contrastive_copies=1)):
    with pytest.raises(ValueError, match="no step checker"):
      make_verifier_dataset(cfg, params, tokenizer, task, task.test_problems(), samples=1,
                            rollouts=1, **kwargs)


def test_reference_chains_are_labelled_right_without_a_checker(setup):
  task, (cfg, params, tokenizer) = setup
  problems = task.test_problems()
  rows, report = make_verifier_dataset(cfg, params, tokenizer, task, problems, samples=2,
                                       rollouts=2, reference_chains=True, max_new_tokens=16,
                                       row_len=200, batch_size=8)
  ref = rows.take(np.flatnonzero(rows.source != "sample"))
  assert len(ref) == len(problems) and ref.final_correct.all()
  assert (ref.step_targets[ref.step_mask] == 1.0).all()
  assert report["all_rows"]["step_exact_positive_fraction"] is None
  assert "mc_agreement" not in report and "exact_steps" not in report
  assert not math.isnan(report["all_rows"]["step_target_mean"])
