"""experiments/run_search.py on a smoke policy: lines, resume (deleted and torn lines), summary."""

import json
import os
import subprocess
import sys

import pytest

from experiments import run_search

pytestmark = pytest.mark.slow


def _policy_and_sweep(job):
  """A background job (tests/conftest.py): the smoke policy, then the first
  sweep through the command line (the acceptance interface) -> (policy dir,
  sweep dir)."""
  policy = job.dir / "smoke_policy"
  job.run([sys.executable, "-m", "experiments.train_policy", "--preset=smoke",
           "--steps=10", "--cpu_devices=0", f"--out_dir={policy}", "--progress=false"],
          timeout=300)
  out = job.dir / "sweep"
  job.run([sys.executable, "-m", "experiments.run_search", f"--policy={policy}",
           "--method=best_of_n,beam", "--n=2,4", "--m=2", "--num_questions=2",
           "--max_step_tokens=8", "--max_solution_tokens=24", "--max_rounds=6",
           "--progress=false", f"--out_dir={out}"], timeout=300)
  return str(policy), out


@pytest.fixture(scope="module")
def smoke_policy(background):
  return background.result(_policy_and_sweep)[0]


def _opts(policy, out_dir, **kw):
  base = dict(policy=policy, out_dir=str(out_dir), methods=("best_of_n", "beam"), ns=(2, 4),
              ms=("2",), num_questions=2, max_step_tokens=8, max_solution_tokens=24,
              max_rounds=6)
  base.update(kw)
  return run_search.Options(**base)


def _lines(out_dir):
  with open(os.path.join(out_dir, run_search.RESULTS_FILE)) as fh:
    return [json.loads(s) for s in fh.read().splitlines()]


@pytest.mark.background("_policy_and_sweep")
def test_sweep_lines_resume_and_summary(smoke_policy, background):
  # The first run through the command line (the acceptance interface) ...
  out = background.result(_policy_and_sweep)[1]
  opts = _opts(smoke_policy, out)
  summary = json.loads((out / run_search.SUMMARY_FILE).read_text())
  # beam n=2 m=2, beam n=4 m=2, best-of-N n=2 and n=4; 2 questions each.
  lines = _lines(out)
  assert len(lines) == 8 and summary["lines"] == 8
  configs = {(l["config"]["method"], l["config"]["n"], l["config"]["m"]) for l in lines}
  assert configs == {("best_of_n", 2, None), ("best_of_n", 4, None), ("beam", 2, 2),
                     ("beam", 4, 2)}
  keys = run_search.selection_keys(opts.selections, opts.aggregations)
  assert len(keys) == 7
  for line in lines:
    n = line["config"]["n"]
    assert len(line["answers"]) == len(line["correct"]) == len(line["step_scores"]) == n
    assert set(line["scores"]) == {"last", "min", "prod"}
    assert all(len(v) == n for v in line["scores"].values())
    assert set(line["selected"]) == set(keys)
    for sel in line["selected"].values():
      assert 0 <= sel["index"] < n
      assert sel["correct"] == line["correct"][sel["index"]]
    assert line["budget"]["generations"] == n
    assert line["budget"]["policy_tokens"] > 0 and line["budget"]["verifier_flops"] > 0
    assert line["any_correct"] == any(line["correct"])
  rows = summary["rows"]
  assert [(r["method"], r["n"]) for r in rows] == [("best_of_n", 2), ("best_of_n", 4),
                                                   ("beam", 2), ("beam", 4)]
  assert all(r["lines"] == 2 and set(r["accuracy"]) == set(keys) for r in rows)

  # ... resumed in-process (the same flags as Options).
  printed = []
  # Resume after a kill between batches: the last line is missing.
  path = out / run_search.RESULTS_FILE
  text = path.read_text().splitlines(keepends=True)
  path.write_text("".join(text[:-1]))
  run_search.run(opts, print_fn=printed.append, progress=False)
  resumed = _lines(out)
  assert len(resumed) == 8
  assert resumed[:7] == lines[:7]  # finished lines intact
  assert resumed[7] == lines[7]  # same streams and batch shape: the same search

  # Resume after a kill mid-write: a torn last line is dropped and redone.
  path.write_text("".join(text[:-1]) + text[-1][:40])
  run_search.run(opts, print_fn=printed.append, progress=False)
  assert any("torn" in p for p in printed)
  again = _lines(out)
  assert len(again) == 8 and again[:7] == lines[:7]
  assert again[7] == lines[7]

  # Nothing left to do: nothing rewritten; the summary is the first run's.
  before = path.read_text()
  again_summary = run_search.run(opts, print_fn=printed.append, progress=False)
  assert path.read_text() == before
  assert "weighted:last" in printed[-1]  # the table
  assert [r["accuracy"] for r in again_summary["rows"]] == [r["accuracy"] for r in rows]

  # Other settings in the same out_dir are refused.
  with pytest.raises(ValueError, match="other settings"):
    run_search.run(_opts(smoke_policy, out, max_rounds=5), print_fn=printed.append,
                   progress=False)


def test_cli_rejects_one_invalid_config(tmp_path):
  proc = subprocess.run([sys.executable, "-m", "experiments.run_search", "--policy=unused",
                         "--method=beam", "--n=16", "--m=5", f"--out_dir={tmp_path}"],
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode != 0
  assert "not divisible" in proc.stderr + proc.stdout
  assert not os.listdir(tmp_path)  # failed before writing anything


def test_grid_validation(tmp_path):
  opts = lambda **kw: _opts("unused", tmp_path, **kw)
  configs, notes = run_search.expand_grid(opts(methods=("beam",), ns=(2, 4, 16), ms=("4", "sqrt")))
  assert [(c.n, c.m) for c in configs] == [(4, 4), (4, 2), (16, 4)]  # sqrt(16) = 4: deduped
  assert len(notes) == 2 and any("sqrt(2)" in n for n in notes)
  with pytest.raises(ValueError, match="not divisible"):
    run_search.expand_grid(opts(methods=("beam",), ns=(16,), ms=("5",)))
  with pytest.raises(ValueError, match="beam width"):
    run_search.expand_grid(opts(methods=("dvts",), ns=(2,), ms=("4",)))
  with pytest.raises(ValueError, match="unknown aggregation"):
    run_search.expand_grid(opts(aggregations=("mean",)))
  # DVTS with one subtree (m = n) is beam search: one computation, two labels.
  configs, _ = run_search.expand_grid(opts(methods=("beam", "dvts"), ns=(4,), ms=("4", "2")))
  keys = [run_search.computation(c) for c in configs]
  assert len(configs) == 4 and keys[0] == keys[2] and len(set(keys)) == 3
  # k only applies to lookahead; best-of-N ignores m.
  configs, _ = run_search.expand_grid(opts(methods=("best_of_n", "beam", "lookahead"), ns=(4,),
                                           ms=("2",), ks=(1, 3)))
  assert [(c.method, c.m, c.k) for c in configs] == [
      ("best_of_n", None, 0), ("beam", 2, 0), ("lookahead", 2, 1), ("lookahead", 2, 3)]


@pytest.mark.background("_policy_and_sweep")
def test_analyses_read_a_real_sweep(smoke_policy, tmp_path):
  """analyze_sweep and flops_matched on a sweep run_search wrote (the smoke
  policy stands in for the large one: size ratio 1, so K = 1 generation)."""
  from ttc_jax.analysis.outcomes import read_lines
  from ttc_jax.analysis.sweep import analyze_sweep
  out = tmp_path / "sweep"
  run_search.run(_opts(smoke_policy, out, methods=("best_of_n",), ns=(1, 2)),
                 print_fn=lambda s: None, progress=False)
  result = analyze_sweep(read_lines(str(out / run_search.RESULTS_FILE)), samples=2, n_bins=1,
                         n_boot=10, probe=1)
  assert result["questions"] == 2 and result["budgets"] == [1, 2]
  assert len(result["compute_optimal"]["oracle"]["accuracy"]) == 2
  subprocess.run([sys.executable, "-m", "experiments.flops_matched", f"--sweep_dir={out}",
                  f"--large={smoke_policy}", "--bins=1", "--accounting=v1"], check=True,
                 timeout=300, capture_output=True)
  matched = json.loads((out / "flops_matched.json").read_text())
  assert matched["size_ratio"] == 1.0 and matched["questions"] == 2
  rows = matched["flops_matched"]
  assert [r["r"] for r in rows] == [0.16, 0.79, 22.0]
  assert all(r["multiplier"] == pytest.approx(1.0) and r["matched_budget"] == 1 for r in rows)
  assert 0.0 <= rows[0]["bins"][0]["large"] <= 1.0


@pytest.mark.background("_policy_and_sweep")
def test_revisions_sweep(smoke_policy, tmp_path):
  """Method revisions with the policy itself as the revision model (plumbing):
  the all-parallel ratio is best-of-N exactly; chains record their extras."""
  out = tmp_path / "revisions"
  opts = _opts(smoke_policy, out, methods=("best_of_n", "revisions"), ns=(1, 4),
               ratios=("par", "1:1", "seq", "2:1"), revision_model=smoke_policy, num_questions=2,
               max_attempt_tokens=24)
  configs, notes = run_search.expand_grid(opts)
  assert sum("ratio=2:1" in note for note in notes) == 2  # 2:1 splits neither 1 nor 4
  summary = run_search.run(opts, print_fn=lambda s: None, progress=False)
  lines = _lines(out)
  # best-of-N n=1, 4; revisions n=1 and n=4 at each of par, 1:1, seq
  by_key = {(l["config"]["method"], l["config"]["n"], l["config"].get("ratio"),
             l["question_index"]): l for l in lines}
  assert len(lines) == 2 * (2 + 3 + 3) == len(by_key)
  for q in {l["question_index"] for l in lines}:
    bon, par = by_key[("best_of_n", 4, None, q)], by_key[("revisions", 4, "par", q)]
    for field in ("answers", "correct", "scores", "num_tokens"):
      assert par[field] == bon[field], field
    assert par["selected"]["majority"] == bon["selected"]["majority"]
    seq = by_key[("revisions", 4, "seq", q)]
    assert seq["revision"]["parallel"] == 1 and seq["revision"]["length"] == 4
    assert len(seq["revision"]["pass_at_step"]) == 4
    assert seq["revision"]["correct_with_next"] == sum(seq["correct"][:3])
    assert seq["budget"]["generations"] == 4
    # the sequential chain re-reads its previous attempts: more policy tokens than samples
    assert seq["budget"]["policy_tokens"] > sum(seq["num_tokens"])
    square = by_key[("revisions", 4, "1:1", q)]
    assert (square["config"]["parallel"], square["config"]["length"]) == (2, 2)
    # at n = 1 every ratio is one attempt: computed once (par), copied under the other labels
    one = by_key[("revisions", 1, "par", q)]
    assert "same_as" not in one and "same_as" not in square
    for spec in ("1:1", "seq"):
      copy = by_key[("revisions", 1, spec, q)]
      assert copy["same_as"] == "revisions n=1 par (P=1)" and copy["config"]["ratio"] == spec
      assert {k: v for k, v in copy.items() if k not in ("config", "same_as")} == {
          k: v for k, v in one.items() if k != "config"}
  ratios = {r["ratio"] for r in summary["rows"] if r["method"] == "revisions"}
  assert ratios == {"par", "1:1", "seq"}
  # every analysis reads revisions as one more strategy family
  from ttc_jax.analysis.outcomes import outcome_table
  table = outcome_table(lines)
  assert "revisions[seq]:weighted:last" in table.strategies
  assert "revisions[1:1]:majority" in table.strategies


@pytest.mark.parametrize("spec, n, want", [("seq", 8, 1), ("par", 8, 8), ("1:1", 16, 4),
                                           ("4:1", 16, 2), ("1:4", 16, 8), ("2:1", 8, 2)])
def test_resolve_parallel(spec, n, want):
  assert run_search.resolve_parallel(spec, n) == want


@pytest.mark.parametrize("spec, n, message", [("1:1", 8, "does not split"),
                                              ("x", 4, "sequential:parallel"),
                                              ("0:1", 4, ">= 1")])
def test_resolve_parallel_refuses(spec, n, message):
  with pytest.raises(ValueError, match=message):
    run_search.resolve_parallel(spec, n)


def test_revisions_need_a_revision_model(tmp_path):
  with pytest.raises(ValueError, match="--revision_model"):
    run_search.expand_grid(_opts("unused", tmp_path, methods=("revisions",)))


def test_chat_prompts_need_a_benchmark_dataset(tmp_path):
  with pytest.raises(ValueError, match="--chat"):
    run_search.check_sources(_opts("unused", tmp_path, chat=True))
  chat = _opts("unused", tmp_path, dataset="gsm8k", chat=True)
  assert chat.spec.task_options()["chat"] is True
  assert chat.settings()["chat"] is True  # an out_dir made without it refuses to resume
  assert "chat" not in _opts("unused", tmp_path, dataset="gsm8k").settings()
