"""README "Bring your own model": its commands, run verbatim on tiny random
Hugging Face checkpoints that `transformers` writes here (answers are garbage,
the plumbing is real), with sizes shrunk by flags appended to each command."""

import json
import os
import re
import subprocess
import sys

import pytest

from tests.hf_utils import byte_level_bpe, make_tiny_hf_model

pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BOS, EOS, TAG = "<|begin_of_text|>", "<|end_of_text|>", "ки"
PROBLEMS = [  # MATH-style lines: the shots come from the same file, never the item
    ("What is $1+1$?", "We add.\n$1+1=\\boxed{2}$.", "2", 1),
    ("What is $2\\cdot 3$?", "Multiply.\nSo $2\\cdot 3 = \\boxed{6}$.", "6", 1),
    ("Simplify $\\frac{2}{4}$.", "Divide by 2.\nWe get $\\boxed{\\frac12}$.", "\\frac{1}{2}", 2),
    ("Solve $x+3=5$.", "Subtract 3.\nThen $x=\\boxed{2}$.", "2", 2),
]
TRAIN_PROBLEMS = [  # a "train split": other questions
    ("What is $3+4$?", "We add.\n$3+4=\\boxed{7}$.", "7", 1),
    ("What is $5\\cdot 2$?", "Multiply.\nSo $5\\cdot 2 = \\boxed{10}$.", "10", 1),
    ("Solve $x-1=4$.", "Add 1.\nThen $x=\\boxed{5}$.", "5", 2),
    ("What is $9-3$?", "Subtract.\n$9-3=\\boxed{6}$.", "6", 1),
]


def readme_commands() -> list[str]:
  """The shell commands of README's "Bring your own model" block, continuation
  lines joined; the line that sets placeholder paths is left to the caller."""
  with open(os.path.join(ROOT, "README.md")) as fh:
    text = fh.read()
  section = text.split("## Bring your own model", 1)[1].split("\n## ", 1)[0]
  block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
  commands = block.replace("\\\n", " ").splitlines()
  return [c for c in commands if c.strip() and not re.match(r"^[A-Z_]+=\S+( [A-Z_]+=\S+)*$", c)]


def _tokenizer_files(directory) -> int:
  fast = byte_level_bpe([q + "\n" + s for q, s, _, _ in PROBLEMS] * 4, [BOS, EOS, TAG])
  fast.save(os.path.join(directory, "tokenizer.json"))
  with open(os.path.join(directory, "tokenizer_config.json"), "w") as fh:
    json.dump({"bos_token": BOS, "eos_token": EOS}, fh)
  return fast.get_vocab_size()


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
  root = tmp_path_factory.mktemp("byom")
  policy, prm, large = root / "policy", root / "prm", root / "large"
  policy.mkdir()
  large.mkdir()
  vocab = _tokenizer_files(policy)
  _tokenizer_files(large)
  small = dict(vocab_size=vocab, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=64,
               max_position_embeddings=512)
  make_tiny_hf_model("llama", policy, seed=0, **small)
  make_tiny_hf_model("qwen2", prm, seed=1, **small)  # shares the policy's tokenizer
  make_tiny_hf_model("llama", large, seed=2, **dict(small, d_model=64, n_layers=3))
  for name, problems, split in (("math.jsonl", PROBLEMS, "test"),
                                ("train.jsonl", TRAIN_PROBLEMS, "train")):
    (root / name).write_text("".join(
        json.dumps(dict(problem=q, solution=s, answer=a, subject="Algebra", level=lv,
                        unique_id=f"{split}/algebra/{i}.json")) + "\n"
        for i, (q, s, a, lv) in enumerate(problems)))
  return root


def test_readme_commands_run_on_tiny_checkpoints(checkpoints, tmp_path):
  evaluate, search, grade, flops, prm = readme_commands()
  assert "experiments.evaluate_policy" in evaluate and "experiments.run_search" in search
  assert "experiments.grade" in grade and "experiments.flops_matched" in flops
  assert "experiments.train_prm" in prm
  shrink = (" --n=2 --m=2 --num_questions=2 --num_shots=1 --max_step_tokens=8 "
            "--max_solution_tokens=24 --max_rounds=4 --progress=false")
  env = dict(os.environ, POLICY=str(checkpoints / "policy"), PRM=str(checkpoints / "prm"),
             DATA=str(checkpoints / "math.jsonl"), PREDICTIONS=str(tmp_path / "preds.jsonl"),
             TRAIN=str(checkpoints / "train.jsonl"), LARGE=str(checkpoints / "large"))
  run = lambda cmd: subprocess.run(["bash", "-c", cmd], cwd=tmp_path, env=env, timeout=600,
                                   capture_output=True, text=True)
  proc = run(evaluate + " --num_questions=2 --samples=2 --max_new_tokens=16 --num_shots=1")
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.loads((tmp_path / "runs" / "math500_eval.json").read_text())
  assert result["task"] == "math500" and result["num_questions"] == 2
  assert set(result["by_difficulty"]) == {"level"} and 0.0 <= result["pass_at_1"] <= 1.0

  proc = run(search + shrink)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = tmp_path / "runs" / "math500_search"
  lines = [json.loads(s) for s in (out / "results.jsonl").read_text().splitlines()]
  settings = json.loads((out / "run.json").read_text())
  assert settings["policy_format"] == "hf" and settings["prm_hf"]["format"] == "good_token"
  assert sorted((l["config"]["method"], l["config"]["n"]) for l in lines) == [
      ("beam", 2), ("beam", 2), ("best_of_n", 2), ("best_of_n", 2)]
  for line in lines:
    assert line["uid"].startswith("test/algebra/") and len(line["texts"]) == 2
    assert len(line["answers"]) == len(line["correct"]) == 2
    scores = [s for steps in line["step_scores"] for s in steps]
    assert scores and all(0.0 <= s <= 1.0 for s in scores)
    assert line["budget"]["verifier_tokens"] > 0

  # The grader on the texts search chose (by majority) agrees with search's grades.
  chosen = {l["uid"]: l for l in lines if l["config"]["method"] == "best_of_n"}
  preds = [{"unique_id": uid, "output": l["texts"][l["selected"]["majority"]["index"]]}
           for uid, l in chosen.items()]
  (tmp_path / "preds.jsonl").write_text("".join(json.dumps(p) + "\n" for p in preds))
  proc = run(grade)
  assert proc.returncode == 0, proc.stderr[-3000:]
  graded = json.loads((tmp_path / "runs" / "math500_graded.json").read_text())
  assert graded["n"] == 2
  by_id = {item["id"]: item["correct"] for item in graded["correct"]}
  assert by_id == {uid: l["selected"]["majority"]["correct"] for uid, l in chosen.items()}

  # The larger model's greedy answers on the same questions, at matched FLOPs.
  proc = run(flops + " --bins=1")
  assert proc.returncode == 0, proc.stderr[-3000:]
  matched = json.loads((tmp_path / "runs" / "math500_flops_matched.json").read_text())
  assert matched["questions"] == 2 and matched["size_ratio"] > 1.5
  assert matched["large"] == str(checkpoints / "large") and matched["flops_matched"]

  # A PRM of our own from the policy's samples on the train split (MC labels; the
  # random policy writes no parsable answer, so the reference chains carry the rows),
  # then search scores with it.
  proc = run(prm + " --num_train_questions=4 --samples=2 --rollouts=2 --max_new_tokens=16 "
             "--row_len=256 --num_shots=1 --reference_chains --held_out_fraction=0.5 "
             "--batch_size=4 --steps=2 --eval_every=0 --data_batch_size=8 --progress=false")
  assert proc.returncode == 0, proc.stderr[-3000:]
  summary = json.loads((tmp_path / "runs" / "math500_prm" / "summary.json").read_text())
  assert summary["finished"] and summary["rows"] >= 4
  report = json.loads((tmp_path / "runs" / "math500_prm" / "prm_data.json").read_text())
  assert report["report"]["all_rows"]["step_exact_positive_fraction"] is None  # no checker
  hf_prm_flags = re.search(r"--prm_hf=\S+( --prm_\w+=\S+)*", search).group(0)
  proc = run(search.replace(hf_prm_flags, "--prm=runs/math500_prm") + shrink
             + " --method=best_of_n --out_dir=runs/own_prm_search")
  assert proc.returncode == 0, proc.stderr[-3000:]
  lines = [json.loads(s) for s in
           (tmp_path / "runs" / "own_prm_search" / "results.jsonl").read_text().splitlines()]
  assert lines and all(0.0 <= s <= 1.0 for l in lines for steps in l["step_scores"]
                       for s in steps)


def test_a_prm_with_another_tokenizer_is_refused(checkpoints, tmp_path):
  other = tmp_path / "prm_other"
  make_tiny_hf_model("qwen2", other, seed=1, vocab_size=64, d_model=32, n_layers=1, n_heads=4,
                     n_kv_heads=2, ffn_dim=64)
  proc = subprocess.run(
      [sys.executable, "-m", "experiments.run_search", "--dataset=math500",
       f"--data_path={checkpoints / 'math.jsonl'}", f"--policy_hf={checkpoints / 'policy'}",
       f"--prm_hf={other}", "--prm_step_tag=ки", "--num_questions=1", "--n=1",
       f"--out_dir={tmp_path / 'out'}"], capture_output=True, text=True, timeout=300, cwd=ROOT)
  assert proc.returncode != 0
  assert "vocabulary" in proc.stderr or "tokenizer" in proc.stderr, proc.stderr[-2000:]
